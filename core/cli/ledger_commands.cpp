#include "ledger_commands.hpp"

#include <fmt/format.h>
#include <sqlite3.h>

#include <optional>

#include "ledger.hpp"

namespace pilecore::core {
namespace fs = std::filesystem;

namespace {

struct DbFree {
  void operator()(sqlite3* db) const noexcept { sqlite3_close(db); }
};

}  // namespace

int keys_init(const IdentityOptions& options, std::ostream& out, std::ostream& err) {
  if (options.common_name.empty()) {
    err << "pilectl: keys init needs the certificate's common name: the pile's serial number or the site id\n";
    return 1;
  }
  if (!options.force) {
    for (const auto& p : {options.key, options.certificate}) {
      std::error_code ec;
      if (fs::exists(p, ec)) {
        err << fmt::format("pilectl: {} exists; not replacing it (use --force: the old key then signs nothing more, and a new "
                           "certificate must be registered with the operator)\n",
                           p.string());
        return 1;
      }
    }
  }
  try {
    const Identity id = generate_identity(options.algorithm, options.key, options.certificate, options.common_name, options.organization,
                                          options.validity_days);
    const VerifyingKey cert(id.certificate_path);
    out << fmt::format("key:         {} ({}, mode 0600)\n", id.key_path.string(), to_string(options.algorithm));
    out << fmt::format("certificate: {} (self-signed, {}, valid {} days)\n", id.certificate_path.string(), cert.subject(), options.validity_days);
    out << fmt::format("SHA-256 fingerprint: {}\n", id.fingerprint);
    return 0;
  } catch (const std::exception& e) {
    err << "pilectl: " << e.what() << "\n";
    return 1;
  }
}

int ledger_verify(const fs::path& db_path, const fs::path& certificate_path, std::ostream& out, std::ostream& err, VerifyOptions options) {
  std::error_code ec;
  if (!fs::is_regular_file(db_path, ec)) {
    err << fmt::format("pilectl: {}: no such database\n", db_path.string());
    return 2;
  }
  std::optional<VerifyingKey> key;
  try {
    key.emplace(certificate_path);
  } catch (const std::exception& e) {
    err << "pilectl: " << e.what() << "\n";
    return 2;
  }
  sqlite3* raw = nullptr;
  const int rc = sqlite3_open_v2(db_path.c_str(), &raw, SQLITE_OPEN_READONLY, nullptr);
  const std::unique_ptr<sqlite3, DbFree> db(raw);
  if (rc != SQLITE_OK) {
    err << fmt::format("pilectl: {}: cannot open the database: {}\n", db_path.string(), raw ? sqlite3_errmsg(raw) : "out of memory");
    return 2;
  }
  sqlite3_busy_timeout(db.get(), 5000);
  sqlite3_stmt* st = nullptr;
  bool has_table = false;
  if (sqlite3_prepare_v2(db.get(), "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ledger'", -1, &st, nullptr) == SQLITE_OK) {
    has_table = sqlite3_step(st) == SQLITE_ROW;
  }
  sqlite3_finalize(st);
  if (!has_table) {
    err << fmt::format("pilectl: {}: no ledger table in this database\n", db_path.string());
    return 2;
  }
  const LedgerCheck check = Ledger::verify(db.get(), *key, options);
  if (check.ok) {
    out << check.message << "\n";
    return 0;
  }
  if (check.first_bad_seq == 0) {  // the walk itself failed
    err << fmt::format("pilectl: {}: {}\n", db_path.string(), check.message);
    return 2;
  }
  err << fmt::format("ledger BROKEN: {} ({} records in {}, checked against {}, SHA-256 fingerprint {})\n", check.message, check.record_count,
                     db_path.string(), certificate_path.string(), key->fingerprint());
  return 1;
}

}  // namespace pilecore::core
