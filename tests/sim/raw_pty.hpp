// A pseudo-terminal pair for a simulated serial device (an NFC reader, a modem, a LoRaWAN
// module): the plugin under test opens `device` as it would /dev/ttyUSB0, and the simulator
// reads and writes `master`. The simulator keeps the slave open too, so the plugin closing and
// reopening its port does not hang up the master side, and sets it raw from the start: no echo
// or line editing may touch a byte before the plugin sets its own mode.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pilecore::sim {

struct RawPty {
  int master = -1;
  int slave = -1;
  std::string device;  ///< /dev/pts/N
};

/// Opens the pair; throws std::runtime_error naming the step that failed (nothing left open).
inline RawPty open_raw_pty() {
  RawPty p;
  p.master = ::posix_openpt(O_RDWR | O_NOCTTY);
  if (p.master < 0) throw std::runtime_error(std::string("posix_openpt: ") + std::strerror(errno));
  char name[128];
  if (::grantpt(p.master) != 0 || ::unlockpt(p.master) != 0 || ::ptsname_r(p.master, name, sizeof name) != 0) {
    const int err = errno;
    ::close(p.master);
    throw std::runtime_error(std::string("pseudo-terminal: ") + std::strerror(err));
  }
  p.device = name;
  p.slave = ::open(name, O_RDWR | O_NOCTTY);
  termios t{};
  if (p.slave < 0 || ::tcgetattr(p.slave, &t) != 0) {
    const int err = errno;
    ::close(p.master);
    if (p.slave >= 0) ::close(p.slave);
    throw std::runtime_error(std::string("opening ") + name + ": " + std::strerror(err));
  }
  ::cfmakeraw(&t);
  ::tcsetattr(p.slave, TCSANOW, &t);
  return p;
}

/// Writes all of `bytes` to the master side, waiting (100 ms at a time) while the tty's buffer is
/// full; gives up silently when the pty is gone (the plugin under test closed it for good).
inline void write_all(int master, const void* bytes, std::size_t size) {
  const auto* p = static_cast<const char*>(bytes);
  std::size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(master, p + done, size - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        pollfd w{master, POLLOUT, 0};
        ::poll(&w, 1, 100);
        continue;
      }
      return;
    }
    done += static_cast<std::size_t>(n);
  }
}

}  // namespace pilecore::sim
