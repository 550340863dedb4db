// What a reload changes: the settings of a site file that differ from the running one's, named
// as an integrator reads them in the file ("tariffs", "plugins.meter-1", "connectors"), so the
// log can say which applied and which wait for a restart.
#pragma once

#include <string>
#include <vector>

namespace pilecore::core {

/// The sections (and, under `plugins`, the instances; under `payment` and `charging`, the keys) whose contents differ between two site
/// files, in the new file's order, then those only the old one has. Comments and layout do not
/// count. Both texts must be YAML (they passed load_site).
[[nodiscard]] std::vector<std::string> changed_settings(const std::string& old_text, const std::string& new_text);

/// Settings a reload applies to the running pile: the tariffs (to sessions that start from now
/// on), the log level, and the payment and charging keys read when a session starts or when the
/// pile stops or starts (the hold, autostart, the planned-stop settings). Every other change
/// takes effect at the next restart.
[[nodiscard]] bool applies_on_reload(const std::string& setting);

}  // namespace pilecore::core
