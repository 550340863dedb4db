// Shared by the broken-plugin matrix: a minimal, well-behaved sensor class, so that each broken
// plugin is broken in exactly one way.
#pragma once

#include <pilecore/pilecore.hpp>

#include <array>
#include <span>

namespace broken {

class QuietSensor : public pilecore::sensor::Sensor {
 public:
  explicit QuietSensor(pilecore::Host& /*host*/) {}
  pilecore::Status start() noexcept override { return pilecore::Status::success(); }
  void stop() noexcept override {}
  [[nodiscard]] std::span<const pilecore::sensor::ChannelInfo> channels() const noexcept override { return {}; }
};

/// A correct descriptor for QuietSensor, for the hand-made cases to spoil one member of.
constexpr pilecore::PluginDescriptor good_descriptor(const char* name) {
  return pilecore::detail::make_descriptor<QuietSensor>(pilecore::PluginInfo{
      .name = name, .version = "1.0.0", .vendor = "pilecore tests", .license = "Apache-2.0", .description = "Broken on purpose"});
}

}  // namespace broken

/// Exports `expr` (a constexpr PluginDescriptor) under the entry symbol `symbol`, the way
/// PILECORE_PLUGIN does, but without its checks.
#define BROKEN_EXPORT(symbol, expr)                          \
  namespace broken_entry {                                   \
  extern const ::pilecore::PluginDescriptor descriptor;      \
  const ::pilecore::PluginDescriptor descriptor = (expr);    \
  }                                                          \
  BOOST_DLL_ALIAS(broken_entry::descriptor, symbol)
