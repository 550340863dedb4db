// link-lorawan: a LoRaWAN uplink through a RAK3172 module (RUI3 AT commands, rui3.hpp) on a
// serial port. OTAA join with a backoff, unconfirmed or confirmed uplinks on one port, class A
// downlinks to the receiver.
//
// The link holds to the region's rules itself (airtime.hpp, DOMAIN.md section 5): limits().mtu is
// the largest application payload the current data rate carries within the region's dwell limit,
// a larger frame is refused with invalid_argument (the core's outbox fragments it or routes it to
// another link), and a frame that the EU868 1 % duty cycle does not allow yet is refused with busy
// and the time to wait. Frames are carried as given: the compact telemetry layout is the core's.
//
// Threads. The module is half duplex and answers one command at a time, so one job thread
// (plugins/common JobThread) owns the serial port and runs one exchange after the other; results
// come back to the strand with Host::post. Waits on the port also wake on stop, so stopping never
// waits for a module that has gone quiet. A module that does not answer a command is "lost": an
// alarm, state down, and the job thread reopens the port with a backoff (real time) until it
// answers again, then joins again.
#include "serial_speed.hpp"
#include <fcntl.h>
#include <poll.h>
#include <termios.h>
#include <unistd.h>

#include <pilecore/pilecore.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "airtime.hpp"
#include "hex.hpp"
#include "job_thread.hpp"
#include "rui3.hpp"

