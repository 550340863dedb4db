// sensor-modbus: register maps (one YAML file per device model) and how to decode registers.
//
// A map names each channel's register: address, function (input 0x04 / holding 0x03), type,
// word order and the scale to the channel's SI unit. The format is specified in docs/meters.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace sensor_modbus {

/// A map that cannot be used; what() names the file, the entry and the problem.
class MapError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class Function : std::uint8_t { holding = 0x03, input = 0x04 };
enum class ValueType : std::uint8_t { int16, uint16, int32, uint32, float32 };
enum class WordOrder : std::uint8_t { big, little };

std::string_view to_string(Function f) noexcept;
std::string_view to_string(ValueType t) noexcept;
/// Registers (16-bit words) a value of this type occupies.
constexpr std::size_t width(ValueType t) noexcept { return t == ValueType::int16 || t == ValueType::uint16 ? 1 : 2; }

struct Register {
  std::string channel;
  std::uint16_t address = 0;
  Function function = Function::input;
  ValueType type = ValueType::float32;
  WordOrder word_order = WordOrder::big;  ///< 32-bit types: which register holds the high word
  double scale = 1;                       ///< raw * scale = value in `unit`
  std::string unit;
  bool integer = false;  ///< published rounded to a whole number (energy in Wh)
  /// The values the device can really hold, in `unit` (map keys `min`, `max`); a poll reading
  /// outside fails. Energy channels default to 0 to 1e12 Wh: a meter never counts below zero,
  /// and no pile's meter reaches a terawatt-hour.
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  int line = 0;          ///< 1-based line in the map file, for messages
};

struct MeterMap {
  std::string source;  ///< file path, or "<built-in>/<model>.yaml"
  std::string model;
  std::string description;
  std::vector<Register> registers;
};

/// Parses and validates a map. Throws MapError naming `source`, the line and the entry.
MeterMap parse_map(std::string_view yaml_text, const std::string& source);
/// Loads a map file from disk (an absolute path).
MeterMap load_map_file(const std::string& path);
/// A shipped map compiled into the plugin, or nullopt when there is no such model.
std::optional<MeterMap> builtin_map(std::string_view model);
/// The shipped models, '|'-separated.
const char* builtin_model_list() noexcept;

/// One read request: consecutive registers of one function, at most 125 of them.
struct Block {
  Function function = Function::input;
  std::uint16_t start = 0;
  std::uint16_t count = 0;
  std::vector<std::size_t> registers;  ///< indexes into MeterMap::registers
};

/// Groups the map's registers into as few reads as possible without reading any register the
/// map does not name (meters answer an undefined address with an exception).
std::vector<Block> plan_reads(const MeterMap& map);

/// The value of `reg` from its raw words (words[0] is the register at reg.address), scaled to
/// its unit and rounded when the channel is integer. nullopt when the meter returned NaN or
/// infinity.
std::optional<double> decode(const Register& reg, std::span<const std::uint16_t> words) noexcept;
/// Whether a decoded value lies within the register's declared range.
inline bool in_range(const Register& reg, double value) noexcept { return value >= reg.min && value <= reg.max; }

}  // namespace sensor_modbus
