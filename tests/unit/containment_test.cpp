// One plugin cannot take the pile down (issue #10 §3), through the real pilecored and a plugin
// that really segfaults or hangs (tests/test-plugins/test-crashy):
//  - the next start names the instance, its plugin and the call that crashed the daemon;
//  - after `containment.quarantine_after` crashes within the window the instance starts
//    disabled, its connector Unavailable, and the rest of the pile runs; `pilectl plugins
//    enable` lets it start again;
//  - a plugin whose start() segfaults no longer keeps an open transaction from recovery;
//  - systemd's watchdog is fed from the core's strand while it is live, and starved by a
//    callback that never returns; the SIGABRT systemd then sends is attributed as a hang.
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>

#include <fstream>
#include <sstream>

#include "crash_records.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace pilecore::core;
using namespace pilecore::test;
namespace fs = std::filesystem;

namespace {

const std::string pilecored = std::string(PILECORE_BIN_DIR) + "/pilecored";
const std::string pilectl = std::string(PILECORE_BIN_DIR) + "/pilectl";

/// Two connectors: the crashy instance serves connector 2; a healthy sensor runs beside it.
/// `extra` follows the crashy instance under `plugins:` (more instances, then other sections).
std::string site_with_crashy(const std::string& mode, int after_ms = 300, const std::string& extra = "") {
  return R"(site:
  id: CRASH-1
  name: Containment test
  location: {lat: 31.2, lon: 121.5}
  timezone: Asia/Shanghai
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
  - {id: 2, type: gbt-dc, max_power_w: 60000}
plugins:
  cabinet:
    plugin: sim-sensor
    config: {interval_ms: 50}
  crashy:
    plugin: test-crashy
    connector: 2
    config: {mode: )" +
         mode + ", after_ms: " + std::to_string(after_ms) + "}\n" +
         // Every connector has a power stage (a site without one is refused); a test that drives
         // connector 1 brings its own power-1.
         (extra.find("power-1:") == std::string::npos ? "  power-1:\n    plugin: sim-power\n    connector: 1\n" : "") +
         "  power-2:\n    plugin: sim-power\n    connector: 2\n" + extra;
}

struct Daemon {
  TempDir dir;
  fs::path state = dir.path() / "state";
  std::vector<std::string> argv(const std::string& site) const {
    return {pilecored, "--config", dir.write("site.yaml", site).string(), "--state-dir", state.string(), "--plugin-dir", PILECORE_PLUGIN_DIR,
            "--plugin-dir", PILECORE_TEST_PLUGIN_DIR, "--status-interval", "0"};
  }
  /// Runs the daemon until it exits by itself (a crash); 30 s at most.
  ProcessResult run_to_exit(const std::string& site) const { return run_process(argv(site), {}, std::chrono::seconds(30)); }
  ProcessResult ctl(std::vector<std::string> args) const {
    args.insert(args.begin(), pilectl);
    args.insert(args.end(), {"--state-dir", state.string()});
    return run_process(args);
  }
  nlohmann::json status() const {
    const auto r = ctl({"status", "--json"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return nlohmann::json::parse(r.out);
  }
};

nlohmann::json find_by(const nlohmann::json& list, const std::string& key, const nlohmann::json& value) {
  for (const auto& e : list) {
    if (e.value(key, nlohmann::json()) == value) return e;
  }
  return {};
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST(Containment, ACrashInACallbackIsNamedAtTheNextStartAndQuarantinedAfterThree) {
  Daemon d;
  const std::string site = site_with_crashy("segv_callback");
  for (int i = 1; i <= 3; ++i) {
    const auto r = d.run_to_exit(site);
    ASSERT_EQ(r.signal, SIGSEGV) << "run " << i << " should die of the plugin's segfault:\n" << r.err;
    if (i > 1) {
      EXPECT_TRUE(contains(r.err, fmt::format("instance crashy (plugin test-crashy) crashed pilecored during a timer callback (SIGSEGV); "
                                              "{} of 3 within 10 min before it is quarantined",
                                              i - 1)))
          << r.err;
    }
  }

  // The fourth start: the third crash quarantines the instance; the pile runs without it.
  NotifyListener notify(d.dir.path() / "notify.sock");
  Child daemon(d.argv(site), {notify.env()});
  ASSERT_TRUE(notify.wait_for("READY=1", std::chrono::seconds(15))) << daemon.stderr_text();
  const auto st = d.status();
  EXPECT_EQ(find_by(st["connectors"], "id", 2).value("status", ""), "Unavailable") << st.dump(2);
  EXPECT_EQ(find_by(st["connectors"], "id", 1).value("status", ""), "Available") << "the other connector stays in service";
  const auto crashy = find_by(st["instances"], "name", "crashy");
  EXPECT_EQ(crashy.value("state", ""), "disabled");
  EXPECT_TRUE(contains(crashy.value("detail", ""), "quarantined: crashed pilecored 3 times within 10 min, last during a timer callback"))
      << crashy.dump();
  EXPECT_EQ(find_by(st["instances"], "name", "cabinet").value("state", ""), "running");
  EXPECT_EQ(find_by(st["instances"], "name", "cabinet").value("health", ""), "up");
  // Past the moment the plugin would have crashed, the daemon still answers.
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  EXPECT_EQ(d.ctl({"status"}).exit_code, 0);

  const auto listed = d.ctl({"plugins", "crashes"});
  EXPECT_EQ(listed.exit_code, 0) << listed.err;
  EXPECT_TRUE(contains(listed.out, "crashy")) << listed.out;
  EXPECT_TRUE(contains(listed.out, "QUARANTINED")) << listed.out;
  EXPECT_TRUE(contains(listed.out, "pilectl plugins enable crashy")) << listed.out;

  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.wait(), 0) << daemon.stderr_text();
  const auto log = daemon.stderr_text();
  EXPECT_TRUE(contains(log, "instance crashy (plugin test-crashy) crashed pilecored during a timer callback (SIGSEGV); 3 of 3")) << log;
  EXPECT_TRUE(contains(log, "not started: quarantined")) << log;
  EXPECT_TRUE(contains(log, "connector 2: Available -> Unavailable (instance 'crashy' quarantined")) << log;

  // The operator re-enables it: it is created again at the next start (and, unfixed, crashes).
  const auto enabled = d.ctl({"plugins", "enable", "crashy"});
  EXPECT_EQ(enabled.exit_code, 0) << enabled.err;
  EXPECT_TRUE(contains(enabled.out, "quarantine lifted")) << enabled.out;
  EXPECT_TRUE(contains(d.ctl({"plugins", "crashes"}).out, "no plugin instance has crashed"));
  const auto again = d.run_to_exit(site);
  EXPECT_EQ(again.signal, SIGSEGV) << again.err;
  EXPECT_FALSE(contains(again.err, "not started")) << again.err;
}

TEST(Containment, TheQuarantineLimitAndWindowComeFromTheSiteFile) {
  Daemon d;
  const std::string site = site_with_crashy("segv_callback", 300, "containment: {quarantine_after: 1, crash_window_s: 60}\n");
  const auto first = d.run_to_exit(site);
  ASSERT_EQ(first.signal, SIGSEGV) << first.err;
  NotifyListener notify(d.dir.path() / "notify.sock");
  Child daemon(d.argv(site), {notify.env()});
  ASSERT_TRUE(notify.wait_for("READY=1", std::chrono::seconds(15))) << daemon.stderr_text();
  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.wait(), 0);
  EXPECT_TRUE(contains(daemon.stderr_text(), "quarantined: crashed pilecored 1 time within 1 min")) << daemon.stderr_text();
}

TEST(Containment, ASegfaultInStartNoLongerKeepsAnOpenTransactionFromRecovery) {
  Daemon d;
  const std::string power = R"(  power-1:
    plugin: sim-power
    connector: 1
    config: {arrive_after_s: 0, ev_ready_delay_ms: 100, tick_ms: 200}
)";
  const std::string rest = power + sim_payment_and_flat_tariff();
  // A session opens and the power is cut: the transaction stays open in the database.
  {
    NotifyListener notify(d.dir.path() / "notify.sock");
    Child daemon(d.argv(site_with_crashy("none", 300, rest)), {notify.env()});
    ASSERT_TRUE(notify.wait_for("READY=1", std::chrono::seconds(15))) << daemon.stderr_text();
    const auto started = d.ctl({"session", "start", "1", "--token", "card:0451"});
    ASSERT_EQ(started.exit_code, 0) << started.err << daemon.stderr_text();
    daemon.signal(SIGKILL);
    daemon.wait();
  }
  auto open_transactions = [&] {
    Database db(d.state / "pilecore.db");
    sqlite3_stmt* s = db.prepared("SELECT count(*) FROM transactions WHERE status IN ('open','stopping')");
    EXPECT_EQ(sqlite3_step(s), SQLITE_ROW);
    const auto n = sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    return n;
  };
  ASSERT_EQ(open_transactions(), 1);

