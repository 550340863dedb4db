// pilecore plugin SDK: communication links (5G/MQTT, LoRaWAN, ...).
//
// A link carries frames of the pilecore wire protocol to the operator's back end. The core's
// outbox decides what to send on which link, within the limits the link declares, and keeps
// every record until the back end acknowledges it; a link never needs to store anything.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string_view>

#include "pilecore/clock.hpp"
#include "pilecore/plugin.hpp"

namespace pilecore {
inline namespace v2 {
namespace link {

enum class TrafficClass : std::uint8_t {
  control,    ///< payment verification, remote stop: latency matters
  telemetry,  ///< status, meter values, temperatures
  bulk,       ///< ledger uploads, logs, firmware fragments
};

enum class State : std::uint8_t { down, connecting, up };

struct Limits {
  std::size_t mtu = 0;                ///< largest frame, header included, in bytes
  std::uint32_t duty_cycle_ppm = 1000000;  ///< share of air time allowed, parts per million
  Duration max_dwell{0};              ///< longest single transmission; 0 = unlimited
};

using SendCallback = std::function<void(Status)>;
using Receiver = std::function<void(std::span<const std::uint8_t> frame)>;

class Link : public Plugin {
 public:
  static constexpr Kind kind = Kind::link;

  [[nodiscard]] virtual Limits limits() const noexcept = 0;
  [[nodiscard]] virtual State state() const noexcept = 0;
  /// Sends one frame. `done` is called once: ok when the link has handed it over (for links
  /// with acknowledgements, when acknowledged), an error otherwise. The span is valid only
  /// during the call.
  virtual void send(std::span<const std::uint8_t> frame, TrafficClass cls, SendCallback done) noexcept = 0;
  /// Where to deliver frames received from the back end; called on the core's strand.
  virtual void set_receiver(Receiver receiver) noexcept = 0;
  /// API 2.2. The risk layer's "switch to backup" signal: `on` asks a link with a primary and a
  /// backup path (e.g. two MQTT brokers) to move to its backup now and stay there; `off` lets it
  /// return to the primary once that is healthy again. A link without a backup ignores it. The
  /// core calls it only on a plugin built against 2.2 or later. Appended last, so the vtable of
  /// a 2.0 or 2.1 link keeps its layout.
  virtual void prefer_backup(bool on) noexcept { (void)on; }
};

}  // namespace link
}  // namespace v2
}  // namespace pilecore
