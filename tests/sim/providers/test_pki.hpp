// Certificates made by the test, with OpenSSL 3 (EVP, ECDSA P-256): a CA and a server
// certificate for 127.0.0.1 and localhost signed by it, written as PEM files.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace pilecore::sim {

struct TestPki {
  std::filesystem::path ca_cert;      ///< the CA's certificate: what a client trusts
  std::filesystem::path server_cert;  ///< the server's certificate (leaf only)
  std::filesystem::path server_key;
};

/// Makes a CA called `ca_name` and a server certificate with the subject alternative names
/// `names` (IP addresses and DNS names; default 127.0.0.1 and localhost), valid from an hour
/// ago for a day, in `dir` (files prefixed with `prefix`). Throws std::runtime_error on failure.
TestPki make_test_pki(const std::filesystem::path& dir, const std::string& prefix = "provider", const std::string& ca_name = "pilecore test CA",
                      const std::vector<std::string>& names = {"127.0.0.1", "localhost"});

}  // namespace pilecore::sim
