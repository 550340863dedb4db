// sim-risk: a simulated risk rule with a configured verdict plus a real velocity rule.
//
// The real rule comes from the seed's example ("单日充电次数>5次、单笔金额>1000元"): a user with
// more than max_sessions_per_day sessions in the last 24 hours (this one included), or a single
// amount above max_amount_fen, needs step-up. The configured verdict (allow, step_up, deny) is
// combined with it; the most severe answer wins and every reason is kept.
//
// "Per day" is a sliding 24 hours on the host clock: the plugin does not know the site's time
// zone, and a sliding window cannot be gamed around midnight.
// The answer comes after latency_ms even when that passes the deadline (the core then counts it
// as step_up), so a slow rule can be simulated honestly. The history is read at once, while it
// is valid.
#include <pilecore/pilecore.hpp>

#include <exception>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace {

using namespace pilecore;

constexpr ConfigKey keys[] = {
    {.key = "verdict", .type = ConfigType::enumeration, .default_value = "allow", .allowed = "allow|step_up|deny",
     .description = "Verdict this rule gives on top of its limits (to rehearse step-up and deny paths)"},
    {.key = "reason", .type = ConfigType::string, .default_value = "",
     .description = "Reason given with a configured step_up or deny verdict (a default text is used when empty)"},
    {.key = "latency_ms", .type = ConfigType::integer, .default_value = "0", .min = 0, .max = 600000,
     .description = "Host-clock time the rule takes to answer", .unit = "ms"},
    {.key = "max_sessions_per_day", .type = ConfigType::integer, .default_value = "5", .min = 0, .max = 10000,
     .description = "More sessions than this for one user within 24 hours, this one included, needs step-up; 0 = no limit",
     .unit = "sessions"},
    {.key = "max_amount_fen", .type = ConfigType::integer, .default_value = "100000", .min = 0, .max = 1e10,
     .description = "A single amount above this needs step-up (100000 fen = 1000 yuan); 0 = no limit", .unit = "fen"},
};

risk::Verdict parse_verdict(std::string_view s) {
  if (s == "deny") return risk::Verdict::deny;
  if (s == "step_up") return risk::Verdict::step_up;
  return risk::Verdict::allow;
}

std::string yuan(std::int64_t fen) { return fmt::format("{}.{:02} yuan", fen / 100, (fen < 0 ? -fen : fen) % 100); }

class SimRisk final : public risk::Rule {
 public:
  explicit SimRisk(Host& host)
      : host_(host),
        verdict_(parse_verdict(host.config().string("verdict"))),
        reason_(host.config().string("reason")),
        latency_(host.config().integer("latency_ms")),
        max_sessions_(host.config().integer("max_sessions_per_day")),
        max_amount_fen_(host.config().integer("max_amount_fen")) {
    if (reason_.empty() && verdict_ != risk::Verdict::allow) reason_ = fmt::format("configured verdict {}", risk::to_string(verdict_));
  }

  Status start() noexcept override {
    try {
      host_.report_state("up", fmt::format("verdict {}, at most {} session(s) a day and {} a session", risk::to_string(verdict_),
                                           max_sessions_, yuan(max_amount_fen_)));
      return Status::success();
    } catch (const std::exception& e) {
      return Status::error(StatusCode::failed, e.what());
    }
  }

  void stop() noexcept override {
    auto pending = std::move(pending_);
    pending_.clear();
    for (auto& [key, p] : pending) {
      host_.cancel(p.timer);
      try {
        if (p.done) p.done({.verdict = risk::Verdict::step_up, .reason = "risk rule stopped before answering"});
      } catch (...) {
      }
    }
  }

  void evaluate(const risk::Context& context, const risk::History& history, TimePoint deadline, risk::Callback done) noexcept override {
    try {
      risk::Result result = judge(context, history);
      host_.log().info("transaction {} connector {} {} -> {}{}{}", context.transaction_id, context.connector, yuan(context.amount_fen),
                       risk::to_string(result.verdict), result.reason.empty() ? "" : ": ", result.reason);
      const TimePoint now = host_.clock().now();
      if (deadline != TimePoint{} && now + latency_ > deadline) {
        host_.log().warn("transaction {}: answering {} ms after the deadline (latency {} ms)", context.transaction_id,
                         (now + latency_ - deadline).count(), latency_.count());
      }
      const std::uint64_t key = ++seq_;
      pending_[key].done = std::move(done);
      const TimerId timer = host_.schedule(latency_, [this, key, result = std::move(result)] {
        auto it = pending_.find(key);
        if (it == pending_.end()) return;
        auto cb = std::move(it->second.done);
        pending_.erase(it);
        cb(result);
      });
      if (timer == 0) {
        auto p = std::move(pending_[key]);
        pending_.erase(key);
        p.done({.verdict = risk::Verdict::step_up, .reason = "risk rule stopping"});
        return;
      }
      pending_[key].timer = timer;
    } catch (const std::exception& e) {
      host_.log().error("evaluate failed: {}", e.what());
      try {
        if (done) done({.verdict = risk::Verdict::step_up, .reason = std::string("risk rule error: ") + e.what()});
      } catch (...) {
      }
    }
  }

 private:
  struct Pending {
    TimerId timer = 0;
    risk::Callback done;
  };

  [[nodiscard]] risk::Result judge(const risk::Context& c, const risk::History& history) const {
    risk::Verdict verdict = verdict_;
    std::vector<std::string> reasons;
    if (verdict_ != risk::Verdict::allow) reasons.push_back(reason_);
    auto step_up = [&](std::string why) {
      if (verdict == risk::Verdict::allow) verdict = risk::Verdict::step_up;
      reasons.push_back(std::move(why));
    };
    const TimePoint now = c.time != TimePoint{} ? c.time : host_.clock().now();
    if (max_sessions_ > 0) {
      const auto past = history.sessions_since(c.user, now - std::chrono::hours(24));
      if (!past) {
        // The history is unreadable: not knowing is not the same as zero sessions.
        step_up("the session history cannot be read");
      } else if (static_cast<std::int64_t>(*past) + 1 > max_sessions_) {
        step_up(fmt::format("{} sessions within 24 hours, above max_sessions_per_day {}", *past + 1, max_sessions_));
      }
    }
    if (max_amount_fen_ > 0 && c.amount_fen > max_amount_fen_) {
      step_up(fmt::format("amount {} is above max_amount_fen {} ({})", yuan(c.amount_fen), max_amount_fen_, yuan(max_amount_fen_)));
    }
    std::string reason;
    for (const auto& r : reasons) reason += (reason.empty() ? "" : "; ") + r;
    return {.verdict = verdict, .reason = std::move(reason)};
  }

  Host& host_;
  risk::Verdict verdict_;
  std::string reason_;
  Duration latency_;
  std::int64_t max_sessions_;
  std::int64_t max_amount_fen_;
  std::map<std::uint64_t, Pending> pending_;
  std::uint64_t seq_ = 0;
};

}  // namespace

PILECORE_PLUGIN(SimRisk, {.name = "sim-risk", .version = "0.1.0", .vendor = "pilecore", .license = "Apache-2.0",
                          .description = "Simulated risk rule: configured verdict plus daily session and single-amount limits",
                          .config = keys})
