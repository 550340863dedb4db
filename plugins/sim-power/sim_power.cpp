// sim-power: a simulated power stage and the vehicle plugged into it, driven by the host clock.
//
// The vehicle arrives (arrive_after_s), completes its handshake (ev_ready_delay_ms) and asks for
// energy. While the contactor is closed and the vehicle asks, the power is
//   min(the limit set by the core, the stage's rating, the vehicle's acceptance after its taper)
// and is integrated over host-clock time into an integer Wh meter register. The remainder below
// 1 Wh is kept (in W*ms), so rounding never loses energy. The battery's SoC rises with the energy,
// its temperature rises with the power and relaxes towards the ambient otherwise; at the target
// SoC the vehicle reports ev_full and stops asking. A fault can be injected at a set time.
//
// Vehicles come one after another: the first after arrive_after_s, the next arrive_every_s after
// the previous one left; and at the instants listed in arrive_at (RFC 3339, so a scenario of a
// day survives a restart of the daemon: instants already past at start are skipped). Faults come
// after fault_after_s and at the instants in fault_at.
//
// Samples published every tick: power (W), energy_import (Wh, monotonic meter register) and,
// while a vehicle is plugged, soc (%) and battery_temperature (degC).
//
// The meter register is non-volatile, like a real meter's: energy_import lives in a file under
// the instance's state directory and is loaded at start (meter_start_wh only seeds a new meter).
// It is rewritten whenever it has advanced by persist_every_wh, when the contactor opens, on a
// fault and on stop, and the published energy_import is always the register as written: after a
// kill -9 at any instant the meter never reads less than a value it has published.
//
// The file holds two fixed-size records (offsets 0 and 4096, so on different sectors), each with
// a sequence number and a checksum; a write goes to the older record with one pwrite(), and the
// newest valid record wins at load. A write interrupted by a power cut damages only the record
// being written, so the previous reading survives: the atomicity of "temp file, fsync, rename"
// without its cost. (On ext4 that replace costs about 4 ms even without fsync, because
// auto_da_alloc starts writeback on every replace; on the core's strand, at the 1000x clock of
// the tests and the demo, that is seconds of charging between the reading and the publication.)
// A new register file is created with temp file, fsync, rename and fsync of the directory. The
// fdatasync after each write runs on a small syncer thread, off the strand, and at stop.
//
// A vehicle stays plugged in while the pile restarts. When the stage is stopped (pilecored's
// planned stop: a restart or an upgrade) with a vehicle plugged in, the vehicle (its state, its
// battery's energy and temperature, the instant) is written to vehicle.state in the instance's
// state directory. The next start plugs it in again if it comes within driver_waits_s of that
// instant: the vehicle does its handshake again and asks for energy as before. Later, or after
// a crash (no stop, so nothing written), the driver has left. The file goes when the vehicle
// leaves.
#include <fcntl.h>
#include <unistd.h>

#include <pilecore/pilecore.hpp>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <stdexcept>
#include <thread>
#include <vector>