  // A new version of the crashy plugin segfaults in start(), before recovery can run.
  const std::string site = site_with_crashy("segv_start", 300, rest);
  for (int i = 1; i <= 3; ++i) {
    const auto r = d.run_to_exit(site);
    ASSERT_EQ(r.signal, SIGSEGV) << r.err;
    if (i > 1) {
      EXPECT_TRUE(contains(r.err, "instance crashy (plugin test-crashy) crashed pilecored during start (SIGSEGV)")) << r.err;
    }
    EXPECT_EQ(open_transactions(), 1) << "not recovered while the plugin crashes the start";
  }
  // Quarantined at the fourth start: the open transaction is recovered and the pile is ready.
  NotifyListener notify(d.dir.path() / "notify.sock");
  Child daemon(d.argv(site), {notify.env()});
  ASSERT_TRUE(notify.wait_for("READY=1", std::chrono::seconds(30))) << daemon.stderr_text();
  EXPECT_EQ(open_transactions(), 0) << daemon.stderr_text();
  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.wait(), 0);
  EXPECT_TRUE(contains(daemon.stderr_text(), "recovering 1 transaction(s)")) << daemon.stderr_text();
}

TEST(Containment, TheWatchdogIsFedWhileTheStrandLivesAndStarvedWhenACallbackHangs) {
  Daemon d;
  NotifyListener notify(d.dir.path() / "notify.sock");
  // As systemd sets them for WatchdogSec=1s (no WATCHDOG_PID: the check is then skipped).
  Child daemon(d.argv(site_with_crashy("hang_callback", 3000)), {notify.env(), "WATCHDOG_USEC=1000000"});
  ASSERT_TRUE(notify.wait_for("READY=1", std::chrono::seconds(15))) << daemon.stderr_text();
  EXPECT_GE(notify.count("WATCHDOG=1", std::chrono::milliseconds(1500)), 2) << "fed every 500 ms while healthy";
  ASSERT_TRUE(eventually([&] { return contains(daemon.stderr_text(), "blocking the core's strand forever"); }, std::chrono::seconds(15)))
      << daemon.stderr_text();
  notify.count("WATCHDOG=1", std::chrono::milliseconds(600));  // one may have been sent just before the hang
  EXPECT_EQ(notify.count("WATCHDOG=1", std::chrono::milliseconds(2500)), 0) << "a hung strand must starve the watchdog";
  // What systemd does when the watchdog expires (WatchdogSignal=SIGABRT).
  daemon.signal(SIGABRT);
  EXPECT_EQ(daemon.wait(), 128 + SIGABRT);

  Child next(d.argv(site_with_crashy("none")), {notify.env()});
  ASSERT_TRUE(notify.wait_for("READY=1", std::chrono::seconds(15))) << next.stderr_text();
  next.signal(SIGTERM);
  EXPECT_EQ(next.wait(), 0);
  EXPECT_TRUE(contains(next.stderr_text(), "instance crashy (plugin test-crashy) hung pilecored during a timer callback (SIGABRT); 1 of 3"))
      << next.stderr_text();
}

