#include "identity_config.hpp"

#include <fmt/format.h>

#include <regex>

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

}  // namespace pilecore::core