namespace {

using namespace pilecore;
using namespace std::chrono_literals;

constexpr double kNever = -1;
constexpr double kYear = 31536000;

constexpr ConfigKey keys[] = {
    {.key = "tick_ms", .type = ConfigType::integer, .default_value = "1000", .min = 10, .max = 60000,
     .description = "Host-clock time between two simulation steps (energy integration, samples)", .unit = "ms"},
    {.key = "stage_max_power_w", .type = ConfigType::integer, .default_value = "60000", .min = 1000, .max = 1000000,
     .description = "Rating of the simulated power module; also the power limit until the core sets one", .unit = "W"},
    {.key = "battery_capacity_wh", .type = ConfigType::integer, .default_value = "60000", .min = 1000, .max = 300000,
     .description = "Usable capacity of the simulated vehicle's battery", .unit = "Wh"},
    {.key = "initial_soc_pct", .type = ConfigType::number, .default_value = "20", .min = 0, .max = 100,
     .description = "State of charge of the vehicle when it arrives", .unit = "%"},
    {.key = "target_soc_pct", .type = ConfigType::number, .default_value = "95", .min = 1, .max = 100,
     .description = "State of charge at which the vehicle reports ev_full and stops asking for energy", .unit = "%"},
    {.key = "max_power_w", .type = ConfigType::integer, .default_value = "60000", .min = 0, .max = 1000000,
     .description = "Most power the vehicle accepts (before its taper)", .unit = "W"},
    {.key = "taper_start_pct", .type = ConfigType::number, .default_value = "80", .min = 0, .max = 100,
     .description = "State of charge above which the vehicle's acceptance falls linearly towards taper_min_pct at 100 %", .unit = "%"},
    {.key = "taper_min_pct", .type = ConfigType::number, .default_value = "10", .min = 1, .max = 100,
     .description = "Share of max_power_w the vehicle still accepts at the end of the taper", .unit = "%"},
    {.key = "battery_temperature_c", .type = ConfigType::number, .default_value = "25", .min = -30, .max = 60,
     .description = "Battery temperature on arrival; also the ambient it cools towards", .unit = "degC"},
    {.key = "heating_c_per_kwh", .type = ConfigType::number, .default_value = "0.5", .min = 0, .max = 10,
     .description = "Battery temperature rise per kWh delivered (before cooling)", .unit = "degC/kWh"},
    {.key = "cooling_time_constant_s", .type = ConfigType::integer, .default_value = "1800", .min = 10, .max = 86400,
     .description = "Time constant of the battery's exponential cooling towards the ambient", .unit = "s"},
    {.key = "max_battery_temperature_c", .type = ConfigType::number, .default_value = "55", .min = 0, .max = 100,
     .description = "Battery temperature above which the vehicle reports a fault", .unit = "degC"},
    {.key = "arrive_after_s", .type = ConfigType::integer, .default_value = "-1", .min = kNever, .max = kYear,
     .description = "Host-clock seconds after start until a vehicle plugs in; -1 = never (the connector idles)", .unit = "s"},
    {.key = "arrive_every_s", .type = ConfigType::integer, .default_value = "-1", .min = kNever, .max = kYear,
     .description = "Seconds after a vehicle leaves until the next one plugs in; -1 = no vehicle follows", .unit = "s"},
    {.key = "arrive_at", .type = ConfigType::string_list, .default_value = "[]",
     .description = "Instants (RFC 3339, e.g. 2026-11-26T06:30:00+08:00) at which a vehicle plugs in; instants already past at "
                    "start are skipped, and a connector still occupied at one stays as it is"},
    {.key = "ev_ready_delay_ms", .type = ConfigType::integer, .default_value = "2000", .min = 0, .max = 600000,
     .description = "Time from plugged to ev_ready (the vehicle's handshake)", .unit = "ms"},
    {.key = "depart_after_full_s", .type = ConfigType::integer, .default_value = "-1", .min = kNever, .max = kYear,
     .description = "Seconds after ev_full (or after a fault clears with the vehicle still plugged in) until the driver unplugs; -1 = the vehicle stays", .unit = "s"},
    {.key = "driver_waits_s", .type = ConfigType::integer, .default_value = "0", .min = 0, .max = kYear,
     .description = "How long the driver of a vehicle plugged in when the stage stops (pilecored's planned stop: a restart or an upgrade) "
                    "waits for the pile: the next start within this many seconds finds the vehicle still plugged in; 0 = the driver leaves "
                    "at the stop",
     .unit = "s"},
    {.key = "fault_after_s", .type = ConfigType::integer, .default_value = "-1", .min = kNever, .max = kYear,
     .description = "Host-clock seconds after start at which a fault is injected (contactor opens, fault event); -1 = never",
     .unit = "s"},
    {.key = "fault_at", .type = ConfigType::string_list, .default_value = "[]",
     .description = "Instants (RFC 3339) at which a fault is injected; instants already past at start are skipped"},
    {.key = "fault_detail", .type = ConfigType::string, .default_value = "simulated insulation fault",
     .description = "Detail text of the injected fault event"},
    {.key = "fault_clear_after_s", .type = ConfigType::integer, .default_value = "-1", .min = kNever, .max = kYear,
     .description = "Seconds after a fault until it clears (fault_cleared event); -1 = it stays", .unit = "s"},
    {.key = "meter_start_wh", .type = ConfigType::integer, .default_value = "0", .min = 0, .max = 1e12,
     .description = "Reading of the energy_import register of a new meter; a meter whose register file exists in the instance's state "
                    "directory continues from it",
     .unit = "Wh"},
    {.key = "persist_every_wh", .type = ConfigType::integer, .default_value = "1", .min = 1, .max = 1e9,
     .description = "The non-volatile meter register is written (fsync) each time it has advanced by this much, and whenever the "
                    "contactor opens; the published energy_import moves in these steps",
     .unit = "Wh"},
};

constexpr const char* kRegisterFile = "energy_import.register";
constexpr const char* kVehicleFile = "vehicle.state";

/// Writes `bytes` as the file `path`, complete or not at all: a temporary file, fsync, rename,
/// fsync of the directory. The error text, empty on success.
std::string replace_file(const std::string& path, std::string_view bytes) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const bool ok = fd >= 0 && ::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()) && ::fsync(fd) == 0;
  const int e = errno;
  if (fd >= 0) ::close(fd);
  if (!ok) return std::strerror(e);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return std::strerror(errno);
  const std::string dir = std::filesystem::path(path).parent_path().string();
  if (const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return {};
}
constexpr off_t kSlotOffset[2] = {0, 4096};

/// One record of the register file: fixed length, checksummed.
std::string register_record(std::uint64_t seq, std::int64_t wh, std::int64_t rem) {
  const std::string body = fmt::format("pilecore-meter v1 seq={:020} wh={:020} rem={:07}", seq, wh, rem);
  std::uint32_t crc = 2166136261u;  // FNV-1a
  for (unsigned char c : body) crc = (crc ^ c) * 16777619u;
  return fmt::format("{} crc={:08x}\n", body, crc);
}
const std::size_t kRecordSize = register_record(0, 0, 0).size();

struct Record {
  std::uint64_t seq = 0;
  std::int64_t wh = 0;
  std::int64_t rem = 0;
};

/// Parses a record; nullopt when it is missing, torn or corrupt.
std::optional<Record> parse_record(std::string_view text) {
  unsigned long long seq = 0;
  long long wh = 0;
  long long rem = 0;
  unsigned crc = 0;
  const std::string s(text);
  if (std::sscanf(s.c_str(), "pilecore-meter v1 seq=%20llu wh=%20lld rem=%7lld crc=%8x", &seq, &wh, &rem, &crc) != 4) return std::nullopt;
  if (wh < 0 || rem < 0 || register_record(seq, wh, rem) != s) return std::nullopt;
  return Record{seq, wh, rem};
}

