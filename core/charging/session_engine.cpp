#include "session_engine.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include <boost/asio/post.hpp>

#include "clocks.hpp"
#include "crypto.hpp"
#include "db_history.hpp"
#include "inflight.hpp"
#include "money_operations.hpp"
#include "receipt.hpp"
#include "remote_settings.hpp"
#include "reading_repository.hpp"
#include "risk_repository.hpp"
#include "tariff_repository.hpp"
#include "strand_scheduler.hpp"
#include "time_view.hpp"
#include "transaction_repository.hpp"
#include "token_privacy.hpp"

namespace pilecore::core {
namespace asio = boost::asio;

namespace {

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

/// What the risk rules judge before an authorisation (evaluate_risk adds the pile and the day).
/// Views: the strings must outlive the evaluation's start.
static risk::Context authorize_context(const std::string& txn, std::uint32_t connector, const std::string& method, const std::string& user,
                                std::int64_t amount_fen, TimePoint now) {
  return {.phase = risk::Phase::authorize,
          .transaction_id = txn,
          .connector = connector,
          .method = method,
          .channel = {},
          .user = user,
          .amount_fen = amount_fen,
          .time = now,
          .pile = {},
          .day_start = {},
          .utc_offset_s = 0};
}

struct SessionEngine::Connector {
  ConnectorConfig cfg;
  ConnectorFsm fsm;
  /// The meter path and the running session (charging_session.hpp).
  std::unique_ptr<ChargingSession> charging;
  bool starting = false;
  bool meter_failed = false;
  /// Faulted by the guard: implausible readings in a row, or a stall (meter_guard.hpp).
  bool meter_implausible = false;
  std::string starting_txn;  ///< the transaction being authorised (a step-up answer goes to it)
  /// The start waiting for the second factor risk control asked (begin_step_up).
  std::shared_ptr<StartRequest> stepping;
  /// Transactions of this connector that recover() is closing. No session starts meanwhile: its
  /// energy would move the meter under the recovery's final reading (billed twice), and a
  /// recovery cut short by another crash reads the meter again at the next start.
  int recovering = 0;
  /// set_available(false) during a session: Unavailable when it ends (OCPP ChangeAvailability).
  bool unavailable_after_session = false;
  /// Taken out of service by set_available(false) (at once or after its session), until
  /// set_available(true): kept across a restart (RemoteSettings).
  bool remote_unavailable = false;
  std::optional<std::int64_t> remote_cap_w;  ///< set_power_limit() on this connector
  struct RefusedStart {
    std::string method, token, mode;
    TimePoint at;
  };
  std::optional<RefusedStart> last_refused;  ///< what retry_last_start() starts again
  /// Why and since when the connector is in its present state (a fault's reason, an operator's
  /// unavailability): a refused start says it.
  std::string status_why;
  std::optional<TimePoint> status_since;
};

SessionEngine::SessionEngine(const SiteConfig& site, Database& db, StoreWorker& store, const Clock& clock, Strand& strand, Hooks hooks)
    : site_(site), db_(db), store_(store), clock_(clock), strand_(strand), hooks_(std::move(hooks)), alive_(std::make_shared<bool>(true)),
      checkpoint_health_(site.storage.checkpoint_pause_after) {
  reader_db_ = std::make_unique<Database>(db_.path(), Database::ReadOnly{});
  reader_ = reader_db_->handle();
  txn_seq_ = TransactionRepository(*reader_db_).last_sequence();
  scheduler_ = std::make_unique<StrandScheduler>(strand_, clock_);
  site_day_ = std::make_unique<SiteDay>(site_.timezone.empty() ? std::string("UTC") : site_.timezone);
  risk_history_ = std::make_shared<DbHistory>(*reader_db_, *site_day_);
  risk_ = std::make_unique<RiskEngine>(*scheduler_, clock_);
  const auto& pay = site_.session.payment;
  PaymentSaga::Hooks sh;
  sh.method = [this](std::string_view name) -> payment::Method* {
    const auto ref = hooks_.find(name);
    return ref.plugin && ref.kind == Kind::payment ? static_cast<payment::Method*>(ref.plugin) : nullptr;
  };
  sh.recorded = [ledger = hooks_.ledger_operation](Database& wdb, const MoneyOperation& op) {
    // The transaction row carries what its capture took, for the receipt.
    // A confirmed top-up raises the hold a close (also recovery's) captures up to.
    if (op.kind == OperationKind::increment && op.state == OperationStateRow::confirmed) TransactionRepository(wdb).add_authorized(op.txn, op.amount_fen);
    if (op.kind == OperationKind::capture) {
      TransactionRepository(wdb).record_capture(op.txn, op.state == OperationStateRow::confirmed ? op.amount_fen : 0,
                                                op.state == OperationStateRow::confirmed ? std::string("captured") : fmt::format("failed: {}", op.reason));
    }
    if (ledger) ledger(wdb, op);
  };
  sh.settled = [this](const MoneyOperation& op) { emit(events::OperationSettled{op}); };
  saga_ = std::make_unique<PaymentSaga>(store_, reader_, clock_, *scheduler_,
                                        PaymentSaga::Settings{.authorize_timeout = Duration(pay.authorize_timeout_ms),
                                                              .operation_timeout = Duration(pay.authorize_timeout_ms),
                                                              .retry_first = Duration(5000),
                                                              .retry_max = Duration(600000)},
                                        std::move(sh));
  {
    closer_ = std::make_unique<SessionCloser>(site_.id, store_, *saga_,
                                              SessionCloser::Hooks{.ledger_append = hooks_.ledger_append,
                                                                   .ledger_contains = hooks_.ledger_contains,
                                                                   .emit = [this](const Event& e) { emit(e); },
                                                                   .before_capture = [this](const std::string& txn, std::uint32_t connector,
                                                                                            const std::string& method, std::int64_t fen,
                                                                                            std::function<void()> proceed) {
                                                                     risk_before_capture(txn, connector, method, fen, std::move(proceed));
                                                                   }});
  }
  if (site_.session.tariff) set_tariff(*site_.session.tariff);
  for (const auto& cfg : site_.connectors) {
    auto conn = std::make_unique<Connector>();
    conn->cfg = cfg;
    Connector* c = conn.get();
    ChargingSession::Hooks h;
    h.emit = [this](const Event& e) { emit(e); };
    h.refresh_meter = [this, c] {
      const auto ref = hooks_.find(c->cfg.meter);
      if (ref.plugin && ref.kind == Kind::sensor) {
        InFlight mark(c->cfg.meter, "refresh");
        static_cast<sensor::Sensor*>(ref.plugin)->refresh();
      }
    };
    h.power_w = [this, c]() -> std::optional<std::int64_t> {
      auto* stage = power_stage(*c);
      if (!stage) return std::nullopt;
      return stage->vehicle().power_w;
    };
    h.meter_check = [this, c](const MeterCheck& chk, double value) { on_meter_check(*c, chk, value); };
    h.stop = [this, id = cfg.id](StopReason r) { stop(id, r, [](const StopOutcome&) {}); };
    h.setpoint_due = [this, c] { update_setpoint(*c); };
    h.top_up = [this, c](std::int64_t) { top_up(*c); };
    h.checkpoint_committed = [this](const Status& st) { on_checkpoint_commit(st); };
    conn->charging = std::make_unique<ChargingSession>(
        ChargingSession::Settings{.connector = cfg.id, .meter = cfg.meter, .charging = site_.session.charging,
                                  .increment_step_fen = site_.session.payment.increment_step_fen},
        site_.session.charging.meter, cfg.max_power_w, store_, *scheduler_, clock_, closer_.get(), std::move(h));
    // A lie right after a restart must not become a start reading: the guard compares the first
    // reading with the last one committed, not only with the meter's range.
    if (const auto last = ReadingRepository(*reader_db_).highest_of_connector(cfg.id)) c->charging->seed_meter({last->time, last->wh});
    connectors_.emplace(cfg.id, std::move(conn));
  }
}

bool SessionEngine::charging_now(const Connector& c) {
  const auto* r = c.charging->running();
  return r && !r->stopping;
}

SessionEngine::~SessionEngine() {
  *alive_ = false;
  connectors_.clear();  // their timers are the scheduler's
  closer_.reset();
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
  if (t.to != before) {
    c.status_why = why;
    c.status_since = clock_.now();
  }
  if (t.to != before && hooks_.status_changed) hooks_.status_changed(c.cfg.id, t.to, why);
}

void SessionEngine::attach() {
  // Until recover() has seen what the last run left open or suspended, no session starts: the
  // stage replays a plugged vehicle at once, and its autostart would open a second transaction on
  // a connector whose suspended one is about to resume (or whose open one is about to be closed).
  for (auto& [id, c] : connectors_) ++c->recovering;
  for (auto& [id, c] : connectors_) {
    auto* stage = c->cfg.power.empty() ? nullptr : power_stage(*c);
    if (!stage) continue;
    Connector* conn = c.get();
    stage->set_event_sink([this, conn, alive = alive_](power::Event e, std::string_view detail) {
      if (*alive) on_power_event(*conn, e, detail);
    });
  }
}

void SessionEngine::on_power_event(Connector& c, power::Event e, std::string_view detail) {
  const std::string why = fmt::format("power stage: {}{}{}", power::to_string(e), detail.empty() ? "" : ": ", detail);
  switch (e) {
    case power::Event::plugged:
      apply(c, ConnectorEvent::plugged, why);
      if (charging_now(c) && c.fsm.status() == ConnectorStatus::preparing) {
        apply(c, ConnectorEvent::authorized_start, "vehicle plugged in after authorisation");
        begin_charging(c);
      } else {
        autostart(c);
      }
      break;
    case power::Event::unplugged:
      if (charging_now(c)) {
        stop(c.cfg.id, StopReason::ev_disconnected, [](const StopOutcome&) {});
      } else {
        apply(c, ConnectorEvent::unplugged, why);
      }
      break;
    case power::Event::ev_ready: apply(c, ConnectorEvent::ev_ready, why); break;
    case power::Event::ev_paused: apply(c, ConnectorEvent::ev_paused, why); break;
    case power::Event::ev_full:
      if (charging_now(c)) {
        stop(c.cfg.id, StopReason::ev_full, [](const StopOutcome&) {});
      } else {
        apply(c, ConnectorEvent::ev_full, why);
      }
      break;
    case power::Event::fault:
      if (charging_now(c)) stop(c.cfg.id, StopReason::fault, [](const StopOutcome&) {});
      apply(c, ConnectorEvent::fault, why);
      break;
    case power::Event::fault_cleared: apply(c, ConnectorEvent::fault_cleared, why); break;
  }
}

void SessionEngine::on_instance_failed(const std::string& instance, std::optional<std::uint32_t> bound_connector) {
  for (auto& [id, c] : connectors_) {
    if (c->cfg.power != instance && c->cfg.meter != instance && bound_connector != id) continue;
    if (charging_now(*c)) stop(id, StopReason::fault, [](const StopOutcome&) {});
    apply(*c, ConnectorEvent::fault, fmt::format("instance '{}' failed", instance));
  }
}

void SessionEngine::on_instance_restored(const std::string& instance, std::optional<std::uint32_t> bound_connector) {
  for (auto& [id, c] : connectors_) {
    if (c->cfg.power != instance && c->cfg.meter != instance && bound_connector != id) continue;
    apply(*c, ConnectorEvent::fault_cleared, fmt::format("instance '{}' runs again", instance));
  }
}

void SessionEngine::on_instance_disabled(const std::string& instance, std::optional<std::uint32_t> bound_connector, const std::string& why) {
  for (auto& [id, c] : connectors_) {
    if (c->cfg.power != instance && c->cfg.meter != instance && bound_connector != id) continue;
    apply(*c, ConnectorEvent::set_unavailable, fmt::format("instance '{}' {}", instance, why));
  }
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
      if (charging_now(*c)) stop(id, StopReason::fault, [](const StopOutcome&) {});
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
  for (auto& [id, c] : connectors_) {
    if (c->cfg.meter == instance) c->charging->on_sample(sample.time, sample.value);
  }
}

void SessionEngine::on_meter_check(Connector& c, const MeterCheck& chk, double value) {
  const auto& g = c.charging->guard();
  if (chk.problem == MeterProblem::stale) {
    spdlog::debug("connector {}: meter '{}' {}; ignored", c.cfg.id, c.cfg.meter, chk.why);
    return;
  }
  if (chk.plausible) {
    if (!chk.why.empty()) spdlog::warn("connector {}: meter '{}': {}", c.cfg.id, c.cfg.meter, chk.why);
    if (chk.fault_cleared && c.meter_implausible) {
      c.meter_implausible = false;
      spdlog::info("connector {}: meter '{}' reads plausibly again ({} Wh)", c.cfg.id, c.cfg.meter, chk.reading.wh);
      events::MeterImplausible cleared;
      cleared.active = false;
      cleared.instance = c.cfg.meter;
      cleared.connector = c.cfg.id;
      cleared.message = fmt::format("meter '{}' reads plausibly again", c.cfg.meter);
      cleared.meter_wh = chk.reading.wh;
      emit(cleared);
      if (!c.meter_failed) apply(c, ConnectorEvent::fault_cleared, fmt::format("meter '{}' reads plausibly again", c.cfg.meter));
    }
    return;
  }
  const std::string message = fmt::format("meter '{}' {}", c.cfg.meter, chk.why);
  spdlog::error("connector {}: implausible reading not billed ({} in a row, {} in all): {}", c.cfg.id, g.bad_streak(), g.implausible_total(), message);
  events::MeterImplausible raised;
  raised.instance = c.cfg.meter;
  raised.connector = c.cfg.id;
  raised.message = message;
  raised.problem = std::string(to_string(chk.problem));
  raised.reading_wh = value;
  raised.consecutive = g.bad_streak();
  raised.fault_after = g.settings().fault_after;
  if (g.last()) raised.last_plausible_wh = g.last()->wh;
  emit(raised);
  if (chk.fault_raised && !c.meter_implausible) {
    c.meter_implausible = true;
    // Billed to the last plausible reading (stop() does not wait for another).
    if (charging_now(c)) stop(c.cfg.id, StopReason::fault, [](const StopOutcome&) {});
    apply(c, ConnectorEvent::fault, message);
  }
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
  submit_logged(store_, "the transaction counter", [n](Database& db) { TransactionRepository(db).save_sequence(n); });
  return fmt::format("{}-{}-{:06}", site_.id, connector, n);
}

void SessionEngine::evaluate_risk(const risk::Context& ctx, std::function<void(risk::Verdict, std::string)> done) {
  std::vector<RiskInstance> instances;
  for (const auto& name : hooks_.running_of_kind(Kind::risk)) {
    RiskInstance ri{.name = name, .rule = nullptr, .deadline = Duration(site_.session.payment.risk_timeout_ms), .on_failure = risk::Verdict::step_up};
    if (const auto ref = hooks_.find(name); ref.plugin && ref.kind == Kind::risk) ri.rule = static_cast<risk::Rule*>(ref.plugin);
    for (const auto& spec : site_.instances) {
      if (spec.name != name) continue;
      if (spec.risk_deadline_ms > 0) ri.deadline = Duration(spec.risk_deadline_ms);
      ri.on_failure = spec.risk_on_failure == "allow" ? risk::Verdict::allow : spec.risk_on_failure == "deny" ? risk::Verdict::deny : risk::Verdict::step_up;
    }
    instances.push_back(std::move(ri));
  }
  risk::Context c = ctx;
  c.pile = site_.id;
  c.day_start = site_day_->day_start(c.time);
  c.utc_offset_s = site_day_->utc_offset_s(c.time);
  risk_->evaluate(c, std::move(instances), risk_history_, [this, txn = std::string(ctx.transaction_id), done = std::move(done)](RiskDecision d) {
    // Recorded before the money operation it precedes: the storage thread keeps submission order.
    if (!d.answers.empty()) {
      RiskDecisionRow row{.txn = txn,
                          .phase = d.phase == risk::Phase::capture ? "capture" : "authorize",
                          .verdict = std::string(risk::to_string(d.verdict)),
                          .answers = d.answers_text(),
                          .decided = clock_.now()};
      submit_logged(store_, "the risk decision of " + txn, [row = std::move(row)](Database& db) { RiskRepository(db).record(row); });
    }
    done(d.verdict, d.reasons());
  });
}

void SessionEngine::risk_before_capture(const std::string& txn, std::uint32_t connector, const std::string& method, std::int64_t fen,
                                        std::function<void()> proceed) {
  std::string user;
  try {
    if (const auto row = TransactionRepository(*reader_db_).find(txn)) user = user_hash(row->user_token);
  } catch (const std::exception& e) {
    spdlog::error("{}: the capture's risk check cannot read the transaction: {}", txn, e.what());
  }
  const risk::Context ctx{.phase = risk::Phase::capture,
                          .transaction_id = txn,
                          .connector = connector,
                          .method = method,
                          .channel = {},
                          .user = user,
                          .amount_fen = fen,
                          .time = clock_.now(),
                          .pile = {},
                          .day_start = {},
                          .utc_offset_s = 0};
  // The energy is delivered and the bill committed: the verdict is recorded and reported, and
  // the capture goes ahead (holding it for review is the step-up work of issue #11 item 5).
  ++captures_checking_;
  evaluate_risk(ctx, [this, txn, connector, proceed = std::move(proceed), alive = alive_](risk::Verdict verdict, const std::string& reasons) {
    if (!*alive) return;
    if (verdict != risk::Verdict::allow) spdlog::warn("connector {}: {}: risk at capture: {}: {}", connector, txn, risk::to_string(verdict), reasons);
    proceed();
    if (--captures_checking_ > 0 || captures_checked_.empty()) return;
    auto waiting = std::move(captures_checked_);
    captures_checked_.clear();
    for (auto& w : waiting) {
      if (!*alive) return;  // a waiter may end the shutdown, and this engine with it
      w();
    }
  });
}

void SessionEngine::after_capture_checks(std::function<void()> fn) {
  if (captures_checking_ == 0) return fn();
  captures_checked_.push_back(std::move(fn));
}

// The start, one named step after another: checks, risk rules, authorisation (with its
// step-up), the meter's start reading, the transaction row on disk, then the session.
struct SessionEngine::StartRequest {
  std::uint32_t connector = 0;
  std::string txn;
  std::string method;
  std::string token;
  std::int64_t amount_fen = 0;
  ChargingMode mode;
  std::shared_ptr<const Tariff> tariff;  ///< the site's at the request: the hold's and the bill's
  std::string tariff_document;
  StartDone done;
  std::optional<identification::Token> presented;  ///< as a reader or camera presented it
  PaymentSaga::Authorization authorization;
  MeterReading start_reading;
  // A risk step-up (begin_step_up): the factors offered, the other methods that may pay, its
  // deadline, and the callers of a second session_start that became the answer.
  std::vector<std::string> factors;
  std::vector<std::string> other_methods;
  TimerId step_up_timer = 0;
  TimePoint step_up_deadline{};
  std::string step_up_reasons;
  bool stepped_up = false;  ///< a second factor was given: a new step_up verdict no longer holds it
  std::vector<StartDone> also_done;
};

void SessionEngine::start(std::uint32_t id, std::string method, std::string token, StartDone done, std::optional<identification::Token> presented,
                          std::string mode) {
  auto fail = [&done](const std::string& msg) { done(StartOutcome::refused(msg)); };
  Connector* cp = connector(id);
  if (!cp) return fail(fmt::format("no connector {}", id));
  Connector& c = *cp;
  if (!tariff_) return fail("no tariffs in the site file: sessions cannot be billed, so none can start");
  if (shutting_down_) return fail("pilecored is stopping: no session starts");
  if (c.recovering > 0) return fail(fmt::format("connector {} is still closing a transaction left open by an unclean stop; try again shortly", id));
  if (checkpoint_health_.paused()) return fail(fmt::format("charging is paused: meter checkpoints cannot be committed ({}); no session starts", checkpoint_health_.error()));
  if (c.stepping && !c.charging->active()) {
    if (method.empty()) method = site_.session.payment.default_method;
    if (step_up_by_other_method(c, std::move(method), std::move(token), std::move(presented), done)) return;
  }
  if (c.charging->active() || c.starting) return fail(fmt::format("connector {} already has a session", id));
  if (const auto t = c.fsm.check(ConnectorEvent::authorized_start); !t.allowed) {
    // The refusal says why the connector is in that state and since when (a fault's reason, an
    // operator's unavailability), in the site's time with its offset.
    std::string why;
    if (c.status_since && (c.fsm.status() == ConnectorStatus::faulted || c.fsm.status() == ConnectorStatus::unavailable)) {
      why = fmt::format(" since {} ({})", format_time(*c.status_since, TimeView{site_day_->zone(), ""}), c.status_why);
    }
    return fail(fmt::format("connector {} is {}{}: a session cannot start", id, pilecore::to_string(c.fsm.status()), why));
  }
  if (method.empty()) method = site_.session.payment.default_method;
  const auto pay = hooks_.find(method);
  if (!pay.plugin || pay.kind != Kind::payment) return fail(fmt::format("'{}' is not a running payment instance", method));
  if (token.empty()) token = "anonymous";
  // The hold follows the mode the driver asked for (charging_mode.hpp); a mode that is not
  // allowed, or whose hold would pass the site's limit, is refused before anything is held.
  const auto parsed = parse_mode(mode.empty() ? site_.session.charging.default_mode : mode, site_.session.payment, site_.session.charging);
  if (const auto* err = std::get_if<std::string>(&parsed)) return fail(*err);
  const ChargingMode chosen = std::get<ChargingMode>(parsed);
  std::int64_t max_power_w = c.cfg.max_power_w;
  if (const auto& site_max = site_.session.charging.site_max_power_w; site_max && *site_max < max_power_w) max_power_w = *site_max;
  const auto hold = hold_for(chosen, *tariff_, clock_.now(), max_power_w, site_.session.payment);
  if (const auto* err = std::get_if<std::string>(&hold)) return fail(*err);
  c.starting = true;
  auto req = std::make_shared<StartRequest>();
  req->connector = id;
  req->txn = next_transaction_id(id);
  req->method = std::move(method);
  req->token = std::move(token);
  req->amount_fen = std::get<std::int64_t>(hold);
  req->tariff = tariff_;  // the price the hold was computed at is the price it is billed at
  req->tariff_document = tariff_document_;
  req->mode = chosen;
  req->done = std::move(done);
  if (presented) {
    // Its evidence and exchange go to the method; the connector is the one it starts on.
    req->presented = std::move(presented);
    req->presented->connector = id;
  }
  spdlog::info("connector {}: {}: start requested ({} via {}); mode {}, hold {} fen", id, req->txn, token_ref(req->token), req->method, chosen.text(),
               req->amount_fen);
  // Context holds views: the hash must outlive it (a temporary here was read after its end).
  const std::string user = user_hash(req->token);
  evaluate_risk(authorize_context(req->txn, id, req->method, user, req->amount_fen, clock_.now()), [this, req, alive = alive_](risk::Verdict verdict, const std::string& reasons) {
    if (*alive) start_authorize(req, verdict, reasons);
  });
}

void SessionEngine::start_refused(Connector& c, const std::shared_ptr<StartRequest>& req, StartOutcome outcome) {
  c.last_refused = Connector::RefusedStart{req->method, req->token, req->mode.text(), clock_.now()};
  c.starting = false;
  c.starting_txn.clear();
  if (c.stepping == req) c.stepping.reset();
  if (c.unavailable_after_session && !c.charging->active()) {  // set_available(false) waited for this start
    c.unavailable_after_session = false;
    apply(c, ConnectorEvent::set_unavailable, "made unavailable by a remote command; the start it waited for was refused");
  }
  for (auto& d : req->also_done) d(outcome);
  req->done(std::move(outcome));
}

void SessionEngine::start_authorize(const std::shared_ptr<StartRequest>& req, risk::Verdict verdict, const std::string& reasons) {
  Connector& c = *connector(req->connector);
  if (verdict == risk::Verdict::step_up && !req->stepped_up) {
    begin_step_up(c, req, reasons);
    return;
  }
  if (verdict == risk::Verdict::deny) {
    spdlog::warn("connector {}: {}: risk {}: {}", c.cfg.id, req->txn, risk::to_string(verdict), reasons);
    start_refused(c, req,
                  StartOutcome::refused(fmt::format("risk check: {}: {}", risk::to_string(verdict), reasons), {}, std::string(risk::to_string(verdict))));
    return;
  }
  authorize_start(req);
}

namespace {
/// What the connector shows and says for a risk step-up: each offered factor, in Chinese and
/// English (the site's drivers read the first, visitors the second).
std::string step_up_prompt(const std::vector<std::string>& factors) {
  std::vector<std::string> zh, en;
  for (const auto& f : factors) {
    if (f == "pin") {
      zh.emplace_back("输入卡密码");
      en.emplace_back("enter your PIN");
    } else if (f == "app_confirmation") {
      zh.emplace_back("在App中确认");
      en.emplace_back("confirm in the app");
    } else if (f == "other_method") {
      zh.emplace_back("换一种支付方式");
      en.emplace_back("pay another way");
    }
  }
  return fmt::format("请再次验证：{} / Please verify: {}", fmt::join(zh, "、"), fmt::join(en, ", or "));
}
}  // namespace

void SessionEngine::begin_step_up(Connector& c, const std::shared_ptr<StartRequest>& req, const std::string& reasons) {
  const auto& su = site_.session.payment.step_up;
  std::vector<std::string> offered, others;
  for (const auto& name : hooks_.running_of_kind(Kind::payment)) {
    if (name != req->method) others.push_back(name);
  }
  for (const auto& f : su.factors) {
    if (f == "pin") {
      // Only a method that checks PINs (API 2.3 and says so) can take one: the core never sees
      // the payer's PIN reference.
      const auto ref = hooks_.find(req->method);
      auto* m = ref.plugin && ref.kind == Kind::payment ? static_cast<payment::Method*>(ref.plugin) : nullptr;
      if (m != nullptr && ref.api_minor >= 3 && m->capabilities().verifies_pin) offered.push_back(f);
    } else if (f == "other_method") {
      if (!others.empty()) offered.push_back(f);
    } else {
      offered.push_back(f);
    }
  }
  spdlog::warn("connector {}: {}: risk step_up: {}", c.cfg.id, req->txn, reasons);
  if (offered.empty()) {
    start_refused(c, req,
                  StartOutcome::refused(fmt::format("risk check: step_up: {} (no second factor can be offered here: payment.step_up.factors)", reasons),
                                        {}, "step_up"));
    return;
  }
  req->factors = offered;
  if (std::find(offered.begin(), offered.end(), "other_method") != offered.end()) req->other_methods = others;
  c.stepping = req;
  c.starting_txn = req->txn;
  const Duration timeout = std::chrono::seconds(su.timeout_s);
  const TimePoint deadline = clock_.now() + timeout;
  req->step_up_deadline = deadline;
  req->step_up_reasons = reasons;
  req->step_up_timer = scheduler_->after(timeout, [this, id = c.cfg.id, req] {
    Connector* cp = connector(id);
    if (cp == nullptr || cp->stepping != req) return;
    req->step_up_timer = 0;
    end_step_up(*cp, "none", "not completed in time", "the second verification was not completed in time");
  });
  const std::string prompt = step_up_prompt(offered);
  spdlog::info("connector {}: {}: second verification asked ({}), until {}", c.cfg.id, req->txn, fmt::join(offered, ", "), format_utc(deadline));
  emit(events::StepUp{.connector = c.cfg.id,
                      .transaction = req->txn,
                      .kind = offered.front(),
                      .prompt = prompt,
                      .deadline = deadline,
                      .methods = req->other_methods,
                      .factors = offered,
                      .reasons = reasons});
  if (hooks_.announce) hooks_.announce(c.cfg.id, prompt);
}

void SessionEngine::end_step_up(Connector& c, const std::string& factor, const std::string& outcome, std::optional<std::string> refusal) {
  auto req = c.stepping;
  if (!req) return;
  c.stepping.reset();
  if (req->step_up_timer != 0) scheduler_->cancel(req->step_up_timer);
  req->step_up_timer = 0;
  req->stepped_up = true;
  // Recorded with the transaction's risk decisions: `pilectl transactions` shows how the second
  // verification ended (never the PIN).
  RiskDecisionRow row{.txn = req->txn,
                      .phase = "step_up",
                      .verdict = refusal ? "deny" : "allow",
                      .answers = fmt::format("{}: {}", factor, outcome),
                      .decided = clock_.now()};
  submit_logged(store_, "the step-up of " + req->txn, [row = std::move(row)](Database& db) { RiskRepository(db).record(row); });
  if (refusal) {
    spdlog::warn("connector {}: {}: {}", c.cfg.id, req->txn, *refusal);
    emit(events::StartRefused{.connector = c.cfg.id, .transaction = req->txn, .reason = *refusal});
    if (hooks_.announce) hooks_.announce(c.cfg.id, *refusal);
    start_refused(c, req, StartOutcome::refused(*refusal, req->txn, "step_up"));
    return;
  }
  spdlog::info("connector {}: {}: second verification: {} {}", c.cfg.id, req->txn, factor, outcome);
}

bool SessionEngine::step_up_by_other_method(Connector& c, std::string method, std::string token, std::optional<identification::Token> presented,
                                            StartDone& done) {
  auto req = c.stepping;
  if (!req) return false;
  if (std::find(req->other_methods.begin(), req->other_methods.end(), method) == req->other_methods.end()) {
    done(StartOutcome::refused(fmt::format("connector {} waits for a second verification of {}: {}", c.cfg.id, req->txn,
                                           req->other_methods.empty() ? std::string("a PIN or a confirmation in the app")
                                                                      : fmt::format("a PIN, a confirmation in the app, or payment with {}",
                                                                                    fmt::join(req->other_methods, " or ")))));
    return true;
  }
  const std::string previous = req->method;
  end_step_up(c, "other_method", fmt::format("{} instead of {}", method, previous), std::nullopt);
  // The same transaction, paid another way: the new means is checked by the rules too (a deny
  // still denies; a second step_up is answered by this very change of method).
  req->method = std::move(method);
  req->token = token.empty() ? std::string("anonymous") : std::move(token);
  req->presented = std::move(presented);
  if (req->presented) req->presented->connector = c.cfg.id;
  req->also_done.push_back(std::move(done));
  const std::string user = user_hash(req->token);
  evaluate_risk(authorize_context(req->txn, c.cfg.id, req->method, user, req->amount_fen, clock_.now()), [this, req, alive = alive_](risk::Verdict verdict, const std::string& reasons) {
    if (*alive) start_authorize(req, verdict, reasons);
  });
  return true;
}

void SessionEngine::authorize_start(const std::shared_ptr<StartRequest>& req, std::optional<std::string> pin) {
  Connector& c = *connector(req->connector);
  c.starting_txn = req->txn;
  saga_->authorize(
      req->txn, c.cfg.id, req->method, req->presented ? *req->presented : parse_token(req->token, c.cfg.id), req->amount_fen,
      [this, id = c.cfg.id, txn = req->txn](const payment::Challenge& ch) {
        spdlog::info("connector {}: {}: step-up: {} ({})", id, txn, payment::to_string(ch.kind), ch.prompt);
        emit(events::StepUp{.connector = id,
                            .transaction = txn,
                            .kind = std::string(payment::to_string(ch.kind)),
                            .prompt = ch.prompt,
                            .deadline = ch.deadline,
                            .methods = ch.methods,
                            .factors = {},
                            .reasons = {}});
        if (hooks_.announce) hooks_.announce(id, ch.prompt);
      },
      [this, req, alive = alive_](PaymentSaga::Authorization a) {
        if (*alive) start_read_meter(req, std::move(a));
      },
      std::move(pin));
}

void SessionEngine::start_read_meter(const std::shared_ptr<StartRequest>& req, PaymentSaga::Authorization a) {
  Connector& c = *connector(req->connector);
  if (a.decision != payment::Decision::approved) {
    const std::string why = a.timed_out ? a.reason : fmt::format("payment declined: {}", a.reason);
    spdlog::warn("connector {}: {}: {}", c.cfg.id, req->txn, why);
    emit(events::StartRefused{.connector = c.cfg.id, .transaction = req->txn, .reason = why});
    if (hooks_.announce) hooks_.announce(c.cfg.id, why);
    start_refused(c, req, StartOutcome::refused(why, req->txn));
    return;
  }
  req->authorization = std::move(a);
  c.charging->read_meter([this, req, alive = alive_](std::optional<MeterReading> m) {
    if (*alive) start_commit(req, m);
  });
}

void SessionEngine::set_router(Router* router) noexcept { saga_->set_router(router); }

void SessionEngine::start_commit(const std::shared_ptr<StartRequest>& req, std::optional<MeterReading> m) {
  Connector& c = *connector(req->connector);
  // Stopping: stop_all() has counted the sessions it waits for, so a transaction committed now
  // would be left open by a clean stop. Release the authorisation instead.
  // m passed the guard (on_sample hands waiters nothing else); a meter it faulted since the
  // request cannot open a bill.
  if (!m || shutting_down_ || c.charging->guard().faulted()) {
    saga_->release(req->txn, req->method);
    start_refused(c, req,
                  StartOutcome::refused(shutting_down_ ? "pilecored is stopping; authorisation released"
                                        : m          ? "the meter reads implausibly (meter.implausible); authorisation released"
                                                     : "the meter gave no plausible reading; authorisation released"));
    return;
  }
  req->start_reading = *m;
  const auto& a = req->authorization;
  c.charging->open({.txn = req->txn,
                    .method = req->method,
                    .token = req->token,
                    .user_hash = user_hash(req->token),
                    .payment_ref = a.reference,
                    .authorized_fen = a.authorized_fen,
                    .mode = req->mode,
                    .tariff = req->tariff,
                    .tariff_document = req->tariff_document},
                   *m, [this, req, alive = alive_](const Status& st) {
                     if (*alive) start_session(req, st);
                   });
}

void SessionEngine::start_session(const std::shared_ptr<StartRequest>& req, const Status& committed) {
  Connector& c = *connector(req->connector);
  if (!committed.ok()) {
    saga_->release(req->txn, req->method);
    start_refused(c, req, StartOutcome::refused(fmt::format("database: {}", committed.message())));
    return;
  }
  c.starting = false;
  c.starting_txn.clear();
  const auto& a = req->authorization;
  const MeterReading& m = req->start_reading;
  const ChargingSession::Running& s = *c.charging->running();
  spdlog::info("connector {}: {}: authorised {} fen, meter {} Wh", c.cfg.id, s.id, a.authorized_fen, m.wh);
  apply(c, ConnectorEvent::authorized_start, fmt::format("transaction {} authorised", s.id));
  // From Finishing a new session goes to Preparing; the vehicle is still plugged in, so
  // there is no plug event to wait for.
  if (c.fsm.status() == ConnectorStatus::preparing && c.fsm.plugged()) {
    apply(c, ConnectorEvent::authorized_start, "the vehicle is still plugged in");
  }
  emit(events::SessionStarted{.connector = c.cfg.id,
                              .transaction = s.id,
                              .method = s.method,
                              .user = token_ref(s.token),
                              .payment_ref = a.reference,
                              .authorized_fen = a.authorized_fen,
                              .meter_start_wh = m.wh});
  if (c.fsm.status() == ConnectorStatus::charging) begin_charging(c);
  for (auto& d : req->also_done) d(StartOutcome::started(req->txn, c.cfg.id, m.wh));
  req->done(StartOutcome::started(req->txn, c.cfg.id, m.wh));
}

void SessionEngine::top_up(Connector& c) {
  const ChargingSession::Running* s = c.charging->running();
  if (!s) return;
  const PluginRef ref = hooks_.find(s->method);
  auto* m = ref.plugin && ref.kind == Kind::payment ? static_cast<payment::Method*>(ref.plugin) : nullptr;
  // increment() is API 2.1: a plugin built against 2.0 has no such entry in its vtable, so it is
  // asked only of a 2.1 plugin that says it can.
  const std::int64_t room = site_.session.payment.max_hold_fen - s->authorized_fen;
  const std::int64_t step = std::min(site_.session.payment.increment_step_fen, room);
  if (m == nullptr || ref.api_minor < 1 || step <= 0 || !m->capabilities().incremental_authorization) {
    spdlog::info("connector {}: {}: the hold cannot be raised ({}); the session stops at {} fen", c.cfg.id, s->id,
                 step <= 0 ? "payment.max_hold_fen reached" : "the method has no incremental authorisation", s->authorized_fen);
    c.charging->increment_answered(std::nullopt);
    return;
  }
  const std::string txn = s->id;
  const std::int64_t before = s->authorized_fen;
  saga_->increment(txn, s->method, step, [this, id = c.cfg.id, txn, before, alive = alive_](const MoneyOperation& op) {
    if (!*alive) return;
    Connector* cp = connector(id);
    if (!cp || !cp->charging->running() || cp->charging->running()->id != txn) return;
    if (op.state != OperationStateRow::confirmed) spdlog::warn("connector {}: {}: top-up {}: {}", id, txn, to_string(op.state), op.reason);
    cp->charging->increment_answered(op.state == OperationStateRow::confirmed && op.amount_fen > 0 ? std::optional<std::int64_t>(before + op.amount_fen)
                                                                                                     : std::nullopt);
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
      [id = *connector_id](const StartOutcome& r) {
        if (!r.ok) spdlog::warn("connector {}: a presented token did not start a session: {}", id, r.error);
      },
      token);
}

void SessionEngine::answer_step_up(std::uint32_t id, payment::StepUpAnswer answer, AnswerDone done) {
  Connector* c = connector(id);
  if (!c) {
    done(AnswerOutcome::refused(fmt::format("no connector {}", id)));
    return;
  }
  if (auto req = c->stepping) {
    // Risk control's second factor.
    const std::string kind(payment::to_string(answer.kind));
    if (std::find(req->factors.begin(), req->factors.end(), kind) == req->factors.end()) {
      done(AnswerOutcome::refused(fmt::format("{} is not a second factor offered for {} (offered: {})", kind, req->txn, fmt::join(req->factors, ", "))));
      return;
    }
    switch (answer.kind) {
      case payment::ChallengeKind::other_method:
        done(AnswerOutcome::refused(fmt::format("to pay another way, present a token of {} or start with that method on connector {}",
                                                fmt::join(req->other_methods, " or "), id)));
        return;
      case payment::ChallengeKind::app_confirmation:
        if (!answer.confirmed) {
          end_step_up(*c, "app_confirmation", "refused in the app", "the payment was not confirmed in the app");
          done(AnswerOutcome::relayed(req->txn));
          return;
        }
        end_step_up(*c, "app_confirmation", "confirmed in the app", std::nullopt);
        authorize_start(req);
        done(AnswerOutcome::relayed(req->txn));
        return;
      case payment::ChallengeKind::pin:
        if (answer.value.empty()) {
          done(AnswerOutcome::refused("a PIN answer needs the digits"));
          return;
        }
        end_step_up(*c, "pin", fmt::format("entered, checked by {}", req->method), std::nullopt);
        authorize_start(req, answer.value);
        done(AnswerOutcome::relayed(req->txn));
        return;
    }
  }
  if (c->starting_txn.empty() || !saga_->awaiting_step_up(c->starting_txn)) {
    done(AnswerOutcome::refused(fmt::format("connector {} has no step-up waiting for an answer", id)));
    return;
  }
  const Status st = saga_->answer_step_up(c->starting_txn, answer);
  if (!st.ok()) {
    done(AnswerOutcome::refused(st.message()));
    return;
  }
  done(AnswerOutcome::relayed(c->starting_txn));
}

void SessionEngine::refund(const std::string& txn, std::int64_t amount_fen, const std::string& reason, RefundDone done) {
  auto fail = [&done](std::string error) { done(RefundOutcome::refused(std::move(error))); };
  std::string method;
  std::int64_t captured = 0, refunded = 0;
  std::string status;
  try {
    const auto row = TransactionRepository(*reader_db_).find(txn);
    if (!row) return fail(fmt::format("no transaction '{}'", txn));
    method = row->method;
    status = row->status;
    captured = row->captured_fen.value_or(0);
    for (const auto& op : operations::of_transaction(reader_, txn)) {
      if (op.kind == OperationKind::refund && op.state != OperationStateRow::failed) refunded += op.amount_fen;
    }
  } catch (const std::exception& e) {
    return fail(fmt::format("database: {}", e.what()));
  }
  if (status != "closed") return fail(fmt::format("{} is not closed yet: refund it once it is captured", txn));
  if (amount_fen <= 0 || amount_fen > captured - refunded) {
    return fail(fmt::format("a refund must be between 1 and {} fen (captured {}, refunded {})", captured - refunded, captured, refunded));
  }
  saga_->refund(txn, method, amount_fen, reason, [done](const MoneyOperation& op) {
    done(RefundOutcome::answered(op));
  });
}

power::PowerStage* SessionEngine::power_stage(const Connector& c) const {
  const auto ref = hooks_.find(c.cfg.power);
  return ref.plugin && ref.kind == Kind::power ? static_cast<power::PowerStage*>(ref.plugin) : nullptr;
}

void SessionEngine::begin_charging(Connector& c) {
  if (!c.charging->start_charging()) return;
  auto* stage = power_stage(c);
  if (!stage) {
    spdlog::error("connector {}: no running power stage '{}'", c.cfg.id, c.cfg.power);
    stop(c.cfg.id, StopReason::fault, [](const StopOutcome&) {});
    return;
  }
  update_setpoint(c);
  Status closed_st;
  {
    InFlight mark(c.cfg.power, "close_contactor");
    closed_st = stage->close_contactor();
  }
  if (Status st = std::move(closed_st); !st.ok()) {
    spdlog::error("connector {}: the contactor did not close: {}", c.cfg.id, st.message());
    stop(c.cfg.id, StopReason::fault, [](const StopOutcome&) {});
    return;
  }
  if (on_contactor_closed) on_contactor_closed(c.cfg.id);
  c.charging->contactor_closed();
}

void SessionEngine::update_setpoint(Connector& c) {
  const ChargingSession::Running* run = c.charging->running();
  if (!run) return;
  auto* stage = power_stage(c);
  if (!stage) return;
  const power::VehicleStatus v = stage->vehicle();
  std::int64_t limit = c.cfg.max_power_w;
  if (const auto& site_max = site_.session.charging.site_max_power_w) {
    std::int64_t others = 0;
    for (const auto& [id, o] : connectors_) {
      if (o.get() != &c && o->charging->running()) others += o->charging->running()->setpoint_w;
    }
    limit = std::min(limit, std::max<std::int64_t>(0, *site_max - others));
  }
  if (c.remote_cap_w) limit = std::min(limit, *c.remote_cap_w);
  if (remote_site_cap_w_) {
    std::int64_t others = 0;
    for (const auto& [id, o] : connectors_) {
      if (o.get() != &c && o->charging->running()) others += o->charging->running()->setpoint_w;
    }
    limit = std::min(limit, std::max<std::int64_t>(0, *remote_site_cap_w_ - others));
  }
  std::int64_t watts = limit;
  const auto strategies = hooks_.running_of_kind(Kind::strategy);
  if (!strategies.empty()) {
    auto sref = hooks_.find(strategies.front());
    const auto& last = c.charging->last();
    const double elapsed_s = run->readings.empty() ? 0 : static_cast<double>((clock_.now() - run->readings.front().time).count()) / 1000.0;
    const double energy = last && !run->readings.empty() ? static_cast<double>(last->wh - run->readings.front().wh) : 0.0;
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
        watts = run->has_setpoint ? run->setpoint_w : site_.session.charging.fallback_power_w;
        spdlog::warn("connector {}: strategy: {}; {} {} W", c.cfg.id, sp.status.message(), run->has_setpoint ? "keeping" : "falling back to",
                     std::min(watts, limit));
      }
    }
  }
  if (checkpoint_health_.paused()) watts = 0;  // energy that could not be recorded would only be known to memory
  watts = std::clamp<std::int64_t>(watts, 0, limit);  // the core always clamps
  if (watts != run->setpoint_w || !run->has_setpoint) {
    c.charging->set_setpoint(watts);
    InFlight mark(c.cfg.power, "set_power_limit");
    if (Status st = stage->set_power_limit(watts); !st.ok()) spdlog::warn("connector {}: set_power_limit: {}", c.cfg.id, st.message());
  }
}

void SessionEngine::on_checkpoint_commit(const Status& st) {
  const CheckpointVerdict v = st.ok() ? checkpoint_health_.committed() : checkpoint_health_.failed(st.message());
  if (v.raise || v.pause || v.clear) emit(checkpoint_health_.alarm_event());
  if (v.pause) spdlog::critical("{} meter checkpoints in a row not committed ({}): charging paused, sessions kept", checkpoint_health_.failures(), st.message());
  if (v.resume) spdlog::warn("a meter checkpoint committed again: charging resumes");
  if (!v.pause && !v.resume) return;
  for (auto& [id, c] : connectors_) {
    const auto* r = c->charging->running();
    if (!r || r->stopping || !r->charging_started) continue;
    const ConnectorStatus now = c->fsm.status();
    if (v.pause && (now == ConnectorStatus::charging || now == ConnectorStatus::suspended_ev)) {
      apply(*c, ConnectorEvent::evse_suspend, fmt::format("storage.checkpoint_failed: meter checkpoints cannot be committed ({})", st.message()));
    }
    if (v.resume && now == ConnectorStatus::suspended_evse) apply(*c, ConnectorEvent::evse_resume, "meter checkpoints commit again");
    update_setpoint(*c);  // 0 W while paused
  }
}

void SessionEngine::stop(std::uint32_t id, StopReason reason, StopDone done) {
  Connector* cp = connector(id);
  if (cp && cp->stepping && !cp->charging->active()) {
    // The driver gives up on the second verification: the start ends, nothing was held.
    const std::string txn = cp->stepping->txn;
    end_step_up(*cp, "none", fmt::format("cancelled ({})", to_string(reason)), "the start was cancelled before its second verification");
    done(StopOutcome::refused(fmt::format("connector {} had no session: the start of {} waiting for its second verification is cancelled", id, txn)));
    return;
  }
  if (!cp || !cp->charging->active()) {
    done(StopOutcome::refused(fmt::format("connector {} has no session", id)));
    return;
  }
  Connector& c = *cp;
  const ChargingSession::Running& s = *c.charging->running();
  if (s.stopping) {
    done(StopOutcome::refused(fmt::format("connector {}: {} is already stopping", id, s.id)));
    return;
  }
  done = then_availability(c, std::move(done));
  c.charging->begin_stop(reason);  // the stop's mark, committed before the final reading
  if (auto* stage = power_stage(c)) {
    if (Status st = stage->open_contactor(); !st.ok()) {
      spdlog::error("connector {}: the contactor did not open: {}", id, st.message());
    }
  }
  switch (reason) {
    case StopReason::local: apply(c, ConnectorEvent::user_stop, "stopped at the pile"); break;
    case StopReason::remote:
    case StopReason::shutdown: apply(c, ConnectorEvent::remote_stop, std::string(to_string(reason))); break;
    case StopReason::funds_exhausted: apply(c, ConnectorEvent::funds_exhausted, "authorised amount reached"); break;
    // The driver's target: the session ends as when the hold is reached (Finishing).
    case StopReason::energy_reached:
    case StopReason::time_reached:
    case StopReason::amount_reached: apply(c, ConnectorEvent::funds_exhausted, fmt::format("charging target reached ({})", to_string(reason))); break;
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
  emit(events::SessionStopping{.connector = id, .transaction = s.id, .reason = std::string(to_string(reason))});
  if (c.meter_failed || c.charging->guard().faulted()) {  // no plausible reading to wait for
    c.charging->close(std::nullopt, std::move(done));
    return;
  }
  c.charging->read_meter([&c, done = std::move(done)](std::optional<MeterReading> m) mutable { c.charging->close(m, std::move(done)); });
}

StopDone SessionEngine::then_availability(Connector& c, StopDone done) {
  return [this, &c, alive = alive_, done = std::move(done)](StopOutcome o) {
    if (*alive && c.unavailable_after_session && !c.charging->active() && !c.starting) {
      c.unavailable_after_session = false;
      apply(c, ConnectorEvent::set_unavailable, "made unavailable by a remote command; its session has ended");
    }
    done(std::move(o));
  };
}

void SessionEngine::emergency_stop(std::function<void(std::vector<StopOutcome>)> done) {
  // Every contactor first, in one pass: a stop's bookkeeping (the stop's mark, the meter) must
  // not delay the next connector's contactor.
  for (auto& [id, c] : connectors_) {
    auto* stage = power_stage(*c);
    if (!stage) continue;
    InFlight mark(c->cfg.power, "open_contactor");
    if (Status st = stage->open_contactor(); !st.ok()) {
      spdlog::critical("connector {}: emergency stop: the contactor did not open: {}", id, st.message());
    }
  }
  struct Gather {
    std::vector<StopOutcome> outcomes;
    std::size_t remaining = 0;
    std::function<void(std::vector<StopOutcome>)> done;
  };
  auto g = std::make_shared<Gather>();
  g->done = std::move(done);
  std::vector<std::uint32_t> running;
  for (auto& [id, c] : connectors_) {
    if (charging_now(*c)) running.push_back(id);
  }
  // Starts waiting for a second verification end too: nothing is held for them yet.
  for (auto& [id, c] : connectors_) {
    if (c->stepping) end_step_up(*c, "none", "emergency stop", "emergency stop: no session starts");
  }
  spdlog::critical("emergency stop: every contactor opened; stopping {} session(s)", running.size());
  g->remaining = running.size();
  if (running.empty()) return g->done({});
  for (const std::uint32_t id : running) {
    stop(id, StopReason::remote, [g](StopOutcome o) {
      g->outcomes.push_back(std::move(o));
      if (--g->remaining == 0) g->done(std::move(g->outcomes));
    });
  }
}

SessionEngine::AvailabilityOutcome SessionEngine::set_available(std::uint32_t id, bool available) {
  Connector* c = connector(id);
  if (!c) return {.ok = false, .scheduled = false, .error = fmt::format("no connector {}", id)};
  if (available) {
    c->unavailable_after_session = false;
    if (c->fsm.status() == ConnectorStatus::unavailable) apply(*c, ConnectorEvent::set_available, "made available by a remote command");
    c->remote_unavailable = false;
    save_remote_settings();
    return {.ok = true, .scheduled = false, .error = {}};
  }
  if (c->charging->active() || c->starting) {
    c->unavailable_after_session = true;
    c->remote_unavailable = true;
    save_remote_settings();
    return {.ok = true, .scheduled = true, .error = {}};
  }
  const auto t = c->fsm.check(ConnectorEvent::set_unavailable);
  if (!t.allowed && c->fsm.status() != ConnectorStatus::unavailable) {
    return {.ok = false, .scheduled = false, .error = fmt::format("connector {} is {}: {}", id, pilecore::to_string(c->fsm.status()), t.refusal)};
  }
  apply(*c, ConnectorEvent::set_unavailable, "made unavailable by a remote command");
  c->remote_unavailable = true;
  save_remote_settings();
  return {.ok = true, .scheduled = false, .error = {}};
}

Status SessionEngine::set_power_limit(std::optional<std::uint32_t> id, std::optional<std::int64_t> watts) {
  if (watts && *watts < 0) return Status::error(StatusCode::invalid_argument, fmt::format("a power limit is 0 W or more, not {} W", *watts));
  if (id) {
    Connector* c = connector(*id);
    if (!c) return Status::error(StatusCode::invalid_argument, fmt::format("no connector {}", *id));
    c->remote_cap_w = watts;
  } else {
    remote_site_cap_w_ = watts;
  }
  save_remote_settings();
  // Lowered caps first free the power the raised ones may then take.
  for (auto& [cid, c] : connectors_) {
    if (c->charging->running() && !c->charging->running()->stopping) update_setpoint(*c);
  }
  return Status::success();
}

void SessionEngine::save_remote_settings() {
  RemoteSettings r;
  r.site_cap_w = remote_site_cap_w_;
  for (const auto& [id, c] : connectors_) {
    if (c->remote_cap_w) r.cap_w[id] = *c->remote_cap_w;
    if (c->remote_unavailable) r.unavailable.insert(id);
  }
  submit_logged(store_, "the remote power caps and availability", [r](Database& db) { core::save_remote_settings(db, r); });
}

void SessionEngine::restore_remote_settings(const std::set<std::uint32_t>& resuming) {
  const RemoteSettings r = load_remote_settings(*reader_db_);
  remote_site_cap_w_ = r.site_cap_w;
  if (r.site_cap_w) spdlog::info("the back end's power cap for the site, {} W, still applies", *r.site_cap_w);
  for (const auto& [id, w] : r.cap_w) {
    if (Connector* c = connector(id)) {
      c->remote_cap_w = w;
      spdlog::info("connector {}: the back end's power cap, {} W, still applies", id, w);
    }
  }
  for (const auto id : r.unavailable) {
    Connector* c = connector(id);
    if (!c) continue;
    c->remote_unavailable = true;
    // A session that resumes ends first; otherwise out of service at once, as it was.
    if (resuming.count(id) > 0 || !c->fsm.check(ConnectorEvent::set_unavailable).allowed) {
      c->unavailable_after_session = true;
    } else {
      apply(*c, ConnectorEvent::set_unavailable, "made unavailable by a remote command (kept across the restart)");
    }
  }
}

void SessionEngine::retry_last_start(std::uint32_t id, Duration window, StartDone done) {
  Connector* c = connector(id);
  if (!c) return done(StartOutcome::refused(fmt::format("no connector {}", id)));
  if (!c->last_refused) return done(StartOutcome::refused(fmt::format("connector {} has no refused start to retry", id)));
  const auto last = std::move(*c->last_refused);
  c->last_refused.reset();
  if (clock_.now() - last.at > window) {
    return done(StartOutcome::refused(fmt::format("connector {}'s last start was refused {} s ago; a retry is taken within {} s", id,
                                                  std::chrono::duration_cast<std::chrono::seconds>(clock_.now() - last.at).count(),
                                                  std::chrono::duration_cast<std::chrono::seconds>(window).count())));
  }
  spdlog::info("connector {}: retrying the refused start ({} via {})", id, token_ref(last.token), last.method);
  start(id, last.method, last.token, std::move(done), std::nullopt, last.mode);
}

std::vector<MeterReading> SessionEngine::stored_readings(const std::string& txn) const {
  std::vector<MeterReading> out;
  for (const auto& r : ReadingRepository(*reader_db_).of_transaction(txn)) out.push_back({r.time, r.wh});
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
    std::string mode;                           ///< as asked at the start: the recovered record says it too
    std::shared_ptr<const Tariff> tariff;       ///< the one it started with, else (before schema 11) the site's now
  };
  std::vector<Open> open;
  std::vector<std::pair<std::uint32_t, ChargingSession::Resuming>> resumable;  // by connector
  std::size_t unpriced = 0;
  const auto& ch = site_.session.charging;
  TransactionRepository txns(*reader_db_);
  for (auto& t : txns.unfinished()) {
    auto tariff = tariff_of(t.id);
    if (!tariff) {
      ++unpriced;
      continue;
    }
    // Suspended by a planned stop, recently enough, on a connector this site still has, one per
    // connector: it runs again. Anything else is closed, billed to its committed readings.
    if (const auto susp = txns.suspension(t.id)) {
      const auto age = std::chrono::duration_cast<std::chrono::seconds>(clock_.now() - susp->at);
      const bool taken = std::any_of(resumable.begin(), resumable.end(), [&](const auto& r) { return r.first == t.connector; });
      const bool can = ch.suspend_on_stop && age.count() <= ch.resume_within_s && connector(t.connector) && !taken;
      auto readings = can ? stored_readings(t.id) : std::vector<MeterReading>{};
      const auto row = can && !readings.empty() ? txns.find(t.id) : std::nullopt;
      if (row) {
        ChargingSession::Resuming r{.txn = t.id, .method = t.method, .token = row->user_token, .authorized_fen = row->authorized_fen, .mode = {},
                                    .tariff = std::move(tariff), .readings = std::move(readings)};
        if (auto m = parse_mode(t.mode.empty() ? std::string("full") : t.mode, site_.session.payment, ch); std::holds_alternative<ChargingMode>(m)) {
          r.mode = std::get<ChargingMode>(m);
        } else {
          spdlog::warn("{}: its mode '{}' is no longer allowed here ({}); it resumes as full, bounded by its hold", t.id, t.mode, std::get<std::string>(m));
        }
        resumable.emplace_back(t.connector, std::move(r));
        continue;
      }
      spdlog::warn("{}: suspended {} s ago by a planned stop; {}", t.id, age.count(),
                   !ch.suspend_on_stop ? "charging.on_planned_stop is 'stop' now: closing it"
                   : age.count() > ch.resume_within_s ? fmt::format("longer than charging.resume_within_s ({} s): closing it", ch.resume_within_s)
                                                      : std::string("it cannot resume here: closing it"));
    }
    open.push_back({t.id, t.connector, t.method, t.authorized_fen, t.next_start_wh, t.mode, std::move(tariff)});
  }
  if (unpriced > 0) spdlog::error("{} open transaction(s) without a stored tariff and no tariffs in the site file: they stay open until it has tariffs", unpriced);
  {
    std::set<std::uint32_t> resuming;
    for (const auto& [connector_id, r] : resumable) resuming.insert(connector_id);
    restore_remote_settings(resuming);
  }
  // The connectors with a transaction to resume or close keep their starts held until it is
  // done; the others are free now (attach() held them all).
  for (auto& [connector_id, r] : resumable) ++connector(connector_id)->recovering;
  for (const auto& o : open) {
    if (Connector* c = connector(o.connector)) ++c->recovering;
  }
  for (auto& [id, c] : connectors_) recovered(*c);
  if (open.empty() && resumable.empty()) {
    done();
    return;
  }
  auto remaining = std::make_shared<std::size_t>(open.size() + resumable.size());
  auto done_ptr = std::make_shared<std::function<void()>>(std::move(done));
  for (auto& [connector_id, r] : resumable) {
    Connector& c = *connector(connector_id);  // (held: no autostart of the vehicle plugged in again while it resumes)
    spdlog::info("connector {}: {}: resuming the session a planned stop suspended ({} Wh so far, hold {} fen)", c.cfg.id, r.txn,
                 r.readings.back().wh - r.readings.front().wh, r.authorized_fen);
    c.charging->resume(r, [this, &c, txn = r.txn, remaining, done_ptr, alive = alive_](const Status& st) {
      if (!*alive) return;
      --c.recovering;
      if (st.ok()) {
        resume_session(c);
      } else {
        spdlog::error("connector {}: {}: cannot resume ({}); the next start closes it", c.cfg.id, txn, st.message());
      }
      if (--*remaining == 0) (*done_ptr)();
    });
  }
  if (open.empty()) return;
  spdlog::warn("recovering {} transaction(s) left open by an unclean stop", open.size());
  {
    events::Recovering ev;
    for (const auto& o : open) ev.transactions.push_back(o.id);
    emit(std::move(ev));
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
      closer_->close(o.id, o.connector, o.method, readings, "recovered", o.authorized, o.mode, *o.tariff, [this, o, remaining, done_ptr](const StopOutcome&) {
        if (Connector* cp = connector(o.connector)) recovered(*cp);
        if (--*remaining == 0) (*done_ptr)();
      });
    };
    if (c) {
      c->charging->read_meter(close);
    } else {
      close(std::nullopt);
    }
  }
}

