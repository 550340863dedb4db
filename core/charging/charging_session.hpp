// One connector's charging: its meter path (the plausibility guard, the last plausible reading,
// the waiters for a fresh one) and the session running on it (the transaction row and start
// reading, checkpoints, tariff boundary readings, the setpoint's cadence, the stop's mark and the
// close). The SessionEngine coordinates the connectors: it owns the state machines, the start's
// authorisation, stop routing, recovery, shutdown and the payment saga, and decides what the
// session cannot see alone (the strategy's setpoint across connectors, alarms and faults).
//
// Everything runs on the core's strand. Timers go through a Scheduler, so the whole class runs on
// a ManualScheduler in unit tests; writes go through the StoreWorker. The durability order is
// SessionEngine's (session_engine.hpp): the transaction row before the contactor, checkpoints
// every checkpoint_interval_ms or checkpoint_wh, the stop mark before the final reading, and the
// close (final reading, bill, 'closed', ledger record, capture intent) as one work.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bill.hpp"
#include "charging_mode.hpp"
#include "meter_guard.hpp"
#include "payment_saga.hpp"
#include "scheduler.hpp"
#include "session_config.hpp"
#include "session_results.hpp"
#include "store_worker.hpp"

namespace pilecore::core {

/// Why a session stopped, as the receipt, the ledger and the wire name it. The *_reached ones
/// are a charging mode's target (charging_mode.hpp), distinct from funds_exhausted (the hold).
enum class StopReason { local, remote, ev_full, ev_disconnected, funds_exhausted, fault, shutdown, energy_reached, time_reached, amount_reached };
std::string_view to_string(StopReason r);
std::optional<StopReason> stop_reason_from(std::string_view s);

using StopDone = std::function<void(StopOutcome)>;
using ReadingDone = std::function<void(std::optional<MeterReading>)>;

/// Closes a transaction: the final reading, the bill, 'closed', the session's ledger record and
/// the capture's intent in ONE work, and only once that is durable the capture. Shared by a
/// running session's close and recovery's.
class SessionCloser {
 public:
  struct Hooks {
    /// Inside the close's work (storage thread): append the session's signed ledger record. May be empty.
    std::function<void(const SessionRecord&)> ledger_append;
    std::function<bool(const std::string& txn)> ledger_contains;
    std::function<void(const Event&)> emit;
    /// Once the close is on disk and before the capture is asked: the risk rules' capture phase.
    /// Calls `proceed` once, on the strand. May be empty.
    std::function<void(const std::string& txn, std::uint32_t connector, const std::string& method, std::int64_t capture_fen,
                       std::function<void()> proceed)>
        before_capture;
  };
  SessionCloser(std::string site_id, StoreWorker& store, PaymentSaga& saga, Hooks hooks);
  ~SessionCloser();
  SessionCloser(const SessionCloser&) = delete;
  SessionCloser& operator=(const SessionCloser&) = delete;

  /// `readings` run from the start reading to the final one, billed at `tariff` (the one the
  /// transaction started with). `done` gets the receipt (its user masked), or retry=true when
  /// the work did not commit (nothing of it is on disk).
  void close(const std::string& txn, std::uint32_t connector, const std::string& method, std::vector<MeterReading> readings, const std::string& outcome,
             std::int64_t authorized_fen, const std::string& mode, const Tariff& tariff, StopDone done);
  /// The digest (tariff_digest) of the site's tariff now: a bill at another tariff says on its
  /// receipt that it kept the price it started with.
  void set_current_tariff(std::string digest) { current_tariff_ = std::move(digest); }