constexpr std::int64_t kWmsPerWh = 3600 * 1000;

/// Parses an RFC 3339 instant with seconds and a zone: 2026-11-26T06:30:00+08:00 or ...Z.
std::optional<TimePoint> parse_instant(const std::string& text) {
  int y = 0;
  unsigned mo = 0, d = 0, h = 0, mi = 0, sec = 0;
  int used = 0;
  if (std::sscanf(text.c_str(), "%4d-%2u-%2uT%2u:%2u:%2u%n", &y, &mo, &d, &h, &mi, &sec, &used) != 6 || used != 19) return std::nullopt;
  const std::chrono::year_month_day ymd{std::chrono::year{y}, std::chrono::month{mo}, std::chrono::day{d}};
  if (!ymd.ok() || h > 23 || mi > 59 || sec > 59) return std::nullopt;
  const std::string zone = text.substr(19);
  int offset_min = 0;
  if (zone != "Z" && zone != "z") {
    unsigned oh = 0, om = 0;
    int zused = 0;
    if (zone.size() != 6 || (zone[0] != '+' && zone[0] != '-') || std::sscanf(zone.c_str() + 1, "%2u:%2u%n", &oh, &om, &zused) != 2 || zused != 5 ||
        oh > 23 || om > 59) {
      return std::nullopt;
    }
    offset_min = (zone[0] == '-' ? -1 : 1) * static_cast<int>(oh * 60 + om);
  }
  const auto local = std::chrono::sys_days{ymd} + std::chrono::hours{h} + std::chrono::minutes{mi} + std::chrono::seconds{sec};
  return std::chrono::time_point_cast<Duration>(local - std::chrono::minutes{offset_min});
}

/// The instants of a string_list key, sorted; throws naming the key and the bad value.
std::vector<TimePoint> instants(const ConfigValues& config, const char* key) {
  std::vector<TimePoint> out;
  for (const auto& text : config.string_list(key)) {
    const auto t = parse_instant(text);
    if (!t) throw std::invalid_argument(fmt::format("{}: '{}' is not an RFC 3339 instant such as 2026-11-26T06:30:00+08:00 or 2026-11-25T22:30:00Z", key, text));
    out.push_back(*t);
  }
  std::sort(out.begin(), out.end());
  return out;
}

enum class VehicleState { absent, connected, ready, full };

std::string_view to_string(VehicleState s) {
  switch (s) {
    case VehicleState::absent: return "no vehicle";
    case VehicleState::connected: return "vehicle connected";
    case VehicleState::ready: return "vehicle ready";
    case VehicleState::full: return "vehicle full";
  }
  return "unknown";
}

class SimPower final : public power::PowerStage {
 public:
  explicit SimPower(Host& host)
      : host_(host),
        tick_(host.config().integer("tick_ms")),
        stage_max_w_(host.config().integer("stage_max_power_w")),
        capacity_wh_(host.config().integer("battery_capacity_wh")),
        initial_soc_(host.config().number("initial_soc_pct")),
        target_soc_(host.config().number("target_soc_pct")),
        target_wh_(static_cast<std::int64_t>(std::ceil(target_soc_ * static_cast<double>(capacity_wh_) / 100.0 - 1e-6))),
        vehicle_max_w_(host.config().integer("max_power_w")),
        taper_start_(host.config().number("taper_start_pct")),
        taper_min_(host.config().number("taper_min_pct")),
        ambient_c_(host.config().number("battery_temperature_c")),
        heating_(host.config().number("heating_c_per_kwh")),
        cooling_tau_s_(static_cast<double>(host.config().integer("cooling_time_constant_s"))),
        max_temp_c_(host.config().number("max_battery_temperature_c")),
        arrive_after_s_(host.config().integer("arrive_after_s")),
        ready_delay_(host.config().integer("ev_ready_delay_ms")),
        depart_after_s_(host.config().integer("depart_after_full_s")),
        driver_waits_s_(host.config().integer("driver_waits_s")),
        arrive_every_s_(host.config().integer("arrive_every_s")),
        fault_after_s_(host.config().integer("fault_after_s")),
        fault_detail_(host.config().string("fault_detail")),
        fault_clear_after_s_(host.config().integer("fault_clear_after_s")),
        persist_every_wh_(host.config().integer("persist_every_wh")),
        meter_wh_(host.config().integer("meter_start_wh")),
        limit_w_(stage_max_w_),
        battery_c_(ambient_c_) {}

