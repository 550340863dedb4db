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
  bool stepped_up = false;         ///< the channel answered once already (a step-up): not counted again
  identification::Token token;     ///< kept for a failover to the next channel
  std::string key;                 ///< "<txn>/authorize": the flight's name whatever attempt it is on
  std::shared_ptr<identification::Exchange> exchange;  ///< the card's channel, while the authorisation lasts
  std::vector<std::string> route;  ///< the router's order of channels (empty: not routed)
  std::size_t route_pos = 0;
  TimePoint overall_deadline{};    ///< the method's deadline, across failovers
  std::optional<std::string> pin;  ///< risk's second factor: relayed to the method's pin challenge, never logged
  bool pin_relayed = false;        ///< ...and the method has been given it
};

namespace {
/// "<txn>/void" releases "<txn>/authorize"; "<txn>/void/<n>" releases "<txn>/authorize/<n>".
std::string swap_part(std::string id, std::string_view from, std::string_view to) {
  if (const auto at = id.rfind(from); at != std::string::npos) id.replace(at, from.size(), to);
  return id;
}
}  // namespace

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
                            std::int64_t amount_fen, ChallengeSink challenged, AuthorizationDone done, std::optional<std::string> pin) {
  auto f = std::make_shared<Flight>();
  f->pin = std::move(pin);
  f->op = {.id = txn + "/authorize", .txn = txn, .kind = OperationKind::authorize, .amount_fen = amount_fen, .method = method,
           .channel = {}, .state = OperationStateRow::intent, .reference = {}, .reason = {}, .attempts = 1, .created = clock_.now(),
           .updated = clock_.now(), .next_attempt = std::nullopt, .routing = {}};
  f->key = f->op.id;
  f->connector = connector;
  f->auth_done = std::move(done);
  f->challenged = std::move(challenged);
  f->token = token;
  f->exchange = token.exchange;
  if (flights_.count(f->key) != 0) {
    f->auth_done({.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {}, .reason = "already being authorised", .timed_out = false});
    return;
  }
  if (router_ != nullptr && router_->routes(method)) {
    // The user's preferred channel, when the token names one (a wallet app's choice).
    const std::string preferred(token.find("channel").value_or(""));
    const RoutingDecision d = router_->choose(method, preferred, clock_.now());
    f->route = d.order;
    f->op.channel = f->route.front();
    f->op.routing = d.summary();
  }
  flights_[f->key] = f;
  // The intent is on disk before the acquirer is asked: a crash after this line leaves a row that
  // resume() releases.
  store_.submit([op = f->op](Database& db) { operations::insert_intent(db, op); },
                [this, f, alive = alive_](Status st) {
                  if (!*alive) return;
                  if (!st.ok()) {
                    flights_.erase(f->key);
                    f->auth_done({.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {},
                                  .reason = fmt::format("database: {}", st.message()), .timed_out = false});
                    return;
                  }
                  // The method's deadline counts from when it is asked: the time our own disk took
                  // to make the intent durable is not the acquirer's.
                  f->overall_deadline = clock_.now() + settings_.authorize_timeout;
                  ask_authorize(f);
                });
}

bool PaymentSaga::can_fail_over(const Flight& f) const { return f.route_pos + 1 < f.route.size() && clock_.now() < f.overall_deadline; }

void PaymentSaga::route_outcome(const Flight& f, bool ok) {
  if (router_ == nullptr || f.route.empty()) return;
  const RoutingBucket b = router_->record(f.op.method, f.op.channel, ok, clock_.now());
  if (b.channel.empty()) return;
  store_.submit([b](Database& db) { routing_stats::save(db, b); },
                [b](const Status& st) {
                  if (!st.ok()) spdlog::warn("routing counts of {}/{} not saved: {}", b.method, b.channel, st.message());
                });
}

