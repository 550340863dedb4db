// The control case: the same sensor with every method compiles, so a failure of the two other
// sources is the missing method and not a broken command line.
#include <pilecore/pilecore.hpp>

class Complete final : public pilecore::sensor::Sensor {
 public:
  explicit Complete(pilecore::Host& /*host*/) {}
  pilecore::Status start() noexcept override { return pilecore::Status::success(); }
  void stop() noexcept override {}
  [[nodiscard]] std::span<const pilecore::sensor::ChannelInfo> channels() const noexcept override { return {}; }
};

PILECORE_PLUGIN(Complete, {.name = "complete", .version = "1.0.0", .vendor = "pilecore tests", .license = "MIT",
                           .description = "Compiles"})
