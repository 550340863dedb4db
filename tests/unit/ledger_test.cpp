// The device keys and the ledger, with real keys and certificates made by the test, real SQLite
// files, and tampering done the way an attacker would: SQL on the file through another
// connection. Every tamper must be reported as the exact first bad record with the exact message.
// Both algorithm pairs: ECDSA P-256 + SHA-256, SM2 + SM3.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <future>
#include <sstream>

#include "ledger.hpp"
#include "ledger_commands.hpp"
#include "store_worker.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace pilecore::core;
using pilecore::test::run_process;
using pilecore::test::TempDir;
namespace fs = std::filesystem;

namespace {

const char* const ledger_ddl =
    "CREATE TABLE IF NOT EXISTS ledger(seq INTEGER PRIMARY KEY, txn_id TEXT NOT NULL UNIQUE, record BLOB NOT NULL, prev_hash BLOB NOT NULL, "
    "hash BLOB NOT NULL, signature BLOB NOT NULL, hash_alg TEXT NOT NULL, sig_alg TEXT NOT NULL)";

struct Algorithms {
  KeyAlgorithm key;
  HashAlgorithm hash;
  const char* name;
};

std::string txn_name(int i) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "T-%04d", i);
  return buf;
}

nlohmann::json make_record(int i, const std::string& id) {
  return pilecore::test::sample_ledger_record(i, id, i % 7 == 0 ? "recovered" : "completed");
}

// SQL on the database file through a connection of its own, with blobs bound to ?1, ?2, ...
void tamper(const fs::path& db_file, const std::string& sql, const std::vector<Bytes>& blobs = {}) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(db_file.c_str(), &db), SQLITE_OK);
  const char* tail = sql.c_str();
  while (*tail != '\0') {
    sqlite3_stmt* st = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db, tail, -1, &st, &tail), SQLITE_OK) << sqlite3_errmsg(db) << " in " << tail;
    if (st == nullptr) break;
    for (int i = 1; i <= sqlite3_bind_parameter_count(st); ++i) {
      const Bytes& b = blobs.at(static_cast<std::size_t>(i - 1));
      sqlite3_bind_blob(st, i, b.data(), static_cast<int>(b.size()), SQLITE_TRANSIENT);
    }
    const int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    ASSERT_EQ(rc, SQLITE_DONE) << sqlite3_errmsg(db) << " in " << sql;
  }
  sqlite3_close(db);
}

// One column of one row, read through another connection.
Bytes read_blob(const fs::path& db_file, const std::string& column, std::int64_t seq) {
  sqlite3* db = nullptr;
  sqlite3_open(db_file.c_str(), &db);
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db, ("SELECT " + column + " FROM ledger WHERE seq = ?").c_str(), -1, &st, nullptr);
  sqlite3_bind_int64(st, 1, seq);
  Bytes out;
  if (sqlite3_step(st) == SQLITE_ROW) {
    const auto* p = static_cast<const std::uint8_t*>(sqlite3_column_blob(st, 0));
    out.assign(p, p + sqlite3_column_bytes(st, 0));
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  return out;
}

// The openssl command, found on PATH (run_process does not search it).
std::string openssl_cli() {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin");
  for (std::string d; std::getline(dirs, d, ':');) {
    if (!d.empty() && ::access((fs::path(d) / "openssl").c_str(), X_OK) == 0) return (fs::path(d) / "openssl").string();
  }
  return "/usr/bin/openssl";
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class LedgerChain : public ::testing::TestWithParam<Algorithms> {
 protected:
  void SetUp() override {
    const auto alg = GetParam();
    key_path_ = dir_.path() / "identity" / "device.key";
    cert_path_ = dir_.path() / "identity" / "device.crt";
    generate_identity(alg.key, key_path_, cert_path_, "PILE-0001", "Test Operator");
    db_file_ = dir_.path() / "pilecore.db";
    db_ = std::make_unique<Database>(db_file_);
    db_->exec(ledger_ddl);
    ledger_ = std::make_unique<Ledger>(db_->handle(), SigningKey(key_path_.string()), alg.hash);
    // 50 records in 5 transactions of 10: appends chain within a transaction and across commits
    // (one fsync per record would make this suite slow; the benchmark measures that case).
    for (int i = 1; i <= 50; i += 10) {
      db_->exec("BEGIN IMMEDIATE");
      for (int j = i; j < i + 10; ++j) ledger_->append(txn_name(j), make_record(j, txn_name(j)));
      db_->exec("COMMIT");
    }
  }

  LedgerEntry append(const std::string& id, const nlohmann::json& record) {
    db_->exec("BEGIN IMMEDIATE");
    try {
      auto e = ledger_->append(id, record);
      db_->exec("COMMIT");
      return e;
    } catch (...) {
      db_->exec("ROLLBACK");
      throw;
    }
  }

  LedgerEntry append_entry(const std::string& entry, const std::string& txn, const nlohmann::json& record) {
    db_->exec("BEGIN IMMEDIATE");
    try {
      auto e = ledger_->append(entry, txn, record);
      db_->exec("COMMIT");
      return e;
    } catch (...) {
      db_->exec("ROLLBACK");
      throw;
    }
  }

  [[nodiscard]] LedgerCheck check() const { return Ledger::verify(db_->handle(), VerifyingKey(cert_path_)); }

  void expect_bad(std::int64_t seq, const std::string& txn, const std::string& message) const {
    const auto r = check();
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.first_bad_seq, seq);
    EXPECT_EQ(r.first_bad_txn_id, txn);
    EXPECT_EQ(r.message, message);
    // The command reads the file on its own, read-only connection and says the same.
    std::ostringstream out, err;
    EXPECT_EQ(ledger_verify(db_file_, cert_path_, out, err), 1);
    EXPECT_EQ(out.str(), "");
    EXPECT_NE(err.str().find("ledger BROKEN: " + message + " ("), std::string::npos) << err.str();
  }

  // A record signed with another key (the attacker's), chained and hashed correctly after seq-1.
  void forge_at(std::int64_t seq, const Bytes& prev_hash) {
    TempDir other;
    generate_identity(GetParam().key, other.path() / "k", other.path() / "c", "ATTACKER");
    const SigningKey attacker((other.path() / "k").string());
    const std::string text = Ledger::canonical(make_record(99, "T-FORGED"));
    const Bytes bytes = Ledger::signed_bytes(prev_hash, seq, as_bytes(text));
    const std::string hash_alg(to_string(GetParam().hash));
    const std::string sig_alg(signature_algorithm_name(GetParam().key));
    // Make room: seq >= `seq` move up by one (through negatives: the primary key is unique).
    tamper(db_file_, fmt::format("UPDATE ledger SET seq = -(seq + 1) WHERE seq >= {0}; UPDATE ledger SET seq = -seq WHERE seq < 0;"
                                 "INSERT INTO ledger(seq, entry, txn_id, record, prev_hash, hash, signature, hash_alg, sig_alg) "
                                 "VALUES({0}, 'T-FORGED', 'T-FORGED', ?1, ?2, ?3, ?4, '{1}', '{2}');",
                                 seq, hash_alg, sig_alg),
           {Bytes(text.begin(), text.end()), prev_hash, digest(GetParam().hash, bytes), attacker.sign(bytes)});
  }

  TempDir dir_;
  fs::path key_path_, cert_path_, db_file_;
  std::unique_ptr<Database> db_;
  std::unique_ptr<Ledger> ledger_;
};