namespace {

using namespace pilecore;
using namespace std::chrono_literals;
namespace lw = pilecore::lorawan;
namespace rui3 = pilecore::lorawan::rui3;
using SteadyClock = std::chrono::steady_clock;

constexpr ConfigKey keys[] = {
    {.key = "device", .type = ConfigType::string, .required = true, .description = "Serial device of the RAK3172 module, e.g. /dev/ttyS3"},
    {.key = "baud", .type = ConfigType::integer, .default_value = "115200", .min = 9600, .max = 921600,
     .description = "Serial speed (RUI3: 115200 8N1; firmware before RUI3 used 9600)", .unit = "Bd"},
    {.key = "region", .type = ConfigType::enumeration, .default_value = "CN470", .allowed = "CN470|EU868",
     .description = "LoRaWAN region: CN470 (1 s per transmission) or EU868 (1 % duty cycle)"},
    {.key = "cn470_table", .type = ConfigType::enumeration, .default_value = "rp1.0.2", .allowed = "rp1.0.2|lorawan1.0.4",
     .description = "CN470 payload sizes per data rate: Regional Parameters 1.0.2 or LoRaWAN 1.0.4 (match the network server)"},
    {.key = "dev_eui", .type = ConfigType::string, .required = true, .description = "Device EUI, 16 hex digits"},
    {.key = "app_eui", .type = ConfigType::string, .required = true, .description = "Application (join) EUI, 16 hex digits"},
    {.key = "app_key", .type = ConfigType::string, .required = true, .secret = true, .description = "OTAA application key, 32 hex digits"},
    {.key = "data_rate", .type = ConfigType::integer, .default_value = "2", .min = 0, .max = 5,
     .description = "Uplink data rate DR0 (SF12) to DR5 (SF7); with adr the network server may change it"},
    {.key = "adr", .type = ConfigType::boolean, .default_value = "false", .description = "Let the network server set the data rate (ADR)"},
    {.key = "port", .type = ConfigType::integer, .default_value = "10", .min = 1, .max = 223, .description = "LoRaWAN application port (FPort) of uplinks"},
    {.key = "confirmed", .type = ConfigType::boolean, .default_value = "false",
     .description = "Send confirmed uplinks: a frame counts as handed over only when the network acknowledges it"},
    {.key = "join_retry_min_s", .type = ConfigType::integer, .default_value = "15", .min = 1, .max = 86400,
     .description = "Wait after a failed join before the next; doubles after each failure (host clock)", .unit = "s"},
    {.key = "join_retry_max_s", .type = ConfigType::integer, .default_value = "900", .min = 1, .max = 86400,
     .description = "Longest wait between two join attempts (host clock)", .unit = "s"},
    {.key = "join_timeout_ms", .type = ConfigType::integer, .default_value = "30000", .min = 10, .max = 600000,
     .description = "How long to wait for the module's join result (real time)", .unit = "ms"},
    {.key = "send_timeout_ms", .type = ConfigType::integer, .default_value = "60000", .min = 10, .max = 600000,
     .description = "How long to wait for an uplink's TX_DONE or confirmation (real time)", .unit = "ms"},
    {.key = "command_timeout_ms", .type = ConfigType::integer, .default_value = "3000", .min = 10, .max = 60000,
     .description = "How long the module may take to answer a command before it counts as lost (real time)", .unit = "ms"},
    {.key = "rx_linger_ms", .type = ConfigType::integer, .default_value = "500", .min = 0, .max = 10000,
     .description = "After an uplink's result, how long to listen for a downlink the module reports late (real time)", .unit = "ms"},
    {.key = "reopen_min_ms", .type = ConfigType::integer, .default_value = "1000", .min = 10, .max = 600000,
     .description = "First wait before reopening a module that stopped answering; doubles after each failure (real time)", .unit = "ms"},
    {.key = "reopen_max_ms", .type = ConfigType::integer, .default_value = "60000", .min = 10, .max = 600000,
     .description = "Longest wait between two attempts to reopen the module (real time)", .unit = "ms"},
};

constexpr const char* kAlarmCode = "lorawan.module_unavailable";


bool is_hex(std::string_view s, std::size_t digits) { return s.size() == digits && pilecore::plugins::parse_hex(s).has_value(); }

lw::Cn470Table table_of(const ConfigValues& c) { return c.string("cn470_table") == "lorawan1.0.4" ? lw::Cn470Table::lorawan104 : lw::Cn470Table::rp102; }

/// What the module said to one command.
struct Reply {
  enum class Outcome : std::uint8_t { ok, error, timeout, stopped } outcome = Outcome::timeout;
  std::string error;  ///< the error word
  std::string value;  ///< the value of an "AT+XXX=<value>" line, for queries
};

class LoraLink final : public link::Link {
 public:
  explicit LoraLink(Host& host)
      : host_(host),
        device_(host.config().string("device")),
        speed_(pilecore::plugins::serial_speed(host.config().integer("baud")).value_or(B115200)),
        region_(lw::parse_region(host.config().string("region")).value_or(lw::Region::cn470)),
        table_(table_of(host.config())),
        dev_eui_(host.config().string("dev_eui")),
        app_eui_(host.config().string("app_eui")),
        app_key_(host.config().string("app_key")),
        configured_dr_(static_cast<int>(host.config().integer("data_rate"))),
        dr_(configured_dr_),
        adr_(host.config().boolean("adr")),
        port_(static_cast<int>(host.config().integer("port"))),
        confirmed_(host.config().boolean("confirmed")),
        join_min_(std::chrono::seconds(host.config().integer("join_retry_min_s"))),
        join_max_(std::chrono::seconds(host.config().integer("join_retry_max_s"))),
        join_timeout_(host.config().integer("join_timeout_ms")),
        send_timeout_(host.config().integer("send_timeout_ms")),
        command_timeout_(host.config().integer("command_timeout_ms")),
        rx_linger_(host.config().integer("rx_linger_ms")),
        reopen_min_(host.config().integer("reopen_min_ms")),
        reopen_max_(host.config().integer("reopen_max_ms")),
        join_wait_(join_min_) {
    if (::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
  }

  ~LoraLink() override {
    halt();
    ::close(wake_[0]);
    ::close(wake_[1]);
  }
  LoraLink(const LoraLink&) = delete;
  LoraLink& operator=(const LoraLink&) = delete;

  static void validate(const ConfigValues& c, ConfigReport& report) {
    if (!pilecore::plugins::serial_speed(c.integer("baud"))) report.error("baud", "use one of 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600");
    if (!is_hex(c.string("dev_eui"), 16)) report.error("dev_eui", "must be 16 hex digits (8 bytes)");
    if (!is_hex(c.string("app_eui"), 16)) report.error("app_eui", "must be 16 hex digits (8 bytes)");
    if (!is_hex(c.string("app_key"), 32)) report.error("app_key", "must be 32 hex digits (16 bytes)");
    const auto region = lw::parse_region(c.string("region")).value_or(lw::Region::cn470);
    const int dr = static_cast<int>(c.integer("data_rate"));
    if (lw::max_payload(region, dr, table_of(c)) == 0) {
      report.error("data_rate", fmt::format("DR{} is not allowed in {} with the {} table; use DR1 or faster", dr, lw::to_string(region), c.string("cn470_table")));
    } else if (lw::usable_payload(region, dr, table_of(c)) < 17) {
      report.error("data_rate", fmt::format("at DR{} (SF{}) {}'s 1 s per transmission leaves room for {} bytes, less than one frame (16-byte header and a "
                                            "payload); use DR{} or faster",
                                            dr, lw::spreading_factor(dr), lw::to_string(region), lw::usable_payload(region, dr, table_of(c)), dr + 1));
    }
    if (c.integer("join_retry_min_s") > c.integer("join_retry_max_s")) report.error("join_retry_min_s", "must not be above join_retry_max_s");
    if (c.integer("reopen_min_ms") > c.integer("reopen_max_ms")) report.error("reopen_min_ms", "must not be above reopen_max_ms");
  }

  Status start() noexcept override {
    try {
      char drain[16];
      while (::read(wake_[0], drain, sizeof drain) > 0) {  // a restart: forget the last stop's wake-up
      }
      stopping_ = false;
      state_ = link::State::connecting;
      host_.report_state("down", fmt::format("opening the LoRaWAN module at {}", device_));
      host_.log().info("LoRaWAN {} DR{} (SF{}), port {}, {} uplinks, mtu {} B{}", lw::to_string(region_), dr_, lw::spreading_factor(dr_), port_,
                       confirmed_ ? "confirmed" : "unconfirmed", mtu(), adr_ ? ", ADR" : "");
      jobs_ = std::make_unique<pilecore::plugins::JobThread>();
      jobs_->submit([this] { bring_up(); });
      return Status::success();
    } catch (const std::exception& e) {
      return Status::error(StatusCode::failed, e.what());
    }
  }

  void stop() noexcept override { halt(); }

  [[nodiscard]] link::Limits limits() const noexcept override {
    return {.mtu = mtu(), .duty_cycle_ppm = lw::duty_cycle_ppm(region_), .max_dwell = Duration(lw::max_dwell_us(region_) / 1000)};
  }
  [[nodiscard]] link::State state() const noexcept override { return state_; }

  void set_receiver(link::Receiver receiver) noexcept override {
    try {
      receiver_ = std::move(receiver);
    } catch (...) {
    }
  }

  void send(std::span<const std::uint8_t> frame, link::TrafficClass, link::SendCallback done) noexcept override {
    try {
      Status refused = admit(frame);
      if (!refused.ok()) {
        host_.log().debug("uplink of {} B refused ({}): {}", frame.size(), pilecore::to_string(refused.code()), refused.message());
        // Answered from the strand's next turn, never inside send(): callers need not be re-entrant.
        host_.post([done = std::move(done), refused = std::move(refused)] {
          if (done) done(refused);
        });
        return;
      }
      const TimePoint now = host_.clock().now();
      const std::int64_t air = lw::time_on_air_us(frame.size(), lw::spreading_factor(dr_));
      previous_allowed_ = next_allowed_;
      // Without a duty cycle (CN470) the only wait is the transmission itself, which the module
      // already enforces (one uplink in flight); host time may also run faster than the air.
      if (lw::duty_cycle_ppm(region_) < 1000000) {
        next_allowed_ = now + std::chrono::duration_cast<Duration>(std::chrono::microseconds(lw::min_interval_us(region_, air)));
      }
      pending_ = std::move(done);
      in_flight_ = true;
      ++uplinks_;
      host_.log().debug("uplink #{}: {} B at DR{}, {} us on air", uplinks_, frame.size(), dr_, air);
      std::vector<std::uint8_t> bytes(frame.begin(), frame.end());
      jobs_->submit([this, bytes = std::move(bytes), confirmed = confirmed_] { transmit(bytes, confirmed); });
    } catch (const std::exception& e) {
      in_flight_ = false;
      try {
        if (done) done(Status::error(StatusCode::failed, e.what()));
      } catch (...) {
      }
    }
  }

 private:
  // ---------------------------------------------------------------------------------------
  // strand side

  [[nodiscard]] std::size_t mtu() const { return lw::usable_payload(region_, dr_, table_); }

  Status admit(std::span<const std::uint8_t> frame) const {
    if (state_ != link::State::up) return Status::error(StatusCode::unavailable, "the LoRaWAN link has not joined a network");
    if (in_flight_) return Status::error(StatusCode::busy, "the module is sending the previous uplink");
    if (frame.empty()) return Status::error(StatusCode::invalid_argument, "empty frame");
    const std::size_t table_max = lw::max_payload(region_, dr_, table_);
    const int sf = lw::spreading_factor(dr_);
    if (frame.size() > table_max) {
      return Status::error(StatusCode::invalid_argument,
                           fmt::format("a frame of {} B is larger than the {} B that {} DR{} carries", frame.size(), table_max, lw::to_string(region_), dr_));
    }
    // Over the dwell limit the frame can never go at this data rate, not merely not now: it is
    // an MTU refusal (fragment or take another link), not a busy one.
    const std::int64_t air = lw::time_on_air_us(frame.size(), sf);
    if (const std::int64_t dwell = lw::max_dwell_us(region_); dwell > 0 && air > dwell) {
      return Status::error(StatusCode::invalid_argument, fmt::format("a frame of {} B takes {} ms on air at SF{}, above {}'s {} ms per transmission; at most {} B fit",
                                                                     frame.size(), air / 1000, sf, lw::to_string(region_), dwell / 1000, mtu()));
    }
    const TimePoint now = host_.clock().now();
    if (now < next_allowed_) {
      const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next_allowed_ - now).count();
      return Status::error(StatusCode::busy, fmt::format("{} duty cycle of {} %: the last uplink's off time runs for another {} ms", lw::to_string(region_),
                                                         lw::duty_cycle_ppm(region_) / 10000, wait));
    }
    return Status::success();
  }

