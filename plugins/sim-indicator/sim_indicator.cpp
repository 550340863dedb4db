// sim-indicator: the seed's LED ring and voice prompt, simulated in the log.
//
// Faulted -> red; Available, Preparing, Finishing, Reserved, SuspendedEV, SuspendedEVSE ->
// yellow (waiting); Charging -> green; Unavailable -> off. Each change of colour is logged as
// "[connector N] LED green", each announcement as "[connector N] says: ...". The current colour
// of every connector is kept and reported as the instance's health detail ("1 green, 2 yellow"),
// which `pilectl status` and the tests read.
//
// An instance bound to a connector (`connector: N` in the site file) is that connector's ring and
// ignores the others; an unbound instance shows every connector.
#include <pilecore/pilecore.hpp>

#include <exception>
#include <map>
#include <string>

namespace {

using namespace pilecore;

constexpr ConfigKey keys[] = {
    {.key = "announce", .type = ConfigType::boolean, .default_value = "true",
     .description = "Speak (log) the messages the core announces; false keeps the ring silent"},
    {.key = "max_message_bytes", .type = ConfigType::integer, .default_value = "256", .min = 16, .max = 4096,
     .description = "Longest message the simulated display shows; longer ones are cut at a character boundary", .unit = "B"},
};

enum class Colour { off, red, yellow, green };

std::string_view to_string(Colour c) {
  switch (c) {
    case Colour::off: return "off";
    case Colour::red: return "red";
    case Colour::yellow: return "yellow";
    case Colour::green: return "green";
  }
  return "unknown";
}

Colour colour_of(ConnectorStatus s) {
  switch (s) {
    case ConnectorStatus::faulted: return Colour::red;
    case ConnectorStatus::charging: return Colour::green;
    case ConnectorStatus::unavailable: return Colour::off;
    case ConnectorStatus::available:
    case ConnectorStatus::preparing:
    case ConnectorStatus::finishing:
    case ConnectorStatus::reserved:
    case ConnectorStatus::suspended_ev:
    case ConnectorStatus::suspended_evse: return Colour::yellow;
  }
  return Colour::red;  // an unknown status is treated as a fault
}

/// Cuts UTF-8 text to at most `max` bytes without splitting a character.
std::string_view cut_utf8(std::string_view s, std::size_t max) {
  if (s.size() <= max) return s;
  std::size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n);
}

class SimIndicator final : public indicator::Indicator {
 public:
  explicit SimIndicator(Host& host)
      : host_(host),
        bound_(host.connector()),
        announce_(host.config().boolean("announce")),
        max_bytes_(static_cast<std::size_t>(host.config().integer("max_message_bytes"))) {}

  Status start() noexcept override {
    try {
      host_.report_state("up", bound_ ? fmt::format("LED ring of connector {}", *bound_) : std::string("LED rings of all connectors"));
      return Status::success();
    } catch (const std::exception& e) {
      return Status::error(StatusCode::failed, e.what());
    }
  }

  void stop() noexcept override {}

  void show(std::uint32_t connector, ConnectorStatus status) noexcept override {
    try {
      if (bound_ && *bound_ != connector) return;
      const Colour c = colour_of(status);
      auto it = colours_.find(connector);
      if (it != colours_.end() && it->second == c) return;
      colours_[connector] = c;
      host_.log().info("[connector {}] LED {} ({})", connector, to_string(c), pilecore::to_string(status));
      host_.report_state("up", summary());
    } catch (const std::exception& e) {
      host_.log().error("show failed: {}", e.what());
    }
  }

  void announce(std::uint32_t connector, std::string_view message) noexcept override {
    try {
      if (bound_ && *bound_ != connector) return;
      if (!announce_) return;
      const std::string_view shown = cut_utf8(message, max_bytes_);
      host_.log().info("[connector {}] says: {}{}", connector, shown, shown.size() < message.size() ? "…" : "");
    } catch (const std::exception& e) {
      host_.log().error("announce failed: {}", e.what());
    }
  }

 private:
  [[nodiscard]] std::string summary() const {
    std::string s;
    for (const auto& [id, c] : colours_) s += fmt::format("{}{} {}", s.empty() ? "" : ", ", id, to_string(c));
    return s;
  }

  Host& host_;
  std::optional<std::uint32_t> bound_;
  bool announce_;
  std::size_t max_bytes_;
  std::map<std::uint32_t, Colour> colours_;
};

}  // namespace

PILECORE_PLUGIN(SimIndicator, {.name = "sim-indicator", .version = "0.1.0", .vendor = "pilecore", .license = "Apache-2.0",
                               .description = "Simulated LED ring (red fault, yellow waiting, green charging) and voice prompt",
                               .config = keys})
