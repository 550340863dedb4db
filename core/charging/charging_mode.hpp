// Charging modes: what the driver asked for (a full battery, an amount of money, an amount of
// energy or a time) and the hold that follows from it. The hold is what the payment method is
// asked to authorise; the session stops when its target is reached, and in any mode when its
// bill reaches the hold (charging_session.hpp).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>

#include "pilecore/clock.hpp"
#include "session_config.hpp"
#include "tariff.hpp"

namespace pilecore::core {

enum class ModeKind { full, amount, energy, time };

struct ChargingMode {
  ModeKind kind = ModeKind::full;
  /// amount: fen; energy: Wh; time: seconds; full: 0
  std::int64_t target = 0;
  /// As the driver may write it again: "full", "amount:5000", "energy:20000", "time:5400s".
  [[nodiscard]] std::string text() const;
};

/// "full", "amount:<fen>", "energy:<Wh>" (or "<n>kWh"), "time:<minutes>" ("<n>m", or "<n>s" for
/// seconds), checked against the site's limits. The error says what is allowed.
std::variant<ChargingMode, std::string> parse_mode(std::string_view text, const PaymentSettings& pay, const ChargingSettings& charging);

/// The most a kWh can cost (electricity and service, 10^-decimals fen per kWh) in [from, to).
std::int64_t highest_price_per_kwh(const Tariff& tariff, TimePoint from, TimePoint to);

/// The hold a mode asks: amount -> the amount; energy -> the energy at the highest price the
/// tariff reaches while it flows at `max_power_w`; time -> max_power_w for that long at the
/// highest price in that time; full -> payment.preauth_fen. Rounded up to the fen. An error when
/// it would exceed payment.max_hold_fen.
std::variant<std::int64_t, std::string> hold_for(const ChargingMode& mode, const Tariff& tariff, TimePoint now, std::int64_t max_power_w,
                                                 const PaymentSettings& pay);

}  // namespace pilecore::core