void PaymentSaga::fail_over(const std::shared_ptr<Flight>& f, const std::string& why, bool release) {
  const std::string from = f->op.channel;
  MoneyOperation failed = f->op;
  failed.state = OperationStateRow::failed;
  failed.amount_fen = 0;
  failed.reason = fmt::format("channel {}: {}; failed over to {}", from, why, f->route[f->route_pos + 1]);
  failed.updated = clock_.now();
  if (release) {
    start_void(failed, why, true);
  } else {
    record(failed, {});
  }
  spdlog::warn("{}: channel {} of '{}': {}; trying {}", f->op.txn, from, f->op.method, why, f->route[f->route_pos + 1]);
  ++f->route_pos;
  f->op.id = fmt::format("{}/authorize/{}", f->op.txn, f->route_pos + 1);
  f->op.channel = f->route[f->route_pos];
  f->op.routing = fmt::format("{}; failed over from {} ({})", f->op.routing, from, why);
  f->op.state = OperationStateRow::intent;
  f->op.reference.clear();
  f->op.reason.clear();
  f->op.created = f->op.updated = clock_.now();
  store_.submit([op = f->op](Database& db) { operations::insert_intent(db, op); },
                [this, f, alive = alive_](Status st) {
                  if (!*alive) return;
                  if (!st.ok()) {
                    finish_authorization(f, {.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {},
                                             .reason = fmt::format("database: {}", st.message()), .timed_out = false},
                                         OperationStateRow::failed);
                    return;
                  }
                  ask_authorize(f);
                });
}

void PaymentSaga::ask_authorize(const std::shared_ptr<Flight>& f) {
  payment::Method* m = hooks_.method ? hooks_.method(f->op.method) : nullptr;
  if (m == nullptr) {
    finish_authorization(f, {.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {},
                             .reason = fmt::format("payment instance '{}' is not running", f->op.method), .timed_out = false},
                         OperationStateRow::failed);
    return;
  }
  const std::uint64_t attempt = ++f->attempt;
  f->answered = false;
  // Routed: each channel gets channel_timeout of what is left of the method's deadline, so a
  // silent one leaves time for the next.
  Duration wait = std::chrono::duration_cast<Duration>(f->overall_deadline - clock_.now());
  if (!f->route.empty() && can_fail_over(*f)) wait = std::min(wait, std::chrono::duration_cast<Duration>(router_->rule().channel_timeout));
  wait = std::max(wait, Duration(1));
  const TimePoint deadline = clock_.now() + wait;
  f->deadline = scheduler_.after(wait, [this, f, attempt] {
    if (f->attempt != attempt || f->answered) return;
    f->answered = true;
    route_outcome(*f, false);
    if (can_fail_over(*f)) {
      fail_over(f, "no answer in time", true);
      return;
    }
    spdlog::warn("{}: '{}' did not answer the authorisation in time; releasing whatever it may hold", f->op.txn, f->op.method);
    finish_authorization(f, {.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {},
                             .reason = "the payment method did not answer in time", .timed_out = true},
                         OperationStateRow::failed);
  });
  f->token.exchange = f->exchange;
  payment::AuthorizationRequest req{.operation_id = f->op.id, .transaction_id = f->op.txn, .connector = f->connector, .token = &f->token,
                                    .channel = f->op.channel, .amount_fen = f->op.amount_fen, .deadline = deadline,
                                    .pin_required = f->pin.has_value()};
  InFlight mark(f->op.method, "authorize");  // a crash in the plugin is attributed to it
  m->authorize(req, [this, f, attempt, alive = alive_](payment::AuthorizationResult r) {
    if (!*alive || f->attempt != attempt || f->answered) return;  // late: the deadline already decided
    f->answered = true;
    scheduler_.cancel(f->deadline);
    on_authorization(f, std::move(r));
  });
}

