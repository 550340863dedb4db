// bench/session: the core's own processing from an authorised start to the contactor-close
// command, in process, with the real Runtime, SessionEngine, SQLite and plugins:
//   sim-power   the power stage, a vehicle plugged in and ready;
//   sim-payment latency_ms 0, so the acquirer adds no wait;
//   bench-meter the connector's meter: answers refresh() at once (one post() to the strand), so
//               no device's latency is counted (bench/session/bench_meter.cpp);
//   no risk rule.
// Per session, on the core's strand:
//   t0  the session_start request is handed to Runtime::handle_request;
//   t1  sim-payment has decided (its "ledger: authorize ... -> approved" log line, caught by a log
//       sink); the answer then reaches the engine through a 0 ms host timer, counted in t1..t2;
//   t2  SessionEngine::on_contactor_closed: close_contactor() has returned.
// t1..t2 is the figure of the target: the meter read (refresh, sample), the transaction row and
// its first reading committed with synchronous=FULL (one fsync), the Charging status, the
// setpoint and the contactor command. t0..t2 adds what comes before the authorisation answer:
// the transaction-id counter (its own commit, so a second fsync), risk, the acquirer's decision.
//
// Sessions end as on a real pile without a user: the vehicle is nearly full, reports ev_full at
// sim-power's next tick (10 ms), the engine stops, bills and closes the session, the driver
// unplugs and the next vehicle plugs in at once; the next start is sent once the connector is
// Preparing again and the previous session is closed. (Start, stop, start again with the same
// vehicle plugged in is not used: today a start on a connector in Finishing leaves the session in
// Preparing, contactor open, until the vehicle is re-plugged.)
//
// The measurement is made twice, in one process: the database on tmpfs (/dev/shm: the fsync costs
// nothing) and on the disk file system (the build directory, or --disk-dir), so the fsync's share
// is the difference. The plugins' own files (sim-power's meter register, sim-payment's journal)
// and the log (level info, as pilecored's default, to a file) stay on tmpfs in both runs: only
// the database moves. Baseline, interleaved with the sessions (one just before each): a plain
// SQLite commit of one small row (WAL, synchronous=FULL) in the database's directory, i.e. the
// price of one fsync there at that moment. Both databases' WALs are first grown to their steady-state size (see grow_wal), as on a pile that has run for
// a while; SQLite's automatic checkpoints (every 1000 pages, every 70 sessions or so) fall
// among the measured sessions, as they do in service.
//
//   bench_session [--sessions N] [--warmup W] [--disk-dir DIR] [--tmpfs-dir DIR] [--keep]
#include <unistd.h>

#include <sqlite3.h>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "runtime.hpp"
#include "storage.hpp"
#include "../common/bench_env.hpp"
#include "../common/bench_runtime.hpp"

using namespace pilecore;
using namespace pilecore::core;
using pilecore::bench::fs_type;
using pilecore::bench::loadavg;
using pilecore::bench::wait_until;
namespace fs = std::filesystem;
using SteadyClock = std::chrono::steady_clock;

namespace {

std::int64_t now_ns() { return std::chrono::duration_cast<std::chrono::nanoseconds>(SteadyClock::now().time_since_epoch()).count(); }

// Catches sim-payment's decision line (t1) and passes every line on to a log file.
class MarkSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  MarkSink(std::string payment_logger, const fs::path& file) : payment_logger_(std::move(payment_logger)), file_(file.string(), true) {}
  std::atomic<std::int64_t> decided_ns{0};
  std::atomic<int> warnings{0};

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    const std::string_view text(msg.payload.data(), msg.payload.size());
    if (text.starts_with("ledger: authorize ") && std::string_view(msg.logger_name.data(), msg.logger_name.size()) == payment_logger_) {
      decided_ns.store(now_ns());
    }
    if (msg.level >= spdlog::level::warn) warnings.fetch_add(1);
    file_.log(msg);
  }
  void flush_() override { file_.flush(); }

 private:
  std::string payment_logger_;
  spdlog::sinks::basic_file_sink_st file_;
};


double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}


fs::path make_dir(const fs::path& base, const char* prefix) {
  fs::create_directories(base);
  std::string tmpl = (base / (std::string(prefix) + "-XXXXXX")).string();
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("cannot create a directory under " + base.string());
  return tmpl;
}

std::string site_yaml(const fs::path& database) {
  return R"(site:
  id: BENCH-1
  name: bench/session
  location: {lat: 31.2, lon: 121.5}
  timezone: Asia/Shanghai
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 600000, meter: meter-1}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
    config:
      arrive_after_s: 0
      arrive_every_s: 0
      depart_after_full_s: 0
      ev_ready_delay_ms: 0
      battery_capacity_wh: 1000
      initial_soc_pct: 50
      target_soc_pct: 50.01
      stage_max_power_w: 600000
      max_power_w: 600000
      tick_ms: 10
  meter-1:
    plugin: bench-meter
    connector: 1
  pay:
    plugin: sim-payment
    config: {latency_ms: 0}
