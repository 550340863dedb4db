// payment-credit, the specification: charge now, pay later. A score above the threshold grants
// credit with no prepayment; at or below it the answer is a decline with a reason, or a step-up
// to the site's other methods. The bill becomes a debt (capture pending), debited automatically
// on schedule, retried with backoff across restarts, and confirmed to the core's repeated
// capture once the debit went through, exactly once at the provider. A debt unpaid past its
// deadline blocks the user's credit; the user is known on disk only by a keyed hash.
//
// The plugin runs on a manual clock (plugin_host.hpp), so a 24-hour schedule takes no time; the
// provider is a real HTTPS server with a certificate the test makes.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>

#include "https_provider.hpp"
#include "plugin_host.hpp"
#include "test_pki.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace std::chrono_literals;
using pilecore::test::PluginHost;
using pilecore::test::TempDir;

namespace {

const std::string kPlugin = std::string(PILECORE_PLUGIN_DIR) + "/payment-credit.so";

identification::Token user(const std::string& id) {
  identification::Token t;
  t.type = "credit";
  t.id = id;
  t.connector = 1;
  return t;
}

struct CreditFixture : ::testing::Test {
  TempDir dir;
  sim::TestPki pki = sim::make_test_pki(dir.path());
  sim::CreditProvider provider{pki};
  std::filesystem::path state = dir.path() / "state";

  CreditFixture() {
    provider.set_score("u-good", 720);
    provider.set_score("u-edge", 650);
    provider.set_score("u-low", 540);
  }
  std::string config(const std::string& extra = "") const {
    return "{provider_url: \"" + provider.url() + "\", provider_ca_file: \"" + pki.ca_cert.string() +
           "\", provider_timeout_ms: 3000, debit_delay_s: 3600, debit_within_h: 24, retry_first_s: 600, retry_max_s: 7200" + extra + "}";
  }

