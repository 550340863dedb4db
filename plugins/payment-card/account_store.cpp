#include "account_store.hpp"
#include "hex.hpp"
#include "sqlite_stmt.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <stdexcept>

namespace pilecore::card {

namespace {

std::string hex(const unsigned char* p, std::size_t n) {
  return pilecore::plugins::to_hex(p, n);
}

/// One prepared statement; errors throw with SQLite's message.
/// Statements on this plugin's database: errors name it.
class Stmt : public pilecore::plugins::SqliteStmt {
 public:
  Stmt(sqlite3* db, const char* sql) : SqliteStmt(db, sql, "account table") {}
};

void check_fen(std::int64_t fen, const char* what) {
  // Far below int64's range, so that sums of many balances cannot overflow.
  constexpr std::int64_t kMax = 1'000'000'000'000;
  if (fen < 0 || fen > kMax) throw std::invalid_argument(std::string(what) + " must be between 0 and 1000000000000 fen");
}

}  // namespace

std::string uid_account_id(std::span<const std::uint8_t> uid) {
  const std::string text = "pilecore-card-uid:" + hex(uid.data(), uid.size());
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_Digest(text.data(), text.size(), digest, &n, EVP_sha256(), nullptr) != 1) throw std::runtime_error("SHA-256 failed");
  return "uid-" + hex(digest, 16);
}

std::string uid_account_id(std::string_view uid_hex) {
  std::vector<std::uint8_t> bytes;
  int high = -1;
  for (char c : uid_hex) {
    int v = -1;
    if (c >= '0' && c <= '9') v = c - '0';
    else if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') v = c - 'A' + 10;
    if (v < 0) throw std::invalid_argument("a UID is written in hex digits, e.g. 04a1b2c3");
    if (high < 0) {
      high = v;
    } else {
      bytes.push_back(static_cast<std::uint8_t>(high << 4 | v));
      high = -1;
    }
  }
  if (high >= 0 || (bytes.size() != 4 && bytes.size() != 7 && bytes.size() != 10)) {
    throw std::invalid_argument("a card UID has 4, 7 or 10 bytes (8, 14 or 20 hex digits)");
  }
  return uid_account_id(bytes);
}

std::string mask(std::string_view id) {
  if (id.size() <= 4) return "****";
  return "****" + std::string(id.substr(id.size() - 4));
}

bool valid_account_id(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' || c == ':';
    if (!ok) return false;
  }
  return true;
}

