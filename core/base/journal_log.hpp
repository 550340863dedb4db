// Log lines for the journal: under systemd, stderr is a stream to journald, which reads a
// leading "<N>" (sd-daemon.h's SD_ERR, SD_WARNING ...) as the line's syslog priority; without it
// every line is "info" and `journalctl -p warning` shows nothing. Elsewhere (a terminal, a file,
// pilectl demo's log) the lines keep their timestamp and level words.
#pragma once

#include <spdlog/formatter.h>
#include <spdlog/common.h>

#include <memory>
#include <string_view>

namespace pilecore::core {

/// The syslog priority of an spdlog level: critical 2, error 3, warn 4, info 6, debug and trace 7.
int syslog_priority(spdlog::level::level_enum level);

/// Whether `fd` is the stream that $JOURNAL_STREAM ("<device>:<inode>", set by systemd) names.
/// A child of a service inherits the variable with its stderr redirected elsewhere; comparing
/// the descriptor tells the two apart, as systemd.exec(5) advises.
bool is_journal_stream(int fd, const char* journal_stream);

/// The formatter of pilecored's stderr sink: "<N>level [logger] message" for the journal,
/// "YYYY-mm-dd HH:MM:SS.mmm level [logger] message" otherwise.
std::unique_ptr<spdlog::formatter> make_log_formatter(bool journal);

}  // namespace pilecore::core
