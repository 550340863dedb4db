// strategy-formula through the real loader and runtime: a site file in a temp directory, checked
// by load_site against the built plugins, run by core::Runtime; the plugin object is reached on
// the core's strand with Runtime::dispatch. Formula errors are refused when the site file is
// validated (the plugin's validate: pilectl and pilecored alike), at the formula key, and
// `pilectl config validate` is run as an integrator runs it.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <future>
#include <limits>
#include <string>
#include <vector>

#include "pilecore/pilecore.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace pilecore::core;
using pilecore::test::eventually;
using pilecore::test::run_process;
using pilecore::test::RunningSite;
using pilecore::test::TempDir;

namespace {

std::string site_with(const std::string& strategy_config) {
  return R"(site:
  id: FORMULA-1
  name: Formula strategy test
  location: {lat: 31.2, lon: 121.5}
  timezone: Asia/Shanghai
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
  strat:
    plugin: strategy-formula
    config:
)" + strategy_config;
}

std::vector<std::filesystem::path> dirs() { return {PILECORE_PLUGIN_DIR}; }

/// A running site with one strategy-formula instance called "strat".
class FormulaSite {
 public:
  explicit FormulaSite(const std::string& config) : site_(dir_, site_with(config), dirs()) {
    ready_ = eventually([&] { return site_.runtime().ready(); }, std::chrono::seconds(10));
  }
  [[nodiscard]] bool ready() const { return ready_; }
  [[nodiscard]] std::string start_error() { return site_.runtime().start_error(); }
  RunningSite& site() { return site_; }

  strategy::Setpoint compute(const std::vector<strategy::Variable>& vars) {
    std::promise<strategy::Setpoint> p;
    auto f = p.get_future();
    site_.runtime().dispatch([&] {
      Plugin* plugin = site_.runtime().find_plugin("strat");
      if (plugin == nullptr || site_.runtime().kind_of("strat") != Kind::strategy) {
        p.set_value({.status = Status::error(StatusCode::failed, "TEST: no running strategy instance 'strat'"), .watts = -1});
        return;
      }
      p.set_value(static_cast<strategy::Strategy*>(plugin)->compute(vars));
    });
    if (f.wait_for(std::chrono::seconds(5)) != std::future_status::ready) {
      return {.status = Status::error(StatusCode::timeout, "TEST: the strand did not run the call"), .watts = -1};
    }
    return f.get();
  }

 private:
  TempDir dir_;
  RunningSite site_;
  bool ready_ = false;
};

/// Validates the site, expecting the plugin's validate to refuse it: returns the diagnostics.
std::string refusal_of(const std::string& config) {
  PluginRegistry registry(dirs());
  auto outcome = load_site_text(site_with(config), "site.yaml", registry);
  EXPECT_FALSE(outcome.site) << "the site file must be refused when it is validated";
  return outcome.diagnostics.format();
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

const std::string kSeed = "      formula: base_power * (1 + 0.02 * battery_temperature)\n";

}  // namespace

TEST(StrategyFormula, SeedFormulaScalesBasePowerWithBatteryTemperature) {
  FormulaSite site(kSeed);
  ASSERT_TRUE(site.ready()) << site.start_error();
  auto sp = site.compute({{"base_power", 45000}, {"battery_temperature", 25}});
  ASSERT_TRUE(sp.status.ok()) << sp.status.message();
  EXPECT_EQ(sp.watts, 67500);

  // Names the formula does not use, known or not, are ignored; the order does not matter.
  sp = site.compute({{"soc", 40}, {"grid_price", 1.2}, {"battery_temperature", 0}, {"base_power", 45000}});
  ASSERT_TRUE(sp.status.ok()) << sp.status.message();
  EXPECT_EQ(sp.watts, 45000);
  sp = site.compute({{"battery_temperature", -10}, {"base_power", 30000}});
  ASSERT_TRUE(sp.status.ok()) << sp.status.message();
  EXPECT_EQ(sp.watts, 24000);

  // The instance reports what it evaluates.
  const auto all = site.site().runtime().instances();
  ASSERT_EQ(all.size(), 2u);  // the connector's power stage, then the strategy
  EXPECT_EQ(all[1].name, "strat");
  EXPECT_EQ(all[1].health, "up");
  EXPECT_TRUE(contains(all[1].detail, "base_power * (1 + 0.02 * battery_temperature)")) << all[1].detail;
  EXPECT_TRUE(contains(all[1].detail, "base_power, battery_temperature")) << all[1].detail;
  EXPECT_EQ(site.site().stop(), 0);
}

