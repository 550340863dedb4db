// pilecore plugin SDK: sensors (meters, temperature and humidity, current transformers).
//
// A sensor declares its channels and publishes samples with Host::publish, at most at each
// channel's declared rate.
#pragma once

#include <span>
#include <string>

#include "pilecore/plugin.hpp"

namespace pilecore {
inline namespace v2 {
namespace sensor {

struct ChannelInfo {
  std::string name;  ///< e.g. "energy_import", "temperature"
  std::string unit;  ///< e.g. "Wh", "degC"
  double rate_hz = 1;  ///< how often it is published, up to 100
};

class Sensor : public Plugin {
 public:
  static constexpr Kind kind = Kind::sensor;

  /// Valid for the life of the instance.
  [[nodiscard]] virtual std::span<const ChannelInfo> channels() const noexcept = 0;

  /// Take and publish a fresh sample of every channel as soon as possible, instead of waiting
  /// for the next poll. The core calls it when it needs a reading now: a meter at the start and
  /// stop of a session and at a tariff boundary. The default does nothing, for sensors that are
  /// only ever read at their own pace.
  virtual void refresh() noexcept {}
};

}  // namespace sensor
}  // namespace v2
}  // namespace pilecore
