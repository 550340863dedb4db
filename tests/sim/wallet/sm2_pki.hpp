// A test PKI made with OpenSSL SM2 (EVP): keys, CA and end-entity certificates signed with SM2
// over SM3 with the default user id "1234567812345678", with the validity window the test
// chooses (so an expired certificate is one line). For the e-CNY wallet simulator and its tests;
// nothing here is used by production code.
#pragma once

#include <openssl/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace pilecore::sim {

struct PkeyDeleter {
  void operator()(EVP_PKEY* p) const noexcept;
};
struct X509Deleter {
  void operator()(X509* p) const noexcept;
};
using Pkey = std::shared_ptr<EVP_PKEY>;
using Cert = std::shared_ptr<X509>;

/// A new SM2 key pair (curve SM2, GB/T 32918).
Pkey make_sm2_key();

struct CertSpec {
  std::string common_name;
  std::chrono::system_clock::time_point not_before;
  std::chrono::system_clock::time_point not_after;
  bool ca = false;
  std::int64_t serial = 1;
};

/// A certificate for `subject_key`, signed by `issuer_key` (issuer name from `issuer`; null
/// issuer: self-signed).
Cert make_certificate(const CertSpec& spec, const Pkey& subject_key, const Cert& issuer, const Pkey& issuer_key);

std::vector<std::uint8_t> to_der(const Cert& cert);
std::string to_pem(const Cert& cert);
std::string to_pem(const Pkey& private_key);
/// Writes `pem` into `file` (created or replaced).
void write_file(const std::filesystem::path& file, const std::string& pem);

}  // namespace pilecore::sim
