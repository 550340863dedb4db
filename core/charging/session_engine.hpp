// The session engine: per connector, the state machine, the session (authorise, commit,
// charge, checkpoint, split at tariff boundaries, stop, bill, capture, ledger) and recovery of
// sessions a crash or power cut left open. Everything runs on the core's strand.
//
// Durability rules, in order of the money's path:
//  0. the transaction id and a hold record ('hold:<id>' in meta) commit before the acquirer is
//     asked to authorise; the hold goes with the transaction row, or once the authorisation is
//     released, and recover() releases the holds of transactions that never started;
//  1. the transaction row is committed (synchronous=FULL) before the contactor closes;
//  2. meter checkpoints are committed every checkpoint_interval_s or checkpoint_wh;
//  3. stopping is committed before the final meter read;
//  4. the 'closed' status and the ledger record commit in one SQLite transaction, after the
//     capture; capture is idempotent on the transaction id at the acquirer, and the ledger
//     refuses a second record for a transaction, so a crash anywhere bills nothing twice. A
//     capture left unconfirmed by a stop is not closed as failed: it is recovered, and repeated;
//  5. no session starts on a connector while recover() closes one of its transactions, so the
//     recovery's final meter reading holds no energy of a new session.
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
#include "connector_fsm.hpp"
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
    /// A session event for watchers ("session_started", "tariff_boundary", "session_stopping",
    /// "session_closed", "recovering"); the runtime adds the time.
    std::function<void(nlohmann::json)> event;
  };
  using Strand = boost::asio::strand<boost::asio::io_context::executor_type>;

  SessionEngine(const SiteConfig& site, Database& db, const Clock& clock, Strand& strand, Hooks hooks);
  ~SessionEngine();

  /// Connects the power stages' event sinks. Call once, after the instances started.
  void attach();
  /// Closes every transaction a crash left open or stopping, as 'recovered', then calls done.
  void recover(std::function<void()> done);
  /// Stops every running session (reason shutdown) and calls done when all are closed, or after
  /// the meter timeout at the latest; sessions not closed by then are recovered at next start.
  void stop_all(std::function<void()> done);

  void start(std::uint32_t connector, std::string method, std::string token, Reply done);
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
  void arm_boundary(Connector& c);
  void arm_setpoint(Connector& c);
  void finish(Connector& c, std::optional<MeterReading> final_reading, Reply done);
  void close_transaction(const std::string& txn, std::uint32_t connector, const std::string& method, std::vector<MeterReading> readings,
                         const std::string& outcome, std::function<void(nlohmann::json)> done);
  void evaluate_risk(const risk::Context& ctx, std::function<void(risk::Verdict, std::string)> done);
  std::string next_transaction_id(std::uint32_t connector);
  /// Cancels the authorisation of a transaction that never started, and forgets its hold once
  /// the payment method confirms (or says there is nothing to release).
  void release_hold(const std::string& txn, const std::string& method);
  void insert_reading(const std::string& txn, int seq, const MeterReading& r, const char* kind);
  std::unique_ptr<boost::asio::steady_timer> timer_after(Duration d, std::function<void()> fn);
  /// Keeps a timer alive until it fires (or the engine is destroyed, which cancels it).
  void keep_until_fired(std::unique_ptr<boost::asio::steady_timer> timer);
  [[nodiscard]] std::vector<MeterReading> stored_readings(const std::string& txn) const;
  void emit(nlohmann::json event) const {
    if (hooks_.event) hooks_.event(std::move(event));
  }

  const SiteConfig& site_;
  Database& db_;
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

}  // namespace pilecore::core