void PaymentSaga::on_authorization(const std::shared_ptr<Flight>& f, payment::AuthorizationResult r) {
  if (!f->stepped_up) route_outcome(*f, r.decision != payment::Decision::unavailable);
  switch (r.decision) {
    case payment::Decision::unavailable:
      // The channel failed and holds nothing: the next one, or declined with what failed.
      if (can_fail_over(*f)) {
        fail_over(f, r.reason.empty() ? std::string("unavailable") : r.reason, false);
        return;
      }
      finish_authorization(f, {.decision = payment::Decision::declined, .authorized_fen = 0, .reference = r.reference,
                               .reason = fmt::format("the payment could not be taken: {}", r.reason.empty() ? "unavailable" : r.reason),
                               .timed_out = false},
                           OperationStateRow::failed);
      return;
    case payment::Decision::approved:
      if (f->pin && !f->pin_relayed) {
        // Risk control asked for the PIN and the method approved without checking it: the second
        // factor would be skipped, so the hold is released and the start refused.
        spdlog::error("{}: '{}' approved without the PIN risk control asked for; released", f->op.txn, f->op.method);
        finish_authorization(f, {.decision = payment::Decision::declined, .authorized_fen = 0, .reference = r.reference,
                                 .reason = "the payment method approved without checking the PIN", .timed_out = false},
                             OperationStateRow::failed, true);
        return;
      }
      if (r.authorized_fen <= 0) {
        finish_authorization(f, {.decision = payment::Decision::declined, .authorized_fen = 0, .reference = r.reference,
                                 .reason = "approved for nothing", .timed_out = false},
                             OperationStateRow::failed, true);
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
      f->stepped_up = true;
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
      if (f->pin && !f->pin_relayed && r.challenge.kind == payment::ChallengeKind::pin) {
        // The driver entered the PIN before the method was asked: relay it (once; a second
        // challenge, after a wrong PIN, goes to the driver).
        f->pin_relayed = true;
        scheduler_.after(Duration(0), [this, f, attempt, pin = *f->pin] {
          if (f->attempt != attempt || !f->awaiting_answer) return;
          (void)answer_step_up(f->op.txn, {.kind = payment::ChallengeKind::pin, .value = pin, .confirmed = false});
        });
        f->pin->clear();  // keeps "a PIN was asked" without keeping the digits
        return;
      }
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
  flights_.erase(f->key);
  f->exchange.reset();
  f->token.exchange.reset();
  f->op.state = state;
  f->op.amount_fen = state == OperationStateRow::confirmed ? a.authorized_fen : 0;
  f->op.reference = a.reference;
  f->op.reason = a.reason;
  f->op.updated = clock_.now();
  if (state == OperationStateRow::confirmed) approved_[f->op.txn] = f->op;
  if (a.timed_out || release) {
    start_void(f->op, a.timed_out ? "no answer in time" : a.reason == "approved for nothing" ? "an approval for 0 fen" : "declined", true);
  } else {
    // Not waited for: whatever the caller commits next (the transaction row) is ordered after it.
    record(f->op, {});
  }
  auto done = std::move(f->auth_done);
  if (done) done(std::move(a));
}

// --- capture, void, refund ---------------------------------------------------------------------

MoneyOperation PaymentSaga::capture_intent(const std::string& txn, const std::string& method, std::int64_t amount_fen) const {
  // Captured where it was authorised (the router's channel, after any failover).
  const auto approved = approved_.find(txn);
  std::string channel = approved != approved_.end() ? approved->second.channel : std::string();
  return {.id = txn + "/capture", .txn = txn, .kind = OperationKind::capture, .amount_fen = amount_fen, .method = method, .channel = std::move(channel),
          .state = OperationStateRow::intent, .reference = {}, .reason = {}, .attempts = 0, .created = clock_.now(), .updated = clock_.now(),
          .next_attempt = std::nullopt, .routing = {}};
}

void PaymentSaga::execute(MoneyOperation op, OperationDone first) {
  if (auto it = flights_.find(op.id); it != flights_.end()) {
    if (first) it->second->first.push_back(std::move(first));
    return;
  }
  if (op.kind == OperationKind::capture) approved_.erase(op.txn);  // nothing left to release
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
    case OperationKind::void_: {
      const std::string authorization = swap_part(f->op.id, "/void", "/authorize");
      m->cancel({.operation_id = f->op.id, .transaction_id = f->op.txn, .deadline = deadline, .authorization_id = authorization, .channel = f->op.channel},
                cb);
      break;
    }
    case OperationKind::refund:
      m->refund({.operation_id = f->op.id, .transaction_id = f->op.txn, .amount_fen = f->op.amount_fen, .reason = f->op.reason, .deadline = deadline}, cb);
      break;
    case OperationKind::increment: {
      // The hold once raised: the authorisation and the top-ups confirmed before this one.
      const MoneyOperation auth = authorization_of(f->op.txn, f->op.method);
      std::int64_t total = auth.amount_fen + f->op.amount_fen;
      if (approved_.count(f->op.txn) == 0) {
        for (const auto& o : operations::of_transaction(reader_, f->op.txn)) {
          if (o.kind == OperationKind::increment && o.state == OperationStateRow::confirmed && o.id != f->op.id) total += o.amount_fen;
        }
      }
      m->increment({.operation_id = f->op.id, .transaction_id = f->op.txn, .authorization_id = auth.id, .channel = auth.channel,
                    .amount_fen = f->op.amount_fen, .total_fen = total, .deadline = deadline},
                   [cb](payment::AuthorizationResult r) {
                     // An authorisation's answer as an operation's outcome: a top-up that holds
                     // nothing (declined, unavailable, a step-up it cannot ask) failed.
                     const bool granted = r.decision == payment::Decision::approved && r.authorized_fen > 0;
                     std::string why = r.reason;
                     if (!granted && why.empty()) why = fmt::format("top-up {}", to_string(r.decision));
                     if (r.decision == payment::Decision::step_up) why = "a top-up cannot ask a step-up; declined";
                     cb({.state = granted ? payment::OperationState::confirmed : payment::OperationState::failed,
                         .amount_fen = granted ? r.authorized_fen : 0, .reference = r.reference, .reason = why});
                   });
      break;
    }
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
      if (f->op.kind == OperationKind::increment) {
        if (auto a = approved_.find(f->op.txn); a != approved_.end()) a->second.amount_fen += f->op.amount_fen;  // the next top-up's total
      }
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

MoneyOperation PaymentSaga::authorization_of(const std::string& txn, const std::string& method) const {
  if (auto it = approved_.find(txn); it != approved_.end()) return it->second;
  if (auto op = operations::confirmed_authorization(reader_, txn)) return *op;
  MoneyOperation op;
  op.id = txn + "/authorize";
  op.txn = txn;
  op.method = method;
  return op;
}

void PaymentSaga::start_void(const MoneyOperation& authorization, const std::string& why, bool write_outcome) {
  approved_.erase(authorization.txn);
  MoneyOperation op{.id = swap_part(authorization.id, "/authorize", "/void"), .txn = authorization.txn, .kind = OperationKind::void_,
                    .amount_fen = 0, .method = authorization.method, .channel = authorization.channel, .state = OperationStateRow::intent,
                    .reference = {}, .reason = why, .attempts = 0, .created = clock_.now(), .updated = clock_.now(),
                    .next_attempt = std::nullopt, .routing = {}};
  std::optional<MoneyOperation> outcome;
  if (write_outcome) outcome = authorization;
  // The authorisation's end and the release's intent commit together: a crash between them
  // would leave a hold that nothing releases.
  store_.submit([op, authorization = outcome, recorded = hooks_.recorded](Database& db) {
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

void PaymentSaga::release(const std::string& txn, const std::string& method) { start_void(authorization_of(txn, method), "not captured", false); }

void PaymentSaga::refund(const std::string& txn, const std::string& method, std::int64_t amount_fen, const std::string& reason, OperationDone done) {
  auto op = std::make_shared<MoneyOperation>(MoneyOperation{.id = {}, .txn = txn, .kind = OperationKind::refund, .amount_fen = amount_fen,
                                                            .method = method, .channel = {}, .state = OperationStateRow::intent, .reference = {},
                                                            .reason = reason, .attempts = 0, .created = clock_.now(), .updated = clock_.now(),
                                                            .next_attempt = std::nullopt, .routing = {}});
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

void PaymentSaga::increment(const std::string& txn, const std::string& method, std::int64_t amount_fen, OperationDone first) {
  const auto approved = approved_.find(txn);
  auto op = std::make_shared<MoneyOperation>(MoneyOperation{
      .id = {}, .txn = txn, .kind = OperationKind::increment, .amount_fen = amount_fen, .method = method,
      .channel = approved != approved_.end() ? approved->second.channel : std::string(), .state = OperationStateRow::intent, .reference = {},
      .reason = {}, .attempts = 0, .created = clock_.now(), .updated = clock_.now(), .next_attempt = std::nullopt, .routing = {}});
  // Numbered on the storage thread, like refunds; the intent is on disk before the plugin is asked.
  store_.submit(
      [op](Database& db) {
        op->id = operations::next_increment_id(db.handle(), op->txn);
        operations::insert_intent(db, *op);
      },
      [this, op, first = std::move(first), alive = alive_](Status st) mutable {
        if (!*alive) return;
        if (!st.ok()) {
          op->state = OperationStateRow::failed;
          op->reason = fmt::format("database: {}", st.message());
          if (first) first(*op);
          return;
        }
        execute(*op, std::move(first));
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
      start_void(op, "interrupted by a restart", true);
      continue;
    }
    spdlog::warn("{}: {} of {} fen at '{}' has no outcome yet; asking again", op.txn, to_string(op.kind), op.amount_fen, op.method);
    execute(op, {});
  }
  for (const MoneyOperation& op : operations::orphan_holds(reader_)) {
    spdlog::warn("{}: authorised at '{}' for a session that never started; releasing the hold", op.txn, op.method);
    start_void(op, "the session never started", false);
  }
}

}  // namespace pilecore::core
