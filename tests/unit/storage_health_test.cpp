// What the core does about a disk that fills, as bookkeeping on a manual clock: the checkpoint
// health (the storage.checkpoint_failed alarm, the pause after N failed checkpoints in a row, the
// resume at the first commit) and the low-disk monitor (storage.low_disk below the threshold,
// cleared above it, checked every interval of the injectable clock). disk_full_test.cpp runs the
// same through the real pilecored on a real full disk.
#include <gtest/gtest.h>

#include <vector>

#include "checkpoint_health.hpp"
#include "wire.hpp"
#include "disk_space.hpp"
#include "scheduler.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace pilecore::core;
using namespace std::chrono_literals;

TEST(CheckpointHealth, TheFirstFailureAlarmsTheNthPausesTheFirstCommitClearsAndResumes) {
  CheckpointHealth h(3);
  EXPECT_FALSE(h.failing());
  EXPECT_FALSE(h.committed().clear) << "a commit while healthy changes nothing";

  const auto first = h.failed("database or disk is full");
  EXPECT_TRUE(first.raise);
  EXPECT_FALSE(first.pause);
  auto alarm = to_json(Event{h.alarm_event()});
  EXPECT_EQ(alarm["code"], "storage.checkpoint_failed");
  EXPECT_EQ(alarm["active"], true);
  EXPECT_EQ(alarm["error"], "database or disk is full") << "the alarm carries SQLite's own message";
  EXPECT_EQ(alarm["consecutive"], 1);
  EXPECT_EQ(alarm["paused"], false);

  const auto second = h.failed("database or disk is full");
  EXPECT_FALSE(second.raise) << "raised once, not at every failure";
  EXPECT_FALSE(second.pause);
  const auto third = h.failed("database or disk is full");
  EXPECT_TRUE(third.pause) << "pause_after failures in a row pause charging";
  EXPECT_TRUE(h.paused());
  EXPECT_EQ(to_json(Event{h.alarm_event()})["paused"], true);
  const auto fourth = h.failed("database or disk is full");
  EXPECT_FALSE(fourth.pause) << "paused once";
  EXPECT_TRUE(h.paused());

  const auto back = h.committed();
  EXPECT_TRUE(back.clear);
  EXPECT_TRUE(back.resume);
  EXPECT_FALSE(h.paused());
  EXPECT_FALSE(h.failing());
  alarm = to_json(Event{h.alarm_event()});
  EXPECT_EQ(alarm["active"], false);
  EXPECT_EQ(alarm["consecutive"], 0);
}

TEST(CheckpointHealth, AFailureStreakBrokenByACommitStartsAgain) {
  CheckpointHealth h(3);
  h.failed("full");
  h.failed("full");
  const auto v = h.committed();
  EXPECT_TRUE(v.clear) << "the alarm was raised, so it is cleared";
  EXPECT_FALSE(v.resume) << "nothing was paused";
  EXPECT_TRUE(h.failed("full").raise) << "a new streak raises anew";
  EXPECT_FALSE(h.failed("full").pause) << "and counts from one";
  EXPECT_TRUE(h.failed("full").pause);
}

TEST(CheckpointHealth, PauseAfterOnePausesAtTheFirstFailure) {
  CheckpointHealth h(1);
  const auto v = h.failed("disk I/O error");
  EXPECT_TRUE(v.raise);
  EXPECT_TRUE(v.pause);
}

