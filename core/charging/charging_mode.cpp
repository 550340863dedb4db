#include "charging_mode.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <initializer_list>
#include <optional>
#include <utility>

namespace pilecore::core {

std::string ChargingMode::text() const {
  switch (kind) {
    case ModeKind::full: return "full";
    case ModeKind::amount: return fmt::format("amount:{}", target);
    case ModeKind::energy: return fmt::format("energy:{}", target);
    case ModeKind::time: return fmt::format("time:{}s", target);
  }
  return "full";
}

namespace {

constexpr std::string_view allowed = "full, amount:<fen>, energy:<Wh> (or <n>kWh), time:<minutes> (or <n>m, <n>s)";

/// A positive integer with one of `suffixes` (each with its multiplier); nullopt otherwise.
std::optional<std::int64_t> number(std::string_view s, std::initializer_list<std::pair<std::string_view, std::int64_t>> suffixes) {
  std::int64_t scale = 1;
  for (const auto& [suffix, mult] : suffixes) {
    if (!suffix.empty() && s.size() > suffix.size() && s.substr(s.size() - suffix.size()) == suffix) {
      s.remove_suffix(suffix.size());
      scale = mult;
      break;
    }
  }
  if (s.empty() || s.size() > 12) return std::nullopt;
  std::int64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || v <= 0) return std::nullopt;
  return v * scale;
}

}  // namespace

std::variant<ChargingMode, std::string> parse_mode(std::string_view text, const PaymentSettings& pay, const ChargingSettings& charging) {
  if (text.empty() || text == "full") return ChargingMode{};
  const auto colon = text.find(':');
  const std::string_view kind = text.substr(0, colon);
  const std::string_view value = colon == std::string_view::npos ? std::string_view() : text.substr(colon + 1);
  if (kind == "amount") {
    const auto fen = number(value, {{"fen", 1}});
    if (!fen) return fmt::format("mode '{}': the amount must be a positive whole number of fen; modes: {}", text, allowed);
    if (*fen > pay.max_hold_fen) return fmt::format("mode '{}': {} fen is above the site's limit of {} fen (payment.max_hold_fen)", text, *fen, pay.max_hold_fen);
    return ChargingMode{ModeKind::amount, *fen};
  }
  if (kind == "energy") {
    const auto wh = number(value, {{"kWh", 1000}, {"Wh", 1}});
    if (!wh) return fmt::format("mode '{}': the energy must be a positive whole number of Wh (or kWh); modes: {}", text, allowed);
    if (*wh > charging.max_energy_wh) {
      return fmt::format("mode '{}': {} Wh is above the site's limit of {} Wh (charging.max_energy_wh)", text, *wh, charging.max_energy_wh);
    }
    return ChargingMode{ModeKind::energy, *wh};
  }
  if (kind == "time") {
    const auto s = number(value, {{"s", 1}, {"m", 60}});
    // No suffix: minutes.
    const auto seconds = s && !value.empty() && value.back() >= '0' && value.back() <= '9' ? std::optional<std::int64_t>(*s * 60) : s;
    if (!seconds) return fmt::format("mode '{}': the time must be a positive whole number of minutes (or <n>s for seconds); modes: {}", text, allowed);
    if (*seconds > charging.max_time_s) {
      return fmt::format("mode '{}': {} s is above the site's limit of {} s (charging.max_time_s)", text, *seconds, charging.max_time_s);
    }
    return ChargingMode{ModeKind::time, *seconds};
  }
  return fmt::format("unknown charging mode '{}'; modes: {}", text, allowed);
}

std::int64_t highest_price_per_kwh(const Tariff& tariff, TimePoint from, TimePoint to) {
  std::int64_t highest = 0;
  TimePoint t = from;
  // One slot after another; a tariff has a few a day, and the span is at most the site's limits.
  for (int guard = 0; guard < 10'000; ++guard) {
    const Slot s = tariff.slot_at(t);
    highest = std::max(highest, s.price.electricity + s.price.service);
    if (s.end >= to || s.end <= t) break;
    t = s.end;
  }
  return highest;
}

std::variant<std::int64_t, std::string> hold_for(const ChargingMode& mode, const Tariff& tariff, TimePoint now, std::int64_t max_power_w,
                                                 const PaymentSettings& pay) {
  // price unit x Wh -> fen: 10^decimals per fen, 1000 Wh per kWh.
  const std::int64_t scale = static_cast<std::int64_t>(std::pow(10, tariff.decimals())) * 1000;
  const std::int64_t power = std::max<std::int64_t>(max_power_w, 1);
  std::int64_t wh = 0;
  Duration span{0};
  switch (mode.kind) {
    case ModeKind::full: return pay.preauth_fen;
    case ModeKind::amount: return mode.target;
    case ModeKind::energy:
      wh = mode.target;
      // At full power it flows soonest; a slower session may reach a dearer period, but the
      // funds check stops it at the hold all the same.
      span = Duration((wh * 3'600'000 + power - 1) / power);
      break;
    case ModeKind::time:
      span = std::chrono::seconds(mode.target);
      wh = (power * mode.target + 3599) / 3600;
      break;
  }
  const std::int64_t price = highest_price_per_kwh(tariff, now, now + span);
  // Overflow-safe: Wh and prices are bounded by the config's ranges, far below 2^63 / each other.
  const std::int64_t hold = (wh * price + scale - 1) / scale;
  if (hold > pay.max_hold_fen) {
    return fmt::format("mode '{}' needs a hold of {} fen, above the site's limit of {} fen (payment.max_hold_fen); ask for less", mode.text(), hold,
                       pay.max_hold_fen);
  }
  return std::max<std::int64_t>(hold, 1);
}

}  // namespace pilecore::core
