// The serial line speeds the plugins' UART devices (an AT modem, a LoRaWAN module) accept, as
// termios constants.
#pragma once

#include <termios.h>

#include <cstdint>
#include <optional>

namespace pilecore::plugins {

/// The termios speed of `baud`, or nothing when it is not one of the standard rates.
inline std::optional<speed_t> serial_speed(std::int64_t baud) {
  switch (baud) {
    case 9600: return B9600;
    case 19200: return B19200;
    case 38400: return B38400;
    case 57600: return B57600;
    case 115200: return B115200;
    case 230400: return B230400;
    case 460800: return B460800;
    case 921600: return B921600;
    default: return std::nullopt;
  }
}

}  // namespace pilecore::plugins
