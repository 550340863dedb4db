// sensor-modbus: energy meters and other Modbus devices over Modbus TCP or RTU (libmodbus).
//
// What is read comes from a register map (meters/<model>.yaml, compiled in, or the integrator's
// own file through `map_file`; format in docs/meters.md). Every channel of the map is published
// as a sample on each poll; energy channels (unit Wh) in integer Wh.
//
// Threading. libmodbus blocks, so it runs on the instance's own driver thread and never on the
// core's strand. The strand side owns the poll timer (host clock), the failure count, the alarm
// and the health; it asks the driver for a poll through a condition variable, and the driver
// posts each poll's outcome back with Host::post. refresh() is the same request, made at once.
// stop() wakes the driver, aborts a blocking TCP read by shutting its socket down, and joins.
//
// Failures. A poll reads all blocks of the map; a failed request is retried within the poll up
// to `retries` times (reconnecting first when the connection is gone). A poll that still fails
// publishes nothing. After `fail_after` consecutive failed polls the instance raises the critical
// alarm "meter.read_failed" and reports "down"; the first good poll clears the alarm and reports
// "up" again.
#include <fmt/format.h>
#include <modbus/modbus.h>
#include <sys/socket.h>

#include <pilecore/pilecore.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "embedded_maps.hpp"
#include "meter_map.hpp"

