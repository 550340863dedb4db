// bench/strand: how late the core's strand runs a handler while sessions commit and the ledger
// signs through a deliberately slow signer, against an idle baseline in the same run.
//
// In process, with the real Runtime (its strand, its StoreWorker: the storage thread over the
// site's database with WAL and synchronous=FULL) and a real Ledger signing off the commit path
// through a signer that sleeps 50 ms per signature (a TPM's speed) before making a real one.
//
// The probe: a thread posts a timestamped no-op to the strand every millisecond; the handler
// records how late it runs (now - posted). Two phases of equal length, one after the other:
//   idle  nothing else runs;
//   load  N sessions, driven from the strand, each submitting through the StoreWorker what the
//         session engine writes: a transaction row at its start, a meter checkpoint every
//         --checkpoint-ms, and at its end the closing update with its ledger record (appended
//         inside the same work, signed later by the slow signer), then the next session.
// The session engine itself is not yet converted to the StoreWorker (its commits still run on
// the strand), so the load is these writes, submitted from the strand as the engine will submit
// them; the output says so.
// Target: load p99 < 2 ms (exit 1 on a miss). At the end the signer is drained and the ledger
// must verify with every signature.
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

#include "crypto.hpp"
#include "ledger.hpp"
#include "plugin_loader.hpp"
#include "runtime.hpp"
#include "site_config.hpp"
#include "storage.hpp"
#include "store_worker.hpp"
#include "../common/bench_env.hpp"

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

