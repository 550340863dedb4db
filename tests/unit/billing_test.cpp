// Money: the rounding rule, tariff slots in real time zones (one with daylight saving), and
// property tests of bills: parts sum to the total, nothing negative, same readings same bill.
#include <gtest/gtest.h>

#include <random>

#include "bill.hpp"
#include "clocks.hpp"

using namespace pilecore;
using namespace pilecore::core;
using namespace std::chrono;

namespace {

TimePoint utc(const char* s) {
  TimePoint t;
  EXPECT_TRUE(parse_utc(s, t)) << s;
  return t;
}

Window w(int from_h, int from_m, int to_h, int to_m, PeriodType t) { return {from_h * 60 + from_m, to_h * 60 + to_m, t}; }

/// Beijing 2016, State Grid public piles (../shared/DOMAIN.md): peak 100.44 fen/kWh 10-15 and
/// 18-21, flat 69.50 7-10, 15-18 and 21-23, valley 39.46 23-7; service 80 fen/kWh throughout.
Plan beijing_plan(const std::string& name = "workday") {
  Plan p{name, {}, {}};
  p.prices[static_cast<int>(PeriodType::peak)] = Price{10044, 8000};
  p.prices[static_cast<int>(PeriodType::flat)] = Price{6950, 8000};
  p.prices[static_cast<int>(PeriodType::valley)] = Price{3946, 8000};
  p.windows = {w(0, 0, 7, 0, PeriodType::valley), w(7, 0, 10, 0, PeriodType::flat),   w(10, 0, 15, 0, PeriodType::peak),
               w(15, 0, 18, 0, PeriodType::flat),  w(18, 0, 21, 0, PeriodType::peak), w(21, 0, 23, 0, PeriodType::flat),
               w(23, 0, 24, 0, PeriodType::valley)};
  return p;
}

Tariff beijing(const std::string& zone = "Asia/Shanghai", Rounding r = Rounding::half_up) {
  std::array<std::string, 7> week;
  week.fill("workday");
  return Tariff(zone, 2, r, {{"workday", beijing_plan()}}, week, {});
}

}  // namespace