  Status start() noexcept override {
    try {
      try {
        arrivals_ = instants(host_.config(), "arrive_at");
        faults_ = instants(host_.config(), "fault_at");
      } catch (const std::invalid_argument& e) {
        return Status::error(StatusCode::invalid_argument, e.what());
      }
      if (Status s = load_register(); !s.ok()) return s;
      syncer_ = std::thread([this] { sync_loop(); });
      last_ = host_.clock().now();
      restore_vehicle();
      host_.report_state("up", describe());
      if (arrive_after_s_ >= 0) arrive_timer_ = at(std::chrono::seconds(arrive_after_s_), [this] { arrive(); });
      if (fault_after_s_ >= 0) fault_timer_ = at(std::chrono::seconds(fault_after_s_), [this] { inject_fault(); });
      arm_next_arrival();
      arm_next_fault();
      arm_tick();
      host_.log().info("simulated power stage ({} W), vehicle {} Wh at {}% -> {}%, accepts {} W; arrival {}", stage_max_w_, capacity_wh_,
                       initial_soc_, target_soc_, vehicle_max_w_, arrive_after_s_ < 0 ? std::string("never") : fmt::format("after {} s", arrive_after_s_));
      return Status::success();
    } catch (const std::exception& e) {
      return Status::error(StatusCode::failed, e.what());
    }
  }

  void stop() noexcept override {
    const bool arrival_armed = scheduled_arrival_timer_ != 0;
    for (TimerId* t : {&tick_timer_, &arrive_timer_, &ready_timer_, &fault_timer_, &clear_timer_, &depart_timer_, &scheduled_arrival_timer_,
                       &scheduled_fault_timer_}) {
      if (*t != 0) host_.cancel(*t);
      *t = 0;
    }
    if (register_fd_ >= 0) {
      try {
        accrue(host_.clock().now());  // the energy delivered up to this instant is metered
      } catch (...) {
      }
      persist(true);  // with the energy below 1 Wh
      save_vehicle(arrival_armed);
    }
    stop_syncer();  // after its last fsync
    contactor_closed_ = false;
    power_w_ = 0;
  }

  ~SimPower() override { stop_syncer(); }
  SimPower(const SimPower&) = delete;
  SimPower& operator=(const SimPower&) = delete;

  void set_event_sink(power::EventSink sink) noexcept override {
    try {
      sink_ = std::move(sink);
      // A sink attached late still learns the present state: replay it.
      if (vehicle_ != VehicleState::absent) emit(power::Event::plugged, "vehicle already plugged in");
      if (vehicle_ == VehicleState::ready) emit(power::Event::ev_ready, "vehicle already asking for energy");
      if (vehicle_ == VehicleState::full) emit(power::Event::ev_full, fmt::format("vehicle already full at {:.1f}%", soc()));
      if (faulted_) emit(power::Event::fault, fault_detail_);
    } catch (const std::exception& e) {
      host_.log().error("set_event_sink: {}", e.what());
    }
  }

  Status close_contactor() noexcept override {
    try {
      if (faulted_) return Status::error(StatusCode::unavailable, "the power stage is faulted (" + fault_detail_ + "); the contactor stays open");
      if (vehicle_ == VehicleState::absent) return Status::error(StatusCode::unavailable, "no vehicle is plugged in; the contactor stays open");
      if (contactor_closed_) return Status::success();
      accrue(host_.clock().now());
      contactor_closed_ = true;
      update_power();
      host_.log().info("contactor closed ({}, {} W)", to_string(vehicle_), power_w_);
      return Status::success();
    } catch (const std::exception& e) {
      return Status::error(StatusCode::failed, e.what());
    }
  }

  Status open_contactor() noexcept override {
    try {
      accrue(host_.clock().now());  // the energy delivered up to this instant is metered
      const bool was_closed = contactor_closed_;
      contactor_closed_ = false;
      power_w_ = 0;
      persist();  // the final reading of a session is exact, whatever persist_every_wh
      if (was_closed) host_.log().info("contactor opened, meter {} Wh", register_wh_);
      publish(host_.clock().now());
      return Status::success();
    } catch (const std::exception& e) {
      contactor_closed_ = false;
      power_w_ = 0;
      return Status::error(StatusCode::failed, e.what());
    }
  }

  Status set_power_limit(std::int64_t watts) noexcept override {
    try {
      if (watts < 0) return Status::error(StatusCode::invalid_argument, fmt::format("power limit {} W is negative", watts));
      accrue(host_.clock().now());
      limit_w_ = watts;
      update_power();
      host_.log().debug("power limit {} W -> delivering {} W", watts, power_w_);
      return Status::success();
    } catch (const std::exception& e) {
      return Status::error(StatusCode::failed, e.what());
    }
  }

  [[nodiscard]] power::VehicleStatus vehicle() const noexcept override {
    power::VehicleStatus v;
    v.power_w = power_w_;
    if (vehicle_ != VehicleState::absent) {
      v.soc_percent = soc();
      v.battery_temperature_c = battery_c_;
    }
    return v;
  }

 private:
  TimerId at(Duration delay, std::function<void()> fn) { return host_.schedule(delay, std::move(fn)); }

  void arm_tick() {
    // The next step comes at the tick, or sooner when the battery reaches its target before it.
    Duration delay = tick_;
    if (power_w_ > 0) {
      const std::int64_t ms = (room_wms() + power_w_ - 1) / power_w_;
      delay = std::clamp(Duration{ms}, Duration{1}, tick_);
    }
    tick_timer_ = host_.schedule(delay, [this] {
      tick_timer_ = 0;
      tick();
    });
  }

  void tick() {
    const TimePoint now = host_.clock().now();
    accrue(now);
    if (vehicle_ == VehicleState::ready && battery_wh_ >= target_wh_) become_full("target reached");
    if (!faulted_ && vehicle_ != VehicleState::absent && battery_c_ > max_temp_c_) {
      fault(fmt::format("battery over-temperature: {:.1f} degC above {:.1f} degC", battery_c_, max_temp_c_));
    }
    update_power();
    publish(now);
    arm_tick();
  }

