#include "store_worker.hpp"

#include <atomic>

namespace pilecore::core {

// A first implementation on the caller's thread, one transaction per work; the threaded group
// commit replaces it behind the same contract.
struct StoreWorker::Impl {
  Impl(Database& d, Poster p) : db(d), post(std::move(p)) {}
  Database& db;
  Poster post;
  bool stopped = false;
  std::atomic<std::uint64_t> commits{0};
  std::atomic<std::uint64_t> works{0};
};

StoreWorker::StoreWorker(Database& db, Poster post_to_strand) : impl_(std::make_unique<Impl>(db, std::move(post_to_strand))) {}
StoreWorker::~StoreWorker() = default;

void StoreWorker::submit(Work work, Done done) {
  Status st;
  if (impl_->stopped) {
    st = Status::error(StatusCode::unavailable, "the storage thread has stopped");
  } else {
    try {
      impl_->db.exec("BEGIN IMMEDIATE");
      work(impl_->db);
      impl_->db.exec("COMMIT");
      ++impl_->commits;
      ++impl_->works;
    } catch (const std::exception& e) {
      try {
        impl_->db.exec("ROLLBACK");
      } catch (...) {
      }
      st = Status::error(StatusCode::failed, e.what());
    }
  }
  impl_->post([done = std::move(done), st = std::move(st)] { done(st); });
}

void StoreWorker::run_sync(const std::function<void(Database&)>& fn) { fn(impl_->db); }
void StoreWorker::stop() { impl_->stopped = true; }
std::uint64_t StoreWorker::commits() const { return impl_->commits.load(); }
std::uint64_t StoreWorker::works() const { return impl_->works.load(); }

}  // namespace pilecore::core
