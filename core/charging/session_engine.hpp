// The session engine, the coordinator: per connector a state machine and a ChargingSession
// (charging_session.hpp: the meter path, checkpoints, tariff boundaries, the close), and across
// them the start (authorise, then commit), stop routing, recovery of sessions a crash or power
// cut left open, and shutdown. Everything runs on the core's strand. It answers with the types of
// session_results.hpp; JSON is built only at the control socket (core/control/wire.hpp).
//
// The money side (authorisation with step-up, capture, void, refund, each a durable money
// operation with its deadline) is the PaymentSaga's (core/payment); this engine calls it.
// Every write goes through the StoreWorker, off the strand.
//
// Durability rules, in order of the money's path:
//  0. the authorisation's intent (operations table) commits before the acquirer is asked; the
//     saga releases an authorisation whose session never started, also after a crash;
//  1. the transaction row is committed (synchronous=FULL) before the contactor closes;
//  2. meter checkpoints are committed every checkpoint_interval_s or checkpoint_wh;
//  3. stopping is committed before the final meter read;
//  4. the final reading, the bill, the 'closed' status, the session's ledger record and the
//     capture's intent commit in one SQLite transaction, before the capture is asked; the capture
//     is idempotent on its operation id at the acquirer and resumed until it has an outcome, so a
//     crash anywhere bills nothing twice and a capture is never lost. A close that cannot commit
//     (a full disk) keeps the session and is retried; no session starts on that connector meanwhile;
//  5. no session starts on a connector while recover() closes one of its transactions, so the
//     recovery's final meter reading holds no energy of a new session; and a recovered
//     transaction's energy is bounded by the next transaction's start reading on its connector.
//  6. a planned stop (charging.on_planned_stop: suspend) pauses the power, then commits the
//     session's reading and its suspension mark in one work; the transaction stays open with its
//     hold. The next start resumes it (same transaction, hold and tariff) when it is recent
//     (resume_within_s), else closes it as recovered, billed to that reading.
// tests/crash kills the daemon at random instants and checks all of this from the files.
#pragma once

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/io_context.hpp>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "bill.hpp"
#include "charging_session.hpp"
#include "checkpoint_health.hpp"
#include "db_history.hpp"
#include "risk_engine.hpp"
#include "site_day.hpp"
#include "payment_saga.hpp"
#include "scheduler.hpp"
#include "store_worker.hpp"
#include "connector_fsm.hpp"
#include "meter_guard.hpp"
#include "pilecore/pilecore.hpp"
#include "site_config.hpp"
#include "reading_repository.hpp"
#include "session_results.hpp"
#include "storage.hpp"

namespace pilecore::core {

using StartDone = std::function<void(StartOutcome)>;
using AnswerDone = std::function<void(AnswerOutcome)>;
using RefundDone = std::function<void(RefundOutcome)>;

class SessionEngine {
 public:
  struct PluginRef {
    Plugin* plugin = nullptr;
    Kind kind = Kind::sensor;
    unsigned api_minor = 0;
  };
  struct Hooks {
    std::function<PluginRef(std::string_view instance)> find;             // running instances only
    std::function<std::vector<std::string>(Kind)> running_of_kind;
    std::function<void(std::uint32_t, ConnectorStatus, const std::string&)> status_changed;
    /// Inside the close's work (storage thread): append the session's signed ledger record, which
    /// names the user's token in clear, as the transaction row does (may be empty).
    std::function<void(const SessionRecord& record)> ledger_append;
    std::function<bool(const std::string& txn)> ledger_contains;
    /// Inside the work that records a money operation's final outcome: its own ledger record (may be empty).
    std::function<void(Database&, const MoneyOperation&)> ledger_operation;
    /// An event for watchers (session_results.hpp); the runtime adds the time.
    std::function<void(const Event&)> event;
    /// Speaks or shows a message on a connector's indicators (a step-up prompt, a refusal). May be empty.
    std::function<void(std::uint32_t, const std::string&)> announce;
  };
  using Strand = boost::asio::strand<boost::asio::io_context::executor_type>;

