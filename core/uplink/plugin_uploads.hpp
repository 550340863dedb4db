// Host::upload (SDK 2.4): the records plugins hand the core, through the outbox to the back end,
// and the answer each waits for. On the core's strand.
//
//  - submit() checks the record (pilecore::uplink_record_error, then the encoded size), encodes
//    its body as the CBOR map protocol.md 3.1 describes, and in one storage work writes it to
//    the outbox (class transaction) with its key's owner (PluginUploadRepository). The answer:
//    a refusal (nothing written), ok at once for a key the back end acknowledged before, or,
//    once written, ok when acknowledged() names the key, i.e. when the back end's ack has been
//    committed.
//  - Every answer is on the strand and never inside submit(). A record whose instance stops
//    before the ack keeps its `done` here until the ack; the instance's wrapper drops it then
//    (the post rule): the plugin uploads again at its next start.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "payloads.hpp"
#include "pilecore/status.hpp"
#include "pilecore/uplink.hpp"
#include "store_worker.hpp"

namespace pilecore::core {

/// Largest encoded record a plugin may upload (the outbox fragments it for small MTUs).
inline constexpr std::size_t kMaxPluginRecordBytes = 16 * 1024;

/// The record as the outbox sends it: the body's fields as a CBOR map (bytes as a byte string).
[[nodiscard]] protocol::Record to_protocol(const UplinkRecord& record);

class PluginUploads {
 public:
  using Done = std::function<void(Status)>;
  using Poster = std::function<void(std::function<void()>)>;

  /// `post` runs a function on the strand later. The sender learns of a written record as of any
  /// other: its commit wakes it (StoreWorker::on_enqueued).
  PluginUploads(StoreWorker& store, const Clock& clock, Poster post);
  ~PluginUploads();
  PluginUploads(const PluginUploads&) = delete;
  PluginUploads& operator=(const PluginUploads&) = delete;

  void submit(const std::string& instance, const UplinkRecord& record, Done done);
  /// The back end's ack, committed, named these plugin keys (Uplink's acknowledged hook).
  void acknowledged(const std::vector<std::string>& keys);
  /// Uploads written and waiting for the back end's ack (a key uploaded twice counts twice).
  [[nodiscard]] std::size_t waiting() const { return waiting_.size(); }

 private:
  StoreWorker& store_;
  const Clock& clock_;
  Poster post_;
  std::multimap<std::string, Done> waiting_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace pilecore::core