storage:
  database: )" + database.string() + R"(
tariffs:
  decimals: 2
  plans:
    all:
      prices:
        flat: {electricity: 69.50, service: 80.00}
      periods:
        - {from: "00:00", to: "24:00", type: flat}
payment: {default_method: pay, preauth_fen: 30000}
charging: {checkpoint_interval_s: 60, checkpoint_wh: 1000}
)";
}

struct RunResult {
  std::vector<double> auth_ms, request_ms, baseline_ms;
  std::string db_dir, db_fs, load_before, load_after;
  int failed_starts = 0;
  int warnings = 0;
};

// Brings a database's WAL to the steady state of a pile that has been running for a while: full
// size (past the 1000-page autocheckpoint), so commits overwrite it in place instead of growing
// the file (growing costs a file-system journal commit at every fsync). Through a second
// connection while the runtime holds the database open, so the WAL is not removed.
void grow_wal(const fs::path& db) {
  sqlite3* h = nullptr;
  if (sqlite3_open_v2(db.c_str(), &h, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
    sqlite3_close(h);
    throw std::runtime_error("cannot open " + db.string());
  }
  sqlite3_busy_timeout(h, 10000);
  for (const char* sql : {"CREATE TABLE bench_wal_pad(b BLOB)", "INSERT INTO bench_wal_pad VALUES(zeroblob(4400000))", "DROP TABLE bench_wal_pad"}) {
    char* err = nullptr;
    if (sqlite3_exec(h, sql, nullptr, nullptr, &err) != SQLITE_OK) {
      const std::string msg = err ? err : "?";
      sqlite3_free(err);
      sqlite3_close(h);
      throw std::runtime_error(db.string() + ": " + msg);
    }
  }
  sqlite3_close(h);
}

// A plain SQLite commit of one small row (WAL, synchronous=FULL): one fsync in `dir`.
class Baseline {
 public:
  explicit Baseline(const fs::path& dir) : db_(dir / "baseline.db") {
    db_.exec("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)");
    grow_wal(dir / "baseline.db");
  }
  double commit_ms() {
    const auto t = SteadyClock::now();
    db_.exec("INSERT INTO t(v) VALUES('SITE42-1-000001 open 1200000')");  // autocommit: one transaction
    return std::chrono::duration<double, std::milli>(SteadyClock::now() - t).count();
  }

 private:
  Database db_;
};

RunResult run(const fs::path& db_base, const fs::path& tmpfs_base, int sessions, int warmup, bool keep) {
  RunResult r;
  const fs::path state_root = make_dir(tmpfs_base, "bench-session");
  const fs::path db_dir = make_dir(db_base, "bench-session-db");
  r.db_dir = db_dir.string();
  r.db_fs = fs_type(db_dir);

  // Loggers of the core and of each instance, on the mark sink, before the runtime makes its
  // own (make_logger reuses a registered name).
  auto sink = std::make_shared<MarkSink>("payment:sim-payment:pay", state_root / "pilecored.log");
  spdlog::drop_all();
  std::vector<std::shared_ptr<spdlog::logger>> loggers;
  for (const char* name : {"core", "power:sim-power:power-1", "sensor:bench-meter:meter-1", "payment:sim-payment:pay"}) {
    auto l = std::make_shared<spdlog::logger>(name, sink);
    l->set_level(spdlog::level::info);  // pilecored's default level
    spdlog::register_logger(l);
    loggers.push_back(l);
  }
  spdlog::set_default_logger(loggers.front());
  spdlog::set_level(spdlog::level::info);

  const fs::path site_file = state_root / "site.yaml";
  std::ofstream(site_file) << site_yaml(db_dir / "pilecore.db");
  RuntimeOptions options;
  options.state_dir = state_root / "state";
  pilecore::bench::BenchRuntime bench(site_file, {PILECORE_BENCH_PLUGIN_DIR, PILECORE_BENCH_OWN_PLUGIN_DIR}, std::move(options));
  Runtime& rt = bench.rt();
  auto on_strand = [&bench](const std::function<void()>& fn) { bench.on_strand(fn); };
  auto request = [&bench](const nlohmann::json& req) { return bench.request(req); };

  std::atomic<std::int64_t> closed_ns{0};
  on_strand([&] { rt.engine()->on_contactor_closed = [&closed_ns](std::uint32_t) { closed_ns.store(now_ns()); }; });

  grow_wal(db_dir / "pilecore.db");
  Baseline baseline(db_dir);
  auto idle = [&] {
    const auto c = rt.connectors();
    const auto it = c.find(1);
    if (it == c.end() || it->second != ConnectorStatus::preparing) return false;
    const auto st = request({{"cmd", "status"}});
    for (const auto& conn : st.value("connectors", nlohmann::json::array())) {
      if (conn.value("id", 0) == 1) return !conn.contains("session") || conn["session"].is_null();
    }
    return true;
  };
  r.load_before = loadavg();
  for (int i = 0; i < warmup + sessions; ++i) {
    if (!wait_until(idle, std::chrono::seconds(10))) throw std::runtime_error("the connector did not come back to Preparing with no session");
    std::this_thread::sleep_for(std::chrono::milliseconds(3));  // let the last close's I/O settle
    const double base = baseline.commit_ms();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    sink->decided_ns.store(0);
    closed_ns.store(0);
    auto started = std::make_shared<std::promise<nlohmann::json>>();
    auto started_f = started->get_future();
    std::int64_t t0 = 0;
    rt.dispatch([&rt, &t0, started] {
      t0 = now_ns();
      rt.handle_request({{"cmd", "session_start"}, {"connector", 1}, {"token", "card:0451"}},
                        [started](nlohmann::json reply) { started->set_value(std::move(reply)); });
    });
    const auto reply = started_f.get();
    if (!reply.value("ok", false)) {
      ++r.failed_starts;
      if (r.failed_starts > 20) throw std::runtime_error("session_start keeps failing: " + reply.dump());
      --i;
      continue;
    }
    if (!wait_until([&] { return closed_ns.load() != 0; }, std::chrono::seconds(10))) {
      throw std::runtime_error("the contactor did not close after " + reply.dump());
    }
    const std::int64_t t1 = sink->decided_ns.load(), t2 = closed_ns.load();
    if (t1 == 0 || t1 < t0 || t2 < t1) throw std::runtime_error("the authorisation mark is missing or out of order (did sim-payment's log line change?)");
    if (i < warmup) continue;
    r.auth_ms.push_back(static_cast<double>(t2 - t1) / 1e6);
    r.request_ms.push_back(static_cast<double>(t2 - t0) / 1e6);
    r.baseline_ms.push_back(base);
  }
  r.load_after = loadavg();
  if (bench.stop() != 0) throw std::runtime_error("the runtime did not stop cleanly");
  r.warnings = sink->warnings.load();
  spdlog::drop_all();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("null"));
  std::error_code ec;
  if (!keep) {
    fs::remove_all(state_root, ec);
    fs::remove_all(db_dir, ec);
  } else {
    std::printf("  kept %s and %s\n", state_root.c_str(), db_dir.c_str());
  }
  return r;
}

