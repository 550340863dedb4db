// pilecore plugin SDK: payment methods (face, dcep, card, credit, ...).
//
// Money is integer fen. Every operation carries an operation id: the core writes the operation
// (its intent) to disk before it calls the plugin, and may repeat the call with the same id after
// a restart or a timeout. A plugin must treat a repeated operation id as the same operation: answer
// with its outcome, never act twice. A different operation (another refund of the same
// transaction) has another id.
//
// Callbacks: each operation's callback is called exactly once, on the core's strand (from a
// driver thread, go through Host::post). It may be called before the call returns. The core
// enforces every deadline itself: a callback that comes after the deadline is ignored (the core
// has already counted the operation as timed out and acts on that: a late authorisation is
// released with cancel(), a late capture is asked again), so a plugin that never answers cannot
// hold a connector.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "pilecore/clock.hpp"
#include "pilecore/identification.hpp"
#include "pilecore/plugin.hpp"

namespace pilecore {
inline namespace v2 {
namespace payment {

enum class Decision : std::uint8_t {
  approved,  ///< funds are held (or credit is granted) up to authorized_fen
  declined,  ///< no; `reason` says why in words a driver understands
  step_up,   ///< more proof is needed first: `challenge` says what; the answer comes to answer_step_up()
  unavailable,  ///< the channel could not take it (unreachable, an error at the acquirer) and holds
                ///< nothing: the core may fail over to the method's next channel. `reason` says what
                ///< failed. Not for the payer's refusal: that is declined, and never fails over.
};

constexpr std::string_view to_string(Decision d) noexcept {
  switch (d) {
    case Decision::approved: return "approved";
    case Decision::declined: return "declined";
    case Decision::step_up: return "step_up";
    case Decision::unavailable: return "unavailable";
  }
  return "unknown";
}

/// What a step-up asks of the driver.
enum class ChallengeKind : std::uint8_t {
  pin,               ///< a PIN entered at the pile
  other_method,      ///< pay with another method (`methods` lists the acceptable ones)
  app_confirmation,  ///< confirm in the operator's app (answered by a back-end command)
};

constexpr std::string_view to_string(ChallengeKind k) noexcept {
  switch (k) {
    case ChallengeKind::pin: return "pin";
    case ChallengeKind::other_method: return "other_method";
    case ChallengeKind::app_confirmation: return "app_confirmation";
  }
  return "unknown";
}

struct Challenge {
  ChallengeKind kind = ChallengeKind::pin;
  std::string prompt;                ///< shown and spoken at the pile, e.g. "请输入卡密码"
  TimePoint deadline{};              ///< the driver must answer by then; the core enforces it
  std::vector<std::string> methods;  ///< other_method: the payment instances that may be used
};

/// The driver's answer to a challenge, relayed by the core.
struct StepUpAnswer {
  ChallengeKind kind = ChallengeKind::pin;
  std::string value;       ///< pin: the digits (never logged); other kinds: empty
  bool confirmed = false;  ///< app_confirmation: confirmed in the app; other_method: paid with another method
};

struct AuthorizationRequest {
  std::string_view operation_id;    ///< idempotency key of this authorisation
  std::string_view transaction_id;  ///< unique per site
  std::uint32_t connector = 0;
  /// Who pays: the token presented (card UID, wallet id, face id), with its evidence and, while the
  /// card or wallet is in the field, its exchange channel. Valid during the call; copy what you keep.
  const identification::Token* token = nullptr;
  std::string_view channel;  ///< the acquirer the router chose (empty: the method's own choice)
  std::int64_t amount_fen = 0;  ///< the estimate to hold
  TimePoint deadline{};         ///< answer by then
  /// API 2.3. Risk control asked a second factor and the driver chose a PIN entered at the pile:
  /// answer step_up with a `pin` challenge, and approve only once answer_step_up() brings the
  /// payer's right PIN (decline after wrong ones, as the method's own rules say). Set only for a
  /// method built against 2.3 or later whose capabilities() say verifies_pin; the core refuses an
  /// approval that skipped the challenge.
  bool pin_required = false;
};

struct AuthorizationResult {
  Decision decision = Decision::declined;
  std::int64_t authorized_fen = 0;  ///< may be less than asked (a partial hold): the core stops charging there
  std::string reference;            ///< the acquirer's reference, kept in the ledger
  std::string reason;
  Challenge challenge;              ///< step_up only
};

/// A top-up of an approved authorisation (API 2.1): raise the hold by `amount_fen` during a
/// session. Answered like an authorisation: approved with `authorized_fen` the amount ADDED (may
/// be less than asked; 0 is a decline), declined, or unavailable. A step-up is not possible here
/// and counts as declined. Idempotent on the operation id like every other operation.
struct IncrementRequest {
  std::string_view operation_id;      ///< "<txn>/increment/<n>"
  std::string_view transaction_id;
  std::string_view authorization_id;  ///< the approved authorisation raised (its operation id)
  std::string_view channel;           ///< the channel it was approved on (empty: the method's own)
  std::int64_t amount_fen = 0;        ///< to add to the hold
  std::int64_t total_fen = 0;         ///< the hold once added: what a capture may then take at most
  TimePoint deadline{};
};

/// The outcome of a capture, a void or a refund.
enum class OperationState : std::uint8_t {
  confirmed,  ///< done; `amount_fen` is what moved
  pending,    ///< accepted but not final (an acquirer that settles later): the core asks again, with
              ///< the same operation id, until it is confirmed or failed
  failed,     ///< not done and will not be: `reason` says why (for unavailable, answer pending)
};

constexpr std::string_view to_string(OperationState s) noexcept {
  switch (s) {
    case OperationState::confirmed: return "confirmed";
    case OperationState::pending: return "pending";
    case OperationState::failed: return "failed";
  }
  return "unknown";
}

struct OperationResult {
  OperationState state = OperationState::failed;
  std::int64_t amount_fen = 0;
  std::string reference;
  std::string reason;
};

struct CaptureRequest {
  std::string_view operation_id;
  std::string_view transaction_id;
  std::int64_t amount_fen = 0;  ///< never above the authorised amount
  TimePoint deadline{};
};

struct VoidRequest {
  std::string_view operation_id;
  std::string_view transaction_id;
  TimePoint deadline{};
  /// The authorisation to release (its operation id). A transaction whose first channel did not
  /// answer in time and that was authorised on the next has two; release only this one.
  std::string_view authorization_id;
  std::string_view channel;  ///< the channel that authorisation went to (empty: the method's own)
};

struct RefundRequest {
  std::string_view operation_id;    ///< the refund's own id: several refunds of one transaction are several ids
  std::string_view transaction_id;
  std::int64_t amount_fen = 0;      ///< positive; partial refunds are allowed
  std::string_view reason;
  TimePoint deadline{};
};

/// One acquirer a method settles through, for the payment router.
struct Channel {
  std::string name;
  std::uint32_t fee_ppm = 0;  ///< fee rate in parts per million of the amount (0.6% = 6000)
};

struct Capabilities {
  bool offline = false;                    ///< can approve with no network (an e-CNY hard wallet, a local card table)
  bool needs_prepayment = false;           ///< the whole estimate is taken up front and the rest refunded
  bool incremental_authorization = false;  ///< the hold can be raised during a session
  std::vector<std::string> token_types;    ///< the token types it accepts ("card", "face", "wallet", ...)
  std::vector<Channel> channels;
  /// API 2.3: the method can check the payer's PIN (a member card's, an account's), so risk
  /// control may offer "a PIN at the pile" as the second factor (AuthorizationRequest::pin_required).
  /// Read only from a plugin built against 2.3 or later.
  bool verifies_pin = false;
};

using AuthorizationCallback = std::function<void(AuthorizationResult)>;
using OperationCallback = std::function<void(OperationResult)>;

class Method : public Plugin {
 public:
  static constexpr Kind kind = Kind::payment;

  [[nodiscard]] virtual Capabilities capabilities() const noexcept = 0;
  virtual void authorize(const AuthorizationRequest& request, AuthorizationCallback done) noexcept = 0;
  /// The driver's answer to the challenge of the step-up answered for `operation_id`; the method
  /// now approves or declines (or asks again). Called at most once per challenge, before its deadline.
  virtual void answer_step_up(std::string_view operation_id, const StepUpAnswer& answer, AuthorizationCallback done) noexcept = 0;
  /// Takes the final amount of an approved authorisation.
  virtual void capture(const CaptureRequest& request, OperationCallback done) noexcept = 0;
  /// Releases an authorisation that will not be captured (also one the core gave up waiting for).
  /// Nothing to release (never approved, unknown): answer confirmed with amount 0.
  virtual void cancel(const VoidRequest& request, OperationCallback done) noexcept = 0;
  /// Returns money of a captured transaction.
  virtual void refund(const RefundRequest& request, OperationCallback done) noexcept = 0;
  /// API 2.1. Raises an approved authorisation's hold (a top-up). The core calls it only for a
  /// plugin built against 2.1 or later whose capabilities() say incremental_authorization; this
  /// default answers declined for any other, so a 2.0 plugin's source still compiles.
  virtual void increment(const IncrementRequest& request, AuthorizationCallback done) noexcept {
    (void)request;
    AuthorizationResult r;
    r.decision = Decision::declined;
    r.reason = "this payment method cannot raise a hold (no incremental authorisation)";
    done(std::move(r));
  }
};

}  // namespace payment
}  // namespace v2
}  // namespace pilecore