  SessionEngine(const SiteConfig& site, Database& db, StoreWorker& store, const Clock& clock, Strand& strand, Hooks hooks);
  ~SessionEngine();

  /// Connects the power stages' event sinks. Call once, after the instances started.
  /// Routes payments of methods with channels through `router` (outlives the engine).
  void set_router(Router* router) noexcept;
  void attach();
  /// Closes every transaction a crash left open or stopping, as 'recovered', then calls done.
  void recover(std::function<void()> done);
  /// Stops every running session (reason shutdown) and calls done when all are closed, or after
  /// the meter timeout at the latest; sessions not closed by then are recovered at next start.
  void stop_all(std::function<void()> done);

  /// `presented`: the token as a reader or camera presented it, whose evidence (a face's
  /// liveness) and exchange channel (a card or wallet in the field) go to the payment method;
  /// none for a start by command.
  /// `mode`: the charging mode ("full", "amount:<fen>", "energy:<Wh>", "time:<minutes>";
  /// charging_mode.hpp); empty: the site's charging.default_mode. The hold follows it.
  void start(std::uint32_t connector, std::string method, std::string token, StartDone done,
             std::optional<identification::Token> presented = std::nullopt, std::string mode = {});
  /// A token presented by a reader or camera: starts authentication on its connector with the
  /// method the site binds its type to.
  void present(const identification::Token& token, std::optional<std::uint32_t> presenter_connector);
  /// The driver's answer to the step-up waiting on a connector's start.
  void answer_step_up(std::uint32_t connector, payment::StepUpAnswer answer, AnswerDone done);
  /// Refunds part or all of a closed transaction's capture (its own refund id).
  void refund(const std::string& txn, std::int64_t amount_fen, const std::string& reason, RefundDone done);
  void stop(std::uint32_t connector, StopReason reason, StopDone done);
  /// The tariff sessions start with from now on (a reload): sessions already running keep
  /// theirs, and their receipts say they did.
  void set_tariff(const Tariff& tariff);
  /// Tokens only as token_ref(), in status and receipts alike.
  [[nodiscard]] StatusSnapshot status() const;
  [[nodiscard]] Receipt receipt(const std::string& txn) const;

  void on_sample(const std::string& instance, const Sample& sample);
  void on_alarm(const std::string& instance, const Alarm& alarm);
  /// An instance failed at run time: fault the connectors it serves (as power stage, meter or
  /// bound by `connector:`); the runtime has already opened their contactors.
  void on_instance_failed(const std::string& instance, std::optional<std::uint32_t> bound_connector);
  /// An instance is quarantined (never started): the connectors it serves go Unavailable with
  /// `why`, so no session starts on them. Call after attach(), before recover().
  /// An isolated instance's process runs again: the connectors its failure faulted are cleared.
  void on_instance_restored(const std::string& instance, std::optional<std::uint32_t> bound_connector);
  void on_instance_disabled(const std::string& instance, std::optional<std::uint32_t> bound_connector, const std::string& why);

  // Remote device management (issue #12 item 5, docs/protocol.md section 3.4). Functions of
  // their own: the start and step-up paths are not touched by them.

  /// Opens every connector's contactor at once (before anything else, sessions or not), then
  /// stops the running sessions, each billed to the energy metered up to its final reading.
  /// `done` gets their outcomes once all are closed (at once when none ran).
  void emergency_stop(std::function<void(std::vector<StopOutcome>)> done);
  /// OCPP ChangeAvailability: Unavailable at once, or, for a connector with a session, when that
  /// session ends (`scheduled`); Available at once, dropping a pending Unavailable.
  struct AvailabilityOutcome {
    bool ok = false;
    bool scheduled = false;
    std::string error;
  };
  AvailabilityOutcome set_available(std::uint32_t connector, bool available);
  /// The remote power cap in W, the site's (no connector) or one connector's, under which every
  /// setpoint stays (with the site file's limits); none lifts it. Running sessions follow at once.
  Status set_power_limit(std::optional<std::uint32_t> connector, std::optional<std::int64_t> watts);
  /// The app's one-tap retry: the start last refused on this connector (after its checks: by the
  /// risk rules, the payment method or the meter), again with the same method, token and mode,
  /// when it was refused within `window`. Each refusal is retried once at most.
  void retry_last_start(std::uint32_t connector, Duration window, StartDone done);

