// Money and energy arithmetic. Money is integer fen, energy integer Wh, prices integers scaled
// by 10^decimals. The rounding rule lives here and nowhere else.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace pilecore::core {

/// Operator policy for turning fractions of a fen into fen (../shared/DOMAIN.md section 1).
enum class Rounding : std::uint8_t {
  half_up,   ///< 0.5 fen and above rounds up (the default)
  truncate,  ///< fractions of a fen are dropped
};

std::string_view to_string(Rounding r);
std::optional<Rounding> rounding_from(std::string_view s);

/// A price per kWh in units of 10^-decimals fen (e.g. 100.44 fen/kWh with decimals 2 = 10044).
struct ScaledPrice {
  std::int64_t units = 0;
  int decimals = 0;
};

/// Parses a decimal such as "100.44" into units of 10^-decimals; refuses signs, exponents and
/// more fractional digits than declared, so no price is ever silently rounded.
std::optional<std::int64_t> parse_scaled(std::string_view text, int decimals);
/// "100.44" for 10044 with decimals 2.
std::string format_scaled(std::int64_t units, int decimals);
/// "12.34" yuan for 1234 fen.
std::string format_yuan(std::int64_t fen);
/// "5.682" kWh for 5682 Wh.
std::string format_kwh(std::int64_t wh);

/// THE rounding rule: `wh` of energy at `price` costs this many fen. Exact integer arithmetic
/// (128-bit intermediate); wh and price must be non-negative.
std::int64_t amount_fen(std::int64_t wh, ScaledPrice price, Rounding rounding);

}  // namespace pilecore::core
