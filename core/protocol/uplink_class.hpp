// The four classes of uplink record (issue #12): the outbox sends by class priority, drops only
// status and telemetry when full, and routes each class to a link by configuration.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "frame.hpp"
#include "pilecore/link.hpp"

namespace pilecore::core::protocol {

/// In priority order: a lower value is sent first.
enum class UplinkClass : std::uint8_t {
  control = 0,      ///< payment verification, a remote command's result
  transaction = 1,  ///< money operations, ledger records, vouchers: never dropped
  status = 2,       ///< status changes, alarms
  telemetry = 3,    ///< meter values, temperatures: dropped first
};
inline constexpr std::size_t kUplinkClassCount = 4;

[[nodiscard]] std::string_view to_string(UplinkClass c);
[[nodiscard]] std::optional<UplinkClass> parse_uplink_class(std::string_view name);
/// The message type a CBOR record of this class travels as.
[[nodiscard]] MessageType message_type(UplinkClass c);
/// Whether the outbox may drop it to stay within its bound (status and telemetry only).
[[nodiscard]] bool droppable(UplinkClass c);
/// The SDK's coarser traffic class a link plugin is told (link.hpp): control stays control,
/// transactions are bulk (ledger uploads), status and telemetry are telemetry.
[[nodiscard]] link::TrafficClass traffic_class(UplinkClass c);

}  // namespace pilecore::core::protocol
