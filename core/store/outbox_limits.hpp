// The outbox's bound and retry timing, apart from outbox.hpp so that the Database can carry the
// daemon's settings to every writer that enqueues (storage.hpp includes this, not the outbox).
#pragma once

#include <chrono>
#include <cstddef>

#include "pilecore/clock.hpp"

namespace pilecore::core {

struct OutboxLimits {
  std::size_t max_records = 20000;
  std::size_t max_bytes = 32 * 1024 * 1024;  ///< of stored payloads
  Duration first_retry = std::chrono::seconds(15);  ///< after the first attempt; doubles per attempt
  Duration max_retry = std::chrono::minutes(10);
};

}  // namespace pilecore::core
