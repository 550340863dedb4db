// pilecore plugin SDK: the power stage and the vehicle side of one connector.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string_view>

#include "pilecore/plugin.hpp"

namespace pilecore {
inline namespace v2 {
namespace power {

enum class Event : std::uint8_t {
  plugged,        ///< a vehicle is connected (control pilot state B / CC1 4 V)
  unplugged,
  ev_ready,       ///< the vehicle asks for energy (state C/D)
  ev_paused,      ///< the vehicle stopped asking but is still connected
  ev_full,        ///< the vehicle reports its battery full
  fault,          ///< the power stage or the vehicle reports a fault; detail says which
  fault_cleared,
};

constexpr std::string_view to_string(Event e) noexcept {
  switch (e) {
    case Event::plugged: return "plugged";
    case Event::unplugged: return "unplugged";
    case Event::ev_ready: return "ev_ready";
    case Event::ev_paused: return "ev_paused";
    case Event::ev_full: return "ev_full";
    case Event::fault: return "fault";
    case Event::fault_cleared: return "fault_cleared";
  }
  return "unknown";
}

/// What the vehicle side reports, where the connector standard carries it.
struct VehicleStatus {
  std::optional<double> soc_percent;
  std::optional<double> battery_temperature_c;
  std::int64_t power_w = 0;  ///< power flowing now
};

using EventSink = std::function<void(Event event, std::string_view detail)>;

class PowerStage : public Plugin {
 public:
  static constexpr Kind kind = Kind::power;

  /// Where to report events; called on the core's strand.
  virtual void set_event_sink(EventSink sink) noexcept = 0;
  virtual Status close_contactor() noexcept = 0;
  virtual Status open_contactor() noexcept = 0;
  /// Caps the power delivered; the core has already clamped it to the connector's limit.
  virtual Status set_power_limit(std::int64_t watts) noexcept = 0;
  [[nodiscard]] virtual VehicleStatus vehicle() const noexcept = 0;
};

}  // namespace power
}  // namespace v2
}  // namespace pilecore
