// Money: the rounding rule, tariff slots in real time zones (one with daylight saving), and
// property tests of bills: parts sum to the total, nothing negative, same readings same bill.
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "bill.hpp"
#include "receipt.hpp"
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

namespace {

/// Random sessions over a year against `t`: the parts add up to the meter's difference and to
/// the totals, each part is rounded on its own, and the same readings give the same bill.
void check_bill_properties(const Tariff& t) {
  std::mt19937_64 rng(20261126);
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
      EXPECT_EQ(l.electricity_fen, amount_fen(l.wh, {l.price.electricity, t.decimals()}, t.rounding())) << "each part rounded on its own";
      EXPECT_EQ(l.service_fen, amount_fen(l.wh, {l.price.service, t.decimals()}, t.rounding()));
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
    if (::testing::Test::HasFailure()) {
      ADD_FAILURE() << "iteration " << i;
      return;
    }
  }
}

}  // namespace

class BillProperties : public ::testing::TestWithParam<const char*> {};

TEST_P(BillProperties, PartsSumNothingNegativeSameReadingsSameBill) { check_bill_properties(beijing(GetParam())); }

INSTANTIATE_TEST_SUITE_P(Zones, BillProperties, ::testing::Values("Asia/Shanghai", "America/New_York", "Europe/Berlin"),
                         [](const auto& param_info) {
                           std::string n = param_info.param;
                           for (auto& c : n) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return n;
                         });

// Tariffs as Chinese sites write them (issue #13): a valley across midnight, seasons with a
// sharp period, holidays, and bills split at each of those edges without losing a fen.
namespace {

/// A plan with the valley written as Chinese notices write it, 22:00-06:00.
Plan night_valley_plan(const std::string& name = "day") {
  Plan p{name, {}, {}};
  p.prices[static_cast<int>(PeriodType::peak)] = Price{10044, 8000};
  p.prices[static_cast<int>(PeriodType::flat)] = Price{6950, 8000};
  p.prices[static_cast<int>(PeriodType::valley)] = Price{3946, 8000};
  p.windows = {w(8, 0, 22, 0, PeriodType::peak), w(22, 0, 6, 0, PeriodType::valley), w(6, 0, 8, 0, PeriodType::flat)};
  return p;
}

Tariff night_valley(const std::string& zone) {
  std::array<std::string, 7> week;
  week.fill("day");
  return Tariff(zone, 2, Rounding::half_up, {{"day", night_valley_plan()}}, week, {});
}

/// Guangdong's schedule (configs/guangdong-site.yaml): valley 0-8, peak 10-12 and 14-19, flat
/// otherwise; in July, August and September sharp 11-12 and 15-17 at peak + 25 %. Prices in
/// 10^-3 fen/kWh from the 1.7 : 1 : 0.38 ratio on a 65 fen flat price.
Tariff guangdong(const std::string& zone = "Asia/Shanghai", std::map<std::string, std::string> holidays = {}) {
  Plan normal{"normal", {}, {}}, summer{"summer", {}, {}};
  for (Plan* p : {&normal, &summer}) {
    p->prices[static_cast<int>(PeriodType::peak)] = Price{110500, 60000};
    p->prices[static_cast<int>(PeriodType::flat)] = Price{65000, 60000};
    p->prices[static_cast<int>(PeriodType::valley)] = Price{24700, 60000};
  }
  summer.prices[static_cast<int>(PeriodType::sharp)] = Price{138125, 60000};
  normal.windows = {w(0, 0, 8, 0, PeriodType::valley), w(8, 0, 10, 0, PeriodType::flat), w(10, 0, 12, 0, PeriodType::peak),
                    w(12, 0, 14, 0, PeriodType::flat), w(14, 0, 19, 0, PeriodType::peak), w(19, 0, 24, 0, PeriodType::flat)};
  summer.windows = {w(0, 0, 8, 0, PeriodType::valley), w(8, 0, 10, 0, PeriodType::flat),  w(10, 0, 11, 0, PeriodType::peak),
                    w(11, 0, 12, 0, PeriodType::sharp), w(12, 0, 14, 0, PeriodType::flat), w(14, 0, 15, 0, PeriodType::peak),
                    w(15, 0, 17, 0, PeriodType::sharp), w(17, 0, 19, 0, PeriodType::peak), w(19, 0, 24, 0, PeriodType::flat)};
  std::array<std::string, 7> week;
  week.fill("normal");
  Season s{"summer", 7, 1, 9, 30, {}};
  s.week.fill("summer");
  return Tariff(zone, 3, Rounding::half_up, {{"normal", normal}, {"summer", summer}}, week, std::move(holidays), {s});
}

using WhByPlanAndType = std::map<std::pair<std::string, PeriodType>, std::int64_t>;

std::int64_t at(const WhByPlanAndType& m, const std::string& plan, PeriodType type) {
  const auto it = m.find({plan, type});
  return it == m.end() ? 0 : it->second;
}

Season season(const char* name, unsigned fm, unsigned fd, unsigned tm, unsigned td, const std::string& plan) {
  Season s{name, fm, fd, tm, td, {}};
  s.week.fill(plan);
  return s;
}

}  // namespace

