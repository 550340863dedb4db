// bench/startup: how long pilecored takes from exec to READY=1 on systemd's notify socket, and
// its peak resident memory, on the simulated site. The baseline, measured in the same run, is
// exec-to-exit of `pilecored --version`: the cost of starting the process at all (dynamic
// linking, C++ runtime), which the daemon cannot go below.
//
// The first run starts on an empty state directory (first boot: the database is created and
// migrated, several fsyncs); the others restart on that same directory, as a charger does after
// a power cut or a `systemctl restart`. Both are reported.
//
//   bench_startup [--runs N] [--config FILE] [--pilecored PATH]
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include "test_support.hpp"

using namespace pilecore::test;
using Clock = std::chrono::steady_clock;

namespace {

double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

long peak_rss_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  long value = 0;
  while (in >> key) {
    if (key == "VmHWM:") {
      in >> value;
      return value;
    }
    in.ignore(1 << 10, '\n');
  }
  return -1;
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 20;
  std::string config = std::string(PILECORE_BENCH_SOURCE_DIR) + "/configs/sim-site.yaml";
  std::string pilecored = std::string(PILECORE_BENCH_BIN_DIR) + "/pilecored";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--runs") runs = std::max(1, std::atoi(argv[i + 1]));
    else if (a == "--config") config = argv[i + 1];
    else if (a == "--pilecored") pilecored = argv[i + 1];
  }
  std::vector<double> ready_ms, baseline_ms;
  std::vector<long> rss_kib;
  double first_boot_ms = 0;
  TempDir dir;
  for (int i = 0; i <= runs; ++i) {
    {
      const auto t0 = Clock::now();
      Child version({pilecored, "--version"});
      version.wait();
      baseline_ms.push_back(ms(Clock::now() - t0));
    }
    NotifyListener notify(dir.path() / "notify.sock");
    const auto t0 = Clock::now();
    Child daemon({pilecored, "--config", config, "--state-dir", (dir.path() / "state").string(), "--log-level", "warn"}, {notify.env()});
    if (!notify.wait_for("READY=1", std::chrono::seconds(30))) {
      std::fprintf(stderr, "run %d: pilecored did not become ready:\n%s\n", i, daemon.stderr_text().c_str());
      return 2;
    }
    if (i == 0) {
      first_boot_ms = ms(Clock::now() - t0);
    } else {
      ready_ms.push_back(ms(Clock::now() - t0));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // let it idle: timers, first samples
    rss_kib.push_back(peak_rss_kib(daemon.pid()));
    daemon.signal(SIGTERM);
    if (daemon.wait() != 0) {
      std::fprintf(stderr, "run %d: pilecored did not stop cleanly:\n%s\n", i, daemon.stderr_text().c_str());
      return 2;
    }
  }
  const double p50 = percentile(ready_ms, 0.5), p90 = percentile(ready_ms, 0.9), base50 = percentile(baseline_ms, 0.5);
  const long rss_max = *std::max_element(rss_kib.begin(), rss_kib.end());
  std::printf("bench/startup: pilecored on %s, %d runs\n", config.c_str(), runs);
  std::printf("  first boot (empty state dir): exec -> READY=1 %7.1f ms\n", first_boot_ms);
  std::printf("  restart:  exec -> READY=1     p50 %7.1f ms   p90 %7.1f ms   max %7.1f ms   (target < 100 ms)\n", p50, p90,
              *std::max_element(ready_ms.begin(), ready_ms.end()));
  std::printf("  baseline: exec -> exit of `pilecored --version`   p50 %7.1f ms   (restart/baseline %.1fx)\n", base50, p50 / base50);
  std::printf("  peak RSS (VmHWM)    max %7.1f MiB                                   (target < 20 MiB)\n", static_cast<double>(rss_max) / 1024.0);
  const bool ok = p90 < 100.0 && rss_max < 20 * 1024;
  std::printf("  %s\n", ok ? "within targets" : "TARGET MISSED");
  return ok ? 0 : 1;
}
