#include "outbox.hpp"

#include <fmt/format.h>

#include "statement.hpp"

namespace pilecore::core {

namespace {

using protocol::UplinkClass;

std::int64_t ms(TimePoint t) { return t.time_since_epoch().count(); }
TimePoint at_ms(std::int64_t v) { return TimePoint(Duration(v)); }

std::string dropped_name(UplinkClass c) { return fmt::format("dropped_{}", protocol::to_string(c)); }

}  // namespace

std::int64_t OutboxRepository::meta(std::string_view name, std::int64_t fallback) {
  Stmt s(db_, "SELECT value FROM outbox_meta WHERE name=?");
  s.bind(1, name);
  return s.step() ? s.i64(0) : fallback;
}

void OutboxRepository::set_meta(std::string_view name, std::int64_t value) {
  Stmt(db_, "INSERT INTO outbox_meta(name, value) VALUES(?,?) ON CONFLICT(name) DO UPDATE SET value=excluded.value").bind(1, name).bind(2, value).step();
}

void OutboxRepository::count_dropped(UplinkClass cls, std::int64_t n) {
  const auto name = dropped_name(cls);
  set_meta(name, meta(name, 0) + n);
}

Enqueued OutboxRepository::enqueue(const protocol::Record& record, UplinkClass cls, TimePoint now) {
  if (record.key.empty() || record.key.size() > protocol::kMaxKeySize) {
    throw std::invalid_argument(fmt::format("an outbox key is 1 to {} bytes, not {}", protocol::kMaxKeySize, record.key.size()));
  }
  if (record.kind.empty() || record.kind.size() > protocol::kMaxKindSize) {
    throw std::invalid_argument(fmt::format("an outbox record kind is 1 to {} bytes, not {}", protocol::kMaxKindSize, record.kind.size()));
  }
  {
    Stmt s(db_, "SELECT 1 FROM outbox WHERE key=?");
    s.bind(1, record.key);
    if (s.step()) return Enqueued::duplicate;
  }
  const protocol::Bytes payload = protocol::encode_record(record);
  const auto size = static_cast<std::int64_t>(payload.size());
  std::int64_t count = 0;
  std::int64_t bytes = 0;
  {
    Stmt s(db_, "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox");
    s.step();
    count = s.i64(0);
    bytes = s.i64(1);
  }
  const auto max_records = static_cast<std::int64_t>(limits_.max_records);
  const auto max_bytes = static_cast<std::int64_t>(limits_.max_bytes);
  std::int64_t need_records = count + 1 - max_records;
  std::int64_t need_bytes = bytes + size - max_bytes;

  // Choose what to drop before changing anything, so a refusal leaves the database as it was.
  std::vector<std::pair<std::int64_t, UplinkClass>> victims;
  if ((need_records > 0 || need_bytes > 0) && size <= max_bytes) {
    std::vector<UplinkClass> order{UplinkClass::telemetry};
    if (cls != UplinkClass::telemetry) order.push_back(UplinkClass::status);
    for (UplinkClass victim : order) {
      Stmt s(db_, "SELECT id, size FROM outbox WHERE class=? ORDER BY id");
      s.bind(1, static_cast<std::int64_t>(victim));
      while ((need_records > 0 || need_bytes > 0) && s.step()) {
        victims.emplace_back(s.i64(0), victim);
        --need_records;
        need_bytes -= s.i64(1);
      }
    }
  }
  if (need_records > 0 || need_bytes > 0) {
    if (protocol::droppable(cls)) {
      count_dropped(cls, 1);
      return Enqueued::dropped;
    }
    throw OutboxFull(fmt::format(
        "the uplink outbox is full ({} records, {} bytes; bound {} records, {} bytes) and holds nothing it may drop: a {} record "
        "({} bytes) is refused rather than dropping a money record; the back end has not acknowledged them, check the links",
        count, bytes, limits_.max_records, limits_.max_bytes, protocol::to_string(cls), size));
  }
  for (const auto& [id, victim] : victims) {
    Stmt(db_, "DELETE FROM outbox WHERE id=?").bind(1, id).step();
    count_dropped(victim, 1);
  }
  Stmt(db_, "INSERT INTO outbox(key, class, kind, payload, size, created_ms, next_attempt_ms) VALUES(?,?,?,?,?,?,?)")
      .bind(1, record.key).bind(2, static_cast<std::int64_t>(cls)).bind(3, record.kind).bind_blob(4, payload).bind(5, size)
      .bind(6, ms(now)).bind(7, ms(now))
      .step();
  return Enqueued::stored;
}

std::vector<OutboxRecord> OutboxRepository::due(TimePoint now, std::size_t limit) {
  std::vector<OutboxRecord> out;
  Stmt s(db_,
         "SELECT id, key, class, kind, payload, created_ms, attempts, next_attempt_ms FROM outbox WHERE next_attempt_ms <= ? "
         "ORDER BY class, id LIMIT ?");
  s.bind(1, ms(now)).bind(2, static_cast<std::int64_t>(limit));
  while (s.step()) {
    out.push_back({s.i64(0), s.text(1), static_cast<UplinkClass>(s.i64(2)), s.text(3), s.blob(4), at_ms(s.i64(5)), s.i64(6), at_ms(s.i64(7))});
  }
  return out;
}

std::optional<TimePoint> OutboxRepository::next_due() {
  Stmt s(db_, "SELECT MIN(next_attempt_ms) FROM outbox");
  if (!s.step() || s.null(0)) return std::nullopt;
  return at_ms(s.i64(0));
}

void OutboxRepository::attempted(std::string_view key, TimePoint now) {
  std::int64_t attempts = 0;
  {
    Stmt s(db_, "SELECT attempts FROM outbox WHERE key=?");
    s.bind(1, key);
    // Acknowledged meanwhile (the ack overtook the send's completion): nothing to schedule.
    if (!s.step()) return;
    attempts = s.i64(0) + 1;
  }
  Duration delay = limits_.first_retry;
  for (std::int64_t i = 1; i < attempts && delay < limits_.max_retry; ++i) delay *= 2;
  delay = std::min(delay, limits_.max_retry);
  Stmt(db_, "UPDATE outbox SET attempts=?, next_attempt_ms=? WHERE key=?").bind(1, attempts).bind(2, ms(now + delay)).bind(3, key).step();
}

std::size_t OutboxRepository::acknowledge(const protocol::Ack& ack) {
  std::size_t removed = 0;
  for (const auto& key : ack.keys) {
    Stmt(db_, "DELETE FROM outbox WHERE key=?").bind(1, key).step();
    removed += static_cast<std::size_t>(sqlite3_changes(db_.handle()));
  }
  // Anchoring only moves forward: an old ack arriving late must not lower it.
  if (ack.ledger_seq && static_cast<std::int64_t>(*ack.ledger_seq) > meta("backend_ledger_seq", -1)) {
    set_meta("backend_ledger_seq", static_cast<std::int64_t>(*ack.ledger_seq));
  }
  return removed;
}

std::optional<std::uint64_t> OutboxRepository::backend_ledger_seq() {
  const std::int64_t v = meta("backend_ledger_seq", -1);
  if (v < 0) return std::nullopt;
  return static_cast<std::uint64_t>(v);
}

std::uint32_t OutboxRepository::reserve_sequences(std::uint32_t n) {
  const std::int64_t first = meta("frame_seq", 0);
  set_meta("frame_seq", (first + n) % (std::int64_t{1} << 32));
  return static_cast<std::uint32_t>(first);
}

OutboxStats OutboxRepository::stats() {
  OutboxStats st;
  {
    Stmt s(db_, "SELECT class, COUNT(*), COALESCE(SUM(size), 0) FROM outbox GROUP BY class");
    while (s.step()) {
      const auto c = s.i64(0);
      if (c >= 0 && c < static_cast<std::int64_t>(protocol::kUplinkClassCount)) st.records[static_cast<std::size_t>(c)] = s.i64(1);
      st.bytes += s.i64(2);
    }
  }
  for (auto c : {UplinkClass::control, UplinkClass::transaction, UplinkClass::status, UplinkClass::telemetry}) {
    st.dropped[static_cast<std::size_t>(c)] = meta(dropped_name(c), 0);
  }
  return st;
}

std::optional<Enqueued> enqueue_uplink(Database& db, const protocol::Record& record, UplinkClass cls) {
  const auto* uplink = db.uplink();
  if (uplink == nullptr) return std::nullopt;
  auto enqueued = OutboxRepository(db, uplink->limits).enqueue(record, cls, uplink->clock->now());
  db.note_enqueued();
  return enqueued;
}

}  // namespace pilecore::core
