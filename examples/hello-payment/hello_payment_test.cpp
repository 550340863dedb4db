// hello-payment's unit tests, on the SDK's fake host (pilecore/testing/fake_host.hpp): the plugin
// is created through its descriptor as the core creates it, its acquirer thread runs for real,
// and the test plays the core's strand. What the plugin promises, call by call.
#include <gtest/gtest.h>

#include <pilecore/testing/fake_host.hpp>

#include <map>
#include <string>

namespace {

using namespace pilecore;
using testkit::FakeHost;
using testkit::Instance;

const identification::Token kCard{.type = "card", .id = "0457AB12", .connector = 1, .evidence = {}, .exchange = nullptr};

class HelloPaymentTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(method.start().ok()); }
  void TearDown() override {
    for (const auto& v : host.violations()) ADD_FAILURE() << v;
  }

  payment::AuthorizationResult authorize(const std::string& txn, std::int64_t fen, const identification::Token* token = &kCard) {
    const std::string op = txn + "/authorize";
    auto answer = host.answer<payment::AuthorizationResult>();
    method->authorize({.operation_id = op, .transaction_id = txn, .connector = 1, .token = token, .channel = {}, .amount_fen = fen,
                       .deadline = host.clock().now() + std::chrono::seconds(30), .pin_required = false},
                      answer.callback());
    return wait(answer);
  }
  payment::AuthorizationResult answer_pin(const std::string& txn, const std::string& pin) {
    auto answer = host.answer<payment::AuthorizationResult>();
    method->answer_step_up(txn + "/authorize", {.kind = payment::ChallengeKind::pin, .value = pin, .confirmed = false}, answer.callback());
    return wait(answer);
  }
  payment::OperationResult capture(const std::string& txn, std::int64_t fen) {
    auto answer = host.answer<payment::OperationResult>();
    method->capture({.operation_id = txn + "/capture", .transaction_id = txn, .amount_fen = fen, .deadline = {}}, answer.callback());
    return wait(answer);
  }
  payment::OperationResult refund(const std::string& txn, int n, std::int64_t fen) {
    auto answer = host.answer<payment::OperationResult>();
    const std::string op = txn + "/refund/" + std::to_string(n);
    method->refund({.operation_id = op, .transaction_id = txn, .amount_fen = fen, .reason = "test", .deadline = {}}, answer.callback());
    return wait(answer);
  }
  template <class R>
  R wait(const testkit::Answer<R>& answer) {
    EXPECT_TRUE(host.run_until([&] { return answer.answered(); })) << "never answered";
    EXPECT_EQ(answer.count(), 1u) << "answered more than once";
    return answer.value();
  }

  explicit HelloPaymentTest(const std::map<std::string, std::string>& config = {{"opening_balance_fen", "30000"},
                                                                              {"pin_above_fen", "5000"},
                                                                              {"pin", "2468"},
                                                                              {"latency_ms", "0"}})
      : host(testkit::compiled_in_plugin(), config) {}

  FakeHost host;
  Instance<payment::Method> method{testkit::compiled_in_plugin(), host};
};

TEST_F(HelloPaymentTest, AHoldIsApprovedCapturedAndRefundedInPartsNeverAboveTheCapture) {
  const auto hold = authorize("T-1", 4000);
  ASSERT_EQ(hold.decision, payment::Decision::approved) << hold.reason;
  EXPECT_EQ(hold.authorized_fen, 4000);

  const auto taken = capture("T-1", 3500);
  EXPECT_EQ(taken.state, payment::OperationState::confirmed);
  EXPECT_EQ(taken.amount_fen, 3500);

  EXPECT_EQ(refund("T-1", 1, 1000).state, payment::OperationState::confirmed);
  EXPECT_EQ(refund("T-1", 2, 500).state, payment::OperationState::confirmed);
  const auto too_much = refund("T-1", 3, 2001);
  EXPECT_EQ(too_much.state, payment::OperationState::failed);
  EXPECT_NE(too_much.reason.find("2000 fen"), std::string::npos) << too_much.reason;
  EXPECT_FALSE(host.states().empty());
  EXPECT_EQ(host.states().front().state, "up");
}

