// link-5g: the uplink over a Quectel RM500Q-class 5G modem and MQTT with mutual TLS.
//
// Two threads of its own, as the SDK asks for blocking I/O:
//  - the modem thread owns the AT port: it runs the init sequence, then every poll_s reads the
//    registration (AT+C5GREG?/AT+CEREG?) and the serving cell (AT+QENG="servingcell"; AT+CSQ
//    says 99,99 in 5G SA), and re-attaches (AT+CFUN=0, AT+CFUN=1) after reattach_after polls
//    without registration;
//  - the MQTT thread owns the Paho clients: connect (blocking, with its timeout), subscribe,
//    publish, disconnect, and the probe of the primary broker while on the backup.
// Everything they learn is posted to the strand, where the state machine lives: MQTT connects
// only while the modem is registered; `failover_after` consecutive failed connects (or the risk
// layer's prefer_backup) move to the other broker; while on the backup the primary is probed
// every failback_probe_s and the link returns to it once it answers.
//
// The data path is the host's IP stack: on a real pile the modem's data interface (QMI/MBIM,
// brought up by ModemManager or quectel-CM) carries the default route; this plugin does not dial.
#include <mqtt/async_client.h>
#include <pilecore/pilecore.hpp>

#include <atomic>
#include <chrono>
#include <exception>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "at_modem.hpp"
#include "job_thread.hpp"

