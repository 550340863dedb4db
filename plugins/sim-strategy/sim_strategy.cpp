// sim-strategy: the simulated charging strategy, setpoint = base_power * factor, at least
// min_power_w. The core clamps the answer to the connector's and the site's limits. Without a
// usable base_power variable the answer is not ok, and the core keeps the previous setpoint.
#include <pilecore/pilecore.hpp>

#include <algorithm>
#include <cmath>
#include <exception>
#include <string>

namespace {

using namespace pilecore;

constexpr ConfigKey keys[] = {
    {.key = "factor", .type = ConfigType::number, .default_value = "1.0", .min = 0, .max = 10,
     .description = "Multiplier applied to the base_power variable"},
    {.key = "min_power_w", .type = ConfigType::integer, .default_value = "0", .min = 0, .max = 1000000,
     .description = "Floor of the setpoint (the core's clamp to the connector's limit still applies)", .unit = "W"},
};

constexpr std::string_view kBase = "base_power";
constexpr double kMaxBase = 1e9;  // 1 GW: anything above is a units mistake

class SimStrategy final : public strategy::Strategy {
 public:
  explicit SimStrategy(Host& host)
      : host_(host), factor_(host.config().number("factor")), min_w_(host.config().integer("min_power_w")) {}

  Status start() noexcept override {
    try {
      host_.report_state("up", fmt::format("setpoint = base_power x {}, at least {} W", factor_, min_w_));
      return Status::success();
    } catch (const std::exception& e) {
      return Status::error(StatusCode::failed, e.what());
    }
  }
  void stop() noexcept override {}

  [[nodiscard]] strategy::Setpoint compute(std::span<const strategy::Variable> variables) noexcept override {
    try {
      const strategy::Variable* base = nullptr;
      for (const auto& v : variables) {
        if (v.name == kBase) base = &v;
      }
      if (base == nullptr) {
        std::string names;
        for (const auto& v : variables) names += fmt::format("{}{}", names.empty() ? "" : ", ", v.name);
        return {.status = Status::error(StatusCode::invalid_argument,
                                        fmt::format("the variable base_power is missing (given: {})", names.empty() ? "none" : names)),
                .watts = 0};
      }
      if (!std::isfinite(base->value) || base->value < 0 || base->value > kMaxBase) {
        return {.status = Status::error(StatusCode::invalid_argument,
                                        fmt::format("base_power is {} W; it must be between 0 and {} W", base->value, kMaxBase)),
                .watts = 0};
      }
      const double w = std::round(base->value * factor_);
      const std::int64_t watts = std::max<std::int64_t>(min_w_, static_cast<std::int64_t>(w));
      host_.log().debug("base_power {} W x {} -> {} W", base->value, factor_, watts);
      return {.status = Status::success(), .watts = watts};
    } catch (const std::exception& e) {
      return {.status = Status::error(StatusCode::failed, e.what()), .watts = 0};
    }
  }

 private:
  Host& host_;
  double factor_;
  std::int64_t min_w_;
};

}  // namespace

PILECORE_PLUGIN(SimStrategy, {.name = "sim-strategy", .version = "0.1.0", .vendor = "pilecore", .license = "Apache-2.0",
                              .description = "Simulated charging strategy: base_power times a factor, with a floor", .config = keys})
