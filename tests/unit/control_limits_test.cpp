// The control socket under a flood, through the real pilecored: what it holds for clients that
// never read is bounded and given back, running out of file descriptors neither spins the accept
// loop nor stops the daemon from serving once descriptors are free, and connections over the
// cap or idle past the timeout are closed.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <iostream>
#include <sstream>

#include "control_socket.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace pilecore::core;
using namespace pilecore::test;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// The clock runs 600x and the strand is busy writing to hundreds of watchers: ten minutes of
// that clock (one second of wall time) for the payment's answer, not the default 30 s (50 ms).
std::string site_yaml() {
  std::string yaml = one_connector_sim_site("FLOOD-1", "Flood test");
  yaml.replace(yaml.find("payment: {"), 10, "payment: {authorize_timeout_ms: 600000, ");
  return yaml;
}

/// A kB figure from /proc/<pid>/status ("VmRSS", "VmHWM").
std::int64_t status_kb(pid_t pid, const std::string& field) {
  std::ifstream in(fmt::format("/proc/{}/status", pid));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1));
  }
  return -1;
}

/// Whether `pid` runs under qemu-user: binfmt_misc starts the emulator, which is then the
/// process's executable (the arm64 build's tests, `make test-arm64`).
[[maybe_unused]] bool emulated(pid_t pid) {  // (unused under ASan, which skips the RSS checks anyway)
  std::error_code ec;
  const auto exe = fs::read_symlink(fmt::format("/proc/{}/exe", pid), ec);
  return !ec && exe.filename().string().rfind("qemu-", 0) == 0;
}

/// utime + stime of a process, in seconds.
double cpu_seconds(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::istringstream rest(all.substr(all.rfind(')') + 2));  // the command name may hold spaces
  std::vector<std::string> f{std::istream_iterator<std::string>(rest), std::istream_iterator<std::string>()};
  // After the name: state is field 3, utime 14 and stime 15 (proc(5)); f[0] is field 3.
  return static_cast<double>(std::stoll(f[11]) + std::stoll(f[12])) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

/// A raw client connection that sends `first_line` (if any) and then never reads.
int connect_raw(const fs::path& sock, const std::string& first_line = "") {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error("socket failed");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, sock.c_str(), sizeof addr.sun_path - 1);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    throw std::runtime_error(fmt::format("connect: {}", std::strerror(errno)));
  }
  if (!first_line.empty() && ::send(fd, first_line.data(), first_line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(first_line.size())) {
    ::close(fd);
    throw std::runtime_error("send failed");
  }
  return fd;
}

std::size_t count_of(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

std::string slurp_stderr(const Child& c) { return c.stderr_text(); }

/// status, or an empty object when the daemon does not answer within `timeout`.
nlohmann::json try_status(const fs::path& sock, std::chrono::milliseconds timeout = 1000ms) {
  try {
    return control_request(sock, {{"cmd", "status"}}, timeout);
  } catch (const std::exception&) {
    return nlohmann::json::object();
  }
}

}  // namespace