 private:
  std::string site_id_;
  std::string current_tariff_;
  StoreWorker& store_;
  PaymentSaga& saga_;
  Hooks hooks_;
  std::shared_ptr<bool> alive_;
};

class ChargingSession {
 public:
  struct Settings {
    std::uint32_t connector = 0;
    std::string meter;  ///< the billing meter instance (logs)
    const ChargingSettings& charging;
    std::int64_t increment_step_fen = 0;  ///< payment.increment_step_fen: a top-up is asked half a step before the hold
  };
  struct Hooks {
    std::function<void(const Event&)> emit;
    /// Asks the meter for a fresh reading now (it arrives through on_sample). May be empty.
    std::function<void()> refresh_meter;
    /// The power the power stage delivers now, for the stall check; nullopt without a running one.
    std::function<std::optional<std::int64_t>()> power_w;
    /// Every check that is not a plain plausible reading: an implausible one (with the raw value),
    /// a stall, a fault cleared. The coordinator raises the alarm and faults the connector.
    std::function<void(const MeterCheck&, double value)> meter_check;
    /// The session asks to be stopped (its bill reached the authorised amount, or its mode's target).
    std::function<void(StopReason)> stop;
    /// The bill comes near the hold: asks the coordinator for a top-up of the hold. The answer
    /// comes through increment_answered(). Empty: the session stops at the hold.
    std::function<void(std::int64_t bill_fen)> top_up;
    /// Time for a new setpoint (every setpoint_interval_ms once the contactor closed).
    std::function<void()> setpoint_due;
    /// A checkpoint's commit outcome (and a close's, the session's last checkpoint): the
    /// coordinator pauses charging while checkpoints cannot commit. May be empty.
    std::function<void(const Status&)> checkpoint_committed;
  };
  /// A transaction authorised and about to be opened.
  struct Opening {
    std::string txn;
    std::string method;
    std::string token;  ///< in clear: the row keeps it for the risk rules' history
    std::string user_hash;
    std::string payment_ref;
    std::int64_t authorized_fen = 0;
    ChargingMode mode;
    /// The site's tariff at the start, and its document (Tariff::document()), kept with the
    /// transaction: the session is billed at it whatever a reload or a restart brings.
    std::shared_ptr<const Tariff> tariff;
    std::string tariff_document;
  };
  /// A transaction as it runs from its row and its committed readings: just opened (the start
  /// reading alone), or suspended by a planned stop and resumed by the next start (the start
  /// reading first, the suspension's reading last).
  struct Resuming {
    std::string txn;
    std::string method;
    std::string token;
    std::int64_t authorized_fen = 0;
    ChargingMode mode;
    std::shared_ptr<const Tariff> tariff;
    std::vector<MeterReading> readings;
  };
  /// The running session, read-only for the coordinator.
  struct Running {
    std::string id;
    std::string method;
    std::string token;
    std::int64_t authorized_fen = 0;
    std::vector<MeterReading> readings;  ///< committed (or being committed): start, checkpoints, boundaries
    MeterReading last_checkpoint;
    bool stopping = false;
    bool charging_started = false;
    std::int64_t setpoint_w = 0;
    bool has_setpoint = false;  ///< a setpoint was sent to the power stage in this session
    bool funds_stop_asked = false;  ///< the bill reached the hold: the stop is asked once
    ChargingMode mode;
    bool target_stop_asked = false;  ///< the mode's target was reached: the stop is asked once
    bool increment_asked = false;    ///< a top-up of the hold is in flight
    bool increments_over = false;    ///< a top-up was declined or is unsupported: none asked again
    std::shared_ptr<const Tariff> tariff;  ///< the one it started with (never null)
  };

  ChargingSession(Settings settings, MeterPlausibility plausibility, std::int64_t max_power_w, StoreWorker& store, Scheduler& scheduler,
                  const Clock& clock, SessionCloser* closer, Hooks hooks);
  ~ChargingSession();
  ChargingSession(const ChargingSession&) = delete;
  ChargingSession& operator=(const ChargingSession&) = delete;

  // The meter.
  /// An energy_import reading: the guard's check, then the waiters, then the checkpoint. An
  /// implausible reading is never committed, billed nor handed to a waiter.
  void on_sample(TimePoint time, double value_wh);
  /// `done` gets the first plausible reading taken from now on, or nullopt after meter_timeout_ms.
  void read_meter(ReadingDone done);
  /// Whether the meter holds while the power stage delivers (MeterGuard::check_power).
  void check_stall();
  [[nodiscard]] const MeterGuard& guard() const { return guard_; }
  /// The connector's last committed reading, from before a restart (MeterGuard::seed).
  void seed_meter(const MeterReading& committed) { guard_.seed(committed); }
  [[nodiscard]] const std::optional<MeterReading>& last() const { return last_; }

