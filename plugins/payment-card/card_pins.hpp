// The member cards' PINs (payment-card with `accounts: local`), for risk control's step-up with
// a PIN at the pile (docs/risk.md): a table of their own in the account file, written by
// `pilectl accounts set-pin` and checked by the plugin.
//
// Only a salted PBKDF2-HMAC-SHA256 of each PIN is kept ("pbkdf2-sha256$<iterations>$<salt
// hex>$<hash hex>", OpenSSL EVP), compared in constant time. A PIN of 4 to 12 digits is
// brute-forced offline whatever the hash, so what protects it is the lockout: after
// kMaxPinFailures wrong PINs in a row the card's PIN is locked until the operator sets a new one.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

struct sqlite3;

namespace pilecore::card {

inline constexpr int kMaxPinFailures = 3;
inline constexpr int kPinIterations = 100'000;

enum class PinCheck {
  ok,       ///< the right PIN (the failure count starts again)
  wrong,    ///< counted; the last allowed failure locks it
  not_set,  ///< this account has no PIN
  locked,   ///< too many wrong PINs in a row: `pilectl accounts set-pin` unlocks
};

/// "4 to 12 digits" or why not.
[[nodiscard]] bool valid_pin(std::string_view pin);

class CardPins {
 public:
  /// Opens the account file (created by AccountStore) and adds the PIN table if missing.
  /// Throws std::runtime_error naming the file.
  explicit CardPins(const std::filesystem::path& file);
  ~CardPins();
  CardPins(const CardPins&) = delete;
  CardPins& operator=(const CardPins&) = delete;

  /// Sets (or replaces, which unlocks) the PIN of an existing account; std::invalid_argument for
  /// an unknown account or a PIN that is not 4 to 12 digits.
  void set(const std::string& account, std::string_view pin, std::int64_t now_ms);
  /// Removes the PIN (false: there was none).
  bool clear(const std::string& account);
  [[nodiscard]] bool has_pin(const std::string& account);
  /// Checks and counts, in one transaction.
  PinCheck check(const std::string& account, std::string_view pin, std::int64_t now_ms);

 private:
  void exec(const char* sql);
  sqlite3* db_ = nullptr;
  std::string file_;
};

}  // namespace pilecore::card
