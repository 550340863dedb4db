#include "store_worker.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <variant>
#include <vector>

namespace pilecore::core {

namespace {

// A bound on one group: a transaction holding thousands of works would delay the first one's
// `done` (and the contactor it guards) behind all the others' writes.
constexpr std::size_t kMaxGroup = 512;

struct Submitted {
  StoreWorker::Work work;
  StoreWorker::Done done;
  bool deferred = false;
};
struct Sync {
  const std::function<void(Database&)>* fn;
  std::promise<void>* finished;
};
using Item = std::variant<Submitted, Sync>;

// The control statements bypass Database::exec so that their failure is seen as a return code
// and handled here (a failed COMMIT must fail the group, not throw past the done callbacks).
int raw_exec(sqlite3* db, const char* sql) { return sqlite3_exec(db, sql, nullptr, nullptr, nullptr); }

}  // namespace

struct StoreWorker::Impl {
  Impl(Database& d, Poster p, std::chrono::milliseconds l) : db(d), post(std::move(p)), linger(l) {}

  Database& db;
  Poster post;
  const std::chrono::milliseconds linger;
  std::mutex mutex;
  std::condition_variable wake;
  std::deque<Item> queue;
  bool stopping = false;  // under mutex: no more submits are accepted
  std::function<void()> on_enqueued;  // under mutex
  bool joined = false;
  std::thread thread;
  std::atomic<std::uint64_t> commits{0};
  std::atomic<std::uint64_t> works{0};
  std::atomic<std::uint64_t> deferred_only{0};

  void enqueue(Work work, Done done, bool deferred);

  void post_done(Done done, Status st) {
    if (!done) return;
    post([done = std::move(done), st = std::move(st)] { done(st); });
  }

  void loop() {
    // Deferred works taken from the queue and not written yet, all older than anything queued.
    std::vector<Submitted> held;
    // The linger is a bound on how long a signature waits for company on this thread, not a time
    // the core reasons about: the steady clock of the wait, not the core's injectable Clock.
    std::chrono::steady_clock::time_point held_until{};
    auto flush_held = [&] {
      if (held.empty()) return;
      ++deferred_only;
      write(held);
      held.clear();
    };
    for (;;) {
      std::vector<Submitted> group;
      std::optional<Sync> sync_item;
      bool stop_now = false;
      {
        std::unique_lock lock(mutex);
        auto ready = [&] { return !queue.empty() || stopping; };
        if (held.empty()) wake.wait(lock, ready);
        else wake.wait_until(lock, held_until, ready);
        if (queue.empty()) {
          stop_now = stopping;  // everything submitted is written once `held` is
        } else if (auto* s = std::get_if<Sync>(&queue.front())) {
          sync_item = *s;
          queue.pop_front();
        } else {
          // Everything queued while the previous commit's fsync ran goes into this one, up to a
          // run_sync (which must see the works submitted before it committed).
          while (!queue.empty() && held.size() + group.size() < kMaxGroup && std::holds_alternative<Submitted>(queue.front())) {
            group.push_back(std::move(std::get<Submitted>(queue.front())));
            queue.pop_front();
          }
        }
      }
      if (stop_now) {
        flush_held();
        return;
      }
      if (sync_item) {
        flush_held();  // run_sync sees every work submitted before it, deferred ones too
        try {
          (*sync_item->fn)(db);
          sync_item->finished->set_value();
        } catch (...) {
          sync_item->finished->set_exception(std::current_exception());
        }
        continue;
      }
      const bool someone_waits = std::any_of(group.begin(), group.end(), [](const Submitted& w) { return !w.deferred; });
      if (held.empty() && !group.empty() && !someone_waits) held_until = std::chrono::steady_clock::now() + linger;
      for (auto& w : group) held.push_back(std::move(w));
      if (someone_waits) {
        write(held);  // the deferred ones ride along: no commit of their own
        held.clear();
      } else if (held.size() >= kMaxGroup || std::chrono::steady_clock::now() >= held_until) {
        flush_held();
      }
    }
  }

