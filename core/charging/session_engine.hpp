// The session engine: per connector, the state machine, the session (authorise, commit,
// charge, checkpoint, split at tariff boundaries, stop, bill, capture, ledger) and recovery of
// sessions a crash or power cut left open. Everything runs on the core's strand.
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
// tests/crash kills the daemon at random instants and checks all of this from the files.
#pragma once

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/io_context.hpp>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "bill.hpp"
#include "payment_saga.hpp"
#include "scheduler.hpp"
#include "store_worker.hpp"
#include "connector_fsm.hpp"
#include "meter_guard.hpp"
#include "pilecore/pilecore.hpp"
#include "site_config.hpp"
#include "storage.hpp"

namespace pilecore::core {

enum class StopReason { local, remote, ev_full, ev_disconnected, funds_exhausted, fault, shutdown };
std::string_view to_string(StopReason r);
std::optional<StopReason> stop_reason_from(std::string_view s);

using Reply = std::function<void(nlohmann::json)>;

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
    /// Inside an open SQLite transaction: append the signed ledger record (may be empty).
    std::function<void(const std::string& txn, const nlohmann::json& record)> ledger_append;
    std::function<bool(const std::string& txn)> ledger_contains;
    /// Inside the work that records a money operation's final outcome: its own ledger record (may be empty).
    std::function<void(Database&, const MoneyOperation&)> ledger_operation;
    /// A session event for watchers ("session_started", "tariff_boundary", "session_stopping",
    /// "session_closed", "recovering"); the runtime adds the time.
    std::function<void(nlohmann::json)> event;
    /// Speaks or shows a message on a connector's indicators (a step-up prompt, a refusal). May be empty.
    std::function<void(std::uint32_t, const std::string&)> announce;
  };
  using Strand = boost::asio::strand<boost::asio::io_context::executor_type>;

  SessionEngine(const SiteConfig& site, Database& db, StoreWorker& store, const Clock& clock, Strand& strand, Hooks hooks);
  ~SessionEngine();

  /// Connects the power stages' event sinks. Call once, after the instances started.
  void attach();
  /// Closes every transaction a crash left open or stopping, as 'recovered', then calls done.
  void recover(std::function<void()> done);
  /// Stops every running session (reason shutdown) and calls done when all are closed, or after
  /// the meter timeout at the latest; sessions not closed by then are recovered at next start.
  void stop_all(std::function<void()> done);

  /// `presented`: the token as a reader or camera presented it, evidence (a face's liveness) and
  /// exchange channel included, which the payment method needs; absent, `token` ("type:id") is all.
  void start(std::uint32_t connector, std::string method, std::string token, Reply done,
             std::optional<identification::Token> presented = std::nullopt);
  /// A token presented by a reader or camera: starts authentication on its connector with the
  /// method the site binds its type to.
  void present(const identification::Token& token, std::optional<std::uint32_t> presenter_connector);
  /// The driver's answer to the step-up waiting on a connector's start.
  void answer_step_up(std::uint32_t connector, payment::StepUpAnswer answer, Reply done);
  /// Refunds part or all of a closed transaction's capture (its own refund id).
  void refund(const std::string& txn, std::int64_t amount_fen, const std::string& reason, Reply done);
  void stop(std::uint32_t connector, StopReason reason, Reply done);
  [[nodiscard]] nlohmann::json status() const;
  [[nodiscard]] nlohmann::json receipt(const std::string& txn) const;

  void on_sample(const std::string& instance, const Sample& sample);
  void on_alarm(const std::string& instance, const Alarm& alarm);
  /// An instance failed at run time: fault the connectors it serves (as power stage, meter or
  /// bound by `connector:`); the runtime has already opened their contactors.
  void on_instance_failed(const std::string& instance, std::optional<std::uint32_t> bound_connector);
  /// An instance is quarantined (never started): the connectors it serves go Unavailable with
  /// `why`, so no session starts on them. Call after attach(), before recover().
  void on_instance_disabled(const std::string& instance, std::optional<std::uint32_t> bound_connector, const std::string& why);

  /// For the benchmark: called right after close_contactor() returns, with the request time.
  std::function<void(std::uint32_t connector)> on_contactor_closed;

 private:
  struct Session;
  struct Connector;
  struct Waiter {
    std::uint64_t id;
    TimePoint after;
    std::function<void(std::optional<MeterReading>)> done;
  };

  Connector* connector(std::uint32_t id);
  Connector* connector_of_meter(const std::string& instance);
  void apply(Connector& c, ConnectorEvent e, const std::string& why);
  void on_power_event(Connector& c, power::Event e, std::string_view detail);
  void read_meter(Connector& c, std::function<void(std::optional<MeterReading>)> done);
  void begin_charging(Connector& c);
  void update_setpoint(Connector& c);
  void checkpoint(Connector& c, const MeterReading& r);
  /// The guard's verdict on a reading or a stall: the meter.implausible alarm, and the fault.
  void on_meter_check(Connector& c, const MeterCheck& check, double value);
  /// Whether the meter holds while the power stage delivers (MeterGuard::check_power).
  void check_stall(Connector& c);
  void arm_boundary(Connector& c);
  void arm_setpoint(Connector& c);
  void finish(Connector& c, std::optional<MeterReading> final_reading, Reply done);
  void close_transaction(const std::string& txn, std::uint32_t connector, const std::string& method, std::vector<MeterReading> readings,
                         const std::string& outcome, std::int64_t authorized_fen, std::function<void(nlohmann::json)> done);
  void evaluate_risk(const risk::Context& ctx, std::function<void(risk::Verdict, std::string)> done);
  void authorized(Connector& c, const std::string& txn, const std::string& method, const std::string& token, const PaymentSaga::Authorization& a,
                  const Reply& done);
  std::string next_transaction_id(std::uint32_t connector);
  [[nodiscard]] std::string user_hash(std::string_view token) const;
  /// Submits a reading (start, checkpoint, boundary, stop, recovery) through the storage thread.
  void insert_reading(Database& db, const std::string& txn, int seq, const MeterReading& r, const char* kind) const;
  std::unique_ptr<boost::asio::steady_timer> timer_after(Duration d, std::function<void()> fn);
  /// Keeps a timer alive until it fires (or the engine is destroyed, which cancels it).
  void keep_until_fired(std::unique_ptr<boost::asio::steady_timer> timer);
  [[nodiscard]] std::vector<MeterReading> stored_readings(const std::string& txn) const;
  void emit(nlohmann::json event) const {
    if (hooks_.event) hooks_.event(std::move(event));
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
  std::unique_ptr<PaymentSaga> saga_;
  const Clock& clock_;
  Strand& strand_;
  Hooks hooks_;
  std::map<std::uint32_t, std::unique_ptr<Connector>> connectors_;
  std::optional<Sample> ambient_;  ///< the latest ambient temperature reading
  std::uint64_t next_waiter_ = 0;
  std::uint64_t next_timer_ = 0;
  std::map<std::uint64_t, std::unique_ptr<boost::asio::steady_timer>> detached_;
  std::shared_ptr<bool> alive_;
  /// Set by stop_all(): no session starts any more, and a capture that a stopping payment method
  /// leaves unconfirmed is not closed as failed but left to recovery (see close_transaction).
  bool shutting_down_ = false;
};

/// The token of a control request: "card:04A1B2" is type "card", id "04A1B2"; text without a type
/// is type "token".
identification::Token parse_token(std::string_view text, std::optional<std::uint32_t> connector);

}  // namespace pilecore::core
