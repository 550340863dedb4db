// The rule plugins risk-daily-count, risk-amount and risk-behavior, loaded from their .so files,
// reading the core's history of a real database in the site's time zone (Asia/Shanghai).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <string>

#include "db_history.hpp"
#include "plugin_host.hpp"
#include "site_day.hpp"
#include "storage.hpp"
#include "test_support.hpp"
#include "transaction_repository.hpp"

using namespace pilecore;
using namespace pilecore::core;
using namespace std::chrono_literals;
using pilecore::test::PluginHost;
using pilecore::test::TempDir;

namespace {

const std::string kDir = PILECORE_PLUGIN_DIR;
// 2026-03-01 00:00 in Shanghai is 2026-02-28 16:00 UTC.
const TimePoint kMidnight = TimePoint(std::chrono::sys_days(std::chrono::year(2026) / 2 / 28)) + 16h;

/// A pile's database and the history the core gives rules over it.
struct Pile {
  TempDir dir;
  Database db{dir.path() / "pilecore.db"};
  SiteDay day{"Asia/Shanghai"};
  DbHistory history{db, day};
  int seq = 0;

  /// A closed and captured session of `user`.
  void session(const std::string& user, TimePoint started, std::int64_t fen = 5000, std::uint32_t connector = 1) {
    const std::string id = "S-" + std::to_string(++seq);
    TransactionRepository t(db);
    t.insert({.id = id, .connector = connector, .method = "pay", .user_token = "card:" + user, .user_hash = user, .payment_ref = "r",
              .authorized_fen = 20000, .started = started, .meter_start_wh = 0, .mode = "full"});
    t.close(id, {.outcome = "completed", .meter_stop_wh = 1000, .energy_wh = 1000, .electricity_fen = fen, .service_fen = 0, .total_fen = fen,
                 .capture_status = "", .bill_document = "{}", .stopped = started + 1h});
    t.record_capture(id, fen, "captured");
  }

  risk::Result ask(risk::Rule& rule, const std::string& user, TimePoint at, std::int64_t fen = 5000, risk::Phase phase = risk::Phase::authorize,
                   std::uint32_t connector = 1) {
    std::optional<risk::Result> out;
    rule.evaluate({.phase = phase,
                   .transaction_id = "S-new",
                   .connector = connector,
                   .method = "pay",
                   .channel = {},
                   .user = user,
                   .amount_fen = fen,
                   .time = at,
                   .pile = "S",
                   .day_start = day.day_start(at),
                   .utc_offset_s = day.utc_offset_s(at)},
                  history, at + 1s, [&](risk::Result r) { out = std::move(r); });
    if (!out) throw std::runtime_error("the rule did not answer at once");
    return *out;
  }
};

}  // namespace

TEST(RiskDailyCount, TheSixthSessionOfTheDayStepsUpByDefault) {
  Pile p;
  TempDir state;
  PluginHost host(kDir + "/risk-daily-count.so", "{}", state.path());
  auto& rule = host.create<risk::Rule>();
  for (int i = 0; i < 4; ++i) p.session("u", kMidnight + 8h + i * 1h);
  EXPECT_EQ(p.ask(rule, "u", kMidnight + 20h).verdict, risk::Verdict::allow) << "the 5th session of the day";
  p.session("u", kMidnight + 13h);
  const auto sixth = p.ask(rule, "u", kMidnight + 20h);
  EXPECT_EQ(sixth.verdict, risk::Verdict::step_up) << "the 6th";
  EXPECT_EQ(sixth.reason, "session 6 of the user today (site-local day), above max_sessions 5");
  EXPECT_EQ(p.ask(rule, "someone-else", kMidnight + 20h).verdict, risk::Verdict::allow) << "counted per user";
  EXPECT_EQ(p.ask(rule, "u", kMidnight + 20h, 5000, risk::Phase::capture).verdict, risk::Verdict::allow) << "judged at the authorisation only";
}