  /// Integrates the power in effect since the last step into the meter, the battery and its
  /// temperature. Power is constant between steps: every change calls accrue() first.
  void accrue(TimePoint now) {
    const std::int64_t dt_ms = std::max<std::int64_t>(0, (now - last_).count());
    last_ = now;
    if (dt_ms == 0) return;
    // The vehicle stops drawing at its target even when this step comes late.
    const std::int64_t wms = std::min(power_w_ * dt_ms, room_wms());
    remainder_wms_ += wms;
    const std::int64_t wh = remainder_wms_ / kWmsPerWh;
    remainder_wms_ %= kWmsPerWh;
    meter_wh_ += wh;
    if (meter_wh_ - register_wh_ >= persist_every_wh_) persist();
    if (vehicle_ != VehicleState::absent) {
      battery_wh_ += wh;
      const double kwh = static_cast<double>(wms) / 3.6e9;
      battery_c_ += heating_ * kwh;
    }
    battery_c_ = ambient_c_ + (battery_c_ - ambient_c_) * std::exp(-static_cast<double>(dt_ms) / 1000.0 / cooling_tau_s_);
  }

  /// Energy (W*ms) the vehicle still takes before its target; 0 when it takes none.
  [[nodiscard]] std::int64_t room_wms() const noexcept {
    if (vehicle_ != VehicleState::ready) return 0;
    return std::max<std::int64_t>(0, (target_wh_ - battery_wh_) * kWmsPerWh - remainder_wms_);
  }

  [[nodiscard]] double soc() const noexcept {
    return 100.0 * static_cast<double>(battery_wh_) / static_cast<double>(capacity_wh_);
  }

  /// What the vehicle accepts now: its maximum, falling linearly above taper_start_pct.
  [[nodiscard]] double acceptance_w() const {
    double w = static_cast<double>(vehicle_max_w_);
    const double s = soc();
    if (taper_start_ < 100 && s > taper_start_) {
      const double share = std::max(taper_min_ / 100.0, (100.0 - s) / (100.0 - taper_start_));
      w *= share;
    }
    return w;
  }

  void update_power() {
    std::int64_t w = 0;
    if (contactor_closed_ && !faulted_ && vehicle_ == VehicleState::ready) {
      w = std::min({limit_w_, stage_max_w_, static_cast<std::int64_t>(std::llround(acceptance_w()))});
      w = std::max<std::int64_t>(w, 0);
    }
    power_w_ = w;
  }

  void publish(TimePoint now) {
    host_.publish({.channel = "power", .unit = "W", .value = static_cast<double>(power_w_), .time = now});
    host_.publish({.channel = "energy_import", .unit = "Wh", .value = static_cast<double>(register_wh_), .time = now});
    if (vehicle_ != VehicleState::absent) {
      host_.publish({.channel = "soc", .unit = "%", .value = soc(), .time = now});
      host_.publish({.channel = "battery_temperature", .unit = "degC", .value = battery_c_, .time = now});
    }
  }

  /// Arms `timer` for the next of `instants` still ahead; when it fires, runs `fn` and arms the
  /// one after.
  void arm_next(const std::vector<TimePoint>& instants, std::size_t& next, TimerId& timer, void (SimPower::*fn)()) {
    const TimePoint now = host_.clock().now();
    while (next < instants.size() && instants[next] < now) ++next;
    if (next >= instants.size()) return;
    timer = at(instants[next++] - now, [this, &instants, &next, &timer, fn] {
      timer = 0;
      (this->*fn)();
      arm_next(instants, next, timer, fn);
    });
  }
  void arm_next_arrival() { arm_next(arrivals_, next_arrival_, scheduled_arrival_timer_, &SimPower::scheduled_arrival); }
  void arm_next_fault() { arm_next(faults_, next_fault_, scheduled_fault_timer_, &SimPower::scheduled_fault); }
  void scheduled_fault() { fault(fault_detail_); }

  void scheduled_arrival() {
    if (vehicle_ != VehicleState::absent) {
      host_.log().info("a scheduled vehicle finds the connector occupied and drives on");
      return;
    }
    arrive();
  }

  void arrive() {
    arrive_timer_ = 0;
    if (vehicle_ != VehicleState::absent) return;
    plug_in(std::llround(initial_soc_ / 100.0 * static_cast<double>(capacity_wh_)), ambient_c_, "vehicle plugged in");
  }

  /// A vehicle with this much energy in its battery plugs in; its handshake follows.
  void plug_in(std::int64_t battery_wh, double battery_c, std::string_view how) {
    accrue(host_.clock().now());
    vehicle_ = VehicleState::connected;
    battery_wh_ = battery_wh;
    battery_c_ = battery_c;
    host_.report_state("up", describe());
    emit(power::Event::plugged, fmt::format("{} at {:.1f}% SoC", how, soc()));
    ready_timer_ = at(ready_delay_, [this] {
      ready_timer_ = 0;
      if (vehicle_ != VehicleState::connected) return;
      accrue(host_.clock().now());
      if (battery_wh_ >= target_wh_) {
        become_full("arrived at or above the target");
        return;
      }
      vehicle_ = VehicleState::ready;
      update_power();
      host_.report_state("up", describe());
      emit(power::Event::ev_ready, fmt::format("vehicle asks for up to {} W", vehicle_max_w_));
    });
  }