TEST_P(LedgerChain, FiftyRecordsVerify) {
  const auto r = check();
  EXPECT_TRUE(r.ok) << r.message;
  EXPECT_EQ(r.record_count, 50);
  EXPECT_EQ(r.first_bad_seq, 0);
  EXPECT_EQ(r.message, "ledger OK: 50 records, chain intact, all signatures valid");
  std::ostringstream out, err;
  EXPECT_EQ(ledger_verify(db_file_, cert_path_, out, err), 0) << err.str();
  EXPECT_EQ(out.str().substr(0, out.str().find('\n') + 1), "ledger OK: 50 records, chain intact, all signatures valid\n");
  EXPECT_NE(out.str().find("\nnot anchored: "), std::string::npos) << "no ack from a back end in this test";
  EXPECT_EQ(err.str(), "");
}

TEST_P(LedgerChain, RowsFollowTheDocumentedConstruction) {
  // Recompute seq 1 and seq 2 from their definition, independently of Ledger::verify.
  const auto alg = GetParam();
  const Bytes zero(32, 0);
  EXPECT_EQ(read_blob(db_file_, "prev_hash", 1), zero);
  const Bytes rec1 = read_blob(db_file_, "record", 1);
  EXPECT_EQ(std::string(rec1.begin(), rec1.end()), make_record(1, "T-0001").dump());
  Bytes input = zero;
  for (int i = 0; i < 7; ++i) input.push_back(0);
  input.push_back(1);  // seq 1, 8 bytes big-endian
  input.insert(input.end(), rec1.begin(), rec1.end());
  EXPECT_EQ(read_blob(db_file_, "hash", 1), digest(alg.hash, input));
  EXPECT_TRUE(VerifyingKey(cert_path_).verify(input, read_blob(db_file_, "signature", 1)));
  EXPECT_EQ(read_blob(db_file_, "prev_hash", 2), read_blob(db_file_, "hash", 1));
  EXPECT_EQ(read_blob(db_file_, "hash_alg", 2), Bytes(to_string(alg.hash).begin(), to_string(alg.hash).end()));
  const auto sig_alg = signature_algorithm_name(alg.key);
  EXPECT_EQ(read_blob(db_file_, "sig_alg", 2), Bytes(sig_alg.begin(), sig_alg.end()));
}

TEST_P(LedgerChain, EditedRecordIsCaughtByItsHash) {
  tamper(db_file_, "UPDATE ledger SET record = CAST(replace(CAST(record AS TEXT), '\"total_fen\":4987', '\"total_fen\":987') AS BLOB) WHERE seq = 20");
  ASSERT_NE(read_blob(db_file_, "record", 20), read_blob(db_file_, "record", 21));
  expect_bad(20, "T-0020", "seq 20 (txn T-0020): the record does not match its hash: its content was edited");
}

TEST_P(LedgerChain, EditedRecordWithRecomputedHashIsCaughtByItsSignature) {
  auto edited = make_record(20, "T-0020");
  edited["total_fen"] = 987;
  const std::string text = Ledger::canonical(edited);
  const Bytes bytes = Ledger::signed_bytes(read_blob(db_file_, "prev_hash", 20), 20, as_bytes(text));
  tamper(db_file_, "UPDATE ledger SET record = ?1, hash = ?2 WHERE seq = 20", {Bytes(text.begin(), text.end()), digest(GetParam().hash, bytes)});
  expect_bad(20, "T-0020",
             "seq 20 (txn T-0020): the signature is invalid: the record and its hash were rewritten without the device key, or it was "
             "signed by another key");
}

TEST_P(LedgerChain, DeletedRecordIsAGap) {
  tamper(db_file_, "DELETE FROM ledger WHERE seq = 25");
  expect_bad(25, "", "seq 25 is missing: seq 24 (txn T-0024) is followed by seq 26 (txn T-0026): a record was deleted");
}

TEST_P(LedgerChain, DeletedRunOfRecordsIsAGap) {
  tamper(db_file_, "DELETE FROM ledger WHERE seq BETWEEN 10 AND 12");
  expect_bad(10, "", "seq 10 to 12 are missing: seq 9 (txn T-0009) is followed by seq 13 (txn T-0013): records were deleted");
}

TEST_P(LedgerChain, DeletedFirstRecordIsAGap) {
  tamper(db_file_, "DELETE FROM ledger WHERE seq = 1");
  expect_bad(1, "", "seq 1 is missing: the ledger starts at seq 2 (txn T-0002): the first record was deleted");
}

TEST_P(LedgerChain, InsertedForgeryThatBreaksTheLinkIsNamed) {
  forge_at(26, Bytes(32, 0x5A));
  expect_bad(26, "T-FORGED",
             "seq 26 (txn T-FORGED): prev_hash does not match the hash of seq 25 (txn T-0025): a record was inserted here or records were "
             "reordered");
}

TEST_P(LedgerChain, InsertedForgeryThatLinksCorrectlyFailsItsSignature) {
  forge_at(26, read_blob(db_file_, "hash", 25));
  expect_bad(26, "T-FORGED",
             "seq 26 (txn T-FORGED): the signature is invalid: the record and its hash were rewritten without the device key, or it was "
             "signed by another key");
}

TEST_P(LedgerChain, SwappedRecordsBreakTheLink) {
  tamper(db_file_, "UPDATE ledger SET seq = -1 WHERE seq = 30; UPDATE ledger SET seq = 30 WHERE seq = 31; UPDATE ledger SET seq = 31 WHERE seq = -1");
  expect_bad(30, "T-0031",
             "seq 30 (txn T-0031): prev_hash does not match the hash of seq 29 (txn T-0029): a record was inserted here or records were "
             "reordered");
}

TEST_P(LedgerChain, UnknownHashAlgorithmNameIsNamed) {
  tamper(db_file_, "UPDATE ledger SET hash_alg = 'md5' WHERE seq = 10");
  expect_bad(10, "T-0010", "seq 10 (txn T-0010): unknown hash algorithm 'md5' (expected sha256 or sm3)");
}