namespace {

/// The monitor on a manual clock, with a probe that reports what the test says.
struct MonitorRig {
  explicit MonitorRig(std::int64_t threshold)
      : clock(TimePoint{Duration{1'770'000'000'000}}),
        monitor(clock, "/var/lib/pilecore", Duration(60'000), threshold,
                [this](std::string& error) -> std::optional<DiskSpace> {
                  ++probes;
                  if (!free_bytes) {
                    error = "statvfs /var/lib/pilecore: Permission denied";
                    return std::nullopt;
                  }
                  return DiskSpace{*free_bytes, 1'000'000'000};
                },
                [this](const LowDiskAlarm& a) { events.push_back(to_json(RuntimeEvent(a))); }) {}  // as watchers see it
  ManualScheduler clock;
  std::optional<std::uint64_t> free_bytes = 500'000'000;
  int probes = 0;
  std::vector<nlohmann::json> events;
  LowDiskMonitor monitor;
};

}  // namespace

TEST(LowDisk, BelowTheThresholdIsAnAlarmWithTheBytesAboveItIsCleared) {
  MonitorRig rig(100'000'000);
  rig.monitor.start();
  EXPECT_EQ(rig.probes, 1) << "checked at the start";
  EXPECT_TRUE(rig.events.empty()) << "plenty of space: no alarm";

  rig.free_bytes = 99'999'999;
  rig.clock.advance(59'999ms);
  EXPECT_EQ(rig.probes, 1) << "not before the interval";
  EXPECT_TRUE(rig.events.empty());
  rig.clock.advance(1ms);
  EXPECT_EQ(rig.probes, 2);
  ASSERT_EQ(rig.events.size(), 1u);
  const auto& raised = rig.events[0];
  EXPECT_EQ(raised["code"], "storage.low_disk");
  EXPECT_EQ(raised["active"], true);
  EXPECT_EQ(raised["severity"], "warning");
  EXPECT_EQ(raised["free_bytes"], 99'999'999u);
  EXPECT_EQ(raised["threshold_bytes"], 100'000'000);
  EXPECT_EQ(raised["path"], "/var/lib/pilecore");
  EXPECT_TRUE(rig.monitor.low());

  rig.free_bytes = 50'000'000;
  rig.clock.advance(60s);
  EXPECT_EQ(rig.events.size(), 1u) << "still low: raised once";
  EXPECT_EQ(rig.monitor.status().space->free_bytes, 50'000'000u) << "the status has the latest figure";

  rig.free_bytes = 100'000'000;
  rig.clock.advance(60s);
  ASSERT_EQ(rig.events.size(), 2u);
  EXPECT_EQ(rig.events[1]["active"], false);
  EXPECT_EQ(rig.events[1]["free_bytes"], 100'000'000u);
  EXPECT_FALSE(rig.monitor.low());
}

TEST(LowDisk, AFailingProbeKeepsTheAlarmAsItWasAndTheChecksGoOn) {
  MonitorRig rig(100'000'000);
  rig.free_bytes = 10;
  rig.monitor.start();
  ASSERT_EQ(rig.events.size(), 1u);
  rig.free_bytes.reset();
  rig.clock.advance(180s);
  EXPECT_EQ(rig.probes, 4);
  EXPECT_EQ(rig.events.size(), 1u) << "no measurement is no news: neither cleared nor raised again";
  EXPECT_TRUE(rig.monitor.low());
  rig.free_bytes = 200'000'000;
  rig.clock.advance(60s);
  ASSERT_EQ(rig.events.size(), 2u);
  EXPECT_EQ(rig.events[1]["active"], false);
}

TEST(LowDisk, AZeroThresholdMeasuresButNeverAlarms) {
  MonitorRig rig(0);
  rig.free_bytes = 0;
  rig.monitor.start();
  rig.clock.advance(120s);
  EXPECT_TRUE(rig.events.empty());
  EXPECT_EQ(rig.monitor.status().space->free_bytes, 0u);
}

TEST(LowDisk, StatvfsMeasuresARealFileSystem) {
  pilecore::test::TempDir dir;
  std::string error;
  const auto space = disk_space(dir.path(), error);
  ASSERT_TRUE(space) << error;
  EXPECT_GT(space->total_bytes, 0u);
  EXPECT_LE(space->free_bytes, space->total_bytes);
  EXPECT_FALSE(disk_space(dir.path() / "missing", error));
  EXPECT_NE(error.find("missing"), std::string::npos) << error;
}
