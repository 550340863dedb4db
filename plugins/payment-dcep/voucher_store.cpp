#include "voucher_store.hpp"
#include "sqlite_stmt.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace dcep {

namespace {

constexpr const char* kSchema = R"(
CREATE TABLE IF NOT EXISTS vouchers(
  digest BLOB PRIMARY KEY,               -- SM3 of the signed body: the same voucher twice has the same digest
  transaction_id TEXT NOT NULL UNIQUE,
  wallet_id TEXT NOT NULL,
  counter INTEGER NOT NULL,
  amount_fen INTEGER NOT NULL,
  merchant_id TEXT NOT NULL,
  time_ms INTEGER NOT NULL,
  voucher BLOB NOT NULL,                 -- as received: signed body, signature, certificate
  reference TEXT NOT NULL,
  state TEXT NOT NULL CHECK(state IN ('held', 'captured', 'voided')),
  captured_fen INTEGER,
  received_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS wallet_counters(
  wallet_id TEXT PRIMARY KEY,
  counter INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS upload_queue(
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  operation_id TEXT NOT NULL UNIQUE,     -- the core's operation id: what settlement de-duplicates on
  kind TEXT NOT NULL CHECK(kind IN ('voucher', 'refund')),
  reason TEXT NOT NULL,                  -- voucher: 'payment'; refund: 'change' | 'void' | 'refund'
  transaction_id TEXT NOT NULL,
  digest BLOB NOT NULL REFERENCES vouchers(digest),
  amount_fen INTEGER NOT NULL,
  state TEXT NOT NULL CHECK(state IN ('queued', 'uploaded')),
  created_ms INTEGER NOT NULL,
  uploaded_ms INTEGER);
)";

/// Statements on this plugin's database: errors name it.
class Stmt : public pilecore::plugins::SqliteStmt {
 public:
  Stmt(sqlite3* db, const char* sql) : SqliteStmt(db, sql, "dcep.db") {}
};

/// BEGIN IMMEDIATE ... COMMIT, rolled back when left by an exception or a decline.
class Txn {
 public:
  explicit Txn(sqlite3* db) : db_(db) { run("BEGIN IMMEDIATE"); }
  ~Txn() {
    if (!done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  Txn(const Txn&) = delete;
  Txn& operator=(const Txn&) = delete;
  void commit() {
    run("COMMIT");
    done_ = true;
  }

 private:
  void run(const char* sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err ? err : "unknown error";
      sqlite3_free(err);
      throw std::runtime_error("dcep.db: " + msg);
    }
  }
  sqlite3* db_;
  bool done_ = false;
};

Outcome failed(std::string reason) { return {.ok = false, .amount_fen = 0, .reference = {}, .reason = std::move(reason)}; }
Outcome confirmed(std::int64_t fen, std::string reference) { return {.ok = true, .amount_fen = fen, .reference = std::move(reference), .reason = {}}; }

struct Row {
  std::string digest;
  std::int64_t amount_fen = 0;
  std::string reference;
  std::string state;
  std::int64_t captured_fen = 0;
};

std::optional<Row> voucher_of(sqlite3* db, const std::string& txn) {
  Stmt s(db, "SELECT digest, amount_fen, reference, state, COALESCE(captured_fen, 0) FROM vouchers WHERE transaction_id=?");
  s.bind(1, txn);
  if (!s.step()) return std::nullopt;
  return Row{s.text(0), s.i64(1), s.text(2), s.text(3), s.i64(4)};
}

void enqueue(sqlite3* db, const std::string& op, const char* kind, const char* reason, const std::string& txn, const std::string& digest,
             std::int64_t fen, std::int64_t now_ms) {
  Stmt(db, "INSERT INTO upload_queue(operation_id, kind, reason, transaction_id, digest, amount_fen, state, created_ms) VALUES(?,?,?,?,?,?, 'queued', ?)")
      .bind(1, op).bind(2, std::string(kind)).bind(3, std::string(reason)).bind(4, txn)
      .bind(5, ByteView(reinterpret_cast<const std::uint8_t*>(digest.data()), digest.size())).bind(6, fen).bind(7, now_ms)
      .step();
}

}  // namespace

VoucherStore::VoucherStore(const std::string& path) : path_(path) {
  // Owner-only before SQLite sees it: the file holds wallet ids. SQLite gives its -wal and -shm
  // files the database file's permissions.
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error(fmt::format("{}: cannot be created: {}", path, std::strerror(errno)));
  const int rc_chmod = ::fchmod(fd, 0600);
  ::close(fd);
  if (rc_chmod != 0) throw std::runtime_error(fmt::format("{}: cannot be made owner-only: {}", path, std::strerror(errno)));
  db_ = pilecore::plugins::open_plugin_db(path, "voucher database");
  sqlite3_busy_timeout(db_, 5000);
  exec("PRAGMA journal_mode=WAL");
  exec("PRAGMA synchronous=FULL");  // a voucher is on disk before the payment is approved
  exec("PRAGMA foreign_keys=ON");
  exec(kSchema);
}

VoucherStore::~VoucherStore() { sqlite3_close(db_); }

void VoucherStore::exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    throw std::runtime_error(fmt::format("{}: {}", path_, msg));
  }
}

