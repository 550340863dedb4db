// The broken-plugin matrix (DESIGN.md, Plugins, rule 10). Every plugin in
// tests/broken-plugins is broken in exactly one way, and each must be refused with its exact
// message: by the loader (load_plugin_file), by pilecored (exit 2, nothing started), by
// `pilectl plugins list` (REFUSED, exit 1), or, for a create that throws or returns null, by
// the runtime when it creates the instance (Runtime::run() == 3, pilecored exits non-zero).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "pilecore/build_key.hpp"
#include "pilecore/plugin.hpp"
#include "plugin_loader.hpp"
#include "runtime.hpp"
#include "site_config.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace pilecore::core;
namespace fs = std::filesystem;

namespace {

/// The directory as the loader names it (absolute, symlinks resolved).
std::string broken_dir() { return fs::weakly_canonical(PILECORE_BROKEN_PLUGIN_DIR).string(); }
std::string broken_file(const std::string& name) { return broken_dir() + "/" + name + ".so"; }

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

using pilecore::test::ProcessResult;
using pilecore::test::TempDir;

std::string describe(const ProcessResult& r) {
  return fmt::format("{}\n--- stdout ---\n{}--- stderr ---\n{}",
                     r.signal ? fmt::format("killed by signal {}", r.signal) : fmt::format("exit {}", r.exit_code), r.out, r.err);
}

ProcessResult run_program(const std::vector<std::string>& argv) { return pilecore::test::run_process(argv, {}, std::chrono::seconds(60)); }

/// A minimal valid site with one instance, 'probe', of `plugin`, and the connector's power stage
/// (from the production plugin directory, searched after the broken one).
std::string site_text(const std::string& plugin) {
  return fmt::format(
      "site:\n"
      "  id: BROKEN-1\n"
      "  name: Broken plugin test\n"
      "  location: {{lat: 31.2304, lon: 121.4737}}\n"
      "  timezone: Asia/Shanghai\n"
      "connectors:\n"
      "  - id: 1\n"
      "    type: gbt-dc\n"
      "    max_power_w: 60000\n"
      "plugins:\n"
      "  probe:\n"
      "    plugin: {}\n"
      "  power:\n"
      "    plugin: sim-power\n"
      "    connector: 1\n",
      plugin);
}
constexpr int kPluginLine = 12;  // line of "plugin: ..." in site_text()
constexpr int kPluginColumn = 13;

fs::path write_site(const TempDir& dir, const std::string& plugin) { return dir.write("site.yaml", site_text(plugin)); }

// ----------------------------------------------------------------------------------------------
// Refused when loaded.

// The API version the plugins here are built with (the messages quote it).
constexpr unsigned kMajor = PILECORE_API_MAJOR;
constexpr unsigned kMinor = PILECORE_API_MINOR;

struct LoadCase {
  const char* name;  // file is <name>.so in the broken-plugin directory
  std::string (*message)(const std::string& file);
};

const LoadCase kLoadCases[] = {
    {"no-entry",
     [](const std::string& f) {
       return f + ": not a pilecore plugin: it exports no 'pilecore_plugin_v2' symbol. "
                  "A plugin declares itself with PILECORE_PLUGIN(...) from <pilecore/plugin.hpp>.";
     }},
    {"api-major-next",
     [](const std::string& f) {
       // With API 2.0: "...built for API 3.0, this pilecore provides API 2.0. Rebuild the plugin
       // against pilecore-dev 2.x, or install a pilecore that provides API 3.x."
       return fmt::format("{}: plugin API mismatch: the plugin was built for API {}.0, this pilecore provides API {}.{}. "
                          "Rebuild the plugin against pilecore-dev {}.x, or install a pilecore that provides API {}.x.",
                          f, kMajor + 1, kMajor, kMinor, kMajor, kMajor + 1);
     }},
    {"api-major-previous",
     [](const std::string& f) {
       // A plugin built against SDK 1.1 on a 2.0 core: refused, and told to rebuild against 2.x.
       return fmt::format("{}: plugin API mismatch: the plugin was built for API {}.1, this pilecore provides API {}.{}. "
                          "Rebuild the plugin against pilecore-dev {}.x, or install a pilecore that provides API {}.x.",
                          f, kMajor - 1, kMajor, kMinor, kMajor, kMajor - 1);
     }},
    {"api-minor-next",
     [](const std::string& f) {
       // With API 2.0: "...needs API 2.1, this pilecore provides API 2.0. Upgrade pilecore, or
       // rebuild the plugin against pilecore-dev 2.0."
       return fmt::format("{}: plugin API too new: the plugin needs API {}.{}, this pilecore provides API {}.{}. "
                          "Upgrade pilecore, or rebuild the plugin against pilecore-dev {}.{}.",
                          f, kMajor, kMinor + 1, kMajor, kMinor, kMajor, kMinor);
     }},
    {"short-descriptor",
     [](const std::string& f) {
       // 112 and 176 are the sizes on LP64 targets (x86_64, aarch64, riscv64); see the test.
       return fmt::format("{}: damaged descriptor: it is 112 bytes, an API {}.{} descriptor has at least 176. "
                          "Rebuild the plugin against pilecore-dev.", f, kMajor, kMinor);
     }},
    {"wrong-build-key",
     [](const std::string& f) {
       return f + ": incompatible build: the plugin was built for 'aarch64;libc++', this pilecore for '" PILECORE_BUILD_KEY
                  "'. Rebuild the plugin with pilecore-dev on this system.";
     }},
    {"unknown-kind",
     [](const std::string& f) {
       return f + ": invalid descriptor: unknown plugin kind 99; this pilecore knows payment, link, sensor, risk, power, indicator and "
                  "strategy. Rebuild the plugin against pilecore-dev.";
     }},
    {"undefined-symbol",
     [](const std::string& f) {
       return f + ": cannot be loaded: undefined symbol: pilecore_broken_missing_function. "
              "Install the libraries it needs, or rebuild it against this pilecore-dev.";
     }},
    {"bad-config-default",
     [](const std::string& f) {
       return f + ": invalid configuration declaration in plugin 'bad-config-default': key 'interval_ms': the default is 5, "
                  "out of range: allowed 10 to 60000 ms. Fix the plugin's ConfigKey list and rebuild it.";
     }},
    {"bad-config-duplicate",
     [](const std::string& f) {
       return f + ": invalid configuration declaration in plugin 'bad-config-duplicate': key 'port' is declared twice. "
                  "Fix the plugin's ConfigKey list and rebuild it.";
     }},
    {"misnamed",
     [](const std::string& f) {
       return f + ": the file is named 'misnamed' but the plugin calls itself 'thermo-probe'. Rename the file to 'thermo-probe.so'.";
     }},
};

std::string case_name(const testing::TestParamInfo<LoadCase>& info) {
  std::string s = info.param.name;
  for (auto& c : s) c = c == '-' ? '_' : c;
  return s;
}

class BrokenPluginLoad : public testing::TestWithParam<LoadCase> {
 protected:
  void SetUp() override {
    if (std::string_view(GetParam().name) == "short-descriptor" && sizeof(void*) != 8) GTEST_SKIP() << "sizes written for LP64";
    file_ = broken_file(GetParam().name);
    ASSERT_TRUE(fs::is_regular_file(file_)) << file_ << " was not built";
    expected_ = GetParam().message(file_);
  }
  std::string file_;
  std::string expected_;
};

TEST_P(BrokenPluginLoad, LoaderRefusesWithExactMessage) {
  const LoadResult r = load_plugin_file(file_);
  EXPECT_EQ(r.plugin, nullptr);
  EXPECT_EQ(r.error, expected_);
}

TEST_P(BrokenPluginLoad, SiteValidationReportsTheRefusalAtThePluginKey) {
  PluginRegistry registry({PILECORE_BROKEN_PLUGIN_DIR, PILECORE_PLUGIN_DIR});
  const auto outcome = load_site_text(site_text(GetParam().name), "site.yaml", registry);
  EXPECT_FALSE(outcome.site);
  EXPECT_EQ(outcome.diagnostics.format(), fmt::format("site.yaml:{}:{}: error: 'plugins.probe.plugin': plugin '{}' is refused: {}\n",
                                                      kPluginLine, kPluginColumn, GetParam().name, expected_));
}

TEST_P(BrokenPluginLoad, DaemonDoesNotStartAndNamesTheFileAndTheFix) {
  TempDir tmp;
  const fs::path site = write_site(tmp, GetParam().name);
  const fs::path state = tmp.path() / "state";
  const auto r = run_program({std::string(PILECORE_BIN_DIR) + "/pilecored", "--config", site.string(), "--plugin-dir",
                              PILECORE_BROKEN_PLUGIN_DIR, "--plugin-dir", PILECORE_PLUGIN_DIR, "--state-dir", state.string()});
  ASSERT_EQ(r.signal, 0) << describe(r);
  EXPECT_EQ(r.exit_code, 2) << describe(r);
  EXPECT_EQ(r.err, fmt::format("{}:{}:{}: error: 'plugins.probe.plugin': plugin '{}' is refused: {}\n"
                               "pilecored: {}: 1 error(s); not starting. Check it with: pilectl config validate {}\n",
                               site.string(), kPluginLine, kPluginColumn, GetParam().name, expected_, site.string(), site.string()))
      << describe(r);
  // Nothing was started: the state directory (database) was never created.
  EXPECT_FALSE(fs::exists(state));
}

/// pilectl's name column is as wide as the longest plugin file name in the directory, at least 18.
std::size_t name_column_width() {
  std::size_t width = 18;
  for (const auto& entry : std::filesystem::directory_iterator(PILECORE_BROKEN_PLUGIN_DIR)) {
    if (entry.path().extension() == ".so") width = std::max(width, entry.path().stem().string().size());
  }
  return width;
}

TEST_P(BrokenPluginLoad, PilectlListMarksItRefused) {
  const auto r = run_program({std::string(PILECORE_BIN_DIR) + "/pilectl", "--plugin-dir", PILECORE_BROKEN_PLUGIN_DIR, "plugins", "list"});
  ASSERT_EQ(r.signal, 0) << describe(r);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  const std::string line = fmt::format("{:<{}} {:<10} {}\n", GetParam().name, name_column_width(), "REFUSED", expected_);
  EXPECT_NE(r.out.find(line), std::string::npos) << "expected the line\n" << line << "in\n" << describe(r);
}

TEST_P(BrokenPluginLoad, PilectlShowGivesTheRefusal) {
  const auto r = run_program(
      {std::string(PILECORE_BIN_DIR) + "/pilectl", "--plugin-dir", PILECORE_BROKEN_PLUGIN_DIR, "plugins", "show", GetParam().name});
  ASSERT_EQ(r.signal, 0) << describe(r);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  EXPECT_EQ(r.err, "pilectl: " + expected_ + "\n") << describe(r);
}

INSTANTIATE_TEST_SUITE_P(BrokenPlugins, BrokenPluginLoad, testing::ValuesIn(kLoadCases), case_name);

// ----------------------------------------------------------------------------------------------
// Accepted by the loader, refused when the runtime creates the instance.

struct CreateCase {
  const char* name;
  std::string (*message)(const std::string& file);
};

const CreateCase kCreateCases[] = {
    {"create-throws",
     [](const std::string& f) {
       return "instance 'probe': plugin 'create-throws' (" + f + ") could not create an instance: cannot open /dev/ttyBROKEN: No such device";
     }},
    {"create-null",
     [](const std::string& f) {
       return "instance 'probe': plugin 'create-null' (" + f +
              ") returned no instance and gave no reason; report this to its vendor (pilecore tests)";
     }},
};

std::string create_case_name(const testing::TestParamInfo<CreateCase>& info) {
  std::string s = info.param.name;
  for (auto& c : s) c = c == '-' ? '_' : c;
  return s;
}

class BrokenPluginCreate : public testing::TestWithParam<CreateCase> {
 protected:
  void SetUp() override {
    file_ = broken_file(GetParam().name);
    ASSERT_TRUE(fs::is_regular_file(file_)) << file_ << " was not built";
    expected_ = GetParam().message(file_);
  }
  std::string file_;
  std::string expected_;
};

TEST_P(BrokenPluginCreate, LoaderAcceptsIt) {
  const LoadResult r = load_plugin_file(file_);
  ASSERT_NE(r.plugin, nullptr) << r.error;
  EXPECT_EQ(r.error, "");
  EXPECT_EQ(r.plugin->name, GetParam().name);
}

TEST_P(BrokenPluginCreate, RuntimeRefusesToStart) {
  TempDir tmp;
  PluginRegistry registry({PILECORE_BROKEN_PLUGIN_DIR, PILECORE_PLUGIN_DIR});
  auto outcome = load_site_text(site_text(GetParam().name), "site.yaml", registry);
  ASSERT_TRUE(outcome.site) << outcome.diagnostics.format();
  RuntimeOptions options;
  options.state_dir = tmp.path() / "state";
  options.notify_systemd = false;
  Runtime runtime(std::move(*outcome.site), options);
  EXPECT_EQ(runtime.run(), 3);
  EXPECT_EQ(runtime.start_error(), expected_);
  EXPECT_FALSE(runtime.ready());
}

TEST_P(BrokenPluginCreate, DaemonExitsNonZeroAndSaysWhy) {
  TempDir tmp;
  const fs::path site = write_site(tmp, GetParam().name);
  const auto r = run_program({std::string(PILECORE_BIN_DIR) + "/pilecored", "--config", site.string(), "--plugin-dir",
                              PILECORE_BROKEN_PLUGIN_DIR, "--plugin-dir", PILECORE_PLUGIN_DIR, "--state-dir", (tmp.path() / "state").string()});
  ASSERT_EQ(r.signal, 0) << describe(r);
  EXPECT_EQ(r.exit_code, 3) << describe(r);
  const std::string last_line = "pilecored: start-up failed: " + expected_ + "\n";
  ASSERT_GE(r.err.size(), last_line.size()) << describe(r);
  EXPECT_EQ(r.err.substr(r.err.size() - last_line.size()), last_line) << describe(r);
}

TEST_P(BrokenPluginCreate, ValidateAcceptsTheSiteFile) {
  // The site file itself is fine: only creating the instance fails.
  TempDir tmp;
  const fs::path site = write_site(tmp, GetParam().name);
  const auto r = run_program(
      {std::string(PILECORE_BIN_DIR) + "/pilectl", "--plugin-dir", PILECORE_BROKEN_PLUGIN_DIR, "--plugin-dir", PILECORE_PLUGIN_DIR, "config",
       "validate", "-q", site.string()});
  ASSERT_EQ(r.signal, 0) << describe(r);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
}

INSTANTIATE_TEST_SUITE_P(BrokenPlugins, BrokenPluginCreate, testing::ValuesIn(kCreateCases), create_case_name);

// ----------------------------------------------------------------------------------------------
// Where they are, and where they are not.

TEST(BrokenPluginsPlacement, NeverInTheProductionPluginDirectory) {
  ASSERT_NE(fs::weakly_canonical(PILECORE_BROKEN_PLUGIN_DIR), fs::weakly_canonical(PILECORE_PLUGIN_DIR));
  std::vector<std::string> names;
  for (const auto& c : kLoadCases) names.emplace_back(c.name);
  for (const auto& c : kCreateCases) names.emplace_back(c.name);
  names.emplace_back("thermo-probe");  // what misnamed.so calls itself
  for (const auto& n : names) {
    EXPECT_TRUE(n == "thermo-probe" || fs::is_regular_file(broken_file(n))) << n;
    EXPECT_FALSE(fs::exists(fs::path(PILECORE_PLUGIN_DIR) / (n + ".so"))) << n << ".so is in the production plugin directory";
  }
}

TEST(BrokenPluginsPlacement, NotInstalled) {
  // CMake writes an install script per directory; the broken plugins' must install nothing.
  const fs::path script = fs::path(PILECORE_BIN_DIR).parent_path() / "tests" / "broken-plugins" / "cmake_install.cmake";
  ASSERT_TRUE(fs::exists(script)) << script;
  const std::string text = slurp(script);
  EXPECT_EQ(text.find("file(INSTALL"), std::string::npos) << text;
  EXPECT_EQ(text.find(".so"), std::string::npos) << text;
}

TEST(BrokenPluginsPlacement, ListShowsTheCreateFailuresAsLoadable) {
  // create-throws and create-null pass every load-time check: pilectl lists them normally.
  const auto r = run_program({std::string(PILECORE_BIN_DIR) + "/pilectl", "--plugin-dir", PILECORE_BROKEN_PLUGIN_DIR, "plugins", "list"});
  ASSERT_EQ(r.signal, 0) << describe(r);
  for (const auto& c : kCreateCases) {
    const std::string line =
        fmt::format("{:<{}} {:<10} {:<9} {:<5} {}\n", c.name, name_column_width(), "sensor", "1.0.0", fmt::format("{}.{}", PILECORE_API_MAJOR, PILECORE_API_MINOR),
                    broken_file(c.name));
    EXPECT_NE(r.out.find(line), std::string::npos) << line << describe(r);
  }
}

}  // namespace