namespace {

using namespace pilecore;
using pilecore::link5g::AtPort;
using pilecore::link5g::AtReply;
using pilecore::link5g::ServingCell;

constexpr ConfigKey keys[] = {
    {.key = "serial_port", .type = ConfigType::string, .required = true,
     .description = "The modem's AT command port, e.g. /dev/ttyUSB2 (a udev symlink is better: USB numbering moves)"},
    {.key = "baud", .type = ConfigType::integer, .default_value = "115200", .min = 9600, .max = 921600,
     .description = "Serial speed of the AT port (9600, 19200, 38400, 57600, 115200, 230400, 460800 or 921600)", .unit = "Bd"},
    {.key = "at_timeout_ms", .type = ConfigType::integer, .default_value = "3000", .min = 100, .max = 120000,
     .description = "Longest wait for the final result of one AT command", .unit = "ms"},
    {.key = "poll_s", .type = ConfigType::integer, .default_value = "30", .min = 1, .max = 3600,
     .description = "How often the registration and the serving cell are read", .unit = "s"},
    {.key = "reattach_after", .type = ConfigType::integer, .default_value = "4", .min = 1, .max = 1000,
     .description = "Polls in a row without registration after which the modem is re-attached (AT+CFUN=0 then AT+CFUN=1)"},
    {.key = "site_id", .type = ConfigType::string, .required = true,
     .description = "The <site> level of the MQTT topics pilecore/v1/<site>/<pile>/..."},
    {.key = "pile_id", .type = ConfigType::string, .required = true,
     .description = "The <pile> level of the MQTT topics pilecore/v1/<site>/<pile>/..."},
    {.key = "primary", .type = ConfigType::string, .required = true,
     .description = "The primary MQTT broker, ssl://host:port (TLS is mandatory)"},
    {.key = "backup", .type = ConfigType::string, .default_value = "",
     .description = "The backup MQTT broker, ssl://host:port; empty: none"},
    {.key = "failover_after", .type = ConfigType::integer, .default_value = "3", .min = 1, .max = 1000,
     .description = "Failed connects in a row after which the link moves to the other broker"},
    {.key = "failback_probe_s", .type = ConfigType::integer, .default_value = "300", .min = 1, .max = 86400,
     .description = "While on the backup, how often the primary is tried; the link returns when it answers", .unit = "s"},
    {.key = "retry_s", .type = ConfigType::integer, .default_value = "10", .min = 1, .max = 3600,
     .description = "Wait before connecting again after a failed connect", .unit = "s"},
    {.key = "connect_timeout_s", .type = ConfigType::integer, .default_value = "15", .min = 1, .max = 300,
     .description = "Longest wait for one MQTT connect (TCP, TLS handshake and CONNACK)", .unit = "s"},
    {.key = "keep_alive_s", .type = ConfigType::integer, .default_value = "60", .min = 5, .max = 3600,
     .description = "MQTT keep-alive interval: a dead connection is noticed after about 1.5 times this", .unit = "s"},
    {.key = "client_id", .type = ConfigType::string, .default_value = "",
     .description = "MQTT client id; empty: pilecore-<site_id>-<pile_id>"},
    {.key = "tls_certificate", .type = ConfigType::string, .required = true,
     .description = "The device certificate (PEM) presented to the broker"},
    {.key = "tls_key", .type = ConfigType::string, .required = true,
     .description = "The device certificate's private key (PEM)"},
    {.key = "tls_ca", .type = ConfigType::string, .required = true,
     .description = "The CA certificate(s) (PEM) the broker's certificate must chain to"},
    {.key = "mtu_bytes", .type = ConfigType::integer, .default_value = "65536", .min = 17, .max = 16777216,
     .description = "Largest frame, header included; larger frames are refused (the outbox fragments for it)", .unit = "B"},
};

/// A topic level must not be empty or contain the wildcards or the separator (MQTT 3.1.1 §4.7).
std::string topic_level_problem(std::string_view v) {
  if (v.empty()) return "must not be empty";
  if (v.size() > 64) return "is longer than 64 characters";
  for (char c : v) {
    if (c == '+' || c == '#' || c == '/') return fmt::format("contains '{}', which MQTT topic levels cannot hold", c);
    if (static_cast<unsigned char>(c) < 0x20) return "contains a control character";
  }
  return {};
}

std::string endpoint_problem(std::string_view v) {
  if (v.substr(0, 6) != "ssl://") return "must be ssl://host:port: the transport is TLS with mutual authentication";
  const auto colon = v.rfind(':');
  if (colon <= 6 || colon + 1 >= v.size()) return "must name a host and a port (ssl://host:port)";
  return {};
}

/// The MQTT topic's class: the frame's message type says it (protocol.md §2, also for fragments,
/// which carry their message's type); other types fall back to the SDK's traffic class.
std::string_view topic_class(std::span<const std::uint8_t> frame, link::TrafficClass cls) {
  if (frame.size() >= 2) {
    switch (frame[1]) {
      case 0x01: return "control";
      case 0x02: return "transaction";
      case 0x03: return "status";
      case 0x04: return "telemetry";
      case 0x05: return "telemetry";
      default: break;
    }
  }
  switch (cls) {
    case link::TrafficClass::control: return "control";
    case link::TrafficClass::telemetry: return "telemetry";
    case link::TrafficClass::bulk: return "transaction";
  }
  return "telemetry";
}

/// What one modem poll found; made on the modem thread, read on the strand.
struct ModemReport {
  std::string problem;    ///< the port or the modem does not work (no answer, cannot open)
  std::string sim_error;  ///< the SIM is not ready (+CME ERROR text of AT+CPIN?)
  std::string imsi, iccid, imei;  ///< filled once, after the init sequence
  int stat = -1;  ///< the better of +C5GREG and +CEREG; -1 unknown
  std::optional<ServingCell> cell;
  bool reattached = false;
  AtPort::Counters counters;
};

class Link5g final : public link::Link {
 public:
  explicit Link5g(Host& host)
      : host_(host),
        serial_port_(host.config().string("serial_port")),
        baud_(static_cast<int>(host.config().integer("baud"))),
        at_timeout_(host.config().integer("at_timeout_ms")),
        poll_(std::chrono::seconds(host.config().integer("poll_s"))),
        reattach_after_(static_cast<int>(host.config().integer("reattach_after"))),
        failover_after_(static_cast<int>(host.config().integer("failover_after"))),
        probe_every_(std::chrono::seconds(host.config().integer("failback_probe_s"))),
        retry_(std::chrono::seconds(host.config().integer("retry_s"))),
        mtu_(static_cast<std::size_t>(host.config().integer("mtu_bytes"))) {
    const auto& c = host.config();
    const std::string site(c.string("site_id")), pile(c.string("pile_id"));
    topic_base_ = fmt::format("pilecore/v1/{}/{}/", site, pile);
    down_topic_ = topic_base_ + "down/cmd";
    endpoints_[0] = std::string(c.string("primary"));
    endpoints_[1] = std::string(c.string("backup"));
    client_id_ = std::string(c.string("client_id"));
    if (client_id_.empty()) client_id_ = fmt::format("pilecore-{}-{}", site, pile);
    auto ssl = mqtt::ssl_options_builder()
                   .trust_store(std::string(c.string("tls_ca")))
                   .key_store(std::string(c.string("tls_certificate")))
                   .private_key(std::string(c.string("tls_key")))
                   .enable_server_cert_auth(true)
                   .verify(true)
                   .finalize();
    // clean session: the outbox, not the broker, keeps what was not acknowledged.
    connect_options_ = mqtt::connect_options_builder()
                           .mqtt_version(MQTTVERSION_3_1_1)
                           .clean_session(true)
                           .automatic_reconnect(false)
                           .max_inflight(64)  // QoS 1 frames awaiting PUBACK; beyond it a send fails and the outbox retries
                           .keep_alive_interval(std::chrono::seconds(c.integer("keep_alive_s")))
                           .connect_timeout(std::chrono::seconds(c.integer("connect_timeout_s")))
                           .ssl(std::move(ssl))
                           .finalize();
    connect_wait_ = std::chrono::seconds(c.integer("connect_timeout_s") + 5);
  }

