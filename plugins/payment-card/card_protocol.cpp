#include "card_protocol.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <stdexcept>

#include "hex.hpp"

namespace pilecore::card {

std::optional<Bytes> parse_hex(std::string_view text) {
  return pilecore::plugins::parse_hex(text);
}

Bytes mifare_auth(bool key_b, std::uint8_t block, const MifareKey& key, std::span<const std::uint8_t> uid) {
  Bytes f = {static_cast<std::uint8_t>(key_b ? 0x61 : 0x60), block};
  f.insert(f.end(), key.begin(), key.end());
  // A 7-byte UID authenticates with its last four bytes (the chip does the same).
  const auto tail = uid.size() >= 4 ? uid.last(4) : uid;
  f.insert(f.end(), tail.begin(), tail.end());
  return f;
}

Bytes mifare_read(std::uint8_t block) { return {0x30, block}; }

std::optional<std::string> account_from_bytes(std::span<const std::uint8_t> data) {
  std::size_t end = data.size();
  while (end > 0 && (data[end - 1] == 0x00 || data[end - 1] == 0x20)) --end;
  if (end == 0 || end > 64) return std::nullopt;
  std::string id;
  for (std::size_t i = 0; i < end; ++i) {
    const char c = static_cast<char>(data[i]);
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' || c == ':';
    if (!ok) return std::nullopt;
    id.push_back(c);
  }
  return id;
}

Bytes desfire_command(std::uint8_t ins, std::span<const std::uint8_t> data) {
  Bytes c = {0x90, ins, 0x00, 0x00};
  if (!data.empty()) {
    c.push_back(static_cast<std::uint8_t>(data.size()));
    c.insert(c.end(), data.begin(), data.end());
  }
  c.push_back(0x00);
  return c;
}

std::optional<DesfireAnswer> desfire_answer(std::span<const std::uint8_t> r) {
  if (r.size() < 2 || r[r.size() - 2] != 0x91) return std::nullopt;
  return DesfireAnswer{.status = r.back(), .data = Bytes(r.begin(), r.end() - 2)};
}

std::string desfire_status_text(std::uint8_t s) {
  switch (s) {
    case 0x00: return "done";
    case 0x1C: return "command not supported";
    case 0x40: return "no such key";
    case 0x7E: return "length error";
    case 0x9D: return "permission denied";
    case 0xA0: return "no such application";
    case 0xAE: return "authentication error";
    case 0xAF: return "more frames";
    case 0xBE: return "outside the file";
    case 0xCA: return "command aborted";
    case 0xF0: return "no such file";
    default: return "status " + std::to_string(s);
  }
}

Bytes desfire_select(std::uint32_t aid) {
  const std::array<std::uint8_t, 3> a = {static_cast<std::uint8_t>(aid & 0xFF), static_cast<std::uint8_t>(aid >> 8 & 0xFF), static_cast<std::uint8_t>(aid >> 16 & 0xFF)};
  return desfire_command(0x5A, a);
}

Bytes desfire_read(std::uint8_t file, std::uint32_t offset, std::uint32_t length) {
  const std::array<std::uint8_t, 7> d = {file,
                                         static_cast<std::uint8_t>(offset & 0xFF), static_cast<std::uint8_t>(offset >> 8 & 0xFF), static_cast<std::uint8_t>(offset >> 16 & 0xFF),
                                         static_cast<std::uint8_t>(length & 0xFF), static_cast<std::uint8_t>(length >> 8 & 0xFF), static_cast<std::uint8_t>(length >> 16 & 0xFF)};
  return desfire_command(0xBD, d);
}

Bytes aes_cbc(bool encrypt, const AesKey& key, std::span<const std::uint8_t, 16> iv, std::span<const std::uint8_t> data) {
  if (data.size() % 16 != 0) throw std::invalid_argument("AES-CBC data must be whole blocks");
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  Bytes out(data.size() + 16);
  int n = 0, m = 0;
  const bool ok = ctx != nullptr && EVP_CipherInit_ex(ctx, EVP_aes_128_cbc(), nullptr, key.data(), iv.data(), encrypt ? 1 : 0) == 1 &&
                  EVP_CIPHER_CTX_set_padding(ctx, 0) == 1 && EVP_CipherUpdate(ctx, out.data(), &n, data.data(), static_cast<int>(data.size())) == 1 &&
                  EVP_CipherFinal_ex(ctx, out.data() + n, &m) == 1;
  EVP_CIPHER_CTX_free(ctx);
  if (!ok) throw std::runtime_error("AES-128-CBC failed");
  out.resize(static_cast<std::size_t>(n + m));
  return out;
}

std::optional<Bytes> DesfireAesAuth::answer_challenge(std::span<const std::uint8_t> enc_rnd_b) {
  if (enc_rnd_b.size() != 16) return std::nullopt;
  // EV1 chains the IV through the handshake: each side's next IV is the last block it received
  // or sent.
  const std::array<std::uint8_t, 16> zero{};
  const Bytes rnd_b = aes_cbc(false, key_, zero, enc_rnd_b);
  Bytes plain(rnd_a_.begin(), rnd_a_.end());
  plain.insert(plain.end(), rnd_b.begin() + 1, rnd_b.end());
  plain.push_back(rnd_b[0]);
  std::array<std::uint8_t, 16> iv{};
  std::copy(enc_rnd_b.begin(), enc_rnd_b.end(), iv.begin());
  Bytes out = aes_cbc(true, key_, iv, plain);
  std::copy(out.end() - 16, out.end(), iv_.begin());
  return out;
}

bool DesfireAesAuth::verify(std::span<const std::uint8_t> enc) {
  if (enc.size() != 16) return false;
  const Bytes got = aes_cbc(false, key_, iv_, enc);
  Bytes want(rnd_a_.begin() + 1, rnd_a_.end());
  want.push_back(rnd_a_[0]);
  return got == want;
}

}  // namespace pilecore::card
