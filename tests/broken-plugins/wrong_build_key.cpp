// A plugin built for another platform and C++ library.
#include "broken.hpp"

namespace {
constexpr pilecore::PluginDescriptor make() {
  auto d = broken::good_descriptor("wrong-build-key");
  d.build_key = "aarch64;libc++";
  return d;
}
}  // namespace

BROKEN_EXPORT(PILECORE_ENTRY_SYMBOL, make())
