#include "journal_log.hpp"

#include <spdlog/pattern_formatter.h>
#include <sys/stat.h>

#include <cinttypes>
#include <cstdio>
#include <string>

namespace pilecore::core {

namespace {
/// %* in the pattern: "<N>".
class PriorityFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    const char text[4] = {'<', static_cast<char>('0' + syslog_priority(msg.level)), '>', '\0'};
    dest.append(text, text + 3);
  }
  [[nodiscard]] std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<PriorityFlag>(); }
};
}  // namespace

int syslog_priority(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::critical: return 2;  // SD_CRIT
    case spdlog::level::err: return 3;       // SD_ERR
    case spdlog::level::warn: return 4;      // SD_WARNING
    case spdlog::level::info: return 6;      // SD_INFO
    default: return 7;                       // SD_DEBUG: debug, trace
  }
}

bool is_journal_stream(int fd, const char* journal_stream) {
  if (journal_stream == nullptr || *journal_stream == '\0') return false;
  std::uintmax_t dev = 0, ino = 0;
  char end = 0;
  if (std::sscanf(journal_stream, "%" SCNuMAX ":%" SCNuMAX "%c", &dev, &ino, &end) != 2) return false;
  struct stat st {};
  if (::fstat(fd, &st) != 0) return false;
  return static_cast<std::uintmax_t>(st.st_dev) == dev && static_cast<std::uintmax_t>(st.st_ino) == ino;
}

std::unique_ptr<spdlog::formatter> make_log_formatter(bool journal) {
  auto f = std::make_unique<spdlog::pattern_formatter>();
  if (journal) {
    // No timestamp: the journal stamps each line itself.
    f->add_flag<PriorityFlag>('*').set_pattern("%*%l [%n] %v");
  } else {
    f->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ [%n] %v");
  }
  return f;
}

}  // namespace pilecore::core