TEST_P(LedgerChain, SwitchedHashAlgorithmNameIsNamed) {
  const bool sha = GetParam().hash == HashAlgorithm::sha256;
  tamper(db_file_, fmt::format("UPDATE ledger SET hash_alg = '{}' WHERE seq = 11", sha ? "sm3" : "sha256"));
  expect_bad(11, "T-0011",
             sha ? "seq 11 (txn T-0011): hash_alg says 'sm3' but the hash is sha256: the algorithm name was changed"
                 : "seq 11 (txn T-0011): hash_alg says 'sha256' but the hash is sm3: the algorithm name was changed");
}

TEST_P(LedgerChain, WrongSignatureAlgorithmNameIsNamed) {
  tamper(db_file_, "UPDATE ledger SET sig_alg = 'rsa-pss-sha256' WHERE seq = 12");
  expect_bad(12, "T-0012",
             fmt::format("seq 12 (txn T-0012): signature algorithm 'rsa-pss-sha256' does not match the certificate's key ({})",
                         signature_algorithm_name(GetParam().key)));
}

TEST_P(LedgerChain, EditedTxnIdColumnIsCaught) {
  tamper(db_file_, "UPDATE ledger SET txn_id = 'T-9999' WHERE seq = 5");
  expect_bad(5, "T-9999", "seq 5 (txn T-9999): the txn_id column does not match the record's id \"T-0005\": the txn_id was edited");
}

TEST_P(LedgerChain, TruncatedTailIsNotDetectableByTheChainAlone) {
  // The documented limit: removing the newest records leaves an intact, shorter chain. The
  // uplink's acknowledgements (seq and hash held by the back office) are what catch this.
  tamper(db_file_, "DELETE FROM ledger WHERE seq > 47");
  const auto r = check();
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.record_count, 47);
}

TEST_P(LedgerChain, CertificateOfAnotherKeyFails) {
  TempDir other;
  generate_identity(GetParam().key, other.path() / "k", other.path() / "c", "PILE-0001", "Test Operator");
  const auto r = Ledger::verify(db_->handle(), VerifyingKey(other.path() / "c"));
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.first_bad_seq, 1);
  EXPECT_EQ(r.message,
            "seq 1 (txn T-0001): the signature is invalid: the record and its hash were rewritten without the device key, or it was signed "
            "by another key");
  std::ostringstream out, err;
  EXPECT_EQ(ledger_verify(db_file_, other.path() / "c", out, err), 1);
}

TEST_P(LedgerChain, CertificateOfTheOtherAlgorithmFails) {
  TempDir other;
  const auto alg = GetParam().key == KeyAlgorithm::sm2 ? KeyAlgorithm::ecdsa_p256 : KeyAlgorithm::sm2;
  generate_identity(alg, other.path() / "k", other.path() / "c", "PILE-0001");
  const auto r = Ledger::verify(db_->handle(), VerifyingKey(other.path() / "c"));
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.first_bad_seq, 1);
  EXPECT_EQ(r.message, fmt::format("seq 1 (txn T-0001): signature algorithm '{}' does not match the certificate's key ({})",
                                   signature_algorithm_name(GetParam().key), signature_algorithm_name(alg)));
}

