// The payment router's rule, measured success rates, probes and persistence, on given times.
#include <gtest/gtest.h>

#include "router.hpp"
#include "storage.hpp"
#include "test_support.hpp"

namespace pilecore::core {
namespace {

using namespace std::chrono_literals;
using test::TempDir;

const TimePoint t0 = TimePoint(std::chrono::milliseconds(1'790'000'000'000));

std::map<std::string, std::vector<ChannelSpec>> four_channels() {
  return {{"face", {{"alipay-sp", 3800}, {"wechat-sp", 3000}, {"unionpay", 5500}, {"alipay-std", 6000}}}};
}

RoutingRule no_probes() {
  RoutingRule r;
  r.probe_every = 0;
  return r;
}

/// `n` attempts on a channel, `failed` of them failures, spread over the minute before `at`.
void attempts(Router& r, const std::string& channel, int n, int failed, TimePoint at) {
  for (int i = 0; i < n; ++i) r.record("face", channel, i >= failed, at - std::chrono::seconds(60) + std::chrono::seconds(i * 60 / std::max(n, 1)));
}

TEST(Router, AChannelIsEligibleOnlyBelowTheFeeCapAndAboveTheSuccessRateAndTheCheapestEligibleGoesFirst) {
  Router r(no_probes(), four_channels());
  attempts(r, "alipay-sp", 200, 1, t0);   // 99.5%
  attempts(r, "wechat-sp", 200, 6, t0);   // 97%: the cheapest, but not reliable enough
  attempts(r, "unionpay", 200, 0, t0);    // 100%
  attempts(r, "alipay-std", 200, 0, t0);  // 100%, but 0.6% is not below 0.6%
  const auto d = r.choose("face", "", t0);
  ASSERT_EQ(d.order, (std::vector<std::string>{"alipay-sp", "unionpay", "alipay-std", "wechat-sp"}));
  EXPECT_FALSE(d.probe);
  EXPECT_EQ(d.reason, "first of 2 eligible by preferred, lowest_fee (fee 0.38% < 0.60%, success 99.50% > 99.00%)");
  std::map<std::string, std::string> why;
  for (const auto& c : d.channels) why[c.name] = c.why;
  EXPECT_EQ(why["wechat-sp"], "fee 0.30% < 0.60%, success 97.00% <= 99.00%");
  EXPECT_EQ(why["alipay-std"], "fee 0.60% >= 0.60%, success 100.00% > 99.00%");
  EXPECT_EQ(d.summary(), "alipay-sp: " + d.reason + "; then unionpay, alipay-std, wechat-sp");
}

TEST(Router, TheUsersPreferredChannelGoesFirstOnlyWhenItIsEligible) {
  Router r(no_probes(), four_channels());
  attempts(r, "alipay-sp", 100, 0, t0);
  attempts(r, "wechat-sp", 100, 5, t0);
  attempts(r, "unionpay", 100, 0, t0);
  attempts(r, "alipay-std", 100, 0, t0);
  EXPECT_EQ(r.choose("face", "unionpay", t0).order.front(), "unionpay");
  EXPECT_EQ(r.choose("face", "unionpay", t0).reason, "the user's preferred channel (fee 0.55% < 0.60%, success 100.00% > 99.00%)");
  EXPECT_EQ(r.choose("face", "wechat-sp", t0).order.front(), "alipay-sp") << "95% is below the rule, preferred or not";
}

TEST(Router, TheOrderIsConfiguration) {
  RoutingRule rule = no_probes();
  rule.order = {RouteOrder::highest_success, RouteOrder::lowest_fee};
  rule.max_fee_ppm = 10'000;
  Router r(rule, four_channels());
  attempts(r, "alipay-sp", 100, 1, t0);
  attempts(r, "wechat-sp", 100, 1, t0);
  attempts(r, "unionpay", 100, 0, t0);
  attempts(r, "alipay-std", 100, 0, t0);
  EXPECT_EQ(r.choose("face", "alipay-sp", t0).order, (std::vector<std::string>{"unionpay", "alipay-std", "wechat-sp", "alipay-sp"}));
}

TEST(Router, BelowMinAttemptsARateIsNotKnownAndAColdStartGoesByFee) {
  Router r(no_probes(), four_channels());
  attempts(r, "unionpay", 19, 0, t0);
  const auto d = r.choose("face", "", t0);
  for (const auto& c : d.channels) {
    EXPECT_FALSE(c.success_ppm) << c.name;
    EXPECT_FALSE(c.eligible) << c.name;
  }
  EXPECT_EQ(d.order, (std::vector<std::string>{"wechat-sp", "alipay-sp", "unionpay", "alipay-std"}));
  EXPECT_EQ(d.reason, "no channel meets the rule; the most reliable (fee 0.30% < 0.60%, 0 attempts in the window (< 20): success not known yet)");
}

TEST(Router, WhenEveryChannelIsDegradedTheMostReliableStillTakesThePayment) {
  Router r(no_probes(), four_channels());
  attempts(r, "alipay-sp", 100, 8, t0);
  attempts(r, "wechat-sp", 100, 3, t0);
  attempts(r, "unionpay", 100, 5, t0);
  attempts(r, "alipay-std", 100, 2, t0);
  EXPECT_EQ(r.choose("face", "", t0).order, (std::vector<std::string>{"alipay-std", "wechat-sp", "unionpay", "alipay-sp"}));
}

TEST(Router, TheWindowSlidesAndAnOutageIsForgottenOnceItHasLeftIt) {
  Router r(no_probes(), four_channels());
  attempts(r, "wechat-sp", 100, 100, t0);  // an outage
  attempts(r, "alipay-sp", 100, 0, t0);
  EXPECT_EQ(r.choose("face", "", t0).order.front(), "alipay-sp");
  const TimePoint later = t0 + 50min;
  attempts(r, "wechat-sp", 50, 0, later);  // back, but the outage is still in the window
  EXPECT_EQ(*r.channels("face", later)[1].success_ppm, 333'333u);
  const TimePoint after = t0 + 66min;  // the outage's buckets have left the hour
  attempts(r, "alipay-sp", 30, 0, after);
  const auto views = r.channels("face", after);
  EXPECT_EQ(views[1].attempts, 50);
  EXPECT_EQ(*views[1].success_ppm, 1'000'000u);
  EXPECT_EQ(r.choose("face", "", after).order.front(), "wechat-sp");
}

TEST(Router, OnePaymentInProbeEveryGoesToTheLeastTriedChannelWhoseRateIsNotKnown) {
  RoutingRule rule;
  rule.probe_every = 10;
  Router r(rule, four_channels());
  attempts(r, "alipay-sp", 100, 0, t0);
  attempts(r, "unionpay", 5, 0, t0);
  attempts(r, "alipay-std", 100, 0, t0);
  std::map<std::string, int> first;
  int probes = 0;
  for (int i = 0; i < 100; ++i) {
    const auto d = r.choose("face", "", t0);
    ++first[d.order.front()];
    if (d.probe) {
      ++probes;
      EXPECT_EQ(d.reason.substr(0, 24), "probe, one payment in 10");
      r.record("face", d.order.front(), true, t0);
    }
  }
  EXPECT_EQ(probes, 10);
  EXPECT_EQ(first["alipay-sp"], 90);
  // wechat-sp (0 attempts) until it has caught up with unionpay (5), then whichever has fewer:
  // the two end level.
  EXPECT_EQ(first["wechat-sp"] + first["unionpay"], 10);
  const auto views = r.channels("face", t0);
  EXPECT_LE(std::abs(views[1].attempts - views[2].attempts), 1) << views[1].attempts << " vs " << views[2].attempts;
}

TEST(Router, CountsArePersistedAndRestored) {
  TempDir dir;
  Database db(dir.path() / "p.db");
  Router a(no_probes(), four_channels());
  for (int i = 0; i < 40; ++i) routing_stats::save(db, a.record("face", "wechat-sp", i % 20 != 0, t0 - std::chrono::seconds(i * 60)));
  routing_stats::save(db, a.record("face", "unionpay", true, t0 - 3h));  // outside the window
  Router b(no_probes(), four_channels());
  b.restore(routing_stats::load(db.handle(), t0 - 2h));
  const auto va = a.channels("face", t0), vb = b.channels("face", t0);
  ASSERT_EQ(vb[1].name, "wechat-sp");
  EXPECT_EQ(vb[1].attempts, va[1].attempts);
  EXPECT_EQ(vb[1].failures, 2);
  EXPECT_EQ(vb[1].success_ppm, va[1].success_ppm);
  EXPECT_EQ(vb[2].attempts, 0);
  routing_stats::prune(db, t0 - 2h);
  EXPECT_EQ(routing_stats::load(db.handle(), t0 - 24h).size(), routing_stats::load(db.handle(), t0 - 2h).size());
}

TEST(Router, AMethodWithoutChannelsIsNotRouted) {
  Router r(RoutingRule{}, four_channels());
  EXPECT_TRUE(r.choose("card", "", t0).empty());
  EXPECT_FALSE(r.routes("card"));
  EXPECT_TRUE(r.routes("face"));
  EXPECT_EQ(r.record("card", "x", true, t0).channel, "");
}

}  // namespace
}  // namespace pilecore::core
