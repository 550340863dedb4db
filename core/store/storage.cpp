#include "storage.hpp"

#include "private_files.hpp"

#include <fmt/format.h>

#include <stdexcept>

namespace pilecore::core {

namespace {
// Each entry migrates from version i to i+1; append only.
const char* const migrations[] = {
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE boots(id INTEGER PRIMARY KEY, started_at TEXT NOT NULL, version TEXT NOT NULL, site_id TEXT NOT NULL);",
    // 2: sessions. A transaction row is committed before the contactor closes; readings are the
    // meter register at start, checkpoints, tariff boundaries and stop; the ledger row and the
    // 'closed' status commit together.
    "CREATE TABLE transactions("
    " id TEXT PRIMARY KEY,"
    " connector INTEGER NOT NULL,"
    " method TEXT NOT NULL,"
    " user_token TEXT NOT NULL,"
    " payment_ref TEXT NOT NULL DEFAULT '',"
    " authorized_fen INTEGER NOT NULL,"
    " risk TEXT NOT NULL DEFAULT '',"
    " status TEXT NOT NULL CHECK(status IN ('open','stopping','closed')),"
    " outcome TEXT NOT NULL DEFAULT '' CHECK(outcome IN ('','completed','recovered')),"
    " stop_reason TEXT NOT NULL DEFAULT '',"
    " started_ms INTEGER NOT NULL,"
    " stopped_ms INTEGER,"
    " meter_start_wh INTEGER NOT NULL,"
    " meter_stop_wh INTEGER,"
    " energy_wh INTEGER,"
    " electricity_fen INTEGER,"
    " service_fen INTEGER,"
    " total_fen INTEGER,"
    " captured_fen INTEGER,"
    " capture_status TEXT NOT NULL DEFAULT '',"
    " bill TEXT);"
    "CREATE INDEX transactions_status ON transactions(status);"
    "CREATE INDEX transactions_user ON transactions(user_token, started_ms);"
    "CREATE TABLE readings("
    " txn_id TEXT NOT NULL REFERENCES transactions(id),"
    " seq INTEGER NOT NULL,"
    " time_ms INTEGER NOT NULL,"
    " wh INTEGER NOT NULL,"
    " kind TEXT NOT NULL CHECK(kind IN ('start','checkpoint','boundary','stop','recovery')),"
    " PRIMARY KEY(txn_id, seq));"
    "CREATE TABLE ledger(seq INTEGER PRIMARY KEY, txn_id TEXT NOT NULL UNIQUE, record BLOB NOT NULL, prev_hash BLOB NOT NULL,"
    " hash BLOB NOT NULL, signature BLOB NOT NULL, hash_alg TEXT NOT NULL, sig_alg TEXT NOT NULL);",
    // 3: several ledger records per transaction (its capture, a refund days later, a debit), each
    // named by its own entry; existing rows keep entry = txn_id, which their records already
    // name. The signature may be NULL for a while: it is written by a later commit, after the
    // signer thread made it (see ledger.hpp).
    "CREATE TABLE ledger_v3(seq INTEGER PRIMARY KEY, entry TEXT NOT NULL UNIQUE, txn_id TEXT NOT NULL, record BLOB NOT NULL,"
    " prev_hash BLOB NOT NULL, hash BLOB NOT NULL, signature BLOB, hash_alg TEXT NOT NULL, sig_alg TEXT NOT NULL);"
    "INSERT INTO ledger_v3(seq, entry, txn_id, record, prev_hash, hash, signature, hash_alg, sig_alg)"
    " SELECT seq, txn_id, txn_id, record, prev_hash, hash, signature, hash_alg, sig_alg FROM ledger;"
    "DROP TABLE ledger;"
    "ALTER TABLE ledger_v3 RENAME TO ledger;"
    "CREATE INDEX ledger_txn ON ledger(txn_id);"
    "CREATE INDEX ledger_unsigned ON ledger(seq) WHERE signature IS NULL;",
    // 4: money operations (core/payment/money_operations.hpp): the intent is written before the
    // payment plugin is called, the outcome after; recovery resumes what has no outcome.
    "CREATE TABLE operations("
    " id TEXT PRIMARY KEY,"
    " txn_id TEXT NOT NULL,"
    " kind TEXT NOT NULL CHECK(kind IN ('authorize','capture','void','refund','debit')),"
    " amount_fen INTEGER NOT NULL,"
    " method TEXT NOT NULL,"
    " channel TEXT NOT NULL DEFAULT '',"
    " state TEXT NOT NULL CHECK(state IN ('intent','pending','confirmed','failed')),"
    " reference TEXT NOT NULL DEFAULT '',"
    " reason TEXT NOT NULL DEFAULT '',"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " created_ms INTEGER NOT NULL,"
    " updated_ms INTEGER NOT NULL,"
    " next_attempt_ms INTEGER);"
    "CREATE INDEX operations_txn ON operations(txn_id);"
    "CREATE INDEX operations_unfinished ON operations(state) WHERE state IN ('intent','pending');"
    // Risk history is kept by a salted hash of the user's token, never the token.
    "ALTER TABLE transactions ADD COLUMN user_hash TEXT NOT NULL DEFAULT '';"
    "CREATE INDEX transactions_user_hash ON transactions(user_hash, started_ms);",
    // 5: the payment router (core/payment/router.hpp): each channel's attempts in window buckets,
    // so success rates survive a restart; and each operation's routing decision, for the receipt.
    "CREATE TABLE routing_stats("
    " method TEXT NOT NULL,"
    " channel TEXT NOT NULL,"
    " bucket_ms INTEGER NOT NULL,"
    " ok INTEGER NOT NULL,"
    " failed INTEGER NOT NULL,"
    " PRIMARY KEY(method, channel, bucket_ms));"
    "ALTER TABLE operations ADD COLUMN routing TEXT NOT NULL DEFAULT '';",
    // 6: incremental authorisations (a top-up of the hold) are money operations of their own
    // kind. SQLite cannot change a CHECK, so the table is copied into one that allows it.
    "CREATE TABLE operations_v6("
    " id TEXT PRIMARY KEY,"
    " txn_id TEXT NOT NULL,"
    " kind TEXT NOT NULL CHECK(kind IN ('authorize','increment','capture','void','refund','debit')),"
    " amount_fen INTEGER NOT NULL,"
    " method TEXT NOT NULL,"
    " channel TEXT NOT NULL DEFAULT '',"
    " state TEXT NOT NULL CHECK(state IN ('intent','pending','confirmed','failed')),"
    " reference TEXT NOT NULL DEFAULT '',"
    " reason TEXT NOT NULL DEFAULT '',"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " created_ms INTEGER NOT NULL,"
    " updated_ms INTEGER NOT NULL,"
    " next_attempt_ms INTEGER,"
    " routing TEXT NOT NULL DEFAULT '');"
    "INSERT INTO operations_v6(id, txn_id, kind, amount_fen, method, channel, state, reference, reason, attempts, created_ms, updated_ms,"
    " next_attempt_ms, routing) SELECT id, txn_id, kind, amount_fen, method, channel, state, reference, reason, attempts, created_ms, updated_ms,"
    " next_attempt_ms, routing FROM operations;"
    "DROP TABLE operations;"
    "ALTER TABLE operations_v6 RENAME TO operations;"
    "CREATE INDEX operations_txn ON operations(txn_id);"
    "CREATE INDEX operations_unfinished ON operations(state) WHERE state IN ('intent','pending');",
    // 7: the risk engine's decisions (core/risk): one row per transaction and phase (before the
    // authorisation, before the capture), with every instance's answer, beside the money
    // operation of that phase.
    "CREATE TABLE risk_decisions("
    " txn_id TEXT NOT NULL,"
    " phase TEXT NOT NULL CHECK(phase IN ('authorize','capture')),"
    " verdict TEXT NOT NULL CHECK(verdict IN ('allow','step_up','deny')),"
    " answers TEXT NOT NULL,"
    " decided_ms INTEGER NOT NULL,"
    " PRIMARY KEY(txn_id, phase));",
    // 8: the uplink outbox (core/store/outbox.hpp): a record is written in the transaction of the
    // change it reports and deleted only by the back end's acknowledgement. class is the uplink
    // class as its priority (0 control, 1 transaction, 2 status, 3 telemetry); payload is the
    // CBOR record, resent byte for byte. outbox_meta keeps the frame sequence, the drop counters
    // and the highest ledger seq the back end holds.
    "CREATE TABLE outbox("
    " id INTEGER PRIMARY KEY,"
    " key TEXT NOT NULL UNIQUE,"
    " class INTEGER NOT NULL CHECK(class BETWEEN 0 AND 3),"
    " kind TEXT NOT NULL,"
    " payload BLOB NOT NULL,"
    " size INTEGER NOT NULL,"
    " created_ms INTEGER NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " next_attempt_ms INTEGER NOT NULL);"
    "CREATE INDEX outbox_order ON outbox(class, id);"
    "CREATE INDEX outbox_next ON outbox(next_attempt_ms);"
    "CREATE TABLE outbox_meta(name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
    // 9: how a risk step-up's second verification ended (phase 'step_up': the factor given, or
    // none in time), beside the decisions that asked it. SQLite cannot change a CHECK: rebuilt.
    "CREATE TABLE risk_decisions_v9("
    " txn_id TEXT NOT NULL,"
    " phase TEXT NOT NULL CHECK(phase IN ('authorize','capture','step_up')),"
    " verdict TEXT NOT NULL CHECK(verdict IN ('allow','step_up','deny')),"
    " answers TEXT NOT NULL,"
    " decided_ms INTEGER NOT NULL,"
    " PRIMARY KEY(txn_id, phase));"
    "INSERT INTO risk_decisions_v9(txn_id, phase, verdict, answers, decided_ms) SELECT txn_id, phase, verdict, answers, decided_ms FROM risk_decisions;"
    "DROP TABLE risk_decisions;"
    "ALTER TABLE risk_decisions_v9 RENAME TO risk_decisions;",
    // 9 -> 10: the charging mode the driver asked for (full, amount:<fen>, energy:<Wh>,
    // time:<s>s), so a receipt and a recovered session's ledger record say it too. '' for rows
    // written before.
    "ALTER TABLE transactions ADD COLUMN mode TEXT NOT NULL DEFAULT '';",
    // 10 -> 11: the tariff each transaction started with (tariff_repository.hpp), so a reload or
    // an upgrade with new prices bills a session in progress, recovered or resumed at its own.
    "CREATE TABLE tariffs(digest TEXT PRIMARY KEY, document TEXT NOT NULL, first_used_ms INTEGER NOT NULL);"
    "CREATE TABLE transaction_tariffs(txn_id TEXT PRIMARY KEY REFERENCES transactions(id), digest TEXT NOT NULL REFERENCES tariffs(digest));",
    // 11 -> 12: sessions a planned stop suspended (charging.on_planned_stop): the transaction stays
    // open, its hold neither captured nor released, and the next start resumes it. The row goes
    // with the transaction's close.
    "CREATE TABLE suspended_sessions(txn_id TEXT PRIMARY KEY REFERENCES transactions(id), suspended_ms INTEGER NOT NULL, meter_wh INTEGER NOT NULL);",
    // 12 -> 13: the uplink records plugins hand the core (Host::upload, SDK 2.4;
    // plugin_upload_repository.hpp): each key's owner (the instance that uploaded it first) and
    // whether the back end has acknowledged it, which the outbox forgets with the record.
    "CREATE TABLE plugin_uploads("
    " key TEXT PRIMARY KEY,"
    " instance TEXT NOT NULL,"
    " kind TEXT NOT NULL,"
    " state TEXT NOT NULL CHECK(state IN ('waiting','acknowledged')),"
    " created_ms INTEGER NOT NULL,"
    " acknowledged_ms INTEGER);",
};
}  // namespace