  static void validate(const ConfigValues& c, ConfigReport& report) noexcept {
    try {
      for (const char* k : {"site_id", "pile_id"}) {
        if (auto p = topic_level_problem(c.string(k)); !p.empty()) report.error(k, fmt::format("'{}' {}", c.string(k), p));
      }
      if (auto p = endpoint_problem(c.string("primary")); !p.empty()) report.error("primary", p);
      if (!c.string("backup").empty()) {
        if (auto p = endpoint_problem(c.string("backup")); !p.empty()) report.error("backup", p);
        if (c.string("backup") == c.string("primary")) report.error("backup", "is the primary broker again; a backup must be another endpoint");
      }
      if (!link5g::supported_baud(c.integer("baud"))) report.error("baud", fmt::format("{} is not a standard serial speed", c.integer("baud")));
    } catch (const std::exception& e) {
      report.error("config", e.what());
    }
  }

  Status start() noexcept override {
    try {
      alive_->store(true);
      modem_ = std::make_unique<plugins::JobThread>();
      mqtt_thread_ = std::make_unique<plugins::JobThread>();
      report("down", "waiting for the modem");
      poll_modem();
      return Status::success();
    } catch (const std::exception& e) {
      return Status::error(StatusCode::failed, e.what());
    }
  }

  void stop() noexcept override {
    try {
      stopping_ = true;
      for (TimerId* t : {&poll_timer_, &retry_timer_, &probe_timer_}) {
        if (*t != 0) host_.cancel(*t);
        *t = 0;
      }
      fail_pending("the link is stopping");
      if (alive_) alive_->store(false);
      if (mqtt_thread_) {
        mqtt_thread_->submit([this] { drop_client(); });
        mqtt_thread_->stop();
      }
      if (modem_) modem_->stop();
      port_.reset();
      mqtt_ = Mqtt::idle;
    } catch (...) {
    }
  }

  [[nodiscard]] link::Limits limits() const noexcept override { return {.mtu = mtu_, .duty_cycle_ppm = 1000000, .max_dwell = Duration{0}}; }

  [[nodiscard]] link::State state() const noexcept override {
    switch (mqtt_) {
      case Mqtt::up: return link::State::up;
      case Mqtt::connecting: return link::State::connecting;
      case Mqtt::idle: break;
    }
    return link::State::down;
  }

  void set_receiver(link::Receiver receiver) noexcept override {
    try {
      receiver_ = std::move(receiver);
    } catch (...) {
    }
  }

  void send(std::span<const std::uint8_t> frame, link::TrafficClass cls, link::SendCallback done) noexcept override {
    try {
      Status refused;
      if (frame.empty()) {
        refused = Status::error(StatusCode::invalid_argument, "empty frame");
      } else if (frame.size() > mtu_) {
        refused = Status::error(StatusCode::invalid_argument, fmt::format("frame of {} B is larger than the MTU of {} B", frame.size(), mtu_));
      } else if (mqtt_ != Mqtt::up) {
        refused = Status::error(StatusCode::unavailable, fmt::format("the 5G link is down ({})", detail_));
      }
      if (!refused.ok()) {
        // Answered on the next turn of the loop, never from inside send().
        host_.post([done = std::move(done), refused = std::move(refused)] {
          if (done) done(refused);
        });
        return;
      }
      const std::uint64_t key = ++send_seq_;
      pending_[key] = Pending{std::move(done), epoch_};
      auto topic = topic_base_ + "up/" + std::string(topic_class(frame, cls));
      mqtt_thread_->submit([this, key, epoch = epoch_, topic = std::move(topic), bytes = std::vector<std::uint8_t>(frame.begin(), frame.end())] {
        publish(key, epoch, topic, bytes);
      });
    } catch (const std::exception& e) {
      host_.log().error("send failed: {}", e.what());
      try {
        if (done) done(Status::error(StatusCode::failed, e.what()));
      } catch (...) {
      }
    }
  }

