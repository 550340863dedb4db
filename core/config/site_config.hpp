// The site file: one YAML file per deployment site, validated before any plugin starts.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "crash_records.hpp"
#include "diagnostics.hpp"
#include "identity_config.hpp"
#include "uplink_config.hpp"
#include "plugin_loader.hpp"
#include "schema.hpp"
#include "session_config.hpp"

namespace pilecore::core {

struct ConnectorConfig {
  std::uint32_t id = 0;
  std::string type;
  std::int64_t max_power_w = 0;
  std::string power;  // power stage instance (default: the power instance bound to this connector)
  std::string meter;  // instance whose energy_import channel bills this connector (default: the power stage)
};

/// The validated values of one plugin instance (or one nested object); implements the SDK's
/// ConfigValues.
class InstanceConfig final : public ConfigValues {
 public:
  InstanceConfig() = default;
  InstanceConfig(const std::vector<Field>& fields, const YAML::Node& block);

  [[nodiscard]] bool has(std::string_view key) const noexcept override;
  [[nodiscard]] std::optional<std::string_view> get_string(std::string_view key) const noexcept override;
  [[nodiscard]] std::optional<std::int64_t> get_integer(std::string_view key) const noexcept override;
  [[nodiscard]] std::optional<double> get_number(std::string_view key) const noexcept override;
  [[nodiscard]] std::optional<bool> get_boolean(std::string_view key) const noexcept override;
  [[nodiscard]] std::optional<std::vector<std::string>> get_string_list(std::string_view key) const override;
  [[nodiscard]] std::optional<std::vector<std::int64_t>> get_integer_list(std::string_view key) const override;
  [[nodiscard]] const ConfigValues* get_object(std::string_view key) const noexcept override;
  [[nodiscard]] std::optional<std::vector<const ConfigValues*>> get_object_list(std::string_view key) const override;
  /// key -> value as text, secrets masked (for logs and pilectl); nested keys as "a.b", "a[0].b".
  [[nodiscard]] std::map<std::string, std::string> describe(const std::vector<Field>& fields) const;

 private:
  void describe_into(const std::vector<Field>& fields, const std::string& prefix, std::map<std::string, std::string>& out) const;

  std::map<std::string, Value, std::less<>> values_;
  std::map<std::string, std::unique_ptr<const InstanceConfig>, std::less<>> objects_;
  std::map<std::string, std::vector<std::unique_ptr<const InstanceConfig>>, std::less<>> object_lists_;
};

struct InstanceSpec {
  std::string name;
  std::string plugin;
  std::optional<std::uint32_t> connector;
  std::shared_ptr<const LoadedPlugin> loaded;
  std::shared_ptr<const InstanceConfig> config;
  bool isolate = false;                    // in its own process (core/isolation)
  std::int64_t isolate_memory_mb = 256;    // that process's address-space cap; 0: none
  std::vector<std::string> isolate_paths;  // what it may write besides its state directory
  std::int64_t risk_deadline_ms = 0;       // risk instances: 0 takes payment.risk_timeout_ms
  std::string risk_on_failure = "step_up"; // risk instances: allow, step_up or deny on a failure
};

/// The `storage` section's keys for a disk that fills (the database's path is SiteConfig::database).
struct StorageSettings {
  int checkpoint_pause_after = 3;                 ///< consecutive failed checkpoints before charging pauses
  std::int64_t low_disk_bytes = 64 * 1024 * 1024;  ///< free bytes below which storage.low_disk is raised; 0: never
  Duration disk_check_interval = std::chrono::seconds(60);
};

struct SiteConfig {
  std::filesystem::path file;
  /// The text the site was loaded from: a reload compares it with the new file's text (what
  /// changed, what waits for a restart) without reading either file a second time.
  std::string text;
  std::string id;
  std::string name;
  double latitude = 0;
  double longitude = 0;
  std::string timezone;
  std::vector<ConnectorConfig> connectors;
  std::vector<InstanceSpec> instances;  // in file order
  std::string database;                 // as written; relative paths are under the state dir
  StorageSettings storage;              // the rest of the `storage` section
  std::string log_level;
  CrashPolicy crash_policy;  // the `containment` section: when a crashing instance is quarantined
  SessionConfig session;
  std::optional<IdentityConfig> identity;  // the `identity` section, when the file has one: the ledger is kept
  UplinkConfig uplink;                     // the `links` section: link per uplink class, the outbox's bound
};

/// Checks that `node` (a scalar) names an instance in `plugins` of one of `kinds`, and reports
/// at the node, with a "did you mean", when it does not. `named` holds every instance name in
/// the file, `instances` those whose plugin loaded (whose kind is known): a name whose plugin was
/// refused is not reported again. Returns whether the reference is good.
bool check_instance_reference(const YAML::Node& node, const std::string& path, std::initializer_list<Kind> kinds,
                              const std::vector<InstanceSpec>& instances, const std::vector<std::string>& named, Diagnostics& diags);

/// The schema of the core's own sections (plugins' config blocks are checked separately).
const Field& site_schema();

/// The full JSON Schema for site files, with every plugin in `plugins` described.
nlohmann::json site_json_schema(const std::vector<std::shared_ptr<const LoadedPlugin>>& plugins);

/// Whether `name` is a time zone in the system's tz database (/usr/share/zoneinfo).
bool is_known_time_zone(std::string_view name);

struct LoadOutcome {
  std::optional<SiteConfig> site;  // set only when there are no errors
  Diagnostics diagnostics;
};

/// Reads, parses and validates a site file completely, loading the plugins it names from
/// `registry` to validate their configuration. Every problem is reported, not just the first.
LoadOutcome load_site(const std::filesystem::path& file, PluginRegistry& registry);
/// Same, from text already in memory; `display_name` is used in diagnostics.
LoadOutcome load_site_text(const std::string& text, const std::string& display_name, PluginRegistry& registry);

}  // namespace pilecore::core
