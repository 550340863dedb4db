#include "crypto.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/store.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <regex>

namespace pilecore::core {
namespace fs = std::filesystem;

namespace {

// Every OpenSSL object is owned by one of these.
template <auto Fn>
struct Free {
  template <class T>
  void operator()(T* p) const noexcept {
    Fn(p);
  }
};
using MdPtr = std::unique_ptr<EVP_MD, Free<&EVP_MD_free>>;
using detail::MdCtxPtr;
using X509Ptr = std::unique_ptr<X509, Free<&X509_free>>;
using BioPtr = std::unique_ptr<BIO, Free<&BIO_free_all>>;
using StorePtr = std::unique_ptr<OSSL_STORE_CTX, Free<&OSSL_STORE_close>>;
using StoreInfoPtr = std::unique_ptr<OSSL_STORE_INFO, Free<&OSSL_STORE_INFO_free>>;
using BnPtr = std::unique_ptr<BIGNUM, Free<&BN_free>>;
using ExtensionPtr = std::unique_ptr<X509_EXTENSION, Free<&X509_EXTENSION_free>>;

// GB/T 32918 / GM/T 0009 default user ID; what certificates use. Set explicitly every time:
// OpenSSL's own default changed between versions.
constexpr std::string_view sm2_id = "1234567812345678";

// OpenSSL's error queue as text (drained).
std::string openssl_errors() {
  std::string out;
  const char* data = nullptr;
  int flags = 0;
  while (const unsigned long e = ERR_get_error_all(nullptr, nullptr, nullptr, &data, &flags)) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
    if (data != nullptr && (flags & ERR_TXT_STRING) != 0 && *data != '\0') out += fmt::format(" ({})", data);
  }
  return out.empty() ? "no detail from OpenSSL" : out;
}

[[noreturn]] void fail(std::string_view where, std::string_view what) {
  throw CryptoError(fmt::format("{}: {}: {}", where, what, openssl_errors()));
}

const EVP_MD* message_digest(HashAlgorithm alg) {
  // Fetched once (explicit fetch is the OpenSSL 3 way; implicit fetch would repeat it per call).
  static const MdPtr sha256(EVP_MD_fetch(nullptr, "SHA256", nullptr));
  static const MdPtr sm3(EVP_MD_fetch(nullptr, "SM3", nullptr));
  const EVP_MD* md = alg == HashAlgorithm::sha256 ? sha256.get() : sm3.get();
  if (md == nullptr) fail(to_string(alg), "this OpenSSL has no such digest");
  return md;
}

const char* digest_name_for(KeyAlgorithm alg) { return alg == KeyAlgorithm::sm2 ? "SM3" : "SHA256"; }

std::string group_name(EVP_PKEY* key) {
  char name[80] = {};
  std::size_t len = 0;
  if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, name, sizeof name, &len) != 1) {
    ERR_clear_error();
    return {};
  }
  return std::string(name, len);
}

KeyAlgorithm classify(EVP_PKEY* key, std::string_view where) {
  if (EVP_PKEY_is_a(key, "SM2")) return KeyAlgorithm::sm2;
  const std::string group = group_name(key);
  if (EVP_PKEY_is_a(key, "EC") && (group == "prime256v1" || group == "P-256")) return KeyAlgorithm::ecdsa_p256;
  const char* type = EVP_PKEY_get0_type_name(key);
  throw CryptoError(fmt::format("{}: unsupported key type {}{}: pilecore signs with ECDSA P-256 or SM2", where, type ? type : "(unknown)",
                                group.empty() ? "" : " on curve " + group));
}

