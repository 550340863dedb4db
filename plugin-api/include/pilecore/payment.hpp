// pilecore plugin SDK: payment methods (face, dcep, card, credit, ...).
//
// All money is integer fen. Every operation is asynchronous: the plugin calls the callback
// exactly once, on the core's strand (use Host::post from a driver thread). Operations are
// idempotent on the transaction id: the core may repeat a capture or void after a restart, and
// the plugin must not charge twice.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "pilecore/clock.hpp"
#include "pilecore/plugin.hpp"

namespace pilecore {
inline namespace v2 {
namespace payment {

enum class Decision : std::uint8_t {
  approved,  ///< funds are held (or credit is granted) up to authorized_fen
  declined,  ///< no; `reason` says why in words a driver understands
  step_up,   ///< more proof is needed (PIN, face, second factor) before approval
};

struct AuthorizationRequest {
  std::string_view transaction_id;  ///< idempotency key, unique per site
  std::uint32_t connector = 0;
  std::string_view user_token;      ///< method-specific identity (card UID, wallet id, face id)
  std::int64_t amount_fen = 0;      ///< the estimate to hold
  TimePoint deadline{};             ///< answer by then; after it the core treats silence as declined
};

struct AuthorizationResult {
  Decision decision = Decision::declined;
  std::int64_t authorized_fen = 0;
  std::string reference;  ///< the acquirer's reference, kept in the ledger
  std::string reason;
};

using AuthorizationCallback = std::function<void(AuthorizationResult)>;
using OperationCallback = std::function<void(Status)>;

class Method : public Plugin {
 public:
  static constexpr Kind kind = Kind::payment;

  virtual void authorize(const AuthorizationRequest& request, AuthorizationCallback done) noexcept = 0;
  /// Takes the final amount (never above the authorised amount) of an approved authorisation.
  virtual void capture(std::string_view transaction_id, std::int64_t amount_fen, OperationCallback done) noexcept = 0;
  /// Releases an authorisation that will not be captured.
  virtual void cancel(std::string_view transaction_id, OperationCallback done) noexcept = 0;
  /// Returns money for a captured transaction.
  virtual void refund(std::string_view transaction_id, std::int64_t amount_fen, OperationCallback done) noexcept = 0;
};

}  // namespace payment
}  // namespace v2
}  // namespace pilecore
