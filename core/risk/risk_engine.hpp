// The risk engine: every configured risk instance, before each authorisation and again before
// each capture (docs/risk.md).
//
// Each instance has its own deadline and its own failure policy. A failure is: no answer by the
// deadline, an instance that is not running, or a history the instance could not read (the
// engine watches each instance's reads, so a rule that treats "unreadable" as "nothing" still
// fails). The policy (allow, step_up or deny) replaces a failed instance's answer. Verdicts
// combine by severity: any deny denies, else any step_up steps up.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "pilecore/risk.hpp"
#include "scheduler.hpp"

namespace pilecore::core {

struct RiskInstance {
  std::string name;
  risk::Rule* rule = nullptr;  ///< null: configured but not running (a failure)
  Duration deadline{2000};
  risk::Verdict on_failure = risk::Verdict::step_up;
};

struct RiskAnswer {
  enum class How : std::uint8_t { answered, timed_out, failed };
  std::string instance;
  risk::Verdict verdict = risk::Verdict::allow;
  How how = How::answered;
  std::string reason;
};

[[nodiscard]] std::string_view to_string(RiskAnswer::How h) noexcept;

struct RiskDecision {
  risk::Phase phase = risk::Phase::authorize;
  risk::Verdict verdict = risk::Verdict::allow;
  std::vector<RiskAnswer> answers;  ///< in configuration order, one per instance
  /// "instance: reason; ..." of the answers that were not allow: what a refusal tells the user.
  [[nodiscard]] std::string reasons() const;
  /// Every answer, one a line ("name: verdict (how): reason"), for the risk_decisions row.
  [[nodiscard]] std::string answers_text() const;
};

class RiskEngine {
 public:
  using Done = std::function<void(RiskDecision)>;
  RiskEngine(Scheduler& scheduler, const Clock& clock) : scheduler_(scheduler), clock_(clock) {}

  /// Runs every instance on `context` and calls `done` once, on the strand, when each has
  /// answered or failed. `history` must live until `done` has run; the context's views are
  /// copied. No instances: allow at once.
  void evaluate(const risk::Context& context, std::vector<RiskInstance> instances, std::shared_ptr<const risk::History> history, Done done);

 private:
  Scheduler& scheduler_;
  const Clock& clock_;
};

}  // namespace pilecore::core
