// sim-link: a loopback communication link with real limits.
//
// send() refuses frames above the MTU (invalid_argument) and, when the duty cycle is enforced,
// frames whose air time would take the air time used in the sliding window above its share
// (busy). Air time is modelled as bytes * us_per_byte. After latency_ms of host-clock time the
// frame counts as handed over (ok) and, when `ack` is set, the link plays the operator's back end:
// it decodes the frame as docs/protocol.md says and, for a record (types 0x01-0x04, not
// fragmented), answers with the protocol's application-level acknowledgement (type 0x81, CBOR
// {"a": [key], "l": highest ledger seq seen}) addressed to the frame's device, through the
// receiver. It does not reassemble fragmented transfers: those are left unacknowledged, so keep
// the MTU above the largest record when a test wants everything acknowledged. A frame it cannot
// decode is counted and not acknowledged. The link can start down, come up later and go
// through a simulated outage.
#include <pilecore/pilecore.hpp>

#include <algorithm>
#include <deque>
#include <exception>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <memory>
#include <string>
#include <vector>

namespace {

using namespace pilecore;

constexpr double kNever = -1;
constexpr double kYear = 31536000;

constexpr ConfigKey keys[] = {
    {.key = "mtu_bytes", .type = ConfigType::integer, .default_value = "1024", .min = 17, .max = 1048576,
     .description = "Largest frame, header included; larger frames are refused", .unit = "B"},
    {.key = "duty_cycle_ppm", .type = ConfigType::integer, .default_value = "1000000", .min = 1, .max = 1000000,
     .description = "Share of air time the link may use, in parts per million (10000 = 1 %, the EU868 LoRaWAN limit)", .unit = "ppm"},
    {.key = "duty_cycle_window_s", .type = ConfigType::integer, .default_value = "3600", .min = 1, .max = 86400,
     .description = "Sliding window over which the duty cycle is counted", .unit = "s"},
    {.key = "enforce_duty_cycle", .type = ConfigType::boolean, .default_value = "true",
     .description = "Refuse (busy) a frame whose air time would exceed the duty cycle"},
    {.key = "us_per_byte", .type = ConfigType::integer, .default_value = "0", .min = 0, .max = 1000000,
     .description = "Modelled air time per byte (0 = instantaneous, e.g. 5G; about 1000 for LoRa SF7)", .unit = "us"},
    {.key = "max_dwell_ms", .type = ConfigType::integer, .default_value = "0", .min = 0, .max = 60000,
     .description = "Longest single transmission; longer frames are refused; 0 = unlimited", .unit = "ms"},
    {.key = "latency_ms", .type = ConfigType::integer, .default_value = "50", .min = 0, .max = 600000,
     .description = "Host-clock time from send() to the answer (and the acknowledgement)", .unit = "ms"},
    {.key = "ack", .type = ConfigType::boolean, .default_value = "true",
     .description = "Play the back end: answer each record frame with the protocol's acknowledgement (type 0x81) through the receiver"},
    {.key = "start_down", .type = ConfigType::boolean, .default_value = "false",
     .description = "Start in state down (no coverage)"},
    {.key = "up_after_s", .type = ConfigType::integer, .default_value = "-1", .min = kNever, .max = kYear,
     .description = "With start_down: host-clock seconds after start until the link comes up; -1 = never", .unit = "s"},
    {.key = "down_after_s", .type = ConfigType::integer, .default_value = "-1", .min = kNever, .max = kYear,
     .description = "Host-clock seconds after start at which a simulated outage begins; -1 = never", .unit = "s"},
    {.key = "down_for_s", .type = ConfigType::integer, .default_value = "60", .min = kNever, .max = kYear,
     .description = "Length of the simulated outage; -1 = it lasts", .unit = "s"},
};

// docs/protocol.md sections 1-3: the 16-byte big-endian header and the types the back end reads.
constexpr std::size_t kHeaderSize = 16;
constexpr std::uint8_t kVersion = 1;
constexpr std::uint8_t kFragmentFlag = 0x01;
constexpr std::uint8_t kAckType = 0x81;

void put_u32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(v >> shift));
}

std::string_view to_string(link::TrafficClass c) {
  switch (c) {
    case link::TrafficClass::control: return "control";
    case link::TrafficClass::telemetry: return "telemetry";
    case link::TrafficClass::bulk: return "bulk";
  }
  return "unknown";
}

