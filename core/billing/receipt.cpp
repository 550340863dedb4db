#include "receipt.hpp"

#include <date/tz.h>
#include <fmt/format.h>

#include <charconv>
#include <set>

#include "clocks.hpp"
#include "money.hpp"
#include "tariff.hpp"

namespace pilecore::core {

namespace {
std::string time_of(const nlohmann::json& r, const char* ms_key, const char* text_key, const std::string& zone) {
  TimePoint t;
  if (r.contains(ms_key) && r[ms_key].is_number_integer()) {
    t = TimePoint{Duration{r[ms_key].get<std::int64_t>()}};
  } else if (r.contains(text_key) && r[text_key].is_string()) {
    if (!parse_utc(r[text_key].get<std::string>(), t)) return r[text_key].get<std::string>();
  } else {
    return "-";
  }
  if (zone.empty()) return format_utc(t);
  try {
    // The offset, not the abbreviation: "CST" is China's, Cuba's and the US's central time.
    return date::format("%F %T %Ez", date::make_zoned(zone, std::chrono::floor<std::chrono::seconds>(t)));
  } catch (const std::exception&) {
    return format_utc(t);
  }
}
}  // namespace

nlohmann::json bill_json(const Bill& b) {
  nlohmann::json lines = nlohmann::json::array();
  for (const auto& l : b.lines) {
    lines.push_back({{"period", std::string(to_string(l.type))}, {"plan", l.plan}, {"wh", l.wh},
                     {"electricity_price", l.price.electricity}, {"service_price", l.price.service},
                     {"electricity_fen", l.electricity_fen}, {"service_fen", l.service_fen}, {"total_fen", l.total_fen()}});
  }
  return {{"energy_wh", b.energy_wh}, {"lines", lines}, {"electricity_fen", b.electricity_fen}, {"service_fen", b.service_fen},
          {"total_fen", b.total_fen}, {"price_decimals", b.decimals}};
}

namespace {
/// The charging mode as the driver asked for it, in words: "full" -> "a full battery",
/// "amount:35000" -> "350.00 yuan", "energy:30000" -> "30.000 kWh", "time:3600s" -> "60 min".
std::string describe_mode(const std::string& mode) {
  const auto colon = mode.find(':');
  const std::string kind = mode.substr(0, colon);
  std::int64_t n = 0;
  if (colon != std::string::npos) {
    const char* first = mode.data() + colon + 1;
    std::from_chars(first, mode.data() + mode.size(), n);
  }
  if (kind == "full") return "a full battery";
  if (kind == "amount") return format_yuan(n) + " yuan";
  if (kind == "energy") return format_kwh(n) + " kWh";
  if (kind == "time") return fmt::format("{} min", n / 60);
  return mode;
}
}  // namespace

std::string format_receipt_text(const nlohmann::json& r, const std::string& zone) {
  std::string out;
  out += fmt::format("Receipt {}  connector {}  {}\n", r.value("transaction", ""), r.value("connector", 0), r.value("outcome", r.value("status", "")));
  out += fmt::format("  {} -> {}  ({})\n", time_of(r, "started_ms", "started", zone), time_of(r, "stopped_ms", "stopped", zone), r.value("stop_reason", ""));
  // A reading not taken (a session still open, a meter that never answered) is missing, not 0.
  const auto reading = [&](const char* key) {
    return r.contains(key) && r[key].is_number_integer() ? format_kwh(r[key].get<std::int64_t>()) + " kWh" : std::string("missing");
  };
  out += fmt::format("  meter {} -> {}\n", reading("meter_start_wh"), reading("meter_stop_wh"));
  if (const std::string mode = r.value("mode", ""); !mode.empty()) out += fmt::format("  asked for {}\n", describe_mode(mode));
  if (!r.contains("bill") || !r["bill"].is_object()) return out + "  (not billed yet)\n";
  const auto& b = r["bill"];
  const int decimals = b.value("price_decimals", 2);
  out += fmt::format("  {:<9} {:>9} {:>12} {:>11} {:>12} {:>11} {:>11}\n", "period", "kWh", "fen/kWh", "electricity", "fen/kWh", "service", "amount");
  // A session across a season change or into a holiday has the same period under two plans:
  // the plan tells the two lines apart.
  std::set<std::string> plans;
  for (const auto& l : b["lines"]) plans.insert(l.value("plan", ""));
  for (const auto& l : b["lines"]) {
    const auto type = period_type_from(l.value("period", "")).value_or(PeriodType::flat);
    out += fmt::format("  {:<6} {} {:>9} {:>12} {:>11} {:>12} {:>11} {:>11}{}\n", l.value("period", ""), chinese_name(type), format_kwh(l.value("wh", std::int64_t{0})),
                       format_scaled(l.value("electricity_price", std::int64_t{0}), decimals), format_yuan(l.value("electricity_fen", std::int64_t{0})),
                       format_scaled(l.value("service_price", std::int64_t{0}), decimals), format_yuan(l.value("service_fen", std::int64_t{0})),
                       format_yuan(l.value("total_fen", std::int64_t{0})), plans.size() > 1 ? "  " + l.value("plan", "") : std::string());
  }
  out += fmt::format("  {:<9} {:>9} {:>12} {:>11} {:>12} {:>11} {:>11}  yuan\n", "total", format_kwh(b.value("energy_wh", std::int64_t{0})), "",
                     format_yuan(b.value("electricity_fen", std::int64_t{0})), "", format_yuan(b.value("service_fen", std::int64_t{0})),
                     format_yuan(b.value("total_fen", std::int64_t{0})));
  // The site's price changed during the session (a reload, an upgrade): it kept its own.
  if (const std::string note = b.value("tariff_note", ""); !note.empty()) out += fmt::format("  {}\n", note);
  if (r.contains("captured_fen")) {
    out += fmt::format("  paid {} yuan ({})\n", format_yuan(r.value("captured_fen", std::int64_t{0})), r.value("capture_status", ""));
  }
  // Billed beyond the hold: never captured, and said so rather than dropped.
  if (const std::int64_t uncovered = r.value("uncovered_fen", std::int64_t{0}); uncovered > 0) {
    out += fmt::format("  uncovered {} yuan: billed above the {} yuan held, not captured\n", format_yuan(uncovered),
                       format_yuan(r.value("authorized_fen", std::int64_t{0})));
  }
  if (r.contains("operations") && r["operations"].is_array() && !r["operations"].empty()) {
    // Every money operation, with the channel it went through and, for a routed authorisation,
    // why the router chose that channel.
    out += "  money operations:\n";
    for (const auto& op : r["operations"]) {
      const std::string channel = op.value("channel", "");
      out += fmt::format("    {:<22} {:<9} {:<9} {:>10} yuan{}{}\n", op.value("operation", ""), op.value("kind", ""), op.value("state", ""),
                         format_yuan(op.value("amount_fen", std::int64_t{0})), channel.empty() ? "" : "  via " + channel,
                         op.value("reason", "").empty() ? "" : "  (" + op.value("reason", "") + ")");
      if (!op.value("routing", "").empty()) out += fmt::format("      routed: {}\n", op.value("routing", ""));
    }
  }
  return out;
}

}  // namespace pilecore::core
