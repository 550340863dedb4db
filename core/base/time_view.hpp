// Times as a person reads them (pilectl, the engine's refusals): in the site's time zone with
// its offset ("2026-11-26 14:50:00 +08:00"), or in UTC ("... +00:00") with --utc, so a printed
// time is never ambiguous. The wire and the database keep UTC; only what a person reads is local.
#pragma once

#include <date/tz.h>

#include <optional>
#include <string>

#include "pilecore/clock.hpp"

namespace pilecore::core {

/// A zone to show times in; `name` as the operator would write it.
struct TimeView {
  const date::time_zone* zone = nullptr;  ///< never null once made by a function below
  std::string name = "UTC";
};

/// UTC.
TimeView utc_view();
/// The IANA zone `name`; nullopt (and `error` says why) when this system does not know it.
std::optional<TimeView> zone_view(const std::string& name, std::string* error = nullptr);

/// "2026-11-26 14:50:00 +08:00".
std::string format_time(TimePoint t, const TimeView& view);
/// The same for an RFC 3339 UTC text as the control socket sends it; a text that is not one is
/// returned unchanged, an empty one as "-".
std::string format_time_text(const std::string& utc_text, const TimeView& view);

/// The instants a local day "YYYY-MM-DD" begins and ends in `view` (23 or 25 hours long on a
/// DST change). False, with `error` set, when `day` is not such a date.
bool local_day_bounds(const std::string& day, const TimeView& view, TimePoint& begin, TimePoint& end, std::string& error);

}  // namespace pilecore::core
