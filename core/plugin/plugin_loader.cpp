#include "plugin_loader.hpp"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/dll/library_info.hpp>
#include <cstring>
#include <regex>
#include <set>

namespace pilecore::core {
namespace fs = std::filesystem;

namespace {

/// The frozen head of every descriptor, whatever its major.
struct DescriptorHead {
  std::uint32_t struct_size;
  std::uint16_t api_major;
  std::uint16_t api_minor;
};
static_assert(offsetof(PluginDescriptor, kind) == sizeof(DescriptorHead));

/// Libraries are never unloaded: a plugin may have left threads or atexit handlers behind, and
/// unloading buys nothing on a charger. Every library stays here until the process exits.
std::vector<std::shared_ptr<boost::dll::shared_library>>& pinned() {
  static auto* libs = new std::vector<std::shared_ptr<boost::dll::shared_library>>();
  return *libs;
}

std::string trust_problem(const fs::path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return fmt::format("cannot inspect it: {}", std::strerror(errno));
  const uid_t me = ::geteuid();
  if (st.st_uid != 0 && st.st_uid != me) {
    return fmt::format("{} is owned by uid {}; plugins must be owned by root or by the user running pilecore", p.string(), st.st_uid);
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return fmt::format("{} is writable by group or others (mode {:04o}); only its owner may be able to change code the daemon runs",
                       p.string(), st.st_mode & 07777);
  }
  return {};
}

std::string load_error_text(const std::exception& e, const std::string& file) {
  // Boost.DLL's message is "... failed (dlerror system message: <dlerror>): <errno text>"; keep
  // the dlerror part, without the file name it repeats.
  std::string what = e.what();
  const std::string marker = "dlerror system message: ";
  if (auto pos = what.find(marker); pos != std::string::npos) {
    what = what.substr(pos + marker.size());
    if (auto end = what.rfind("): "); end != std::string::npos) {
      what = what.substr(0, end);
    } else if (!what.empty() && what.back() == ')') {
      what.pop_back();
    }
  }
  if (what.rfind(file + ": ", 0) == 0) what = what.substr(file.size() + 2);
  return what;
}

}  // namespace

std::string check_descriptor(const fs::path& file, const PluginDescriptor& d, std::vector<Field>& fields) {
  const std::string f = file.string();
  if (d.struct_size < sizeof(DescriptorHead)) {
    return fmt::format("{}: damaged descriptor: it is {} bytes, shorter than the {} bytes every pilecore descriptor starts with. "
                       "Rebuild the plugin against pilecore-dev.", f, d.struct_size, sizeof(DescriptorHead));
  }
  if (d.api_major != PILECORE_API_MAJOR) {
    return fmt::format("{}: plugin API mismatch: the plugin was built for API {}.{}, this pilecore provides API {}.{}. "
                       "Rebuild the plugin against pilecore-dev {}.x, or install a pilecore that provides API {}.x.",
                       f, d.api_major, d.api_minor, PILECORE_API_MAJOR, PILECORE_API_MINOR, PILECORE_API_MAJOR, d.api_major);
  }
  if (d.api_minor > PILECORE_API_MINOR) {
    return fmt::format("{}: plugin API too new: the plugin needs API {}.{}, this pilecore provides API {}.{}. "
                       "Upgrade pilecore, or rebuild the plugin against pilecore-dev {}.{}.",
                       f, d.api_major, d.api_minor, PILECORE_API_MAJOR, PILECORE_API_MINOR, PILECORE_API_MAJOR, PILECORE_API_MINOR);
  }
  if (d.struct_size < descriptor_size_v2_0) {
    return fmt::format("{}: damaged descriptor: it is {} bytes, an API {}.{} descriptor has at least {}. "
                       "Rebuild the plugin against pilecore-dev.", f, d.struct_size, d.api_major, d.api_minor, descriptor_size_v2_0);
  }
  if (d.build_key == nullptr || std::strcmp(d.build_key, PILECORE_BUILD_KEY) != 0) {
    return fmt::format("{}: incompatible build: the plugin was built for '{}', this pilecore for '{}'. "
                       "Rebuild the plugin with pilecore-dev on this system.",
                       f, d.build_key ? d.build_key : "(none)", PILECORE_BUILD_KEY);
  }
  const auto kind = static_cast<std::uint32_t>(d.kind);
  if (kind < static_cast<std::uint32_t>(Kind::payment) || kind > static_cast<std::uint32_t>(Kind::strategy)) {
    return fmt::format("{}: invalid descriptor: unknown plugin kind {}; this pilecore knows payment, link, sensor, risk, power, "
                       "indicator and strategy. Rebuild the plugin against pilecore-dev.", f, kind);
  }
  static const std::regex name_re("[a-z][a-z0-9-]{0,62}");
  if (d.name == nullptr || !std::regex_match(d.name, name_re)) {
    return fmt::format("{}: invalid descriptor: the plugin name '{}' is not lower case letters, digits and '-'. Fix PILECORE_PLUGIN's .name.",
                       f, d.name ? d.name : "(none)");
  }
  if (file.stem().string() != d.name) {
    return fmt::format("{}: the file is named '{}' but the plugin calls itself '{}'. Rename the file to '{}.so'.",
                       f, file.stem().string(), d.name, d.name);
  }
  if (d.version == nullptr || *d.version == '\0') {
    return fmt::format("{}: invalid descriptor: plugin '{}' has no version. Fix PILECORE_PLUGIN's .version.", f, d.name);
  }
  if (d.create == nullptr || d.destroy == nullptr) {
    return fmt::format("{}: invalid descriptor: plugin '{}' has no create or destroy function. Declare it with PILECORE_PLUGIN.", f, d.name);
  }
  if (d.config_count > 0 && (d.config == nullptr || d.config_key_size == 0 || d.config_key_size > 4096)) {
    return fmt::format("{}: invalid configuration declaration: plugin '{}' declares {} keys but no valid key table. "
                       "Fix the plugin's ConfigKey list and rebuild it.", f, d.name, d.config_count);
  }
  fields.clear();
  std::set<std::string> seen;
  const auto* base = reinterpret_cast<const unsigned char*>(d.config);
  for (std::uint32_t i = 0; i < d.config_count; ++i) {
    ConfigKey key{};
    std::memcpy(&key, base + static_cast<std::size_t>(i) * d.config_key_size, std::min<std::size_t>(d.config_key_size, sizeof(ConfigKey)));
    Field field;
    if (auto err = field_from_config_key(key, field)) {
      return fmt::format("{}: invalid configuration declaration in plugin '{}': {}. Fix the plugin's ConfigKey list and rebuild it.", f, d.name, *err);
    }
    if (!seen.insert(field.key).second) {
      return fmt::format("{}: invalid configuration declaration in plugin '{}': key '{}' is declared twice. "
                         "Fix the plugin's ConfigKey list and rebuild it.", f, d.name, field.key);
    }
    fields.push_back(std::move(field));
  }
  return {};
}

LoadResult load_plugin_file(const fs::path& given) {
  LoadResult result;
  std::error_code ec;
  const fs::path file = fs::weakly_canonical(fs::absolute(given, ec), ec);
  const std::string f = file.string();
  if (!fs::is_regular_file(file, ec)) {
    result.error = fmt::format("{}: no such plugin file", f);
    return result;
  }
  for (const fs::path& p : {file.parent_path(), file}) {
    if (auto problem = trust_problem(p); !problem.empty()) {
      result.error = fmt::format("{}: refused: {}.", f, problem);
      return result;
    }
  }
  auto lib = std::make_shared<boost::dll::shared_library>();
  try {
    lib->load(file, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local);
  } catch (const std::exception& e) {
    result.error = fmt::format("{}: cannot be loaded: {}. Install the libraries it needs, or rebuild it against this pilecore-dev.",
                               f, load_error_text(e, f));
    return result;
  }
  pinned().push_back(lib);
  if (!lib->has(PILECORE_ENTRY_SYMBOL_NAME)) {
    // A plugin built for another major exports pilecore_plugin_v<major>: read its frozen head
    // to say which API it wants.
    std::vector<std::string> symbols;
    try {
      boost::dll::library_info info(file);
      symbols = info.symbols("boostdll");
    } catch (const std::exception&) {
    }
    static const std::regex other_major("pilecore_plugin_v[0-9]+");
    for (const auto& s : symbols) {
      if (std::regex_match(s, other_major) && lib->has(s)) {
        const auto& d = lib->get_alias<const PluginDescriptor>(s);
        std::vector<Field> ignored;
        result.error = check_descriptor(file, d, ignored);
        if (!result.error.empty()) return result;
      }
    }
    result.error = fmt::format("{}: not a pilecore plugin: it exports no '{}' symbol. "
                               "A plugin declares itself with PILECORE_PLUGIN(...) from <pilecore/plugin.hpp>.", f, PILECORE_ENTRY_SYMBOL_NAME);
    return result;
  }
  const auto& d = lib->get_alias<const PluginDescriptor>(PILECORE_ENTRY_SYMBOL_NAME);
  auto loaded = std::make_shared<LoadedPlugin>();
  result.error = check_descriptor(file, d, loaded->config_fields);
  if (!result.error.empty()) return result;
  loaded->name = d.name;
  loaded->file = file;
  loaded->descriptor = &d;
  loaded->library = lib;
  result.plugin = std::move(loaded);
  return result;
}

PluginRegistry::PluginRegistry(std::vector<fs::path> dirs) : dirs_(std::move(dirs)) {}

std::vector<std::string> PluginRegistry::installed() const {
  std::set<std::string> names;
  for (const auto& dir : dirs_) {
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      if (it->path().extension() == ".so" && it->is_regular_file(ec)) names.insert(it->path().stem().string());
    }
  }
  return {names.begin(), names.end()};
}

std::optional<fs::path> PluginRegistry::find(std::string_view name) const {
  for (const auto& dir : dirs_) {
    std::error_code ec;
    auto p = dir / (std::string(name) + ".so");
    if (fs::is_regular_file(p, ec)) return p;
  }
  return std::nullopt;
}

LoadResult PluginRegistry::load(std::string_view name) {
  if (auto it = cache_.find(name); it != cache_.end()) return it->second;
  LoadResult r;
  auto file = find(name);
  if (!file) {
    // Not cached: a name that is not installed costs only a stat, and caching every name ever
    // asked for would let a hostile site file grow the cache without bound.
    r.error = fmt::format("plugin '{}' is not installed", name);
    return r;
  }
  r = load_plugin_file(*file);
  cache_.emplace(std::string(name), r);
  return r;
}

}  // namespace pilecore::core
