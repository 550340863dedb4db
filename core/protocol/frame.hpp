// The pilecore wire protocol's frame: a 16-byte big-endian header and its payload
// (docs/protocol.md is the specification; its byte-level examples are tests/unit/protocol_test.cpp).
//
// Pure code: no I/O, no clock, no allocation it does not need. Everything decoded here came from
// a radio or a broker, so nothing in it is trusted: a length is checked against the bytes that
// are really there before it is used, and every rejection has a reason that is counted.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace pilecore::core::protocol {

using Bytes = std::vector<std::uint8_t>;
using ByteView = std::span<const std::uint8_t>;

inline constexpr std::size_t kHeaderSize = 16;
inline constexpr std::uint8_t kVersion = 1;
/// The payload length field is 16 bits.
inline constexpr std::size_t kMaxPayload = 0xFFFF;

/// Low nibble of byte 0. Bits not named here must be zero in version 1: a frame that sets one
/// means something this decoder does not understand, so it is refused rather than misread.
namespace flags {
inline constexpr std::uint8_t fragment = 0x01;  ///< the payload starts with a fragment header
inline constexpr std::uint8_t known = fragment;
}  // namespace flags

/// Uplink types (pile to back end) have the top bit clear, downlink types have it set.
enum class MessageType : std::uint8_t {
  control = 0x01,            ///< CBOR record: payment verification, a command's result
  transaction = 0x02,        ///< CBOR record: a money operation, a ledger record, a voucher
  status = 0x03,             ///< CBOR record: a status change, an alarm
  telemetry = 0x04,          ///< CBOR record: meter values, temperatures
  telemetry_compact = 0x05,  ///< fixed layout for LoRaWAN (compact.hpp)
  ack = 0x81,                ///< CBOR: the back end holds these records (application level)
  command = 0x82,            ///< CBOR: a remote command (signed; not decoded by this version)
};
[[nodiscard]] bool is_known(std::uint8_t type);
[[nodiscard]] bool is_uplink(MessageType type);
[[nodiscard]] std::string_view to_string(MessageType type);

struct Header {
  std::uint8_t version = kVersion;
  std::uint8_t flags = 0;
  MessageType type = MessageType::status;
  std::uint16_t payload_length = 0;  ///< filled in by encode()
  std::uint32_t device_id = 0;
  std::uint32_t timestamp = 0;  ///< Unix seconds, UTC
  std::uint32_t sequence = 0;   ///< per device, +1 per frame sent, wraps at 2^32
};

/// A decoded frame; the payload views the bytes given to decode().
struct FrameView {
  Header header;
  ByteView payload;
};

/// Why a frame (or a payload, or a fragment) was refused. Each has a counter (Counters).
enum class Error : std::uint8_t {
  truncated,          ///< fewer bytes than the header or than its payload length says
  trailing_bytes,     ///< more bytes than the header's payload length
  bad_version,
  reserved_flags,
  unknown_type,
  too_large,          ///< a payload over 65535 bytes, or over a link's MTU, or a transfer over its bound
  bad_payload,        ///< CBOR malformed, too deep, or not the shape the message type needs
  bad_fragment,       ///< fragment header inconsistent (index >= count, count changed, empty)
  fragment_conflict,  ///< the same fragment index arrived twice with different bytes
  digest_mismatch,    ///< a reassembled transfer does not match its SHA-256
  too_many_transfers, ///< more transfers in progress than the reassembler's bound
  timed_out,          ///< a transfer did not complete within its timeout
};
inline constexpr std::size_t kErrorCount = 12;
[[nodiscard]] std::string_view to_string(Error e);

struct Failure {
  Error error;
  std::string message;
};

template <class T>
using Result = std::variant<T, Failure>;

/// Counts refusals by reason (what device management reports; a burst of one reason says which
/// side is wrong).
class Counters {
 public:
  void count(Error e) { ++by_error_[static_cast<std::size_t>(e)]; }
  [[nodiscard]] std::uint64_t operator[](Error e) const { return by_error_[static_cast<std::size_t>(e)]; }
  [[nodiscard]] std::uint64_t total() const;

 private:
  std::array<std::uint64_t, kErrorCount> by_error_{};
};

/// The frame's bytes; payload_length is taken from `payload`. Throws std::length_error when the
/// payload exceeds kMaxPayload (a caller bug: fragment first).
[[nodiscard]] Bytes encode(const Header& header, ByteView payload);

/// Decodes exactly one frame occupying all of `bytes`. When `counters` is given, a refusal is
/// counted there.
[[nodiscard]] Result<FrameView> decode(ByteView bytes, Counters* counters = nullptr);

/// Big-endian helpers shared by the payload codecs (bounds are the caller's job).
inline std::uint16_t get_u16(const std::uint8_t* p) { return static_cast<std::uint16_t>((p[0] << 8) | p[1]); }
inline std::uint32_t get_u32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | std::uint32_t{p[3]};
}
inline void put_u16(Bytes& out, std::uint16_t v) {
  out.push_back(static_cast<std::uint8_t>(v >> 8));
  out.push_back(static_cast<std::uint8_t>(v));
}
inline void put_u32(Bytes& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(v >> shift));
}

}  // namespace pilecore::core::protocol