// Starts a DigestSign/DigestVerify: SHA-256 for P-256, SM3 with the SM2 ID for SM2.
MdCtxPtr start(EVP_PKEY* key, KeyAlgorithm alg, bool signing, std::string_view where) {
  MdCtxPtr ctx(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;  // owned by ctx
  if (!ctx) fail(where, "out of memory");
  const int rc = signing ? EVP_DigestSignInit_ex(ctx.get(), &pctx, digest_name_for(alg), nullptr, nullptr, key, nullptr)
                         : EVP_DigestVerifyInit_ex(ctx.get(), &pctx, digest_name_for(alg), nullptr, nullptr, key, nullptr);
  if (rc != 1) fail(where, signing ? "cannot start signing" : "cannot start verifying");
  if (alg == KeyAlgorithm::sm2 && EVP_PKEY_CTX_set1_id(pctx, sm2_id.data(), static_cast<int>(sm2_id.size())) <= 0) {
    fail(where, "cannot set the SM2 ID");
  }
  return ctx;
}

bool has_uri_scheme(const std::string& location) {
  static const std::regex scheme("[A-Za-z][A-Za-z0-9+.-]*:.*");
  return std::regex_match(location, scheme);
}

detail::PkeyPtr load_private_key(const std::string& location) {
  std::error_code ec;
  if (!has_uri_scheme(location) && !fs::exists(location, ec)) {
    throw CryptoError(fmt::format("{}: cannot load the private key: no such file (run `pilectl keys init` to make one)", location));
  }
  // No UI method: a daemon never prompts for a passphrase; an encrypted key fails to load.
  StorePtr store(OSSL_STORE_open_ex(location.c_str(), nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr));
  if (!store) fail(location, "cannot open the private key");
  if (OSSL_STORE_expect(store.get(), OSSL_STORE_INFO_PKEY) != 1) ERR_clear_error();  // some loaders cannot filter
  while (!OSSL_STORE_eof(store.get())) {
    StoreInfoPtr info(OSSL_STORE_load(store.get()));
    if (!info) {
      if (OSSL_STORE_error(store.get())) fail(location, "cannot load the private key");
      continue;
    }
    if (OSSL_STORE_INFO_get_type(info.get()) == OSSL_STORE_INFO_PKEY) {
      detail::PkeyPtr key(OSSL_STORE_INFO_get1_PKEY(info.get()));
      if (!key) fail(location, "cannot load the private key");
      return key;
    }
  }
  fail(location, "no private key found");
}

X509Ptr read_certificate(const fs::path& file) {
  BioPtr bio(BIO_new_file(file.c_str(), "rb"));
  if (!bio) fail(file.string(), "cannot read the certificate");
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) fail(file.string(), "not a PEM X.509 certificate");
  return cert;
}

std::string fingerprint_of(X509* cert, std::string_view where) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_digest(cert, message_digest(HashAlgorithm::sha256), md, &len) != 1) fail(where, "cannot compute the fingerprint");
  return to_hex(ByteView(md, len), ':');
}

std::string subject_of(X509* cert) {
  BioPtr mem(BIO_new(BIO_s_mem()));
  if (!mem || X509_NAME_print_ex(mem.get(), X509_get_subject_name(cert), 0, XN_FLAG_ONELINE & ~XN_FLAG_SPC_EQ) < 0) {
    ERR_clear_error();
    return {};
  }
  char* data = nullptr;
  const long n = BIO_get_mem_data(mem.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

std::string pem_of_private_key(EVP_PKEY* key, std::string_view where) {
  // Secure-memory BIO: the PEM text is cleansed when freed.
  BioPtr mem(BIO_new(BIO_s_secmem()));
  if (!mem || PEM_write_bio_PrivateKey(mem.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) fail(where, "cannot encode the private key");
  char* data = nullptr;
  const long n = BIO_get_mem_data(mem.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

std::string pem_of_certificate(X509* cert, std::string_view where) {
  BioPtr mem(BIO_new(BIO_s_mem()));
  if (!mem || PEM_write_bio_X509(mem.get(), cert) != 1) fail(where, "cannot encode the certificate");
  char* data = nullptr;
  const long n = BIO_get_mem_data(mem.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

[[noreturn]] void fail_errno(const fs::path& path, std::string_view what, int err) {
  throw CryptoError(fmt::format("{}: {}: {}", path.string(), what, std::strerror(err)));
}

// Writes `data` to `path` through a synced temporary file in the same directory and rename(2).
void write_atomically(const fs::path& path, std::string_view data, mode_t mode) {
  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw CryptoError(fmt::format("{}: cannot create the directory: {}", dir.string(), ec.message()));
  std::string tmp = (dir / ("." + path.filename().string() + ".tmp-XXXXXX")).string();
  const int fd = ::mkstemp(tmp.data());  // created 0600: the key is never readable by others
  if (fd < 0) fail_errno(path, "cannot create a temporary file", errno);
  auto abandon = [&](std::string_view what) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    fail_errno(path, what, err);
  };
  if (::fchmod(fd, mode) != 0) abandon("cannot set the file mode");
  for (std::size_t done = 0; done < data.size();) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) abandon("cannot write");
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) abandon("cannot sync");
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail_errno(path, "cannot write", err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail_errno(path, "cannot rename the temporary file into place", err);
  }
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);  // the rename itself is durable
    ::close(dfd);
  }
}

void add_extension(X509* cert, X509V3_CTX* v3, int nid, const char* value, std::string_view where) {
  ExtensionPtr ext(X509V3_EXT_nconf_nid(nullptr, v3, nid, value));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) fail(where, fmt::format("cannot add the extension {}", value));
}

}  // namespace

