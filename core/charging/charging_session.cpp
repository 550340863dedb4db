#include "charging_session.hpp"

#include <cmath>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "clocks.hpp"
#include "reading_repository.hpp"
#include "tariff_repository.hpp"
#include "receipt.hpp"
#include "tariff.hpp"
#include "token_privacy.hpp"
#include "transaction_repository.hpp"

namespace pilecore::core {

std::string_view to_string(StopReason r) {
  switch (r) {
    case StopReason::local: return "Local";
    case StopReason::remote: return "Remote";
    case StopReason::ev_full: return "EVFull";
    case StopReason::ev_disconnected: return "EVDisconnected";
    case StopReason::funds_exhausted: return "FundsExhausted";
    case StopReason::fault: return "Fault";
    case StopReason::shutdown: return "Shutdown";
    case StopReason::energy_reached: return "EnergyReached";
    case StopReason::time_reached: return "TimeReached";
    case StopReason::amount_reached: return "AmountReached";
  }
  return "Other";
}

std::optional<StopReason> stop_reason_from(std::string_view s) {
  for (auto r : {StopReason::local, StopReason::remote, StopReason::ev_full, StopReason::ev_disconnected, StopReason::funds_exhausted, StopReason::fault,
                 StopReason::shutdown, StopReason::energy_reached, StopReason::time_reached, StopReason::amount_reached}) {
    if (to_string(r) == s) return r;
  }
  return std::nullopt;
}

namespace {

/// Runs a work through the storage thread and only logs a failure (the stop mark, boundary
/// readings: the close's final reading covers what they record).
void submit_logged(StoreWorker& store, std::string what, StoreWorker::Work work) {
  store.submit(std::move(work), [what = std::move(what)](const Status& st) {
    if (!st.ok()) spdlog::error("{} not committed: {}", what, st.message());
  });
}

bool follows(const MeterReading& r, const MeterReading& last) { return r.time >= last.time && r.wh >= last.wh; }

}  // namespace

// ---- SessionCloser ----

SessionCloser::SessionCloser(std::string site_id, StoreWorker& store, PaymentSaga& saga, Hooks hooks)
    : site_id_(std::move(site_id)), store_(store), saga_(saga), hooks_(std::move(hooks)), alive_(std::make_shared<bool>(true)) {}

SessionCloser::~SessionCloser() { *alive_ = false; }

void SessionCloser::close(const std::string& txn, std::uint32_t connector, const std::string& method, std::vector<MeterReading> readings,
                          const std::string& outcome, std::int64_t authorized, const std::string& mode, const Tariff& tariff, StopDone done) {
  Bill bill;
  std::string tariff_note;
  try {
    bill = compute_bill(tariff, readings);
    // The site's price changed while it charged (a reload, or a restart with a new file): the
    // receipt says which price it paid.
    if (!current_tariff_.empty() && tariff_digest(tariff.document().dump()) != current_tariff_) {
      tariff_note = "priced at the tariff in force when the session started (the site's tariff has changed since)";
    }
  } catch (const std::exception& e) {
    spdlog::critical("{}: cannot bill: {}", txn, e.what());
    bill = Bill{};
  }
  // Never captured above the hold; what the final reading billed beyond it is recorded as
  // uncovered on the record the ledger signs and on the receipt, never silently dropped.
  const std::int64_t capture = std::min(bill.total_fen, authorized);
  const std::int64_t uncovered = std::max<std::int64_t>(0, bill.total_fen - authorized);
  if (uncovered > 0) spdlog::warn("{}: billed {} fen over the {} fen held: {} fen uncovered, not captured", txn, bill.total_fen, authorized, uncovered);
  const MoneyOperation op = saga_.capture_intent(txn, method, capture);
  auto record = std::make_shared<SessionRecord>();
  // One transaction: the final reading, the bill, 'closed', the session's ledger record and the
  // capture's intent. The capture is asked only once all of that is on disk. The work runs on the
  // storage thread and may outlive this object: it holds copies, not `this`.
  store_.submit(
      [txn, connector, method, readings, outcome, bill, capture, op, record, authorized, uncovered, mode, tariff_note, site = site_id_, append = hooks_.ledger_append,
       contains = hooks_.ledger_contains](Database& db) {
        TransactionRepository transactions(db);
        const auto row = transactions.find(txn);
        if (!row) throw std::runtime_error(fmt::format("no transaction '{}'", txn));
        if (row->status == "closed") throw std::runtime_error(fmt::format("{} is already closed", txn));
        *record = SessionRecord{.transaction = txn,
                                .site = site,
                                .connector = connector,
                                .method = method,
                                .user = row->user_token,
                                .payment_ref = row->payment_ref,
                                .started = row->started,
                                .stop_reason = row->stop_reason.empty() ? std::string("Recovered") : row->stop_reason,
                                .stopped = row->stopped.value_or(readings.back().time),
                                .meter_start_wh = readings.front().wh,
                                .meter_stop_wh = readings.back().wh,
                                .bill = bill,
                                .capture_fen = capture,
                                .capture_operation = op.id,
                                .outcome = outcome,
                                .authorized_fen = authorized,
                                .uncovered_fen = uncovered,
                                .mode = mode};
        ReadingRepository reading_rows(db);
        reading_rows.insert(txn, reading_rows.next_seq(txn), {readings.back().time, readings.back().wh},
                            outcome == "recovered" ? ReadingKind::recovery : ReadingKind::stop);
        transactions.close(txn, {.outcome = outcome,
                                 .meter_stop_wh = readings.back().wh,
                                 .energy_wh = bill.energy_wh,
                                 .electricity_fen = bill.electricity_fen,
                                 .service_fen = bill.service_fen,
                                 .total_fen = bill.total_fen,
                                 .capture_status = capture > 0 ? "pending" : "nothing to capture",
                                 .bill_document = [&] {
                                   auto doc = bill_json(bill);
                                   if (!tariff_note.empty()) doc["tariff_note"] = tariff_note;
                                   return doc.dump();
                                 }(),
                                 .stopped = readings.back().time});
        if (capture > 0) operations::insert_intent(db, op);
        if (append && !(contains && contains(txn))) append(*record);
      },
      [this, txn, connector, method, bill, capture, op, outcome, record, done = std::move(done), alive = alive_](const Status& st) {
        if (!*alive) return;
        if (!st.ok()) {
          spdlog::critical("{}: could not close the transaction: {}; the session stays open and the close is retried", txn, st.message());
          done(StopOutcome::not_committed(st.message(), txn));
          return;
        }
        spdlog::info("connector {}: {}: {} {} Wh, {} fen; capturing {} fen", connector, txn, outcome, bill.energy_wh, bill.total_fen, capture);
        auto closed = [this, txn, connector, bill, outcome, record, done, alive](const MoneyOperation* captured) {
          if (!*alive) return;
          CloseReceipt r{.record = *record,
                         .captured_fen = captured && captured->state == OperationStateRow::confirmed ? captured->amount_fen : 0,
                         .capture_status = captured == nullptr                               ? "nothing to capture"
                                           : captured->state == OperationStateRow::confirmed ? "captured"
                                           : captured->state == OperationStateRow::pending   ? fmt::format("pending: {}", captured->reason)
                                                                                             : fmt::format("failed: {}", captured->reason)};
          r.record.user = token_ref(r.record.user);  // the ledger keeps the token; a reply names it only masked
          if (hooks_.emit) {
            hooks_.emit(events::SessionClosed{.connector = connector,
                                              .transaction = txn,
                                              .outcome = outcome,
                                              .stop_reason = r.record.stop_reason,
                                              .energy_wh = bill.energy_wh,
                                              .total_fen = bill.total_fen,
                                              .captured_fen = r.captured_fen,
                                              .capture_status = r.capture_status,
                                              .uncovered_fen = r.record.uncovered_fen});
          }
          done(StopOutcome::closed(txn, std::move(r)));
        };
        if (capture <= 0) {
          saga_.release(txn, method);
          closed(nullptr);
          return;
        }
        auto capture_now = [this, op, closed, alive] {
          if (*alive) saga_.execute(op, [closed](const MoneyOperation& result) { closed(&result); });
        };
        if (hooks_.before_capture) {
          hooks_.before_capture(txn, connector, method, capture, std::move(capture_now));
        } else {
          capture_now();
        }
      });
}

// ---- ChargingSession ----

ChargingSession::ChargingSession(Settings settings, MeterPlausibility plausibility, std::int64_t max_power_w, StoreWorker& store, Scheduler& scheduler,
                                 const Clock& clock, SessionCloser* closer, Hooks hooks)
    : settings_(std::move(settings)),
      guard_(plausibility, max_power_w),
      store_(store),
      scheduler_(scheduler),
      clock_(clock),
      closer_(closer),
      hooks_(std::move(hooks)),
      alive_(std::make_shared<bool>(true)) {}

ChargingSession::~ChargingSession() {
  *alive_ = false;
  cancel_timers();
  if (close_retry_) scheduler_.cancel(close_retry_);
  for (const auto& w : waiters_) scheduler_.cancel(w.timeout);
}

void ChargingSession::cancel_timers() {
  if (boundary_timer_) scheduler_.cancel(boundary_timer_);
  if (setpoint_timer_) scheduler_.cancel(setpoint_timer_);
  if (time_target_timer_) scheduler_.cancel(time_target_timer_);
  boundary_timer_ = setpoint_timer_ = time_target_timer_ = 0;
}

void ChargingSession::on_sample(TimePoint time, double value_wh) {
  const MeterCheck chk = guard_.check(time, value_wh, running_.has_value());
  if (hooks_.meter_check) hooks_.meter_check(chk, value_wh);
  check_stall();  // after the reading: it may just have moved
  if (!chk.plausible) return;  // never committed, billed, nor handed to a waiter
  const MeterReading r = chk.reading;
  const std::optional<MeterReading> previous = last_;
  before_last_ = last_;
  last_ = r;
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    if (r.time >= it->after) {
      auto done = std::move(it->done);
      scheduler_.cancel(it->timeout);
      it = waiters_.erase(it);
      done(r);
    } else {
      ++it;
    }
  }
  if (running_ && !running_->stopping) {
    checkpoint(r);
    if (running_ && !running_->stopping) check_funds(r, previous);
  }
}

