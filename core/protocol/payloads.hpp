// The payloads of the wire protocol's message types (docs/protocol.md, "Payloads"):
//  - a record (control, transaction, status, telemetry): CBOR {"k": key, "c": kind, "b": body};
//  - an acknowledgement (ack): CBOR {"a": [keys], "l": highest ledger seq held};
//  - compact telemetry (telemetry_compact): n fixed 7-byte connector records, for LoRaWAN.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "frame.hpp"

namespace pilecore::core::protocol {

/// Deeper CBOR is refused before it is built: the decoder recurses per level, and a frame of
/// nested arrays must not exhaust the stack.
inline constexpr int kMaxCborDepth = 16;
inline constexpr std::size_t kMaxKeySize = 64;
inline constexpr std::size_t kMaxKindSize = 32;

/// One CBOR data item occupying all of `bytes`, at most kMaxCborDepth deep, no tags.
[[nodiscard]] Result<nlohmann::json> parse_cbor(ByteView bytes);

/// What the outbox sends: the idempotency key the back end acknowledges, what kind of record it
/// is ("ledger", "operation", "voucher", "status", "alarm", "meter", ...) and its body.
struct Record {
  std::string key;
  std::string kind;
  nlohmann::json body;
};
[[nodiscard]] Bytes encode_record(const Record& record);
[[nodiscard]] Result<Record> decode_record(ByteView payload);

/// The back end's application-level acknowledgement: it has stored these records, so the pile
/// may forget them. `ledger_seq` is the highest ledger seq it holds (anchoring).
struct Ack {
  std::vector<std::string> keys;
  std::optional<std::uint64_t> ledger_seq;
};
[[nodiscard]] Bytes encode_ack(const Ack& ack);
[[nodiscard]] Result<Ack> decode_ack(ByteView payload);

/// OCPP 1.6 ChargePointStatus, in the order the compact layout numbers them.
enum class ConnectorStatus : std::uint8_t { available, preparing, charging, suspended_ev, suspended_evse, finishing, reserved, unavailable, faulted };

inline constexpr std::size_t kCompactRecordSize = 7;
inline constexpr std::uint32_t kCompactPowerStepW = 10;
inline constexpr std::uint32_t kCompactMaxPowerW = 0xFFFF * kCompactPowerStepW;

struct ConnectorTelemetry {
  std::uint8_t connector = 0;  ///< 0..15
  ConnectorStatus status = ConnectorStatus::available;
  std::uint32_t power_w = 0;    ///< sent in 10 W steps (truncated), at most 655350 W
  std::uint32_t meter_wh = 0;   ///< the connector's meter register
};
/// Throws std::invalid_argument for a connector over 15, a power over kCompactMaxPowerW or no records.
[[nodiscard]] Bytes encode_compact_telemetry(const std::vector<ConnectorTelemetry>& records);
[[nodiscard]] Result<std::vector<ConnectorTelemetry>> decode_compact_telemetry(ByteView payload);

}  // namespace pilecore::core::protocol
