#include "plugin_uploads.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "overloaded.hpp"
#include "plugin_upload_repository.hpp"

namespace pilecore::core {

protocol::Record to_protocol(const UplinkRecord& record) {
  nlohmann::json body = nlohmann::json::object();  // a std::map: the names come out sorted byte by byte
  for (const auto& f : record.body) {
    body[f.name] = std::visit(overloaded{[](std::int64_t v) { return nlohmann::json(v); }, [](const std::string& v) { return nlohmann::json(v); },
                                         [](const std::vector<std::uint8_t>& v) { return nlohmann::json::binary(v); },
                                         [](bool v) { return nlohmann::json(v); }},
                              f.value);
  }
  return {record.key, record.kind, std::move(body)};
}

PluginUploads::PluginUploads(StoreWorker& store, const Clock& clock, Poster post) : store_(store), clock_(clock), post_(std::move(post)) {}

PluginUploads::~PluginUploads() { *alive_ = false; }

void PluginUploads::submit(const std::string& instance, const UplinkRecord& record, Done done) {
  auto refuse = [&](StatusCode code, std::string why) {
    // The key as far as it is printable: a refused one may hold anything.
    std::string key = record.key.substr(0, protocol::kMaxKeySize);
    for (char& c : key) c = (c > 0x20 && c < 0x7F) ? c : '?';
    spdlog::warn("uplink: instance {}: the record '{}' is refused: {}", instance, key, why);
    post_([done = std::move(done), st = Status(code, std::move(why))] { done(st); });
  };
  if (std::string why = uplink_record_error(record); !why.empty()) return refuse(StatusCode::invalid_argument, std::move(why));
  protocol::Record encoded;
  try {
    encoded = to_protocol(record);
    if (const auto size = protocol::encode_record(encoded).size(); size > kMaxPluginRecordBytes) {
      return refuse(StatusCode::invalid_argument, fmt::format("the record is {} bytes encoded; at most {}", size, kMaxPluginRecordBytes));
    }
  } catch (const std::exception& e) {
    // nlohmann throws for text that is not UTF-8.
    return refuse(StatusCode::invalid_argument, fmt::format("the record cannot be encoded: {}", e.what()));
  }
  auto outcome = std::make_shared<PluginUploadOutcome>();
  store_.submit(
      [outcome, instance, encoded = std::move(encoded), now = clock_.now()](Database& db) {
        *outcome = PluginUploadRepository(db).submit(instance, encoded, now);
      },
      [this, alive = alive_, outcome, instance, key = record.key, done = std::move(done)](Status st) mutable {
        if (!*alive) return;
        using State = PluginUploadOutcome::State;
        if (!st.ok()) {
          spdlog::error("uplink: instance {}: the record {} could not be written: {}", instance, key, st.message());
          return done(Status(StatusCode::unavailable, fmt::format("the pile's database could not write the record: {}", st.message())));
        }
        switch (outcome->state) {
          case State::waiting:
            waiting_.emplace(key, std::move(done));
            return;
          case State::acknowledged: return done(Status::success());
          case State::taken: return done(Status(StatusCode::invalid_argument, outcome->message));
          case State::no_uplink: return done(Status(StatusCode::unavailable, outcome->message));
          case State::full: return done(Status(StatusCode::busy, outcome->message));
        }
      });
}

void PluginUploads::acknowledged(const std::vector<std::string>& keys) {
  std::vector<Done> dones;
  for (const auto& key : keys) {
    auto [first, last] = waiting_.equal_range(key);
    for (auto it = first; it != last; ++it) dones.push_back(std::move(it->second));
    waiting_.erase(first, last);
  }
  for (auto& d : dones) d(Status::success());
}

}  // namespace pilecore::core
