// bench/flood: the emergency layer under a flood. pilecored runs a real site (sim-power charging a
// vehicle on connector 1, bench-meter reading it every 100 ms, sim-payment, and risk-rate-limit at
// its default of 500 requests a second); this program, another process, talks to its control
// socket as pilectl does.
//
// Two phases of equal length, both with the session charging:
//   idle   only the probe: a session-control request for the charging session
//          (`session_answer` on connector 1, answered "no step-up pending" by the session engine)
//          every 20 ms, timed from write to reply;
//   flood  the same probe, while --flooders connections send --rps requests a second together
//          for --seconds (half `session_start` on the busy connector: authorisation attempts;
//          half `status`), each on its own paced schedule.
// Reported: the accepted QPS of the flood (replies not refused as rate limited) against the
// limit, the probe's p50/p99 round trip idle and under flood, the meter readings the session
// took a second in each phase (charging in progress is unaffected), and pilecored's RSS
// (/proc/<pid>/status VmRSS) before and after the flood.
// Targets (exit 1 on a miss): accepted QPS <= 500 plus one burst spread over the phase; probe
// p99 under flood <= 2x idle p99; RSS growth <= 5 %; the session still charging at the end.
//
//   bench_flood [--seconds S] [--rps R] [--flooders N] [--pilecored PATH]
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../common/bench_env.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using Steady = std::chrono::steady_clock;
using pilecore::bench::loadavg;

namespace {

constexpr int kLimit = 500;  // risk-rate-limit's default qps (and burst)

// One persistent connection to the control socket; one request line, one reply line.
class Client {
 public:
  explicit Client(const fs::path& socket) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, socket.c_str(), sizeof a.sun_path - 1);
    if (fd_ < 0 || ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw std::runtime_error("cannot connect to " + socket.string());
  }
  ~Client() {
    if (fd_ >= 0) ::close(fd_);
  }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  void send(const std::string& line) {
    const std::string out = line + "\n";
    for (std::size_t off = 0; off < out.size();) {
      const ssize_t n = ::send(fd_, out.data() + off, out.size() - off, MSG_NOSIGNAL);
      if (n <= 0) throw std::runtime_error("control socket closed while sending");
      off += static_cast<std::size_t>(n);
    }
  }
  void shutdown_write() { ::shutdown(fd_, SHUT_WR); }
  /// The next reply line; nullopt once the daemon has answered everything and closed.
  std::optional<std::string> next_line() {
    while (true) {
      if (const auto nl = buf_.find('\n'); nl != std::string::npos) {
        std::string reply = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return reply;
      }
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 30000) <= 0) throw std::runtime_error("no reply within 30 s");
      char tmp[65536];
      const ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
      if (n == 0) return std::nullopt;
      if (n < 0) throw std::runtime_error("control socket error while reading");
      buf_.append(tmp, static_cast<std::size_t>(n));
    }
  }

  std::string call(const std::string& line) {
    send(line);
    auto reply = next_line();
    if (!reply) throw std::runtime_error("control socket closed while reading");
    return *reply;
  }

 private:
  int fd_ = -1;
  std::string buf_;
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5))];
}

long rss_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
  }
  return -1;
}

std::string site_yaml(const fs::path& db) {
  return R"(site: {id: BENCH-FLOOD, name: bench/flood, location: {lat: 31.2, lon: 121.5}, timezone: Asia/Shanghai}
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000, meter: meter-1}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
    config: {arrive_after_s: 0, ev_ready_delay_ms: 0, battery_capacity_wh: 300000, initial_soc_pct: 10, tick_ms: 100}
  meter-1:
    plugin: bench-meter
    connector: 1
    config: {wh_per_read: 1, publish_every_ms: 100}
  pay:
    plugin: sim-payment
    config: {latency_ms: 0}
  door:
    plugin: risk-rate-limit
storage:
  database: )" + db.string() + R"(
tariffs:
  decimals: 2
  plans:
    all:
      prices:
        flat: {electricity: 69.50, service: 80.00}
      periods:
        - {from: "00:00", to: "24:00", type: flat}
payment: {default_method: pay, preauth_fen: 30000}
charging: {checkpoint_interval_s: 1, checkpoint_wh: 1000}
)";
}

struct Phase {
  std::vector<double> probe_ms;
  long readings_before = 0, readings_after = 0;
};

