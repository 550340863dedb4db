#include "site_config.hpp"

#include <yaml-cpp/depthguard.h>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <fmt/std.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <tuple>

namespace pilecore::core {
namespace fs = std::filesystem;

namespace {

Field group(std::string key, FieldType type, std::string description, std::vector<Field> fields, bool required = false) {
  return with_fields(field(std::move(key), type, std::move(description), required), std::move(fields));
}

Field reserved(std::string key, std::string filled_by) {
  Field f = field(std::move(key), FieldType::any_map, "Reserved for " + filled_by + "; not read by this version.");
  f.reserved_note = "this section is reserved for " + filled_by + " and is ignored by this version of pilecore";
  return f;
}

Field build_site_schema() {
  Field id = field("id", FieldType::string, "Site identifier, unique within the operator", true);
  id.pattern = "[A-Za-z0-9][A-Za-z0-9._-]{0,63}";
  id.pattern_hint = "use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit";
  Field tz = field("timezone", FieldType::string, "IANA time zone for tariff periods and the settlement day, e.g. Asia/Shanghai", true);
  Field site = group("site", FieldType::object, "Where this pile is",
                     {id, field("name", FieldType::string, "Human-readable site name", true),
                      group("location", FieldType::object, "Geographic position (WGS 84)",
                            {with_range(field("lat", FieldType::number, "Latitude in degrees", true), -90, 90, "deg"),
                             with_range(field("lon", FieldType::number, "Longitude in degrees", true), -180, 180, "deg")},
                            true),
                      tz},
                     true);
  Field ctype = field("type", FieldType::enumeration, "Connector standard", true);
  ctype.allowed = {"gbt-dc", "gbt-ac", "ccs1", "ccs2", "type1", "type2", "chademo"};
  Field connectors = group("connectors", FieldType::list, "The pile's connectors (plugs)",
                           {with_range(field("id", FieldType::integer, "Connector number, as printed on the pile (OCPP connectorId)", true), 1, 255),
                            ctype,
                            with_range(field("max_power_w", FieldType::integer, "Most power this connector may deliver", true), 1000, 1000000, "W"),
                            [] {
                              Field f = field("power", FieldType::instance_ref, "Power stage instance (default: the power instance bound to this connector)");
                              f.ref_kind = "power";
                              return f;
                            }(),
                            field("meter", FieldType::string, "Instance whose energy_import channel bills this connector (default: the power stage)")},
                           true);
  connectors.min_items = 1;
  Field instance_connector = with_range(field("connector", FieldType::integer, "The connector this instance serves (power, sensor, indicator)"), 1, 255);
  Field risk_on_failure = with_default(field("risk_on_failure", FieldType::enumeration,
                                             "Risk instances only: the verdict that stands for this rule when it fails (no answer by its "
                                             "deadline, not running, a history it could not read) (docs/risk.md)"),
                                       "step_up");
  risk_on_failure.allowed = {"allow", "step_up", "deny"};
  Field plugins = group("plugins", FieldType::map, "Plugin instances by name",
                        {field("plugin", FieldType::string, "Which installed plugin this instance runs (see `pilectl plugins list`)", true),
                         instance_connector,
                         field("config", FieldType::any_map, "The plugin's own keys (see `pilectl plugins show PLUGIN`)"),
                         with_default(field("isolate", FieldType::boolean,
                                            "Run this instance in its own sandboxed process (pilecore-plugin-host): its crash or hang fails "
                                            "only the instance, which is restarted with backoff (docs/plugin-guide.md, Isolation)"),
                                      "false"),
                         with_default(with_range(field("isolate_memory_mb", FieldType::integer,
                                                       "Isolated only: the address space the instance's process may use; 0 for no cap"),
                                                 0, 65536, "MiB"),
                                      "256"),
                         field("isolate_paths", FieldType::string_list,
                               "Isolated only: absolute paths (devices, sockets, directories) the process may read and write besides its state "
                               "directory"),
                         with_default(with_range(field("risk_deadline_ms", FieldType::integer,
                                                       "Risk instances only: how long the rule may take to answer; 0 takes "
                                                       "payment.risk_timeout_ms (docs/risk.md)"),
                                                 0, 600000, "ms"),
                                      "0"),
                         risk_on_failure},
                        true);
  plugins.key_pattern = "[a-z0-9][a-z0-9_-]{0,31}";
  plugins.pattern_hint = "use 1 to 32 lower case letters, digits, '_' or '-', starting with a letter or digit";
  plugins.min_items = 1;
  Field storage = group(
      "storage", FieldType::object, "Where pilecore keeps its state, and what it does when the disk fills (docs/integrator-guide.md)",
      {with_default(field("database", FieldType::string, "SQLite database; a relative path is under the state directory"), "pilecore.db"),
       with_default(with_range(field("checkpoint_pause_after", FieldType::integer,
                                     "Consecutive meter checkpoints that cannot be committed (a full disk) after which charging pauses "
                                     "(setpoint 0, connectors SuspendedEVSE, sessions kept); it resumes when a checkpoint commits again"),
                               1, 1000, ""),
                    "3"),
       with_default(with_range(field("low_disk_bytes", FieldType::integer,
                                     "Free space of the state directory's file system below which the storage.low_disk alarm is "
                                     "raised (cleared above it); 0: no alarm"),
                               0, 1e15, "bytes"),
                    "67108864"),
       with_default(with_range(field("disk_check_interval_s", FieldType::integer, "How often the free space of the state directory is checked"), 1,
                               86400, "s"),
                    "60")});
  Field level = with_default(field("level", FieldType::enumeration, "Least severe log level written"), "info");
  level.allowed = {"trace", "debug", "info", "warn", "error"};
  Field log = group("log", FieldType::object, "Logging", {level});
  Field containment = group(
      "containment", FieldType::object, "What pilecored does about a plugin instance that crashes it or hangs it (docs/integrator-guide.md)",
      {with_default(with_range(field("quarantine_after", FieldType::integer,
                                     "Crashes (or hangs ended by the watchdog) of one instance within crash_window_s after which it starts "
                                     "disabled, its connector Unavailable, until `pilectl plugins enable`"),
                               1, 100),
                    "3"),
       with_default(with_range(field("crash_window_s", FieldType::integer, "The window in which an instance's crashes are counted"), 10, 604800, "s"), "600")});
  Field root = group("", FieldType::object, "pilecore site file",
                     {site, connectors, plugins, storage, log, containment, tariffs_field(), payment_field(), charging_field(),
                      reserved("risk", "the risk engine"), links_schema(),
                      identity_schema()});
  return root;
}

std::string read_file(const fs::path& file, std::string& error) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    error = fmt::format("cannot read the file: {}", std::strerror(errno));
    return {};
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string join_paths(const std::vector<fs::path>& paths) {
  std::string out;
  for (const auto& p : paths) out += (out.empty() ? "" : ", ") + p.string();
  return out;
}

std::string value_text(const Value& v) {
  struct {
    std::string operator()(std::monostate) const { return "(none)"; }
    std::string operator()(const std::string& s) const { return s; }
    std::string operator()(std::int64_t i) const { return std::to_string(i); }
    std::string operator()(double d) const { return fmt::format("{}", d); }
    std::string operator()(bool b) const { return b ? "true" : "false"; }
    std::string operator()(const std::vector<std::string>& l) const { return fmt::format("[{}]", fmt::join(l, ", ")); }
    std::string operator()(const std::vector<std::int64_t>& l) const { return fmt::format("[{}]", fmt::join(l, ", ")); }
  } visitor;
  return std::visit(visitor, v);
}

/// The node at `path` ("a", "a.b", "a[2].b") under `block`; undefined when not written.
YAML::Node locate(const YAML::Node& block, std::string_view path) {
  YAML::Node node = block;
  std::size_t i = 0;
  while (i < path.size() && node.IsDefined()) {
    if (path[i] == '.') {
      ++i;
      continue;
    }
    if (path[i] == '[') {
      const auto end = path.find(']', i);
      if (end == std::string_view::npos) return YAML::Node(YAML::NodeType::Undefined);
      std::size_t index = 0;
      const auto [ptr, ec] = std::from_chars(path.data() + i + 1, path.data() + end, index);
      if (ec != std::errc() || ptr != path.data() + end || !node.IsSequence() || index >= node.size()) return YAML::Node(YAML::NodeType::Undefined);
      node = node[index];
      i = end + 1;
      continue;
    }
    const auto end = path.find_first_of(".[", i);
    const std::string_view key = path.substr(i, end == std::string_view::npos ? std::string_view::npos : end - i);
    node = member(node, key);
    i = end == std::string_view::npos ? path.size() : end;
  }
  return node;
}

/// What a plugin's validate reports, turned into diagnostics at the key's place in the file.
class SiteReport final : public ConfigReport {
 public:
  SiteReport(Diagnostics& diags, YAML::Node block, Position fallback, std::string path)
      : diags_(diags), block_(std::move(block)), fallback_(fallback), path_(std::move(path)) {}

