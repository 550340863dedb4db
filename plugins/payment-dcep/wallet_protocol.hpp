// The pile's side of the e-CNY hard wallet protocol (docs/payments.md, "e-CNY hard wallet").
// The real wallet protocol is not public; this one is pilecore's own: ISO 7816-4 short APDUs over
// ISO 14443-4. Pure functions, no I/O: every length is checked, every parse failure is an
// error message, never a crash (the bytes come from whatever is held at the reader).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

namespace dcep {

using Bytes = std::vector<std::uint8_t>;
using ByteView = std::span<const std::uint8_t>;

/// F0 'P' 'C' 'D' 'C' 'E' 'P' 01: in the proprietary range (ISO 7816-5, first nibble F).
inline constexpr std::array<std::uint8_t, 8> kAid = {0xF0, 0x50, 0x43, 0x44, 0x43, 0x45, 0x50, 0x01};
inline constexpr std::uint8_t kProtocolVersion = 0x01;
inline constexpr std::uint8_t kVoucherFormat = 0x01;
inline constexpr std::size_t kNonceSize = 16;
inline constexpr std::size_t kMaxIdSize = 32;
/// GET RESPONSE rounds before a wallet is taken to be looping.
inline constexpr int kMaxChunks = 64;

// Commands.
Bytes select_command();
Bytes get_wallet_info_command();
/// amount (u32 BE) | merchant length | merchant | nonce (16) | time (u64 BE, Unix ms).
Bytes payment_command(std::uint32_t amount_fen, const std::string& merchant_id, ByteView nonce, std::uint64_t time_ms);
Bytes get_response_command(std::uint8_t le);

/// A response APDU split into data and status word.
struct Response {
  Bytes data;
  std::uint16_t sw = 0;
  [[nodiscard]] bool ok() const { return sw == 0x9000; }
  /// 61xx: more data waits; xx bytes (00: 256 or more).
  [[nodiscard]] bool more() const { return (sw >> 8) == 0x61; }
};
std::optional<Response> split_response(ByteView apdu);
/// What a status word means, for a decline reason.
std::string describe_status(std::uint16_t sw);

struct WalletInfo {
  std::string wallet_id;
  std::uint32_t counter = 0;
  Bytes certificate;  ///< DER
};
/// Parses the (reassembled) GET WALLET INFO data; a string is what is wrong with it.
std::variant<WalletInfo, std::string> parse_wallet_info(ByteView data);

struct Voucher {
  Bytes signed_body;  ///< the bytes the signature covers (format .. time)
  std::string wallet_id;
  std::uint32_t counter = 0;
  std::uint32_t amount_fen = 0;
  std::string merchant_id;
  Bytes nonce;
  std::uint64_t time_ms = 0;
  Bytes signature;    ///< DER SM2 signature
  Bytes certificate;  ///< DER
};
std::variant<Voucher, std::string> parse_voucher(ByteView data);

}  // namespace dcep
