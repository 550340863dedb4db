#include "transaction_repository.hpp"

#include "outbox.hpp"
#include "statement.hpp"

namespace pilecore::core {
namespace {
std::int64_t ms_of(TimePoint t) { return t.time_since_epoch().count(); }
TimePoint tp_of(std::int64_t ms) { return TimePoint{Duration{ms}}; }
}  // namespace

void TransactionRepository::insert(const OpenedTransaction& t) {
  Stmt(db_,
       "INSERT INTO transactions(id, connector, method, user_token, user_hash, payment_ref, authorized_fen, status, started_ms, meter_start_wh, mode) "
       "VALUES(?,?,?,?,?,?,?, 'open', ?, ?, ?)")
      .bind(1, t.id).bind(2, static_cast<std::int64_t>(t.connector)).bind(3, t.method).bind(4, t.user_token).bind(5, t.user_hash)
      .bind(6, t.payment_ref).bind(7, t.authorized_fen).bind(8, ms_of(t.started)).bind(9, t.meter_start_wh)
      .bind(10, t.mode)
      .step();
}

void TransactionRepository::mark_stopping(std::string_view id, std::string_view stop_reason, TimePoint at) {
  Stmt(db_, "UPDATE transactions SET status='stopping', stop_reason=?, stopped_ms=? WHERE id=?").bind(1, stop_reason).bind(2, ms_of(at)).bind(3, id).step();
}

void TransactionRepository::close(std::string_view id, const ClosedTransaction& c) {
  clear_suspended(id);  // a suspended session closed (not resumed in time) is no longer one
  Stmt(db_,
       "UPDATE transactions SET status='closed', outcome=?, meter_stop_wh=?, energy_wh=?, electricity_fen=?, service_fen=?, total_fen=?, "
       "captured_fen=0, capture_status=?, bill=?, stopped_ms=COALESCE(stopped_ms, ?), "
       "stop_reason=CASE WHEN stop_reason='' THEN 'Recovered' ELSE stop_reason END WHERE id=?")
      .bind(1, c.outcome).bind(2, c.meter_stop_wh).bind(3, c.energy_wh).bind(4, c.electricity_fen).bind(5, c.service_fen)
      .bind(6, c.total_fen).bind(7, c.capture_status).bind(8, c.bill_document).bind(9, ms_of(c.stopped)).bind(10, id)
      .step();
  // The receipt-facing figures, as the row now holds them (never the user's token).
  enqueue_uplink(db_,
                 {"txn:" + std::string(id) + "/closed", "transaction",
                  {{"txn", id}, {"outcome", c.outcome}, {"meter_stop_wh", c.meter_stop_wh}, {"energy_wh", c.energy_wh},
                   {"electricity_fen", c.electricity_fen}, {"service_fen", c.service_fen}, {"total_fen", c.total_fen},
                   {"stopped_ms", ms_of(c.stopped)}}},
                 protocol::UplinkClass::transaction);
}

void TransactionRepository::record_capture(std::string_view id, std::int64_t captured_fen, std::string_view capture_status) {
  Stmt(db_, "UPDATE transactions SET captured_fen=?, capture_status=? WHERE id=?").bind(1, captured_fen).bind(2, capture_status).bind(3, id).step();
  enqueue_uplink(db_, {"txn:" + std::string(id) + "/captured", "transaction", {{"txn", id}, {"captured_fen", captured_fen}, {"capture_status", capture_status}}},
                 protocol::UplinkClass::transaction);
}

void TransactionRepository::add_authorized(std::string_view id, std::int64_t fen) {
  // Not once closed: the close captured up to the hold it knew, and the row keeps that hold, so
  // captured = min(bill, authorized_fen) stays true; a top-up confirmed later (asked again after
  // a crash) is in its operation row, and the acquirer releases it with the capture.
  Stmt(db_, "UPDATE transactions SET authorized_fen=authorized_fen+? WHERE id=? AND status!='closed'").bind(1, fen).bind(2, id).step();
}

void TransactionRepository::mark_suspended(std::string_view id, TimePoint at, std::int64_t meter_wh) {
  Stmt(db_, "INSERT INTO suspended_sessions(txn_id, suspended_ms, meter_wh) VALUES(?,?,?) "
            "ON CONFLICT(txn_id) DO UPDATE SET suspended_ms=excluded.suspended_ms, meter_wh=excluded.meter_wh")
      .bind(1, id).bind(2, ms_of(at)).bind(3, meter_wh).step();
}

void TransactionRepository::clear_suspended(std::string_view id) { Stmt(db_, "DELETE FROM suspended_sessions WHERE txn_id=?").bind(1, id).step(); }

std::optional<Suspension> TransactionRepository::suspension(std::string_view id) {
  Stmt s(db_, "SELECT suspended_ms, meter_wh FROM suspended_sessions WHERE txn_id=?");
  s.bind(1, id);
  if (!s.step()) return std::nullopt;
  return Suspension{tp_of(s.i64(0)), s.i64(1)};
}

void TransactionRepository::save_sequence(std::int64_t n) {
  Stmt(db_, "INSERT INTO meta(key, value) VALUES('txn_seq', ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value").bind(1, std::to_string(n)).step();
}

std::optional<TransactionRow> TransactionRepository::find(std::string_view id) {
  Stmt s(db_,
         "SELECT id, connector, method, user_token, payment_ref, authorized_fen, status, outcome, stop_reason, started_ms, stopped_ms, "
         "meter_start_wh, meter_stop_wh, energy_wh, total_fen, captured_fen, capture_status, bill, mode FROM transactions WHERE id=?");
  s.bind(1, id);
  if (!s.step()) return std::nullopt;
  auto opt = [&s](int c) { return s.null(c) ? std::nullopt : std::optional<std::int64_t>(s.i64(c)); };
  TransactionRow r;
  r.id = s.text(0);
  r.connector = static_cast<std::uint32_t>(s.i64(1));
  r.method = s.text(2);
  r.user_token = s.text(3);
  r.payment_ref = s.text(4);
  r.authorized_fen = s.i64(5);
  r.status = s.text(6);
  r.outcome = s.text(7);
  r.stop_reason = s.text(8);
  r.started = tp_of(s.i64(9));
  if (!s.null(10)) r.stopped = tp_of(s.i64(10));
  r.meter_start_wh = s.i64(11);
  r.meter_stop_wh = opt(12);
  r.energy_wh = opt(13);
  r.total_fen = opt(14);
  r.captured_fen = opt(15);
  r.capture_status = s.text(16);
  if (!s.null(17)) r.bill_document = s.text(17);
  r.mode = s.text(18);
  return r;
}

std::vector<UnfinishedTransaction> TransactionRepository::unfinished() {
  std::vector<UnfinishedTransaction> out;
  Stmt s(db_,
         "SELECT t.id, t.connector, t.method, t.authorized_fen, "
         "(SELECT n.meter_start_wh FROM transactions n WHERE n.connector=t.connector AND n.started_ms>t.started_ms ORDER BY n.started_ms LIMIT 1), t.mode "
         "FROM transactions t WHERE t.status IN ('open','stopping') ORDER BY t.started_ms");
  while (s.step()) {
    out.push_back({s.text(0), static_cast<std::uint32_t>(s.i64(1)), s.text(2), s.i64(3), s.null(4) ? std::nullopt : std::optional<std::int64_t>(s.i64(4)),
                   s.text(5)});
  }
  return out;
}

std::int64_t TransactionRepository::last_sequence() {
  Stmt s(db_, "SELECT value FROM meta WHERE key='txn_seq'");
  return s.step() ? std::stoll(s.text(0)) : 0;
}

std::uint32_t TransactionRepository::sessions_since(std::string_view user_hash, TimePoint since) {
  Stmt s(db_, "SELECT COUNT(*) FROM transactions WHERE user_hash=? AND started_ms>=?");
  s.bind(1, user_hash).bind(2, ms_of(since));
  if (!s.step()) throw std::runtime_error("COUNT(*) of transactions returned no row");
  return static_cast<std::uint32_t>(s.i64(0));
}

std::int64_t TransactionRepository::amount_since_fen(std::string_view user_hash, TimePoint since) {
  Stmt s(db_, "SELECT COALESCE(SUM(total_fen),0) FROM transactions WHERE user_hash=? AND started_ms>=?");
  s.bind(1, user_hash).bind(2, ms_of(since));
  if (!s.step()) throw std::runtime_error("SUM(total_fen) of transactions returned no row");
  return s.i64(0);
}

}  // namespace pilecore::core