  void prefer_backup(bool on) noexcept override {
    try {
      if (on == prefer_backup_) return;
      prefer_backup_ = on;
      if (endpoints_[1].empty()) {
        host_.log().warn("asked to {} the backup broker, but none is configured", on ? "prefer" : "release");
        return;
      }
      host_.log().info("the risk layer {} the backup broker", on ? "asks for" : "releases");
      if (on && !on_backup_) {
        switch_to(true, "the risk layer asked for the backup broker");
      } else if (!on && on_backup_) {
        schedule_probe();
      }
    } catch (const std::exception& e) {
      host_.log().error("prefer_backup: {}", e.what());
    }
  }

 private:
  enum class Mqtt : std::uint8_t { idle, connecting, up };
  struct Pending {
    link::SendCallback done;
    std::uint64_t epoch = 0;
  };

  /// Paho calls it from its own threads; it only hands the outcome to the strand.
  class Listener final : public mqtt::iaction_listener {
   public:
    explicit Listener(std::function<void(const mqtt::token&, bool)> fn) : fn_(std::move(fn)) {}
    void on_success(const mqtt::token& t) override { fn_(t, true); }
    void on_failure(const mqtt::token& t) override { fn_(t, false); }

   private:
    std::function<void(const mqtt::token&, bool)> fn_;
  };

  // ---------------------------------------------------------------------------------------
  // strand: the modem

  void poll_modem() {
    poll_timer_ = 0;
    if (stopping_ || polling_) return;
    polling_ = true;
    modem_->submit([this, alive = alive_] {
      ModemReport r = modem_poll();
      if (!alive->load()) return;
      host_.post([this, r = std::move(r)] { on_modem(r); });
    });
  }

  void on_modem(const ModemReport& r) {
    polling_ = false;
    if (stopping_) return;
    poll_timer_ = host_.schedule(poll_, [this] { poll_modem(); });
    if (r.counters.garbage_lines > counters_.garbage_lines || r.counters.unsolicited_lines > counters_.unsolicited_lines) {
      host_.log().warn("ignored {} garbage and {} unsolicited line(s) from the modem (totals {} and {})", r.counters.garbage_lines - counters_.garbage_lines,
                       r.counters.unsolicited_lines - counters_.unsolicited_lines, r.counters.garbage_lines, r.counters.unsolicited_lines);
    }
    if (r.counters.timeouts > counters_.timeouts) host_.log().warn("{} AT command(s) timed out (total {})", r.counters.timeouts - counters_.timeouts, r.counters.timeouts);
    counters_ = r.counters;
    if (!r.imsi.empty() && imsi_ != r.imsi) {
      imsi_ = r.imsi;
      host_.log().info("modem IMEI {}, SIM IMSI {}, ICCID {}", r.imei, link5g::mask(r.imsi, 5, 2), link5g::mask(r.iccid, 6, 2));
    }
    if (r.reattached) host_.log().warn("re-attached the modem (AT+CFUN=0, AT+CFUN=1) after {} polls without registration", reattach_after_);

    if (!r.problem.empty() || !r.sim_error.empty()) {
      const bool sim = r.problem.empty();
      set_alarm(sim ? "link-5g.sim" : "link-5g.modem", true, sim ? "the SIM is not ready: " + r.sim_error : "the modem does not answer: " + r.problem);
      set_registered(false, sim ? "SIM: " + r.sim_error : "modem: " + r.problem);
      return;
    }
    set_alarm("link-5g.sim", false, "the SIM is ready");
    set_alarm("link-5g.modem", false, "the modem answers");

    if (r.cell) {
      const TimePoint now = host_.clock().now();
      if (r.cell->rsrp_dbm) host_.publish({.channel = "rsrp", .unit = "dBm", .value = static_cast<double>(*r.cell->rsrp_dbm), .time = now});
      if (r.cell->rsrq_db) host_.publish({.channel = "rsrq", .unit = "dB", .value = static_cast<double>(*r.cell->rsrq_db), .time = now});
      if (r.cell->sinr_db) host_.publish({.channel = "sinr", .unit = "dB", .value = *r.cell->sinr_db, .time = now});
    }
    radio_ = describe(r);
    const bool registered = link5g::is_registered(r.stat);
    set_registered(registered, radio_);
  }