void detail::PkeyFree::operator()(EVP_PKEY* p) const noexcept { EVP_PKEY_free(p); }
void detail::MdCtxFree::operator()(EVP_MD_CTX* p) const noexcept { EVP_MD_CTX_free(p); }

namespace {
// A fresh context from an initialised one (the SM2 ID and the digest come along).
MdCtxPtr copy_of(const EVP_MD_CTX* ready, std::string_view where) {
  MdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_MD_CTX_copy_ex(ctx.get(), ready) != 1) fail(where, "cannot copy the signature context");
  return ctx;
}
}  // namespace

std::string_view to_string(HashAlgorithm alg) { return alg == HashAlgorithm::sm3 ? "sm3" : "sha256"; }
std::string_view to_string(KeyAlgorithm alg) { return alg == KeyAlgorithm::sm2 ? "sm2" : "ecdsa-p256"; }
std::string_view signature_algorithm_name(KeyAlgorithm alg) { return alg == KeyAlgorithm::sm2 ? "sm2-sm3" : "ecdsa-p256-sha256"; }

std::optional<HashAlgorithm> parse_hash_algorithm(std::string_view name) {
  if (name == "sha256") return HashAlgorithm::sha256;
  if (name == "sm3") return HashAlgorithm::sm3;
  return std::nullopt;
}

std::optional<KeyAlgorithm> parse_key_algorithm(std::string_view name) {
  if (name == "ecdsa-p256") return KeyAlgorithm::ecdsa_p256;
  if (name == "sm2") return KeyAlgorithm::sm2;
  return std::nullopt;
}

std::size_t digest_size(HashAlgorithm alg) { return static_cast<std::size_t>(EVP_MD_get_size(message_digest(alg))); }

Bytes digest(HashAlgorithm alg, ByteView bytes) {
  Bytes out(EVP_MAX_MD_SIZE);
  unsigned int len = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), out.data(), &len, message_digest(alg), nullptr) != 1) fail(to_string(alg), "digest failed");
  out.resize(len);
  return out;
}

std::string to_hex(ByteView bytes, char separator) {
  static constexpr char lower[] = "0123456789abcdef";
  static constexpr char upper[] = "0123456789ABCDEF";
  const char* digits = separator != '\0' ? upper : lower;
  std::string out;
  out.reserve(bytes.size() * 3);
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    if (separator != '\0' && i > 0) out += separator;
    out += digits[bytes[i] >> 4];
    out += digits[bytes[i] & 0xF];
  }
  return out;
}

// ---- SigningKey ----

SigningKey::SigningKey(const std::string& location) : location_(location), key_(load_private_key(location)) {
  algorithm_ = classify(key_.get(), location_);
  ready_ = start(key_.get(), algorithm_, true, location_);
}

Bytes SigningKey::sign(ByteView bytes) const {
  MdCtxPtr ctx = copy_of(ready_.get(), location_);
  // Signing finalises the context: no copy of the key context per signature.
  EVP_MD_CTX_set_flags(ctx.get(), EVP_MD_CTX_FLAG_FINALISE);
  std::size_t len = static_cast<std::size_t>(EVP_PKEY_get_size(key_.get()));
  Bytes sig(len);
  if (EVP_DigestSign(ctx.get(), sig.data(), &len, bytes.data(), bytes.size()) != 1) fail(location_, "signing failed");
  sig.resize(len);
  return sig;
}

VerifyingKey SigningKey::verifying_key() const {
  if (EVP_PKEY_up_ref(key_.get()) != 1) fail(location_, "cannot reference the key");
  return VerifyingKey(detail::PkeyPtr(key_.get()), algorithm_);
}

// ---- VerifyingKey ----

VerifyingKey::VerifyingKey(detail::PkeyPtr key, KeyAlgorithm alg)
    : algorithm_(alg), key_(std::move(key)), ready_(start(key_.get(), algorithm_, false, "verifying key")) {}

