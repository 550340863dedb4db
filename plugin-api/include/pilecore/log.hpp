// pilecore plugin SDK: logging.
//
// Each plugin instance receives its own logger; the core prefixes every line with
// [kind:plugin:instance], so a site with two instances of one plugin stays readable.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <string_view>
#include <utility>

namespace pilecore {
inline namespace v2 {

enum class LogLevel : std::uint8_t { trace, debug, info, warn, error, critical };

class Logger {
 public:
  virtual ~Logger() = default;
  virtual void write(LogLevel level, std::string_view message) noexcept = 0;
  [[nodiscard]] virtual bool enabled(LogLevel level) const noexcept = 0;

  template <class... Args>
  void log(LogLevel level, fmt::format_string<Args...> format, Args&&... args) noexcept {
    if (!enabled(level)) return;
    try {
      write(level, fmt::vformat(format, fmt::make_format_args(args...)));
    } catch (...) {
      write(level, "(log message could not be formatted)");
    }
  }
  template <class... A> void trace(fmt::format_string<A...> f, A&&... a) noexcept { log(LogLevel::trace, f, std::forward<A>(a)...); }
  template <class... A> void debug(fmt::format_string<A...> f, A&&... a) noexcept { log(LogLevel::debug, f, std::forward<A>(a)...); }
  template <class... A> void info(fmt::format_string<A...> f, A&&... a) noexcept { log(LogLevel::info, f, std::forward<A>(a)...); }
  template <class... A> void warn(fmt::format_string<A...> f, A&&... a) noexcept { log(LogLevel::warn, f, std::forward<A>(a)...); }
  template <class... A> void error(fmt::format_string<A...> f, A&&... a) noexcept { log(LogLevel::error, f, std::forward<A>(a)...); }
};

}  // namespace v2
}  // namespace pilecore
