// Where things are: plugin directories and the state directory, found relative to the running
// executable so the same binary works from a build tree and from its installed location.
#pragma once

#include <filesystem>
#include <vector>

namespace pilecore::core {

/// The directory holding the running executable.
std::filesystem::path executable_dir();
/// True when the executable runs from a CMake build tree (not installed).
bool running_from_build_tree();
/// PILECORE_PLUGIN_PATH (colon-separated) when set; else the plugin directory next to the
/// executable (<bin>/../<libdir>/pilecore/plugins) when it exists; else the installed one.
std::vector<std::filesystem::path> default_plugin_dirs();
/// $STATE_DIRECTORY (set by systemd) when set; <build>/state from a build tree; else
/// /var/lib/pilecore.
std::filesystem::path default_state_dir();
/// Where the shipped configs live: <source>/configs from a build tree, else /usr/share/pilecore.
std::filesystem::path data_dir();

}  // namespace pilecore::core
