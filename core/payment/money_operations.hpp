// Money operations: every authorisation, capture, void, refund and debit is its own row in the
// `operations` table (store migration), written as an intent before the payment plugin is called
// and updated with its outcome after. Recovery resumes every operation that has no outcome yet.
// These functions run inside a StoreWorker work (the storage thread), except the readers, which
// take any connection.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pilecore/clock.hpp"
#include "storage.hpp"

namespace pilecore::core {

enum class OperationKind { authorize, capture, void_, refund, debit, increment };
enum class OperationStateRow { intent, pending, confirmed, failed };

std::string_view to_string(OperationKind k);
std::string_view to_string(OperationStateRow s);
std::optional<OperationKind> operation_kind_from(std::string_view s);
std::optional<OperationStateRow> operation_state_from(std::string_view s);

struct MoneyOperation {
  /// "<txn>/authorize" ("<txn>/authorize/<n>" for the n-th channel a failover tried), "<txn>/capture",
  /// "<txn>/void" (releasing "<txn>/authorize"; "<txn>/void/<n>" releases "<txn>/authorize/<n>"),
  /// "<txn>/refund/<n>", "<txn>/debit", "<txn>/increment/<n>" (a top-up of the hold: amount_fen is what it adds)
  std::string id;
  std::string txn;
  OperationKind kind = OperationKind::authorize;
  std::int64_t amount_fen = 0;  ///< asked (intent) or moved (confirmed)
  std::string method;
  std::string channel;
  OperationStateRow state = OperationStateRow::intent;
  std::string reference;
  std::string reason;
  int attempts = 0;
  TimePoint created{};
  TimePoint updated{};
  std::optional<TimePoint> next_attempt;
  std::string routing;  ///< authorisations routed by the payment router: its decision and reasons
};

/// The `operations` table. Writers throw std::runtime_error naming the SQL on failure.
namespace operations {
/// Inserts the intent; a row with the same id already there is left as it is (a repeat).
void insert_intent(Database& db, const MoneyOperation& op);
/// Records an outcome (or a pending answer): state, amount, reference, reason, attempts,
/// next attempt.
void update(Database& db, const MoneyOperation& op);
std::optional<MoneyOperation> find(sqlite3* db, std::string_view id);
std::vector<MoneyOperation> of_transaction(sqlite3* db, std::string_view txn);
/// Every operation without an outcome (intent or pending), oldest first.
std::vector<MoneyOperation> unfinished(sqlite3* db);
/// Confirmed authorisations whose transaction never started and that have no void: holds a
/// crash left at the acquirer.
std::vector<MoneyOperation> orphan_holds(sqlite3* db);
/// The confirmed authorisation of a transaction (the last, when a failover made several).
std::optional<MoneyOperation> confirmed_authorization(sqlite3* db, std::string_view txn);
/// The next refund id of a transaction: "<txn>/refund/<n>".
std::string next_refund_id(sqlite3* db, std::string_view txn);
/// The next top-up id of a transaction: "<txn>/increment/<n>".
std::string next_increment_id(sqlite3* db, std::string_view txn);
}  // namespace operations

}  // namespace pilecore::core