void ChargingSession::check_funds(const MeterReading& r, const std::optional<MeterReading>& previous) {
  Running& s = *running_;
  if (s.funds_stop_asked || s.target_stop_asked) return;
  std::vector<MeterReading> readings = s.readings;
  if (follows(r, readings.back()) && (r.wh != readings.back().wh || r.time != readings.back().time)) readings.push_back(r);
  const Bill so_far = compute_bill(*s.tariff, readings);
  // A session never costs more than was authorised: it stops while the bill plus what one more
  // meter interval may add (the energy of the last one, at the price now) is within the hold, so
  // the energy that flows until the contactor opens and the final reading is taken is covered.
  std::int64_t margin_fen = 0;
  if (previous && r.wh > previous->wh) {
    const Price price = s.tariff->slot_at(r.time).price;
    const std::int64_t scale = static_cast<std::int64_t>(std::pow(10, s.tariff->decimals())) * 1000;  // price unit x Wh -> fen
    const std::int64_t per_kwh = price.electricity + price.service;
    margin_fen = ((r.wh - previous->wh) * per_kwh + scale - 1) / scale;
  }
  // The mode's target first: a session that reaches the amount it asked for stops for that,
  // not for funds, even though its hold is the same amount.
  if (check_target(r, previous, so_far.total_fen, margin_fen)) return;
  // Before the hold is reached, a method that can raise it is asked to (one top-up at a time),
  // early enough that its answer lands before the stop would be due.
  const std::int64_t step = settings_.increment_step_fen;
  if (hooks_.top_up && step > 0 && !s.increment_asked && !s.increments_over && s.mode.kind != ModeKind::amount &&
      so_far.total_fen + margin_fen + step / 2 >= s.authorized_fen) {
    s.increment_asked = true;
    spdlog::info("connector {}: {}: bill {} fen nears the authorised {} fen; asking a top-up", settings_.connector, s.id, so_far.total_fen, s.authorized_fen);
    hooks_.top_up(so_far.total_fen);
    // An answer given at once (unsupported) has already decided, on this reading.
    if (!running_ || running_->stopping || running_->funds_stop_asked) return;
  }
  // A top-up still out when the hold is reached came too late: the stop does not wait for it.
  if (so_far.total_fen + margin_fen >= s.authorized_fen) {
    s.funds_stop_asked = true;
    spdlog::info("connector {}: {}: bill {} fen and the next interval's ~{} fen reach the authorised {} fen", settings_.connector, s.id, so_far.total_fen,
                 margin_fen, s.authorized_fen);
    if (hooks_.stop) hooks_.stop(StopReason::funds_exhausted);
  }
}

