// The uplink sender (issue #12 items 2, 6, 7): takes the records the outbox holds to the back end
// over the site's link plugins, and takes the back end's answers in.
//
//  - It lives on the core's strand and never touches the database there: reading due records,
//    marking them attempted, acknowledging and enqueueing are StoreWorker works.
//  - It wakes when something was enqueued (wake()), when a link comes up, and at the outbox's
//    next_due(). A batch of due records is marked attempted in the same work that reads it, so
//    each is retried with the outbox's backoff unless an acknowledgement removes it first: a
//    link's "sent" is never taken for delivery.
//  - Each record is framed with the next frame sequence (reserved on disk in blocks, never
//    reused), sent on the link choose_link() picks for its class among the links that are up,
//    and fragmented when that link's MTU asks for it. A record no link can carry now waits. A
//    link that refuses a frame as busy while it carries another gets one frame at a time from
//    then on (queued in order), and the other link takes records meanwhile.
//  - Down frames: an ack removes the records it names, raises the ledger anchor and marks the
//    plugins' records it names acknowledged (their Host::upload answers, after the commit); a command
//    goes to the DownlinkHandler (remote_commands.hpp: signature, window, sequence, then the
//    command), whose answer is a control record; anything refused is counted by reason
//    (protocol::Counters) and shown in status.
//  - Heartbeat: a status record every `heartbeat` of clock time, with what heartbeat_body()
//    returns (the connectors' states).
//  - Telemetry: every `telemetry` of clock time, the connectors' state, power and meter register
//    in the compact layout (protocol.md 3.3), straight to the telemetry class's link: it is not
//    acknowledged, and one no link can take now is skipped (the next supersedes it).
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/strand.hpp>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "fragments.hpp"
#include "frame.hpp"
#include "link_routing.hpp"
#include "outbox.hpp"
#include "payloads.hpp"
#include "pilecore/link.hpp"
#include "remote_commands.hpp"
#include "scheduler.hpp"
#include "store_worker.hpp"

namespace pilecore::core {

struct UplinkSettings {
  std::uint32_t device_id = 0;
  protocol::LinkRouting routing;
  Duration heartbeat = std::chrono::minutes(5);  ///< 0: no heartbeat
  Duration telemetry = std::chrono::minutes(5);  ///< compact telemetry (protocol.md 3.3) every; 0: none
  std::size_t batch = 32;                        ///< records read per storage work
};

struct UplinkStats {
  std::uint64_t frames_sent = 0;     ///< handed to a link and accepted by it
  std::uint64_t send_failures = 0;   ///< a link refused or failed a frame (the record is retried)
  std::uint64_t busy = 0;            ///< of those, refused as busy
  std::uint64_t records_tried = 0;   ///< records handed out by the outbox (each try counts)
  std::uint64_t unroutable = 0;      ///< tries no link could carry at the time
  std::uint64_t acks = 0;            ///< ack frames taken in
  std::uint64_t acknowledged = 0;    ///< records they removed
  std::uint64_t commands = 0;        ///< command frames answered by the DownlinkHandler
  std::uint64_t foreign = 0;         ///< down frames addressed to another device id (ignored)
  std::uint64_t enqueue_failures = 0;  ///< status/alarm/heartbeat records whose work failed
  std::uint64_t telemetry_sent = 0;     ///< compact telemetry frames handed to a link
  std::uint64_t telemetry_skipped = 0;  ///< compact telemetry no link could take then (the next supersedes it)
  protocol::Counters refusals;       ///< down frames refused, by reason
};

class Uplink {
 public:
  using Done = std::function<void(Status)>;
  struct LinkRef {
    std::string name;
    link::Link* link = nullptr;
    /// Frames waiting for the link, in order (a record's fragments go one after another).
    std::deque<std::pair<protocol::Bytes, protocol::UplinkClass>> queue;
    std::size_t in_flight = 0;  ///< sent, `done` not called yet
    /// The link answered busy to a frame while it carried another (a LoRaWAN module sends one
    /// uplink at a time): from then on it gets one frame at a time, and counts as unable to
    /// send while it carries one, so choose_link() takes the other link meanwhile.
    bool one_at_a_time = false;
    /// Busy with nothing in flight (a duty cycle's off time): no frame before then.
    std::optional<TimePoint> rest_until;
    Duration rest{0};  ///< the last rest; doubles while the link stays busy
  };

