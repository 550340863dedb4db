#include "runtime_events.hpp"

#include <fmt/format.h>

#include "overloaded.hpp"

namespace pilecore::core {

std::optional<AlarmEvent> alarm_of(const Event& e) {
  return std::visit(overloaded{[](const events::MeterImplausible& v) -> std::optional<AlarmEvent> { return v; },
                               [](const events::CloseFailed& v) -> std::optional<AlarmEvent> { return v; },
                               [](const events::CheckpointFailed& v) -> std::optional<AlarmEvent> { return v; },
                               [](const auto&) -> std::optional<AlarmEvent> { return std::nullopt; }},
                    e);
}

std::optional<AlarmEvent> alarm_of(const RuntimeEvent& e) {
  return std::visit(overloaded{[](const events::PluginAlarm& v) -> std::optional<AlarmEvent> { return v; },
                               [](const LowDiskAlarm& v) -> std::optional<AlarmEvent> { return v; },
                               [](const auto&) -> std::optional<AlarmEvent> { return std::nullopt; }},
                    e);
}

std::string alarm_key(const AlarmEvent& a) {
  return std::visit(overloaded{[](const events::MeterImplausible& v) { return fmt::format("meter.implausible/{}/{}", v.instance, v.connector); },
                               [](const events::CloseFailed& v) { return fmt::format("storage.close_failed/{}", v.connector); },
                               [](const events::CheckpointFailed&) { return std::string("storage.checkpoint_failed"); },
                               [](const events::PluginAlarm& v) { return fmt::format("{}/{}", v.code, v.instance); },
                               [](const LowDiskAlarm&) { return std::string("storage.low_disk"); }},
                    a);
}

bool alarm_active(const AlarmEvent& a) {
  return std::visit([](const auto& v) { return v.active; }, a);
}

}  // namespace pilecore::core