  void module_ready() {
    if (alarm_) {
      alarm_ = false;
      host_.raise({.severity = AlarmSeverity::warning, .code = kAlarmCode, .message = "the LoRaWAN module answers again", .active = false});
    }
    state_ = link::State::connecting;
    host_.report_state("down", "module ready; joining");
    request_join();
  }

  void module_lost(const std::string& why) {
    state_ = link::State::down;
    if (join_timer_ != 0) host_.cancel(join_timer_);
    join_timer_ = 0;
    if (!alarm_) {
      alarm_ = true;
      host_.raise({.severity = AlarmSeverity::critical, .code = kAlarmCode, .message = why, .active = true});
    }
    host_.report_state("down", why);
    host_.log().warn("{}", why);
  }

  void request_join() {
    join_timer_ = 0;
    ++join_requests_;
    jobs_->submit([this] { join(); });
  }

  void joined(int dr) {
    dr_ = dr;
    join_wait_ = join_min_;
    state_ = link::State::up;
    host_.report_state("up", fmt::format("joined, {} DR{}", lw::to_string(region_), dr_));
    host_.log().info("joined the LoRaWAN network after {} attempt(s); DR{}, mtu {} B", join_requests_, dr_, mtu());
  }

  void join_failed(const std::string& why) {
    state_ = link::State::down;
    const Duration wait = join_wait_;
    join_wait_ = std::min<Duration>(join_wait_ * 2, join_max_);
    host_.report_state("down", fmt::format("{}; next join in {} s", why, std::chrono::duration_cast<std::chrono::seconds>(wait).count()));
    host_.log().warn("join failed ({}); next attempt in {} s", why, std::chrono::duration_cast<std::chrono::seconds>(wait).count());
    join_timer_ = host_.schedule(wait, [this] { request_join(); });
  }

