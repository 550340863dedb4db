// The site file's `links` section: which link instance carries each uplink class
// (docs/protocol.md section 4) and the outbox's bound and retry timing.
//   links:
//     cellular: modem          # the 5G link instance (default: the site's only link instance)
//     lorawan: lora            # the LoRaWAN link instance, when the site has one
//     routes:                  # per class, overriding the default routing
//       telemetry: {primary: modem, fallback: lora}
//     device_id: 123456        # the frames' device id, assigned by the operator
//     heartbeat_s: 300         # a status heartbeat every 5 minutes (0: none)
//     telemetry_s: 300         # compact telemetry (state, power, meter) every 5 minutes (0: none)
//     outbox: {max_records: 20000, max_bytes: 33554432, first_retry_s: 15, max_retry_s: 600}
//     commands:                # signed remote commands (docs/protocol.md section 3.4); none: refused
//       key: /etc/pilecore/backend-command.pem
//       window_s: 300
//       firmware_key: /etc/pilecore/firmware-signing.pem
//       firmware_staging: /var/lib/pilecore/firmware
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "diagnostics.hpp"
#include "link_routing.hpp"
#include "schema.hpp"

namespace pilecore::core {

struct InstanceSpec;

Field links_schema();

/// `links.commands`: the back end's keys and the limits remote commands are held to.
struct CommandsConfig {
  std::string key;               ///< the command key's public half (PEM), an absolute path
  std::int64_t window_s = 300;   ///< a command's timestamp within this of the pile's clock
  std::int64_t retry_window_s = 300;  ///< how long a refused start stays retryable from the app
  std::string firmware_key;      ///< empty: firmware transfers are refused
  std::string firmware_staging;  ///< the directory verified images are written to
};

struct UplinkConfig {
  std::string cellular;  ///< empty: the site has no link
  std::string lorawan;   ///< empty: none
  /// default_routing(cellular, lorawan) with the file's `routes` applied.
  protocol::LinkRouting routing;
  std::int64_t outbox_max_records = 20000;
  std::int64_t outbox_max_bytes = 32 * 1024 * 1024;
  std::int64_t first_retry_s = 15;
  std::int64_t max_retry_s = 600;
  std::int64_t device_id = 0;     ///< every frame's device id (docs/protocol.md section 1)
  std::int64_t heartbeat_s = 300; ///< 0: no heartbeat
  std::int64_t telemetry_s = 300; ///< compact telemetry every; 0: none
  /// None: every remote command is refused "commands are not enabled on this pile".
  std::optional<CommandsConfig> commands;
};

/// Reads a validated `links` section (undefined or null: the defaults), reporting references to
/// instances that are not links, and a site with several links that does not say which is 5G.
UplinkConfig parse_uplink_config(const YAML::Node& links, const std::vector<InstanceSpec>& instances, Diagnostics& diags);

}  // namespace pilecore::core
