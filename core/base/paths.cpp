#include "paths.hpp"

#include <cstdlib>
#include <string>

#include "build_config.hpp"

namespace pilecore::core {
namespace fs = std::filesystem;

fs::path executable_dir() {
  std::error_code ec;
  auto exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return fs::current_path();
  return exe.parent_path();
}

bool running_from_build_tree() {
  std::error_code ec;
  return fs::exists(executable_dir().parent_path() / "CMakeCache.txt", ec);
}

std::vector<fs::path> default_plugin_dirs() {
  std::vector<fs::path> dirs;
  if (const char* env = std::getenv("PILECORE_PLUGIN_PATH"); env != nullptr && *env != '\0') {
    std::string s(env);
    std::size_t start = 0;
    while (start <= s.size()) {
      auto end = s.find(':', start);
      if (end == std::string::npos) end = s.size();
      if (end > start) dirs.emplace_back(s.substr(start, end - start));
      start = end + 1;
    }
    return dirs;
  }
  std::error_code ec;
  const fs::path beside = executable_dir().parent_path() / PILECORE_PLUGIN_SUBDIR;
  if (fs::is_directory(beside, ec)) {
    dirs.push_back(fs::weakly_canonical(beside, ec));
  } else {
    dirs.emplace_back(PILECORE_INSTALL_PLUGIN_DIR);
  }
  return dirs;
}

fs::path default_state_dir() {
  if (const char* env = std::getenv("STATE_DIRECTORY"); env != nullptr && *env != '\0') {
    std::string s(env);
    return s.substr(0, s.find(':'));
  }
  if (running_from_build_tree()) return executable_dir().parent_path() / "state";
  return "/var/lib/pilecore";
}

fs::path data_dir() {
  if (running_from_build_tree()) return fs::path(PILECORE_SOURCE_DIR) / "configs";
  return PILECORE_INSTALL_DATA_DIR;
}

}  // namespace pilecore::core