TEST(RiskDailyCount, CountsTheSiteLocalDayAcrossMidnight) {
  Pile p;
  TempDir state;
  PluginHost host(kDir + "/risk-daily-count.so", "{max_sessions: 2, action: deny}", state.path());
  auto& rule = host.create<risk::Rule>();
  // Two sessions late on 28 February in Shanghai (15:50 UTC, 8 hours behind): the UTC date is the
  // same as the next ones', the site's is not.
  p.session("u", kMidnight - 20min);
  p.session("u", kMidnight - 10min);
  EXPECT_EQ(p.ask(rule, "u", kMidnight - 1s).verdict, risk::Verdict::deny) << "a third on the 28th";
  EXPECT_EQ(p.ask(rule, "u", kMidnight).verdict, risk::Verdict::allow) << "the first of 1 March";
  p.session("u", kMidnight + 5min);
  EXPECT_EQ(p.ask(rule, "u", kMidnight + 15h).verdict, risk::Verdict::allow) << "the second of 1 March: at the limit";
  p.session("u", kMidnight + 6h);
  const auto third = p.ask(rule, "u", kMidnight + 24h - 1s);
  EXPECT_EQ(third.verdict, risk::Verdict::deny) << "the third of 1 March, at 23:59:59 local";
  EXPECT_EQ(p.ask(rule, "u", kMidnight + 24h).verdict, risk::Verdict::allow) << "a new site-local day";
}

TEST(RiskDailyCount, AnUnreadableHistoryIsNotZeroSessions) {
  Pile p;
  TempDir state;
  PluginHost host(kDir + "/risk-daily-count.so", "{}", state.path());
  auto& rule = host.create<risk::Rule>();
  p.db.exec("DROP TABLE transactions");
  const auto r = p.ask(rule, "u", kMidnight + 1h);
  EXPECT_EQ(r.verdict, risk::Verdict::step_up);
  EXPECT_EQ(r.reason, "the session history cannot be read");
}

TEST(RiskAmount, ThousandYuanIsTheLimitByDefault) {
  Pile p;
  TempDir state;
  PluginHost host(kDir + "/risk-amount.so", "{}", state.path());
  auto& rule = host.create<risk::Rule>();
  EXPECT_EQ(p.ask(rule, "u", kMidnight, 99999).verdict, risk::Verdict::allow);
  EXPECT_EQ(p.ask(rule, "u", kMidnight, 100000).verdict, risk::Verdict::allow) << "the limit itself";
  const auto above = p.ask(rule, "u", kMidnight, 100001);
  EXPECT_EQ(above.verdict, risk::Verdict::step_up);
  EXPECT_EQ(above.reason, "estimated amount 1000.01 yuan is above max_amount_fen 100000 (1000.00 yuan)");
}

TEST(RiskAmount, TheCaptureIsJudgedOnTheFinalAmount) {
  Pile p;
  TempDir state;
  PluginHost host(kDir + "/risk-amount.so", "{max_amount_fen: 20000, action: deny}", state.path());
  auto& rule = host.create<risk::Rule>();
  EXPECT_EQ(p.ask(rule, "u", kMidnight, 20000, risk::Phase::authorize).verdict, risk::Verdict::allow);
  const auto fin = p.ask(rule, "u", kMidnight + 3h, 20001, risk::Phase::capture);
  EXPECT_EQ(fin.verdict, risk::Verdict::deny);
  EXPECT_EQ(fin.reason, "final amount 200.01 yuan is above max_amount_fen 20000 (200.00 yuan)");
  EXPECT_EQ(p.ask(rule, "u", kMidnight + 3h, 19999, risk::Phase::capture).verdict, risk::Verdict::allow);
}

namespace {
/// A commuter: every day at 08:00 local (give or take up to 20 minutes), about 50 yuan.
void commuter(Pile& p, const std::string& user, int days, TimePoint first_day = kMidnight) {
  for (int d = 0; d < days; ++d) {
    const auto jitter = std::chrono::minutes((d * 7) % 41 - 20);
    p.session(user, first_day + d * 24h + 8h + jitter, 5000 + ((d * 13) % 9 - 4) * 100);
  }
}
}  // namespace