  // The session.
  /// Commits the transaction row and its start reading; once durable (`committed` ok) the
  /// session runs and its tariff boundaries are armed. A failed commit leaves no session.
  void open(const Opening& o, const MeterReading& start, std::function<void(const Status&)> committed);
  [[nodiscard]] const Running* running() const { return running_ ? &*running_ : nullptr; }
  [[nodiscard]] bool active() const { return running_.has_value(); }
  /// True once per session, for the caller that is about to close the contactor.
  bool start_charging();
  /// The contactor closed: the setpoint's cadence starts.
  void contactor_closed();
  /// A top-up's answer: the new authorised total (approved), or nullopt (declined, unsupported,
  /// timed out: the session stops at the hold it has).
  void increment_answered(std::optional<std::int64_t> authorized_total);
  /// Records the setpoint sent to the power stage.
  void set_setpoint(std::int64_t watts);
  /// Writes a reading as a checkpoint when checkpoint_interval_ms or checkpoint_wh has passed
  /// since the last one. The one place a checkpoint is written.
  void checkpoint(const MeterReading& r);
  /// Marks the session stopping (committed before the final reading) and stops its timers.
  void begin_stop(StopReason reason);
  /// Closes with the final reading (or, without one, the guard's last plausible reading, or the
  /// last committed one). A close that does not commit keeps the session, raises
  /// storage.close_failed once and is retried; `done` gets each attempt's outcome.
  void close(std::optional<MeterReading> final_reading, StopDone done);
  /// A planned stop, with the power already paused: commits `reading` (or the guard's last
  /// plausible one) as a checkpoint and the suspension mark in one work, and ends the session
  /// here without a bill or a capture; the transaction stays open for the next start to resume.
  /// `done` gets the commit's outcome; either way the session no longer runs here (not on disk:
  /// the next start closes the transaction as after a power cut).
  void suspend(std::optional<MeterReading> reading, std::function<void(const Status&)> done);
  /// The next start: clears the suspension mark; once that is durable the session runs again
  /// from its committed readings, with its tariff boundaries and time target armed.
  void resume(const Resuming& r, std::function<void(const Status&)> done);
  /// Called once the running session is closed (a clean stop waits with it).
  void when_closed(std::function<void()> fn) { on_closed_.push_back(std::move(fn)); }

 private:
  struct Waiter {
    std::uint64_t id;
    TimePoint after;
    ReadingDone done;
    TimerId timeout = 0;
  };
  /// Asks for a stop when the bill so far, plus what the next meter interval may add, reaches
  /// the authorised amount.
  void check_funds(const MeterReading& r, const std::optional<MeterReading>& previous);
  /// Asks for a stop when the mode's target (energy, amount) is reached, less one meter interval.
  bool check_target(const MeterReading& r, const std::optional<MeterReading>& previous, std::int64_t bill_fen, std::int64_t margin_fen);
  /// The session runs from `r` (its row and committed readings): Running made, the tariff
  /// boundaries and the time target armed. For open() and resume() alike.
  void run_from(const Resuming& r);
  void arm_time_target();
  void arm_boundary();
  void on_boundary(TimePoint boundary, std::optional<MeterReading> m);
  void arm_setpoint();
  void cancel_timers();

  Settings settings_;
  MeterGuard guard_;
  StoreWorker& store_;
  Scheduler& scheduler_;
  const Clock& clock_;
  SessionCloser* closer_;
  Hooks hooks_;
  std::optional<MeterReading> last_;  ///< the guard's last plausible reading
  std::optional<MeterReading> before_last_;  ///< the one before it: last_ less it is the meter's last interval
  std::list<Waiter> waiters_;
  std::uint64_t next_waiter_ = 0;
  std::optional<Running> running_;
  TimerId boundary_timer_ = 0;
  TimerId setpoint_timer_ = 0;
  TimerId time_target_timer_ = 0;
  TimerId close_retry_ = 0;
  int close_failures_ = 0;  ///< consecutive closes that did not commit (a full disk)
  std::vector<std::function<void()>> on_closed_;
  std::shared_ptr<bool> alive_;
};

}  // namespace pilecore::core
