// `isolate: true` (issue #10 §3): an instance in its own sandboxed process, through the real
// pilecored, pilecore-plugin-host and plugins that really segfault, hang or write where they
// must not:
//  - a segfault in a callback fails the instance only: its connector goes out of service, the
//    rest of the pile charges and answers, and the process is started again with backoff until
//    the crash book quarantines it;
//  - a callback that never returns is found by the heartbeat, killed and restarted;
//  - a segfault in start() no longer stops pilecored from starting;
//  - an isolated plugin cannot write outside its state directory;
//  - an isolated power stage and payment method charge and bill a session as in-process ones do.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <regex>

#include "peer.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace pilecore::test;
namespace fs = std::filesystem;

namespace {

const std::string pilecored = std::string(PILECORE_BIN_DIR) + "/pilecored";
const std::string pilectl = std::string(PILECORE_BIN_DIR) + "/pilectl";

std::string head(const std::string& id) {
  return "site: {id: " + id + R"(, name: Isolation test, location: {lat: 31.2, lon: 121.5}, timezone: Asia/Shanghai}
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
  - {id: 2, type: gbt-dc, max_power_w: 60000}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
  power-2:
    plugin: sim-power
    connector: 2
)";
}

std::string crashy(const std::string& mode) {
  return head("ISO-1") + "  crashy:\n    plugin: test-crashy\n    connector: 2\n    isolate: true\n    config: {mode: " + mode + ", after_ms: 300}\n";
}

struct Daemon {
  TempDir dir;
  fs::path state = dir.path() / "state";
  std::unique_ptr<NotifyListener> notify;
  std::unique_ptr<Child> child;

