// Trust in a wallet: its certificate chains to the configured root (X509_verify_cert with a
// store, at the host clock's time), names the wallet (subject CN = wallet id), and its SM2 key
// signed the voucher (EVP_DigestVerify, SM3, the SM2 user id "1234567812345678" set explicitly).
// Immutable after construction; verify_* may run on any thread at once.
#pragma once

#include <openssl/types.h>

#include <ctime>
#include <memory>
#include <optional>
#include <string>

#include "wallet_protocol.hpp"

struct stack_st_X509;  // STACK_OF(X509)

namespace dcep {

class Trust {
 public:
  /// Throws std::runtime_error naming the file when a file cannot be read or holds no certificate.
  Trust(const std::string& root_file, const std::string& issuer_file);
  ~Trust();
  Trust(const Trust&) = delete;
  Trust& operator=(const Trust&) = delete;

  /// Null when the DER certificate chains to the root at `now` and is the certificate of
  /// `wallet_id`; otherwise why not.
  [[nodiscard]] std::optional<std::string> verify_certificate(ByteView der, const std::string& wallet_id, std::time_t now) const;
  /// Whether `signature` is the SM2/SM3 signature of `message` by the key in the DER certificate.
  [[nodiscard]] bool verify_signature(ByteView der, ByteView message, ByteView signature) const;

  /// The certificates in a PEM file; throws when there is none or it cannot be read.
  static std::size_t count_certificates(const std::string& file);

 private:
  X509_STORE* store_ = nullptr;
  stack_st_X509* issuers_ = nullptr;
};

/// SM3 of `bytes`.
Bytes sm3(ByteView bytes);
/// `n` random bytes (RAND_bytes); throws when the generator fails.
Bytes random_bytes(std::size_t n);

}  // namespace dcep
