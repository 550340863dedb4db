// One connector's charging session on a manual clock: a real SQLite database and storage thread,
// a real payment saga over a fake payment method that keeps its callbacks, and time that moves
// only when the test says so. The specification of core/charging/charging_session.hpp.
#include <gtest/gtest.h>

#include <deque>
#include <mutex>

#include "charging_session.hpp"
#include "money_operations.hpp"
#include "payment_saga.hpp"
#include "scheduler.hpp"
#include "statement.hpp"
#include "store_worker.hpp"
#include "test_support.hpp"
#include "transaction_repository.hpp"

namespace pilecore::core {
namespace {

using namespace std::chrono_literals;
using test::TempDir;

/// A payment method that keeps every capture until the test answers it.
class FakeMethod final : public payment::Method {
 public:
  Status start() noexcept override { return {}; }
  void stop() noexcept override {}
  [[nodiscard]] payment::Capabilities capabilities() const noexcept override { return {}; }
  void authorize(const payment::AuthorizationRequest&, payment::AuthorizationCallback) noexcept override {}
  void answer_step_up(std::string_view, const payment::StepUpAnswer&, payment::AuthorizationCallback) noexcept override {}
  void capture(const payment::CaptureRequest& r, payment::OperationCallback done) noexcept override {
    captures.push_back({std::string(r.operation_id), r.amount_fen, std::move(done)});
  }
  void cancel(const payment::VoidRequest&, payment::OperationCallback) noexcept override {}
  void refund(const payment::RefundRequest&, payment::OperationCallback) noexcept override {}
  void increment(const payment::IncrementRequest& r, payment::AuthorizationCallback done) noexcept override {
    increments.push_back({std::string(r.operation_id), r.amount_fen, r.total_fen, std::move(done)});
  }