namespace {

using namespace pilecore;
using sensor_modbus::Block;
using sensor_modbus::Function;
using sensor_modbus::MeterMap;

constexpr ConfigKey keys[] = {
    {.key = "transport", .type = ConfigType::enumeration, .default_value = "tcp", .allowed = "tcp|rtu",
     .description = "Modbus TCP (a meter or RS-485 gateway on the network) or Modbus RTU (a serial RS-485 line)"},
    {.key = "host", .type = ConfigType::string,
     .description = "TCP: the meter's or gateway's host name or IP address (required with transport tcp)"},
    {.key = "port", .type = ConfigType::integer, .default_value = "502", .min = 1, .max = 65535, .description = "TCP: the Modbus TCP port"},
    {.key = "device", .type = ConfigType::string,
     .description = "RTU: the serial device, e.g. /dev/ttyS3 or /dev/ttyUSB0 (required with transport rtu)"},
    {.key = "baud", .type = ConfigType::integer, .default_value = "9600", .min = 300, .max = 230400,
     .description = "RTU: line speed; one of 300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400", .unit = "bit/s"},
    {.key = "parity", .type = ConfigType::enumeration, .default_value = "N", .allowed = "N|E|O",
     .description = "RTU: parity, none (N), even (E) or odd (O); as set on the meter"},
    {.key = "data_bits", .type = ConfigType::integer, .default_value = "8", .min = 5, .max = 8, .description = "RTU: data bits per character"},
    {.key = "stop_bits", .type = ConfigType::integer, .default_value = "1", .min = 1, .max = 2, .description = "RTU: stop bits per character"},
    {.key = "rs485", .type = ConfigType::boolean, .default_value = "false",
     .description = "RTU: switch the serial driver to kernel RS-485 mode (TIOCSRS485) for boards whose transceiver direction is "
                    "driven by RTS; leave false for auto-direction transceivers and USB adapters"},
    {.key = "unit_id", .type = ConfigType::integer, .default_value = "1", .min = 0, .max = 255,
     .description = "Modbus unit (slave) address of the device: 1 to 247 on RTU; on TCP as the gateway expects (often 1 or 255)"},
    {.key = "model", .type = ConfigType::enumeration, .allowed = sensor_modbus::embedded::model_list,
     .description = "A shipped register map (docs/meters.md); give either model or map_file"},
    {.key = "map_file", .type = ConfigType::string,
     .description = "Absolute path of the integrator's own register map YAML for a model not shipped; give either model or map_file"},
    {.key = "poll_ms", .type = ConfigType::integer, .default_value = "1000", .min = 10, .max = 3600000,
     .description = "Time between polls of every channel (host clock); 10 ms is the 100 Hz maximum", .unit = "ms"},
    {.key = "timeout_ms", .type = ConfigType::integer, .default_value = "500", .min = 10, .max = 10000,
     .description = "How long one request waits for the device's answer (and a TCP connect for the device), real time", .unit = "ms"},
    {.key = "retries", .type = ConfigType::integer, .default_value = "2", .min = 0, .max = 10,
     .description = "Failed requests repeated within one poll (reconnecting when the connection is lost) before the poll counts as failed"},
    {.key = "fail_after", .type = ConfigType::integer, .default_value = "3", .min = 1, .max = 1000,
     .description = "Consecutive failed polls after which the critical alarm meter.read_failed is raised and the instance reports down"},
};

constexpr std::array<int, 11> kBauds = {300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400};

/// One poll's outcome, handed from the driver thread to the strand.
struct PollResult {
  bool ok = false;
  std::vector<double> values;  ///< one per map register, when ok
  TimePoint time{};
  std::string error;                ///< when not ok
  std::vector<std::string> connects;  ///< connections (re)established during the poll
};

/// What the configuration says about the device and its map, once checked.
struct Settings {
  std::string host_name_;
  int port_ = 502;
  std::string device_;
  int baud_ = 9600;
  char parity_ = 'N';
  int data_bits_ = 8;
  int stop_bits_ = 1;
  bool rs485_ = false;
  std::string endpoint_;
  MeterMap map_;
  std::vector<Block> blocks_;
};

/// Reads and checks the settings that the declarations cannot: the map (shipped model or a file
/// that must exist and parse), model and map_file together, the address each transport needs.
/// Each problem goes to `problem(key, message)`; the validate entry point reports them all, the
/// constructor keeps the first (pilectl and pilecored have already refused such a file).
template <class Problem>
void read_settings(const ConfigValues& c, Settings& out, Problem&& problem) {
  const bool tcp = c.string("transport") == "tcp";
  const int unit_id = static_cast<int>(c.integer("unit_id"));
  const auto model = c.get_string("model");
  const auto map_file = c.get_string("map_file");
  bool have_map = false;
  if (model && map_file) {
    problem("map_file", "give either model or map_file, not both");
  } else if (!model && !map_file) {
    problem("model", fmt::format("no register map: set model (one of {}) or map_file", sensor_modbus::builtin_model_list()));
  } else {
    try {
      if (model) {
        auto m = sensor_modbus::builtin_map(*model);
        if (!m) {
          problem("model", fmt::format("model '{}' is not shipped; the shipped models are {}", *model, sensor_modbus::builtin_model_list()));
        } else {
          out.map_ = std::move(*m);
          have_map = true;
        }
      } else if (map_file->empty() || map_file->front() != '/') {
        problem("map_file", fmt::format("map_file '{}' must be an absolute path", *map_file));
      } else {
        out.map_ = sensor_modbus::load_map_file(std::string(*map_file));
        have_map = true;
      }
    } catch (const sensor_modbus::MapError& e) {
      problem(model ? "model" : "map_file", fmt::format("invalid meter map: {}", e.what()));
    }
  }
  if (have_map) out.blocks_ = sensor_modbus::plan_reads(out.map_);

  if (tcp) {
    const auto h = c.get_string("host");
    // "192.168.1.50:502" as a gateway's web page writes it: libmodbus would look up the whole
    // string as a name and fail at every poll. One colon only, so an IPv6 address stays valid.
    const auto colon = h ? h->find(':') : std::string_view::npos;
    if (!h || h->empty()) {
      problem("host", "transport tcp needs host (the meter's or gateway's address)");
    } else if (colon != std::string_view::npos && h->find(':', colon + 1) == std::string_view::npos) {
      problem("host", fmt::format("'{}' has a port in it: write host: {} and port: {}", *h, h->substr(0, colon), h->substr(colon + 1)));
    } else {
      out.host_name_ = std::string(*h);
      out.port_ = static_cast<int>(c.integer("port"));
      out.endpoint_ = fmt::format("{}:{} unit {}", out.host_name_, out.port_, unit_id);
    }
    return;
  }
  const auto d = c.get_string("device");
  if (!d || d->empty()) problem("device", "transport rtu needs device (the serial port, e.g. /dev/ttyS3)");
  out.device_ = d ? std::string(*d) : std::string();
  out.baud_ = static_cast<int>(c.integer("baud"));
  if (std::find(kBauds.begin(), kBauds.end(), out.baud_) == kBauds.end()) {
    problem("baud", fmt::format("baud {} is not a standard serial speed; use one of 300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, "
                                "115200, 230400",
                                out.baud_));
  }
  out.parity_ = c.string("parity").at(0);
  out.data_bits_ = static_cast<int>(c.integer("data_bits"));
  out.stop_bits_ = static_cast<int>(c.integer("stop_bits"));
  out.rs485_ = c.boolean("rs485");
  if (unit_id < 1 || unit_id > 247) problem("unit_id", fmt::format("unit_id {} is not a device address on an RTU line (1 to 247)", unit_id));
  out.endpoint_ = fmt::format("{} {} {}{}{} unit {}", out.device_, out.baud_, out.data_bits_, out.parity_, out.stop_bits_, unit_id);
}

class ModbusSensor final : public sensor::Sensor, private Settings {
 public:
  explicit ModbusSensor(Host& host)
      : host_(host),
        poll_(host.config().integer("poll_ms")),
        timeout_ms_(host.config().integer("timeout_ms")),
        retries_(static_cast<int>(host.config().integer("retries"))),
        fail_after_(static_cast<unsigned>(host.config().integer("fail_after"))),
        tcp_(host.config().string("transport") == "tcp"),
        unit_id_(static_cast<int>(host.config().integer("unit_id"))) {
    read_settings(host.config(), *this, [this](std::string_view /*key*/, const std::string& message) {
      if (setup_error_.empty()) setup_error_ = message;
    });
    if (!setup_error_.empty()) return;
    const double rate = 1000.0 / static_cast<double>(poll_.count());
    for (const auto& r : map_.registers) channels_.push_back({.name = r.channel, .unit = r.unit, .rate_hz = rate});
  }

