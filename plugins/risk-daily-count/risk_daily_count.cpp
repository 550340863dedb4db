// risk-daily-count: more than max_sessions sessions by one user in one site-local day.
//
// The day is the site's calendar day (risk::Context::day_start, computed by the core in the
// site's time zone): what an operator means by "per day", and what a user charging at 23:50 and
// 00:10 is counted by (one session each day). The session being authorised counts: the 6th of
// the day is the first above the default of 5.
//
// It judges the authorisation only. At the capture the user's count for that day is the one
// already judged (the session itself is the only new one), so answering again would only repeat
// a verdict already acted on.
#include <pilecore/pilecore.hpp>

#include <exception>
#include <string>

namespace {

using namespace pilecore;

constexpr ConfigKey keys[] = {
    {.key = "max_sessions", .type = ConfigType::integer, .default_value = "5", .min = 1, .max = 10000,
     .description = "Sessions one user may start in one site-local day, this one included; one more gets `action`", .unit = "sessions"},
    {.key = "action", .type = ConfigType::enumeration, .default_value = "step_up", .allowed = "step_up|deny",
     .description = "The verdict for a session above max_sessions"},
};

class DailyCount final : public risk::Rule {
 public:
  explicit DailyCount(Host& host)
      : host_(host),
        max_(host.config().integer("max_sessions")),
        action_(host.config().string("action") == "deny" ? risk::Verdict::deny : risk::Verdict::step_up) {}

  Status start() noexcept override {
    try {
      host_.report_state("up", fmt::format("at most {} session(s) a user a site-local day, then {}", max_, risk::to_string(action_)));
      return Status::success();
    } catch (const std::exception& e) {
      return Status::error(StatusCode::failed, e.what());
    }
  }
  void stop() noexcept override {}

  void evaluate(const risk::Context& c, const risk::History& history, TimePoint, risk::Callback done) noexcept override {
    risk::Result r;
    try {
      r = judge(c, history);
    } catch (const std::exception& e) {
      r = {risk::Verdict::step_up, fmt::format("risk-daily-count failed: {}", e.what())};
    }
    try {
      done(std::move(r));
    } catch (...) {
    }
  }

 private:
  [[nodiscard]] risk::Result judge(const risk::Context& c, const risk::History& history) const {
    if (c.phase != risk::Phase::authorize) return {};
    const auto past = history.sessions_since(c.user, c.day_start);
    // Not knowing is not zero sessions (the engine also applies the instance's failure policy).
    if (!past) return {risk::Verdict::step_up, "the session history cannot be read"};
    const std::int64_t today = static_cast<std::int64_t>(*past) + 1;
    if (today <= max_) return {};
    return {action_, fmt::format("session {} of the user today (site-local day), above max_sessions {}", today, max_)};
  }

  Host& host_;
  std::int64_t max_;
  risk::Verdict action_;
};

}  // namespace

PILECORE_PLUGIN(DailyCount, {.name = "risk-daily-count", .version = "0.1.0", .vendor = "pilecore", .license = "Apache-2.0",
                             .description = "Risk rule: more than N sessions by one user in one site-local day (5 by default)",
                             .config = keys})
