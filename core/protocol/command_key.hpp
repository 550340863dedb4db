// A public key the back end signs with: its command key, and the firmware-signing key. Read from
// a PEM file holding either a SubjectPublicKeyInfo ("BEGIN PUBLIC KEY") or an X.509 certificate,
// through OpenSSL 3 EVP: ECDSA P-256 with SHA-256, or SM2 with SM3 and the SM2 ID
// "1234567812345678" (the identity section's algorithms, set as core/base/crypto.hpp sets them).
//
// The one part of this layer that reads a file: the site file's check loads the key with it (so
// a wrong key is refused at its line, before anything starts) and the uplink verifies with it.
#pragma once

#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>

#include "frame.hpp"

struct evp_pkey_st;
struct evp_md_ctx_st;

namespace pilecore::core::protocol {

class CommandKey {
 public:
  /// Throws std::runtime_error naming the file when it cannot be read, holds no public key or a
  /// key that is neither P-256 nor SM2.
  explicit CommandKey(const std::filesystem::path& pem);
  ~CommandKey();
  CommandKey(CommandKey&&) noexcept;
  CommandKey& operator=(CommandKey&&) noexcept;

  /// "ecdsa-p256" or "sm2".
  [[nodiscard]] const std::string& algorithm() const { return algorithm_; }
  /// True only for a valid DER signature by this key over `bytes`; never throws for a bad one.
  [[nodiscard]] bool verify(ByteView bytes, ByteView signature) const;

 private:
  struct Free {
    void operator()(evp_pkey_st* p) const noexcept;
    void operator()(evp_md_ctx_st* p) const noexcept;
  };
  std::unique_ptr<evp_pkey_st, Free> key_;
  /// Initialised once (digest fetched, SM2 ID set) and copied per verification.
  std::unique_ptr<evp_md_ctx_st, Free> ready_;
  std::string algorithm_;
};

}  // namespace pilecore::core::protocol