TEST(Tariff, AValleyPeriodMayCrossMidnight) {
  const Tariff t = night_valley("Asia/Shanghai");
  // 23:00 in Shanghai: the valley's evening part, ending at local midnight (a split point, as
  // the next day may follow another plan).
  const Slot evening = t.slot_at(utc("2026-05-05T15:00:00Z"));
  EXPECT_EQ(evening.type, PeriodType::valley);
  EXPECT_EQ(evening.start, utc("2026-05-05T14:00:00Z"));
  EXPECT_EQ(evening.end, utc("2026-05-05T16:00:00Z"));
  // 02:00: its morning part, to 06:00.
  const Slot morning = t.slot_at(utc("2026-05-05T18:00:00Z"));
  EXPECT_EQ(morning.type, PeriodType::valley);
  EXPECT_EQ(morning.start, utc("2026-05-05T16:00:00Z"));
  EXPECT_EQ(morning.end, utc("2026-05-05T22:00:00Z"));
  EXPECT_EQ(t.slot_at(utc("2026-05-05T22:00:00Z")).type, PeriodType::flat) << "06:00 belongs to the flat period";
  EXPECT_EQ(t.slot_at(utc("2026-05-05T13:59:59Z")).type, PeriodType::peak) << "21:59:59 is still peak";
}

TEST(Tariff, AValleyAcrossMidnightKeepsItsLengthOnDaylightSavingNights) {
  // Berlin springs forward at 02:00 on 2026-03-29 and falls back at 03:00 on 2026-10-25: the
  // 22:00-06:00 valley lasts 7 and 9 hours; Shanghai has no daylight saving, 8 hours always.
  auto valley_length = [](const Tariff& t, TimePoint from, TimePoint to) {
    milliseconds in_valley{0};
    for (TimePoint at = from; at < to;) {
      const Slot s = t.slot_at(at);
      const TimePoint end = std::min(s.end, to);
      if (s.type == PeriodType::valley) in_valley += end - at;
      at = end;
    }
    return duration_cast<hours>(in_valley).count();
  };
  const Tariff berlin = night_valley("Europe/Berlin");
  EXPECT_EQ(valley_length(berlin, utc("2026-03-28T12:00:00Z"), utc("2026-03-29T10:00:00Z")), 7);
  EXPECT_EQ(valley_length(berlin, utc("2026-10-24T12:00:00Z"), utc("2026-10-25T10:00:00Z")), 9);
  EXPECT_EQ(valley_length(berlin, utc("2026-06-10T12:00:00Z"), utc("2026-06-11T10:00:00Z")), 8);
  const Tariff shanghai = night_valley("Asia/Shanghai");
  EXPECT_EQ(valley_length(shanghai, utc("2026-03-28T06:00:00Z"), utc("2026-03-29T06:00:00Z")), 8);
  EXPECT_EQ(valley_length(shanghai, utc("2026-10-24T06:00:00Z"), utc("2026-10-25T06:00:00Z")), 8);
}

