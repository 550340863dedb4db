#include "risk_engine.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

namespace pilecore::core {

namespace {

/// One instance's view of the history: remembers whether a read failed, so the failure is the
/// engine's to judge whatever the rule made of it.
class WatchedHistory final : public risk::History {
 public:
  explicit WatchedHistory(std::shared_ptr<const risk::History> inner) : inner_(std::move(inner)) {}
  std::optional<std::uint32_t> sessions_since(std::string_view user, TimePoint since) const noexcept override {
    auto r = inner_->sessions_since(user, since);
    if (!r) failed_ = true;
    return r;
  }
  std::optional<std::int64_t> amount_since_fen(std::string_view user, TimePoint since) const noexcept override {
    auto r = inner_->amount_since_fen(user, since);
    if (!r) failed_ = true;
    return r;
  }
  bool sessions_after(std::string_view user, TimePoint after, std::size_t limit,
                      const std::function<void(const risk::PastSession&)>& each) const noexcept override {
    const bool ok = inner_->sessions_after(user, after, limit, each);
    if (!ok) failed_ = true;
    return ok;
  }
  [[nodiscard]] bool failed() const noexcept { return failed_; }

 private:
  std::shared_ptr<const risk::History> inner_;
  mutable bool failed_ = false;
};

struct Slot {
  RiskInstance instance;
  WatchedHistory history;
  TimerId timer = 0;
  bool settled = false;
};

struct Evaluation {
  RiskDecision decision;
  std::vector<std::unique_ptr<Slot>> slots;
  std::size_t pending = 0;
  bool done_called = false;
  RiskEngine::Done done;
  std::string txn, method, channel, user, pile;
};

}  // namespace

std::string_view to_string(RiskAnswer::How h) noexcept {
  switch (h) {
    case RiskAnswer::How::answered: return "answered";
    case RiskAnswer::How::timed_out: return "timed out";
    case RiskAnswer::How::failed: return "failed";
  }
  return "unknown";
}

std::string RiskDecision::reasons() const {
  std::string out;
  for (const auto& a : answers) {
    if (a.verdict == risk::Verdict::allow) continue;
    out += fmt::format("{}{}: {}", out.empty() ? "" : "; ", a.instance, a.reason);
  }
  return out;
}

std::string RiskDecision::answers_text() const {
  std::string out;
  for (const auto& a : answers) {
    out += fmt::format("{}{}: {} ({}){}{}", out.empty() ? "" : "\n", a.instance, risk::to_string(a.verdict), to_string(a.how),
                       a.reason.empty() ? "" : ": ", a.reason);
  }
  return out;
}

void RiskEngine::evaluate(const risk::Context& context, std::vector<RiskInstance> instances, std::shared_ptr<const risk::History> history, Done done) {
  auto ev = std::make_shared<Evaluation>();
  ev->decision.phase = context.phase;
  ev->done = std::move(done);
  ev->txn = std::string(context.transaction_id);
  ev->method = std::string(context.method);
  ev->channel = std::string(context.channel);
  ev->user = std::string(context.user);
  ev->pile = std::string(context.pile);
  risk::Context c = context;
  c.transaction_id = ev->txn;
  c.method = ev->method;
  c.channel = ev->channel;
  c.user = ev->user;
  c.pile = ev->pile;
  ev->decision.answers.resize(instances.size());
  ev->pending = instances.size();
  for (std::size_t i = 0; i < instances.size(); ++i) {
    ev->decision.answers[i].instance = instances[i].name;
    ev->slots.push_back(std::make_unique<Slot>(Slot{std::move(instances[i]), WatchedHistory(history), 0, false}));
  }
  // Settles slot i with an answer; the last one settled calls done. Called from a timer or from
  // a rule's callback, always on the strand.
  auto settle = [ev, this](std::size_t i, RiskAnswer::How how, risk::Verdict verdict, std::string reason) {
    Slot& s = *ev->slots[i];
    if (s.settled) return;
    s.settled = true;
    if (s.timer) scheduler_.cancel(s.timer);
    RiskAnswer& a = ev->decision.answers[i];
    a.how = how;
    a.verdict = verdict;
    a.reason = std::move(reason);
    ev->decision.verdict = std::max(ev->decision.verdict, verdict);
    if (--ev->pending == 0 && !ev->done_called) {
      ev->done_called = true;
      auto cb = std::move(ev->done);
      cb(ev->decision);
    }
  };
  if (ev->pending == 0) {
    ev->done_called = true;
    auto cb = std::move(ev->done);
    cb(ev->decision);
    return;
  }
  for (std::size_t i = 0; i < ev->slots.size(); ++i) {
    Slot& s = *ev->slots[i];
    const auto policy = s.instance.on_failure;
    if (!s.instance.rule) {
      settle(i, RiskAnswer::How::failed, policy, fmt::format("the instance is not running; its failure policy says {}", risk::to_string(policy)));
      continue;
    }
    const Duration deadline = s.instance.deadline;
    s.timer = scheduler_.after(deadline, [settle, i, policy, deadline] {
      settle(i, RiskAnswer::How::timed_out, policy,
             fmt::format("no answer within {} ms; its failure policy says {}", deadline.count(), risk::to_string(policy)));
    });
    // The evaluation is kept alive by the callback (the rule must answer, even late).
    s.instance.rule->evaluate(c, s.history, clock_.now() + deadline, [ev, settle, i, policy](risk::Result r) {
      Slot& slot = *ev->slots[i];
      if (slot.settled) return;  // late: the deadline has spoken
      if (slot.history.failed()) {
        settle(i, RiskAnswer::How::failed, policy,
               fmt::format("the history could not be read; its failure policy says {}", risk::to_string(policy)));
        return;
      }
      if (r.verdict != risk::Verdict::allow && r.verdict != risk::Verdict::step_up && r.verdict != risk::Verdict::deny) {
        settle(i, RiskAnswer::How::failed, policy, fmt::format("answered an unknown verdict; its failure policy says {}", risk::to_string(policy)));
        return;
      }
      if (r.verdict != risk::Verdict::allow && r.reason.empty()) r.reason = "no reason given";
      settle(i, RiskAnswer::How::answered, r.verdict, std::move(r.reason));
    });
  }
}

}  // namespace pilecore::core