  /// `store`'s Database must have the uplink enabled (Database::enable_uplink). No `downlink`:
  /// every command is refused "commands are not enabled on this pile".
  Uplink(const Clock& clock, Scheduler& scheduler, StoreWorker& store, UplinkSettings settings, std::unique_ptr<DownlinkHandler> downlink = nullptr);
  ~Uplink();
  Uplink(const Uplink&) = delete;
  Uplink& operator=(const Uplink&) = delete;

  /// The running link instances (on the strand, before start()); their receivers point here
  /// until stop().
  void add_link(std::string name, link::Link* link);
  /// Called on the strand, after an ack is committed, with the keys it named that plugins had
  /// uploaded and were waiting (PluginUploadRepository::acknowledge): Host::upload's answers.
  void set_acknowledged(std::function<void(const std::vector<std::string>&)> fn) { acknowledged_ = std::move(fn); }
  /// What a heartbeat carries (may be empty: none).
  void set_heartbeat_body(std::function<nlohmann::json()> body) { heartbeat_body_ = std::move(body); }
  /// The connectors' readings for compact telemetry (may be empty: none is sent).
  void set_telemetry_body(std::function<std::vector<protocol::ConnectorTelemetry>()> body) { telemetry_body_ = std::move(body); }
  void start();
  /// Cancels the timers and detaches from the links; a batch in flight is dropped here (its
  /// records were marked attempted and are resent after the next start).
  void stop();

  /// Something was enqueued, or a link came up: look at the outbox now.
  void wake();
  /// Enqueues a record in a storage work of its own (a status change or an alarm, which has no
  /// other row to commit with), then wakes the sender. `done` (may be empty) gets the work's
  /// result on the strand.
  void report(protocol::Record record, protocol::UplinkClass cls, Done done = {});

  [[nodiscard]] const UplinkStats& stats() const { return stats_; }
  [[nodiscard]] const DownlinkHandler& downlink() const { return *downlink_; }

  /// Takes one frame from a link (what a link's receiver calls; public for tests).
  void on_frame(std::string_view link, protocol::ByteView bytes);

 private:
  struct Batch;
  void pump();
  void schedule_at(std::optional<TimePoint> when);
  void send_record(const OutboxRecord& record);
  void send_frame(const std::string& link, protocol::Bytes frame, protocol::UplinkClass cls);
  void drain(LinkRef& link);
  void sent(const std::string& link, const Status& st);
  void on_message(std::uint8_t flags, const protocol::Header& header, protocol::ByteView payload);
  void heartbeat();
  void telemetry();
  [[nodiscard]] bool any_link_up() const;
  [[nodiscard]] std::vector<protocol::LinkSnapshot> snapshots() const;
  std::uint32_t next_sequence();

  const Clock& clock_;
  Scheduler& scheduler_;
  StoreWorker& store_;
  UplinkSettings settings_;
  std::unique_ptr<DownlinkHandler> downlink_;
  std::vector<LinkRef> links_;
  std::function<nlohmann::json()> heartbeat_body_;
  std::function<std::vector<protocol::ConnectorTelemetry>()> telemetry_body_;
  std::function<void(const std::vector<std::string>&)> acknowledged_;
  protocol::Reassembler reassembler_;
  UplinkStats stats_;
  bool running_ = false;
  bool busy_ = false;   ///< a batch is being read
  bool again_ = false;  ///< woken while busy: read again when it is back
  TimerId timer_ = 0;
  std::optional<TimePoint> timer_at_;
  TimerId heartbeat_timer_ = 0;
  TimerId telemetry_timer_ = 0;
  std::uint32_t seq_next_ = 0;
  std::uint32_t seq_left_ = 0;
  std::uint16_t transfer_id_ = 0;
  /// Outlives a stop(): works in flight check it before touching `this`.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace pilecore::core
