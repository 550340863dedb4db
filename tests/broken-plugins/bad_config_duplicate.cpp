// A configuration declaration that declares the same key twice.
#include "broken.hpp"

namespace {
constexpr pilecore::ConfigKey keys[] = {
    {.key = "port", .type = pilecore::ConfigType::integer, .default_value = "502", .min = 1, .max = 65535, .description = "TCP port"},
    {.key = "host", .type = pilecore::ConfigType::string, .default_value = "127.0.0.1", .description = "Host name or address"},
    {.key = "port", .type = pilecore::ConfigType::integer, .default_value = "503", .min = 1, .max = 65535, .description = "TCP port again"},
};
}  // namespace

PILECORE_PLUGIN(broken::QuietSensor, {.name = "bad-config-duplicate", .version = "1.0.0", .vendor = "pilecore tests",
                                      .license = "Apache-2.0", .description = "Duplicate key", .config = keys})
