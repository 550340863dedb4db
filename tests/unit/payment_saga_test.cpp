// The payment saga on a manual clock: a real SQLite database and storage thread, a fake payment
// method whose answers the test gives (or withholds), and time that moves only when the test
// says so. The specification of core/payment/payment_saga.hpp.
#include <gtest/gtest.h>

#include <deque>
#include <mutex>
#include <optional>
#include <set>

#include "money_operations.hpp"
#include "payment_saga.hpp"
#include "router.hpp"
#include "scheduler.hpp"
#include "statement.hpp"
#include "store_worker.hpp"
#include "test_support.hpp"

namespace pilecore::core {
namespace {

using namespace std::chrono_literals;
using test::TempDir;

/// A payment method that keeps every callback until the test answers it.
class FakeMethod final : public payment::Method {
 public:
  Status start() noexcept override { return {}; }
  void stop() noexcept override {}
  [[nodiscard]] payment::Capabilities capabilities() const noexcept override { return {}; }
  void authorize(const payment::AuthorizationRequest& r, payment::AuthorizationCallback done) noexcept override {
    authorizations.push_back({std::string(r.operation_id), r.amount_fen, done, std::string(r.channel)});
    if (answer_now) done(*answer_now);  // inside the call, as the SDK allows
  }
  void answer_step_up(std::string_view operation_id, const payment::StepUpAnswer& a, payment::AuthorizationCallback done) noexcept override {
    step_up_answers.push_back({std::string(operation_id), a.value, std::move(done)});
  }
  void capture(const payment::CaptureRequest& r, payment::OperationCallback done) noexcept override {
    operations.push_back({"capture", std::string(r.operation_id), r.amount_fen, done, {}});
    if (operation_now) done(*operation_now);
  }
  void cancel(const payment::VoidRequest& r, payment::OperationCallback done) noexcept override {
    operations.push_back({"cancel", std::string(r.operation_id), 0, std::move(done), std::string(r.authorization_id) + "@" + std::string(r.channel)});
  }
  void refund(const payment::RefundRequest& r, payment::OperationCallback done) noexcept override {
    operations.push_back({"refund", std::string(r.operation_id), r.amount_fen, done, {}});
    if (operation_now) done(*operation_now);
  }
  void increment(const payment::IncrementRequest& r, payment::AuthorizationCallback done) noexcept override {
    increments.push_back({std::string(r.operation_id), std::string(r.authorization_id), r.amount_fen, r.total_fen, std::move(done)});
  }
  struct Increment {
    std::string op;
    std::string authorization;
    std::int64_t fen;
    std::int64_t total;
    payment::AuthorizationCallback done;
  };
  std::vector<Increment> increments;

  struct Auth {
    std::string op;
    std::int64_t fen;
    payment::AuthorizationCallback done;
    std::string channel;
  };
  struct StepUp {
    std::string op;
    std::string pin;
    payment::AuthorizationCallback done;
  };
  struct Op {
    std::string call;
    std::string op;
    std::int64_t fen;
    payment::OperationCallback done;
    std::string released = {};  ///< cancel: "<authorization id>@<channel>"
  };
  /// Set: each authorisation (capture, refund) is answered with it before the call returns.
  std::optional<payment::AuthorizationResult> answer_now;
  std::optional<payment::OperationResult> operation_now;
  std::vector<Auth> authorizations;
  std::vector<StepUp> step_up_answers;
  std::vector<Op> operations;
};

payment::AuthorizationResult approve(std::int64_t fen) { return {.decision = payment::Decision::approved, .authorized_fen = fen, .reference = "REF-1", .reason = {}, .challenge = {}}; }
payment::OperationResult confirmed(std::int64_t fen) { return {.state = payment::OperationState::confirmed, .amount_fen = fen, .reference = "REF-1", .reason = {}}; }
payment::OperationResult pending() { return {.state = payment::OperationState::pending, .amount_fen = 0, .reference = "REF-1", .reason = "settling"}; }

const TimePoint kStart = TimePoint{std::chrono::duration_cast<Duration>(std::chrono::sys_days{std::chrono::year{2026} / 12 / 1}.time_since_epoch())};

class SagaTest : public ::testing::Test {
 protected:
  SagaTest() { open(); }
  ~SagaTest() override { close(); }

