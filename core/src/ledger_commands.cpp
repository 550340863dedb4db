#include "ledger_commands.hpp"

#include <fmt/format.h>
#include <sqlite3.h>

#include <optional>
#include <regex>

#include "ledger.hpp"

namespace pilecore::core {
namespace fs = std::filesystem;

namespace {

Field key_field(std::string key, FieldType type, std::string description, std::string default_value) {
  Field f;
  f.key = std::move(key);
  f.type = type;
  f.description = std::move(description);
  f.default_value = std::move(default_value);
  return f;
}

std::string scalar_or(const YAML::Node& section, const char* key, std::string fallback) {
  if (!section || !section.IsMap()) return fallback;
  const YAML::Node n = section[key];
  return n && n.IsScalar() ? n.Scalar() : fallback;
}

struct DbFree {
  void operator()(sqlite3* db) const noexcept { sqlite3_close(db); }
};

}  // namespace

Field identity_schema() {
  Field algorithm = key_field("algorithm", FieldType::enumeration, "Signature algorithm of the device key: ECDSA P-256 with SHA-256, or SM2 with SM3",
                              "ecdsa-p256");
  algorithm.allowed = {"ecdsa-p256", "sm2"};
  Field hash = key_field("hash", FieldType::enumeration, "Hash of the ledger's chain", "sha256");
  hash.allowed = {"sha256", "sm3"};
  Field organization = key_field("operator", FieldType::string, "The operator's name: O= of the certificate `pilectl keys init` makes", "pilecore");
  organization.pattern = ".{1,64}";
  organization.pattern_hint = "use 1 to 64 characters";
  Field f;
  f.key = "identity";
  f.type = FieldType::object;
  f.description = "The device's key and certificate, which sign every ledger record";
  f.fields = {key_field("key", FieldType::string,
                        "Private key: a PEM file (a relative path is under the state directory) or an OSSL_STORE URI of a key in a "
                        "TPM 2.0 or secure element, e.g. handle:0x81000001, whose OpenSSL provider is configured in openssl.cnf",
                        "identity/device.key"),
              key_field("certificate", FieldType::string, "The device certificate (PEM); a relative path is under the state directory",
                        "identity/device.crt"),
              algorithm, hash, organization};
  return f;
}

IdentityConfig identity_config(const YAML::Node& section) {
  IdentityConfig c;
  c.key = scalar_or(section, "key", c.key);
  c.certificate = scalar_or(section, "certificate", c.certificate);
  c.algorithm = parse_key_algorithm(scalar_or(section, "algorithm", "ecdsa-p256")).value_or(KeyAlgorithm::ecdsa_p256);
  c.hash = parse_hash_algorithm(scalar_or(section, "hash", "sha256")).value_or(HashAlgorithm::sha256);
  c.organization = scalar_or(section, "operator", c.organization);
  return c;
}

std::string resolve_identity_location(const std::string& location, const fs::path& state_dir) {
  static const std::regex uri("[A-Za-z][A-Za-z0-9+.-]*:.*");
  std::error_code ec;
  const fs::path p(location);
  if (p.is_absolute()) return location;
  if (std::regex_match(location, uri) && !fs::exists(state_dir / p, ec)) return location;
  return (state_dir / p).string();
}

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

int ledger_verify(const fs::path& db_path, const fs::path& certificate_path, std::ostream& out, std::ostream& err) {
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
  const LedgerCheck check = Ledger::verify(db.get(), *key);
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
