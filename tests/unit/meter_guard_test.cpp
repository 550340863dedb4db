// The meter plausibility guard, at, below and above each of its thresholds. Time is given with
// each call, so these run on a manual clock: t(ms) below.
//
// The settings used throughout: a 36 kW connector, which moves the register 10 Wh a second
// (1 Wh per 100 ms); tolerance 20 Wh and 10 %; a fault after 3 implausible readings in a row; a
// stall when the register holds 5 s while the power stage reports more than 1000 W.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "meter_guard.hpp"

using namespace pilecore;
using namespace pilecore::core;

namespace {

TimePoint t(std::int64_t ms) { return TimePoint{Duration{1'700'000'000'000 + ms}}; }

MeterPlausibility settings() {
  MeterPlausibility s;
  s.max_wh = 1'000'000'000'000;
  s.tolerance_wh = 20;
  s.tolerance_pct = 10;
  s.fault_after = 3;
  s.stall_power_w = 1000;
  s.stall_ms = 5000;
  return s;
}

constexpr std::int64_t kPower = 36'000;

/// A guard whose baseline is `wh` at t(0).
MeterGuard at(std::int64_t wh, MeterPlausibility s = settings()) {
  MeterGuard g(s, kPower);
  EXPECT_TRUE(g.check(t(0), static_cast<double>(wh), true).plausible);
  return g;
}

}  // namespace

TEST(MeterGuard, TheFirstReadingIsCheckedForRangeOnly) {
  EXPECT_TRUE(MeterGuard(settings(), kPower).check(t(0), 0, true).plausible) << "a new meter reads 0";
  EXPECT_TRUE(MeterGuard(settings(), kPower).check(t(0), 123'456'789, true).plausible);
  const auto c = MeterGuard(settings(), kPower).check(t(0), 4'000'000.4, true);
  ASSERT_TRUE(c.plausible);
  EXPECT_EQ(c.reading.wh, 4'000'000) << "rounded to the nearest Wh";
  EXPECT_EQ(c.reading.time, t(0));
}

