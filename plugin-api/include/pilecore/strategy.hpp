// pilecore plugin SDK: charging strategies (the power setpoint).
//
// The core gathers named variables (base_power, battery_temperature, soc,
// ambient_temperature, ...), asks the strategy for a setpoint, and always clamps the answer to
// the connector's and the site's limits.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "pilecore/plugin.hpp"

namespace pilecore {
inline namespace v2 {
namespace strategy {

struct Variable {
  std::string_view name;
  double value = 0;
};

struct Setpoint {
  Status status;           ///< not ok: the core keeps the previous setpoint and logs why
  std::int64_t watts = 0;
};

class Strategy : public Plugin {
 public:
  static constexpr Kind kind = Kind::strategy;

  [[nodiscard]] virtual Setpoint compute(std::span<const Variable> variables) noexcept = 0;
};

}  // namespace strategy
}  // namespace v2
}  // namespace pilecore
