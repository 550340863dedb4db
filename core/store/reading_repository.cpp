#include "reading_repository.hpp"

#include "statement.hpp"

namespace pilecore::core {

std::string_view to_string(ReadingKind k) {
  switch (k) {
    case ReadingKind::start: return "start";
    case ReadingKind::checkpoint: return "checkpoint";
    case ReadingKind::boundary: return "boundary";
    case ReadingKind::stop: return "stop";
    case ReadingKind::recovery: return "recovery";
  }
  return "checkpoint";
}

void ReadingRepository::insert(std::string_view txn, int seq, const StoredReading& r, ReadingKind kind) {
  Stmt(db_, "INSERT INTO readings(txn_id, seq, time_ms, wh, kind) VALUES(?,?,?,?,?)")
      .bind(1, txn).bind(2, static_cast<std::int64_t>(seq)).bind(3, r.time.time_since_epoch().count()).bind(4, r.wh).bind(5, to_string(kind))
      .step();
}

int ReadingRepository::next_seq(std::string_view txn) {
  Stmt q(db_, "SELECT COALESCE(MAX(seq), -1) + 1 FROM readings WHERE txn_id=?");
  q.bind(1, txn);
  q.step();
  return static_cast<int>(q.i64(0));
}

std::vector<StoredReading> ReadingRepository::of_transaction(std::string_view txn) {
  std::vector<StoredReading> out;
  Stmt s(db_, "SELECT time_ms, wh FROM readings WHERE txn_id=? ORDER BY seq");
  s.bind(1, txn);
  while (s.step()) out.push_back({TimePoint{Duration{s.i64(0)}}, s.i64(1)});
  return out;
}

std::optional<StoredReading> ReadingRepository::highest_of_connector(std::uint32_t connector) {
  Stmt s(db_,
         "SELECT r.time_ms, r.wh FROM readings r JOIN transactions t ON t.id = r.txn_id WHERE t.connector = ? "
         "ORDER BY r.wh DESC, r.time_ms DESC LIMIT 1");
  s.bind(1, static_cast<std::int64_t>(connector));
  if (!s.step()) return std::nullopt;
  return StoredReading{TimePoint(Duration(s.i64(0))), s.i64(1)};
}

}  // namespace pilecore::core
