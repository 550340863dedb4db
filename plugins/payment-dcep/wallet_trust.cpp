#include "wallet_trust.hpp"

#include <fmt/format.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include <stdexcept>
#include <string_view>
#include <vector>

namespace dcep {

namespace {

constexpr std::string_view kSm2Id = "1234567812345678";

std::string openssl_error() {
  char buf[256] = "no detail from OpenSSL";
  if (const unsigned long e = ERR_get_error()) ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

std::vector<X509*> read_pem_certificates(const std::string& file) {
  BIO* bio = BIO_new_file(file.c_str(), "r");
  if (bio == nullptr) throw std::runtime_error(fmt::format("{}: cannot be read ({})", file, openssl_error()));
  std::vector<X509*> out;
  while (X509* x = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) out.push_back(x);
  ERR_clear_error();  // the end of the file is reported as an error
  BIO_free(bio);
  if (out.empty()) throw std::runtime_error(fmt::format("{}: holds no PEM certificate", file));
  return out;
}

struct X509Free {
  void operator()(X509* x) const noexcept { X509_free(x); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;

/// OpenSSL 3.0 checks an SM2-signed certificate with the id stored in the certificate object,
/// and its fallback is not the GB/T 32918 default every issuer signs with; so set it.
void set_sm2_id(X509* x) {
  ASN1_OCTET_STRING* id = ASN1_OCTET_STRING_new();
  if (id == nullptr || ASN1_OCTET_STRING_set(id, reinterpret_cast<const unsigned char*>(kSm2Id.data()), static_cast<int>(kSm2Id.size())) != 1) {
    ASN1_OCTET_STRING_free(id);
    throw std::runtime_error("out of memory");
  }
  X509_set0_distinguishing_id(x, id);
}

X509Ptr from_der(ByteView der) {
  const unsigned char* p = der.data();
  X509Ptr x(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (!x || p != der.data() + der.size()) {
    ERR_clear_error();
    return nullptr;
  }
  set_sm2_id(x.get());
  return x;
}

std::string common_name(X509* x) {
  X509_NAME* name = X509_get_subject_name(x);
  const int i = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (i < 0) return {};
  const ASN1_STRING* s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)), static_cast<std::size_t>(ASN1_STRING_length(s)));
}

}  // namespace

Trust::Trust(const std::string& root_file, const std::string& issuer_file) {
  store_ = X509_STORE_new();
  issuers_ = sk_X509_new_null();
  if (store_ == nullptr || issuers_ == nullptr) throw std::runtime_error("out of memory");
  for (X509* root : read_pem_certificates(root_file)) {
    set_sm2_id(root);
    X509_STORE_add_cert(store_, root);
    X509_free(root);
  }
  if (!issuer_file.empty()) {
    for (X509* issuer : read_pem_certificates(issuer_file)) {
      set_sm2_id(issuer);
      sk_X509_push(issuers_, issuer);
    }
  }
}

Trust::~Trust() {
  sk_X509_pop_free(issuers_, X509_free);
  X509_STORE_free(store_);
}

std::size_t Trust::count_certificates(const std::string& file) {
  auto certs = read_pem_certificates(file);
  for (X509* x : certs) X509_free(x);
  return certs.size();
}

std::optional<std::string> Trust::verify_certificate(ByteView der, const std::string& wallet_id, std::time_t now) const {
  X509Ptr cert = from_der(der);
  if (!cert) return std::string("the wallet's certificate is not valid DER");
  X509_STORE_CTX* ctx = X509_STORE_CTX_new();
  if (ctx == nullptr || X509_STORE_CTX_init(ctx, store_, cert.get(), issuers_) != 1) {
    X509_STORE_CTX_free(ctx);
    return "cannot verify the certificate: " + openssl_error();
  }
  // The host clock, not the system clock: tests and the demo run it faster.
  X509_STORE_CTX_set_time(ctx, 0, now);
  const int ok = X509_verify_cert(ctx);
  const int err = X509_STORE_CTX_get_error(ctx);
  X509_STORE_CTX_free(ctx);
  ERR_clear_error();
  if (ok != 1) return fmt::format("the wallet's certificate is not trusted: {}", X509_verify_cert_error_string(err));
  if (common_name(cert.get()) != wallet_id) return std::string("the wallet's certificate belongs to another wallet");
  return std::nullopt;
}

bool Trust::verify_signature(ByteView der, ByteView message, ByteView signature) const {
  X509Ptr cert = from_der(der);
  if (!cert) return false;
  EVP_PKEY* key = X509_get0_pubkey(cert.get());
  if (key == nullptr || !EVP_PKEY_is_a(key, "SM2")) {
    ERR_clear_error();
    return false;
  }
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  EVP_PKEY_CTX* pctx = nullptr;
  const bool ok = md != nullptr && EVP_DigestVerifyInit_ex(md, &pctx, "SM3", nullptr, nullptr, key, nullptr) == 1 &&
                  EVP_PKEY_CTX_set1_id(pctx, kSm2Id.data(), static_cast<int>(kSm2Id.size())) > 0 &&
                  EVP_DigestVerify(md, signature.data(), signature.size(), message.data(), message.size()) == 1;
  EVP_MD_CTX_free(md);
  ERR_clear_error();
  return ok;
}

Bytes sm3(ByteView bytes) {
  Bytes out(32);
  unsigned int len = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), out.data(), &len, EVP_sm3(), nullptr) != 1 || len != out.size()) {
    throw std::runtime_error("SM3: " + openssl_error());
  }
  return out;
}

Bytes random_bytes(std::size_t n) {
  Bytes out(n);
  if (RAND_bytes(out.data(), static_cast<int>(n)) != 1) throw std::runtime_error("random nonce: " + openssl_error());
  return out;
}

}  // namespace dcep