  void sent(Status status, bool transmitted, bool not_joined, std::optional<int> dr) {
    in_flight_ = false;
    if (!transmitted) next_allowed_ = previous_allowed_;  // nothing went on air: give the budget back
    if (dr && *dr != dr_) {
      host_.log().info("data rate DR{} -> DR{} (ADR); mtu {} B", dr_, *dr, lw::usable_payload(region_, *dr, table_));
      dr_ = *dr;
    }
    if (not_joined && state_ == link::State::up) {
      state_ = link::State::connecting;
      host_.report_state("down", "the module has left the network; joining again");
      request_join();
    }
    auto done = std::move(pending_);
    pending_ = nullptr;
    if (done) done(status);
  }

  void received(const std::vector<std::uint8_t>& data, int port) {
    ++downlinks_;
    host_.log().debug("downlink of {} B on port {}", data.size(), port);
    if (receiver_) receiver_(std::span<const std::uint8_t>(data));
  }

  void halt() noexcept {
    stopping_ = true;
    const char c = 1;
    [[maybe_unused]] auto n = ::write(wake_[1], &c, 1);
    if (jobs_) jobs_->stop();
    jobs_.reset();
    if (join_timer_ != 0) host_.cancel(join_timer_);
    join_timer_ = 0;
    close_port();
    state_ = link::State::down;
    in_flight_ = false;
    auto done = std::move(pending_);
    pending_ = nullptr;
    try {
      if (done) done(Status::error(StatusCode::unavailable, "the LoRaWAN link stopped before the uplink was handed over"));
    } catch (...) {
    }
  }

