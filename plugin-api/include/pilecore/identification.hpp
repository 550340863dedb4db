// pilecore plugin SDK: identification. A reader, a camera or a payment method presents a token to
// the core (Host::present); the site file's `payment.tokens` says which payment method each token
// type goes to, and the core starts authentication on the token's connector. This is the seed's
// proximity trigger: a card or phone held at a connector's reader starts a session there.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "pilecore/status.hpp"

namespace pilecore {
inline namespace v2 {
namespace identification {

/// A short-lived channel to a card or wallet still in the reader's field (ISO 7816-4 APDUs over
/// ISO 14443-4). Owned by the reader plugin; the payment method keeps the shared_ptr while it
/// talks. Once the target leaves the field every transceive answers unavailable.
class Exchange {
 public:
  virtual ~Exchange() = default;
  using Reply = std::function<void(Status status, std::vector<std::uint8_t> response)>;
  /// Sends one command APDU; `done` is called once, on the core's strand, with the response APDU
  /// (data and SW1 SW2) or an error.
  virtual void transceive(std::span<const std::uint8_t> command, Reply done) noexcept = 0;
  /// Whether the target is still in the field.
  [[nodiscard]] virtual bool present() const noexcept = 0;
};

/// One piece of evidence with a token, e.g. {"liveness", "0.97"}, {"atqa", "0044"}.
struct Evidence {
  std::string key;
  std::string value;
};

struct Token {
  std::string type;  ///< "card", "face", "wallet", ...: the site file maps it to a payment method
  std::string id;    ///< the identity (card UID, face id, wallet id): personal data, the core never logs it in clear
  std::optional<std::uint32_t> connector;  ///< where it was presented; none: the presenter's own connector
  std::vector<Evidence> evidence;
  std::shared_ptr<Exchange> exchange;      ///< set while a card or wallet can be talked to

  [[nodiscard]] std::optional<std::string_view> find(std::string_view key) const noexcept {
    for (const auto& e : evidence) {
      if (e.key == key) return e.value;
    }
    return std::nullopt;
  }
};

}  // namespace identification
}  // namespace v2
}  // namespace pilecore
