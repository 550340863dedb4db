// Ledger anchoring (issue #12 item 7). The hash chain cannot show its own newest records
// deleted, the table emptied, or the whole database replaced by an older copy: each leaves a
// shorter chain that is still intact. The back end can: every ledger record's seq and hash go
// up through the outbox, and its acknowledgement names the highest seq it holds. The pile keeps
// that anchor (seq and the hash it had there) in a file beside the database, not in it, so that
// restoring an older copy of the database does not restore an older anchor with it.
//
// `pilectl ledger verify` then fails on a ledger that ends before the anchored seq or whose hash
// there differs, and on `transactions` rows (what receipts are printed from) that disagree with
// their signed records.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "storage.hpp"

namespace pilecore::core {

struct LedgerAnchor {
  std::int64_t seq = 0;
  std::string hash_hex;  ///< the pile's hash at seq when the ack came; empty when it had no such record
};

/// `<database>.anchor`.
[[nodiscard]] std::filesystem::path anchor_path(const std::filesystem::path& database);
/// Nothing when there is no anchor file; throws std::runtime_error naming the file when it is
/// unreadable or malformed (an edited anchor is a finding, not a missing one).
[[nodiscard]] std::optional<LedgerAnchor> read_anchor(const std::filesystem::path& file);
/// Replaces the file atomically (a temporary file, fsync, rename), mode 0600.
void write_anchor(const std::filesystem::path& file, const LedgerAnchor& anchor);

/// The back end holds ledger records up to `seq` (an ack's "l"): keeps the anchor when it is
/// higher than the one on file, with this database's hash at that seq. Runs on the connection's
/// thread (the storage thread), inside or outside a transaction.
void record_anchor(Database& db, std::uint64_t seq);

/// Why the ledger in `db` contradicts `anchor`, or nothing when it holds the anchored record
/// with the anchored hash.
[[nodiscard]] std::optional<std::string> check_anchor(sqlite3* db, const LedgerAnchor& anchor);
/// The first `transactions` row whose figures disagree with its signed session record (or with
/// its confirmed capture's record), or nothing.
[[nodiscard]] std::optional<std::string> check_transactions(sqlite3* db);

}  // namespace pilecore::core