  void start(const std::string& site, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv{pilecored, "--config", dir.write("site.yaml", site).string(), "--state-dir", state.string(), "--plugin-dir",
                                  PILECORE_PLUGIN_DIR, "--plugin-dir", PILECORE_TEST_PLUGIN_DIR, "--status-interval", "0"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    notify = std::make_unique<NotifyListener>(dir.path() / "notify.sock");
    child = std::make_unique<Child>(argv, std::vector<std::string>{notify->env()});
    ASSERT_TRUE(notify->wait_for("READY=1", std::chrono::seconds(30))) << child->stderr_text();
  }
  /// SIGTERM; the daemon must stop cleanly. Returns its log.
  std::string stop() {
    child->signal(SIGTERM);
    EXPECT_EQ(child->wait(), 0) << child->stderr_text();
    return child->stderr_text();
  }
  ProcessResult ctl(std::vector<std::string> args) const {
    args.insert(args.begin(), pilectl);
    args.insert(args.end(), {"--state-dir", state.string()});
    return run_process(args);
  }
  nlohmann::json status() const {
    const auto r = ctl({"status", "--json"});
    if (r.exit_code != 0) return {};
    return nlohmann::json::parse(r.out, nullptr, false);
  }
  nlohmann::json instance(const std::string& name) const {
    for (const auto& i : status().value("instances", nlohmann::json::array())) {
      if (i.value("name", "") == name) return i;
    }
    return {};
  }
  std::string connector(int id) const {
    for (const auto& c : status().value("connectors", nlohmann::json::array())) {
      if (c.value("id", 0) == id) return c.value("status", "");
    }
    return {};
  }
};

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST(Isolation, ASegfaultInACallbackFailsOnlyTheInstanceWhichRestartsWithBackoffUntilQuarantined) {
  Daemon d;
  d.start(crashy("segv_callback"));
  const auto first = d.instance("crashy");
  EXPECT_EQ(first.value("isolated", false), true) << first.dump();
  // Running (a pid), or already crashed once (the callback comes fast; on a loaded machine the
  // first status can land between the crash and the restart).
  EXPECT_TRUE(first.value("pid", 0) > 0 || first.value("restarts", 0) > 0 || first.value("state", "") != "running") << first.dump();
  EXPECT_TRUE(contains(first.value("sandbox", ""), "landlock") || contains(first.value("sandbox", ""), "no landlock")) << first.dump();

  // Three crashes (the first, then one after each restart 1 s and 2 s later) quarantine it.
  ASSERT_TRUE(eventually([&] { return d.instance("crashy").value("state", "") == "disabled"; }, std::chrono::seconds(30)))
      << d.instance("crashy").dump() << d.child->stderr_text();
  const auto last = d.instance("crashy");
  EXPECT_EQ(last.value("restarts", 0), 2) << last.dump();
  EXPECT_EQ(last.value("detail", ""), "quarantined: its isolated process failed 3 times within 10 min, last by crashing") << last.dump();
  // The failure faulted its connector; quarantined, it stays out of service until enabled.
  EXPECT_EQ(d.connector(2), "Faulted");
  EXPECT_EQ(d.connector(1), "Available") << "the other connector is still in service";
  EXPECT_EQ(::kill(d.child->pid(), 0), 0) << "the same pilecored throughout";
  EXPECT_EQ(d.instance("power-1").value("state", ""), "running");

  const auto crashes = d.ctl({"plugins", "crashes"});
  EXPECT_TRUE(contains(crashes.out, "crashy")) << crashes.out;
  EXPECT_TRUE(contains(crashes.out, "QUARANTINED")) << crashes.out;
  const auto running = d.ctl({"plugins", "running"});
  EXPECT_EQ(running.exit_code, 0) << running.err;
  EXPECT_TRUE(std::regex_search(running.out, std::regex("crashy +test-crashy +sensor +disabled +isolated +- +2"))) << running.out;

  const std::string log = d.stop();
  EXPECT_TRUE(contains(log, "its isolated process died of SIGSEGV")) << log;
  EXPECT_TRUE(contains(log, "connector 2: Available -> Faulted (instance 'crashy' failed)")) << log;
  EXPECT_TRUE(contains(log, "restarting its isolated process in 1000 ms")) << log;
  EXPECT_TRUE(contains(log, "restarting its isolated process in 2000 ms")) << log;
  EXPECT_TRUE(contains(log, "its isolated process runs again")) << log;
}

TEST(Isolation, AHungCallbackIsFoundByTheHeartbeatKilledAndRestarted) {
  Daemon d;
  d.start(crashy("hang_callback"));
  const int pid = d.instance("crashy").value("pid", 0);
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(eventually([&] { return d.instance("crashy").value("restarts", 0) >= 1; }, std::chrono::seconds(30)))
      << d.instance("crashy").dump() << d.child->stderr_text();
  EXPECT_NE(d.instance("crashy").value("pid", 0), pid) << "a new process";
  // The core's strand never blocked: the status answered throughout and the other connector runs.
  EXPECT_EQ(d.connector(1), "Available");
  const std::string log = d.stop();
  EXPECT_TRUE(contains(log, "hung: no heartbeat answer within 3000 ms")) << log;
  EXPECT_TRUE(contains(log, "blocking the core's strand forever")) << "the plugin's log line came through the socket";
}

TEST(Isolation, ASegfaultInStartNoLongerStopsThePileFromStarting) {
  Daemon d;
  d.start(crashy("segv_start"));
  EXPECT_EQ(d.connector(1), "Available");
  ASSERT_TRUE(eventually([&] { return d.instance("crashy").value("state", "") == "failed" || d.instance("crashy").value("state", "") == "disabled"; }));
  EXPECT_NE(d.connector(2), "Available");
  const std::string log = d.stop();
  EXPECT_TRUE(contains(log, "died of SIGSEGV")) << log;
}

TEST(Isolation, AnIsolatedPluginCannotWriteOutsideItsStateDirectory) {
  Daemon d;
  const fs::path outside = d.dir.path() / "outside.txt";
  const std::string site = head("ISO-2") + "  probe:\n    plugin: test-sandbox\n    isolate: true\n    config: {outside: \"" + outside.string() +
                           "\"}\n  control:\n    plugin: test-sandbox\n    config: {outside: \"" + (d.dir.path() / "control.txt").string() + "\"}\n";
  d.start(site);
  ASSERT_TRUE(eventually([&] { return !d.instance("probe").value("detail", "").empty(); })) << d.child->stderr_text();
  EXPECT_EQ(d.instance("probe").value("detail", ""), "inside: written; outside: Permission denied") << d.instance("probe").dump();
  EXPECT_FALSE(fs::exists(outside));
  EXPECT_TRUE(fs::exists(d.state / "plugins" / "probe" / "probe"));
  // The same plugin in-process is not confined: the test plugin really tries.
  EXPECT_EQ(d.instance("control").value("detail", ""), "inside: written; outside: written");
  d.stop();
}

TEST(Isolation, AnIsolatedPowerStageAndPaymentMethodBillASessionAsInProcessOnes) {
  Daemon d;
  std::string site = one_connector_sim_site("ISO-3", "Isolated session");
  for (const std::string plugin : {"plugin: sim-power\n", "plugin: sim-payment\n"}) {
    site.replace(site.find(plugin), plugin.size(), plugin + "    isolate: true\n");
  }
  d.start(site, {"--clock-speed", time_scale().speed_arg(60)});
  EXPECT_EQ(d.instance("power-1").value("isolated", false), true);
  EXPECT_EQ(d.instance("sim").value("isolated", false), true);
  ASSERT_TRUE(eventually([&] { return d.connector(1) == "Preparing"; })) << d.child->stderr_text();
  const auto started = d.ctl({"session", "start", "1", "--token", "card:0451"});
  ASSERT_EQ(started.exit_code, 0) << started.err << d.child->stderr_text();
  std::smatch m;
  ASSERT_TRUE(std::regex_search(started.out, m, std::regex("session (\\S+) started"))) << started.out;
  const std::string txn = m[1];
  ASSERT_TRUE(eventually([&] { return d.connector(1) == "Charging"; }));
  // Two simulated minutes at up to 60 kW.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const auto stopped = d.ctl({"session", "stop", "1"});
  ASSERT_EQ(stopped.exit_code, 0) << stopped.err << d.child->stderr_text();
  nlohmann::json r;
  ASSERT_TRUE(eventually([&] {
    r = nlohmann::json::parse(d.ctl({"receipt", txn, "--json"}).out, nullptr, false);
    return r.is_object() && r.value("status", "") == "closed";
  }));
  const auto wh = r["bill"]["energy_wh"].get<std::int64_t>();
  EXPECT_GT(wh, 0) << r.dump(2);
  EXPECT_EQ(r["meter_stop_wh"].get<std::int64_t>() - r["meter_start_wh"].get<std::int64_t>(), wh);
  // Flat 69.50 + 80.00 fen per kWh.
  std::int64_t total = 0;
  for (const auto& l : r["bill"]["lines"]) total += l["total_fen"].get<std::int64_t>();
  EXPECT_EQ(total, r["bill"]["total_fen"].get<std::int64_t>());
  EXPECT_EQ(r["captured_fen"], r["bill"]["total_fen"]) << r.dump(2);
  EXPECT_EQ(r["capture_status"], "captured") << r.dump(2);
  d.stop();
}

// What comes over the socket from a child is untrusted: a malformed message is refused and
// counted, the stream goes on while its framing holds, and a broken frame ends it; never a crash.
TEST(IsolationPeer, MalformedMessagesAreRefusedAndCountedAndABrokenFrameClosesTheStream) {
  using pilecore::core::isolation::encode_message;
  using pilecore::core::isolation::Peer;
  boost::asio::io_context io;
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  std::vector<std::string> events;
  std::string closed;
  auto peer = std::make_shared<Peer>(io.get_executor(), sv[0],
                                     Peer::Handlers{[](const nlohmann::json& r) -> nlohmann::json {
                                                      if (r.value("m", "") != "sum") throw std::invalid_argument("unknown request");
                                                      return {{"r", r["a"][0].get<int>() + r["a"][1].get<int>()}};
                                                    },
                                                    [&](const nlohmann::json& e) {
                                                      if (e["m"] != "publish") throw std::invalid_argument("unknown event");
                                                      events.push_back(e["a"].get<std::string>());
                                                    },
                                                    [&](const std::string& why) { closed = why; }});
  peer->start();
  auto send_raw = [&](const std::vector<std::uint8_t>& bytes) { ASSERT_EQ(::write(sv[1], bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size())); };
  auto run_until = [&](const std::function<bool()>& pred) {
    for (int i = 0; i < 200 && !pred(); ++i) io.run_for(std::chrono::milliseconds(10));
    return pred();
  };
  send_raw(encode_message({{"t", "ev"}, {"m", "publish"}, {"a", "one"}}));
  send_raw(encode_message(nlohmann::json::array({1, 2, 3})));                  // not a map
  send_raw(encode_message({{"t", "ev"}, {"m", "format_disk"}, {"a", "x"}}));   // unknown event
  send_raw(encode_message({{"t", "ret"}, {"id", 99}}));                         // an answer nobody awaits
  send_raw(encode_message({{"t", "req"}, {"id", 7}, {"m", "sum"}, {"a", {2, 3}}}));
  send_raw(encode_message({{"t", "ev"}, {"m", "publish"}, {"a", "two"}}));
  ASSERT_TRUE(run_until([&] { return events.size() == 2; }));
  EXPECT_EQ(events, (std::vector<std::string>{"one", "two"}));
  EXPECT_EQ(peer->rejected(), 3u);
  EXPECT_TRUE(closed.empty());
  // The request was answered.
  std::uint8_t buf[256];
  const auto n = ::read(sv[1], buf, sizeof buf);
  ASSERT_GT(n, 4);
  const auto answer = nlohmann::json::from_cbor(buf + 4, buf + n);
  EXPECT_EQ(answer["t"], "ret");
  EXPECT_EQ(answer["id"], 7);
  EXPECT_EQ(answer["r"], 5);

  // A length beyond the limit: the framing cannot be trusted any more.
  send_raw({0xff, 0xff, 0xff, 0xff, 0x00});
  ASSERT_TRUE(run_until([&] { return !closed.empty(); }));
  EXPECT_TRUE(contains(closed, "above the 4194304 byte limit")) << closed;
  EXPECT_FALSE(peer->open());
  ::close(sv[1]);
}