void print_line(const char* what, const std::vector<double>& ms) {
  std::printf("    %-40s p50 %6.3f   p90 %6.3f   p99 %6.3f   max %7.3f ms\n", what, percentile(ms, 0.5), percentile(ms, 0.9), percentile(ms, 0.99),
              *std::max_element(ms.begin(), ms.end()));
}

}  // namespace

int main(int argc, char** argv) {
  int sessions = 1000, warmup = 20;
  fs::path disk = PILECORE_BENCH_BUILD_DIR, tmpfs = "/dev/shm";
  bool keep = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--keep") keep = true;
    else if (i + 1 < argc && a == "--sessions") sessions = std::max(10, std::atoi(argv[++i]));
    else if (i + 1 < argc && a == "--warmup") warmup = std::max(0, std::atoi(argv[++i]));
    else if (i + 1 < argc && a == "--disk-dir") disk = argv[++i];
    else if (i + 1 < argc && a == "--tmpfs-dir") tmpfs = argv[++i];
    else {
      std::fprintf(stderr, "usage: bench_session [--sessions N] [--warmup W] [--disk-dir DIR] [--tmpfs-dir DIR] [--keep]\n");
      return 2;
    }
  }
  std::printf("bench/session: authorised start -> contactor-close command, %d sessions per run (+%d warm-up), in process\n", sessions, warmup);
  std::printf("  sim-power (vehicle plugged and ready), sim-payment latency_ms 0, bench-meter (answers at once), no risk rule, log level info\n");
  std::printf("  plugins' files and the log on %s (%s); the database moves\n", tmpfs.c_str(), fs_type(tmpfs).c_str());
  bool ok = true;
  try {
    struct Place {
      const char* name;
      fs::path dir;
    };
    const Place places[] = {{"database on tmpfs", tmpfs}, {"database on disk", disk}};
    std::vector<RunResult> results;
    for (const auto& p : places) {
      const RunResult r = run(p.dir, tmpfs, sessions, warmup, keep);
      std::printf("  %s: %s (%s), load average %s -> %s\n", p.name, r.db_dir.c_str(), r.db_fs.c_str(), r.load_before.c_str(), r.load_after.c_str());
      print_line("authorisation answer -> contactor close", r.auth_ms);
      print_line("session_start request -> contactor close", r.request_ms);
      print_line("baseline: one plain commit (1 fsync)", r.baseline_ms);
      if (r.failed_starts > 0 || r.warnings > 0) std::printf("    (%d start(s) refused and retried, %d warning(s) in the log)\n", r.failed_starts, r.warnings);
      results.push_back(r);
    }
    const double p99 = percentile(results.back().auth_ms, 0.99);
    ok = p99 < 2.0;
    std::printf("  fsync share (disk - tmpfs), authorisation -> close, p50: %.3f ms\n",
                percentile(results.back().auth_ms, 0.5) - percentile(results.front().auth_ms, 0.5));
    std::printf("  target: p99 authorisation answer -> contactor close < 2 ms, database on disk: %.3f ms %s\n", p99, ok ? "ok" : "MISSED");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_session: %s\n", e.what());
    return 2;
  }
  std::printf("  %s\n", ok ? "within target" : "TARGET MISSED");
  return ok ? 0 : 1;
}
