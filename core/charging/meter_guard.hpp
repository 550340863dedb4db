// Meter plausibility: whether a billing meter's energy_import reading may be committed and
// billed. Pure (no I/O, no clock of its own: every time comes with the call), one per connector.
//
// A meter that lies costs money both ways: a spike bills the customer for energy never
// delivered (issue 10 saw 1e9 kWh billed, the whole pre-authorisation captured), a reset or a
// register that holds gives the energy away. The register cannot be trusted on its own, so each
// reading is checked against physics the core knows: the connector's max_power_w bounds how far
// the register can move in the time elapsed. A reading that fails is never used; the caller keeps
// billing to the last plausible reading and, after `fault_after` failures in a row, faults.
//
// Rules (docs/meters.md, "What the core checks"):
//  - finite and within [0, max_wh], checked on the double before it becomes an int64;
//  - never below the last plausible reading;
//  - never further above it than max_power_w allows over the time since the register last
//    moved, plus tolerance_pct of that and tolerance_wh. Measured from when the value was first
//    seen, not last seen: a register that holds and then steps by its resolution is honest;
//  - with no reading yet (after a start) only the range is checked: there is nothing to compare;
//  - outside a session, `fault_after` readings in a row that agree with each other (by the rules
//    above) but not with the old baseline become the new baseline: a meter replaced or reset is
//    accepted once it counts steadily; inside a session never, so the session's bill is safe;
//  - stall: while the power stage reports more than stall_power_w, the register must move within
//    stall_ms; otherwise the meter is faulted at once (stall_ms already is the patience). That
//    fault clears once the power stops (the contactor opened) or the register moves again.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "bill.hpp"
#include "session_config.hpp"

namespace pilecore::core {

/// stale: taken before the last plausible reading (delivered late, e.g. behind a reading the
/// plugin published synchronously): not a later reading, so neither used nor held against the meter.
enum class MeterProblem : std::uint8_t { none, stale, not_finite, out_of_range, backwards, too_fast, stalled };
std::string_view to_string(MeterProblem p);

struct MeterCheck {
  bool plausible = false;
  MeterReading reading;              ///< the reading in integer Wh, when plausible
  MeterProblem problem = MeterProblem::none;
  std::string why;                   ///< for the alarm: the values and the bound they broke
  bool fault_raised = false;         ///< this check faulted the meter: stop the session, fault the connector
  bool fault_cleared = false;        ///< this plausible reading ends the meter's fault
};

class MeterGuard {
 public:
  MeterGuard(MeterPlausibility settings, std::int64_t max_power_w);

  /// One energy_import reading, in Wh as the plugin published it.
  MeterCheck check(TimePoint time, double value_wh, bool in_session);
  /// The last reading committed before a restart: the first reading after it is compared with it
  /// instead of being checked for range only (a spike right after a start must not open a bill).
  /// Ignored once a reading has been seen. A meter replaced meanwhile becomes the baseline the
  /// usual way: fault_after steady readings outside a session.
  void seed(const MeterReading& committed);
  /// What the power stage reports now. Returns a stall (problem stalled, fault_raised) once the
  /// register has held for stall_ms while power flowed; nullopt otherwise.
  std::optional<MeterCheck> check_power(TimePoint now, std::int64_t power_w);

  [[nodiscard]] bool faulted() const { return faulted_; }
  [[nodiscard]] std::int64_t bad_streak() const { return bad_streak_; }
  [[nodiscard]] std::uint64_t implausible_total() const { return implausible_total_; }
  [[nodiscard]] const std::optional<MeterReading>& last() const { return last_; }
  [[nodiscard]] const MeterPlausibility& settings() const { return s_; }

 private:
  /// The most `to` may read after `from`, first seen at `since`, by `time`; nullopt when it may.
  [[nodiscard]] std::optional<std::pair<MeterProblem, std::string>> compare(const MeterReading& from, TimePoint since, TimePoint time,
                                                                           std::int64_t wh) const;
  MeterCheck bad(MeterProblem p, std::string why);
  MeterCheck good(MeterReading r);

  MeterPlausibility s_;
  std::int64_t max_power_w_;
  std::optional<MeterReading> last_;  ///< the last plausible reading
  TimePoint moved_{};                 ///< when last_->wh was first seen
  std::int64_t bad_streak_ = 0;
  std::uint64_t implausible_total_ = 0;
  bool faulted_ = false;
  bool stall_fault_ = false;
  std::optional<TimePoint> power_since_;  ///< power above stall_power_w since then
  /// Outside a session: implausible but in-range readings that agree with each other, the
  /// candidate for a new baseline (see the header comment).
  std::optional<MeterReading> candidate_;
  TimePoint candidate_moved_{};
  std::int64_t candidate_run_ = 0;
};

}  // namespace pilecore::core
