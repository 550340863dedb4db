// The member-card account table kept on the pile (payment-card's `accounts: local`), shared by
// the plugin and `pilectl accounts`: one SQLite file in the instance's state directory,
// owner-only, WAL, synchronous=FULL, with a busy timeout so that pilectl can change accounts
// while pilecored runs.
//
// Money side: a hold reserves part of the balance (and of the day's limit) for a transaction; a
// capture debits the balance; a release drops the hold; refunds credit back. Every one is keyed
// by the core's operation id and done in one transaction, so a repeated call (after a restart,
// a timeout) answers what was done the first time and moves no money twice.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

struct sqlite3;

namespace pilecore::card {

/// The account key of a card identified by its UID: "uid-" and 32 hex digits of
/// SHA-256("pilecore-card-uid:" + the UID in lower-case hex). The UID itself is never stored.
std::string uid_account_id(std::span<const std::uint8_t> uid);
/// "uid-" form from a UID written in hex ("04a1b2c3"); throws std::invalid_argument.
std::string uid_account_id(std::string_view uid_hex);
/// Account ids are personal data: logs and events show "****" and the last four characters.
std::string mask(std::string_view account_id);
/// 1 to 64 characters of A-Z a-z 0-9 - _ . :
bool valid_account_id(std::string_view id);

struct Account {
  std::string id;
  bool blocked = false;
  std::int64_t balance_fen = 0;
  std::int64_t daily_limit_fen = 0;  ///< 0: no daily limit
  std::int64_t held_fen = 0;         ///< open holds
  std::int64_t spent_fen = 0;        ///< captured on the day asked about
  std::int64_t updated_ms = 0;
};

struct HoldResult {
  bool approved = false;
  std::int64_t amount_fen = 0;
  std::string reference;
  std::string reason;
};

struct MoneyResult {
  bool confirmed = false;  ///< false: failed, and will not be done (reason)
  std::int64_t amount_fen = 0;
  std::string reference;
  std::string reason;
};

class AccountStore {
 public:
  /// Opens (creating when `create`) the table file. Throws std::runtime_error naming the file.
  explicit AccountStore(const std::filesystem::path& file, bool create = true, std::chrono::milliseconds busy_timeout = std::chrono::seconds(5));
  ~AccountStore();
  AccountStore(const AccountStore&) = delete;
  AccountStore& operator=(const AccountStore&) = delete;

  // --- the operator's side (pilectl accounts); each throws std::invalid_argument with the reason
  /// `day` ("2026-03-01", the site's local day) is the day whose spending is reported.
  std::vector<Account> list(const std::string& day);
  std::optional<Account> find(const std::string& id, const std::string& day);
  void add(const std::string& id, std::int64_t balance_fen, std::int64_t daily_limit_fen, std::int64_t now_ms);
  void set_balance(const std::string& id, std::int64_t balance_fen, std::int64_t now_ms);
  /// Adds `fen` (positive) to the balance; returns the new balance.
  std::int64_t top_up(const std::string& id, std::int64_t fen, std::int64_t now_ms);
  void set_blocked(const std::string& id, bool blocked, std::int64_t now_ms);
  void set_daily_limit(const std::string& id, std::int64_t daily_limit_fen, std::int64_t now_ms);
  /// Refused while the account has an open hold (a session is charging on it).
  void remove(const std::string& id);

  // --- the money side (the plugin)
  /// Holds up to `amount_fen`: less when the balance or the day's limit leaves less, declined
  /// when that is below min(amount_fen, min_hold_fen), or the account is unknown or blocked.
  HoldResult hold(const std::string& op, const std::string& txn, const std::string& account, std::int64_t amount_fen, std::int64_t min_hold_fen,
                  const std::string& day, std::int64_t now_ms);
  MoneyResult capture(const std::string& op, const std::string& txn, std::int64_t amount_fen, const std::string& day, std::int64_t now_ms);
  MoneyResult release(const std::string& op, const std::string& txn, std::int64_t now_ms);
  MoneyResult refund(const std::string& op, const std::string& txn, std::int64_t amount_fen, std::int64_t now_ms);

 private:
  class Tx;
  void exec(const char* sql);
  Account read_account(const std::string& id, const std::string& day);
  sqlite3* db_ = nullptr;
  std::string file_;
};

}  // namespace pilecore::card
