// risk-rate-limit: the emergency layer. Token buckets at the pile's door.
//
// The core asks admit() before it does any work for an inbound request (API 2.2). Authorisation
// attempts, token presentations, control requests and remote commands share one bucket of `qps`
// tokens a second (500 by default, the seed's figure) holding at most `burst`; a request that
// finds it empty is refused at once and counted. Stopping or answering a session in progress has
// a bucket of its own (`session_control_qps`), so a flood of starts or status requests can never
// keep a driver from stopping a charge: charging in progress is unaffected.
//
// Sustained excess is an attack, not a busy minute: when requests were refused in each of
// `alarm_after_s` consecutive seconds, the rule raises the critical alarm `risk.flood`, which the
// core turns into the "switch to backup endpoint" signal for its links; the alarm clears after
// `clear_after_s` seconds without a refusal (and the links fail back). The buckets live in memory:
// after a restart they start full, which admits at most one burst.
//
// As a rule (evaluate) it allows: its work is done at the door.
#include <pilecore/pilecore.hpp>

#include <algorithm>
#include <array>
#include <exception>
#include <string>

namespace {

using namespace pilecore;
using namespace std::chrono_literals;

constexpr ConfigKey keys[] = {
    {.key = "qps", .type = ConfigType::integer, .default_value = "500", .min = 1, .max = 1000000,
     .description = "Inbound requests admitted per second (authorisations, tokens, control requests, remote commands together)", .unit = "1/s"},
    {.key = "burst", .type = ConfigType::integer, .default_value = "0", .min = 0, .max = 10000000,
     .description = "Most requests admitted at once after a quiet spell; 0 = one second's worth (qps)"},
    {.key = "session_control_qps", .type = ConfigType::integer, .default_value = "50", .min = 1, .max = 1000000,
     .description = "Stops and step-up answers for sessions, admitted per second from a bucket of their own", .unit = "1/s"},
    {.key = "alarm_after_s", .type = ConfigType::integer, .default_value = "5", .min = 1, .max = 3600,
     .description = "Raise risk.flood (and switch the links to their backup endpoint) after refusals in this many consecutive seconds", .unit = "s"},
    {.key = "clear_after_s", .type = ConfigType::integer, .default_value = "60", .min = 1, .max = 86400,
     .description = "Clear risk.flood (the links fail back) after this many seconds without a refusal", .unit = "s"},
};

/// A token bucket on the host clock, in millitokens so that any qps refills exactly.
class Bucket {
 public:
  Bucket(std::int64_t per_second, std::int64_t capacity) : rate_(per_second), capacity_m_(capacity * 1000), level_m_(capacity * 1000) {}
  bool take(TimePoint now) {
    if (!started_) {
      last_ = now;
      started_ = true;
    }
    if (now > last_) {
      const std::int64_t us = std::chrono::duration_cast<std::chrono::microseconds>(now - last_).count();
      // rate tokens/s = rate millitokens/ms; cap the elapsed time so the product cannot overflow.
      const std::int64_t add = std::min<std::int64_t>(us, 3600LL * 1000000) * rate_ / 1000;
      level_m_ = std::min(capacity_m_, level_m_ + add);
      last_ = now;
    }
    if (level_m_ < 1000) return false;
    level_m_ -= 1000;
    return true;
  }

 private:
  std::int64_t rate_;
  std::int64_t capacity_m_;
  std::int64_t level_m_;
  TimePoint last_{};
  bool started_ = false;
};

class RateLimit final : public risk::Rule {
 public:
  explicit RateLimit(Host& host)
      : host_(host),
        qps_(host.config().integer("qps")),
        main_(qps_, host.config().integer("burst") > 0 ? host.config().integer("burst") : qps_),
        session_(host.config().integer("session_control_qps"), host.config().integer("session_control_qps")),
        alarm_after_(host.config().integer("alarm_after_s")),
        clear_after_(host.config().integer("clear_after_s")) {}

  Status start() noexcept override {
    try {
      host_.report_state("up", fmt::format("admits {} requests a second; risk.flood after {} s of refusals", qps_, alarm_after_));
      return Status::success();
    } catch (const std::exception& e) {
      return Status::error(StatusCode::failed, e.what());
    }
  }
  void stop() noexcept override {
    if (tick_ != 0) host_.cancel(tick_);
    tick_ = 0;
  }

  void evaluate(const risk::Context&, const risk::History&, TimePoint, risk::Callback done) noexcept override {
    try {
      done(risk::Result{});
    } catch (...) {
    }
  }

  bool admit(risk::Inbound what, TimePoint now) noexcept override {
    const bool ok = what == risk::Inbound::session_control ? session_.take(now) : main_.take(now);
    const auto i = static_cast<std::size_t>(what);
    if (i < refused_.size()) ++(ok ? admitted_ : refused_)[i];
    if (!ok) refused_in_second_ = true;
    if (tick_ == 0 && !ok) arm();
    return ok;
  }

 private:
  // Once a second while there is anything to watch: counts the consecutive seconds with a
  // refusal, and the quiet ones after an alarm.
  void arm() { tick_ = host_.schedule(1s, [this] { on_tick(); }); }

  void on_tick() {
    tick_ = 0;
    if (refused_in_second_) {
      ++seconds_refusing_;
      quiet_seconds_ = 0;
    } else {
      seconds_refusing_ = 0;
      ++quiet_seconds_;
    }
    refused_in_second_ = false;
    if (!alarmed_ && seconds_refusing_ >= alarm_after_) {
      alarmed_ = true;
      const std::string text = fmt::format("inbound flood: requests above {} a second refused for {} s ({}); switch to the backup endpoint",
                                           qps_, seconds_refusing_, counts());
      host_.raise({.severity = AlarmSeverity::critical, .code = "risk.flood", .message = text, .active = true});
      host_.log().warn("{}", text);
    } else if (alarmed_ && quiet_seconds_ >= clear_after_) {
      alarmed_ = false;
      const std::string text = fmt::format("inbound flood over: no refusal for {} s ({})", quiet_seconds_, counts());
      host_.raise({.severity = AlarmSeverity::critical, .code = "risk.flood", .message = text, .active = false});
      host_.log().info("{}", text);
    }
    // Keep watching while refusing, or while an alarm waits to be cleared.
    if (seconds_refusing_ > 0 || alarmed_) arm();
  }

  std::string counts() const {
    std::string s;
    for (std::size_t i = 0; i < refused_.size(); ++i) {
      if (refused_[i] == 0) continue;
      s += fmt::format("{}{} {} refused", s.empty() ? "" : ", ", refused_[i], risk::to_string(static_cast<risk::Inbound>(i)));
    }
    return s.empty() ? "none refused" : s;
  }

  Host& host_;
  std::int64_t qps_;
  Bucket main_;
  Bucket session_;
  std::int64_t alarm_after_;
  std::int64_t clear_after_;
  std::array<std::uint64_t, 5> admitted_{}, refused_{};
  bool refused_in_second_ = false;
  std::int64_t seconds_refusing_ = 0;
  std::int64_t quiet_seconds_ = 0;
  bool alarmed_ = false;
  TimerId tick_ = 0;
};

}  // namespace

PILECORE_PLUGIN(RateLimit, {.name = "risk-rate-limit", .version = "0.1.0", .vendor = "pilecore", .license = "Apache-2.0",
                            .description = "Emergency layer: token buckets on inbound requests (500 a second by default); a sustained flood raises risk.flood and switches the links to their backup endpoint",
                            .config = keys})