bool ChargingSession::check_target(const MeterReading& r, const std::optional<MeterReading>& previous, std::int64_t bill_fen, std::int64_t margin_fen) {
  Running& s = *running_;
  const std::int64_t interval_wh = previous && r.wh > previous->wh ? r.wh - previous->wh : 0;
  StopReason reason = StopReason::local;
  bool reached = false;
  switch (s.mode.kind) {
    case ModeKind::energy:
      // Like the hold: stopped while one more interval still fits, so the energy that flows
      // until the contactor opens does not overshoot what was asked (and held for).
      reached = r.wh - s.readings.front().wh + interval_wh >= s.mode.target;
      reason = StopReason::energy_reached;
      break;
    case ModeKind::amount:
      reached = bill_fen + margin_fen >= s.mode.target;
      reason = StopReason::amount_reached;
      break;
    case ModeKind::time:
    case ModeKind::full: return false;  // time: a timer (arm_time_target); full: the vehicle says so
  }
  if (!reached) return false;
  s.target_stop_asked = true;
  spdlog::info("connector {}: {}: {} reached ({} Wh, {} fen)", settings_.connector, s.id, s.mode.text(), r.wh - s.readings.front().wh, bill_fen);
  if (hooks_.stop) hooks_.stop(reason);
  return true;
}

