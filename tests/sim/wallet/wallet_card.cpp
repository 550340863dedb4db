#include "wallet_card.hpp"

#include <openssl/err.h>
#include <openssl/evp.h>

#include <algorithm>
#include <stdexcept>
#include <string_view>

namespace pilecore::sim {

namespace {

using Bytes = std::vector<std::uint8_t>;

constexpr std::string_view kSm2Id = "1234567812345678";

Bytes sw(std::uint8_t sw1, std::uint8_t sw2) { return {sw1, sw2}; }

void put_be(Bytes& out, std::uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

std::uint64_t get_be(std::span<const std::uint8_t> in, std::size_t at, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | in[at + static_cast<std::size_t>(i)];
  return v;
}

Bytes sign(const Pkey& key, const Bytes& message) {
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  EVP_PKEY_CTX* pctx = nullptr;
  Bytes sig;
  std::size_t len = 0;
  const bool ok = md != nullptr && EVP_DigestSignInit_ex(md, &pctx, "SM3", nullptr, nullptr, key.get(), nullptr) == 1 &&
                  EVP_PKEY_CTX_set1_id(pctx, kSm2Id.data(), static_cast<int>(kSm2Id.size())) > 0 &&
                  EVP_DigestSign(md, nullptr, &len, message.data(), message.size()) == 1 && (sig.resize(len), true) &&
                  EVP_DigestSign(md, sig.data(), &len, message.data(), message.size()) == 1;
  EVP_MD_CTX_free(md);
  if (!ok) {
    ERR_clear_error();
    throw std::runtime_error("wallet simulator: SM2 signing failed");
  }
  sig.resize(len);
  return sig;
}

}  // namespace

const std::vector<std::uint8_t> WalletCard::kAid = {0xF0, 'P', 'C', 'D', 'C', 'E', 'P', 0x01};

WalletCard::WalletCard(Settings settings) : settings_(std::move(settings)) {
  if (settings_.wallet_id.empty() || settings_.wallet_id.size() > 32) throw std::invalid_argument("wallet id: 1 to 32 characters");
  if (settings_.chunk == 0 || settings_.chunk > 256) throw std::invalid_argument("chunk: 1 to 256 bytes");
}

std::vector<std::uint8_t> WalletCard::ats() const { return {0x78, 0x80, 0x70, 0x02}; }

void WalletCard::set_misbehaviour(Misbehaviour m) {
  std::lock_guard lock(mutex_);
  misbehaviour_ = m;
}
std::int64_t WalletCard::balance_fen() const {
  std::lock_guard lock(mutex_);
  return settings_.balance_fen;
}
std::uint32_t WalletCard::counter() const {
  std::lock_guard lock(mutex_);
  return settings_.counter;
}
int WalletCard::vouchers_signed() const {
  std::lock_guard lock(mutex_);
  return signed_;
}

std::vector<std::uint8_t> WalletCard::transceive(std::span<const std::uint8_t> command) {
  std::lock_guard lock(mutex_);
  return answer(command);
}

std::vector<std::uint8_t> WalletCard::answer(std::span<const std::uint8_t> apdu) {
  if (apdu.size() < 4) return sw(0x67, 0x00);
  const std::uint8_t cla = apdu[0], ins = apdu[1], p1 = apdu[2], p2 = apdu[3];
  // Short APDUs only: case 1 (header), 2 (header Le), 3 (header Lc data), 4 (header Lc data Le).
  std::span<const std::uint8_t> data;
  if (apdu.size() > 5) {
    const std::size_t lc = apdu[4];
    if (lc == 0 || apdu.size() < 5 + lc || apdu.size() > 6 + lc) return sw(0x67, 0x00);
    data = apdu.subspan(5, lc);
  }
  const std::size_t le = apdu.size() == 5 ? (apdu[4] == 0 ? 256 : apdu[4]) : 256;

  if (cla == 0x00 && ins == 0xA4) {  // SELECT
    if (p1 != 0x04 || p2 != 0x00) return sw(0x6A, 0x86);
    pending_.clear();
    if (!std::equal(data.begin(), data.end(), kAid.begin(), kAid.end())) {
      selected_ = false;
      return sw(0x6A, 0x82);
    }
    selected_ = true;
    return {0x01, 0x90, 0x00};  // protocol version 1
  }
  if (cla == 0x00 && ins == 0xC0) {  // GET RESPONSE
    if (pending_.empty()) return sw(0x69, 0x85);
    return next_chunk(le);
  }
  if (cla != 0x80) return sw(0x6E, 0x00);
  if (!selected_) return sw(0x69, 0x85);
  if (p1 != 0 || p2 != 0) return sw(0x6A, 0x86);
  if (ins == 0x10) {  // GET WALLET INFO
    if (!data.empty()) return sw(0x67, 0x00);
    Bytes info;
    info.push_back(static_cast<std::uint8_t>(settings_.wallet_id.size()));
    info.insert(info.end(), settings_.wallet_id.begin(), settings_.wallet_id.end());
    put_be(info, settings_.counter, 4);
    const Bytes cert = to_der(settings_.certificate);
    put_be(info, cert.size(), 2);
    info.insert(info.end(), cert.begin(), cert.end());
    return send_data(std::move(info));
  }
  if (ins == 0x20) return payment(data);  // PAYMENT
  return sw(0x6D, 0x00);
}

std::vector<std::uint8_t> WalletCard::payment(std::span<const std::uint8_t> data) {
  // amount (4) | merchant length (1) | merchant | nonce (16) | time (8)
  if (data.size() < 4 + 1 + 1 + 16 + 8) return sw(0x67, 0x00);
  const std::uint32_t amount = static_cast<std::uint32_t>(get_be(data, 0, 4));
  const std::size_t mlen = data[4];
  if (mlen == 0 || mlen > 32 || data.size() != 5 + mlen + 16 + 8) return sw(0x6A, 0x80);
  const std::span<const std::uint8_t> merchant = data.subspan(5, mlen);
  Bytes nonce(data.begin() + static_cast<std::ptrdiff_t>(5 + mlen), data.begin() + static_cast<std::ptrdiff_t>(5 + mlen + 16));
  const std::uint64_t time_ms = get_be(data, 5 + mlen + 16, 8);
  if (amount == 0) return sw(0x6A, 0x80);

  if (misbehaviour_ == Misbehaviour::replay_last_voucher && !last_voucher_.empty()) return send_data(last_voucher_);
  if (static_cast<std::int64_t>(amount) > settings_.balance_fen) return sw(0x94, 0x01);  // insufficient balance

  std::uint32_t counter = settings_.counter + 1;
  std::uint32_t signed_amount = amount;
  if (misbehaviour_ == Misbehaviour::counter_back) counter = settings_.counter;
  if (misbehaviour_ == Misbehaviour::wrong_nonce) nonce[0] ^= 0xFF;
  if (misbehaviour_ == Misbehaviour::wrong_amount) signed_amount = amount - 1;

  Bytes body;
  body.push_back(0x01);  // voucher format
  body.push_back(static_cast<std::uint8_t>(settings_.wallet_id.size()));
  body.insert(body.end(), settings_.wallet_id.begin(), settings_.wallet_id.end());
  put_be(body, counter, 4);
  put_be(body, signed_amount, 4);
  body.push_back(static_cast<std::uint8_t>(mlen));
  body.insert(body.end(), merchant.begin(), merchant.end());
  body.insert(body.end(), nonce.begin(), nonce.end());
  put_be(body, time_ms, 8);
  const Bytes signature = sign(misbehaviour_ == Misbehaviour::forged_signature ? make_sm2_key() : settings_.key, body);

  Bytes voucher = body;
  voucher.push_back(static_cast<std::uint8_t>(signature.size()));
  voucher.insert(voucher.end(), signature.begin(), signature.end());
  const Bytes cert = to_der(settings_.certificate);
  put_be(voucher, cert.size(), 2);
  voucher.insert(voucher.end(), cert.begin(), cert.end());

  // The wallet debits itself when it signs: the voucher is the money.
  settings_.balance_fen -= signed_amount;
  settings_.counter = std::max(settings_.counter, counter);
  ++signed_;
  last_voucher_ = voucher;
  return send_data(std::move(voucher));
}

std::vector<std::uint8_t> WalletCard::send_data(std::vector<std::uint8_t> data) {
  pending_ = std::move(data);
  return next_chunk(256);
}

std::vector<std::uint8_t> WalletCard::next_chunk(std::size_t le) {
  const std::size_t n = std::min({le, settings_.chunk, pending_.size()});
  Bytes out(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(n));
  pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(n));
  if (pending_.empty()) {
    out.push_back(0x90);
    out.push_back(0x00);
  } else {
    out.push_back(0x61);
    out.push_back(static_cast<std::uint8_t>(std::min<std::size_t>(pending_.size(), 256) & 0xFF));  // 00: 256 or more
  }
  return out;
}

}  // namespace pilecore::sim