Database::Database(const std::filesystem::path& path, ReadOnly) : path_(path) {
  // No migration and no journal-mode change: a reader must work while the writer holds the
  // database, and must not create a file that is not there.
  if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    throw std::runtime_error(fmt::format("{}: cannot open the database for reading: {}", path.string(), msg));
  }
  sqlite3_busy_timeout(db_, 5000);
}

Database::Database(const std::filesystem::path& path) : path_(path) {
  std::error_code ec;
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), ec);
  // Owner-only whatever the umask: SQLite creates the database 0644 less the umask, and gives
  // the -wal and -shm files the database's mode, so a 0600 database file made first covers all
  // three. Older -wal/-shm files are tightened as well.
  try {
    ensure_private_file(path);
    for (const char* suffix : {"-wal", "-shm"}) {
      const std::filesystem::path side = path.string() + suffix;
      if (std::filesystem::exists(side, ec)) ensure_private_file(side);
    }
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("{}: cannot open the database: {}", path.string(), e.what()));
  }
  if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    throw std::runtime_error(fmt::format("{}: cannot open the database: {}", path.string(), msg));
  }
  sqlite3_busy_timeout(db_, 5000);
  try {
    exec("PRAGMA journal_mode=WAL");
    exec("PRAGMA synchronous=FULL");
    exec("PRAGMA foreign_keys=ON");
    const int have = schema_version();
    const int want = static_cast<int>(std::size(migrations));
    if (have > want) {
      throw std::runtime_error(fmt::format("{}: database schema version {} is newer than this pilecore understands ({}); "
                                           "install the newer pilecore again or restore a backup", path.string(), have, want));
    }
    for (int v = have; v < want; ++v) {
      exec("BEGIN IMMEDIATE");
      try {
        exec(migrations[v]);
        exec(fmt::format("PRAGMA user_version={}", v + 1));
        exec("COMMIT");
      } catch (...) {
        sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
        throw;
      }
    }
  } catch (...) {
    sqlite3_close(db_);
    db_ = nullptr;
    throw;
  }
}

