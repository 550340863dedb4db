// `pilectl keys init` and `pilectl ledger verify`.
// The functions print to the streams they are given and return the exit code, so pilectl only
// parses options and the tests call them directly.
#pragma once

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <ostream>
#include <string>

#include "crypto.hpp"
#include "identity_config.hpp"
#include "ledger.hpp"

namespace pilecore::core {

struct IdentityOptions {
  std::filesystem::path key = "identity/device.key";  // a file: keys init makes files, not TPM keys
  std::filesystem::path certificate = "identity/device.crt";
  KeyAlgorithm algorithm = KeyAlgorithm::ecdsa_p256;
  std::string common_name;  // required: the pile's serial number, or the site id
  std::string organization = "pilecore";
  int validity_days = 730;
  bool force = false;  // replace existing files
};

/// Makes a development key and self-signed certificate. Exit 0 printing the paths, the subject
/// and the certificate's SHA-256 fingerprint; 1 when a file exists and !force (naming it, and
/// --force), or on any failure (the message names the file and carries OpenSSL's reason).
int keys_init(const IdentityOptions& options, std::ostream& out, std::ostream& err);

/// Verifies the ledger in the database at `db_path` (opened read-only: nothing is created or
/// migrated) against the certificate. Exit 0 with "ledger OK: N records, chain intact, all
/// signatures valid"; 1 with "ledger BROKEN: seq S (txn T): ..." naming the first bad record;
/// 2 when the check cannot run (no database, no ledger table, unreadable certificate).
/// Unsigned rows (the signer had not written their signatures yet) fail the check unless
/// options.accept_unsigned_tail and they are only the newest tail; the OK line then says how many
/// records are not covered by a signature (ledger.hpp).
int ledger_verify(const std::filesystem::path& db_path, const std::filesystem::path& certificate_path, std::ostream& out, std::ostream& err,
                  VerifyOptions options = {});

}  // namespace pilecore::core
