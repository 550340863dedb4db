// bench_routing: the payment router (core/payment/router.*) against the best single static
// channel, on 100,000 simulated payments over four channels whose success rates drift between 92%
// and 99.8%, one of them with a 10-minute outage.
//
// Each payment asks the router for an order and tries the channels in it, failing over on a
// channel error up to `--attempts` channels (what the method's deadline allows); every attempt's
// outcome goes back to the router, which measures the rates live, as in the pile. A static channel
// gets one attempt per payment: that is what a pile without a router has. The fee is the fee rate
// of the channel that took the payment.
//
// Targets (issue #9, from the seed): the router above 99.5% success (the seed reports 98.7%) at a
// mean fee of 0.6% or less. Deterministic: the same seed gives the same figures.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <numbers>
#include <random>

#include "router.hpp"

namespace {

using namespace pilecore;
using namespace pilecore::core;
using namespace std::chrono_literals;

struct SimChannel {
  ChannelSpec spec;
  double period_h;  ///< the drift's period
  double phase;
  bool outage;      ///< the one with the 10-minute outage
};

constexpr double low = 0.92, high = 0.998;

struct Result {
  long payments = 0, succeeded = 0, attempts = 0;
  double fee_fen_ppm_sum = 0;  ///< fee rate of each successful payment, summed (ppm)
  [[nodiscard]] double success() const { return static_cast<double>(succeeded) / static_cast<double>(payments); }
  [[nodiscard]] double mean_fee_pct() const { return succeeded == 0 ? 0 : fee_fen_ppm_sum / static_cast<double>(succeeded) / 10'000.0; }
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_routing: the payment router against the best static channel"};
  long payments = 100'000;
  int spacing_s = 6;
  int max_attempts = 3;
  unsigned seed = 20261201;
  app.add_option("--payments", payments, "Payments simulated")->check(CLI::Range(1000L, 100'000'000L));
  app.add_option("--spacing", spacing_s, "Seconds between payments")->check(CLI::Range(1, 3600));
  app.add_option("--attempts", max_attempts, "Channels a payment may try before its deadline (failover)")->check(CLI::Range(1, 4));
  app.add_option("--seed", seed, "Random seed");
  CLI11_PARSE(app, argc, argv);

  const std::vector<SimChannel> sims = {
      {{"wechat-sp", 3000}, 7.0, 0.0, true},
      {{"alipay-sp", 3800}, 11.0, 1.3, false},
      {{"unionpay", 5500}, 17.0, 2.9, false},
      {{"alipay-std", 6000}, 29.0, 4.4, false},
  };
  const TimePoint start = TimePoint(std::chrono::hours(24 * 20000));
  // When wechat-sp is at its best (its drift peaks at 50.75 h) and the router sends it most payments.
  const TimePoint outage_from = start + 50h + 30min, outage_to = outage_from + 10min;
  auto rate = [&](const SimChannel& c, TimePoint t) {
    if (c.outage && t >= outage_from && t < outage_to) return 0.0;
    const double h = std::chrono::duration<double, std::ratio<3600>>(t - start).count();
    return low + (high - low) * (0.5 + 0.5 * std::sin(2 * std::numbers::pi * h / c.period_h + c.phase));
  };

  std::vector<ChannelSpec> specs;
  for (const auto& c : sims) specs.push_back(c.spec);
  Router router(RoutingRule{}, {{"face", specs}});
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);

  Result routed, first_only;
  std::vector<Result> statics(sims.size());
  long in_outage = 0, routed_to_outage = 0, lost_in_outage = 0;
  double decide_ns = 0;
  for (long i = 0; i < payments; ++i) {
    const TimePoint t = start + std::chrono::seconds(i * spacing_s);
    // The same draw decides a channel's answer for the router and for the static run, so both
    // face the same luck.
    std::vector<double> draws(sims.size());
    for (auto& d : draws) d = u(rng);
    for (std::size_t c = 0; c < sims.size(); ++c) {
      ++statics[c].payments;
      ++statics[c].attempts;
      if (draws[c] < rate(sims[c], t)) {
        ++statics[c].succeeded;
        statics[c].fee_fen_ppm_sum += sims[c].spec.fee_ppm;
      }
    }
    const auto t0 = std::chrono::steady_clock::now();
    const RoutingDecision d = router.choose("face", "", t);
    decide_ns += std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
    ++routed.payments;
    ++first_only.payments;
    const bool during_outage = t >= outage_from && t < outage_to;
    in_outage += during_outage;
    bool paid = false;
    for (int a = 0; a < max_attempts && a < static_cast<int>(d.order.size()); ++a) {
      std::size_t c = 0;
      while (sims[c].spec.name != d.order[static_cast<std::size_t>(a)]) ++c;
      if (a == 0 && during_outage && sims[c].outage) ++routed_to_outage;
      ++routed.attempts;
      // A second attempt on a channel within one payment gets a fresh draw.
      const double draw = a == 0 ? draws[c] : u(rng);
      const bool ok = draw < rate(sims[c], t);
      router.record("face", sims[c].spec.name, ok, t);
      if (ok) {
        paid = true;
        ++routed.succeeded;
        routed.fee_fen_ppm_sum += sims[c].spec.fee_ppm;
        if (a == 0) {
          ++first_only.succeeded;
          first_only.fee_fen_ppm_sum += sims[c].spec.fee_ppm;
        }
        break;
      }
    }
    lost_in_outage += during_outage && !paid;
  }

  std::size_t best = 0;
  for (std::size_t c = 1; c < statics.size(); ++c) {
    if (statics[c].success() > statics[best].success()) best = c;
  }
  fmt::print("bench_routing: {} payments, one every {} s ({:.1f} days), 4 channels drifting {:.1f}%..{:.1f}%, {} with a 10-minute outage\n",
             payments, spacing_s, static_cast<double>(payments * spacing_s) / 86400.0, low * 100, high * 100, sims[0].spec.name);
  for (std::size_t c = 0; c < sims.size(); ++c) {
    fmt::print("  static {:<11} fee {:.2f}%   success {:7.3f}%\n", sims[c].spec.name, sims[c].spec.fee_ppm / 10'000.0, statics[c].success() * 100);
  }
  fmt::print("  best static channel: {} at {:.3f}% success, mean fee {:.3f}%\n", sims[best].spec.name, statics[best].success() * 100,
             statics[best].mean_fee_pct());
  fmt::print("  router, first attempt only: {:.3f}% success, mean fee {:.3f}%\n", first_only.success() * 100, first_only.mean_fee_pct());
  fmt::print("  router with failover (up to {} channels): {:.3f}% success, mean fee {:.3f}%, {:.3f} attempts per payment\n", max_attempts,
             routed.success() * 100, routed.mean_fee_pct(), static_cast<double>(routed.attempts) / static_cast<double>(routed.payments));
  fmt::print("  during the outage: {} of {} payments went first to {} (then it was out of the rule), {} lost\n", routed_to_outage, in_outage,
             sims[0].spec.name, lost_in_outage);
  fmt::print("  a routing decision takes {:.0f} ns on average\n", decide_ns / static_cast<double>(payments));
  const bool success_ok = routed.success() > 0.995;
  const bool fee_ok = routed.mean_fee_pct() <= 0.6;
  fmt::print("target: success > 99.5% ({}), mean fee <= 0.6% ({})\n", success_ok ? "met" : "MISSED", fee_ok ? "met" : "MISSED");
  return success_ok && fee_ok ? 0 : 1;
}