TEST(StrategyFormula, AppliesMinAndMaxBoundsAndRoundsToWholeWatts) {
  FormulaSite site("      formula: base_power\n      min_power_w: 3000\n      max_power_w: 50000\n");
  ASSERT_TRUE(site.ready()) << site.start_error();
  EXPECT_EQ(site.compute({{"base_power", 1000}}).watts, 3000) << "the floor";
  EXPECT_EQ(site.compute({{"base_power", 0}}).watts, 3000) << "the floor applies to 0 too";
  EXPECT_EQ(site.compute({{"base_power", 45000}}).watts, 45000);
  EXPECT_EQ(site.compute({{"base_power", 70000}}).watts, 50000) << "the ceiling";
  EXPECT_EQ(site.compute({{"base_power", 4000.4}}).watts, 4000);
  EXPECT_EQ(site.compute({{"base_power", 4000.6}}).watts, 4001);
  EXPECT_EQ(site.compute({{"base_power", 4000.5}}).watts, 4001) << "halves round away from zero";
  auto sp = site.compute({{"base_power", 70000}});
  EXPECT_TRUE(sp.status.ok()) << "a bounded result is still a good answer";
}

TEST(StrategyFormula, WithoutBoundsTheResultIsOnlyRounded) {
  // The plugin does not know the connector's 60 kW: above it is the core's clamp to apply.
  FormulaSite site("      formula: \"soc < 80 ? base_power * 2 : min(base_power, 7000)\"\n");
  ASSERT_TRUE(site.ready()) << site.start_error();
  EXPECT_EQ(site.compute({{"soc", 50}, {"base_power", 45000}}).watts, 90000);
  EXPECT_EQ(site.compute({{"soc", 90}, {"base_power", 45000}}).watts, 7000);
}

TEST(StrategyFormula, MaxBelowMinIsRefusedAtValidation) {
  const auto err = refusal_of(kSeed + "      min_power_w: 5000\n      max_power_w: 4000\n");
  EXPECT_TRUE(contains(err, "site.yaml:17:20: error: 'plugins.strat.config.max_power_w': max_power_w (4000 W) is below min_power_w (5000 W)")) << err;
}

TEST(StrategyFormula, SyntaxErrorIsRefusedAtTheFormulaWithMuparsersMessageAndPosition) {
  auto err = refusal_of("      formula: \"base_power * (1 + \"\n");
  EXPECT_EQ(err.rfind("site.yaml:15:16: error: 'plugins.strat.config.formula': formula \"base_power * (1 + \"", 0), 0u) << err;
  EXPECT_TRUE(contains(err, "Unexpected end of expression at position 19")) << err;

  err = refusal_of("      formula: base_power ** 2\n");
  EXPECT_TRUE(contains(err, "Unexpected operator \"*\" found at position 12")) << err;

  // muparser's message for an unbalanced parenthesis has no position: the plugin adds it.
  err = refusal_of("      formula: (base_power\n");
  EXPECT_TRUE(contains(err, "Missing parenthesis at position 12")) << err;
}

TEST(StrategyFormula, UnknownVariableIsRefusedNamingIt) {
  const auto err = refusal_of("      formula: base_power * (1 + 0.02 * batery_temperature) + grid_bonus\n");
  EXPECT_TRUE(contains(err, "unknown variable \"batery_temperature\" at position 25 (did you mean \"battery_temperature\"?)")) << err;
  EXPECT_TRUE(contains(err, "unknown variable \"grid_bonus\" at position 47")) << err;
  EXPECT_TRUE(contains(err, "declare others under 'variables'")) << err;
  EXPECT_TRUE(contains(err, "ambient_temperature")) << "the message lists the standard variables: " << err;
}

TEST(StrategyFormula, DeclaredExtraVariablesMayBeUsed) {
  FormulaSite site(
      "      formula: base_power * grid_factor + bonus_w\n"
      "      variables: [grid_factor, bonus_w, soc]\n");  // a standard name listed again is harmless
  ASSERT_TRUE(site.ready()) << site.start_error();
  auto sp = site.compute({{"base_power", 40000}, {"grid_factor", 0.5}, {"bonus_w", 1000}});
  ASSERT_TRUE(sp.status.ok()) << sp.status.message();
  EXPECT_EQ(sp.watts, 21000);

  // A declared variable the formula does not use is not required.
  FormulaSite unused("      formula: base_power\n      variables: [grid_factor]\n");
  ASSERT_TRUE(unused.ready()) << unused.start_error();
  EXPECT_TRUE(unused.compute({{"base_power", 1}}).status.ok());
}

TEST(StrategyFormula, InvalidDeclaredVariableNameIsRefused) {
  const auto err = refusal_of(kSeed + "      variables: [grid-price]\n");
  EXPECT_TRUE(contains(err, "'plugins.strat.config.variables': variables: 'grid-price' is not a valid variable name")) << err;
}

