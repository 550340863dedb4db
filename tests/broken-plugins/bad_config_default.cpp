// A configuration declaration whose default lies outside its own range.
#include "broken.hpp"

namespace {
constexpr pilecore::ConfigKey keys[] = {
    {.key = "interval_ms", .type = pilecore::ConfigType::integer, .default_value = "5", .min = 10, .max = 60000,
     .description = "Time between samples", .unit = "ms"},
};
}  // namespace

PILECORE_PLUGIN(broken::QuietSensor, {.name = "bad-config-default", .version = "1.0.0", .vendor = "pilecore tests",
                                      .license = "Apache-2.0", .description = "Default out of range", .config = keys})
