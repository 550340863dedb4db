// The runtime: instances start in order and stop in reverse, a plugin that fails at run time is
// contained (its connector goes to a safe state, everything else keeps running), and timers
// follow the injectable clock.
#include <gtest/gtest.h>

#include "test_support.hpp"

using namespace pilecore;
using namespace pilecore::core;
using pilecore::test::eventually;
using pilecore::test::RunningSite;
using pilecore::test::TempDir;

namespace {

std::string site_with(const std::string& plugins) {
  return R"(site:
  id: TEST-1
  name: Test site
  location: {lat: 31.2, lon: 121.5}
  timezone: Asia/Shanghai
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
  - {id: 2, type: gbt-dc, max_power_w: 60000}
plugins:
)" + plugins + R"(  power-1:
    plugin: sim-power
    connector: 1
  power-2:
    plugin: sim-power
    connector: 2
)";
}

std::vector<std::filesystem::path> dirs() { return {PILECORE_PLUGIN_DIR, PILECORE_TEST_PLUGIN_DIR}; }

const InstanceInfo* find(const std::vector<InstanceInfo>& all, const std::string& name) {
  for (const auto& i : all) {
    if (i.name == name) return &i;
  }
  return nullptr;
}

void expect_contained(const std::string& mode, const std::string& expected_reason) {
  TempDir dir;
  RunningSite site(dir, site_with(R"(  faulty:
    plugin: test-faulty
    connector: 1
    config: {fail_after_ms: 100, mode: )" + mode + R"(}
  cabinet:
    plugin: sim-sensor
    config: {interval_ms: 10}
)"),
                   dirs());
  auto& rt = site.runtime();
  ASSERT_TRUE(eventually([&] { return rt.ready(); }));
  ASSERT_TRUE(eventually([&] {
    const auto all = rt.instances();  // find() points into it: keep it alive
    const auto* f = find(all, "faulty");
    return f && f->state == InstanceState::failed;
  })) << "the faulty instance never failed";
  const auto all = rt.instances();
  EXPECT_EQ(find(all, "faulty")->detail, expected_reason);
  EXPECT_EQ(find(all, "cabinet")->state, InstanceState::running);
  EXPECT_TRUE(eventually([&] { return rt.connectors().at(1) == ConnectorStatus::faulted; })) << "the failed plugin's connector must leave service";
  const auto connectors = rt.connectors();
  EXPECT_EQ(connectors.at(2), ConnectorStatus::available) << "other connectors are untouched";
  // The rest of the site keeps working after the failure.
  const auto before = rt.samples_received();
  EXPECT_TRUE(eventually([&] { return rt.samples_received() > before + 5; }));
  EXPECT_EQ(site.stop(), 0) << "the daemon stops cleanly after a contained failure";
}

}  // namespace

TEST(Runtime, StartsIdlesAndStopsCleanly) {
  TempDir dir;
  RunningSite site(dir, site_with("  cabinet:\n    plugin: sim-sensor\n    config: {interval_ms: 20}\n"), dirs());
  ASSERT_TRUE(eventually([&] { return site.runtime().ready(); }));
  EXPECT_TRUE(eventually([&] { return site.runtime().samples_received() >= 4; }));
  const auto all = site.runtime().instances();
  ASSERT_EQ(all.size(), 3u);  // cabinet and the two connectors' power stages
  EXPECT_EQ(all[0].name, "cabinet");
  EXPECT_EQ(all[0].state, InstanceState::running);
  EXPECT_EQ(all[0].health, "up");
  EXPECT_EQ(site.stop(), 0);
  EXPECT_EQ(site.runtime().instances()[0].state, InstanceState::stopped);
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "state" / "pilecore.db"));
}

TEST(Runtime, ExceptionInATimerCallbackIsContained) {
  expect_contained("timer", "a callback threw: simulated driver failure in a timer");
}

TEST(Runtime, ExceptionPostedFromADriverThreadIsContained) {
  expect_contained("thread", "a callback threw: simulated driver failure posted from a thread");
}

TEST(Runtime, TimersFollowTheSimulatedClock) {
  // 10 s of clock time between samples at 100x is 100 ms of real time: a real-time timer
  // would deliver nothing within the wait below.
  TempDir dir;
  RunningSite site(dir, site_with("  cabinet:\n    plugin: sim-sensor\n    config: {interval_ms: 10000}\n"), dirs(), 100.0);
  ASSERT_TRUE(eventually([&] { return site.runtime().ready(); }));
  EXPECT_TRUE(eventually([&] { return site.runtime().samples_received() >= 6; }, std::chrono::seconds(3)));
}

TEST(Runtime, RefusesADatabaseFromANewerPilecore) {
  TempDir dir;
  std::filesystem::create_directories(dir.path() / "state");
  {
    Database db(dir.path() / "state" / "pilecore.db");
    db.exec("PRAGMA user_version=99");
  }
  PluginRegistry registry(dirs());
  auto outcome = load_site(dir.write("site.yaml", site_with("  cabinet:\n    plugin: sim-sensor\n")), registry);
  ASSERT_TRUE(outcome.site) << outcome.diagnostics.format();
  RuntimeOptions options;
  options.state_dir = dir.path() / "state";
  options.notify_systemd = false;
  Runtime rt(std::move(*outcome.site), options);
  EXPECT_EQ(rt.run(), 3);
  EXPECT_EQ(rt.start_error(), (dir.path() / "state" / "pilecore.db").string() +
                                  ": database schema version 99 is newer than this pilecore understands (13); "
                                  "install the newer pilecore again or restore a backup");
}
