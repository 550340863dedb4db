// Loading plugins: find <name>.so in the plugin directories, load it with Boost.DLL
// (RTLD_NOW | RTLD_LOCAL), and check its descriptor before calling anything in it.
#pragma once

#include <boost/dll/shared_library.hpp>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "pilecore/plugin.hpp"
#include "schema.hpp"

namespace pilecore::core {

/// A plugin library whose descriptor passed every check. Shared by all instances of the plugin
/// so the library stays loaded while any object from it lives.
struct LoadedPlugin {
  std::string name;
  std::filesystem::path file;
  const PluginDescriptor* descriptor = nullptr;
  std::vector<Field> config_fields;
  std::shared_ptr<boost::dll::shared_library> library;
};

struct LoadResult {
  std::shared_ptr<const LoadedPlugin> plugin;  // null when refused
  std::string error;                           // why it was refused, naming the file and the fix
};

/// Loads one file and checks its descriptor. The plugin's name must match the file's name.
LoadResult load_plugin_file(const std::filesystem::path& file);

/// Checks a descriptor already in memory (exposed for tests).
std::string check_descriptor(const std::filesystem::path& file, const PluginDescriptor& d, std::vector<Field>& fields);

class PluginRegistry {
 public:
  explicit PluginRegistry(std::vector<std::filesystem::path> dirs);

  [[nodiscard]] const std::vector<std::filesystem::path>& dirs() const { return dirs_; }
  /// Names of the plugin files in the directories (first directory wins), without loading them.
  [[nodiscard]] std::vector<std::string> installed() const;
  /// The file that provides `name`, when there is one.
  [[nodiscard]] std::optional<std::filesystem::path> find(std::string_view name) const;
  /// Loads (once) and checks the plugin called `name`.
  LoadResult load(std::string_view name);

 private:
  std::vector<std::filesystem::path> dirs_;
  std::map<std::string, LoadResult, std::less<>> cache_;
};

}  // namespace pilecore::core
