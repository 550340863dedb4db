#include "session_engine.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "clocks.hpp"

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

/// A prepared statement; throws std::runtime_error naming the SQL on failure.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &st_, nullptr) != SQLITE_OK) throw std::runtime_error(fmt::format("{}: {}", sql, sqlite3_errmsg(db)));
  }
  /// The database's cached statement for `sql`: reset and unbound again when done.
  Stmt(Database& db, const char* sql) : db_(db.handle()), st_(db.prepared(sql)), cached_(true) {}
  ~Stmt() {
    if (cached_) {
      sqlite3_reset(st_);
      sqlite3_clear_bindings(st_);
    } else {
      sqlite3_finalize(st_);
    }
  }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  Stmt& bind(int i, std::int64_t v) {
    sqlite3_bind_int64(st_, i, v);
    return *this;
  }
  Stmt& bind(int i, const std::string& v) {
    sqlite3_bind_text(st_, i, v.c_str(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  bool step() {
    const int rc = sqlite3_step(st_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    throw std::runtime_error(fmt::format("{}: {}", sqlite3_sql(st_), sqlite3_errmsg(db_)));
  }
  std::int64_t i64(int c) const { return sqlite3_column_int64(st_, c); }
  std::string text(int c) const {
    const auto* t = sqlite3_column_text(st_, c);
    return t ? reinterpret_cast<const char*>(t) : "";
  }
  bool null(int c) const { return sqlite3_column_type(st_, c) == SQLITE_NULL; }

 private:
  sqlite3* db_;
  sqlite3_stmt* st_ = nullptr;
  bool cached_ = false;
};

std::int64_t ms_of(TimePoint t) { return t.time_since_epoch().count(); }

// Holds. An authorisation asked for a transaction whose row is not committed yet holds the
// customer's money at the acquirer with nothing in the database to say so: a crash between
// authorize() and that commit (or a stop that cuts the answer off) would leave it held until it
// expires. So the key 'hold:<txn>' (value: the payment instance) commits with the transaction id,
// before authorize(), and goes with the row's commit or once the acquirer confirms the release;
// recover() releases what a crash left. (Found by the crash-injection test, tests/crash.)
void drop_hold(sqlite3* db, const std::string& txn) noexcept {
  try {
    Stmt(db, "DELETE FROM meta WHERE key=?").bind(1, "hold:" + txn).step();
  } catch (const std::exception& e) {
    spdlog::error("{}: the hold record stays (released again at the next start): {}", txn, e.what());
  }
}
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
  std::uint32_t sessions_since(std::string_view user, TimePoint since) const noexcept override {
    try {
      Stmt s(db_, "SELECT COUNT(*) FROM transactions WHERE user_token=? AND started_ms>=?");
      s.bind(1, std::string(user)).bind(2, ms_of(since));
      return s.step() ? static_cast<std::uint32_t>(s.i64(0)) : 0;
    } catch (...) {
      return 0;
    }
  }
  std::int64_t amount_since_fen(std::string_view user, TimePoint since) const noexcept override {
    try {
      Stmt s(db_, "SELECT COALESCE(SUM(total_fen),0) FROM transactions WHERE user_token=? AND started_ms>=?");
      s.bind(1, std::string(user)).bind(2, ms_of(since));
      return s.step() ? s.i64(0) : 0;
    } catch (...) {
      return 0;
    }
  }

 private:
  sqlite3* db_;
};

}  // namespace

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
  std::optional<MeterReading> last;
  std::list<Waiter> waiters;
  std::vector<std::function<void()>> on_closed;  ///< called once the stopping session is closed (stop_all waits with it)
  /// Transactions of this connector that recover() is closing. No session starts meanwhile: its
  /// energy would move the meter under the recovery's final reading (billed twice), and a
  /// recovery cut short by another crash reads the meter again at the next start.
  int recovering = 0;
};

SessionEngine::SessionEngine(const SiteConfig& site, Database& db, const Clock& clock, Strand& strand, Hooks hooks)
    : site_(site), db_(db), clock_(clock), strand_(strand), hooks_(std::move(hooks)), alive_(std::make_shared<bool>(true)) {
  for (const auto& c : site_.connectors) {
    auto conn = std::make_unique<Connector>();
    conn->cfg = c;
    connectors_.emplace(c.id, std::move(conn));
  }
}