Database::~Database() {
  for (auto& [sql, st] : prepared_) sqlite3_finalize(st);
  // close_v2: statements others still hold on this connection (the ledger's, owned by
  // pilecored's main) do not make the close fail and leak it; it completes when they are
  // finalised. (LeakSanitizer found the leak with sqlite3_close.)
  sqlite3_close_v2(db_);
}

sqlite3_stmt* Database::prepared(const std::string& sql) {
  if (auto it = prepared_.find(sql); it != prepared_.end()) return it->second;
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v3(db_, sql.c_str(), -1, SQLITE_PREPARE_PERSISTENT, &st, nullptr) != SQLITE_OK) {
    throw std::runtime_error(sql + ": " + sqlite3_errmsg(db_));
  }
  prepared_.emplace(sql, st);
  return st;
}

void Database::exec(const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errmsg(db_);
    sqlite3_free(err);
    // No implicit ROLLBACK here: inside the storage thread's group commit that would undo the
    // other works of the group; whoever opened the transaction (or savepoint) rolls it back.
    throw std::runtime_error(fmt::format("{}: {}", path_.string(), msg));
  }
}

int Database::schema_version() const {
  sqlite3_stmt* st = nullptr;
  int v = 0;
  if (sqlite3_prepare_v2(db_, "PRAGMA user_version", -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int(st, 0);
  sqlite3_finalize(st);
  return v;
}

void Database::record_boot(const std::string& started_at, const std::string& version, const std::string& site_id) {
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db_, "INSERT INTO boots(started_at, version, site_id) VALUES(?,?,?)", -1, &st, nullptr) != SQLITE_OK) {
    throw std::runtime_error(fmt::format("{}: {}", path_.string(), sqlite3_errmsg(db_)));
  }
  sqlite3_bind_text(st, 1, started_at.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 2, version.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 3, site_id.c_str(), -1, SQLITE_TRANSIENT);
  const int rc = sqlite3_step(st);
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) throw std::runtime_error(fmt::format("{}: {}", path_.string(), sqlite3_errmsg(db_)));
}

}  // namespace pilecore::core
