// The transactional outbox (issue #12 item 2): every uplink record is written here in the same
// SQLite transaction as the state change it reports, and stays until the back end acknowledges
// it at the application level (an ack frame naming its key; a link's "sent" is not enough).
//
// The rules, each a test in tests/unit/outbox_test.cpp:
//  - A record has an idempotency key (unique: enqueueing the same key again is a no-op) and a
//    class. due() hands records out by class priority (control, transaction, status,
//    telemetry), oldest first within a class.
//  - attempted() schedules the next try with exponential backoff; the record stays. Only
//    acknowledge() removes it.
//  - The outbox has a bound (records and bytes). To make room it drops the oldest telemetry,
//    then (for anything but telemetry) the oldest status records, and counts what it dropped.
//    It never drops a control or transaction record: when only those fill it, enqueueing one
//    throws OutboxFull before changing anything, so the caller's transaction (and the state
//    change it would report) rolls back. Incoming telemetry or status that finds no room is
//    itself dropped and counted.
//  - Everything is in the database, so it survives a restart.
//
// Threads: like every repository, it runs statements on the Database it is given, inside
// whatever transaction its caller holds (in the daemon, a StoreWorker work).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "payloads.hpp"
#include "pilecore/clock.hpp"
#include "outbox_limits.hpp"
#include "storage.hpp"
#include "uplink_class.hpp"

namespace pilecore::core {

/// Enqueueing a control or transaction record would need dropping one: refused.
class OutboxFull : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct OutboxRecord {
  std::int64_t id = 0;
  std::string key;
  protocol::UplinkClass cls = protocol::UplinkClass::telemetry;
  std::string kind;
  protocol::Bytes payload;  ///< the CBOR record (protocol::encode_record): the same bytes on every try
  TimePoint created{};
  std::int64_t attempts = 0;
  TimePoint next_attempt{};
};

enum class Enqueued {
  stored,
  duplicate,  ///< a record with this key is already waiting
  dropped,    ///< telemetry or status that found no room (counted)
};

struct OutboxStats {
  std::array<std::int64_t, protocol::kUplinkClassCount> records{};  ///< waiting, by class
  std::int64_t bytes = 0;
  std::array<std::int64_t, protocol::kUplinkClassCount> dropped{};  ///< ever, by class
};

class OutboxRepository {
 public:
  OutboxRepository(Database& db, OutboxLimits limits = {}) : db_(db), limits_(limits) {}

  /// Writes `record` (in the caller's transaction). Throws OutboxFull (nothing changed) when a
  /// control or transaction record finds no room, std::invalid_argument for a key or kind the
  /// protocol cannot carry.
  Enqueued enqueue(const protocol::Record& record, protocol::UplinkClass cls, TimePoint now);

  /// Up to `limit` records whose next attempt is due at `now`, by priority then age.
  [[nodiscard]] std::vector<OutboxRecord> due(TimePoint now, std::size_t limit);
  /// When the earliest waiting record is next due (nothing when the outbox is empty).
  [[nodiscard]] std::optional<TimePoint> next_due();
  /// A try was made (handed to a link, or the link failed): the record is due again after
  /// first_retry * 2^(attempts-1), at most max_retry, unless acknowledged first.
  void attempted(std::string_view key, TimePoint now);
  /// The back end holds these records: they are removed. Returns how many were waiting. Also
  /// keeps the highest ledger seq the back end reported.
  std::size_t acknowledge(const protocol::Ack& ack);
  [[nodiscard]] std::optional<std::uint64_t> backend_ledger_seq();

  /// `n` consecutive frame sequence numbers, never handed out before (also across restarts);
  /// returns the first. Reserve a block and use it from memory, so not every frame costs a commit.
  std::uint32_t reserve_sequences(std::uint32_t n);

  [[nodiscard]] OutboxStats stats();
  [[nodiscard]] const OutboxLimits& limits() const { return limits_; }

 private:
  std::int64_t meta(std::string_view name, std::int64_t fallback);
  void set_meta(std::string_view name, std::int64_t value);
  void count_dropped(protocol::UplinkClass cls, std::int64_t n);

  Database& db_;
  OutboxLimits limits_;
};

/// The state-changing writers' one call (money operations, the ledger, transaction rows, status
/// and alarms): enqueues `record` in the caller's transaction when the daemon turned the uplink on
/// for this database (Database::enable_uplink), with its bound and its clock; a database without
/// an uplink (pilectl, a site with no link, most unit tests) gets no records, because nothing
/// would ever acknowledge them and money records would fill the outbox until sessions stop.
/// Returns nothing when the uplink is off. Throws OutboxFull like enqueue().
std::optional<Enqueued> enqueue_uplink(Database& db, const protocol::Record& record, protocol::UplinkClass cls);

}  // namespace pilecore::core
