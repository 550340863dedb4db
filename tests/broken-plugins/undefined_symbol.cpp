// A plugin that calls a function no library defines. Linked without -Wl,--no-undefined, so the
// build succeeds and the dynamic loader (RTLD_NOW) is what refuses it.
#include "broken.hpp"

extern "C" int pilecore_broken_missing_function(int);

namespace {
class NeedySensor final : public broken::QuietSensor {
 public:
  using QuietSensor::QuietSensor;
  pilecore::Status start() noexcept override {
    if (pilecore_broken_missing_function(1) != 0) return pilecore::Status::error(pilecore::StatusCode::failed, "missing function failed");
    return pilecore::Status::success();
  }
};
}  // namespace

PILECORE_PLUGIN(NeedySensor, {.name = "undefined-symbol", .version = "1.0.0", .vendor = "pilecore tests", .license = "Apache-2.0",
                              .description = "Needs a symbol nothing provides"})
