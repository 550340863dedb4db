#include "ledger.hpp"

#include <fmt/format.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include "outbox.hpp"
#include "storage.hpp"
#include "store_worker.hpp"

namespace pilecore::core {

namespace {

struct StmtFree {
  void operator()(sqlite3_stmt* st) const noexcept { sqlite3_finalize(st); }
};
using Stmt = std::unique_ptr<sqlite3_stmt, StmtFree>;

Stmt prepare(sqlite3* db, const char* sql) {
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, nullptr) != SQLITE_OK) {
    sqlite3_finalize(st);
    throw LedgerError(fmt::format("ledger: {} (is the database migrated?)", sqlite3_errmsg(db)));
  }
  return Stmt(st);
}

// Resets a cached statement when leaving scope, whatever happens.
struct Reset {
  sqlite3_stmt* st;
  ~Reset() {
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
  }
};

Bytes column_bytes(sqlite3_stmt* st, int col) {
  const auto* p = static_cast<const std::uint8_t*>(sqlite3_column_blob(st, col));
  const int n = sqlite3_column_bytes(st, col);
  return p ? Bytes(p, p + n) : Bytes{};
}

std::string column_text(sqlite3_stmt* st, int col) {
  const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(st, col));
  return p ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(st, col))) : std::string{};
}

std::string pointer_token(const std::string& key) {
  std::string out;
  for (const char c : key) {
    if (c == '~') out += "~0";
    else if (c == '/') out += "~1";
    else out += c;
  }
  return out;
}

bool has_float(const nlohmann::json& j) {
  if (j.is_number_float()) return true;
  if (j.is_structured()) {
    for (const auto& v : j) {
      if (has_float(v)) return true;
    }
  }
  return false;
}

// Throws naming the first float's JSON pointer (the path is only built when there is one).
void reject_floats(const nlohmann::json& j, const std::string& path) {
  if (j.is_number_float()) {
    throw std::invalid_argument(fmt::format("ledger record: {} is a floating-point number ({}); records hold integers only "
                                            "(money in fen, energy in Wh)",
                                            path.empty() ? "/" : path, j.dump()));
  }
  if (j.is_object()) {
    for (const auto& [k, v] : j.items()) reject_floats(v, path + "/" + pointer_token(k));
  } else if (j.is_array()) {
    for (std::size_t i = 0; i < j.size(); ++i) reject_floats(j[i], path + "/" + std::to_string(i));
  }
}

// The record names its own transaction under "id" or "transaction" (the session engine's key);
// every one of those present must be `txn_id`, so the txn_id column is covered by the hash.
bool names_txn(const nlohmann::json& record, const std::string& txn_id) {
  if (!record.is_object()) return false;
  bool named = false;
  for (const char* key : {"id", "transaction"}) {
    const auto it = record.find(key);
    if (it == record.end()) continue;
    if (!it->is_string() || it->get_ref<const std::string&>() != txn_id) return false;
    named = true;
  }
  return named;
}

// The record names its entry under "entry"; without that key it is its transaction's single
// record, whose entry is the txn_id.
bool names_entry(const nlohmann::json& record, const std::string& entry, const std::string& txn_id) {
  if (!record.is_object()) return false;
  const auto it = record.find("entry");
  if (it == record.end()) return entry == txn_id;
  return it->is_string() && it->get_ref<const std::string&>() == entry;
}

std::string describe(std::int64_t seq, const std::string& txn) { return fmt::format("seq {} (txn {})", seq, txn); }

constexpr const char* kSetSignature = "UPDATE ledger SET signature = ?1 WHERE seq = ?2 AND hash = ?3 AND signature IS NULL";

// Writes one signature; the hash in the WHERE makes a signature of a rolled-back append (whose
// seq a later append reused) match nothing.
void write_signature(sqlite3* db, sqlite3_stmt* st, std::int64_t seq, const Bytes& hash, const Bytes& signature) {
  Reset reset{st};
  sqlite3_bind_blob(st, 1, signature.data(), static_cast<int>(signature.size()), SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, seq);
  sqlite3_bind_blob(st, 3, hash.data(), static_cast<int>(hash.size()), SQLITE_STATIC);
  if (sqlite3_step(st) != SQLITE_DONE) throw LedgerError(fmt::format("ledger: cannot write the signature of seq {}: {}", seq, sqlite3_errmsg(db)));
}

}  // namespace

