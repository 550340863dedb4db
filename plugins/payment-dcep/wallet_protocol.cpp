#include "wallet_protocol.hpp"

#include <fmt/format.h>

namespace dcep {

namespace {

/// Reads a byte string front to back; every read is bounds-checked.
class Reader {
 public:
  explicit Reader(ByteView in) : in_(in) {}
  bool u8(std::uint8_t& v) {
    if (left() < 1) return false;
    v = in_[at_++];
    return true;
  }
  bool be(std::uint64_t& v, int bytes) {
    if (left() < static_cast<std::size_t>(bytes)) return false;
    v = 0;
    for (int i = 0; i < bytes; ++i) v = (v << 8) | in_[at_++];
    return true;
  }
  bool take(std::size_t n, Bytes& out) {
    if (left() < n) return false;
    out.assign(in_.begin() + static_cast<std::ptrdiff_t>(at_), in_.begin() + static_cast<std::ptrdiff_t>(at_ + n));
    at_ += n;
    return true;
  }
  /// A length byte (1..max) and that many printable ASCII characters.
  bool text(std::string& out, std::size_t max) {
    std::uint8_t n = 0;
    Bytes raw;
    if (!u8(n) || n == 0 || n > max || !take(n, raw)) return false;
    for (auto c : raw) {
      if (c < 0x21 || c > 0x7E) return false;
    }
    out.assign(raw.begin(), raw.end());
    return true;
  }
  [[nodiscard]] std::size_t left() const { return in_.size() - at_; }
  [[nodiscard]] std::size_t at() const { return at_; }

 private:
  ByteView in_;
  std::size_t at_ = 0;
};

void put_be(Bytes& out, std::uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

}  // namespace

Bytes select_command() {
  Bytes c = {0x00, 0xA4, 0x04, 0x00, static_cast<std::uint8_t>(kAid.size())};
  c.insert(c.end(), kAid.begin(), kAid.end());
  c.push_back(0x00);
  return c;
}

Bytes get_wallet_info_command() { return {0x80, 0x10, 0x00, 0x00, 0x00}; }

Bytes payment_command(std::uint32_t amount_fen, const std::string& merchant_id, ByteView nonce, std::uint64_t time_ms) {
  Bytes data;
  put_be(data, amount_fen, 4);
  data.push_back(static_cast<std::uint8_t>(merchant_id.size()));
  data.insert(data.end(), merchant_id.begin(), merchant_id.end());
  data.insert(data.end(), nonce.begin(), nonce.end());
  put_be(data, time_ms, 8);
  Bytes c = {0x80, 0x20, 0x00, 0x00, static_cast<std::uint8_t>(data.size())};
  c.insert(c.end(), data.begin(), data.end());
  c.push_back(0x00);
  return c;
}

Bytes get_response_command(std::uint8_t le) { return {0x00, 0xC0, 0x00, 0x00, le}; }

std::optional<Response> split_response(ByteView apdu) {
  if (apdu.size() < 2) return std::nullopt;
  Response r;
  r.data.assign(apdu.begin(), apdu.end() - 2);
  r.sw = static_cast<std::uint16_t>((apdu[apdu.size() - 2] << 8) | apdu[apdu.size() - 1]);
  return r;
}

std::string describe_status(std::uint16_t sw) {
  switch (sw) {
    case 0x6A82: return "this card has no e-CNY wallet application (6A82)";
    case 0x9401: return "the wallet's balance is not enough (9401)";
    case 0x6985: return "the wallet refused: conditions not satisfied (6985)";
    case 0x6700: return "the wallet refused the command's length (6700)";
    case 0x6A80: return "the wallet refused the payment request's data (6A80)";
    case 0x6D00: return "the wallet does not know the command (6D00)";
    case 0x6E00: return "the wallet does not know the command class (6E00)";
    default: return fmt::format("the wallet answered status {:04X}", sw);
  }
}

std::variant<WalletInfo, std::string> parse_wallet_info(ByteView data) {
  Reader r(data);
  WalletInfo w;
  std::uint64_t counter = 0, cert_len = 0;
  if (!r.text(w.wallet_id, kMaxIdSize)) return std::string("wallet info: bad wallet id");
  if (!r.be(counter, 4)) return std::string("wallet info: cut short before the counter");
  if (!r.be(cert_len, 2) || cert_len == 0 || !r.take(cert_len, w.certificate)) return std::string("wallet info: bad certificate length");
  if (r.left() != 0) return fmt::format("wallet info: {} unexpected byte(s) at the end", r.left());
  w.counter = static_cast<std::uint32_t>(counter);
  return w;
}

std::variant<Voucher, std::string> parse_voucher(ByteView data) {
  Reader r(data);
  Voucher v;
  std::uint8_t format = 0, sig_len = 0;
  std::uint64_t counter = 0, amount = 0, cert_len = 0;
  if (!r.u8(format) || format != kVoucherFormat) return std::string("voucher: unknown format");
  if (!r.text(v.wallet_id, kMaxIdSize)) return std::string("voucher: bad wallet id");
  if (!r.be(counter, 4) || !r.be(amount, 4)) return std::string("voucher: cut short before the amount");
  if (!r.text(v.merchant_id, kMaxIdSize)) return std::string("voucher: bad merchant id");
  if (!r.take(kNonceSize, v.nonce) || !r.be(v.time_ms, 8)) return std::string("voucher: cut short before the time");
  v.signed_body.assign(data.begin(), data.begin() + static_cast<std::ptrdiff_t>(r.at()));
  if (!r.u8(sig_len) || sig_len == 0 || !r.take(sig_len, v.signature)) return std::string("voucher: bad signature length");
  if (!r.be(cert_len, 2) || cert_len == 0 || !r.take(cert_len, v.certificate)) return std::string("voucher: bad certificate length");
  if (r.left() != 0) return fmt::format("voucher: {} unexpected byte(s) at the end", r.left());
  v.counter = static_cast<std::uint32_t>(counter);
  v.amount_fen = static_cast<std::uint32_t>(amount);
  return v;
}

}  // namespace dcep
