// What confines an isolated plugin's process (pilecore-plugin-host), applied by the process to
// itself before it loads the plugin:
//  - set by the core between fork and exec: its own process group, PR_SET_PDEATHSIG (SIGKILL
//    when pilecored dies), every descriptor but the socket closed (stdin and stdout on
//    /dev/null, stderr kept for the journal), RLIMIT_CORE 0, RLIMIT_AS at the instance's
//    memory cap, PR_SET_NO_NEW_PRIVS;
//  - set by the host process: running as root, it drops to the user that owns the daemon's
//    state directory (`pilecore` in the package) with no supplementary groups; when that is
//    root too it stays uid 0 but gives up every capability (bounding set, effective,
//    permitted, inheritable) and locks the securebits, so it is an ordinary owner of root's
//    files and nothing more; then a Landlock ruleset lets it write only in its state
//    directory and the paths the site file lists, read and execute only the plugin's
//    directory, the system's libraries and a few files under /etc and /dev. A kernel without
//    Landlock gets a warning, and the rest still applies.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace pilecore::core::isolation {

/// The user the child of a root core runs as: the owner of the daemon's state directory (the
/// grandparent of an instance's state directory). nullopt when the core is not root (the child
/// keeps the core's user) or that owner is root (the child drops its capabilities instead).
std::optional<std::pair<uid_t, gid_t>> sandbox_user(const std::string& instance_state_dir);

struct SandboxPlan {
  std::string state_dir;
  std::string plugin_dir;
  std::vector<std::string> paths;  // read-write, from the site file
};

struct SandboxOutcome {
  std::string error;                  // fatal: the child must not go on
  std::vector<std::string> warnings;  // degraded, e.g. no Landlock in this kernel
  std::string summary;                // what holds, for `pilectl status`
};

SandboxOutcome enter_sandbox(const SandboxPlan& plan);

}  // namespace pilecore::core::isolation
