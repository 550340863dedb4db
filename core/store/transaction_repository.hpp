// The `transactions` table and the transaction counter, over the one statement wrapper
// (statement.hpp). Writers run inside a StoreWorker work on the storage thread's connection;
// readers take the strand's read-only connection. Every failure throws std::runtime_error naming
// the SQL, so a database error reaches the caller as an error, never as a zero or a missing row.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pilecore/clock.hpp"
#include "storage.hpp"

namespace pilecore::core {

/// A transaction row as committed before the contactor closes.
struct OpenedTransaction {
  std::string id;
  std::uint32_t connector = 0;
  std::string method;
  std::string user_token;  ///< in clear: the risk rules' history and recovery need it; never leaves the database
  std::string user_hash;
  std::string payment_ref;
  std::int64_t authorized_fen = 0;
  TimePoint started{};
  std::int64_t meter_start_wh = 0;
  std::string mode;  ///< ChargingMode::text(): full, amount:<fen>, energy:<Wh>, time:<s>s
};

/// What the close writes: the bill's figures and its document (the `bill` column).
struct ClosedTransaction {
  std::string outcome;  ///< "completed" or "recovered"
  std::int64_t meter_stop_wh = 0;
  std::int64_t energy_wh = 0;
  std::int64_t electricity_fen = 0;
  std::int64_t service_fen = 0;
  std::int64_t total_fen = 0;
  std::string capture_status;
  std::string bill_document;
  TimePoint stopped{};  ///< kept when the stop already recorded one
};

/// A whole row, for receipts, refunds and the close's ledger record.
struct TransactionRow {
  std::string id;
  std::uint32_t connector = 0;
  std::string method;
  std::string user_token;
  std::string payment_ref;
  std::int64_t authorized_fen = 0;
  std::string status;   ///< open, stopping, closed
  std::string outcome;  ///< '', completed, recovered
  std::string stop_reason;
  TimePoint started{};
  std::optional<TimePoint> stopped;
  std::int64_t meter_start_wh = 0;
  std::optional<std::int64_t> meter_stop_wh;
  std::optional<std::int64_t> energy_wh;
  std::optional<std::int64_t> total_fen;
  std::optional<std::int64_t> captured_fen;
  std::string capture_status;
  std::optional<std::string> bill_document;
  std::string mode;  ///< as asked at the start; '' for rows from before schema 10
};

/// A session a planned stop suspended: when, and the meter reading committed then.
struct Suspension {
  TimePoint at{};
  std::int64_t meter_wh = 0;
};

/// A transaction a crash left open or stopping, for recovery.
struct UnfinishedTransaction {
  std::string id;
  std::uint32_t connector = 0;
  std::string method;
  std::int64_t authorized_fen = 0;
  std::optional<std::int64_t> next_start_wh;  ///< the next transaction's start reading on its connector
  std::string mode;
};

class TransactionRepository {
 public:
  explicit TransactionRepository(Database& db) : db_(db) {}

  // Writers (storage thread).
  void insert(const OpenedTransaction& t);
  void mark_stopping(std::string_view id, std::string_view stop_reason, TimePoint at);
  /// 'closed' with the bill; captured 0 until the capture's outcome (record_capture). A stop
  /// reason still empty becomes "Recovered".
  void close(std::string_view id, const ClosedTransaction& c);
  /// What the capture took, for the receipt: its amount when confirmed, else 0 and the reason.
  void record_capture(std::string_view id, std::int64_t captured_fen, std::string_view capture_status);
  /// A confirmed top-up (incremental authorisation) raises the hold a close captures up to
  /// (a closed transaction keeps the hold its capture was bounded by).
  void add_authorized(std::string_view id, std::int64_t fen);
  void save_sequence(std::int64_t n);
  /// A planned stop suspended the session: the transaction stays open for the next start.
  void mark_suspended(std::string_view id, TimePoint at, std::int64_t meter_wh);
  /// The session runs again (resumed) or is about to close: no longer suspended.
  void clear_suspended(std::string_view id);

  // Readers.
  [[nodiscard]] std::optional<TransactionRow> find(std::string_view id);
  /// Open or stopping, oldest first.
  [[nodiscard]] std::vector<UnfinishedTransaction> unfinished();
  /// Whether a planned stop suspended it, and when.
  [[nodiscard]] std::optional<Suspension> suspension(std::string_view id);
  /// The last transaction number handed out (0 on a new database).
  [[nodiscard]] std::int64_t last_sequence();
  /// The risk rules' history: by the user's salted hash, since a time.
  [[nodiscard]] std::uint32_t sessions_since(std::string_view user_hash, TimePoint since);
  [[nodiscard]] std::int64_t amount_since_fen(std::string_view user_hash, TimePoint since);

 private:
  Database& db_;
};

}  // namespace pilecore::core
