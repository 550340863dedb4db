#include "clocks.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <cstdio>
#include <regex>
#include <string>

namespace pilecore::core {
using namespace std::chrono;

TimePoint SystemClock::now() const noexcept { return time_point_cast<milliseconds>(system_clock::now()); }

ScaledClock::ScaledClock(TimePoint start, double speed) : start_(start), real_start_(steady_clock::now()), speed_(speed > 0 ? speed : 1.0) {}

TimePoint ScaledClock::now() const noexcept {
  const auto real = duration_cast<duration<double, std::milli>>(steady_clock::now() - real_start_);
  return start_ + milliseconds(static_cast<std::int64_t>(real.count() * speed_));
}

steady_clock::duration real_duration(const Clock& clock, Duration d) {
  const double ms = static_cast<double>(d.count()) / clock.speed();
  return duration_cast<steady_clock::duration>(duration<double, std::milli>(ms));
}

bool parse_utc(std::string_view text, TimePoint& out) {
  static const std::regex re(R"((\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{3}))?Z)");
  std::match_results<std::string_view::const_iterator> m;
  if (!std::regex_match(text.begin(), text.end(), m, re)) return false;
  auto num = [&](int i) { return std::stoi(m[i].str()); };
  const year_month_day ymd{year{num(1)}, month{static_cast<unsigned>(num(2))}, day{static_cast<unsigned>(num(3))}};
  if (!ymd.ok() || num(4) > 23 || num(5) > 59 || num(6) > 59) return false;
  out = time_point_cast<milliseconds>(sys_days{ymd} + hours{num(4)} + minutes{num(5)} + seconds{num(6)}) + milliseconds{m[7].matched ? num(7) : 0};
  return true;
}

std::string format_utc(TimePoint t) {
  const auto day = floor<days>(t);
  const year_month_day ymd{day};
  const hh_mm_ss hms{t - day};
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", static_cast<int>(ymd.year()), static_cast<unsigned>(ymd.month()),
                     static_cast<unsigned>(ymd.day()), hms.hours().count(), hms.minutes().count(), hms.seconds().count(),
                     hms.subseconds().count());
}

}  // namespace pilecore::core