TEST_P(LedgerChain, FloatsAreRefused) {
  auto r = make_record(51, "T-0051");
  r["energy_kwh"] = 36.85;
  try {
    append("T-0051", r);
    FAIL() << "a float was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "ledger record: /energy_kwh is a floating-point number (36.85); records hold integers only (money in fen, energy in Wh)");
  }
  auto nested = make_record(51, "T-0051");
  nested["lines"][1]["price_yuan/kWh"] = 1.1;
  EXPECT_THROW(append("T-0051", nested), std::invalid_argument);
  try {
    (void)Ledger::canonical(nested);
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("/lines/1/price_yuan~1kWh is a floating-point number"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(ledger_->contains("T-0051"));
  EXPECT_EQ(check().record_count, 50);
}

TEST_P(LedgerChain, DuplicateTxnIdIsRefused) {
  EXPECT_TRUE(ledger_->contains("T-0001"));
  EXPECT_TRUE(ledger_->contains("T-0050"));
  EXPECT_FALSE(ledger_->contains("T-0051"));
  try {
    append("T-0017", make_record(17, "T-0017"));
    FAIL() << "a txn was ledgered twice";
  } catch (const LedgerError& e) {
    EXPECT_STREQ(e.what(), "ledger: entry T-0017 is already in the ledger; it is never ledgered twice");
  }
  const auto r = check();
  EXPECT_TRUE(r.ok) << r.message;
  EXPECT_EQ(r.record_count, 50);
}

TEST_P(LedgerChain, RecordIdMustBeTheTxnId) {
  EXPECT_THROW(append("T-0051", make_record(51, "T-0052")), std::invalid_argument);
  auto no_id = make_record(51, "T-0051");
  no_id.erase("id");
  EXPECT_THROW(append("T-0051", no_id), std::invalid_argument);
  EXPECT_THROW(append("T-0051", nlohmann::json::array({1, 2})), std::invalid_argument);
  // The session engine's records name the transaction "transaction": accepted, and checked.
  auto engine = make_record(51, "T-0051");
  engine.erase("id");
  engine["transaction"] = "T-0051";
  EXPECT_EQ(append("T-0051", engine).seq, 51);
  auto both = make_record(52, "T-0052");
  both["transaction"] = "T-0053";
  EXPECT_THROW(append("T-0052", both), std::invalid_argument);
  const auto r = check();
  EXPECT_TRUE(r.ok) << r.message;
  EXPECT_EQ(r.record_count, 51);
  tamper(db_file_, "UPDATE ledger SET txn_id = 'T-0999' WHERE seq = 51");
  expect_bad(51, "T-0999", "seq 51 (txn T-0999): the txn_id column does not match the record's id \"T-0051\": the txn_id was edited");
}

TEST_P(LedgerChain, AppendOutsideATransactionIsRefused) {
  EXPECT_THROW(ledger_->append("T-0051", make_record(51, "T-0051")), LedgerError);
  EXPECT_FALSE(ledger_->contains("T-0051"));
}

TEST_P(LedgerChain, RolledBackAppendLeavesNoTrace) {
  db_->exec("BEGIN IMMEDIATE");
  const auto e = ledger_->append("T-0051", make_record(51, "T-0051"));
  EXPECT_EQ(e.seq, 51);
  EXPECT_TRUE(ledger_->contains("T-0051"));  // visible inside the caller's transaction
  db_->exec("ROLLBACK");
  EXPECT_FALSE(ledger_->contains("T-0051"));
  const auto next = append("T-0052", make_record(52, "T-0052"));
  EXPECT_EQ(next.seq, 51);
  EXPECT_EQ(next.hash, read_blob(db_file_, "hash", 51));
  const auto r = check();
  EXPECT_TRUE(r.ok) << r.message;
  EXPECT_EQ(r.record_count, 51);
}

TEST_P(LedgerChain, ChainContinuesAcrossReopening) {
  ledger_.reset();
  db_.reset();
  db_ = std::make_unique<Database>(db_file_);
  db_->exec(ledger_ddl);
  ledger_ = std::make_unique<Ledger>(db_->handle(), SigningKey(key_path_.string()), GetParam().hash);
  EXPECT_EQ(append("T-0051", make_record(51, "T-0051")).seq, 51);
  const auto r = check();
  EXPECT_TRUE(r.ok) << r.message;
  EXPECT_EQ(r.record_count, 51);
}

TEST_P(LedgerChain, KeyFileIsPrivate) {
  struct stat st {};
  ASSERT_EQ(::stat(key_path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(cert_path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
  // Nothing left behind by the atomic writes.
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(key_path_.parent_path())) ++files;
  EXPECT_EQ(files, 2u);
}

INSTANTIATE_TEST_SUITE_P(Ledger, LedgerChain,
                         ::testing::Values(Algorithms{KeyAlgorithm::ecdsa_p256, HashAlgorithm::sha256, "EcdsaP256Sha256"},
                                           Algorithms{KeyAlgorithm::sm2, HashAlgorithm::sm3, "Sm2Sm3"}),
                         [](const ::testing::TestParamInfo<Algorithms>& p) { return std::string(p.param.name); });

TEST(LedgerTable, MissingTableIsReported) {
  TempDir dir;
  generate_identity(KeyAlgorithm::ecdsa_p256, dir.path() / "k", dir.path() / "c", "PILE-0001");
  // A database without the ledger table (not made by Database: its migrations include it).
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir.path() / "x.db").c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE other(x)", nullptr, nullptr, nullptr), SQLITE_OK);
  EXPECT_THROW(Ledger(db, SigningKey((dir.path() / "k").string()), HashAlgorithm::sha256), LedgerError);
  sqlite3_close(db);
  std::ostringstream out, err;
  EXPECT_EQ(ledger_verify(dir.path() / "x.db", dir.path() / "c", out, err), 2);
  EXPECT_NE(err.str().find("no ledger table"), std::string::npos) << err.str();
  EXPECT_EQ(ledger_verify(dir.path() / "missing.db", dir.path() / "c", out, err), 2);
  EXPECT_FALSE(fs::exists(dir.path() / "missing.db"));
}

TEST(LedgerTable, EmptyLedgerVerifies) {
  TempDir dir;
  generate_identity(KeyAlgorithm::sm2, dir.path() / "k", dir.path() / "c", "PILE-0001");
  Database db(dir.path() / "x.db");
  db.exec(ledger_ddl);
  const auto r = Ledger::verify(db.handle(), VerifyingKey(dir.path() / "c"));
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.message, "ledger OK: 0 records, chain intact, all signatures valid");
}

// ---- several entries per transaction (schema version 3) ----

TEST_P(LedgerChain, ATransactionHasSeveralEntriesEachChainedAndRefusedTwice) {
  // T-0017 was captured (its single record, entry = txn_id); days later a refund and a debit.
  auto refund = make_record(51, "T-0017");
  refund["entry"] = "T-0017/refund/R-1";
  auto debit = make_record(52, "T-0017");
  debit["entry"] = "T-0017/debit/D-1";
  EXPECT_EQ(append_entry("T-0017/refund/R-1", "T-0017", refund).seq, 51);
  EXPECT_EQ(append_entry("T-0017/debit/D-1", "T-0017", debit).seq, 52);
  EXPECT_TRUE(ledger_->contains("T-0017/refund/R-1"));
  EXPECT_FALSE(ledger_->contains("T-0017/refund/R-2"));
  try {
    append_entry("T-0017/refund/R-1", "T-0017", refund);
    FAIL() << "an entry was ledgered twice";
  } catch (const LedgerError& e) {
    EXPECT_STREQ(e.what(), "ledger: entry T-0017/refund/R-1 is already in the ledger; it is never ledgered twice");
  }
  const auto r = check();
  EXPECT_TRUE(r.ok) << r.message;
  EXPECT_EQ(r.record_count, 52);
}

TEST_P(LedgerChain, TheRecordMustNameItsEntry) {
  // No "entry" in the record: only the transaction's own entry may be its txn_id.
  EXPECT_THROW(append_entry("T-0017/refund/R-1", "T-0017", make_record(51, "T-0017")), std::invalid_argument);
  auto other = make_record(51, "T-0017");
  other["entry"] = "T-0017/refund/R-9";
  EXPECT_THROW(append_entry("T-0017/refund/R-1", "T-0017", other), std::invalid_argument);
  EXPECT_THROW(append_entry("", "T-0017", other), std::invalid_argument);
  EXPECT_FALSE(ledger_->contains("T-0017/refund/R-1"));
}

TEST_P(LedgerChain, EditedEntryColumnIsCaught) {
  auto refund = make_record(51, "T-0017");
  refund["entry"] = "T-0017/refund/R-1";
  append_entry("T-0017/refund/R-1", "T-0017", refund);
  tamper(db_file_, "UPDATE ledger SET entry = 'T-0017/refund/R-2' WHERE seq = 51");
  expect_bad(51, "T-0017",
             "seq 51 (txn T-0017): the entry column 'T-0017/refund/R-2' does not match the record's entry \"T-0017/refund/R-1\": the entry was edited");
  // A single-record row whose entry column no longer equals its txn_id.
  tamper(db_file_, "UPDATE ledger SET entry = 'T-0005/refund' WHERE seq = 5");
  expect_bad(5, "T-0005", "seq 5 (txn T-0005): the entry column 'T-0005/refund' does not match the record's entry \"T-0005\": the entry was edited");
}

TEST(LedgerMigration, AVersion2LedgerVerifiesBeforeAndAfterMigrationAndTakesMoreEntries) {
  TempDir dir;
  const fs::path key = dir.path() / "k", cert = dir.path() / "c", file = dir.path() / "old.db";
  generate_identity(KeyAlgorithm::sm2, key, cert, "PILE-0001");
  const SigningKey signer(key.string());
  // A database as pilecore's schema version 2 left it: txn_id UNIQUE, no entry column.
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(file.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, ledger_ddl, nullptr, nullptr, nullptr), SQLITE_OK);
    Bytes prev(32, 0);
    for (int i = 1; i <= 3; ++i) {
      const std::string text = Ledger::canonical(make_record(i, txn_name(i)));
      const Bytes bytes = Ledger::signed_bytes(prev, i, as_bytes(text));
      const Bytes hash = digest(HashAlgorithm::sm3, bytes), sig = signer.sign(bytes);
      sqlite3_stmt* st = nullptr;
      sqlite3_prepare_v2(db, "INSERT INTO ledger VALUES(?, ?, ?, ?, ?, ?, 'sm3', 'sm2-sm3')", -1, &st, nullptr);
      sqlite3_bind_int(st, 1, i);
      sqlite3_bind_text(st, 2, txn_name(i).c_str(), -1, SQLITE_TRANSIENT);
      sqlite3_bind_blob(st, 3, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
      sqlite3_bind_blob(st, 4, prev.data(), static_cast<int>(prev.size()), SQLITE_TRANSIENT);
      sqlite3_bind_blob(st, 5, hash.data(), static_cast<int>(hash.size()), SQLITE_TRANSIENT);
      sqlite3_bind_blob(st, 6, sig.data(), static_cast<int>(sig.size()), SQLITE_TRANSIENT);
      ASSERT_EQ(sqlite3_step(st), SQLITE_DONE) << sqlite3_errmsg(db);
      sqlite3_finalize(st);
      prev = hash;
    }
    // The rest of a version-2 database, as far as later migrations touch it.
    ASSERT_EQ(sqlite3_exec(db,
                           "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                           "CREATE TABLE transactions(id TEXT PRIMARY KEY, started_ms INTEGER NOT NULL);"
                           "PRAGMA user_version=2",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }
  std::ostringstream out, err;
  EXPECT_EQ(ledger_verify(file, cert, out, err), 0) << err.str();  // read-only, not migrated
  EXPECT_EQ(out.str().substr(0, out.str().find('\n') + 1), "ledger OK: 3 records, chain intact, all signatures valid\n");
  EXPECT_NE(out.str().find("\nnot anchored: "), std::string::npos) << "no ack from a back end in this test";

  Database db(file);
  EXPECT_EQ(db.schema_version(), 13);
  Ledger ledger(db.handle(), SigningKey(key.string()), HashAlgorithm::sm3);
  EXPECT_TRUE(ledger.contains("T-0002"));  // entry = txn_id
  auto refund = make_record(4, "T-0002");
  refund["entry"] = "T-0002/refund/R-1";
  db.exec("BEGIN IMMEDIATE");
  EXPECT_EQ(ledger.append("T-0002/refund/R-1", "T-0002", refund).seq, 4);
  db.exec("COMMIT");
  const auto r = Ledger::verify(db.handle(), VerifyingKey(cert));
  EXPECT_TRUE(r.ok) << r.message;
  EXPECT_EQ(r.record_count, 4);
}

// ---- signing off the commit path ----

namespace {

// A signer held at a gate: the test decides when (and whether) signatures are made.
class HeldSigner {
 public:
  explicit HeldSigner(const fs::path& key) : key_(key.string()) {}
  SignFunction function() {
    return [this](ByteView b) {
      std::unique_lock lock(m_);
      cv_.wait(lock, [&] { return open_; });
      if (killed_) throw std::runtime_error("killed before signing");
      ++signed_;
      return key_.sign(b);
    };
  }
  void open() {
    std::lock_guard lock(m_);
    open_ = true;
    cv_.notify_all();
  }
  // What a kill does to the signatures not made yet: they never are.
  void kill() {
    std::lock_guard lock(m_);
    open_ = killed_ = true;
    cv_.notify_all();
  }
  int count() {
    std::lock_guard lock(m_);
    return signed_;
  }

 private:
  SigningKey key_;
  std::mutex m_;
  std::condition_variable cv_;
  bool open_ = false, killed_ = false;
  int signed_ = 0;
};

class LedgerSigning : public ::testing::TestWithParam<Algorithms> {
 protected:
  void SetUp() override {
    key_ = dir_.path() / "device.key";
    cert_ = dir_.path() / "device.crt";
    generate_identity(GetParam().key, key_, cert_, "PILE-0001");
    file_ = dir_.path() / "pilecore.db";
    open();
  }
  void open() {
    db_ = std::make_unique<Database>(file_);
    held_ = std::make_unique<HeldSigner>(key_);
    // The storage thread's done callbacks run where it posts them: its own thread, here.
    store_ = std::make_unique<StoreWorker>(*db_, [](std::function<void()> fn) { fn(); });
    ledger_ = std::make_unique<Ledger>(db_->handle(), SigningKey(key_.string()), GetParam().hash, held_->function());
  }
  void close(bool drain) {
    if (drain) held_->open();
    else held_->kill();
    ledger_->stop_signer(drain);
    store_->stop();
    ledger_.reset();
    store_.reset();
    db_.reset();
  }
  void TearDown() override {
    if (ledger_) close(true);
  }
  // What the session engine does: the ledger append inside a work of the storage thread.
  Status commit(const std::function<void(Database&)>& work) {
    std::promise<Status> p;
    store_->submit(work, [&](const Status& st) { p.set_value(st); });
    return p.get_future().get();
  }
  Status append(int i) {
    return commit([this, i](Database&) { ledger_->append(txn_name(i), make_record(i, txn_name(i))); });
  }
  LedgerCheck check(bool accept_tail = false) {
    const Database reader(file_, Database::ReadOnly{});
    return Ledger::verify(reader.handle(), VerifyingKey(cert_), VerifyOptions{accept_tail});
  }
  std::int64_t unsigned_rows() {
    Database reader(file_, Database::ReadOnly{});
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(reader.handle(), "SELECT count(*) FROM ledger WHERE signature IS NULL", -1, &st, nullptr);
    sqlite3_step(st);
    const auto n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
  }

  TempDir dir_;
  fs::path key_, cert_, file_;
  std::unique_ptr<Database> db_;
  std::unique_ptr<HeldSigner> held_;
  std::unique_ptr<StoreWorker> store_;
  std::unique_ptr<Ledger> ledger_;
};

}  // namespace

TEST_P(LedgerSigning, TheAppendCommitsWithoutWaitingForItsSignatureWhichALaterCommitWrites) {
  ledger_->sign_off_path(*store_);
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(append(i).ok());
  // Durable, chained, not signed yet: the signer is held.
  EXPECT_EQ(unsigned_rows(), 3);
  auto r = check();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.first_bad_seq, 1);
  EXPECT_EQ(r.unsigned_count, 3);
  EXPECT_EQ(r.message, "seq 1 (txn T-0001): not signed yet, and neither are the 2 after it: not covered by a signature (a daemon signs them at its "
                       "next start; accept an unsigned newest tail explicitly to pass)");
  r = check(true);
  EXPECT_TRUE(r.ok) << r.message;
  EXPECT_EQ(r.message, "ledger OK: 3 records, chain intact, 0 signatures valid; the newest 3 (from seq 1) are not signed yet and are not covered "
                       "by a signature");
  const auto commits_before = store_->commits();
  held_->open();
  ledger_->stop_signer(true);  // signs what it holds and submits the signatures
  store_->stop();              // writes them
  EXPECT_GT(store_->commits(), commits_before);
  EXPECT_EQ(held_->count(), 3);
  EXPECT_EQ(ledger_->signatures_submitted(), 3u);
  EXPECT_EQ(ledger_->signature_write_failures(), 0u);
  EXPECT_EQ(unsigned_rows(), 0);
  r = check();
  EXPECT_TRUE(r.ok) << r.message;
  EXPECT_EQ(r.message, "ledger OK: 3 records, chain intact, all signatures valid");
}

TEST_P(LedgerSigning, RowsLeftUnsignedByAKillAreSignedAtTheNextStart) {
  ledger_->sign_off_path(*store_);
  for (int i = 1; i <= 4; ++i) ASSERT_TRUE(append(i).ok());
  close(false);  // killed: the signer never signed
  EXPECT_EQ(unsigned_rows(), 4);
  std::ostringstream out, err;
  EXPECT_EQ(ledger_verify(file_, cert_, out, err), 1);
  EXPECT_NE(err.str().find("not signed yet"), std::string::npos) << err.str();
  std::ostringstream out2, err2;
  EXPECT_EQ(ledger_verify(file_, cert_, out2, err2, VerifyOptions{true}), 0) << err2.str();
  EXPECT_NE(out2.str().find("the newest 4 (from seq 1) are not signed yet"), std::string::npos) << out2.str();

  open();
  held_->open();
  std::int64_t signed_now = 0;
  store_->run_sync([&](Database&) { signed_now = ledger_->sign_pending(); });
  EXPECT_EQ(signed_now, 4);
  EXPECT_EQ(unsigned_rows(), 0);
  // The chain continues after the restart.
  ledger_->sign_off_path(*store_);
  ASSERT_TRUE(append(5).ok());
  close(true);
  const auto r = check();
  EXPECT_TRUE(r.ok) << r.message;
  EXPECT_EQ(r.record_count, 5);
}

TEST_P(LedgerSigning, AnUnsignedRowBeforeASignedOneIsARemovedSignature) {
  held_->open();
  ledger_->sign_off_path(*store_);
  for (int i = 1; i <= 5; ++i) ASSERT_TRUE(append(i).ok());
  close(true);
  tamper(file_, "UPDATE ledger SET signature = NULL WHERE seq = 3");
  for (const bool accept : {false, true}) {
    const auto r = check(accept);
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.first_bad_seq, 3);
    EXPECT_EQ(r.message, "seq 3 (txn T-0003): not signed, but seq 4 (txn T-0004) after it is: a signature was removed (or its write failed; the "
                         "daemon signs it at its next start)");
  }
}

TEST_P(LedgerSigning, AnEditedUnsignedRowIsNeverSigned) {
  ledger_->sign_off_path(*store_);
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(append(i).ok());
  close(false);
  auto edited = Ledger::canonical(make_record(3, txn_name(3)));
  edited.replace(edited.find("T-0003"), 6, "T-0666");
  tamper(file_, "UPDATE ledger SET record = ?1 WHERE seq = 3", {Bytes(edited.begin(), edited.end())});
  open();
  held_->open();
  try {
    store_->run_sync([&](Database&) { ledger_->sign_pending(); });
    FAIL() << "an edited row was signed";
  } catch (const LedgerError& e) {
    EXPECT_STREQ(e.what(), "ledger: seq 3 (entry T-0003) is unsigned and its hash or link does not hold; not signed");
  }
  EXPECT_EQ(unsigned_rows(), 3);
  EXPECT_EQ(check(true).message, "seq 3 (txn T-0003): the record does not match its hash: its content was edited");
}

TEST_P(LedgerSigning, ASignatureForARolledBackAppendMatchesNothing) {
  held_->open();
  ledger_->sign_off_path(*store_);
  ASSERT_TRUE(append(1).ok());
  const auto failed = commit([this](Database&) {
    ledger_->append(txn_name(2), make_record(2, txn_name(2)));
    throw std::runtime_error("the capture was refused");
  });
  EXPECT_EQ(failed.message(), "the capture was refused");
  ASSERT_TRUE(append(3).ok());  // reuses seq 2, with another hash
  close(true);
  const auto r = check();
  EXPECT_TRUE(r.ok) << r.message;
  EXPECT_EQ(r.record_count, 2);
  EXPECT_EQ(unsigned_rows(), 0);
}

INSTANTIATE_TEST_SUITE_P(Ledger, LedgerSigning,
                         ::testing::Values(Algorithms{KeyAlgorithm::ecdsa_p256, HashAlgorithm::sha256, "EcdsaP256Sha256"},
                                           Algorithms{KeyAlgorithm::sm2, HashAlgorithm::sm3, "Sm2Sm3"}),
                         [](const ::testing::TestParamInfo<Algorithms>& p) { return std::string(p.param.name); });

// ---- crypto ----

TEST(CryptoDigest, KnownAnswers) {
  EXPECT_EQ(to_hex(digest(HashAlgorithm::sha256, as_bytes("abc"))), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  // GB/T 32905-2016, example 1.
  EXPECT_EQ(to_hex(digest(HashAlgorithm::sm3, as_bytes("abc"))), "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0");
  EXPECT_EQ(digest_size(HashAlgorithm::sha256), 32u);
  EXPECT_EQ(digest_size(HashAlgorithm::sm3), 32u);
}

TEST(CryptoNames, RoundTrip) {
  for (auto a : {HashAlgorithm::sha256, HashAlgorithm::sm3}) EXPECT_EQ(parse_hash_algorithm(to_string(a)), a);
  for (auto a : {KeyAlgorithm::ecdsa_p256, KeyAlgorithm::sm2}) EXPECT_EQ(parse_key_algorithm(to_string(a)), a);
  EXPECT_FALSE(parse_hash_algorithm("md5"));
  EXPECT_FALSE(parse_key_algorithm("rsa"));
}

class CryptoKeys : public ::testing::TestWithParam<Algorithms> {
 protected:
  void SetUp() override {
    key_ = dir_.path() / "device.key";
    cert_ = dir_.path() / "device.crt";
    id_ = generate_identity(GetParam().key, key_, cert_, "PILE-0001", "Test Operator");
  }
  TempDir dir_;
  fs::path key_, cert_;
  Identity id_;
};

TEST_P(CryptoKeys, SignAndVerify) {
  const SigningKey key(key_.string());
  EXPECT_EQ(key.algorithm(), GetParam().key);
  const VerifyingKey cert(cert_);
  EXPECT_EQ(cert.algorithm(), GetParam().key);
  const std::string message = "prev || seq || record";
  const Bytes sig = key.sign(as_bytes(message));
  EXPECT_EQ(sig.at(0), 0x30);  // DER SEQUENCE { r, s }
  EXPECT_TRUE(cert.verify(as_bytes(message), sig));
  EXPECT_TRUE(key.verifying_key().verify(as_bytes(message), sig));
  EXPECT_FALSE(cert.verify(as_bytes("prev || seq || recorD"), sig));
  Bytes flipped = sig;
  flipped[flipped.size() - 1] ^= 1;
  EXPECT_FALSE(cert.verify(as_bytes(message), flipped));
  EXPECT_FALSE(cert.verify(as_bytes(message), Bytes{0x30, 0x00}));
  EXPECT_FALSE(cert.verify(as_bytes(message), Bytes{}));
  EXPECT_NE(key.sign(as_bytes(message)), sig);  // randomised (k is fresh per signature)
}

TEST_P(CryptoKeys, SignaturesVerifyWithTheOpensslCommand) {
  // Interoperability, and for SM2 proof that the ID is "1234567812345678": OpenSSL's own tool
  // accepts the signature with that ID and refuses it with another.
  const SigningKey key(key_.string());
  const std::string message = "{\"id\":\"T-0001\",\"total_fen\":4987}";
  const Bytes sig = key.sign(as_bytes(message));
  const auto data = dir_.write("data", message);
  const auto sig_file = dir_.write("sig", std::string(sig.begin(), sig.end()));
  const auto pub = run_process({openssl_cli(), "x509", "-in", cert_.string(), "-pubkey", "-noout"});
  ASSERT_EQ(pub.exit_code, 0) << pub.err;
  const auto pub_file = dir_.write("pub.pem", pub.out);
  const bool sm2 = GetParam().key == KeyAlgorithm::sm2;
  std::vector<std::string> argv = {openssl_cli(), "dgst", sm2 ? "-sm3" : "-sha256", "-verify", pub_file.string(), "-signature", sig_file.string()};
  if (sm2) argv.insert(argv.end(), {"-sigopt", "distid:1234567812345678"});
  argv.push_back(data.string());
  const auto ok = run_process(argv);
  EXPECT_EQ(ok.exit_code, 0) << ok.out << ok.err;
  EXPECT_NE(ok.out.find("Verified OK"), std::string::npos) << ok.out;
  if (sm2) {
    argv[argv.size() - 2] = "distid:1234567812345679";
    const auto other_id = run_process(argv);
    EXPECT_NE(other_id.exit_code, 0) << other_id.out;
  }
}

TEST_P(CryptoKeys, CertificateIsWhatTheDesignAsksFor) {
  const auto text = run_process({openssl_cli(), "x509", "-in", cert_.string(), "-noout", "-text"});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  const bool sm2 = GetParam().key == KeyAlgorithm::sm2;
  EXPECT_NE(text.out.find("Version: 3 (0x2)"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find(sm2 ? "Signature Algorithm: SM2-with-SM3" : "Signature Algorithm: ecdsa-with-SHA256"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("Subject: O = Test Operator, CN = PILE-0001"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("Issuer: O = Test Operator, CN = PILE-0001"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("X509v3 Basic Constraints: critical\n                CA:FALSE"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("X509v3 Key Usage: critical\n                Digital Signature\n"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find(sm2 ? "ASN1 OID: SM2" : "NIST CURVE: P-256"), std::string::npos) << text.out;

  // The fingerprint is the one OpenSSL computes.
  const auto fp = run_process({openssl_cli(), "x509", "-in", cert_.string(), "-noout", "-fingerprint", "-sha256"});
  EXPECT_EQ(fp.out, "sha256 Fingerprint=" + id_.fingerprint + "\n");
  EXPECT_EQ(VerifyingKey(cert_).fingerprint(), id_.fingerprint);
  EXPECT_EQ(VerifyingKey(cert_).subject(), "O=Test Operator, CN=PILE-0001");

  // Validity 730 days; a self-signature that verifies; a positive serial of at least 64 bits.
  FILE* f = std::fopen(cert_.c_str(), "r");
  ASSERT_NE(f, nullptr);
  X509* x = PEM_read_X509(f, nullptr, nullptr, nullptr);
  std::fclose(f);
  ASSERT_NE(x, nullptr);
  int days = 0, secs = 0;
  ASSERT_EQ(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(x), X509_get0_notAfter(x)), 1);
  EXPECT_EQ(days, 730);
  EXPECT_EQ(secs, 0);
  if (sm2) {
    ASN1_OCTET_STRING* id = ASN1_OCTET_STRING_new();
    ASN1_OCTET_STRING_set(id, reinterpret_cast<const unsigned char*>("1234567812345678"), 16);
    X509_set0_distinguishing_id(x, id);  // x owns it now
  }
  EXPECT_EQ(X509_verify(x, X509_get0_pubkey(x)), 1);
  const ASN1_INTEGER* serial = X509_get0_serialNumber(x);
  EXPECT_EQ(ASN1_STRING_type(serial), V_ASN1_INTEGER);  // not V_ASN1_NEG_INTEGER
  EXPECT_GE(ASN1_STRING_length(serial), 8);
  X509_free(x);
}

TEST_P(CryptoKeys, EachIdentityIsNew) {
  TempDir other;
  const auto second = generate_identity(GetParam().key, other.path() / "k", other.path() / "c", "PILE-0001", "Test Operator");
  EXPECT_NE(second.fingerprint, id_.fingerprint);
  EXPECT_NE(slurp(other.path() / "k"), slurp(key_));
}

TEST_P(CryptoKeys, KeyLocationMayBeAStoreUri) {
  const SigningKey by_uri("file:" + key_.string());
  const Bytes sig = by_uri.sign(as_bytes("x"));
  EXPECT_TRUE(VerifyingKey(cert_).verify(as_bytes("x"), sig));
}

INSTANTIATE_TEST_SUITE_P(Crypto, CryptoKeys,
                         ::testing::Values(Algorithms{KeyAlgorithm::ecdsa_p256, HashAlgorithm::sha256, "EcdsaP256"},
                                           Algorithms{KeyAlgorithm::sm2, HashAlgorithm::sm3, "Sm2"}),
                         [](const ::testing::TestParamInfo<Algorithms>& p) { return std::string(p.param.name); });

TEST(CryptoErrors, NameTheFileAndCarryOpensslsReason) {
  TempDir dir;
  try {
    SigningKey k((dir.path() / "nope.key").string());
    FAIL();
  } catch (const CryptoError& e) {
    EXPECT_EQ(std::string(e.what()), (dir.path() / "nope.key").string() + ": cannot load the private key: no such file (run `pilectl keys init` to make one)");
  }
  const auto garbage = dir.write("garbage.key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
  try {
    SigningKey k(garbage.string());
    FAIL();
  } catch (const CryptoError& e) {
    EXPECT_EQ(std::string(e.what()).rfind(garbage.string() + ": ", 0), 0u) << e.what();
  }
  const auto bad_cert = dir.write("bad.crt", "not a certificate\n");
  try {
    VerifyingKey v(bad_cert);
    FAIL();
  } catch (const CryptoError& e) {
    EXPECT_EQ(std::string(e.what()).rfind(bad_cert.string() + ": not a PEM X.509 certificate: ", 0), 0u) << e.what();
    EXPECT_NE(std::string(e.what()).find("PEM routines"), std::string::npos) << e.what();
  }
  // A provider URI with no provider loaded for its scheme: a clear error, not a crash.
  try {
    SigningKey k("handle:0x81000001");
    FAIL();
  } catch (const CryptoError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("handle:0x81000001: ", 0), 0u) << e.what();
  }
  // An RSA key is not a device key here.
  const auto rsa = run_process({openssl_cli(), "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", (dir.path() / "rsa.key").string()});
  ASSERT_EQ(rsa.exit_code, 0) << rsa.err;
  try {
    SigningKey k((dir.path() / "rsa.key").string());
    FAIL();
  } catch (const CryptoError& e) {
    EXPECT_EQ(std::string(e.what()), (dir.path() / "rsa.key").string() + ": unsupported key type RSA: pilecore signs with ECDSA P-256 or SM2");
  }
  EXPECT_THROW(generate_identity(KeyAlgorithm::sm2, dir.path() / "k", dir.path() / "c", ""), CryptoError);
}

TEST(CryptoKeysFromOpenssl, KeysMadeByTheOpensslCommandLoad) {
  // A key an integrator makes by hand (traditional "EC PRIVATE KEY" PEM, or PKCS#8 SM2) loads.
  TempDir dir;
  const auto ec = run_process({openssl_cli(), "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", (dir.path() / "ec.key").string()});
  ASSERT_EQ(ec.exit_code, 0) << ec.err;
  EXPECT_EQ(SigningKey((dir.path() / "ec.key").string()).algorithm(), KeyAlgorithm::ecdsa_p256);
  const auto sm2 = run_process({openssl_cli(), "genpkey", "-algorithm", "SM2", "-out", (dir.path() / "sm2.key").string()});
  ASSERT_EQ(sm2.exit_code, 0) << sm2.err;
  EXPECT_EQ(SigningKey((dir.path() / "sm2.key").string()).algorithm(), KeyAlgorithm::sm2);
}

// ---- pilectl keys init, the identity section ----

TEST(LedgerCommands, KeysInitRefusesToOverwrite) {
  TempDir dir;
  IdentityOptions o;
  o.key = dir.path() / "identity" / "device.key";
  o.certificate = dir.path() / "identity" / "device.crt";
  o.common_name = "SITE-42";
  std::ostringstream out, err;
  ASSERT_EQ(keys_init(o, out, err), 0) << err.str();
  const std::string fp = VerifyingKey(o.certificate).fingerprint();
  EXPECT_EQ(out.str(), fmt::format("key:         {} (ecdsa-p256, mode 0600)\n"
                                   "certificate: {} (self-signed, O=pilecore, CN=SITE-42, valid 730 days)\n"
                                   "SHA-256 fingerprint: {}\n",
                                   o.key.string(), o.certificate.string(), fp));
  const std::string key_before = slurp(o.key);

  std::ostringstream out2, err2;
  EXPECT_EQ(keys_init(o, out2, err2), 1);
  EXPECT_EQ(out2.str(), "");
  EXPECT_NE(err2.str().find(o.key.string() + " exists; not replacing it (use --force"), std::string::npos) << err2.str();
  EXPECT_EQ(slurp(o.key), key_before);

  std::ostringstream out3, err3;
  o.force = true;
  o.algorithm = KeyAlgorithm::sm2;
  EXPECT_EQ(keys_init(o, out3, err3), 0) << err3.str();
  EXPECT_NE(slurp(o.key), key_before);
  EXPECT_EQ(SigningKey(o.key.string()).algorithm(), KeyAlgorithm::sm2);

  IdentityOptions no_name;
  no_name.key = dir.path() / "a";
  no_name.certificate = dir.path() / "b";
  std::ostringstream out4, err4;
  EXPECT_EQ(keys_init(no_name, out4, err4), 1);
  EXPECT_FALSE(fs::exists(dir.path() / "a"));
}

TEST(LedgerCommands, IdentitySectionSchema) {
  const Field f = identity_schema();
  EXPECT_EQ(f.key, "identity");
  Field root;
  root.type = FieldType::object;
  root.fields = {f};
  {
    Diagnostics d("site.yaml");
    Validator(d).validate(root, YAML::Load("identity:\n  key: handle:0x81000001\n  algorithm: sm2\n  hash: sm3\n  operator: Shanghai Volt\n"), "");
    EXPECT_EQ(d.error_count(), 0u) << d.format();
  }
  {
    Diagnostics d("site.yaml");
    Validator(d).validate(root, YAML::Load("identity:\n  algorithm: rsa\n  hsah: sm3\n"), "");
    EXPECT_EQ(d.error_count(), 2u) << d.format();
  }
  const auto defaults = identity_config(YAML::Node());
  EXPECT_EQ(defaults.key, "identity/device.key");
  EXPECT_EQ(defaults.certificate, "identity/device.crt");
  EXPECT_EQ(defaults.algorithm, KeyAlgorithm::ecdsa_p256);
  EXPECT_EQ(defaults.hash, HashAlgorithm::sha256);
  EXPECT_EQ(defaults.organization, "pilecore");
  const auto c = identity_config(YAML::Load("key: handle:0x81000001\nalgorithm: sm2\nhash: sm3\noperator: Shanghai Volt\n"));
  EXPECT_EQ(c.key, "handle:0x81000001");
  EXPECT_EQ(c.algorithm, KeyAlgorithm::sm2);
  EXPECT_EQ(c.hash, HashAlgorithm::sm3);
  EXPECT_EQ(c.organization, "Shanghai Volt");

  EXPECT_EQ(resolve_identity_location("identity/device.key", "/var/lib/pilecore"), "/var/lib/pilecore/identity/device.key");
  EXPECT_EQ(resolve_identity_location("/etc/pilecore/device.key", "/var/lib/pilecore"), "/etc/pilecore/device.key");
  EXPECT_EQ(resolve_identity_location("handle:0x81000001", "/var/lib/pilecore"), "handle:0x81000001");
  EXPECT_EQ(resolve_identity_location("file:/etc/k.pem", "/var/lib/pilecore"), "file:/etc/k.pem");
}

}  // namespace