struct Ledger::Statements {
  Stmt last;
  Stmt find;
  Stmt insert;
};

// The signer thread: signs in append order and hands each signature to the storage thread.
struct Ledger::Signer {
  struct Job {
    std::int64_t seq;
    Bytes hash;
    Bytes bytes;
  };
  SignFunction sign;
  Ledger::Submit submit;
  std::mutex mutex;
  std::condition_variable wake;
  std::deque<Job> jobs;
  bool stopping = false, drain = true;
  std::thread thread;
  std::atomic<std::uint64_t> submitted{0};
  // Shared with the done callbacks, which may run after the Ledger is gone.
  std::shared_ptr<std::atomic<std::uint64_t>> failures = std::make_shared<std::atomic<std::uint64_t>>(0);

  void loop() {
    for (;;) {
      Job job;
      {
        std::unique_lock lock(mutex);
        wake.wait(lock, [&] { return !jobs.empty() || stopping; });
        if (jobs.empty() || (stopping && !drain)) return;
        job = std::move(jobs.front());
        jobs.pop_front();
      }
      Bytes signature;
      try {
        signature = sign(job.bytes);
      } catch (const std::exception& e) {
        spdlog::error("ledger: cannot sign seq {}: {}; it is signed at the next start", job.seq, e.what());
        ++*failures;
        continue;
      }
      submit(
          [seq = job.seq, hash = std::move(job.hash), signature = std::move(signature)](Database& db) {
            write_signature(db.handle(), db.prepared(kSetSignature), seq, hash, signature);
          },
          [seq = job.seq, failures = failures](const Status& st) {
            if (st.ok()) return;
            ++*failures;
            spdlog::error("ledger: the signature of seq {} was not written ({}); it is signed at the next start", seq, st.message());
          });
      ++submitted;
    }
  }
};

Ledger::Ledger(sqlite3* db, SigningKey key, HashAlgorithm hash) : Ledger(db, std::move(key), hash, nullptr) {}

Ledger::Ledger(sqlite3* db, SigningKey key, HashAlgorithm hash, SignFunction sign)
    : db_(db), key_(std::move(key)), hash_(hash), sign_(std::move(sign)), st_(std::make_unique<Statements>()) {
  if (!sign_) sign_ = [this](ByteView b) { return key_.sign(b); };
  st_->last = prepare(db_, "SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1");
  st_->find = prepare(db_, "SELECT seq FROM ledger WHERE entry = ?");
  st_->insert = prepare(db_,
                        "INSERT INTO ledger(seq, entry, txn_id, record, prev_hash, hash, signature, hash_alg, sig_alg) "
                        "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)");
}

Ledger::~Ledger() { stop_signer(false); }

void Ledger::sign_off_path(StoreWorker& store) {
  // Deferred: a signature rides in the commit of the next session's write instead of costing an
  // fsync of its own (nobody waits on it; a crash leaves the row to sign_pending()).
  sign_off_path([&store](StoreWorker::Work work, StoreWorker::Done done) { store.submit_deferred(std::move(work), std::move(done)); });
}

void Ledger::sign_off_path(Submit submit) {
  if (signer_) throw std::logic_error("Ledger::sign_off_path called twice");
  signer_ = std::make_unique<Signer>();
  signer_->sign = sign_;
  signer_->submit = std::move(submit);
  signer_->thread = std::thread([s = signer_.get()] { s->loop(); });
}

void Ledger::stop_signer(bool drain) {
  if (!signer_ || !signer_->thread.joinable()) return;
  {
    std::lock_guard lock(signer_->mutex);
    signer_->stopping = true;
    signer_->drain = drain;
    signer_->wake.notify_one();
  }
  signer_->thread.join();
}

