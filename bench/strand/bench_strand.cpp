// bench/strand: how late the core's strand runs a handler while real sessions charge, commit and
// close, and the ledger signs through a deliberately slow signer, against an idle baseline in the
// same run.
//
// In process, with the real Runtime (its strand, its session engine and payment saga, its
// StoreWorker: the storage thread over the site's database with WAL and synchronous=FULL) and a
// real Ledger (SM2/SM3) made through RuntimeOptions::make_ledger, as pilecored makes it, whose
// signer sleeps --sign-ms (50 ms: a TPM's speed) before making each real signature.
// The site: N connectors, each with sim-power (a vehicle plugged in and ready, which is full
// after about --session-ms of charging, unplugs and is replaced at once) and bench-meter (a meter
// publishing every --checkpoint-ms, 1 Wh a reading, and the engine checkpointing each reading),
// one sim-payment (no latency), no risk rule, log level info to a file (pilecored's default).
// A driver thread starts a session (`session_start`, as the control socket hands it over) on
// every connector that is Preparing; each session commits its transaction id, the saga's
// operations, its transaction row, a checkpoint per reading, its closing update and bill, and
// its ledger records (signed later by the slow signer).
//
// The probe: a thread posts a timestamped no-op to the strand every millisecond; the handler
// records how late it runs (now - posted). Two phases of equal length, one after the other:
//   idle  the same site, vehicles plugged in, no session;
//   load  the driver keeps every connector charging.
// Target: load p99 < 2 ms (exit 1 on a miss). At the end the runtime stops (the signer drains,
// then the storage thread), and the ledger must verify with every signature.
//
//   bench_strand [--sessions N] [--seconds S] [--checkpoint-ms C] [--session-ms D] [--sign-ms M] [--dir DIR] [--keep]
#include <sqlite3.h>
#include <spdlog/spdlog.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include "crypto.hpp"
#include "ledger.hpp"
#include "logging.hpp"
#include "runtime.hpp"
#include "storage.hpp"
#include "store_worker.hpp"
#include "../common/bench_env.hpp"
#include "../common/bench_runtime.hpp"

using namespace pilecore;
using namespace pilecore::core;
using pilecore::bench::fs_type;
using pilecore::bench::loadavg;
namespace fs = std::filesystem;
using Steady = std::chrono::steady_clock;

namespace {

std::int64_t now_ns() { return std::chrono::duration_cast<std::chrono::nanoseconds>(Steady::now().time_since_epoch()).count(); }

struct Stats {
  double p50 = 0, p99 = 0, max = 0;
  std::size_t n = 0;
};

Stats stats(std::vector<double> v) {
  Stats s;
  s.n = v.size();
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  auto at = [&](double p) { return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5))]; };
  s.p50 = at(0.5);
  s.p99 = at(0.99);
  s.max = v.back();
  return s;
}

struct Load {
  int sessions = 8;
  int checkpoint_ms = 10;
  int session_ms = 2000;  // with 3 ledger records a session and 8 connectors, a 50 ms signer keeps up
};

// The power stage and the vehicle are limited to 36 kW: 10 Wh a second into a 1000 Wh battery,
// 1 % a second, so a vehicle plugged in at 50 % is full after session_ms.
constexpr int kPowerW = 36000;

