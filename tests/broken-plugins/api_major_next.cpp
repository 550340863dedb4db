// A plugin built against a future SDK (API 2.0): it exports pilecore_plugin_v2, whose frozen
// head (struct_size, api_major, api_minor) says 2.0.
#include "broken.hpp"

namespace {
constexpr pilecore::PluginDescriptor make() {
  auto d = broken::good_descriptor("api-major-next");
  d.api_major = PILECORE_API_MAJOR + 1;
  d.api_minor = 0;
  return d;
}
}  // namespace

BROKEN_EXPORT(pilecore_plugin_v2, make())