std::uint64_t Ledger::signatures_submitted() const { return signer_ ? signer_->submitted.load() : 0; }
std::uint64_t Ledger::signature_write_failures() const { return signer_ ? signer_->failures->load() : 0; }

std::int64_t Ledger::sign_pending() {
  if (sqlite3_get_autocommit(db_) == 0) throw LedgerError("ledger: sign_pending must run outside a transaction");
  struct Row {
    std::int64_t seq;
    std::string entry;
    Bytes prev, hash, bytes;
    HashAlgorithm alg;
  };
  std::vector<Row> rows;
  Bytes before;  // the hash of the row before the first unsigned one
  {
    const Stmt st = prepare(db_, "SELECT seq, entry, record, prev_hash, hash, hash_alg FROM ledger WHERE signature IS NULL ORDER BY seq");
    while (sqlite3_step(st.get()) == SQLITE_ROW) {
      Row r;
      r.seq = sqlite3_column_int64(st.get(), 0);
      r.entry = column_text(st.get(), 1);
      r.prev = column_bytes(st.get(), 3);
      r.hash = column_bytes(st.get(), 4);
      const auto alg = parse_hash_algorithm(column_text(st.get(), 5));
      if (!alg) throw LedgerError(fmt::format("ledger: seq {} is unsigned and names an unknown hash algorithm; not signed", r.seq));
      r.alg = *alg;
      r.bytes = signed_bytes(r.prev, r.seq, column_bytes(st.get(), 2));
      rows.push_back(std::move(r));
    }
  }
  if (rows.empty()) return 0;
  {
    const Stmt st = prepare(db_, "SELECT hash FROM ledger WHERE seq = ?");
    sqlite3_bind_int64(st.get(), 1, rows.front().seq - 1);
    if (sqlite3_step(st.get()) == SQLITE_ROW) before = column_bytes(st.get(), 0);
    else before.assign(digest_size(rows.front().alg), 0);
  }
  // Never sign what does not hold together: an unsigned row could have been edited.
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto& r = rows[i];
    const Bytes& expected_prev = i == 0 ? before : rows[i - 1].hash;
    if (i > 0 && rows[i - 1].seq + 1 != r.seq) {
      throw LedgerError(fmt::format("ledger: seq {} is unsigned but seq {} before it is signed: not signing out of order", r.seq, r.seq - 1));
    }
    if (r.prev != expected_prev || digest(r.alg, r.bytes) != r.hash) {
      throw LedgerError(fmt::format("ledger: seq {} (entry {}) is unsigned and its hash or link does not hold; not signed", r.seq, r.entry));
    }
  }
  const Stmt update = prepare(db_, kSetSignature);
  if (sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) != SQLITE_OK) {
    throw LedgerError(fmt::format("ledger: cannot begin: {}", sqlite3_errmsg(db_)));
  }
  try {
    for (const auto& r : rows) write_signature(db_, update.get(), r.seq, r.hash, sign_(r.bytes));
    if (sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) throw LedgerError(fmt::format("ledger: cannot commit the signatures: {}", sqlite3_errmsg(db_)));
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
  return static_cast<std::int64_t>(rows.size());
}

std::string Ledger::canonical(const nlohmann::json& record) {
  if (!record.is_object()) throw std::invalid_argument(fmt::format("ledger record: must be a JSON object, not {}", record.type_name()));
  if (has_float(record)) reject_floats(record, "");
  try {
    return record.dump();  // compact; nlohmann::json objects are std::map, so keys are sorted
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(fmt::format("ledger record: {}", e.what()));  // e.g. invalid UTF-8
  }
}

Bytes Ledger::signed_bytes(ByteView prev_hash, std::int64_t seq, ByteView record) {
  Bytes out;
  out.reserve(prev_hash.size() + 8 + record.size());
  out.insert(out.end(), prev_hash.begin(), prev_hash.end());
  const auto u = static_cast<std::uint64_t>(seq);
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(u >> shift));
  out.insert(out.end(), record.begin(), record.end());
  return out;
}