  static std::string describe(const ModemReport& r) {
    std::string s(r.stat < 0 ? std::string_view("registration unknown") : link5g::registration_name(r.stat));
    if (r.cell) {
      s += fmt::format(", {} {}", r.cell->rat.empty() ? "no cell" : r.cell->rat, r.cell->state);
      if (r.cell->rsrp_dbm) s += fmt::format(", RSRP {} dBm", *r.cell->rsrp_dbm);
      if (r.cell->sinr_db) s += fmt::format(", SINR {:.0f} dB", *r.cell->sinr_db);
    }
    return s;
  }

  void set_registered(bool registered, const std::string& why) {
    const bool was = registered_;
    registered_ = registered;
    if (registered && !was && lost_registration_) {
      lost_registration_ = false;
      set_alarm("link-5g.registration", false, "registered again: " + why);
    }
    if (!registered && was) {
      lost_registration_ = true;
      set_alarm("link-5g.registration", true, "lost network registration: " + why);
    }
    if (!registered) {
      if (mqtt_ != Mqtt::idle) drop_connection("not registered: " + why);
      report("down", "not registered: " + why);
      return;
    }
    if (mqtt_ == Mqtt::idle && retry_timer_ == 0) {
      connect();
    } else if (mqtt_ == Mqtt::up) {
      report("up", connection_detail());
    }
  }

  void set_alarm(const std::string& code, bool active, const std::string& message) {
    const bool was = alarms_[code];
    if (was == active) return;
    alarms_[code] = active;
    host_.raise({.severity = code == "link-5g.registration" ? AlarmSeverity::warning : AlarmSeverity::critical, .code = code, .message = message,
                 .active = active});
  }

  // ---------------------------------------------------------------------------------------
  // strand: MQTT

  void connect() {
    if (stopping_ || !registered_ || mqtt_ != Mqtt::idle) return;
    retry_timer_ = 0;
    mqtt_ = Mqtt::connecting;
    const std::uint64_t epoch = ++epoch_;
    const std::string uri = endpoints_[on_backup_ ? 1 : 0];
    report("connecting", fmt::format("connecting to the {} broker {}", which(), uri));
    mqtt_thread_->submit([this, epoch, uri] { open_client(epoch, uri); });
  }

  void on_connected(std::uint64_t epoch, bool ok, const std::string& error) {
    if (epoch != epoch_ || stopping_) return;  // a connection the link has given up already
    if (ok) {
      mqtt_ = Mqtt::up;
      failures_ = 0;
      host_.log().info("connected to the {} broker {}", which(), endpoints_[on_backup_ ? 1 : 0]);
      report("up", connection_detail());
      if (on_backup_ && !prefer_backup_) schedule_probe();
      return;
    }
    mqtt_ = Mqtt::idle;
    ++failures_;
    host_.log().warn("connect to the {} broker {} failed ({} in a row): {}", which(), endpoints_[on_backup_ ? 1 : 0], failures_, error);
    report("down", fmt::format("connect to the {} broker failed: {}", which(), error));
    if (failures_ >= failover_after_ && !endpoints_[1].empty() && !(on_backup_ && prefer_backup_)) {
      // Alternate: a backup that fails as often sends the link back to try the primary.
      host_.log().warn("{} failed connects in a row: moving to the {} broker", failures_, on_backup_ ? "primary" : "backup");
      on_backup_ = !on_backup_;
      failures_ = 0;
      connect();
      return;
    }
    retry_timer_ = host_.schedule(retry_, [this] {
      retry_timer_ = 0;
      connect();
    });
  }