  void open() {
    db = std::make_unique<Database>(dir.path() / "pilecore.db");
    store = std::make_unique<StoreWorker>(*db, [this](std::function<void()> fn) {
      std::lock_guard lock(mutex);
      posted.push_back(std::move(fn));
    });
    reader = std::make_unique<Database>(dir.path() / "pilecore.db", Database::ReadOnly{});
    PaymentSaga::Hooks hooks;
    hooks.method = [this](std::string_view name) -> payment::Method* { return name == "pay" && running ? &method : nullptr; };
    hooks.settled = [this](const MoneyOperation& op) { settled.push_back(op); };
    saga = std::make_unique<PaymentSaga>(*store, reader->handle(), clock, clock,
                                         PaymentSaga::Settings{.authorize_timeout = 30s, .operation_timeout = 30s, .retry_first = 5s, .retry_max = 60s},
                                         std::move(hooks));
  }
  /// What a kill -9 leaves: the saga and its threads gone, the database as committed.
  void close() {
    saga.reset();
    if (store) store->stop();
    pump();
    store.reset();
    reader.reset();
    db.reset();
  }
  /// Runs what the storage thread posted to the "strand" until nothing more comes.
  void pump() {
    for (;;) {
      if (store) store->run_sync([](Database&) {});  // every earlier work committed and its done posted
      std::deque<std::function<void()>> now;
      {
        std::lock_guard lock(mutex);
        now.swap(posted);
      }
      if (now.empty()) return;
      for (auto& fn : now) fn();
    }
  }
  void advance(Duration d) {
    clock.advance(d);
    pump();
  }
  std::optional<MoneyOperation> op(const std::string& id) {
    pump();
    return operations::find(reader->handle(), id);
  }
  void write_transaction(const std::string& txn) {
    store->submit(
        [txn](Database& d) {
          Stmt(d, "INSERT INTO transactions(id, connector, method, user_token, authorized_fen, status, started_ms, meter_start_wh) "
                  "VALUES(?, 1, 'pay', 'card:1', 5000, 'closed', 0, 0)")
              .bind(1, txn)
              .step();
        },
        [](const Status& st) { ASSERT_TRUE(st.ok()) << st.message(); });
    pump();
  }