TEST(StrategyFormula, MissingVariableIsAnErrorByDefault) {
  FormulaSite site(kSeed);
  ASSERT_TRUE(site.ready()) << site.start_error();
  auto sp = site.compute({{"base_power", 45000}, {"soc", 40}});
  EXPECT_FALSE(sp.status.ok());
  EXPECT_EQ(sp.status.code(), StatusCode::invalid_argument);
  EXPECT_TRUE(contains(sp.status.message(), "the formula uses battery_temperature but it was not supplied")) << sp.status.message();
  sp = site.compute({});
  EXPECT_FALSE(sp.status.ok());
  EXPECT_TRUE(contains(sp.status.message(), "base_power, battery_temperature but they were not supplied")) << sp.status.message();
  // A value from an earlier call is not reused silently.
  ASSERT_TRUE(site.compute({{"base_power", 45000}, {"battery_temperature", 25}}).status.ok());
  EXPECT_FALSE(site.compute({{"base_power", 45000}}).status.ok());
}

TEST(StrategyFormula, MissingVariableCountsAsZeroWhenConfigured) {
  FormulaSite site(kSeed + "      on_missing: zero\n");
  ASSERT_TRUE(site.ready()) << site.start_error();
  auto sp = site.compute({{"base_power", 45000}});
  ASSERT_TRUE(sp.status.ok()) << sp.status.message();
  EXPECT_EQ(sp.watts, 45000) << "battery_temperature taken as 0";
  // Also after a call that supplied it: the old value is not kept.
  ASSERT_EQ(site.compute({{"base_power", 45000}, {"battery_temperature", 25}}).watts, 67500);
  EXPECT_EQ(site.compute({{"base_power", 45000}}).watts, 45000);
  EXPECT_EQ(site.compute({}).watts, 0);
}

TEST(StrategyFormula, NanInfiniteNegativeAndAbsurdResultsAreNotOk) {
  FormulaSite site("      formula: base_power / soc - 100\n      variables: []\n");
  ASSERT_TRUE(site.ready()) << site.start_error();
  ASSERT_EQ(site.compute({{"base_power", 50000}, {"soc", 100}}).watts, 400);

  auto neg = site.compute({{"base_power", 5000}, {"soc", 100}});
  EXPECT_EQ(neg.status.code(), StatusCode::invalid_argument);
  EXPECT_TRUE(contains(neg.status.message(), "below 0")) << neg.status.message();
  EXPECT_TRUE(contains(neg.status.message(), "base_power=5000, soc=100")) << "the inputs are in the message: " << neg.status.message();

  auto inf = site.compute({{"base_power", 5000}, {"soc", 0}});
  EXPECT_EQ(inf.status.code(), StatusCode::invalid_argument) << inf.status.message();
  auto nan = site.compute({{"base_power", std::nan("")}, {"soc", 50}});
  EXPECT_EQ(nan.status.code(), StatusCode::invalid_argument) << nan.status.message();
  auto nan2 = site.compute({{"base_power", 0}, {"soc", 0}});  // 0/0
  EXPECT_EQ(nan2.status.code(), StatusCode::invalid_argument) << nan2.status.message();
  auto huge = site.compute({{"base_power", 1e15}, {"soc", 1}});
  EXPECT_EQ(huge.status.code(), StatusCode::invalid_argument);
  EXPECT_TRUE(contains(huge.status.message(), "check the units")) << huge.status.message();

  // A negative result is refused even with a floor: it is a broken formula, not a small setpoint.
  FormulaSite floored("      formula: soc - 50\n      min_power_w: 1000\n");
  ASSERT_TRUE(floored.ready()) << floored.start_error();
  EXPECT_FALSE(floored.compute({{"soc", 10}}).status.ok());
  EXPECT_EQ(floored.compute({{"soc", 60}}).watts, 1000);
  auto sq = floored.compute({{"soc", std::numeric_limits<double>::infinity()}});
  EXPECT_FALSE(sq.status.ok());
}

TEST(StrategyFormula, PilectlValidatesASiteUsingIt) {
  TempDir dir;
  const std::string pilectl = std::string(PILECORE_BIN_DIR) + "/pilectl";
  auto ok = run_process({pilectl, "config", "validate",
                         dir.write("ok.yaml", site_with(kSeed + "      variables: [grid_factor]\n      min_power_w: 1000\n"
                                                                "      max_power_w: 60000\n      on_missing: zero\n"))
                             .string()});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_TRUE(contains(ok.out, "valid: site FORMULA-1, 1 connector(s), 2 plugin instance(s)")) << ok.out;

  const auto bad_file = dir.write("bad.yaml", site_with("      on_missing: skip\n      max_power_w: -1\n")).string();
  auto bad = run_process({pilectl, "config", "validate", bad_file});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_TRUE(contains(bad.err, "formula")) << "formula is required: " << bad.err;
  EXPECT_TRUE(contains(bad.err, "on_missing")) << bad.err;
  EXPECT_TRUE(contains(bad.err, "max_power_w")) << bad.err;

  auto show = run_process({pilectl, "plugins", "show", "strategy-formula"});
  EXPECT_EQ(show.exit_code, 0) << show.err;
  for (const char* key : {"formula", "variables", "min_power_w", "max_power_w", "on_missing", "battery_temperature", "energy_wh"}) {
    EXPECT_TRUE(contains(show.out, key)) << key << " missing from:\n" << show.out;
  }
}