  // ---------------------------------------------------------------------------------------
  // job thread side: everything below touches the port

  /// Opens and configures the module; while it does not answer, raises the alarm (once) and
  /// tries again with a backoff.
  void bring_up() {
    auto wait = reopen_min_;
    bool reported = false;
    while (!stopping_) {
      std::string why;
      if (open_port(why) && configure(why)) {
        host_.post([this] { module_ready(); });
        return;
      }
      close_port();
      if (!reported) {
        reported = true;
        host_.post([this, why] { module_lost(why); });
      }
      if (!sleep_for(wait)) return;
      wait = std::min(wait * 2, reopen_max_);
    }
  }

  /// The module did not answer: say so, then reopen it.
  void lost(const std::string& why) {
    close_port();
    host_.post([this, why] { module_lost(why); });
    auto wait = reopen_min_;
    while (!stopping_) {
      if (!sleep_for(wait)) return;
      std::string again;
      if (open_port(again) && configure(again)) {
        host_.post([this] { module_ready(); });
        return;
      }
      close_port();
      wait = std::min(wait * 2, reopen_max_);
    }
  }

  bool configure(std::string& why) {
    // RUI3 manual, "LoRaWAN Network Management" and "Keys, IDs, and EUIs Management": LoRaWAN
    // mode, OTAA, the band (CN470 = 1, EU868 = 4), the keys, ADR and the data rate.
    const std::vector<std::string> commands = {
        "AT",
        "AT+NWM=1",
        "AT+NJM=1",
        fmt::format("AT+BAND={}", region_ == lw::Region::cn470 ? 1 : 4),
        "AT+DEVEUI=" + dev_eui_,
        "AT+APPEUI=" + app_eui_,
        "AT+APPKEY=" + app_key_,
        fmt::format("AT+ADR={}", adr_ ? 1 : 0),
        fmt::format("AT+DR={}", configured_dr_),
        fmt::format("AT+CFM={}", confirmed_ ? 1 : 0),
    };
    for (const auto& cmd : commands) {
      const Reply r = command(cmd, command_timeout_);
      if (r.outcome == Reply::Outcome::stopped) return false;
      if (r.outcome == Reply::Outcome::timeout) {
        why = fmt::format("the LoRaWAN module at {} does not answer {}", device_, redact(cmd));
        return false;
      }
      if (r.outcome == Reply::Outcome::error) {
        why = fmt::format("the LoRaWAN module at {} refused {}: {}", device_, redact(cmd), r.error);
        return false;
      }
    }
    module_cfm_ = confirmed_;
    return true;
  }

