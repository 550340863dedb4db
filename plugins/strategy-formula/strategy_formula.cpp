// strategy-formula: the power setpoint is a formula from the site file, evaluated with muparser.
//
// The formula is parsed and checked in the constructor: a syntax error or a variable that is
// neither standard nor declared under `variables` throws. validate() runs the same constructor
// (without a host) when the site file is validated, so `pilectl config validate` and pilecored
// both refuse a broken formula with file:line:column, before anything starts. At run time compute() copies the
// variables the formula uses from the core's list into storage this object owns (muparser holds
// pointers to it), evaluates, refuses NaN, infinite and negative results, rounds to whole watts and
// applies min_power_w / max_power_w. The core clamps the answer to the connector's and the site's
// limits afterwards whatever this plugin says; the bounds here are only an extra policy.
#include <muParser.h>

#include <pilecore/pilecore.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace pilecore;

// The variables the core supplies to every strategy (see docs/strategy.md).
constexpr std::array<std::string_view, 8> kStandard = {
    "base_power",          // W, what the session would get without a strategy
    "battery_temperature", // degC, from the vehicle
    "soc",                 // %, state of charge
    "ambient_temperature", // degC, from the cabinet sensor
    "connector_max_power", // W, the connector's limit from the site file
    "site_max_power",      // W, the site's limit
    "elapsed_s",           // s since the session started charging
    "energy_wh",           // Wh delivered in the session so far
};

constexpr std::int64_t kMaxWatts = 1'000'000'000;  // 1 GW: a formula above it has a units mistake

constexpr ConfigKey keys[] = {
    {.key = "formula", .type = ConfigType::string, .required = true,
     .description = "Setpoint in W as a muparser expression, e.g. base_power * (1 + 0.02 * battery_temperature). Standard variables: "
                    "base_power, battery_temperature, soc, ambient_temperature, connector_max_power, site_max_power, elapsed_s, "
                    "energy_wh",
     .unit = "W"},
    {.key = "variables", .type = ConfigType::string_list,
     .description = "Extra variable names the formula may use besides the standard ones (letters, digits and _, not starting "
                    "with a digit)"},
    {.key = "min_power_w", .type = ConfigType::integer, .default_value = "0", .min = 0, .max = kMaxWatts,
     .description = "Floor of the setpoint, applied by this plugin; the core still clamps to the connector's and the site's limits",
     .unit = "W"},
    {.key = "max_power_w", .type = ConfigType::integer, .min = 0, .max = kMaxWatts,
     .description = "Ceiling of the setpoint, applied by this plugin (none when absent); the core still clamps to the "
                    "connector's and the site's limits",
     .unit = "W"},
    {.key = "on_missing", .type = ConfigType::enumeration, .default_value = "error", .allowed = "error|zero",
     .description = "When a variable the formula uses is not supplied: error keeps the previous setpoint, zero uses 0 for it"},
};

bool is_identifier(std::string_view s) {
  if (s.empty()) return false;
  const auto alpha = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; };
  const auto digit = [](char c) { return c >= '0' && c <= '9'; };
  if (!alpha(s.front())) return false;
  return std::all_of(s.begin(), s.end(), [&](char c) { return alpha(c) || digit(c); });
}