  static payment::AuthorizationResult authorize(PluginHost& host, payment::Method& m, const std::string& txn, const identification::Token& t,
                                                std::int64_t fen = 30000) {
    std::optional<payment::AuthorizationResult> out;
    const std::string op = txn + "/authorize";
    m.authorize({.operation_id = op, .transaction_id = txn, .connector = 1, .token = &t, .channel = {}, .amount_fen = fen, .deadline = {}},
                [&](payment::AuthorizationResult r) { out = std::move(r); });
    EXPECT_TRUE(host.run_until([&] { return out.has_value(); })) << "authorize never answered";
    return out.value_or(payment::AuthorizationResult{});
  }
  static payment::OperationResult capture(PluginHost& host, payment::Method& m, const std::string& txn, std::int64_t fen) {
    std::optional<payment::OperationResult> out;
    const std::string op = txn + "/capture";
    m.capture({.operation_id = op, .transaction_id = txn, .amount_fen = fen, .deadline = {}}, [&](payment::OperationResult r) { out = std::move(r); });
    EXPECT_TRUE(host.run_until([&] { return out.has_value(); })) << "capture never answered";
    return out.value_or(payment::OperationResult{});
  }
  /// Advances the clock by `d` and lets any debit it started finish.
  /// Advances the clock by `d`; each timer that falls due fires at its time, and the provider's
  /// answer to the debit it starts is handled before the clock moves on.
  static void pass(PluginHost& host, Duration d) {
    const TimePoint end = host.clock().now() + d;
    while (auto next = host.next_timer()) {
      if (*next > end) break;
      const auto before = host.posts_run();
      host.advance(*next - host.clock().now());
      EXPECT_TRUE(host.run_until([&] { return host.posts_run() > before; }, 5s)) << "the debit was not answered";
    }
    host.advance(end - host.clock().now());
  }
};

TEST_F(CreditFixture, AScoreAboveTheThresholdGrantsCreditWithoutPrepayment) {
  PluginHost host(kPlugin, config(", credit_limit_fen: 20000"), state);
  auto& m = host.create();
  EXPECT_FALSE(m.capabilities().needs_prepayment);
  const auto a = authorize(host, m, "T1", user("u-good"));
  ASSERT_EQ(a.decision, payment::Decision::approved) << a.reason;
  EXPECT_EQ(a.authorized_fen, 20000) << "capped at the credit limit";
  EXPECT_EQ(provider.debit_attempts(), 0u) << "nothing is taken up front";
}

TEST_F(CreditFixture, AtOrBelowTheThresholdTheAnswerIsADeclineWithAReason) {
  PluginHost host(kPlugin, config(), state);
  auto& m = host.create();
  for (const std::string id : {"u-edge", "u-low"}) {
    const auto a = authorize(host, m, "T-" + id, user(id));
    EXPECT_EQ(a.decision, payment::Decision::declined) << id;
    EXPECT_NE(a.reason.find("650"), std::string::npos) << a.reason;
  }
  EXPECT_EQ(authorize(host, m, "T-x", user("nobody")).reason, "no credit agreement for this user");
}

TEST_F(CreditFixture, TheSiteCanOfferItsOtherMethodsInstead) {
  PluginHost host(kPlugin, config(", step_up_methods: [face, card]"), state);
  auto& m = host.create();
  const auto a = authorize(host, m, "T1", user("u-low"));
  ASSERT_EQ(a.decision, payment::Decision::step_up);
  EXPECT_EQ(a.challenge.kind, payment::ChallengeKind::other_method);
  EXPECT_EQ(a.challenge.methods, (std::vector<std::string>{"face", "card"}));
  std::optional<payment::AuthorizationResult> answer;
  m.answer_step_up("T1/authorize", {.kind = payment::ChallengeKind::other_method, .value = {}, .confirmed = true},
                   [&](payment::AuthorizationResult r) { answer = r; });
  ASSERT_TRUE(answer.has_value());
  EXPECT_EQ(answer->decision, payment::Decision::declined) << "credit is never granted by the detour";
}

TEST_F(CreditFixture, TheDebtIsDebitedOnScheduleWithRetriesAcrossRestartsAndConfirmedOnce) {
  auto host = std::make_unique<PluginHost>(kPlugin, config(), state);
  auto* m = &host->create();
  ASSERT_EQ(authorize(*host, *m, "T1", user("u-good")).decision, payment::Decision::approved);
  const auto first = capture(*host, *m, "T1", 1234);
  EXPECT_EQ(first.state, payment::OperationState::pending) << "the bill is a debt now";

  struct stat st {};
  ASSERT_EQ(::stat((state / "credit.db").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "the debts are owner-only";

  // A restart before the debit is due: the schedule comes back from the database.
  const TimePoint t0 = TimePoint(std::chrono::sys_days(std::chrono::year(2026) / 3 / 1));
  auto restart = [&](TimePoint at) {
    host.reset();
    host = std::make_unique<PluginHost>(kPlugin, config(), state, at);
    m = &host->create();
  };
  restart(t0 + 30min);
  ASSERT_EQ(host->timers(), 1u);
  EXPECT_EQ(*host->next_timer(), t0 + 1h) << "debit_delay_s after the capture";
  pass(*host, 29min);
  EXPECT_EQ(provider.debit_attempts(), 0u);

  provider.decline_debits(2);
  pass(*host, 1min);  // due: attempt 1, declined
  EXPECT_EQ(provider.debit_attempts(), 1u);
  EXPECT_EQ(capture(*host, *m, "T1", 1234).state, payment::OperationState::pending) << "the saga asks again: still pending";
  EXPECT_EQ(*host->next_timer(), t0 + 1h + 10min) << "retry_first_s";

  restart(t0 + 1h + 5min);
  pass(*host, 5min);  // attempt 2, declined; the backoff doubles
  EXPECT_EQ(provider.debit_attempts(), 2u);
  EXPECT_EQ(*host->next_timer(), t0 + 1h + 30min);
  pass(*host, 20min);  // attempt 3 succeeds
  EXPECT_EQ(provider.debit_attempts(), 3u);
  EXPECT_EQ(host->timers(), 0u);

  const auto done = capture(*host, *m, "T1", 1234);
  EXPECT_EQ(done.state, payment::OperationState::confirmed);
  EXPECT_EQ(done.amount_fen, 1234);
  restart(t0 + 3h);
  EXPECT_EQ(capture(*host, *m, "T1", 1234).state, payment::OperationState::confirmed) << "also after a restart";
  EXPECT_EQ(provider.debited_fen("u-good"), 1234);
  EXPECT_EQ(provider.debits(), 1u) << "debited exactly once";
}

TEST_F(CreditFixture, ADebtUnpaidPastItsDeadlineBlocksTheUsersCredit) {
  PluginHost host(kPlugin, config(), state);
  auto& m = host.create();
  ASSERT_EQ(authorize(host, m, "T1", user("u-good")).decision, payment::Decision::approved);
  ASSERT_EQ(capture(host, m, "T1", 5000).state, payment::OperationState::pending);
  provider.decline_debits(1000);
  pass(host, 23h);
  EXPECT_GE(provider.debit_attempts(), 5u);
  EXPECT_EQ(authorize(host, m, "T2", user("u-good")).decision, payment::Decision::approved) << "not overdue yet";

  pass(host, 2h);
  const std::size_t before = provider.requests("/v1/credit/score");
  const auto blocked = authorize(host, m, "T3", user("u-good"));
  EXPECT_EQ(blocked.decision, payment::Decision::declined);
  EXPECT_NE(blocked.reason.find("unpaid"), std::string::npos) << blocked.reason;
  EXPECT_EQ(provider.requests("/v1/credit/score"), before) << "refused without asking the provider";
  EXPECT_EQ(authorize(host, m, "T4", user("u-edge")).reason.find("unpaid"), std::string::npos) << "other users are not blocked";

  // The user is on disk only as a keyed hash.
  host.destroy();
  for (const char* f : {"credit.db", "credit.db-wal"}) {
    std::ifstream in(state / f, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (std::string(f) == "credit.db") {
      EXPECT_FALSE(bytes.empty());  // (the WAL is checkpointed away on close)
    }
    EXPECT_EQ(bytes.find("u-good"), std::string::npos) << f;
  }

  // Paid at last: credit again.
  provider.decline_debits(0);
  auto& again = host.create();
  pass(host, 2h);
  EXPECT_EQ(capture(host, again, "T1", 5000).state, payment::OperationState::confirmed);
  EXPECT_EQ(authorize(host, again, "T5", user("u-good")).decision, payment::Decision::approved);
}

TEST_F(CreditFixture, AProviderCertificateFromAnotherCaIsRefused) {
  TempDir other;
  const auto stranger = sim::make_test_pki(other.path(), "other", "some other CA");
  std::string cfg = config();
  cfg.replace(cfg.find(pki.ca_cert.string()), pki.ca_cert.string().size(), stranger.ca_cert.string());
  PluginHost host(kPlugin, cfg, state);
  auto& m = host.create();
  const auto a = authorize(host, m, "T1", user("u-good"));
  EXPECT_EQ(a.decision, payment::Decision::unavailable) << "the channel failed, not the payer";
  EXPECT_NE(a.reason.find("certificate"), std::string::npos) << a.reason;
  EXPECT_EQ(provider.requests(), 0u);
}

TEST_F(CreditFixture, ARefundBeforeTheDebitLowersTheDebt) {
  PluginHost host(kPlugin, config(), state);
  auto& m = host.create();
  ASSERT_EQ(authorize(host, m, "T1", user("u-good")).decision, payment::Decision::approved);
  ASSERT_EQ(capture(host, m, "T1", 3000).state, payment::OperationState::pending);
  std::optional<payment::OperationResult> r;
  m.refund({.operation_id = "T1/refund/1", .transaction_id = "T1", .amount_fen = 1000, .reason = "short", .deadline = {}},
           [&](payment::OperationResult x) { r = x; });
  ASSERT_TRUE(host.run_until([&] { return r.has_value(); }));
  EXPECT_EQ(r->state, payment::OperationState::confirmed);
  pass(host, 1h);
  EXPECT_EQ(provider.debited_fen("u-good"), 2000);
}

}  // namespace