  TempDir dir;
  ManualScheduler clock{kStart};
  FakeMethod method;
  bool running = true;
  std::mutex mutex;
  std::deque<std::function<void()>> posted;
  std::unique_ptr<Database> db;
  std::unique_ptr<StoreWorker> store;
  std::unique_ptr<Database> reader;
  std::unique_ptr<PaymentSaga> saga;
  std::vector<MoneyOperation> settled;
};

const identification::Token kCard{.type = "card", .id = "04A1", .connector = 1, .evidence = {}, .exchange = nullptr};

TEST_F(SagaTest, TheIntentIsOnDiskBeforeThePluginIsAskedAndTheOutcomeAfter) {
  std::optional<PaymentSaga::Authorization> result;
  saga->authorize("T-1", 1, "pay", kCard, 5000, {}, [&](PaymentSaga::Authorization a) { result = a; });
  EXPECT_TRUE(method.authorizations.empty()) << "asked before the intent committed";
  pump();
  ASSERT_EQ(method.authorizations.size(), 1u);
  EXPECT_EQ(op("T-1/authorize")->state, OperationStateRow::intent);
  method.authorizations[0].done(approve(5000));
  pump();
  ASSERT_TRUE(result);
  EXPECT_EQ(result->decision, payment::Decision::approved);
  const auto row = op("T-1/authorize");
  EXPECT_EQ(row->state, OperationStateRow::confirmed);
  EXPECT_EQ(row->amount_fen, 5000);
  EXPECT_EQ(row->reference, "REF-1");
}

TEST_F(SagaTest, APluginThatNeverAnswersCannotHoldTheAuthorisation) {
  std::optional<PaymentSaga::Authorization> result;
  saga->authorize("T-1", 1, "pay", kCard, 5000, {}, [&](PaymentSaga::Authorization a) { result = a; });
  pump();
  advance(29s);
  EXPECT_FALSE(result) << "answered before the deadline";
  advance(1s);
  ASSERT_TRUE(result);
  EXPECT_TRUE(result->timed_out);
  EXPECT_EQ(result->decision, payment::Decision::declined);
  EXPECT_EQ(op("T-1/authorize")->state, OperationStateRow::failed);
  // Released, since the acquirer may still approve it.
  ASSERT_EQ(method.operations.size(), 1u);
  EXPECT_EQ(method.operations[0].call, "cancel");
  EXPECT_EQ(method.operations[0].op, "T-1/void");
  // The late approval changes nothing.
  method.authorizations[0].done(approve(5000));
  pump();
  EXPECT_EQ(op("T-1/authorize")->state, OperationStateRow::failed);
  method.operations[0].done(confirmed(5000));
  pump();
  EXPECT_EQ(op("T-1/void")->state, OperationStateRow::confirmed);
}

// The SDK lets a plugin call its callback before the call returns (docs/plugin-guide.md,
// "Callbacks are answered exactly once"): the answer counts as any other, nothing waits for the
// deadline, and nothing is recorded twice.
TEST_F(SagaTest, AnAuthorisationAnsweredInsideTheCallIsTakenAtOnce) {
  method.answer_now = approve(5000);
  std::optional<PaymentSaga::Authorization> result;
  saga->authorize("T-1", 1, "pay", kCard, 5000, {}, [&](PaymentSaga::Authorization a) { result = a; });
  pump();
  ASSERT_TRUE(result);
  EXPECT_EQ(result->decision, payment::Decision::approved);
  EXPECT_FALSE(result->timed_out);
  EXPECT_EQ(op("T-1/authorize")->state, OperationStateRow::confirmed);
  advance(60s);  // the deadline it was given passes: nothing changes, nothing is released
  EXPECT_EQ(op("T-1/authorize")->state, OperationStateRow::confirmed);
  EXPECT_TRUE(method.operations.empty()) << "a void was sent for an approval that counted";
}

TEST_F(SagaTest, CapturesAndRefundsAnsweredInsideTheCallAreFinalAtOnce) {
  write_transaction("T-1");
  method.operation_now = confirmed(4321);
  const MoneyOperation intent = saga->capture_intent("T-1", "pay", 4321);
  store->submit([intent](Database& d) { operations::insert_intent(d, intent); }, [](const Status&) {});
  pump();
  std::vector<MoneyOperation> outcomes;
  saga->execute(intent, [&](const MoneyOperation& o) { outcomes.push_back(o); });
  method.operation_now = confirmed(300);
  saga->refund("T-1", "pay", 300, "short charge", [&](const MoneyOperation& o) { outcomes.push_back(o); });
  pump();
  ASSERT_EQ(outcomes.size(), 2u);
  EXPECT_EQ(op("T-1/capture")->state, OperationStateRow::confirmed);
  EXPECT_EQ(op("T-1/capture")->amount_fen, 4321);
  EXPECT_EQ(op("T-1/refund/1")->state, OperationStateRow::confirmed);
  advance(120s);
  EXPECT_EQ(method.operations.size(), 2u) << "an operation answered in the call was asked again";
}

// Exactly once is the plugin's duty; a second answer (a bug) must not be a second outcome.
TEST_F(SagaTest, ASecondAnswerToOneCallIsIgnored) {
  std::optional<PaymentSaga::Authorization> result;
  int results = 0;
  saga->authorize("T-1", 1, "pay", kCard, 5000, {}, [&](PaymentSaga::Authorization a) {
    result = a;
    ++results;
  });
  pump();
  ASSERT_EQ(method.authorizations.size(), 1u);
  method.authorizations[0].done(approve(5000));
  method.authorizations[0].done({.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {}, .reason = "again", .challenge = {}});
  pump();
  EXPECT_EQ(results, 1);
  ASSERT_TRUE(result);
  EXPECT_EQ(result->decision, payment::Decision::approved);
  EXPECT_EQ(op("T-1/authorize")->state, OperationStateRow::confirmed);
}

TEST_F(SagaTest, AnApprovalAboveTheAmountAskedHoldsOnlyTheAmountAsked) {
  std::optional<PaymentSaga::Authorization> result;
  saga->authorize("T-1", 1, "pay", kCard, 5000, {}, [&](PaymentSaga::Authorization a) { result = a; });
  pump();
  method.authorizations[0].done(approve(9000));
  pump();
  ASSERT_TRUE(result);
  EXPECT_EQ(result->authorized_fen, 5000);
}

TEST_F(SagaTest, AStepUpIsRelayedAndItsAnswerDecides) {
  std::optional<payment::Challenge> challenge;
  std::optional<PaymentSaga::Authorization> result;
  saga->authorize("T-1", 1, "pay", kCard, 5000, [&](const payment::Challenge& c) { challenge = c; }, [&](PaymentSaga::Authorization a) { result = a; });
  pump();
  EXPECT_FALSE(saga->answer_step_up("T-1", {.kind = payment::ChallengeKind::pin, .value = "1234", .confirmed = false}).ok()) << "nothing waits yet";
  method.authorizations[0].done({.decision = payment::Decision::step_up, .authorized_fen = 0, .reference = {}, .reason = "PIN",
                                 .challenge = {.kind = payment::ChallengeKind::pin, .prompt = "enter your PIN", .deadline = clock.now() + 60s, .methods = {}}});
  pump();
  ASSERT_TRUE(challenge);
  EXPECT_EQ(challenge->prompt, "enter your PIN");
  EXPECT_FALSE(result);
  EXPECT_TRUE(saga->awaiting_step_up("T-1"));
  EXPECT_EQ(op("T-1/authorize")->state, OperationStateRow::pending);
  ASSERT_TRUE(saga->answer_step_up("T-1", {.kind = payment::ChallengeKind::pin, .value = "1234", .confirmed = false}).ok());
  ASSERT_EQ(method.step_up_answers.size(), 1u);
  EXPECT_EQ(method.step_up_answers[0].pin, "1234") << "the answer comes back to the plugin";
  EXPECT_EQ(method.step_up_answers[0].op, "T-1/authorize");
  method.step_up_answers[0].done(approve(5000));
  pump();
  ASSERT_TRUE(result);
  EXPECT_EQ(result->decision, payment::Decision::approved);
  EXPECT_EQ(op("T-1/authorize")->state, OperationStateRow::confirmed);
}

TEST_F(SagaTest, AStepUpRefusedIsDeclinedAndReleased) {
  std::optional<PaymentSaga::Authorization> result;
  saga->authorize("T-1", 1, "pay", kCard, 5000, [](const payment::Challenge&) {}, [&](PaymentSaga::Authorization a) { result = a; });
  pump();
  method.authorizations[0].done({.decision = payment::Decision::step_up, .authorized_fen = 0, .reference = {}, .reason = {},
                                 .challenge = {.kind = payment::ChallengeKind::pin, .prompt = "PIN", .deadline = clock.now() + 60s, .methods = {}}});
  pump();
  ASSERT_TRUE(saga->answer_step_up("T-1", {.kind = payment::ChallengeKind::pin, .value = "0000", .confirmed = false}).ok());
  method.step_up_answers[0].done({.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {}, .reason = "wrong PIN", .challenge = {}});
  pump();
  ASSERT_TRUE(result);
  EXPECT_EQ(result->decision, payment::Decision::declined);
  EXPECT_EQ(result->reason, "wrong PIN");
  EXPECT_EQ(op("T-1/authorize")->state, OperationStateRow::failed);
  ASSERT_FALSE(method.operations.empty());
  EXPECT_EQ(method.operations.back().op, "T-1/void");
}

TEST_F(SagaTest, AStepUpNotCompletedInTimeEndsTheAuthorisation) {
  std::optional<PaymentSaga::Authorization> result;
  saga->authorize("T-1", 1, "pay", kCard, 5000, [](const payment::Challenge&) {}, [&](PaymentSaga::Authorization a) { result = a; });
  pump();
  method.authorizations[0].done({.decision = payment::Decision::step_up, .authorized_fen = 0, .reference = {}, .reason = {},
                                 .challenge = {.kind = payment::ChallengeKind::app_confirmation, .prompt = "confirm in the app",
                                               .deadline = clock.now() + 90s, .methods = {}}});
  pump();
  advance(89s);
  EXPECT_FALSE(result);
  advance(1s);
  ASSERT_TRUE(result);
  EXPECT_TRUE(result->timed_out);
  EXPECT_EQ(result->reason, "the step-up was not completed in time");
  EXPECT_FALSE(saga->answer_step_up("T-1", {.kind = payment::ChallengeKind::app_confirmation, .value = {}, .confirmed = true}).ok()) << "too late";
  EXPECT_EQ(op("T-1/authorize")->state, OperationStateRow::failed);
}

TEST_F(SagaTest, APendingCaptureIsAskedAgainUntilItIsConfirmed) {
  write_transaction("T-1");
  const MoneyOperation intent = saga->capture_intent("T-1", "pay", 4321);
  store->submit([intent](Database& d) { operations::insert_intent(d, intent); }, [](const Status&) {});
  pump();
  std::vector<MoneyOperation> first;
  saga->execute(intent, [&](const MoneyOperation& o) { first.push_back(o); });
  ASSERT_EQ(method.operations.size(), 1u);
  method.operations[0].done(pending());
  pump();
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].state, OperationStateRow::pending) << "the first answer is pending, not 0 captured";
  EXPECT_EQ(op("T-1/capture")->state, OperationStateRow::pending);
  EXPECT_EQ(op("T-1/capture")->attempts, 1);
  advance(4999ms);
  EXPECT_EQ(method.operations.size(), 1u) << "asked again before the backoff";
  advance(1ms);
  ASSERT_EQ(method.operations.size(), 2u);
  EXPECT_EQ(method.operations[1].op, "T-1/capture") << "the same operation id";
  method.operations[1].done(pending());
  pump();
  advance(10s);  // doubled
  ASSERT_EQ(method.operations.size(), 3u);
  method.operations[2].done(confirmed(4321));
  pump();
  const auto row = op("T-1/capture");
  EXPECT_EQ(row->state, OperationStateRow::confirmed);
  EXPECT_EQ(row->amount_fen, 4321);
  EXPECT_EQ(row->attempts, 3);
  ASSERT_EQ(settled.size(), 1u);
  EXPECT_EQ(settled[0].id, "T-1/capture");
}

