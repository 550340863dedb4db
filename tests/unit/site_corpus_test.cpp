// The malformed site-file corpus (tests/corpus/site): every X.yaml is validated with the
// plugins of the build tree and its diagnostics must equal X.expected exactly; `pilectl config
// validate` must exit 1 for every malformed file, 0 for the valid-*.yaml ones, and never crash;
// and pilecored must agree with it on every file (it starts exactly on the valid ones).
// One ctest case per file (see tests/corpus/site/README.md for the format).
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "plugin_loader.hpp"
#include "site_config.hpp"
#include "test_support.hpp"

using namespace pilecore::core;
namespace fs = std::filesystem;

namespace {

fs::path corpus_dir() { return fs::path(PILECORE_TEST_SOURCE_DIR) / "tests" / "corpus" / "site"; }

std::vector<std::string> corpus_files() {
  std::vector<std::string> names;
  std::error_code ec;
  for (fs::directory_iterator it(corpus_dir(), ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().extension() == ".yaml") names.push_back(it->path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

bool is_valid_case(const std::string& name) { return name.rfind("valid-", 0) == 0; }

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  for (std::size_t pos = 0; (pos = s.find(from, pos)) != std::string::npos; pos += to.size()) s.replace(pos, from.size(), to);
}

std::string test_name(const testing::TestParamInfo<std::string>& info) {
  std::string s = info.param.substr(0, info.param.size() - std::string(".yaml").size());
  for (auto& c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return s;
}

class SiteCorpus : public testing::TestWithParam<std::string> {
 protected:
  [[nodiscard]] fs::path file() const { return corpus_dir() / GetParam(); }
  [[nodiscard]] fs::path expected_file() const { return fs::path(file()).replace_extension(".expected"); }
};

TEST_P(SiteCorpus, DiagnosticsMatchExpected) {
  ASSERT_TRUE(fs::exists(expected_file())) << "every corpus file needs its .expected: " << expected_file();
  PluginRegistry registry({PILECORE_PLUGIN_DIR});
  const auto outcome = load_site(file(), registry);

  // Name the file as it is named in the corpus directory, whatever the absolute path.
  Diagnostics named(GetParam());
  for (const auto& d : outcome.diagnostics.items()) named.add(d.pos, d.severity, d.message);
  std::string expected = slurp(expected_file());
  replace_all(expected, "@PLUGIN_DIR@", PILECORE_PLUGIN_DIR);
  replace_all(expected, "@INSTALLED@", fmt::format("{}", fmt::join(registry.installed(), ", ")));
  EXPECT_EQ(named.format(), expected);

  if (is_valid_case(GetParam())) {
    EXPECT_TRUE(outcome.site) << named.format();
    EXPECT_FALSE(outcome.diagnostics.has_errors());
  } else {
    EXPECT_FALSE(outcome.site);
    EXPECT_TRUE(outcome.diagnostics.has_errors()) << "a malformed corpus file must give at least one error";
  }
}

TEST_P(SiteCorpus, PilectlValidateExitCode) {
  const auto r = pilecore::test::run_process(
      {std::string(PILECORE_BIN_DIR) + "/pilectl", "--plugin-dir", PILECORE_PLUGIN_DIR, "config", "validate", file().string()}, {},
      std::chrono::seconds(60));
  ASSERT_EQ(r.signal, 0) << "pilectl crashed (signal " << r.signal << ")\n" << r.err;
  if (is_valid_case(GetParam())) {
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out.rfind(file().string() + ": valid: site ", 0), 0u) << r.out;
  } else {
    EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
    EXPECT_NE(r.err.find(file().string() + ": invalid: "), std::string::npos) << r.err;
    // Every diagnostic names the file as given on the command line.
    std::istringstream lines(r.err);
    for (std::string line; std::getline(lines, line);) {
      EXPECT_EQ(line.rfind(file().string() + ":", 0), 0u) << line;
    }
  }
}

/// The diagnostic lines of a program's stderr ("F:L:C: error: ..."), without its own verdict.
std::vector<std::string> diagnostic_lines(const std::string& err, const std::string& file) {
  std::vector<std::string> out;
  std::istringstream lines(err);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(file + ":", 0) == 0 && (line.find(": error: ") != std::string::npos || line.find(": warning: ") != std::string::npos)) {
      out.push_back(line);
    }
  }
  return out;
}

// "valid" means "pilecored starts": for every corpus file, pilectl config validate and a real
// pilecored (started with --check: every plugin created and started, then stopped) agree, and
// say the same things about the file.
TEST_P(SiteCorpus, PilecoredAgreesWithValidate) {
  const auto validate = pilecore::test::run_process(
      {std::string(PILECORE_BIN_DIR) + "/pilectl", "--plugin-dir", PILECORE_PLUGIN_DIR, "config", "validate", file().string()}, {},
      std::chrono::seconds(60));
  pilecore::test::TempDir tmp;
  const auto daemon = pilecore::test::run_process({std::string(PILECORE_BIN_DIR) + "/pilecored", "--config", file().string(), "--plugin-dir",
                                                   PILECORE_PLUGIN_DIR, "--state-dir", (tmp.path() / "state").string(), "--socket", "none",
                                                   "--check"},
                                                  {}, std::chrono::seconds(60));
  ASSERT_EQ(validate.signal, 0) << validate.err;
  ASSERT_EQ(daemon.signal, 0) << daemon.err;
  if (validate.exit_code == 0) {
    EXPECT_EQ(daemon.exit_code, 0) << "pilectl config validate said valid, but pilecored did not start:\n" << daemon.err;
  } else {
    EXPECT_EQ(daemon.exit_code, 2) << "pilectl config validate refused the file, pilecored did not refuse it the same way:\n" << daemon.err;
  }
  EXPECT_EQ(diagnostic_lines(daemon.err, file().string()), diagnostic_lines(validate.err + validate.out, file().string()));
}

INSTANTIATE_TEST_SUITE_P(Corpus, SiteCorpus, testing::ValuesIn(corpus_files()), test_name);

TEST(SiteCorpusRegression, LeadingZerosAreDecimalEverywhere) {
  // The validator reads 010 as ten; the values handed to the runtime must agree with it.
  PluginRegistry registry({PILECORE_PLUGIN_DIR});
  const auto outcome = load_site(corpus_dir() / "valid-fuzz-leading-zeros.yaml", registry);
  ASSERT_TRUE(outcome.site) << outcome.diagnostics.format();
  const auto& site = *outcome.site;
  EXPECT_DOUBLE_EQ(site.latitude, 31.5);
  EXPECT_DOUBLE_EQ(site.longitude, 121.25);
  ASSERT_EQ(site.connectors.size(), 2u);
  EXPECT_EQ(site.connectors[0].id, 9u);
  EXPECT_EQ(site.connectors[0].max_power_w, 7000);
  EXPECT_EQ(site.connectors[1].id, 10u);
  EXPECT_EQ(site.connectors[1].max_power_w, 60000);
  ASSERT_EQ(site.instances.size(), 3u);
  EXPECT_EQ(site.instances[0].connector, std::optional<std::uint32_t>(10));
  EXPECT_EQ(site.instances[1].connector, std::optional<std::uint32_t>(9));
  EXPECT_EQ(site.connectors[0].power, "power-9");
  EXPECT_EQ(site.connectors[1].power, "power-10");
  EXPECT_EQ(site.instances[0].config->get_integer("interval_ms"), std::optional<std::int64_t>(1000));
}

TEST(SiteCorpusContents, EnoughMalformedAndValidFiles) {
  const auto names = corpus_files();
  const auto valid = std::count_if(names.begin(), names.end(), is_valid_case);
  EXPECT_GE(static_cast<long>(names.size()) - valid, 30);
  EXPECT_GE(valid, 1);
  // No stray .expected without its .yaml.
  for (const auto& e : fs::directory_iterator(corpus_dir())) {
    if (e.path().extension() == ".expected") {
      EXPECT_TRUE(fs::exists(fs::path(e.path()).replace_extension(".yaml"))) << e.path();
    }
  }
}

}  // namespace
