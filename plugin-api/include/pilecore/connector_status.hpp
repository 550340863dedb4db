// pilecore plugin SDK: connector status, named after OCPP 1.6 ChargePointStatus so that an
// OCPP link maps them one to one.
#pragma once

#include <cstdint>
#include <string_view>

namespace pilecore {
inline namespace v2 {

enum class ConnectorStatus : std::uint8_t {
  available,
  preparing,
  charging,
  suspended_ev,
  suspended_evse,
  finishing,
  reserved,
  unavailable,
  faulted,
};

/// The OCPP 1.6 spelling ("Available", "SuspendedEV", ...).
constexpr std::string_view to_string(ConnectorStatus s) noexcept {
  switch (s) {
    case ConnectorStatus::available: return "Available";
    case ConnectorStatus::preparing: return "Preparing";
    case ConnectorStatus::charging: return "Charging";
    case ConnectorStatus::suspended_ev: return "SuspendedEV";
    case ConnectorStatus::suspended_evse: return "SuspendedEVSE";
    case ConnectorStatus::finishing: return "Finishing";
    case ConnectorStatus::reserved: return "Reserved";
    case ConnectorStatus::unavailable: return "Unavailable";
    case ConnectorStatus::faulted: return "Faulted";
  }
  return "Unknown";
}

}  // namespace v2
}  // namespace pilecore
