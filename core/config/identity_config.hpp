// The site file's `identity` section: the device key and certificate the ledger is signed with.
#pragma once

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <string>

#include "crypto.hpp"
#include "schema.hpp"

namespace pilecore::core {

/// The site file's `identity` section:
///   identity:
///     key: identity/device.key          # a path (relative: under the state directory) or an
///                                       # OSSL_STORE URI such as "handle:0x81000001"
///     certificate: identity/device.crt  # PEM; relative: under the state directory
///     algorithm: ecdsa-p256             # or sm2
///     hash: sha256                      # the ledger chain's hash, or sm3
///     operator: pilecore                # O= of the certificate keys init makes
Field identity_schema();

/// The `identity` section's values, defaults filled in.
struct IdentityConfig {
  std::string key = "identity/device.key";
  std::string certificate = "identity/device.crt";
  KeyAlgorithm algorithm = KeyAlgorithm::ecdsa_p256;
  HashAlgorithm hash = HashAlgorithm::sha256;
  std::string organization = "pilecore";
};

/// Reads a validated `identity` section (an undefined or null node gives the defaults).
IdentityConfig identity_config(const YAML::Node& section);

/// A key or certificate location from the site file, made usable: an OSSL_STORE URI ("scheme:..."
/// that is not an existing relative file) and absolute paths are kept; relative paths are taken
/// under `state_dir`.
std::string resolve_identity_location(const std::string& location, const std::filesystem::path& state_dir);

}  // namespace pilecore::core
