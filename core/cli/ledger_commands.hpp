// `pilectl keys init` and `pilectl ledger verify`.
// The functions print to the streams they are given and return the exit code, so pilectl only
// parses options and the tests call them directly.
#pragma once

#include <yaml-cpp/yaml.h>

#include <sys/types.h>

#include <filesystem>
#include <optional>
#include <ostream>
#include <string>

#include "crypto.hpp"
#include "identity_config.hpp"
#include "ledger.hpp"

namespace pilecore::core {

/// A user (and group) that must be able to read the device key: the one pilecored runs as.
struct FileOwner {
  uid_t uid = 0;
  gid_t gid = 0;
  std::string name;  // "pilecore:pilecore", for messages
};

/// Whom `pilectl keys init` makes the key for. `spec` is --owner ("user" or "user:group", names
/// or numbers; empty = not given). Without it, the owner of `state_dir`, the daemon's own
/// directory (the package makes /var/lib/pilecore for user pilecore). Returns nullopt when the
/// files can simply belong to whoever runs pilectl (that is the owner; also when there is no
/// state directory yet and no `daemon_user` on this system). Throws std::runtime_error with the
/// command to run instead when the right owner is not known (as root, with no state directory
/// yet, no --owner, and a `daemon_user` account that the daemon would run as) or cannot be
/// given (not root, and the owner is someone else).
std::optional<FileOwner> resolve_key_owner(const std::string& spec, const std::filesystem::path& state_dir,
                                           const std::string& daemon_user = "pilecore");

struct IdentityOptions {
  std::filesystem::path key = "identity/device.key";  // a file: keys init makes files, not TPM keys
  std::filesystem::path certificate = "identity/device.crt";
  KeyAlgorithm algorithm = KeyAlgorithm::ecdsa_p256;
  std::string common_name;  // required: the pile's serial number, or the site id
  std::string organization = "pilecore";
  int validity_days = 730;
  bool force = false;  // replace existing files
  std::optional<FileOwner> owner;  // chown the key, the certificate and any directory made for them
};

/// Makes a development key and self-signed certificate. Exit 0 printing the paths, the subject
/// and the certificate's SHA-256 fingerprint; 1 when a file exists and !force (naming it, and
/// --force), or on any failure (the message names the file and carries OpenSSL's reason). With
/// an owner, the files (and the directories made for them) are given to it, and a line says so.
int keys_init(const IdentityOptions& options, std::ostream& out, std::ostream& err);

/// Verifies the ledger in the database at `db_path` (opened read-only: nothing is created or
/// migrated) against the certificate. Exit 0 with "ledger OK: N records, chain intact, all
/// signatures valid"; 1 with "ledger BROKEN: seq S (txn T): ..." naming the first bad record;
/// 2 when the check cannot run (no database, no ledger table, unreadable certificate).
/// Unsigned rows (the signer had not written their signatures yet) fail the check unless
/// options.accept_unsigned_tail and they are only the newest tail; the OK line then says how many
/// records are not covered by a signature (ledger.hpp).
/// Then what the chain cannot see by itself (ledger_anchor.hpp): exit 1 when the ledger ends
/// before the seq the back end acknowledged (`<database>.anchor`, or the database's own copy of
/// the ack when higher) or its hash there differs, when the anchor file is malformed, and when a
/// `transactions` row disagrees with its signed record. The OK line says whether an anchor was
/// checked.
int ledger_verify(const std::filesystem::path& db_path, const std::filesystem::path& certificate_path, std::ostream& out, std::ostream& err,
                  VerifyOptions options = {});

}  // namespace pilecore::core