  /// For the benchmark: called right after close_contactor() returns, with the request time.
  std::function<void(std::uint32_t connector)> on_contactor_closed;

 private:
  struct Connector;
  struct StartRequest;

  Connector* connector(std::uint32_t id);
  static bool charging_now(const Connector& c);  ///< a session runs and is not stopping
  void apply(Connector& c, ConnectorEvent e, const std::string& why);
  void on_power_event(Connector& c, power::Event e, std::string_view detail);
  void begin_charging(Connector& c);
  /// The connector's power stage when it is a running power plugin, else null.
  [[nodiscard]] power::PowerStage* power_stage(const Connector& c) const;
  /// A planned stop: the power paused through the power stage (setpoint 0, contactor open), then
  /// the session's reading and suspension mark committed (ChargingSession::suspend); `done` once
  /// on disk, or once it could not be.
  void suspend_session(Connector& c, std::function<void()> done);
  /// A suspended session runs again (ChargingSession::resume done): the state machine as at a
  /// start, the contactor once the vehicle asks, and a deadline for the vehicle to be plugged in.
  void resume_session(Connector& c);
  /// One hold of recover() on the connector is over (Connector::recovering); with none left, the
  /// autostart held back for a vehicle plugged in meanwhile.
  void recovered(Connector& c);
  /// With payment.autostart, a session for the vehicle waiting on the connector (Preparing, no
  /// session, nothing held by recover()), paid by the default method.
  void autostart(Connector& c);
  /// The remote power caps and availability, as they are now, to the database (RemoteSettings).
  void save_remote_settings();
  /// At the start: the remote power caps and availability saved before; a connector out of
  /// service whose session resumes (`resuming`) goes out of service when it ends.
  void restore_remote_settings(const std::set<std::uint32_t>& resuming);
  /// The strategy's setpoint, clamped to the connector's and what the site leaves it.
  void update_setpoint(Connector& c);
  /// A checkpoint's (or a close's) commit outcome: the storage.checkpoint_failed alarm, and
  /// pausing and resuming charging (checkpoint_health.hpp).
  void on_checkpoint_commit(const Status& st);
  /// The guard's verdict on a reading or a stall: the meter.implausible alarm, and the fault.
  void on_meter_check(Connector& c, const MeterCheck& check, double value);
  void evaluate_risk(const risk::Context& ctx, std::function<void(risk::Verdict, std::string)> done);
  /// The rules' capture phase, between the close's commit and the capture (SessionCloser's hook).
  void risk_before_capture(const std::string& txn, std::uint32_t connector, const std::string& method, std::int64_t fen, std::function<void()> proceed);
  /// Runs `fn` once no capture waits for its risk check: until the check answers, the capture is
  /// not yet the payment saga's, and a shutdown that drained the saga then would stop the payment
  /// method under it.
  void after_capture_checks(std::function<void()> fn);
  // The start's steps, in order (start() runs the checks and the risk rules).
  void start_authorize(const std::shared_ptr<StartRequest>& req, risk::Verdict verdict, const std::string& reasons);
  /// Risk said step_up: offer the site's second factors and wait for one (risk step-up).
  void begin_step_up(Connector& c, const std::shared_ptr<StartRequest>& req, const std::string& reasons);
  /// The second factor is given (or refused, or timed out): records it and goes on or refuses.
  void end_step_up(Connector& c, const std::string& factor, const std::string& outcome, std::optional<std::string> refusal);
  /// Another payment method presented on a connector waiting for a second factor.
  bool step_up_by_other_method(Connector& c, std::string method, std::string token, std::optional<identification::Token> presented,
                               StartDone& done);
  void authorize_start(const std::shared_ptr<StartRequest>& req, std::optional<std::string> pin = std::nullopt);
  void start_read_meter(const std::shared_ptr<StartRequest>& req, PaymentSaga::Authorization a);
  void start_commit(const std::shared_ptr<StartRequest>& req, std::optional<MeterReading> start_reading);
  void start_session(const std::shared_ptr<StartRequest>& req, const Status& committed);
  void start_refused(Connector& c, const std::shared_ptr<StartRequest>& req, StartOutcome outcome);
  /// `done`, after the connector goes Unavailable when set_available(false) waits for its session.
  StopDone then_availability(Connector& c, StopDone done);
  /// The session's bill nears its hold: a top-up when its method can, else the stop at the hold.
  void top_up(Connector& c);
  std::string next_transaction_id(std::uint32_t connector);
  [[nodiscard]] std::string user_hash(std::string_view token) const;
  std::unique_ptr<boost::asio::steady_timer> timer_after(Duration d, std::function<void()> fn);
  /// Keeps a timer alive until it fires (or the engine is destroyed, which cancels it).
  void keep_until_fired(std::unique_ptr<boost::asio::steady_timer> timer);
  [[nodiscard]] std::vector<MeterReading> stored_readings(const std::string& txn) const;
  void emit(const Event& event) const {
    if (hooks_.event) hooks_.event(event);
  }

