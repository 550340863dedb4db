#include "member_cards.hpp"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <stdexcept>

namespace pilecore::sim {

namespace {

constexpr std::uint8_t kOk = 0x00;
constexpr std::uint8_t kTimeout = 0x01;
constexpr std::uint8_t kMifareAuthError = 0x14;

void check_uid(const std::vector<std::uint8_t>& uid) {
  if (uid.size() != 4 && uid.size() != 7) throw std::invalid_argument("an ISO 14443A UID has 4 or 7 bytes, not " + std::to_string(uid.size()));
}

/// AES-128-CBC, no padding; `data` a whole number of blocks.
std::vector<std::uint8_t> aes_cbc(bool encrypt, const std::array<std::uint8_t, 16>& key, const std::array<std::uint8_t, 16>& iv,
                                  std::span<const std::uint8_t> data) {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  std::vector<std::uint8_t> out(data.size() + 16);
  int n = 0, m = 0;
  const bool ok = ctx != nullptr && EVP_CipherInit_ex(ctx, EVP_aes_128_cbc(), nullptr, key.data(), iv.data(), encrypt ? 1 : 0) == 1 &&
                  EVP_CIPHER_CTX_set_padding(ctx, 0) == 1 &&
                  EVP_CipherUpdate(ctx, out.data(), &n, data.data(), static_cast<int>(data.size())) == 1 &&
                  EVP_CipherFinal_ex(ctx, out.data() + n, &m) == 1;
  EVP_CIPHER_CTX_free(ctx);
  if (!ok) throw std::runtime_error("AES failed");
  out.resize(static_cast<std::size_t>(n + m));
  return out;
}

std::array<std::uint8_t, 16> last_block(std::span<const std::uint8_t> data) {
  std::array<std::uint8_t, 16> b{};
  std::copy(data.end() - 16, data.end(), b.begin());
  return b;
}

std::vector<std::uint8_t> rotate_left(std::span<const std::uint8_t> in) {
  std::vector<std::uint8_t> out(in.begin() + 1, in.end());
  out.push_back(in[0]);
  return out;
}

std::uint32_t le24(std::span<const std::uint8_t> p) { return p[0] | (p[1] << 8) | (static_cast<std::uint32_t>(p[2]) << 16); }

}  // namespace

// --- MIFARE Classic ----------------------------------------------------------------------------

MifareClassicCard::MifareClassicCard(std::vector<std::uint8_t> uid) : uid_(std::move(uid)) {
  check_uid(uid_);
  const Key transport = {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
  for (unsigned s = 0; s < 16; ++s) set_keys(s, transport, transport);
}

void MifareClassicCard::set_keys(unsigned sector, const Key& key_a, const Key& key_b) {
  if (sector >= 16) throw std::invalid_argument("a MIFARE Classic 1K has sectors 0 to 15");
  std::lock_guard lock(mutex_);
  Block& t = blocks_[sector * 4 + 3];
  std::copy(key_a.begin(), key_a.end(), t.begin());
  // Transport access bits FF 07 80 69: key A or B authenticates reads of the data blocks.
  t[6] = 0xFF;
  t[7] = 0x07;
  t[8] = 0x80;
  t[9] = 0x69;
  std::copy(key_b.begin(), key_b.end(), t.begin() + 10);
}

void MifareClassicCard::write(unsigned block, const Block& data) {
  if (block >= 64 || block % 4 == 3 || block == 0) throw std::invalid_argument("not a data block of a MIFARE Classic 1K: " + std::to_string(block));
  std::lock_guard lock(mutex_);
  blocks_[block] = data;
}

void MifareClassicCard::write_text(unsigned block, const std::string& text) {
  if (text.size() > 16) throw std::invalid_argument("a block holds 16 bytes");
  Block b{};
  std::copy(text.begin(), text.end(), b.begin());
  write(block, b);
}

std::vector<std::uint8_t> MifareClassicCard::transceive(std::span<const std::uint8_t> /*command*/) { return {0x6D, 0x00}; }

void MifareClassicCard::reselected() {
  std::lock_guard lock(mutex_);
  authenticated_.reset();
  halted_ = false;
}

std::uint8_t MifareClassicCard::exchange_frame(std::span<const std::uint8_t> frame, std::vector<std::uint8_t>& answer) {
  std::lock_guard lock(mutex_);
  if (halted_ || frame.empty()) return kTimeout;
  const std::uint8_t cmd = frame[0];
  if ((cmd == 0x60 || cmd == 0x61) && frame.size() == 12) {
    const unsigned block = frame[1];
    if (block >= 64) return kTimeout;
    const Block& trailer = blocks_[block / 4 * 4 + 3];
    const auto key = frame.subspan(2, 6);
    const auto uid4 = frame.subspan(8, 4);
    const bool uid_ok = std::equal(uid4.begin(), uid4.end(), uid_.end() - 4);
    const bool key_ok = cmd == 0x60 ? std::equal(key.begin(), key.end(), trailer.begin()) : std::equal(key.begin(), key.end(), trailer.begin() + 10);
    if (!uid_ok || !key_ok) {
      ++refused_auths_;
      authenticated_.reset();
      halted_ = true;
      return kMifareAuthError;
    }
    authenticated_ = block / 4;
    return kOk;
  }
  if (cmd == 0x30 && frame.size() == 2) {
    const unsigned block = frame[1];
    if (block >= 64 || !authenticated_ || *authenticated_ != block / 4) {
      authenticated_.reset();
      halted_ = true;
      return kMifareAuthError;
    }
    ++reads_;
    Block b = blocks_[block];
    if (block % 4 == 3) std::fill(b.begin(), b.begin() + 6, 0);  // key A is never readable
    answer.assign(b.begin(), b.end());
    return kOk;
  }
  return kTimeout;  // a command this model does not know: the card stays silent
}

// --- DESFire EV1 -------------------------------------------------------------------------------

DesfireCard::DesfireCard(std::vector<std::uint8_t> uid) : uid_(std::move(uid)) { check_uid(uid_); }

void DesfireCard::add_application(std::uint32_t aid, std::optional<AesKey> key) {
  std::lock_guard lock(mutex_);
  apps_[aid & 0xFFFFFF].key = key;
}

void DesfireCard::add_file(std::uint32_t aid, std::uint8_t file, std::vector<std::uint8_t> data, bool needs_auth) {
  std::lock_guard lock(mutex_);
  apps_.at(aid & 0xFFFFFF).files[file] = {std::move(data), needs_auth};
}

void DesfireCard::reselected() {
  std::lock_guard lock(mutex_);
  selected_.reset();
  authenticated_ = false;
  awaiting_second_step_ = false;
}

std::vector<std::uint8_t> DesfireCard::transceive(std::span<const std::uint8_t> c) {
  if (c.empty() || c[0] != 0x90) return {0x6E, 0x00};
  if (c.size() < 5 || c[2] != 0 || c[3] != 0) return {0x91, 0x7E};  // length error
  const std::size_t lc = c.size() > 5 ? c[4] : 0;
  if (c.size() != 5 && c.size() != 6 + lc) return {0x91, 0x7E};
  const auto data = c.size() > 5 ? c.subspan(5, lc) : std::span<const std::uint8_t>();
  const std::uint8_t ins = c[1];
  std::lock_guard lock(mutex_);
  const bool second_step = awaiting_second_step_;
  awaiting_second_step_ = false;
  switch (ins) {
    case 0x5A: {
      if (data.size() != 3) return {0x91, 0x7E};
      authenticated_ = false;
      const std::uint32_t aid = le24(data);
      if (apps_.count(aid) == 0) {
        selected_.reset();
        return {0x91, 0xA0};
      }
      selected_ = aid;
      return {0x91, 0x00};
    }
    case 0xAA: {
      authenticated_ = false;
      if (data.size() != 1) return {0x91, 0x7E};
      if (!selected_ || !apps_[*selected_].key) return {0x91, 0xAE};
      if (data[0] != 0) return {0x91, 0x40};  // no such key
      RAND_bytes(rnd_b_.data(), 16);
      const auto enc = aes_cbc(true, *apps_[*selected_].key, {}, rnd_b_);
      iv_ = last_block(enc);
      awaiting_second_step_ = true;
      std::vector<std::uint8_t> r = enc;
      r.insert(r.end(), {0x91, 0xAF});
      return r;
    }
    case 0xAF: {
      if (!second_step || !selected_ || data.size() != 32) return {0x91, 0xCA};  // command aborted
      const AesKey& key = *apps_[*selected_].key;
      const auto plain = aes_cbc(false, key, iv_, data);
      const auto rnd_b_rot = rotate_left(rnd_b_);
      if (!std::equal(rnd_b_rot.begin(), rnd_b_rot.end(), plain.begin() + 16)) {
        ++refused_auths_;
        return {0x91, 0xAE};
      }
      const auto rnd_a_rot = rotate_left(std::span<const std::uint8_t>(plain).first(16));
      auto enc = aes_cbc(true, key, last_block(data), rnd_a_rot);
      authenticated_ = true;
      ++authentications_;
      enc.insert(enc.end(), {0x91, 0x00});
      return enc;
    }
    case 0xBD: {
      if (data.size() != 7) return {0x91, 0x7E};
      if (!selected_) return {0x91, 0xA0};
      auto& files = apps_[*selected_].files;
      const auto f = files.find(data[0]);
      if (f == files.end()) return {0x91, 0xF0};
      if (f->second.second && !authenticated_) return {0x91, 0xAE};
      const auto& bytes = f->second.first;
      const std::size_t offset = le24(data.subspan(1, 3));
      std::size_t length = le24(data.subspan(4, 3));
      if (offset > bytes.size()) return {0x91, 0xBE};
      if (length == 0) length = bytes.size() - offset;
      if (offset + length > bytes.size()) return {0x91, 0xBE};
      std::vector<std::uint8_t> r(bytes.begin() + static_cast<std::ptrdiff_t>(offset), bytes.begin() + static_cast<std::ptrdiff_t>(offset + length));
      r.insert(r.end(), {0x91, 0x00});
      return r;
    }
    default:
      return {0x91, 0x1C};
  }
}

}  // namespace pilecore::sim
