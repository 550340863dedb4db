// Whether the pile can still record what it meters. A meter checkpoint that cannot commit (a full
// disk: SQLITE_FULL) leaves energy flowing that only memory knows of; a crash then loses it to the
// next start's recovery, which bills to the meter but cannot know the tariff periods it crossed.
// So the first failure raises `storage.checkpoint_failed`, `pause_after` failures in a row pause
// charging (setpoint 0, SuspendedEVSE: the session is kept, not closed), and the first checkpoint
// or close that commits again clears the alarm and resumes. One database, so one health per pile:
// a full disk fails every connector's checkpoints alike.
//
// Pure bookkeeping: the session engine reports each commit's outcome and performs what the
// returned verdict says (the alarm, pausing and resuming the connectors).
#pragma once

#include "session_results.hpp"

#include <string>

namespace pilecore::core {

struct CheckpointVerdict {
  bool raise = false;   ///< the first failure: raise the alarm
  bool pause = false;   ///< the failure that reached pause_after: pause charging
  bool clear = false;   ///< a commit after failures: clear the alarm
  bool resume = false;  ///< ...and charging was paused: resume it
};

class CheckpointHealth {
 public:
  explicit CheckpointHealth(int pause_after) : pause_after_(pause_after < 1 ? 1 : pause_after) {}

  /// A checkpoint did not commit; `error` is the database's message.
  CheckpointVerdict failed(std::string error);
  /// A checkpoint (or a session's close, its last checkpoint) committed.
  CheckpointVerdict committed();

  [[nodiscard]] bool failing() const { return failures_ > 0; }
  [[nodiscard]] bool paused() const { return paused_; }
  [[nodiscard]] int failures() const { return failures_; }
  [[nodiscard]] int pause_after() const { return pause_after_; }
  [[nodiscard]] const std::string& error() const { return error_; }

  /// The `storage.checkpoint_failed` alarm event as it stands (active while failing).
  [[nodiscard]] events::CheckpointFailed alarm_event() const;

 private:
  int pause_after_;
  int failures_ = 0;
  bool paused_ = false;
  std::string error_;
};

}  // namespace pilecore::core
