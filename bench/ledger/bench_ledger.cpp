// bench/ledger: durable, signed, chained ledger appends per second, next to plain SQLite inserts
// of rows of the same size, in one run, on one file system; the ratio is the ledger's cost.
//
//   (a) ledger, as the daemon runs it: a work on the StoreWorker (the storage thread) appends
//       (read the last row, refuse a duplicate entry, hash, insert with the signature to come) in
//       its transaction, and the caller waits for that commit (WAL, synchronous=FULL), one record
//       at a time, as a closing session does. The signer thread signs meanwhile and hands each
//       signature to the storage thread as a deferred work, which rides in the next append's
//       commit: signing N overlaps the fsync of N, and a signature costs no fsync of its own.
//       A block's time runs until every signature of the block is on disk too (one more commit).
//   (i) ledger, signing inside the commit (the Ledger without a signer thread: BEGIN IMMEDIATE;
//       append with the signature; COMMIT), for comparison: what (a) replaced.
//   (b) plain: BEGIN IMMEDIATE; INSERT of a row of the same size (same record, same-length
//       hash and signature blobs); COMMIT; WAL, synchronous=FULL, its own database file in the
//       same directory.
// Records are ~600 bytes of JSON, like a real transaction with two bill lines. The two are
// measured in alternating blocks (ABBA), so drift in the disk or in other load on the machine
// falls on all. Done for ECDSA P-256/SHA-256 and SM2/SM3. Target: (a)/(b) >= 0.7 for both.
//
//   bench_ledger [--dir DIR] [--count N] [--blocks B] [--keep]
//     --dir DIR   where the databases go (a fresh subdirectory); default: under the build dir
//     --count N   appends and inserts per algorithm pair (default 2000)
//     --blocks B  alternating blocks (default 20)

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "crypto.hpp"
#include "ledger.hpp"
#include "storage.hpp"
#include "store_worker.hpp"
#include "test_support.hpp"
#include "../common/bench_env.hpp"

using pilecore::Status;
using namespace pilecore::core;
using pilecore::bench::fs_type;
using pilecore::bench::loadavg;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// The ledger's DDL (core/store/storage.cpp, schema version 3), for the plain table.
std::string ddl(const std::string& table) {
  return "CREATE TABLE IF NOT EXISTS " + table +
         " (seq INTEGER PRIMARY KEY, entry TEXT NOT NULL UNIQUE, txn_id TEXT NOT NULL, record BLOB NOT NULL, prev_hash BLOB NOT NULL, "
         "hash BLOB NOT NULL, signature BLOB, hash_alg TEXT NOT NULL, sig_alg TEXT NOT NULL)";
}

