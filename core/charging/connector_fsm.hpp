// The connector state machine, with OCPP 1.6 ChargePointStatus names so an OCPP link maps them
// one to one. It is pure: it decides the next status and remembers the plug and the status
// before a fault; the session engine performs the actions (contactor, billing, ledger).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "pilecore/connector_status.hpp"

namespace pilecore::core {

enum class ConnectorEvent : std::uint8_t {
  // From the power stage.
  plugged,
  unplugged,
  ev_ready,
  ev_paused,
  ev_full,
  fault,
  fault_cleared,
  // Requests.
  authorized_start,  // payment approved, transaction committed: the contactor closes
  user_stop,
  remote_stop,
  funds_exhausted,
  evse_suspend,      // the pile holds power (thermal protection, site limit)
  evse_resume,
  reserve,
  reservation_ended,
  set_unavailable,
  set_available,
};
inline constexpr int connector_event_count = 17;
inline constexpr int connector_status_count = 9;

std::string_view to_string(ConnectorEvent e);

struct Transition {
  bool allowed = false;
  ConnectorStatus to = ConnectorStatus::available;
  std::string refusal;  // why, when not allowed
};

class ConnectorFsm {
 public:
  explicit ConnectorFsm(ConnectorStatus initial = ConnectorStatus::available) : status_(initial) {}

  /// What `event` would do now, without doing it.
  [[nodiscard]] Transition check(ConnectorEvent event) const;
  /// Applies `event`; returns the transition (unchanged state when refused).
  Transition apply(ConnectorEvent event);

  [[nodiscard]] ConnectorStatus status() const { return status_; }
  [[nodiscard]] bool plugged() const { return plugged_; }
  /// The status before the current fault (Faulted only).
  [[nodiscard]] ConnectorStatus before_fault() const { return before_fault_; }
  /// True in the statuses during which a session (transaction) is open.
  [[nodiscard]] static bool in_session(ConnectorStatus s);

 private:
  ConnectorStatus status_;
  ConnectorStatus before_fault_ = ConnectorStatus::available;
  bool plugged_ = false;
};

}  // namespace pilecore::core