class SimLink final : public link::Link {
 public:
  explicit SimLink(Host& host)
      : host_(host),
        mtu_(static_cast<std::size_t>(host.config().integer("mtu_bytes"))),
        duty_ppm_(static_cast<std::uint32_t>(host.config().integer("duty_cycle_ppm"))),
        window_(std::chrono::seconds(host.config().integer("duty_cycle_window_s"))),
        enforce_(host.config().boolean("enforce_duty_cycle")),
        us_per_byte_(host.config().integer("us_per_byte")),
        max_dwell_(host.config().integer("max_dwell_ms")),
        latency_(host.config().integer("latency_ms")),
        ack_(host.config().boolean("ack")),
        start_down_(host.config().boolean("start_down")),
        up_after_s_(host.config().integer("up_after_s")),
        down_after_s_(host.config().integer("down_after_s")),
        down_for_s_(host.config().integer("down_for_s")) {}

  Status start() noexcept override {
    try {
      set_state(start_down_ ? link::State::down : link::State::up, start_down_ ? "configured to start down" : "loopback");
      if (start_down_ && up_after_s_ >= 0) {
        timers_.push_back(host_.schedule(std::chrono::seconds(up_after_s_), [this] { set_state(link::State::up, "coverage back"); }));
      }
      if (down_after_s_ >= 0) {
        timers_.push_back(host_.schedule(std::chrono::seconds(down_after_s_), [this] {
          set_state(link::State::down, "simulated outage");
          if (down_for_s_ >= 0) {
            timers_.push_back(host_.schedule(std::chrono::seconds(down_for_s_), [this] { set_state(link::State::up, "outage over"); }));
          }
        }));
      }
      host_.log().info("loopback link: mtu {} B, duty cycle {} ppm over {} s{}, {} us/B, latency {} ms, ack {}", mtu_, duty_ppm_,
                       window_.count() / 1000, enforce_ ? "" : " (not enforced)", us_per_byte_, latency_.count(), ack_);
      return Status::success();
    } catch (const std::exception& e) {
      return Status::error(StatusCode::failed, e.what());
    }
  }

  void stop() noexcept override {
    for (TimerId t : timers_) host_.cancel(t);
    timers_.clear();
    auto pending = std::move(pending_);
    pending_.clear();
    for (auto& [key, p] : pending) {
      host_.cancel(p.timer);
      try {
        if (p.done) p.done(Status::error(StatusCode::unavailable, "link stopped before the frame was handed over"));
      } catch (...) {
      }
    }
    state_ = link::State::down;
  }

  [[nodiscard]] link::Limits limits() const noexcept override {
    return {.mtu = mtu_, .duty_cycle_ppm = duty_ppm_, .max_dwell = max_dwell_};
  }
  [[nodiscard]] link::State state() const noexcept override { return state_; }

  /// A loopback has one back end, so the risk layer's "switch to backup" signal (API 2.2) only
  /// shows in the instance's state: the operator, and the tests, see that the core delivered it.
  void prefer_backup(bool on) noexcept override {
    try {
      host_.report_state(state_ == link::State::up ? "up" : "down", on ? "on the backup endpoint (risk.flood)" : "on the primary endpoint");
    } catch (...) {
    }
  }

  void set_receiver(link::Receiver receiver) noexcept override {
    try {
      receiver_ = std::move(receiver);
    } catch (...) {
    }
  }

  void send(std::span<const std::uint8_t> frame, link::TrafficClass cls, link::SendCallback done) noexcept override {
    try {
      Status refused = admit(frame, cls);
      if (!refused.ok()) {
        // Answered on the next turn of the loop, never from inside send(): callers need not be
        // re-entrant.
        host_.log().warn("send refused ({}): {}", pilecore::to_string(refused.code()), refused.message());
        answer_later(Duration{0}, std::move(done), std::move(refused), {});
        return;
      }
      const TimePoint now = host_.clock().now();
      const std::int64_t air_us = air_time_us(frame.size());
      air_.push_back({now, air_us});
      ++sent_;
      host_.log().debug("send #{} {} B ({}), air time {} us", sent_, frame.size(), to_string(cls), air_us);

      std::vector<std::uint8_t> ack;
      if (ack_) ack = acknowledge(frame);
      answer_later(latency_, std::move(done), Status::success(), std::move(ack));
    } catch (const std::exception& e) {
      host_.log().error("send failed: {}", e.what());
      try {
        if (done) done(Status::error(StatusCode::failed, e.what()));
      } catch (...) {
      }
    }
  }

