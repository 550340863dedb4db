// Time-of-use tariffs: which period type (sharp, peak, flat, valley) applies at an instant, at
// what electricity and service price, by local time of day in the site's time zone. Which plan a
// local day follows: its holiday (a dated one before a yearly one), else the season its date
// falls in, else its weekday's plan.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "money.hpp"
#include "pilecore/clock.hpp"

namespace date {
class time_zone;
}

namespace pilecore::core {

enum class PeriodType : std::uint8_t { sharp = 0, peak = 1, flat = 2, valley = 3 };
std::string_view to_string(PeriodType p);
/// 尖 峰 平 谷
std::string_view chinese_name(PeriodType p);
std::optional<PeriodType> period_type_from(std::string_view s);

struct Price {
  std::int64_t electricity = 0;  // 10^-decimals fen per kWh
  std::int64_t service = 0;
  bool operator==(const Price&) const = default;
};

/// A period of a day plan, [start, end) in local minutes after midnight. An end at or before the
/// start crosses midnight (22:00-06:00 is 22:00-24:00 and 00:00-06:00 of the same plan's day),
/// which is how Chinese valley periods are written; an end equal to the start is the whole day.
struct Window {
  int start_minute = 0;  // 0..1439
  int end_minute = 0;    // 0..1440
  PeriodType type = PeriodType::flat;
};

/// "22:00-06:00 valley", as the integrator wrote it.
std::string describe(const Window& w);

struct Plan {
  std::string name;
  std::array<std::optional<Price>, 4> prices;  // by PeriodType
  std::vector<Window> windows;                 // covering the 24 hours exactly once, in any order
};

/// A stretch of the year that follows its own plan per weekday: summer and winter peak hours
/// differ by province. Dates are month and day; `to` before `from` wraps the year end
/// (12-01..02-28), and 02-29 belongs to the season whose range holds it.
struct Season {
  std::string name;
  unsigned from_month = 1, from_day = 1;
  unsigned to_month = 12, to_day = 31;  // inclusive
  std::array<std::string, 7> week;      // plan per weekday, Monday first
};

/// One mistake in a plan's periods or the seasons: which entry (index as given), the other entry
/// it clashes with, if any, and a sentence that says what is wrong and how to fix it.
struct TariffProblem {
  std::size_t index = 0;
  std::optional<std::size_t> other;
  std::string message;
};

/// Gaps and overlaps in a plan's periods, each located at a period; empty when they cover the
/// 24 hours exactly once.
std::vector<TariffProblem> check_windows(const std::vector<Window>& windows);
/// Overlapping seasons, and, when there is no weekday plan to fall back on, days in no season.
std::vector<TariffProblem> check_seasons(const std::vector<Season>& seasons, bool has_fallback);
/// "MM-DD" -> {month, day} when it is a day of some year (02-29 included).
std::optional<std::pair<unsigned, unsigned>> parse_month_day(std::string_view s);
/// "YYYY-MM-DD" -> days since 1970-01-01 when it is a real date.
std::optional<std::int64_t> parse_local_date(std::string_view s);

/// One stretch of time at one price.
struct Slot {
  TimePoint start;
  TimePoint end;  // exclusive
  PeriodType type = PeriodType::flat;
  std::string plan;
  Price price;
};

class Tariff {
 public:
  /// Throws std::invalid_argument with a message when the time zone is unknown, a plan does not
  /// cover the day exactly once, a period has no price, a plan named is unknown, a date is not
  /// one, or seasons overlap or (with an empty weekday plan) leave days without a plan.
  /// `dates`: holidays, "YYYY-MM-DD" (that day) or "MM-DD" (every year) -> plan.
  Tariff(std::string time_zone, int decimals, Rounding rounding, std::map<std::string, Plan> plans,
         std::array<std::string, 7> weekday_plans /* Monday first; "" = only seasons */, std::map<std::string, std::string> dates,
         std::vector<Season> seasons = {});

  /// The slot containing `t`.
  [[nodiscard]] Slot slot_at(TimePoint t) const;
  [[nodiscard]] int decimals() const { return decimals_; }
  [[nodiscard]] Rounding rounding() const { return rounding_; }
  [[nodiscard]] const std::string& time_zone_name() const { return zone_name_; }
  /// The whole tariff as JSON, from which from_document() makes one that prices every instant
  /// the same. Each transaction keeps the document of the tariff it started with, so a reload
  /// or a restart with a new price never reprices a session in progress.
  [[nodiscard]] nlohmann::json document() const;
  /// Throws std::invalid_argument when `doc` is not a tariff document (as the constructor does).
  static Tariff from_document(const nlohmann::json& doc);
  /// A single-plan tariff charging `price` around the clock (tests, sites without time of use).
  static Tariff flat_rate(std::string time_zone, int decimals, Price price, Rounding rounding = Rounding::half_up);

 private:
  [[nodiscard]] const Plan& plan_for_local_day(std::int64_t days_since_epoch) const;

  std::string zone_name_;
  const date::time_zone* zone_ = nullptr;
  int decimals_ = 0;
  Rounding rounding_ = Rounding::half_up;
  std::map<std::string, Plan> plans_;
  std::array<std::string, 7> weekday_plans_;
  std::map<std::int64_t, std::string> dates_;  // local day number -> plan
  std::map<std::pair<unsigned, unsigned>, std::string> yearly_;  // (month, day) -> plan
  std::vector<Season> seasons_;
};

}  // namespace pilecore::core
