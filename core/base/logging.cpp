#include "logging.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>

namespace pilecore::core {
namespace {
spdlog::sink_ptr& shared_sink() {
  static spdlog::sink_ptr sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  return sink;
}
}  // namespace

void init_logging(const std::string& level) {
  auto& sink = shared_sink();
  const bool journal = std::getenv("JOURNAL_STREAM") != nullptr || std::getenv("INVOCATION_ID") != nullptr;
  sink->set_pattern(journal ? "%l [%n] %v" : "%Y-%m-%d %H:%M:%S.%e %^%l%$ [%n] %v");
  spdlog::set_level(spdlog::level::from_str(level));
  auto main = make_logger("core");
  spdlog::set_default_logger(main);
}

std::shared_ptr<spdlog::logger> make_logger(const std::string& name) {
  if (auto existing = spdlog::get(name)) return existing;
  auto logger = std::make_shared<spdlog::logger>(name, shared_sink());
  logger->set_level(spdlog::get_level());
  logger->flush_on(spdlog::level::warn);
  spdlog::register_logger(logger);
  return logger;
}

spdlog::level::level_enum to_spdlog(LogLevel level) {
  switch (level) {
    case LogLevel::trace: return spdlog::level::trace;
    case LogLevel::debug: return spdlog::level::debug;
    case LogLevel::info: return spdlog::level::info;
    case LogLevel::warn: return spdlog::level::warn;
    case LogLevel::error: return spdlog::level::err;
    case LogLevel::critical: return spdlog::level::critical;
  }
  return spdlog::level::info;
}

void PluginLogger::write(LogLevel level, std::string_view message) noexcept {
  try {
    logger_->log(to_spdlog(level), "{}", message);
  } catch (...) {
  }
}

bool PluginLogger::enabled(LogLevel level) const noexcept { return logger_->should_log(to_spdlog(level)); }

}  // namespace pilecore::core
