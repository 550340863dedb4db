#include "frame.hpp"

#include <fmt/format.h>

#include <numeric>
#include <stdexcept>

namespace pilecore::core::protocol {

bool is_known(std::uint8_t type) {
  switch (static_cast<MessageType>(type)) {
    case MessageType::control:
    case MessageType::transaction:
    case MessageType::status:
    case MessageType::telemetry:
    case MessageType::telemetry_compact:
    case MessageType::ack:
    case MessageType::command: return true;
  }
  return false;
}

bool is_uplink(MessageType type) { return (static_cast<std::uint8_t>(type) & 0x80) == 0; }

std::string_view to_string(MessageType type) {
  switch (type) {
    case MessageType::control: return "control";
    case MessageType::transaction: return "transaction";
    case MessageType::status: return "status";
    case MessageType::telemetry: return "telemetry";
    case MessageType::telemetry_compact: return "telemetry_compact";
    case MessageType::ack: return "ack";
    case MessageType::command: return "command";
  }
  return "unknown";
}

std::string_view to_string(Error e) {
  switch (e) {
    case Error::truncated: return "truncated";
    case Error::trailing_bytes: return "trailing_bytes";
    case Error::bad_version: return "bad_version";
    case Error::reserved_flags: return "reserved_flags";
    case Error::unknown_type: return "unknown_type";
    case Error::too_large: return "too_large";
    case Error::bad_payload: return "bad_payload";
    case Error::bad_fragment: return "bad_fragment";
    case Error::fragment_conflict: return "fragment_conflict";
    case Error::digest_mismatch: return "digest_mismatch";
    case Error::too_many_transfers: return "too_many_transfers";
    case Error::timed_out: return "timed_out";
  }
  return "unknown";
}

std::uint64_t Counters::total() const { return std::accumulate(by_error_.begin(), by_error_.end(), std::uint64_t{0}); }

Bytes encode(const Header& header, ByteView payload) {
  if (payload.size() > kMaxPayload) {
    throw std::length_error(fmt::format("a frame's payload is at most {} bytes, not {}: fragment it", kMaxPayload, payload.size()));
  }
  Bytes out;
  out.reserve(kHeaderSize + payload.size());
  out.push_back(static_cast<std::uint8_t>((header.version << 4) | (header.flags & 0x0F)));
  out.push_back(static_cast<std::uint8_t>(header.type));
  put_u16(out, static_cast<std::uint16_t>(payload.size()));
  put_u32(out, header.device_id);
  put_u32(out, header.timestamp);
  put_u32(out, header.sequence);
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

namespace {
Failure fail(Counters* counters, Error e, std::string message) {
  if (counters) counters->count(e);
  return {e, std::move(message)};
}
}  // namespace

Result<FrameView> decode(ByteView bytes, Counters* counters) {
  if (bytes.size() < kHeaderSize) {
    return fail(counters, Error::truncated, fmt::format("a frame has a {}-byte header; got {} bytes", kHeaderSize, bytes.size()));
  }
  const std::uint8_t* p = bytes.data();
  Header h;
  h.version = p[0] >> 4;
  h.flags = p[0] & 0x0F;
  if (h.version != kVersion) return fail(counters, Error::bad_version, fmt::format("protocol version {} (this side speaks {})", h.version, kVersion));
  if ((h.flags & ~flags::known) != 0) return fail(counters, Error::reserved_flags, fmt::format("reserved flag bits set: 0x{:x}", h.flags & ~flags::known));
  if (!is_known(p[1])) return fail(counters, Error::unknown_type, fmt::format("unknown message type 0x{:02x}", p[1]));
  h.type = static_cast<MessageType>(p[1]);
  h.payload_length = get_u16(p + 2);
  h.device_id = get_u32(p + 4);
  h.timestamp = get_u32(p + 8);
  h.sequence = get_u32(p + 12);
  const std::size_t have = bytes.size() - kHeaderSize;
  if (have < h.payload_length) {
    return fail(counters, Error::truncated, fmt::format("the header announces {} payload bytes; {} arrived", h.payload_length, have));
  }
  if (have > h.payload_length) {
    return fail(counters, Error::trailing_bytes, fmt::format("the header announces {} payload bytes; {} arrived", h.payload_length, have));
  }
  return FrameView{h, bytes.subspan(kHeaderSize)};
}

}  // namespace pilecore::core::protocol
