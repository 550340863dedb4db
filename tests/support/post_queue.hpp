// The core's strand, played by the test thread: what other threads post() waits in a queue
// until the test drains it with run_until(). For unit tests of code that hands results back to
// the strand (a plugin's Host::post, the storage thread's done callbacks).
#pragma once

#include <deque>
#include <functional>
#include <mutex>

#include "test_support.hpp"

namespace pilecore::test {

class PostQueue {
 public:
  /// Any thread.
  void post(std::function<void()> fn) {
    std::lock_guard lock(mutex_);
    queue_.push_back(std::move(fn));
  }
  /// Runs what is queued, on this thread, until `done` holds; false after 10 s.
  bool run_until(const std::function<bool()>& done) {
    return eventually([&] {
      for (;;) {
        std::deque<std::function<void()>> now;
        {
          std::lock_guard lock(mutex_);
          now.swap(queue_);
        }
        if (now.empty()) break;
        for (auto& fn : now) fn();
      }
      return done();
    });
  }
  /// Drops what was posted and not run.
  void clear() {
    std::lock_guard lock(mutex_);
    queue_.clear();
  }

 private:
  std::mutex mutex_;
  std::deque<std::function<void()>> queue_;
};

}  // namespace pilecore::test
