#include "risk_repository.hpp"

#include "statement.hpp"

namespace pilecore::core {

namespace {
std::int64_t ms_of(TimePoint t) { return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count(); }
TimePoint at_ms(std::int64_t ms) { return TimePoint(std::chrono::duration_cast<TimePoint::duration>(std::chrono::milliseconds(ms))); }
}  // namespace

void RiskRepository::record(const RiskDecisionRow& d) {
  Stmt s(db_, "INSERT OR REPLACE INTO risk_decisions(txn_id, phase, verdict, answers, decided_ms) VALUES(?,?,?,?,?)");
  s.bind(1, d.txn).bind(2, d.phase).bind(3, d.verdict).bind(4, d.answers).bind(5, ms_of(d.decided));
  s.step();
}

std::vector<RiskDecisionRow> RiskRepository::decisions(std::string_view txn) {
  // 'authorize' sorts before 'capture': the order they happen in.
  Stmt s(db_, "SELECT phase, verdict, answers, decided_ms FROM risk_decisions WHERE txn_id=? ORDER BY phase");
  s.bind(1, txn);
  std::vector<RiskDecisionRow> out;
  while (s.step()) out.push_back({std::string(txn), s.text(0), s.text(1), s.text(2), at_ms(s.i64(3))});
  return out;
}

std::vector<TransactionListing> RiskRepository::listing(std::size_t limit, std::string_view only) {
  TransactionFilter f;
  f.limit = limit;
  f.only = only;
  return listing(f);
}

std::vector<TransactionListing> RiskRepository::listing(const TransactionFilter& f) {
  // One statement with every filter, each off when its parameter is NULL or '' (an empty
  // string_view binds as NULL): the plan rides
  // started_ms for the order either way, and the limit applies after the filters.
  Stmt s(db_,
         "SELECT id, connector, method, status, started_ms, total_fen, captured_fen, outcome, stop_reason, stopped_ms, energy_wh, capture_status"
         " FROM transactions"
         " WHERE (COALESCE(?1,'')='' OR id=?1) AND (?2 IS NULL OR started_ms>=?2) AND (?3 IS NULL OR started_ms<?3) AND (?4 IS NULL OR connector=?4)"
         " AND (COALESCE(?5,'')='' OR method=?5) AND (COALESCE(?6,'')='' OR status=?6 OR outcome=?6)"
         " ORDER BY started_ms DESC, id DESC LIMIT ?7");
  s.bind(1, f.only);
  if (f.started_from) s.bind(2, ms_of(*f.started_from));
  if (f.started_before) s.bind(3, ms_of(*f.started_before));
  if (f.connector) s.bind(4, static_cast<std::int64_t>(*f.connector));
  s.bind(5, f.method).bind(6, f.state).bind(7, static_cast<std::int64_t>(f.limit));
  std::vector<TransactionListing> out;
  while (s.step()) {
    TransactionListing t{.id = s.text(0),
                         .connector = static_cast<std::uint32_t>(s.i64(1)),
                         .method = s.text(2),
                         .status = s.text(3),
                         .started = at_ms(s.i64(4)),
                         .total_fen = s.null(5) ? std::nullopt : std::optional(s.i64(5)),
                         .captured_fen = s.null(6) ? std::nullopt : std::optional(s.i64(6)),
                         .decisions = {},
                         .outcome = s.text(7),
                         .stop_reason = s.text(8),
                         .stopped = s.null(9) ? std::nullopt : std::optional(at_ms(s.i64(9))),
                         .energy_wh = s.null(10) ? std::nullopt : std::optional(s.i64(10)),
                         .capture_status = s.text(11)};
    out.push_back(std::move(t));
  }
  for (auto& t : out) t.decisions = decisions(t.id);
  return out;
}

void RiskRepository::sessions_after(std::string_view user_hash, TimePoint after, std::size_t limit,
                                    const std::function<void(const UserSessionRow&)>& each) {
  Stmt s(db_,
         "SELECT started_ms, COALESCE(NULLIF(captured_fen,0), total_fen, 0), connector FROM transactions"
         " WHERE user_hash=? AND started_ms>? AND status='closed' ORDER BY started_ms LIMIT ?");
  s.bind(1, user_hash).bind(2, ms_of(after)).bind(3, static_cast<std::int64_t>(limit));
  while (s.step()) each({at_ms(s.i64(0)), s.i64(1), static_cast<std::uint32_t>(s.i64(2))});
}

}  // namespace pilecore::core
