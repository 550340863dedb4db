#include "fd_lines.hpp"

#include <fmt/format.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace pilecore::core {

LineRead read_line(int fd, std::string& buffer, std::chrono::milliseconds timeout, std::string& line) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (const auto nl = buffer.find('\n'); nl != std::string::npos) {
      line = buffer.substr(0, nl);
      buffer.erase(0, nl + 1);
      return LineRead::line;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() < 0) return LineRead::timeout;
    pollfd pfd{fd, POLLIN, 0};
    const int r = ::poll(&pfd, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw std::runtime_error(fmt::format("poll: {}", std::strerror(errno)));
    if (r == 0) return LineRead::timeout;
    char chunk[8192];
    const ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw std::runtime_error(fmt::format("read: {}", std::strerror(errno)));
    if (n == 0) return LineRead::closed;
    buffer.append(chunk, static_cast<std::size_t>(n));
  }
}

}  // namespace pilecore::core