TEST_F(HelloPaymentTest, AboveTheLimitAPinIsAskedAndOnlyTheRightOneApproves) {
  const auto asked = authorize("T-1", 8000);
  ASSERT_EQ(asked.decision, payment::Decision::step_up);
  EXPECT_EQ(asked.challenge.kind, payment::ChallengeKind::pin);
  EXPECT_GT(asked.challenge.deadline, host.clock().now());

  EXPECT_EQ(answer_pin("T-1", "1111").decision, payment::Decision::declined);
  EXPECT_EQ(answer_pin("T-1", "2468").decision, payment::Decision::declined) << "a wrong PIN ends the challenge";

  ASSERT_EQ(authorize("T-2", 8000).decision, payment::Decision::step_up);
  const auto held = answer_pin("T-2", "2468");
  EXPECT_EQ(held.decision, payment::Decision::approved);
  EXPECT_EQ(held.authorized_fen, 8000);
  EXPECT_FALSE(host.logged("2468")) << "the PIN is in the log";
  EXPECT_FALSE(host.logged("0457AB12")) << "the card id is in the log";
}

/// A host of its own with a small balance and no PIN, on the fixture's helpers.
class SmallAccountTest : public HelloPaymentTest {
 protected:
  SmallAccountTest() : HelloPaymentTest({{"opening_balance_fen", "6000"}, {"latency_ms", "0"}}) {}
};

TEST_F(SmallAccountTest, ARepeatedOperationIdAnswersTheFirstOutcomeAndDebitsOnce) {
  ASSERT_EQ(authorize("T-1", 3000).decision, payment::Decision::approved);
  EXPECT_EQ(capture("T-1", 3000).amount_fen, 3000);
  EXPECT_EQ(capture("T-1", 3000).amount_fen, 3000);  // the core asks again after a restart
  // 3000 left, not 0: the next hold gets exactly that.
  const auto next = authorize("T-2", 5000);
  ASSERT_EQ(next.decision, payment::Decision::approved) << next.reason;
  EXPECT_EQ(next.authorized_fen, 3000);
}

TEST_F(SmallAccountTest, ABalanceBelowTheAmountIsAPartialHoldAnEmptyAccountAndNoCardADecline) {
  ASSERT_EQ(authorize("T-1", 5000).decision, payment::Decision::approved);
  ASSERT_EQ(capture("T-1", 5000).state, payment::OperationState::confirmed);
  // 1000 fen left: held, and the core stops charging when the bill reaches it.
  const auto partial = authorize("T-2", 5000);
  ASSERT_EQ(partial.decision, payment::Decision::approved);
  EXPECT_EQ(partial.authorized_fen, 1000);
  ASSERT_EQ(capture("T-2", 1000).state, payment::OperationState::confirmed);
  EXPECT_EQ(authorize("T-3", 100).decision, payment::Decision::declined);
  EXPECT_EQ(authorize("T-4", 100, nullptr).decision, payment::Decision::declined);
}