TEST_F(SagaTest, ACaptureWithNoAnswerOrNoPluginStaysPendingAndIsRetried) {
  write_transaction("T-1");
  const MoneyOperation intent = saga->capture_intent("T-1", "pay", 1000);
  store->submit([intent](Database& d) { operations::insert_intent(d, intent); }, [](const Status&) {});
  pump();
  saga->execute(intent, {});
  advance(30s);  // no answer: the deadline makes it pending
  EXPECT_EQ(op("T-1/capture")->state, OperationStateRow::pending);
  running = false;  // the payment plugin failed
  advance(5s);
  EXPECT_EQ(op("T-1/capture")->state, OperationStateRow::pending);
  EXPECT_EQ(op("T-1/capture")->amount_fen, 1000) << "never recorded as 0 captured";
  running = true;
  advance(10s);
  ASSERT_EQ(method.operations.size(), 2u);
  method.operations[0].done(confirmed(1000));  // the first, late: ignored
  pump();
  EXPECT_EQ(op("T-1/capture")->state, OperationStateRow::pending);
  method.operations[1].done(confirmed(1000));
  pump();
  EXPECT_EQ(op("T-1/capture")->state, OperationStateRow::confirmed);
}

TEST_F(SagaTest, RefundsArePartialRepeatedAndEachHasItsOwnId) {
  write_transaction("T-1");
  std::vector<MoneyOperation> done;
  saga->refund("T-1", "pay", 300, "short charge", [&](const MoneyOperation& o) { done.push_back(o); });
  saga->refund("T-1", "pay", 200, "goodwill", [&](const MoneyOperation& o) { done.push_back(o); });
  pump();
  ASSERT_EQ(method.operations.size(), 2u);
  EXPECT_EQ(method.operations[0].op, "T-1/refund/1");
  EXPECT_EQ(method.operations[1].op, "T-1/refund/2");
  EXPECT_EQ(method.operations[0].fen, 300);
  method.operations[0].done(confirmed(300));
  method.operations[1].done(confirmed(200));
  pump();
  ASSERT_EQ(done.size(), 2u);
  std::int64_t refunded = 0;
  for (const auto& o : operations::of_transaction(reader->handle(), "T-1")) {
    if (o.kind == OperationKind::refund && o.state == OperationStateRow::confirmed) refunded += o.amount_fen;
  }
  EXPECT_EQ(refunded, 500);
}

