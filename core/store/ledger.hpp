// The ledger: every money operation of a transaction (its capture, a refund days later, a
// debit), each its own entry, hash-chained and signed by the device key, in the `ledger` table of
// the core's database (schema version 3; version 2 had txn_id UNIQUE and no entry column):
//
//   CREATE TABLE ledger(seq INTEGER PRIMARY KEY, entry TEXT NOT NULL UNIQUE, txn_id TEXT NOT NULL,
//                       record BLOB NOT NULL, prev_hash BLOB NOT NULL, hash BLOB NOT NULL,
//                       signature BLOB,  -- NULL until the signer has written it
//                       hash_alg TEXT NOT NULL, sig_alg TEXT NOT NULL);
//
// For the record with sequence number `seq` (1, 2, 3, ...):
//   signed bytes = prev_hash || seq as 8-byte big-endian || record
//   hash         = H(signed bytes)             H = SHA-256 or SM3 (hash_alg: "sha256" | "sm3")
//   signature    = Sign(device key, signed bytes)   sig_alg: "ecdsa-p256-sha256" | "sm2-sm3"
// where prev_hash is the previous record's hash (all zero bytes, of the hash length, for the
// first) and record is the canonical JSON of the transaction: nlohmann::json::dump() of an
// object, whose keys are sorted, with no floating-point numbers (money and energy are integers).
// The record names its txn_id under "id" (or "transaction", the session engine's key), and its
// entry under "entry" (a record without "entry" is the transaction's single record: its entry is
// its txn_id, which is how every version-2 row was migrated), so both columns are covered by the
// hash and the signature.
//
// Signing off the commit path. A signature by a TPM takes 50-200 ms; the commit that closes a
// session must not wait for it. With sign_off_path(store), append() computes the hash, inserts
// the row with signature NULL and hands prev_hash || seq || record to the ledger's signer thread;
// the signer signs and submits `UPDATE ... SET signature` to the storage thread as a deferred
// work, so it is written by a later group commit and never by a commit of its own while other
// writes keep coming (StoreWorker::submit_deferred): signing record N overlaps the fsync of N and
// N+1, and a signature costs no fsync. The chain (hash, prev_hash)
// is complete at once; only the signature lags. A crash in between leaves the newest rows
// unsigned: sign_pending() signs them (after checking their hashes and links, so it never blesses
// an edited row) when the daemon starts, before it is ready.
//
// Unsigned rows in verify(). An unsigned row is not covered by a signature: anyone with write
// access to the file could rewrite it and the rows after it consistently. verify() therefore
// reports them and fails, unless they are only the newest tail (every row after the first
// unsigned one is unsigned too: what a crash between commit and signature leaves) and the caller
// passes VerifyOptions::accept_unsigned_tail (`pilectl ledger verify --accept-unsigned-tail`);
// then it succeeds and says how many records are not covered. An unsigned row followed by a
// signed one is always a failure: the signer signs in seq order, so a signature was removed (or a
// signature write failed on a failing disk; the next start signs it).
//
// What the chain detects: an edited record (its hash no longer matches), a hash recomputed
// without the key (its signature fails), a deleted record (a gap in seq), an inserted or
// reordered record (seq or the prev_hash link breaks), a changed algorithm name.
// What it cannot detect on its own: the removal of the NEWEST records (truncating the tail
// leaves a shorter chain that is still intact), and the replacement of the whole database by an
// older copy of itself. Those are anchored outside the device: append() also enqueues each
// record's seq and hash in the uplink outbox (uplink_through), the back end's acknowledgements
// name the highest seq it holds, and the pile keeps that anchor in a file beside the database
// (ledger_anchor.hpp). `pilectl ledger verify` checks the chain with verify() and then the anchor,
// so a ledger that ends before an acknowledged seq (or whose hash at that seq differs) fails
// there, and the back end sees the same from its side. Anyone holding the device key can of course rewrite the whole chain: that is what the
// key's protection (file mode 0600 today, a TPM or secure element later) is for.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "crypto.hpp"
#include "store_worker.hpp"

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
  std::int64_t unsigned_count = 0;      // rows without a signature (counted until the first problem)
  std::int64_t first_unsigned_seq = 0;  // 0 when every row is signed
};

struct VerifyOptions {
  /// Accept unsigned rows when they are only the newest tail (see the top of this file).
  bool accept_unsigned_tail = false;
};

/// Makes a signature over the given bytes: the device key's sign(), or a wrapper around it (a
/// TPM, the benchmark's deliberately slow signer). Called on the signer thread only.
using SignFunction = std::function<Bytes(ByteView)>;

struct LedgerEntry {
  std::int64_t seq = 0;
  Bytes hash;
};

