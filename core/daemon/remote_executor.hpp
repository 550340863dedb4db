// What each remote command does on this pile (docs/protocol.md section 3.4): the Executor that
// RemoteCommands hands an accepted command to, over the session engine and the control
// socket's status. Runs on the strand.
#pragma once

#include "remote_commands.hpp"

namespace pilecore::core {

class Runtime;

/// `retry_window`: how long after a refused start `retry_start` may start it again.
RemoteCommands::Executor make_remote_executor(Runtime& runtime, Duration retry_window);

}  // namespace pilecore::core
