#include "tariff.hpp"

#include <date/tz.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <map>
#include <stdexcept>

namespace pilecore::core {
using namespace std::chrono;

namespace {

std::string hhmm(int minute) { return fmt::format("{:02}:{:02}", minute / 60, minute % 60); }
/// The end of a stretch of minutes: midnight after a stretch reads 24:00.
std::string hhmm_end(int minute) { return minute % 1440 == 0 ? "24:00" : hhmm(minute % 1440); }

int length_of(const Window& w) {
  const int start = w.start_minute % 1440;
  return w.end_minute > start ? w.end_minute - start : w.end_minute + 1440 - start;
}

constexpr std::array<unsigned, 12> days_in_leap_month = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

/// Day of a leap year, 0..365: seasons are checked on a leap year's calendar, so 02-29 has a
/// place and every other day keeps the same one in every year.
int day_of_leap_year(unsigned month, unsigned day) {
  int n = 0;
  for (unsigned m = 1; m < month; ++m) n += static_cast<int>(days_in_leap_month[m - 1]);
  return n + static_cast<int>(day) - 1;
}

std::string month_day_of(int leap_day) {
  unsigned m = 1;
  while (leap_day >= static_cast<int>(days_in_leap_month[m - 1])) leap_day -= static_cast<int>(days_in_leap_month[m++ - 1]);
  return fmt::format("{:02}-{:02}", m, leap_day + 1);
}

bool season_holds(const Season& s, int leap_day) {
  const int from = day_of_leap_year(s.from_month, s.from_day), to = day_of_leap_year(s.to_month, s.to_day);
  return from <= to ? leap_day >= from && leap_day <= to : leap_day >= from || leap_day <= to;
}

std::string describe_season(const Season& s) {
  const std::string range = fmt::format("{:02}-{:02}..{:02}-{:02}", s.from_month, s.from_day, s.to_month, s.to_day);
  return s.name.empty() ? fmt::format("season {}", range) : fmt::format("season '{}' ({})", s.name, range);
}

constexpr std::array<const char*, 7> weekday_names = {"Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"};

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

std::string describe(const Window& w) { return fmt::format("{}-{} {}", hhmm(w.start_minute % 1440), hhmm_end(w.end_minute), to_string(w.type)); }

std::optional<std::pair<unsigned, unsigned>> parse_month_day(std::string_view s) {
  if (s.size() != 5 || s[2] != '-') return std::nullopt;
  for (std::size_t i : {0u, 1u, 3u, 4u}) {
    if (s[i] < '0' || s[i] > '9') return std::nullopt;
  }
  const unsigned m = static_cast<unsigned>((s[0] - '0') * 10 + (s[1] - '0'));
  const unsigned d = static_cast<unsigned>((s[3] - '0') * 10 + (s[4] - '0'));
  if (m < 1 || m > 12 || d < 1 || d > days_in_leap_month[m - 1]) return std::nullopt;
  return std::pair{m, d};
}

std::optional<std::int64_t> parse_local_date(std::string_view s) {
  if (s.size() != 10 || s[4] != '-') return std::nullopt;
  int y = 0;
  for (std::size_t i = 0; i < 4; ++i) {
    if (s[i] < '0' || s[i] > '9') return std::nullopt;
    y = y * 10 + (s[i] - '0');
  }
  const auto md = parse_month_day(s.substr(5));
  if (!md) return std::nullopt;
  const date::year_month_day ymd{date::year{y}, date::month{md->first}, date::day{md->second}};
  if (!ymd.ok()) return std::nullopt;  // 02-29 of a common year
  return date::sys_days(ymd).time_since_epoch().count();
}

std::vector<TariffProblem> check_windows(const std::vector<Window>& ws) {
  std::vector<TariffProblem> out;
  if (ws.empty()) return {TariffProblem{0, std::nullopt, "a plan needs at least one period"}};
  std::array<int, 1440> owner;
  owner.fill(-1);
  for (std::size_t i = 0; i < ws.size(); ++i) {
    const int start = ws[i].start_minute % 1440, len = length_of(ws[i]);
    // The first stretch this period shares with each earlier one: enough to find and fix it.
    std::map<std::size_t, std::pair<int, int>> clash;
    for (int k = 0; k < len; ++k) {
      int& o = owner[static_cast<std::size_t>((start + k) % 1440)];
      if (o < 0) {
        o = static_cast<int>(i);
        continue;
      }
      auto [it, fresh] = clash.try_emplace(static_cast<std::size_t>(o), k, k + 1);
      if (!fresh && it->second.second == k) it->second.second = k + 1;
    }
    for (const auto& [j, run] : clash) {
      out.push_back(TariffProblem{i, j,
                                  fmt::format("period {} overlaps period {} from {} to {}; each time of day belongs to exactly one "
                                              "period: start this one where the other ends, or end it where the other starts",
                                              describe(ws[i]), describe(ws[j]), hhmm((start + run.first) % 1440), hhmm_end(start + run.second))});
    }
  }
  // Gaps, walking the day round from a covered minute so a gap across midnight is one gap.
  int first = 0;
  while (owner[static_cast<std::size_t>(first)] < 0) ++first;
  for (int k = 1; k < 1440;) {
    const int m = (first + k) % 1440;
    if (owner[static_cast<std::size_t>(m)] >= 0) {
      ++k;
      continue;
    }
    const int before = owner[static_cast<std::size_t>((m + 1439) % 1440)];
    int len = 0;
    while (owner[static_cast<std::size_t>((m + len) % 1440)] < 0) ++len;
    const int after = owner[static_cast<std::size_t>((m + len) % 1440)];
    const auto b = static_cast<std::size_t>(before), a = static_cast<std::size_t>(after);
    if (before == after) {
      out.push_back(TariffProblem{b, std::nullopt,
                                  fmt::format("no period covers {} to {}: period {} is the only one; a plan covers the 24 hours, so add "
                                              "a period for them or extend this one",
                                              hhmm(m), hhmm_end(m + len), describe(ws[b]))});
    } else {
      out.push_back(TariffProblem{b, a,
                                  fmt::format("no period covers {} to {}, between period {} and period {}; end this one where the next "
                                              "starts, or add a period for them",
                                              hhmm(m), hhmm_end(m + len), describe(ws[b]), describe(ws[a]))});
    }
    k += len;
  }
  return out;
}

std::vector<TariffProblem> check_seasons(const std::vector<Season>& seasons, bool has_fallback) {
  std::vector<TariffProblem> out;
  for (std::size_t i = 0; i < seasons.size(); ++i) {
    const auto& s = seasons[i];
    if (!parse_month_day(fmt::format("{:02}-{:02}", s.from_month, s.from_day)) || !parse_month_day(fmt::format("{:02}-{:02}", s.to_month, s.to_day))) {
      out.push_back(TariffProblem{i, std::nullopt, fmt::format("{}: not a day of the year; write MM-DD, e.g. 07-01", describe_season(s))});
    }
  }
  if (seasons.empty() || !out.empty()) return out;
  std::array<int, 366> owner;
  owner.fill(-1);
  for (std::size_t i = 0; i < seasons.size(); ++i) {
    std::map<std::size_t, std::pair<int, int>> clash;  // other -> first shared run of days
    const int from = day_of_leap_year(seasons[i].from_month, seasons[i].from_day);
    for (int k = 0; k < 366; ++k) {
      const int d = (from + k) % 366;
      if (!season_holds(seasons[i], d)) break;
      int& o = owner[static_cast<std::size_t>(d)];
      if (o < 0) {
        o = static_cast<int>(i);
        continue;
      }
      auto [it, fresh] = clash.try_emplace(static_cast<std::size_t>(o), d, d);
      if (!fresh && (it->second.second + 1) % 366 == d) it->second.second = d;
    }
    for (const auto& [j, run] : clash) {
      out.push_back(TariffProblem{i, j,
                                  fmt::format("{} overlaps {} from {} to {}; each day of the year belongs to at most one season: start "
                                              "this one the day after the other ends",
                                              describe_season(seasons[i]), describe_season(seasons[j]), month_day_of(run.first), month_day_of(run.second))});
    }
  }
  if (has_fallback) return out;
  int first = 0;
  while (first < 366 && owner[static_cast<std::size_t>(first)] < 0) ++first;
  for (int k = 1; first < 366 && k < 366;) {
    const int d = (first + k) % 366;
    if (owner[static_cast<std::size_t>(d)] >= 0) {
      ++k;
      continue;
    }
    const auto before = static_cast<std::size_t>(owner[static_cast<std::size_t>((d + 365) % 366)]);
    int len = 0;
    while (owner[static_cast<std::size_t>((d + len) % 366)] < 0) ++len;
    out.push_back(TariffProblem{before, std::nullopt,
                                fmt::format("no season holds {} to {}{} (after {}) and 'week' gives no plan to fall back on; extend a "
                                            "season over them, add one, or give every weekday a plan in 'week'",
                                            month_day_of(d), month_day_of((d + len - 1) % 366), d == 59 && len == 1 ? " (in leap years)" : "",
                                            describe_season(seasons[before]))});
    k += len;
  }
  return out;
}

std::optional<PeriodType> period_type_from(std::string_view s) {
  if (s == "sharp") return PeriodType::sharp;
  if (s == "peak") return PeriodType::peak;
  if (s == "flat") return PeriodType::flat;
  if (s == "valley") return PeriodType::valley;
  return std::nullopt;
}


Tariff::Tariff(std::string time_zone, int decimals, Rounding rounding, std::map<std::string, Plan> plans,
               std::array<std::string, 7> weekday_plans, std::map<std::string, std::string> dates, std::vector<Season> seasons)
    : zone_name_(std::move(time_zone)),
      decimals_(decimals),
      rounding_(rounding),
      plans_(std::move(plans)),
      weekday_plans_(std::move(weekday_plans)),
      seasons_(std::move(seasons)) {
  try {
    zone_ = date::locate_zone(zone_name_);
  } catch (const std::exception&) {
    throw std::invalid_argument(fmt::format("unknown time zone '{}'", zone_name_));
  }
  for (auto& [name, plan] : plans_) {
    for (const auto& w : plan.windows) {
      if (w.start_minute < 0 || w.start_minute > 1440 || w.end_minute < 0 || w.end_minute > 1440) {
        throw std::invalid_argument(fmt::format("plan '{}': a period outside 00:00..24:00", name));
      }
    }
    if (const auto problems = check_windows(plan.windows); !problems.empty()) {
      throw std::invalid_argument(fmt::format("plan '{}': {}", name, problems.front().message));
    }
    // Stored split at midnight and sorted, so the period holding a minute is a search; a period
    // that crosses midnight becomes its evening and its morning part.
    std::vector<Window> day;
    for (const auto& w : plan.windows) {
      if (!plan.prices[static_cast<std::size_t>(w.type)]) {
        throw std::invalid_argument(fmt::format("plan '{}': no price for the {} period", name, to_string(w.type)));
      }
      const int start = w.start_minute % 1440;
      if (start + length_of(w) <= 1440) {
        day.push_back(Window{start, start + length_of(w), w.type});
      } else {
        day.push_back(Window{start, 1440, w.type});
        day.push_back(Window{0, start + length_of(w) - 1440, w.type});
      }
    }
    std::sort(day.begin(), day.end(), [](const Window& a, const Window& b) { return a.start_minute < b.start_minute; });
    plan.windows = std::move(day);
  }
  auto known = [&](const std::string& p, const std::string& where) {
    if (!plans_.count(p)) throw std::invalid_argument(fmt::format("{}: unknown plan '{}'", where, p));
  };
  bool has_fallback = true;
  for (std::size_t d = 0; d < 7; ++d) {
    if (weekday_plans_[d].empty()) {
      has_fallback = false;
    } else {
      known(weekday_plans_[d], weekday_names[d]);
    }
  }
  if (!has_fallback && seasons_.empty()) throw std::invalid_argument("a weekday without a plan, and no seasons");
  for (const auto& s : seasons_) {
    for (const auto& p : s.week) known(p, describe_season(s));
  }
  if (const auto problems = check_seasons(seasons_, has_fallback); !problems.empty()) throw std::invalid_argument(problems.front().message);
  for (const auto& [d, p] : dates) {
    known(p, fmt::format("holiday {}", d));
    if (const auto day = parse_local_date(d)) {
      dates_[*day] = p;
    } else if (const auto md = parse_month_day(d)) {
      yearly_[*md] = p;
    } else {
      throw std::invalid_argument(fmt::format("'{}' is not a date like 2026-10-01 or, for every year, 10-01", d));
    }
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
  const date::sys_days sd{date::days{day}};
  const date::year_month_day ymd{sd};
  const std::pair<unsigned, unsigned> md{static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day())};
  if (auto it = yearly_.find(md); it != yearly_.end()) return plans_.at(it->second);
  const unsigned monday_first = (date::weekday{sd}.c_encoding() + 6) % 7;  // c_encoding: Sunday = 0
  const int leap_day = day_of_leap_year(md.first, md.second);
  for (const auto& s : seasons_) {
    if (season_holds(s, leap_day)) return plans_.at(s.week[monday_first]);
  }
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

nlohmann::json Tariff::document() const {
  using nlohmann::json;
  json plans = json::object();
  for (const auto& [name, plan] : plans_) {
    json prices = json::object();
    for (std::size_t i = 0; i < plan.prices.size(); ++i) {
      if (plan.prices[i]) prices[std::string(to_string(static_cast<PeriodType>(i)))] = {plan.prices[i]->electricity, plan.prices[i]->service};
    }
    json windows = json::array();
    for (const auto& w : plan.windows) windows.push_back({w.start_minute, w.end_minute, std::string(to_string(w.type))});
    plans[name] = {{"prices", prices}, {"windows", windows}};
  }
  json dates = json::object();
  for (const auto& [day, plan] : dates_) {
    const std::chrono::year_month_day ymd{std::chrono::sys_days{std::chrono::days{day}}};
    dates[fmt::format("{:04}-{:02}-{:02}", static_cast<int>(ymd.year()), static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()))] = plan;
  }
  for (const auto& [md, plan] : yearly_) dates[fmt::format("{:02}-{:02}", md.first, md.second)] = plan;
  json seasons = json::array();
  for (const auto& season : seasons_) {
    seasons.push_back({{"name", season.name},
                       {"from", fmt::format("{:02}-{:02}", season.from_month, season.from_day)},
                       {"to", fmt::format("{:02}-{:02}", season.to_month, season.to_day)},
                       {"week", season.week}});
  }
  return {{"time_zone", zone_name_}, {"decimals", decimals_},   {"rounding", std::string(to_string(rounding_))},
          {"plans", plans},          {"week", weekday_plans_}, {"dates", dates},
          {"seasons", seasons}};
}

Tariff Tariff::from_document(const nlohmann::json& doc) {
  try {
    const auto rounding = rounding_from(doc.at("rounding").get<std::string>());
    if (!rounding) throw std::invalid_argument("unknown rounding");
    std::map<std::string, Plan> plans;
    for (const auto& [name, p] : doc.at("plans").items()) {
      Plan plan{.name = name, .prices = {}, .windows = {}};
      for (const auto& [type, price] : p.at("prices").items()) {
        const auto t = period_type_from(type);
        if (!t) throw std::invalid_argument(fmt::format("unknown period type '{}'", type));
        plan.prices[static_cast<std::size_t>(*t)] = Price{price.at(0).get<std::int64_t>(), price.at(1).get<std::int64_t>()};
      }
      for (const auto& w : p.at("windows")) {
        const auto t = period_type_from(w.at(2).get<std::string>());
        if (!t) throw std::invalid_argument("unknown period type");
        plan.windows.push_back(Window{w.at(0).get<int>(), w.at(1).get<int>(), *t});
      }
      plans.emplace(name, std::move(plan));
    }
    std::vector<Season> seasons;
    for (const auto& s : doc.at("seasons")) {
      const auto from = parse_month_day(s.at("from").get<std::string>()), to = parse_month_day(s.at("to").get<std::string>());
      if (!from || !to) throw std::invalid_argument("a season's dates are not MM-DD");
      seasons.push_back(Season{.name = s.at("name").get<std::string>(),
                               .from_month = from->first,
                               .from_day = from->second,
                               .to_month = to->first,
                               .to_day = to->second,
                               .week = s.at("week").get<std::array<std::string, 7>>()});
    }
    return Tariff(doc.at("time_zone").get<std::string>(), doc.at("decimals").get<int>(), *rounding, std::move(plans),
                  doc.at("week").get<std::array<std::string, 7>>(), doc.at("dates").get<std::map<std::string, std::string>>(), std::move(seasons));
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(fmt::format("not a tariff document: {}", e.what()));
  }
}

}  // namespace pilecore::core
