// The `plugin_uploads` table: the uplink records plugins handed the core (Host::upload, SDK
// 2.4), one row per key, for two things the outbox cannot say once its row is gone:
//  - who owns a key: the first instance that uploaded it. Another instance's upload of the same
//    key is refused, so two instances can never have one outbox record stand for both (the
//    second would be taken for a duplicate and its record lost);
//  - whether the back end has acknowledged it: a plugin uploads again what it has not seen
//    acknowledged (at its next start), and a key acknowledged before answers at once, without
//    a second record.
// The row is written in the transaction that enqueues the outbox record and marked acknowledged
// in the transaction that takes the back end's ack in, so the two never disagree.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "payloads.hpp"
#include "pilecore/clock.hpp"
#include "storage.hpp"

namespace pilecore::core {

struct PluginUploadOutcome {
  enum class State {
    waiting,       ///< in the outbox (written now, or already waiting): the back end's ack will come
    acknowledged,  ///< the back end acknowledged this key before: nothing written
    taken,         ///< the key belongs to another instance, or to the core: nothing written
    no_uplink,     ///< this database has no uplink (no link on the site): nothing written
    full,          ///< the outbox is full of records it may not drop: nothing written
  };
  State state = State::waiting;
  std::string message;  ///< why, for the refusals
};

class PluginUploadRepository {
 public:
  explicit PluginUploadRepository(Database& db) : db_(db) {}

  /// In the caller's transaction: enqueues `record` (class transaction) for `instance` unless
  /// the key is acknowledged or taken, and records the key's owner. Writes nothing unless the
  /// outcome is `waiting`. Other storage errors throw.
  PluginUploadOutcome submit(std::string_view instance, const protocol::Record& record, TimePoint now);
  /// The back end acknowledged `keys`: those uploaded by plugins and not yet acknowledged are
  /// marked so, and returned (in the order given).
  std::vector<std::string> acknowledge(const std::vector<std::string>& keys, TimePoint now);

 private:
  Database& db_;
};

}  // namespace pilecore::core
