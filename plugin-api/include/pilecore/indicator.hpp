// pilecore plugin SDK: indicators (LED ring, voice prompts, display).
#pragma once

#include <cstdint>
#include <string_view>

#include "pilecore/connector_status.hpp"
#include "pilecore/plugin.hpp"

namespace pilecore {
inline namespace v2 {
namespace indicator {

class Indicator : public Plugin {
 public:
  static constexpr Kind kind = Kind::indicator;

  /// Shows a connector's status (the seed's LED ring: red Faulted, yellow waiting, green
  /// Charging).
  virtual void show(std::uint32_t connector, ConnectorStatus status) noexcept = 0;
  /// Speaks or displays a message already rendered by the core, e.g.
  /// "当前充电功率45kW，预计充满时间32分钟".
  virtual void announce(std::uint32_t connector, std::string_view message) noexcept = 0;
};

}  // namespace indicator
}  // namespace v2
}  // namespace pilecore