bool Ledger::contains(const std::string& entry) const {
  sqlite3_stmt* st = st_->find.get();
  Reset reset{st};
  sqlite3_bind_text(st, 1, entry.data(), static_cast<int>(entry.size()), SQLITE_STATIC);
  const int rc = sqlite3_step(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) throw LedgerError(fmt::format("ledger: cannot look up entry {}: {}", entry, sqlite3_errmsg(db_)));
  return rc == SQLITE_ROW;
}

LedgerEntry Ledger::append(const std::string& entry_id, const std::string& txn_id, const nlohmann::json& record) {
  if (sqlite3_get_autocommit(db_) != 0) {
    throw LedgerError(fmt::format("ledger: txn {}: append must run inside the caller's transaction (BEGIN IMMEDIATE ... COMMIT)", txn_id));
  }
  if (txn_id.empty() || !names_txn(record, txn_id)) {
    throw std::invalid_argument(fmt::format("ledger record for txn '{}': its \"id\" (or \"transaction\") must be the txn_id", txn_id));
  }
  if (entry_id.empty() || !names_entry(record, entry_id, txn_id)) {
    throw std::invalid_argument(fmt::format("ledger record for entry '{}' of txn '{}': its \"entry\" must be the entry (or absent when the entry is the txn_id)",
                                            entry_id, txn_id));
  }
  const std::string text = canonical(record);
  if (contains(entry_id)) throw LedgerError(fmt::format("ledger: entry {} is already in the ledger; it is never ledgered twice", entry_id));

  LedgerEntry entry;
  Bytes prev;
  {
    sqlite3_stmt* st = st_->last.get();
    Reset reset{st};
    const int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      entry.seq = sqlite3_column_int64(st, 0) + 1;
      prev = column_bytes(st, 1);
    } else if (rc == SQLITE_DONE) {
      entry.seq = 1;
      prev.assign(digest_size(hash_), 0);
    } else {
      throw LedgerError(fmt::format("ledger: cannot read the last record: {}", sqlite3_errmsg(db_)));
    }
  }
  Bytes bytes = signed_bytes(prev, entry.seq, as_bytes(text));
  entry.hash = digest(hash_, bytes);
  const Bytes signature = signer_ ? Bytes{} : sign_(bytes);
  const std::string_view hash_alg = to_string(hash_);
  const std::string_view sig_alg = signature_algorithm_name(key_.algorithm());

  sqlite3_stmt* st = st_->insert.get();
  Reset reset{st};
  auto blob = [&](int i, const Bytes& b) { sqlite3_bind_blob(st, i, b.data(), static_cast<int>(b.size()), SQLITE_STATIC); };
  sqlite3_bind_int64(st, 1, entry.seq);
  sqlite3_bind_text(st, 2, entry_id.data(), static_cast<int>(entry_id.size()), SQLITE_STATIC);
  sqlite3_bind_text(st, 3, txn_id.data(), static_cast<int>(txn_id.size()), SQLITE_STATIC);
  sqlite3_bind_blob(st, 4, text.data(), static_cast<int>(text.size()), SQLITE_STATIC);
  blob(5, prev);
  blob(6, entry.hash);
  if (signer_) sqlite3_bind_null(st, 7);
  else blob(7, signature);
  sqlite3_bind_text(st, 8, hash_alg.data(), static_cast<int>(hash_alg.size()), SQLITE_STATIC);
  sqlite3_bind_text(st, 9, sig_alg.data(), static_cast<int>(sig_alg.size()), SQLITE_STATIC);
  if (sqlite3_step(st) != SQLITE_DONE) throw LedgerError(fmt::format("ledger: cannot append entry {} of txn {}: {}", entry_id, txn_id, sqlite3_errmsg(db_)));
  if (uplink_db_ != nullptr) {
    // Before the signer is told: an OutboxFull here rolls the row back, and no signature job
    // may name a row that never committed.
    enqueue_uplink(*uplink_db_,
                   {fmt::format("ledger:{}", entry.seq), "ledger",
                    {{"seq", entry.seq}, {"entry", entry_id}, {"txn", txn_id}, {"hash", to_hex(entry.hash)}, {"prev", to_hex(prev)}, {"alg", hash_alg}}},
                   protocol::UplinkClass::transaction);
  }
  if (signer_) {
    // Handed over before the caller's COMMIT: the signature is made while the row is fsync'd; if
    // the caller rolls back, the UPDATE's hash matches nothing.
    std::lock_guard lock(signer_->mutex);
    signer_->jobs.push_back({entry.seq, entry.hash, std::move(bytes)});
    signer_->wake.notify_one();
  }
  return entry;
}