void ChargingSession::arm_time_target() {
  if (!running_ || running_->mode.kind != ModeKind::time) return;
  const TimePoint until = running_->readings.front().time + std::chrono::seconds(running_->mode.target);
  const Duration wait = std::max(Duration(0), std::chrono::duration_cast<Duration>(until - clock_.now()));
  time_target_timer_ = scheduler_.after(wait, [this, txn = running_->id] {
    time_target_timer_ = 0;
    if (!running_ || running_->stopping || running_->id != txn || running_->target_stop_asked || running_->funds_stop_asked) return;
    running_->target_stop_asked = true;
    spdlog::info("connector {}: {}: {} reached", settings_.connector, txn, running_->mode.text());
    if (hooks_.stop) hooks_.stop(StopReason::time_reached);
  });
}

void ChargingSession::increment_answered(std::optional<std::int64_t> authorized_total) {
  if (!running_ || !running_->increment_asked) return;
  Running& s = *running_;
  s.increment_asked = false;
  if (authorized_total && *authorized_total > s.authorized_fen) {
    spdlog::info("connector {}: {}: hold raised from {} to {} fen", settings_.connector, s.id, s.authorized_fen, *authorized_total);
    s.authorized_fen = *authorized_total;
  } else {
    s.increments_over = true;
  }
  // The bill may have reached the old hold while the top-up was out: decide now on the last reading.
  if (!s.stopping && last_) check_funds(*last_, before_last_);
}

