// Device keys, certificates and digests, all through OpenSSL 3 EVP and providers: ECDSA P-256
// with SHA-256, or SM2 with SM3 (GB/T 32918, GB/T 32905) with the SM2 distinguishing ID
// "1234567812345678" always set explicitly (OpenSSL's default ID has changed between versions).
//
// A private key is named by a *location*: either a file path (PEM, PKCS#8 or traditional) or an
// OSSL_STORE URI such as "file:/var/lib/pilecore/identity/device.key" or, with a provider that
// registers the scheme (tpm2-openssl, a secure element's provider), "handle:0x81000001". The key
// is only ever used as an EVP_PKEY, so moving it into a TPM 2.0 or a secure element is a
// configuration change: load the provider (openssl.cnf or OPENSSL_CONF) and put the URI in the
// site file's `identity.key`.
#pragma once

#include <openssl/types.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace pilecore::core {

using Bytes = std::vector<std::uint8_t>;
using ByteView = std::span<const std::uint8_t>;

/// The bytes of a string, for digest(), sign() and verify().
inline ByteView as_bytes(std::string_view s) { return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()}; }

/// An OpenSSL failure: says what was being done, on which file or URI, and OpenSSL's error
/// queue text (which is drained).
class CryptoError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class HashAlgorithm { sha256, sm3 };
enum class KeyAlgorithm { ecdsa_p256, sm2 };

/// "sha256" | "sm3" (the names used in the site file and in the ledger's hash_alg column).
[[nodiscard]] std::string_view to_string(HashAlgorithm alg);
/// "ecdsa-p256" | "sm2" (the names used in the site file).
[[nodiscard]] std::string_view to_string(KeyAlgorithm alg);
/// "ecdsa-p256-sha256" | "sm2-sm3": the signature scheme of a key (the ledger's sig_alg column).
[[nodiscard]] std::string_view signature_algorithm_name(KeyAlgorithm alg);
[[nodiscard]] std::optional<HashAlgorithm> parse_hash_algorithm(std::string_view name);
[[nodiscard]] std::optional<KeyAlgorithm> parse_key_algorithm(std::string_view name);

/// Digest length in bytes (32 for both).
[[nodiscard]] std::size_t digest_size(HashAlgorithm alg);
/// H(bytes).
[[nodiscard]] Bytes digest(HashAlgorithm alg, ByteView bytes);

/// Lower-case hex; with a separator, upper-case pairs ("AB:CD:..."), as `openssl x509 -fingerprint`.
[[nodiscard]] std::string to_hex(ByteView bytes, char separator = '\0');

namespace detail {
struct PkeyFree {
  void operator()(EVP_PKEY* p) const noexcept;
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
struct MdCtxFree {
  void operator()(EVP_MD_CTX* p) const noexcept;
};
// A DigestSign/DigestVerify context initialised once (algorithm fetched, SM2 ID set) and copied
// for each use: initialising costs more than an ECDSA signature itself.
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;
}  // namespace detail

class VerifyingKey;

/// The device's private key. Signs with ECDSA over SHA-256 (P-256 keys) or SM2 over SM3 with the
/// ID "1234567812345678" (SM2 keys); signatures are DER (SEQUENCE { r, s }). The algorithm comes
/// from the key itself. Thread-compatible: sign() is const and may run concurrently.
class SigningKey {
 public:
  /// `location`: a file path or an OSSL_STORE URI (see the top of this file). Throws
  /// CryptoError naming the location when it cannot be loaded or is neither P-256 nor SM2.
  explicit SigningKey(const std::string& location);

  [[nodiscard]] KeyAlgorithm algorithm() const { return algorithm_; }
  [[nodiscard]] const std::string& location() const { return location_; }
  /// A DER signature over `bytes`.
  [[nodiscard]] Bytes sign(ByteView bytes) const;
  /// The public half, e.g. to check a key against its certificate.
  [[nodiscard]] VerifyingKey verifying_key() const;

 private:
  std::string location_;
  KeyAlgorithm algorithm_ = KeyAlgorithm::ecdsa_p256;
  detail::PkeyPtr key_;
  detail::MdCtxPtr ready_;
};

/// A public key taken from a PEM X.509 certificate (the device certificate).
class VerifyingKey {
 public:
  /// Throws CryptoError naming the file when it is not a readable PEM certificate with a P-256 or
  /// SM2 key. The certificate's validity period is not checked: old records stay verifiable.
  explicit VerifyingKey(const std::filesystem::path& certificate_pem);

  [[nodiscard]] KeyAlgorithm algorithm() const { return algorithm_; }
  /// True when `signature` is a valid signature over `bytes` by this key; false otherwise
  /// (including malformed signatures). Never throws for a bad signature.
  [[nodiscard]] bool verify(ByteView bytes, ByteView signature) const;
  /// The certificate's SHA-256 fingerprint, "AB:CD:..." (empty when made from a SigningKey).
  [[nodiscard]] const std::string& fingerprint() const { return fingerprint_; }
  /// The certificate's subject, e.g. "O=pilecore, CN=PILE-0001" (empty when made from a key).
  [[nodiscard]] const std::string& subject() const { return subject_; }

 private:
  friend class SigningKey;
  VerifyingKey(detail::PkeyPtr key, KeyAlgorithm alg);
  KeyAlgorithm algorithm_ = KeyAlgorithm::ecdsa_p256;
  detail::PkeyPtr key_;
  detail::MdCtxPtr ready_;
  std::string fingerprint_;
  std::string subject_;
};

struct Identity {
  std::filesystem::path key_path;
  std::filesystem::path certificate_path;
  std::string fingerprint;  // SHA-256 of the certificate (DER), "AB:CD:..."
};

/// Makes a new key pair and a self-signed X.509 v3 certificate for it: subject and issuer
/// "O=<organization>, CN=<common_name>" (CN = the pile's serial number or the site id, O = the
/// operator), a random 159-bit serial number, valid from now for `validity_days`,
/// basicConstraints critical CA:FALSE, keyUsage critical digitalSignature, a subject key
/// identifier; signed with ECDSA-SHA256 or SM2-SM3 (ID "1234567812345678").
/// The key is written PEM PKCS#8, mode 0600; each file is written to a temporary file in its
/// directory, synced and renamed into place (missing directories are created), so a crash leaves
/// either the old file or the new one. Existing files are replaced: refusing is the caller's
/// decision. Both paths must be file paths (a key in a TPM is made with the TPM's tools).
Identity generate_identity(KeyAlgorithm algorithm, const std::filesystem::path& key_path, const std::filesystem::path& certificate_path,
                           const std::string& common_name, const std::string& organization = "pilecore", int validity_days = 730);

}  // namespace pilecore::core