  void error(std::string_view key, std::string_view message) noexcept override { add(Severity::error, key, message); }
  void warning(std::string_view key, std::string_view message) noexcept override { add(Severity::warning, key, message); }

 private:
  void add(Severity severity, std::string_view key, std::string_view message) noexcept {
    try {
      const YAML::Node node = key.empty() ? block_ : locate(block_, key);
      Position pos = position_of(node);
      if (pos.line == 0) pos = fallback_;
      const std::string where = key.empty() ? path_ : fmt::format("{}.{}", path_, key);
      diags_.add(pos, severity, fmt::format("'{}': {}", where, message));
    } catch (...) {
      // Out of memory while reporting: the error count still says the file is not valid.
      if (severity == Severity::error) diags_.error(fallback_, "a plugin reported a problem that could not be recorded");
    }
  }

  Diagnostics& diags_;
  YAML::Node block_;
  Position fallback_;
  std::string path_;
};

/// Every instance_ref value in a config block, with its path, for the wiring check.
void collect_references(const std::vector<Field>& fields, const YAML::Node& block, const std::string& path,
                        std::vector<std::tuple<YAML::Node, std::string, std::string>>& out) {
  for (const auto& f : fields) {
    const YAML::Node node = member(block, f.key);
    if (!node.IsDefined()) continue;
    const std::string here = path + "." + f.key;
    if (f.type == FieldType::instance_ref && node.IsScalar()) out.emplace_back(node, here, f.ref_kind);
    if (f.type == FieldType::object && node.IsMap()) collect_references(f.fields, node, here, out);
    if (f.type == FieldType::list && node.IsSequence()) {
      for (std::size_t i = 0; i < node.size(); ++i) collect_references(f.fields, node[i], fmt::format("{}[{}]", here, i), out);
    }
  }
}

std::optional<Kind> kind_named(std::string_view name) {
  for (auto k = static_cast<std::uint32_t>(Kind::payment); k <= static_cast<std::uint32_t>(Kind::strategy); ++k) {
    if (to_string(static_cast<Kind>(k)) == name) return static_cast<Kind>(k);
  }
  return std::nullopt;
}

}  // namespace

bool check_instance_reference(const YAML::Node& node, const std::string& path, std::initializer_list<Kind> kinds,
                              const std::vector<InstanceSpec>& instances, const std::vector<std::string>& named, Diagnostics& diags) {
  if (!node.IsScalar()) return false;
  const std::string& name = node.Scalar();
  std::vector<std::string> kind_names, candidates;
  for (Kind k : kinds) kind_names.emplace_back(to_string(k));
  const InstanceSpec* target = nullptr;
  for (const auto& i : instances) {
    if (!i.loaded) continue;
    if (i.name == name) target = &i;
    if (std::find(kinds.begin(), kinds.end(), i.loaded->descriptor->kind) != kinds.end()) candidates.push_back(i.name);
  }
  const std::string wanted = fmt::format("{}", fmt::join(kind_names, " or "));
  const std::string listing = candidates.empty() ? fmt::format("there is no {} instance", wanted)
                                                 : fmt::format("{} instances: {}", wanted, fmt::join(candidates, ", "));
  if (target == nullptr) {
    if (std::find(named.begin(), named.end(), name) != named.end()) return false;  // its plugin was refused: reported there
    diags.error(position_of(node), fmt::format("'{}' is '{}', but there is no instance of that name in 'plugins'; {}{}", path, name,
                                               suggestion(name, candidates), listing));
    return false;
  }
  const Kind actual = target->loaded->descriptor->kind;
  if (std::find(kinds.begin(), kinds.end(), actual) == kinds.end()) {
    const std::string_view actual_name = to_string(actual);
    const bool vowel = !actual_name.empty() && std::string_view("aeiou").find(actual_name.front()) != std::string_view::npos;
    diags.error(position_of(node), fmt::format("'{}' is '{}', {} {} instance ({}), but it must name a {} instance; {}", path, name,
                                               vowel ? "an" : "a", actual_name, target->plugin, wanted, listing));
    return false;
  }
  return true;
}

const Field& site_schema() {
  static const Field schema = build_site_schema();
  return schema;
}

bool is_known_time_zone(std::string_view name) {
  static const std::regex re("[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*");
  if (name.empty() || name.size() > 64 || !std::regex_match(name.begin(), name.end(), re)) return false;
  const fs::path p = fs::path("/usr/share/zoneinfo") / std::string(name);
  std::ifstream in(p, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::string_view(magic, 4) == "TZif";
}

InstanceConfig::InstanceConfig(const std::vector<Field>& fields, const YAML::Node& block) {
  for (const auto& f : fields) {
    const YAML::Node node = member(block, f.key);
    if (f.type == FieldType::object) {
      if (node.IsMap()) objects_.emplace(f.key, std::make_unique<const InstanceConfig>(f.fields, node));
      continue;
    }
    if (f.type == FieldType::list) {
      if (!node.IsSequence()) continue;
      std::vector<std::unique_ptr<const InstanceConfig>> items;
      for (const auto& item : node) items.push_back(std::make_unique<const InstanceConfig>(f.fields, item));
      object_lists_.emplace(f.key, std::move(items));
      continue;
    }
    Value v;
    if (node.IsDefined() && !node.IsNull()) {
      if (parse_value(f, node, v)) v = std::monostate{};
    } else {
      v = default_value(f);
    }
    if (!std::holds_alternative<std::monostate>(v)) values_.emplace(f.key, std::move(v));
  }
}

bool InstanceConfig::has(std::string_view key) const noexcept {
  return values_.find(key) != values_.end() || objects_.find(key) != objects_.end() || object_lists_.find(key) != object_lists_.end();
}

template <class T>
static std::optional<T> get_as(const std::map<std::string, Value, std::less<>>& values, std::string_view key) {
  auto it = values.find(key);
  if (it == values.end()) return std::nullopt;
  if (const auto* p = std::get_if<T>(&it->second)) return *p;
  return std::nullopt;
}

std::optional<std::string_view> InstanceConfig::get_string(std::string_view key) const noexcept {
  auto it = values_.find(key);
  if (it == values_.end()) return std::nullopt;
  if (const auto* p = std::get_if<std::string>(&it->second)) return std::string_view(*p);
  return std::nullopt;
}
std::optional<std::int64_t> InstanceConfig::get_integer(std::string_view key) const noexcept { return get_as<std::int64_t>(values_, key); }
std::optional<double> InstanceConfig::get_number(std::string_view key) const noexcept {
  if (auto i = get_as<std::int64_t>(values_, key)) return static_cast<double>(*i);
  return get_as<double>(values_, key);
}
std::optional<bool> InstanceConfig::get_boolean(std::string_view key) const noexcept { return get_as<bool>(values_, key); }
std::optional<std::vector<std::string>> InstanceConfig::get_string_list(std::string_view key) const {
  return get_as<std::vector<std::string>>(values_, key);
}

std::optional<std::vector<std::int64_t>> InstanceConfig::get_integer_list(std::string_view key) const {
  return get_as<std::vector<std::int64_t>>(values_, key);
}

const ConfigValues* InstanceConfig::get_object(std::string_view key) const noexcept {
  auto it = objects_.find(key);
  return it == objects_.end() ? nullptr : it->second.get();
}

std::optional<std::vector<const ConfigValues*>> InstanceConfig::get_object_list(std::string_view key) const {
  auto it = object_lists_.find(key);
  if (it == object_lists_.end()) return std::nullopt;
  std::vector<const ConfigValues*> out;
  out.reserve(it->second.size());
  for (const auto& item : it->second) out.push_back(item.get());
  return out;
}

void InstanceConfig::describe_into(const std::vector<Field>& fields, const std::string& prefix, std::map<std::string, std::string>& out) const {
  for (const auto& f : fields) {
    const std::string name = prefix + f.key;
    if (auto o = objects_.find(f.key); o != objects_.end()) o->second->describe_into(f.fields, name + ".", out);
    if (auto l = object_lists_.find(f.key); l != object_lists_.end()) {
      for (std::size_t i = 0; i < l->second.size(); ++i) l->second[i]->describe_into(f.fields, fmt::format("{}[{}].", name, i), out);
    }
    auto it = values_.find(f.key);
    if (it == values_.end()) continue;
    out[name] = f.secret ? "***" : value_text(it->second);
  }
}

std::map<std::string, std::string> InstanceConfig::describe(const std::vector<Field>& fields) const {
  std::map<std::string, std::string> out;
  describe_into(fields, "", out);
  return out;
}

nlohmann::json site_json_schema(const std::vector<std::shared_ptr<const LoadedPlugin>>& plugins) {
  nlohmann::json j = to_json_schema(site_schema());
  j["$schema"] = "http://json-schema.org/draft-07/schema#";
  j["$id"] = "https://pilecore.example/schema/site.schema.json";
  j["title"] = "pilecore site file";
  auto& instance = j["properties"]["plugins"]["additionalProperties"];
  std::vector<std::string> names;
  nlohmann::json all_of = nlohmann::json::array();
  for (const auto& p : plugins) {
    names.push_back(p->name);
    Field config = group("config", FieldType::object, fmt::format("Configuration of {} {}", p->name, p->descriptor->version), p->config_fields);
    nlohmann::json branch;
    branch["if"] = {{"properties", {{"plugin", {{"const", p->name}}}}}, {"required", {"plugin"}}};
    branch["then"] = {{"properties", {{"config", to_json_schema(config)}}}};
    bool any_required = false;
    for (const auto& f : p->config_fields) any_required = any_required || f.required;
    if (any_required) branch["then"]["required"] = {"config"};
    all_of.push_back(branch);
  }
  if (!names.empty()) {
    instance["properties"]["plugin"]["enum"] = names;
    instance["properties"]["plugin"].erase("type");
    instance["allOf"] = all_of;
  }
  return j;
}

LoadOutcome load_site(const fs::path& file, PluginRegistry& registry) {
  std::string error;
  std::string text = read_file(file, error);
  if (!error.empty()) {
    LoadOutcome out{std::nullopt, Diagnostics(file.string())};
    out.diagnostics.error({}, error);
    return out;
  }
  auto out = load_site_text(text, file.string(), registry);
  if (out.site) out.site->file = file;
  return out;
}

LoadOutcome load_site_text(const std::string& text, const std::string& display_name, PluginRegistry& registry) {
  LoadOutcome out{std::nullopt, Diagnostics(display_name)};
  Diagnostics& diags = out.diagnostics;
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::DeepRecursion& e) {
    diags.error({static_cast<std::size_t>(e.mark.line) + 1, static_cast<std::size_t>(e.mark.column) + 1},
                "YAML nested too deeply: a site file needs only a few levels; is a bracket or an indentation wrong?");
    return out;
  } catch (const YAML::ParserException& e) {
    diags.error({static_cast<std::size_t>(e.mark.line) + 1, static_cast<std::size_t>(e.mark.column) + 1},
                fmt::format("YAML syntax error: {}", e.msg));
    return out;
  } catch (const YAML::Exception& e) {
    diags.error({}, fmt::format("YAML error: {}", e.what()));
    return out;
  }
  if (root.IsNull() || !root.IsDefined()) {
    diags.error({1, 1}, "the file is empty; a site file needs at least 'site', 'connectors' and 'plugins' (see configs/sim-site.yaml)");
    return out;
  }
  if (!root.IsMap()) {
    diags.error(position_of(root), "a site file is a mapping with the keys site, connectors, plugins, storage, log, containment, tariffs, payment, charging, risk, links, identity");
    return out;
  }
  Validator validator(diags);
  validator.validate(site_schema(), root, "");

  // Semantic checks the schema cannot express.
  const YAML::Node site = member(root, "site");
  const YAML::Node tz = member(site, "timezone");
  if (tz.IsScalar() && !is_known_time_zone(tz.Scalar())) {
    diags.error(position_of(tz), fmt::format("'site.timezone' is '{}', which is not a time zone in /usr/share/zoneinfo; use an IANA name such as "
                                             "Asia/Shanghai or Europe/Berlin", tz.Scalar()));
  }
  std::set<std::int64_t> connector_ids;
  const YAML::Node connectors = member(root, "connectors");
  if (connectors.IsSequence()) {
    std::map<std::int64_t, std::size_t> first_line;
    for (const auto& c : connectors) {
      const YAML::Node idn = member(c, "id");
      Value v;
      if (!idn.IsScalar() || parse_value(site_schema().fields[1].fields[0], idn, v)) continue;
      const auto id = std::get<std::int64_t>(v);
      if (auto [it, fresh] = first_line.emplace(id, position_of(idn).line); !fresh) {
        diags.error(position_of(idn), fmt::format("duplicate connector id {} (first given at line {})", id, it->second));
      }
      connector_ids.insert(id);
    }
  }

  // Each plugin instance: is the plugin installed and acceptable, and is its config valid?
  std::vector<InstanceSpec> instances;
  const YAML::Node plugins = member(root, "plugins");
  std::set<std::string> seen_instances;
  for (const auto& m : members_of(plugins)) {
    if (!m.key_node.IsScalar() || !m.value.IsMap() || !seen_instances.insert(m.key).second) continue;
    InstanceSpec spec;
    spec.name = m.key;
    const YAML::Node plugin_node = member(m.value, "plugin");
    const YAML::Node connector_node = member(m.value, "connector");
    const YAML::Node config_node = member(m.value, "config");
    if (connector_node.IsScalar()) {
      // As the validator reads it (yaml-cpp's as<>() would read "010" as octal 8, and drop "09").
      std::int64_t c = -1;
      Value v;
      if (!parse_value(site_schema().fields[2].fields[1], connector_node, v)) c = std::get<std::int64_t>(v);
      if (c >= 1 && c <= 255) {
        if (!connectors.IsSequence() || connector_ids.count(c)) {
          spec.connector = static_cast<std::uint32_t>(c);
        } else {
          std::vector<std::string> ids;
          for (auto id : connector_ids) ids.push_back(std::to_string(id));
          diags.error(position_of(connector_node), fmt::format("'plugins.{}.connector' is {}, but there is no such connector; connectors: {}",
                                                               m.key, c, ids.empty() ? "none" : fmt::format("{}", fmt::join(ids, ", "))));
        }
      }
    }
    {
      const auto& fields = site_schema().fields[2].fields;
      Value v;
      if (const YAML::Node n = member(m.value, "isolate"); n.IsScalar() && !parse_value(fields[3], n, v)) spec.isolate = std::get<bool>(v);
      if (const YAML::Node n = member(m.value, "isolate_memory_mb"); n.IsScalar() && !parse_value(fields[4], n, v)) {
        spec.isolate_memory_mb = std::get<std::int64_t>(v);
      }
      if (const YAML::Node n = member(m.value, "isolate_paths"); n.IsSequence() && !parse_value(fields[5], n, v)) {
        spec.isolate_paths = std::get<std::vector<std::string>>(v);
      }
      if (const YAML::Node n = member(m.value, "risk_deadline_ms"); n.IsScalar() && !parse_value(fields[6], n, v)) {
        spec.risk_deadline_ms = std::get<std::int64_t>(v);
      }
      if (const YAML::Node n = member(m.value, "risk_on_failure"); n.IsScalar() && !parse_value(fields[7], n, v)) {
        spec.risk_on_failure = std::get<std::string>(v);
      }
    }
    if (!plugin_node.IsScalar()) continue;  // reported by the schema
    spec.plugin = plugin_node.Scalar();
    LoadResult loaded = registry.load(spec.plugin);
    if (!loaded.plugin) {
      if (!registry.find(spec.plugin)) {
        const auto installed = registry.installed();
        diags.error(position_of(plugin_node),
                    fmt::format("'plugins.{}.plugin': unknown plugin '{}'; {}installed plugins: {} (searched {})", m.key, spec.plugin,
                                suggestion(spec.plugin, installed), installed.empty() ? "none" : fmt::format("{}", fmt::join(installed, ", ")),
                                join_paths(registry.dirs())));
      } else {
        diags.error(position_of(plugin_node), fmt::format("'plugins.{}.plugin': plugin '{}' is refused: {}", m.key, spec.plugin, loaded.error));
      }
      continue;
    }
    Field config_field = group("config", FieldType::object, "", loaded.plugin->config_fields);
    const std::string path = fmt::format("plugins.{}.config", m.key);
    const std::size_t errors_before = diags.error_count();
    if (config_node.IsDefined()) {
      validator.validate(config_field, config_node, path);
    } else {
      // No config block: required keys are reported at the instance itself.
      const YAML::Node empty(YAML::NodeType::Map);
      validator.validate_members(config_field.fields, empty, path, position_of(m.value));
    }
    spec.loaded = loaded.plugin;
    spec.config = std::make_shared<InstanceConfig>(loaded.plugin->config_fields, config_node);
    // The plugin's own checks, on values that passed the declarations (so it never sees a key of
    // the wrong type): the same call in pilectl and pilecored, so "valid" means "starts".
    if (const ValidateFn validate = loaded.plugin->descriptor->validate; validate != nullptr && diags.error_count() == errors_before) {
      const Position at = config_node.IsDefined() && position_of(config_node).line ? position_of(config_node) : position_of(m.value);
      SiteReport report(diags, config_node.IsDefined() ? config_node : YAML::Node(YAML::NodeType::Map), at, path);
      validate(*spec.config, report);
    }
    instances.push_back(std::move(spec));
  }

  // Keys that name other instances: they must exist and be of the declared kind.
  std::vector<std::string> named;
  for (const auto& m : members_of(plugins)) {
    if (m.key_node.IsScalar()) named.push_back(m.key);
  }
  for (const auto& spec : instances) {
    std::vector<std::tuple<YAML::Node, std::string, std::string>> refs;
    collect_references(spec.loaded->config_fields, member(member(plugins, spec.name), "config"), fmt::format("plugins.{}.config", spec.name), refs);
    for (const auto& [node, where, kind] : refs) {
      if (const auto k = kind_named(kind)) check_instance_reference(node, where, {*k}, instances, named, diags);
    }
  }

  if (diags.has_errors()) {
    // The tariff's own mistakes are reported in the same run when its section is well-formed
    // (an integrator fixing a typo elsewhere should not discover them one run later).
    const YAML::Node tariffs = member(root, "tariffs");
    Diagnostics scratch(diags.file());
    Validator(scratch).validate(tariffs_field(), tariffs, "tariffs");
    if (tariffs.IsMap() && !scratch.has_errors() && tz.IsScalar() && is_known_time_zone(tz.Scalar())) parse_tariffs(tariffs, tz.Scalar(), diags);
    return out;
  }

  // Numbers are taken as the validator read them. yaml-cpp's as<>() reads a leading 0 as octal,
  // so "09" threw (std::terminate) and "07000" became 3584 (found by fuzz_site_config).
  const Field& schema = site_schema();
  const Field& location_schema = schema.fields[0].fields[2];
  const Field& connector_schema = schema.fields[1];
  auto number_of = [](const Field& f, const YAML::Node& node) {
    Value v;
    parse_value(f, node, v);
    if (const auto* i = std::get_if<std::int64_t>(&v)) return static_cast<double>(*i);
    return std::get<double>(v);
  };
  auto integer_of = [](const Field& f, const YAML::Node& node) {
    Value v;
    parse_value(f, node, v);
    return std::get<std::int64_t>(v);
  };
  SiteConfig cfg;
  cfg.id = member(site, "id").Scalar();
  cfg.name = member(site, "name").Scalar();
  cfg.latitude = number_of(location_schema.fields[0], member(member(site, "location"), "lat"));
  cfg.longitude = number_of(location_schema.fields[1], member(member(site, "location"), "lon"));
  cfg.timezone = tz.Scalar();
  for (const auto& c : connectors) {
    cfg.connectors.push_back(ConnectorConfig{static_cast<std::uint32_t>(integer_of(connector_schema.fields[0], member(c, "id"))),
                                             member(c, "type").Scalar(), integer_of(connector_schema.fields[2], member(c, "max_power_w")), {}, {}});
  }
  cfg.instances = std::move(instances);
  cfg.session = parse_session_config(root, cfg.timezone, cfg.connectors, cfg.instances, diags);
  if (diags.has_errors()) return out;
  const YAML::Node db = member(member(root, "storage"), "database");
  cfg.database = db.IsScalar() ? db.Scalar() : "pilecore.db";
  {
    const Field& sf = schema.fields[3];
    const YAML::Node s = member(root, "storage");
    if (const YAML::Node n = member(s, "checkpoint_pause_after"); n.IsDefined() && !n.IsNull()) cfg.storage.checkpoint_pause_after = static_cast<int>(integer_of(sf.fields[1], n));
    if (const YAML::Node n = member(s, "low_disk_bytes"); n.IsDefined() && !n.IsNull()) cfg.storage.low_disk_bytes = integer_of(sf.fields[2], n);
    if (const YAML::Node n = member(s, "disk_check_interval_s"); n.IsDefined() && !n.IsNull()) cfg.storage.disk_check_interval = std::chrono::seconds(integer_of(sf.fields[3], n));
  }
  const YAML::Node lvl = member(member(root, "log"), "level");
  cfg.log_level = lvl.IsScalar() ? lvl.Scalar() : "info";
  {
    const Field& cf = schema.fields[5];
    const YAML::Node c = member(root, "containment");
    if (const YAML::Node n = member(c, "quarantine_after"); n.IsDefined() && !n.IsNull()) cfg.crash_policy.limit = static_cast<int>(integer_of(cf.fields[0], n));
    if (const YAML::Node n = member(c, "crash_window_s"); n.IsDefined() && !n.IsNull()) cfg.crash_policy.window = std::chrono::seconds(integer_of(cf.fields[1], n));
  }
  if (const YAML::Node identity = member(root, "identity"); identity.IsDefined() && !identity.IsNull()) cfg.identity = identity_config(identity);
  cfg.uplink = parse_uplink_config(member(root, "links"), cfg.instances, diags);
  if (diags.has_errors()) return out;
  cfg.text = text;
  out.site = std::move(cfg);
  return out;
}

}  // namespace pilecore::core
