#include "site_changes.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <map>
#include <set>

namespace pilecore::core {
namespace {

// Canonical text of a node: yaml-cpp's emitter drops comments and normalises layout, so two
// nodes print the same exactly when they hold the same data.
std::string canonical(const YAML::Node& n) {
  if (!n.IsDefined() || n.IsNull()) return {};
  YAML::Emitter out;
  out << n;
  return out.c_str();
}

// The mapping's keys in file order, with their values.
std::vector<std::pair<std::string, YAML::Node>> entries(const YAML::Node& map) {
  std::vector<std::pair<std::string, YAML::Node>> out;
  if (!map.IsMap()) return out;
  for (const auto& kv : map) out.emplace_back(kv.first.as<std::string>(), kv.second);
  return out;
}

// The sections named key by key: plugins by instance, and payment and charging, some of whose
// keys a reload applies.
bool by_key(const std::string& section) { return section == "plugins" || section == "payment" || section == "charging"; }

void compare(const YAML::Node& before, const YAML::Node& after, const std::string& prefix, bool per_key, std::vector<std::string>& out) {
  const auto old_entries = entries(before), new_entries = entries(after);
  std::map<std::string, YAML::Node> old_by_key(old_entries.begin(), old_entries.end());
  std::map<std::string, YAML::Node> new_by_key(new_entries.begin(), new_entries.end());
  for (const auto& [key, value] : new_entries) {
    const auto it = old_by_key.find(key);
    const std::string name = prefix + key;
    if (per_key && by_key(key)) {
      compare(it == old_by_key.end() ? YAML::Node() : it->second, value, key + ".", false, out);
      continue;
    }
    if (it == old_by_key.end() || canonical(it->second) != canonical(value)) out.push_back(name);
  }
  for (const auto& [key, value] : old_entries) {
    if (new_by_key.count(key) != 0) continue;
    if (per_key && by_key(key)) {
      compare(value, YAML::Node(), key + ".", false, out);
      continue;
    }
    out.push_back(prefix + key);
  }
}

}  // namespace

std::vector<std::string> changed_settings(const std::string& old_text, const std::string& new_text) {
  std::vector<std::string> out;
  compare(YAML::Load(old_text), YAML::Load(new_text), "", true, out);
  return out;
}

bool applies_on_reload(const std::string& setting) {
  // Read when a session starts, or when the pile stops or starts: a new value never changes a
  // session in progress (Runtime::reload).
  static const std::set<std::string> applied = {"tariffs",
                                                "log",
                                                "payment.preauth_fen",
                                                "payment.autostart",
                                                "charging.on_planned_stop",
                                                "charging.resume_within_s",
                                                "charging.resume_plug_wait_s"};
  return applied.count(setting) > 0;
}

}  // namespace pilecore::core