std::optional<HeldVoucher> VoucherStore::find(const std::string& transaction_id) {
  auto row = voucher_of(db_, transaction_id);
  if (!row) return std::nullopt;
  return HeldVoucher{row->amount_fen, row->reference};
}

std::int64_t VoucherStore::unsettled_fen() {
  Stmt s(db_, "SELECT COALESCE(SUM(CASE kind WHEN 'voucher' THEN amount_fen ELSE -amount_fen END), 0) FROM upload_queue WHERE state='queued'");
  s.step();
  return std::max<std::int64_t>(0, s.i64(0));
}

bool VoucherStore::seen(ByteView digest) {
  Stmt s(db_, "SELECT 1 FROM vouchers WHERE digest=?");
  s.bind(1, digest);
  return s.step();
}

std::optional<std::uint32_t> VoucherStore::last_counter(const std::string& wallet_id) {
  Stmt s(db_, "SELECT counter FROM wallet_counters WHERE wallet_id=?");
  s.bind(1, wallet_id);
  if (!s.step()) return std::nullopt;
  return static_cast<std::uint32_t>(s.i64(0));
}

std::optional<std::string> VoucherStore::accept(const Voucher& v, ByteView digest, const std::string& transaction_id, const std::string& reference,
                                                std::int64_t now_ms, std::int64_t offline_limit_fen) {
  Txn txn(db_);
  if (seen(digest)) return std::string("this voucher was presented before (a replay)");
  if (auto last = last_counter(v.wallet_id); last && v.counter <= *last) {
    return fmt::format("the wallet's counter went back ({} after {}): a cloned or rolled-back wallet", v.counter, *last);
  }
  if (unsettled_fen() + v.amount_fen > offline_limit_fen) return std::string("the pile's offline limit until the next settlement is reached");
  if (voucher_of(db_, transaction_id)) return std::string("this transaction already has a voucher");
  std::string digest_text(reinterpret_cast<const char*>(digest.data()), digest.size());
  Bytes raw = v.signed_body;
  raw.push_back(static_cast<std::uint8_t>(v.signature.size()));
  raw.insert(raw.end(), v.signature.begin(), v.signature.end());
  raw.push_back(static_cast<std::uint8_t>(v.certificate.size() >> 8));
  raw.push_back(static_cast<std::uint8_t>(v.certificate.size() & 0xFF));
  raw.insert(raw.end(), v.certificate.begin(), v.certificate.end());
  Stmt(db_,
       "INSERT INTO vouchers(digest, transaction_id, wallet_id, counter, amount_fen, merchant_id, time_ms, voucher, reference, state, received_ms) "
       "VALUES(?,?,?,?,?,?,?,?,?, 'held', ?)")
      .bind(1, digest).bind(2, transaction_id).bind(3, v.wallet_id).bind(4, static_cast<std::int64_t>(v.counter))
      .bind(5, static_cast<std::int64_t>(v.amount_fen)).bind(6, v.merchant_id).bind(7, static_cast<std::int64_t>(v.time_ms)).bind(8, ByteView(raw))
      .bind(9, reference).bind(10, now_ms)
      .step();
  Stmt(db_, "INSERT INTO wallet_counters(wallet_id, counter) VALUES(?, ?) ON CONFLICT(wallet_id) DO UPDATE SET counter=excluded.counter")
      .bind(1, v.wallet_id).bind(2, static_cast<std::int64_t>(v.counter))
      .step();
  enqueue(db_, transaction_id + "/authorize", "voucher", "payment", transaction_id, digest_text, v.amount_fen, now_ms);
  txn.commit();
  return std::nullopt;
}

namespace {
constexpr const char* kUploadColumns =
    "SELECT q.operation_id, q.kind, q.reason, q.transaction_id, q.digest, q.amount_fen, v.voucher, q.created_ms "
    "FROM upload_queue q JOIN vouchers v ON v.digest = q.digest WHERE q.state='queued'";

Bytes bytes_of(const std::string& s) { return Bytes(s.begin(), s.end()); }

UploadRow upload_row_of(Stmt& s) {
  return {s.text(0), s.text(1), s.text(2), s.text(3), bytes_of(s.text(4)), s.i64(5), bytes_of(s.text(6)), s.i64(7)};
}
}  // namespace

