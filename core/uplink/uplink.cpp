#include "uplink.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>

#include "ledger_anchor.hpp"
#include "plugin_upload_repository.hpp"

namespace pilecore::core {

namespace {

using protocol::UplinkClass;

// Sequence numbers are reserved on disk in blocks (a commit per block, not per frame); a batch
// never needs more than kBatchFrames, so a block taken when fewer than that are left suffices.
constexpr std::uint16_t kMaxFragmentsPerRecord = 64;
constexpr std::uint32_t kSequenceBlock = 4096;

std::uint32_t unix_seconds(TimePoint t) {
  return static_cast<std::uint32_t>(std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count());
}

std::int64_t ms_of(TimePoint t) { return t.time_since_epoch().count(); }

OutboxLimits limits_of(Database& db) { return db.uplink() != nullptr ? db.uplink()->limits : OutboxLimits{}; }

}  // namespace

struct Uplink::Batch {
  std::vector<OutboxRecord> records;
  std::optional<TimePoint> next_due;
  std::optional<std::uint32_t> block;
};

Uplink::Uplink(const Clock& clock, Scheduler& scheduler, StoreWorker& store, UplinkSettings settings, std::unique_ptr<DownlinkHandler> downlink)
    : clock_(clock),
      scheduler_(scheduler),
      store_(store),
      settings_(std::move(settings)),
      downlink_(downlink ? std::move(downlink) : std::make_unique<RemoteCommands>(clock, store, std::nullopt, RemoteCommands::Executor{})),
      reassembler_({}, &stats_.refusals) {}

Uplink::~Uplink() {
  *alive_ = false;
  stop();
}

void Uplink::add_link(std::string name, link::Link* l) {
  LinkRef ref;
  ref.name = std::move(name);
  ref.link = l;
  links_.push_back(std::move(ref));
}

void Uplink::start() {
  running_ = true;
  for (auto& l : links_) {
    l.link->set_receiver([this, alive = alive_, name = l.name](std::span<const std::uint8_t> frame) {
      if (*alive) on_frame(name, frame);
    });
  }
  if (settings_.heartbeat.count() > 0) heartbeat_timer_ = scheduler_.after(settings_.heartbeat, [this] { heartbeat(); });
  if (settings_.telemetry.count() > 0) telemetry_timer_ = scheduler_.after(settings_.telemetry, [this] { telemetry(); });
  wake();
}

void Uplink::stop() {
  if (!running_) return;
  running_ = false;
  for (auto& l : links_) {
    l.link->set_receiver({});
    l.queue.clear();
  }
  scheduler_.cancel(timer_);
  scheduler_.cancel(heartbeat_timer_);
  scheduler_.cancel(telemetry_timer_);
  timer_ = heartbeat_timer_ = telemetry_timer_ = 0;
  timer_at_.reset();
}

bool Uplink::any_link_up() const {
  for (const auto& l : links_) {
    if (l.link->state() == link::State::up) return true;
  }
  return false;
}

std::vector<protocol::LinkSnapshot> Uplink::snapshots() const {
  std::vector<protocol::LinkSnapshot> out;
  const TimePoint now = clock_.now();
  for (const auto& l : links_) {
    const link::Limits lim = l.link->limits();
    // A duty-cycled link (LoRaWAN) carries a record whole or not at all: a fragmented record
    // would hold the air for minutes; the other link takes it.
    const bool duty_cycled = lim.duty_cycle_ppm < 1000000;
    const bool carrying = l.one_at_a_time && (l.in_flight > 0 || !l.queue.empty());
    const bool resting = l.rest_until && now < *l.rest_until;
    out.push_back({.name = l.name, .up = l.link->state() == link::State::up, .mtu = lim.mtu, .may_send_now = !carrying && !resting,
                   .max_fragments = duty_cycled ? std::uint16_t{1} : kMaxFragmentsPerRecord});
  }
  return out;
}

void Uplink::wake() {
  if (!running_) return;
  if (busy_) {
    again_ = true;
    return;
  }
  // Nothing to send on: a link coming up wakes us (the runtime forwards its state change), and
  // the retry timer looks again anyway.
  if (!any_link_up()) {
    schedule_at(clock_.now() + std::chrono::seconds(30));
    return;
  }
  pump();
}

void Uplink::schedule_at(std::optional<TimePoint> when) {
  if (!running_ || !when) return;
  if (timer_ != 0 && timer_at_ && *timer_at_ <= *when) return;
  scheduler_.cancel(timer_);
  timer_at_ = when;
  const Duration delay = std::max(Duration{0}, *when - clock_.now());
  timer_ = scheduler_.after(delay, [this] {
    timer_ = 0;
    timer_at_.reset();
    wake();
  });
}

void Uplink::pump() {
  busy_ = true;
  again_ = false;
  const TimePoint now = clock_.now();
  const std::size_t limit = settings_.batch;
  const bool need_block = seq_left_ < limit * kMaxFragmentsPerRecord;
  auto batch = std::make_shared<Batch>();
  store_.submit(
      [batch, now, limit, need_block](Database& db) {
        OutboxRepository outbox(db, limits_of(db));
        batch->records = outbox.due(now, limit);
        // Marked as tried before they leave: a crash between here and the send only delays them
        // by one backoff; the ack, not the send, removes them.
        for (const auto& r : batch->records) outbox.attempted(r.key, now);
        batch->next_due = outbox.next_due();
        if (need_block) batch->block = outbox.reserve_sequences(kSequenceBlock);
      },
      [this, alive = alive_, batch, limit](Status st) {
        if (!*alive) return;
        busy_ = false;
        if (!running_) return;
        if (!st.ok()) {
          spdlog::error("uplink: reading the outbox failed: {}; trying again in 30 s", st.message());
          schedule_at(clock_.now() + std::chrono::seconds(30));
          return;
        }
        if (batch->block) {
          seq_next_ = *batch->block;
          seq_left_ = kSequenceBlock;
        }
        for (const auto& r : batch->records) send_record(r);
        if (again_ || batch->records.size() == limit) {
          wake();
        } else {
          schedule_at(batch->next_due);
        }
      });
}

std::uint32_t Uplink::next_sequence() {
  if (seq_left_ > 0) --seq_left_;
  return seq_next_++;
}

void Uplink::send_record(const OutboxRecord& record) {
  ++stats_.records_tried;
  const std::size_t frame_size = protocol::kHeaderSize + record.payload.size();
  const auto links = snapshots();
  const auto choice = protocol::choose_link(settings_.routing, record.cls, frame_size, links);
  if (!choice) {
    ++stats_.unroutable;
    spdlog::debug("uplink: no link can carry {} record {} ({} B) now; it waits", protocol::to_string(record.cls), record.key, frame_size);
    return;
  }
  protocol::Header h;
  h.type = protocol::message_type(record.cls);
  h.device_id = settings_.device_id;
  h.timestamp = unix_seconds(clock_.now());
  const std::string link(choice->link);
  if (!choice->fragmented) {
    h.sequence = next_sequence();
    send_frame(link, protocol::encode(h, record.payload), record.cls);
    return;
  }
  std::size_t mtu = 0;
  for (const auto& s : links) {
    if (s.name == choice->link) mtu = s.mtu;
  }
  h.sequence = seq_next_;
  std::vector<protocol::Bytes> frames;
  try {
    frames = protocol::fragment(h, record.payload, mtu, ++transfer_id_);
  } catch (const std::exception& e) {
    ++stats_.unroutable;
    spdlog::warn("uplink: {} record {} cannot be fragmented for link {}: {}", protocol::to_string(record.cls), record.key, link, e.what());
    return;
  }
  for (auto& f : frames) {
    next_sequence();
    send_frame(link, std::move(f), record.cls);
  }
}

void Uplink::send_frame(const std::string& name, protocol::Bytes frame, UplinkClass cls) {
  for (auto& l : links_) {
    if (l.name != name) continue;
    l.queue.emplace_back(std::move(frame), cls);
    drain(l);
    return;
  }
}

void Uplink::drain(LinkRef& l) {
  while (!l.queue.empty() && (!l.one_at_a_time || l.in_flight == 0)) {
    auto [frame, cls] = std::move(l.queue.front());
    l.queue.pop_front();
    ++l.in_flight;
    // `done` may run inside send() (the SDK allows it): sent() then drains again, which only
    // pops what this loop has not.
    l.link->send(frame, protocol::traffic_class(cls), [this, alive = alive_, name = l.name](Status st) {
      if (*alive) sent(name, st);
    });
  }
}

void Uplink::sent(const std::string& name, const Status& st) {
  for (auto& l : links_) {
    if (l.name != name) continue;
    if (l.in_flight > 0) --l.in_flight;
    if (st.ok()) {
      ++stats_.frames_sent;
      l.rest_until.reset();
      l.rest = Duration{0};
    } else {
      ++stats_.send_failures;
      spdlog::debug("uplink: link {} did not take a frame: {}", name, st.message());
      if (st.code() == StatusCode::busy) {
        ++stats_.busy;
        if (!l.one_at_a_time) spdlog::info("uplink: link {} is busy while it carries a frame; it gets one frame at a time from now on", name);
        l.one_at_a_time = true;
        if (l.in_flight == 0) {
          // Busy with nothing of ours in flight: an off time. Rest, longer while it lasts.
          l.rest = std::min<Duration>(std::max<Duration>(l.rest * 2, std::chrono::seconds(1)), std::chrono::minutes(1));
          l.rest_until = clock_.now() + l.rest;
          schedule_at(*l.rest_until);
        }
      } else {
        // Down or failed: the frames behind it go too (a transfer is all or nothing); their
        // records are resent after their backoff.
        l.queue.clear();
      }
    }
    drain(l);
    // Free again: records that waited for it may go now.
    if (running_ && l.queue.empty() && l.in_flight == 0 && l.one_at_a_time) wake();
    return;
  }
}

void Uplink::on_frame(std::string_view link, protocol::ByteView bytes) {
  auto decoded = protocol::decode(bytes, &stats_.refusals);
  if (const auto* f = std::get_if<protocol::Failure>(&decoded)) {
    spdlog::warn("uplink: link {} delivered a frame that is refused ({}): {}", link, protocol::to_string(f->error), f->message);
    return;
  }
  const auto& frame = std::get<protocol::FrameView>(decoded);
  if (protocol::is_uplink(frame.header.type)) {
    stats_.refusals.count(protocol::Error::unknown_type);
    spdlog::warn("uplink: link {} delivered an up frame ({}); only down frames are taken in", link, protocol::to_string(frame.header.type));
    return;
  }
  if (frame.header.device_id != settings_.device_id) {
    ++stats_.foreign;
    spdlog::warn("uplink: link {} delivered a frame for device {}, this pile is {}; ignored", link, frame.header.device_id, settings_.device_id);
    return;
  }
  if ((frame.header.flags & protocol::flags::fragment) != 0) {
    auto offered = reassembler_.offer(frame, clock_.now());
    if (const auto* f = std::get_if<protocol::Failure>(&offered)) {
      spdlog::warn("uplink: a down transfer is refused ({}): {}", protocol::to_string(f->error), f->message);
      return;
    }
    const auto& msg = std::get<std::optional<protocol::Message>>(offered);
    if (!msg) return;
    protocol::Header h = frame.header;
    h.type = msg->type;
    h.timestamp = msg->timestamp;
    h.sequence = msg->sequence;
    on_message(0, h, msg->payload);
    return;
  }
  on_message(frame.header.flags, frame.header, frame.payload);
}

void Uplink::on_message(std::uint8_t, const protocol::Header& header, protocol::ByteView payload) {
  if (header.type == protocol::MessageType::ack) {
    auto ack = protocol::decode_ack(payload);
    if (const auto* f = std::get_if<protocol::Failure>(&ack)) {
      stats_.refusals.count(f->error);
      spdlog::warn("uplink: an ack is refused ({}): {}", protocol::to_string(f->error), f->message);
      return;
    }
    ++stats_.acks;
    auto decoded = std::get<protocol::Ack>(std::move(ack));
    stats_.acknowledged += decoded.keys.size();
    auto plugin_keys = std::make_shared<std::vector<std::string>>();
    store_.submit(
        [a = std::move(decoded), plugin_keys, now = clock_.now()](Database& db) {
          OutboxRepository(db, limits_of(db)).acknowledge(a);
          if (a.ledger_seq) record_anchor(db, *a.ledger_seq);
          *plugin_keys = PluginUploadRepository(db).acknowledge(a.keys, now);
        },
        [this, alive = alive_, plugin_keys](Status st) {
          // The records stay and are resent; the back end acknowledges a key it holds again.
          if (!st.ok()) spdlog::error("uplink: recording an acknowledgement failed: {}", st.message());
          if (st.ok() && *alive && acknowledged_ && !plugin_keys->empty()) acknowledged_(*plugin_keys);
        });
    return;
  }
  if (header.type == protocol::MessageType::command) {
    ++stats_.commands;
    downlink_->on_command(header, payload, [this, alive = alive_](protocol::Record answer) {
      if (*alive) report(std::move(answer), UplinkClass::control);
    });
    return;
  }
  stats_.refusals.count(protocol::Error::unknown_type);
}

void Uplink::report(protocol::Record record, UplinkClass cls, Done done) {
  store_.submit([r = std::move(record), cls](Database& db) { enqueue_uplink(db, r, cls); },
                [this, alive = alive_, then = std::move(done)](Status st) {
                  if (*alive) {
                    if (!st.ok()) {
                      ++stats_.enqueue_failures;
                      spdlog::error("uplink: a record could not be enqueued: {}", st.message());
                    }
                    wake();
                  }
                  if (then) then(st);
                });
}

void Uplink::heartbeat() {
  heartbeat_timer_ = 0;
  if (!running_) return;
  const TimePoint now = clock_.now();
  nlohmann::json body = heartbeat_body_ ? heartbeat_body_() : nlohmann::json::object();
  if (!body.is_object()) body = nlohmann::json{{"body", body}};
  body["time_ms"] = ms_of(now);
  nlohmann::json refusals = nlohmann::json::object();
  for (std::size_t i = 0; i < protocol::kErrorCount; ++i) {
    const auto e = static_cast<protocol::Error>(i);
    if (stats_.refusals[e] > 0) refusals[std::string(protocol::to_string(e))] = stats_.refusals[e];
  }
  body["refusals"] = std::move(refusals);
  body["commands"] = downlink_->counters();
  // The outbox's fill and what it dropped are part of status (docs/protocol.md section 4): read
  // in the same work that enqueues the heartbeat.
  store_.submit(
      [key = fmt::format("hb:{}", ms_of(now)), b = std::move(body)](Database& db) mutable {
        const OutboxStats st = OutboxRepository(db, limits_of(db)).stats();
        nlohmann::json waiting = nlohmann::json::object();
        nlohmann::json dropped = nlohmann::json::object();
        for (auto c : {UplinkClass::control, UplinkClass::transaction, UplinkClass::status, UplinkClass::telemetry}) {
          waiting[std::string(protocol::to_string(c))] = st.records[static_cast<std::size_t>(c)];
          dropped[std::string(protocol::to_string(c))] = st.dropped[static_cast<std::size_t>(c)];
        }
        b["outbox"] = {{"waiting", waiting}, {"dropped", dropped}, {"bytes", st.bytes}};
        enqueue_uplink(db, {key, "heartbeat", b}, UplinkClass::status);
      },
      [this, alive = alive_](Status st) {
        if (!*alive) return;
        if (!st.ok()) {
          ++stats_.enqueue_failures;
          spdlog::error("uplink: the heartbeat could not be enqueued: {}", st.message());
        }
        wake();
      });
  heartbeat_timer_ = scheduler_.after(settings_.heartbeat, [this] { heartbeat(); });
}

void Uplink::telemetry() {
  telemetry_timer_ = scheduler_.after(settings_.telemetry, [this] { telemetry(); });
  if (!running_ || !telemetry_body_) return;
  const std::vector<protocol::ConnectorTelemetry> readings = telemetry_body_();
  if (readings.empty()) return;
  // As many connectors per frame as the link's MTU takes (7 bytes each after the header).
  const auto links = snapshots();
  const auto choice = protocol::choose_link(settings_.routing, UplinkClass::telemetry, protocol::kHeaderSize + protocol::kCompactRecordSize, links);
  std::size_t mtu = 0;
  for (const auto& l : links) {
    if (choice && l.name == choice->link) mtu = l.mtu;
  }
  // No sequence block yet (nothing was sent since the start): a sequence is never reused, so wait.
  if (!choice || choice->fragmented || mtu < protocol::kHeaderSize + protocol::kCompactRecordSize || seq_left_ == 0) {
    ++stats_.telemetry_skipped;
    return;
  }
  const std::size_t per_frame = (mtu - protocol::kHeaderSize) / protocol::kCompactRecordSize;
  for (std::size_t i = 0; i < readings.size(); i += per_frame) {
    const std::vector<protocol::ConnectorTelemetry> part(readings.begin() + static_cast<std::ptrdiff_t>(i),
                                                         readings.begin() + static_cast<std::ptrdiff_t>(std::min(readings.size(), i + per_frame)));
    protocol::Bytes payload;
    try {
      payload = protocol::encode_compact_telemetry(part);
    } catch (const std::exception& e) {
      spdlog::warn("uplink: compact telemetry not sent: {}", e.what());
      ++stats_.telemetry_skipped;
      return;
    }
    protocol::Header h;
    h.type = protocol::MessageType::telemetry_compact;
    h.device_id = settings_.device_id;
    h.timestamp = unix_seconds(clock_.now());
    h.sequence = next_sequence();
    send_frame(std::string(choice->link), protocol::encode(h, payload), UplinkClass::telemetry);
    ++stats_.telemetry_sent;
  }
}

}  // namespace pilecore::core