TEST(Tariff, GapsAndOverlapsAreFoundAtThePeriodNamingBoth) {
  // An overlap across midnight: the flat period starts an hour before the valley ends.
  const std::vector<Window> overlap = {w(22, 0, 6, 0, PeriodType::valley), w(5, 0, 8, 0, PeriodType::flat), w(8, 0, 22, 0, PeriodType::peak)};
  auto problems = check_windows(overlap);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].index, 1u) << "at the period that overlaps an earlier one";
  EXPECT_EQ(problems[0].other, 0u);
  EXPECT_EQ(problems[0].message,
            "period 05:00-08:00 flat overlaps period 22:00-06:00 valley from 05:00 to 06:00; each time of day belongs to exactly one period: "
            "start this one where the other ends, or end it where the other starts");
  // A gap across midnight is one gap, at the period it follows.
  const std::vector<Window> gap = {w(6, 0, 23, 0, PeriodType::flat), w(0, 30, 6, 0, PeriodType::valley)};
  problems = check_windows(gap);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].index, 0u);
  EXPECT_EQ(problems[0].other, 1u);
  EXPECT_EQ(problems[0].message,
            "no period covers 23:00 to 00:30, between period 06:00-23:00 flat and period 00:30-06:00 valley; end this one where the next "
            "starts, or add a period for them");
  problems = check_windows({w(0, 0, 23, 0, PeriodType::flat)});
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].other, std::nullopt);
  EXPECT_NE(problems[0].message.find("23:00 to 24:00"), std::string::npos) << problems[0].message;
  // The whole day, written either way, and periods in any order.
  EXPECT_TRUE(check_windows({w(0, 0, 24, 0, PeriodType::flat)}).empty());
  EXPECT_TRUE(check_windows({w(8, 0, 8, 0, PeriodType::flat)}).empty());
  EXPECT_TRUE(check_windows(night_valley_plan().windows).empty());
  // The constructor refuses what check_windows reports.
  Plan bad = night_valley_plan();
  bad.windows = overlap;
  std::array<std::string, 7> week;
  week.fill("day");
  EXPECT_THROW(Tariff("Asia/Shanghai", 2, Rounding::half_up, {{"day", bad}}, week, {}), std::invalid_argument);
}

TEST(Tariff, SeasonsChooseThePlanByDateAndTheSharpPeriodIsInSummerOnly) {
  const Tariff t = guangdong();
  // 11:30 in Guangzhou (03:30 UTC).
  EXPECT_EQ(t.slot_at(utc("2026-06-30T03:30:00Z")).type, PeriodType::peak);
  EXPECT_EQ(t.slot_at(utc("2026-06-30T03:30:00Z")).plan, "normal");
  const Slot sharp = t.slot_at(utc("2026-07-01T03:30:00Z"));
  EXPECT_EQ(sharp.type, PeriodType::sharp);
  EXPECT_EQ(sharp.plan, "summer");
  EXPECT_EQ(sharp.price, (Price{138125, 60000}));
  EXPECT_EQ(t.slot_at(utc("2026-09-30T07:30:00Z")).type, PeriodType::sharp) << "15:30 on the season's last day";
  EXPECT_EQ(t.slot_at(utc("2026-10-01T07:30:00Z")).type, PeriodType::peak) << "15:30 the day after";
  // The season starts at local midnight, 16:00 UTC the day before.
  EXPECT_EQ(t.slot_at(utc("2026-06-30T15:59:59Z")).plan, "normal");
  EXPECT_EQ(t.slot_at(utc("2026-06-30T16:00:00Z")).plan, "summer");

  // A winter season across the year end, with 02-29 in it.
  Plan winter = night_valley_plan("winter");
  Plan other = night_valley_plan("other");
  std::array<std::string, 7> week;
  week.fill("other");
  const Tariff w2("Asia/Shanghai", 2, Rounding::half_up, {{"winter", winter}, {"other", other}}, week, {}, {season("winter", 12, 1, 2, 29, "winter")});
  EXPECT_EQ(w2.slot_at(utc("2026-12-31T04:00:00Z")).plan, "winter");
  EXPECT_EQ(w2.slot_at(utc("2027-02-28T04:00:00Z")).plan, "winter");
  EXPECT_EQ(w2.slot_at(utc("2027-03-01T04:00:00Z")).plan, "other");
  EXPECT_EQ(w2.slot_at(utc("2028-02-29T04:00:00Z")).plan, "winter");
  EXPECT_EQ(w2.slot_at(utc("2026-11-30T04:00:00Z")).plan, "other");
}

