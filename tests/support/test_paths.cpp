#include "test_paths.hpp"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

namespace pilecore::test {

namespace {

[[noreturn]] void fail(const std::string& why) {
  std::fprintf(stderr, "unit tests: %s\n", why.c_str());
  std::exit(2);
}

TestPaths load() {
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) fail("cannot find the executable (/proc/self/exe): " + ec.message());
  const auto file = exe.string() + ".paths";
  std::ifstream in(file);
  if (!in) fail("cannot read " + file + " (CMake writes it beside the executable; rebuild)");
  std::map<std::string, std::string> values;
  std::string line;
  while (std::getline(in, line)) {
    const auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    values[line.substr(0, eq)] = line.substr(eq + 1);
  }
  auto take = [&](const char* key) {
    const auto it = values.find(key);
    if (it == values.end() || it->second.empty()) fail(file + " has no " + key);
    return it->second;
  };
  return TestPaths{take("source_dir"), take("test_plugin_dir"), take("broken_plugin_dir"), take("plugin_dir"),
                   take("bin_dir")};
}

}  // namespace

const TestPaths& test_paths() {
  static const TestPaths paths = load();
  return paths;
}

}  // namespace pilecore::test
