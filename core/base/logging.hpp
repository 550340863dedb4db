// Logging through spdlog to stderr, which the journal captures under systemd.
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <string>

#include "pilecore/log.hpp"

namespace pilecore::core {

/// Sets up the shared stderr sink; timestamps are left out under systemd (the journal has its own).
void init_logging(const std::string& level);
/// A logger named `name` (e.g. "sensor:sim-sensor:cabinet") on the shared sink.
std::shared_ptr<spdlog::logger> make_logger(const std::string& name);
spdlog::level::level_enum to_spdlog(LogLevel level);
/// The SDK Logger on top of an spdlog logger.
class PluginLogger final : public Logger {
 public:
  explicit PluginLogger(std::shared_ptr<spdlog::logger> logger) : logger_(std::move(logger)) {}
  void write(LogLevel level, std::string_view message) noexcept override;
  [[nodiscard]] bool enabled(LogLevel level) const noexcept override;

 private:
  std::shared_ptr<spdlog::logger> logger_;
};

}  // namespace pilecore::core