  // One transaction for the group, one SAVEPOINT a work.
  void write(std::vector<Submitted>& group) {
    sqlite3* h = db.handle();
    std::vector<Status> results(group.size());
    std::size_t begun_at = 0;  // first work of the open transaction
    bool open = false;
    auto begin = [&](std::size_t i) {
      if (raw_exec(h, "BEGIN IMMEDIATE") == SQLITE_OK) {
        open = true;
        begun_at = i;
        return true;
      }
      return false;
    };
    for (std::size_t i = 0; i < group.size(); ++i) {
      if (!open && !begin(i)) {
        results[i] = Status::error(StatusCode::failed, fmt::format("cannot begin a transaction: {}", sqlite3_errmsg(h)));
        continue;
      }
      if (raw_exec(h, "SAVEPOINT work") != SQLITE_OK) {
        results[i] = Status::error(StatusCode::failed, fmt::format("cannot open a savepoint: {}", sqlite3_errmsg(h)));
        continue;
      }
      try {
        group[i].work(db);
        if (raw_exec(h, "RELEASE work") != SQLITE_OK) throw std::runtime_error(sqlite3_errmsg(h));
      } catch (const std::exception& e) {
        results[i] = Status::error(StatusCode::failed, e.what());
      } catch (...) {
        results[i] = Status::error(StatusCode::failed, "a storage work threw a non-standard exception");
      }
      if (!results[i].ok()) {
        if (sqlite3_get_autocommit(h) != 0) {
          // SQLite ended the whole transaction itself (some I/O and full-disk errors do): the
          // works before this one in it were rolled back too, and say so.
          for (std::size_t j = begun_at; j < i; ++j) {
            if (results[j].ok()) results[j] = Status::error(StatusCode::failed, fmt::format("rolled back with a later work of the same commit: {}", results[i].message()));
          }
          open = false;
        } else {
          raw_exec(h, "ROLLBACK TO work");
          raw_exec(h, "RELEASE work");
        }
      }
    }
    if (open) {
      if (raw_exec(h, "COMMIT") == SQLITE_OK) {
        ++commits;
        if (db.take_enqueued()) {
          std::function<void()> hook;
          {
            std::lock_guard lock(mutex);
            hook = on_enqueued;
          }
          if (hook) post(std::move(hook));
        }
      } else {
        const std::string why = sqlite3_errmsg(h);
        if (sqlite3_get_autocommit(h) == 0) raw_exec(h, "ROLLBACK");
        for (std::size_t j = begun_at; j < group.size(); ++j) {
          if (results[j].ok()) results[j] = Status::error(StatusCode::failed, fmt::format("the commit failed: {}", why));
        }
      }
    }
    for (std::size_t i = 0; i < group.size(); ++i) {
      if (results[i].ok()) ++works;
      post_done(std::move(group[i].done), std::move(results[i]));
    }
  }
};

StoreWorker::StoreWorker(Database& db, Poster post_to_strand, std::chrono::milliseconds linger)
    : impl_(std::make_unique<Impl>(db, std::move(post_to_strand), linger)) {
  impl_->thread = std::thread([impl = impl_.get()] { impl->loop(); });
}

StoreWorker::~StoreWorker() { stop(); }

void StoreWorker::submit(Work work, Done done) { impl_->enqueue(std::move(work), std::move(done), false); }

void StoreWorker::on_enqueued(std::function<void()> fn) {
  std::lock_guard lock(impl_->mutex);
  impl_->on_enqueued = std::move(fn);
}

void StoreWorker::submit_deferred(Work work, Done done) { impl_->enqueue(std::move(work), std::move(done), true); }

void StoreWorker::Impl::enqueue(Work work, Done done, bool deferred) {
  {
    std::lock_guard lock(mutex);
    if (!stopping) {
      queue.emplace_back(Submitted{std::move(work), std::move(done), deferred});
      wake.notify_one();
      return;
    }
  }
  post_done(std::move(done), Status::error(StatusCode::unavailable, "the storage thread has stopped"));
}

void StoreWorker::run_sync(const std::function<void(Database&)>& fn) {
  std::promise<void> finished;
  auto f = finished.get_future();
  {
    std::lock_guard lock(impl_->mutex);
    if (impl_->stopping) {
      // No storage thread any more (or soon): the caller is the only user of the connection
      // once stop() has joined, so run here after waiting for that.
      if (!impl_->joined) throw std::logic_error("StoreWorker::run_sync during stop()");
      fn(impl_->db);
      return;
    }
    impl_->queue.emplace_back(Sync{&fn, &finished});
    impl_->wake.notify_one();
  }
  f.get();
}

void StoreWorker::stop() {
  {
    std::lock_guard lock(impl_->mutex);
    if (impl_->joined) return;
    impl_->stopping = true;
    impl_->wake.notify_one();
  }
  if (impl_->thread.joinable()) impl_->thread.join();
  std::lock_guard lock(impl_->mutex);
  impl_->joined = true;
}

std::uint64_t StoreWorker::commits() const { return impl_->commits.load(); }
std::uint64_t StoreWorker::works() const { return impl_->works.load(); }
std::uint64_t StoreWorker::deferred_only_commits() const { return impl_->deferred_only.load(); }

}  // namespace pilecore::core
