// sensor-modbus: parsing and validating register maps, planning reads, decoding registers.
#include "meter_map.hpp"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <charconv>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include "embedded_maps.hpp"

namespace sensor_modbus {
namespace {

constexpr std::size_t kMaxReadRegisters = 125;  // Modbus limit for 0x03 / 0x04

constexpr std::string_view kTopKeys[] = {"model", "description", "defaults", "registers"};
constexpr std::string_view kEntryKeys[] = {"channel", "address", "function", "type", "word_order", "scale", "unit", "min", "max"};
constexpr std::string_view kDefaultKeys[] = {"function", "type", "word_order", "scale", "unit"};

template <std::size_t N>
std::string join(const std::string_view (&list)[N]) {
  std::string out;
  for (auto s : list) {
    if (!out.empty()) out += ", ";
    out += s;
  }
  return out;
}

template <std::size_t N>
bool contains(const std::string_view (&list)[N], std::string_view key) {
  return std::find(std::begin(list), std::end(list), key) != std::end(list);
}

/// Builds messages of the form "<file>:<line>:<column>: <entry>: <problem>".
class Reporter {
 public:
  explicit Reporter(const std::string& source) : source_(source) {}

  [[noreturn]] void fail(const YAML::Node& at, std::string_view entry, std::string_view problem) const {
    const YAML::Mark m = at.Mark();
    std::string where = source_;
    if (m.line >= 0) where += fmt::format(":{}:{}", m.line + 1, m.column + 1);
    if (entry.empty()) throw MapError(fmt::format("{}: {}", where, problem));
    throw MapError(fmt::format("{}: {}: {}", where, entry, problem));
  }

 private:
  const std::string& source_;
};

std::string scalar(const Reporter& r, const YAML::Node& n, std::string_view entry, std::string_view key) {
  if (!n.IsScalar()) r.fail(n, entry, fmt::format("'{}' must be a single value", key));
  return n.Scalar();
}

std::uint32_t parse_address(const Reporter& r, const YAML::Node& n, std::string_view entry) {
  const std::string s = scalar(r, n, entry, "address");
  std::string_view digits = s;
  int base = 10;
  if (digits.size() > 2 && digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X')) {
    digits.remove_prefix(2);
    base = 16;
  }
  std::uint32_t v = 0;
  const auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v, base);
  if (digits.empty() || ec != std::errc{} || ptr != digits.data() + digits.size() || v > 0xFFFF) {
    r.fail(n, entry, fmt::format("address '{}' is not a register address (0 to 65535, decimal or 0x hexadecimal)", s));
  }
  return v;
}

Function parse_function(const Reporter& r, const YAML::Node& n, std::string_view entry) {
  const std::string s = scalar(r, n, entry, "function");
  if (s == "input" || s == "0x04" || s == "4") return Function::input;
  if (s == "holding" || s == "0x03" || s == "3") return Function::holding;
  r.fail(n, entry, fmt::format("unknown function '{}'; allowed: input (0x04), holding (0x03)", s));
}

ValueType parse_type(const Reporter& r, const YAML::Node& n, std::string_view entry) {
  const std::string s = scalar(r, n, entry, "type");
  if (s == "float32") return ValueType::float32;
  if (s == "int16") return ValueType::int16;
  if (s == "uint16") return ValueType::uint16;
  if (s == "int32") return ValueType::int32;
  if (s == "uint32") return ValueType::uint32;
  r.fail(n, entry, fmt::format("unknown type '{}'; allowed: float32, int16, uint16, int32, uint32", s));
}

WordOrder parse_word_order(const Reporter& r, const YAML::Node& n, std::string_view entry) {
  const std::string s = scalar(r, n, entry, "word_order");
  if (s == "big") return WordOrder::big;
  if (s == "little") return WordOrder::little;
  r.fail(n, entry, fmt::format("unknown word_order '{}'; allowed: big (high word first), little (low word first)", s));
}

double parse_scale(const Reporter& r, const YAML::Node& n, std::string_view entry) {
  const std::string s = scalar(r, n, entry, "scale");
  double v = 0;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc{} || ptr != s.data() + s.size() || !std::isfinite(v) || v == 0) {
    r.fail(n, entry, fmt::format("scale '{}' is not a finite, non-zero number", s));
  }
  return v;
}