TEST(Money, TheRoundingRule) {
  // 5.682 kWh at 100.44 fen/kWh = 570.70008 fen.
  EXPECT_EQ(amount_fen(5682, {10044, 2}, Rounding::half_up), 571);
  EXPECT_EQ(amount_fen(5682, {10044, 2}, Rounding::truncate), 570);
  // Exactly half a fen: 500 Wh at 1 fen/kWh.
  EXPECT_EQ(amount_fen(500, {100, 2}, Rounding::half_up), 1);
  EXPECT_EQ(amount_fen(499, {100, 2}, Rounding::half_up), 0);
  EXPECT_EQ(amount_fen(500, {100, 2}, Rounding::truncate), 0);
  EXPECT_EQ(amount_fen(0, {10044, 2}, Rounding::half_up), 0);
  // Large values stay exact: 10 GWh at 99999.99999 fen/kWh.
  EXPECT_EQ(amount_fen(10'000'000'000, {9999999999, 5}, Rounding::half_up), 999'999'999'900);
  EXPECT_THROW((void)amount_fen(-1, {100, 2}, Rounding::half_up), std::invalid_argument);
}

TEST(Money, PricesAreParsedExactly) {
  EXPECT_EQ(parse_scaled("100.44", 2), 10044);
  EXPECT_EQ(parse_scaled("100.4", 2), 10040);
  EXPECT_EQ(parse_scaled("100", 2), 10000);
  EXPECT_EQ(parse_scaled("0.00001", 5), 1);
  EXPECT_EQ(parse_scaled("100.444", 2), std::nullopt) << "more decimals than declared is refused, never rounded";
  EXPECT_EQ(parse_scaled("-1", 2), std::nullopt);
  EXPECT_EQ(parse_scaled("1e3", 2), std::nullopt);
  EXPECT_EQ(parse_scaled("1.", 2), std::nullopt);
  EXPECT_EQ(parse_scaled("", 2), std::nullopt);
  EXPECT_EQ(format_scaled(10044, 2), "100.44");
  EXPECT_EQ(format_yuan(1156), "11.56");
  EXPECT_EQ(format_yuan(5), "0.05");
  EXPECT_EQ(format_kwh(5682), "5.682");
}

TEST(Tariff, ShanghaiSlotsFollowLocalTime) {
  const Tariff t = beijing();
  // 07:30 on 2 March in Shanghai (UTC+8) is 23:30 UTC on 1 March: flat, 07:00-10:00 local.
  const Slot s = t.slot_at(utc("2026-03-01T23:30:00Z"));
  EXPECT_EQ(s.type, PeriodType::flat);
  EXPECT_EQ(s.start, utc("2026-03-01T23:00:00Z"));
  EXPECT_EQ(s.end, utc("2026-03-02T02:00:00Z"));
  EXPECT_EQ(s.price, (Price{6950, 8000}));
  EXPECT_EQ(t.slot_at(utc("2026-03-02T02:00:00Z")).type, PeriodType::peak) << "the boundary belongs to the next period";
}

TEST(Tariff, DaylightSavingIsNotAssumedAway) {
  // New York springs forward at 02:00 on 2026-03-08 and falls back at 02:00 on 2026-11-01.
  Plan p{"day", {}, {}};
  p.prices[static_cast<int>(PeriodType::valley)] = Price{3000, 1000};
  p.prices[static_cast<int>(PeriodType::flat)] = Price{6000, 1000};
  p.windows = {w(0, 0, 2, 30, PeriodType::valley), w(2, 30, 24, 0, PeriodType::flat)};
  std::array<std::string, 7> week;
  week.fill("day");
  const Tariff t("America/New_York", 2, Rounding::half_up, {{"day", p}}, week, {});
  // 02:30 does not exist on 8 March: the valley ends when the clocks jump (07:00 UTC).
  const Slot spring = t.slot_at(utc("2026-03-08T06:30:00Z"));  // 01:30 EST
  EXPECT_EQ(spring.type, PeriodType::valley);
  EXPECT_EQ(spring.start, utc("2026-03-08T05:00:00Z"));
  EXPECT_EQ(spring.end, utc("2026-03-08T07:00:00Z"));
  // 01:15 happens twice on 1 November; in its second occurrence (06:15 UTC, EST) the valley
  // ends at the second 02:30... which is 07:30 UTC, and its first-occurrence end has passed.
  const Slot fall = t.slot_at(utc("2026-11-01T06:15:00Z"));
  EXPECT_EQ(fall.type, PeriodType::valley);
  EXPECT_EQ(fall.end, utc("2026-11-01T07:30:00Z"));
  // The fall-back day has 25 hours: the slots from local midnight to local midnight cover them.
  TimePoint at = utc("2026-11-01T04:00:00Z");  // 00:00 EDT
  const TimePoint next_midnight = utc("2026-11-02T05:00:00Z");  // 00:00 EST
  milliseconds covered{0};
  while (at < next_midnight) {
    const Slot s = t.slot_at(at);
    const TimePoint end = std::min(s.end, next_midnight);
    covered += end - at;
    at = end;
  }
  EXPECT_EQ(duration_cast<hours>(covered).count(), 25);
}

TEST(Tariff, WeekdayPlansAndDateExceptions) {
  Plan weekend{"weekend", {}, {w(0, 0, 24, 0, PeriodType::valley)}};
  weekend.prices[static_cast<int>(PeriodType::valley)] = Price{3000, 5000};
  std::array<std::string, 7> week{"workday", "workday", "workday", "workday", "workday", "weekend", "weekend"};
  const Tariff t("Asia/Shanghai", 2, Rounding::half_up, {{"workday", beijing_plan()}, {"weekend", weekend}}, week, {{"2026-10-01", "weekend"}});
  EXPECT_EQ(t.slot_at(utc("2026-03-07T04:00:00Z")).plan, "weekend");  // Saturday noon in Shanghai
  EXPECT_EQ(t.slot_at(utc("2026-03-09T04:00:00Z")).plan, "workday");  // Monday
  EXPECT_EQ(t.slot_at(utc("2026-10-01T04:00:00Z")).plan, "weekend");  // a Thursday, National Day
  EXPECT_THROW(Tariff("Asia/Shanghai", 2, Rounding::half_up, {{"w", Plan{"w", {}, {w(0, 0, 23, 0, PeriodType::flat)}}}}, week, {}),
               std::invalid_argument);
  EXPECT_THROW(Tariff("Mars/Base", 2, Rounding::half_up, {}, week, {}), std::invalid_argument);
}

TEST(Bill, SplitsAtABoundaryUsingTheBoundaryReading) {
  const Tariff t = beijing();
  // 09:30 to 10:30 Shanghai time, a reading at 10:00 local (02:00 UTC).
  const std::vector<MeterReading> r = {{utc("2026-03-02T01:30:00Z"), 100000}, {utc("2026-03-02T02:00:00Z"), 105000}, {utc("2026-03-02T02:30:00Z"), 112000}};
  const Bill b = compute_bill(t, r);
  ASSERT_EQ(b.lines.size(), 2u);
  EXPECT_EQ(b.lines[0].type, PeriodType::flat);
  EXPECT_EQ(b.lines[0].wh, 5000);
  EXPECT_EQ(b.lines[0].electricity_fen, 348);  // 347.5 rounds up
  EXPECT_EQ(b.lines[0].service_fen, 400);
  EXPECT_EQ(b.lines[1].type, PeriodType::peak);
  EXPECT_EQ(b.lines[1].wh, 7000);
  EXPECT_EQ(b.lines[1].electricity_fen, 703);  // 703.08
  EXPECT_EQ(b.lines[1].service_fen, 560);
  EXPECT_EQ(b.energy_wh, 12000);
  EXPECT_EQ(b.total_fen, 348 + 400 + 703 + 560);
  const std::string receipt = format_receipt(b);
  EXPECT_NE(receipt.find("20.11"), std::string::npos) << receipt;
}

TEST(Bill, AMissingBoundaryReadingIsSharedByTime) {
  const Tariff t = beijing();
  const std::vector<MeterReading> r = {{utc("2026-03-02T01:30:00Z"), 0}, {utc("2026-03-02T02:30:00Z"), 12001}};
  const Bill b = compute_bill(t, r);
  ASSERT_EQ(b.lines.size(), 2u);
  EXPECT_EQ(b.lines[0].wh, 6000);
  EXPECT_EQ(b.lines[1].wh, 6001);
}

TEST(Bill, RefusesAMeterThatGoesBackwards) {
  const std::vector<MeterReading> r = {{utc("2026-03-02T01:30:00Z"), 500}, {utc("2026-03-02T01:31:00Z"), 400}};
  EXPECT_THROW(compute_bill(beijing(), r), std::invalid_argument);
}

class BillProperties : public ::testing::TestWithParam<const char*> {};

TEST_P(BillProperties, PartsSumNothingNegativeSameReadingsSameBill) {
  std::mt19937_64 rng(20261126);
  const Tariff t = beijing(GetParam());
  const TimePoint year_start = utc("2026-01-01T00:00:00Z");
  for (int i = 0; i < 400; ++i) {
    std::vector<MeterReading> r;
    TimePoint at = year_start + minutes(std::uniform_int_distribution<int>(0, 365 * 24 * 60)(rng));
    std::int64_t wh = std::uniform_int_distribution<std::int64_t>(0, 50'000'000)(rng);
    const int n = std::uniform_int_distribution<int>(1, 40)(rng);
    for (int k = 0; k < n; ++k) {
      r.push_back({at, wh});
      at += seconds(std::uniform_int_distribution<int>(0, 4 * 3600)(rng));
      wh += std::uniform_int_distribution<std::int64_t>(0, 60'000)(rng);
    }
    const Bill b = compute_bill(t, r);
    std::int64_t wh_sum = 0, e_sum = 0, s_sum = 0;
    for (const auto& l : b.lines) {
      EXPECT_GT(l.wh, 0);
      EXPECT_GE(l.electricity_fen, 0);
      EXPECT_GE(l.service_fen, 0);
      EXPECT_EQ(l.electricity_fen, amount_fen(l.wh, {l.price.electricity, 2}, Rounding::half_up)) << "each part rounded on its own";
      EXPECT_EQ(l.service_fen, amount_fen(l.wh, {l.price.service, 2}, Rounding::half_up));
      wh_sum += l.wh;
      e_sum += l.electricity_fen;
      s_sum += l.service_fen;
    }
    EXPECT_EQ(wh_sum, b.energy_wh);
    EXPECT_EQ(b.energy_wh, r.back().wh - r.front().wh);
    EXPECT_EQ(e_sum, b.electricity_fen);
    EXPECT_EQ(s_sum, b.service_fen);
    EXPECT_EQ(b.total_fen, b.electricity_fen + b.service_fen);
    const Bill again = compute_bill(t, r);
    ASSERT_EQ(again.lines.size(), b.lines.size());
    EXPECT_EQ(again.total_fen, b.total_fen);
    for (std::size_t k = 0; k < b.lines.size(); ++k) EXPECT_EQ(again.lines[k].wh, b.lines[k].wh);
    if (HasFailure()) {
      ADD_FAILURE() << "iteration " << i;
      return;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Zones, BillProperties, ::testing::Values("Asia/Shanghai", "America/New_York", "Europe/Berlin"),
                         [](const auto& param_info) {
                           std::string n = param_info.param;
                           for (auto& c : n) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return n;
                         });
