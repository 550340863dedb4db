// The risk engine (core/risk): how verdicts combine, each instance's deadline and failure
// policy, a history that cannot be read, the site's day, and the decisions on disk.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "db_history.hpp"
#include "risk_engine.hpp"
#include "risk_repository.hpp"
#include "scheduler.hpp"
#include "site_day.hpp"
#include "storage.hpp"
#include "test_support.hpp"
#include "transaction_repository.hpp"

using namespace pilecore;
using namespace pilecore::core;
using namespace std::chrono_literals;
using pilecore::test::TempDir;

namespace {

const TimePoint kStart = TimePoint(std::chrono::sys_days(std::chrono::year(2026) / 3 / 1)) + 10h;

/// A rule that answers what the test scripts: a verdict after a delay on the manual clock, or
/// never; it may read the history first.
class ScriptedRule final : public risk::Rule {
 public:
  ScriptedRule(Scheduler& s, risk::Verdict v, std::string reason, std::optional<Duration> after = Duration(0), bool reads = false)
      : s_(s), v_(v), reason_(std::move(reason)), after_(after), reads_(reads) {}
  Status start() noexcept override { return Status::success(); }
  void stop() noexcept override {}
  void evaluate(const risk::Context& c, const risk::History& h, TimePoint deadline, risk::Callback done) noexcept override {
    seen_deadline = deadline;
    seen_user = std::string(c.user);
    if (reads_) {
      // A rule that (wrongly) takes an unreadable history as zero sessions: the engine must
      // still see the failure.
      (void)h.sessions_since(c.user, c.day_start);
    }
    if (!after_) {
      held = std::move(done);
      return;
    }
    if (*after_ == Duration(0)) return done({v_, reason_});
    s_.after(*after_, [done = std::move(done), v = v_, r = reason_] { done({v, r}); });
  }
  TimePoint seen_deadline{};
  std::string seen_user;
  risk::Callback held;

 private:
  Scheduler& s_;
  risk::Verdict v_;
  std::string reason_;
  std::optional<Duration> after_;
  bool reads_;
};

/// A history with nothing in it; or, broken, one that cannot be read.
class MemoryHistory final : public risk::History {
 public:
  explicit MemoryHistory(bool broken = false) : broken_(broken) {}
  std::optional<std::uint32_t> sessions_since(std::string_view, TimePoint) const noexcept override {
    if (broken_) return std::nullopt;
    return 0;
  }
  std::optional<std::int64_t> amount_since_fen(std::string_view, TimePoint) const noexcept override {
    if (broken_) return std::nullopt;
    return 0;
  }

 private:
  bool broken_;
};

struct Fixture {
  ManualScheduler clock{kStart};
  RiskEngine engine{clock, clock};
  std::optional<RiskDecision> decision;
  int calls = 0;

  void run(std::vector<RiskInstance> instances, std::shared_ptr<const risk::History> history = std::make_shared<MemoryHistory>(),
           risk::Phase phase = risk::Phase::authorize) {
    risk::Context c{.phase = phase,
                    .transaction_id = "S-1-000001",
                    .connector = 1,
                    .method = "pay",
                    .channel = {},
                    .user = "u1",
                    .amount_fen = 5000,
                    .time = clock.now(),
                    .pile = "S",
                    .day_start = {},
                    .utc_offset_s = 0};
    engine.evaluate(c, std::move(instances), std::move(history), [this](RiskDecision d) {
      ++calls;
      decision = std::move(d);
    });
  }
};

RiskInstance inst(std::string name, risk::Rule& r, Duration deadline = 200ms, risk::Verdict on_failure = risk::Verdict::step_up) {
  return {.name = std::move(name), .rule = &r, .deadline = deadline, .on_failure = on_failure};
}

}  // namespace

TEST(RiskEngine, NoInstancesAllowsAtOnce) {
  Fixture f;
  f.run({});
  ASSERT_TRUE(f.decision);
  EXPECT_EQ(f.decision->verdict, risk::Verdict::allow);
  EXPECT_TRUE(f.decision->answers.empty());
}