TEST(Tariff, SeasonsThatOverlapOrLeaveDaysWithoutAPlanAreRefused) {
  auto problems = check_seasons({season("summer", 6, 1, 9, 30, "a"), season("autumn", 9, 15, 11, 30, "b")}, true);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].index, 1u);
  EXPECT_EQ(problems[0].other, 0u);
  EXPECT_EQ(problems[0].message,
            "season 'autumn' (09-15..11-30) overlaps season 'summer' (06-01..09-30) from 09-15 to 09-30; each day of the year belongs "
            "to at most one season: start this one the day after the other ends");
  // With a weekday plan to fall back on, days in no season are fine; without one, not.
  const std::vector<Season> halves = {season("summer", 3, 1, 10, 31, "a"), season("winter", 11, 2, 2, 28, "b")};
  EXPECT_TRUE(check_seasons(halves, true).empty());
  problems = check_seasons(halves, false);
  ASSERT_EQ(problems.size(), 2u);
  EXPECT_EQ(problems[0].index, 1u);
  EXPECT_NE(problems[0].message.find("no season holds 02-29 to 02-29 (in leap years) (after season 'winter'"), std::string::npos) << problems[0].message;
  EXPECT_EQ(problems[1].index, 0u);
  EXPECT_NE(problems[1].message.find("no season holds 11-01 to 11-01 (after season 'summer'"), std::string::npos) << problems[1].message;
  EXPECT_TRUE(check_seasons({season("all", 1, 1, 12, 31, "a")}, false).empty());
  EXPECT_TRUE(check_seasons({season("x", 7, 1, 6, 30, "a")}, false).empty()) << "a year starting in July";
  EXPECT_FALSE(check_seasons({season("bad", 2, 30, 3, 1, "a")}, true).empty());

  Plan a = night_valley_plan("a");
  std::array<std::string, 7> none;
  EXPECT_THROW(Tariff("Asia/Shanghai", 2, Rounding::half_up, {{"a", a}}, none, {}, halves), std::invalid_argument)
      << "a season names an unknown plan, and days are left without one";
  EXPECT_NO_THROW(Tariff("Asia/Shanghai", 2, Rounding::half_up, {{"a", a}}, none, {}, {season("all", 1, 1, 12, 31, "a")}))
      << "seasons that hold every day need no weekday plan";
}

TEST(Tariff, HolidaysDatedOrYearlyWinOverSeasonsAndWeekdays) {
  const Tariff t = guangdong("Asia/Shanghai", {{"10-01", "summer"}, {"2027-10-01", "normal"}, {"2026-08-03", "normal"}, {"2026-05-20", "summer"}});
  EXPECT_EQ(t.slot_at(utc("2026-10-01T04:00:00Z")).plan, "summer") << "a yearly holiday";
  EXPECT_EQ(t.slot_at(utc("2028-10-01T04:00:00Z")).plan, "summer") << "...every year";
  EXPECT_EQ(t.slot_at(utc("2027-10-01T04:00:00Z")).plan, "normal") << "a dated one wins over the yearly one";
  EXPECT_EQ(t.slot_at(utc("2026-08-03T04:00:00Z")).plan, "normal") << "a holiday wins over the season";
  // A hot day announced the evening before (Guangdong's rule) is a dated holiday on the summer plan.
  EXPECT_EQ(t.slot_at(utc("2026-05-20T03:30:00Z")).type, PeriodType::sharp);
  EXPECT_EQ(t.slot_at(utc("2026-05-21T03:30:00Z")).type, PeriodType::peak);

  for (const char* bad : {"2026-02-29", "02-30", "13-01", "2026-1-01", "10/01"}) {
    EXPECT_THROW(guangdong("Asia/Shanghai", {{bad, "normal"}}), std::invalid_argument) << bad;
  }
  EXPECT_NO_THROW(guangdong("Asia/Shanghai", {{"02-29", "normal"}, {"2028-02-29", "summer"}}));
  EXPECT_THROW(guangdong("Asia/Shanghai", {{"10-01", "holiday"}}), std::invalid_argument) << "an unknown plan";
}

