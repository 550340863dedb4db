#include "checkpoint_health.hpp"

#include <fmt/format.h>

namespace pilecore::core {

CheckpointVerdict CheckpointHealth::failed(std::string error) {
  CheckpointVerdict v;
  error_ = std::move(error);
  ++failures_;
  v.raise = failures_ == 1;
  if (!paused_ && failures_ >= pause_after_) {
    paused_ = true;
    v.pause = true;
  }
  return v;
}

CheckpointVerdict CheckpointHealth::committed() {
  CheckpointVerdict v;
  if (failures_ == 0) return v;
  v.clear = true;
  v.resume = paused_;
  failures_ = 0;
  paused_ = false;
  return v;
}

events::CheckpointFailed CheckpointHealth::alarm_event() const {
  const bool active = failures_ > 0;
  std::string message;
  if (!active) {
    message = "meter checkpoints commit again";
  } else if (paused_) {
    message = fmt::format("{} meter checkpoint(s) in a row not committed ({}); charging paused until one commits", failures_, error_);
  } else {
    message = fmt::format("{} meter checkpoint(s) in a row not committed ({}); charging pauses after {}", failures_, error_, pause_after_);
  }
  return {.active = active, .message = message, .error = active ? error_ : std::string(), .consecutive = failures_, .pause_after = pause_after_, .paused = paused_};
}

}  // namespace pilecore::core