  /// Deep validation (see pilecore::ValidateFn): every problem read_settings finds.
  static void validate(const ConfigValues& config, ConfigReport& report) {
    Settings ignored;
    read_settings(config, ignored, [&](std::string_view key, const std::string& message) { report.error(key, message); });
  }

  ~ModbusSensor() override { halt(); }
  ModbusSensor(const ModbusSensor&) = delete;
  ModbusSensor& operator=(const ModbusSensor&) = delete;

  Status start() noexcept override {
    try {
      if (!setup_error_.empty()) return Status::error(StatusCode::invalid_argument, setup_error_);
      ctx_ = tcp_ ? modbus_new_tcp_pi(host_name_.c_str(), std::to_string(port_).c_str())
                  : modbus_new_rtu(device_.c_str(), baud_, parity_, data_bits_, stop_bits_);
      if (ctx_ == nullptr) {
        return Status::error(StatusCode::invalid_argument, fmt::format("libmodbus refused the settings for {}: {}", endpoint_, modbus_strerror(errno)));
      }
      const auto to = static_cast<std::uint32_t>(timeout_ms_);
      modbus_set_response_timeout(ctx_, to / 1000, (to % 1000) * 1000);
      if (modbus_set_slave(ctx_, unit_id_) != 0) {
        return Status::error(StatusCode::invalid_argument, fmt::format("unit_id {} is not valid here: {}", unit_id_, modbus_strerror(errno)));
      }
      {
        std::lock_guard lock(mutex_);
        stopping_ = false;
        poll_requested_ = true;  // the first reading at once
      }
      thread_ = std::thread([this] { run(); });
      set_health("degraded", fmt::format("waiting for the first reading from {}", describe()));
      host_.log().info("{}: {} channels in {} read(s) every {} ms from {} ({})", map_.model, map_.registers.size(), blocks_.size(),
                       poll_.count(), endpoint_, map_.source);
      arm();
      return Status::success();
    } catch (const std::exception& e) {
      halt();
      return Status::error(StatusCode::failed, e.what());
    }
  }

  void stop() noexcept override {
    if (timer_ != 0) host_.cancel(timer_);
    timer_ = 0;
    halt();
  }

  [[nodiscard]] std::span<const sensor::ChannelInfo> channels() const noexcept override { return channels_; }

  void refresh() noexcept override { request_poll(); }

 private:
  // ---------------------------------------------------------------------------------------
  // configuration (constructor)

  /// Reads the settings and the map; returns what is wrong, or an empty string.
  [[nodiscard]] std::string describe() const { return fmt::format("{} at {}", map_.model, endpoint_); }

