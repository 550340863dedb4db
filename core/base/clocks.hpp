// Clock implementations. SystemClock is the only place pilecore reads the system's wall clock.
#pragma once

#include <chrono>

#include "pilecore/clock.hpp"

namespace pilecore::core {

/// Real time: UTC from the system clock, running at speed 1.
class SystemClock final : public Clock {
 public:
  [[nodiscard]] TimePoint now() const noexcept override;
  [[nodiscard]] double speed() const noexcept override { return 1.0; }
};

/// Simulated time: starts at a chosen instant and runs `speed` times faster than real time.
class ScaledClock final : public Clock {
 public:
  ScaledClock(TimePoint start, double speed);
  [[nodiscard]] TimePoint now() const noexcept override;
  [[nodiscard]] double speed() const noexcept override { return speed_; }

 private:
  TimePoint start_;
  std::chrono::steady_clock::time_point real_start_;
  double speed_;
};

/// How long to wait in real (steady) time for `d` to pass on `clock`.
std::chrono::steady_clock::duration real_duration(const Clock& clock, Duration d);

/// Parses "2026-01-01T00:00:00Z" or "2026-01-01T00:00:00.250Z" (UTC only). Returns false when malformed.
bool parse_utc(std::string_view text, TimePoint& out);
/// "2026-01-01T00:00:00.000Z"
std::string format_utc(TimePoint t);

}  // namespace pilecore::core
