#include "instance_info.hpp"

namespace pilecore::core {

std::string_view to_string(InstanceState s) {
  switch (s) {
    case InstanceState::created: return "created";
    case InstanceState::running: return "running";
    case InstanceState::failed: return "failed";
    case InstanceState::stopped: return "stopped";
    case InstanceState::disabled: return "disabled";
  }
  return "unknown";
}

}  // namespace pilecore::core