VerifyingKey::VerifyingKey(const fs::path& certificate_pem) {
  X509Ptr cert = read_certificate(certificate_pem);
  key_.reset(X509_get_pubkey(cert.get()));
  if (!key_) fail(certificate_pem.string(), "cannot read the certificate's public key");
  algorithm_ = classify(key_.get(), certificate_pem.string());
  ready_ = start(key_.get(), algorithm_, false, certificate_pem.string());
  fingerprint_ = fingerprint_of(cert.get(), certificate_pem.string());
  subject_ = subject_of(cert.get());
}

bool VerifyingKey::verify(ByteView bytes, ByteView signature) const {
  MdCtxPtr ctx = copy_of(ready_.get(), "verify");
  EVP_MD_CTX_set_flags(ctx.get(), EVP_MD_CTX_FLAG_FINALISE);
  const int rc = EVP_DigestVerify(ctx.get(), signature.data(), signature.size(), bytes.data(), bytes.size());
  ERR_clear_error();  // a bad or malformed signature leaves errors on the queue
  return rc == 1;
}

// ---- generate_identity ----

Identity generate_identity(KeyAlgorithm algorithm, const fs::path& key_path, const fs::path& certificate_path, const std::string& common_name,
                           const std::string& organization, int validity_days) {
  const std::string where = certificate_path.string();
  // RFC 5280 upper bounds: ub-common-name and ub-organization-name are 64.
  if (common_name.empty() || common_name.size() > 64) throw CryptoError(fmt::format("{}: the common name must be 1 to 64 characters", where));
  if (organization.empty() || organization.size() > 64) throw CryptoError(fmt::format("{}: the organization must be 1 to 64 characters", where));
  if (validity_days < 1) throw CryptoError(fmt::format("{}: the validity must be at least one day", where));

  detail::PkeyPtr key(algorithm == KeyAlgorithm::sm2 ? EVP_PKEY_Q_keygen(nullptr, nullptr, "SM2")
                                                     : EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!key) fail(key_path.string(), fmt::format("cannot generate a {} key", to_string(algorithm)));

  X509Ptr cert(X509_new());
  if (!cert || X509_set_version(cert.get(), X509_VERSION_3) != 1) fail(where, "cannot make a certificate");
  // Serial: 159 random bits with the top bit set, so positive and at most 20 octets (RFC 5280).
  BnPtr serial(BN_new());
  if (!serial || BN_rand(serial.get(), 159, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) != 1 ||
      BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get())) == nullptr) {
    fail(where, "cannot make a serial number");
  }
  if (X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0) == nullptr ||
      X509_time_adj_ex(X509_getm_notAfter(cert.get()), validity_days, 0, nullptr) == nullptr) {
    fail(where, "cannot set the validity period");
  }
  X509_NAME* name = X509_get_subject_name(cert.get());
  auto text = [](const std::string& s) { return reinterpret_cast<const unsigned char*>(s.c_str()); };
  if (X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, text(organization), -1, -1, 0) != 1 ||
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, text(common_name), -1, -1, 0) != 1 ||
      X509_set_issuer_name(cert.get(), name) != 1 || X509_set_pubkey(cert.get(), key.get()) != 1) {
    fail(where, "cannot set the subject");
  }
  X509V3_CTX v3;
  X509V3_set_ctx(&v3, cert.get(), cert.get(), nullptr, nullptr, 0);
  add_extension(cert.get(), &v3, NID_basic_constraints, "critical,CA:FALSE", where);
  add_extension(cert.get(), &v3, NID_key_usage, "critical,digitalSignature", where);
  add_extension(cert.get(), &v3, NID_subject_key_identifier, "hash", where);

  MdCtxPtr ctx = start(key.get(), algorithm, true, where);
  if (X509_sign_ctx(cert.get(), ctx.get()) <= 0) fail(where, "cannot sign the certificate");

  std::string key_pem = pem_of_private_key(key.get(), key_path.string());
  try {
    write_atomically(key_path, key_pem, 0600);
  } catch (...) {
    OPENSSL_cleanse(key_pem.data(), key_pem.size());
    throw;
  }
  OPENSSL_cleanse(key_pem.data(), key_pem.size());
  write_atomically(certificate_path, pem_of_certificate(cert.get(), where), 0644);
  return Identity{key_path, certificate_path, fingerprint_of(cert.get(), where)};
}

}  // namespace pilecore::core