  void become_full(std::string_view why) {
    vehicle_ = VehicleState::full;
    update_power();
    host_.report_state("up", describe());
    emit(power::Event::ev_full, fmt::format("{:.1f}% SoC ({}), meter {} Wh", soc(), why, register_wh_));
    if (depart_after_s_ >= 0) depart_timer_ = at(std::chrono::seconds(depart_after_s_), [this] { depart(); });
  }

  void depart() {
    depart_timer_ = 0;
    if (vehicle_ == VehicleState::absent) return;
    accrue(host_.clock().now());
    if (contactor_closed_) host_.log().warn("the vehicle was unplugged with the contactor closed; the stage's interlock opens it");
    contactor_closed_ = false;
    vehicle_ = VehicleState::absent;
    update_power();
    host_.report_state("up", describe());
    emit(power::Event::unplugged, "driver unplugged the vehicle");
    if (arrive_every_s_ >= 0) arrive_timer_ = at(std::chrono::seconds(arrive_every_s_), [this] { arrive(); });
  }

  void inject_fault() {
    fault_timer_ = 0;
    fault(fault_detail_);
  }

  void fault(const std::string& detail) {
    if (faulted_) return;
    accrue(host_.clock().now());
    faulted_ = true;
    fault_detail_ = detail;
    contactor_closed_ = false;  // the stage's own protection opens the contactor
    update_power();
    persist();
    host_.raise({.severity = AlarmSeverity::critical, .code = "power.fault", .message = detail, .active = true});
    host_.report_state("degraded", "fault: " + detail);
    emit(power::Event::fault, detail);
    publish(host_.clock().now());
    if (fault_clear_after_s_ >= 0) {
      clear_timer_ = at(std::chrono::seconds(fault_clear_after_s_), [this] {
        clear_timer_ = 0;
        faulted_ = false;
        host_.raise({.severity = AlarmSeverity::critical, .code = "power.fault", .message = "fault cleared", .active = false});
        host_.report_state("up", describe());
        emit(power::Event::fault_cleared, "simulated fault cleared");
        // The session the fault ended does not resume: the driver unplugs and leaves.
        if (vehicle_ != VehicleState::absent && depart_after_s_ >= 0 && depart_timer_ == 0) {
          depart_timer_ = at(std::chrono::seconds(depart_after_s_), [this] { depart(); });
        }
      });
    }
  }

  // --- the vehicle across a restart ---

  [[nodiscard]] std::string vehicle_path() const { return (std::filesystem::path(std::string(host_.state_dir())) / kVehicleFile).string(); }

  void remove_vehicle_file() noexcept {
    std::error_code ec;
    std::filesystem::remove(vehicle_path(), ec);
  }

  /// At the stop: the instant, and the vehicle plugged in now, for the next start (temp file,
  /// fsync, rename). `arrival_armed`: an arrive_at instant was armed and has not come yet.
  void save_vehicle(bool arrival_armed) noexcept {
    try {
      if (driver_waits_s_ == 0) {
        remove_vehicle_file();
        return;
      }
      const std::int64_t at_ms = std::chrono::duration_cast<std::chrono::milliseconds>(host_.clock().now().time_since_epoch()).count();
      // The arrival armed but not come yet (the strand may have been too busy with the stop to
      // run its timer): it is still due, at the next start.
      const std::int64_t due_ms = arrival_armed && next_arrival_ > 0
                                      ? std::chrono::duration_cast<std::chrono::milliseconds>(arrivals_[next_arrival_ - 1].time_since_epoch()).count()
                                      : at_ms;
      const std::string text = fmt::format("pilecore-vehicle v1 state={} battery_wh={} battery_mc={} at_ms={} due_ms={}\n", static_cast<int>(vehicle_),
                                           battery_wh_, std::llround(battery_c_ * 1000.0), at_ms, due_ms);
      if (const std::string error = replace_file(vehicle_path(), text); !error.empty()) {
        host_.log().warn("cannot keep the plugged-in vehicle for the next start ({}): {}", vehicle_path(), error);
        return;
      }
      if (vehicle_ != VehicleState::absent) {
        host_.log().info("the vehicle stays plugged in ({} at {:.1f}%): its driver waits {} s for the pile", to_string(vehicle_), soc(), driver_waits_s_);
      }
    } catch (...) {
    }
  }

