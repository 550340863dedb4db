// pilecore plugin SDK: the plugin base class, the descriptor and the entry point.
//
// A plugin is a shared object exporting exactly one symbol, pilecore_plugin_v2 (Boost.DLL
// alias), that points at a const PluginDescriptor. Write it with PILECORE_PLUGIN:
//
//   class HelloSensor final : public pilecore::sensor::Sensor {
//    public:
//     explicit HelloSensor(pilecore::Host& host);   // read host.config() here
//     ...
//   };
//   PILECORE_PLUGIN(HelloSensor, {.name = "hello-sensor", .version = "1.0.0", ...,
//                                 .config = hello_keys})
//
// A class that also declares
//   static void validate(const pilecore::ConfigValues& config, pilecore::ConfigReport& report);
// gets it called at validate time (see ValidateFn).
#pragma once

#include <boost/dll/alias.hpp>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "pilecore/build_key.hpp"
#include "pilecore/config.hpp"
#include "pilecore/host.hpp"
#include "pilecore/status.hpp"
#include "pilecore/version.hpp"

namespace pilecore {
inline namespace v2 {

enum class Kind : std::uint32_t {
  payment = 1,
  link = 2,
  sensor = 3,
  risk = 4,
  power = 5,
  indicator = 6,
  strategy = 7,
};

constexpr std::string_view to_string(Kind k) noexcept {
  switch (k) {
    case Kind::payment: return "payment";
    case Kind::link: return "link";
    case Kind::sensor: return "sensor";
    case Kind::risk: return "risk";
    case Kind::power: return "power";
    case Kind::indicator: return "indicator";
    case Kind::strategy: return "strategy";
  }
  return "unknown";
}

/// Base of every plugin instance. The core calls start() once after all instances are created,
/// and stop() once, in reverse order, before destroying them. Both run on the core's strand.
class Plugin {
 public:
  virtual ~Plugin() = default;
  /// Begin work (open devices, set timers). A non-ok status stops the daemon's start-up when the
  /// instance is required, or marks it failed otherwise.
  virtual Status start() noexcept = 0;
  /// Cancel timers, close devices, join threads. Must not throw and must return promptly.
  virtual void stop() noexcept = 0;
};

using CreateFn = Plugin* (*)(Host& host, std::string* error) noexcept;
using DestroyFn = void (*)(Plugin* instance) noexcept;
/// Checks an instance's configuration beyond what the declarations say (files it names exist
/// and parse, formulas compile, combinations of keys make sense), before any instance is
/// created: `pilectl config validate` and pilecored both call it, so a site file that validates
/// is one pilecored starts. Reports each problem through `report`; called on the core's thread,
/// with no Host (nothing has started yet).
using ValidateFn = void (*)(const ConfigValues& config, ConfigReport& report) noexcept;

/// What the entry symbol points at. The first three members are frozen for every API major, so
/// a core can always read the version of a plugin built for another one. After them the layout
/// only grows at the end (the reserved slots come first).
struct PluginDescriptor {
  std::uint32_t struct_size;  ///< sizeof(PluginDescriptor) in the plugin's SDK
  std::uint16_t api_major;
  std::uint16_t api_minor;
  Kind kind;
  const char* name;         ///< [a-z][a-z0-9-]*; the file is <name>.so
  const char* version;      ///< the plugin's own version, e.g. "1.2.0"
  const char* vendor;
  const char* license;      ///< SPDX identifier
  const char* description;  ///< one line
  const char* build_key;    ///< PILECORE_BUILD_KEY of the plugin's build
  const char* compiler;     ///< informational
  const ConfigKey* config;
  std::uint32_t config_count;
  std::uint32_t config_key_size;  ///< sizeof(ConfigKey) in the plugin's SDK
  CreateFn create;
  DestroyFn destroy;
  ValidateFn validate;  ///< nullptr when the plugin has no checks beyond its declarations
  const void* reserved[8];
};

/// Size of a descriptor with every API 2.0 member; the core refuses anything shorter.
inline constexpr std::size_t descriptor_size_v2_0 = offsetof(PluginDescriptor, reserved) + sizeof(const void* [8]);

/// What a plugin author fills in; PILECORE_PLUGIN turns it into the descriptor.
struct PluginInfo {
  const char* name = nullptr;
  const char* version = nullptr;
  const char* vendor = nullptr;
  const char* license = nullptr;
  const char* description = nullptr;
  std::span<const ConfigKey> config{};
};

namespace detail {

template <class T>
Plugin* create_instance(Host& host, std::string* error) noexcept {
  try {
    return new T(host);
  } catch (const std::exception& e) {
    try {
      if (error) *error = e.what();
    } catch (...) {
    }
  } catch (...) {
    try {
      if (error) *error = "unknown exception";
    } catch (...) {
    }
  }
  return nullptr;
}

template <class T>
void destroy_instance(Plugin* instance) noexcept {
  delete static_cast<T*>(instance);
}

/// A plugin class opts into deep validation with
///   static void validate(const pilecore::ConfigValues& config, pilecore::ConfigReport& report);
template <class T>
concept HasValidate = requires(const ConfigValues& c, ConfigReport& r) { T::validate(c, r); };

template <class T>
void validate_instance(const ConfigValues& config, ConfigReport& report) noexcept {
  // An exception is the plugin's bug, not the integrator's: it is reported, not propagated.
  try {
    T::validate(config, report);
  } catch (const std::exception& e) {
    report.error("", std::string("the plugin's validate failed: ") + e.what());
  } catch (...) {
    report.error("", "the plugin's validate failed with an unknown exception");
  }
}

template <class T>
constexpr ValidateFn validate_function() {
  if constexpr (HasValidate<T>) {
    return &validate_instance<T>;
  } else {
    return nullptr;
  }
}

template <class T>
constexpr PluginDescriptor make_descriptor(const PluginInfo& info) {
  static_assert(std::is_base_of_v<Plugin, T>, "a plugin class derives from one kind interface");
  static_assert(!std::is_abstract_v<T>,
                "PILECORE_PLUGIN: the plugin class does not implement every method of its kind interface; "
                "the compiler's notes below name each pure virtual method still missing an override");
  if constexpr (std::is_abstract_v<T>) {
    // Never evaluated: it is here for the compiler's diagnostic on it, which lists every missing
    // method ("because the following virtual functions are pure within ..."). A static_assert
    // alone stops the compiler before it says which.
    (void)sizeof(new T(*static_cast<Host*>(nullptr)));
  } else {
    static_assert(std::is_constructible_v<T, Host&>, "a plugin class is constructible from pilecore::Host&");
  }
  return PluginDescriptor{
      .struct_size = sizeof(PluginDescriptor),
      .api_major = PILECORE_API_MAJOR,
      .api_minor = PILECORE_API_MINOR,
      .kind = T::kind,
      .name = info.name,
      .version = info.version,
      .vendor = info.vendor,
      .license = info.license,
      .description = info.description,
      .build_key = PILECORE_BUILD_KEY,
      .compiler = PILECORE_BUILD_COMPILER,
      .config = info.config.data(),
      .config_count = static_cast<std::uint32_t>(info.config.size()),
      .config_key_size = sizeof(ConfigKey),
      .create = &create_instance<T>,
      .destroy = &destroy_instance<T>,
      .validate = validate_function<T>(),
      .reserved = {},
  };
}

}  // namespace detail
}  // namespace v2
}  // namespace pilecore

/// Declares the plugin class `ClassName` (derived from one kind interface) with the given
/// pilecore::PluginInfo, and exports the entry symbol. Use once per shared object, at namespace
/// scope, outside any namespace.
#define PILECORE_PLUGIN(ClassName, ...)                                                      \
  namespace pilecore_plugin_entry {                                                          \
  extern const ::pilecore::PluginDescriptor descriptor;                                      \
  const ::pilecore::PluginDescriptor descriptor =                                            \
      ::pilecore::detail::make_descriptor<ClassName>(::pilecore::PluginInfo __VA_ARGS__);    \
  }                                                                                          \
  BOOST_DLL_ALIAS(pilecore_plugin_entry::descriptor, PILECORE_ENTRY_SYMBOL)
