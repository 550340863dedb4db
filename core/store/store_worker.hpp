// The storage thread. Every write the core makes runs here, off the core's strand, so a slow
// disk (an fsync of tens of milliseconds on eMMC) never delays a thermal trip, an emergency stop
// or a meter sample.
//
// Contract (the session engine and the payment saga rely on each point):
//  - submit(work, done): `work` runs on the storage thread inside a SQLite transaction; when that
//    transaction is durable (COMMIT with synchronous=FULL returned), `done(ok)` is posted to the
//    core's strand. If `work` throws, its own changes are rolled back (it ran in a SAVEPOINT) and
//    `done` gets the error; other works in the same commit are unaffected. If the COMMIT itself
//    fails (disk full, I/O error), every work of that commit gets the error.
//  - Group commit: works submitted while a commit is in progress are written together in the
//    next transaction, so N sessions checkpointing at once cost one fsync, not N.
//  - Order: works are applied in submission order, and their `done` callbacks run in that order.
//  - `done` is never called inside submit(): always later, on the strand.
//  - run_sync(fn) runs `fn` on the storage thread outside any transaction and waits for it: for
//    start-up (recovery reads) and tests, never on the strand of a running daemon.
//  - stop() finishes every submitted work, then joins the thread; later submits fail at once
//    (their `done` gets an error, still posted).
//  - submit_deferred(work, done): the same, for a write nobody waits on (the ledger's signatures).
//    It never costs an fsync of its own while other works keep coming: it rides in the next
//    commit of a submit()ted work. Only when none comes within `linger` (or when deferred works
//    fill a group) is it committed alone. run_sync() and stop() write it first. Order holds
//    across both kinds: a deferred work is applied before every work submitted after it.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "pilecore/status.hpp"
#include "storage.hpp"

namespace pilecore::core {

class StoreWorker {
 public:
  using Work = std::function<void(Database&)>;
  using Done = std::function<void(Status)>;
  /// Runs a function on the core's strand (Runtime: asio::post(strand, fn)). Thread-safe.
  using Poster = std::function<void(std::function<void()>)>;

  /// How long a deferred work waits for a submitted one to ride with. Longer saves more fsyncs on
  /// a quiet pile; it is also how long a signature may stay unwritten (a crash then leaves the row
  /// for sign_pending(), nothing is lost).
  static constexpr std::chrono::milliseconds kDefaultLinger{200};

  StoreWorker(Database& db, Poster post_to_strand, std::chrono::milliseconds linger = kDefaultLinger);
  ~StoreWorker();
  StoreWorker(const StoreWorker&) = delete;
  StoreWorker& operator=(const StoreWorker&) = delete;

  void submit(Work work, Done done);
  void submit_deferred(Work work, Done done);
  void run_sync(const std::function<void(Database&)>& fn);
  /// Posted to the strand after a commit in which a work enqueued an uplink record
  /// (Database::note_enqueued): the uplink sender's wake. Set before the first submit.
  void on_enqueued(std::function<void()> fn);
  void stop();

  /// Commits made and works written, and the commits that held deferred works only (the linger
  /// ran out), for the benchmarks and tests.
  [[nodiscard]] std::uint64_t commits() const;
  [[nodiscard]] std::uint64_t works() const;
  [[nodiscard]] std::uint64_t deferred_only_commits() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pilecore::core
