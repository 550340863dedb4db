// The `readings` table: a transaction's meter register at its start, checkpoints, tariff
// boundaries, stop or recovery, numbered from 0. Same rules as transaction_repository.hpp.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "pilecore/clock.hpp"
#include "storage.hpp"

namespace pilecore::core {

enum class ReadingKind { start, checkpoint, boundary, stop, recovery };
std::string_view to_string(ReadingKind k);

struct StoredReading {
  TimePoint time{};
  std::int64_t wh = 0;
};

class ReadingRepository {
 public:
  explicit ReadingRepository(Database& db) : db_(db) {}

  void insert(std::string_view txn, int seq, const StoredReading& r, ReadingKind kind);
  /// The sequence number after the last stored one (0 when there is none).
  [[nodiscard]] int next_seq(std::string_view txn);
  /// In sequence order.
  [[nodiscard]] std::vector<StoredReading> of_transaction(std::string_view txn);
  /// The highest reading committed for a connector (its meter's register never goes back), if any.
  [[nodiscard]] std::optional<StoredReading> highest_of_connector(std::uint32_t connector);

 private:
  Database& db_;
};

}  // namespace pilecore::core