  const SiteConfig& site_;
  Database& db_;
  StoreWorker& store_;
  /// Reads on the strand (status, receipts, recovery, risk history): a connection of its own, so
  /// the storage thread owns the writing one.
  std::unique_ptr<Database> reader_db_;
  sqlite3* reader_ = nullptr;  ///< reader_db_'s handle
  std::int64_t txn_seq_ = 0;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<SiteDay> site_day_;             ///< the site's calendar, for the risk rules' "day"
  std::shared_ptr<DbHistory> risk_history_;       ///< on reader_db_
  std::unique_ptr<RiskEngine> risk_;
  std::unique_ptr<PaymentSaga> saga_;
  std::unique_ptr<SessionCloser> closer_;
  std::shared_ptr<const Tariff> tariff_;  ///< the site's now; none: no session starts
  std::string tariff_document_;          ///< its Tariff::document(), kept with each transaction
  /// The tariff `txn` started with (stored with it), else the site's now; null when neither.
  [[nodiscard]] std::shared_ptr<const Tariff> tariff_of(const std::string& txn) const;
  const Clock& clock_;
  Strand& strand_;
  Hooks hooks_;
  std::map<std::uint32_t, std::unique_ptr<Connector>> connectors_;
  std::optional<Sample> ambient_;  ///< the latest ambient temperature reading
  std::uint64_t next_timer_ = 0;
  std::map<std::uint64_t, std::unique_ptr<boost::asio::steady_timer>> detached_;
  std::shared_ptr<bool> alive_;
  /// Set by stop_all(): no session starts any more, and a capture that a stopping payment method
  /// leaves unconfirmed is not closed as failed but left to recovery (see close_transaction).
  bool shutting_down_ = false;
  std::size_t captures_checking_ = 0;                   // captures waiting for their risk check
  std::vector<std::function<void()>> captures_checked_;  // after_capture_checks' waiters
  std::optional<std::int64_t> remote_site_cap_w_;  ///< set_power_limit() without a connector
  CheckpointHealth checkpoint_health_;
};

/// The token of a control request: "card:04A1B2" is type "card", id "04A1B2"; text without a type
/// is type "token".
identification::Token parse_token(std::string_view text, std::optional<std::uint32_t> connector);

}  // namespace pilecore::core