TEST(Bill, AValleyAcrossMidnightIsOneLineAndLosesNoFen) {
  const Tariff t = night_valley("Asia/Shanghai");
  // 22:00 to 06:00 local, with the session's boundary reading at midnight.
  const std::vector<MeterReading> split = {{utc("2026-05-05T14:00:00Z"), 0}, {utc("2026-05-05T16:00:00Z"), 7777}, {utc("2026-05-05T22:00:00Z"), 40001}};
  const Bill b = compute_bill(t, split);
  ASSERT_EQ(b.lines.size(), 1u) << "both sides of midnight are one valley line";
  EXPECT_EQ(b.lines[0].type, PeriodType::valley);
  EXPECT_EQ(b.lines[0].wh, 40001);
  // Rounded once on the line, not once a side: 40.001 kWh x 39.46 = 1578.439 fen, x 80 = 3200.08.
  EXPECT_EQ(b.lines[0].electricity_fen, 1578);
  EXPECT_EQ(b.lines[0].service_fen, 3200);
  EXPECT_EQ(b.total_fen, 1578 + 3200);
  // Splitting each side separately would have rounded 7.777 kWh (306.88 -> 307) and 32.224 kWh
  // (1271.56 -> 1272) to 1579: a fen the split would have made up.
  EXPECT_EQ(amount_fen(7777, {3946, 2}, Rounding::half_up) + amount_fen(32224, {3946, 2}, Rounding::half_up), 1579);
  // Without the midnight reading the bill is the same.
  const std::vector<MeterReading> whole = {split.front(), split.back()};
  EXPECT_EQ(compute_bill(t, whole).total_fen, b.total_fen);
}

