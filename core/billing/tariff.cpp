#include "tariff.hpp"

#include <date/tz.h>
#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace pilecore::core {
using namespace std::chrono;

std::string_view to_string(PeriodType p) {
  switch (p) {
    case PeriodType::sharp: return "sharp";
    case PeriodType::peak: return "peak";
    case PeriodType::flat: return "flat";
    case PeriodType::valley: return "valley";
  }
  return "unknown";
}

std::string_view chinese_name(PeriodType p) {
  switch (p) {
    case PeriodType::sharp: return "尖";
    case PeriodType::peak: return "峰";
    case PeriodType::flat: return "平";
    case PeriodType::valley: return "谷";
  }
  return "?";
}

std::optional<PeriodType> period_type_from(std::string_view s) {
  if (s == "sharp") return PeriodType::sharp;
  if (s == "peak") return PeriodType::peak;
  if (s == "flat") return PeriodType::flat;
  if (s == "valley") return PeriodType::valley;
  return std::nullopt;
}

namespace {

std::optional<std::int64_t> parse_date(const std::string& s) {
  unsigned y = 0, m = 0, d = 0;
  char tail = 0;
  if (std::sscanf(s.c_str(), "%4u-%2u-%2u%c", &y, &m, &d, &tail) != 3 || s.size() != 10) return std::nullopt;
  const date::year_month_day ymd{date::year{static_cast<int>(y)}, date::month{m}, date::day{d}};
  if (!ymd.ok()) return std::nullopt;
  return date::sys_days(ymd).time_since_epoch().count();
}

/// Local midnight + minutes of day `day` -> UTC. In a spring-forward gap the clock jumps, so a
/// boundary inside the gap happens at the jump; in a fall-back overlap the first occurrence
/// counts.
TimePoint to_utc(const date::time_zone* zone, std::int64_t day, int minute) {
  const date::local_time<minutes> local{date::local_days{date::days{day}}.time_since_epoch() + minutes{minute}};
  const auto info = zone->get_info(local);
  if (info.result == date::local_info::nonexistent) return time_point_cast<milliseconds>(info.first.end);
  return time_point_cast<milliseconds>(zone->to_sys(local, date::choose::earliest));
}

}  // namespace

Tariff::Tariff(std::string time_zone, int decimals, Rounding rounding, std::map<std::string, Plan> plans,
               std::array<std::string, 7> weekday_plans, std::map<std::string, std::string> dates)
    : zone_name_(std::move(time_zone)), decimals_(decimals), rounding_(rounding), plans_(std::move(plans)), weekday_plans_(std::move(weekday_plans)) {
  try {
    zone_ = date::locate_zone(zone_name_);
  } catch (const std::exception&) {
    throw std::invalid_argument(fmt::format("unknown time zone '{}'", zone_name_));
  }
  for (auto& [name, plan] : plans_) {
    std::sort(plan.windows.begin(), plan.windows.end(), [](const Window& a, const Window& b) { return a.start_minute < b.start_minute; });
    int at = 0;
    for (const auto& w : plan.windows) {
      if (w.start_minute != at) {
        throw std::invalid_argument(fmt::format("plan '{}': periods {} at {:02}:{:02}", name, w.start_minute > at ? "leave a gap" : "overlap",
                                                at / 60, at % 60));
      }
      if (w.end_minute <= w.start_minute || w.end_minute > 1440) throw std::invalid_argument(fmt::format("plan '{}': a period ends before it starts", name));
      if (!plan.prices[static_cast<std::size_t>(w.type)]) {
        throw std::invalid_argument(fmt::format("plan '{}': no price for the {} period", name, to_string(w.type)));
      }
      at = w.end_minute;
    }
    if (at != 1440) throw std::invalid_argument(fmt::format("plan '{}': periods end at {:02}:{:02}, not 24:00", name, at / 60, at % 60));
  }
  for (const auto& p : weekday_plans_) {
    if (!plans_.count(p)) throw std::invalid_argument(fmt::format("unknown plan '{}'", p));
  }
  for (const auto& [d, p] : dates) {
    auto day = parse_date(d);
    if (!day) throw std::invalid_argument(fmt::format("'{}' is not a date like 2026-10-01", d));
    if (!plans_.count(p)) throw std::invalid_argument(fmt::format("unknown plan '{}'", p));
    dates_[*day] = p;
  }
}

Tariff Tariff::flat_rate(std::string time_zone, int decimals, Price price, Rounding rounding) {
  Plan plan{"flat", {}, {Window{0, 1440, PeriodType::flat}}};
  plan.prices[static_cast<std::size_t>(PeriodType::flat)] = price;
  std::map<std::string, Plan> plans{{"flat", plan}};
  std::array<std::string, 7> week;
  week.fill("flat");
  return Tariff(std::move(time_zone), decimals, rounding, std::move(plans), week, {});
}

const Plan& Tariff::plan_for_local_day(std::int64_t day) const {
  if (auto it = dates_.find(day); it != dates_.end()) return plans_.at(it->second);
  const date::weekday wd{date::sys_days{date::days{day}}};
  const unsigned monday_first = (wd.c_encoding() + 6) % 7;  // c_encoding: Sunday = 0
  return plans_.at(weekday_plans_[monday_first]);
}

Slot Tariff::slot_at(TimePoint t) const {
  const auto local = zone_->to_local(t);
  const auto day = floor<date::days>(local);
  const std::int64_t day_number = day.time_since_epoch().count();
  const int minute = static_cast<int>(duration_cast<minutes>(local - day).count());
  const Plan& plan = plan_for_local_day(day_number);
  const auto w = std::find_if(plan.windows.begin(), plan.windows.end(), [&](const Window& x) { return minute < x.end_minute; });
  Slot s;
  s.type = w->type;
  s.plan = plan.name;
  s.price = *plan.prices[static_cast<std::size_t>(w->type)];
  s.start = to_utc(zone_, day_number, w->start_minute);
  s.end = to_utc(zone_, day_number, w->end_minute);
  // Inside a fall-back overlap the boundary may map before t: the later occurrence is meant.
  if (s.end <= t) {
    const date::local_time<minutes> local_end{date::local_days{date::days{day_number}}.time_since_epoch() + minutes{w->end_minute}};
    s.end = time_point_cast<milliseconds>(zone_->to_sys(local_end, date::choose::latest));
    if (s.end <= t) s.end = t + milliseconds(1);
  }
  if (s.start > t) s.start = t;
  return s;
}

}  // namespace pilecore::core