void ChargingSession::read_meter(ReadingDone done) {
  const std::uint64_t id = ++next_waiter_;
  const std::int64_t timeout_ms = settings_.charging.meter_timeout_ms;
  // The timer first: a meter that publishes inside refresh() serves the waiter at once.
  const TimerId timeout = scheduler_.after(Duration(timeout_ms), [this, id, timeout_ms] {
    for (auto it = waiters_.begin(); it != waiters_.end(); ++it) {
      if (it->id == id) {
        auto cb = std::move(it->done);
        waiters_.erase(it);
        spdlog::error("connector {}: meter '{}' gave no reading within {} ms", settings_.connector, settings_.meter, timeout_ms);
        cb(std::nullopt);
        return;
      }
    }
  });
  waiters_.push_back(Waiter{id, clock_.now(), std::move(done), timeout});
  if (hooks_.refresh_meter) hooks_.refresh_meter();
}

void ChargingSession::check_stall() {
  if (!hooks_.power_w) return;
  const auto power = hooks_.power_w();
  if (!power) return;
  if (auto stalled = guard_.check_power(clock_.now(), *power); stalled && hooks_.meter_check) {
    hooks_.meter_check(*stalled, static_cast<double>(last_ ? last_->wh : 0));
  }
}

void ChargingSession::open(const Opening& o, const MeterReading& start, std::function<void(const Status&)> committed) {
  store_.submit(
      [o, start, connector = settings_.connector](Database& db) {
        TransactionRepository(db).insert({.id = o.txn,
                                          .connector = connector,
                                          .method = o.method,
                                          .user_token = o.token,
                                          .user_hash = o.user_hash,
                                          .payment_ref = o.payment_ref,
                                          .authorized_fen = o.authorized_fen,
                                          .started = start.time,
                                          .meter_start_wh = start.wh,
                                          .mode = o.mode.text()});
        ReadingRepository(db).insert(o.txn, 0, {start.time, start.wh}, ReadingKind::start);
        TariffRepository(db).assign(o.txn, o.tariff_document, start.time);
      },
      // synchronous=FULL: on disk before the contactor closes
      [this, o, start, committed = std::move(committed), alive = alive_](const Status& st) {
        if (!*alive) return;
        if (st.ok()) {
          run_from({.txn = o.txn,
                    .method = o.method,
                    .token = o.token,
                    .authorized_fen = o.authorized_fen,
                    .mode = o.mode,
                    .tariff = o.tariff,
                    .readings = {start}});
        }
        committed(st);
      });
}

void ChargingSession::suspend(std::optional<MeterReading> reading, std::function<void(const Status&)> done) {
  if (!running_) return done(Status::success());
  Running& s = *running_;
  s.stopping = true;  // no checkpoint, boundary or target writes from here
  cancel_timers();
  const auto& last = guard_.last();
  if (!reading && last && follows(*last, s.readings.back())) reading = last;
  std::optional<MeterReading> extra;
  if (reading && follows(*reading, s.readings.back())) extra = reading;
  const MeterReading at = extra ? *extra : s.readings.back();
  const int seq = static_cast<int>(s.readings.size());
  store_.submit(
      [txn = s.id, seq, extra, at, now = clock_.now()](Database& db) {
        if (extra) ReadingRepository(db).insert(txn, seq, {extra->time, extra->wh}, ReadingKind::checkpoint);
        TransactionRepository(db).mark_suspended(txn, now, at.wh);
      },
      [this, txn = s.id, done = std::move(done), alive = alive_](const Status& st) {
        if (!*alive) return;
        if (running_ && running_->id == txn) running_.reset();
        auto waiting = std::move(on_closed_);
        on_closed_.clear();
        done(st);
        for (auto& w : waiting) w();
      });
}

void ChargingSession::resume(const Resuming& r, std::function<void(const Status&)> done) {
  store_.submit([txn = r.txn](Database& db) { TransactionRepository(db).clear_suspended(txn); },
                [this, r, done = std::move(done), alive = alive_](const Status& st) {
                  if (!*alive) return;
                  if (st.ok()) run_from(r);
                  done(st);
                });
}

