// Time-of-use tariffs: which period type (sharp, peak, flat, valley) applies at an instant, at
// what electricity and service price, by local time of day in the site's time zone, with a plan
// per weekday and exceptions per date.
#pragma once

#include <array>
#include <cstdint>
#include <map>
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

struct Window {
  int start_minute = 0;  // local minutes after midnight, [start, end)
  int end_minute = 0;    // up to 1440
  PeriodType type = PeriodType::flat;
};

struct Plan {
  std::string name;
  std::array<std::optional<Price>, 4> prices;  // by PeriodType
  std::vector<Window> windows;                 // sorted, covering 0..1440 without gaps
};

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
  /// cover the day, or a period has no price.
  Tariff(std::string time_zone, int decimals, Rounding rounding, std::map<std::string, Plan> plans,
         std::array<std::string, 7> weekday_plans /* Monday first */, std::map<std::string, std::string> dates /* YYYY-MM-DD -> plan */);

  /// The slot containing `t`.
  [[nodiscard]] Slot slot_at(TimePoint t) const;
  [[nodiscard]] int decimals() const { return decimals_; }
  [[nodiscard]] Rounding rounding() const { return rounding_; }
  [[nodiscard]] const std::string& time_zone_name() const { return zone_name_; }
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
};

}  // namespace pilecore::core