double parse_bound(const Reporter& r, const YAML::Node& n, std::string_view entry, const char* key) {
  const std::string s = scalar(r, n, entry, key);
  double v = 0;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc{} || ptr != s.data() + s.size() || !std::isfinite(v)) {
    r.fail(n, entry, fmt::format("{} '{}' is not a finite number (in the channel's unit)", key, s));
  }
  return v;
}

std::string parse_unit(const Reporter& r, const YAML::Node& n, std::string_view entry) {
  std::string s = scalar(r, n, entry, "unit");
  if (s.empty()) r.fail(n, entry, "unit is empty; give the SI unit of the scaled value (V, A, W, Hz, Wh, degC, %RH)");
  if (s == "kWh") r.fail(n, entry, "energy is published in integer Wh: use unit Wh and scale 1000 for a kWh register");
  return s;
}

bool valid_channel(std::string_view s) {
  if (s.empty() || !std::islower(static_cast<unsigned char>(s[0]))) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '_';
  });
}

void check_keys(const Reporter& r, const YAML::Node& map, std::string_view entry, std::span<const std::string_view> allowed,
                const std::string& allowed_text) {
  for (const auto& kv : map) {
    const std::string key = kv.first.IsScalar() ? kv.first.Scalar() : std::string("?");
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
      r.fail(kv.first, entry, fmt::format("unknown key '{}'; allowed: {}", key, allowed_text));
    }
  }
}

/// What `defaults:` sets; every field optional.
struct Defaults {
  std::optional<Function> function;
  std::optional<ValueType> type;
  std::optional<WordOrder> word_order;
  std::optional<double> scale;
  std::optional<std::string> unit;
};

}  // namespace

std::string_view to_string(Function f) noexcept { return f == Function::input ? "input (0x04)" : "holding (0x03)"; }

std::string_view to_string(ValueType t) noexcept {
  switch (t) {
    case ValueType::int16: return "int16";
    case ValueType::uint16: return "uint16";
    case ValueType::int32: return "int32";
    case ValueType::uint32: return "uint32";
    case ValueType::float32: return "float32";
  }
  return "unknown";
}

