#include "money_operations.hpp"

#include <array>

#include "outbox.hpp"
#include "statement.hpp"

namespace pilecore::core {
namespace {

constexpr std::array kinds{std::pair{OperationKind::authorize, "authorize"}, std::pair{OperationKind::capture, "capture"},
                           std::pair{OperationKind::void_, "void"}, std::pair{OperationKind::refund, "refund"},
                           std::pair{OperationKind::debit, "debit"}, std::pair{OperationKind::increment, "increment"}};
constexpr std::array states{std::pair{OperationStateRow::intent, "intent"}, std::pair{OperationStateRow::pending, "pending"},
                            std::pair{OperationStateRow::confirmed, "confirmed"}, std::pair{OperationStateRow::failed, "failed"}};

std::int64_t ms_of(TimePoint t) { return t.time_since_epoch().count(); }
TimePoint tp_of(std::int64_t ms) { return TimePoint{Duration{ms}}; }

constexpr const char* columns =
    "SELECT id, txn_id, kind, amount_fen, method, channel, state, reference, reason, attempts, created_ms, updated_ms, next_attempt_ms, routing "
    "FROM operations ";

MoneyOperation row(const Stmt& s) {
  MoneyOperation op;
  op.id = s.text(0);
  op.txn = s.text(1);
  op.kind = operation_kind_from(s.text(2)).value_or(OperationKind::authorize);
  op.amount_fen = s.i64(3);
  op.method = s.text(4);
  op.channel = s.text(5);
  op.state = operation_state_from(s.text(6)).value_or(OperationStateRow::intent);
  op.reference = s.text(7);
  op.reason = s.text(8);
  op.attempts = static_cast<int>(s.i64(9));
  op.created = tp_of(s.i64(10));
  op.updated = tp_of(s.i64(11));
  if (!s.null(12)) op.next_attempt = tp_of(s.i64(12));
  op.routing = s.text(13);
  return op;
}

std::vector<MoneyOperation> rows(Stmt& s) {
  std::vector<MoneyOperation> out;
  while (s.step()) out.push_back(row(s));
  return out;
}

// Each state an operation reaches is a record of its own: the back end sees the intent before
// the acquirer is called and every outcome after, so a pile that dies mid-call is visible there
// too. A pending answer may repeat; its attempt number keeps each one a distinct key.
void report(Database& db, const MoneyOperation& op, TimePoint at) {
  std::string key = "op:" + op.id + "/" + std::string(to_string(op.state));
  if (op.state == OperationStateRow::pending) key += "/" + std::to_string(op.attempts);
  nlohmann::json body{{"id", op.id},          {"txn", op.txn},         {"op", std::string(to_string(op.kind))},
                      {"state", std::string(to_string(op.state))}, {"fen", op.amount_fen}, {"method", op.method},
                      {"channel", op.channel}, {"reference", op.reference}, {"reason", op.reason},
                      {"attempts", op.attempts}, {"time_ms", ms_of(at)}};
  enqueue_uplink(db, {std::move(key), "operation", std::move(body)}, protocol::UplinkClass::transaction);
}

}  // namespace

std::string_view to_string(OperationKind k) {
  for (const auto& [v, n] : kinds) {
    if (v == k) return n;
  }
  return "unknown";
}
std::string_view to_string(OperationStateRow s) {
  for (const auto& [v, n] : states) {
    if (v == s) return n;
  }
  return "unknown";
}
std::optional<OperationKind> operation_kind_from(std::string_view s) {
  for (const auto& [v, n] : kinds) {
    if (s == n) return v;
  }
  return std::nullopt;
}
std::optional<OperationStateRow> operation_state_from(std::string_view s) {
  for (const auto& [v, n] : states) {
    if (s == n) return v;
  }
  return std::nullopt;
}

namespace operations {

void insert_intent(Database& db, const MoneyOperation& op) {
  Stmt(db,
       "INSERT INTO operations(id, txn_id, kind, amount_fen, method, channel, state, reference, reason, attempts, created_ms, updated_ms, routing) "
       "VALUES(?,?,?,?,?,?,'intent','','',0,?,?,?) ON CONFLICT(id) DO NOTHING")
      .bind(1, op.id).bind(2, op.txn).bind(3, to_string(op.kind)).bind(4, op.amount_fen).bind(5, op.method).bind(6, op.channel)
      .bind(7, ms_of(op.created)).bind(8, ms_of(op.created)).bind(9, op.routing)
      .step();
  // A repeated intent (ON CONFLICT DO NOTHING) was reported when it was first written.
  if (sqlite3_changes(db.handle()) == 1) report(db, op, op.created);
}

void update(Database& db, const MoneyOperation& op) {
  Stmt s(db, "UPDATE operations SET state=?, amount_fen=?, reference=?, reason=?, attempts=?, updated_ms=?, next_attempt_ms=? WHERE id=?");
  s.bind(1, to_string(op.state)).bind(2, op.amount_fen).bind(3, op.reference).bind(4, op.reason).bind(5, op.attempts).bind(6, ms_of(op.updated));
  if (op.next_attempt) {
    s.bind(7, ms_of(*op.next_attempt));
  } else {
    s.bind_null(7);
  }
  s.bind(8, op.id).step();
  if (sqlite3_changes(db.handle()) != 1) throw std::runtime_error("operation " + op.id + " has no intent row");
  report(db, op, op.updated);
}

std::optional<MoneyOperation> find(sqlite3* db, std::string_view id) {
  Stmt s(db, (std::string(columns) + "WHERE id=?").c_str());
  s.bind(1, id);
  if (!s.step()) return std::nullopt;
  return row(s);
}

std::vector<MoneyOperation> of_transaction(sqlite3* db, std::string_view txn) {
  Stmt s(db, (std::string(columns) + "WHERE txn_id=? ORDER BY created_ms, rowid").c_str());
  s.bind(1, txn);
  return rows(s);
}

std::vector<MoneyOperation> unfinished(sqlite3* db) {
  Stmt s(db, (std::string(columns) + "WHERE state IN ('intent','pending') ORDER BY created_ms, rowid").c_str());
  return rows(s);
}

std::vector<MoneyOperation> orphan_holds(sqlite3* db) {
  Stmt s(db, (std::string(columns) +
              "WHERE kind='authorize' AND state='confirmed' AND txn_id NOT IN (SELECT id FROM transactions) "
              "AND replace(id, '/authorize', '/void') NOT IN (SELECT id FROM operations WHERE kind='void') ORDER BY created_ms, rowid")
                 .c_str());
  return rows(s);
}

std::optional<MoneyOperation> confirmed_authorization(sqlite3* db, std::string_view txn) {
  Stmt s(db, (std::string(columns) + "WHERE txn_id=? AND kind='authorize' AND state='confirmed' ORDER BY created_ms DESC, rowid DESC LIMIT 1").c_str());
  s.bind(1, txn);
  if (!s.step()) return std::nullopt;
  return row(s);
}

std::string next_refund_id(sqlite3* db, std::string_view txn) {
  Stmt s(db, "SELECT COUNT(*) FROM operations WHERE txn_id=? AND kind='refund'");
  s.bind(1, txn);
  s.step();
  return std::string(txn) + "/refund/" + std::to_string(s.i64(0) + 1);
}

std::string next_increment_id(sqlite3* db, std::string_view txn) {
  Stmt s(db, "SELECT COUNT(*) FROM operations WHERE txn_id=? AND kind='increment'");
  s.bind(1, txn);
  s.step();
  return std::string(txn) + "/increment/" + std::to_string(s.i64(0) + 1);
}

}  // namespace operations
}  // namespace pilecore::core
