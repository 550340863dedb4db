#include "command_key.hpp"

#include <fmt/format.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cstdio>

namespace pilecore::core::protocol {

namespace {

constexpr std::string_view kSm2Id = "1234567812345678";

std::string openssl_errors() {
  std::string out;
  while (const unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "no detail from OpenSSL" : out;
}

std::string group_of(EVP_PKEY* key) {
  char name[80] = {};
  std::size_t len = 0;
  if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, name, sizeof name, &len) != 1) {
    ERR_clear_error();
    return {};
  }
  return std::string(name, len);
}

}  // namespace

void CommandKey::Free::operator()(evp_pkey_st* p) const noexcept { EVP_PKEY_free(p); }
void CommandKey::Free::operator()(evp_md_ctx_st* p) const noexcept { EVP_MD_CTX_free(p); }

CommandKey::CommandKey(const std::filesystem::path& pem) {
  const std::string where = pem.string();
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_file(where.c_str(), "r"), &BIO_free);
  if (!bio) {
    ERR_clear_error();
    throw std::runtime_error(fmt::format("{}: cannot read the file", where));
  }
  EVP_PKEY* key = PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr);
  if (key == nullptr) {
    ERR_clear_error();
    BIO_reset(bio.get());
    if (X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
      key = X509_get_pubkey(cert);
      X509_free(cert);
    }
  }
  if (key == nullptr) throw std::runtime_error(fmt::format("{}: no PEM public key or certificate in it ({})", where, openssl_errors()));
  key_.reset(key);
  const std::string group = group_of(key);
  if (EVP_PKEY_is_a(key, "SM2") || group == "SM2") {
    algorithm_ = "sm2";
  } else if (EVP_PKEY_is_a(key, "EC") && (group == "prime256v1" || group == "P-256")) {
    algorithm_ = "ecdsa-p256";
  } else {
    const char* type = EVP_PKEY_get0_type_name(key);
    throw std::runtime_error(fmt::format("{}: a {}{} key; commands are signed with ECDSA P-256 or SM2", where, type ? type : "(unknown)",
                                         group.empty() ? "" : " " + group));
  }
  ready_.reset(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;  // owned by ready_
  const bool sm2 = algorithm_ == "sm2";
  if (!ready_ || EVP_DigestVerifyInit_ex(ready_.get(), &pctx, sm2 ? "SM3" : "SHA256", nullptr, nullptr, key, nullptr) != 1 ||
      (sm2 && EVP_PKEY_CTX_set1_id(pctx, kSm2Id.data(), static_cast<int>(kSm2Id.size())) <= 0)) {
    throw std::runtime_error(fmt::format("{}: cannot start verifying with this key ({})", where, openssl_errors()));
  }
}

CommandKey::~CommandKey() = default;
CommandKey::CommandKey(CommandKey&&) noexcept = default;
CommandKey& CommandKey::operator=(CommandKey&&) noexcept = default;

bool CommandKey::verify(ByteView bytes, ByteView signature) const {
  std::unique_ptr<EVP_MD_CTX, Free> ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_MD_CTX_copy_ex(ctx.get(), ready_.get()) != 1) {
    ERR_clear_error();
    return false;
  }
  EVP_MD_CTX_set_flags(ctx.get(), EVP_MD_CTX_FLAG_FINALISE);
  const int rc = EVP_DigestVerify(ctx.get(), signature.data(), signature.size(), bytes.data(), bytes.size());
  ERR_clear_error();  // a bad or malformed signature leaves errors on the queue
  return rc == 1;
}

}  // namespace pilecore::core::protocol