TEST_F(SagaTest, AfterAKillEveryOperationWithoutAnOutcomeIsResumed) {
  write_transaction("T-cap");
  write_transaction("T-ref");
  // T-auth: authorised, killed before an answer. T-cap: capture intent. T-ref: refund pending.
  // T-void: release intent. T-orphan: approved, but its session never started.
  saga->authorize("T-auth", 1, "pay", kCard, 5000, {}, [](PaymentSaga::Authorization) {});
  saga->authorize("T-orphan", 1, "pay", kCard, 5000, {}, [](PaymentSaga::Authorization) {});
  const MoneyOperation cap = saga->capture_intent("T-cap", "pay", 700);
  store->submit([cap](Database& d) { operations::insert_intent(d, cap); }, [](const Status&) {});
  saga->refund("T-ref", "pay", 100, "", {});
  pump();
  method.authorizations[1].done(approve(5000));  // T-orphan approved
  for (auto& o : method.operations) {
    if (o.op == "T-ref/refund/1") o.done(pending());
  }
  pump();
  EXPECT_EQ(op("T-ref/refund/1")->state, OperationStateRow::pending);
  close();  // the kill

  method = FakeMethod{};
  open();
  saga->resume();
  pump();
  EXPECT_EQ(op("T-auth/authorize")->state, OperationStateRow::failed) << "an interrupted authorisation is ended";
  std::set<std::string> asked;
  for (const auto& o : method.operations) asked.insert(o.op);
  EXPECT_TRUE(asked.count("T-auth/void")) << "and released";
  EXPECT_TRUE(asked.count("T-orphan/void")) << "a hold whose session never started is released";
  EXPECT_TRUE(asked.count("T-cap/capture")) << "a capture intent is asked";
  EXPECT_TRUE(asked.count("T-ref/refund/1")) << "a pending refund is asked again";
  EXPECT_TRUE(method.authorizations.empty()) << "an authorisation is never repeated";
  for (auto& o : method.operations) o.done(confirmed(o.fen));
  pump();
  for (const auto& id : {"T-auth/void", "T-orphan/void", "T-cap/capture", "T-ref/refund/1"}) {
    EXPECT_EQ(op(id)->state, OperationStateRow::confirmed) << id;
  }
  EXPECT_TRUE(operations::unfinished(reader->handle()).empty());
}

