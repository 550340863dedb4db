#include "plugin_upload_repository.hpp"

#include <fmt/format.h>

#include "outbox.hpp"
#include "statement.hpp"

namespace pilecore::core {

namespace {
std::int64_t ms(TimePoint t) { return t.time_since_epoch().count(); }
}  // namespace

PluginUploadOutcome PluginUploadRepository::submit(std::string_view instance, const protocol::Record& record, TimePoint now) {
  using State = PluginUploadOutcome::State;
  bool known = false;
  {
    Stmt s(db_, "SELECT instance, state FROM plugin_uploads WHERE key=?");
    s.bind(1, record.key);
    if (s.step()) {
      if (s.text(0) != instance) {
        return {State::taken, fmt::format("the key '{}' belongs to instance '{}'; an instance's keys must not be another's", record.key, s.text(0))};
      }
      if (s.text(1) == "acknowledged") return {State::acknowledged, {}};
      known = true;
    }
  }
  if (db_.uplink() == nullptr) {
    return {State::no_uplink, "this pile has no link to a back end (the site file's links); nothing can be uploaded"};
  }
  std::optional<Enqueued> enqueued;
  try {
    // A key still waiting is enqueued again too: a no-op while its outbox row is there.
    enqueued = enqueue_uplink(db_, record, protocol::UplinkClass::transaction);
  } catch (const OutboxFull& e) {
    return {State::full, e.what()};
  }
  if (!known && enqueued == Enqueued::duplicate) {
    return {State::taken, fmt::format("the key '{}' is already used by the core's own records", record.key)};
  }
  if (!known) {
    Stmt(db_, "INSERT INTO plugin_uploads(key, instance, kind, state, created_ms) VALUES(?,?,?, 'waiting', ?)")
        .bind(1, record.key).bind(2, instance).bind(3, record.kind).bind(4, ms(now))
        .step();
  }
  return {State::waiting, {}};
}

std::vector<std::string> PluginUploadRepository::acknowledge(const std::vector<std::string>& keys, TimePoint now) {
  std::vector<std::string> out;
  for (const auto& key : keys) {
    Stmt(db_, "UPDATE plugin_uploads SET state='acknowledged', acknowledged_ms=? WHERE key=? AND state='waiting'").bind(1, ms(now)).bind(2, key).step();
    if (sqlite3_changes(db_.handle()) > 0) out.push_back(key);
  }
  return out;
}

}  // namespace pilecore::core