nlohmann::json make_record(int i) {
  char id[32];
  std::snprintf(id, sizeof id, "SITE42-1-%08d", i);
  return pilecore::test::sample_ledger_record(i, id);
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

struct Series {
  std::vector<double> us;  // per operation, microseconds
  double total_s = 0;
  [[nodiscard]] double rate() const { return static_cast<double>(us.size()) / total_s; }
};

struct Result {
  Series ledger, inline_ledger, plain;
  double sign_us = 0, digest_us = 0, ledger_cpu_us = 0, plain_cpu_us = 0;
  std::size_t record_bytes = 0, row_bytes = 0;
  std::uint64_t piped_commits = 0, piped_works = 0, piped_lonely = 0;  // (a)'s storage thread
};

Result run(KeyAlgorithm key_alg, HashAlgorithm hash_alg, const fs::path& dir, int count, int blocks) {
  const std::string tag(to_string(key_alg));
  const fs::path key = dir / (tag + ".key"), cert = dir / (tag + ".crt");
  generate_identity(key_alg, key, cert, "BENCH-PILE");
  Result r;

  // (a): the ledger on the storage thread's connection, its done callbacks run where posted.
  Database ldb(dir / ("ledger-" + tag + ".db"));
  StoreWorker store(ldb, [](std::function<void()> fn) { fn(); });
  std::unique_ptr<Ledger> piped;
  store.run_sync([&](Database& db) { piped = std::make_unique<Ledger>(db.handle(), SigningKey(key.string()), hash_alg); });
  piped->sign_off_path(store);
  // (i)
  Database idb(dir / ("inline-" + tag + ".db"));
  Ledger ledger(idb.handle(), SigningKey(key.string()), hash_alg);
  Database pdb(dir / ("plain-" + tag + ".db"));
  pdb.exec(ddl("plain"));

  const int warmup = 50, cpu_n = 200;
  std::vector<std::string> ids;
  std::vector<nlohmann::json> records;
  for (int i = 0; i < count + warmup + cpu_n; ++i) {
    records.push_back(make_record(i));
    ids.push_back(records.back()["id"].get<std::string>());
  }
  // Plain rows: the same record text and blobs of the same lengths as a ledger row's.
  const SigningKey signer(key.string());
  std::mt19937_64 rng(42);
  auto random_bytes = [&](std::size_t n) {
    Bytes b(n);
    for (auto& x : b) x = static_cast<std::uint8_t>(rng());
    return b;
  };
  const Bytes fake_prev = random_bytes(32), fake_hash = random_bytes(32);
  const Bytes fake_sig = signer.sign(as_bytes("size"));
  const std::string hash_name(to_string(hash_alg)), sig_name(signature_algorithm_name(key_alg));
  sqlite3_stmt* insert = nullptr;
  sqlite3_prepare_v3(pdb.handle(), "INSERT INTO plain VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)", -1, SQLITE_PREPARE_PERSISTENT, &insert, nullptr);

  std::vector<std::string> texts;
  for (const auto& rec : records) texts.push_back(Ledger::canonical(rec));
  r.record_bytes = texts[0].size();
  r.row_bytes = 8 + 2 * ids[0].size() + texts[0].size() + 32 + 32 + fake_sig.size() + hash_name.size() + sig_name.size();

  int next_ledger = 0, next_inline = 0, next_plain = 0;
  auto ledger_insert = [&] {
    const auto i = static_cast<std::size_t>(next_inline++);
    (void)ledger.append(ids[i], records[i]);
  };
  auto piped_one = [&] {
    const auto i = static_cast<std::size_t>(next_ledger++);
    std::promise<Status> done;
    store.submit([&](Database&) { (void)piped->append(ids[i], records[i]); }, [&](const Status& st) { done.set_value(st); });
    const Status st = done.get_future().get();
    if (!st.ok()) throw std::runtime_error("ledger append: " + st.message());
  };
  // Until every signature submitted so far is on disk: the run_sync comes after their writes.
  auto piped_drain = [&] {
    while (piped->signatures_submitted() < static_cast<std::uint64_t>(next_ledger)) std::this_thread::sleep_for(std::chrono::microseconds(100));
    store.run_sync([](Database&) {});
  };
  auto plain_insert = [&] {
    const int i = next_plain++;
    const auto& text = texts[static_cast<std::size_t>(i)];
    const auto& id = ids[static_cast<std::size_t>(i)];
    sqlite3_bind_int64(insert, 1, i + 1);
    sqlite3_bind_text(insert, 2, id.data(), static_cast<int>(id.size()), SQLITE_STATIC);
    sqlite3_bind_text(insert, 3, id.data(), static_cast<int>(id.size()), SQLITE_STATIC);
    sqlite3_bind_blob(insert, 4, text.data(), static_cast<int>(text.size()), SQLITE_STATIC);
    sqlite3_bind_blob(insert, 5, fake_prev.data(), 32, SQLITE_STATIC);
    sqlite3_bind_blob(insert, 6, fake_hash.data(), 32, SQLITE_STATIC);
    sqlite3_bind_blob(insert, 7, fake_sig.data(), static_cast<int>(fake_sig.size()), SQLITE_STATIC);
    sqlite3_bind_text(insert, 8, hash_name.data(), static_cast<int>(hash_name.size()), SQLITE_STATIC);
    sqlite3_bind_text(insert, 9, sig_name.data(), static_cast<int>(sig_name.size()), SQLITE_STATIC);
    if (sqlite3_step(insert) != SQLITE_DONE) throw std::runtime_error(sqlite3_errmsg(pdb.handle()));
    sqlite3_reset(insert);
  };
  auto ledger_one = [&] {
    idb.exec("BEGIN IMMEDIATE");
    ledger_insert();
    idb.exec("COMMIT");
  };
  auto plain_one = [&] {
    pdb.exec("BEGIN IMMEDIATE");
    plain_insert();
    pdb.exec("COMMIT");
  };
  for (int i = 0; i < warmup; ++i) {
    piped_one();
    ledger_one();
    plain_one();
  }
  piped_drain();
  auto timed = [](auto& op, Series& s, int n) {
    for (int i = 0; i < n; ++i) {
      const auto t0 = Clock::now();
      op();
      const double d = std::chrono::duration<double>(Clock::now() - t0).count();
      s.us.push_back(d * 1e6);
      s.total_s += d;
    }
  };
  // A pipelined block ends when its last signature is on disk: that wait counts in its total.
  auto timed_piped = [&](int n) {
    timed(piped_one, r.ledger, n);
    const auto t0 = Clock::now();
    piped_drain();
    r.ledger.total_s += std::chrono::duration<double>(Clock::now() - t0).count();
  };
  const int per_block = std::max(1, count / blocks);
  for (int b = 0; b < blocks; ++b) {
    if (b % 2 == 0) {
      timed_piped(per_block);
      timed(ledger_one, r.inline_ledger, per_block);
      timed(plain_one, r.plain, per_block);
    } else {
      timed(plain_one, r.plain, per_block);
      timed(ledger_one, r.inline_ledger, per_block);
      timed_piped(per_block);
    }
  }
  // The CPU part of an append and of an insert, without the commit's fsync: `cpu_n` of each in
  // one transaction, rolled back.
  auto cpu_us = [&](Database& db, auto& op) {
    db.exec("BEGIN IMMEDIATE");
    const auto t = Clock::now();
    for (int i = 0; i < cpu_n; ++i) op();
    const double us = std::chrono::duration<double, std::micro>(Clock::now() - t).count() / cpu_n;
    db.exec("ROLLBACK");
    return us;
  };
  r.ledger_cpu_us = cpu_us(idb, ledger_insert);
  r.plain_cpu_us = cpu_us(pdb, plain_insert);
  sqlite3_finalize(insert);

  // The CPU part alone, for the reader: one signature and one digest over a row's signed bytes.
  const Bytes bytes = Ledger::signed_bytes(fake_prev, 1, as_bytes(texts[0]));
  const int n = 500;
  auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) (void)signer.sign(bytes);
  r.sign_us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / n;
  t0 = Clock::now();
  for (int i = 0; i < n; ++i) (void)digest(hash_alg, bytes);
  r.digest_us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / n;

  piped->stop_signer(true);
  store.stop();
  r.piped_commits = store.commits();
  r.piped_works = store.works();
  r.piped_lonely = store.deferred_only_commits();
  piped.reset();
  for (Database* db : {&ldb, &idb}) {
    const auto check = Ledger::verify(db->handle(), VerifyingKey(cert));
    if (!check.ok) throw std::runtime_error("the benchmark's own ledger does not verify: " + check.message);
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  fs::path base = fs::path(PILECORE_BENCH_BUILD_DIR);
  int count = 2000, blocks = 20;
  bool keep = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--keep") keep = true;
    else if (i + 1 < argc && a == "--dir") base = argv[++i];
    else if (i + 1 < argc && a == "--count") count = std::max(10, std::atoi(argv[++i]));
    else if (i + 1 < argc && a == "--blocks") blocks = std::max(2, std::atoi(argv[++i]));
    else {
      std::fprintf(stderr, "usage: bench_ledger [--dir DIR] [--count N] [--blocks B] [--keep]\n");
      return 2;
    }
  }
  std::error_code ec;
  fs::create_directories(base, ec);
  std::string tmpl = (base / "bench-ledger-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) {
    std::perror(tmpl.c_str());
    return 2;
  }
  const fs::path dir = tmpl;

  struct Pair {
    KeyAlgorithm key;
    HashAlgorithm hash;
    const char* name;
  };
  const Pair pairs[] = {{KeyAlgorithm::ecdsa_p256, HashAlgorithm::sha256, "ECDSA P-256 / SHA-256"}, {KeyAlgorithm::sm2, HashAlgorithm::sm3, "SM2 / SM3"}};
  std::printf("bench/ledger: %d appends (pipelined), %d appends (inline) and %d inserts per algorithm, %d alternating blocks, WAL, "
              "synchronous=FULL, one commit waited for each\n",
              count, count, count, blocks);
  std::printf("  directory %s (%s), load average %s\n", dir.c_str(), fs_type(dir).c_str(), loadavg().c_str());
  bool ok = true;
  try {
    for (const auto& p : pairs) {
      const Result r = run(p.key, p.hash, dir, count, blocks);
      const double ratio = r.ledger.rate() / r.plain.rate();
      ok = ok && ratio >= 0.7;
      std::printf("  %s: record %zu B, row ~%zu B\n", p.name, r.record_bytes, r.row_bytes);
      std::printf("    CPU, no commit: append %.0f us (of which sign %.0f us, hash %.1f us), plain insert %.0f us\n", r.ledger_cpu_us, r.sign_us,
                  r.digest_us, r.plain_cpu_us);
      std::printf("    (a) ledger appends  %8.0f /s   p50 %7.0f us   p99 %7.0f us   (signed off the commit path, pipelined)\n", r.ledger.rate(),
                  percentile(r.ledger.us, 0.5), percentile(r.ledger.us, 0.99));
      std::printf("        storage thread: %llu works in %llu commits, %llu of them of signatures alone (drains and linger)\n",
                  static_cast<unsigned long long>(r.piped_works), static_cast<unsigned long long>(r.piped_commits),
                  static_cast<unsigned long long>(r.piped_lonely));
      std::printf("    (i) inline-signed   %8.0f /s   p50 %7.0f us   p99 %7.0f us   (signed inside the commit, for comparison)\n",
                  r.inline_ledger.rate(), percentile(r.inline_ledger.us, 0.5), percentile(r.inline_ledger.us, 0.99));
      std::printf("    (b) plain inserts   %8.0f /s   p50 %7.0f us   p99 %7.0f us\n", r.plain.rate(), percentile(r.plain.us, 0.5),
                  percentile(r.plain.us, 0.99));
      std::printf("    ratio (a)/(b)       %8.2f      (target >= 0.70) %s;   (i)/(b) %.2f\n", ratio, ratio >= 0.7 ? "ok" : "MISSED",
                  r.inline_ledger.rate() / r.plain.rate());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_ledger: %s\n", e.what());
    ok = false;
  }
  if (!keep) fs::remove_all(dir, ec);
  std::printf("  load average at the end %s\n", loadavg().c_str());
  std::printf("  %s\n", ok ? "within target" : "TARGET MISSED");
  return ok ? 0 : 1;
}
