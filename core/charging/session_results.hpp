// What the session engine answers and announces, as types. The engine never builds JSON for a
// reply or an event: core/control/wire.hpp turns each of these into the control socket's JSON
// (the one place the wire's field names live), and the daemon routes them there.
//
// Tokens: every `user` field below is already token_ref() (masked, with the pile's salted
// hash), except SessionRecord::user when it is the ledger's copy (see SessionEngine::Hooks).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "bill.hpp"
#include "money_operations.hpp"
#include "pilecore/clock.hpp"
#include "pilecore/connector_status.hpp"

namespace pilecore::core {

/// session_start. A refusal before authorisation has only `error`; a risk refusal names its
/// verdict; a payment refusal names the transaction it used; a start names the meter's reading.
struct StartOutcome {
  bool ok = false;
  std::string error;
  std::string transaction;
  std::optional<std::string> verdict;
  std::optional<std::uint32_t> connector;
  std::optional<std::int64_t> meter_start_wh;

  static StartOutcome refused(std::string error, std::string transaction = {}, std::optional<std::string> verdict = {}) {
    StartOutcome o;
    o.error = std::move(error);
    o.transaction = std::move(transaction);
    o.verdict = std::move(verdict);
    return o;
  }
  static StartOutcome started(std::string transaction, std::uint32_t connector, std::int64_t meter_start_wh) {
    StartOutcome o;
    o.ok = true;
    o.transaction = std::move(transaction);
    o.connector = connector;
    o.meter_start_wh = meter_start_wh;
    return o;
  }
};

/// A closed session: what the ledger signs, and (with the capture's outcome) the stop's receipt.
struct SessionRecord {
  std::string transaction;
  std::string site;
  std::uint32_t connector = 0;
  std::string method;
  std::string user;
  std::string payment_ref;
  TimePoint started{};
  std::string stop_reason;
  TimePoint stopped{};
  std::int64_t meter_start_wh = 0;
  std::int64_t meter_stop_wh = 0;
  Bill bill;
  std::int64_t capture_fen = 0;
  std::string capture_operation;
  std::string outcome;  ///< completed, recovered
  std::int64_t authorized_fen = 0;  ///< the hold at the close, increments included
  /// What the bill exceeds the hold by: never captured (a capture is min(bill, hold)), recorded so
  /// the operator sees it instead of losing it silently.
  std::int64_t uncovered_fen = 0;
  std::string mode;  ///< the charging mode the driver asked for ("full", "amount:5000", ...)
};

struct CloseReceipt {
  SessionRecord record;  ///< user masked
  std::int64_t captured_fen = 0;
  std::string capture_status;  ///< captured, pending: ..., failed: ..., nothing to capture
};

/// session_stop (and every internal close). `retry`: the close did not commit (a full disk) and
/// is tried again; the session stays.
struct StopOutcome {
  bool ok = false;
  std::string error;
  std::string transaction;
  bool retry = false;
  std::optional<CloseReceipt> receipt;

  static StopOutcome refused(std::string error) {
    StopOutcome o;
    o.error = std::move(error);
    return o;
  }
  static StopOutcome not_committed(std::string error, std::string transaction) {
    StopOutcome o;
    o.error = std::move(error);
    o.transaction = std::move(transaction);
    o.retry = true;
    return o;
  }
  static StopOutcome closed(std::string transaction, CloseReceipt receipt) {
    StopOutcome o;
    o.ok = true;
    o.transaction = std::move(transaction);
    o.receipt = std::move(receipt);
    return o;
  }
};

/// session_answer.
struct AnswerOutcome {
  bool ok = false;
  std::string error;
  std::string transaction;

  static AnswerOutcome refused(std::string error) {
    AnswerOutcome o;
    o.error = std::move(error);
    return o;
  }
  static AnswerOutcome relayed(std::string transaction) {
    AnswerOutcome o;
    o.ok = true;
    o.transaction = std::move(transaction);
    return o;
  }
};

/// refund: refused before the saga (only `error`), or the refund operation's first answer.
struct RefundOutcome {
  bool ok = false;
  std::string error;
  std::optional<MoneyOperation> operation;