TEST(MeterGuard, SeededWithTheLastCommittedReadingTheFirstReadingAfterARestartIsCompared) {
  // 36 kW for an hour: at most 36 kWh (plus tolerance) above the reading committed before.
  MeterGuard spike(settings(), kPower);
  spike.seed({t(0), 1'000'000});
  EXPECT_EQ(spike.check(t(3'600'000), 4'000'000'000, false).problem, MeterProblem::too_fast) << "a spike right after a start";
  MeterGuard honest(settings(), kPower);
  honest.seed({t(0), 1'000'000});
  EXPECT_TRUE(honest.check(t(3'600'000), 1'030'000, true).plausible);
  // A meter replaced while the pile was off reads low: the new baseline once it counts steadily
  // outside a session, as for a meter reset while running.
  MeterGuard replaced(settings(), kPower);
  replaced.seed({t(0), 1'000'000});
  EXPECT_FALSE(replaced.check(t(1000), 10, false).plausible);
  EXPECT_FALSE(replaced.check(t(2000), 11, false).plausible);
  EXPECT_TRUE(replaced.check(t(3000), 12, false).plausible);
  // Seeding after a reading was seen changes nothing.
  MeterGuard seen = at(500);
  seen.seed({t(0), 1'000'000});
  EXPECT_TRUE(seen.check(t(1000), 505, true).plausible);
}

TEST(MeterGuard, ARangeFromZeroToMaxWh) {
  const auto check = [](double v) { return MeterGuard(settings(), kPower).check(t(0), v, false); };
  EXPECT_TRUE(check(1e12).plausible) << "at max_wh";
  EXPECT_EQ(check(1e12 + 1).problem, MeterProblem::out_of_range) << "above max_wh";
  EXPECT_TRUE(check(0).plausible);
  EXPECT_TRUE(check(-0.0).plausible);
  EXPECT_EQ(check(-1).problem, MeterProblem::out_of_range) << "a negative value at the start";
  EXPECT_EQ(check(-0.001).problem, MeterProblem::out_of_range);
  // Beyond int64: refused on the double, never handed to llround (UBSan would say so).
  EXPECT_EQ(check(1e19).problem, MeterProblem::out_of_range);
  EXPECT_EQ(check(-1e19).problem, MeterProblem::out_of_range);
  EXPECT_EQ(check(std::numeric_limits<double>::max()).problem, MeterProblem::out_of_range);
  EXPECT_EQ(check(std::nan("")).problem, MeterProblem::not_finite);
  EXPECT_EQ(check(std::numeric_limits<double>::infinity()).problem, MeterProblem::not_finite);
  EXPECT_EQ(check(-std::numeric_limits<double>::infinity()).problem, MeterProblem::not_finite);

  auto s = settings();
  s.max_wh = 5000;
  EXPECT_TRUE(MeterGuard(s, kPower).check(t(0), 5000, false).plausible);
  EXPECT_TRUE(MeterGuard(s, kPower).check(t(0), 4999.6, false).plausible);
  EXPECT_EQ(MeterGuard(s, kPower).check(t(0), 5000.4, false).problem, MeterProblem::out_of_range) << "the value as read is checked, before rounding";
}

TEST(MeterGuard, TheRegisterNeverGoesBack) {
  auto g = at(1000);
  EXPECT_TRUE(g.check(t(100), 1000, true).plausible) << "holding is not going back";
  const auto c = g.check(t(200), 999, true);
  EXPECT_FALSE(c.plausible);
  EXPECT_EQ(c.problem, MeterProblem::backwards);
  EXPECT_NE(c.why.find("999 Wh, below the last plausible reading 1000 Wh"), std::string::npos) << c.why;
  EXPECT_EQ(g.last()->wh, 1000);
  EXPECT_EQ(at(1000).check(t(200), 0, true).problem, MeterProblem::backwards) << "a reset to 0";
}

// At 36 kW one second allows 10 Wh, 11 with 10 %, 31 with the 20 Wh on top.
TEST(MeterGuard, AdvanceBoundedByMaxPowerOverTheElapsedTimePlusTolerance) {
  EXPECT_TRUE(at(1000).check(t(1000), 1031, true).plausible) << "at the bound";
  EXPECT_TRUE(at(1000).check(t(1000), 1030, true).plausible) << "below";
  const auto above = at(1000).check(t(1000), 1032, true);
  EXPECT_EQ(above.problem, MeterProblem::too_fast) << "above";
  EXPECT_NE(above.why.find("32 Wh above the last plausible reading 1000 Wh, over 1.000 s in which 36000 W allows at most 31 Wh"), std::string::npos)
      << above.why;

  // No time elapsed: the absolute tolerance alone.
  EXPECT_TRUE(at(1000).check(t(0), 1020, true).plausible);
  EXPECT_EQ(at(1000).check(t(0), 1021, true).problem, MeterProblem::too_fast);

  // The relative tolerance alone: 100 s at 36 kW is 1000 Wh, plus 10 %.
  auto pct_only = settings();
  pct_only.tolerance_wh = 0;
  EXPECT_TRUE(at(1000, pct_only).check(t(100'000), 2100, true).plausible);
  EXPECT_EQ(at(1000, pct_only).check(t(100'000), 2101, true).problem, MeterProblem::too_fast);
  auto none = pct_only;
  none.tolerance_pct = 0;
  EXPECT_TRUE(at(1000, none).check(t(100'000), 2000, true).plausible);
  EXPECT_EQ(at(1000, none).check(t(100'000), 2001, true).problem, MeterProblem::too_fast);

  // The spike: 1e9 kWh a few seconds in.
  EXPECT_EQ(at(5'000'000).check(t(3000), 1e12, true).problem, MeterProblem::too_fast);
}

TEST(MeterGuard, ElapsedTimeCountsFromWhenTheRegisterLastMoved) {
  // A register of 0.1 kWh steps holds, then steps: the energy behind the step flowed over the
  // whole hold, so the bound counts from when 1000 Wh was first seen, not last seen.
  auto g = at(1000);
  for (int ms = 1000; ms <= 9000; ms += 1000) ASSERT_TRUE(g.check(t(ms), 1000, true).plausible);
  EXPECT_TRUE(g.check(t(10'000), 1100, true).plausible) << "10 s allow 130 Wh";
  EXPECT_FALSE(g.check(t(10'100), 1200, true).plausible) << "0.1 s after the step: 21 Wh allowed, not 100";
}

TEST(MeterGuard, NoOverflowOverLongGapsAndHighPowers) {
  MeterGuard g(settings(), 10'000'000);
  ASSERT_TRUE(g.check(t(0), 0, true).plausible);
  const std::int64_t century_ms = 100LL * 365 * 24 * 3600 * 1000;
  EXPECT_TRUE(g.check(t(century_ms), 9.9e11, true).plausible) << "10 MW for a century allows anything up to max_wh";
}

TEST(MeterGuard, FaultAfterConsecutiveImplausibleReadingsAndClearOnAPlausibleOne) {
  auto g = at(1000);
  // Two bad, then a good one: the streak starts again.
  EXPECT_FALSE(g.check(t(100), 1e12, true).fault_raised);
  EXPECT_FALSE(g.check(t(200), -5, true).fault_raised);
  EXPECT_EQ(g.bad_streak(), 2);
  EXPECT_TRUE(g.check(t(300), 1001, true).plausible);
  EXPECT_EQ(g.bad_streak(), 0);
  EXPECT_FALSE(g.faulted());
  // fault_after - 1 in a row: no fault; the fault_after-th raises it, once.
  EXPECT_FALSE(g.check(t(400), std::nan(""), true).fault_raised);
  EXPECT_FALSE(g.check(t(500), 0, true).fault_raised);
  const auto third = g.check(t(600), 1e15, true);
  EXPECT_TRUE(third.fault_raised);
  EXPECT_FALSE(third.plausible);
  EXPECT_TRUE(g.faulted());
  EXPECT_FALSE(g.check(t(700), 1e15, true).fault_raised) << "raised once";
  EXPECT_EQ(g.implausible_total(), 6u);
  EXPECT_EQ(g.last()->wh, 1001) << "the last plausible reading stays";
  // The meter reads plausibly again: the fault clears.
  const auto back = g.check(t(800), 1004, true);
  EXPECT_TRUE(back.plausible);
  EXPECT_TRUE(back.fault_cleared);
  EXPECT_FALSE(g.faulted());

  auto one = settings();
  one.fault_after = 1;
  EXPECT_TRUE(at(1000, one).check(t(100), -1, true).fault_raised) << "fault_after 1: the first bad reading faults";
}

TEST(MeterGuard, AStallIsARegisterThatHoldsWhilePowerFlows) {
  auto g = at(1000);
  EXPECT_FALSE(g.check_power(t(0), 1000)) << "at the threshold: not above it";
  EXPECT_FALSE(g.check_power(t(1000), 1001)) << "power above the threshold from t=1 s";
  ASSERT_TRUE(g.check(t(5000), 1000, true).plausible);
  EXPECT_FALSE(g.check_power(t(5999), 60'000)) << "4.999 s of power on a held register";
  const auto stall = g.check_power(t(6000), 60'000);
  ASSERT_TRUE(stall) << "5 s";
  EXPECT_EQ(stall->problem, MeterProblem::stalled);
  EXPECT_TRUE(stall->fault_raised);
  EXPECT_NE(stall->why.find("holds 1000 Wh for 5.000 s while the power stage reports 60000 W"), std::string::npos) << stall->why;
  EXPECT_TRUE(g.faulted());
  EXPECT_FALSE(g.check_power(t(7000), 60'000)) << "raised once";
  // A held reading while power still flows does not clear it; once the power stops, it does.
  EXPECT_FALSE(g.check(t(7000), 1000, true).fault_cleared);
  EXPECT_TRUE(g.faulted());
  EXPECT_FALSE(g.check_power(t(8000), 0));
  EXPECT_TRUE(g.check(t(8000), 1000, false).fault_cleared);
  EXPECT_FALSE(g.faulted());
}

TEST(MeterGuard, ARegisterThatMovesIsNoStallAndPowerMustFlowWithoutABreak) {
  auto g = at(1000);
  ASSERT_FALSE(g.check_power(t(0), 5000));
  ASSERT_TRUE(g.check(t(4000), 1010, true).plausible);  // moved at 4 s
  EXPECT_FALSE(g.check_power(t(8999), 5000)) << "4.999 s since it moved";
  EXPECT_TRUE(g.check_power(t(9000), 5000)) << "5 s since it moved";

  auto h = at(1000);
  ASSERT_FALSE(h.check_power(t(0), 5000));
  ASSERT_FALSE(h.check_power(t(3000), 0)) << "the power stopped: the count starts again";
  ASSERT_FALSE(h.check_power(t(4000), 5000));
  EXPECT_FALSE(h.check_power(t(8999), 5000));
  EXPECT_TRUE(h.check_power(t(9000), 5000));
  // The register moving again clears a stall even while power flows.
  EXPECT_TRUE(h.check(t(9100), 1010, true).fault_cleared);
}

TEST(MeterGuard, AReplacedOrResetMeterBecomesTheBaselineOnlyOutsideASession) {
  // Outside a session: fault_after readings that agree with each other replace the baseline.
  auto g = at(5'000'000);
  EXPECT_FALSE(g.check(t(1000), 0, false).plausible);
  EXPECT_FALSE(g.check(t(2000), 0, false).plausible);
  const auto third = g.check(t(3000), 5, false);
  EXPECT_TRUE(third.plausible);
  EXPECT_NE(third.why.find("replace the baseline 5000000 Wh"), std::string::npos) << third.why;
  EXPECT_EQ(g.last()->wh, 5);
  EXPECT_TRUE(g.check(t(4000), 10, false).plausible);

  // Readings that do not agree with each other never do (random register words).
  auto r = at(5'000'000);
  for (double v : {17.0, 9e9, 3.0, 8e11, 12.0, 2.5e10}) EXPECT_FALSE(r.check(t(1000), v, false).plausible) << v;

  // In a session never: the session's bill is never re-based.
  auto s = at(5'000'000);
  for (int i = 1; i <= 10; ++i) EXPECT_FALSE(s.check(t(i * 1000), i, true).plausible);
  EXPECT_TRUE(s.faulted());
  // ...but once it is over, the next agreeing reading is accepted and the fault clears.
  const auto after = s.check(t(11'000), 11, false);
  EXPECT_TRUE(after.plausible);
  EXPECT_TRUE(after.fault_cleared);

  // Never from a single reading, whatever fault_after says.
  auto one = settings();
  one.fault_after = 1;
  auto o = at(5'000'000, one);
  EXPECT_FALSE(o.check(t(1000), 1e12, false).plausible) << "a lone spike is no new baseline";
}

// A reading taken before the last plausible one arrived late (queued behind one the plugin
// published synchronously): not a later reading, so neither used nor counted against the meter.
TEST(MeterGuard, AReadingTakenBeforeTheLastPlausibleOneIsStaleNotImplausible) {
  auto g = at(1000);
  ASSERT_TRUE(g.check(t(2000), 1010, true).plausible);
  const auto late = g.check(t(1999), 1005, true);
  EXPECT_FALSE(late.plausible);
  EXPECT_EQ(late.problem, MeterProblem::stale);
  EXPECT_EQ(g.bad_streak(), 0);
  EXPECT_EQ(g.implausible_total(), 0u);
  EXPECT_EQ(g.last()->wh, 1010);
  EXPECT_TRUE(g.check(t(2000), 1010, true).plausible) << "the same instant is not stale";
}
