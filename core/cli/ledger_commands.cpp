#include "ledger_commands.hpp"

#include <fmt/format.h>
#include <grp.h>
#include <pwd.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <optional>
#include <vector>

#include "ledger.hpp"
#include "ledger_anchor.hpp"
#include "statement.hpp"

namespace pilecore::core {
namespace fs = std::filesystem;

namespace {

struct DbFree {
  void operator()(sqlite3* db) const noexcept { sqlite3_close(db); }
};

bool table_exists(sqlite3* db, const char* name) {
  Stmt s(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?");
  s.bind(1, std::string_view(name));
  return s.step();
}

bool has_column(sqlite3* db, const char* table, const char* column) {
  Stmt s(db, "SELECT 1 FROM pragma_table_info(?) WHERE name = ?");
  s.bind(1, std::string_view(table)).bind(2, std::string_view(column));
  return s.step();
}

// The cross-check needs the daemon's schema: a ledger with entries (version 3) and the
// transactions table the session engine writes. An older or foreign database is verified as a
// chain only.
bool has_transactions(sqlite3* db) {
  return table_exists(db, "transactions") && has_column(db, "ledger", "entry") && has_column(db, "transactions", "connector") &&
         has_column(db, "transactions", "captured_fen");
}

// The anchor as the database itself recorded it (outbox_meta), when it has the table.
std::optional<std::int64_t> backend_ledger_seq(sqlite3* db) {
  if (!table_exists(db, "outbox_meta")) return std::nullopt;
  Stmt s(db, "SELECT value FROM outbox_meta WHERE name='backend_ledger_seq'");
  if (!s.step()) return std::nullopt;
  return s.i64(0);
}

}  // namespace

namespace {

std::string user_name(uid_t uid) {
  const passwd* pw = ::getpwuid(uid);
  return pw != nullptr ? std::string(pw->pw_name) : std::to_string(uid);
}

std::string group_name(gid_t gid) {
  const group* gr = ::getgrgid(gid);
  return gr != nullptr ? std::string(gr->gr_name) : std::to_string(gid);
}

bool all_digits(const std::string& s) { return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos; }

/// The directories that do not exist yet on the way to `file`, outermost first.
std::vector<fs::path> missing_parents(const fs::path& file) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (fs::path p = fs::absolute(file, ec).parent_path(); !p.empty() && !fs::exists(p, ec); p = p.parent_path()) {
    out.insert(out.begin(), p);
    if (p == p.root_path()) break;
  }
  return out;
}

}  // namespace

std::optional<FileOwner> resolve_key_owner(const std::string& spec, const fs::path& state_dir, const std::string& daemon_user) {
  FileOwner owner;
  if (!spec.empty()) {
    const auto colon = spec.find(':');
    const std::string user = spec.substr(0, colon), grp = colon == std::string::npos ? std::string() : spec.substr(colon + 1);
    const passwd* pw = all_digits(user) ? ::getpwuid(static_cast<uid_t>(std::stoul(user))) : ::getpwnam(user.c_str());
    if (pw == nullptr && !all_digits(user)) throw std::runtime_error(fmt::format("--owner {}: no user '{}' on this system", spec, user));
    owner.uid = pw != nullptr ? pw->pw_uid : static_cast<uid_t>(std::stoul(user));
    owner.gid = pw != nullptr ? pw->pw_gid : owner.uid;
    if (!grp.empty()) {
      const group* gr = all_digits(grp) ? ::getgrgid(static_cast<gid_t>(std::stoul(grp))) : ::getgrnam(grp.c_str());
      if (gr == nullptr && !all_digits(grp)) throw std::runtime_error(fmt::format("--owner {}: no group '{}' on this system", spec, grp));
      owner.gid = gr != nullptr ? gr->gr_gid : static_cast<gid_t>(std::stoul(grp));
    }
  } else {
    struct stat st {};
    if (::stat(state_dir.c_str(), &st) != 0) {
      // No directory to ask. Without the package's user the daemon runs as whoever runs this
      // (a developer, a test, root on a bench): the files are theirs. With it, a key only root
      // can read would stop the packaged daemon at start-up: say what to run instead.
      if (::geteuid() != 0 || ::getpwnam(daemon_user.c_str()) == nullptr) return std::nullopt;
      throw std::runtime_error(fmt::format(
          "keys init as root: the state directory {0} does not exist, so the key would be root's alone and pilecored, which runs as "
          "{1}, could not read it. Give the owner: pilectl keys init --owner {1} ..., or create the directory for that user first: "
          "install -d -o {1} -g {1} -m 0750 {0}",
          state_dir.string(), daemon_user));
    }
    owner.uid = st.st_uid;
    owner.gid = st.st_gid;
  }
  owner.name = user_name(owner.uid) + ":" + group_name(owner.gid);
  if (owner.uid == ::geteuid() && owner.gid == ::getegid()) return std::nullopt;
  if (::geteuid() != 0) {
    throw std::runtime_error(fmt::format("the key must belong to {0}, who runs pilecored, and only root can give it away: run it as that user "
                                         "(sudo -u {1} pilectl keys init ...) or as root",
                                         owner.name, user_name(owner.uid)));
  }
  return owner;
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
  std::vector<fs::path> made;
  for (const auto& p : {options.key, options.certificate}) {
    for (auto& d : missing_parents(p)) {
      if (std::find(made.begin(), made.end(), d) == made.end()) made.push_back(d);
    }
  }
  try {
    const Identity id = generate_identity(options.algorithm, options.key, options.certificate, options.common_name, options.organization,
                                          options.validity_days);
    const VerifyingKey cert(id.certificate_path);
    if (options.owner) {
      // pilecored runs as its own user: a key only root can read stops it at start-up.
      for (const fs::path& p : made) {
        if (::chown(p.c_str(), options.owner->uid, options.owner->gid) != 0) {
          throw std::runtime_error(fmt::format("{}: cannot give it to {}: {}", p.string(), options.owner->name, std::strerror(errno)));
        }
      }
      for (const fs::path& p : {id.key_path, id.certificate_path}) {
        if (::chown(p.c_str(), options.owner->uid, options.owner->gid) != 0) {
          throw std::runtime_error(fmt::format("{}: cannot give it to {}: {}", p.string(), options.owner->name, std::strerror(errno)));
        }
      }
    }
    out << fmt::format("key:         {} ({}, mode 0600)\n", id.key_path.string(), to_string(options.algorithm));
    out << fmt::format("certificate: {} (self-signed, {}, valid {} days)\n", id.certificate_path.string(), cert.subject(), options.validity_days);
    out << fmt::format("SHA-256 fingerprint: {}\n", id.fingerprint);
    if (options.owner) out << fmt::format("owner:       {} (the user pilecored runs as)\n", options.owner->name);
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
    // The chain holds; now what it cannot see by itself: the back end's anchor (a truncated
    // tail, an emptied table, an older copy of the database) and the receipt-facing rows.
    std::optional<LedgerAnchor> anchor;
    try {
      anchor = read_anchor(anchor_path(db_path));
    } catch (const std::exception& e) {
      err << fmt::format("ledger BROKEN: {}\n", e.what());
      return 1;
    }
    if (const auto acked = backend_ledger_seq(db.get()); acked && (!anchor || anchor->seq < *acked)) {
      // The database's own copy of the ack (outbox_meta) is ahead of the file: the file was
      // removed or replaced. Its figure is still an acknowledged fact.
      anchor = LedgerAnchor{*acked, {}};
    }
    if (anchor) {
      if (const auto problem = check_anchor(db.get(), *anchor)) {
        err << fmt::format("ledger BROKEN: {} ({} records in {}, anchor {})\n", *problem, check.record_count, db_path.string(),
                           anchor_path(db_path).string());
        return 1;
      }
    }
    if (has_transactions(db.get())) {
      if (const auto problem = check_transactions(db.get())) {
        err << fmt::format("ledger BROKEN: {} ({})\n", *problem, db_path.string());
        return 1;
      }
    }
    out << check.message << "\n";
    if (anchor) {
      out << fmt::format("anchored: the back end holds records up to seq {}, and this ledger agrees\n", anchor->seq);
    } else {
      out << "not anchored: the back end has acknowledged no ledger record yet, so removed newest records or an older copy of the database "
             "cannot be detected here\n";
    }
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
