// A plugin that needs a newer minor of this major: the current entry symbol with api_minor + 1.
#include "broken.hpp"

namespace {
constexpr pilecore::PluginDescriptor make() {
  auto d = broken::good_descriptor("api-minor-next");
  d.api_minor = PILECORE_API_MINOR + 1;
  return d;
}
}  // namespace

BROKEN_EXPORT(PILECORE_ENTRY_SYMBOL, make())