TEST(ControlLimits, StalledWatchersHoldBoundedMemoryAndGiveItBack) {
  // The test holds 950 connections itself.
  rlimit rl{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &rl), 0);
  if (rl.rlim_cur < 2048) {
    rl.rlim_cur = std::min<rlim_t>(rl.rlim_max, 4096);
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &rl), 0);
  }
  ASSERT_GE(rl.rlim_cur, 1100u) << "this machine's hard limit on file descriptors is too low for the test";
  constexpr std::size_t kWatchers = 950;
  constexpr std::size_t kQueueBytes = 4 * 1024 * 1024;
  TempDir dir;
  const auto file = dir.write("site.yaml", site_yaml());
  NotifyListener notify(dir.path() / "n.sock");
  Child daemon({std::string(PILECORE_BIN_DIR) + "/pilecored", "--config", file.string(), "--state-dir", (dir.path() / "state").string(), "--clock-speed",
                time_scale().speed_arg(600), "--clock-start", "2026-03-02T03:00:00Z", "--control-max-connections", "1000", "--control-queue-bytes", std::to_string(kQueueBytes)},
               {notify.env()});
  ASSERT_TRUE(notify.wait_for("READY=1", 10s)) << daemon.stderr_text();
  const fs::path sock = dir.path() / "state" / "pilecored.sock";
  ASSERT_TRUE(eventually([&] { return control_request(sock, {{"cmd", "status"}})["connectors"][0]["status"] == "Preparing"; }));
  const std::int64_t rss_before = status_kb(daemon.pid(), "VmRSS");

  std::vector<int> watchers;
  for (std::size_t i = 0; i < kWatchers; ++i) watchers.push_back(connect_raw(sock, "{\"cmd\":\"watch\"}\n"));
  ASSERT_TRUE(eventually([&] { return control_request(sock, {{"cmd", "status"}})["control"]["watchers"] == kWatchers; }, 30s))
      << control_request(sock, {{"cmd", "status"}})["control"].dump();

  // Every session start and stop is an event for every watcher; none of them reads. Each
  // watcher's share is the bound over the watchers left, so the last few may hold more: the
  // flood goes on until nine in ten are gone.
  constexpr std::size_t kMostDropped = kWatchers * 9 / 10;
  int cycles = 0;
  std::int64_t peak_queued = 0;
  for (; cycles < 300; ++cycles) {
    const auto st = control_request(sock, {{"cmd", "status"}});
    peak_queued = std::max<std::int64_t>(peak_queued, st["control"]["queued_bytes"].get<std::int64_t>());
    if (st["dropped_watchers"].get<std::size_t>() >= kMostDropped) break;
    const auto started = control_request(sock, {{"cmd", "session_start"}, {"connector", 1}, {"token", "card:04A1B2C3D4"}});
    ASSERT_TRUE(started.value("ok", false)) << started.dump();
    const auto stopped = control_request(sock, {{"cmd", "session_stop"}, {"connector", 1}});
    ASSERT_TRUE(stopped.value("ok", false)) << stopped.dump();
  }
  const auto st = control_request(sock, {{"cmd", "status"}});
  EXPECT_GE(st["dropped_watchers"].get<std::size_t>(), kMostDropped) << "after " << cycles << " sessions: " << st["control"].dump();
  EXPECT_LE(peak_queued, static_cast<std::int64_t>(kQueueBytes)) << "the global bound";
  const std::int64_t rss_peak = status_kb(daemon.pid(), "VmHWM");

  for (int fd : watchers) ::close(fd);
  ASSERT_TRUE(eventually([&] { return control_request(sock, {{"cmd", "status"}})["control"]["connections"] == 1; }, 10s));
  const std::int64_t rss_after = status_kb(daemon.pid(), "VmRSS");
  std::cout << fmt::format("[ figures  ] {} stalled watchers, {} sessions: RSS {} kB before, peak {} kB (+{} kB), {} kB after (+{} kB); "
                           "peak queued {} bytes of {}\n",
                           kWatchers, cycles, rss_before, rss_peak, rss_peak - rss_before, rss_after, rss_after - rss_before, peak_queued, kQueueBytes);
  // The issue saw 15 MB grow to 818 MB and stay there. What the daemon may hold is the queue
  // bound plus the connections' own buffers and bookkeeping.
#if defined(__SANITIZE_ADDRESS__)
  // Under AddressSanitizer freed memory waits in its quarantine and every byte has a shadow: the
  // daemon's RSS measures the sanitizer, not the bound. The plain build (make test) checks it.
#else
  // Under qemu-user the RSS also holds the translator's code cache, which grows by the code paths
  // the flood runs for the first time (18 MB seen): it measures the emulator, not the bound. The
  // native build checks it; under emulation the queue bound above is still checked.
  if (!emulated(daemon.pid())) {
    EXPECT_LT(rss_peak - rss_before, 48 * 1024) << "peak growth, kB";
    EXPECT_LT(rss_after - rss_before, 16 * 1024) << "growth left after the watchers went, kB";
  }
#endif
  EXPECT_NE(daemon.stderr_text().find("watcher(s) past their share of the 4194304 bytes queued for all watchers disconnected"), std::string::npos);
  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.wait(), 0) << daemon.stderr_text();
}