MeterMap parse_map(std::string_view yaml_text, const std::string& source) {
  const Reporter r(source);
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml_text));
  } catch (const YAML::Exception& e) {
    std::string where = source;
    if (e.mark.line >= 0) where += fmt::format(":{}:{}", e.mark.line + 1, e.mark.column + 1);
    throw MapError(fmt::format("{}: not valid YAML: {}", where, e.msg));
  }
  if (!root.IsMap()) {
    throw MapError(fmt::format("{}: a meter map is a YAML mapping with the keys {}", source, join(kTopKeys)));
  }
  check_keys(r, root, "", kTopKeys, join(kTopKeys));

  MeterMap map;
  map.source = source;
  const YAML::Node model = root["model"];
  if (!model) r.fail(root, "", "missing 'model' (the meter model's name, e.g. chint-dtsu666)");
  map.model = scalar(r, model, "", "model");
  if (map.model.empty()) r.fail(model, "", "'model' is empty");
  if (const YAML::Node d = root["description"]) map.description = scalar(r, d, "", "description");

  Defaults defaults;
  if (const YAML::Node d = root["defaults"]) {
    if (!d.IsMap()) r.fail(d, "defaults", "'defaults' is a mapping of entry keys to values");
    check_keys(r, d, "defaults", kDefaultKeys, join(kDefaultKeys));
    if (d["function"]) defaults.function = parse_function(r, d["function"], "defaults");
    if (d["type"]) defaults.type = parse_type(r, d["type"], "defaults");
    if (d["word_order"]) defaults.word_order = parse_word_order(r, d["word_order"], "defaults");
    if (d["scale"]) defaults.scale = parse_scale(r, d["scale"], "defaults");
    if (d["unit"]) defaults.unit = parse_unit(r, d["unit"], "defaults");
  }

  const YAML::Node regs = root["registers"];
  if (!regs) r.fail(root, "", "missing 'registers' (the list of channels and their registers)");
  if (!regs.IsSequence() || regs.size() == 0) r.fail(regs, "registers", "'registers' is a non-empty list of entries");

  std::map<std::string, std::size_t, std::less<>> seen;
  for (std::size_t i = 0; i < regs.size(); ++i) {
    const YAML::Node e = regs[i];
    std::string entry = fmt::format("registers[{}]", i);
    if (!e.IsMap()) r.fail(e, entry, "an entry is a mapping with the keys " + join(kEntryKeys));
    if (e["channel"]) entry += fmt::format(" (channel '{}')", e["channel"].IsScalar() ? e["channel"].Scalar() : "?");
    check_keys(r, e, entry, kEntryKeys, join(kEntryKeys));

    Register reg;
    reg.line = e.Mark().line + 1;
    if (!e["channel"]) r.fail(e, entry, "missing 'channel' (the published channel name, e.g. energy_import)");
    reg.channel = scalar(r, e["channel"], entry, "channel");
    if (!valid_channel(reg.channel)) r.fail(e["channel"], entry, "a channel name is [a-z][a-z0-9_]*");
    if (auto it = seen.find(reg.channel); it != seen.end()) {
      r.fail(e["channel"], entry, fmt::format("channel '{}' is already defined by registers[{}]", reg.channel, it->second));
    }
    seen.emplace(reg.channel, i);

    if (!e["address"]) r.fail(e, entry, "missing 'address' (the register number, e.g. 0x2006)");
    const std::uint32_t address = parse_address(r, e["address"], entry);

    const auto need = [&](const char* key, auto parse, const auto& fallback) {
      if (const YAML::Node n = e[key]) return parse(r, n, entry);
      if (fallback) return *fallback;
      r.fail(e, entry, fmt::format("missing '{}' (and no default for it under 'defaults')", key));
    };
    reg.function = need("function", parse_function, defaults.function);
    reg.type = need("type", parse_type, defaults.type);
    reg.word_order = e["word_order"] ? parse_word_order(r, e["word_order"], entry) : defaults.word_order.value_or(WordOrder::big);
    reg.scale = e["scale"] ? parse_scale(r, e["scale"], entry) : defaults.scale.value_or(1.0);
    reg.unit = need("unit", parse_unit, defaults.unit);

    if (e["word_order"] && width(reg.type) == 1) {
      r.fail(e["word_order"], entry, fmt::format("word_order applies to 32-bit types only, not {}", to_string(reg.type)));
    }
    if (address + width(reg.type) - 1 > 0xFFFF) {
      r.fail(e["address"], entry, fmt::format("a {} at {:#06x} runs past register 0xFFFF", to_string(reg.type), address));
    }
    reg.address = static_cast<std::uint16_t>(address);
    if ((reg.channel.starts_with("energy") || reg.channel.ends_with("_energy")) && reg.unit != "Wh") {
      r.fail(e, entry, fmt::format("energy channels are published in integer Wh, not '{}' (use scale 1000 for a kWh register)", reg.unit));
    }
    reg.integer = reg.unit == "Wh";
    if (reg.integer) {
      reg.min = 0;
      reg.max = 1e12;
    }
    if (e["min"]) reg.min = parse_bound(r, e["min"], entry, "min");
    if (e["max"]) reg.max = parse_bound(r, e["max"], entry, "max");
    if (reg.min > reg.max) r.fail(e, entry, fmt::format("min {} is above max {}", reg.min, reg.max));
    map.registers.push_back(std::move(reg));
  }

  // Two channels whose registers partly overlap are a typo (a float32 is two registers wide).
  std::vector<std::size_t> order(map.registers.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    const auto& x = map.registers[a];
    const auto& y = map.registers[b];
    return std::tie(x.function, x.address) < std::tie(y.function, y.address);
  });
  for (std::size_t k = 1; k < order.size(); ++k) {
    const auto& prev = map.registers[order[k - 1]];
    const auto& cur = map.registers[order[k]];
    if (prev.function == cur.function && cur.address < prev.address + width(prev.type) &&
        !(cur.address == prev.address && cur.type == prev.type)) {
      const auto& later = order[k - 1] > order[k] ? prev : cur;
      const auto& earlier = order[k - 1] > order[k] ? cur : prev;
      throw MapError(fmt::format("{}:{}: registers (channel '{}'): {} register {:#06x} overlaps channel '{}' ({} at {:#06x}, line {})", source,
                                 later.line, later.channel, to_string(later.function), later.address, earlier.channel,
                                 to_string(earlier.type), earlier.address, earlier.line));
    }
  }
  return map;
}

