#include "store_worker.hpp"

#include <fmt/format.h>

#include <atomic>
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
  Impl(Database& d, Poster p) : db(d), post(std::move(p)) {}

  Database& db;
  Poster post;
  std::mutex mutex;
  std::condition_variable wake;
  std::deque<Item> queue;
  bool stopping = false;  // under mutex: no more submits are accepted
  bool joined = false;
  std::thread thread;
  std::atomic<std::uint64_t> commits{0};
  std::atomic<std::uint64_t> works{0};

  void post_done(Done done, Status st) {
    if (!done) return;
    post([done = std::move(done), st = std::move(st)] { done(st); });
  }

  void loop() {
    for (;;) {
      std::vector<Submitted> group;
      std::optional<Sync> sync_item;
      {
        std::unique_lock lock(mutex);
        wake.wait(lock, [&] { return !queue.empty() || stopping; });
        if (queue.empty()) return;  // stopping, and everything submitted is written
        if (auto* s = std::get_if<Sync>(&queue.front())) {
          sync_item = *s;
          queue.pop_front();
        } else {
          // Everything queued while the previous commit's fsync ran goes into this one, up to a
          // run_sync (which must see the works submitted before it committed).
          while (!queue.empty() && group.size() < kMaxGroup && std::holds_alternative<Submitted>(queue.front())) {
            group.push_back(std::move(std::get<Submitted>(queue.front())));
            queue.pop_front();
          }
        }
      }
      if (sync_item) {
        try {
          (*sync_item->fn)(db);
          sync_item->finished->set_value();
        } catch (...) {
          sync_item->finished->set_exception(std::current_exception());
        }
      } else {
        write(group);
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

StoreWorker::StoreWorker(Database& db, Poster post_to_strand) : impl_(std::make_unique<Impl>(db, std::move(post_to_strand))) {
  impl_->thread = std::thread([impl = impl_.get()] { impl->loop(); });
}

StoreWorker::~StoreWorker() { stop(); }

void StoreWorker::submit(Work work, Done done) {
  {
    std::lock_guard lock(impl_->mutex);
    if (!impl_->stopping) {
      impl_->queue.emplace_back(Submitted{std::move(work), std::move(done)});
      impl_->wake.notify_one();
      return;
    }
  }
  impl_->post_done(std::move(done), Status::error(StatusCode::unavailable, "the storage thread has stopped"));
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

}  // namespace pilecore::core
