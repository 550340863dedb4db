// A prepared SQLite statement for a plugin's own state database; errors throw with the
// database's name in front ("dcep.db: database is locked").
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>

namespace pilecore::plugins {

class SqliteStmt {
 public:
  SqliteStmt(sqlite3* db, const char* sql, const char* what) : db_(db), what_(what) {
    if (sqlite3_prepare_v2(db, sql, -1, &s_, nullptr) != SQLITE_OK) fail();
  }
  ~SqliteStmt() { sqlite3_finalize(s_); }
  SqliteStmt(const SqliteStmt&) = delete;
  SqliteStmt& operator=(const SqliteStmt&) = delete;

  SqliteStmt& bind(int i, std::int64_t v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  SqliteStmt& bind(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  SqliteStmt& bind(int i, std::span<const std::uint8_t> v) {
    sqlite3_bind_blob(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  /// true: a row; false: done.
  bool step() {
    const int rc = sqlite3_step(s_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    fail();
  }
  std::int64_t i64(int col) { return sqlite3_column_int64(s_, col); }
  std::string text(int col) {
    const auto* p = sqlite3_column_text(s_, col);
    return p == nullptr ? std::string() : std::string(reinterpret_cast<const char*>(p), static_cast<std::size_t>(sqlite3_column_bytes(s_, col)));
  }
  bool null(int col) { return sqlite3_column_type(s_, col) == SQLITE_NULL; }

 private:
  [[noreturn]] void fail() { throw std::runtime_error(std::string(what_) + ": " + sqlite3_errmsg(db_)); }

  sqlite3* db_;
  const char* what_;
  sqlite3_stmt* s_ = nullptr;
};

/// Opens the plugin's existing database `file` read-write, serialised (SQLITE_OPEN_FULLMUTEX):
/// the plugin's thread and a pilectl command may share it. Throws "cannot open the <what> <file>:
/// <reason>" and leaves nothing open.
inline sqlite3* open_plugin_db(const std::string& file, const std::string& what) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(file.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, nullptr) != SQLITE_OK) {
    const std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    throw std::runtime_error("cannot open the " + what + " " + file + ": " + msg);
  }
  return db;
}

/// Runs `sql` (statements without results); throws "<what> <file>: <error>".
inline void exec_plugin_sql(sqlite3* db, const char* sql, const std::string& what, const std::string& file) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errmsg(db);
    sqlite3_free(err);
    throw std::runtime_error(what + " " + file + ": " + msg);
  }
}

}  // namespace pilecore::plugins
