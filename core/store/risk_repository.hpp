// The risk engine's tables: its decisions (one per transaction and phase) and the history
// queries its rules read. Every failure throws std::runtime_error, so an unreadable history
// reaches the engine as an error, never as "no sessions".
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pilecore/clock.hpp"
#include "storage.hpp"

namespace pilecore::core {

struct RiskDecisionRow {
  std::string txn;
  std::string phase;    ///< authorize, capture, step_up (how the second verification ended)
  std::string verdict;  ///< allow, step_up, deny
  std::string answers;  ///< each instance's answer, "name: verdict (how): reason", one a line
  TimePoint decided{};
};

/// One closed session of a user, for the rules that model behaviour.
struct UserSessionRow {
  TimePoint started{};
  std::int64_t amount_fen = 0;
  std::uint32_t connector = 0;
};

/// A transaction as `pilectl transactions` lists it, with its risk decisions (no token).
struct TransactionListing {
  std::string id;
  std::uint32_t connector = 0;
  std::string method;
  std::string status;
  TimePoint started{};
  std::optional<std::int64_t> total_fen;
  std::optional<std::int64_t> captured_fen;
  std::vector<RiskDecisionRow> decisions;
  std::string outcome;      ///< completed, recovered; empty while open
  std::string stop_reason;  ///< empty while open
  std::optional<TimePoint> stopped;
  std::optional<std::int64_t> energy_wh;
  std::string capture_status;
};

/// Which transactions `pilectl transactions list` shows. Empty or unset fields do not filter.
struct TransactionFilter {
  std::size_t limit = 20;
  std::string_view only;                ///< one transaction id
  std::optional<TimePoint> started_from;  ///< started at or after
  std::optional<TimePoint> started_before;
  std::optional<std::uint32_t> connector;
  std::string_view method;
  /// open, stopping or closed (the row's status); completed or recovered (a closed one's outcome)
  std::string_view state;
};

class RiskRepository {
 public:
  explicit RiskRepository(Database& db) : db_(db) {}

  /// Writer (storage thread). A phase decided again (a retried start) replaces the row.
  void record(const RiskDecisionRow& d);
  /// Readers.
  [[nodiscard]] std::vector<RiskDecisionRow> decisions(std::string_view txn);
  /// The newest `limit` transactions (or the one named `only`), newest first, with their decisions.
  [[nodiscard]] std::vector<TransactionListing> listing(std::size_t limit, std::string_view only = {});
  /// The newest transactions that pass `filter`, newest first, with their decisions.
  [[nodiscard]] std::vector<TransactionListing> listing(const TransactionFilter& filter);
  /// Closed sessions of `user_hash` that started after `after`, oldest first, at most `limit`.
  /// Rides the (user_hash, started_ms) index.
  void sessions_after(std::string_view user_hash, TimePoint after, std::size_t limit, const std::function<void(const UserSessionRow&)>& each);

 private:
  Database& db_;
};

}  // namespace pilecore::core
