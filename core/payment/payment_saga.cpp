#include "payment_saga.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "inflight.hpp"

namespace pilecore::core {

/// One operation between its call to the plugin and its final outcome.
struct PaymentSaga::Flight {
  MoneyOperation op;
  std::uint64_t attempt = 0;       ///< answers of older attempts are ignored
  TimerId deadline = 0;            ///< the current attempt's deadline (or the step-up's)
  TimerId retry = 0;
  bool answered = false;           ///< the current attempt has its answer (or timed out)
  std::vector<OperationDone> first;  ///< waiting for the first answer
  // authorisations only
  std::uint32_t connector = 0;
  AuthorizationDone auth_done;
  ChallengeSink challenged;
  bool awaiting_answer = false;    ///< a step-up challenge waits for the driver
};

PaymentSaga::PaymentSaga(StoreWorker& store, sqlite3* reader, const Clock& clock, Scheduler& scheduler, Settings settings, Hooks hooks)
    : store_(store),
      reader_(reader),
      clock_(clock),
      scheduler_(scheduler),
      settings_(settings),
      hooks_(std::move(hooks)),
      alive_(std::make_shared<bool>(true)) {}

PaymentSaga::~PaymentSaga() {
  *alive_ = false;
  for (auto& [id, f] : flights_) {
    scheduler_.cancel(f->deadline);
    scheduler_.cancel(f->retry);
  }
}

Duration PaymentSaga::backoff(int attempts) const {
  Duration d = settings_.retry_first;
  for (int i = 1; i < attempts && d < settings_.retry_max; ++i) d *= 2;
  return std::min(d, settings_.retry_max);
}

void PaymentSaga::record(MoneyOperation op, std::function<void(Status)> after) {
  const bool final = op.state == OperationStateRow::confirmed || op.state == OperationStateRow::failed;
  store_.submit(
      [op, final, recorded = hooks_.recorded](Database& db) {
        operations::update(db, op);
        if (final && recorded) recorded(db, op);
      },
      [this, op, final, after = std::move(after), alive = alive_](Status st) {
        if (!*alive) return;
        if (!st.ok()) spdlog::critical("{}: the outcome '{}' of this operation is not on disk: {}", op.id, to_string(op.state), st.message());
        if (st.ok() && final && hooks_.settled) hooks_.settled(op);
        if (after) after(st);
      });
}

// --- authorisation -----------------------------------------------------------------------------

void PaymentSaga::authorize(const std::string& txn, std::uint32_t connector, const std::string& method, const identification::Token& token,
                            std::int64_t amount_fen, ChallengeSink challenged, AuthorizationDone done) {
  auto f = std::make_shared<Flight>();
  f->op = {.id = txn + "/authorize", .txn = txn, .kind = OperationKind::authorize, .amount_fen = amount_fen, .method = method,
           .channel = {}, .state = OperationStateRow::intent, .reference = {}, .reason = {}, .attempts = 1, .created = clock_.now(),
           .updated = clock_.now(), .next_attempt = std::nullopt};
  f->connector = connector;
  f->auth_done = std::move(done);
  f->challenged = std::move(challenged);
  if (flights_.count(f->op.id) != 0) {
    f->auth_done({.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {}, .reason = "already being authorised", .timed_out = false});
    return;
  }
  flights_[f->op.id] = f;
  // The intent is on disk before the acquirer is asked: a crash after this line leaves a row that
  // resume() releases.
  store_.submit([op = f->op](Database& db) { operations::insert_intent(db, op); },
                [this, f, token, alive = alive_](Status st) {
                  if (!*alive) return;
                  if (!st.ok()) {
                    flights_.erase(f->op.id);
                    f->auth_done({.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {},
                                  .reason = fmt::format("database: {}", st.message()), .timed_out = false});
                    return;
                  }
                  ask_authorize(f, token);
                });
}

void PaymentSaga::ask_authorize(const std::shared_ptr<Flight>& f, const identification::Token& token) {
  payment::Method* m = hooks_.method ? hooks_.method(f->op.method) : nullptr;
  if (m == nullptr) {
    finish_authorization(f, {.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {},
                             .reason = fmt::format("payment instance '{}' is not running", f->op.method), .timed_out = false},
                         OperationStateRow::failed);
    return;
  }
  const std::uint64_t attempt = ++f->attempt;
  f->answered = false;
  const TimePoint deadline = clock_.now() + settings_.authorize_timeout;
  f->deadline = scheduler_.after(settings_.authorize_timeout, [this, f, attempt] {
    if (f->attempt != attempt || f->answered) return;
    f->answered = true;
    spdlog::warn("{}: '{}' did not answer the authorisation in time; releasing whatever it may hold", f->op.txn, f->op.method);
    finish_authorization(f, {.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {},
                             .reason = "the payment method did not answer in time", .timed_out = true},
                         OperationStateRow::failed);
  });
  payment::AuthorizationRequest req{.operation_id = f->op.id, .transaction_id = f->op.txn, .connector = f->connector, .token = &token,
                                    .channel = f->op.channel, .amount_fen = f->op.amount_fen, .deadline = deadline};
  InFlight mark(f->op.method, "authorize");  // a crash in the plugin is attributed to it
  m->authorize(req, [this, f, attempt, alive = alive_](payment::AuthorizationResult r) {
    if (!*alive || f->attempt != attempt || f->answered) return;  // late: the deadline already decided
    f->answered = true;
    scheduler_.cancel(f->deadline);
    on_authorization(f, std::move(r));
  });
}

void PaymentSaga::on_authorization(const std::shared_ptr<Flight>& f, payment::AuthorizationResult r) {
  switch (r.decision) {
    case payment::Decision::approved:
      if (r.authorized_fen <= 0) {
        finish_authorization(f, {.decision = payment::Decision::declined, .authorized_fen = 0, .reference = r.reference,
                                 .reason = "approved for nothing", .timed_out = false},
                             OperationStateRow::failed);
        start_void(f->op.txn, f->op.method, "an approval for 0 fen", std::nullopt);
        return;
      }
      finish_authorization(f, {.decision = payment::Decision::approved, .authorized_fen = std::min(r.authorized_fen, f->op.amount_fen),
                               .reference = r.reference, .reason = {}, .timed_out = false},
                           OperationStateRow::confirmed);
      return;
    case payment::Decision::declined:
      // Released all the same: a method that stops before delivering an approval answers
      // "declined" too, and a release of nothing costs nothing.
      finish_authorization(f, {.decision = payment::Decision::declined, .authorized_fen = 0, .reference = r.reference, .reason = r.reason,
                               .timed_out = false},
                           OperationStateRow::failed, true);
      return;
    case payment::Decision::step_up: {
      // The challenge goes to the driver; the saga holds the deadline, whatever the plugin asked.
      const TimePoint now = clock_.now();
      TimePoint until = r.challenge.deadline;
      if (until <= now || until > now + settings_.authorize_timeout * 10) until = now + settings_.authorize_timeout * 4;
      r.challenge.deadline = until;
      f->awaiting_answer = true;
      f->op.state = OperationStateRow::pending;
      f->op.reason = fmt::format("step-up: {}", to_string(r.challenge.kind));
      f->op.updated = now;
      record(f->op, {});
      const std::uint64_t attempt = ++f->attempt;
      f->deadline = scheduler_.after(std::chrono::duration_cast<Duration>(until - now), [this, f, attempt] {
        if (f->attempt != attempt || !f->awaiting_answer) return;
        f->awaiting_answer = false;
        finish_authorization(f, {.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {},
                                 .reason = "the step-up was not completed in time", .timed_out = true},
                             OperationStateRow::failed);
      });
      if (f->challenged) f->challenged(r.challenge);
      return;
    }
  }
}

Status PaymentSaga::answer_step_up(const std::string& txn, const payment::StepUpAnswer& answer) {
  auto it = flights_.find(txn + "/authorize");
  if (it == flights_.end() || !it->second->awaiting_answer) return Status::error(StatusCode::invalid_argument, fmt::format("no step-up waits on {}", txn));
  auto f = it->second;
  payment::Method* m = hooks_.method ? hooks_.method(f->op.method) : nullptr;
  if (m == nullptr) return Status::error(StatusCode::unavailable, fmt::format("payment instance '{}' is not running", f->op.method));
  f->awaiting_answer = false;
  scheduler_.cancel(f->deadline);
  const std::uint64_t attempt = ++f->attempt;
  f->answered = false;
  f->deadline = scheduler_.after(settings_.authorize_timeout, [this, f, attempt] {
    if (f->attempt != attempt || f->answered) return;
    f->answered = true;
    finish_authorization(f, {.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {},
                             .reason = "the payment method did not answer the step-up in time", .timed_out = true},
                         OperationStateRow::failed);
  });
  InFlight mark(f->op.method, "answer_step_up");
  m->answer_step_up(f->op.id, answer, [this, f, attempt, alive = alive_](payment::AuthorizationResult r) {
    if (!*alive || f->attempt != attempt || f->answered) return;
    f->answered = true;
    scheduler_.cancel(f->deadline);
    on_authorization(f, std::move(r));
  });
  return Status::success();
}

bool PaymentSaga::awaiting_step_up(const std::string& txn) const {
  auto it = flights_.find(txn + "/authorize");
  return it != flights_.end() && it->second->awaiting_answer;
}

void PaymentSaga::finish_authorization(const std::shared_ptr<Flight>& f, Authorization a, OperationStateRow state, bool release) {
  flights_.erase(f->op.id);
  f->op.state = state;
  f->op.amount_fen = state == OperationStateRow::confirmed ? a.authorized_fen : 0;
  f->op.reference = a.reference;
  f->op.reason = a.reason;
  f->op.updated = clock_.now();
  if (a.timed_out || release) {
    start_void(f->op.txn, f->op.method, a.timed_out ? "no answer in time" : "declined", f->op);
  } else {
    // Not waited for: whatever the caller commits next (the transaction row) is ordered after it.
    record(f->op, {});
  }
  auto done = std::move(f->auth_done);
  if (done) done(std::move(a));
}

// --- capture, void, refund ---------------------------------------------------------------------

MoneyOperation PaymentSaga::capture_intent(const std::string& txn, const std::string& method, std::int64_t amount_fen) const {
  return {.id = txn + "/capture", .txn = txn, .kind = OperationKind::capture, .amount_fen = amount_fen, .method = method, .channel = {},
          .state = OperationStateRow::intent, .reference = {}, .reason = {}, .attempts = 0, .created = clock_.now(), .updated = clock_.now(),
          .next_attempt = std::nullopt};
}

void PaymentSaga::execute(MoneyOperation op, OperationDone first) {
  if (auto it = flights_.find(op.id); it != flights_.end()) {
    if (first) it->second->first.push_back(std::move(first));
    return;
  }
  auto f = std::make_shared<Flight>();
  f->op = std::move(op);
  if (first) f->first.push_back(std::move(first));
  const std::string id = f->op.id;
  flights_[id] = f;
  attempt(id);
}

void PaymentSaga::attempt(const std::string& op_id) {
  auto it = flights_.find(op_id);
  if (it == flights_.end()) return;
  auto f = it->second;
  f->retry = 0;
  ++f->op.attempts;
  const std::uint64_t attempt = ++f->attempt;
  f->answered = false;
  payment::Method* m = hooks_.method ? hooks_.method(f->op.method) : nullptr;
  if (m == nullptr) {
    on_result(op_id, attempt, {.state = payment::OperationState::pending, .amount_fen = 0, .reference = {},
                               .reason = fmt::format("payment instance '{}' is not running", f->op.method)});
    return;
  }
  const TimePoint deadline = clock_.now() + settings_.operation_timeout;
  f->deadline = scheduler_.after(settings_.operation_timeout, [this, op_id, attempt] {
    on_result(op_id, attempt, {.state = payment::OperationState::pending, .amount_fen = 0, .reference = {}, .reason = "no answer in time"});
  });
  auto cb = [this, op_id, attempt, alive = alive_](payment::OperationResult r) {
    if (*alive) on_result(op_id, attempt, std::move(r));
  };
  InFlight mark(f->op.method, to_string(f->op.kind));
  switch (f->op.kind) {
    case OperationKind::capture:
    case OperationKind::debit:
      m->capture({.operation_id = f->op.id, .transaction_id = f->op.txn, .amount_fen = f->op.amount_fen, .deadline = deadline}, cb);
      break;
    case OperationKind::void_:
      m->cancel({.operation_id = f->op.id, .transaction_id = f->op.txn, .deadline = deadline}, cb);
      break;
    case OperationKind::refund:
      m->refund({.operation_id = f->op.id, .transaction_id = f->op.txn, .amount_fen = f->op.amount_fen, .reason = f->op.reason, .deadline = deadline}, cb);
      break;
    case OperationKind::authorize:
      // Authorisations are not repeated: one cut off is released (resume()).
      on_result(op_id, attempt, {.state = payment::OperationState::failed, .amount_fen = 0, .reference = {}, .reason = "not repeatable"});
      break;
  }
}

void PaymentSaga::on_result(const std::string& op_id, std::uint64_t attempt_no, payment::OperationResult r) {
  auto it = flights_.find(op_id);
  if (it == flights_.end()) return;
  auto f = it->second;
  if (f->attempt != attempt_no || f->answered) return;  // an older attempt, or after the deadline
  f->answered = true;
  scheduler_.cancel(f->deadline);
  const TimePoint now = clock_.now();
  f->op.updated = now;
  f->op.reason = r.reason;
  if (!r.reference.empty()) f->op.reference = r.reference;
  if (r.state == payment::OperationState::pending) {
    const Duration wait = backoff(f->op.attempts);
    f->op.state = OperationStateRow::pending;
    f->op.next_attempt = now + wait;
    spdlog::warn("{}: {} of {} fen pending ({}); asked again in {} s", f->op.txn, to_string(f->op.kind), f->op.amount_fen, r.reason,
                 wait.count() / 1000);
    f->retry = scheduler_.after(wait, [this, op_id] { this->attempt(op_id); });
  } else {
    flights_.erase(op_id);
    f->op.state = r.state == payment::OperationState::confirmed ? OperationStateRow::confirmed : OperationStateRow::failed;
    f->op.next_attempt.reset();
    if (f->op.state == OperationStateRow::confirmed) {
      // What moved; a capture never above what was asked.
      f->op.amount_fen = f->op.kind == OperationKind::void_ ? r.amount_fen : std::min(r.amount_fen, f->op.amount_fen);
    } else {
      spdlog::error("{}: {} of {} fen failed: {}", f->op.txn, to_string(f->op.kind), f->op.amount_fen, r.reason);
    }
  }
  // Who waits for the first answer hears it once it is on disk: a receipt read then shows it.
  auto waiting = std::move(f->first);
  f->first.clear();
  record(f->op, [this, op = f->op, waiting = std::move(waiting), alive = alive_](const Status&) {
    // A waiter may end the daemon's shutdown, and with it this saga: look before each step.
    for (const auto& w : waiting) {
      if (!*alive) return;
      w(op);
    }
    if (*alive) check_drained();
  });
  check_drained();
}

void PaymentSaga::drain(std::function<void()> done) {
  drained_.push_back(std::move(done));
  check_drained();
}

void PaymentSaga::check_drained() {
  if (drained_.empty()) return;
  for (const auto& [id, f] : flights_) {
    if (f->op.kind != OperationKind::authorize && !f->answered) return;
  }
  auto waiting = std::move(drained_);
  drained_.clear();
  for (auto& w : waiting) w();
}

void PaymentSaga::start_void(const std::string& txn, const std::string& method, const std::string& why, std::optional<MoneyOperation> authorization) {
  MoneyOperation op{.id = txn + "/void", .txn = txn, .kind = OperationKind::void_, .amount_fen = 0, .method = method, .channel = {},
                    .state = OperationStateRow::intent, .reference = {}, .reason = why, .attempts = 0, .created = clock_.now(),
                    .updated = clock_.now(), .next_attempt = std::nullopt};
  // The authorisation's end and the release's intent commit together: a crash between them
  // would leave a hold that nothing releases.
  store_.submit([op, authorization, recorded = hooks_.recorded](Database& db) {
                  if (authorization) {
                    operations::update(db, *authorization);
                    if (recorded) recorded(db, *authorization);
                  }
                  operations::insert_intent(db, op);
                },
                [this, op, alive = alive_](Status st) {
                  if (!*alive) return;
                  if (!st.ok()) {
                    spdlog::error("{}: the release is not on disk ({}); released at the next start", op.txn, st.message());
                    return;
                  }
                  execute(op, {});
                });
}

void PaymentSaga::release(const std::string& txn, const std::string& method) { start_void(txn, method, "not captured", std::nullopt); }

void PaymentSaga::refund(const std::string& txn, const std::string& method, std::int64_t amount_fen, const std::string& reason, OperationDone done) {
  auto op = std::make_shared<MoneyOperation>(MoneyOperation{.id = {}, .txn = txn, .kind = OperationKind::refund, .amount_fen = amount_fen,
                                                            .method = method, .channel = {}, .state = OperationStateRow::intent, .reference = {},
                                                            .reason = reason, .attempts = 0, .created = clock_.now(), .updated = clock_.now(),
                                                            .next_attempt = std::nullopt});
  // The id is chosen on the storage thread, where refunds are numbered without a race.
  store_.submit(
      [op](Database& db) {
        op->id = operations::next_refund_id(db.handle(), op->txn);
        operations::insert_intent(db, *op);
      },
      [this, op, done = std::move(done), alive = alive_](Status st) mutable {
        if (!*alive) return;
        if (!st.ok()) {
          op->state = OperationStateRow::failed;
          op->reason = fmt::format("database: {}", st.message());
          if (done) done(*op);
          return;
        }
        execute(*op, std::move(done));
      });
}

void PaymentSaga::resume() {
  for (MoneyOperation& op : operations::unfinished(reader_)) {
    if (op.kind == OperationKind::authorize) {
      // Cut off by a crash or a stop: whatever the acquirer decided, nothing started on it.
      spdlog::warn("{}: authorisation at '{}' interrupted; releasing it", op.txn, op.method);
      op.state = OperationStateRow::failed;
      op.reason = "interrupted by a restart";
      op.updated = clock_.now();
      start_void(op.txn, op.method, "interrupted by a restart", op);
      continue;
    }
    spdlog::warn("{}: {} of {} fen at '{}' has no outcome yet; asking again", op.txn, to_string(op.kind), op.amount_fen, op.method);
    execute(op, {});
  }
  for (const MoneyOperation& op : operations::orphan_holds(reader_)) {
    spdlog::warn("{}: authorised at '{}' for a session that never started; releasing the hold", op.txn, op.method);
    start_void(op.txn, op.method, "the session never started", std::nullopt);
  }
}

}  // namespace pilecore::core
