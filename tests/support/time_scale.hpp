// Slow motion for tests that run under an emulator (the arm64 build under qemu-user, `make
// test-arm64`): PILECORE_TIME_SCALE=N says the machine runs the programs N times slower than the
// native machine the tests' figures were sized on. The tests drive the daemon on a simulated
// clock many times faster than real time, and the daemon enforces simulated deadlines (a payment
// method's answer, the meter's timeout, a fault after two simulated minutes): under qemu it does
// the same work N times slower, so those deadlines passed before it had done what the test waits
// for, and the tests failed on timing, not on behaviour. Dividing every simulated clock speed by N
// gives the daemon the same simulated time per unit of its own work as natively; multiplying every
// real-time wait and budget by N gives the test the same patience. What the tests check does not
// change. Unset (natively) N is 1 and nothing changes. tests/CMakeLists.txt sets it for a build
// whose tests run under an emulator (PILECORE_EMULATION_TIME_SCALE).
#pragma once

#include <fmt/format.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace pilecore::test {

struct TimeScale {
  double factor = 1;

  /// PILECORE_TIME_SCALE, 1 when unset; a value that is not a number from 1 to 100 is an error
  /// (below 1 would tighten native budgets that are already sized for a loaded 2-core machine).
  static TimeScale from_environment() {
    TimeScale t;
    const char* s = std::getenv("PILECORE_TIME_SCALE");
    if (s == nullptr || *s == '\0') return t;
    char* end = nullptr;
    t.factor = std::strtod(s, &end);
    if (end == s || *end != '\0' || !(t.factor >= 1 && t.factor <= 100)) {
      throw std::invalid_argument(fmt::format("PILECORE_TIME_SCALE={}: expected a number from 1 to 100", s));
    }
    return t;
  }

  /// A real-time figure in milliseconds, stretched.
  [[nodiscard]] double ms(double native_ms) const { return native_ms * factor; }
  [[nodiscard]] std::chrono::microseconds us(double native_ms) const {
    return std::chrono::microseconds(static_cast<std::int64_t>(native_ms * factor * 1000));
  }
  /// A real-time wait or budget, stretched.
  template <class Rep, class Period>
  [[nodiscard]] std::chrono::milliseconds operator()(std::chrono::duration<Rep, Period> native) const {
    return std::chrono::milliseconds(static_cast<std::int64_t>(std::chrono::duration<double, std::milli>(native).count() * factor));
  }
  /// A simulated clock speed (simulated seconds per real second), slowed.
  [[nodiscard]] double speed(double native_speed) const { return native_speed / factor; }
  /// The same as a command-line argument (pilecored --clock-speed, pilectl demo --speed).
  [[nodiscard]] std::string speed_arg(double native_speed) const { return fmt::format("{}", speed(native_speed)); }
};

/// This process's scale, read from the environment once.
inline const TimeScale& time_scale() {
  static const TimeScale scale = TimeScale::from_environment();
  return scale;
}

}  // namespace pilecore::test
