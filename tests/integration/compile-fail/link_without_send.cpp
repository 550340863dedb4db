// A link that implements neither send() nor set_receiver(): both must be named.
#include <pilecore/pilecore.hpp>

class HalfLink final : public pilecore::link::Link {
 public:
  explicit HalfLink(pilecore::Host& /*host*/) {}
  pilecore::Status start() noexcept override { return pilecore::Status::success(); }
  void stop() noexcept override {}
  [[nodiscard]] pilecore::link::Limits limits() const noexcept override { return {}; }
  [[nodiscard]] pilecore::link::State state() const noexcept override { return pilecore::link::State::down; }
};

PILECORE_PLUGIN(HalfLink, {.name = "half-link", .version = "1.0.0", .vendor = "pilecore tests", .license = "MIT",
                           .description = "Misses two methods on purpose"})
