// The SQLite database under the state directory: WAL mode, synchronous=FULL, so a row that
// records money or energy is on disk before the action it records takes effect.
//
// Threads: a Database is one SQLite connection opened NOMUTEX, so it is used by one thread at a
// time. In the daemon the writer belongs to the storage thread (StoreWorker) once that starts;
// code on the core's strand reads through a second connection opened with ReadOnly, which WAL
// lets read the last committed state while the storage thread writes.
#pragma once

#include <sqlite3.h>

#include <filesystem>
#include <map>
#include <string>
#include <utility>

#include "outbox_limits.hpp"
#include "pilecore/clock.hpp"

namespace pilecore::core {

class Database {
 public:
  /// Opens (creating when missing) and migrates the database; throws std::runtime_error with
  /// the path and SQLite's message on failure.
  explicit Database(const std::filesystem::path& path);
  /// Opens an existing, already migrated database read-only (no migration, no file created);
  /// throws std::runtime_error with the path and SQLite's message when it cannot.
  struct ReadOnly {};
  Database(const std::filesystem::path& path, ReadOnly);
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  /// Runs `sql`; throws std::runtime_error with the path and SQLite's message. Never rolls back
  /// on its own: the code that began the transaction does.
  void exec(const std::string& sql);
  [[nodiscard]] int schema_version() const;
  [[nodiscard]] sqlite3* handle() const { return db_; }
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

  /// Records a daemon start (device management wants the boot history).
  void record_boot(const std::string& started_at, const std::string& version, const std::string& site_id);

  /// The statement for `sql`, compiled at its first use and kept until the database closes
  /// (compiling an INSERT costs more than running it). The caller resets it after use and must
  /// not use the same SQL twice at once. Throws std::runtime_error naming the SQL.
  sqlite3_stmt* prepared(const std::string& sql);

  /// The uplink outbox's settings for writers on this connection: once enabled, every state
  /// change that the back end must learn of enqueues its record (enqueue_uplink in outbox.hpp)
  /// in the same transaction. `clock` must outlive the Database. Set before the storage thread
  /// takes the connection.
  struct Uplink {
    OutboxLimits limits;
    const Clock* clock = nullptr;
  };
  void enable_uplink(OutboxLimits limits, const Clock& clock) { uplink_ = Uplink{limits, &clock}; }
  [[nodiscard]] const Uplink* uplink() const { return uplink_.clock != nullptr ? &uplink_ : nullptr; }
  /// A record was enqueued on this connection (enqueue_uplink); the storage thread takes the
  /// mark after each commit (take_enqueued) and tells the sender, so a record a money operation
  /// or a ledger append committed leaves at once, not at the sender's next timer.
  void note_enqueued() { enqueued_ = true; }
  [[nodiscard]] bool take_enqueued() { return std::exchange(enqueued_, false); }

 private:
  std::filesystem::path path_;
  sqlite3* db_ = nullptr;
  std::map<std::string, sqlite3_stmt*, std::less<>> prepared_;
  Uplink uplink_;
  bool enqueued_ = false;
};

}  // namespace pilecore::core