  void on_lost(std::uint64_t epoch, const std::string& cause) {
    if (epoch != epoch_ || stopping_) return;
    host_.log().warn("connection to the {} broker lost: {}", which(), cause.empty() ? "no reason given" : cause);
    mqtt_ = Mqtt::idle;
    fail_pending("the connection to the broker was lost before the broker acknowledged the frame");
    report("down", "connection lost: " + cause);
    ++epoch_;
    mqtt_thread_->submit([this] { drop_client(); });
    connect();
  }

  /// Leaves the current broker connection (registration lost, or switching brokers).
  void drop_connection(const std::string& why) {
    ++epoch_;
    mqtt_ = Mqtt::idle;
    fail_pending("the link went down: " + why);
    mqtt_thread_->submit([this] { drop_client(); });
  }

  void switch_to(bool backup, const std::string& why) {
    host_.log().info("switching to the {} broker: {}", backup ? "backup" : "primary", why);
    drop_connection(why);
    on_backup_ = backup;
    failures_ = 0;
    if (retry_timer_ != 0) host_.cancel(retry_timer_);
    retry_timer_ = 0;
    report("down", "switching to the " + std::string(which()) + " broker: " + why);
    connect();
  }

  void schedule_probe() {
    if (probe_timer_ != 0 || stopping_) return;
    probe_timer_ = host_.schedule(probe_every_, [this] {
      probe_timer_ = 0;
      if (!on_backup_ || prefer_backup_ || stopping_) return;
      if (!registered_) {
        schedule_probe();
        return;
      }
      mqtt_thread_->submit([this, uri = endpoints_[0]] { probe(uri); });
    });
  }

  void on_probe(bool ok, const std::string& error) {
    if (stopping_ || !on_backup_ || prefer_backup_) return;
    if (ok) {
      switch_to(false, "the primary broker answers again");
      return;
    }
    host_.log().info("the primary broker still fails ({}); staying on the backup", error);
    schedule_probe();
  }

  void on_published(std::uint64_t key, bool ok, const std::string& error) {
    auto it = pending_.find(key);
    if (it == pending_.end()) return;  // failed already when the connection went
    auto p = std::move(it->second);
    pending_.erase(it);
    if (!p.done) return;
    if (ok) {
      p.done(Status::success());
    } else {
      p.done(Status::error(StatusCode::failed, "the broker did not acknowledge the frame: " + error));
    }
  }

  void on_message(std::uint64_t epoch, const std::string& topic, const std::vector<std::uint8_t>& payload) {
    if (epoch != epoch_ || stopping_) return;
    if (topic != down_topic_) {
      ++foreign_messages_;
      host_.log().warn("ignored a message on {} (not {}; {} so far)", topic, down_topic_, foreign_messages_);
      return;
    }
    if (receiver_) receiver_(std::span<const std::uint8_t>(payload));
  }

  void fail_pending(const std::string& why) {
    auto pending = std::move(pending_);
    pending_.clear();
    for (auto& [key, p] : pending) {
      try {
        if (p.done) p.done(Status::error(StatusCode::unavailable, why));
      } catch (...) {
      }
    }
  }

  void report(std::string_view state, const std::string& detail) {
    detail_ = detail;
    host_.report_state(state, detail);
  }

  [[nodiscard]] std::string connection_detail() const {
    return fmt::format("MQTT on the {} broker {}; {}", which(), endpoints_[on_backup_ ? 1 : 0], radio_);
  }
  [[nodiscard]] const char* which() const { return on_backup_ ? "backup" : "primary"; }

  // ---------------------------------------------------------------------------------------
  // the modem thread

