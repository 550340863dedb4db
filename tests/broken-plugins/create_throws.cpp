// A plugin whose constructor throws; the SDK's create wrapper turns that into an error string.
#include <stdexcept>

#include "broken.hpp"

namespace {
class ThrowingSensor final : public broken::QuietSensor {
 public:
  explicit ThrowingSensor(pilecore::Host& host) : QuietSensor(host) {
    throw std::runtime_error("cannot open /dev/ttyBROKEN: No such device");
  }
};
}  // namespace

PILECORE_PLUGIN(ThrowingSensor, {.name = "create-throws", .version = "1.0.0", .vendor = "pilecore tests", .license = "Apache-2.0",
                                 .description = "Its constructor throws"})
