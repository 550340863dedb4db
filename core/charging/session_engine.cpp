#include "session_engine.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include <boost/asio/post.hpp>

#include "clocks.hpp"
#include "crypto.hpp"
#include "inflight.hpp"
#include "money_operations.hpp"
#include "statement.hpp"
#include "token_privacy.hpp"

namespace pilecore::core {
namespace asio = boost::asio;

std::string_view to_string(StopReason r) {
  switch (r) {
    case StopReason::local: return "Local";
    case StopReason::remote: return "Remote";
    case StopReason::ev_full: return "EVFull";
    case StopReason::ev_disconnected: return "EVDisconnected";
    case StopReason::funds_exhausted: return "FundsExhausted";
    case StopReason::fault: return "Fault";
    case StopReason::shutdown: return "Shutdown";
  }
  return "Other";
}

std::optional<StopReason> stop_reason_from(std::string_view s) {
  for (auto r : {StopReason::local, StopReason::remote, StopReason::ev_full, StopReason::ev_disconnected, StopReason::funds_exhausted, StopReason::fault,
                 StopReason::shutdown}) {
    if (to_string(r) == s) return r;
  }
  return std::nullopt;
}

namespace {

std::int64_t ms_of(TimePoint t) { return t.time_since_epoch().count(); }

TimePoint tp_of(std::int64_t ms) { return TimePoint{Duration{ms}}; }

nlohmann::json bill_json(const Bill& b) {
  nlohmann::json lines = nlohmann::json::array();
  for (const auto& l : b.lines) {
    lines.push_back({{"period", std::string(to_string(l.type))}, {"plan", l.plan}, {"wh", l.wh},
                     {"electricity_price", l.price.electricity}, {"service_price", l.price.service},
                     {"electricity_fen", l.electricity_fen}, {"service_fen", l.service_fen}, {"total_fen", l.total_fen()}});
  }
  return {{"energy_wh", b.energy_wh}, {"lines", lines}, {"electricity_fen", b.electricity_fen}, {"service_fen", b.service_fen},
          {"total_fen", b.total_fen}, {"price_decimals", b.decimals}};
}

/// Past transactions, read from the database, for risk rules.
class DbHistory final : public risk::History {
 public:
  explicit DbHistory(sqlite3* db) : db_(db) {}
  // A database error is an error (std::nullopt), never a zero: a rule must not fail open.
  std::optional<std::uint32_t> sessions_since(std::string_view user, TimePoint since) const noexcept override {
    try {
      Stmt s(db_, "SELECT COUNT(*) FROM transactions WHERE user_hash=? AND started_ms>=?");
      s.bind(1, user).bind(2, ms_of(since));
      if (!s.step()) return std::nullopt;
      return static_cast<std::uint32_t>(s.i64(0));
    } catch (const std::exception& e) {
      spdlog::error("risk history: {}", e.what());
      return std::nullopt;
    }
  }
  std::optional<std::int64_t> amount_since_fen(std::string_view user, TimePoint since) const noexcept override {
    try {
      Stmt s(db_, "SELECT COALESCE(SUM(total_fen),0) FROM transactions WHERE user_hash=? AND started_ms>=?");
      s.bind(1, user).bind(2, ms_of(since));
      if (!s.step()) return std::nullopt;
      return s.i64(0);
    } catch (const std::exception& e) {
      spdlog::error("risk history: {}", e.what());
      return std::nullopt;
    }
  }

 private:
  sqlite3* db_;
};

/// The engine's timers on the strand, for the payment saga.
class AsioScheduler final : public Scheduler {
 public:
  AsioScheduler(SessionEngine::Strand& strand, const Clock& clock) : strand_(strand), clock_(clock) {}
  ~AsioScheduler() override {
    for (auto& [id, t] : timers_) t->cancel();
  }
  TimerId after(Duration delay, std::function<void()> fn) override {
    const TimerId id = ++next_;
    auto t = std::make_unique<asio::steady_timer>(strand_);
    t->expires_after(real_duration(clock_, delay));
    t->async_wait([this, id, alive = alive_, fn = std::move(fn)](const boost::system::error_code& ec) {
      if (ec || !*alive) return;
      timers_.erase(id);
      fn();
    });
    timers_.emplace(id, std::move(t));
    return id;
  }
  void cancel(TimerId id) override {
    if (auto it = timers_.find(id); it != timers_.end()) {
      it->second->cancel();
      timers_.erase(it);
    }
  }

