#include "logging.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <unistd.h>

#include <cstdlib>

#include "journal_log.hpp"

namespace pilecore::core {
namespace {
spdlog::sink_ptr& shared_sink() {
  static spdlog::sink_ptr sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  return sink;
}
}  // namespace

void init_logging(const std::string& level) {
  auto& sink = shared_sink();
  // Priority prefixes only when stderr really is the journal's stream; under systemd with
  // stderr sent elsewhere (StandardError=file:...) the journal still stamps nothing, so the
  // timestamps stay off there as before.
  const bool journal = is_journal_stream(STDERR_FILENO, std::getenv("JOURNAL_STREAM"));
  if (journal) {
    sink->set_formatter(make_log_formatter(true));
  } else if (std::getenv("INVOCATION_ID") != nullptr) {
    sink->set_pattern("%l [%n] %v");
  } else {
    sink->set_formatter(make_log_formatter(false));
  }
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