  // ---------------------------------------------------------------------------------------
  // strand side

  void arm() {
    timer_ = host_.schedule(poll_, [this] {
      timer_ = 0;
      request_poll();
      arm();
    });
  }

  void request_poll() noexcept {
    {
      std::lock_guard lock(mutex_);
      poll_requested_ = true;
    }
    wake_.notify_one();
  }

  void set_health(std::string_view state, const std::string& detail) {
    health_ = std::string(state);
    host_.report_state(state, detail);
  }

  void on_result(const PollResult& r) {
    for (std::size_t i = 0; i < r.connects.size(); ++i) {
      if (!ever_connected_) host_.log().info("connected to {}", r.connects[i]);
      else host_.log().debug("reconnected to {}", r.connects[i]);
      ever_connected_ = true;
    }
    if (r.ok) {
      for (std::size_t i = 0; i < map_.registers.size(); ++i) {
        const auto& reg = map_.registers[i];
        host_.publish({.channel = reg.channel, .unit = reg.unit, .value = r.values[i], .time = r.time});
      }
      if (alarm_) {
        alarm_ = false;
        host_.log().info("{} answers again after {} failed polls", describe(), failures_);
        host_.raise({.severity = AlarmSeverity::critical, .code = "meter.read_failed",
                     .message = fmt::format("{} answers again", describe()), .active = false});
      }
      failures_ = 0;
      if (health_ != "up") set_health("up", describe());
      return;
    }
    ++failures_;
    if (alarm_) {
      host_.log().debug("poll failed again ({} in a row): {}", failures_, r.error);
      return;
    }
    host_.log().warn("poll failed ({} of {} before the alarm): {}", failures_, fail_after_, r.error);
    if (failures_ >= fail_after_) {
      alarm_ = true;
      const std::string message = fmt::format("{}: {} consecutive polls failed; last error: {}", describe(), failures_, r.error);
      host_.raise({.severity = AlarmSeverity::critical, .code = "meter.read_failed", .message = message, .active = true});
      set_health("down", message);
    } else {
      set_health("degraded", fmt::format("{} failed poll(s): {}", failures_, r.error));
    }
  }

  // ---------------------------------------------------------------------------------------
  // driver thread