 private:
  struct Air {
    TimePoint at;
    std::int64_t us;
  };
  struct Pending {
    TimerId timer = 0;
    link::SendCallback done;
  };

  // The back end's side: decodes the record and makes its ack, or nothing (a fragment, compact
  // telemetry, which is never acknowledged, or a frame that does not decode: counted).
  std::vector<std::uint8_t> acknowledge(std::span<const std::uint8_t> frame) {
    if (frame.size() < kHeaderSize || (frame[0] >> 4) != kVersion || (frame[0] & 0x0F & ~kFragmentFlag) != 0 ||
        frame.size() != kHeaderSize + ((std::size_t{frame[2]} << 8) | frame[3])) {
      ++undecodable_;
      host_.log().warn("back end: frame #{} of {} B does not decode as a protocol frame; not acknowledged ({} so far)", sent_, frame.size(), undecodable_);
      return {};
    }
    const std::uint8_t type = frame[1];
    if ((frame[0] & kFragmentFlag) != 0 || type < 0x01 || type > 0x04) return {};
    std::optional<nlohmann::json> record;
    try {
      record = nlohmann::json::from_cbor(frame.subspan(kHeaderSize));
    } catch (const std::exception&) {
    }
    if (!record || !record->is_object() || !record->contains("k") || !(*record)["k"].is_string()) {
      ++undecodable_;
      host_.log().warn("back end: record frame #{} has no CBOR record with a key; not acknowledged", sent_);
      return {};
    }
    const std::string key = (*record)["k"].get<std::string>();
    // What a back end stores once per key and acknowledges every time (docs/protocol.md 3.1).
    if (stored_.insert(key).second) {
      host_.log().info("back end: stored {} record {}", record->value("c", "?"), key);
      host_.log().debug("back end: body of {}: {}", key, printable(record->value("b", nlohmann::json())).dump());
    } else {
      host_.log().info("back end: {} again, already stored; acknowledged again", key);
    }
    if (record->value("c", "") == "ledger" && record->contains("b") && (*record)["b"].contains("seq") && (*record)["b"]["seq"].is_number_unsigned()) {
      ledger_seq_ = std::max(ledger_seq_.value_or(0), (*record)["b"]["seq"].get<std::uint64_t>());
    }
    nlohmann::json ack{{"a", nlohmann::json::array({(*record)["k"]})}};
    if (ledger_seq_) ack["l"] = *ledger_seq_;
    const std::vector<std::uint8_t> payload = nlohmann::json::to_cbor(ack);
    std::vector<std::uint8_t> out{static_cast<std::uint8_t>(kVersion << 4), kAckType, static_cast<std::uint8_t>(payload.size() >> 8),
                                  static_cast<std::uint8_t>(payload.size())};
    out.insert(out.end(), frame.begin() + 4, frame.begin() + 8);  // the device the frame came from
    put_u32(out, static_cast<std::uint32_t>(std::chrono::duration_cast<std::chrono::seconds>(host_.clock().now().time_since_epoch()).count()));
    put_u32(out, down_seq_++);
    out.insert(out.end(), payload.begin(), payload.end());
    return out;
  }

  /// A body for the log: byte strings by their size only (a voucher's bytes are payment
  /// evidence with the wallet's id: never logged, also not by the simulated back end).
  static nlohmann::json printable(nlohmann::json j) {
    if (j.is_binary()) return fmt::format("<{} bytes>", j.get_binary().size());
    if (j.is_object() || j.is_array()) {
      for (auto& v : j) v = printable(std::move(v));
    }
    return j;
  }

  [[nodiscard]] std::int64_t air_time_us(std::size_t bytes) const { return static_cast<std::int64_t>(bytes) * us_per_byte_; }