// --- routing: the router's channels, failover on an error or silence, never on a decline ---------

payment::AuthorizationResult unavailable(const std::string& why) {
  return {.decision = payment::Decision::unavailable, .authorized_fen = 0, .reference = {}, .reason = why, .challenge = {}};
}

class RoutedSagaTest : public SagaTest {
 protected:
  RoutedSagaTest() : router(rule(), {{"pay", {{"wechat-sp", 3000}, {"alipay-sp", 3800}, {"unionpay", 5500}}}}) { saga->set_router(&router); }
  static RoutingRule rule() {
    RoutingRule r;
    r.probe_every = 0;
    r.channel_timeout = 10s;
    return r;
  }
  Router router;
};

TEST_F(RoutedSagaTest, AChannelErrorFailsOverToTheNextChannelAsAnAuthorisationOfItsOwn) {
  std::optional<PaymentSaga::Authorization> result;
  saga->authorize("T-1", 1, "pay", kCard, 5000, {}, [&](PaymentSaga::Authorization a) { result = a; });
  pump();
  ASSERT_EQ(method.authorizations.size(), 1u);
  EXPECT_EQ(method.authorizations[0].channel, "wechat-sp") << "cold start: the lowest fee";
  EXPECT_EQ(op("T-1/authorize")->routing.substr(0, 11), "wechat-sp: ");
  method.authorizations[0].done(unavailable("acquirer returned HTTP 503"));
  pump();
  ASSERT_EQ(method.authorizations.size(), 2u);
  EXPECT_EQ(method.authorizations[1].op, "T-1/authorize/2");
  EXPECT_EQ(method.authorizations[1].channel, "alipay-sp");
  EXPECT_FALSE(result);
  method.authorizations[1].done(approve(5000));
  pump();
  ASSERT_TRUE(result);
  EXPECT_EQ(result->decision, payment::Decision::approved);
  const auto first = op("T-1/authorize"), second = op("T-1/authorize/2");
  EXPECT_EQ(first->state, OperationStateRow::failed);
  EXPECT_EQ(first->reason, "channel wechat-sp: acquirer returned HTTP 503; failed over to alipay-sp");
  EXPECT_EQ(second->state, OperationStateRow::confirmed);
  EXPECT_EQ(second->channel, "alipay-sp");
  EXPECT_NE(second->routing.find("failed over from wechat-sp (acquirer returned HTTP 503)"), std::string::npos) << second->routing;
  EXPECT_TRUE(method.operations.empty()) << "an unavailable channel holds nothing: no release";
  // The router counted both, and the counts are on disk.
  const auto views = router.channels("pay", clock.now());
  EXPECT_EQ(views[0].failures, 1);
  EXPECT_EQ(views[1].attempts, 1);
  EXPECT_EQ(routing_stats::load(reader->handle(), clock.now() - 1h).size(), 2u);
  // The capture goes where the money is held.
  EXPECT_EQ(saga->capture_intent("T-1", "pay", 4000).channel, "alipay-sp");
}

TEST_F(RoutedSagaTest, ASilentChannelIsReleasedAndTheNextOneAskedWithinTheMethodsDeadline) {
  std::optional<PaymentSaga::Authorization> result;
  saga->authorize("T-1", 1, "pay", kCard, 5000, {}, [&](PaymentSaga::Authorization a) { result = a; });
  pump();
  advance(10s);
  ASSERT_EQ(method.authorizations.size(), 2u);
  ASSERT_EQ(method.operations.size(), 1u);
  EXPECT_EQ(method.operations[0].call, "cancel");
  EXPECT_EQ(method.operations[0].op, "T-1/void");
  EXPECT_EQ(method.operations[0].released, "T-1/authorize@wechat-sp") << "only the silent channel's hold";
  advance(10s);
  ASSERT_EQ(method.authorizations.size(), 3u);
  EXPECT_EQ(method.authorizations[2].channel, "unionpay");
  EXPECT_EQ(method.operations[1].released, "T-1/authorize/2@alipay-sp");
  // The last channel has what is left of the 30 s, and no fourth comes.
  advance(9s);
  EXPECT_FALSE(result);
  advance(1s);
  ASSERT_TRUE(result);
  EXPECT_TRUE(result->timed_out);
  EXPECT_EQ(method.authorizations.size(), 3u);
  EXPECT_EQ(op("T-1/void/3")->kind, OperationKind::void_);
}