  void run() {
    for (;;) {
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [this] { return stopping_ || poll_requested_; });
        if (stopping_) break;
        poll_requested_ = false;
      }
      PollResult r = poll();
      if (stop_flag_.load()) break;
      host_.post([this, r = std::move(r)] { on_result(r); });
    }
    disconnect();
  }

  PollResult poll() {
    PollResult r;
    std::vector<double> values(map_.registers.size());
    std::vector<std::uint16_t> words;
    int retries_left = retries_;
    for (const Block& b : blocks_) {
      for (;;) {
        if (stop_flag_.load()) {
          r.error = "stopping";
          return r;
        }
        std::string error;
        if (read_block(b, words, error, r)) break;
        if (retries_left-- <= 0) {
          r.error = fmt::format("{} after {} attempt(s)", error, retries_ + 1);
          return r;
        }
      }
      for (std::size_t idx : b.registers) {
        const auto& reg = map_.registers[idx];
        const auto v = sensor_modbus::decode(reg, std::span(words).subspan(reg.address - b.start));
        if (!v) {
          r.error = fmt::format("channel {} ({} register {:#06x}) holds no number (NaN or infinite)", reg.channel,
                                sensor_modbus::to_string(reg.function), reg.address);
          return r;
        }
        // A meter that answers garbage (a spike, random words, a negative count) fails the
        // poll like one that does not answer: nothing is published, and the alarm follows.
        if (!sensor_modbus::in_range(reg, *v)) {
          r.error = fmt::format("channel {} ({} register {:#06x}) reads {} {}, outside its range {} to {} {}", reg.channel,
                                sensor_modbus::to_string(reg.function), reg.address, *v, reg.unit, reg.min, reg.max, reg.unit);
          return r;
        }
        values[idx] = *v;
      }
    }
    r.ok = true;
    r.values = std::move(values);
    r.time = host_.clock().now();
    return r;
  }

  /// One request; on failure `error` says what happened and the connection is reset as needed.
  bool read_block(const Block& b, std::vector<std::uint16_t>& words, std::string& error, PollResult& r) {
    if (!connected_) {
      if (modbus_connect(ctx_) != 0) {
        const int err = errno;
        error = fmt::format("cannot connect to {}: {}", endpoint_, modbus_strerror(err));
        modbus_close(ctx_);
        return false;
      }
      if (!tcp_ && rs485_ && modbus_rtu_set_serial_mode(ctx_, MODBUS_RTU_RS485) != 0) {
        const int err = errno;
        error = fmt::format("{}: the serial driver refused RS-485 mode (rs485: true): {}", device_, modbus_strerror(err));
        modbus_close(ctx_);
        return false;
      }
      {
        std::lock_guard lock(socket_mutex_);
        socket_ = modbus_get_socket(ctx_);
      }
      connected_ = true;
      r.connects.push_back(endpoint_);
      if (stop_flag_.load()) abort_io();  // stop() ran while connecting
    }
    words.assign(b.count, 0);
    const int rc = b.function == Function::input ? modbus_read_input_registers(ctx_, b.start, b.count, words.data())
                                                 : modbus_read_registers(ctx_, b.start, b.count, words.data());
    if (rc == b.count) return true;
    const int err = rc < 0 ? errno : EMBMDATA;
    error = fmt::format("reading {} registers {:#06x}..{:#06x} ({}): {}", sensor_modbus::to_string(b.function), b.start,
                        b.start + b.count - 1, channel_list(b), modbus_strerror(err));
    const bool exception_reply = err >= MODBUS_ENOBASE && err <= EMBXGTAR;  // the device answered "no"
    if (exception_reply) return false;
    if (tcp_) {
      disconnect();  // a late answer must not be taken for the next one: start afresh
    } else if (err == ETIMEDOUT || err == EMBBADCRC || err == EMBBADDATA || err == EMBBADSLAVE || err == EMBMDATA) {
      modbus_flush(ctx_);  // noise or silence on the line; the port itself is fine
    } else {
      disconnect();  // the port failed (adapter unplugged?): reopen it
    }
    return false;
  }

  [[nodiscard]] std::string channel_list(const Block& b) const {
    std::string out;
    for (std::size_t idx : b.registers) {
      if (!out.empty()) out += ", ";
      out += map_.registers[idx].channel;
    }
    return out;
  }

  void disconnect() {
    if (ctx_ == nullptr) return;
    std::lock_guard lock(socket_mutex_);
    socket_ = -1;
    if (connected_) modbus_close(ctx_);
    connected_ = false;
  }

  /// Makes a blocking TCP request of the driver thread return at once (its socket is shut down).
  void abort_io() noexcept {
    std::lock_guard lock(socket_mutex_);
    if (tcp_ && socket_ >= 0) ::shutdown(socket_, SHUT_RDWR);
  }

  /// Stops and joins the driver thread and frees libmodbus; idempotent.
  void halt() noexcept {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    stop_flag_.store(true);
    wake_.notify_all();
    abort_io();
    if (thread_.joinable()) thread_.join();
    if (ctx_ != nullptr) {
      disconnect();
      modbus_free(ctx_);
      ctx_ = nullptr;
    }
  }

  Host& host_;
  // settings
  Duration poll_;
  std::int64_t timeout_ms_;
  int retries_;
  unsigned fail_after_;
  bool tcp_;
  int unit_id_;
  std::vector<sensor::ChannelInfo> channels_;
  std::string setup_error_;

  // driver thread (ctx_ and connected_ belong to it while it runs)
  modbus_t* ctx_ = nullptr;
  bool connected_ = false;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool poll_requested_ = false;
  bool stopping_ = false;
  std::atomic<bool> stop_flag_{false};
  std::mutex socket_mutex_;
  int socket_ = -1;

  // strand side
  TimerId timer_ = 0;
  unsigned failures_ = 0;
  bool alarm_ = false;
  bool ever_connected_ = false;
  std::string health_;
};

}  // namespace

PILECORE_PLUGIN(ModbusSensor, {.name = "sensor-modbus", .version = "0.1.0", .vendor = "pilecore", .license = "Apache-2.0",
                               .description = "Energy meters and other Modbus devices over Modbus TCP or RTU (libmodbus), register maps in YAML",
                               .config = keys})
