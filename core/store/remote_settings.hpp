// What the operator's back end set on the pile by remote command and a restart must not undo:
// power caps (set_power_limit) and connectors taken out of service (set_availability), as OCPP's
// ChangeAvailability persists across a reboot. Rows `remote.*` of the `meta` table.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>

#include "storage.hpp"

namespace pilecore::core {

struct RemoteSettings {
  std::optional<std::int64_t> site_cap_w;           ///< set_power_limit without a connector
  std::map<std::uint32_t, std::int64_t> cap_w;      ///< by connector
  std::set<std::uint32_t> unavailable;              ///< connectors made unavailable (at once or after their session)
  bool operator==(const RemoteSettings&) const = default;
};

/// The settings as last saved (none: a default RemoteSettings).
[[nodiscard]] RemoteSettings load_remote_settings(Database& db);
/// Replaces the saved settings with `s`, in the caller's work.
void save_remote_settings(Database& db, const RemoteSettings& s);

}  // namespace pilecore::core