SessionEngine::~SessionEngine() { *alive_ = false; }

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
      apply(*c, ConnectorEvent::fault_cleared, fmt::format("meter '{}' answers again", instance));
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
    const MeterReading r{sample.time, std::llround(sample.value)};
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

void SessionEngine::read_meter(Connector& c, std::function<void(std::optional<MeterReading>)> done) {
  const std::uint64_t id = ++next_waiter_;
  c.waiters.push_back(Waiter{id, clock_.now(), std::move(done)});
  const auto ref = hooks_.find(c.cfg.meter);
  if (ref.plugin && ref.kind == Kind::sensor && ref.api_minor >= 1) static_cast<sensor::Sensor*>(ref.plugin)->refresh();
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
  std::int64_t n = 1;
  {
    Stmt s(db_, "SELECT value FROM meta WHERE key='txn_seq'");
    if (s.step()) n = std::stoll(s.text(0)) + 1;
  }
  Stmt u(db_, "INSERT INTO meta(key, value) VALUES('txn_seq', ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value");
  u.bind(1, std::to_string(n)).step();
  return fmt::format("{}-{}-{:06}", site_.id, connector, n);
}

void SessionEngine::release_hold(const std::string& txn, const std::string& method) {
  const auto p = hooks_.find(method);
  if (!p.plugin || p.kind != Kind::payment) return;  // the hold stays recorded: released at the next start
  static_cast<payment::Method*>(p.plugin)->cancel(txn, [this, txn, alive = alive_](Status st) {
    // ok: released; invalid_argument: nothing to release (never authorised, or declined). Any
    // other answer (unreachable, the method stopped): kept, and released at the next start.
    if (*alive && (st.ok() || st.code() == StatusCode::invalid_argument)) drop_hold(db_.handle(), txn);
  });
}

