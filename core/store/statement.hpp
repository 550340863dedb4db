// The one prepared-statement wrapper every repository uses: bind by position, step, read columns;
// any SQLite error throws std::runtime_error naming the SQL and SQLite's message.
#pragma once

#include <fmt/format.h>
#include <sqlite3.h>

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "storage.hpp"

namespace pilecore::core {

class Stmt {
 public:
  /// A statement compiled for this use only (for connections without a statement cache).
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &st_, nullptr) != SQLITE_OK) throw std::runtime_error(fmt::format("{}: {}", sql, sqlite3_errmsg(db)));
  }
  /// The database's cached statement for `sql`: reset and unbound again when done.
  Stmt(Database& db, const char* sql) : db_(db.handle()), st_(db.prepared(sql)), cached_(true) {}
  ~Stmt() {
    if (cached_) {
      sqlite3_reset(st_);
      sqlite3_clear_bindings(st_);
    } else {
      sqlite3_finalize(st_);
    }
  }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  Stmt& bind(int i, std::int64_t v) {
    sqlite3_bind_int64(st_, i, v);
    return *this;
  }
  Stmt& bind(int i, std::string_view v) {
    sqlite3_bind_text(st_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& bind(int i, const std::string& v) { return bind(i, std::string_view(v)); }
  Stmt& bind(int i, const char* v) { return bind(i, std::string_view(v)); }
  Stmt& bind_blob(int i, std::span<const std::uint8_t> v) {
    // A zero-length blob must still be a blob, not NULL: SQLite takes a null pointer as NULL.
    static const std::uint8_t empty = 0;
    sqlite3_bind_blob(st_, i, v.empty() ? &empty : v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& bind_null(int i) {
    sqlite3_bind_null(st_, i);
    return *this;
  }
  /// true: a row is ready; false: done.
  bool step() {
    const int rc = sqlite3_step(st_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    throw std::runtime_error(fmt::format("{}: {}", sqlite3_sql(st_), sqlite3_errmsg(db_)));
  }
  [[nodiscard]] std::int64_t i64(int c) const { return sqlite3_column_int64(st_, c); }
  [[nodiscard]] std::string text(int c) const {
    const auto* t = sqlite3_column_text(st_, c);
    return t ? reinterpret_cast<const char*>(t) : "";
  }
  [[nodiscard]] std::vector<std::uint8_t> blob(int c) const {
    const auto* b = static_cast<const std::uint8_t*>(sqlite3_column_blob(st_, c));
    return b ? std::vector<std::uint8_t>(b, b + sqlite3_column_bytes(st_, c)) : std::vector<std::uint8_t>{};
  }
  [[nodiscard]] bool null(int c) const { return sqlite3_column_type(st_, c) == SQLITE_NULL; }

 private:
  sqlite3* db_;
  sqlite3_stmt* st_ = nullptr;
  bool cached_ = false;
};

}  // namespace pilecore::core