void ChargingSession::run_from(const Resuming& r) {
  Running& run = running_.emplace();
  run.id = r.txn;
  run.method = r.method;
  run.token = r.token;
  run.authorized_fen = r.authorized_fen;
  run.mode = r.mode;
  run.tariff = r.tariff;
  run.readings = r.readings;
  run.last_checkpoint = r.readings.back();
  arm_boundary();
  arm_time_target();
}

bool ChargingSession::start_charging() {
  if (!running_ || running_->charging_started) return false;
  running_->charging_started = true;
  return true;
}

void ChargingSession::contactor_closed() { arm_setpoint(); }

void ChargingSession::set_setpoint(std::int64_t watts) {
  if (!running_) return;
  running_->setpoint_w = watts;
  running_->has_setpoint = true;
}

void ChargingSession::checkpoint(const MeterReading& r) {
  if (!running_ || running_->stopping) return;
  Running& s = *running_;
  const auto& ch = settings_.charging;
  if (r.time - s.last_checkpoint.time < Duration(ch.checkpoint_interval_ms) && r.wh - s.last_checkpoint.wh < ch.checkpoint_wh) return;
  // The guard let no reading below the last plausible one through; an older time stamp can still
  // come (a reading published before the last committed one): not a later reading, skipped.
  if (!follows(r, s.readings.back())) {
    spdlog::warn("connector {}: {}: reading {} Wh at {} precedes the committed {} Wh; not committed", settings_.connector, s.id, r.wh, format_utc(r.time),
                 s.readings.back().wh);
    return;
  }
  // Kept at once: the final reading, committed with the close, covers it whether or not this
  // commit succeeds; its sequence number is never reused.
  const int seq = static_cast<int>(s.readings.size());
  s.readings.push_back(r);
  s.last_checkpoint = r;
  store_.submit([txn = s.id, seq, r](Database& db) { ReadingRepository(db).insert(txn, seq, {r.time, r.wh}, ReadingKind::checkpoint); },
                [this, what = fmt::format("connector {}: {}: checkpoint", settings_.connector, s.id), alive = alive_](const Status& st) {
                  if (!*alive) return;
                  if (!st.ok()) spdlog::error("{} not committed: {}", what, st.message());
                  if (hooks_.checkpoint_committed) hooks_.checkpoint_committed(st);
                });
}

void ChargingSession::arm_boundary() {
  if (!running_) return;
  const Slot slot = running_->tariff->slot_at(clock_.now());
  boundary_timer_ = scheduler_.after(std::chrono::duration_cast<Duration>(slot.end - clock_.now()), [this, boundary = slot.end, txn = running_->id] {
    boundary_timer_ = 0;
    if (!running_ || running_->stopping || running_->id != txn) return;
    // A fresh reading at the boundary, so each period bills what flowed in it.
    read_meter([this, boundary, txn, alive = alive_](std::optional<MeterReading> m) {
      if (*alive && running_ && running_->id == txn) on_boundary(boundary, m);
    });
  });
}

void ChargingSession::on_boundary(TimePoint boundary, std::optional<MeterReading> m) {
  if (running_->stopping) return;
  Running& s = *running_;
  if (m && follows(*m, s.readings.back())) {
    const int seq = static_cast<int>(s.readings.size());
    s.readings.push_back(*m);
    s.last_checkpoint = *m;
    submit_logged(store_, fmt::format("connector {}: {}: boundary reading", settings_.connector, s.id),
                  [txn = s.id, seq, r = *m](Database& db) { ReadingRepository(db).insert(txn, seq, {r.time, r.wh}, ReadingKind::boundary); });
    spdlog::info("connector {}: {}: tariff boundary at {}: meter {} Wh", settings_.connector, s.id, format_utc(boundary), m->wh);
    const Slot next = s.tariff->slot_at(boundary);
    if (hooks_.emit) {
      hooks_.emit(events::TariffBoundary{.connector = settings_.connector,
                                         .transaction = s.id,
                                         .meter_wh = m->wh,
                                         .boundary = boundary,
                                         .period = std::string(to_string(next.type)),
                                         .plan = next.plan});
    }
  }
  arm_boundary();
}