TEST(ControlLimits, OutOfDescriptorsTheAcceptLoopBacksOffAndServesAgain) {
  TempDir dir;
  const auto file = dir.write("site.yaml", site_yaml());
  NotifyListener notify(dir.path() / "n.sock");
  // 64 descriptors for the daemon; the test opens more idle connections than that.
  Child daemon({"/bin/sh", "-c", "ulimit -n 64 && exec \"$0\" \"$@\"", std::string(PILECORE_BIN_DIR) + "/pilecored", "--config", file.string(),
                "--state-dir", (dir.path() / "state").string(), "--control-max-connections", "1000", "--control-idle-timeout", "3"},
               {notify.env()});
  ASSERT_TRUE(notify.wait_for("READY=1", 10s)) << daemon.stderr_text();
  const fs::path sock = dir.path() / "state" / "pilecored.sock";
  ASSERT_TRUE(try_status(sock).value("ok", false));

  for (int round = 1; round <= 2; ++round) {
    std::vector<int> idle;
    for (int i = 0; i < 100; ++i) idle.push_back(connect_raw(sock));
    ASSERT_TRUE(eventually([&] { return count_of(slurp_stderr(daemon), "control socket: cannot accept") == static_cast<std::size_t>(round); }, 5s))
        << daemon.stderr_text();
    const double cpu0 = cpu_seconds(daemon.pid());
    std::this_thread::sleep_for(2s);  // within the idle timeout: the descriptors stay taken
    const double cpu = cpu_seconds(daemon.pid()) - cpu0;
    std::cout << fmt::format("[ figures  ] round {}: 100 idle connections at 64 descriptors: daemon CPU {:.2f} s in 2 s\n", round, cpu);
    EXPECT_LT(cpu, 0.3) << "the accept loop spins";
    EXPECT_EQ(count_of(slurp_stderr(daemon), "control socket: cannot accept"), static_cast<std::size_t>(round)) << "said once per episode";
    if (round == 1) {
      // The clients go: the daemon serves again.
      for (int fd : idle) ::close(fd);
      EXPECT_TRUE(eventually([&] { return try_status(sock).value("ok", false); }, 10s)) << daemon.stderr_text();
    } else {
      // The clients stay but say nothing: the idle timeout frees the descriptors.
      EXPECT_TRUE(eventually([&] { return try_status(sock).value("ok", false); }, 20s)) << daemon.stderr_text();
      char c;
      EXPECT_EQ(::recv(idle.front(), &c, 1, MSG_DONTWAIT), 0) << "an idle connection was closed by the daemon";
      for (int fd : idle) ::close(fd);
    }
  }
  const auto st = try_status(sock);
  ASSERT_TRUE(st.contains("control")) << st.dump();
  // Round 2's idle timeout frees some descriptors, the backlog takes them again: a third
  // episode, and a third line, no more.
  const auto episodes = st["control"]["fd_exhaustion_episodes"].get<std::size_t>();
  EXPECT_GE(episodes, 2u);
  EXPECT_EQ(count_of(slurp_stderr(daemon), "control socket: cannot accept"), episodes);
  EXPECT_GT(st["control"]["idle_closed"].get<int>(), 0);
  EXPECT_NE(daemon.stderr_text().find("control socket: accepting connections again"), std::string::npos);
  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.wait(), 0) << daemon.stderr_text();
}

TEST(ControlLimits, ConnectionsOverTheCapAreToldAndClosed) {
  TempDir dir;
  const auto file = dir.write("site.yaml", site_yaml());
  NotifyListener notify(dir.path() / "n.sock");
  Child daemon({std::string(PILECORE_BIN_DIR) + "/pilecored", "--config", file.string(), "--state-dir", (dir.path() / "state").string(),
                "--control-max-connections", "3", "--control-idle-timeout", "1"},
               {notify.env()});
  ASSERT_TRUE(notify.wait_for("READY=1", 10s)) << daemon.stderr_text();
  const fs::path sock = dir.path() / "state" / "pilecored.sock";
  std::vector<int> held;
  for (int i = 0; i < 3; ++i) held.push_back(connect_raw(sock, i == 0 ? "{\"cmd\":\"watch\"}\n" : "{\"cmd\":\"sta"));  // a half-sent line
  std::this_thread::sleep_for(200ms);
  const auto refused = control_request(sock, {{"cmd", "status"}});
  EXPECT_EQ(refused["ok"], false);
  EXPECT_EQ(refused["error"], "pilecored has 3 control connections open, its limit; try again later");
  // The half-sent lines are idle connections: closed after a second. The watcher stays.
  // One status answered does not mean both idle connections are gone (one may be, and the
  // status connection just closed may still count): ask until the second is closed too, and
  // keep that answer rather than asking once more at the limit.
  nlohmann::json st;
  ASSERT_TRUE(eventually(
      [&] {
        st = try_status(sock);
        return st.value("ok", false) && st.contains("control") && st["control"].value("idle_closed", 0) >= 2;
      },
      5s))
      << st.dump();
  EXPECT_GE(st["control"]["refused_connections"].get<int>(), 1);
  EXPECT_EQ(st["control"]["idle_closed"], 2);
  EXPECT_EQ(st["control"]["watchers"], 1);
  for (int fd : held) ::close(fd);
  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.wait(), 0) << daemon.stderr_text();
}