TEST(RiskEngine, AnyDenyDeniesElseAnyStepUpStepsUp) {
  using V = risk::Verdict;
  struct Case {
    V a, b, c, want;
  } cases[] = {{V::allow, V::allow, V::allow, V::allow},   {V::allow, V::step_up, V::allow, V::step_up},
               {V::step_up, V::deny, V::allow, V::deny},   {V::deny, V::allow, V::allow, V::deny},
               {V::step_up, V::step_up, V::allow, V::step_up}, {V::allow, V::allow, V::deny, V::deny}};
  for (const auto& k : cases) {
    Fixture f;
    ScriptedRule a(f.clock, k.a, k.a == V::allow ? "" : "a says so"), b(f.clock, k.b, k.b == V::allow ? "" : "b says so", 50ms),
        c(f.clock, k.c, k.c == V::allow ? "" : "c says so", 100ms);
    f.run({inst("a", a), inst("b", b), inst("c", c)});
    EXPECT_FALSE(f.decision) << "decided before every rule answered";
    f.clock.advance(100ms);
    ASSERT_TRUE(f.decision);
    EXPECT_EQ(f.decision->verdict, k.want) << risk::to_string(k.a) << "," << risk::to_string(k.b) << "," << risk::to_string(k.c);
    ASSERT_EQ(f.decision->answers.size(), 3u);
    EXPECT_EQ(f.decision->answers[1].instance, "b");
    EXPECT_EQ(f.decision->answers[1].verdict, k.b);
    EXPECT_EQ(f.decision->answers[1].how, RiskAnswer::How::answered);
    // Only what was not allowed is a reason the user is told.
    EXPECT_EQ(f.decision->reasons().find("a says so") != std::string::npos, k.a != V::allow) << f.decision->reasons();
  }
}

TEST(RiskEngine, EachInstanceHasItsOwnDeadlineAndFailurePolicy) {
  Fixture f;
  ScriptedRule quick(f.clock, risk::Verdict::allow, "", 90ms);
  ScriptedRule slow_lenient(f.clock, risk::Verdict::deny, "too late to count", 300ms);
  ScriptedRule silent_strict(f.clock, risk::Verdict::allow, "", std::nullopt);
  f.run({inst("quick", quick, 100ms, risk::Verdict::deny), inst("slow", slow_lenient, 200ms, risk::Verdict::allow),
         inst("silent", silent_strict, 400ms, risk::Verdict::step_up)});
  EXPECT_EQ(quick.seen_deadline, kStart + 100ms) << "each rule is told its own deadline";
  EXPECT_EQ(slow_lenient.seen_deadline, kStart + 200ms);
  f.clock.advance(399ms);
  EXPECT_FALSE(f.decision) << "the silent rule still has time";
  f.clock.advance(1ms);
  ASSERT_TRUE(f.decision);
  EXPECT_EQ(f.calls, 1);
  const auto& a = f.decision->answers;
  EXPECT_EQ(a[0].how, RiskAnswer::How::answered);
  EXPECT_EQ(a[0].verdict, risk::Verdict::allow) << "answered 10 ms before its deadline: its own verdict, not its policy";
  EXPECT_EQ(a[1].how, RiskAnswer::How::timed_out);
  EXPECT_EQ(a[1].verdict, risk::Verdict::allow) << "its late deny is ignored; its policy (allow) stands";
  EXPECT_NE(a[1].reason.find("no answer within 200 ms"), std::string::npos) << a[1].reason;
  EXPECT_EQ(a[2].how, RiskAnswer::How::timed_out);
  EXPECT_EQ(a[2].verdict, risk::Verdict::step_up);
  EXPECT_EQ(f.decision->verdict, risk::Verdict::step_up);
  // Answers after the deadline change nothing and call nothing again.
  f.clock.advance(1s);
  silent_strict.held({risk::Verdict::deny, "late"});
  EXPECT_EQ(f.calls, 1);
  EXPECT_EQ(f.decision->verdict, risk::Verdict::step_up);
}

TEST(RiskEngine, TimeoutPolicyDenyDenies) {
  Fixture f;
  ScriptedRule silent(f.clock, risk::Verdict::allow, "", std::nullopt);
  f.run({inst("silent", silent, 150ms, risk::Verdict::deny)});
  f.clock.advance(149ms);
  EXPECT_FALSE(f.decision);
  f.clock.advance(1ms);
  ASSERT_TRUE(f.decision);
  EXPECT_EQ(f.decision->verdict, risk::Verdict::deny);
  EXPECT_NE(f.decision->reasons().find("silent: no answer within 150 ms; its failure policy says deny"), std::string::npos) << f.decision->reasons();
}

TEST(RiskEngine, AnInstanceNotRunningIsAFailure) {
  Fixture f;
  f.run({{.name = "gone", .rule = nullptr, .deadline = 100ms, .on_failure = risk::Verdict::deny}});
  ASSERT_TRUE(f.decision);
  EXPECT_EQ(f.decision->verdict, risk::Verdict::deny);
  EXPECT_EQ(f.decision->answers[0].how, RiskAnswer::How::failed);
}

