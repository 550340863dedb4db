// The Scheduler (scheduler.hpp) on a Boost.Asio strand and the injectable clock: a delay of clock
// time becomes the real time it takes at the clock's speed, so a simulated day runs its timers in
// seconds. The daemon's periodic work (the disk space check) and the session engine's timers.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include <map>
#include <memory>

#include "clocks.hpp"
#include "scheduler.hpp"

namespace pilecore::core {

class StrandScheduler final : public Scheduler {
 public:
  using Strand = boost::asio::strand<boost::asio::io_context::executor_type>;
  StrandScheduler(Strand& strand, const Clock& clock) : strand_(strand), clock_(clock) {}
  ~StrandScheduler() override {
    *alive_ = false;
    for (auto& [id, t] : timers_) t->cancel();
  }
  StrandScheduler(const StrandScheduler&) = delete;
  StrandScheduler& operator=(const StrandScheduler&) = delete;

  TimerId after(Duration delay, std::function<void()> fn) override {
    const TimerId id = ++next_;
    auto t = std::make_unique<boost::asio::steady_timer>(strand_);
    t->expires_after(real_duration(clock_, delay));
    t->async_wait([this, id, alive = alive_, fn = std::move(fn)](const boost::system::error_code& ec) {
      if (ec || !*alive) return;
      timers_.erase(id);
      fn();
    });
    timers_.emplace(id, std::move(t));
    return id;
  }
  void cancel(TimerId id) override {
    if (auto it = timers_.find(id); it != timers_.end()) {
      it->second->cancel();
      timers_.erase(it);
    }
  }

 private:
  Strand& strand_;
  const Clock& clock_;
  TimerId next_ = 0;
  std::map<TimerId, std::unique_ptr<boost::asio::steady_timer>> timers_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace pilecore::core