  void join() {
    // AT+JOIN=<join 1>:<auto-join 0>:<retry interval 8 s>:<attempts 1>: one attempt per command,
    // so that the backoff between attempts is the link's (host clock, reported), not the module's.
    const Reply r = command("AT+JOIN=1:0:8:1", command_timeout_);
    if (r.outcome == Reply::Outcome::stopped) return;
    if (r.outcome == Reply::Outcome::timeout) return lost(fmt::format("the LoRaWAN module at {} does not answer AT+JOIN", device_));
    if (r.outcome == Reply::Outcome::error) {
      const std::string why = "the module refused to join: " + r.error;
      host_.post([this, why] { join_failed(why); });
      return;
    }
    const auto deadline = SteadyClock::now() + join_timeout_;
    for (;;) {
      const auto line = next_line(deadline);
      if (stopping_) return;
      if (!line) {
        host_.post([this] { join_failed("no join result from the module in time"); });
        return;
      }
      if (line->kind == rui3::Kind::joined) break;
      if (line->kind == rui3::Kind::join_failed) {
        const std::string why = "join failed: " + line->text;
        host_.post([this, why] { join_failed(why); });
        return;
      }
    }
    const std::optional<int> dr = query_dr();
    if (stopping_) return;
    const int dr_joined = dr.value_or(configured_dr_);
    host_.post([this, dr_joined] { joined(dr_joined); });
  }

  void transmit(const std::vector<std::uint8_t>& frame, bool confirmed) {
    auto finish = [this](Status s, bool transmitted, bool not_joined, std::optional<int> dr) {
      host_.post([this, s = std::move(s), transmitted, not_joined, dr]() mutable { sent(std::move(s), transmitted, not_joined, dr); });
    };
    if (!port_open()) return finish(Status::error(StatusCode::unavailable, "the LoRaWAN module is not open"), false, false, std::nullopt);
    if (module_cfm_ != confirmed) {
      const Reply r = command(fmt::format("AT+CFM={}", confirmed ? 1 : 0), command_timeout_);
      if (r.outcome == Reply::Outcome::stopped) return;
      if (r.outcome == Reply::Outcome::timeout) {
        finish(Status::error(StatusCode::unavailable, "the LoRaWAN module stopped answering"), false, false, std::nullopt);
        return lost(fmt::format("the LoRaWAN module at {} does not answer AT+CFM", device_));
      }
      if (r.outcome == Reply::Outcome::ok) module_cfm_ = confirmed;
    }
    const std::string hex = pilecore::plugins::to_hex(frame.data(), frame.size());
    const Reply r = command(fmt::format("AT+SEND={}:{}", port_, hex), command_timeout_);
    if (r.outcome == Reply::Outcome::stopped) return;
    if (r.outcome == Reply::Outcome::timeout) {
      finish(Status::error(StatusCode::unavailable, "the LoRaWAN module stopped answering"), false, false, std::nullopt);
      return lost(fmt::format("the LoRaWAN module at {} does not answer AT+SEND", device_));
    }
    if (r.outcome == Reply::Outcome::error) {
      if (r.error == "AT_BUSY_ERROR") return finish(Status::error(StatusCode::busy, "the module is busy (AT_BUSY_ERROR)"), false, false, std::nullopt);
      if (r.error == "AT_NO_NETWORK_JOINED")
        return finish(Status::error(StatusCode::unavailable, "the module is not joined (AT_NO_NETWORK_JOINED)"), false, true, std::nullopt);
      if (r.error == "AT_PARAM_ERROR")
        return finish(Status::error(StatusCode::invalid_argument, "the module refused the payload (AT_PARAM_ERROR: too long for its data rate?)"), false, false,
                      std::nullopt);
      return finish(Status::error(StatusCode::failed, "the module refused the uplink: " + r.error), false, false, std::nullopt);
    }
    // On air: wait for the transaction's result.
    const auto deadline = SteadyClock::now() + send_timeout_;
    Status result = Status::error(StatusCode::timeout, "no TX_DONE or confirmation from the module in time");
    for (;;) {
      const auto line = next_line(deadline);
      if (stopping_) return;
      if (!line) break;
      if (!confirmed && line->kind == rui3::Kind::tx_done) {
        result = Status::success();
        break;
      }
      if (confirmed && line->kind == rui3::Kind::confirmed_ok) {
        result = Status::success();
        break;
      }
      if (confirmed && line->kind == rui3::Kind::confirmed_failed) {
        result = Status::error(StatusCode::unavailable, "the network did not acknowledge the confirmed uplink (SEND_CONFIRMED_FAILED)");
        break;
      }
    }
    // Class A: a downlink comes in the receive windows after the uplink, and the module may
    // report it after the result; listen a little longer (next_line delivers it).
    const auto linger_end = SteadyClock::now() + rx_linger_;
    while (!stopping_ && next_line(linger_end)) {
    }
    if (stopping_) return;
    const std::optional<int> dr = adr_ ? query_dr() : std::nullopt;
    finish(std::move(result), true, false, dr);
  }