LedgerCheck Ledger::verify(sqlite3* db, const VerifyingKey& key, VerifyOptions options) {
  LedgerCheck r;
  // A version-2 table has no entry column: each row is its transaction's single record.
  bool has_entry = false;
  {
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM pragma_table_info('ledger') WHERE name = 'entry'", -1, &raw, nullptr) == SQLITE_OK) {
      has_entry = sqlite3_step(raw) == SQLITE_ROW;
    }
    sqlite3_finalize(raw);
  }
  const std::string sql = fmt::format("SELECT seq, txn_id, record, prev_hash, hash, signature, hash_alg, sig_alg, {} FROM ledger ORDER BY seq",
                                      has_entry ? "entry" : "txn_id");
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &raw, nullptr) != SQLITE_OK) {
    sqlite3_finalize(raw);
    r.message = fmt::format("cannot read the ledger: {}", sqlite3_errmsg(db));
    return r;
  }
  const Stmt st(raw);
  const std::string_view key_sig_alg = signature_algorithm_name(key.algorithm());
  bool found = false;
  std::int64_t expected = 1;
  Bytes prev_hash;       // the previous row's stored hash
  std::string prev_txn;  // and its txn_id
  std::string first_unsigned_txn;
  auto report = [&](std::int64_t seq, const std::string& txn, const std::string& what) {
    found = true;
    r.first_bad_seq = seq;
    r.first_bad_txn_id = txn;
    r.message = txn.empty() ? what : fmt::format("{}: {}", describe(seq, txn), what);
  };

  int rc = SQLITE_ROW;
  while ((rc = sqlite3_step(st.get())) == SQLITE_ROW) {
    ++r.record_count;
    if (found) continue;  // count the rest; the first problem is the one reported
    const std::int64_t seq = sqlite3_column_int64(st.get(), 0);
    const std::string txn = column_text(st.get(), 1);
    const Bytes record = column_bytes(st.get(), 2);
    const Bytes stored_prev = column_bytes(st.get(), 3);
    const Bytes stored_hash = column_bytes(st.get(), 4);
    const bool is_signed = sqlite3_column_type(st.get(), 5) != SQLITE_NULL;
    const Bytes signature = column_bytes(st.get(), 5);
    const std::string hash_name = column_text(st.get(), 6);
    const std::string sig_name = column_text(st.get(), 7);
    const std::string entry = column_text(st.get(), 8);

    // Position: seq runs 1, 2, 3, ... without gaps.
    if (seq != expected) {
      if (seq < expected) {
        report(seq, txn, "sequence numbers start at 1: a record was inserted before the first");
      } else if (expected == 1) {
        report(1, "", seq == 2 ? fmt::format("seq 1 is missing: the ledger starts at {}: the first record was deleted", describe(seq, txn))
                               : fmt::format("seq 1 to {} are missing: the ledger starts at {}: the first records were deleted", seq - 1,
                                             describe(seq, txn)));
      } else if (seq == expected + 1) {
        report(expected, "", fmt::format("seq {} is missing: {} is followed by {}: a record was deleted", expected, describe(expected - 1, prev_txn),
                                         describe(seq, txn)));
      } else {
        report(expected, "", fmt::format("seq {} to {} are missing: {} is followed by {}: records were deleted", expected, seq - 1,
                                         describe(expected - 1, prev_txn), describe(seq, txn)));
      }
      continue;
    }
    // Algorithm names: the row's own, which the signature does not cover, so check them by name.
    const auto hash_alg = parse_hash_algorithm(hash_name);
    if (!hash_alg) {
      report(seq, txn, fmt::format("unknown hash algorithm '{}' (expected sha256 or sm3)", hash_name));
      continue;
    }
    if (sig_name != key_sig_alg) {
      report(seq, txn,
             fmt::format("signature algorithm '{}' does not match the certificate's key ({})", sig_name, key_sig_alg));
      continue;
    }
    // The link to the previous record.
    if (expected == 1) {
      if (stored_prev != Bytes(digest_size(*hash_alg), 0)) {
        report(seq, txn, "the first record's prev_hash is not all zero bytes: a record was inserted before it");
        continue;
      }
    } else if (stored_prev != prev_hash) {
      report(seq, txn, fmt::format("prev_hash does not match the hash of {}: a record was inserted here or records were reordered",
                                   describe(expected - 1, prev_txn)));
      continue;
    }
    // The content against its hash, then the hash against the signature.
    const Bytes bytes = signed_bytes(stored_prev, seq, record);
    if (digest(*hash_alg, bytes) != stored_hash) {
      const HashAlgorithm other = *hash_alg == HashAlgorithm::sha256 ? HashAlgorithm::sm3 : HashAlgorithm::sha256;
      if (digest(other, bytes) == stored_hash) {
        report(seq, txn, fmt::format("hash_alg says '{}' but the hash is {}: the algorithm name was changed", hash_name, to_string(other)));
      } else {
        report(seq, txn, "the record does not match its hash: its content was edited");
      }
      continue;
    }
    if (!is_signed) {
      if (r.unsigned_count++ == 0) {
        r.first_unsigned_seq = seq;
        first_unsigned_txn = txn;
      }
    } else if (r.unsigned_count > 0) {
      report(r.first_unsigned_seq, first_unsigned_txn,
             fmt::format("not signed, but {} after it is: a signature was removed (or its write failed; the daemon signs it at its next start)",
                         describe(seq, txn)));
      continue;
    } else if (!key.verify(bytes, signature)) {
      report(seq, txn, "the signature is invalid: the record and its hash were rewritten without the device key, or it was signed by another key");
      continue;
    }
    // The txn_id and entry columns are not hashed themselves; the record's names for them are.
    nlohmann::json parsed;
    try {
      parsed = nlohmann::json::parse(record.begin(), record.end());
    } catch (const nlohmann::json::exception&) {
    }
    if (!names_txn(parsed, txn)) {
      const auto id = parsed.is_object() ? parsed.value("id", parsed.value("transaction", nlohmann::json())) : nlohmann::json();
      report(seq, txn, fmt::format("the txn_id column does not match the record's id {}: the txn_id was edited", id.dump()));
      continue;
    }
    if (!names_entry(parsed, entry, txn)) {
      const auto named = parsed.value("entry", nlohmann::json(txn));
      report(seq, txn, fmt::format("the entry column '{}' does not match the record's entry {}: the entry was edited", entry, named.dump()));
      continue;
    }
    prev_hash = stored_hash;
    prev_txn = txn;
    ++expected;
  }
  if (rc != SQLITE_DONE) {
    r.ok = false;
    r.message = fmt::format("cannot read the ledger: {}", sqlite3_errmsg(db));
    return r;
  }
  if (found) return r;
  if (r.unsigned_count == 0) {
    r.ok = true;
    r.message = fmt::format("ledger OK: {} records, chain intact, all signatures valid", r.record_count);
  } else if (options.accept_unsigned_tail) {
    r.ok = true;
    r.message = fmt::format("ledger OK: {} records, chain intact, {} signatures valid; the newest {} (from seq {}) are not signed yet and "
                            "are not covered by a signature",
                            r.record_count, r.record_count - r.unsigned_count, r.unsigned_count, r.first_unsigned_seq);
  } else {
    r.first_bad_seq = r.first_unsigned_seq;
    r.first_bad_txn_id = first_unsigned_txn;
    r.message = fmt::format("{}: not signed yet, and neither are the {} after it: not covered by a signature (a daemon signs them at its "
                            "next start; accept an unsigned newest tail explicitly to pass)",
                            describe(r.first_unsigned_seq, first_unsigned_txn), r.unsigned_count - 1);
  }
  return r;
}

}  // namespace pilecore::core