void ChargingSession::arm_setpoint() {
  if (!running_) return;
  setpoint_timer_ = scheduler_.after(Duration(settings_.charging.setpoint_interval_ms), [this] {
    setpoint_timer_ = 0;
    if (!running_ || running_->stopping) return;
    check_stall();  // also when the meter has stopped publishing altogether
    if (!running_ || running_->stopping) return;
    if (hooks_.setpoint_due) hooks_.setpoint_due();
    arm_setpoint();
  });
}

void ChargingSession::begin_stop(StopReason reason) {
  if (!running_ || running_->stopping) return;
  running_->stopping = true;
  cancel_timers();
  submit_logged(store_, fmt::format("connector {}: {}: the stop", settings_.connector, running_->id),
                [txn = running_->id, why = std::string(to_string(reason)), at = clock_.now()](Database& db) {
                  TransactionRepository(db).mark_stopping(txn, why, at);
                });
}

void ChargingSession::close(std::optional<MeterReading> final_reading, StopDone done) {
  if (!running_) return;
  Running& s = *running_;
  std::vector<MeterReading> readings = s.readings;
  // Only the guard's plausible readings reach here: a lying meter bills to its last honest one.
  const auto& last = guard_.last();
  if (!final_reading && last && follows(*last, readings.back())) final_reading = last;
  if (final_reading && follows(*final_reading, readings.back())) {
    readings.push_back(*final_reading);
  } else {
    spdlog::error("connector {}: {}: no final meter reading; billing to the last committed one ({} Wh)", settings_.connector, s.id, readings.back().wh);
    readings.push_back(readings.back());
  }
  const std::string txn = s.id;
  closer_->close(txn, settings_.connector, s.method, readings, "completed", s.authorized_fen, s.mode.text(), *s.tariff,
                 [this, txn, last_reading = readings.back(), done = std::move(done), alive = alive_](StopOutcome outcome) mutable {
                   if (!*alive) return;
                   if (!outcome.ok && outcome.retry && running_ && running_->id == txn) {
                     // Not on disk (a full disk): the session stays, so nothing starts on this
                     // connector and nothing is billed twice, and the close is tried again.
                     if (++close_failures_ == 1 && hooks_.emit) {
                       hooks_.emit(events::CloseFailed{.connector = settings_.connector,
                                                       .message = fmt::format("{} cannot be closed: {}; retried", txn, outcome.error),
                                                       .active = true});
                     }
                     done(std::move(outcome));
                     if (close_retry_) scheduler_.cancel(close_retry_);
                     close_retry_ = scheduler_.after(Duration(settings_.charging.meter_timeout_ms + 1000), [this, txn, last_reading] {
                       close_retry_ = 0;
                       if (running_ && running_->id == txn) close(last_reading, [](const StopOutcome&) {});
                     });
                     return;
                   }
                   if (close_failures_ > 0 && hooks_.emit) {
                     hooks_.emit(events::CloseFailed{.connector = settings_.connector,
                                                     .message = fmt::format("{} closed after {} failed attempt(s)", txn, close_failures_),
                                                     .active = false});
                   }
                   close_failures_ = 0;
                   if (running_ && running_->id == txn) running_.reset();
                   if (outcome.ok && hooks_.checkpoint_committed) hooks_.checkpoint_committed(Status::success());  // the close is the last checkpoint
                   auto waiting = std::move(on_closed_);
                   on_closed_.clear();
                   done(std::move(outcome));
                   for (auto& w : waiting) w();  // last: the final one may finish the shutdown, destroying the engine
                 });
}

}  // namespace pilecore::core
