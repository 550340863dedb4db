// `pilectl transactions list`: the newest transactions of a database, read-only (SQLite's WAL
// lets it read while pilecored writes), filtered by local day, connector, method and state,
// each with the risk engine's decisions (before the authorisation, before the capture) and
// every rule's answer. No token is shown: a transaction row keeps it, the listing does not.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <ostream>
#include <string>

#include "cli_time.hpp"

namespace pilecore::core {

struct TransactionsQuery {
  std::filesystem::path db;
  std::size_t limit = 20;
  std::string only;                       ///< one transaction id
  std::string day;                        ///< YYYY-MM-DD in `view`'s zone (the site's)
  std::optional<std::uint32_t> connector;
  std::string method;                     ///< the payment instance
  std::string state;                      ///< open, stopping, closed, completed, recovered
  bool json = false;                      ///< one JSON array (times in UTC, amounts in fen)
  TimeView view = utc_view();             ///< text times and --day
};

/// The states `--state` takes.
inline constexpr const char* kTransactionStates[] = {"open", "stopping", "closed", "completed", "recovered"};

/// Prints the transactions the query selects, newest first; returns the exit code: 0 (also
/// when none match: an empty table or []), 1 when the database cannot be read or `only` is
/// not in it, 2 for a malformed --day.
int list_transactions(const TransactionsQuery& query, std::ostream& out, std::ostream& err);
/// The newest `limit` (or only `txn`), as text with times in UTC.
int list_transactions(const std::filesystem::path& db_path, std::size_t limit, const std::string& txn, std::ostream& out, std::ostream& err);

}  // namespace pilecore::core
