// The daemon's own events (the session engine's are in session_results.hpp), the alarms that
// `status` lists while they are active, and the status reply: typed here, turned into JSON only
// by wire.cpp.
#pragma once

#include <array>

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "disk_space.hpp"
#include "instance_info.hpp"
#include "pilecore/connector_status.hpp"
#include "pilecore/events.hpp"
#include "session_results.hpp"

namespace pilecore::core {

class ControlSocket;
class Uplink;

namespace events {
/// Every instance started: the pile takes sessions.
struct Ready {
  std::string site;
  std::size_t connectors = 0, instances = 0;
  double speed = 1;  ///< the clock's: 1 on a real pile, more in the demo
};
struct ConnectorChanged {
  std::uint32_t connector = 0;
  ConnectorStatus status = ConnectorStatus::unavailable;
  std::string why;
};
struct InstanceFailed {
  std::string instance, reason;
};
/// An isolated instance's process was started again after a crash or a hang.
struct InstanceRestarted {
  std::string instance;
  int pid = 0;
};
/// An alarm a plugin raised or cleared through its host.
struct PluginAlarm {
  std::string instance, code, message;
  bool active = true;
  AlarmSeverity severity = AlarmSeverity::warning;
};
/// The "switch to backup endpoint" signal (risk.flood raised) or its end (cleared): the links
/// are told to prefer their backup endpoint, or to fail back.
struct LinkEndpoint {
  bool prefer_backup = false;
  std::string why;
};
}  // namespace events

using RuntimeEvent = std::variant<events::Ready, events::ConnectorChanged, events::InstanceFailed, events::InstanceRestarted, events::PluginAlarm, LowDiskAlarm,
                                  events::LinkEndpoint>;

/// Every event that is an alarm, whoever raised it.
using AlarmEvent = std::variant<events::MeterImplausible, events::CloseFailed, events::CheckpointFailed, events::PluginAlarm, LowDiskAlarm>;

/// The alarm an event raises or clears, if it is one.
std::optional<AlarmEvent> alarm_of(const Event& e);
std::optional<AlarmEvent> alarm_of(const RuntimeEvent& e);
/// What identifies one alarm across its raise, updates and clear: code, instance, connector.
std::string alarm_key(const AlarmEvent& a);
bool alarm_active(const AlarmEvent& a);

/// An alarm raised and not cleared yet, as `status` lists it.
struct ActiveAlarm {
  AlarmEvent alarm;
  TimePoint since{};  ///< when first raised; an update keeps it
};

/// What the admission guard (risk rules of API 2.2, e.g. risk-rate-limit) let in and refused,
/// per risk::Inbound kind, since the start.
struct AdmissionCounts {
  std::array<std::uint64_t, 5> admitted{};
  std::array<std::uint64_t, 5> refused{};
  bool prefer_backup = false;  ///< the "switch to backup endpoint" signal is on (risk.flood)
};

/// The reply to `status`.
struct DaemonStatus {
  StatusSnapshot engine;
  std::vector<InstanceInfo> instances;
  const ControlSocket* control = nullptr;  ///< its counters, read on the strand
  bool ready = false;
  std::vector<ActiveAlarm> alarms;
  std::optional<DiskStatus> storage;
  AdmissionCounts admission;
  const Uplink* uplink = nullptr;  ///< its counters, read on the strand; null: the site has no link
  std::string timezone;            ///< site.timezone, so a client shows times as the site does
};

}  // namespace pilecore::core
