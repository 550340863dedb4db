#include "sm2_pki.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <fstream>
#include <stdexcept>
#include <string_view>

namespace pilecore::sim {

namespace {

constexpr std::string_view kSm2Id = "1234567812345678";

[[noreturn]] void fail(const std::string& what) {
  char buf[256] = "no detail";
  if (const unsigned long e = ERR_get_error()) ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  throw std::runtime_error("test PKI: " + what + ": " + buf);
}

void check(int rc, const std::string& what) {
  if (rc <= 0) fail(what);
}

void add_extension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  if (ext == nullptr) fail("extension");
  const int rc = X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  check(rc, "add extension");
}

std::string bio_text(BIO* bio) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<std::size_t>(n));
  BIO_free(bio);
  return out;
}

}  // namespace

void PkeyDeleter::operator()(EVP_PKEY* p) const noexcept { EVP_PKEY_free(p); }
void X509Deleter::operator()(X509* p) const noexcept { X509_free(p); }

Pkey make_sm2_key() {
  EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "SM2");
  if (key == nullptr) fail("SM2 key generation");
  return Pkey(key, PkeyDeleter{});
}

Cert make_certificate(const CertSpec& spec, const Pkey& subject_key, const Cert& issuer, const Pkey& issuer_key) {
  Cert cert(X509_new(), X509Deleter{});
  if (!cert) fail("X509_new");
  X509* x = cert.get();
  check(X509_set_version(x, 2), "version");
  check(ASN1_INTEGER_set_int64(X509_get_serialNumber(x), spec.serial), "serial");
  X509_NAME* name = X509_get_subject_name(x);
  check(X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("pilecore test PKI"), -1, -1, 0), "O");
  check(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(spec.common_name.c_str()), -1, -1, 0), "CN");
  check(X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer.get()) : name), "issuer name");
  if (ASN1_TIME_set(X509_getm_notBefore(x), std::chrono::system_clock::to_time_t(spec.not_before)) == nullptr) fail("notBefore");
  if (ASN1_TIME_set(X509_getm_notAfter(x), std::chrono::system_clock::to_time_t(spec.not_after)) == nullptr) fail("notAfter");
  check(X509_set_pubkey(x, subject_key.get()), "public key");
  X509* issuer_cert = issuer ? issuer.get() : x;
  add_extension(x, issuer_cert, NID_basic_constraints, spec.ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
  add_extension(x, issuer_cert, NID_key_usage, spec.ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
  add_extension(x, issuer_cert, NID_subject_key_identifier, "hash");
  if (issuer) add_extension(x, issuer_cert, NID_authority_key_identifier, "keyid:always");

  EVP_MD_CTX* md = EVP_MD_CTX_new();
  EVP_PKEY_CTX* pctx = nullptr;
  if (md == nullptr || EVP_DigestSignInit_ex(md, &pctx, "SM3", nullptr, nullptr, issuer_key.get(), nullptr) != 1 ||
      EVP_PKEY_CTX_set1_id(pctx, kSm2Id.data(), static_cast<int>(kSm2Id.size())) <= 0) {
    EVP_MD_CTX_free(md);
    fail("start SM2 signing");
  }
  const int rc = X509_sign_ctx(x, md);
  EVP_MD_CTX_free(md);
  check(rc, "sign the certificate");
  return cert;
}

std::vector<std::uint8_t> to_der(const Cert& cert) {
  unsigned char* der = nullptr;
  const int n = i2d_X509(cert.get(), &der);
  if (n <= 0) fail("DER");
  std::vector<std::uint8_t> out(der, der + n);
  OPENSSL_free(der);
  return out;
}

std::string to_pem(const Cert& cert) {
  BIO* bio = BIO_new(BIO_s_mem());
  if (bio == nullptr || PEM_write_bio_X509(bio, cert.get()) != 1) fail("PEM");
  return bio_text(bio);
}

std::string to_pem(const Pkey& key) {
  BIO* bio = BIO_new(BIO_s_mem());
  if (bio == nullptr || PEM_write_bio_PrivateKey(bio, key.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1) fail("PEM key");
  return bio_text(bio);
}

void write_file(const std::filesystem::path& file, const std::string& pem) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out << pem;
  if (!out) throw std::runtime_error("test PKI: cannot write " + file.string());
}

}  // namespace pilecore::sim
