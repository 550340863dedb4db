#include "site_day.hpp"

#include <date/tz.h>

namespace pilecore::core {

SiteDay::SiteDay(const std::string& zone) : zone_(date::locate_zone(zone)) {}

TimePoint SiteDay::day_start(TimePoint t) const {
  const auto local = zone_->to_local(t);
  const auto midnight = date::floor<date::days>(local);
  // choose::earliest: a local midnight that happens twice counts from its first occurrence; one
  // that a DST change skips maps to the instant the day begins.
  return std::chrono::time_point_cast<Duration>(zone_->to_sys(midnight, date::choose::earliest));
}

std::int32_t SiteDay::utc_offset_s(TimePoint t) const {
  return static_cast<std::int32_t>(zone_->get_info(std::chrono::floor<std::chrono::seconds>(t)).offset.count());
}

}  // namespace pilecore::core
