// What pilectl needs beyond time_view.hpp to show times in the site's zone.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "time_view.hpp"

namespace pilecore::core {

/// `site.timezone` of a site file, read without loading its plugins (a file that names a
/// plugin not installed here still has a time zone). nullopt when the file cannot be read or
/// has none; `error` then says why.
std::optional<std::string> site_file_time_zone(const std::filesystem::path& file, std::string* error = nullptr);

}  // namespace pilecore::core