/// Position (0-based) of `name` as a whole identifier in `expr`, or npos.
std::size_t identifier_position(std::string_view expr, std::string_view name) {
  const auto ident = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'; };
  for (std::size_t at = expr.find(name); at != std::string_view::npos; at = expr.find(name, at + 1)) {
    const bool left = at == 0 || !ident(expr[at - 1]);
    const bool right = at + name.size() == expr.size() || !ident(expr[at + name.size()]);
    if (left && right) return at;
  }
  return std::string_view::npos;
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

/// muparser's message, with the position when the message does not already say it.
std::string parser_message(const mu::Parser::exception_type& e) {
  std::string msg = e.GetMsg();
  if (e.GetPos() >= 0 && msg.find("position") == std::string::npos) {
    while (!msg.empty() && msg.back() == '.') msg.pop_back();
    msg += fmt::format(" at position {}", e.GetPos());
  }
  return msg;
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += fmt::format("{}{}", out.empty() ? "" : ", ", n);
  return out;
}

/// A configuration problem and the key it is about, so that validate can point at it.
class KeyError : public std::invalid_argument {
 public:
  KeyError(std::string key, const std::string& message) : std::invalid_argument(message), key_(std::move(key)) {}
  [[nodiscard]] const std::string& key() const noexcept { return key_; }

 private:
  std::string key_;
};

class FormulaStrategy final : public strategy::Strategy {
 public:
  explicit FormulaStrategy(Host& host) : FormulaStrategy(&host, host.config()) {}

  /// Deep validation (see pilecore::ValidateFn): the formula is compiled exactly as the instance
  /// will compile it, so a formula that validates is one the instance accepts.
  static void validate(const ConfigValues& config, ConfigReport& report) {
    try {
      const FormulaStrategy probe(nullptr, config);
    } catch (const KeyError& e) {
      report.error(e.key(), e.what());
    }
  }

 private:
  /// `host` is null only for validate, which never starts the instance.
  FormulaStrategy(Host* host, const ConfigValues& config)
      : host_(host),
        formula_(config.string("formula")),
        min_w_(config.integer("min_power_w")),
        max_w_(config.get_integer("max_power_w")),
        zero_missing_(config.string("on_missing") == "zero") {
    if (max_w_ && *max_w_ < min_w_) {
      throw KeyError("max_power_w", fmt::format("max_power_w ({} W) is below min_power_w ({} W)", *max_w_, min_w_));
    }

    // Every name the formula may use: the standard ones, then the declared ones.
    std::vector<std::string> names(kStandard.begin(), kStandard.end());
    for (const auto& n : config.get_string_list("variables").value_or(std::vector<std::string>{})) {
      if (!is_identifier(n)) {
        throw KeyError("variables", fmt::format(
            "variables: '{}' is not a valid variable name (letters, digits and _, not starting with a digit)", n));
      }
      if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);  // standard or repeated: harmless
    }
    // The storage muparser points at: sized once, never reallocated.
    names_ = std::move(names);
    values_.assign(names_.size(), 0.0);

    try {
      for (std::size_t i = 0; i < names_.size(); ++i) parser_.DefineVar(names_[i], &values_[i]);
    } catch (const mu::Parser::exception_type& e) {
      throw KeyError("variables", fmt::format("variables: cannot define '{}': {}", e.GetToken(), parser_message(e)));
    }

    try {
      parser_.SetExpr(formula_);
      // GetUsedVar() compiles the formula (syntax errors throw here) while accepting undefined
      // names, which it lists with a pointer that is not ours: those are the unknown variables.
      const auto& used = parser_.GetUsedVar();
      std::vector<std::string> unknown;
      for (const auto& [name, ptr] : used) {
        const auto slot = slot_of(ptr);
        if (slot) {
          used_.push_back({.name = name, .slot = *slot});
        } else {
          unknown.push_back(name);
        }
      }
      if (!unknown.empty()) throw_unknown(unknown);
      // One evaluation with every variable at 0, so nothing the parser checks lazily is left
      // for the first compute().
      (void)parser_.Eval();
    } catch (const mu::Parser::exception_type& e) {
      throw KeyError("formula", fmt::format("formula \"{}\": {}", formula_, parser_message(e)));
    }
  }


 public:
  Status start() noexcept override {
    try {
      std::vector<std::string> used;
      for (const auto& u : used_) used.push_back(u.name);
      host_->report_state("up", fmt::format("setpoint = {} (uses {}), {} to {} W", formula_, used.empty() ? "no variables" : join(used),
                                           min_w_, max_w_ ? fmt::format("{}", *max_w_) : "unbounded"));
      return Status::success();
    } catch (const std::exception& e) {
      return Status::error(StatusCode::failed, e.what());
    }
  }
  void stop() noexcept override {}

  [[nodiscard]] strategy::Setpoint compute(std::span<const strategy::Variable> variables) noexcept override {
    try {
      std::vector<bool> given(used_.size(), false);
      for (const auto& v : variables) {
        for (std::size_t i = 0; i < used_.size(); ++i) {
          if (used_[i].name == v.name) {
            values_[used_[i].slot] = v.value;
            given[i] = true;
          }
        }
      }
      std::vector<std::string> missing;
      for (std::size_t i = 0; i < used_.size(); ++i) {
        if (given[i]) continue;
        if (zero_missing_) {
          values_[used_[i].slot] = 0;
        } else {
          missing.push_back(used_[i].name);
        }
      }
      if (!missing.empty()) {
        return fail(StatusCode::invalid_argument,
                    fmt::format("the formula uses {} but {} not supplied", join(missing), missing.size() == 1 ? "it was" : "they were"));
      }

      const double result = parser_.Eval();
      if (!std::isfinite(result)) return fail(StatusCode::invalid_argument, fmt::format("the formula gave {} ({})", result, inputs()));
      if (result < 0) return fail(StatusCode::invalid_argument, fmt::format("the formula gave {} W, below 0 ({})", result, inputs()));
      if (result > static_cast<double>(kMaxWatts)) {
        return fail(StatusCode::invalid_argument,
                    fmt::format("the formula gave {} W, above {} W: check the units ({})", result, kMaxWatts, inputs()));
      }
      std::int64_t watts = std::llround(result);
      watts = std::max(watts, min_w_);
      if (max_w_) watts = std::min(watts, *max_w_);
      host_->log().debug("{} = {} -> {} W ({})", formula_, result, watts, inputs());
      return {.status = Status::success(), .watts = watts};
    } catch (const mu::Parser::exception_type& e) {
      return fail(StatusCode::failed, fmt::format("evaluating \"{}\": {}", formula_, parser_message(e)));
    } catch (const std::exception& e) {
      return fail(StatusCode::failed, e.what());
    } catch (...) {
      return fail(StatusCode::failed, "unknown error while evaluating the formula");
    }
  }

 private:
  struct Used {
    std::string name;
    std::size_t slot = 0;
  };

  std::optional<std::size_t> slot_of(const double* p) const {
    for (std::size_t i = 0; i < values_.size(); ++i) {
      if (&values_[i] == p) return i;
    }
    return std::nullopt;
  }

  [[noreturn]] void throw_unknown(const std::vector<std::string>& unknown) const {
    std::string what;
    for (const auto& name : unknown) {
      std::string one = fmt::format("unknown variable \"{}\"", name);
      if (auto at = identifier_position(formula_, name); at != std::string_view::npos) one += fmt::format(" at position {}", at);
      std::string best;
      std::size_t best_d = 3;  // suggest only close names
      for (const auto& n : names_) {
        const auto d = edit_distance(name, n);
        if (d < best_d) {
          best_d = d;
          best = n;
        }
      }
      if (!best.empty()) one += fmt::format(" (did you mean \"{}\"?)", best);
      what += fmt::format("{}{}", what.empty() ? "" : "; ", one);
    }
    std::vector<std::string> standard(kStandard.begin(), kStandard.end());
    throw KeyError("formula", fmt::format("formula \"{}\": {}. The standard variables are {}; declare others under 'variables'", formula_,
                                            what, join(standard)));
  }

  /// "base_power=45000, soc=40": the values the formula used, for messages.
  std::string inputs() const {
    std::string out;
    for (const auto& u : used_) out += fmt::format("{}{}={}", out.empty() ? "" : ", ", u.name, values_[u.slot]);
    return out.empty() ? "no variables" : out;
  }

  strategy::Setpoint fail(StatusCode code, std::string message) noexcept {
    try {
      return {.status = Status::error(code, std::move(message)), .watts = 0};
    } catch (...) {
      return {.status = Status(code, std::string()), .watts = 0};  // no memory for the message: still not ok
    }
  }

  Host* host_;
  std::string formula_;
  std::int64_t min_w_;
  std::optional<std::int64_t> max_w_;
  bool zero_missing_;
  std::vector<std::string> names_;
  std::vector<double> values_;
  std::vector<Used> used_;
  mu::Parser parser_;
};

}  // namespace

PILECORE_PLUGIN(FormulaStrategy,
                {.name = "strategy-formula", .version = "0.1.0", .vendor = "pilecore", .license = "Apache-2.0",
                 .description = "Charging strategy: the setpoint in W is a muparser formula of the variables base_power, "
                                "battery_temperature, soc, ambient_temperature, connector_max_power, site_max_power, elapsed_s, "
                                "energy_wh and any declared extra ones",
                 .config = keys})