MeterMap load_map_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw MapError(fmt::format("{}: cannot open the meter map file", path));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw MapError(fmt::format("{}: cannot read the meter map file", path));
  return parse_map(text.str(), path);
}

std::optional<MeterMap> builtin_map(std::string_view model) {
  for (const auto& m : embedded::maps) {
    if (m.model != model) continue;
    MeterMap map = parse_map(m.text, fmt::format("<built-in>/{}.yaml", m.model));
    if (map.model != m.model) {
      throw MapError(fmt::format("<built-in>/{}.yaml: model '{}' differs from the file name", m.model, map.model));
    }
    return map;
  }
  return std::nullopt;
}

const char* builtin_model_list() noexcept { return embedded::model_list; }

std::vector<Block> plan_reads(const MeterMap& map) {
  std::vector<std::size_t> order(map.registers.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    const auto& x = map.registers[a];
    const auto& y = map.registers[b];
    return std::tie(x.function, x.address) < std::tie(y.function, y.address);
  });
  std::vector<Block> blocks;
  for (std::size_t idx : order) {
    const Register& reg = map.registers[idx];
    const std::size_t end = reg.address + width(reg.type);  // one past the last register
    if (!blocks.empty()) {
      Block& b = blocks.back();
      const std::size_t b_end = std::size_t{b.start} + b.count;
      if (b.function == reg.function && reg.address <= b_end && std::max(end, b_end) - b.start <= kMaxReadRegisters) {
        b.count = static_cast<std::uint16_t>(std::max(end, b_end) - b.start);
        b.registers.push_back(idx);
        continue;
      }
    }
    blocks.push_back(Block{.function = reg.function,
                           .start = reg.address,
                           .count = static_cast<std::uint16_t>(width(reg.type)),
                           .registers = {idx}});
  }
  return blocks;
}

std::optional<double> decode(const Register& reg, std::span<const std::uint16_t> words) noexcept {
  if (words.size() < width(reg.type)) return std::nullopt;
  std::uint32_t u32 = 0;
  if (width(reg.type) == 2) {
    const std::uint32_t hi = reg.word_order == WordOrder::big ? words[0] : words[1];
    const std::uint32_t lo = reg.word_order == WordOrder::big ? words[1] : words[0];
    u32 = (hi << 16) | lo;
  }
  double raw = 0;
  switch (reg.type) {
    case ValueType::int16: raw = static_cast<std::int16_t>(words[0]); break;
    case ValueType::uint16: raw = words[0]; break;
    case ValueType::int32: raw = static_cast<std::int32_t>(u32); break;
    case ValueType::uint32: raw = u32; break;
    case ValueType::float32: raw = std::bit_cast<float>(u32); break;
  }
  const double v = raw * reg.scale;
  if (!std::isfinite(v)) return std::nullopt;
  return reg.integer ? std::round(v) : v;
}

}  // namespace sensor_modbus