  struct Increment {
    std::string op;
    std::int64_t fen;
    std::int64_t total;
    payment::AuthorizationCallback done;
  };
  std::vector<Increment> increments;
  struct Capture {
    std::string op;
    std::int64_t fen;
    payment::OperationCallback done;
  };
  std::vector<Capture> captures;
};

TimePoint at(int h, int m, int s = 0) {
  const auto day = std::chrono::sys_days{std::chrono::year{2026} / 12 / 1};
  return TimePoint{std::chrono::duration_cast<Duration>(day.time_since_epoch() + std::chrono::hours(h) + std::chrono::minutes(m) + std::chrono::seconds(s))};
}

/// Valley (1 yuan/kWh) until 07:00 UTC, flat (2 yuan/kWh) after; no service fee.
Tariff two_periods() {
  Plan p{"workday", {}, {}};
  p.prices[static_cast<int>(PeriodType::valley)] = Price{100, 0};
  p.prices[static_cast<int>(PeriodType::flat)] = Price{200, 0};
  p.windows = {{0, 7 * 60, PeriodType::valley}, {7 * 60, 24 * 60, PeriodType::flat}};
  std::array<std::string, 7> week;
  week.fill("workday");
  return Tariff("UTC", 0, Rounding::half_up, {{"workday", p}}, week, {});
}

class ChargingSessionTest : public ::testing::Test {
 protected:
  ChargingSessionTest() {
    settings.checkpoint_interval_ms = 60'000;
    settings.checkpoint_wh = 1'000;
    settings.meter_timeout_ms = 10'000;
    settings.setpoint_interval_ms = 10'000;
    db = std::make_unique<Database>(dir.path() / "pilecore.db");
    store = std::make_unique<StoreWorker>(*db, [this](std::function<void()> fn) {
      std::lock_guard lock(mutex);
      posted.push_back(std::move(fn));
    });
    reader = std::make_unique<Database>(dir.path() / "pilecore.db", Database::ReadOnly{});
    PaymentSaga::Hooks sh;
    sh.method = [this](std::string_view name) -> payment::Method* { return name == "pay" ? &method : nullptr; };
    saga = std::make_unique<PaymentSaga>(*store, reader->handle(), clock, clock, PaymentSaga::Settings{}, std::move(sh));
    closer = std::make_unique<SessionCloser>("SITE", *store, *saga,
                                             SessionCloser::Hooks{.ledger_append =
                                                                      [this](const SessionRecord& r) {
                                                                        if (ledger_fails) throw std::runtime_error("disk full");
                                                                        ledger.push_back(r);
                                                                      },
                                                                      .ledger_contains = {},
                                                                      .emit = [this](const Event& e) { events.push_back(e); },
                                                                      .before_capture = {}});
    ChargingSession::Hooks h;
    h.emit = [this](const Event& e) { events.push_back(e); };
    h.refresh_meter = [this] { ++refreshes; };
    h.power_w = [] { return std::optional<std::int64_t>(); };
    h.meter_check = [this](const MeterCheck& c, double) {
      if (!c.plausible && c.problem != MeterProblem::stale) implausible.push_back(c);
    };
    h.stop = [this](StopReason r) { stops.push_back(r); };
    // As the engine does: a method that cannot raise the hold answers at once; one that can is
    // asked through the saga, and its first answer decides.
    h.top_up = [this](std::int64_t) {
      if (!top_ups) {
        session->increment_answered(std::nullopt);
        return;
      }
      const std::int64_t before = session->running()->authorized_fen;
      saga->increment("T-1", "pay", 200, [this, before](const MoneyOperation& op) {
        if (session->active()) {
          session->increment_answered(op.state == OperationStateRow::confirmed ? std::optional<std::int64_t>(before + op.amount_fen) : std::nullopt);
        }
      });
    };
    session = std::make_unique<ChargingSession>(ChargingSession::Settings{.connector = 1, .meter = "meter", .charging = settings,
                                                                          .increment_step_fen = 200},
                                                MeterPlausibility{}, 22'000, *store, clock, clock, closer.get(), std::move(h));
  }
  ~ChargingSessionTest() override {
    session.reset();
    closer.reset();
    saga.reset();
    store->stop();
    pump();
  }

  /// Runs what the storage thread posted to the "strand" until nothing more comes.
  void pump() {
    for (;;) {
      store->run_sync([](Database&) {});
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
  /// The meter publishes `wh` now.
  void sample(std::int64_t wh) {
    session->on_sample(clock.now(), static_cast<double>(wh));
    pump();
  }
  /// The meter reads `wh` (through the guard, as the engine's start reading does), and the
  /// session opens on it.
  void open(std::int64_t wh, std::int64_t authorized_fen = 100'000, ChargingMode mode = {}) {
    sample(wh);
    session->open({.txn = "T-1", .method = "pay", .token = "card:04A1B2C3D4", .user_hash = "h", .payment_ref = "REF", .authorized_fen = authorized_fen,
                   .mode = mode, .tariff = tariff, .tariff_document = tariff->document().dump()},
                  {clock.now(), wh}, [](const Status& st) { ASSERT_TRUE(st.ok()) << st.message(); });
    pump();
    ASSERT_TRUE(session->active());
  }
  /// The committed readings of T-1, as "kind wh".
  std::vector<std::string> rows() {
    pump();
    std::vector<std::string> out;
    Stmt s(reader->handle(), "SELECT kind, wh FROM readings WHERE txn_id='T-1' ORDER BY seq");
    while (s.step()) out.push_back(s.text(0) + " " + std::to_string(s.i64(1)));
    return out;
  }
  template <class E>
  std::vector<E> events_of() const {
    std::vector<E> out;
    for (const auto& e : events) {
      if (const auto* v = std::get_if<E>(&e)) out.push_back(*v);
    }
    return out;
  }

  TempDir dir;
  ManualScheduler clock{at(1, 0)};
  ChargingSettings settings;
  std::shared_ptr<const Tariff> tariff = std::make_shared<const Tariff>(two_periods());
  FakeMethod method;
  std::mutex mutex;
  std::deque<std::function<void()>> posted;
  std::unique_ptr<Database> db;
  std::unique_ptr<StoreWorker> store;
  std::unique_ptr<Database> reader;
  std::unique_ptr<PaymentSaga> saga;
  std::unique_ptr<SessionCloser> closer;
  std::unique_ptr<ChargingSession> session;
  std::vector<Event> events;
  std::vector<SessionRecord> ledger;
  bool ledger_fails = false;
  int refreshes = 0;
  std::vector<MeterCheck> implausible;
  std::vector<StopReason> stops;
  bool top_ups = false;
};

TEST_F(ChargingSessionTest, OpeningCommitsTheRowAndTheStartReadingBeforeTheSessionRuns) {
  session->open({.txn = "T-1", .method = "pay", .token = "card:04A1B2C3D4", .user_hash = "h", .payment_ref = "REF", .authorized_fen = 5000, .mode = {},
                 .tariff = tariff, .tariff_document = tariff->document().dump()},
                {clock.now(), 1000}, [](const Status&) {});
  EXPECT_FALSE(session->active()) << "running before the row is on disk";
  pump();
  ASSERT_TRUE(session->active());
  EXPECT_EQ(rows(), std::vector<std::string>{"start 1000"});
  const auto row = TransactionRepository(*reader).find("T-1");
  ASSERT_TRUE(row);
  EXPECT_EQ(row->status, "open");
  EXPECT_EQ(row->authorized_fen, 5000);
}

TEST_F(ChargingSessionTest, ACheckpointIsCommittedOncePerInterval) {
  open(1000);
  // 2 kW: 20 Wh every 10 s, far below checkpoint_wh.
  for (int i = 1; i <= 5; ++i) {
    advance(10s);
    sample(1000 + 20 * i);
  }
  EXPECT_EQ(rows(), std::vector<std::string>{"start 1000"}) << "committed before the interval";
  advance(10s);
  sample(1120);
  EXPECT_EQ(rows(), (std::vector<std::string>{"start 1000", "checkpoint 1120"}));
  for (int i = 1; i <= 6; ++i) {
    advance(10s);
    sample(1120 + 20 * i);
  }
  EXPECT_EQ(rows(), (std::vector<std::string>{"start 1000", "checkpoint 1120", "checkpoint 1240"}));
}

TEST_F(ChargingSessionTest, ACheckpointIsCommittedOnceCheckpointWhFlowed) {
  settings.checkpoint_wh = 100;
  open(1000);
  advance(10s);
  sample(1060);
  EXPECT_EQ(rows().size(), 1u);
  advance(10s);
  sample(1120);
  EXPECT_EQ(rows(), (std::vector<std::string>{"start 1000", "checkpoint 1120"})) << "100 Wh in 20 s, well before the interval";
}

TEST_F(ChargingSessionTest, AtATariffBoundaryAFreshReadingIsCommittedAndAnnounced) {
  clock.advance(at(6, 59) - clock.now());
  open(1000);
  advance(59s);
  EXPECT_EQ(refreshes, 0);
  advance(1s);  // 07:00: valley ends
  EXPECT_EQ(refreshes, 1) << "the boundary asks the meter for a reading";
  sample(1300);
  EXPECT_EQ(rows(), (std::vector<std::string>{"start 1000", "boundary 1300"}));
  const auto boundaries = events_of<events::TariffBoundary>();
  ASSERT_EQ(boundaries.size(), 1u);
  EXPECT_EQ(boundaries[0].boundary, at(7, 0));
  EXPECT_EQ(boundaries[0].period, "flat");
  EXPECT_EQ(boundaries[0].meter_wh, 1300);
  // Each period bills what flowed in it: 300 Wh valley at 1 yuan, 200 Wh flat at 2 yuan.
  advance(1min);
  session->begin_stop(StopReason::local);
  session->close(MeterReading{clock.now(), 1500}, [](const StopOutcome&) {});
  pump();
  ASSERT_EQ(ledger.size(), 1u);
  ASSERT_EQ(ledger[0].bill.lines.size(), 2u);
  EXPECT_EQ(ledger[0].bill.lines[0].wh, 300);
  EXPECT_EQ(ledger[0].bill.lines[1].wh, 200);
  EXPECT_EQ(ledger[0].bill.total_fen, 30 + 40);
}

TEST_F(ChargingSessionTest, AnImplausibleReadingIsNeitherCommittedNorHandedToAWaiter) {
  open(1000);
  advance(60s);  // the checkpoint interval has passed: a plausible reading now would be committed
  std::optional<std::optional<MeterReading>> fresh;
  session->read_meter([&](std::optional<MeterReading> m) { fresh = m; });
  sample(1'000'000);  // 999 kWh in a minute at 22 kW
  ASSERT_EQ(implausible.size(), 1u);
  EXPECT_EQ(implausible[0].problem, MeterProblem::too_fast);
  EXPECT_FALSE(fresh) << "an implausible reading answered a waiter";
  EXPECT_EQ(rows(), std::vector<std::string>{"start 1000"});
  sample(1100);
  ASSERT_TRUE(fresh && *fresh);
  EXPECT_EQ((*fresh)->wh, 1100);
  EXPECT_EQ(rows(), (std::vector<std::string>{"start 1000", "checkpoint 1100"}));
}

TEST_F(ChargingSessionTest, AMeterThatNeverAnswersGivesTheWaiterNothingAtItsTimeout) {
  std::optional<std::optional<MeterReading>> fresh;
  session->read_meter([&](std::optional<MeterReading> m) { fresh = m; });
  advance(9s);
  EXPECT_FALSE(fresh);
  advance(1s);
  ASSERT_TRUE(fresh);
  EXPECT_FALSE(*fresh);
}

TEST_F(ChargingSessionTest, TheBillPlusTheNextMeterIntervalReachingTheAuthorisedAmountAsksForAStop) {
  open(1000, 150);  // 1.50 yuan: 1.5 kWh of valley energy at 1 yuan/kWh
  advance(1min);
  sample(1400);  // 40 fen, and 400 Wh (40 fen) a minute
  advance(1min);
  sample(1800);  // 80 + 40
  advance(1min);
  sample(2100);  // 110 + 30
  EXPECT_TRUE(stops.empty());
  advance(1min);
  sample(2300);  // 130 + 20: the next minute would take the bill to the hold
  ASSERT_EQ(stops.size(), 1u);
  EXPECT_EQ(stops[0], StopReason::funds_exhausted);
  advance(1min);
  sample(2350);
  EXPECT_EQ(stops.size(), 1u) << "asked once";
}

TEST_F(ChargingSessionTest, TheCloseIsOneWorkAndOnlyThenIsTheCaptureAsked) {
  open(1000);
  advance(60s);
  sample(1200);
  session->begin_stop(StopReason::local);
  pump();
  const auto works = store->works();
  std::optional<StopOutcome> out;
  session->close(MeterReading{clock.now() + 1s, 1210}, [&](StopOutcome o) { out = std::move(o); });
  store->run_sync([](Database&) {});  // committed; what follows it has not run yet
  EXPECT_EQ(store->works(), works + 1) << "the close is one work";
  EXPECT_TRUE(method.captures.empty()) << "asked before the close is on disk";
  pump();
  // In that work: the final reading, the bill, 'closed', the ledger record, the capture's intent.
  EXPECT_EQ(rows(), (std::vector<std::string>{"start 1000", "checkpoint 1200", "stop 1210"}));
  const auto row = TransactionRepository(*reader).find("T-1");
  EXPECT_EQ(row->status, "closed");
  EXPECT_EQ(row->stop_reason, "Local");
  EXPECT_EQ(row->total_fen, 21);
  ASSERT_EQ(ledger.size(), 1u);
  EXPECT_EQ(ledger[0].user, "card:04A1B2C3D4") << "the ledger keeps the token";
  EXPECT_EQ(ledger[0].capture_operation, "T-1/capture");
  ASSERT_EQ(method.captures.size(), 1u);
  EXPECT_EQ(method.captures[0].fen, 21);
  EXPECT_TRUE(session->active()) << "closed only once the capture answers";
  method.captures[0].done({.state = payment::OperationState::confirmed, .amount_fen = 21, .reference = "CAP", .reason = {}});
  pump();
  ASSERT_TRUE(out && out->ok);
  EXPECT_FALSE(session->active());
  ASSERT_TRUE(out->receipt);
  EXPECT_EQ(out->receipt->captured_fen, 21);
  EXPECT_EQ(out->receipt->capture_status, "captured");
  EXPECT_EQ(out->receipt->record.user.find("04A1B2C3D4"), std::string::npos) << "a reply names the token only masked";
  EXPECT_EQ(events_of<events::SessionClosed>().size(), 1u);
}

TEST_F(ChargingSessionTest, ACloseThatCannotCommitLeavesNothingOfItselfAndIsRetried) {
  open(1000);
  session->begin_stop(StopReason::local);
  ledger_fails = true;  // the last step of the close's work fails
  std::vector<StopOutcome> outs;
  session->close(MeterReading{clock.now() + 1s, 1100}, [&](StopOutcome o) { outs.push_back(std::move(o)); });
  pump();
  ASSERT_EQ(outs.size(), 1u);
  EXPECT_FALSE(outs[0].ok);
  EXPECT_TRUE(outs[0].retry);
  EXPECT_EQ(rows(), std::vector<std::string>{"start 1000"}) << "the final reading outlived its failed close";
  EXPECT_EQ(TransactionRepository(*reader).find("T-1")->status, "stopping");
  EXPECT_FALSE(operations::find(reader->handle(), "T-1/capture")) << "a capture intent outlived its failed close";
  EXPECT_TRUE(method.captures.empty());
  EXPECT_TRUE(session->active()) << "the session stays, so nothing else starts on the connector";
  EXPECT_EQ(events_of<events::CloseFailed>().size(), 1u);
  ledger_fails = false;
  advance(Duration(settings.meter_timeout_ms + 1000));
  EXPECT_EQ(TransactionRepository(*reader).find("T-1")->status, "closed");
  EXPECT_EQ(rows(), (std::vector<std::string>{"start 1000", "stop 1100"}));
  ASSERT_EQ(method.captures.size(), 1u);
}


// ---- charging modes: each stops at its own target, with its own reason ----

TEST_F(ChargingSessionTest, AnEnergySessionStopsAtItsEnergyLessTheLastIntervalWithEnergyReached) {
  open(1000, 100'000, {ModeKind::energy, 1000});
  advance(1min);
  sample(1400);  // 400 Wh, and 400 Wh a minute
  EXPECT_TRUE(stops.empty());
  advance(1min);
  sample(1700);  // 700 + 300 reaches 1000 Wh
  ASSERT_EQ(stops.size(), 1u);
  EXPECT_EQ(stops[0], StopReason::energy_reached);
  advance(1min);
  sample(1800);
  EXPECT_EQ(stops.size(), 1u) << "asked once";
}

TEST_F(ChargingSessionTest, AnAmountSessionStopsWithAmountReachedNotFundsExhausted) {
  open(1000, 150, {ModeKind::amount, 150});
  for (const std::int64_t wh : {1400, 1800, 2100}) {
    advance(1min);
    sample(wh);
  }
  EXPECT_TRUE(stops.empty());
  advance(1min);
  sample(2300);  // 130 fen + 20: the next minute would reach the 150 asked for
  ASSERT_EQ(stops.size(), 1u);
  EXPECT_EQ(stops[0], StopReason::amount_reached);
}

TEST_F(ChargingSessionTest, APartialHoldBelowTheAmountAskedStopsForFunds) {
  open(1000, 100, {ModeKind::amount, 150});  // the method held less than the amount
  for (const std::int64_t wh : {1400, 1800}) {
    advance(1min);
    sample(wh);
  }
  ASSERT_EQ(stops.size(), 1u);
  EXPECT_EQ(stops[0], StopReason::funds_exhausted) << "80 + 40 fen pass the 100 held before the 150 asked";
}

TEST_F(ChargingSessionTest, ATimedSessionStopsWhenItsTimeIsUpWithTimeReached) {
  open(1000, 100'000, {ModeKind::time, 600});
  advance(9min);
  sample(1300);
  advance(59s);
  EXPECT_TRUE(stops.empty());
  advance(1s);
  ASSERT_EQ(stops.size(), 1u);
  EXPECT_EQ(stops[0], StopReason::time_reached);
}

TEST_F(ChargingSessionTest, AFullSessionHasNoTargetOfItsOwn) {
  open(1000, 100'000, {});
  for (int i = 1; i <= 30; ++i) {
    advance(1min);
    sample(1000 + 400 * i);
  }
  EXPECT_TRUE(stops.empty()) << "only the vehicle, the driver or the hold end it";
}

TEST_F(ChargingSessionTest, ABillAboveTheHoldIsCapturedOnlyUpToItAndTheRestRecordedAsUncovered) {
  // The case: a 300-fen hold, a final reading that bills 307 fen.
  open(1000, 300, {ModeKind::amount, 300});
  advance(3min);
  sample(2000);  // 100 fen, and 1000 Wh in three minutes
  session->begin_stop(StopReason::local);
  std::optional<StopOutcome> out;
  session->close(MeterReading{clock.now() + 1s, 1000 + 3070}, [&](StopOutcome o) { out = std::move(o); });
  pump();
  ASSERT_EQ(method.captures.size(), 1u);
  EXPECT_EQ(method.captures[0].fen, 300) << "never captured above the hold";
  ASSERT_EQ(ledger.size(), 1u);
  EXPECT_EQ(ledger[0].bill.total_fen, 307);
  EXPECT_EQ(ledger[0].capture_fen, 300);
  EXPECT_EQ(ledger[0].authorized_fen, 300);
  EXPECT_EQ(ledger[0].uncovered_fen, 7) << "the signed record says what was not covered";
  EXPECT_EQ(ledger[0].mode, "amount:300");
  method.captures[0].done({.state = payment::OperationState::confirmed, .amount_fen = 300, .reference = "CAP", .reason = {}});
  pump();
  ASSERT_TRUE(out && out->ok && out->receipt);
  EXPECT_EQ(out->receipt->record.bill.total_fen, 307);
  EXPECT_EQ(out->receipt->captured_fen, 300);
  EXPECT_EQ(out->receipt->record.uncovered_fen, 7);
  const auto closed = events_of<events::SessionClosed>();
  ASSERT_EQ(closed.size(), 1u);
  EXPECT_EQ(closed[0].uncovered_fen, 7);
  EXPECT_EQ(closed[0].total_fen - closed[0].captured_fen, closed[0].uncovered_fen) << "captured + uncovered = billed";
}

TEST_F(ChargingSessionTest, ABillWithinTheHoldHasNothingUncovered) {
  open(1000, 300);
  session->begin_stop(StopReason::local);
  session->close(MeterReading{clock.now() + 1min, 1500}, [](const StopOutcome&) {});
  pump();
  ASSERT_EQ(ledger.size(), 1u);
  EXPECT_EQ(ledger[0].uncovered_fen, 0);
  EXPECT_EQ(ledger[0].capture_fen, 50);
}

// ---- top-ups: the hold raised before it is reached ----

class TopUpTest : public ChargingSessionTest {
 protected:
  /// A 300-fen hold, 400 Wh (40 fen) a minute; the top-up (a 200-fen step) is asked when the
  /// bill and the next interval come within half a step of the hold: at 2600 Wh (160 + 40 + 100).
  void charge_until_top_up() {
    top_ups = true;
    store->submit(
        [](Database& d) {
          // The session's approved authorisation, as the start leaves it.
          MoneyOperation a{.id = "T-1/authorize", .txn = "T-1", .kind = OperationKind::authorize, .amount_fen = 300, .method = "pay", .channel = {},
                           .state = OperationStateRow::intent, .reference = "REF", .reason = {}, .attempts = 1, .created = {}, .updated = {},
                           .next_attempt = std::nullopt, .routing = {}};
          operations::insert_intent(d, a);
          a.state = OperationStateRow::confirmed;
          operations::update(d, a);
        },
        [](const Status& st) { ASSERT_TRUE(st.ok()); });
    open(1000, 300);
    for (const std::int64_t wh : {1400, 1800, 2200}) {
      advance(1min);
      sample(wh);
    }
    EXPECT_TRUE(method.increments.empty()) << "asked too early";
    advance(1min);
    sample(2600);
    ASSERT_EQ(method.increments.size(), 1u);
    EXPECT_EQ(method.increments[0].op, "T-1/increment/1");
    EXPECT_EQ(method.increments[0].fen, 200);
    EXPECT_EQ(method.increments[0].total, 500);
    EXPECT_TRUE(stops.empty()) << "the top-up comes before the hold is reached";
  }
  /// 280 fen billed and 40 more in the next minute: past the original 300-fen hold.
  void charge_past_the_old_hold() {
    for (const std::int64_t wh : {3000, 3400, 3800}) {
      advance(1min);
      sample(wh);
    }
  }
};

TEST_F(TopUpTest, AnApprovedTopUpRaisesTheHoldAndChargingGoesOn) {
  charge_until_top_up();
  method.increments[0].done({.decision = payment::Decision::approved, .authorized_fen = 200, .reference = "REF", .reason = {}, .challenge = {}});
  pump();
  EXPECT_EQ(session->running()->authorized_fen, 500);
  EXPECT_EQ(operations::find(reader->handle(), "T-1/increment/1")->state, OperationStateRow::confirmed);
  charge_past_the_old_hold();
  EXPECT_TRUE(stops.empty()) << "stopped at the hold it had before the top-up";
  // Near the new hold, the next top-up.
  for (const std::int64_t wh : {4200, 4600}) {
    advance(1min);
    sample(wh);
  }
  ASSERT_EQ(method.increments.size(), 2u);
  EXPECT_EQ(method.increments[1].op, "T-1/increment/2");
  EXPECT_EQ(method.increments[1].total, 700);
}

TEST_F(TopUpTest, ADeclinedTopUpStopsTheSessionAtItsHoldForFunds) {
  charge_until_top_up();
  method.increments[0].done({.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {}, .reason = "limit", .challenge = {}});
  pump();
  EXPECT_TRUE(stops.empty()) << "the hold is not reached yet";
  charge_past_the_old_hold();
  ASSERT_EQ(stops.size(), 1u);
  EXPECT_EQ(stops[0], StopReason::funds_exhausted);
  EXPECT_EQ(method.increments.size(), 1u) << "a declined top-up is not asked again";
}

TEST_F(TopUpTest, ATopUpWithNoAnswerIsNotWaitedForAtTheHold) {
  charge_until_top_up();
  // No answer: the next minute passes the deadline (30 s); the hold still stands.
  charge_past_the_old_hold();
  ASSERT_EQ(stops.size(), 1u);
  EXPECT_EQ(stops[0], StopReason::funds_exhausted);
  EXPECT_EQ(session->running()->authorized_fen, 300);
  EXPECT_EQ(operations::find(reader->handle(), "T-1/increment/1")->state, OperationStateRow::pending) << "asked again in the background";
}

TEST_F(TopUpTest, AMethodThatCannotRaiseTheHoldStopsAtIt) {
  open(1000, 300);  // top_ups false: the engine's answer for a method without incremental authorisation
  for (const std::int64_t wh : {1400, 1800, 2200, 2600, 3000, 3400, 3800}) {
    advance(1min);
    sample(wh);
  }
  ASSERT_EQ(stops.size(), 1u);
  EXPECT_EQ(stops[0], StopReason::funds_exhausted);
  EXPECT_TRUE(method.increments.empty());
}

}  // namespace
}  // namespace pilecore::core