  /// At the start, after a stop (the file is read once: after a crash the next start knows
  /// nothing of that stop): the vehicle still plugged in since, if its driver waited; else the
  /// vehicle of the latest arrive_at instant while the pile was down, if its driver waits still.
  void restore_vehicle() {
    const std::string path = vehicle_path();
    std::string text;
    {
      std::ifstream in(path);
      if (!in) return;
      std::getline(in, text);
    }
    remove_vehicle_file();
    int state = 0;
    long long wh = 0, mc = 0, at_ms = 0, due_ms = 0;
    int used = 0;
    if (std::sscanf(text.c_str(), "pilecore-vehicle v1 state=%d battery_wh=%lld battery_mc=%lld at_ms=%lld due_ms=%lld%n", &state, &wh, &mc, &at_ms, &due_ms,
                    &used) != 5 ||
        used != static_cast<int>(text.size()) || state < static_cast<int>(VehicleState::absent) || state > static_cast<int>(VehicleState::full) ||
        wh < 0 || wh > capacity_wh_) {
      host_.log().warn("{} is not a vehicle this stage wrote ('{}'); no vehicle is plugged in", path, text.substr(0, 80));
      return;
    }
    if (driver_waits_s_ == 0) return;
    const TimePoint now = host_.clock().now(), stopped{std::chrono::milliseconds(at_ms)};
    const auto waits = std::chrono::seconds(driver_waits_s_);
    // (A clock that went back cannot say how long the pile was down: the driver counts as waiting.)
    if (state != static_cast<int>(VehicleState::absent)) {
      if (now - stopped <= waits) {
        plug_in(wh, static_cast<double>(mc) / 1000.0, "the vehicle plugged in before the restart is still there");
        return;
      }
      host_.log().info("the vehicle plugged in at the last stop has left (the pile was stopped {} s; its driver waits {} s)",
                       std::chrono::duration_cast<std::chrono::seconds>(now - stopped).count(), driver_waits_s_);
    }
    // The arrivals from the first one still due at the stop (or after the stop) until now.
    const TimePoint due{std::chrono::milliseconds(std::min(due_ms, at_ms))};
    const auto came = std::find_if(arrivals_.rbegin(), arrivals_.rend(), [&](TimePoint t) { return t >= due && t < now; });
    if (came != arrivals_.rend() && now - *came <= waits) {
      host_.log().info("a vehicle came while the pile was stopped ({} s ago) and waited", std::chrono::duration_cast<std::chrono::seconds>(now - *came).count());
      arrive();
    }
  }

  // --- the non-volatile meter register ---

