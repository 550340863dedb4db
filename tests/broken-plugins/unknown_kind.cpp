// A descriptor with a plugin kind this core does not know.
#include "broken.hpp"

namespace {
constexpr pilecore::PluginDescriptor make() {
  auto d = broken::good_descriptor("unknown-kind");
  d.kind = static_cast<pilecore::Kind>(99);
  return d;
}
}  // namespace

BROKEN_EXPORT(PILECORE_ENTRY_SYMBOL, make())
