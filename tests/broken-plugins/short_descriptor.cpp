// A descriptor whose struct_size is smaller than an API 2.0 descriptor (as if its SDK had no
// reserved slots).
#include "broken.hpp"

#include <cstddef>

namespace {
constexpr pilecore::PluginDescriptor make() {
  auto d = broken::good_descriptor("short-descriptor");
  d.struct_size = static_cast<std::uint32_t>(offsetof(pilecore::PluginDescriptor, reserved));
  return d;
}
}  // namespace

BROKEN_EXPORT(PILECORE_ENTRY_SYMBOL, make())