  ModemReport modem_poll() {
    ModemReport r;
    try {
      if (!port_) {
        port_ = std::make_unique<AtPort>(serial_port_, baud_);
        initialised_ = false;
      }
      auto at = [this](std::string_view cmd, std::string_view prefix = link5g::kNoInformation) { return port_->command(cmd, prefix, at_timeout_); };
      if (!initialised_) {
        if (auto a = at("ATE0"); !a.ok()) throw std::runtime_error("ATE0: " + a.error);
        at("AT+CMEE=2");  // verbose +CME ERROR texts; an old firmware without it still works
        if (auto a = at("AT+CPIN?", "+CPIN:"); !a.ok() || a.lines.empty() || a.lines.back().find("READY") == std::string::npos) {
          if (a.final == AtReply::Final::timeout) throw std::runtime_error("AT+CPIN?: " + a.error);
          r.sim_error = a.ok() ? (a.lines.empty() ? "no answer" : a.lines.back()) : a.error;
          return finish(r);
        }
        auto imsi = at("AT+CIMI", "");
        auto iccid = at("AT+QCCID", "+QCCID:");
        auto imei = at("AT+GSN", "");
        if (imsi.ok() && !imsi.lines.empty()) imsi_thread_ = imsi.lines.back();
        if (iccid.ok() && !iccid.lines.empty()) {
          const auto f = link5g::split_fields(iccid.lines.back());
          iccid_thread_ = f.empty() ? std::string() : f[0];
        }
        if (imei.ok() && !imei.lines.empty()) imei_thread_ = imei.lines.back();
        initialised_ = true;
        r.imsi = imsi_thread_;
        r.iccid = iccid_thread_;
        r.imei = imei_thread_;
      }
      int stat = -1;
      for (const char* cmd : {"AT+C5GREG?", "AT+CEREG?"}) {
        auto a = at(cmd, std::string_view(cmd + 2, std::string_view(cmd).size() - 3));
        if (a.final == AtReply::Final::timeout) throw std::runtime_error(std::string(cmd) + ": " + a.error);
        for (const auto& line : a.lines) {
          // Registered on either RAT wins; otherwise "searching" says more than "not searching".
          if (auto s = link5g::parse_registration(line); s && !link5g::is_registered(stat) && (link5g::is_registered(*s) || stat <= 0)) stat = *s;
        }
      }
      r.stat = stat;
      auto q = at("AT+QENG=\"servingcell\"", "+QENG:");
      if (q.final == AtReply::Final::timeout) throw std::runtime_error("AT+QENG: " + q.error);
      if (q.ok()) r.cell = link5g::parse_serving_cell(q.lines);
      if (link5g::is_registered(stat)) {
        unregistered_polls_ = 0;
      } else if (++unregistered_polls_ >= reattach_after_) {
        unregistered_polls_ = 0;
        // Radio off and on again: the module detaches and searches anew (CFUN=1 takes seconds).
        port_->command("AT+CFUN=0", link5g::kNoInformation, std::chrono::milliseconds(15000));
        port_->command("AT+CFUN=1", link5g::kNoInformation, std::chrono::milliseconds(15000));
        r.reattached = true;
      }
    } catch (const std::exception& e) {
      // Start over next poll: the modem may have reset (a USB modem re-enumerates).
      r.problem = e.what();
      if (port_) closed_counters_ = totals();
      port_.reset();
    }
    return finish(r);
  }

  /// The counters over every port this instance opened.
  AtPort::Counters totals() const {
    AtPort::Counters c = closed_counters_;
    if (port_) {
      const auto& p = port_->counters();
      c.commands += p.commands;
      c.timeouts += p.timeouts;
      c.errors += p.errors;
      c.garbage_lines += p.garbage_lines;
      c.unsolicited_lines += p.unsolicited_lines;
    }
    return c;
  }
  ModemReport finish(ModemReport& r) const {
    r.counters = totals();
    return std::move(r);
  }

  // ---------------------------------------------------------------------------------------
  // the MQTT thread

  void open_client(std::uint64_t epoch, const std::string& uri) {
    drop_client();
    std::string error;
    bool ok = false;
    try {
      client_ = std::make_unique<mqtt::async_client>(uri, client_id_);
      client_epoch_ = epoch;
      client_->set_message_callback([this, epoch, alive = alive_](mqtt::const_message_ptr m) {
        if (!alive->load() || !m) return;
        const std::string& b = m->get_payload();
        host_.post([this, epoch, topic = m->get_topic(), bytes = std::vector<std::uint8_t>(b.begin(), b.end())] { on_message(epoch, topic, bytes); });
      });
      client_->set_connection_lost_handler([this, epoch, alive = alive_](const std::string& cause) {
        if (!alive->load()) return;
        host_.post([this, epoch, cause] { on_lost(epoch, cause); });
      });
      client_->connect(connect_options_)->wait_for(connect_wait_);
      if (!client_->is_connected()) throw std::runtime_error("no CONNACK within the connect timeout");
      auto sub = client_->subscribe(down_topic_, 1);
      if (!sub->wait_for(connect_wait_)) throw std::runtime_error("no SUBACK for " + down_topic_);
      ok = true;
    } catch (const std::exception& e) {
      error = e.what();
    }
    if (!ok) drop_client();
    if (alive_->load()) host_.post([this, epoch, ok, error] { on_connected(epoch, ok, error); });
  }

