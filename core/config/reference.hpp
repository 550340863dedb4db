// Human-readable descriptions of the configuration, generated from the same declarations the
// validator uses: `pilectl plugins show` and the integrator's site file reference.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "plugin_loader.hpp"

namespace pilecore::core {

/// gst-inspect-style text for one plugin.
std::string plugin_description_text(const LoadedPlugin& plugin);
/// The whole site file reference in Markdown: the core's sections and every plugin's keys.
std::string site_reference_markdown(const std::vector<std::shared_ptr<const LoadedPlugin>>& plugins);

}  // namespace pilecore::core
