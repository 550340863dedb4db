// A plugin whose create returns null and says nothing.
#include "broken.hpp"

namespace {
pilecore::Plugin* create_nothing(pilecore::Host& /*host*/, std::string* /*error*/) noexcept { return nullptr; }

constexpr pilecore::PluginDescriptor make() {
  auto d = broken::good_descriptor("create-null");
  d.create = &create_nothing;
  return d;
}
}  // namespace

BROKEN_EXPORT(PILECORE_ENTRY_SYMBOL, make())