  std::optional<int> query_dr() {
    const Reply r = command("AT+DR=?", command_timeout_);
    if (r.outcome != Reply::Outcome::ok) return std::nullopt;
    int v = -1;
    const auto [p, ec] = std::from_chars(r.value.data(), r.value.data() + r.value.size(), v);
    if (ec != std::errc() || v < 0 || v > lw::kMaxDataRate || lw::max_payload(region_, v, table_) == 0) return std::nullopt;
    return v;
  }

  /// Writes `cmd` and reads until its status line. Events that arrive meanwhile are handled
  /// by next_line (downlinks delivered, the rest ignored).
  Reply command(const std::string& cmd, std::chrono::milliseconds timeout) {
    Reply reply;
    if (stopping_) {
      reply.outcome = Reply::Outcome::stopped;
      return reply;
    }
    if (!write_all(cmd + "\r\n")) return reply;
    const auto deadline = SteadyClock::now() + timeout;
    for (;;) {
      auto line = next_line(deadline);
      if (stopping_) {
        reply.outcome = Reply::Outcome::stopped;
        return reply;
      }
      if (!line) return reply;  // timeout
      if (line->kind == rui3::Kind::ok) {
        reply.outcome = Reply::Outcome::ok;
        return reply;
      }
      if (line->kind == rui3::Kind::error) {
        reply.outcome = Reply::Outcome::error;
        reply.error = line->text;
        return reply;
      }
      if (line->kind == rui3::Kind::value) reply.value = line->text;
    }
  }

  /// The next meaningful line before `deadline`; nullopt on timeout or stop. Downlinks go to the
  /// strand from here, whatever exchange they arrive in; unrecognised lines are counted.
  std::optional<rui3::Line> next_line(SteadyClock::time_point deadline) {
    for (;;) {
      if (stopping_ || fd_ < 0) return std::nullopt;
      const auto nl = buffer_.find('\n');
      if (nl != std::string::npos) {
        std::string text = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        if (!text.empty() && text.back() == '\r') text.pop_back();
        if (text.empty()) continue;
        rui3::Line line = rui3::classify(text);
        if (line.kind == rui3::Kind::garbage) {
          // Never the line itself: a module echoing AT+APPKEY would put the key in the log.
          const auto n = ++garbage_;
          host_.log().debug("ignored an unrecognised line of {} characters from the module ({} so far)", text.size(), n);
          continue;
        }
        if (line.kind == rui3::Kind::downlink) {
          host_.post([this, data = std::move(line.data), port = line.port] { received(data, port); });
          continue;
        }
        return line;
      }
      if (buffer_.size() > 4096) {  // no line end in 4 KiB: noise, not the module
        ++garbage_;
        buffer_.clear();
      }
      const auto now = SteadyClock::now();
      if (now >= deadline) return std::nullopt;
      const int ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count());
      pollfd fds[2] = {{fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
      const int n = ::poll(fds, 2, ms);
      if (n < 0 && errno != EINTR) return std::nullopt;
      if (fds[1].revents & POLLIN) continue;  // stop requested: checked at the top
      if (fds[0].revents & POLLIN) {
        char chunk[512];
        const ssize_t got = ::read(fd_, chunk, sizeof chunk);
        if (got > 0) {
          buffer_.append(chunk, static_cast<std::size_t>(got));
        } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
          return std::nullopt;  // hang-up: the caller times out and reopens
        }
      } else if (fds[0].revents & (POLLHUP | POLLERR)) {
        if (!sleep_for(std::min(std::chrono::milliseconds(ms), std::chrono::milliseconds(20)))) return std::nullopt;
      }
    }
  }

