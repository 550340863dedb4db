// The ledger: every finished transaction, hash-chained and signed by the device key, in the
// `ledger` table of the core's database (created by the core's migration):
//
//   CREATE TABLE ledger(seq INTEGER PRIMARY KEY, txn_id TEXT NOT NULL UNIQUE, record BLOB NOT NULL,
//                       prev_hash BLOB NOT NULL, hash BLOB NOT NULL, signature BLOB NOT NULL,
//                       hash_alg TEXT NOT NULL, sig_alg TEXT NOT NULL);
//
// For the record with sequence number `seq` (1, 2, 3, ...):
//   signed bytes = prev_hash || seq as 8-byte big-endian || record
//   hash         = H(signed bytes)             H = SHA-256 or SM3 (hash_alg: "sha256" | "sm3")
//   signature    = Sign(device key, signed bytes)   sig_alg: "ecdsa-p256-sha256" | "sm2-sm3"
// where prev_hash is the previous record's hash (all zero bytes, of the hash length, for the
// first) and record is the canonical JSON of the transaction: nlohmann::json::dump() of an
// object, whose keys are sorted, with no floating-point numbers (money and energy are integers).
// The record names its txn_id under "id" (or "transaction", the session engine's key), so the
// txn_id column is covered by the hash and signature.
//
// What the chain detects: an edited record (its hash no longer matches), a hash recomputed
// without the key (its signature fails), a deleted record (a gap in seq), an inserted or
// reordered record (seq or the prev_hash link breaks), a changed algorithm name.
// What it cannot detect on its own: the removal of the NEWEST records (truncating the tail
// leaves a shorter chain that is still intact), and the replacement of the whole database by an
// older copy of itself. Those must be anchored outside the device: the uplink sends each
// record's seq and hash, and the back office's acknowledgements say which seq it holds, so a
// ledger that ends before an acknowledged seq (or whose hash at that seq differs) is detected
// there, not by verify(). Anyone holding the device key can of course rewrite the whole chain: that is what the
// key's protection (file mode 0600 today, a TPM or secure element later) is for.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "crypto.hpp"

namespace pilecore::core {

/// A refused append (duplicate txn_id, not inside a transaction) or a database failure.
class LedgerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct LedgerCheck {
  bool ok = false;
  std::int64_t record_count = 0;   // rows in the ledger (all of them, also when a problem is found)
  std::int64_t first_bad_seq = 0;  // 0 when ok; for a deleted record, the missing seq
  std::string first_bad_txn_id;    // empty when ok or when the record is missing
  std::string message;             // "ledger OK: N records, ..." or "seq 7 (txn T-7): what is wrong"
};

struct LedgerEntry {
  std::int64_t seq = 0;
  Bytes hash;
};

class Ledger {
 public:
  /// `db` is the core's Database::handle() with the ledger table migrated in; it must outlive the
  /// Ledger, and is used from one thread at a time (the core's strand). New records are hashed
  /// with `hash` and signed with `key`. Throws LedgerError when the table is missing.
  Ledger(sqlite3* db, SigningKey key, HashAlgorithm hash);
  ~Ledger();
  Ledger(const Ledger&) = delete;
  Ledger& operator=(const Ledger&) = delete;

  /// Appends a finished transaction. Must run inside the caller's open transaction (BEGIN
  /// IMMEDIATE ... COMMIT, together with the caller's own updates, so the ledger row and the
  /// transaction's closed status commit or roll back together); throws LedgerError otherwise.
  /// `record` must be a JSON object whose "id" or "transaction" (each one present) is `txn_id`,
  /// with no floating-point values
  /// anywhere (std::invalid_argument naming the JSON pointer). An already ledgered txn_id is
  /// refused with LedgerError: nothing is ever ledgered twice (use contains() in recovery).
  /// A failure leaves the table unchanged; the caller rolls back.
  LedgerEntry append(const std::string& txn_id, const nlohmann::json& record);

  /// Whether `txn_id` is in the ledger (committed, or appended in the open transaction).
  [[nodiscard]] bool contains(const std::string& txn_id) const;

  [[nodiscard]] HashAlgorithm hash_algorithm() const { return hash_; }
  [[nodiscard]] const SigningKey& key() const { return key_; }

  /// Checks the whole ledger in `db` against `key` (from the device certificate): walks every row
  /// in seq order and reports the first problem, naming its seq and txn_id. Reads one snapshot;
  /// needs no Ledger (and no private key), so `pilectl ledger verify` uses it on a read-only
  /// connection.
  static LedgerCheck verify(sqlite3* db, const VerifyingKey& key);

  /// The canonical serialisation append() stores; throws std::invalid_argument for a non-object
  /// or a floating-point value. Exposed for tests and for the uplink.
  static std::string canonical(const nlohmann::json& record);
  /// prev_hash || seq (8 bytes, big-endian) || record: what is hashed and signed.
  static Bytes signed_bytes(ByteView prev_hash, std::int64_t seq, ByteView record);

 private:
  struct Statements;
  sqlite3* db_;
  SigningKey key_;
  HashAlgorithm hash_;
  std::unique_ptr<Statements> st_;
};

}  // namespace pilecore::core