TEST(RiskBehavior, JudgesOnlyOnceTheUserHasTheMinimumHistory) {
  Pile p;
  TempDir state;
  PluginHost host(kDir + "/risk-behavior.so", "{min_history: 10}", state.path());
  auto& rule = host.create<risk::Rule>();
  commuter(p, "u", 9);
  const TimePoint night = kMidnight + 10 * 24h + 3h;  // 03:00, the 11th day
  EXPECT_EQ(p.ask(rule, "u", night).verdict, risk::Verdict::allow) << "9 sessions: still learning";
  commuter(p, "v", 10);
  const auto r = p.ask(rule, "v", night);
  EXPECT_EQ(r.verdict, risk::Verdict::step_up) << "10 sessions: 03:00 is outside 08:00 +- 20 min";
  EXPECT_NE(r.reason.find("time of day"), std::string::npos) << r.reason;
  EXPECT_EQ(p.ask(rule, "v", kMidnight + 10 * 24h + 8h + 5min).verdict, risk::Verdict::allow) << "the usual time, a day later";
}

TEST(RiskBehavior, TheIntervalIsJudgedJustInsideAndOutside) {
  Pile p;
  TempDir state;
  PluginHost host(kDir + "/risk-behavior.so", "{}", state.path());
  auto& rule = host.create<risk::Rule>();
  commuter(p, "u", 20);
  // The usual time of day, one day after the last session: inside. The same time of day, but
  // right after the last session (its interval 24 hours short): outside.
  const TimePoint last = kMidnight + 19 * 24h + 8h;
  EXPECT_EQ(p.ask(rule, "u", last + 24h).verdict, risk::Verdict::allow);
  const auto soon = p.ask(rule, "u", last + 2h);
  EXPECT_EQ(soon.verdict, risk::Verdict::step_up);
  EXPECT_NE(soon.reason.find("interval"), std::string::npos) << soon.reason;
}

TEST(RiskBehavior, TheCaptureJudgesTheFinalAmountAgainstThePersistedModel) {
  Pile p;
  TempDir state;
  commuter(p, "u", 20);
  const TimePoint next = kMidnight + 20 * 24h + 8h;
  {
    PluginHost host(kDir + "/risk-behavior.so", "{}", state.path());
    auto& rule = host.create<risk::Rule>();
    EXPECT_EQ(p.ask(rule, "u", next).verdict, risk::Verdict::allow) << "learns the 20 sessions";
  }
  // A new instance (a restart), and a history that can no longer be read: the capture is judged
  // on the model on disk, which needs no history.
  p.db.exec("DROP TABLE transactions");
  PluginHost host(kDir + "/risk-behavior.so", "{}", state.path());
  auto& rule = host.create<risk::Rule>();
  EXPECT_EQ(p.ask(rule, "u", next + 1h, 5200, risk::Phase::capture).verdict, risk::Verdict::allow) << "52 yuan, as usual";
  const auto big = p.ask(rule, "u", next + 1h, 25000, risk::Phase::capture);
  EXPECT_EQ(big.verdict, risk::Verdict::step_up) << "250 yuan from a 50-yuan user";
  EXPECT_NE(big.reason.find("amount z="), std::string::npos) << big.reason;
  EXPECT_EQ(p.ask(rule, "u", next + 1h).verdict, risk::Verdict::step_up) << "an authorisation needs the history to learn";
}

TEST(RiskBehavior, ItLearnsEachCapturedSessionOnce) {
  Pile p;
  TempDir state;
  PluginHost host(kDir + "/risk-behavior.so", "{min_history: 10}", state.path());
  auto& rule = host.create<risk::Rule>();
  commuter(p, "u", 5);
  for (int i = 0; i < 3; ++i) (void)p.ask(rule, "u", kMidnight + 5 * 24h + 8h);  // asked again: nothing new to learn
  commuter(p, "u", 4, kMidnight + 5 * 24h);
  EXPECT_EQ(p.ask(rule, "u", kMidnight + 9 * 24h + 3h).verdict, risk::Verdict::allow) << "9 sessions learnt, not 9 + 3 x 5";
  p.session("u", kMidnight + 9 * 24h + 8h);
  EXPECT_EQ(p.ask(rule, "u", kMidnight + 10 * 24h + 3h).verdict, risk::Verdict::step_up) << "the 10th makes it judge";
}