  bool open_port(std::string& why) {
    close_port();
    fd_ = ::open(device_.c_str(), O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (fd_ < 0) {
      why = fmt::format("cannot open the LoRaWAN module at {}: {}", device_, std::strerror(errno));
      return false;
    }
    termios t{};
    if (::tcgetattr(fd_, &t) != 0) {
      why = fmt::format("{} is not a serial port: {}", device_, std::strerror(errno));
      close_port();
      return false;
    }
    ::cfmakeraw(&t);
    t.c_cflag |= CLOCAL | CREAD;
    t.c_cflag &= ~static_cast<tcflag_t>(CSTOPB | PARENB);
    ::cfsetispeed(&t, speed_);
    ::cfsetospeed(&t, speed_);
    if (::tcsetattr(fd_, TCSANOW, &t) != 0) {
      why = fmt::format("cannot set {} to 8N1 raw: {}", device_, std::strerror(errno));
      close_port();
      return false;
    }
    ::tcflush(fd_, TCIOFLUSH);
    buffer_.clear();
    return true;
  }

  void close_port() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    buffer_.clear();
  }
  [[nodiscard]] bool port_open() const { return fd_ >= 0; }

  bool write_all(const std::string& s) {
    std::size_t done = 0;
    const auto deadline = SteadyClock::now() + command_timeout_;
    while (done < s.size() && fd_ >= 0) {
      const ssize_t n = ::write(fd_, s.data() + done, s.size() - done);
      if (n > 0) {
        done += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && errno != EAGAIN && errno != EINTR) return false;
      if (SteadyClock::now() >= deadline) return false;
      pollfd w{fd_, POLLOUT, 0};
      ::poll(&w, 1, 20);
    }
    return done == s.size();
  }

  /// Waits `d` of real time; false when stopping.
  bool sleep_for(std::chrono::milliseconds d) {
    const auto end = SteadyClock::now() + d;
    while (!stopping_) {
      const auto now = SteadyClock::now();
      if (now >= end) return true;
      pollfd p{wake_[0], POLLIN, 0};
      ::poll(&p, 1, static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(end - now).count()));
    }
    return false;
  }

  static std::string redact(const std::string& cmd) { return cmd.starts_with("AT+APPKEY=") ? std::string("AT+APPKEY=***") : cmd; }

  Host& host_;
  // configuration (immutable)
  const std::string device_;
  const speed_t speed_;
  const lw::Region region_;
  const lw::Cn470Table table_;
  const std::string dev_eui_, app_eui_, app_key_;
  const int configured_dr_;
  int dr_;  // strand: the current data rate
  const bool adr_;
  const int port_;
  const bool confirmed_;
  const Duration join_min_, join_max_;
  const std::chrono::milliseconds join_timeout_, send_timeout_, command_timeout_, rx_linger_, reopen_min_, reopen_max_;

  // strand
  link::State state_ = link::State::down;
  link::Receiver receiver_;
  link::SendCallback pending_;
  bool in_flight_ = false;
  TimePoint next_allowed_{};
  TimePoint previous_allowed_{};
  Duration join_wait_;
  TimerId join_timer_ = 0;
  bool alarm_ = false;
  std::uint64_t uplinks_ = 0, downlinks_ = 0, join_requests_ = 0;

  // job thread
  int fd_ = -1;
  std::string buffer_;
  bool module_cfm_ = false;
  std::atomic<std::uint64_t> garbage_{0};

  std::atomic<bool> stopping_{false};
  int wake_[2] = {-1, -1};
  std::unique_ptr<pilecore::plugins::JobThread> jobs_;  // last: its thread uses everything above
};

}  // namespace

PILECORE_PLUGIN(LoraLink, {.name = "link-lorawan", .version = "0.1.0", .vendor = "pilecore", .license = "Apache-2.0",
                           .description = "LoRaWAN uplink through a RAK3172 (RUI3 AT commands): OTAA, confirmed uplinks, region payload and duty-cycle limits",
                           .config = keys})
