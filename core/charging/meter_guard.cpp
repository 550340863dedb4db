#include "meter_guard.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace pilecore::core {

std::string_view to_string(MeterProblem p) {
  switch (p) {
    case MeterProblem::none: return "none";
    case MeterProblem::stale: return "stale";
    case MeterProblem::not_finite: return "not_finite";
    case MeterProblem::out_of_range: return "out_of_range";
    case MeterProblem::backwards: return "backwards";
    case MeterProblem::too_fast: return "too_fast";
    case MeterProblem::stalled: return "stalled";
  }
  return "unknown";
}

MeterGuard::MeterGuard(MeterPlausibility settings, std::int64_t max_power_w) : s_(settings), max_power_w_(std::max<std::int64_t>(0, max_power_w)) {}

std::optional<std::pair<MeterProblem, std::string>> MeterGuard::compare(const MeterReading& from, TimePoint since, TimePoint time, std::int64_t wh) const {
  if (wh < from.wh) return std::pair{MeterProblem::backwards, fmt::format("reads {} Wh, below the last plausible reading {} Wh", wh, from.wh)};
  const auto elapsed_ms = std::max<std::int64_t>(0, (time - since).count());
  // In double: max_power_w times days of milliseconds would overflow an int64 product.
  const double allowance = static_cast<double>(max_power_w_) * static_cast<double>(elapsed_ms) / 3.6e6;
  const double limit = allowance * (1.0 + static_cast<double>(s_.tolerance_pct) / 100.0) + static_cast<double>(s_.tolerance_wh);
  const std::int64_t delta = wh - from.wh;  // both within [0, max_wh <= 2^53]: no overflow
  if (static_cast<double>(delta) > limit) {
    return std::pair{MeterProblem::too_fast,
                     fmt::format("reads {} Wh, {} Wh above the last plausible reading {} Wh, over {:.3f} s in which {} W allows at most {:.0f} Wh", wh,
                                 delta, from.wh, static_cast<double>(elapsed_ms) / 1000.0, max_power_w_, std::floor(limit))};
  }
  return std::nullopt;
}

MeterCheck MeterGuard::bad(MeterProblem p, std::string why) {
  ++bad_streak_;
  ++implausible_total_;
  MeterCheck c;
  c.problem = p;
  c.why = std::move(why);
  if (bad_streak_ >= s_.fault_after && !faulted_) {
    faulted_ = true;
    stall_fault_ = false;
    c.fault_raised = true;
  }
  return c;
}

MeterCheck MeterGuard::good(MeterReading r) {
  const bool moved = !last_ || r.wh != last_->wh;
  if (moved) moved_ = r.time;
  last_ = r;
  bad_streak_ = 0;
  candidate_.reset();
  candidate_run_ = 0;
  MeterCheck c;
  c.plausible = true;
  c.reading = r;
  // A stall fault needs more than a reading that agrees with the held one: the register must
  // move, or the power must have stopped (then holding is right).
  if (faulted_ && (!stall_fault_ || moved || !power_since_)) {
    faulted_ = false;
    stall_fault_ = false;
    c.fault_cleared = true;
  }
  return c;
}

MeterCheck MeterGuard::check(TimePoint time, double value_wh, bool in_session) {
  if (!std::isfinite(value_wh)) return bad(MeterProblem::not_finite, fmt::format("reads {} Wh, not a number", value_wh));
  // On the double, before any conversion: llround of 1e19 is undefined behaviour.
  if (value_wh < 0 || value_wh > static_cast<double>(s_.max_wh)) {
    return bad(MeterProblem::out_of_range, fmt::format("reads {:.17g} Wh, outside 0 to {} Wh", value_wh, s_.max_wh));
  }
  const std::int64_t wh = std::llround(value_wh);
  const MeterReading r{time, wh};
  if (!last_) return good(r);
  if (time < last_->time) {
    MeterCheck c;
    c.problem = MeterProblem::stale;
    c.why = fmt::format("reads {} Wh taken before the last plausible reading {} Wh", wh, last_->wh);
    return c;
  }
  auto problem = compare(*last_, moved_, time, wh);
  if (!problem) return good(r);

  // A new baseline, when the meter has been replaced or reset: readings that keep agreeing with
  // each other while they disagree with the old baseline.
  if (candidate_ && !compare(*candidate_, candidate_moved_, time, wh)) {
    ++candidate_run_;
    if (wh != candidate_->wh) candidate_moved_ = time;
    candidate_ = r;
  } else {
    candidate_ = r;
    candidate_moved_ = time;
    candidate_run_ = 1;
  }
  // At least two: with fault_after 1 a single spike would otherwise become the baseline.
  if (!in_session && candidate_run_ >= std::max<std::int64_t>(2, s_.fault_after)) {
    const std::int64_t old = last_->wh, run = candidate_run_;
    last_.reset();  // good() then counts the new baseline as moved
    MeterCheck c = good(r);
    c.why = fmt::format("{} consistent readings up to {} Wh replace the baseline {} Wh (meter replaced or reset)", run, wh, old);
    return c;
  }
  return bad(problem->first, std::move(problem->second));
}

std::optional<MeterCheck> MeterGuard::check_power(TimePoint now, std::int64_t power_w) {
  if (power_w <= s_.stall_power_w) {
    power_since_.reset();
    return std::nullopt;
  }
  if (!power_since_) power_since_ = now;
  if (!last_ || faulted_) return std::nullopt;
  const TimePoint from = std::max(*power_since_, moved_);
  if (now - from < Duration(s_.stall_ms)) return std::nullopt;
  ++implausible_total_;
  faulted_ = true;
  stall_fault_ = true;
  MeterCheck c;
  c.problem = MeterProblem::stalled;
  c.fault_raised = true;
  c.why = fmt::format("holds {} Wh for {:.3f} s while the power stage reports {} W (above {} W)", last_->wh,
                      static_cast<double>((now - from).count()) / 1000.0, power_w, s_.stall_power_w);
  return c;
}

void MeterGuard::seed(const MeterReading& committed) {
  if (last_) return;
  last_ = committed;
  moved_ = committed.time;
}

}  // namespace pilecore::core
