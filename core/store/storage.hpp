// The SQLite database under the state directory: WAL mode, synchronous=FULL, so a row that
// records money or energy is on disk before the action it records takes effect.
#pragma once

#include <sqlite3.h>

#include <filesystem>
#include <map>
#include <string>

namespace pilecore::core {

class Database {
 public:
  /// Opens (creating when missing) and migrates the database; throws std::runtime_error with
  /// the path and SQLite's message on failure.
  explicit Database(const std::filesystem::path& path);
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

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

 private:
  std::filesystem::path path_;
  sqlite3* db_ = nullptr;
  std::map<std::string, sqlite3_stmt*, std::less<>> prepared_;
};

}  // namespace pilecore::core
