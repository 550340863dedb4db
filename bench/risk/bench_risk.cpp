// bench/risk: the risk engine with risk-daily-count, risk-amount and risk-behavior (the real
// .so files on the plugin-level test Host) over a pile database holding 100,000 users and
// 1,000,000 closed sessions, simulated as regular users with habits of their own.
//
// Measured, per engine evaluation (all three rules, the history read from SQLite through the
// core's DbHistory, the behaviour model loaded, learnt and persisted):
//   cold   each user's first authorisation (the model learns the user's ten sessions);
//   warm   the next authorisation and the capture (the model is on disk).
// Then the behaviour model's quality: the share of regular users' next sessions it steps up
// (false positives), and the share of injected anomalies it steps up (detection), per kind.
// Target: p99 < 200 us for cold, warm and capture; exit 1 on a miss. Wall time and the thread's
// CPU time are both printed; on a crowded machine (load average above the cores) the target is
// judged on CPU time, since a preempted evaluation measures its neighbours.
//
//   bench_risk [--users N] [--sessions-per-user N] [--sample N] [--target-us US] [--dir DIR]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <time.h>

#include <sqlite3.h>

#include "db_history.hpp"
#include "plugin_host.hpp"
#include "risk_engine.hpp"
#include "scheduler.hpp"
#include "site_day.hpp"
#include "storage.hpp"
#include "test_support.hpp"
#include "../common/bench_env.hpp"

using namespace pilecore;
using namespace pilecore::core;
using namespace std::chrono_literals;
using Steady = std::chrono::steady_clock;

namespace {

constexpr std::int32_t kOffset = 8 * 3600;  // Asia/Shanghai, no DST
const TimePoint kEpoch = TimePoint(std::chrono::sys_days(std::chrono::year(2026) / 1 / 1)) - 8h;  // local midnight

/// One regular user's habits.
struct Habit {
  double hour;         ///< usual local hour of arrival
  double hour_sd;      ///< in hours
  double amount_yuan;  ///< usual bill
  double amount_sigma;
  double every_days;   ///< usual days between sessions
  std::uint32_t favourite;
  int day = 0;                 ///< day of the last session (from kEpoch)
  std::int64_t last_ms = 0;
};

Habit make_habit(std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0, 1);
  Habit h{};
  h.hour = 6 + 16 * u(rng);
  h.hour_sd = 0.3 + 0.7 * u(rng);
  h.amount_yuan = 30 + 120 * u(rng);
  h.amount_sigma = 0.1 + 0.2 * u(rng);
  h.every_days = 1 + 3 * u(rng);
  h.favourite = u(rng) < 0.5 ? 1 : 2;
  h.day = static_cast<int>(10 * u(rng));
  return h;
}

struct Draw {
  std::int64_t start_ms;
  std::int64_t fen;
  std::uint32_t connector;
};

/// The user's next session, as their habits make it.
Draw next(Habit& h, std::mt19937_64& rng) {
  std::normal_distribution<double> n(0, 1);
  std::uniform_real_distribution<double> u(0, 1);
  const int gap = std::max(1, static_cast<int>(std::lround(h.every_days * std::exp(0.3 * n(rng)))));
  h.day += gap;
  const double hour = std::clamp(h.hour + h.hour_sd * n(rng), 0.0, 23.99);
  const std::int64_t start = (kEpoch + h.day * 24h).time_since_epoch().count() + static_cast<std::int64_t>(hour * 3.6e6);
  h.last_ms = start;
  return {start, std::max<std::int64_t>(100, std::llround(h.amount_yuan * 100 * std::exp(h.amount_sigma * n(rng)))),
          u(rng) < 0.85 ? h.favourite : 3 - h.favourite};
}

std::string user_of(std::size_t i) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016zx", i * 2654435761u);
  return buf;
}

double pct(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
}

