// A plugin built against the previous SDK (API 1.1), the case every installed third-party plugin
// is in on the day the major changes: it exports pilecore_plugin_v1, whose frozen head says 1.1.
#include "broken.hpp"

namespace {
constexpr pilecore::PluginDescriptor make() {
  auto d = broken::good_descriptor("api-major-previous");
  d.api_major = PILECORE_API_MAJOR - 1;
  d.api_minor = 1;
  return d;
}
}  // namespace

static_assert(PILECORE_API_MAJOR == 2, "the symbol below is pilecore_plugin_v<major - 1>");
BROKEN_EXPORT(pilecore_plugin_v1, make())
