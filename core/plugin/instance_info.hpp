// What the daemon knows of one plugin instance, for `status`, pilectl and the tests.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace pilecore::core {

/// disabled: quarantined after crashing pilecored too often; never created (see crash_records.hpp).
enum class InstanceState { created, running, failed, stopped, disabled };
std::string_view to_string(InstanceState s);

struct InstanceInfo {
  std::string name;
  std::string plugin;
  std::string kind;
  std::string version;
  std::optional<std::uint32_t> connector;
  InstanceState state = InstanceState::created;
  std::string health;     // last report_state()
  std::string detail;     // failure reason or health detail
  bool isolated = false;  // `isolate: true`: in its own process
  int pid = 0;            // isolated: its process now (0: none)
  unsigned restarts = 0;  // isolated: how often its process was started again
  std::string sandbox;    // isolated: what confines it
};

}  // namespace pilecore::core