  static RefundOutcome refused(std::string error) {
    RefundOutcome o;
    o.error = std::move(error);
    return o;
  }
  /// ok unless the refund failed; a failure's reason is the error.
  static RefundOutcome answered(const MoneyOperation& op) {
    RefundOutcome o;
    o.ok = op.state != OperationStateRow::failed;
    if (!o.ok) o.error = op.reason;
    o.operation = op;
    return o;
  }
};

struct SessionSnapshot {
  std::string transaction;
  std::string method;
  std::string user;
  TimePoint started{};
  std::int64_t setpoint_w = 0;
  bool stopping = false;
  std::optional<std::int64_t> energy_wh;   ///< the bill so far, when there is a reading and a tariff
  std::optional<std::int64_t> amount_fen;
};

/// A start waiting for the second factor a risk step-up asked.
struct StepUpSnapshot {
  std::string transaction;
  std::vector<std::string> factors;  ///< offered: pin, app_confirmation, other_method
  std::vector<std::string> methods;  ///< other_method: the payment instances that may pay instead
  std::string reasons;
  TimePoint deadline{};
};

struct ConnectorSnapshot {
  std::uint32_t id = 0;
  ConnectorStatus status = ConnectorStatus::unavailable;
  bool plugged = false;
  std::optional<std::int64_t> meter_wh;
  std::optional<std::int64_t> power_w;
  std::optional<double> soc_pct;
  std::optional<SessionSnapshot> session;
  std::optional<StepUpSnapshot> step_up;
};

/// status (the engine's part; the daemon adds instances and the socket's counters).
struct StatusSnapshot {
  std::string site;
  TimePoint time{};
  std::vector<ConnectorSnapshot> connectors;
};

/// receipt: a stored transaction and its money operations.
struct Receipt {
  bool ok = false;
  std::string error;
  std::string transaction;
  std::uint32_t connector = 0;
  std::string method;
  std::string user;
  std::string status;
  std::string outcome;
  std::string stop_reason;
  TimePoint started{};
  std::optional<TimePoint> stopped;
  std::int64_t meter_start_wh = 0;
  std::optional<std::int64_t> meter_stop_wh;
  std::optional<std::int64_t> energy_wh;
  std::optional<std::int64_t> total_fen;
  std::optional<std::int64_t> captured_fen;
  std::int64_t authorized_fen = 0;
  std::optional<std::int64_t> uncovered_fen;  ///< closed with a bill above the hold: the part not captured
  std::string capture_status;
  std::optional<std::string> bill_document;  ///< the stored bill (billing's bill_json)
  std::vector<MoneyOperation> operations;
  std::string mode;  ///< what the driver asked for (ChargingMode::text()); '' when not recorded

  static Receipt missing(std::string error) {
    Receipt r;
    r.error = std::move(error);
    return r;
  }
};

/// Events for watchers; the daemon stamps each with the clock's time.
namespace events {
struct SessionStarted {
  std::uint32_t connector = 0;
  std::string transaction, method, user, payment_ref;
  std::int64_t authorized_fen = 0;
  std::int64_t meter_start_wh = 0;
};
struct StepUp {
  std::uint32_t connector = 0;
  std::string transaction, kind, prompt;
  TimePoint deadline{};
  std::vector<std::string> methods;
  /// A risk step-up: every second factor offered (kind is the first), and the rules' reasons.
  /// Empty for a method's own challenge.
  std::vector<std::string> factors;
  std::string reasons;
};
struct StartRefused {
  std::uint32_t connector = 0;
  std::string transaction, reason;
};
struct TariffBoundary {
  std::uint32_t connector = 0;
  std::string transaction;
  std::int64_t meter_wh = 0;
  TimePoint boundary{};
  std::string period, plan;
};
struct SessionStopping {
  std::uint32_t connector = 0;
  std::string transaction, reason;
};
struct SessionClosed {
  std::uint32_t connector = 0;
  std::string transaction, outcome, stop_reason;
  std::int64_t energy_wh = 0, total_fen = 0, captured_fen = 0;
  std::string capture_status;
  std::int64_t uncovered_fen = 0;
};
struct Recovering {
  std::vector<std::string> transactions;
};
struct OperationSettled {
  MoneyOperation operation;
};
/// meter.implausible raised (a reading the guard refused) or cleared.
struct MeterImplausible {
  bool active = true;
  std::string instance;
  std::uint32_t connector = 0;
  std::string message;
  std::string problem;                      ///< raised only
  double reading_wh = 0;                    ///< raised only; NaN or infinity go as text
  std::int64_t consecutive = 0, fault_after = 0;  ///< raised only
  std::optional<std::int64_t> last_plausible_wh;  ///< raised only
  std::optional<std::int64_t> meter_wh;     ///< cleared only: the plausible reading
};
/// storage.close_failed: a close that did not commit; retried (active), or closed at last.
struct CloseFailed {
  std::uint32_t connector = 0;
  std::string message;
  bool active = true;
};
/// storage.checkpoint_failed: meter checkpoints not committed (a full disk); charging pauses
/// after pause_after of them in a row and resumes when one commits (checkpoint_health.hpp).
struct CheckpointFailed {
  bool active = true;
  std::string message;
  std::string error;  ///< SQLite's, while active
  std::int64_t consecutive = 0, pause_after = 0;
  bool paused = false;
};
}  // namespace events

using Event = std::variant<events::SessionStarted, events::StepUp, events::StartRefused, events::TariffBoundary, events::SessionStopping,
                           events::SessionClosed, events::Recovering, events::OperationSettled, events::MeterImplausible, events::CloseFailed,
                           events::CheckpointFailed>;

}  // namespace pilecore::core