TEST(RiskEngine, AnUnreadableHistoryIsAFailureEvenWhenTheRuleAllows) {
  for (const auto policy : {risk::Verdict::allow, risk::Verdict::step_up, risk::Verdict::deny}) {
    Fixture f;
    ScriptedRule careless(f.clock, risk::Verdict::allow, "", Duration(0), /*reads=*/true);
    f.run({inst("count", careless, 100ms, policy)}, std::make_shared<MemoryHistory>(/*broken=*/true));
    ASSERT_TRUE(f.decision);
    EXPECT_EQ(f.decision->answers[0].how, RiskAnswer::How::failed);
    EXPECT_EQ(f.decision->verdict, policy);
    EXPECT_NE(f.decision->answers[0].reason.find("history could not be read"), std::string::npos);
  }
  Fixture ok;
  ScriptedRule reader(ok.clock, risk::Verdict::allow, "", Duration(0), true);
  ok.run({inst("count", reader, 100ms, risk::Verdict::deny)});
  ASSERT_TRUE(ok.decision);
  EXPECT_EQ(ok.decision->verdict, risk::Verdict::allow) << "a readable, empty history is no failure";
}

TEST(RiskEngine, AStepUpOrDenyWithoutAReasonIsGivenOne) {
  Fixture f;
  ScriptedRule mute(f.clock, risk::Verdict::step_up, "");
  f.run({inst("mute", mute)});
  ASSERT_TRUE(f.decision);
  EXPECT_EQ(f.decision->reasons(), "mute: no reason given");
  EXPECT_EQ(f.decision->answers_text(), "mute: step_up (answered): no reason given");
}

TEST(RiskEngine, ADatabaseHistoryThatCannotBeReadFailsTheRule) {
  TempDir dir;
  Database db(dir.path() / "p.db");
  SiteDay day("Asia/Shanghai");
  auto history = std::make_shared<DbHistory>(db, day);
  // A history table that is gone: the read is an error, never "0 sessions".
  db.exec("DROP TABLE transactions");
  EXPECT_FALSE(history->sessions_since("u1", kStart));
  EXPECT_FALSE(history->amount_since_fen("u1", kStart));
  EXPECT_FALSE(history->sessions_after("u1", kStart, 10, [](const risk::PastSession&) {}));
  Fixture f;
  ScriptedRule reader(f.clock, risk::Verdict::allow, "", Duration(0), true);
  f.run({inst("count", reader, 100ms, risk::Verdict::step_up)}, history);
  ASSERT_TRUE(f.decision);
  EXPECT_EQ(f.decision->verdict, risk::Verdict::step_up);
}

TEST(RiskEngine, TheSiteDayStartsAtLocalMidnight) {
  using namespace std::chrono;
  SiteDay shanghai("Asia/Shanghai");
  // 2026-03-01 15:59:59 UTC is 23:59:59 in Shanghai; a second later is the next local day.
  const TimePoint before = TimePoint(sys_days(year(2026) / 3 / 1)) + 15h + 59min + 59s;
  EXPECT_EQ(shanghai.day_start(before), TimePoint(sys_days(year(2026) / 2 / 28)) + 16h);
  EXPECT_EQ(shanghai.day_start(before + 1s), TimePoint(sys_days(year(2026) / 3 / 1)) + 16h);
  EXPECT_EQ(shanghai.utc_offset_s(before), 8 * 3600);
  // A day with a DST change: Berlin's 2026-03-29 has 23 hours, and starts at 23:00 UTC.
  SiteDay berlin("Europe/Berlin");
  const TimePoint noon = TimePoint(sys_days(year(2026) / 3 / 29)) + 10h;  // 12:00 CEST
  EXPECT_EQ(berlin.day_start(noon), TimePoint(sys_days(year(2026) / 3 / 28)) + 23h);
  EXPECT_EQ(berlin.utc_offset_s(noon), 2 * 3600);
}

TEST(RiskEngine, DecisionsAreKeptPerTransactionAndPhase) {
  TempDir dir;
  Database db(dir.path() / "p.db");
  RiskDecision d;
  d.verdict = risk::Verdict::step_up;
  d.answers = {{"amount", risk::Verdict::step_up, RiskAnswer::How::answered, "estimated amount 1200.00 yuan is above"},
               {"daily", risk::Verdict::allow, RiskAnswer::How::answered, ""}};
  RiskRepository repo(db);
  repo.record({"T1", "capture", "allow", "amount: allow (answered)", kStart + 1h});
  repo.record({"T1", "authorize", "step_up", d.answers_text(), kStart});
  repo.record({"T2", "authorize", "allow", "", kStart});
  const auto rows = repo.decisions("T1");
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].phase, "authorize") << "in the order they happen";
  EXPECT_EQ(rows[0].verdict, "step_up");
  EXPECT_EQ(rows[0].answers, "amount: step_up (answered): estimated amount 1200.00 yuan is above\ndaily: allow (answered)");
  EXPECT_EQ(rows[0].decided, kStart);
  EXPECT_EQ(rows[1].phase, "capture");
  EXPECT_THROW(repo.record({"T3", "refund", "allow", "", kStart}), std::runtime_error) << "only the two phases exist";
}
