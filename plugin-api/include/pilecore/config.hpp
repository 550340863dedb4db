// pilecore plugin SDK: configuration declarations and validated values.
//
// A plugin declares its configuration as data: one ConfigKey per key. The core validates the
// site YAML against these declarations before any plugin starts, reporting every problem with
// file:line:column, and generates the JSON Schema and the integrator reference from the same
// declarations. A plugin therefore never parses YAML and never sees an invalid value.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace pilecore {
inline namespace v2 {

enum class ConfigType : std::uint32_t {
  string = 1,
  integer = 2,      ///< a whole number (int64); min/max apply
  number = 3,       ///< a real number; min/max apply. Never use this for money or energy.
  boolean = 4,
  enumeration = 5,  ///< a string out of `allowed`
  string_list = 6,  ///< a YAML sequence of strings
};

inline constexpr double config_unbounded = std::numeric_limits<double>::infinity();

/// One configuration key. Aggregate, so plugins write it with designated initialisers:
///   {.key = "port", .type = ConfigType::integer, .default_value = "502", .min = 1, .max = 65535,
///    .description = "Modbus TCP port"}
/// Append-only: new members are added at the end, and PluginDescriptor::config_key_size tells
/// the core how large the plugin's ConfigKey is.
struct ConfigKey {
  const char* key = nullptr;          ///< [a-z][a-z0-9_]*
  ConfigType type = ConfigType::string;
  const char* default_value = nullptr;  ///< YAML text of the default; nullptr = no default
  double min = -config_unbounded;     ///< integer and number only (inclusive)
  double max = config_unbounded;      ///< integer and number only (inclusive)
  const char* allowed = nullptr;      ///< enumeration: values separated by '|', e.g. "tcp|rtu"
  bool required = false;              ///< must be given in the site file (no default allowed)
  bool secret = false;                ///< never logged, shown as *** by pilectl
  const char* description = nullptr;  ///< one sentence for the integrator reference
  const char* unit = nullptr;         ///< e.g. "ms", "W", "Wh"; nullptr if none
};

/// Thrown by the convenience getters below when a plugin asks for a key it did not declare or
/// with the wrong type: a programming error in the plugin, contained by the host.
class ConfigError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

/// The validated configuration of one plugin instance. Declared defaults are already filled in,
/// so a key with a default or `required` always has a value.
class ConfigValues {
 public:
  virtual ~ConfigValues() = default;
  [[nodiscard]] virtual bool has(std::string_view key) const noexcept = 0;
  [[nodiscard]] virtual std::optional<std::string_view> get_string(std::string_view key) const noexcept = 0;
  [[nodiscard]] virtual std::optional<std::int64_t> get_integer(std::string_view key) const noexcept = 0;
  [[nodiscard]] virtual std::optional<double> get_number(std::string_view key) const noexcept = 0;
  [[nodiscard]] virtual std::optional<bool> get_boolean(std::string_view key) const noexcept = 0;
  [[nodiscard]] virtual std::optional<std::vector<std::string>> get_string_list(std::string_view key) const = 0;

  // Getters for keys that always have a value (declared with a default or required).
  [[nodiscard]] std::string string(std::string_view key) const { return std::string(need(get_string(key), key)); }
  [[nodiscard]] std::int64_t integer(std::string_view key) const { return need(get_integer(key), key); }
  [[nodiscard]] double number(std::string_view key) const { return need(get_number(key), key); }
  [[nodiscard]] bool boolean(std::string_view key) const { return need(get_boolean(key), key); }
  [[nodiscard]] std::vector<std::string> string_list(std::string_view key) const { return need(get_string_list(key), key); }

 private:
  template <class T>
  static T need(std::optional<T> v, std::string_view key) {
    if (!v) throw ConfigError("configuration key '" + std::string(key) + "' has no value of the requested type");
    return std::move(*v);
  }
};

}  // namespace v2
}  // namespace pilecore