  /// Loads the register from the state directory, or creates it for a new meter.
  Status load_register() {
    const std::filesystem::path dir(std::string(host_.state_dir()));
    register_path_ = (dir / kRegisterFile).string();
    const auto corrupt = [&](const std::string& why) {
      return Status::error(StatusCode::failed, fmt::format("the meter register {} is corrupt ({}); its reading cannot be trusted: restore the "
                                                           "file, or delete it to install a new meter reading meter_start_wh",
                                                           register_path_, why));
    };
    std::error_code ec;
    if (!std::filesystem::exists(register_path_, ec)) {
      // A new meter: the file appears complete or not at all.
      std::string image(static_cast<std::size_t>(kSlotOffset[1]) + kRecordSize, '\0');
      const std::string rec = register_record(1, meter_wh_, remainder_wms_);
      image.replace(static_cast<std::size_t>(kSlotOffset[1]), rec.size(), rec);  // seq 1 lives in slot 1
      if (const std::string error = replace_file(register_path_, image); !error.empty()) {
        return Status::error(StatusCode::failed, fmt::format("cannot create the meter register {}: {}", register_path_, error));
      }
      seq_ = 1;
      host_.log().info("new meter: register {} Wh in {}", meter_wh_, register_path_);
    } else {
      std::ifstream in(register_path_, std::ios::binary);
      if (!in) return Status::error(StatusCode::failed, fmt::format("cannot read the meter register {}: {}", register_path_, std::strerror(errno)));
      std::string image((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      std::optional<Record> best;
      int valid = 0;
      for (off_t off : kSlotOffset) {
        if (image.size() < static_cast<std::size_t>(off) + kRecordSize) continue;
        const auto r = parse_record(std::string_view(image).substr(static_cast<std::size_t>(off), kRecordSize));
        if (!r) continue;
        ++valid;
        if (!best || r->seq > best->seq) best = r;
      }
      if (!best) return corrupt("no valid record");
      if (best->rem >= kWmsPerWh) return corrupt("remainder out of range");
      if (valid == 1 && best->seq > 1) host_.log().warn("the meter register {} had one damaged record; the other one is used", register_path_);
      meter_wh_ = best->wh;
      remainder_wms_ = best->rem;
      seq_ = best->seq;
      host_.log().info("meter register {} Wh (from {})", meter_wh_, register_path_);
    }
    register_wh_ = meter_wh_;
    persisted_remainder_ = remainder_wms_;
    register_fd_ = ::open(register_path_.c_str(), O_RDWR | O_CLOEXEC);
    if (register_fd_ < 0) return Status::error(StatusCode::failed, fmt::format("cannot open the meter register {}: {}", register_path_, std::strerror(errno)));
    return Status::success();
  }

  /// Writes the register (one pwrite into the older record): from then on the reading survives
  /// the death of the process, and the published register advances. The syncer makes it durable.
  bool persist(bool force = false) noexcept {
    if (register_fd_ < 0) return false;  // not started
    if (meter_wh_ == register_wh_ && (!force || remainder_wms_ == persisted_remainder_)) return true;
    const std::uint64_t seq = seq_ + 1;
    std::string rec;
    try {
      rec = register_record(seq, meter_wh_, remainder_wms_);
    } catch (...) {
      return false;
    }
    const ssize_t w = ::pwrite(register_fd_, rec.data(), rec.size(), kSlotOffset[seq % 2]);
    if (w != static_cast<ssize_t>(rec.size())) {
      persist_error_ = fmt::format("write {}: {}", register_path_, w < 0 ? std::strerror(errno) : "short write");
      report_persist_error();
      return false;
    }
    seq_ = seq;
    register_wh_ = meter_wh_;
    persisted_remainder_ = remainder_wms_;
    std::string sync_error;
    {
      std::lock_guard lock(sync_mutex_);
      sync_pending_ = true;
      sync_error = sync_error_;
    }
    sync_cv_.notify_one();
    if (!sync_error.empty()) {
      persist_error_ = sync_error;
      report_persist_error();
    } else if (persist_failing_) {
      persist_failing_ = false;
      host_.log().info("the meter register is written again ({} Wh)", register_wh_);
      host_.raise({.severity = AlarmSeverity::critical, .code = "meter.persist_failed", .message = "written again", .active = false});
    }
    return true;
  }

  void report_persist_error() noexcept {
    if (persist_failing_) return;
    persist_failing_ = true;
    host_.log().error("cannot persist the meter register ({}); energy_import stays at {} Wh until it can", persist_error_, register_wh_);
    host_.raise({.severity = AlarmSeverity::critical, .code = "meter.persist_failed", .message = persist_error_, .active = true});
  }

  /// The syncer thread: makes each written record durable (fdatasync), off the core's strand.
  void sync_loop() {
    std::unique_lock lock(sync_mutex_);
    for (;;) {
      sync_cv_.wait(lock, [this] { return sync_pending_ || sync_stopping_; });
      if (!sync_pending_) return;  // stopping, and everything written is synced
      sync_pending_ = false;
      lock.unlock();
      std::string error;
      if (::fdatasync(register_fd_) != 0) error = fmt::format("fdatasync {}: {}", register_path_, std::strerror(errno));
      lock.lock();
      sync_error_ = std::move(error);
    }
  }

  void stop_syncer() noexcept {
    {
      std::lock_guard lock(sync_mutex_);
      sync_stopping_ = true;
    }
    sync_cv_.notify_all();
    if (syncer_.joinable()) syncer_.join();
    if (register_fd_ >= 0) ::close(register_fd_);
    register_fd_ = -1;
  }

  void emit(power::Event event, const std::string& detail) {
    host_.log().info("{}: {}", power::to_string(event), detail);
    if (sink_) sink_(event, detail);
  }

  [[nodiscard]] std::string describe() const {
    if (vehicle_ == VehicleState::absent) return "simulated, no vehicle";
    return fmt::format("simulated, {} at {:.1f}%", to_string(vehicle_), soc());
  }

  Host& host_;
  // configuration
  Duration tick_;
  std::int64_t stage_max_w_;
  std::int64_t capacity_wh_;
  double initial_soc_;
  double target_soc_;
  std::int64_t target_wh_;  ///< battery energy at the target SoC
  std::int64_t vehicle_max_w_;
  double taper_start_;
  double taper_min_;
  double ambient_c_;
  double heating_;
  double cooling_tau_s_;
  double max_temp_c_;
  std::int64_t arrive_after_s_;
  Duration ready_delay_;
  std::int64_t depart_after_s_;
  std::int64_t driver_waits_s_;
  std::int64_t arrive_every_s_;
  std::vector<TimePoint> arrivals_;  ///< arrive_at, sorted
  std::size_t next_arrival_ = 0;
  std::vector<TimePoint> faults_;  ///< fault_at, sorted
  std::size_t next_fault_ = 0;
  std::int64_t fault_after_s_;
  std::string fault_detail_;
  std::int64_t fault_clear_after_s_;
  std::int64_t persist_every_wh_;
  // state
  std::int64_t meter_wh_;            ///< energy metered so far (whole Wh)
  std::int64_t register_wh_ = 0;     ///< the non-volatile register: persisted, and what is published
  std::string register_path_;        ///< empty until start()
  std::int64_t persisted_remainder_ = 0;
  std::uint64_t seq_ = 0;  ///< sequence number of the newest record
  int register_fd_ = -1;
  bool persist_failing_ = false;
  std::string persist_error_;
  std::thread syncer_;
  std::mutex sync_mutex_;
  std::condition_variable sync_cv_;
  bool sync_pending_ = false;   // guarded by sync_mutex_
  bool sync_stopping_ = false;  // guarded by sync_mutex_
  std::string sync_error_;      // guarded by sync_mutex_: the last fsync's failure
  std::int64_t remainder_wms_ = 0;  ///< energy below 1 Wh not yet on the register, in W*ms
  std::int64_t limit_w_;
  std::int64_t power_w_ = 0;
  std::int64_t battery_wh_ = 0;
  double battery_c_;
  TimePoint last_{};
  VehicleState vehicle_ = VehicleState::absent;
  bool contactor_closed_ = false;
  bool faulted_ = false;
  power::EventSink sink_;
  TimerId tick_timer_ = 0;
  TimerId arrive_timer_ = 0;
  TimerId ready_timer_ = 0;
  TimerId fault_timer_ = 0;
  TimerId clear_timer_ = 0;
  TimerId depart_timer_ = 0;
  TimerId scheduled_arrival_timer_ = 0;
  TimerId scheduled_fault_timer_ = 0;
};

}  // namespace

PILECORE_PLUGIN(SimPower, {.name = "sim-power", .version = "0.1.0", .vendor = "pilecore", .license = "Apache-2.0",
                           .description = "Simulated power stage and vehicle (SoC, taper, battery temperature, faults)", .config = keys})
