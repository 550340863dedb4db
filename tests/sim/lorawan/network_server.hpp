// The LoRaWAN network server behind a simulated RAK3172, as the operator's back end sees one:
// ChirpStack v4's MQTT integration (docs/protocol.md 6.2).
//
// Each uplink the module sends is published, QoS 1, to
// `application/<application id>/device/<dev eui>/event/up` as ChirpStack's JSON event (the
// application payload base64 in "data", "fPort", "fCnt", "dr", "deviceInfo"). The server
// subscribes to `application/<application id>/device/<dev eui>/command/down` and queues each
// downlink it is given ({"devEui", "confirmed", "fPort", "data"}) for the module's next receive
// window (class A). It talks to the broker with mutual TLS and reconnects by itself; an uplink
// that arrives while it is not connected is lost (counted), as an integration's event is when its
// broker is down: the pile's outbox resends what the back end has not acknowledged.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "rak3172_sim.hpp"

namespace pilecore::sim {

class NetworkServer {
 public:
  struct Settings {
    std::string host = "127.0.0.1";
    int port = 0;
    std::filesystem::path ca, cert, key;  ///< the broker's CA; this server's client certificate and key
    std::string application_id = "pilecore";
  };

  /// Connects (in the background: the broker may be down) and forwards `module`'s uplinks.
  /// `module` must outlive this server.
  NetworkServer(Rak3172Sim& module, Settings settings);
  ~NetworkServer();
  NetworkServer(const NetworkServer&) = delete;
  NetworkServer& operator=(const NetworkServer&) = delete;

  [[nodiscard]] std::uint64_t forwarded() const { return forwarded_; }
  [[nodiscard]] std::uint64_t lost() const { return lost_; }
  [[nodiscard]] std::uint64_t downlinks() const { return downlinks_; }
  [[nodiscard]] std::uint64_t bad_downlinks() const { return bad_downlinks_; }

 private:
  struct Impl;
  Rak3172Sim& module_;
  std::unique_ptr<Impl> impl_;
  std::atomic<std::uint64_t> forwarded_{0}, lost_{0}, downlinks_{0}, bad_downlinks_{0};
};

}  // namespace pilecore::sim
