#include "schema.hpp"

#include "pilecore/plugin.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstring>
#include <map>
#include <regex>
#include <set>

namespace pilecore::core {
namespace {

bool is_plain(const YAML::Node& node) { return node.Tag() == "?" || node.Tag().empty(); }

std::string kind_of(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null: return "nothing";
    case YAML::NodeType::Scalar: return is_plain(node) ? fmt::format("'{}'", node.Scalar()) : fmt::format("the quoted string \"{}\"", node.Scalar());
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Undefined: return "nothing";
  }
  return "something else";
}

std::string fmt_bound(double v) {
  if (std::isinf(v)) return v < 0 ? "-inf" : "inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return fmt::format("{}", static_cast<long long>(v));
  return fmt::format("{}", v);
}

std::string range_text(const Field& f) {
  const bool lo = !std::isinf(f.min);
  const bool hi = !std::isinf(f.max);
  std::string unit = f.unit.empty() ? "" : " " + f.unit;
  if (lo && hi) return fmt::format("{} to {}{}", fmt_bound(f.min), fmt_bound(f.max), unit);
  if (lo) return fmt::format("at least {}{}", fmt_bound(f.min), unit);
  if (hi) return fmt::format("at most {}{}", fmt_bound(f.max), unit);
  return "any value";
}

bool parse_int(std::string_view s, std::int64_t& out) {
  if (s.empty()) return false;
  bool neg = false;
  std::string_view body = s;
  if (body.front() == '+' || body.front() == '-') {
    neg = body.front() == '-';
    body.remove_prefix(1);
  }
  int base = 10;
  if (body.size() > 2 && body[0] == '0' && (body[1] == 'x' || body[1] == 'X')) {
    base = 16;
    body.remove_prefix(2);
  }
  if (body.empty()) return false;
  std::uint64_t mag = 0;
  auto [ptr, ec] = std::from_chars(body.data(), body.data() + body.size(), mag, base);
  if (ec != std::errc() || ptr != body.data() + body.size()) return false;
  constexpr auto limit = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  if (neg) {
    if (mag > limit + 1) return false;
    out = mag == limit + 1 ? std::numeric_limits<std::int64_t>::min() : -static_cast<std::int64_t>(mag);
  } else {
    if (mag > limit) return false;
    out = static_cast<std::int64_t>(mag);
  }
  return true;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

/// Skips ASCII digits from `i`; returns how many.
std::size_t skip_digits(std::string_view s, std::size_t& i) {
  const std::size_t start = i;
  while (i < s.size() && is_digit(s[i])) ++i;
  return i - start;
}

/// [-+]?[0-9]+, scanned by hand: std::regex recurses once per character and overflows the
/// stack on a long scalar (found by fuzz_site_config).
bool is_decimal_integer(std::string_view s) {
  std::size_t i = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
  return skip_digits(s, i) > 0 && i == s.size();
}

/// [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?, scanned by hand (see above).
bool is_decimal_number(std::string_view s) {
  std::size_t i = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
  if (skip_digits(s, i) == 0) {
    if (i >= s.size() || s[i] != '.') return false;
    ++i;
    if (skip_digits(s, i) == 0) return false;
  } else if (i < s.size() && s[i] == '.') {
    ++i;
    skip_digits(s, i);
  }
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    if (skip_digits(s, i) == 0) return false;
  }
  return i == s.size();
}

bool parse_number(std::string_view s, double& out) {
  if (!is_decimal_number(s)) return false;
  std::string copy(s.front() == '+' ? s.substr(1) : s);
  auto [ptr, ec] = std::from_chars(copy.data(), copy.data() + copy.size(), out);
  return ec == std::errc() && ptr == copy.data() + copy.size() && std::isfinite(out);
}

/// "1s", "7000W", "7 kW" for a key in ms or W: the number with its unit written after it, as on
/// a nameplate. Says to write the number alone and, for the usual units, what it is in the key's.
std::string unit_hint(const Field& f, std::string_view s) {
  if (f.unit.empty()) return {};
  std::size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  if (i == 0) return {};
  const std::string_view number = s.substr(0, i);
  std::size_t j = i;
  while (j < s.size() && s[j] == ' ') ++j;
  const std::string_view suffix = s.substr(j);
  if (suffix.empty() || !std::all_of(suffix.begin(), suffix.end(), [](char c) { return std::isalpha(static_cast<unsigned char>(c)); })) return {};
  double v = 0;
  if (!parse_number(number, v)) return {};
  static const std::map<std::string, std::map<std::string, double>> factors = {
      {"ms", {{"ms", 1}, {"s", 1000}, {"min", 60000}, {"h", 3600000}}},
      {"s", {{"s", 1}, {"min", 60}, {"h", 3600}}},
      {"W", {{"W", 1}, {"kW", 1000}, {"MW", 1000000}}},
      {"Wh", {{"Wh", 1}, {"kWh", 1000}, {"MWh", 1000000}}},
      {"fen", {{"fen", 1}, {"yuan", 100}}},
  };
  if (auto unit = factors.find(f.unit); unit != factors.end()) {
    if (auto factor = unit->second.find(std::string(suffix)); factor != unit->second.end()) {
      const double meant = v * factor->second;
      if (f.type != FieldType::integer || meant == std::floor(meant)) {
        return fmt::format("; write the number alone, in {}: {}", f.unit, fmt_bound(meant));
      }
    }
  }
  return fmt::format("; write the number alone, in {}", f.unit);
}

std::optional<std::string> check_range(const Field& f, double v, const std::string& text) {
  if (v < f.min || v > f.max) {
    // Power and energy keys are in W and Wh; the common slip is writing kW or kWh, so when a
    // thousand times the value fits, say what the integrator most likely meant.
    if ((f.unit == "W" || f.unit == "Wh") && v > 0 && v < f.min && v * 1000 >= f.min && v * 1000 <= f.max) {
      return fmt::format("is {}, out of range: allowed {}; the unit is {}: {} k{} is {}", text, range_text(f), f.unit, text, f.unit,
                         fmt_bound(v * 1000));
    }
    return fmt::format("is {}, out of range: allowed {}", text, range_text(f));
  }
  return std::nullopt;
}

/// Compiling a std::regex costs far more than matching one; a site file checks the same few
/// patterns many times (every HH:MM of every tariff period).
const std::regex& compiled(const std::string& pattern) {
  thread_local std::map<std::string, std::regex> cache;
  auto it = cache.find(pattern);
  if (it == cache.end()) it = cache.emplace(pattern, std::regex(pattern)).first;
  return it->second;
}

std::optional<std::string> check_pattern(const Field& f, const std::string& s) {
  if (f.pattern.empty()) return std::nullopt;
  // libstdc++'s std::regex recurses per character: bound the input before matching.
  if (s.size() > 256) return fmt::format("is {} characters long, which is not allowed: {}", s.size(), f.pattern_hint.empty() ? "too long" : f.pattern_hint);
  if (std::regex_match(s, compiled(f.pattern))) return std::nullopt;
  return fmt::format("is '{}', which is not allowed: {}", s,
                     f.pattern_hint.empty() ? "it must match " + f.pattern : f.pattern_hint);
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// neighbouring letters (the commonest typo) each cost 1.
std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

std::vector<std::string> keys_of(const std::vector<Field>& fields) {
  std::vector<std::string> out;
  out.reserve(fields.size());
  for (const auto& f : fields) out.push_back(f.key);
  return out;
}

std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (true) {
    auto end = s.find(sep, start);
    out.emplace_back(s.substr(start, end == std::string_view::npos ? s.size() - start : end - start));
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return out;
}

}  // namespace

std::string_view type_name(FieldType t) {
  switch (t) {
    case FieldType::string: return "string";
    case FieldType::integer: return "integer";
    case FieldType::number: return "number";
    case FieldType::boolean: return "boolean";
    case FieldType::enumeration: return "enumeration";
    case FieldType::string_list: return "list of strings";
    case FieldType::object: return "mapping";
    case FieldType::list: return "list";
    case FieldType::map: return "mapping of names";
    case FieldType::any_map: return "mapping";
    case FieldType::decimal: return "decimal";
    case FieldType::integer_list: return "list of integers";
    case FieldType::instance_ref: return "instance name";
  }
  return "unknown";
}

Position position_of(const YAML::Node& node) {
  if (!node.IsDefined()) return {};
  const auto m = node.Mark();
  if (m.line < 0 || m.column < 0) return {};
  return {static_cast<std::size_t>(m.line) + 1, static_cast<std::size_t>(m.column) + 1};
}

std::vector<Member> members_of(const YAML::Node& map) {
  std::vector<Member> out;
  if (!map.IsMap()) return out;
  for (auto it = map.begin(); it != map.end(); ++it) {
    // A copy: it->first lives in a proxy that dies at the end of the expression, so a reference
    // to it dangles (ASan stack-use-after-scope, found by fuzz_site_config).
    const YAML::Node k = it->first;
    out.push_back(Member{k.IsScalar() ? k.Scalar() : std::string{}, k, it->second});
  }
  return out;
}

YAML::Node member(const YAML::Node& map, std::string_view key) {
  if (map.IsMap()) {
    for (auto it = map.begin(); it != map.end(); ++it) {
      if (it->first.IsScalar() && it->first.Scalar() == key) return it->second;
    }
  }
  return YAML::Node(YAML::NodeType::Undefined);
}

std::string suggestion(std::string_view word, const std::vector<std::string>& candidates) {
  std::string best;
  std::size_t best_d = std::numeric_limits<std::size_t>::max();
  const std::size_t limit = std::max<std::size_t>(1, word.size() / 3);
  for (const auto& c : candidates) {
    // Words whose lengths differ by more than the limit cannot be within it: skip them, which
    // also keeps a huge value from costing a huge distance table.
    const std::size_t gap = c.size() > word.size() ? c.size() - word.size() : word.size() - c.size();
    if (gap > limit) continue;
    const auto d = edit_distance(word, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  if (best.empty() || best_d > limit) {
    // A shortened name ("sdm630" for "eastron-sdm630") is far by edits but is one whole part of
    // the name meant: suggest the candidate that has it as a part, when only one does.
    best.clear();
    if (word.size() >= 3) {
      for (const auto& c : candidates) {
        const auto at = c.find(word);
        const bool starts = at != std::string::npos && (at == 0 || c[at - 1] == '-' || c[at - 1] == '_');
        const bool ends = at != std::string::npos && (at + word.size() == c.size() || c[at + word.size()] == '-' || c[at + word.size()] == '_');
        if (!starts || !ends) continue;
        if (!best.empty()) return {};
        best = c;
      }
    }
    if (best.empty()) return {};
  }
  return fmt::format("did you mean '{}'? ", best);
}

std::optional<std::string> parse_value(const Field& f, const YAML::Node& node, Value& out) {
  if (f.type == FieldType::string_list) {
    if (!node.IsSequence()) return fmt::format("must be a list of strings, got {}", kind_of(node));
    std::vector<std::string> items;
    for (const auto& item : node) {
      if (!item.IsScalar()) return fmt::format("must be a list of strings, but an item is {}", kind_of(item));
      items.push_back(item.Scalar());
    }
    if (items.size() < f.min_items) return fmt::format("needs at least {} item(s)", f.min_items);
    out = std::move(items);
    return std::nullopt;
  }
  if (f.type == FieldType::integer_list) {
    if (!node.IsSequence()) return fmt::format("must be a list of integers, got {}", kind_of(node));
    Field item = f;
    item.type = FieldType::integer;
    std::vector<std::int64_t> items;
    std::size_t i = 0;
    for (const auto& n : node) {
      Value v;
      if (auto e = parse_value(item, n, v)) return fmt::format("item {} {}", i, *e);
      items.push_back(std::get<std::int64_t>(v));
      ++i;
    }
    if (items.size() < f.min_items) return fmt::format("needs at least {} item(s)", f.min_items);
    out = std::move(items);
    return std::nullopt;
  }
  if (!node.IsScalar()) return fmt::format("must be {}, got {}", f.type == FieldType::integer ? "an integer" : "a " + std::string(type_name(f.type)), kind_of(node));
  const std::string& s = node.Scalar();
  const bool plain = is_plain(node);
  switch (f.type) {
    case FieldType::string: {
      if (auto e = check_pattern(f, s)) return e;
      out = s;
      return std::nullopt;
    }
    case FieldType::instance_ref: {
      // That it names an instance of the right kind is checked by the site loader, which knows them.
      if (s.empty()) return fmt::format("must name a {} instance in 'plugins', got nothing", f.ref_kind);
      out = s;
      return std::nullopt;
    }
    case FieldType::enumeration: {
      if (std::find(f.allowed.begin(), f.allowed.end(), s) == f.allowed.end()) {
        return fmt::format("is '{}'; {}allowed values: {}", s, suggestion(s, f.allowed), fmt::join(f.allowed, ", "));
      }
      out = s;
      return std::nullopt;
    }
    case FieldType::integer: {
      std::int64_t v = 0;
      if (!parse_int(s, v)) {
        if (plain && is_decimal_integer(s)) return fmt::format("is {}, too large for an integer: allowed {}", s, range_text(f));
        double d = 0;
        if (plain && parse_number(s, d)) return fmt::format("must be a whole number, got {}", s);
        return fmt::format("must be an integer, got {}{}{}", kind_of(node), plain ? "" : " (remove the quotes)", unit_hint(f, s));
      }
      if (!plain) return fmt::format("must be an integer, got {} (remove the quotes)", kind_of(node));
      if (auto e = check_range(f, static_cast<double>(v), s)) return e;
      out = v;
      return std::nullopt;
    }
    case FieldType::number: {
      double v = 0;
      if (!parse_number(s, v) || !plain) {
        return fmt::format("must be a number, got {}{}{}", kind_of(node), plain || !parse_number(s, v) ? "" : " (remove the quotes)", unit_hint(f, s));
      }
      if (auto e = check_range(f, v, s)) return e;
      out = v;
      return std::nullopt;
    }
    case FieldType::boolean: {
      if (plain && (s == "true" || s == "True" || s == "TRUE")) {
        out = true;
        return std::nullopt;
      }
      if (plain && (s == "false" || s == "False" || s == "FALSE")) {
        out = false;
        return std::nullopt;
      }
      return fmt::format("must be true or false, got {}", kind_of(node));
    }
    case FieldType::decimal: {
      std::size_t i = 0;
      const bool ok = plain && skip_digits(s, i) > 0 && (i == s.size() || (s[i] == '.' && (++i, skip_digits(s, i) > 0) && i == s.size()));
      if (!ok) return fmt::format("must be a non-negative decimal number such as 100.44, got {}", kind_of(node));
      out = s;
      return std::nullopt;
    }
    default: return fmt::format("is not a single value (type {})", type_name(f.type));
  }
}

Value default_value(const Field& field) {
  if (!field.default_value) return std::monostate{};
  Value v;
  YAML::Node node;
  try {
    node = YAML::Load(*field.default_value);
  } catch (const YAML::Exception&) {
    return std::monostate{};
  }
  // A string default is YAML like every other: `""` (how a plugin declares "empty") is the
  // empty string, not two quote characters. A default YAML would not read as one scalar is
  // taken as written.
  if (field.type == FieldType::string || field.type == FieldType::enumeration) return node.IsScalar() ? node.Scalar() : *field.default_value;
  if (parse_value(field, node, v)) return std::monostate{};
  return v;
}

void Validator::check_scalar(const Field& field, const YAML::Node& node, const std::string& path) {
  Value v;
  if (auto err = parse_value(field, node, v)) diags_.error(position_of(node), fmt::format("'{}' {}", path, *err));
}

void Validator::validate(const Field& field, const YAML::Node& node, const std::string& path) {
  switch (field.type) {
    case FieldType::object:
      if (node.IsNull()) {
        const YAML::Node empty(YAML::NodeType::Map);  // named: GCC 12 -O2 misreads a temporary here as dangling
        validate_members(field.fields, empty, path, position_of(node));
        return;
      }
      if (!node.IsMap()) {
        diags_.error(position_of(node), fmt::format("'{}' must be a mapping of keys ({}), got {}", path,
                                                    fmt::join(keys_of(field.fields), ", "), kind_of(node)));
        return;
      }
      validate_members(field.fields, node, path);
      return;
    case FieldType::list: {
      if (!node.IsSequence()) {
        diags_.error(position_of(node), fmt::format("'{}' must be a list, got {}", path, kind_of(node)));
        return;
      }
      if (node.size() < field.min_items) {
        diags_.error(position_of(node), fmt::format("'{}' needs at least {} item(s)", path, field.min_items));
      }
      std::size_t i = 0;
      for (const auto& item : node) {
        const std::string item_path = fmt::format("{}[{}]", path, i++);
        if (!item.IsMap()) {
          diags_.error(position_of(item), fmt::format("'{}' must be a mapping of keys ({}), got {}", item_path,
                                                      fmt::join(keys_of(field.fields), ", "), kind_of(item)));
          continue;
        }
        validate_members(field.fields, item, item_path);
      }
      return;
    }
    case FieldType::map: {
      if (node.IsNull() && field.min_items == 0) return;
      if (!node.IsMap()) {
        diags_.error(position_of(node), fmt::format("'{}' must be a mapping of names to entries, got {}", path, kind_of(node)));
        return;
      }
      const auto members = members_of(node);
      if (members.size() < field.min_items) {
        diags_.error(position_of(node), fmt::format("'{}' needs at least {} entr{}", path, field.min_items, field.min_items == 1 ? "y" : "ies"));
      }
      std::map<std::string, std::size_t> seen;
      const std::regex& key_re = compiled(field.key_pattern.empty() ? std::string(".*") : field.key_pattern);
      for (const auto& m : members) {
        if (!m.key_node.IsScalar()) {
          diags_.error(position_of(m.key_node), fmt::format("'{}': a name must be a plain word, not {}", path, kind_of(m.key_node)));
          continue;
        }
        if (auto [it, fresh] = seen.emplace(m.key, position_of(m.key_node).line); !fresh) {
          diags_.error(position_of(m.key_node), fmt::format("duplicate name '{}' in '{}' (first given at line {})", m.key, path, it->second));
          continue;
        }
        if (m.key.size() > 256 || !std::regex_match(m.key, key_re)) {
          diags_.error(position_of(m.key_node), fmt::format("'{}': the name '{}' is not allowed: {}", path, m.key,
                                                            field.pattern_hint.empty() ? "it must match " + field.key_pattern : field.pattern_hint));
        }
        const std::string item_path = path + "." + m.key;
        if (!m.value.IsMap()) {
          diags_.error(position_of(m.value.IsNull() ? m.key_node : m.value),
                       fmt::format("'{}' must be a mapping of keys ({}), got {}", item_path, fmt::join(keys_of(field.fields), ", "), kind_of(m.value)));
          continue;
        }
        validate_members(field.fields, m.value, item_path);
      }
      return;
    }
    case FieldType::any_map:
      if (!node.IsMap() && !node.IsNull()) {
        diags_.error(position_of(node), fmt::format("'{}' must be a mapping, got {}", path, kind_of(node)));
        return;
      }
      if (!field.reserved_note.empty()) diags_.warning(position_of(node), fmt::format("'{}': {}", path, field.reserved_note));
      return;
    default:
      if (node.IsNull()) {
        diags_.error(position_of(node), fmt::format("'{}' has no value; {}", path,
                                                    field.default_value ? "remove the key to use the default " + *field.default_value
                                                                        : "give a " + std::string(type_name(field.type))));
        return;
      }
      check_scalar(field, node, path);
      return;
  }
}

void Validator::validate_members(const std::vector<Field>& fields, const YAML::Node& map, const std::string& path, Position anchor) {
  const auto members = members_of(map);
  std::map<std::string, std::size_t> seen;
  const auto allowed = keys_of(fields);
  const std::string where = path.empty() ? "the top level" : "'" + path + "'";
  for (const auto& m : members) {
    if (!m.key_node.IsScalar()) {
      diags_.error(position_of(m.key_node), fmt::format("in {}: a key must be a plain word, not {}", where, kind_of(m.key_node)));
      continue;
    }
    if (auto [it, fresh] = seen.emplace(m.key, position_of(m.key_node).line); !fresh) {
      diags_.error(position_of(m.key_node), fmt::format("duplicate key '{}' in {} (first given at line {})", m.key, where, it->second));
      continue;
    }
    auto f = std::find_if(fields.begin(), fields.end(), [&](const Field& x) { return x.key == m.key; });
    if (f == fields.end()) {
      diags_.error(position_of(m.key_node), fmt::format("unknown key '{}' in {}; {}allowed keys: {}", m.key, where,
                                                        suggestion(m.key, allowed), allowed.empty() ? "none" : fmt::format("{}", fmt::join(allowed, ", "))));
      continue;
    }
    validate(*f, m.value, path.empty() ? m.key : path + "." + m.key);
  }
  for (const auto& f : fields) {
    if (f.required && !seen.count(f.key)) {
      const Position at = position_of(map).line ? position_of(map) : anchor;
      diags_.error(at, fmt::format("{} is missing the required key '{}' ({}{})", where, f.key,
                                                 f.description.empty() ? std::string(type_name(f.type)) : f.description,
                                                 f.type == FieldType::integer || f.type == FieldType::number ? ", " + range_text(f) : ""));
    }
  }
}

std::optional<std::string> field_from_config_key(const ConfigKey& key, Field& out, std::size_t key_size, int depth) {
  if (key.key == nullptr) return "a key has no name";
  static const std::regex name_re("[a-z][a-z0-9_]*");
  if (!std::regex_match(key.key, name_re)) return fmt::format("key '{}': names must be lower case letters, digits and '_', starting with a letter", key.key);
  out = Field{};
  out.key = key.key;
  switch (key.type) {
    case ConfigType::string: out.type = FieldType::string; break;
    case ConfigType::integer: out.type = FieldType::integer; break;
    case ConfigType::number: out.type = FieldType::number; break;
    case ConfigType::boolean: out.type = FieldType::boolean; break;
    case ConfigType::enumeration: out.type = FieldType::enumeration; break;
    case ConfigType::string_list: out.type = FieldType::string_list; break;
    case ConfigType::integer_list: out.type = FieldType::integer_list; break;
    case ConfigType::object: out.type = FieldType::object; break;
    case ConfigType::object_list: out.type = FieldType::list; break;
    case ConfigType::instance_ref: out.type = FieldType::instance_ref; break;
    default: return fmt::format("key '{}': unknown type {}", key.key, static_cast<unsigned>(key.type));
  }
  const bool nested = out.type == FieldType::object || out.type == FieldType::list;
  if (nested) {
    // Three levels are plenty for a device's settings; the bound also stops a table that
    // (wrongly) contains itself.
    if (depth >= 3) return fmt::format("key '{}': objects nest more than 3 levels deep", key.key);
    if (key.fields == nullptr || key.field_count == 0) return fmt::format("key '{}': an object needs its nested keys (fields, field_count)", key.key);
    if (key.field_count > 256) return fmt::format("key '{}': {} nested keys is more than the 256 allowed", key.key, key.field_count);
    if (key.default_value != nullptr) return fmt::format("key '{}': an object or object list has no default (give its nested keys defaults)", key.key);
    std::set<std::string> seen;
    const auto* base = reinterpret_cast<const unsigned char*>(key.fields);
    for (std::uint32_t i = 0; i < key.field_count; ++i) {
      ConfigKey sub{};
      std::memcpy(&sub, base + static_cast<std::size_t>(i) * key_size, std::min(key_size, sizeof(ConfigKey)));
      Field child;
      if (auto err = field_from_config_key(sub, child, key_size, depth + 1)) return fmt::format("in key '{}': {}", key.key, *err);
      if (!seen.insert(child.key).second) return fmt::format("in key '{}': key '{}' is declared twice", key.key, child.key);
      out.fields.push_back(std::move(child));
    }
  } else if (key.fields != nullptr || key.field_count != 0) {
    return fmt::format("key '{}': nested keys are only for object and object_list", key.key);
  }
  if (out.type == FieldType::instance_ref) {
    const auto k = static_cast<std::uint32_t>(key.ref_kind);
    if (k < static_cast<std::uint32_t>(Kind::payment) || k > static_cast<std::uint32_t>(Kind::strategy)) {
      return fmt::format("key '{}': an instance reference needs ref_kind, one of the plugin kinds (got {})", key.key, k);
    }
    out.ref_kind = std::string(to_string(key.ref_kind));
  } else if (static_cast<std::uint32_t>(key.ref_kind) != 0) {
    return fmt::format("key '{}': ref_kind is only for instance_ref", key.key);
  }
  if (std::isnan(key.min) || std::isnan(key.max) || key.min > key.max) {
    return fmt::format("key '{}': the range {} to {} is empty", key.key, key.min, key.max);
  }
  out.min = key.min;
  out.max = key.max;
  if (out.type == FieldType::enumeration) {
    if (key.allowed == nullptr || *key.allowed == '\0') return fmt::format("key '{}': an enumeration needs allowed values", key.key);
    out.allowed = split(key.allowed, '|');
    std::set<std::string> unique(out.allowed.begin(), out.allowed.end());
    if (unique.size() != out.allowed.size() || unique.count("")) return fmt::format("key '{}': allowed values must be distinct and non-empty", key.key);
  } else if (key.allowed != nullptr) {
    return fmt::format("key '{}': allowed values are only for enumerations", key.key);
  }
  out.required = key.required;
  out.secret = key.secret;
  out.description = key.description ? key.description : "";
  out.unit = key.unit ? key.unit : "";
  if (out.description.empty()) return fmt::format("key '{}': no description", key.key);
  if (key.default_value != nullptr) {
    if (key.required) return fmt::format("key '{}': a required key cannot have a default", key.key);
    out.default_value = key.default_value;
    YAML::Node node;
    try {
      node = YAML::Load(key.default_value);
    } catch (const YAML::Exception& e) {
      return fmt::format("key '{}': the default '{}' is not valid YAML", key.key, key.default_value);
    }
    Value v;
    if (out.type == FieldType::string) node = YAML::Node(std::string(key.default_value));
    if (auto err = parse_value(out, node, v)) return fmt::format("key '{}': the default {}", key.key, *err);
  }
  return std::nullopt;
}

nlohmann::json to_json_schema(const Field& f) {
  nlohmann::json j = nlohmann::json::object();
  std::string desc = f.description;
  if (!f.unit.empty()) desc += desc.empty() ? "Unit: " + f.unit : " (" + f.unit + ")";
  if (!desc.empty()) j["description"] = desc;
  auto add_default = [&](nlohmann::json& target) {
    const Value v = default_value(f);
    if (const auto* s = std::get_if<std::string>(&v)) target["default"] = *s;
    if (const auto* i = std::get_if<std::int64_t>(&v)) target["default"] = *i;
    if (const auto* d = std::get_if<double>(&v)) target["default"] = *d;
    if (const auto* b = std::get_if<bool>(&v)) target["default"] = *b;
    if (const auto* l = std::get_if<std::vector<std::string>>(&v)) target["default"] = *l;
    if (const auto* l = std::get_if<std::vector<std::int64_t>>(&v)) target["default"] = *l;
  };
  auto object_of = [](const std::vector<Field>& fields) {
    nlohmann::json o = {{"type", "object"}, {"additionalProperties", false}};
    o["properties"] = nlohmann::json::object();
    nlohmann::json req = nlohmann::json::array();
    for (const auto& c : fields) {
      o["properties"][c.key] = to_json_schema(c);
      if (c.required) req.push_back(c.key);
    }
    if (!req.empty()) o["required"] = req;
    return o;
  };
  switch (f.type) {
    case FieldType::string:
      j["type"] = "string";
      if (!f.pattern.empty()) j["pattern"] = "^(?:" + f.pattern + ")$";
      break;
    case FieldType::enumeration: j["enum"] = f.allowed; break;
    case FieldType::integer:
      j["type"] = "integer";
      if (!std::isinf(f.min)) j["minimum"] = static_cast<std::int64_t>(f.min);
      if (!std::isinf(f.max)) j["maximum"] = static_cast<std::int64_t>(f.max);
      break;
    case FieldType::number:
      j["type"] = "number";
      if (!std::isinf(f.min)) j["minimum"] = f.min;
      if (!std::isinf(f.max)) j["maximum"] = f.max;
      break;
    case FieldType::boolean: j["type"] = "boolean"; break;
    case FieldType::string_list:
      j["type"] = "array";
      j["items"] = {{"type", "string"}};
      if (f.min_items) j["minItems"] = f.min_items;
      break;
    case FieldType::object: {
      auto o = object_of(f.fields);
      o.update(j);
      j = o;
      break;
    }
    case FieldType::list:
      j["type"] = "array";
      j["items"] = object_of(f.fields);
      if (f.min_items) j["minItems"] = f.min_items;
      break;
    case FieldType::map:
      j["type"] = "object";
      j["additionalProperties"] = object_of(f.fields);
      if (!f.key_pattern.empty()) j["propertyNames"] = {{"pattern", "^(?:" + f.key_pattern + ")$"}};
      if (f.min_items) j["minProperties"] = f.min_items;
      break;
    case FieldType::any_map: j["type"] = {"object", "null"}; break;
    case FieldType::decimal:
      j["type"] = "number";
      j["minimum"] = 0;
      break;
    case FieldType::integer_list: {
      nlohmann::json item = {{"type", "integer"}};
      if (!std::isinf(f.min)) item["minimum"] = static_cast<std::int64_t>(f.min);
      if (!std::isinf(f.max)) item["maximum"] = static_cast<std::int64_t>(f.max);
      j["type"] = "array";
      j["items"] = item;
      if (f.min_items) j["minItems"] = f.min_items;
      break;
    }
    case FieldType::instance_ref:
      // JSON Schema cannot say "a key of plugins whose plugin is of this kind"; the loader checks it.
      j["type"] = "string";
      j["minLength"] = 1;
      j["x-pilecore-instance-kind"] = f.ref_kind;
      break;
  }
  add_default(j);
  return j;
}

}  // namespace pilecore::core