std::vector<UploadRow> VoucherStore::queued_uploads() {
  std::vector<UploadRow> out;
  Stmt s(db_, (std::string(kUploadColumns) + " ORDER BY q.seq").c_str());
  while (s.step()) out.push_back(upload_row_of(s));
  return out;
}

std::optional<UploadRow> VoucherStore::queued_upload(const std::string& operation_id) {
  Stmt s(db_, (std::string(kUploadColumns) + " AND q.operation_id=?").c_str());
  s.bind(1, operation_id);
  if (!s.step()) return std::nullopt;
  return upload_row_of(s);
}

bool VoucherStore::mark_uploaded(const std::string& operation_id, std::int64_t now_ms) {
  Stmt(db_, "UPDATE upload_queue SET state='uploaded', uploaded_ms=? WHERE operation_id=? AND state='queued'").bind(1, now_ms).bind(2, operation_id).step();
  return sqlite3_changes(db_) > 0;
}

Outcome VoucherStore::capture(const std::string& transaction_id, const std::string& operation_id, std::int64_t amount_fen, std::int64_t now_ms) {
  Txn txn(db_);
  const auto row = voucher_of(db_, transaction_id);
  if (!row) return failed(fmt::format("no voucher for transaction '{}'", transaction_id));
  if (row->state == "voided") return failed("the voucher was voided and its amount queued for refund; nothing to capture");
  if (row->state == "captured") {
    if (row->captured_fen == amount_fen) return confirmed(amount_fen, row->reference);  // a repeat: no second effect
    return failed(fmt::format("already captured {} fen; a capture of {} fen conflicts with it", row->captured_fen, amount_fen));
  }
  if (amount_fen < 0 || amount_fen > row->amount_fen) {
    return failed(fmt::format("a capture of {} fen is outside the voucher's 0 to {} fen", amount_fen, row->amount_fen));
  }
  Stmt(db_, "UPDATE vouchers SET state='captured', captured_fen=? WHERE transaction_id=?").bind(1, amount_fen).bind(2, transaction_id).step();
  // Prepay-and-refund: the wallet paid the hold; the change goes back through settlement.
  if (row->amount_fen > amount_fen) enqueue(db_, operation_id, "refund", "change", transaction_id, row->digest, row->amount_fen - amount_fen, now_ms);
  txn.commit();
  return confirmed(amount_fen, row->reference);
}

Outcome VoucherStore::cancel(const std::string& transaction_id, const std::string& operation_id, std::int64_t now_ms) {
  Txn txn(db_);
  const auto row = voucher_of(db_, transaction_id);
  if (!row) return confirmed(0, {});  // nothing was held
  if (row->state == "voided") return confirmed(row->amount_fen, row->reference);
  if (row->state == "captured") return failed("already captured; refund it instead");
  Stmt(db_, "UPDATE vouchers SET state='voided' WHERE transaction_id=?").bind(1, transaction_id).step();
  enqueue(db_, operation_id, "refund", "void", transaction_id, row->digest, row->amount_fen, now_ms);
  txn.commit();
  return confirmed(row->amount_fen, row->reference);
}

Outcome VoucherStore::refund(const std::string& transaction_id, const std::string& operation_id, std::int64_t amount_fen, std::int64_t now_ms) {
  Txn txn(db_);
  const auto row = voucher_of(db_, transaction_id);
  if (!row) return failed(fmt::format("no voucher for transaction '{}'", transaction_id));
  if (row->state != "captured") return failed("nothing was captured; cancel the authorisation instead");
  {
    Stmt s(db_, "SELECT amount_fen FROM upload_queue WHERE operation_id=?");
    s.bind(1, operation_id);
    if (s.step()) {
      if (s.i64(0) == amount_fen) return confirmed(amount_fen, row->reference);
      return failed(fmt::format("refund {} was {} fen; a repeat of it with {} fen conflicts", operation_id, s.i64(0), amount_fen));
    }
  }
  if (amount_fen <= 0) return failed(fmt::format("a refund of {} fen is not positive", amount_fen));
  Stmt s(db_, "SELECT COALESCE(SUM(amount_fen), 0) FROM upload_queue WHERE transaction_id=? AND kind='refund' AND reason='refund'");
  s.bind(1, transaction_id);
  s.step();
  const std::int64_t refunded = s.i64(0);
  if (refunded + amount_fen > row->captured_fen) {
    return failed(fmt::format("a refund of {} fen is above what is left of the captured {} fen ({} refunded)", amount_fen, row->captured_fen, refunded));
  }
  enqueue(db_, operation_id, "refund", "refund", transaction_id, row->digest, amount_fen, now_ms);
  txn.commit();
  return confirmed(amount_fen, row->reference);
}

}  // namespace dcep