TEST(HelloPayment, ACaptureThatSettlesLaterIsPendingOnceThenConfirmedUnderTheSameId) {
  FakeHost host(testkit::compiled_in_plugin(), {{"settle_later", "true"}, {"latency_ms", "0"}});
  Instance<payment::Method> method(testkit::compiled_in_plugin(), host);
  ASSERT_TRUE(method.start().ok());
  auto hold = host.answer<payment::AuthorizationResult>();
  method->authorize({.operation_id = "T-1/authorize", .transaction_id = "T-1", .connector = 1, .token = &kCard, .channel = {}, .amount_fen = 2000,
                     .deadline = {}, .pin_required = false},
                    hold.callback());
  ASSERT_TRUE(host.run_until([&] { return hold.answered(); }));
  ASSERT_EQ(hold.value().decision, payment::Decision::approved);
  for (auto expected : {payment::OperationState::pending, payment::OperationState::confirmed, payment::OperationState::confirmed}) {
    auto taken = host.answer<payment::OperationResult>();
    method->capture({.operation_id = "T-1/capture", .transaction_id = "T-1", .amount_fen = 1500, .deadline = {}}, taken.callback());
    ASSERT_TRUE(host.run_until([&] { return taken.answered(); }));
    EXPECT_EQ(taken.value().state, expected);
  }
  EXPECT_TRUE(host.violations().empty());
}

TEST(HelloPayment, StopAnswersEveryCallStillQueued) {
  FakeHost host(testkit::compiled_in_plugin(), {{"opening_balance_fen", "9000"}, {"latency_ms", "60000"}});
  auto answer = host.answer<payment::AuthorizationResult>();
  {
    Instance<payment::Method> method(testkit::compiled_in_plugin(), host);
    ASSERT_TRUE(method.start().ok());
    method->authorize({.operation_id = "T-1/authorize", .transaction_id = "T-1", .connector = 1, .token = &kCard, .channel = {}, .amount_fen = 2000,
                       .deadline = {}, .pin_required = false},
                      answer.callback());
    host.run_posted();
    EXPECT_FALSE(answer.answered()) << "the acquirer takes a minute";
    method.stop();
    ASSERT_EQ(answer.count(), 1u) << "stop() must answer what is in flight, once";
    EXPECT_EQ(answer.value().decision, payment::Decision::declined);
  }
  EXPECT_TRUE(host.violations().empty());
}

TEST(HelloPayment, TheBookIsKeptInTheStateDirectoryAcrossARestart) {
  FakeHost first(testkit::compiled_in_plugin(), {{"opening_balance_fen", "9000"}, {"latency_ms", "0"}});
  const std::string dir(first.state_dir());
  auto run = [&](FakeHost& host, const std::string& txn, std::int64_t fen) {
    Instance<payment::Method> method(testkit::compiled_in_plugin(), host);
    EXPECT_TRUE(method.start().ok());
    auto hold = host.answer<payment::AuthorizationResult>();
    method->authorize({.operation_id = txn + "/authorize", .transaction_id = txn, .connector = 1, .token = &kCard, .channel = {}, .amount_fen = fen,
                       .deadline = {}, .pin_required = false},
                      hold.callback());
    EXPECT_TRUE(host.run_until([&] { return hold.answered(); }));
    auto taken = host.answer<payment::OperationResult>();
    method->capture({.operation_id = txn + "/capture", .transaction_id = txn, .amount_fen = hold.value().authorized_fen, .deadline = {}},
                    taken.callback());
    EXPECT_TRUE(host.run_until([&] { return taken.answered(); }));
    return taken.value().amount_fen;
  };
  EXPECT_EQ(run(first, "T-1", 6000), 6000);
  FakeHost second(testkit::compiled_in_plugin(), {{"opening_balance_fen", "9000"}, {"latency_ms", "0"}}, {.state_dir = dir});
  EXPECT_EQ(run(second, "T-2", 6000), 3000) << "the second instance forgot the first one's debit";
}

TEST(HelloPayment, TheFakeHostRefusesAConfigurationTheCoreWouldRefuse) {
  EXPECT_THROW(FakeHost(testkit::compiled_in_plugin(), {{"latency", "0"}}), std::invalid_argument);
  EXPECT_THROW(FakeHost(testkit::compiled_in_plugin(), {{"latency_ms", "-1"}}), std::invalid_argument);
  EXPECT_THROW(FakeHost(testkit::compiled_in_plugin(), {{"settle_later", "yes"}}), std::invalid_argument);
}

}  // namespace
