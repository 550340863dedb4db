// Timers on the core's strand, behind an interface so the payment saga and the charging session
// run on a manual clock in unit tests (ManualScheduler: time moves only when the test says so,
// no wall-clock polling) and on Boost.Asio in the daemon.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <utility>

#include "pilecore/clock.hpp"

namespace pilecore::core {

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  /// Runs `fn` on the strand after `delay` of clock time; returns a non-zero id.
  virtual TimerId after(Duration delay, std::function<void()> fn) = 0;
  /// Harmless for a timer that has fired or was cancelled.
  virtual void cancel(TimerId id) = 0;
};

/// A clock and a scheduler for tests: `advance` moves time and fires what fell due, in order.
class ManualScheduler final : public Scheduler, public Clock {
 public:
  explicit ManualScheduler(TimePoint start) : now_(start) {}
  [[nodiscard]] TimePoint now() const noexcept override { return now_; }
  [[nodiscard]] double speed() const noexcept override { return 1.0; }
  TimerId after(Duration delay, std::function<void()> fn) override {
    const TimerId id = ++next_;
    timers_.emplace(std::pair{now_ + delay, id}, std::move(fn));
    return id;
  }
  void cancel(TimerId id) override {
    for (auto it = timers_.begin(); it != timers_.end(); ++it) {
      if (it->first.second == id) {
        timers_.erase(it);
        return;
      }
    }
  }
  /// Moves the clock forward by `d`, firing every timer due on the way at its own time.
  void advance(Duration d) {
    const TimePoint end = now_ + d;
    while (!timers_.empty() && timers_.begin()->first.first <= end) {
      auto node = timers_.extract(timers_.begin());
      now_ = node.key().first;
      node.mapped()();
    }
    now_ = end;
  }
  [[nodiscard]] std::size_t pending() const { return timers_.size(); }

 private:
  TimePoint now_;
  TimerId next_ = 0;
  std::map<std::pair<TimePoint, TimerId>, std::function<void()>> timers_;
};

}  // namespace pilecore::core