TEST_F(RoutedSagaTest, ADeclineIsThePayersAnswerAndNeverFailsOver) {
  std::optional<PaymentSaga::Authorization> result;
  saga->authorize("T-1", 1, "pay", kCard, 5000, {}, [&](PaymentSaga::Authorization a) { result = a; });
  pump();
  method.authorizations[0].done({.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {}, .reason = "insufficient funds", .challenge = {}});
  pump();
  ASSERT_TRUE(result);
  EXPECT_EQ(result->decision, payment::Decision::declined);
  EXPECT_EQ(result->reason, "insufficient funds");
  EXPECT_EQ(method.authorizations.size(), 1u);
  EXPECT_EQ(router.channels("pay", clock.now())[0].failures, 0) << "the channel worked: the payer said no";
}

TEST_F(RoutedSagaTest, AReleaseAfterAFailoverReleasesTheAuthorisationThatHolds) {
  saga->authorize("T-1", 1, "pay", kCard, 5000, {}, [](PaymentSaga::Authorization) {});
  pump();
  method.authorizations[0].done(unavailable("timeout at the acquirer"));
  pump();
  method.authorizations[1].done(approve(5000));
  pump();
  saga->release("T-1", "pay");
  pump();
  ASSERT_EQ(method.operations.size(), 1u);
  EXPECT_EQ(method.operations[0].op, "T-1/void/2");
  EXPECT_EQ(method.operations[0].released, "T-1/authorize/2@alipay-sp");
}

TEST_F(RoutedSagaTest, WhenEveryChannelFailsTheAnswerSaysWhat) {
  std::optional<PaymentSaga::Authorization> result;
  saga->authorize("T-1", 1, "pay", kCard, 5000, {}, [&](PaymentSaga::Authorization a) { result = a; });
  for (int i = 0; i < 3; ++i) {
    pump();
    ASSERT_EQ(method.authorizations.size(), static_cast<std::size_t>(i + 1));
    method.authorizations[static_cast<std::size_t>(i)].done(unavailable("down"));
  }
  pump();
  ASSERT_TRUE(result);
  EXPECT_EQ(result->decision, payment::Decision::declined);
  EXPECT_EQ(result->reason, "the payment could not be taken: down");
}


// ---- incremental authorisation (a top-up of the hold) ----

class IncrementTest : public SagaTest {
 protected:
  /// T-1 authorised for 5000 fen and its session running.
  void authorised() {
    saga->authorize("T-1", 1, "pay", kCard, 5000, {}, [](PaymentSaga::Authorization) {});
    pump();
    method.authorizations.back().done(approve(5000));
    pump();
  }
  std::vector<MoneyOperation> answers;
  PaymentSaga::OperationDone keep() {
    return [this](const MoneyOperation& o) { answers.push_back(o); };
  }
};

TEST_F(IncrementTest, ATopUpIsAnOperationOfItsOwnWithItsIntentOnDiskBeforeThePluginIsAsked) {
  authorised();
  saga->increment("T-1", "pay", 2000, keep());
  EXPECT_TRUE(method.increments.empty()) << "asked before the intent committed";
  pump();
  ASSERT_EQ(method.increments.size(), 1u);
  EXPECT_EQ(method.increments[0].op, "T-1/increment/1");
  EXPECT_EQ(method.increments[0].authorization, "T-1/authorize") << "the approved authorisation is the one raised";
  EXPECT_EQ(method.increments[0].fen, 2000);
  EXPECT_EQ(method.increments[0].total, 7000) << "the hold once raised";
  EXPECT_EQ(op("T-1/increment/1")->state, OperationStateRow::intent);
  EXPECT_EQ(op("T-1/increment/1")->kind, OperationKind::increment);
  method.increments[0].done(approve(1500));  // a partial top-up
  pump();
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_EQ(answers[0].state, OperationStateRow::confirmed);
  EXPECT_EQ(answers[0].amount_fen, 1500);
  EXPECT_EQ(op("T-1/increment/1")->state, OperationStateRow::confirmed);
  EXPECT_EQ(op("T-1/increment/1")->amount_fen, 1500);
  // The next top-up has its own id and counts what the first added.
  saga->increment("T-1", "pay", 2000, keep());
  pump();
  ASSERT_EQ(method.increments.size(), 2u);
  EXPECT_EQ(method.increments[1].op, "T-1/increment/2");
  EXPECT_EQ(method.increments[1].total, 5000 + 1500 + 2000);
}

