// pilecore plugin SDK: what a plugin publishes to the core.
#pragma once

#include <cstdint>
#include <string_view>

#include "pilecore/clock.hpp"

namespace pilecore {
inline namespace v2 {

/// One measurement on a named channel. Physical quantities (V, A, W, degC, %RH) are doubles;
/// energy registers are published in integer Wh, which a double holds exactly below 2^53.
struct Sample {
  std::string_view channel;  ///< as declared in sensor::ChannelInfo, e.g. "temperature"
  std::string_view unit;     ///< SI-style unit: "V", "A", "W", "Wh", "degC", "%RH", "Hz"
  double value = 0;
  TimePoint time{};          ///< when it was measured, on the host clock
};

enum class AlarmSeverity : std::uint8_t { info, warning, critical };

/// Something an operator should see (a tamper switch, an over-temperature, a lost meter).
struct Alarm {
  AlarmSeverity severity = AlarmSeverity::warning;
  std::string_view code;     ///< stable machine-readable id, e.g. "meter.read_failed"
  std::string_view message;  ///< a sentence for a person
  bool active = true;        ///< false clears a previously raised alarm with the same code
};

}  // namespace v2
}  // namespace pilecore