  void drop_client() {
    if (!client_) return;
    try {
      if (client_->is_connected()) client_->disconnect(std::chrono::seconds(1))->wait_for(std::chrono::seconds(2));
    } catch (const std::exception&) {
      // Already gone: the broker closed the connection first.
    }
    client_.reset();
    client_epoch_ = 0;
  }

  void publish(std::uint64_t key, std::uint64_t epoch, const std::string& topic, const std::vector<std::uint8_t>& bytes) {
    std::string error;
    try {
      if (!client_ || client_epoch_ != epoch || !client_->is_connected()) {
        error = "not connected";
      } else {
        auto msg = mqtt::make_message(topic, bytes.data(), bytes.size(), 1, false);
        client_->publish(msg, reinterpret_cast<void*>(static_cast<std::uintptr_t>(key)), publish_listener_);
        return;
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
    if (alive_->load()) host_.post([this, key, error] { on_published(key, false, error); });
  }

  void probe(const std::string& uri) {
    std::string error;
    bool ok = false;
    try {
      mqtt::async_client c(uri, client_id_ + "-probe");
      c.connect(connect_options_)->wait_for(connect_wait_);
      ok = c.is_connected();
      if (ok) c.disconnect(std::chrono::seconds(1))->wait_for(std::chrono::seconds(2));
      if (!ok) error = "no CONNACK within the connect timeout";
    } catch (const std::exception& e) {
      error = e.what();
    }
    if (alive_->load()) host_.post([this, ok, error] { on_probe(ok, error); });
  }

  Host& host_;
  std::string serial_port_;
  int baud_;
  std::chrono::milliseconds at_timeout_;
  Duration poll_;
  int reattach_after_;
  int failover_after_;
  Duration probe_every_;
  Duration retry_;
  std::size_t mtu_;
  std::string topic_base_, down_topic_, client_id_;
  std::string endpoints_[2];
  mqtt::connect_options connect_options_;
  std::chrono::seconds connect_wait_{20};

  // strand
  bool stopping_ = false;
  bool polling_ = false;
  bool registered_ = false;
  bool lost_registration_ = false;
  bool on_backup_ = false;
  bool prefer_backup_ = false;
  int failures_ = 0;
  Mqtt mqtt_ = Mqtt::idle;
  std::uint64_t epoch_ = 0;
  std::uint64_t send_seq_ = 0;
  std::uint64_t foreign_messages_ = 0;
  std::map<std::uint64_t, Pending> pending_;
  std::map<std::string, bool> alarms_;
  TimerId poll_timer_ = 0, retry_timer_ = 0, probe_timer_ = 0;
  link::Receiver receiver_;
  std::string detail_ = "not started", radio_, imsi_;
  AtPort::Counters counters_;

  // modem thread
  std::unique_ptr<AtPort> port_;
  bool initialised_ = false;
  int unregistered_polls_ = 0;
  std::string imsi_thread_, iccid_thread_, imei_thread_;
  AtPort::Counters closed_counters_;

  // MQTT thread (the listener outlives every client: clients go first)
  Listener publish_listener_{[this](const mqtt::token& t, bool ok) {
    if (!alive_->load()) return;
    const auto key = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(t.get_user_context()));
    std::string error = ok ? std::string() : fmt::format("MQTT error {}", t.get_return_code());
    host_.post([this, key, ok, error = std::move(error)] { on_published(key, ok, error); });
  }};
  std::unique_ptr<mqtt::async_client> client_;
  std::uint64_t client_epoch_ = 0;

  std::shared_ptr<std::atomic<bool>> alive_ = std::make_shared<std::atomic<bool>>(false);
  std::unique_ptr<plugins::JobThread> modem_;
  std::unique_ptr<plugins::JobThread> mqtt_thread_;
};

}  // namespace

PILECORE_PLUGIN(Link5g, {.name = "link-5g", .version = "0.1.0", .vendor = "pilecore", .license = "Apache-2.0",
                         .description = "5G uplink: Quectel RM500Q modem over AT commands, MQTT with mutual TLS (Paho), primary and backup brokers",
                         .config = keys})
