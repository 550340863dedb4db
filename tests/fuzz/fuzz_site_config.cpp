// libFuzzer target: the site file parser and validator (YAML -> diagnostics), with the plugins
// of the build tree installed so plugin config blocks are validated too.
//
//   cmake --preset fuzz && cmake --build build/fuzz --target fuzz_site_config
//   build/fuzz/tests/fuzz/fuzz_site_config -max_total_time=600 build/fuzz/corpus tests/corpus/site
#include <cstddef>
#include <cstdint>
#include <string>

#include "plugin_loader.hpp"
#include "site_config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // Created once: loading a plugin is the expensive part, and libraries are never unloaded.
  static auto* registry = new pilecore::core::PluginRegistry({PILECORE_PLUGIN_DIR});
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto outcome = pilecore::core::load_site_text(text, "fuzz.yaml", *registry);
  // Formatting every diagnostic is part of what an operator sees; exercise it too.
  (void)outcome.diagnostics.format();
  return 0;
}
