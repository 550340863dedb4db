// A sensor that forgot channels(): PILECORE_PLUGIN must refuse to compile it and name the method.
#include <pilecore/pilecore.hpp>

class Forgetful final : public pilecore::sensor::Sensor {
 public:
  explicit Forgetful(pilecore::Host& /*host*/) {}
  pilecore::Status start() noexcept override { return pilecore::Status::success(); }
  void stop() noexcept override {}
};

PILECORE_PLUGIN(Forgetful, {.name = "forgetful", .version = "1.0.0", .vendor = "pilecore tests", .license = "MIT",
                            .description = "Misses a method on purpose"})