/// BEGIN IMMEDIATE ... COMMIT; rolled back unless committed. IMMEDIATE takes the write lock
/// first, so two writers (pilecored and pilectl) wait for each other (busy timeout) instead of
/// failing half-way.
class AccountStore::Tx {
 public:
  explicit Tx(AccountStore& s) : s_(s) { s_.exec("BEGIN IMMEDIATE"); }
  ~Tx() {
    if (!done_) sqlite3_exec(s_.db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  Tx(const Tx&) = delete;
  Tx& operator=(const Tx&) = delete;
  void commit() {
    s_.exec("COMMIT");
    done_ = true;
  }

 private:
  AccountStore& s_;
  bool done_ = false;
};

AccountStore::AccountStore(const std::filesystem::path& file, bool create, std::chrono::milliseconds busy_timeout) : file_(file.string()) {
  if (create) {
    // Owner-only from the first byte: the file exists before SQLite opens it.
    const int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) throw std::runtime_error("cannot create the account table " + file_);
    ::close(fd);
  } else if (!std::filesystem::exists(file)) {
    throw std::runtime_error("no account table at " + file_ + " (payment-card with accounts: local creates it when pilecored starts it)");
  }
  db_ = plugins::open_plugin_db(file_, "account table");
  try {
    sqlite3_busy_timeout(db_, static_cast<int>(busy_timeout.count()));
    exec("PRAGMA journal_mode=WAL");
    exec("PRAGMA synchronous=FULL");  // a debit is money: on disk before the capture is answered
    exec("CREATE TABLE IF NOT EXISTS accounts(id TEXT PRIMARY KEY, blocked INTEGER NOT NULL DEFAULT 0, balance_fen INTEGER NOT NULL, "
         "daily_limit_fen INTEGER NOT NULL DEFAULT 0 CHECK(daily_limit_fen >= 0), created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL)");
    exec("CREATE TABLE IF NOT EXISTS holds(txn TEXT PRIMARY KEY, op TEXT NOT NULL UNIQUE, account TEXT NOT NULL, amount_fen INTEGER NOT NULL, "
         "state TEXT NOT NULL CHECK(state IN ('held', 'captured', 'released')), captured_fen INTEGER NOT NULL DEFAULT 0, "
         "created_ms INTEGER NOT NULL, closed_ms INTEGER, close_op TEXT)");
    exec("CREATE INDEX IF NOT EXISTS holds_open ON holds(account, state)");
    exec("CREATE TABLE IF NOT EXISTS movements(op TEXT PRIMARY KEY, txn TEXT NOT NULL, account TEXT NOT NULL, "
         "kind TEXT NOT NULL CHECK(kind IN ('capture', 'refund')), amount_fen INTEGER NOT NULL CHECK(amount_fen >= 0), day TEXT NOT NULL, "
         "at_ms INTEGER NOT NULL)");
    exec("CREATE INDEX IF NOT EXISTS movements_day ON movements(account, kind, day)");
    for (const char* suffix : {"-wal", "-shm"}) ::chmod((file_ + suffix).c_str(), 0600);
  } catch (...) {
    sqlite3_close(db_);
    throw;
  }
}

AccountStore::~AccountStore() { sqlite3_close(db_); }

void AccountStore::exec(const char* sql) { plugins::exec_plugin_sql(db_, sql, "account table", file_); }

Account AccountStore::read_account(const std::string& id, const std::string& day) {
  Stmt s(db_,
         "SELECT id, blocked, balance_fen, daily_limit_fen, updated_ms, "
         "(SELECT COALESCE(SUM(amount_fen), 0) FROM holds WHERE account=accounts.id AND state='held'), "
         "(SELECT COALESCE(SUM(amount_fen), 0) FROM movements WHERE account=accounts.id AND kind='capture' AND day=?2) "
         "FROM accounts WHERE id=?1");
  s.bind(1, id).bind(2, day);
  if (!s.step()) throw std::invalid_argument("no account " + id);
  return Account{.id = s.text(0), .blocked = s.i64(1) != 0, .balance_fen = s.i64(2), .daily_limit_fen = s.i64(3), .held_fen = s.i64(5),
                 .spent_fen = s.i64(6), .updated_ms = s.i64(4)};
}

std::vector<Account> AccountStore::list(const std::string& day) {
  std::vector<std::string> ids;
  {
    Stmt s(db_, "SELECT id FROM accounts ORDER BY id");
    while (s.step()) ids.push_back(s.text(0));
  }
  std::vector<Account> out;
  for (const auto& id : ids) out.push_back(read_account(id, day));
  return out;
}

std::optional<Account> AccountStore::find(const std::string& id, const std::string& day) {
  Stmt s(db_, "SELECT 1 FROM accounts WHERE id=?");
  s.bind(1, id);
  if (!s.step()) return std::nullopt;
  return read_account(id, day);
}

void AccountStore::add(const std::string& id, std::int64_t balance_fen, std::int64_t daily_limit_fen, std::int64_t now_ms) {
  if (!valid_account_id(id)) throw std::invalid_argument("'" + id + "' is not an account id: 1 to 64 of A-Z a-z 0-9 - _ . :");
  check_fen(balance_fen, "the balance");
  check_fen(daily_limit_fen, "the daily limit");
  Tx tx(*this);
  {
    Stmt s(db_, "SELECT 1 FROM accounts WHERE id=?");
    s.bind(1, id);
    if (s.step()) throw std::invalid_argument("account " + id + " exists already");
  }
  Stmt s(db_, "INSERT INTO accounts(id, blocked, balance_fen, daily_limit_fen, created_ms, updated_ms) VALUES(?,0,?,?,?,?)");
  s.bind(1, id).bind(2, balance_fen).bind(3, daily_limit_fen).bind(4, now_ms).bind(5, now_ms);
  s.step();
  tx.commit();
}

namespace {
void updated_one(sqlite3* db, const std::string& id) {
  if (sqlite3_changes(db) != 1) throw std::invalid_argument("no account " + id);
}
}  // namespace

void AccountStore::set_balance(const std::string& id, std::int64_t balance_fen, std::int64_t now_ms) {
  check_fen(balance_fen, "the balance");
  Stmt s(db_, "UPDATE accounts SET balance_fen=?, updated_ms=? WHERE id=?");
  s.bind(1, balance_fen).bind(2, now_ms).bind(3, id);
  s.step();
  updated_one(db_, id);
}

std::int64_t AccountStore::top_up(const std::string& id, std::int64_t fen, std::int64_t now_ms) {
  if (fen <= 0) throw std::invalid_argument("a top-up is a positive amount");
  check_fen(fen, "the top-up");
  Tx tx(*this);
  std::int64_t balance = 0;
  {
    Stmt s(db_, "SELECT balance_fen FROM accounts WHERE id=?");
    s.bind(1, id);
    if (!s.step()) throw std::invalid_argument("no account " + id);
    balance = s.i64(0) + fen;
  }
  check_fen(balance, "the balance after the top-up");
  Stmt s(db_, "UPDATE accounts SET balance_fen=?, updated_ms=? WHERE id=?");
  s.bind(1, balance).bind(2, now_ms).bind(3, id);
  s.step();
  tx.commit();
  return balance;
}

void AccountStore::set_blocked(const std::string& id, bool blocked, std::int64_t now_ms) {
  Stmt s(db_, "UPDATE accounts SET blocked=?, updated_ms=? WHERE id=?");
  s.bind(1, blocked ? 1 : 0).bind(2, now_ms).bind(3, id);
  s.step();
  updated_one(db_, id);
}

void AccountStore::set_daily_limit(const std::string& id, std::int64_t daily_limit_fen, std::int64_t now_ms) {
  check_fen(daily_limit_fen, "the daily limit");
  Stmt s(db_, "UPDATE accounts SET daily_limit_fen=?, updated_ms=? WHERE id=?");
  s.bind(1, daily_limit_fen).bind(2, now_ms).bind(3, id);
  s.step();
  updated_one(db_, id);
}

void AccountStore::remove(const std::string& id) {
  Tx tx(*this);
  {
    Stmt s(db_, "SELECT COUNT(*) FROM holds WHERE account=? AND state='held'");
    s.bind(1, id);
    s.step();
    if (const auto n = s.i64(0); n > 0) {
      throw std::invalid_argument("account " + id + " has " + std::to_string(n) + " open authorisation(s) (a session is using it); remove it once they are captured or released");
    }
  }
  Stmt s(db_, "DELETE FROM accounts WHERE id=?");
  s.bind(1, id);
  s.step();
  updated_one(db_, id);
  tx.commit();
}

HoldResult AccountStore::hold(const std::string& op, const std::string& txn, const std::string& account, std::int64_t amount_fen,
                              std::int64_t min_hold_fen, const std::string& day, std::int64_t now_ms) {
  Tx tx(*this);
  {  // the same authorisation asked again (same transaction): the answer given the first time
    Stmt s(db_, "SELECT amount_fen, state, rowid FROM holds WHERE txn=?");
    s.bind(1, txn);
    if (s.step()) {
      if (s.text(1) == "held") return {.approved = true, .amount_fen = s.i64(0), .reference = "CARD-" + std::to_string(s.i64(2)), .reason = {}};
      return {.approved = false, .amount_fen = 0, .reference = {}, .reason = "this transaction's authorisation was already " + s.text(1)};
    }
  }
  if (amount_fen <= 0) return {.approved = false, .amount_fen = 0, .reference = {}, .reason = "nothing to authorise"};
  Stmt s(db_,
         "SELECT blocked, balance_fen, daily_limit_fen, "
         "(SELECT COALESCE(SUM(amount_fen), 0) FROM holds WHERE account=accounts.id AND state='held'), "
         "(SELECT COALESCE(SUM(amount_fen), 0) FROM movements WHERE account=accounts.id AND kind='capture' AND day=?2) "
         "FROM accounts WHERE id=?1");
  s.bind(1, account).bind(2, day);
  if (!s.step()) return {.approved = false, .amount_fen = 0, .reference = {}, .reason = "this card has no account here"};
  if (s.i64(0) != 0) return {.approved = false, .amount_fen = 0, .reference = {}, .reason = "this card is blocked"};
  const std::int64_t balance = s.i64(1), limit = s.i64(2), held = s.i64(3), spent = s.i64(4);
  const std::int64_t by_balance = balance - held;
  const std::int64_t by_limit = limit > 0 ? limit - spent - held : by_balance;
  const std::int64_t grant = std::min({amount_fen, by_balance, by_limit});
  const std::int64_t needed = std::min(amount_fen, min_hold_fen);
  if (grant < needed || grant <= 0) {
    std::string reason = by_balance < needed ? "insufficient balance: " + std::to_string(std::max<std::int64_t>(by_balance, 0)) + " fen available"
                                             : "daily limit reached: " + std::to_string(std::max<std::int64_t>(by_limit, 0)) + " fen left today";
    return {.approved = false, .amount_fen = 0, .reference = {}, .reason = std::move(reason)};
  }
  Stmt ins(db_, "INSERT INTO holds(txn, op, account, amount_fen, state, created_ms) VALUES(?,?,?,?,'held',?)");
  ins.bind(1, txn).bind(2, op).bind(3, account).bind(4, grant).bind(5, now_ms);
  ins.step();
  const std::int64_t row = sqlite3_last_insert_rowid(db_);
  tx.commit();
  return {.approved = true, .amount_fen = grant, .reference = "CARD-" + std::to_string(row), .reason = {}};
}

MoneyResult AccountStore::capture(const std::string& op, const std::string& txn, std::int64_t amount_fen, const std::string& day, std::int64_t now_ms) {
  Tx tx(*this);
  {
    Stmt s(db_, "SELECT amount_fen, rowid FROM movements WHERE op=? AND kind='capture'");
    s.bind(1, op);
    if (s.step()) return {.confirmed = true, .amount_fen = s.i64(0), .reference = "CARD-D" + std::to_string(s.i64(1)), .reason = {}};
  }
  Stmt h(db_, "SELECT account, amount_fen, state, captured_fen FROM holds WHERE txn=?");
  h.bind(1, txn);
  if (!h.step()) return {.confirmed = false, .amount_fen = 0, .reference = {}, .reason = "no authorisation for this transaction"};
  const std::string account = h.text(0), state = h.text(2);
  const std::int64_t held = h.i64(1);
  if (state == "captured") return {.confirmed = true, .amount_fen = h.i64(3), .reference = {}, .reason = {}};
  if (state == "released") return {.confirmed = false, .amount_fen = 0, .reference = {}, .reason = "the authorisation was released"};
  if (amount_fen < 0 || amount_fen > held) {
    return {.confirmed = false, .amount_fen = 0, .reference = {}, .reason = std::to_string(amount_fen) + " fen is not within the " + std::to_string(held) + " fen authorised"};
  }
  // The hold reserved the money; an operator may have lowered the balance meantime, and the
  // energy is delivered all the same: the balance may then go below zero.
  Stmt a(db_, "UPDATE accounts SET balance_fen=balance_fen-?, updated_ms=? WHERE id=?");
  a.bind(1, amount_fen).bind(2, now_ms).bind(3, account);
  a.step();
  Stmt m(db_, "INSERT INTO movements(op, txn, account, kind, amount_fen, day, at_ms) VALUES(?,?,?,'capture',?,?,?)");
  m.bind(1, op).bind(2, txn).bind(3, account).bind(4, amount_fen).bind(5, day).bind(6, now_ms);
  m.step();
  const std::int64_t row = sqlite3_last_insert_rowid(db_);
  Stmt u(db_, "UPDATE holds SET state='captured', captured_fen=?, closed_ms=?, close_op=? WHERE txn=?");
  u.bind(1, amount_fen).bind(2, now_ms).bind(3, op).bind(4, txn);
  u.step();
  tx.commit();
  return {.confirmed = true, .amount_fen = amount_fen, .reference = "CARD-D" + std::to_string(row), .reason = {}};
}

MoneyResult AccountStore::release(const std::string& op, const std::string& txn, std::int64_t now_ms) {
  Tx tx(*this);
  Stmt s(db_, "UPDATE holds SET state='released', closed_ms=?, close_op=? WHERE txn=? AND state='held'");
  s.bind(1, now_ms).bind(2, op).bind(3, txn);
  s.step();
  tx.commit();
  // Nothing held (never approved, captured, released before): nothing to release.
  return {.confirmed = true, .amount_fen = 0, .reference = {}, .reason = {}};
}

MoneyResult AccountStore::refund(const std::string& op, const std::string& txn, std::int64_t amount_fen, std::int64_t now_ms) {
  Tx tx(*this);
  {
    Stmt s(db_, "SELECT amount_fen, rowid FROM movements WHERE op=? AND kind='refund'");
    s.bind(1, op);
    if (s.step()) return {.confirmed = true, .amount_fen = s.i64(0), .reference = "CARD-R" + std::to_string(s.i64(1)), .reason = {}};
  }
  Stmt h(db_, "SELECT account, state, captured_fen, (SELECT COALESCE(SUM(amount_fen), 0) FROM movements WHERE txn=holds.txn AND kind='refund') "
              "FROM holds WHERE txn=?");
  h.bind(1, txn);
  if (!h.step() || h.text(1) != "captured") return {.confirmed = false, .amount_fen = 0, .reference = {}, .reason = "nothing was captured"};
  const std::string account = h.text(0);
  const std::int64_t left = h.i64(2) - h.i64(3);
  if (amount_fen <= 0 || amount_fen > left) {
    return {.confirmed = false, .amount_fen = 0, .reference = {}, .reason = std::to_string(amount_fen) + " fen is above the " + std::to_string(left) + " fen left to refund"};
  }
  Stmt a(db_, "UPDATE accounts SET balance_fen=balance_fen+?, updated_ms=? WHERE id=?");
  a.bind(1, amount_fen).bind(2, now_ms).bind(3, account);
  a.step();
  if (sqlite3_changes(db_) != 1) return {.confirmed = false, .amount_fen = 0, .reference = {}, .reason = "the card's account was removed"};
  // A refund is dated with the capture's day only for the record; the day's spending counts
  // captures, so a refund does not reopen the daily limit.
  Stmt m(db_, "INSERT INTO movements(op, txn, account, kind, amount_fen, day, at_ms) VALUES(?,?,?,'refund',?,'',?)");
  m.bind(1, op).bind(2, txn).bind(3, account).bind(4, amount_fen).bind(5, now_ms);
  m.step();
  const std::int64_t row = sqlite3_last_insert_rowid(db_);
  tx.commit();
  return {.confirmed = true, .amount_fen = amount_fen, .reference = "CARD-R" + std::to_string(row), .reason = {}};
}

}  // namespace pilecore::card
