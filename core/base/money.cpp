#include "money.hpp"

#include <fmt/format.h>

#include <stdexcept>

namespace pilecore::core {

// 128-bit intermediates keep Wh x price exact; a GCC/Clang extension, hence the marker.
__extension__ using i128 = __int128;

std::string_view to_string(Rounding r) { return r == Rounding::half_up ? "half_up" : "truncate"; }

std::optional<Rounding> rounding_from(std::string_view s) {
  if (s == "half_up") return Rounding::half_up;
  if (s == "truncate") return Rounding::truncate;
  return std::nullopt;
}

std::optional<std::int64_t> parse_scaled(std::string_view text, int decimals) {
  if (text.empty() || decimals < 0 || decimals > 6) return std::nullopt;
  std::int64_t whole = 0, frac = 0;
  int frac_digits = 0;
  bool dot = false, any_digit = false;
  for (char c : text) {
    if (c == '.') {
      if (dot) return std::nullopt;
      dot = true;
      continue;
    }
    if (c < '0' || c > '9') return std::nullopt;
    any_digit = true;
    if (dot) {
      if (++frac_digits > decimals) return std::nullopt;
      frac = frac * 10 + (c - '0');
    } else {
      if (whole > (INT64_MAX / 10) / 1000000) return std::nullopt;  // keep room for the scale
      whole = whole * 10 + (c - '0');
    }
  }
  if (!any_digit || (dot && frac_digits == 0)) return std::nullopt;
  std::int64_t scale = 1;
  for (int i = 0; i < decimals; ++i) scale *= 10;
  for (int i = frac_digits; i < decimals; ++i) frac *= 10;
  return whole * scale + frac;
}

std::string format_scaled(std::int64_t units, int decimals) {
  if (decimals == 0) return std::to_string(units);
  std::int64_t scale = 1;
  for (int i = 0; i < decimals; ++i) scale *= 10;
  const bool neg = units < 0;
  const std::uint64_t u = neg ? static_cast<std::uint64_t>(-(units + 1)) + 1 : static_cast<std::uint64_t>(units);
  return fmt::format("{}{}.{:0{}}", neg ? "-" : "", u / static_cast<std::uint64_t>(scale), u % static_cast<std::uint64_t>(scale), decimals);
}

std::string format_yuan(std::int64_t fen) { return format_scaled(fen, 2); }
std::string format_kwh(std::int64_t wh) { return format_scaled(wh, 3); }

std::int64_t amount_fen(std::int64_t wh, ScaledPrice price, Rounding rounding) {
  if (wh < 0 || price.units < 0) throw std::invalid_argument("amount_fen: negative energy or price");
  // wh [Wh] * units [10^-d fen/kWh] = wh * units / (1000 * 10^d) fen
  i128 den = 1000;
  for (int i = 0; i < price.decimals; ++i) den *= 10;
  const i128 num = static_cast<i128>(wh) * price.units;
  i128 q = num / den;
  const i128 r = num % den;
  if (rounding == Rounding::half_up && r * 2 >= den) ++q;
  if (q > INT64_MAX) throw std::overflow_error("amount_fen: amount does not fit in 64 bits");
  return static_cast<std::int64_t>(q);
}

}  // namespace pilecore::core