void SessionEngine::insert_reading(const std::string& txn, int seq, const MeterReading& r, const char* kind) {
  Stmt s(db_, "INSERT INTO readings(txn_id, seq, time_ms, wh, kind) VALUES(?,?,?,?,?)");
  s.bind(1, txn).bind(2, seq).bind(3, ms_of(r.time)).bind(4, r.wh).bind(5, std::string(kind)).step();
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
  auto st = std::make_shared<State>(State{rules.size(), risk::Verdict::allow, {}, false, std::move(done), DbHistory(db_.handle()),
                                          std::string(ctx.transaction_id), std::string(ctx.method), std::string(ctx.user_token), nullptr});
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
  c.user_token = st->token;
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

void SessionEngine::start(std::uint32_t id, std::string method, std::string token, Reply done) {
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
  std::string txn;
  try {
    db_.exec("BEGIN IMMEDIATE");
    txn = next_transaction_id(id);
    Stmt(db_, "INSERT INTO meta(key, value) VALUES(?, ?)").bind(1, "hold:" + txn).bind(2, method).step();
    db_.exec("COMMIT");  // the hold is on disk before the acquirer is asked
  } catch (const std::exception& e) {
    try {
      db_.exec("ROLLBACK");
    } catch (...) {
    }
    c.starting = false;
    return fail(fmt::format("database: {}", e.what()));
  }
  const std::int64_t amount = site_.session.payment.preauth_fen;
  risk::Context ctx{txn, id, method, token, amount, clock_.now()};
  spdlog::info("connector {}: {}: start requested ({} via {})", id, txn, token, method);
  evaluate_risk(ctx, [this, &c, txn, method, token, amount, done, alive = alive_](risk::Verdict verdict, std::string reasons) {
    if (!*alive) return;
    if (verdict != risk::Verdict::allow) {
      c.starting = false;
      drop_hold(db_.handle(), txn);  // nothing was asked of the acquirer
      spdlog::warn("connector {}: {}: risk {}: {}", c.cfg.id, txn, risk::to_string(verdict), reasons);
      done({{"ok", false}, {"error", fmt::format("risk check: {}: {}", risk::to_string(verdict), reasons)}, {"verdict", std::string(risk::to_string(verdict))}});
      return;
    }
    auto pay_ref = hooks_.find(method);
    if (!pay_ref.plugin) {
      c.starting = false;
      drop_hold(db_.handle(), txn);
      done({{"ok", false}, {"error", fmt::format("payment instance '{}' is no longer running", method)}});
      return;
    }
    payment::AuthorizationRequest req{txn, c.cfg.id, token, amount, clock_.now() + Duration(site_.session.payment.authorize_timeout_ms)};
    static_cast<payment::Method*>(pay_ref.plugin)
        ->authorize(req, [this, &c, txn, method, token, done, alive](payment::AuthorizationResult r) {
          if (!*alive) return;
          if (r.decision != payment::Decision::approved) {
            c.starting = false;
            // "Declined" also stands for a timeout or a method that stopped before answering,
            // when the acquirer may have approved: release, to be sure.
            release_hold(txn, method);
            done({{"ok", false}, {"error", fmt::format("payment {}: {}", r.decision == payment::Decision::step_up ? "needs step-up" : "declined", r.reason)}});
            return;
          }
          read_meter(c, [this, &c, txn, method, token, r, done, alive](std::optional<MeterReading> m) {
            if (!*alive) return;
            // Stopping: stop_all() has counted the sessions it waits for, so a transaction
            // committed now would be left open by a clean stop. Release the hold instead.
            if (!m || shutting_down_) {
              c.starting = false;
              release_hold(txn, method);
              done({{"ok", false}, {"error", m ? "pilecored is stopping; authorisation released" : "the meter gave no reading; authorisation released"}});
              return;
            }
            try {
              db_.exec("BEGIN IMMEDIATE");
              Stmt s(db_,
                     "INSERT INTO transactions(id, connector, method, user_token, payment_ref, authorized_fen, status, started_ms, meter_start_wh) "
                     "VALUES(?,?,?,?,?,?, 'open', ?, ?)");
              s.bind(1, txn).bind(2, c.cfg.id).bind(3, method).bind(4, token).bind(5, r.reference).bind(6, r.authorized_fen).bind(7, ms_of(m->time)).bind(8, m->wh).step();
              insert_reading(txn, 0, *m, "start");
              Stmt(db_, "DELETE FROM meta WHERE key=?").bind(1, "hold:" + txn).step();  // the row says it now
              db_.exec("COMMIT");  // synchronous=FULL: on disk before the contactor closes
            } catch (const std::exception& e) {
              c.starting = false;
              try {
                db_.exec("ROLLBACK");
              } catch (...) {
              }
              release_hold(txn, method);
              done({{"ok", false}, {"error", fmt::format("database: {}", e.what())}});
              return;
            }
            c.starting = false;
            c.session.emplace();
            Session& s = *c.session;
            s.id = txn;
            s.method = method;
            s.token = token;
            s.authorized_fen = r.authorized_fen;
            s.readings.push_back(*m);
            s.last_checkpoint = *m;
            spdlog::info("connector {}: {}: authorised {} fen, meter {} Wh", c.cfg.id, txn, r.authorized_fen, m->wh);
            apply(c, ConnectorEvent::authorized_start, fmt::format("transaction {} authorised", txn));
            // From Finishing a new session goes to Preparing; the vehicle is still plugged in, so
            // there is no plug event to wait for.
            if (c.fsm.status() == ConnectorStatus::preparing && c.fsm.plugged()) {
              apply(c, ConnectorEvent::authorized_start, "the vehicle is still plugged in");
            }
            emit({{"event", "session_started"}, {"connector", c.cfg.id}, {"transaction", txn}, {"method", method}, {"user", token},
                  {"authorized_fen", r.authorized_fen}, {"payment_ref", r.reference}, {"meter_start_wh", m->wh}});
            if (c.fsm.status() == ConnectorStatus::charging) begin_charging(c);
            arm_boundary(c);
            done({{"ok", true}, {"transaction", txn}, {"connector", c.cfg.id}, {"meter_start_wh", m->wh}});
          });
        });
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
  if (Status st = static_cast<power::PowerStage*>(ref.plugin)->close_contactor(); !st.ok()) {
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
    if (Status st = stage->set_power_limit(watts); !st.ok()) spdlog::warn("connector {}: set_power_limit: {}", c.cfg.id, st.message());
  }
}

void SessionEngine::arm_setpoint(Connector& c) {
  if (!c.session) return;
  c.session->setpoint_timer = timer_after(Duration(site_.session.charging.setpoint_interval_ms), [this, &c] {
    if (!c.session || c.session->stopping) return;
    update_setpoint(c);
    arm_setpoint(c);
  });
}

void SessionEngine::checkpoint(Connector& c, const MeterReading& r) {
  Session& s = *c.session;
  const auto& ch = site_.session.charging;
  if (r.time - s.last_checkpoint.time < Duration(ch.checkpoint_interval_ms) && r.wh - s.last_checkpoint.wh < ch.checkpoint_wh) return;
  if (r.wh < s.readings.back().wh || r.time < s.readings.back().time) return;
  try {
    insert_reading(s.id, static_cast<int>(s.readings.size()), r, "checkpoint");
  } catch (const std::exception& e) {
    spdlog::error("connector {}: {}: checkpoint not committed: {}", c.cfg.id, s.id, e.what());
    return;
  }
  s.readings.push_back(r);
  s.last_checkpoint = r;
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
        try {
          insert_reading(s.id, static_cast<int>(s.readings.size()), *m, "boundary");
          s.readings.push_back(*m);
          s.last_checkpoint = *m;
          spdlog::info("connector {}: {}: tariff boundary at {}: meter {} Wh", c.cfg.id, s.id, format_utc(boundary), m->wh);
          const Slot next = site_.session.tariff->slot_at(boundary);
          emit({{"event", "tariff_boundary"}, {"connector", c.cfg.id}, {"transaction", s.id}, {"meter_wh", m->wh}, {"boundary", format_utc(boundary)},
                {"period", std::string(to_string(next.type))}, {"plan", next.plan}});
        } catch (const std::exception& e) {
          spdlog::error("connector {}: boundary reading not committed: {}", c.cfg.id, e.what());
        }
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
  const TimePoint now = clock_.now();
  try {
    Stmt u(db_, "UPDATE transactions SET status='stopping', stop_reason=?, stopped_ms=? WHERE id=?");
    u.bind(1, std::string(to_string(reason))).bind(2, ms_of(now)).bind(3, s.id).step();
  } catch (const std::exception& e) {
    spdlog::error("connector {}: {}: {}", id, s.id, e.what());
  }
  switch (reason) {
    case StopReason::local: apply(c, ConnectorEvent::user_stop, "stopped at the pile"); break;
    case StopReason::remote:
    case StopReason::shutdown: apply(c, ConnectorEvent::remote_stop, std::string(to_string(reason))); break;
    case StopReason::funds_exhausted: apply(c, ConnectorEvent::funds_exhausted, "authorised amount reached"); break;
    case StopReason::ev_full: apply(c, ConnectorEvent::ev_full, "the vehicle is full"); break;
    case StopReason::ev_disconnected: apply(c, ConnectorEvent::unplugged, "the vehicle was unplugged"); break;
    case StopReason::fault: break;  // the caller puts the connector in Faulted
  }
  spdlog::info("connector {}: {}: stopping ({})", id, s.id, to_string(reason));
  emit({{"event", "session_stopping"}, {"connector", id}, {"transaction", s.id}, {"reason", std::string(to_string(reason))}});
  if (c.meter_failed) {
    finish(c, std::nullopt, std::move(done));
    return;
  }
  read_meter(c, [this, &c, done = std::move(done)](std::optional<MeterReading> m) mutable { finish(c, m, std::move(done)); });
}

void SessionEngine::finish(Connector& c, std::optional<MeterReading> final_reading, Reply done) {
  if (!c.session) return;
  Session& s = *c.session;
  std::vector<MeterReading> readings = s.readings;
  if (!final_reading && c.last && c.last->time >= readings.back().time && c.last->wh >= readings.back().wh) final_reading = c.last;
  if (final_reading && final_reading->time >= readings.back().time && final_reading->wh >= readings.back().wh) {
    readings.push_back(*final_reading);
  } else {
    spdlog::error("connector {}: {}: no final meter reading; billing to the last committed one ({} Wh)", c.cfg.id, s.id, readings.back().wh);
    readings.push_back(readings.back());
  }
  try {
    insert_reading(s.id, static_cast<int>(readings.size() - 1), readings.back(), "stop");
  } catch (const std::exception& e) {
    spdlog::error("connector {}: {}: {}", c.cfg.id, s.id, e.what());
  }
  const std::string txn = s.id, method = s.method;
  close_transaction(txn, c.cfg.id, method, readings, "completed", [this, &c, txn, done = std::move(done)](nlohmann::json receipt) {
    if (c.session && c.session->id == txn) c.session.reset();
    auto waiting = std::move(c.on_closed);
    c.on_closed.clear();
    done(std::move(receipt));
    for (auto& w : waiting) w();  // last: the final one may finish the shutdown, destroying the engine
  });
}

void SessionEngine::close_transaction(const std::string& txn, std::uint32_t connector_id, const std::string& method, std::vector<MeterReading> readings,
                                      const std::string& outcome, std::function<void(nlohmann::json)> done) {
  Bill bill;
  try {
    bill = compute_bill(*site_.session.tariff, readings);
  } catch (const std::exception& e) {
    spdlog::critical("{}: cannot bill: {}", txn, e.what());
    bill = Bill{};
  }
  std::int64_t authorized = 0;
  {
    Stmt s(db_, "SELECT authorized_fen FROM transactions WHERE id=?");
    s.bind(1, txn);
    if (s.step()) authorized = s.i64(0);
  }
  const std::int64_t capture = std::min(bill.total_fen, authorized);
  auto commit = [this, txn, connector_id, method, readings, outcome, bill, capture, done](const Status& st) {
    // A capture the acquirer did not confirm because the payment method stopped (pilecored is
    // stopping and its deadline passed) may well have been taken: closing it as failed, with
    // captured_fen 0, would put money at the acquirer that the database and the ledger do not
    // have (the crash-injection test found exactly that). Leave the transaction as it is; the
    // next start recovers it and repeats the capture, which is idempotent at the acquirer.
    if (!st.ok() && shutting_down_ && (st.code() == StatusCode::unavailable || st.code() == StatusCode::timeout || st.code() == StatusCode::busy)) {
      spdlog::warn("connector {}: {}: capture of {} fen not confirmed while stopping ({}); recovered, and the capture repeated, at the next start",
                   connector_id, txn, capture, st.message());
      done({{"ok", false}, {"error", fmt::format("capture not confirmed: {}; recovered at the next start", st.message())}, {"transaction", txn}});
      return;
    }
    const std::string capture_status = st.ok() ? "captured" : fmt::format("failed: {}", st.message());
    nlohmann::json record;
    try {
      Stmt q(db_, "SELECT user_token, payment_ref, started_ms, stop_reason, stopped_ms, meter_start_wh FROM transactions WHERE id=?");
      q.bind(1, txn);
      q.step();
      record = {{"transaction", txn},
                {"site", site_.id},
                {"connector", connector_id},
                {"method", method},
                {"user", q.text(0)},
                {"payment_ref", q.text(1)},
                {"started_ms", q.i64(2)},
                {"stop_reason", q.text(3).empty() ? std::string("Recovered") : q.text(3)},
                {"stopped_ms", q.null(4) ? ms_of(readings.back().time) : q.i64(4)},
                {"meter_start_wh", readings.front().wh},
                {"meter_stop_wh", readings.back().wh},
                {"bill", bill_json(bill)},
                {"captured_fen", st.ok() ? capture : 0},
                {"capture_status", capture_status},
                {"outcome", outcome}};
      db_.exec("BEGIN IMMEDIATE");
      Stmt u(db_,
             "UPDATE transactions SET status='closed', outcome=?, meter_stop_wh=?, energy_wh=?, electricity_fen=?, service_fen=?, total_fen=?, "
             "captured_fen=?, capture_status=?, bill=?, stopped_ms=COALESCE(stopped_ms, ?), stop_reason=CASE WHEN stop_reason='' THEN 'Recovered' ELSE stop_reason END "
             "WHERE id=? AND status<>'closed'");
      u.bind(1, outcome).bind(2, readings.back().wh).bind(3, bill.energy_wh).bind(4, bill.electricity_fen).bind(5, bill.service_fen).bind(6, bill.total_fen)
          .bind(7, st.ok() ? capture : 0).bind(8, capture_status).bind(9, bill_json(bill).dump()).bind(10, ms_of(readings.back().time)).bind(11, txn).step();
      if (hooks_.ledger_append && !(hooks_.ledger_contains && hooks_.ledger_contains(txn))) hooks_.ledger_append(txn, record);
      db_.exec("COMMIT");
    } catch (const std::exception& e) {
      try {
        db_.exec("ROLLBACK");
      } catch (...) {
      }
      spdlog::critical("{}: could not close the transaction: {}; it will be recovered at the next start", txn, e.what());
      done({{"ok", false}, {"error", e.what()}, {"transaction", txn}});
      return;
    }
    spdlog::info("connector {}: {}: {} {} Wh, {} fen ({})", connector_id, txn, outcome, bill.energy_wh, bill.total_fen, capture_status);
    emit({{"event", "session_closed"}, {"connector", connector_id}, {"transaction", txn}, {"outcome", outcome}, {"stop_reason", record["stop_reason"]},
          {"energy_wh", bill.energy_wh}, {"total_fen", bill.total_fen}, {"captured_fen", record["captured_fen"]}, {"capture_status", capture_status}});
    done({{"ok", true}, {"transaction", txn}, {"receipt", record}});
  };
  auto pay = hooks_.find(method);
  if (!pay.plugin || pay.kind != Kind::payment) {
    commit(Status::error(StatusCode::unavailable, fmt::format("payment instance '{}' is not running; capture left to settlement", method)));
    return;
  }
  static_cast<payment::Method*>(pay.plugin)->capture(txn, capture, [commit, alive = alive_](Status st) {
    if (*alive) commit(st);
  });
}

std::vector<MeterReading> SessionEngine::stored_readings(const std::string& txn) const {
  std::vector<MeterReading> out;
  Stmt s(db_, "SELECT time_ms, wh FROM readings WHERE txn_id=? ORDER BY seq");
  s.bind(1, txn);
  while (s.step()) out.push_back({tp_of(s.i64(0)), s.i64(1)});
  return out;
}

void SessionEngine::recover(std::function<void()> done) {
  // Holds a crash or a stop left: authorisations whose transaction never committed. Released in
  // the background; recovery does not wait for the acquirer's answers.
  {
    std::vector<std::pair<std::string, std::string>> holds;
    Stmt s(db_, "SELECT substr(key, 6), value FROM meta WHERE key LIKE 'hold:%'");
    while (s.step()) holds.emplace_back(s.text(0), s.text(1));
    for (const auto& [txn, method] : holds) {
      spdlog::warn("{}: authorised at '{}' for a session that never started; releasing the hold", txn, method);
      release_hold(txn, method);
    }
  }
  struct Open {
    std::string id;
    std::uint32_t connector;
    std::string method;
  };
  std::vector<Open> open;
  {
    Stmt s(db_, "SELECT id, connector, method FROM transactions WHERE status IN ('open','stopping') ORDER BY started_ms");
    while (s.step()) open.push_back({s.text(0), static_cast<std::uint32_t>(s.i64(1)), s.text(2)});
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
      } else {
        if (m && m->time >= readings.back().time && m->wh >= readings.back().wh) {
          insert_reading(o.id, static_cast<int>(readings.size()), *m, "recovery");
          readings.push_back(*m);
        } else if (m) {
          spdlog::error("{}: the meter reads {} Wh, below the last committed {} Wh; billing to the committed reading", o.id, m->wh, readings.back().wh);
        }
      }
      if (readings.empty()) readings.push_back({clock_.now(), 0});
      close_transaction(o.id, o.connector, o.method, readings, "recovered", [this, o, remaining, done_ptr](const nlohmann::json&) {
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
  auto finish = [cb, fired] {
    if (*fired) return;
    *fired = true;
    (*cb)();
  };
  // Sessions already stopping (a vehicle full, a fault) are waited for too: their capture may be
  // in flight, and the payment method must not be stopped under it.
  for (auto& [id, c] : connectors_) {
    if (c->session) ++*remaining;
  }
  if (*remaining == 0) {
    finish();
    return;
  }
  keep_until_fired(timer_after(Duration(site_.session.charging.meter_timeout_ms + 2000), finish));
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
  Stmt s(db_,
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
  return j;
}

}  // namespace pilecore::core
