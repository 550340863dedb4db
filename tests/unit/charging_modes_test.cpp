// Charging modes: what a driver may ask for, and the hold that follows from it. The
// specification of core/charging/charging_mode.hpp.
#include <gtest/gtest.h>

#include "charging_mode.hpp"

namespace pilecore::core {
namespace {

using namespace std::chrono_literals;

TimePoint at(int h, int m) {
  const auto day = std::chrono::sys_days{std::chrono::year{2026} / 12 / 1};
  return TimePoint{std::chrono::duration_cast<Duration>(day.time_since_epoch() + std::chrono::hours(h) + std::chrono::minutes(m))};
}

/// Valley 1 yuan/kWh until 07:00 UTC, peak 3 yuan/kWh from 07:00 to 08:00, flat 2 yuan/kWh
/// after; a service fee of 0.50 yuan/kWh throughout. Prices with two decimals.
Tariff tariff() {
  Plan p{"workday", {}, {}};
  p.prices[static_cast<int>(PeriodType::valley)] = Price{10000, 5000};
  p.prices[static_cast<int>(PeriodType::peak)] = Price{30000, 5000};
  p.prices[static_cast<int>(PeriodType::flat)] = Price{20000, 5000};
  p.windows = {{0, 7 * 60, PeriodType::valley}, {7 * 60, 8 * 60, PeriodType::peak}, {8 * 60, 24 * 60, PeriodType::flat}};
  std::array<std::string, 7> week;
  week.fill("workday");
  return Tariff("UTC", 2, Rounding::half_up, {{"workday", p}}, week, {});
}

struct Modes : ::testing::Test {
  PaymentSettings pay;
  ChargingSettings charging;
  Tariff t = tariff();
  Modes() {
    pay.preauth_fen = 20000;
    pay.max_hold_fen = 50000;
    charging.max_energy_wh = 100'000;
    charging.max_time_s = 4 * 3600;
  }
  ChargingMode mode(std::string_view text) {
    const auto r = parse_mode(text, pay, charging);
    if (const auto* e = std::get_if<std::string>(&r)) ADD_FAILURE() << text << ": " << *e;
    return std::get_if<ChargingMode>(&r) ? std::get<ChargingMode>(r) : ChargingMode{};
  }
  std::string error(std::string_view text) {
    const auto r = parse_mode(text, pay, charging);
    if (std::holds_alternative<ChargingMode>(r)) {
      ADD_FAILURE() << text << " was accepted";
      return {};
    }
    return std::get<std::string>(r);
  }
  std::int64_t hold(std::string_view text, TimePoint now, std::int64_t max_power_w = 60'000) {
    const auto r = hold_for(mode(text), t, now, max_power_w, pay);
    if (const auto* e = std::get_if<std::string>(&r)) ADD_FAILURE() << text << ": " << *e;
    return std::get_if<std::int64_t>(&r) ? std::get<std::int64_t>(r) : -1;
  }
};

TEST_F(Modes, EachModeIsWrittenAsTheDriverAsksForIt) {
  EXPECT_EQ(mode("").kind, ModeKind::full);
  EXPECT_EQ(mode("full").kind, ModeKind::full);
  EXPECT_EQ(mode("amount:5000").target, 5000);
  EXPECT_EQ(mode("amount:5000").kind, ModeKind::amount);
  EXPECT_EQ(mode("energy:20000").target, 20000);
  EXPECT_EQ(mode("energy:20kWh").target, 20000);
  EXPECT_EQ(mode("energy:1500Wh").target, 1500);
  EXPECT_EQ(mode("time:90").target, 90 * 60) << "minutes without a unit";
  EXPECT_EQ(mode("time:90m").target, 90 * 60);
  EXPECT_EQ(mode("time:45s").target, 45);
  EXPECT_EQ(mode("time:90").text(), "time:5400s") << "written back as it is kept";
  EXPECT_EQ(mode("amount:5000").text(), "amount:5000");
}

TEST_F(Modes, AModeThatIsNotAllowedGetsAClearError) {
  EXPECT_EQ(error("turbo"), "unknown charging mode 'turbo'; modes: full, amount:<fen>, energy:<Wh> (or <n>kWh), time:<minutes> (or <n>m, <n>s)");
  EXPECT_NE(error("amount:").find("positive whole number of fen"), std::string::npos);
  EXPECT_NE(error("amount:-5").find("positive whole number of fen"), std::string::npos);
  EXPECT_NE(error("amount:12.5").find("positive whole number of fen"), std::string::npos);
  EXPECT_NE(error("amount:0").find("positive whole number of fen"), std::string::npos);
  EXPECT_NE(error("energy:lots").find("Wh"), std::string::npos);
  EXPECT_NE(error("time:1h").find("minutes"), std::string::npos);
  EXPECT_NE(error("amount:99999999999999999999").find("positive whole number"), std::string::npos) << "no overflow";
}

TEST_F(Modes, TheSitesLimitsBoundEveryMode) {
  EXPECT_EQ(error("amount:50001"), "mode 'amount:50001': 50001 fen is above the site's limit of 50000 fen (payment.max_hold_fen)");
  EXPECT_EQ(mode("amount:50000").target, 50000);
  EXPECT_EQ(error("energy:100001"), "mode 'energy:100001': 100001 Wh is above the site's limit of 100000 Wh (charging.max_energy_wh)");
  EXPECT_EQ(error("time:241"), "mode 'time:241': 14460 s is above the site's limit of 14400 s (charging.max_time_s)");
  EXPECT_EQ(mode("time:240").target, 14400);
}

TEST_F(Modes, AFullSessionHoldsTheSitesDefaultAndAnAmountSessionItsAmount) {
  EXPECT_EQ(hold("full", at(1, 0)), 20000);
  EXPECT_EQ(hold("amount:3456", at(1, 0)), 3456);
}

TEST_F(Modes, AnEnergySessionHoldsItsEnergyAtTheHighestPriceItMayMeet) {
  // 10 kWh in the valley, all of it before 07:00: 10 x (1.00 + 0.50) yuan.
  EXPECT_EQ(hold("energy:10000", at(1, 0)), 1500);
  // 30 kWh at 60 kW takes 30 minutes: from 06:45 it runs into the peak, so the peak price.
  EXPECT_EQ(hold("energy:30000", at(6, 45)), 30 * 350);
  // The same from 05:00 ends before the peak.
  EXPECT_EQ(hold("energy:30000", at(5, 0)), 30 * 150);
}

TEST_F(Modes, ATimedSessionHoldsFullPowerForItsTimeAtTheHighestPrice) {
  // 30 minutes at 7 kW = 3.5 kWh; from 06:00 it stays in the valley.
  EXPECT_EQ(hold("time:30", at(6, 0), 7000), 525);
  // 90 minutes from 06:00 reach the peak: 10.5 kWh at 3.50 yuan.
  EXPECT_EQ(hold("time:90", at(6, 0), 7000), 3675);
}

TEST_F(Modes, AHoldAboveTheSitesLimitIsRefusedBeforeAnythingIsHeld) {
  pay.max_hold_fen = 30000;
  const auto r = hold_for(mode("energy:100000"), t, at(7, 0), 60'000, pay);  // 100 kWh at the peak: 350 yuan
  ASSERT_TRUE(std::holds_alternative<std::string>(r));
  EXPECT_EQ(std::get<std::string>(r), "mode 'energy:100000' needs a hold of 35000 fen, above the site's limit of 30000 fen (payment.max_hold_fen); ask for less");
}

}  // namespace
}  // namespace pilecore::core
