// One line at a time from a descriptor (a socket, a pipe), with a deadline: the control
// socket's watchers and the demo's simulator pipe read their peers this way.
#pragma once

#include <chrono>
#include <optional>
#include <string>

namespace pilecore::core {

enum class LineRead { line, timeout, closed };

/// Waits up to `timeout` for a whole line on `fd`. Bytes that come after the line stay in
/// `buffer` for the next call, which must pass the same buffer. On LineRead::line, `line` holds
/// it without its newline. A poll or read error other than EINTR throws std::runtime_error.
LineRead read_line(int fd, std::string& buffer, std::chrono::milliseconds timeout, std::string& line);

}  // namespace pilecore::core
