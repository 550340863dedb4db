// The configuration schema: one description of every key, used three ways: to validate a site
// file (with file:line:column for every problem), to fill in defaults, and to generate the JSON
// Schema and the integrator reference. Plugins' ConfigKey declarations are converted to it.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "diagnostics.hpp"
#include "pilecore/config.hpp"

namespace pilecore::core {

enum class FieldType {
  string,
  integer,
  number,
  boolean,
  enumeration,
  string_list,
  object,    // a mapping with the members in `fields`
  list,      // a sequence of objects, each with the members in `fields`
  map,       // a mapping from names (matching key_pattern) to objects with the members in `fields`
  any_map,   // a mapping not validated here (validated elsewhere, or reserved)
  decimal,   // a non-negative decimal kept as its exact text (prices), e.g. 100.44
  integer_list,  // a sequence of integers; min/max apply to each
  instance_ref,  // the name of an instance in `plugins` of kind `ref_kind` (checked by the site loader)
};

[[nodiscard]] std::string_view type_name(FieldType t);

struct Field {
  std::string key;
  FieldType type = FieldType::string;
  std::optional<std::string> default_value;  // YAML text
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  std::vector<std::string> allowed;  // enumeration
  bool required = false;
  bool secret = false;
  std::string description;
  std::string unit;
  std::string pattern;      // string (and map keys, via key_pattern): ECMAScript regex, whole match
  std::string pattern_hint; // said when the pattern does not match, e.g. "letters, digits, '-'"
  std::string key_pattern;  // map: names must match this
  std::size_t min_items = 0;  // list, map, string_list
  std::string reserved_note;  // any_map: when set, a warning is given that the section is ignored
  std::string ref_kind;       // instance_ref: the kind's name ("power", "sensor", ...)
  std::vector<Field> fields;
};

// Builders for declaring schemas in code (the core's own sections).
inline Field field(std::string key, FieldType type, std::string description, bool required = false) {
  Field f;
  f.key = std::move(key);
  f.type = type;
  f.description = std::move(description);
  f.required = required;
  return f;
}
inline Field with_range(Field f, double min, double max, std::string unit = {}) {
  f.min = min;
  f.max = max;
  f.unit = std::move(unit);
  return f;
}
inline Field with_default(Field f, std::string value) {
  f.default_value = std::move(value);
  return f;
}
inline Field with_fields(Field f, std::vector<Field> fields) {
  f.fields = std::move(fields);
  return f;
}

using Value = std::variant<std::monostate, std::string, std::int64_t, double, bool, std::vector<std::string>, std::vector<std::int64_t>>;

/// Converts one scalar (or string list) node according to `field`. Returns an error message
/// (without position) when the node does not fit.
std::optional<std::string> parse_value(const Field& field, const YAML::Node& node, Value& out);
/// The field's default as a Value (monostate when it has none).
Value default_value(const Field& field);

[[nodiscard]] Position position_of(const YAML::Node& node);
/// The members of a mapping in file order, keyed by their text.
struct Member {
  std::string key;
  YAML::Node key_node;
  YAML::Node value;
};
std::vector<Member> members_of(const YAML::Node& map);
/// The first member named `key`, or an undefined node.
YAML::Node member(const YAML::Node& map, std::string_view key);

/// Walks a YAML node against a field tree and records every problem.
class Validator {
 public:
  explicit Validator(Diagnostics& diags) : diags_(diags) {}

  /// Validates `node`, the value of `field`; `path` names it in messages ("site.location").
  void validate(const Field& field, const YAML::Node& node, const std::string& path);
  /// Validates a mapping's members against `fields`: unknown keys, duplicates, missing required.
  /// Missing keys are reported at the mapping, or at `anchor` when the mapping has no position.
  void validate_members(const std::vector<Field>& fields, const YAML::Node& map, const std::string& path, Position anchor = {});

 private:
  void check_scalar(const Field& field, const YAML::Node& node, const std::string& path);
  Diagnostics& diags_;
};

/// Builds a Field from a plugin's ConfigKey; returns an error message when the declaration
/// itself is invalid (bad key name, default out of range, enumeration without values, ...).
/// `key_size` is sizeof(ConfigKey) in the plugin's SDK: the stride of nested `fields` tables,
/// which are read to at most `depth` levels.
std::optional<std::string> field_from_config_key(const ConfigKey& key, Field& out, std::size_t key_size = sizeof(ConfigKey), int depth = 0);

/// JSON Schema (draft-07) for a field.
nlohmann::json to_json_schema(const Field& field);

/// "did you mean 'x'?" when one candidate is close to `word`.
std::string suggestion(std::string_view word, const std::vector<std::string>& candidates);

}  // namespace pilecore::core