  Status admit(std::span<const std::uint8_t> frame, link::TrafficClass cls) {
    if (state_ != link::State::up) return Status::error(StatusCode::unavailable, "the link is down");
    if (frame.empty()) return Status::error(StatusCode::invalid_argument, "empty frame");
    if (frame.size() > mtu_) {
      return Status::error(StatusCode::invalid_argument, fmt::format("{} frame of {} B is larger than the MTU of {} B", to_string(cls), frame.size(), mtu_));
    }
    const std::int64_t air_us = air_time_us(frame.size());
    if (max_dwell_.count() > 0 && air_us > max_dwell_.count() * 1000) {
      return Status::error(StatusCode::invalid_argument,
                           fmt::format("frame of {} B needs {} ms of air time, above the dwell limit of {} ms", frame.size(), air_us / 1000, max_dwell_.count()));
    }
    if (!enforce_ || air_us == 0) return Status::success();
    const TimePoint now = host_.clock().now();
    while (!air_.empty() && air_.front().at + window_ <= now) air_.pop_front();
    std::int64_t used = 0;
    for (const auto& a : air_) used += a.us;
    const std::int64_t allowed = std::chrono::duration_cast<std::chrono::microseconds>(window_).count() / 1000000 * duty_ppm_;
    if (used + air_us > allowed) {
      // When would enough air time have left the window?
      std::int64_t freed = 0;
      TimePoint when = now;
      for (const auto& a : air_) {
        freed += a.us;
        when = a.at + window_;
        if (used - freed + air_us <= allowed) break;
      }
      return Status::error(StatusCode::busy, fmt::format("duty cycle: {} us of air time used in the last {} s, {} us allowed; this frame needs {} us; "
                                                         "retry in {} ms",
                                                         used, window_.count() / 1000, allowed, air_us, std::max<std::int64_t>(0, (when - now).count())));
    }
    return Status::success();
  }

  void answer_later(Duration delay, link::SendCallback done, Status status, std::vector<std::uint8_t> ack) {
    const std::uint64_t key = ++pending_seq_;
    pending_[key].done = std::move(done);
    const TimerId timer = host_.schedule(delay, [this, key, status = std::move(status), ack = std::move(ack)] { deliver(key, status, ack); });
    if (timer == 0) {  // stopping: answer now rather than never
      auto p = std::move(pending_[key]);
      pending_.erase(key);
      if (p.done) p.done(Status::error(StatusCode::unavailable, "the link is stopping"));
      return;
    }
    pending_[key].timer = timer;
  }

  void deliver(std::uint64_t key, const Status& status, const std::vector<std::uint8_t>& ack) {
    auto it = pending_.find(key);
    if (it == pending_.end()) return;
    auto done = std::move(it->second.done);
    pending_.erase(it);
    if (!status.ok()) {
      if (done) done(status);
      return;
    }
    if (state_ != link::State::up) {
      if (done) done(Status::error(StatusCode::unavailable, "the link went down before the frame was handed over"));
      return;
    }
    if (done) done(Status::success());
    if (!ack.empty() && receiver_) receiver_(std::span<const std::uint8_t>(ack));
  }

  void set_state(link::State s, std::string_view why) {
    state_ = s;
    host_.report_state(s == link::State::up ? "up" : "down", why);
  }

  Host& host_;
  std::size_t mtu_;
  std::uint32_t duty_ppm_;
  Duration window_;
  bool enforce_;
  std::int64_t us_per_byte_;
  Duration max_dwell_;
  Duration latency_;
  bool ack_;
  bool start_down_;
  std::int64_t up_after_s_;
  std::int64_t down_after_s_;
  std::int64_t down_for_s_;
  link::State state_ = link::State::down;
  link::Receiver receiver_;
  std::deque<Air> air_;
  std::map<std::uint64_t, Pending> pending_;
  std::uint64_t pending_seq_ = 0;
  std::uint64_t sent_ = 0;
  std::uint64_t undecodable_ = 0;
  std::optional<std::uint64_t> ledger_seq_;
  std::set<std::string> stored_;  ///< the keys the back end holds  ///< the highest ledger seq the back end holds
  std::uint32_t down_seq_ = 0;
  std::vector<TimerId> timers_;
};

}  // namespace

PILECORE_PLUGIN(SimLink, {.name = "sim-link", .version = "0.1.0", .vendor = "pilecore", .license = "Apache-2.0",
                          .description = "Loopback link with MTU, duty cycle, latency, acknowledgements and outages", .config = keys})
