#include "cli_time.hpp"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

namespace pilecore::core {

std::optional<std::string> site_file_time_zone(const std::filesystem::path& file, std::string* error) {
  try {
    const YAML::Node root = YAML::LoadFile(file.string());
    const YAML::Node tz = root["site"] ? root["site"]["timezone"] : YAML::Node();
    if (tz && tz.IsScalar() && !tz.Scalar().empty()) return tz.Scalar();
    if (error) *error = fmt::format("{}: no site.timezone", file.string());
  } catch (const std::exception& e) {
    if (error) *error = fmt::format("{}: {}", file.string(), e.what());
  }
  return std::nullopt;
}

}  // namespace pilecore::core
