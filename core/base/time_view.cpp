#include "time_view.hpp"

#include <fmt/format.h>

#include <sstream>

#include "clocks.hpp"

namespace pilecore::core {

TimeView utc_view() { return TimeView{date::locate_zone("UTC"), "UTC"}; }

std::optional<TimeView> zone_view(const std::string& name, std::string* error) {
  try {
    return TimeView{date::locate_zone(name), name};
  } catch (const std::exception&) {
    if (error) *error = fmt::format("'{}' is not a known time zone (an IANA name, e.g. Asia/Shanghai)", name);
    return std::nullopt;
  }
}

std::string format_time(TimePoint t, const TimeView& view) {
  const auto s = std::chrono::floor<std::chrono::seconds>(t);
  return date::format("%F %T %Ez", date::make_zoned(view.zone ? view.zone : date::locate_zone("UTC"), s));
}

std::string format_time_text(const std::string& utc_text, const TimeView& view) {
  if (utc_text.empty()) return "-";
  TimePoint t;
  if (!parse_utc(utc_text, t)) return utc_text;
  return format_time(t, view);
}

bool local_day_bounds(const std::string& day, const TimeView& view, TimePoint& begin, TimePoint& end, std::string& error) {
  std::istringstream in(day);
  date::local_days d;
  in >> date::parse("%F", d);
  if (in.fail() || in.peek() != std::char_traits<char>::eof() || day.size() != 10) {
    error = fmt::format("--day '{}' is not a date like 2026-11-26", day);
    return false;
  }
  // Midnight in a DST gap maps to the gap's end, in a fold to its first instant: either way
  // the day's first instant, so consecutive days neither overlap nor leave a hole.
  begin = std::chrono::time_point_cast<Duration>(view.zone->to_sys(d, date::choose::earliest));
  end = std::chrono::time_point_cast<Duration>(view.zone->to_sys(d + date::days{1}, date::choose::earliest));
  return true;
}

}  // namespace pilecore::core