std::string site_yaml(int connectors, const fs::path& database) {
  std::string s = "site:\n  id: BENCH-STRAND\n  name: bench/strand\n  location: {lat: 31.2, lon: 121.5}\n  timezone: Asia/Shanghai\nconnectors:\n";
  for (int i = 1; i <= connectors; ++i) s += "  - {id: " + std::to_string(i) + ", type: gbt-dc, max_power_w: 120000}\n";
  // One instance (a site needs one): the cabinet's temperature sensor, as on a real pile.
  s += "plugins:\n  cabinet:\n    plugin: sim-sensor\n    config: {interval_ms: 1000}\nstorage:\n  database: " + database.string() + "\n";
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

struct Load {
  int sessions = 8;
  int checkpoint_ms = 10;
  int session_ms = 1000;
};

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
    else if (i + 1 < argc && a == "--session-ms") load.session_ms = num();
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
  spdlog::set_level(spdlog::level::warn);  // the probe measures the strand, not the console

  bool ok = true;
  try {
    const fs::path key = dir / "device.key", cert = dir / "device.crt", db_file = dir / "pilecore.db";
    generate_identity(KeyAlgorithm::sm2, key, cert, "BENCH-STRAND");
    PluginRegistry registry({PILECORE_BENCH_PLUGIN_DIR});
    const fs::path site_file = dir / "site.yaml";
    std::ofstream(site_file) << site_yaml(load.sessions, db_file);
    auto outcome = load_site(site_file, registry);
    if (!outcome.site) throw std::runtime_error("site file invalid:\n" + outcome.diagnostics.format());
    RuntimeOptions options;
    options.state_dir = dir / "state";
    options.notify_systemd = false;
    options.status_interval = Duration(0);
    Runtime rt(std::move(*outcome.site), std::move(options));
    int exit_code = -1;
    std::thread loop([&] { exit_code = rt.run(); });
    struct Joiner {
      Runtime& rt;
      std::thread& t;
      ~Joiner() {
        if (t.joinable()) {
          rt.request_stop();
          t.join();
        }
      }
    } joiner{rt, loop};
    const auto start_limit = Steady::now() + std::chrono::seconds(30);
    while (!rt.ready() && rt.start_error().empty() && Steady::now() < start_limit) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (!rt.ready()) throw std::runtime_error("the runtime did not start: " + rt.start_error());
    StoreWorker& store = *rt.store();

    // The ledger on the storage thread's connection, signing through the slow signer.
    std::unique_ptr<Ledger> ledger;
    const auto signing_key = std::make_shared<SigningKey>(key.string());
    store.run_sync([&](Database& db) {
      ledger = std::make_unique<Ledger>(db.handle(), SigningKey(key.string()), HashAlgorithm::sm3, [signing_key, sign_ms](ByteView b) {
        std::this_thread::sleep_for(std::chrono::milliseconds(sign_ms));
        return signing_key->sign(b);
      });
    });
    ledger->sign_off_path(store);

    std::printf("bench/strand: the core strand's scheduling delay, a no-op posted every 1 ms, %d s idle then %d s under load\n", seconds, seconds);
    std::printf("  load: %d sessions, a checkpoint every %d ms each, a session closes (update + ledger record) every %d ms and the next opens;\n",
                load.sessions, load.checkpoint_ms, load.session_ms);
    std::printf("        ledger SM2/SM3 signed off the commit path by a signer sleeping %d ms per signature (a TPM's speed)\n", sign_ms);
    std::printf("  NOTE: the session engine does not submit through the StoreWorker yet; the load is its writes (transaction row,\n"
                "        readings, closing update and ledger record) submitted from the strand through the StoreWorker\n");
    std::printf("  database %s (%s), load average %s\n", db_file.c_str(), fs_type(dir).c_str(), loadavg().c_str());

    Probe probe(rt);
    const auto phase = std::chrono::milliseconds(seconds * 1000);
    const Stats idle = stats(probe.run_for(phase));
    const auto commits0 = store.commits(), works0 = store.works();

    // The load, driven from the strand: each tick (posted by this driver thread) submits what the
    // sessions due at that moment write. Done callbacks come back on the strand.
    std::atomic<bool> driving{true};
    std::atomic<std::uint64_t> failed{0}, closes{0};
    std::thread driver([&] {
      struct Session {
        std::string txn;
        int seq = 0;
        std::int64_t wh = 0;
        Steady::time_point opened;
      };
      std::vector<Session> sessions(static_cast<std::size_t>(load.sessions));
      int next_txn = 0;
      auto done = [&failed](const Status& st) {
        if (!st.ok()) {
          ++failed;
          std::fprintf(stderr, "bench_strand: a write failed: %s\n", st.message().c_str());
        }
      };
      auto open_session = [&](std::size_t c, Session& s) {
        char id[48];
        std::snprintf(id, sizeof id, "BENCH-STRAND-%zu-%08d", c + 1, ++next_txn);
        s = Session{id, 0, 1000000, Steady::now()};
        store.submit(
            [txn = s.txn, c](Database& db) {
              sqlite3_stmt* st = db.prepared(
                  "INSERT INTO transactions(id, connector, method, user_token, authorized_fen, status, started_ms, meter_start_wh) "
                  "VALUES(?, ?, 'card', 'sha256:0000', 50000, 'open', 0, 1000000)");
              sqlite3_bind_text(st, 1, txn.c_str(), -1, SQLITE_TRANSIENT);
              sqlite3_bind_int64(st, 2, static_cast<std::int64_t>(c + 1));
              const int rc = sqlite3_step(st);
              sqlite3_reset(st);
              if (rc != SQLITE_DONE) throw std::runtime_error(sqlite3_errmsg(db.handle()));
            },
            done);
      };
      auto checkpoint = [&](Session& s, const char* kind) {
        s.wh += 30;
        store.submit(
            [txn = s.txn, seq = ++s.seq, wh = s.wh, kind](Database& db) {
              sqlite3_stmt* st = db.prepared("INSERT INTO readings(txn_id, seq, time_ms, wh, kind) VALUES(?, ?, ?, ?, ?)");
              sqlite3_bind_text(st, 1, txn.c_str(), -1, SQLITE_TRANSIENT);
              sqlite3_bind_int(st, 2, seq);
              sqlite3_bind_int64(st, 3, seq * 10);
              sqlite3_bind_int64(st, 4, wh);
              sqlite3_bind_text(st, 5, kind, -1, SQLITE_STATIC);
              const int rc = sqlite3_step(st);
              sqlite3_reset(st);
              if (rc != SQLITE_DONE) throw std::runtime_error(sqlite3_errmsg(db.handle()));
            },
            done);
      };
      auto close_session = [&](Session& s) {
        checkpoint(s, "stop");
        const std::int64_t energy = s.wh - 1000000;
        nlohmann::json record = {{"transaction", s.txn},       {"connector", 1},          {"energy_wh", energy},
                                 {"bill", {{"total_fen", energy}}}, {"captured_fen", energy}, {"capture_status", "confirmed"},
                                 {"outcome", "completed"}};
        store.submit(
            [&ledger, txn = s.txn, energy, record = std::move(record)](Database& db) {
              sqlite3_stmt* st = db.prepared("UPDATE transactions SET status='closed', outcome='completed', energy_wh=?, total_fen=? WHERE id=?");
              sqlite3_bind_int64(st, 1, energy);
              sqlite3_bind_int64(st, 2, energy);
              sqlite3_bind_text(st, 3, txn.c_str(), -1, SQLITE_TRANSIENT);
              const int rc = sqlite3_step(st);
              sqlite3_reset(st);
              if (rc != SQLITE_DONE) throw std::runtime_error(sqlite3_errmsg(db.handle()));
              ledger->append(txn, record);
            },
            [&, done](const Status& st) {
              done(st);
              ++closes;
            });
      };
      std::promise<void> opened;
      rt.dispatch([&] {
        for (std::size_t c = 0; c < sessions.size(); ++c) open_session(c, sessions[c]);
        opened.set_value();
      });
      opened.get_future().get();
      auto next = Steady::now();
      const auto period = std::chrono::milliseconds(load.checkpoint_ms);
      // Sessions' checkpoints are spread over the period, as independent connectors' are.
      std::size_t turn = 0;
      while (driving.load()) {
        next += period / load.sessions;
        std::this_thread::sleep_until(next);
        const std::size_t c = turn++ % sessions.size();
        std::promise<void> posted;
        rt.dispatch([&, c] {
          Session& s = sessions[c];
          if (Steady::now() - s.opened >= std::chrono::milliseconds(load.session_ms)) {
            close_session(s);
            open_session(c, s);
          } else {
            checkpoint(s, "checkpoint");
          }
          posted.set_value();
        });
        posted.get_future().get();
      }
    });
    const Stats loaded = stats(probe.run_for(phase));
    driving = false;
    driver.join();
    const auto commits = store.commits() - commits0, works = store.works() - works0;

    // Drain: the last signatures, then every write; then the ledger must verify in full.
    const auto drain0 = Steady::now();
    ledger->stop_signer(true);
    store.run_sync([](Database&) {});
    {
      // The done callbacks of those writes are queued on the strand: let them run.
      std::promise<void> barrier;
      rt.dispatch([&] { barrier.set_value(); });
      barrier.get_future().get();
    }
    const double drain_s = std::chrono::duration<double>(Steady::now() - drain0).count();
    const std::uint64_t signatures = ledger->signatures_submitted();
    store.run_sync([&](Database&) { ledger.reset(); });
    Database reader(db_file, Database::ReadOnly{});
    const LedgerCheck check = Ledger::verify(reader.handle(), VerifyingKey(cert));

    std::printf("  idle  p50 %7.3f ms   p99 %7.3f ms   max %7.3f ms   (%zu probes)\n", idle.p50, idle.p99, idle.max, idle.n);
    std::printf("  load  p50 %7.3f ms   p99 %7.3f ms   max %7.3f ms   (%zu probes)\n", loaded.p50, loaded.p99, loaded.max, loaded.n);
    std::printf("  under load: %llu works in %llu commits (%.1f works a commit), %llu sessions closed, %llu signatures, %llu failed writes\n",
                static_cast<unsigned long long>(works), static_cast<unsigned long long>(commits),
                commits ? static_cast<double>(works) / static_cast<double>(commits) : 0.0, static_cast<unsigned long long>(closes.load()),
                static_cast<unsigned long long>(signatures), static_cast<unsigned long long>(failed.load()));
    std::printf("  drained the signer and the storage thread in %.2f s; %s\n", drain_s, check.message.c_str());
    std::printf("  load average at the end %s\n", loadavg().c_str());
    const bool met = loaded.p99 < 2.0;
    std::printf("  target: load p99 < 2 ms: %s\n", met ? "ok" : "MISSED");
    ok = met && check.ok && failed.load() == 0 && closes.load() > 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_strand: %s\n", e.what());
    ok = false;
  }
  if (!keep) fs::remove_all(dir, ec);
  return ok ? 0 : 1;
}
