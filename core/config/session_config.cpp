#include "session_config.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <map>
#include <set>
#include <tuple>

#include "site_config.hpp"

namespace pilecore::core {

namespace {

constexpr std::array<const char*, 7> day_keys = {"mon", "tue", "wed", "thu", "fri", "sat", "sun"};
constexpr std::array<const char*, 4> period_keys = {"sharp", "peak", "flat", "valley"};

std::optional<int> minutes_of(const std::string& hhmm) {
  if (hhmm.size() != 5 || hhmm[2] != ':') return std::nullopt;
  for (int i : {0, 1, 3, 4}) {
    if (hhmm[static_cast<std::size_t>(i)] < '0' || hhmm[static_cast<std::size_t>(i)] > '9') return std::nullopt;
  }
  const int h = (hhmm[0] - '0') * 10 + (hhmm[1] - '0');
  const int m = (hhmm[3] - '0') * 10 + (hhmm[4] - '0');
  if (m > 59 || h > 24 || (h == 24 && m != 0)) return std::nullopt;
  return h * 60 + m;
}

std::int64_t int_or(const YAML::Node& node, const Field& f, std::int64_t fallback) {
  Value v;
  if (node.IsDefined() && !node.IsNull() && !parse_value(f, node, v)) {
    if (const auto* i = std::get_if<std::int64_t>(&v)) return *i;
  }
  return fallback;
}

Field with_ref(Field f, std::string kind) {
  f.ref_kind = std::move(kind);
  return f;
}

const Field& child(const Field& f, std::string_view key) {
  for (const auto& c : f.fields) {
    if (c.key == key) return c;
  }
  throw std::logic_error("no field " + std::string(key));
}

}  // namespace

Field tariffs_field() {
  Field price = with_fields(field("", FieldType::object, "Prices of one period, in fen per kWh with `decimals` decimal places"),
                            {field("electricity", FieldType::decimal, "Electricity price, fen per kWh", true),
                             field("service", FieldType::decimal, "Service fee, fen per kWh", true)});
  std::vector<Field> prices;
  for (const char* k : period_keys) {
    Field p = price;
    p.key = k;
    p.description = fmt::format("Prices in the {} period", k);
    prices.push_back(p);
  }
  Field time_of_day = field("", FieldType::string, "");
  time_of_day.pattern = "([01][0-9]|2[0-3]):[0-5][0-9]|24:00";
  time_of_day.pattern_hint = "write local time of day as HH:MM, from 00:00 to 24:00";
  Field from = time_of_day, to = time_of_day;
  from.key = "from";
  from.description = "Local time the period starts (inclusive)";
  from.required = true;
  to.key = "to";
  to.description = "Local time the period ends (exclusive); 24:00 is midnight at the end of the day, and a time at or before "
                   "`from` crosses midnight (22:00 to 06:00 is one valley period)";
  to.required = true;
  Field type = field("type", FieldType::enumeration, "Period type: sharp (尖), peak (峰), flat (平) or valley (谷)", true);
  type.allowed = {"sharp", "peak", "flat", "valley"};
  Field periods = with_fields(field("periods", FieldType::list, "The day's periods, covering the 24 hours exactly once (no gaps, no overlaps)", true),
                              {from, to, type});
  periods.min_items = 1;
  Field plans = with_fields(field("plans", FieldType::map, "Day plans by name: prices and periods", true),
                            {with_fields(field("prices", FieldType::object, "Prices per period type (only the types the periods use)", true), prices), periods});
  plans.key_pattern = "[a-z0-9][a-z0-9_-]{0,31}";
  plans.pattern_hint = "use 1 to 32 lower case letters, digits, '_' or '-'";
  plans.min_items = 1;
  std::vector<Field> days;
  for (const char* d : day_keys) days.push_back(field(d, FieldType::string, fmt::format("Plan used on {}", d)));
  Field date = field("date", FieldType::string, "Local date: YYYY-MM-DD for that day, MM-DD for that day every year", true);
  date.pattern = "([0-9]{4}-)?[0-9]{2}-[0-9]{2}";
  date.pattern_hint = "write the date as YYYY-MM-DD, or MM-DD for every year";
  Field holidays = with_fields(field("holidays", FieldType::list,
                                     "Days that use another plan than their season's or weekday's; a dated one (YYYY-MM-DD) wins over a "
                                     "yearly one (MM-DD)"),
                               {date, field("plan", FieldType::string, "Plan used on that day", true),
                                field("name", FieldType::string, "What the day is, for people (e.g. 国庆节)")});
  Field dates = holidays;
  dates.key = "dates";
  dates.description = "The older name of `holidays`, still read; both may be given";
  Field month_day = field("", FieldType::string, "");
  month_day.pattern = "[0-9]{2}-[0-9]{2}";
  month_day.pattern_hint = "write the day of the year as MM-DD, e.g. 07-01";
  Field season_from = month_day, season_to = month_day;
  season_from.key = "from";
  season_from.description = "First day of the season (MM-DD)";
  season_from.required = true;
  season_to.key = "to";
  season_to.description = "Last day of the season (MM-DD, inclusive); before `from` wraps the year end (12-01 to 02-29)";
  season_to.required = true;
  std::vector<Field> season_days;
  for (const char* d : day_keys) season_days.push_back(field(d, FieldType::string, fmt::format("Plan used on {} in this season", d)));
  Field seasons = with_fields(field("seasons", FieldType::list,
                                    "Stretches of the year with their own plan (summer and winter peak hours differ by province); "
                                    "they may not overlap, and days in no season follow `week`"),
                              {field("name", FieldType::string, "The season's name, for people and messages"), season_from, season_to,
                               field("plan", FieldType::string, "Plan used every day of the season (or give `week`)"),
                               with_fields(field("week", FieldType::object, "Plan per weekday in this season (instead of `plan`)"), season_days)});
  Field rounding = field("rounding", FieldType::enumeration, "How fractions of a fen are rounded, per line and component");
  rounding.allowed = {"half_up", "truncate"};
  rounding.default_value = "half_up";
  return with_fields(field("tariffs", FieldType::object, "Time-of-use tariffs; without them sessions cannot start"),
                     {with_default(with_range(field("decimals", FieldType::integer, "Decimal places of the prices (in fen per kWh)"), 0, 5, ""), "2"), rounding, plans,
                      with_fields(field("week", FieldType::object, "Plan per weekday outside the seasons (default: the only plan)"), days), seasons,
                      holidays, dates});
}

Field payment_field() {
  return with_fields(field("payment", FieldType::object, "Payment"),
                     {field("default_method", FieldType::string, "Payment instance used when none is named (and by autostart)"),
                      with_default(with_range(field("preauth_fen", FieldType::integer, "Amount held for a session in full mode (charging.default_mode); every session stops when its bill reaches its hold"), 1, 100'000'000, "fen"), "20000"),
                      with_default(with_range(field("max_hold_fen", FieldType::integer,
                                                    "Most any session holds: an amount mode above it is refused, and an energy or time "
                                                    "mode whose hold would exceed it is refused too"), 1, 100'000'000, "fen"), "100000"),
                      with_default(with_range(field("increment_step_fen", FieldType::integer,
                                                    "Top-up asked (an incremental authorisation) of a method that supports it, when the bill "
                                                    "comes within half a step of the hold; 0 (the default): no top-ups, the session stops at its hold"), 0, 100'000'000, "fen"), "0"),
                      [] {
                        Field f = field("autostart", FieldType::boolean, "Start a session with default_method when a vehicle plugs in (free vend, fleet depots)");
                        f.default_value = "false";
                        return f;
                      }(),
                      with_default(with_range(field("risk_timeout_ms", FieldType::integer,
                                                    "How long the risk rules may take; a rule that has not answered by then counts as step-up"),
                                              10, 600000, "ms"),
                                   "2000"),
                      with_default(with_range(field("authorize_timeout_ms", FieldType::integer,
                                                    "Deadline the core enforces on each payment call: an authorisation not answered by then is "
                                                    "declined and released, a capture, void or refund is asked again later (up to an hour: under a "
                                                    "fast simulated clock, as in the demo, a reader's real latency is a long simulated time)"),
                                              100, 3600000, "ms"),
                                   "30000"),
                      with_fields(field("channels", FieldType::list,
                                        "The channels (acquirers) each payment method settles through, with their fee rates: the payment "
                                        "router chooses among a method's channels for each payment (docs/payments.md). A method with none "
                                        "listed uses the channels it declares itself when there are two or more"),
                                  {with_ref(field("method", FieldType::instance_ref, "The payment instance", true), "payment"),
                                   [] {
                                     Field f = field("name", FieldType::string, "The channel's name, as the payment plugin knows it", true);
                                     f.pattern = "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}";
                                     f.pattern_hint = "letters, digits, '_', '.', '-'; up to 64";
                                     return f;
                                   }(),
                                   with_range(field("fee_pct", FieldType::decimal, "Fee rate in percent of the amount, e.g. 0.38", true), 0, 100, "%")}),
                      with_fields(field("routing", FieldType::object, "The payment router's rule (the seed's: fee < 0.6% and success > 99%, then the user's preferred channel, then the lowest fee)"),
                                  {with_default(with_range(field("max_fee_pct", FieldType::decimal, "A channel is eligible with a fee rate strictly below this"), 0, 100, "%"), "0.6"),
                                   with_default(with_range(field("min_success_pct", FieldType::decimal, "...and a success rate strictly above this, measured over the window"), 0, 100, "%"), "99"),
                                   with_default(field("order", FieldType::string_list,
                                                      "How eligible channels are ordered, first key first: preferred (the user's channel), lowest_fee, highest_success"),
                                                "[preferred, lowest_fee]"),
                                   with_default(with_range(field("window_s", FieldType::integer, "The sliding window success rates are measured over"), 60, 7 * 86400, "s"), "3600"),
                                   with_default(with_range(field("min_attempts", FieldType::integer, "Fewer attempts in the window: the rate is not known and the channel is probed"), 1, 100000), "20"),
                                   with_default(with_range(field("probe_every", FieldType::integer, "One payment in this many goes first to the least-tried channel whose rate is not known (0: never)"), 0, 1000000), "50"),
                                   with_default(with_range(field("channel_timeout_ms", FieldType::integer,
                                                                 "A channel that has not answered by then fails over to the next, within authorize_timeout_ms"),
                                                           100, 600000, "ms"),
                                                "10000")}),
                      with_fields(field("step_up", FieldType::object,
                                        "The second verification a risk rule's step_up verdict asks before a session starts (docs/risk.md)"),
                                  {with_default(field("factors", FieldType::string_list,
                                                      "Which second factors the driver is offered: pin (entered at the pile and checked by a "
                                                      "payment method that verifies PINs), app_confirmation (confirmed in the operator's app: "
                                                      "a back-end command or a control-socket session_answer), other_method (pay with another "
                                                      "payment instance). Empty: a step_up verdict refuses the session"),
                                                "[pin, app_confirmation, other_method]"),
                                   with_default(with_range(field("timeout_s", FieldType::integer,
                                                                 "A second verification not completed by then ends the session unstarted, "
                                                                 "with the reason shown and spoken at the connector"),
                                                           10, 3600, "s"),
                                                "120")}),
                      [] {
                        Field f = with_fields(field("tokens", FieldType::map,
                                                    "Which payment method takes each token type a reader or camera presents (card, face, wallet, ...): "
                                                    "a presented token starts authentication on its connector"),
                                              {field("method", FieldType::string, "The payment instance that takes this token type", true)});
                        f.key_pattern = "[a-z][a-z0-9_-]*";
                        return f;
                      }()});
}

Field charging_field() {
  return with_fields(field("charging", FieldType::object, "Session durability and power control"),
                     {with_default(with_range(field("checkpoint_interval_s", FieldType::integer, "Commit the meter reading at least this often during a session"), 1, 3600, "s"), "60"),
                      with_default(with_range(field("checkpoint_wh", FieldType::integer, "...or whenever this much energy has flowed since the last checkpoint"), 1, 100000, "Wh"), "100"),
                      with_default(with_range(field("meter_timeout_ms", FieldType::integer, "How long to wait for a fresh meter reading"), 100, 600000, "ms"), "10000"),
                      with_default(with_range(field("setpoint_interval_s", FieldType::integer, "How often the strategy recomputes the power setpoint"), 1, 3600, "s"), "10"),
                      [] {
                        Field f = field("default_mode", FieldType::string,
                                        "Charging mode of a session started without one: full, amount:<fen>, energy:<Wh> or time:<minutes> "
                                        "(time:<n>s for seconds)");
                        f.pattern = "full|amount:[0-9]{1,12}|energy:[0-9]{1,12}|time:[0-9]{1,9}[ms]?";
                        f.pattern_hint = "full, amount:<fen>, energy:<Wh>, time:<minutes> or time:<seconds>s";
                        f.default_value = "full";
                        return f;
                      }(),
                      with_default(with_range(field("max_energy_wh", FieldType::integer, "Most energy a session in energy mode may ask for"), 1, 10'000'000, "Wh"), "200000"),
                      with_default(with_range(field("max_time_s", FieldType::integer, "Longest a session in time mode may ask for"), 60, 604800, "s"), "86400"),
                      [] {
                        Field f = field("on_planned_stop", FieldType::enumeration,
                                        "What a planned stop (systemctl stop or restart, a package upgrade) does to the sessions in progress: "
                                        "suspend them (power paused, the transaction kept open, resumed by the next start within "
                                        "resume_within_s) or stop them (billed and captured as Shutdown)");
                        f.allowed = {"suspend", "stop"};
                        f.default_value = "suspend";
                        return f;
                      }(),
                      with_default(with_range(field("resume_within_s", FieldType::integer,
                                                    "A session suspended by a planned stop is resumed by a start within this time; later, it "
                                                    "is closed, billed to its reading at the suspension"),
                                              1, 86400, "s"),
                                   "300"),
                      with_default(with_range(field("resume_plug_wait_s", FieldType::integer,
                                                    "A resumed session whose vehicle the power stage does not report plugged in within this "
                                                    "time stops (EVDisconnected), billed to its reading at the suspension"),
                                              1, 3600, "s"),
                                   "120"),
                      with_range(field("site_max_power_w", FieldType::integer, "Most power the whole pile may draw (all connectors)"), 1000, 10'000'000, "W"),
                      with_default(with_range(field("fallback_power_w", FieldType::integer,
                                                    "Setpoint when the strategy cannot give one and has given none before in the session (then the "
                                                    "previous one is kept); low, so a strategy that derates for safety fails safe"),
                                              0, 10'000'000, "W"),
                                   "3500"),
                      with_default(with_range(field("meter_max_wh", FieldType::integer,
                                                    "Highest plausible energy_import reading of a billing meter; above it a reading is refused "
                                                    "(the default is above any connector's lifetime energy and below 2^53)"),
                                              1000, 9'007'199'254'740'992.0, "Wh"),
                                   "1000000000000"),
                      with_default(with_range(field("meter_tolerance_wh", FieldType::integer,
                                                    "Energy a reading may exceed what the connector's max_power_w allows since the last plausible "
                                                    "one (the register's step, float32 rounding)"),
                                              0, 1'000'000, "Wh"),
                                   "20"),
                      with_default(with_range(field("meter_tolerance_pct", FieldType::integer,
                                                    "...plus this share of that allowance (meter accuracy, poll timing)"),
                                              0, 1000, "%"),
                                   "10"),
                      with_default(with_range(field("meter_fault_after", FieldType::integer,
                                                    "Consecutive implausible meter readings after which the session stops as Fault, billed to "
                                                    "the last plausible reading, and the connector goes Faulted"),
                                              1, 1000, ""),
                                   "3"),
                      with_default(with_range(field("meter_stall_power_w", FieldType::integer,
                                                    "Power reported by the power stage above which the billing meter must advance"),
                                              1, 10'000'000, "W"),
                                   "1000"),
                      with_default(with_range(field("meter_stall_ms", FieldType::integer,
                                                    "How long the meter may hold its reading while the power stage reports more than "
                                                    "meter_stall_power_w before the session stops as Fault; longer than the register's step "
                                                    "takes at that power"),
                                              500, 3'600'000, "ms"),
                                   "120000"),
                      with_ref(field("ambient_sensor", FieldType::instance_ref,
                            "Instance whose 'temperature' channel is the strategies' ambient_temperature (default: any instance not bound to a "
                            "connector that publishes 'temperature'); a reading older than 10 minutes counts as missing"),
                               "sensor")});
}

namespace {
/// `scaled` / `one` as a decimal without trailing zeros: 7000 / 100 -> "70", 1234 / 100 -> "12.34".
std::string fen_text(std::int64_t scaled, std::int64_t one) {
  std::string text = std::to_string(scaled / one);
  std::string fraction = std::to_string(one + scaled % one).substr(1);
  while (!fraction.empty() && fraction.back() == '0') fraction.pop_back();
  return fraction.empty() ? text : text + "." + fraction;
}
}  // namespace

std::optional<Tariff> parse_tariffs(const YAML::Node& tariffs, const std::string& time_zone, Diagnostics& diags) {
  const Field tf = tariffs_field();
  const int decimals = static_cast<int>(int_or(member(tariffs, "decimals"), child(tf, "decimals"), 2));
  const YAML::Node rounding_node = member(tariffs, "rounding");
  const Rounding rounding = rounding_node.IsScalar() ? rounding_from(rounding_node.Scalar()).value_or(Rounding::half_up) : Rounding::half_up;
  const std::size_t errors_before = diags.error_count();
  std::map<std::string, Plan> plans;
  for (const auto& m : members_of(member(tariffs, "plans"))) {
    if (!m.value.IsMap()) continue;
    Plan plan{m.key, {}, {}};
    std::set<PeriodType> refused;  // prices written but refused, already reported: no "needs prices" too
    for (const auto& pm : members_of(member(m.value, "prices"))) {
      const auto type = period_type_from(pm.key);
      if (!type) continue;
      Price price;
      bool ok = true;
      for (const char* part : {"electricity", "service"}) {
        const YAML::Node n = member(pm.value, part);
        if (!n.IsScalar()) {
          ok = false;
          continue;
        }
        const auto units = parse_scaled(n.Scalar(), decimals);
        if (!units) {
          diags.error(position_of(n), fmt::format("'tariffs.plans.{}.prices.{}.{}' is {}, which has more than the {} decimal place(s) declared in "
                                                  "'tariffs.decimals'; prices are never rounded silently",
                                                  m.key, pm.key, part, n.Scalar(), decimals));
          ok = false;
          continue;
        }
        std::int64_t one_fen = 1;
        for (int i = 0; i < decimals; ++i) one_fen *= 10;
        if (*units > 0 && *units < one_fen) {
          // No tariff charges less than a fen per kWh: this is yuan written where fen belong,
          // and would bill a hundredth of the price without a word.
          diags.error(position_of(n), fmt::format("'tariffs.plans.{}.prices.{}.{}' is {}, less than a fen per kWh: prices are in fen per kWh, "
                                                  "so {} yuan is written {}",
                                                  m.key, pm.key, part, n.Scalar(), n.Scalar(), fen_text(*units * 100, one_fen)));
          ok = false;
          continue;
        }
        (std::string_view(part) == "electricity" ? price.electricity : price.service) = *units;
      }
      if (ok) {
        plan.prices[static_cast<std::size_t>(*type)] = price;
      } else {
        refused.insert(*type);
      }
    }
    const YAML::Node periods = member(m.value, "periods");
    std::vector<YAML::Node> period_nodes;
    bool periods_ok = true;
    for (const auto& p : periods) {
      const auto from = member(p, "from").IsScalar() ? minutes_of(member(p, "from").Scalar()) : std::nullopt;
      const auto to = member(p, "to").IsScalar() ? minutes_of(member(p, "to").Scalar()) : std::nullopt;
      const YAML::Node type_node = member(p, "type");
      const std::optional<PeriodType> parsed = type_node.IsScalar() ? period_type_from(type_node.Scalar()) : std::nullopt;
      if (!from || !to || !parsed) {  // reported by the schema
        periods_ok = false;
        continue;
      }
      // Copied out of the optional: GCC 12 at -O2 cannot see that *parsed is initialised here.
      const PeriodType type = parsed.value_or(PeriodType::flat);
      if (!plan.prices[static_cast<std::size_t>(type)] && !refused.contains(type)) {
        diags.error(position_of(type_node), fmt::format("'tariffs.plans.{}': a {} period needs prices.{}", m.key, type_node.Scalar(), type_node.Scalar()));
      }
      plan.windows.push_back(Window{*from % 1440, *to, type});
      period_nodes.push_back(p);
    }
    // Each gap or overlap at the period's own line, naming the other period, so the fix is
    // found where it is made.
    if (periods_ok) {
      for (const auto& problem : check_windows(plan.windows)) {
        diags.error(position_of(period_nodes.at(problem.index)), fmt::format("'tariffs.plans.{}': {}", m.key, problem.message));
      }
    }
    plans.emplace(m.key, std::move(plan));
  }
  std::vector<std::string> names;
  for (const auto& [k, v] : plans) names.push_back(k);
  auto check_plan = [&](const YAML::Node& n, const std::string& path) {
    if (!plans.count(n.Scalar())) {
      diags.error(position_of(n), fmt::format("'{}' is '{}', which is not a plan; plans: {}", path, n.Scalar(), fmt::join(names, ", ")));
    }
  };
  const YAML::Node seasons_node = member(tariffs, "seasons");
  std::vector<Season> seasons;
  std::vector<YAML::Node> season_nodes;
  bool seasons_ok = true;
  std::size_t si = 0;
  for (const auto& sn : seasons_node) {
    const std::string where = fmt::format("tariffs.seasons[{}]", si++);
    const YAML::Node from = member(sn, "from"), to = member(sn, "to"), plan = member(sn, "plan"), week = member(sn, "week");
    Season season;
    if (const YAML::Node name = member(sn, "name"); name.IsScalar()) season.name = name.Scalar();
    const auto f = from.IsScalar() ? parse_month_day(from.Scalar()) : std::nullopt;
    const auto t = to.IsScalar() ? parse_month_day(to.Scalar()) : std::nullopt;
    for (const auto& [node, parsed, key] : {std::tuple{from, f, "from"}, std::tuple{to, t, "to"}}) {
      if (node.IsScalar() && !parsed) {
        diags.error(position_of(node), fmt::format("'{}.{}' is {}, which is not a day of the year; write MM-DD, e.g. 07-01", where, key, node.Scalar()));
      }
    }
    if (plan.IsDefined() == week.IsDefined()) {
      diags.error(position_of(sn), fmt::format("'{}' needs either 'plan' (every day) or 'week' (a plan per weekday), not {}", where,
                                               plan.IsDefined() ? "both" : "neither"));
      seasons_ok = false;
    } else if (plan.IsScalar()) {
      check_plan(plan, where + ".plan");
      season.week.fill(plan.Scalar());
    } else {
      for (std::size_t d = 0; d < 7; ++d) {
        const YAML::Node n = member(week, day_keys[d]);
        if (!n.IsScalar()) {
          diags.error(position_of(week), fmt::format("'{}.week' gives no plan for {}; give every day one, or use 'plan'", where, day_keys[d]));
          continue;
        }
        check_plan(n, fmt::format("{}.week.{}", where, day_keys[d]));
        season.week[d] = n.Scalar();
      }
    }
    if (!f || !t) {
      seasons_ok = false;
      continue;
    }
    std::tie(season.from_month, season.from_day) = *f;
    std::tie(season.to_month, season.to_day) = *t;
    seasons.push_back(std::move(season));
    season_nodes.push_back(sn);
  }
  std::array<std::string, 7> week;
  const YAML::Node week_node = member(tariffs, "week");
  for (std::size_t d = 0; d < 7; ++d) {
    const YAML::Node n = member(week_node, day_keys[d]);
    if (n.IsScalar()) {
      check_plan(n, fmt::format("tariffs.week.{}", day_keys[d]));
      week[d] = n.Scalar();
    } else if (plans.size() == 1) {
      week[d] = plans.begin()->first;
    } else if (!plans.empty() && (week_node.IsDefined() || !seasons_node.IsSequence() || seasons_node.size() == 0)) {
      diags.error(position_of(week_node.IsDefined() ? week_node : tariffs),
                  fmt::format("'tariffs.week' gives no plan for {}; with several plans every day needs one", day_keys[d]));
    }
  }
  {
    // Without a plan for every weekday the seasons must hold every day of the year; which days
    // they leave is only known when every season could be read, overlaps are found regardless.
    const bool has_fallback = std::none_of(week.begin(), week.end(), [](const std::string& p) { return p.empty(); });
    for (const auto& problem : check_seasons(seasons, has_fallback || !seasons_ok)) {
      diags.error(position_of(season_nodes.at(problem.index)), fmt::format("'tariffs.seasons': {}", problem.message));
    }
  }
  std::map<std::string, std::string> dates;
  std::map<std::string, YAML::Node> date_seen;
  for (const char* key : {"holidays", "dates"}) {
    std::size_t hi = 0;
    for (const auto& d : member(tariffs, key)) {
      const YAML::Node date = member(d, "date"), plan = member(d, "plan");
      const std::string where = fmt::format("tariffs.{}[{}]", key, hi++);
      if (!date.IsScalar() || !plan.IsScalar()) continue;
      check_plan(plan, where + ".plan");
      if (!parse_local_date(date.Scalar()) && !parse_month_day(date.Scalar())) {
        diags.error(position_of(date), fmt::format("'{}.date' is {}, which is not a day of the calendar; write YYYY-MM-DD, or MM-DD for "
                                                   "every year", where, date.Scalar()));
        continue;
      }
      if (const auto [it, fresh] = date_seen.emplace(date.Scalar(), date); !fresh) {
        const Position first = position_of(it->second);
        diags.error(position_of(date), fmt::format("'{}.date' {} is given twice (first on line {}); keep one", where, date.Scalar(), first.line));
        continue;
      }
      dates[date.Scalar()] = plan.Scalar();
    }
  }
  if (diags.error_count() != errors_before || plans.empty()) return std::nullopt;
  try {
    return Tariff(time_zone, decimals, rounding, std::move(plans), week, dates, std::move(seasons));
  } catch (const std::invalid_argument& e) {
    diags.error(position_of(tariffs), fmt::format("'tariffs': {}", e.what()));
  }
  return std::nullopt;
}

SessionConfig parse_session_config(const YAML::Node& root, const std::string& time_zone, std::vector<ConnectorConfig>& connectors,
                                   const std::vector<InstanceSpec>& instances, Diagnostics& diags) {
  SessionConfig cfg;
  std::vector<std::string> named;
  for (const auto& i : instances) named.push_back(i.name);
  auto check_instance = [&](const YAML::Node& node, const std::string& path, std::initializer_list<Kind> kinds) {
    check_instance_reference(node, path, kinds, instances, named, diags);
  };

  // Connectors: power stage and meter. A connector without a power stage could never charge,
  // and a meter that bills another connector than the one it is bound to is a wiring mistake
  // that would bill one plug from the other's register: both are refused here, not at run time.
  const YAML::Node conn_nodes = member(root, "connectors");
  auto instance_of = [&](const std::string& name) -> const InstanceSpec* {
    for (const auto& i : instances) {
      if (i.name == name && i.loaded) return &i;
    }
    return nullptr;
  };
  std::vector<std::string> power_instances;
  for (const auto& i : instances) {
    if (i.loaded && i.loaded->descriptor->kind == Kind::power) power_instances.push_back(i.name);
  }
  std::size_t idx = 0;
  for (auto& c : connectors) {
    const YAML::Node node = conn_nodes.IsSequence() && idx < conn_nodes.size() ? conn_nodes[idx] : YAML::Node();
    const std::string where = fmt::format("connectors[{}]", idx);
    ++idx;
    const YAML::Node power = member(node, "power");
    const YAML::Node meter = member(node, "meter");
    if (power.IsScalar()) {
      check_instance(power, where + ".power", {Kind::power});
      c.power = power.Scalar();
    } else {
      std::vector<std::string> bound;
      for (const auto& i : instances) {
        if (i.loaded && i.loaded->descriptor->kind == Kind::power && i.connector == c.id) bound.push_back(i.name);
      }
      if (bound.size() > 1) {
        diags.error(position_of(node), fmt::format("'{}': connector {} has {} power stages bound to it ({}); name the one it uses with 'power'",
                                                   where, c.id, bound.size(), fmt::join(bound, ", ")));
      }
      if (bound.empty()) {
        diags.error(position_of(node),
                    fmt::format("'{}': connector {} has no power stage: bind a power instance to it ('connector: {}') or name one with 'power'; {}",
                                where, c.id, c.id,
                                power_instances.empty() ? std::string("there is no power instance in 'plugins'")
                                                        : fmt::format("power instances: {}", fmt::join(power_instances, ", "))));
      } else {
        c.power = bound.front();
      }
    }
    if (meter.IsScalar()) {
      check_instance(meter, where + ".meter", {Kind::sensor, Kind::power});
      c.meter = meter.Scalar();
      const InstanceSpec* m = instance_of(c.meter);
      if (m != nullptr && m->connector && *m->connector != c.id) {
        diags.error(position_of(meter), fmt::format("'{}.meter' is '{}', which is bound to connector {} ('plugins.{}.connector'), not to connector {}; "
                                                    "a meter bills the connector it measures: bind it to {} or name connector {}'s own meter",
                                                    where, c.meter, *m->connector, c.meter, c.id, c.id, c.id));
      }
    } else {
      c.meter = c.power;
    }
  }
  // A sensor bound to a connector that bills from something else: a meter whose readings would be
  // ignored, unless it measures something other than energy (a plug's temperature). Said, not refused.
  for (const auto& i : instances) {
    if (!i.loaded || i.loaded->descriptor->kind != Kind::sensor || !i.connector) continue;
    for (std::size_t n = 0; n < connectors.size(); ++n) {
      const auto& c = connectors[n];
      if (c.id != *i.connector || c.meter == i.name || c.meter.empty()) continue;
      const YAML::Node at = member(member(member(root, "plugins"), i.name), "connector");
      diags.warning(position_of(at), fmt::format("'plugins.{}.connector': sensor '{}' is bound to connector {}, which is billed from '{}'; "
                                                 "if '{}' is that connector's meter, set 'connectors[{}].meter: {}'",
                                                 i.name, i.name, c.id, c.meter, i.name, n, i.name));
    }
  }

  // Payment.
  const YAML::Node pay = member(root, "payment");
  const Field pf = payment_field();
  const YAML::Node method = member(pay, "default_method");
  if (method.IsScalar()) {
    check_instance(method, "payment.default_method", {Kind::payment});
    cfg.payment.default_method = method.Scalar();
  }
  cfg.payment.preauth_fen = int_or(member(pay, "preauth_fen"), child(pf, "preauth_fen"), 20000);
  cfg.payment.max_hold_fen = int_or(member(pay, "max_hold_fen"), child(pf, "max_hold_fen"), 100000);
  cfg.payment.increment_step_fen = int_or(member(pay, "increment_step_fen"), child(pf, "increment_step_fen"), 0);
  cfg.payment.risk_timeout_ms = int_or(member(pay, "risk_timeout_ms"), child(pf, "risk_timeout_ms"), 2000);
  cfg.payment.authorize_timeout_ms = int_or(member(pay, "authorize_timeout_ms"), child(pf, "authorize_timeout_ms"), 30000);
  for (const auto& m : members_of(member(pay, "tokens"))) {
    const YAML::Node target = member(m.value, "method");
    if (!target.IsScalar()) continue;
    check_instance(target, fmt::format("payment.tokens.{}.method", m.key), {Kind::payment});
    cfg.payment.token_methods[m.key] = target.Scalar();
  }
  auto percent_ppm = [](const std::string& text) -> std::optional<std::uint32_t> {
    // An exact decimal ("0.38", "99", "99.5"): to parts per million, up to four decimals.
    const auto dot = text.find('.');
    const std::string whole = text.substr(0, dot), frac = dot == std::string::npos ? std::string() : text.substr(dot + 1);
    if (whole.empty() || frac.size() > 4 || whole.size() > 3) return std::nullopt;
    std::uint32_t v = static_cast<std::uint32_t>(std::stoul(whole)) * 10'000;
    std::string f = frac;
    f.resize(4, '0');
    v += static_cast<std::uint32_t>(std::stoul(f));
    return v;
  };
  auto percent_field = [&](const YAML::Node& node, const std::string& where, std::uint32_t fallback) {
    if (!node.IsScalar()) return fallback;
    const auto ppm = node.Scalar().find_first_not_of("0123456789.") == std::string::npos ? percent_ppm(node.Scalar()) : std::nullopt;
    if (!ppm) {
      diags.error(position_of(node), fmt::format("'{}' is '{}'; write a percentage with up to four decimals, e.g. 0.38", where, node.Scalar()));
      return fallback;
    }
    return *ppm;
  };
  if (const YAML::Node channels = member(pay, "channels"); channels.IsSequence()) {
    std::set<std::pair<std::string, std::string>> seen;
    for (std::size_t i = 0; i < channels.size(); ++i) {
      const YAML::Node c = channels[i];
      const YAML::Node m = member(c, "method"), n = member(c, "name");
      if (!m.IsScalar() || !n.IsScalar()) continue;
      const std::string where = fmt::format("payment.channels[{}]", i);
      check_instance(m, where + ".method", {Kind::payment});
      if (!seen.emplace(m.Scalar(), n.Scalar()).second) {
        diags.error(position_of(n), fmt::format("'{}.name': '{}' is listed twice for '{}'", where, n.Scalar(), m.Scalar()));
        continue;
      }
      cfg.payment.channels.push_back({m.Scalar(), n.Scalar(), percent_field(member(c, "fee_pct"), where + ".fee_pct", 0)});
    }
  }
  if (const YAML::Node step_up = member(pay, "step_up"); step_up.IsMap()) {
    auto& su = cfg.payment.step_up;
    if (const YAML::Node factors = member(step_up, "factors"); factors.IsSequence()) {
      su.factors.clear();
      for (const auto& f : factors) {
        if (!f.IsScalar()) continue;
        if (f.Scalar() != "pin" && f.Scalar() != "app_confirmation" && f.Scalar() != "other_method") {
          diags.error(position_of(f), fmt::format("'payment.step_up.factors' has '{}'; allowed: pin, app_confirmation, other_method", f.Scalar()));
          continue;
        }
        if (std::find(su.factors.begin(), su.factors.end(), f.Scalar()) != su.factors.end()) {
          diags.error(position_of(f), fmt::format("'payment.step_up.factors' lists '{}' twice", f.Scalar()));
          continue;
        }
        su.factors.push_back(f.Scalar());
      }
    }
    su.timeout_s = int_or(member(step_up, "timeout_s"), child(child(pf, "step_up"), "timeout_s"), su.timeout_s);
  }
  if (const YAML::Node routing = member(pay, "routing"); routing.IsMap()) {
    const Field rf = child(pf, "routing");
    auto& r = cfg.payment.routing;
    r.max_fee_ppm = percent_field(member(routing, "max_fee_pct"), "payment.routing.max_fee_pct", r.max_fee_ppm);
    r.min_success_ppm = percent_field(member(routing, "min_success_pct"), "payment.routing.min_success_pct", r.min_success_ppm);
    if (const YAML::Node order = member(routing, "order"); order.IsSequence()) {
      r.order.clear();
      for (const auto& o : order) {
        if (!o.IsScalar()) continue;
        if (o.Scalar() != "preferred" && o.Scalar() != "lowest_fee" && o.Scalar() != "highest_success") {
          diags.error(position_of(o), fmt::format("'payment.routing.order' has '{}'; allowed: preferred, lowest_fee, highest_success", o.Scalar()));
          continue;
        }
        r.order.push_back(o.Scalar());
      }
    }
    r.window_s = int_or(member(routing, "window_s"), child(rf, "window_s"), r.window_s);
    r.min_attempts = int_or(member(routing, "min_attempts"), child(rf, "min_attempts"), r.min_attempts);
    r.probe_every = int_or(member(routing, "probe_every"), child(rf, "probe_every"), r.probe_every);
    r.channel_timeout_ms = int_or(member(routing, "channel_timeout_ms"), child(rf, "channel_timeout_ms"), r.channel_timeout_ms);
  }
  const YAML::Node autostart = member(pay, "autostart");
  cfg.payment.autostart = autostart.IsScalar() && (autostart.Scalar() == "true" || autostart.Scalar() == "True" || autostart.Scalar() == "TRUE");
  if (cfg.payment.autostart && cfg.payment.default_method.empty()) {
    diags.error(position_of(autostart), "'payment.autostart' needs 'payment.default_method': the payment instance to start sessions with");
  }

  // Charging.
  const YAML::Node ch = member(root, "charging");
  const Field cf = charging_field();
  cfg.charging.checkpoint_interval_ms = int_or(member(ch, "checkpoint_interval_s"), child(cf, "checkpoint_interval_s"), 60) * 1000;
  cfg.charging.checkpoint_wh = int_or(member(ch, "checkpoint_wh"), child(cf, "checkpoint_wh"), 100);
  cfg.charging.meter_timeout_ms = int_or(member(ch, "meter_timeout_ms"), child(cf, "meter_timeout_ms"), 10000);
  cfg.charging.setpoint_interval_ms = int_or(member(ch, "setpoint_interval_s"), child(cf, "setpoint_interval_s"), 10) * 1000;
  if (const YAML::Node max = member(ch, "site_max_power_w"); max.IsScalar()) cfg.charging.site_max_power_w = int_or(max, child(cf, "site_max_power_w"), 0);
  cfg.charging.fallback_power_w = int_or(member(ch, "fallback_power_w"), child(cf, "fallback_power_w"), 3500);
  if (const YAML::Node m = member(ch, "default_mode"); m.IsScalar()) cfg.charging.default_mode = m.Scalar();
  cfg.charging.max_energy_wh = int_or(member(ch, "max_energy_wh"), child(cf, "max_energy_wh"), 200'000);
  cfg.charging.max_time_s = int_or(member(ch, "max_time_s"), child(cf, "max_time_s"), 86'400);
  if (const YAML::Node m = member(ch, "on_planned_stop"); m.IsScalar()) cfg.charging.suspend_on_stop = m.Scalar() != "stop";
  cfg.charging.resume_within_s = int_or(member(ch, "resume_within_s"), child(cf, "resume_within_s"), 300);
  cfg.charging.resume_plug_wait_s = int_or(member(ch, "resume_plug_wait_s"), child(cf, "resume_plug_wait_s"), 120);
  auto& meter = cfg.charging.meter;
  meter.max_wh = int_or(member(ch, "meter_max_wh"), child(cf, "meter_max_wh"), meter.max_wh);
  meter.tolerance_wh = int_or(member(ch, "meter_tolerance_wh"), child(cf, "meter_tolerance_wh"), meter.tolerance_wh);
  meter.tolerance_pct = int_or(member(ch, "meter_tolerance_pct"), child(cf, "meter_tolerance_pct"), meter.tolerance_pct);
  meter.fault_after = int_or(member(ch, "meter_fault_after"), child(cf, "meter_fault_after"), meter.fault_after);
  meter.stall_power_w = int_or(member(ch, "meter_stall_power_w"), child(cf, "meter_stall_power_w"), meter.stall_power_w);
  meter.stall_ms = int_or(member(ch, "meter_stall_ms"), child(cf, "meter_stall_ms"), meter.stall_ms);
  if (const YAML::Node amb = member(ch, "ambient_sensor"); amb.IsScalar()) {
    check_instance(amb, "charging.ambient_sensor", {Kind::sensor});
    cfg.charging.ambient_sensor = amb.Scalar();
  }

  // Tariffs.
  if (const YAML::Node tariffs = member(root, "tariffs"); tariffs.IsMap()) cfg.tariff = parse_tariffs(tariffs, time_zone, diags);
  return cfg;
}

}  // namespace pilecore::core
