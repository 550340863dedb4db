// hello-sensor's unit tests, on the SDK's fake host (pilecore/testing/fake_host.hpp): its timer
// runs on the host's manual clock, so a test walks through minutes of readings at once.
#include <gtest/gtest.h>

#include <pilecore/testing/fake_host.hpp>

#include <stdlib.h>  // mkdtemp

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <span>
#include <string>

namespace {

using namespace pilecore;
using namespace std::chrono_literals;
using testkit::FakeHost;
using testkit::Instance;

class HelloSensorTest : public ::testing::Test {
 protected:
  HelloSensorTest() {
    char pattern[] = "/tmp/hello-sensor-test.XXXXXX";
    dir = ::mkdtemp(pattern);
    file = dir / "temp";
  }
  ~HelloSensorTest() override { std::filesystem::remove_all(dir); }

  void write(long long millidegrees) const { std::ofstream(file) << millidegrees << '\n'; }
  [[nodiscard]] std::map<std::string, std::string> config() const {
    return {{"path", file.string()}, {"interval_ms", "5000"}, {"alarm_above_c", "85"}};
  }
  static std::span<const ConfigKey> keys() {
    return {testkit::compiled_in_plugin().config, testkit::compiled_in_plugin().config_count};
  }

  std::filesystem::path dir;
  std::filesystem::path file;
};

TEST_F(HelloSensorTest, PublishesAReadingAtStartAndOneEveryIntervalOnTheHostClock) {
  write(47500);
  FakeHost host(testkit::compiled_in_plugin(), config());
  Instance<sensor::Sensor> sensor(testkit::compiled_in_plugin(), host);
  ASSERT_TRUE(sensor.start().ok());
  ASSERT_EQ(host.samples().size(), 1u);
  EXPECT_EQ(host.samples()[0].channel, "soc_temperature");
  EXPECT_EQ(host.samples()[0].unit, "degC");
  EXPECT_DOUBLE_EQ(host.samples()[0].value, 47.5);
  EXPECT_EQ(host.samples()[0].time, testkit::default_start);

  host.advance(4999ms);
  EXPECT_EQ(host.samples().size(), 1u) << "read before the interval";
  write(48000);
  host.advance(1ms);
  ASSERT_EQ(host.samples().size(), 2u);
  EXPECT_DOUBLE_EQ(host.samples()[1].value, 48.0);
  EXPECT_EQ(host.samples()[1].time, testkit::default_start + 5s);
  host.advance(60s);
  EXPECT_EQ(host.samples().size(), 14u);
  EXPECT_EQ(host.states().back().state, "up");
  EXPECT_TRUE(host.violations().empty());
}

TEST_F(HelloSensorTest, RaisesTheOverheatAlarmOnceAboveTheLevelAndClearsItBelow) {
  write(80000);
  FakeHost host(testkit::compiled_in_plugin(), config());
  Instance<sensor::Sensor> sensor(testkit::compiled_in_plugin(), host);
  ASSERT_TRUE(sensor.start().ok());
  EXPECT_TRUE(host.alarms().empty());
  write(90000);
  host.advance(15s);  // three readings above the level: one alarm
  ASSERT_EQ(host.alarms().size(), 1u);
  EXPECT_EQ(host.alarms()[0].code, "hello.overheat");
  EXPECT_TRUE(host.alarms()[0].active);
  write(70000);
  host.advance(5s);
  ASSERT_EQ(host.alarms().size(), 2u);
  EXPECT_FALSE(host.alarms()[1].active);
}

TEST_F(HelloSensorTest, AFileThatCannotBeReadIsReportedDownAndReadAgainLater) {
  FakeHost host(testkit::compiled_in_plugin(), config());
  Instance<sensor::Sensor> sensor(testkit::compiled_in_plugin(), host);
  ASSERT_TRUE(sensor.start().ok());
  EXPECT_TRUE(host.samples().empty());
  ASSERT_FALSE(host.states().empty());
  EXPECT_EQ(host.states().back().state, "down");
  write(50000);
  host.advance(5s);
  EXPECT_EQ(host.samples().size(), 1u);
  EXPECT_EQ(host.states().back().state, "up");
}

TEST_F(HelloSensorTest, StopCancelsTheTimer) {
  write(50000);
  FakeHost host(testkit::compiled_in_plugin(), config());
  Instance<sensor::Sensor> sensor(testkit::compiled_in_plugin(), host);
  ASSERT_TRUE(sensor.start().ok());
  EXPECT_EQ(host.timers(), 1u);
  sensor->stop();
  EXPECT_EQ(host.timers(), 0u);
  host.advance(1min);
  EXPECT_EQ(host.samples().size(), 1u);
}

TEST_F(HelloSensorTest, ValidateRefusesARelativePathAtThePathKey) {
  const testkit::FakeConfig relative(keys(), {{"path", "thermal/temp"}});
  const auto problems = testkit::validate(testkit::compiled_in_plugin(), relative);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].rfind("error: path: 'thermal/temp' is not an absolute path", 0), 0u) << problems[0];
  EXPECT_TRUE(testkit::validate(testkit::compiled_in_plugin(), testkit::FakeConfig(keys(), config())).empty());
}

}  // namespace
