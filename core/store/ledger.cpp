#include "ledger.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <optional>

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

std::string describe(std::int64_t seq, const std::string& txn) { return fmt::format("seq {} (txn {})", seq, txn); }

}  // namespace

struct Ledger::Statements {
  Stmt last;
  Stmt find;
  Stmt insert;
};

Ledger::Ledger(sqlite3* db, SigningKey key, HashAlgorithm hash) : db_(db), key_(std::move(key)), hash_(hash), st_(std::make_unique<Statements>()) {
  st_->last = prepare(db_, "SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1");
  st_->find = prepare(db_, "SELECT seq FROM ledger WHERE txn_id = ?");
  st_->insert = prepare(db_,
                        "INSERT INTO ledger(seq, txn_id, record, prev_hash, hash, signature, hash_alg, sig_alg) "
                        "VALUES(?, ?, ?, ?, ?, ?, ?, ?)");
}

Ledger::~Ledger() = default;

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

bool Ledger::contains(const std::string& txn_id) const {
  sqlite3_stmt* st = st_->find.get();
  Reset reset{st};
  sqlite3_bind_text(st, 1, txn_id.data(), static_cast<int>(txn_id.size()), SQLITE_STATIC);
  const int rc = sqlite3_step(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) throw LedgerError(fmt::format("ledger: cannot look up txn {}: {}", txn_id, sqlite3_errmsg(db_)));
  return rc == SQLITE_ROW;
}

LedgerEntry Ledger::append(const std::string& txn_id, const nlohmann::json& record) {
  if (sqlite3_get_autocommit(db_) != 0) {
    throw LedgerError(fmt::format("ledger: txn {}: append must run inside the caller's transaction (BEGIN IMMEDIATE ... COMMIT)", txn_id));
  }
  if (txn_id.empty() || !names_txn(record, txn_id)) {
    throw std::invalid_argument(fmt::format("ledger record for txn '{}': its \"id\" (or \"transaction\") must be the txn_id", txn_id));
  }
  const std::string text = canonical(record);
  if (contains(txn_id)) throw LedgerError(fmt::format("ledger: txn {} is already in the ledger; it is never ledgered twice", txn_id));

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
  const Bytes bytes = signed_bytes(prev, entry.seq, as_bytes(text));
  entry.hash = digest(hash_, bytes);
  const Bytes signature = key_.sign(bytes);
  const std::string_view hash_alg = to_string(hash_);
  const std::string_view sig_alg = signature_algorithm_name(key_.algorithm());

  sqlite3_stmt* st = st_->insert.get();
  Reset reset{st};
  auto blob = [&](int i, const Bytes& b) { sqlite3_bind_blob(st, i, b.data(), static_cast<int>(b.size()), SQLITE_STATIC); };
  sqlite3_bind_int64(st, 1, entry.seq);
  sqlite3_bind_text(st, 2, txn_id.data(), static_cast<int>(txn_id.size()), SQLITE_STATIC);
  sqlite3_bind_blob(st, 3, text.data(), static_cast<int>(text.size()), SQLITE_STATIC);
  blob(4, prev);
  blob(5, entry.hash);
  blob(6, signature);
  sqlite3_bind_text(st, 7, hash_alg.data(), static_cast<int>(hash_alg.size()), SQLITE_STATIC);
  sqlite3_bind_text(st, 8, sig_alg.data(), static_cast<int>(sig_alg.size()), SQLITE_STATIC);
  if (sqlite3_step(st) != SQLITE_DONE) throw LedgerError(fmt::format("ledger: cannot append txn {}: {}", txn_id, sqlite3_errmsg(db_)));
  return entry;
}

LedgerCheck Ledger::verify(sqlite3* db, const VerifyingKey& key) {
  LedgerCheck r;
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db, "SELECT seq, txn_id, record, prev_hash, hash, signature, hash_alg, sig_alg FROM ledger ORDER BY seq", -1, &raw,
                         nullptr) != SQLITE_OK) {
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
    const Bytes signature = column_bytes(st.get(), 5);
    const std::string hash_name = column_text(st.get(), 6);
    const std::string sig_name = column_text(st.get(), 7);

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
    if (!key.verify(bytes, signature)) {
      report(seq, txn, "the signature is invalid: the record and its hash were rewritten without the device key, or it was signed by another key");
      continue;
    }
    // The txn_id column is not hashed itself; the record's id is.
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
    prev_hash = stored_hash;
    prev_txn = txn;
    ++expected;
  }
  if (rc != SQLITE_DONE) {
    r.ok = false;
    r.message = fmt::format("cannot read the ledger: {}", sqlite3_errmsg(db));
    return r;
  }
  if (!found) {
    r.ok = true;
    r.message = fmt::format("ledger OK: {} records, chain intact, all signatures valid", r.record_count);
  }
  return r;
}

}  // namespace pilecore::core
