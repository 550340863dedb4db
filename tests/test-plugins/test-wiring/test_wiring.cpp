// A test-only indicator whose configuration uses every structured key type: a reference to
// another instance, a list of integers, an object with nested keys and a list of objects. Its
// validate checks a combination the declarations cannot express. It reports what it was given in
// its state detail, so the tests can see the values arrive through the real host.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <pilecore/pilecore.hpp>

#include <iterator>
#include <string>

namespace {

using namespace pilecore;

constexpr ConfigKey tls_keys[] = {
    {.key = "ca_file", .type = ConfigType::string, .required = true, .description = "CA bundle"},
    {.key = "verify", .type = ConfigType::boolean, .default_value = "true", .description = "Check the peer's certificate"},
};

constexpr ConfigKey step_keys[] = {
    {.key = "at_pct", .type = ConfigType::integer, .min = 0, .max = 100, .required = true, .description = "State of charge", .unit = "%"},
    {.key = "colour", .type = ConfigType::enumeration, .default_value = "green", .allowed = "red|yellow|green", .description = "Colour"},
    {.key = "sensor", .type = ConfigType::instance_ref, .description = "Sensor watched at this step", .ref_kind = Kind::sensor},
};

constexpr ConfigKey keys[] = {
    {.key = "power", .type = ConfigType::instance_ref, .required = true, .description = "The power stage whose state is shown",
     .ref_kind = Kind::power},
    {.key = "levels", .type = ConfigType::integer_list, .default_value = "[10, 50, 90]", .min = 0, .max = 100,
     .description = "Brightness levels", .unit = "%"},
    {.key = "tls", .type = ConfigType::object, .description = "Connection to the display's controller", .fields = tls_keys,
     .field_count = std::size(tls_keys)},
    {.key = "steps", .type = ConfigType::object_list, .description = "Colour steps by state of charge", .fields = step_keys,
     .field_count = std::size(step_keys)},
};

class WiringIndicator final : public indicator::Indicator {
 public:
  explicit WiringIndicator(Host& host) : host_(host) {}

  static void validate(const ConfigValues& config, ConfigReport& report) {
    // Steps must rise: a combination of items no single declaration can check.
    const auto steps = config.get_object_list("steps").value_or(std::vector<const ConfigValues*>{});
    for (std::size_t i = 1; i < steps.size(); ++i) {
      if (steps[i]->integer("at_pct") <= steps[i - 1]->integer("at_pct")) {
        report.error(fmt::format("steps[{}].at_pct", i), fmt::format("{} % is not above the previous step's {} %", steps[i]->integer("at_pct"),
                                                                     steps[i - 1]->integer("at_pct")));
      }
    }
  }

  Status start() noexcept override {
    try {
      const ConfigValues& c = host_.config();
      std::string detail = fmt::format("power={} levels={}", c.string("power"), fmt::join(c.integer_list("levels"), ","));
      if (const ConfigValues* tls = c.get_object("tls")) detail += fmt::format(" tls={}:{}", tls->string("ca_file"), tls->boolean("verify"));
      for (const ConfigValues* step : c.get_object_list("steps").value_or(std::vector<const ConfigValues*>{})) {
        detail += fmt::format(" step={}:{}:{}", step->integer("at_pct"), step->string("colour"), step->get_string("sensor").value_or("-"));
      }
      host_.report_state("up", detail);
      return Status::success();
    } catch (const std::exception& e) {
      return Status::error(StatusCode::failed, e.what());
    }
  }
  void stop() noexcept override {}
  void show(std::uint32_t /*connector*/, ConnectorStatus /*status*/) noexcept override {}
  void announce(std::uint32_t /*connector*/, std::string_view /*text*/) noexcept override {}

 private:
  Host& host_;
};

}  // namespace

PILECORE_PLUGIN(WiringIndicator, {.name = "test-wiring", .version = "1.0.0", .vendor = "pilecore tests", .license = "Apache-2.0",
                                  .description = "Uses every structured configuration type", .config = keys})
