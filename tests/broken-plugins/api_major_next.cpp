// A plugin built against a future SDK (API 3.0): it exports pilecore_plugin_v3, whose frozen
// head (struct_size, api_major, api_minor) says 3.0.
#include "broken.hpp"

namespace {
constexpr pilecore::PluginDescriptor make() {
  auto d = broken::good_descriptor("api-major-next");
  d.api_major = PILECORE_API_MAJOR + 1;
  d.api_minor = 0;
  return d;
}
}  // namespace

static_assert(PILECORE_API_MAJOR == 2, "the symbol below is pilecore_plugin_v<major + 1>");
BROKEN_EXPORT(pilecore_plugin_v3, make())
