// pilecore plugin SDK: time.
//
// Nothing in pilecore reads the system clock directly. Production runs on real time; tests and
// the demo run on a simulated clock that may go faster than real time. Timers set through
// Host::schedule follow the same clock.
#pragma once

#include <chrono>
#include <cstdint>

namespace pilecore {
inline namespace v2 {

using Duration = std::chrono::milliseconds;
/// A UTC instant with millisecond resolution.
using TimePoint = std::chrono::sys_time<std::chrono::milliseconds>;
/// Identifies a timer set with Host::schedule; 0 is never a valid id.
using TimerId = std::uint64_t;

class Clock {
 public:
  virtual ~Clock() = default;
  /// The current UTC time on this clock.
  [[nodiscard]] virtual TimePoint now() const noexcept = 0;
  /// How many clock seconds pass per real second (1 in production).
  [[nodiscard]] virtual double speed() const noexcept = 0;
};

}  // namespace v2
}  // namespace pilecore