TEST(Bill, SplitsExactlyAtASeasonChangeAndAHolidaysEdges) {
  // 10:30 on 30 June to 11:30 on 1 July in Guangzhou, with no reading at the edges (a power cut):
  // 25 hours shared by time, whole Wh, adding up to the meter's difference.
  const Tariff t = guangdong("Asia/Shanghai", {{"2026-07-02", "normal"}});
  const std::vector<MeterReading> r = {{utc("2026-06-30T02:30:00Z"), 1000}, {utc("2026-07-01T03:30:00Z"), 1000 + 250'003}};
  const Bill b = compute_bill(t, r);
  std::int64_t wh = 0, fen = 0;
  WhByPlanAndType by;
  for (const auto& l : b.lines) {
    wh += l.wh;
    fen += l.total_fen();
    by[{l.plan, l.type}] += l.wh;
  }
  EXPECT_EQ(wh, 250'003);
  EXPECT_EQ(fen, b.total_fen);
  // 10 000.12 Wh an hour, each edge given the floor of its cumulative share: 15 000 by 12:00,
  // 35 000 by 14:00, 85 001 by 19:00, 135 001 by midnight, 215 002 by 08:00, 245 002 by 11:00.
  EXPECT_EQ(at(by, "normal", PeriodType::peak), 15'000 + 50'001) << "10:30-12:00 and 14:00-19:00 on 30 June";
  EXPECT_EQ(at(by, "normal", PeriodType::flat), 20'000 + 50'000);
  EXPECT_EQ(at(by, "summer", PeriodType::valley), 80'001) << "the summer plan from local midnight";
  EXPECT_EQ(at(by, "summer", PeriodType::sharp), 5'001) << "11:00-11:30 on 1 July";
  EXPECT_EQ(at(by, "normal", PeriodType::sharp), 0) << "no sharp period before the season";
  // Into the holiday and out of it again: readings at each local midnight split the plans.
  const std::vector<MeterReading> holiday = {{utc("2026-07-01T15:00:00Z"), 0},  // 23:00 on 1 July, summer
                                             {utc("2026-07-01T16:00:00Z"), 1000},
                                             {utc("2026-07-02T03:30:00Z"), 2000},  // 11:30 on the holiday: no sharp
                                             {utc("2026-07-02T16:00:00Z"), 3000},
                                             {utc("2026-07-03T03:30:00Z"), 4000}};  // 11:30 on 3 July: sharp again
  const Bill h = compute_bill(t, holiday);
  WhByPlanAndType hb;
  for (const auto& l : h.lines) hb[{l.plan, l.type}] += l.wh;
  // Each 11.5-hour morning shares its 1000 Wh by time: 695 by 08:00, 869 by 10:00, 956 by 11:00.
  EXPECT_EQ(at(hb, "summer", PeriodType::flat), 1000 + 174) << "1 July's evening, 3 July's 08:00-10:00";
  EXPECT_EQ(at(hb, "normal", PeriodType::valley), 695) << "the holiday's night on the normal plan";
  // Its 12.5-hour afternoon shares 1000 Wh: 40 by 12:00, 200 by 14:00, 600 by 19:00.
  EXPECT_EQ(at(hb, "normal", PeriodType::flat), 174 + 160 + 400) << "the holiday's 08:00-10:00, 12:00-14:00 and 19:00-24:00";
  EXPECT_EQ(at(hb, "normal", PeriodType::peak), 131 + 40 + 400) << "the holiday's 10:00-12:00 and 14:00-19:00";
  EXPECT_EQ(at(hb, "normal", PeriodType::sharp), 0) << "no sharp period on the holiday";
  EXPECT_EQ(at(hb, "summer", PeriodType::sharp), 44) << "back to summer on 3 July: 11:00-11:30";
  EXPECT_EQ(h.energy_wh, 4000);
}

class CalendarBillProperties : public ::testing::TestWithParam<const char*> {};

TEST_P(CalendarBillProperties, PartsSumAcrossSeasonsHolidaysAndMidnight) {
  check_bill_properties(guangdong(GetParam(), {{"10-01", "summer"}, {"2026-05-20", "summer"}, {"2026-08-03", "normal"}}));
  check_bill_properties(night_valley(GetParam()));
}

INSTANTIATE_TEST_SUITE_P(Zones, CalendarBillProperties, ::testing::Values("Asia/Shanghai", "Asia/Urumqi", "Europe/Berlin"),
                         [](const auto& param_info) {
                           std::string n = param_info.param;
                           for (auto& c : n) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return n;
                         });

TEST(Bill, AReceiptNamesThePlanWhenASessionSpansTwo) {
  const Tariff t = guangdong("Asia/Shanghai");
  // 23:00 on 30 June to 01:00 on 1 July: flat under the normal plan, valley under summer.
  const Bill b = compute_bill(t, std::vector<MeterReading>{{utc("2026-06-30T15:00:00Z"), 0}, {utc("2026-06-30T16:00:00Z"), 5000}, {utc("2026-06-30T17:00:00Z"), 9000}});
  const std::string text = format_receipt_text({{"transaction", "T1"}, {"bill", bill_json(b)}}, "Asia/Shanghai");
  EXPECT_NE(text.find("  normal\n"), std::string::npos) << text;
  EXPECT_NE(text.find("  summer\n"), std::string::npos) << text;
  EXPECT_NE(format_receipt(b).find("  summer\n"), std::string::npos);
  // One plan: no plan column, as before.
  const Bill one = compute_bill(t, std::vector<MeterReading>{{utc("2026-06-30T15:00:00Z"), 0}, {utc("2026-06-30T15:30:00Z"), 5000}});
  EXPECT_EQ(format_receipt_text({{"bill", bill_json(one)}}).find("normal"), std::string::npos);
}
