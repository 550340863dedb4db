// The site's calendar for risk rules: where the site-local day starts, and the offset from UTC.
// Rules count "per day" in the day the site lives in; a plugin cannot compute it (it does not
// know the zone), so the core hands it over in risk::Context and with each past session.
#pragma once

#include <cstdint>
#include <string>

#include "pilecore/clock.hpp"

namespace date {
class time_zone;
}

namespace pilecore::core {

class SiteDay {
 public:
  /// `zone` is an IANA name the site file validated ("Asia/Shanghai"); an unknown one throws.
  explicit SiteDay(const std::string& zone);
  /// Local midnight of the day `t` falls on (the first instant of it, when a DST change skips
  /// midnight).
  [[nodiscard]] TimePoint day_start(TimePoint t) const;
  [[nodiscard]] std::int32_t utc_offset_s(TimePoint t) const;
  [[nodiscard]] const date::time_zone* zone() const { return zone_; }

 private:
  const date::time_zone* zone_;
};

}  // namespace pilecore::core