TEST_F(IncrementTest, ADeclinedTopUpFailsAndAddsNothing) {
  authorised();
  saga->increment("T-1", "pay", 2000, keep());
  pump();
  method.increments[0].done({.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {}, .reason = "limit reached", .challenge = {}});
  pump();
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_EQ(answers[0].state, OperationStateRow::failed);
  EXPECT_EQ(op("T-1/increment/1")->reason, "limit reached");
  EXPECT_EQ(settled.back().id, "T-1/increment/1");
  // The next top-up's hold counts only what was granted.
  saga->increment("T-1", "pay", 1000, keep());
  pump();
  ASSERT_EQ(method.increments.size(), 2u);
  EXPECT_EQ(method.increments[1].total, 5000 + 1000);
}

TEST_F(IncrementTest, ATopUpCannotStepUpAndAnApprovalOfNothingIsADecline) {
  authorised();
  saga->increment("T-1", "pay", 2000, keep());
  saga->increment("T-1", "pay", 2000, keep());
  pump();
  ASSERT_EQ(method.increments.size(), 2u);
  method.increments[0].done({.decision = payment::Decision::step_up, .authorized_fen = 0, .reference = {}, .reason = {}, .challenge = {}});
  method.increments[1].done(approve(0));
  pump();
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_EQ(answers[0].state, OperationStateRow::failed);
  EXPECT_EQ(answers[1].state, OperationStateRow::failed);
}

TEST_F(IncrementTest, ATopUpWithNoAnswerIsPendingNeverGrantedAndIsAskedAgainWithItsId) {
  authorised();
  saga->increment("T-1", "pay", 2000, keep());
  pump();
  advance(30s);
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_EQ(answers[0].state, OperationStateRow::pending) << "no answer is not a grant";
  EXPECT_EQ(op("T-1/increment/1")->state, OperationStateRow::pending);
  advance(5s);
  ASSERT_EQ(method.increments.size(), 2u);
  EXPECT_EQ(method.increments[1].op, "T-1/increment/1") << "the same operation, asked again";
  method.increments[1].done(approve(2000));
  pump();
  EXPECT_EQ(op("T-1/increment/1")->state, OperationStateRow::confirmed);
}

TEST_F(IncrementTest, AfterAKillATopUpWithoutAnOutcomeIsAskedAgainAndOneWithAnOutcomeIsNot) {
  write_transaction("T-1");  // the session started: its hold is not an orphan to release
  authorised();
  saga->increment("T-1", "pay", 2000, keep());  // asked, never answered
  pump();
  saga->increment("T-1", "pay", 1000, keep());  // answered: declined
  pump();
  method.increments[1].done({.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {}, .reason = "no", .challenge = {}});
  pump();
  // Only the intent, never asked: the kill came between the commit and the call.
  store->submit(
      [](Database& d) {
        operations::insert_intent(d, {.id = "T-1/increment/3", .txn = "T-1", .kind = OperationKind::increment, .amount_fen = 500, .method = "pay",
                                      .channel = {}, .state = OperationStateRow::intent, .reference = {}, .reason = {}, .attempts = 0,
                                      .created = kStart, .updated = kStart, .next_attempt = std::nullopt, .routing = {}});
      },
      [](const Status& st) { ASSERT_TRUE(st.ok()); });
  pump();
  close();  // kill -9
  method.increments.clear();
  open();
  saga->resume();
  pump();
  std::set<std::string> asked;
  for (const auto& i : method.increments) asked.insert(i.op);
  EXPECT_EQ(asked, (std::set<std::string>{"T-1/increment/1", "T-1/increment/3"})) << "the declined one is not asked again";
  for (auto& i : method.increments) {
    if (i.op == "T-1/increment/1") {
      EXPECT_EQ(i.total, 7000) << "the hold from the database: the authorisation plus this top-up";
    }
    i.done(approve(i.fen));
  }
  pump();
  EXPECT_EQ(op("T-1/increment/1")->state, OperationStateRow::confirmed);
  EXPECT_EQ(op("T-1/increment/3")->state, OperationStateRow::confirmed);
  EXPECT_TRUE(operations::unfinished(reader->handle()).empty()) << "every operation has its outcome";
}

}  // namespace
}  // namespace pilecore::core