std::string site_yaml(const Load& load, const fs::path& database) {
  std::string s = "site:\n  id: BENCH-STRAND\n  name: bench/strand\n  location: {lat: 31.2, lon: 121.5}\n  timezone: Asia/Shanghai\nconnectors:\n";
  for (int i = 1; i <= load.sessions; ++i) {
    s += "  - {id: " + std::to_string(i) + ", type: gbt-dc, max_power_w: 600000, meter: meter-" + std::to_string(i) + "}\n";
  }
  char target[32];
  std::snprintf(target, sizeof target, "%.3f", 50.0 + load.session_ms / 1000.0 * (kPowerW / 3600.0) / 1000.0 * 100.0);
  s += "plugins:\n";
  for (int i = 1; i <= load.sessions; ++i) {
    const std::string n = std::to_string(i);
    s += "  power-" + n + ":\n    plugin: sim-power\n    connector: " + n +
         "\n    config: {arrive_after_s: 0, arrive_every_s: 0, depart_after_full_s: 0, ev_ready_delay_ms: 0, battery_capacity_wh: 1000, "
         "initial_soc_pct: 50, target_soc_pct: " + target + ", stage_max_power_w: " + std::to_string(kPowerW) + ", max_power_w: " +
         std::to_string(kPowerW) + ", tick_ms: 100}\n";
    s += "  meter-" + n + ":\n    plugin: bench-meter\n    connector: " + n + "\n    config: {wh_per_read: 1, publish_every_ms: " +
         std::to_string(load.checkpoint_ms) + "}\n";
  }
  s += "  pay:\n    plugin: sim-payment\n    config: {latency_ms: 0}\n";
  s += "storage:\n  database: " + database.string() + "\n";
  s += R"(tariffs:
  decimals: 2
  plans:
    all:
      prices:
        flat: {electricity: 69.50, service: 80.00}
      periods:
        - {from: "00:00", to: "24:00", type: flat}
payment: {default_method: pay, preauth_fen: 30000}
)";
  s += "charging: {checkpoint_interval_s: 1, checkpoint_wh: 1, fallback_power_w: " + std::to_string(kPowerW) + "}\n";
  return s;
}

// The probe: posts a no-op every millisecond and keeps each one's lateness, in ms.
class Probe {
 public:
  explicit Probe(Runtime& rt) : rt_(rt) {}
  std::vector<double> run_for(std::chrono::milliseconds length) {
    auto out = std::make_shared<std::vector<double>>();
    auto mutex = std::make_shared<std::mutex>();
    out->reserve(static_cast<std::size_t>(length.count()) + 16);
    std::atomic<int> pending{0};
    const auto end = Steady::now() + length;
    auto next = Steady::now();
    while (next < end) {
      next += std::chrono::milliseconds(1);
      std::this_thread::sleep_until(next);
      const std::int64_t posted = now_ns();
      ++pending;
      rt_.dispatch([out, mutex, posted, &pending] {
        const double late_ms = static_cast<double>(now_ns() - posted) / 1e6;
        {
          std::lock_guard lock(*mutex);
          out->push_back(late_ms);
        }
        --pending;
      });
    }
    while (pending.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::lock_guard lock(*mutex);
    return *out;
  }

 private:
  Runtime& rt_;
};

// Sends a session_start to every connector that is Preparing, until stopped; a start refused
// (the previous session not closed yet) is tried again at the next round.
class Driver {
 public:
  Driver(Runtime& rt, int connectors) : rt_(rt), pending_(static_cast<std::size_t>(connectors) + 1) {
    for (auto& p : pending_) p = std::make_shared<std::atomic<bool>>(false);
    thread_ = std::thread([this] { loop(); });
  }
  ~Driver() { stop(); }
  void stop() {
    running_ = false;
    if (thread_.joinable()) thread_.join();
  }
  std::uint64_t started() const { return started_.load(); }
  std::uint64_t refused() const { return refused_.load(); }