void exec(sqlite3* db, const char* sql) {
  if (sqlite3_exec(db, sql, nullptr, nullptr, nullptr) != SQLITE_OK) throw std::runtime_error(sqlite3_errmsg(db));
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t users = 100000, per_user = 10, sample = 20000;
  double target_us = 200;
  std::string dir_arg;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--users") users = std::strtoul(argv[i + 1], nullptr, 10);
    else if (a == "--sessions-per-user") per_user = std::strtoul(argv[i + 1], nullptr, 10);
    else if (a == "--sample") sample = std::strtoul(argv[i + 1], nullptr, 10);
    else if (a == "--target-us") target_us = std::atof(argv[i + 1]);
    else if (a == "--dir") dir_arg = argv[i + 1];
    else {
      std::fprintf(stderr, "usage: bench_risk [--users N] [--sessions-per-user N] [--sample N] [--target-us US] [--dir DIR]\n");
      return 2;
    }
  }
  sample = std::min(sample, users);
  test::TempDir tmp;
  const std::filesystem::path dir = dir_arg.empty() ? tmp.path() : std::filesystem::path(dir_arg);
  std::printf("bench_risk: %zu users x %zu sessions, %zu sampled; %s (%s), load %s\n", users, per_user, sample, dir.c_str(),
              bench::fs_type(dir).c_str(), bench::loadavg().c_str());

  // The pile's database, filled in one transaction (the schema is the daemon's).
  std::mt19937_64 rng(11);
  std::vector<Habit> habits;
  habits.reserve(users);
  {
    const auto t0 = Steady::now();
    Database db(dir / "pilecore.db");
    sqlite3* raw = db.handle();
    exec(raw, "BEGIN");
    sqlite3_stmt* ins = nullptr;
    sqlite3_prepare_v2(raw,
                       "INSERT INTO transactions(id, connector, method, user_token, user_hash, authorized_fen, status, outcome, started_ms, "
                       "stopped_ms, meter_start_wh, meter_stop_wh, energy_wh, total_fen, captured_fen, capture_status) "
                       "VALUES(?,?,'pay','',?,20000,'closed','completed',?,?,0,1000,1000,?,?,'captured')",
                       -1, &ins, nullptr);
    std::size_t n = 0;
    for (std::size_t u = 0; u < users; ++u) {
      habits.push_back(make_habit(rng));
      const std::string user = user_of(u);
      for (std::size_t k = 0; k < per_user; ++k) {
        const Draw d = next(habits.back(), rng);
        const std::string id = "S-" + std::to_string(++n);
        sqlite3_bind_text(ins, 1, id.c_str(), -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(ins, 2, d.connector);
        sqlite3_bind_text(ins, 3, user.c_str(), -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(ins, 4, d.start_ms);
        sqlite3_bind_int64(ins, 5, d.start_ms + 3600000);
        sqlite3_bind_int64(ins, 6, d.fen);
        sqlite3_bind_int64(ins, 7, d.fen);
        if (sqlite3_step(ins) != SQLITE_DONE) throw std::runtime_error(sqlite3_errmsg(raw));
        sqlite3_reset(ins);
      }
    }
    sqlite3_finalize(ins);
    exec(raw, "COMMIT");
    exec(raw, "ANALYZE");
    std::printf("history: %zu transactions written in %.1f s\n", n, std::chrono::duration<double>(Steady::now() - t0).count());
  }

  // The daemon's view: a read-only connection, the site's day, the engine on a manual clock.
  Database reader(dir / "pilecore.db", Database::ReadOnly{});
  SiteDay day("Asia/Shanghai");
  auto history = std::make_shared<DbHistory>(reader, day);
  ManualScheduler clock(kEpoch);
  RiskEngine engine(clock, clock);
  const std::string plugins = PILECORE_BENCH_PLUGIN_DIR;
  test::PluginHost daily(plugins + "/risk-daily-count.so", "{}", dir / "daily");
  test::PluginHost amount(plugins + "/risk-amount.so", "{}", dir / "amount");
  test::PluginHost behavior(plugins + "/risk-behavior.so", "{}", dir / "behavior");
  std::vector<RiskInstance> instances{{"daily", &daily.create<risk::Rule>(), 200ms, risk::Verdict::step_up},
                                      {"amount", &amount.create<risk::Rule>(), 200ms, risk::Verdict::step_up},
                                      {"behavior", &behavior.create<risk::Rule>(), 200ms, risk::Verdict::step_up}};

  // Evaluates; returns the wall time in microseconds (and the thread's CPU time in `cpu_us`) and
  // the behaviour rule's verdict.
  double cpu_us = 0;
  auto thread_us = [] {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
  };
  auto run = [&](const std::string& user, const Draw& d, risk::Phase phase, risk::Verdict& behaviour) {
    const TimePoint at = TimePoint(Duration(d.start_ms + (phase == risk::Phase::capture ? 3600000 : 0)));
    std::optional<RiskDecision> got;
    const double c0 = thread_us();
    const auto t0 = Steady::now();
    engine.evaluate({.phase = phase,
                     .transaction_id = "S-bench",
                     .connector = d.connector,
                     .method = "pay",
                     .channel = {},
                     .user = user,
                     .amount_fen = phase == risk::Phase::capture ? d.fen : 20000,
                     .time = at,
                     .pile = "S",
                     .day_start = day.day_start(at),
                     .utc_offset_s = day.utc_offset_s(at)},
                    instances, history, [&](RiskDecision r) { got = std::move(r); });
    const double us = std::chrono::duration<double, std::micro>(Steady::now() - t0).count();
    cpu_us = thread_us() - c0;
    if (!got) throw std::runtime_error("the engine did not decide at once");
    for (const auto& a : got->answers) {
      if (a.how != RiskAnswer::How::answered) throw std::runtime_error(fmt::format("{} failed: {}", a.instance, a.reason));
    }
    behaviour = got->answers[2].verdict;
    return us;
  };

  // Sampled users, in random order; each one's next session drawn from their habits.
  std::vector<std::size_t> order(users);
  for (std::size_t i = 0; i < users; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  order.resize(sample);
  std::vector<double> cold, warm, capture, cold_cpu, warm_cpu, capture_cpu;
  std::size_t fp_auth = 0, fp_capture = 0, fp_any = 0;
  std::size_t det_time = 0, det_interval = 0, det_amount = 0;
  for (const std::size_t u : order) {
    const std::string user = user_of(u);
    Habit h = habits[u];
    const Habit before = h;
    const Draw d = next(h, rng);
    risk::Verdict v1{}, v2{}, v3{}, v{};
    cold.push_back(run(user, d, risk::Phase::authorize, v1));
    cold_cpu.push_back(cpu_us);
    warm.push_back(run(user, d, risk::Phase::authorize, v2));
    warm_cpu.push_back(cpu_us);
    capture.push_back(run(user, d, risk::Phase::capture, v3));
    capture_cpu.push_back(cpu_us);
    fp_auth += v2 != risk::Verdict::allow;
    fp_capture += v3 != risk::Verdict::allow;
    fp_any += v2 != risk::Verdict::allow || v3 != risk::Verdict::allow;
    // Anomalies, each alone: 8 to 12 hours away from the usual time; back within an hour of
    // the last session at the usual time of day; five times the usual bill.
    // Later by 8 to 16 hours: 8 to 12 hours from the usual time either way round the clock
    // (never earlier, so the interval is not also cut short; it grows by the shift).
    std::uniform_real_distribution<double> shift(8, 16);
    Draw odd = d;
    odd.start_ms = d.start_ms + static_cast<std::int64_t>(shift(rng) * 3.6e6);
    (void)run(user, odd, risk::Phase::authorize, v);
    det_time += v != risk::Verdict::allow;
    Draw soon = d;
    soon.start_ms = before.last_ms + 3600000 / 2;
    (void)run(user, soon, risk::Phase::authorize, v);
    det_interval += v != risk::Verdict::allow;
    Draw big = d;
    big.fen = d.fen * 5;
    (void)run(user, big, risk::Phase::capture, v);
    det_amount += v != risk::Verdict::allow;
  }
  const double n = static_cast<double>(sample);
  std::printf("evaluation, all 3 rules (us):  wall p50     p99     max |  cpu p50     p99     max\n");
  auto line = [](const char* what, const std::vector<double>& w, const std::vector<double>& c) {
    std::printf("  %-24s %8.1f %7.1f %7.1f | %8.1f %7.1f %7.1f\n", what, pct(w, 0.5), pct(w, 0.99), pct(w, 1.0), pct(c, 0.5), pct(c, 0.99), pct(c, 1.0));
  };
  line("cold authorisation", cold, cold_cpu);
  line("warm authorisation", warm, warm_cpu);
  line("capture", capture, capture_cpu);
  std::printf("risk-behavior on regular users' next session (false positives): authorisation %.1f%%, capture %.1f%%, either %.1f%%\n",
              100 * static_cast<double>(fp_auth) / n, 100 * static_cast<double>(fp_capture) / n, 100 * static_cast<double>(fp_any) / n);
  std::printf("risk-behavior on injected anomalies (detection): time of day 8..12 h away %.1f%%, back within 30 min %.1f%%, 5x the bill %.1f%%\n",
              100 * static_cast<double>(det_time) / n, 100 * static_cast<double>(det_interval) / n, 100 * static_cast<double>(det_amount) / n);
  // Judged on wall time, unless the machine runs more than one thread a core (the load average
  // above the cores): then a preempted evaluation measures the neighbours, and the thread's CPU
  // time is what the code costs. The output says which.
  const bool crowded = std::atof(bench::loadavg().c_str()) > static_cast<double>(std::thread::hardware_concurrency());
  const auto& c99 = crowded ? cold_cpu : cold;
  const auto& w99 = crowded ? warm_cpu : warm;
  const auto& k99 = crowded ? capture_cpu : capture;
  const bool ok = pct(c99, 0.99) < target_us && pct(w99, 0.99) < target_us && pct(k99, 0.99) < target_us;
  std::printf("target p99 < %.0f us (%s): %s\n", target_us, crowded ? "cpu time: the machine is crowded" : "wall time", ok ? "met" : "MISSED");
  return ok ? 0 : 1;
}
