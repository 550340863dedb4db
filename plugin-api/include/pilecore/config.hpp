// pilecore plugin SDK: configuration declarations and validated values.
//
// A plugin declares its configuration as data: one ConfigKey per key. The core validates the
// site YAML against these declarations before any plugin starts, reporting every problem with
// file:line:column, and generates the JSON Schema and the integrator reference from the same
// declarations. A plugin therefore never parses YAML and never sees an invalid value. What the
// declarations cannot express (a file that must exist, a formula that must compile, keys that
// exclude each other) a plugin checks in its validate function, reporting through ConfigReport.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace pilecore {
inline namespace v2 {

/// The plugin kinds (defined in plugin.hpp); named here so that a key can refer to an instance
/// of a given kind.
enum class Kind : std::uint32_t;

enum class ConfigType : std::uint32_t {
  string = 1,
  integer = 2,      ///< a whole number (int64); min/max apply
  number = 3,       ///< a real number; min/max apply. Never use this for money or energy.
  boolean = 4,
  enumeration = 5,  ///< a string out of `allowed`
  string_list = 6,  ///< a YAML sequence of strings
  integer_list = 7, ///< a YAML sequence of whole numbers; min/max apply to each item
  object = 8,       ///< a mapping whose keys are declared in `fields` (nested keys)
  object_list = 9,  ///< a YAML sequence of such mappings
  instance_ref = 10,  ///< the name of another instance in the site's `plugins`, of kind `ref_kind`
};

inline constexpr double config_unbounded = std::numeric_limits<double>::infinity();

/// One configuration key. Aggregate, so plugins write it with designated initialisers:
///   {.key = "port", .type = ConfigType::integer, .default_value = "502", .min = 1, .max = 65535,
///    .description = "Modbus TCP port"}
///   {.key = "reader", .type = ConfigType::instance_ref, .required = true,
///    .description = "The card reader at this connector", .ref_kind = Kind::sensor}
///   {.key = "registers", .type = ConfigType::object_list, .description = "...",
///    .fields = register_keys, .field_count = std::size(register_keys)}
/// Append-only: new members are added at the end, and PluginDescriptor::config_key_size tells
/// the core how large the plugin's ConfigKey is.
struct ConfigKey {
  const char* key = nullptr;          ///< [a-z][a-z0-9_]*
  ConfigType type = ConfigType::string;
  const char* default_value = nullptr;  ///< YAML text of the default; nullptr = no default
  double min = -config_unbounded;     ///< integer, number and integer_list only (inclusive)
  double max = config_unbounded;      ///< integer, number and integer_list only (inclusive)
  const char* allowed = nullptr;      ///< enumeration: values separated by '|', e.g. "tcp|rtu"
  bool required = false;              ///< must be given in the site file (no default allowed)
  bool secret = false;                ///< never logged, shown as *** by pilectl
  const char* description = nullptr;  ///< one sentence for the integrator reference
  const char* unit = nullptr;         ///< e.g. "ms", "W", "Wh"; nullptr if none
  const ConfigKey* fields = nullptr;  ///< object and object_list: the nested keys
  std::uint32_t field_count = 0;      ///< how many `fields`
  Kind ref_kind{};                    ///< instance_ref: the kind the named instance must be
};

/// Thrown by the convenience getters below when a plugin asks for a key it did not declare or
/// with the wrong type: a programming error in the plugin, contained by the host.
class ConfigError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

/// The validated configuration of one plugin instance (or of one nested object). Declared
/// defaults are already filled in, so a key with a default or `required` always has a value.
/// Immutable for the instance's life; readable from any thread.
class ConfigValues {
 public:
  virtual ~ConfigValues() = default;
  [[nodiscard]] virtual bool has(std::string_view key) const noexcept = 0;
  /// Also the value of an enumeration and of an instance_ref (the instance's name).
  [[nodiscard]] virtual std::optional<std::string_view> get_string(std::string_view key) const noexcept = 0;
  [[nodiscard]] virtual std::optional<std::int64_t> get_integer(std::string_view key) const noexcept = 0;
  [[nodiscard]] virtual std::optional<double> get_number(std::string_view key) const noexcept = 0;
  [[nodiscard]] virtual std::optional<bool> get_boolean(std::string_view key) const noexcept = 0;
  [[nodiscard]] virtual std::optional<std::vector<std::string>> get_string_list(std::string_view key) const = 0;
  [[nodiscard]] virtual std::optional<std::vector<std::int64_t>> get_integer_list(std::string_view key) const = 0;
  /// An `object` key's values; nullptr when the key is absent or not an object. Lives as long as
  /// this object.
  [[nodiscard]] virtual const ConfigValues* get_object(std::string_view key) const noexcept = 0;
  /// An `object_list` key's items, in file order; nullopt when absent. The pointers live as long
  /// as this object.
  [[nodiscard]] virtual std::optional<std::vector<const ConfigValues*>> get_object_list(std::string_view key) const = 0;

  // Getters for keys that always have a value (declared with a default or required).
  [[nodiscard]] std::string string(std::string_view key) const { return std::string(need(get_string(key), key)); }
  [[nodiscard]] std::int64_t integer(std::string_view key) const { return need(get_integer(key), key); }
  [[nodiscard]] double number(std::string_view key) const { return need(get_number(key), key); }
  [[nodiscard]] bool boolean(std::string_view key) const { return need(get_boolean(key), key); }
  [[nodiscard]] std::vector<std::string> string_list(std::string_view key) const { return need(get_string_list(key), key); }
  [[nodiscard]] std::vector<std::int64_t> integer_list(std::string_view key) const { return need(get_integer_list(key), key); }
  [[nodiscard]] const ConfigValues& object(std::string_view key) const { return *need(std::optional<const ConfigValues*>(get_object(key)), key); }
  [[nodiscard]] std::vector<const ConfigValues*> object_list(std::string_view key) const { return need(get_object_list(key), key); }

 private:
  template <class T>
  static T need(std::optional<T> v, std::string_view key) {
    if (!v || !has_value(*v)) throw ConfigError("configuration key '" + std::string(key) + "' has no value of the requested type");
    return std::move(*v);
  }
  template <class T>
  static bool has_value(const T& v) {
    if constexpr (std::is_pointer_v<T>) {
      return v != nullptr;
    } else {
      return true;
    }
  }
};

/// Where a plugin's validate function (see PILECORE_PLUGIN in plugin.hpp) reports what is wrong
/// with an instance's configuration. The core turns `key` into the file:line:column of its value
/// in the site file (or of the instance's config block, when the key was not written), so the
/// integrator is told where to look before anything starts. `key` is one of the plugin's declared
/// keys; inside objects and object lists it is a path: "registers[2].address", "tls.ca_file".
class ConfigReport {
 public:
  virtual ~ConfigReport() = default;
  /// A problem that stops the site from starting. The message says what is wrong and what to
  /// write instead; the core prefixes the key's path.
  virtual void error(std::string_view key, std::string_view message) noexcept = 0;
  /// Worth knowing, not fatal.
  virtual void warning(std::string_view key, std::string_view message) noexcept = 0;
};

}  // namespace v2
}  // namespace pilecore