class Ledger {
 public:
  /// `db` is the core's Database::handle() with the ledger table migrated in; it must outlive the
  /// Ledger, and is used from one thread at a time (the storage thread in the daemon). New
  /// records are hashed with `hash` and signed with `key` (or `sign`, which must make signatures
  /// of `key`'s algorithm), inside append() until sign_off_path() is called. Throws LedgerError
  /// when the table is missing or not migrated to version 3.
  Ledger(sqlite3* db, SigningKey key, HashAlgorithm hash);
  Ledger(sqlite3* db, SigningKey key, HashAlgorithm hash, SignFunction sign);
  ~Ledger();
  Ledger(const Ledger&) = delete;
  Ledger& operator=(const Ledger&) = delete;

  /// Appends a finished transaction. Must run inside the caller's open transaction (BEGIN
  /// IMMEDIATE ... COMMIT, together with the caller's own updates, so the ledger row and the
  /// transaction's closed status commit or roll back together); throws LedgerError otherwise.
  /// `record` must be a JSON object whose "id" or "transaction" (each one present) is `txn_id`,
  /// with no floating-point values
  /// anywhere (std::invalid_argument naming the JSON pointer). An already ledgered entry is
  /// refused with LedgerError: nothing is ever ledgered twice (use contains() in recovery).
  /// A failure leaves the table unchanged; the caller rolls back.
  ///
  /// `entry` names this record among the transaction's (e.g. "T-7/capture", "T-7/refund/R-2");
  /// the record must name it under "entry", or have no "entry" when entry == txn_id. A duplicate
  /// entry is refused; a transaction may have any number of entries.
  LedgerEntry append(const std::string& entry, const std::string& txn_id, const nlohmann::json& record);
  /// From now on append() also enqueues, in the same transaction, the uplink record
  /// `ledger:<seq>` (seq, entry, txn, hash and prev_hash; never the record, which names the user's
  /// token) when `db` has the uplink enabled: what lets the back end anchor the chain. `db` must
  /// be the Database whose handle() this Ledger appends on.
  void uplink_through(Database& db) { uplink_db_ = &db; }
  /// The transaction's single record: entry = txn_id.
  LedgerEntry append(const std::string& txn_id, const nlohmann::json& record) { return append(txn_id, txn_id, record); }

  /// Whether `entry` is in the ledger (committed, or appended in the open transaction).
  [[nodiscard]] bool contains(const std::string& entry) const;

  /// From now on append() leaves the signature to a signer thread, which writes it through
  /// `store` (whose Database must be the one `db` belongs to, or another connection to the same
  /// file). `store` must outlive stop_signer(). Call once.
  void sign_off_path(StoreWorker& store);
  /// The same, with the signatures' writes handed to `submit` (same contract as
  /// StoreWorker::submit), for a caller whose appends commit on a connection of its own.
  using Submit = std::function<void(StoreWorker::Work, StoreWorker::Done)>;
  void sign_off_path(Submit submit);
  /// Stops the signer thread. With `drain`, it first signs what it holds and submits the
  /// signatures (stop the StoreWorker after this to have them written); without, those rows stay
  /// unsigned until sign_pending() at the next start (what a crash does). Idempotent.
  void stop_signer(bool drain = true);
  /// Signs every unsigned row, in seq order, in one transaction of its own (call outside one,
  /// on the thread that owns `db`: the storage thread's run_sync at start-up). A row whose hash
  /// or link to the previous row does not hold is not signed: LedgerError naming it. Returns the
  /// number of rows signed.
  std::int64_t sign_pending();
  /// Signatures the signer thread has handed to the storage thread, and those that failed to be
  /// written (left for sign_pending()). Thread-safe.
  [[nodiscard]] std::uint64_t signatures_submitted() const;
  [[nodiscard]] std::uint64_t signature_write_failures() const;

  [[nodiscard]] HashAlgorithm hash_algorithm() const { return hash_; }
  [[nodiscard]] const SigningKey& key() const { return key_; }

  /// Checks the whole ledger in `db` against `key` (from the device certificate): walks every row
  /// in seq order and reports the first problem, naming its seq and txn_id. Reads one snapshot;
  /// needs no Ledger (and no private key), so `pilectl ledger verify` uses it on a read-only
  /// connection.
  /// Reads ledgers of schema version 2 (no entry column) too, so an old database verifies
  /// before the daemon migrated it.
  static LedgerCheck verify(sqlite3* db, const VerifyingKey& key, VerifyOptions options = {});

  /// The canonical serialisation append() stores; throws std::invalid_argument for a non-object
  /// or a floating-point value. Exposed for tests and for the uplink.
  static std::string canonical(const nlohmann::json& record);
  /// prev_hash || seq (8 bytes, big-endian) || record: what is hashed and signed.
  static Bytes signed_bytes(ByteView prev_hash, std::int64_t seq, ByteView record);

 private:
  struct Statements;
  struct Signer;
  sqlite3* db_;
  SigningKey key_;
  HashAlgorithm hash_;
  SignFunction sign_;
  std::unique_ptr<Statements> st_;
  std::unique_ptr<Signer> signer_;
  Database* uplink_db_ = nullptr;
};

}  // namespace pilecore::core