// Probes every 20 ms until `stop`; keeps each round trip in ms.
std::vector<double> probe(Client& c, const std::atomic<bool>& stop) {
  std::vector<double> out;
  auto next = Steady::now();
  while (!stop.load()) {
    next += std::chrono::milliseconds(20);
    std::this_thread::sleep_until(next);
    const auto t0 = Steady::now();
    const std::string r = c.call(R"({"cmd":"session_answer","connector":1,"confirmed":true})");
    out.push_back(std::chrono::duration<double, std::milli>(Steady::now() - t0).count());
    if (r.find("rate_limited") != std::string::npos) throw std::runtime_error("the session's control request was rate limited: " + r);
  }
  return out;
}

// `status`, asked until the guard admits it (right after the flood its bucket is empty).
nlohmann::json status(Client& c) {
  for (int i = 0; i < 200; ++i) {
    auto st = nlohmann::json::parse(c.call(R"({"cmd":"status"})"));
    if (st.value("ok", false)) return st;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  throw std::runtime_error("status was refused for 2 s after the flood");
}

/// On a connection of its own: one left idle through a 30 s phase is closed by the daemon's
/// idle timeout (30 s), as any idle client's would be.
long readings(const fs::path& socket) {
  Client c(socket);
  const auto st = status(c);
  for (const auto& conn : st["connectors"]) {
    if (conn.value("id", 0) == 1 && conn.contains("session")) return conn["session"].value("energy_wh", -1L);
  }
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  int seconds = 30, rps = 5000, flooders = 4;
  std::string pilecored = std::string(PILECORE_BENCH_BIN_DIR) + "/pilecored";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 < argc && a == "--seconds") seconds = std::max(1, std::atoi(argv[++i]));
    else if (i + 1 < argc && a == "--rps") rps = std::max(1, std::atoi(argv[++i]));
    else if (i + 1 < argc && a == "--flooders") flooders = std::max(1, std::atoi(argv[++i]));
    else if (i + 1 < argc && a == "--pilecored") pilecored = argv[++i];
    else {
      std::fprintf(stderr, "usage: bench_flood [--seconds S] [--rps R] [--flooders N] [--pilecored PATH]\n");
      return 2;
    }
  }
  pilecore::test::TempDir dir;
  bool ok = false;
  try {
    const fs::path site = dir.write("site.yaml", site_yaml(dir.path() / "pilecore.db"));
    const fs::path sock = dir.path() / "pilecored.sock";
    pilecore::test::Child daemon({pilecored, "--config", site.string(), "--state-dir", (dir.path() / "state").string(), "--plugin-dir",
                                  PILECORE_BENCH_PLUGIN_DIR, "--plugin-dir", PILECORE_BENCH_OWN_PLUGIN_DIR, "--socket", sock.string(), "--log-level",
                                  "warn", "--status-interval", "0"});
    const auto ready_by = Steady::now() + std::chrono::seconds(30);
    while (!fs::exists(sock)) {
      if (Steady::now() > ready_by) throw std::runtime_error("pilecored did not open its control socket:\n" + daemon.stderr_text());
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    Client control(sock);
    // Start the session once the vehicle is plugged in.
    std::string started;
    for (int i = 0; i < 500; ++i) {
      started = control.call(R"({"cmd":"session_start","connector":1,"token":"card:0451"})");
      if (nlohmann::json::parse(started).value("ok", false)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!nlohmann::json::parse(started).value("ok", false)) throw std::runtime_error("the session did not start: " + started);
    while (readings(sock) <= 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));

    std::printf("bench/flood: %d requests a second for %d s at pilecored's control socket (%d connections), risk-rate-limit at %d a second,\n"
                "  one vehicle charging; the probe: a session-control request for it every 20 ms; load average %s\n",
                rps, seconds, flooders, kLimit, loadavg().c_str());
    std::fflush(stdout);
    const auto phase = std::chrono::seconds(seconds);

    // Idle.
    Phase idle, flood;
    Client probe_conn(sock);
    {
      std::atomic<bool> stop{false};
      idle.readings_before = readings(sock);
      std::thread t([&] { idle.probe_ms = probe(probe_conn, stop); });
      std::this_thread::sleep_for(phase);
      stop = true;
      t.join();
      idle.readings_after = readings(sock);
    }
    const long rss_before = rss_kib(daemon.pid());

    // Flood.
    std::atomic<long> accepted{0}, refused{0}, errors{0}, sent{0};
    {
      std::atomic<bool> stop{false};
      flood.readings_before = readings(sock);
      std::vector<std::thread> threads;
      const auto start = Steady::now();
      const auto end = start + phase;
      // Each flooder connection has a writer that sends on its paced schedule whatever the
      // replies do (a flood does not wait for answers) and a reader that sorts the replies.
      std::vector<std::unique_ptr<Client>> conns;
      for (int f = 0; f < flooders; ++f) conns.push_back(std::make_unique<Client>(sock));
      for (int f = 0; f < flooders; ++f) {
        threads.emplace_back([&, f] {
          try {
            const auto gap = std::chrono::nanoseconds(1000000000LL * flooders / rps);
            auto next = start + std::chrono::nanoseconds(gap.count() * f / flooders);
            for (long n = 0; Steady::now() < end; ++n) {
              std::this_thread::sleep_until(next);
              next += gap;
              conns[static_cast<std::size_t>(f)]->send((n + f) % 2 == 0 ? R"({"cmd":"session_start","connector":1,"token":"card:0999"})" : R"({"cmd":"status"})");
              ++sent;
            }
            conns[static_cast<std::size_t>(f)]->shutdown_write();
          } catch (const std::exception& e) {
            ++errors;
            std::fprintf(stderr, "flooder %d: %s\n", f, e.what());
          }
        });
        threads.emplace_back([&, f] {
          try {
            while (auto r = conns[static_cast<std::size_t>(f)]->next_line()) {
              if (r->find("\"rate_limited\":true") != std::string::npos) ++refused;
              else ++accepted;
            }
          } catch (const std::exception& e) {
            ++errors;
            std::fprintf(stderr, "flooder %d reader: %s\n", f, e.what());
          }
        });
      }
      std::thread t([&] { flood.probe_ms = probe(probe_conn, stop); });
      for (auto& th : threads) th.join();
      stop = true;
      t.join();
      flood.readings_after = readings(sock);
    }
    const long rss_after = rss_kib(daemon.pid());
    Client after(sock);  // `control` has been idle past the daemon's idle timeout
    const auto st = status(after);
    const bool charging = st["connectors"][0].value("status", "") == "Charging";

    daemon.signal(SIGTERM);
    const int rc = daemon.wait();

    const double offered = static_cast<double>(sent) / seconds;
    const long unanswered = sent - accepted - refused;
    const double accepted_qps = static_cast<double>(accepted) / seconds;
    const double allowed = kLimit + static_cast<double>(kLimit) / seconds;  // the rate plus one burst over the phase
    const double idle_p99 = percentile(idle.probe_ms, 0.99), flood_p99 = percentile(flood.probe_ms, 0.99);
    const double rss_growth = rss_before > 0 ? 100.0 * static_cast<double>(rss_after - rss_before) / static_cast<double>(rss_before) : 100;
    auto per_s = [&](const Phase& p) { return static_cast<double>(p.readings_after - p.readings_before) / seconds; };
    std::printf("  flood: offered %.0f/s, accepted %.1f/s (limit %d/s + one burst over %d s = %.1f/s), refused %ld, unanswered %ld, connection errors %ld\n",
                offered, accepted_qps, kLimit, seconds, allowed, refused.load(), unanswered, errors.load());
    std::printf("  probe (session control) idle  p50 %.3f ms  p99 %.3f ms  (%zu)\n", percentile(idle.probe_ms, 0.5), idle_p99, idle.probe_ms.size());
    std::printf("  probe (session control) flood p50 %.3f ms  p99 %.3f ms  (%zu)  ratio %.2fx\n", percentile(flood.probe_ms, 0.5), flood_p99,
                flood.probe_ms.size(), idle_p99 > 0 ? flood_p99 / idle_p99 : 0);
    std::printf("  session: %.1f Wh a second idle, %.1f under flood (1 Wh a reading); Charging at the end: %s\n", per_s(idle), per_s(flood), charging ? "yes" : "NO");
    std::printf("  pilecored RSS %ld KiB before the flood, %ld KiB after (%+.1f %%); admission counts %s\n", rss_before, rss_after, rss_growth,
                st["admission"].dump().c_str());
    std::printf("  load average at the end %s\n", loadavg().c_str());
    const bool qps_ok = accepted_qps <= allowed && errors == 0 && unanswered == 0 && offered >= 0.9 * rps;
    const bool lat_ok = flood_p99 <= 2 * idle_p99;
    const bool rss_ok = rss_growth <= 5.0;
    std::printf("  targets: accepted <= limit %s; probe p99 <= 2x idle %s; RSS growth <= 5 %% %s; charging unaffected %s; clean stop %s\n",
                qps_ok ? "ok" : "MISSED", lat_ok ? "ok" : "MISSED", rss_ok ? "ok" : "MISSED", charging ? "ok" : "MISSED", rc == 0 ? "ok" : "MISSED");
    if (offered < 0.9 * rps) std::printf("  (the flooders offered only %.0f of %d a second: this machine could not generate the flood)\n", offered, rps);
    ok = qps_ok && lat_ok && rss_ok && charging && rc == 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_flood: %s\n", e.what());
  }
  return ok ? 0 : 1;
}