 private:
  void loop() {
    while (running_) {
      for (const auto& [id, status] : rt_.connectors()) {
        if (status != ConnectorStatus::preparing || id >= pending_.size()) continue;
        auto busy = pending_[id];  // one card per connector: a card charges on one connector at a time
        if (busy->exchange(true)) continue;  // a request of this connector is under way
        rt_.dispatch([this, id, busy] {
          rt_.handle_request({{"cmd", "session_start"}, {"connector", id}, {"token", "card:" + std::to_string(4510 + id)}}, [this, busy](const nlohmann::json& reply) {
            ++(reply.value("ok", false) ? started_ : refused_);
            busy->store(false);
          });
        });
      }
      // A refused start (the last session still closing) is tried again at the next round.
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    // The replies capture this: wait for those under way.
    for (const auto& p : pending_) {
      while (p->load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }

  Runtime& rt_;
  std::vector<std::shared_ptr<std::atomic<bool>>> pending_;
  std::atomic<bool> running_{true};
  std::atomic<std::uint64_t> started_{0}, refused_{0};
  std::thread thread_;
};

std::int64_t count_rows(sqlite3* db, const char* sql) {
  sqlite3_stmt* st = nullptr;
  std::int64_t n = -1;
  if (sqlite3_prepare_v2(db, sql, -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) n = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  Load load;
  int seconds = 5, sign_ms = 50;
  fs::path base = fs::path(PILECORE_BENCH_BUILD_DIR);
  bool keep = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto num = [&] { return std::max(1, std::atoi(argv[++i])); };
    if (a == "--keep") keep = true;
    else if (i + 1 < argc && a == "--sessions") load.sessions = num();
    else if (i + 1 < argc && a == "--seconds") seconds = num();
    else if (i + 1 < argc && a == "--checkpoint-ms") load.checkpoint_ms = num();
    else if (i + 1 < argc && a == "--session-ms") load.session_ms = std::max(100, num());
    else if (i + 1 < argc && a == "--sign-ms") sign_ms = std::max(0, std::atoi(argv[++i]));
    else if (i + 1 < argc && a == "--dir") base = argv[++i];
    else {
      std::fprintf(stderr, "usage: bench_strand [--sessions N] [--seconds S] [--checkpoint-ms C] [--session-ms D] [--sign-ms M] [--dir DIR] [--keep]\n");
      return 2;
    }
  }
  std::error_code ec;
  fs::create_directories(base, ec);
  std::string tmpl = (base / "bench-strand-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) {
    std::perror(tmpl.c_str());
    return 2;
  }
  const fs::path dir = tmpl;
  // The core and the plugins log at info, as pilecored does, to stderr (the journal's pipe under
  // systemd): here a file, so the figures stay readable.
  const fs::path log_file = dir / "pilecored.log";
  const int saved_stderr = ::dup(2);
  const int log_fd = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (saved_stderr < 0 || log_fd < 0 || ::dup2(log_fd, 2) < 0) {
    std::perror("bench_strand: cannot redirect the log");
    return 2;
  }
  ::close(log_fd);
  init_logging("info");
  auto restore_stderr = [&] {
    std::fflush(stderr);
    ::dup2(saved_stderr, 2);
  };

  bool ok = true;
  try {
    const fs::path key = dir / "device.key", cert = dir / "device.crt", db_file = dir / "pilecore.db";
    generate_identity(KeyAlgorithm::sm2, key, cert, "BENCH-STRAND");
    const fs::path site_file = dir / "site.yaml";
    std::ofstream(site_file) << site_yaml(load, db_file);
    RuntimeOptions options;
    options.state_dir = dir / "state";
    const auto signing_key = std::make_shared<SigningKey>(key.string());
    std::atomic<std::uint64_t> signed_count{0};
    options.make_ledger = [&, signing_key](sqlite3* db) {
      return std::make_unique<Ledger>(db, SigningKey(key.string()), HashAlgorithm::sm3, [signing_key, sign_ms, &signed_count](ByteView b) {
        std::this_thread::sleep_for(std::chrono::milliseconds(sign_ms));
        ++signed_count;
        return signing_key->sign(b);
      });
    };
    pilecore::bench::BenchRuntime bench(site_file, {PILECORE_BENCH_PLUGIN_DIR, PILECORE_BENCH_OWN_PLUGIN_DIR}, std::move(options));
    Runtime& rt = bench.rt();
    StoreWorker& store = *rt.store();
    if (rt.ledger() == nullptr) throw std::runtime_error("the runtime made no ledger");
    // Every vehicle plugged in and ready before the idle phase starts.
    if (!pilecore::bench::wait_until(
            [&] {
              const auto c = rt.connectors();
              return std::all_of(c.begin(), c.end(), [](const auto& kv) { return kv.second == ConnectorStatus::preparing; });
            },
            std::chrono::seconds(30))) {
      throw std::runtime_error("the connectors did not all reach Preparing");
    }

    std::printf("bench/strand: the core strand's scheduling delay, a no-op posted every 1 ms, %d s idle then %d s under load\n", seconds, seconds);
    std::printf("  load: %d real sessions (session engine, saga, sim-power, sim-payment), a meter reading and its checkpoint every %d ms each,\n"
                "        each session about %d ms, then the next vehicle; log level info to a file\n",
                load.sessions, load.checkpoint_ms, load.session_ms);
    std::printf("        ledger SM2/SM3 signed off the commit path by a signer sleeping %d ms per signature (a TPM's speed)\n", sign_ms);
    std::printf("  database %s (%s), load average %s\n", db_file.c_str(), fs_type(dir).c_str(), loadavg().c_str());
    std::fflush(stdout);

    Probe probe(rt);
    const auto phase = std::chrono::milliseconds(seconds * 1000);
    const Stats idle = stats(probe.run_for(phase));
    const auto commits0 = store.commits(), works0 = store.works(), lonely0 = store.deferred_only_commits();

    Driver driver(rt, load.sessions);
    const Stats loaded = stats(probe.run_for(phase));
    driver.stop();
    const auto commits = store.commits() - commits0, works = store.works() - works0, lonely = store.deferred_only_commits() - lonely0;
    const auto signed_in_phase = signed_count.load();

    // Stop: the runtime drains the signer, then the storage thread; then the ledger must verify in
    // full, every record signed.
    const auto drain0 = Steady::now();
    if (bench.stop() != 0) throw std::runtime_error("the runtime did not stop cleanly");
    const double drain_s = std::chrono::duration<double>(Steady::now() - drain0).count();
    Database reader(db_file, Database::ReadOnly{});
    const LedgerCheck check = Ledger::verify(reader.handle(), VerifyingKey(cert));
    const auto closed = count_rows(reader.handle(), "SELECT count(*) FROM transactions WHERE status = 'closed'");
    const auto readings = count_rows(reader.handle(), "SELECT count(*) FROM readings");

    std::printf("  idle  p50 %7.3f ms   p99 %7.3f ms   max %7.3f ms   (%zu probes)\n", idle.p50, idle.p99, idle.max, idle.n);
    std::printf("  load  p50 %7.3f ms   p99 %7.3f ms   max %7.3f ms   (%zu probes)\n", loaded.p50, loaded.p99, loaded.max, loaded.n);
    std::printf("  under load: %llu sessions started (%llu starts refused and retried), %llu works in %llu commits (%.1f a commit, "
                "%llu commits of signatures alone), %llu signatures made\n",
                static_cast<unsigned long long>(driver.started()), static_cast<unsigned long long>(driver.refused()),
                static_cast<unsigned long long>(works), static_cast<unsigned long long>(commits),
                commits ? static_cast<double>(works) / static_cast<double>(commits) : 0.0, static_cast<unsigned long long>(lonely),
                static_cast<unsigned long long>(signed_in_phase));
    std::printf("  stopped (signer and storage thread drained) in %.2f s; %lld transactions closed, %lld readings; %s\n", drain_s,
                static_cast<long long>(closed), static_cast<long long>(readings), check.message.c_str());
    std::printf("  load average at the end %s\n", loadavg().c_str());
    const bool met = loaded.p99 < 2.0;
    std::printf("  target: load p99 < 2 ms: %s\n", met ? "ok" : "MISSED");
    ok = met && check.ok && closed > 0 && check.record_count > 0;
  } catch (const std::exception& e) {
    restore_stderr();
    std::fprintf(stderr, "bench_strand: %s (log: %s)\n", e.what(), log_file.c_str());
    keep = true;
    ok = false;
  }
  restore_stderr();
  if (!keep) fs::remove_all(dir, ec);
  return ok ? 0 : 1;
}