void SessionEngine::recovered(Connector& c) {
  // The connector is free again: start the session autostart held back for a vehicle that
  // plugged in meanwhile (see Connector::recovering).
  --c.recovering;
  autostart(c);
}

void SessionEngine::autostart(Connector& c) {
  if (c.recovering > 0 || c.charging->active() || c.starting || !site_.session.payment.autostart || c.fsm.status() != ConnectorStatus::preparing) return;
  start(c.cfg.id, site_.session.payment.default_method, fmt::format("autostart:{}", c.cfg.id), [id = c.cfg.id](const StartOutcome& r) {
    if (!r.ok) spdlog::warn("connector {}: autostart failed: {}", id, r.error);
  });
}

void SessionEngine::stop_all(std::function<void()> done) {
  shutting_down_ = true;
  // Starts waiting for a second factor end now: nothing is held for them yet.
  for (auto& [id, c] : connectors_) {
    if (c->stepping) end_step_up(*c, "none", "pilecored stopped", "pilecored is stopping: no session starts");
  }
  auto remaining = std::make_shared<std::size_t>(0);
  auto cb = std::make_shared<std::function<void()>>(std::move(done));
  auto fired = std::make_shared<bool>(false);
  // Once the sessions are closed, captures (and voids, refunds) in flight get their answers
  // before the payment plugins stop; the timer below bounds the whole wait.
  auto finish = [this, cb, fired, alive = alive_] {
    if (*fired || !*alive) return;
    // A capture may still wait for its risk check, not yet the saga's: a recovery's close (a
    // stopped session's own close waits for its capture's answer before it counts as closed).
    after_capture_checks([this, cb, fired, alive] {
      if (*fired || !*alive) return;
      saga_->drain([cb, fired] {
        if (*fired) return;
        *fired = true;
        (*cb)();
      });
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
    if (c->charging->active()) ++*remaining;
  }
  // The bound is real time, whatever the clock's speed: it is systemd's stop timeout that it must
  // beat, and a fast simulated clock (the demo's) must not cut a close short that is in progress.
  auto bound = std::make_unique<asio::steady_timer>(strand_);
  bound->expires_after(std::chrono::milliseconds(site_.session.charging.meter_timeout_ms + 2000));
  bound->async_wait([alive = alive_, give_up](const boost::system::error_code& ec) {
    if (!ec && *alive) give_up();
  });
  keep_until_fired(std::move(bound));
  if (*remaining == 0) {
    finish();
    return;
  }
  for (auto& [id, c] : connectors_) {
    if (!c->charging->active()) continue;
    auto one_closed = [remaining, finish] {
      if (--*remaining == 0) finish();
    };
    if (c->charging->running()->stopping) {
      c->charging->when_closed(one_closed);
    } else if (site_.session.charging.suspend_on_stop) {
      suspend_session(*c, one_closed);  // a restart or an upgrade: the next start resumes it
    } else {
      stop(id, StopReason::shutdown, [one_closed](const StopOutcome&) { one_closed(); });
    }
  }
}

void SessionEngine::suspend_session(Connector& c, std::function<void()> done) {
  const std::string txn = c.charging->running()->id;
  const std::uint32_t id = c.cfg.id;
  if (auto* stage = power_stage(c)) {
    if (Status st = stage->set_power_limit(0); !st.ok()) spdlog::warn("connector {}: the power stage did not take the setpoint 0 W: {}", id, st.message());
    if (Status st = stage->open_contactor(); !st.ok()) spdlog::error("connector {}: the contactor did not open: {}", id, st.message());
  }
  spdlog::info("connector {}: {}: suspending for the planned stop: power paused, the transaction kept open for the next start (within {} s)", id,
               txn, site_.session.charging.resume_within_s);
  auto suspend = [this, &c, id, txn, done = std::move(done), alive = alive_](std::optional<MeterReading> m) {
    if (!*alive) return;
    c.charging->suspend(m, [id, txn, done](const Status& st) {
      if (st.ok()) {
        spdlog::info("connector {}: {}: suspended", id, txn);
      } else {
        spdlog::error("connector {}: {}: the suspension was not recorded ({}); the next start closes it as after a power cut", id, txn, st.message());
      }
      done();
    });
  };
  if (c.meter_failed || c.charging->guard().faulted()) {
    suspend(std::nullopt);
  } else {
    c.charging->read_meter(std::move(suspend));
  }
}

void SessionEngine::resume_session(Connector& c) {
  const ChargingSession::Running& s = *c.charging->running();
  spdlog::info("connector {}: {}: resumed after the planned stop, hold {} fen, meter {} Wh", c.cfg.id, s.id, s.authorized_fen, s.readings.back().wh);
  apply(c, ConnectorEvent::authorized_start, fmt::format("transaction {} resumed after a restart", s.id));
  if (c.fsm.status() == ConnectorStatus::preparing && c.fsm.plugged()) apply(c, ConnectorEvent::authorized_start, "the vehicle is still plugged in");
  if (c.fsm.status() == ConnectorStatus::charging) begin_charging(c);
  // The vehicle may have left while the pile restarted: not plugged in by the deadline, the
  // session ends, billed to its reading at the suspension.
  scheduler_->after(std::chrono::seconds(site_.session.charging.resume_plug_wait_s), [this, id = c.cfg.id, txn = s.id] {
    Connector* cp = connector(id);
    const ChargingSession::Running* run = cp ? cp->charging->running() : nullptr;
    if (!run || run->id != txn || run->stopping || cp->fsm.plugged()) return;
    spdlog::warn("connector {}: {}: no vehicle plugged in {} s after the session resumed; stopping it", id, txn, site_.session.charging.resume_plug_wait_s);
    stop(id, StopReason::ev_disconnected, [](const StopOutcome&) {});
  });
}

void SessionEngine::set_tariff(const Tariff& tariff) {
  tariff_ = std::make_shared<const Tariff>(tariff);
  tariff_document_ = tariff_->document().dump();
  closer_->set_current_tariff(tariff_digest(tariff_document_));
}

std::shared_ptr<const Tariff> SessionEngine::tariff_of(const std::string& txn) const {
  if (auto doc = TariffRepository(*reader_db_).document_of(txn)) {
    try {
      return std::make_shared<const Tariff>(Tariff::from_document(nlohmann::json::parse(*doc)));
    } catch (const std::exception& e) {
      // A stored document this version cannot read (edited by hand, or from a newer one): the
      // site's tariff now is the best price there is, and the log says so.
      spdlog::error("{}: its stored tariff cannot be read ({}); billing it at the site's tariff", txn, e.what());
    }
  }
  return tariff_;
}

StatusSnapshot SessionEngine::status() const {
  StatusSnapshot out{.site = site_.id, .time = clock_.now(), .connectors = {}};
  for (const auto& [id, c] : connectors_) {
    ConnectorSnapshot j;
    j.id = id;
    j.status = c->fsm.status();
    j.plugged = c->fsm.plugged();
    const auto& last = c->charging->last();
    if (last) j.meter_wh = last->wh;
    if (auto* stage = power_stage(*c)) {
      const auto v = stage->vehicle();
      j.power_w = v.power_w;
      j.soc_pct = v.soc_percent;
    }
    if (const auto* run = c->charging->running()) {
      const auto& s = *run;
      SessionSnapshot sj;
      sj.transaction = s.id;
      sj.method = s.method;
      sj.user = token_ref(s.token);
      sj.started = s.readings.front().time;
      sj.setpoint_w = s.setpoint_w;
      sj.stopping = s.stopping;
      // The committed readings, and the meter's last plausible one when it follows them (none yet
      // right after a resume: the energy before the restart is shown all the same).
      std::vector<MeterReading> r = s.readings;
      if (last && last->time >= r.back().time && last->wh >= r.back().wh) r.push_back(*last);
      if (r.size() >= 2) {
        const Bill b = compute_bill(*s.tariff, r);
        sj.energy_wh = b.energy_wh;
        sj.amount_fen = b.total_fen;
      }
      j.session = std::move(sj);
    }
    if (const auto& req = c->stepping) {
      j.step_up = StepUpSnapshot{.transaction = req->txn, .factors = req->factors, .methods = req->other_methods, .reasons = req->step_up_reasons,
                                 .deadline = req->step_up_deadline};
    }
    out.connectors.push_back(std::move(j));
  }
  return out;
}

Receipt SessionEngine::receipt(const std::string& txn) const {
  const auto t = TransactionRepository(*reader_db_).find(txn);
  if (!t) return Receipt::missing(fmt::format("no transaction '{}'", txn));
  return Receipt{.ok = true,
                 .error = {},
                 .transaction = txn,
                 .connector = t->connector,
                 .method = t->method,
                 .user = token_ref(t->user_token),
                 .status = t->status,
                 .outcome = t->outcome,
                 .stop_reason = t->stop_reason,
                 .started = t->started,
                 .stopped = t->stopped,
                 .meter_start_wh = t->meter_start_wh,
                 .meter_stop_wh = t->meter_stop_wh,
                 .energy_wh = t->energy_wh,
                 .total_fen = t->total_fen,
                 .captured_fen = t->captured_fen,
                 .authorized_fen = t->authorized_fen,
                 // Closed with a bill above the hold (increments included): the part not captured.
                 .uncovered_fen = t->total_fen && *t->total_fen > t->authorized_fen ? std::optional<std::int64_t>(*t->total_fen - t->authorized_fen)
                                                                                   : std::nullopt,
                 .capture_status = t->capture_status,
                 .bill_document = t->bill_document,
                 .operations = operations::of_transaction(reader_, txn),
                 .mode = t->mode};
}

}  // namespace pilecore::core
