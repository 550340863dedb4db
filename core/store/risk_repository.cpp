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
  Stmt s(db_,
         "SELECT id, connector, method, status, started_ms, total_fen, captured_fen FROM transactions"
         " WHERE ?='' OR id=? ORDER BY started_ms DESC, id DESC LIMIT ?");
  s.bind(1, only).bind(2, only).bind(3, static_cast<std::int64_t>(limit));
  std::vector<TransactionListing> out;
  while (s.step()) {
    TransactionListing t{.id = s.text(0),
                         .connector = static_cast<std::uint32_t>(s.i64(1)),
                         .method = s.text(2),
                         .status = s.text(3),
                         .started = at_ms(s.i64(4)),
                         .total_fen = s.null(5) ? std::nullopt : std::optional(s.i64(5)),
                         .captured_fen = s.null(6) ? std::nullopt : std::optional(s.i64(6)),
                         .decisions = {}};
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