 private:
  SessionEngine::Strand& strand_;
  const Clock& clock_;
  TimerId next_ = 0;
  std::map<TimerId, std::unique_ptr<asio::steady_timer>> timers_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

/// Runs a work through the storage thread and only logs a failure (checkpoints, status marks:
/// what a failure costs is said where it matters).
void submit_logged(StoreWorker& store, std::string what, StoreWorker::Work work) {
  store.submit(std::move(work), [what = std::move(what)](const Status& st) {
    if (!st.ok()) spdlog::error("{} not committed: {}", what, st.message());
  });
}

}  // namespace

std::string SessionEngine::user_hash(std::string_view token) const {
  // Risk rules and their history see who pays only as the pile's salted hash.
  return user_key(token);
}

identification::Token parse_token(std::string_view text, std::optional<std::uint32_t> connector) {
  identification::Token t;
  const auto colon = text.find(':');
  if (colon == std::string_view::npos || colon == 0) {
    t.type = "token";
    t.id = std::string(text);
  } else {
    t.type = std::string(text.substr(0, colon));
    t.id = std::string(text.substr(colon + 1));
  }
  t.connector = connector;
  return t;
}

struct SessionEngine::Session {
  std::string id;
  std::string method;
  std::string token;
  std::int64_t authorized_fen = 0;
  std::vector<MeterReading> readings;
  MeterReading last_checkpoint;
  bool stopping = false;
  bool charging_started = false;
  std::unique_ptr<asio::steady_timer> boundary_timer;
  std::unique_ptr<asio::steady_timer> setpoint_timer;
  std::int64_t setpoint_w = 0;
  bool has_setpoint = false;  ///< a setpoint was sent to the power stage in this session
};

struct SessionEngine::Connector {
  ConnectorConfig cfg;
  ConnectorFsm fsm;
  std::optional<Session> session;
  bool starting = false;
  bool meter_failed = false;
  /// Faulted by the guard: implausible readings in a row, or a stall (meter_guard.hpp).
  bool meter_implausible = false;
  std::optional<MeterGuard> guard;
  std::optional<MeterReading> last;  ///< the guard's last plausible reading
  std::list<Waiter> waiters;
  std::vector<std::function<void()>> on_closed;  ///< called once the stopping session is closed (stop_all waits with it)
  std::string starting_txn;  ///< the transaction being authorised (a step-up answer goes to it)
  int close_failures = 0;    ///< consecutive closes that did not commit (a full disk)
  std::unique_ptr<asio::steady_timer> close_retry;
  /// Transactions of this connector that recover() is closing. No session starts meanwhile: its
  /// energy would move the meter under the recovery's final reading (billed twice), and a
  /// recovery cut short by another crash reads the meter again at the next start.
  int recovering = 0;
};

SessionEngine::SessionEngine(const SiteConfig& site, Database& db, StoreWorker& store, const Clock& clock, Strand& strand, Hooks hooks)
    : site_(site), db_(db), store_(store), clock_(clock), strand_(strand), hooks_(std::move(hooks)), alive_(std::make_shared<bool>(true)) {
  for (const auto& c : site_.connectors) {
    auto conn = std::make_unique<Connector>();
    conn->cfg = c;
    conn->guard.emplace(site_.session.charging.meter, c.max_power_w);
    connectors_.emplace(c.id, std::move(conn));
  }
  reader_db_ = std::make_unique<Database>(db_.path(), Database::ReadOnly{});
  reader_ = reader_db_->handle();
  {
    Stmt s(reader_, "SELECT value FROM meta WHERE key='txn_seq'");
    if (s.step()) txn_seq_ = std::stoll(s.text(0));
  }
  scheduler_ = std::make_unique<AsioScheduler>(strand_, clock_);
  const auto& pay = site_.session.payment;
  PaymentSaga::Hooks sh;
  sh.method = [this](std::string_view name) -> payment::Method* {
    const auto ref = hooks_.find(name);
    return ref.plugin && ref.kind == Kind::payment ? static_cast<payment::Method*>(ref.plugin) : nullptr;
  };
  sh.recorded = [ledger = hooks_.ledger_operation](Database& wdb, const MoneyOperation& op) {
    // The transaction row carries what its capture took, for the receipt.
    if (op.kind == OperationKind::capture) {
      Stmt(wdb, "UPDATE transactions SET captured_fen=?, capture_status=? WHERE id=?")
          .bind(1, op.state == OperationStateRow::confirmed ? op.amount_fen : 0)
          .bind(2, op.state == OperationStateRow::confirmed ? std::string("captured") : fmt::format("failed: {}", op.reason))
          .bind(3, op.txn)
          .step();
    }
    if (ledger) ledger(wdb, op);
  };
  sh.settled = [this](const MoneyOperation& op) {
    emit({{"event", "operation"}, {"transaction", op.txn}, {"operation", op.id}, {"kind", std::string(to_string(op.kind))},
          {"state", std::string(to_string(op.state))}, {"amount_fen", op.amount_fen}, {"method", op.method}});
  };
  saga_ = std::make_unique<PaymentSaga>(store_, reader_, clock_, *scheduler_,
                                        PaymentSaga::Settings{.authorize_timeout = Duration(pay.authorize_timeout_ms),
                                                              .operation_timeout = Duration(pay.authorize_timeout_ms),
                                                              .retry_first = Duration(5000),
                                                              .retry_max = Duration(600000)},
                                        std::move(sh));
}

SessionEngine::~SessionEngine() {
  *alive_ = false;
  saga_.reset();
  scheduler_.reset();
  reader_db_.reset();
}

std::unique_ptr<asio::steady_timer> SessionEngine::timer_after(Duration d, std::function<void()> fn) {
  auto t = std::make_unique<asio::steady_timer>(strand_);
  t->expires_after(real_duration(clock_, d));
  t->async_wait([alive = alive_, fn = std::move(fn)](const boost::system::error_code& ec) {
    if (!ec && *alive) fn();
  });
  return t;
}

SessionEngine::Connector* SessionEngine::connector(std::uint32_t id) {
  auto it = connectors_.find(id);
  return it == connectors_.end() ? nullptr : it->second.get();
}

void SessionEngine::apply(Connector& c, ConnectorEvent e, const std::string& why) {
  const ConnectorStatus before = c.fsm.status();
  const Transition t = c.fsm.apply(e);
  if (!t.allowed) {
    spdlog::warn("connector {}: refused: {} ({})", c.cfg.id, t.refusal, why);
    return;
  }
  if (t.to != before && hooks_.status_changed) hooks_.status_changed(c.cfg.id, t.to, why);
}

void SessionEngine::attach() {
  for (auto& [id, c] : connectors_) {
    if (c->cfg.power.empty()) continue;
    auto ref = hooks_.find(c->cfg.power);
    if (!ref.plugin || ref.kind != Kind::power) continue;
    Connector* conn = c.get();
    static_cast<power::PowerStage*>(ref.plugin)->set_event_sink([this, conn, alive = alive_](power::Event e, std::string_view detail) {
      if (*alive) on_power_event(*conn, e, detail);
    });
  }
}

void SessionEngine::on_power_event(Connector& c, power::Event e, std::string_view detail) {
  const std::string why = fmt::format("power stage: {}{}{}", power::to_string(e), detail.empty() ? "" : ": ", detail);
  switch (e) {
    case power::Event::plugged:
      apply(c, ConnectorEvent::plugged, why);
      if (c.session && !c.session->stopping && c.fsm.status() == ConnectorStatus::preparing) {
        apply(c, ConnectorEvent::authorized_start, "vehicle plugged in after authorisation");
        begin_charging(c);
      } else if (!c.session && !c.starting && c.recovering == 0 && site_.session.payment.autostart && c.fsm.status() == ConnectorStatus::preparing) {
        start(c.cfg.id, site_.session.payment.default_method, fmt::format("autostart:{}", c.cfg.id), [id = c.cfg.id](const nlohmann::json& r) {
          if (!r.value("ok", false)) spdlog::warn("connector {}: autostart failed: {}", id, r.value("error", ""));
        });
      }
      break;
    case power::Event::unplugged:
      if (c.session && !c.session->stopping) {
        stop(c.cfg.id, StopReason::ev_disconnected, [](const nlohmann::json&) {});
      } else {
        apply(c, ConnectorEvent::unplugged, why);
      }
      break;
    case power::Event::ev_ready: apply(c, ConnectorEvent::ev_ready, why); break;
    case power::Event::ev_paused: apply(c, ConnectorEvent::ev_paused, why); break;
    case power::Event::ev_full:
      if (c.session && !c.session->stopping) {
        stop(c.cfg.id, StopReason::ev_full, [](const nlohmann::json&) {});
      } else {
        apply(c, ConnectorEvent::ev_full, why);
      }
      break;
    case power::Event::fault:
      if (c.session && !c.session->stopping) stop(c.cfg.id, StopReason::fault, [](const nlohmann::json&) {});
      apply(c, ConnectorEvent::fault, why);
      break;
    case power::Event::fault_cleared: apply(c, ConnectorEvent::fault_cleared, why); break;
  }
}

void SessionEngine::on_instance_failed(const std::string& instance, std::optional<std::uint32_t> bound_connector) {
  for (auto& [id, c] : connectors_) {
    if (c->cfg.power != instance && c->cfg.meter != instance && bound_connector != id) continue;
    if (c->session && !c->session->stopping) stop(id, StopReason::fault, [](const nlohmann::json&) {});
    apply(*c, ConnectorEvent::fault, fmt::format("instance '{}' failed", instance));
  }
}

void SessionEngine::on_instance_disabled(const std::string& instance, std::optional<std::uint32_t> bound_connector, const std::string& why) {
  for (auto& [id, c] : connectors_) {
    if (c->cfg.power != instance && c->cfg.meter != instance && bound_connector != id) continue;
    apply(*c, ConnectorEvent::set_unavailable, fmt::format("instance '{}' {}", instance, why));
  }
}

SessionEngine::Connector* SessionEngine::connector_of_meter(const std::string& instance) {
  for (auto& [id, c] : connectors_) {
    if (c->cfg.meter == instance) return c.get();
  }
  return nullptr;
}

void SessionEngine::on_alarm(const std::string& instance, const Alarm& alarm) {
  // Only a critical "meter.*" alarm means the connector's readings cannot be trusted; a power
  // stage that is also the meter (sim-power) reports its own faults as power events.
  if (alarm.severity != AlarmSeverity::critical || !alarm.code.starts_with("meter.")) return;
  for (auto& [id, c] : connectors_) {
    if (c->cfg.meter != instance) continue;
    if (alarm.active && !c->meter_failed) {
      c->meter_failed = true;
      // Without a meter nothing can be billed: stop safely on the last good reading.
      if (c->session && !c->session->stopping) stop(id, StopReason::fault, [](const nlohmann::json&) {});
      apply(*c, ConnectorEvent::fault, fmt::format("meter '{}': {}", instance, alarm.message));
    } else if (!alarm.active && c->meter_failed) {
      c->meter_failed = false;
      if (!c->meter_implausible) apply(*c, ConnectorEvent::fault_cleared, fmt::format("meter '{}' answers again", instance));
    }
  }
}

void SessionEngine::on_sample(const std::string& instance, const Sample& sample) {
  if (sample.channel == "temperature") {
    const auto& want = site_.session.charging.ambient_sensor;
    bool ambient = want == instance;
    if (want.empty()) {
      ambient = std::any_of(site_.instances.begin(), site_.instances.end(), [&](const InstanceSpec& i) { return i.name == instance && !i.connector; });
    }
    if (ambient && std::isfinite(sample.value)) ambient_ = sample;
    return;
  }
  if (sample.channel != "energy_import") return;
  for (auto& [id, cp] : connectors_) {
    Connector& c = *cp;
    if (c.cfg.meter != instance) continue;
    const MeterCheck chk = c.guard->check(sample.time, sample.value, c.session.has_value());
    on_meter_check(c, chk, sample.value);
    check_stall(c);  // after the reading: it may just have moved
    if (!chk.plausible) continue;  // never committed, billed, nor handed to a waiter
    const MeterReading r = chk.reading;
    c.last = r;
    for (auto it = c.waiters.begin(); it != c.waiters.end();) {
      if (r.time >= it->after) {
        auto done = std::move(it->done);
        it = c.waiters.erase(it);
        done(r);
      } else {
        ++it;
      }
    }
    if (c.session && !c.session->stopping) checkpoint(c, r);
  }
}

void SessionEngine::check_stall(Connector& c) {
  auto ref = hooks_.find(c.cfg.power);
  if (!ref.plugin || ref.kind != Kind::power) return;
  const std::int64_t power_w = static_cast<power::PowerStage*>(ref.plugin)->vehicle().power_w;
  if (auto stalled = c.guard->check_power(clock_.now(), power_w)) on_meter_check(c, *stalled, static_cast<double>(c.last ? c.last->wh : 0));
}

void SessionEngine::on_meter_check(Connector& c, const MeterCheck& chk, double value) {
  const auto& g = *c.guard;
  if (chk.problem == MeterProblem::stale) {
    spdlog::debug("connector {}: meter '{}' {}; ignored", c.cfg.id, c.cfg.meter, chk.why);
    return;
  }
  if (chk.plausible) {
    if (!chk.why.empty()) spdlog::warn("connector {}: meter '{}': {}", c.cfg.id, c.cfg.meter, chk.why);
    if (chk.fault_cleared && c.meter_implausible) {
      c.meter_implausible = false;
      spdlog::info("connector {}: meter '{}' reads plausibly again ({} Wh)", c.cfg.id, c.cfg.meter, chk.reading.wh);
      emit({{"event", "alarm"}, {"code", "meter.implausible"}, {"severity", "critical"}, {"active", false}, {"instance", c.cfg.meter},
            {"connector", c.cfg.id}, {"meter_wh", chk.reading.wh}, {"message", fmt::format("meter '{}' reads plausibly again", c.cfg.meter)}});
      if (!c.meter_failed) apply(c, ConnectorEvent::fault_cleared, fmt::format("meter '{}' reads plausibly again", c.cfg.meter));
    }
    return;
  }
  const std::string message = fmt::format("meter '{}' {}", c.cfg.meter, chk.why);
  spdlog::error("connector {}: implausible reading not billed ({} in a row, {} in all): {}", c.cfg.id, g.bad_streak(), g.implausible_total(), message);
  nlohmann::json event = {{"event", "alarm"}, {"code", "meter.implausible"}, {"severity", "critical"}, {"active", true}, {"instance", c.cfg.meter},
                          {"connector", c.cfg.id}, {"problem", std::string(to_string(chk.problem))}, {"message", message},
                          {"consecutive", g.bad_streak()}, {"fault_after", g.settings().fault_after}};
  // JSON has no NaN or infinity: those go as text.
  if (std::isfinite(value)) event["reading_wh"] = value;
  else event["reading_wh"] = fmt::format("{}", value);
  if (g.last()) event["last_plausible_wh"] = g.last()->wh;
  emit(std::move(event));
  if (chk.fault_raised && !c.meter_implausible) {
    c.meter_implausible = true;
    // Billed to the last plausible reading (stop() does not wait for another).
    if (c.session && !c.session->stopping) stop(c.cfg.id, StopReason::fault, [](const nlohmann::json&) {});
    apply(c, ConnectorEvent::fault, message);
  }
}

void SessionEngine::read_meter(Connector& c, std::function<void(std::optional<MeterReading>)> done) {
  const std::uint64_t id = ++next_waiter_;
  c.waiters.push_back(Waiter{id, clock_.now(), std::move(done)});
  const auto ref = hooks_.find(c.cfg.meter);
  if (ref.plugin && ref.kind == Kind::sensor) {
    InFlight mark(c.cfg.meter, "refresh");
    static_cast<sensor::Sensor*>(ref.plugin)->refresh();
  }
  auto timer = timer_after(Duration(site_.session.charging.meter_timeout_ms), [this, &c, id] {
    for (auto it = c.waiters.begin(); it != c.waiters.end(); ++it) {
      if (it->id == id) {
        auto cb = std::move(it->done);
        c.waiters.erase(it);
        spdlog::error("connector {}: meter '{}' gave no reading within {} ms", c.cfg.id, c.cfg.meter, site_.session.charging.meter_timeout_ms);
        cb(std::nullopt);
        return;
      }
    }
  });
  keep_until_fired(std::move(timer));
}

void SessionEngine::keep_until_fired(std::unique_ptr<asio::steady_timer> timer) {
  const std::uint64_t id = ++next_timer_;
  timer->async_wait([this, id, alive = alive_](const boost::system::error_code&) {
    if (*alive) detached_.erase(id);
  });
  detached_.emplace(id, std::move(timer));
}

std::string SessionEngine::next_transaction_id(std::uint32_t connector) {
  const std::int64_t n = ++txn_seq_;
  // Ordered before the authorisation's intent, which names the id: an id is never used twice.
  submit_logged(store_, "the transaction counter", [n](Database& db) {
    Stmt(db, "INSERT INTO meta(key, value) VALUES('txn_seq', ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value")
        .bind(1, std::to_string(n))
        .step();
  });
  return fmt::format("{}-{}-{:06}", site_.id, connector, n);
}

void SessionEngine::insert_reading(Database& db, const std::string& txn, int seq, const MeterReading& r, const char* kind) const {
  Stmt(db, "INSERT INTO readings(txn_id, seq, time_ms, wh, kind) VALUES(?,?,?,?,?)")
      .bind(1, txn).bind(2, seq).bind(3, ms_of(r.time)).bind(4, r.wh).bind(5, kind).step();
}

void SessionEngine::evaluate_risk(const risk::Context& ctx, std::function<void(risk::Verdict, std::string)> done) {
  const auto rules = hooks_.running_of_kind(Kind::risk);
  if (rules.empty()) {
    done(risk::Verdict::allow, {});
    return;
  }
  struct State {
    std::size_t pending;
    risk::Verdict verdict = risk::Verdict::allow;
    std::vector<std::string> reasons;
    bool finished = false;
    std::function<void(risk::Verdict, std::string)> done;
    DbHistory history;
    std::string txn, method, token;
    std::unique_ptr<asio::steady_timer> deadline;
  };
  auto st = std::make_shared<State>(State{rules.size(), risk::Verdict::allow, {}, false, std::move(done), DbHistory(reader_),
                                          std::string(ctx.transaction_id), std::string(ctx.method), std::string(ctx.user), nullptr});
  auto finish = [st] {
    if (st->finished) return;
    st->finished = true;
    if (st->deadline) st->deadline->cancel();
    std::string reasons;
    for (const auto& r : st->reasons) reasons += (reasons.empty() ? "" : "; ") + r;
    st->done(st->verdict, reasons);
  };
  const Duration budget(site_.session.payment.risk_timeout_ms);
  st->deadline = timer_after(budget, [st, finish] {
    if (st->finished) return;
    st->verdict = std::max(st->verdict, risk::Verdict::step_up);
    st->reasons.push_back("a risk rule did not answer in time");
    finish();
  });
  risk::Context c = ctx;
  c.transaction_id = st->txn;
  c.method = st->method;
  c.user = st->token;
  for (const auto& name : rules) {
    auto ref = hooks_.find(name);
    if (!ref.plugin) {
      if (--st->pending == 0) finish();
      continue;
    }
    static_cast<risk::Rule*>(ref.plugin)->evaluate(c, st->history, clock_.now() + budget, [st, name, finish](risk::Result r) {
      if (st->finished) return;
      if (r.verdict != risk::Verdict::allow) {
        st->verdict = std::max(st->verdict, r.verdict);
        st->reasons.push_back(fmt::format("{}: {}", name, r.reason));
      }
      if (--st->pending == 0) finish();
    });
  }
}

void SessionEngine::start(std::uint32_t id, std::string method, std::string token, Reply done, std::optional<identification::Token> presented) {
  auto fail = [&done](const std::string& msg) { done({{"ok", false}, {"error", msg}}); };
  Connector* cp = connector(id);
  if (!cp) return fail(fmt::format("no connector {}", id));
  Connector& c = *cp;
  if (!site_.session.tariff) return fail("no tariffs in the site file: sessions cannot be billed, so none can start");
  if (shutting_down_) return fail("pilecored is stopping: no session starts");
  if (c.recovering > 0) return fail(fmt::format("connector {} is still closing a transaction left open by an unclean stop; try again shortly", id));
  if (c.session || c.starting) return fail(fmt::format("connector {} already has a session", id));
  if (const auto t = c.fsm.check(ConnectorEvent::authorized_start); !t.allowed) {
    return fail(fmt::format("connector {} is {}: a session cannot start", id, pilecore::to_string(c.fsm.status())));
  }
  if (method.empty()) method = site_.session.payment.default_method;
  const auto pay = hooks_.find(method);
  if (!pay.plugin || pay.kind != Kind::payment) return fail(fmt::format("'{}' is not a running payment instance", method));
  if (token.empty()) token = "anonymous";
  c.starting = true;
  const std::string txn = next_transaction_id(id);
  const std::int64_t amount = site_.session.payment.preauth_fen;
  const std::string user = user_hash(token);
  risk::Context ctx{risk::Phase::authorize, txn, id, method, {}, user, amount, clock_.now()};
  spdlog::info("connector {}: {}: start requested ({} via {})", id, txn, token_ref(token), method);
  if (presented) presented->connector = id;
  evaluate_risk(ctx, [this, &c, txn, method, token, amount, done, presented = std::move(presented), alive = alive_](risk::Verdict verdict,
                                                                                                                  std::string reasons) {
    if (!*alive) return;
    if (verdict != risk::Verdict::allow) {
      c.starting = false;
      spdlog::warn("connector {}: {}: risk {}: {}", c.cfg.id, txn, risk::to_string(verdict), reasons);
      done({{"ok", false}, {"error", fmt::format("risk check: {}: {}", risk::to_string(verdict), reasons)}, {"verdict", std::string(risk::to_string(verdict))}});
      return;
    }
    c.starting_txn = txn;
    saga_->authorize(
        txn, c.cfg.id, method, presented ? *presented : parse_token(token, c.cfg.id), amount,
        [this, &c, txn](const payment::Challenge& ch) {
          spdlog::info("connector {}: {}: step-up: {} ({})", c.cfg.id, txn, payment::to_string(ch.kind), ch.prompt);
          emit({{"event", "step_up"}, {"connector", c.cfg.id}, {"transaction", txn}, {"kind", std::string(payment::to_string(ch.kind))},
                {"prompt", ch.prompt}, {"deadline", format_utc(ch.deadline)}, {"methods", ch.methods}});
          if (hooks_.announce) hooks_.announce(c.cfg.id, ch.prompt);
        },
        [this, &c, txn, method, token, done, alive](PaymentSaga::Authorization a) {
          if (!*alive) return;
          authorized(c, txn, method, token, a, done);
        });
  });
}

void SessionEngine::authorized(Connector& c, const std::string& txn, const std::string& method, const std::string& token,
                               const PaymentSaga::Authorization& a, const Reply& done) {
  if (a.decision != payment::Decision::approved) {
    c.starting = false;
    c.starting_txn.clear();
    const std::string why = a.timed_out ? a.reason : fmt::format("payment declined: {}", a.reason);
    spdlog::warn("connector {}: {}: {}", c.cfg.id, txn, why);
    emit({{"event", "start_refused"}, {"connector", c.cfg.id}, {"transaction", txn}, {"reason", why}});
    if (hooks_.announce) hooks_.announce(c.cfg.id, why);
    done({{"ok", false}, {"error", why}, {"transaction", txn}});
    return;
  }
  read_meter(c, [this, &c, txn, method, token, a, done, alive = alive_](std::optional<MeterReading> m) {
    if (!*alive) return;
    // Stopping: stop_all() has counted the sessions it waits for, so a transaction committed now
    // would be left open by a clean stop. Release the authorisation instead.
    // m passed the guard (on_sample hands waiters nothing else); a meter it faulted since the
    // request cannot open a bill.
    if (!m || shutting_down_ || c.guard->faulted()) {
      c.starting = false;
      c.starting_txn.clear();
      saga_->release(txn, method);
      done({{"ok", false},
            {"error", shutting_down_ ? "pilecored is stopping; authorisation released"
                      : m            ? "the meter reads implausibly (meter.implausible); authorisation released"
                                     : "the meter gave no plausible reading; authorisation released"}});
      return;
    }
    const std::uint32_t cid = c.cfg.id;
    store_.submit(
        [this, txn, cid, method, token, a, r = *m, user = user_hash(token)](Database& db) {
          Stmt(db,
               "INSERT INTO transactions(id, connector, method, user_token, user_hash, payment_ref, authorized_fen, status, started_ms, meter_start_wh) "
               "VALUES(?,?,?,?,?,?,?, 'open', ?, ?)")
              .bind(1, txn).bind(2, cid).bind(3, method).bind(4, token).bind(5, user).bind(6, a.reference).bind(7, a.authorized_fen)
              .bind(8, ms_of(r.time)).bind(9, r.wh)
              .step();
          insert_reading(db, txn, 0, r, "start");
        },
        // synchronous=FULL: on disk before the contactor closes
        [this, &c, txn, method, token, a, m, done, alive](const Status& st) {
          if (!*alive) return;
          c.starting = false;
          c.starting_txn.clear();
          if (!st.ok()) {
            saga_->release(txn, method);
            done({{"ok", false}, {"error", fmt::format("database: {}", st.message())}});
            return;
          }
          c.session.emplace();
          Session& s = *c.session;
          s.id = txn;
          s.method = method;
          s.token = token;
          s.authorized_fen = a.authorized_fen;
          s.readings.push_back(*m);
          s.last_checkpoint = *m;
          spdlog::info("connector {}: {}: authorised {} fen, meter {} Wh", c.cfg.id, txn, a.authorized_fen, m->wh);
          apply(c, ConnectorEvent::authorized_start, fmt::format("transaction {} authorised", txn));
          // From Finishing a new session goes to Preparing; the vehicle is still plugged in, so
          // there is no plug event to wait for.
          if (c.fsm.status() == ConnectorStatus::preparing && c.fsm.plugged()) {
            apply(c, ConnectorEvent::authorized_start, "the vehicle is still plugged in");
          }
          emit({{"event", "session_started"}, {"connector", c.cfg.id}, {"transaction", txn}, {"method", method}, {"user", token_ref(token)},
                {"authorized_fen", a.authorized_fen}, {"payment_ref", a.reference}, {"meter_start_wh", m->wh}});
          if (c.fsm.status() == ConnectorStatus::charging) begin_charging(c);
          arm_boundary(c);
          done({{"ok", true}, {"transaction", txn}, {"connector", c.cfg.id}, {"meter_start_wh", m->wh}});
        });
  });
}

void SessionEngine::present(const identification::Token& token, std::optional<std::uint32_t> presenter_connector) {
  const auto connector_id = token.connector ? token.connector : presenter_connector;
  const auto& bindings = site_.session.payment.token_methods;
  auto it = bindings.find(token.type);
  if (!connector_id) {
    spdlog::warn("a '{}' token was presented with no connector; ignored", token.type);
    return;
  }
  if (it == bindings.end() && site_.session.payment.default_method.empty()) {
    spdlog::warn("connector {}: a '{}' token was presented but no payment method takes that type", *connector_id, token.type);
    return;
  }
  const std::string method = it != bindings.end() ? it->second : site_.session.payment.default_method;
  start(
      *connector_id, method, token.type + ":" + token.id,
      [id = *connector_id](const nlohmann::json& r) {
        if (!r.value("ok", false)) spdlog::warn("connector {}: a presented token did not start a session: {}", id, r.value("error", ""));
      },
      token);
}

void SessionEngine::answer_step_up(std::uint32_t id, payment::StepUpAnswer answer, Reply done) {
  Connector* c = connector(id);
  if (!c) {
    done({{"ok", false}, {"error", fmt::format("no connector {}", id)}});
    return;
  }
  if (c->starting_txn.empty() || !saga_->awaiting_step_up(c->starting_txn)) {
    done({{"ok", false}, {"error", fmt::format("connector {} has no step-up waiting for an answer", id)}});
    return;
  }
  const Status st = saga_->answer_step_up(c->starting_txn, answer);
  if (!st.ok()) {
    done({{"ok", false}, {"error", st.message()}});
    return;
  }
  done({{"ok", true}, {"transaction", c->starting_txn}});
}

void SessionEngine::refund(const std::string& txn, std::int64_t amount_fen, const std::string& reason, Reply done) {
  std::string method;
  std::int64_t captured = 0, refunded = 0;
  std::string status;
  try {
    Stmt s(reader_, "SELECT method, status, COALESCE(captured_fen, 0) FROM transactions WHERE id=?");
    s.bind(1, txn);
    if (!s.step()) {
      done({{"ok", false}, {"error", fmt::format("no transaction '{}'", txn)}});
      return;
    }
    method = s.text(0);
    status = s.text(1);
    captured = s.i64(2);
    for (const auto& op : operations::of_transaction(reader_, txn)) {
      if (op.kind == OperationKind::refund && op.state != OperationStateRow::failed) refunded += op.amount_fen;
    }
  } catch (const std::exception& e) {
    done({{"ok", false}, {"error", fmt::format("database: {}", e.what())}});
    return;
  }
  if (status != "closed") {
    done({{"ok", false}, {"error", fmt::format("{} is not closed yet: refund it once it is captured", txn)}});
    return;
  }
  if (amount_fen <= 0 || amount_fen > captured - refunded) {
    done({{"ok", false}, {"error", fmt::format("a refund must be between 1 and {} fen (captured {}, refunded {})", captured - refunded, captured, refunded)}});
    return;
  }
  saga_->refund(txn, method, amount_fen, reason, [done](const MoneyOperation& op) {
    done({{"ok", op.state != OperationStateRow::failed}, {"operation", op.id}, {"state", std::string(to_string(op.state))},
          {"amount_fen", op.amount_fen}, {"error", op.state == OperationStateRow::failed ? op.reason : std::string()}});
  });
}

void SessionEngine::begin_charging(Connector& c) {
  if (!c.session || c.session->charging_started) return;
  c.session->charging_started = true;
  auto ref = hooks_.find(c.cfg.power);
  if (!ref.plugin || ref.kind != Kind::power) {
    spdlog::error("connector {}: no running power stage '{}'", c.cfg.id, c.cfg.power);
    stop(c.cfg.id, StopReason::fault, [](const nlohmann::json&) {});
    return;
  }
  update_setpoint(c);
  Status closed_st;
  {
    InFlight mark(c.cfg.power, "close_contactor");
    closed_st = static_cast<power::PowerStage*>(ref.plugin)->close_contactor();
  }
  if (Status st = std::move(closed_st); !st.ok()) {
    spdlog::error("connector {}: the contactor did not close: {}", c.cfg.id, st.message());
    stop(c.cfg.id, StopReason::fault, [](const nlohmann::json&) {});
    return;
  }
  if (on_contactor_closed) on_contactor_closed(c.cfg.id);
  arm_setpoint(c);
}

void SessionEngine::update_setpoint(Connector& c) {
  if (!c.session) return;
  auto pref = hooks_.find(c.cfg.power);
  if (!pref.plugin) return;
  auto* stage = static_cast<power::PowerStage*>(pref.plugin);
  const power::VehicleStatus v = stage->vehicle();
  std::int64_t limit = c.cfg.max_power_w;
  if (const auto& site_max = site_.session.charging.site_max_power_w) {
    std::int64_t others = 0;
    for (const auto& [id, o] : connectors_) {
      if (o.get() != &c && o->session) others += o->session->setpoint_w;
    }
    limit = std::min(limit, std::max<std::int64_t>(0, *site_max - others));
  }
  std::int64_t watts = limit;
  const auto strategies = hooks_.running_of_kind(Kind::strategy);
  if (!strategies.empty()) {
    auto sref = hooks_.find(strategies.front());
    const double elapsed_s = c.session->readings.empty() ? 0 : static_cast<double>((clock_.now() - c.session->readings.front().time).count()) / 1000.0;
    const double energy = c.last && !c.session->readings.empty() ? static_cast<double>(c.last->wh - c.session->readings.front().wh) : 0.0;
    std::vector<strategy::Variable> vars = {{"base_power", static_cast<double>(c.cfg.max_power_w)},
                                            {"connector_max_power", static_cast<double>(c.cfg.max_power_w)},
                                            {"site_max_power", static_cast<double>(site_.session.charging.site_max_power_w.value_or(c.cfg.max_power_w))},
                                            {"elapsed_s", elapsed_s},
                                            {"energy_wh", energy}};
    if (v.soc_percent) vars.push_back({"soc", *v.soc_percent});
    if (v.battery_temperature_c) vars.push_back({"battery_temperature", *v.battery_temperature_c});
    if (ambient_ && clock_.now() - ambient_->time <= Duration(site_.session.charging.ambient_max_age_ms)) {
      vars.push_back({"ambient_temperature", ambient_->value});
    }
    if (sref.plugin) {
      InFlight mark(strategies.front(), "compute");
      const strategy::Setpoint sp = static_cast<strategy::Strategy*>(sref.plugin)->compute(vars);
      if (sp.status.ok()) {
        watts = sp.watts;
      } else {
        // Keep the previous setpoint; before the first, a low one: a strategy that derates for
        // safety (a hot battery) must not fail into full power.
        watts = c.session->has_setpoint ? c.session->setpoint_w : site_.session.charging.fallback_power_w;
        spdlog::warn("connector {}: strategy: {}; {} {} W", c.cfg.id, sp.status.message(), c.session->has_setpoint ? "keeping" : "falling back to",
                     std::min(watts, limit));
      }
    }
  }
  watts = std::clamp<std::int64_t>(watts, 0, limit);  // the core always clamps
  if (watts != c.session->setpoint_w || !c.session->has_setpoint) {
    c.session->setpoint_w = watts;
    c.session->has_setpoint = true;
    InFlight mark(c.cfg.power, "set_power_limit");
    if (Status st = stage->set_power_limit(watts); !st.ok()) spdlog::warn("connector {}: set_power_limit: {}", c.cfg.id, st.message());
  }
}

void SessionEngine::arm_setpoint(Connector& c) {
  if (!c.session) return;
  c.session->setpoint_timer = timer_after(Duration(site_.session.charging.setpoint_interval_ms), [this, &c] {
    if (!c.session || c.session->stopping) return;
    check_stall(c);  // also when the meter has stopped publishing altogether
    if (!c.session || c.session->stopping) return;
    update_setpoint(c);
    arm_setpoint(c);
  });
}

void SessionEngine::checkpoint(Connector& c, const MeterReading& r) {
  Session& s = *c.session;
  const auto& ch = site_.session.charging;
  if (r.time - s.last_checkpoint.time < Duration(ch.checkpoint_interval_ms) && r.wh - s.last_checkpoint.wh < ch.checkpoint_wh) return;
  // The guard let no reading below the last plausible one through; an older time stamp can still
  // come (a reading published before the last committed one): not a later reading, skipped.
  if (r.wh < s.readings.back().wh || r.time < s.readings.back().time) {
    spdlog::warn("connector {}: {}: reading {} Wh at {} precedes the committed {} Wh; not committed", c.cfg.id, s.id, r.wh, format_utc(r.time),
                 s.readings.back().wh);
    return;
  }
  // Kept at once: the final reading, committed with the close, covers it whether or not this
  // commit succeeds; its sequence number is never reused.
  const int seq = static_cast<int>(s.readings.size());
  s.readings.push_back(r);
  s.last_checkpoint = r;
  submit_logged(store_, fmt::format("connector {}: {}: checkpoint", c.cfg.id, s.id),
                [this, txn = s.id, seq, r](Database& db) { insert_reading(db, txn, seq, r, "checkpoint"); });
  // Funds: stop when the bill so far reaches what was authorised.
  const Bill so_far = compute_bill(*site_.session.tariff, s.readings);
  if (so_far.total_fen >= s.authorized_fen) {
    spdlog::info("connector {}: {}: bill {} fen reached the authorised {} fen", c.cfg.id, s.id, so_far.total_fen, s.authorized_fen);
    stop(c.cfg.id, StopReason::funds_exhausted, [](const nlohmann::json&) {});
  }
}

void SessionEngine::arm_boundary(Connector& c) {
  if (!c.session) return;
  const Slot slot = site_.session.tariff->slot_at(clock_.now());
  c.session->boundary_timer = timer_after(std::chrono::duration_cast<Duration>(slot.end - clock_.now()), [this, &c, boundary = slot.end] {
    if (!c.session || c.session->stopping) return;
    read_meter(c, [this, &c, boundary](std::optional<MeterReading> m) {
      if (!c.session || c.session->stopping) return;
      Session& s = *c.session;
      if (m && m->time >= s.readings.back().time && m->wh >= s.readings.back().wh) {
        const int seq = static_cast<int>(s.readings.size());
        s.readings.push_back(*m);
        s.last_checkpoint = *m;
        submit_logged(store_, fmt::format("connector {}: {}: boundary reading", c.cfg.id, s.id),
                      [this, txn = s.id, seq, r = *m](Database& db) { insert_reading(db, txn, seq, r, "boundary"); });
        spdlog::info("connector {}: {}: tariff boundary at {}: meter {} Wh", c.cfg.id, s.id, format_utc(boundary), m->wh);
        const Slot next = site_.session.tariff->slot_at(boundary);
        emit({{"event", "tariff_boundary"}, {"connector", c.cfg.id}, {"transaction", s.id}, {"meter_wh", m->wh}, {"boundary", format_utc(boundary)},
              {"period", std::string(to_string(next.type))}, {"plan", next.plan}});
      }
      arm_boundary(c);
    });
  });
}

void SessionEngine::stop(std::uint32_t id, StopReason reason, Reply done) {
  Connector* cp = connector(id);
  if (!cp || !cp->session) {
    done({{"ok", false}, {"error", fmt::format("connector {} has no session", id)}});
    return;
  }
  Connector& c = *cp;
  Session& s = *c.session;
  if (s.stopping) {
    done({{"ok", false}, {"error", fmt::format("connector {}: {} is already stopping", id, s.id)}});
    return;
  }
  s.stopping = true;
  if (s.boundary_timer) s.boundary_timer->cancel();
  if (s.setpoint_timer) s.setpoint_timer->cancel();
  if (auto ref = hooks_.find(c.cfg.power); ref.plugin && ref.kind == Kind::power) {
    if (Status st = static_cast<power::PowerStage*>(ref.plugin)->open_contactor(); !st.ok()) {
      spdlog::error("connector {}: the contactor did not open: {}", id, st.message());
    }
  }
  submit_logged(store_, fmt::format("connector {}: {}: the stop", id, s.id),
                [txn = s.id, why = std::string(to_string(reason)), at = ms_of(clock_.now())](Database& db) {
                  Stmt(db, "UPDATE transactions SET status='stopping', stop_reason=?, stopped_ms=? WHERE id=?").bind(1, why).bind(2, at).bind(3, txn).step();
                });
  switch (reason) {
    case StopReason::local: apply(c, ConnectorEvent::user_stop, "stopped at the pile"); break;
    case StopReason::remote:
    case StopReason::shutdown: apply(c, ConnectorEvent::remote_stop, std::string(to_string(reason))); break;
    case StopReason::funds_exhausted: apply(c, ConnectorEvent::funds_exhausted, "authorised amount reached"); break;
    case StopReason::ev_full: apply(c, ConnectorEvent::ev_full, "the vehicle is full"); break;
    case StopReason::ev_disconnected: apply(c, ConnectorEvent::unplugged, "the vehicle was unplugged"); break;
    case StopReason::fault:
      // The pile's own fault handlers put the connector in Faulted with their reason right
      // after this call; a fault stop from anywhere else (a contactor that did not close) would
      // leave it Charging with no session, refusing every start. Fault it then, once they had
      // their turn.
      asio::post(strand_, [this, &c, alive = alive_] {
        if (*alive && c.fsm.status() != ConnectorStatus::faulted) apply(c, ConnectorEvent::fault, "the session stopped on a fault");
      });
      break;
  }
  spdlog::info("connector {}: {}: stopping ({})", id, s.id, to_string(reason));
  emit({{"event", "session_stopping"}, {"connector", id}, {"transaction", s.id}, {"reason", std::string(to_string(reason))}});
  if (c.meter_failed || c.guard->faulted()) {  // no plausible reading to wait for
    finish(c, std::nullopt, std::move(done));
    return;
  }
  read_meter(c, [this, &c, done = std::move(done)](std::optional<MeterReading> m) mutable { finish(c, m, std::move(done)); });
}

void SessionEngine::finish(Connector& c, std::optional<MeterReading> final_reading, Reply done) {
  if (!c.session) return;
  Session& s = *c.session;
  std::vector<MeterReading> readings = s.readings;
  // Only the guard's plausible readings reach here: a lying meter bills to its last honest one.
  const auto& last = c.guard->last();
  if (!final_reading && last && last->time >= readings.back().time && last->wh >= readings.back().wh) final_reading = last;
  if (final_reading && final_reading->time >= readings.back().time && final_reading->wh >= readings.back().wh) {
    readings.push_back(*final_reading);
  } else {
    spdlog::error("connector {}: {}: no final meter reading; billing to the last committed one ({} Wh)", c.cfg.id, s.id, readings.back().wh);
    readings.push_back(readings.back());
  }
  const std::string txn = s.id, method = s.method;
  const std::int64_t authorized = s.authorized_fen;
  close_transaction(txn, c.cfg.id, method, readings, "completed", authorized,
                    [this, &c, txn, readings, done = std::move(done), alive = alive_](nlohmann::json receipt) mutable {
    if (!*alive) return;
    if (!receipt.value("ok", false) && receipt.value("retry", false) && c.session && c.session->id == txn) {
      // Not on disk (a full disk): the session stays, so nothing starts on this connector and
      // nothing is billed twice, and the close is tried again.
      ++c.close_failures;
      if (c.close_failures == 1) {
        emit({{"event", "alarm"}, {"code", "storage.close_failed"}, {"severity", "critical"}, {"connector", c.cfg.id}, {"active", true},
              {"message", fmt::format("{} cannot be closed: {}; retried", txn, receipt.value("error", ""))}});
      }
      done(std::move(receipt));
      c.close_retry = timer_after(Duration(site_.session.charging.meter_timeout_ms + 1000), [this, &c, txn, last = readings.back()] {
        if (c.session && c.session->id == txn) finish(c, last, [](const nlohmann::json&) {});
      });
      return;
    }
    c.close_failures = 0;
    if (c.session && c.session->id == txn) c.session.reset();
    auto waiting = std::move(c.on_closed);
    c.on_closed.clear();
    done(std::move(receipt));
    for (auto& w : waiting) w();  // last: the final one may finish the shutdown, destroying the engine
  });
}

void SessionEngine::close_transaction(const std::string& txn, std::uint32_t connector_id, const std::string& method, std::vector<MeterReading> readings,
                                      const std::string& outcome, std::int64_t authorized, std::function<void(nlohmann::json)> done) {
  Bill bill;
  try {
    bill = compute_bill(*site_.session.tariff, readings);
  } catch (const std::exception& e) {
    spdlog::critical("{}: cannot bill: {}", txn, e.what());
    bill = Bill{};
  }
  const std::int64_t capture = std::min(bill.total_fen, authorized);
  const MoneyOperation op = saga_->capture_intent(txn, method, capture);
  auto record = std::make_shared<nlohmann::json>();
  // One transaction: the final reading, the bill, 'closed', the session's ledger record and the
  // capture's intent. The capture is asked only once all of that is on disk.
  store_.submit(
      [this, txn, connector_id, method, readings, outcome, bill, capture, op, record](Database& db) {
        std::string stop_reason;
        {
          Stmt q(db, "SELECT user_token, payment_ref, started_ms, stop_reason, stopped_ms, status FROM transactions WHERE id=?");
          q.bind(1, txn);
          if (!q.step()) throw std::runtime_error(fmt::format("no transaction '{}'", txn));
          if (q.text(5) == "closed") throw std::runtime_error(fmt::format("{} is already closed", txn));
          stop_reason = q.text(3).empty() ? std::string("Recovered") : q.text(3);
          *record = {{"transaction", txn},
                     {"site", site_.id},
                     {"connector", connector_id},
                     {"method", method},
                     {"user", q.text(0)},
                     {"payment_ref", q.text(1)},
                     {"started_ms", q.i64(2)},
                     {"stop_reason", stop_reason},
                     {"stopped_ms", q.null(4) ? ms_of(readings.back().time) : q.i64(4)},
                     {"meter_start_wh", readings.front().wh},
                     {"meter_stop_wh", readings.back().wh},
                     {"bill", bill_json(bill)},
                     {"capture_fen", capture},
                     {"capture_operation", op.id},
                     {"outcome", outcome}};
        }
        int seq = 0;
        {
          Stmt q(db, "SELECT COALESCE(MAX(seq), -1) + 1 FROM readings WHERE txn_id=?");
          q.bind(1, txn);
          q.step();
          seq = static_cast<int>(q.i64(0));
        }
        insert_reading(db, txn, seq, readings.back(), outcome == "recovered" ? "recovery" : "stop");
        Stmt(db,
             "UPDATE transactions SET status='closed', outcome=?, meter_stop_wh=?, energy_wh=?, electricity_fen=?, service_fen=?, total_fen=?, "
             "captured_fen=0, capture_status=?, bill=?, stopped_ms=COALESCE(stopped_ms, ?), "
             "stop_reason=CASE WHEN stop_reason='' THEN 'Recovered' ELSE stop_reason END WHERE id=?")
            .bind(1, outcome).bind(2, readings.back().wh).bind(3, bill.energy_wh).bind(4, bill.electricity_fen).bind(5, bill.service_fen)
            .bind(6, bill.total_fen).bind(7, capture > 0 ? "pending" : "nothing to capture").bind(8, bill_json(bill).dump())
            .bind(9, ms_of(readings.back().time)).bind(10, txn)
            .step();
        if (capture > 0) operations::insert_intent(db, op);
        if (hooks_.ledger_append && !(hooks_.ledger_contains && hooks_.ledger_contains(txn))) hooks_.ledger_append(txn, *record);
      },
      [this, txn, connector_id, method, bill, capture, op, outcome, record, done = std::move(done), alive = alive_](const Status& st) {
        if (!*alive) return;
        if (!st.ok()) {
          spdlog::critical("{}: could not close the transaction: {}; the session stays open and the close is retried", txn, st.message());
          done({{"ok", false}, {"error", st.message()}, {"transaction", txn}, {"retry", true}});
          return;
        }
        spdlog::info("connector {}: {}: {} {} Wh, {} fen; capturing {} fen", connector_id, txn, outcome, bill.energy_wh, bill.total_fen, capture);
        auto closed = [this, txn, connector_id, bill, outcome, record, done](const MoneyOperation* captured) {
          nlohmann::json r = *record;
          const std::string capture_status = captured == nullptr                               ? "nothing to capture"
                                             : captured->state == OperationStateRow::confirmed ? "captured"
                                             : captured->state == OperationStateRow::pending   ? fmt::format("pending: {}", captured->reason)
                                                                                               : fmt::format("failed: {}", captured->reason);
          r["captured_fen"] = captured && captured->state == OperationStateRow::confirmed ? captured->amount_fen : 0;
          r["capture_status"] = capture_status;
          emit({{"event", "session_closed"}, {"connector", connector_id}, {"transaction", txn}, {"outcome", outcome}, {"stop_reason", r["stop_reason"]},
                {"energy_wh", bill.energy_wh}, {"total_fen", bill.total_fen}, {"captured_fen", r["captured_fen"]}, {"capture_status", capture_status}});
          done({{"ok", true}, {"transaction", txn}, {"receipt", r}});
        };
        if (capture <= 0) {
          saga_->release(txn, method);
          closed(nullptr);
          return;
        }
        saga_->execute(op, [closed](const MoneyOperation& result) { closed(&result); });
      });
}

std::vector<MeterReading> SessionEngine::stored_readings(const std::string& txn) const {
  std::vector<MeterReading> out;
  Stmt s(reader_, "SELECT time_ms, wh FROM readings WHERE txn_id=? ORDER BY seq");
  s.bind(1, txn);
  while (s.step()) out.push_back({tp_of(s.i64(0)), s.i64(1)});
  return out;
}

void SessionEngine::recover(std::function<void()> done) {
  // Money first: captures, voids and refunds without an outcome are asked again, and
  // authorisations a crash cut off are released.
  saga_->resume();
  struct Open {
    std::string id;
    std::uint32_t connector;
    std::string method;
    std::int64_t authorized;
    std::optional<std::int64_t> next_start_wh;  ///< the next transaction's start reading on this connector
  };
  std::vector<Open> open;
  {
    Stmt s(reader_,
           "SELECT t.id, t.connector, t.method, t.authorized_fen, "
           "(SELECT n.meter_start_wh FROM transactions n WHERE n.connector=t.connector AND n.started_ms>t.started_ms ORDER BY n.started_ms LIMIT 1) "
           "FROM transactions t WHERE t.status IN ('open','stopping') ORDER BY t.started_ms");
    while (s.step()) {
      open.push_back({s.text(0), static_cast<std::uint32_t>(s.i64(1)), s.text(2), s.i64(3),
                      s.null(4) ? std::nullopt : std::optional<std::int64_t>(s.i64(4))});
    }
  }
  if (open.empty() || !site_.session.tariff) {
    if (!open.empty()) spdlog::error("{} open transaction(s) but no tariffs: they stay open until the site file has tariffs", open.size());
    done();
    return;
  }
  spdlog::warn("recovering {} transaction(s) left open by an unclean stop", open.size());
  {
    nlohmann::json ids = nlohmann::json::array();
    for (const auto& o : open) ids.push_back(o.id);
    emit({{"event", "recovering"}, {"transactions", ids}});
  }
  auto remaining = std::make_shared<std::size_t>(open.size());
  auto done_ptr = std::make_shared<std::function<void()>>(std::move(done));
  for (const auto& o : open) {
    if (Connector* c = connector(o.connector)) ++c->recovering;
  }
  for (const auto& o : open) {
    Connector* c = connector(o.connector);
    auto close = [this, o, remaining, done_ptr](std::optional<MeterReading> m) {
      std::vector<MeterReading> readings = stored_readings(o.id);
      if (readings.empty()) {
        spdlog::critical("{}: no readings stored; cannot bill", o.id);
        readings.push_back({clock_.now(), 0});
      }
      if (m && o.next_start_wh && m->wh > *o.next_start_wh) {
        // A later transaction started on this connector (its close failed and was lost): the
        // meter now holds its energy too. This one ends where that one began.
        spdlog::error("{}: bounded by the next transaction's start reading {} Wh (the meter reads {} Wh)", o.id, *o.next_start_wh, m->wh);
        m->wh = *o.next_start_wh;
      }
      if (m && m->time >= readings.back().time && m->wh >= readings.back().wh) {
        readings.push_back(*m);
      } else {
        if (m) spdlog::error("{}: the meter reads {} Wh, below the last committed {} Wh; billing to the committed reading", o.id, m->wh, readings.back().wh);
        readings.push_back(readings.back());
      }
      close_transaction(o.id, o.connector, o.method, readings, "recovered", o.authorized, [this, o, remaining, done_ptr](const nlohmann::json&) {
        // The connector is free again: start the session autostart held back for a vehicle
        // that plugged in meanwhile (see Connector::recovering).
        Connector* cp = connector(o.connector);
        if (cp && --cp->recovering == 0 && !cp->session && !cp->starting && site_.session.payment.autostart &&
            cp->fsm.status() == ConnectorStatus::preparing) {
          start(cp->cfg.id, site_.session.payment.default_method, fmt::format("autostart:{}", cp->cfg.id), [id = cp->cfg.id](const nlohmann::json& r) {
            if (!r.value("ok", false)) spdlog::warn("connector {}: autostart failed: {}", id, r.value("error", ""));
          });
        }
        if (--*remaining == 0) (*done_ptr)();
      });
    };
    if (c) {
      read_meter(*c, close);
    } else {
      close(std::nullopt);
    }
  }
}

void SessionEngine::stop_all(std::function<void()> done) {
  shutting_down_ = true;
  auto remaining = std::make_shared<std::size_t>(0);
  auto cb = std::make_shared<std::function<void()>>(std::move(done));
  auto fired = std::make_shared<bool>(false);
  // Once the sessions are closed, captures (and voids, refunds) in flight get their answers
  // before the payment plugins stop; the timer below bounds the whole wait.
  auto finish = [this, cb, fired, alive = alive_] {
    if (*fired || !*alive) return;
    saga_->drain([cb, fired] {
      if (*fired) return;
      *fired = true;
      (*cb)();
    });
  };
  auto give_up = [cb, fired] {
    if (*fired) return;
    *fired = true;
    (*cb)();
  };
  // Sessions already stopping (a vehicle full, a fault) are waited for too: their capture may be
  // in flight, and the payment method must not be stopped under it.
  for (auto& [id, c] : connectors_) {
    if (c->session) ++*remaining;
  }
  keep_until_fired(timer_after(Duration(site_.session.charging.meter_timeout_ms + 2000), give_up));
  if (*remaining == 0) {
    finish();
    return;
  }
  for (auto& [id, c] : connectors_) {
    if (!c->session) continue;
    auto one_closed = [remaining, finish] {
      if (--*remaining == 0) finish();
    };
    if (c->session->stopping) {
      c->on_closed.push_back(one_closed);
    } else {
      stop(id, StopReason::shutdown, [one_closed](const nlohmann::json&) { one_closed(); });
    }
  }
}

nlohmann::json SessionEngine::status() const {
  nlohmann::json conns = nlohmann::json::array();
  for (const auto& [id, c] : connectors_) {
    nlohmann::json j = {{"id", id}, {"status", std::string(pilecore::to_string(c->fsm.status()))}, {"plugged", c->fsm.plugged()}};
    if (c->last) j["meter_wh"] = c->last->wh;
    if (auto ref = hooks_.find(c->cfg.power); ref.plugin && ref.kind == Kind::power) {
      const auto v = static_cast<power::PowerStage*>(ref.plugin)->vehicle();
      j["power_w"] = v.power_w;
      if (v.soc_percent) j["soc_pct"] = *v.soc_percent;
    }
    if (c->session) {
      const auto& s = *c->session;
      nlohmann::json sj = {{"transaction", s.id}, {"method", s.method}, {"user", s.token}, {"started", format_utc(s.readings.front().time)},
                           {"setpoint_w", s.setpoint_w}, {"stopping", s.stopping}};
      if (c->last && site_.session.tariff) {
        std::vector<MeterReading> r = s.readings;
        if (c->last->time >= r.back().time && c->last->wh >= r.back().wh) r.push_back(*c->last);
        const Bill b = compute_bill(*site_.session.tariff, r);
        sj["energy_wh"] = b.energy_wh;
        sj["amount_fen"] = b.total_fen;
      }
      j["session"] = sj;
    }
    conns.push_back(j);
  }
  return {{"ok", true}, {"site", site_.id}, {"time", format_utc(clock_.now())}, {"connectors", conns}};
}

nlohmann::json SessionEngine::receipt(const std::string& txn) const {
  Stmt s(reader_,
         "SELECT connector, method, user_token, status, outcome, stop_reason, started_ms, stopped_ms, meter_start_wh, meter_stop_wh, energy_wh, "
         "total_fen, captured_fen, capture_status, bill FROM transactions WHERE id=?");
  s.bind(1, txn);
  if (!s.step()) return {{"ok", false}, {"error", fmt::format("no transaction '{}'", txn)}};
  nlohmann::json j = {{"ok", true},
                      {"transaction", txn},
                      {"connector", s.i64(0)},
                      {"method", s.text(1)},
                      {"user", s.text(2)},
                      {"status", s.text(3)},
                      {"outcome", s.text(4)},
                      {"stop_reason", s.text(5)},
                      {"started", format_utc(tp_of(s.i64(6)))},
                      {"meter_start_wh", s.i64(8)}};
  if (!s.null(7)) j["stopped"] = format_utc(tp_of(s.i64(7)));
  if (!s.null(9)) j["meter_stop_wh"] = s.i64(9);
  if (!s.null(10)) j["energy_wh"] = s.i64(10);
  if (!s.null(11)) j["total_fen"] = s.i64(11);
  if (!s.null(12)) j["captured_fen"] = s.i64(12);
  j["capture_status"] = s.text(13);
  if (!s.null(14)) j["bill"] = nlohmann::json::parse(s.text(14), nullptr, false);
  nlohmann::json ops = nlohmann::json::array();
  for (const auto& op : operations::of_transaction(reader_, txn)) {
    ops.push_back({{"operation", op.id}, {"kind", std::string(to_string(op.kind))}, {"state", std::string(to_string(op.state))},
                   {"amount_fen", op.amount_fen}, {"method", op.method}, {"reference", op.reference}, {"reason", op.reason}, {"attempts", op.attempts}});
  }
  j["operations"] = ops;
  return j;
}

}  // namespace pilecore::core