TEST(Containment, UnreadableCrashRecordsStillNameTheCrashAndTheDaemonStillStarts) {
  Daemon d;
  const auto r = d.run_to_exit(site_with_crashy("segv_callback"));
  ASSERT_EQ(r.signal, SIGSEGV) << r.err;
  std::ofstream(d.state / "plugin-crashes.json") << "{\"instances\": 7}";
  NotifyListener notify(d.dir.path() / "notify.sock");
  Child daemon(d.argv(site_with_crashy("none")), {notify.env()});
  ASSERT_TRUE(notify.wait_for("READY=1", std::chrono::seconds(15))) << daemon.stderr_text();
  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.wait(), 0);
  const auto log = daemon.stderr_text();
  EXPECT_TRUE(contains(log, "plugin-crashes.json: not a crash record file")) << log;
  EXPECT_TRUE(contains(log, "quarantine of crashing plugins is off for this run")) << log;
  EXPECT_TRUE(contains(log, "instance crashy (plugin test-crashy) crashed pilecored during a timer callback (SIGSEGV); not counted")) << log;
}

TEST(CrashBook, CountsOnlyCrashesWithinTheWindowAndPersists) {
  TempDir dir;
  const CrashPolicy policy{3, std::chrono::minutes(10)};
  TimePoint t;
  ASSERT_TRUE(parse_utc("2026-03-01T00:00:00Z", t));
  auto at = [&](int minutes) { return t + std::chrono::minutes(minutes); };
  auto entry = [&](int minutes) { return CrashEntry{at(minutes).time_since_epoch().count(), "start", "crash", 11}; };
  {
    CrashBook book(dir.path() / "plugin-crashes.json");
    EXPECT_EQ(book.record("meter", "sensor-x", entry(0), policy, at(0)), 1);
    EXPECT_EQ(book.record("meter", "sensor-x", entry(8), policy, at(8)), 2);
    EXPECT_EQ(book.record("meter", "sensor-x", entry(15), policy, at(15)), 2) << "the crash at minute 0 is out of the window";
    EXPECT_FALSE(book.quarantined("meter"));
    EXPECT_EQ(book.record("meter", "sensor-x", entry(16), policy, at(16)), 3);
    EXPECT_TRUE(book.quarantined("meter"));
    book.save();
  }
  CrashBook again(dir.path() / "plugin-crashes.json");
  EXPECT_TRUE(again.quarantined("meter"));
  EXPECT_EQ(again.instances().at("meter").plugin, "sensor-x");
  EXPECT_EQ(again.instances().at("meter").crashes.size(), 3u);
  EXPECT_TRUE(again.clear("meter"));
  EXPECT_FALSE(again.quarantined("meter"));
  EXPECT_FALSE(again.clear("meter"));
}

TEST(CrashBook, AFileThatIsNotACrashBookIsNamedInTheError) {
  TempDir dir;
  const auto file = dir.write("plugin-crashes.json", "{not json");
  try {
    CrashBook book(file);
    FAIL() << "accepted a broken file";
  } catch (const std::runtime_error& e) {
    EXPECT_TRUE(contains(e.what(), file.string() + ": not a crash record file")) << e.what();
  }
}
