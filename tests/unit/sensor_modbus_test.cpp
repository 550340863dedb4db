// sensor-modbus against real Modbus servers: a libmodbus TCP server on 127.0.0.1 and a libmodbus
// RTU server on one end of a socat pseudo-terminal pair, serving registers encoded as the meter
// would from the same map YAML files the plugin ships. The plugin runs in a real Runtime (real
// loader, validation and strand); nothing is mocked.
//
// Samples are read from the instance's log: the core logs each published sample at trace level
// ("<channel> = <value> <unit>"), and the test registers a capturing spdlog logger under the
// instance's logger name before the runtime starts (as sim_plugins_test does).
//
// The test's register encoder is written independently of the plugin's decoder, and the word
// order is also pinned with literal register words, so a mistake made twice does not cancel out.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <modbus/modbus.h>
#include <netinet/in.h>
#include <poll.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <future>
#include <optional>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "pilecore/pilecore.hpp"
#include "plugin_loader.hpp"
#include "site_config.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace std::chrono_literals;
using pilecore::test::Child;
using pilecore::test::eventually;
using pilecore::test::RunningSite;
using pilecore::test::sim_payment_and_flat_tariff;
using pilecore::test::TempDir;
namespace fs = std::filesystem;

namespace {

const fs::path kMeters = fs::path(PILECORE_TEST_SOURCE_DIR) / "plugins" / "sensor-modbus" / "meters";

// ---------------------------------------------------------------------------------------------
// samples, from the instance's log

/// The log of one instance, e.g. "sensor:sensor-modbus:meter".
class InstanceLog {
 public:
  explicit InstanceLog(std::string logger_name) : name_(std::move(logger_name)) {
    sink_ = pilecore::test::capture_log(name_);
  }
  ~InstanceLog() { spdlog::drop(name_); }
  InstanceLog(const InstanceLog&) = delete;
  InstanceLog& operator=(const InstanceLog&) = delete;

  std::vector<std::string> lines() { return sink_->lines(); }

  /// Every published value of `channel`, in order.
  std::vector<double> values(const std::string& channel) {
    static const std::regex re("^([a-z0-9_]+) = (\\S+) ");
    std::vector<double> out;
    for (const auto& l : lines()) {
      std::smatch m;
      if (std::regex_search(l, m, re) && m[1] == channel) out.push_back(std::stod(m[2].str()));
    }
    return out;
  }
  std::optional<double> last(const std::string& channel) {
    auto v = values(channel);
    if (v.empty()) return std::nullopt;
    return v.back();
  }
  /// Lines containing `needle`.
  std::vector<std::string> grep(std::string_view needle) {
    std::vector<std::string> out;
    for (auto& l : lines()) {
      if (l.find(needle) != std::string::npos) out.push_back(l);
    }
    return out;
  }
  /// Index of the first line containing `needle`, or -1.
  long index_of(std::string_view needle) {
    const auto all = lines();
    for (std::size_t i = 0; i < all.size(); ++i) {
      if (all[i].find(needle) != std::string::npos) return static_cast<long>(i);
    }
    return -1;
  }

 private:
  std::string name_;
  std::shared_ptr<pilecore::test::CaptureSink> sink_;
};

// ---------------------------------------------------------------------------------------------
// the test's own reading of a map file, and encoding values as the meter does

struct MapEntry {
  std::string channel;
  int address = 0;
  bool input = true;  // function 0x04, else holding 0x03
  std::string type;
  bool big = true;  // word order
  double scale = 1;
  std::string unit;
};

std::vector<MapEntry> read_map(const fs::path& file) {
  const YAML::Node root = YAML::LoadFile(file.string());
  const YAML::Node d = root["defaults"];
  const auto field = [&](const YAML::Node& e, const char* key) -> std::optional<std::string> {
    if (e[key]) return e[key].as<std::string>();
    if (d && d[key]) return d[key].as<std::string>();
    return std::nullopt;
  };
  std::vector<MapEntry> out;
  for (const auto& e : root["registers"]) {
    MapEntry m;
    m.channel = e["channel"].as<std::string>();
    m.address = static_cast<int>(std::stoul(e["address"].as<std::string>(), nullptr, 0));
    const std::string fn = field(e, "function").value();
    m.input = fn == "input" || fn == "0x04" || fn == "4";
    m.type = field(e, "type").value();
    m.big = field(e, "word_order").value_or("big") == "big";
    m.scale = std::stod(field(e, "scale").value_or("1"));
    m.unit = field(e, "unit").value();
    out.push_back(m);
  }
  return out;
}

void put32(std::uint16_t* table, const MapEntry& e, std::uint32_t u) {
  const auto hi = static_cast<std::uint16_t>(u >> 16);
  const auto lo = static_cast<std::uint16_t>(u & 0xFFFF);
  table[e.address] = e.big ? hi : lo;
  table[e.address + 1] = e.big ? lo : hi;
}

/// Writes `value` (in the channel's unit) into the registers as the device would hold it, and
/// returns what the plugin must publish for it.
double encode(modbus_mapping_t* m, const MapEntry& e, double value) {
  std::uint16_t* table = e.input ? m->tab_input_registers : m->tab_registers;
  const double raw = value / e.scale;
  double raw_held = 0;
  if (e.type == "float32") {
    const float f = static_cast<float>(raw);
    put32(table, e, std::bit_cast<std::uint32_t>(f));
    raw_held = f;
  } else if (e.type == "int16") {
    const auto v = static_cast<std::int16_t>(std::lround(raw));
    table[e.address] = static_cast<std::uint16_t>(v);
    raw_held = v;
  } else if (e.type == "uint16") {
    const auto v = static_cast<std::uint16_t>(std::lround(raw));
    table[e.address] = v;
    raw_held = v;
  } else if (e.type == "int32") {
    const auto v = static_cast<std::int32_t>(std::llround(raw));
    put32(table, e, static_cast<std::uint32_t>(v));
    raw_held = v;
  } else if (e.type == "uint32") {
    const auto v = static_cast<std::uint32_t>(std::llround(raw));
    put32(table, e, v);
    raw_held = v;
  } else {
    ADD_FAILURE() << "unknown type " << e.type;
  }
  const double published = raw_held * e.scale;
  return e.unit == "Wh" ? std::round(published) : published;
}

// ---------------------------------------------------------------------------------------------
// a real Modbus server: TCP on 127.0.0.1 (any number of clients) or RTU on a serial device

class ModbusServer {
 public:
  /// A TCP server on 127.0.0.1 and a free port.
  static std::unique_ptr<ModbusServer> tcp() {
    std::unique_ptr<ModbusServer> s(new ModbusServer());
    s->tcp_ = true;
    s->ctx_ = modbus_new_tcp("127.0.0.1", 0);
    if (s->ctx_ == nullptr) throw std::runtime_error("modbus_new_tcp failed");
    s->listen_fd_ = modbus_tcp_listen(s->ctx_, 8);
    if (s->listen_fd_ < 0) throw std::runtime_error(std::string("modbus_tcp_listen: ") + modbus_strerror(errno));
    sockaddr_in addr{};
    socklen_t len = sizeof addr;
    ::getsockname(s->listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    s->port_ = ntohs(addr.sin_port);
    s->thread_ = std::thread([p = s.get()] { p->serve_tcp(); });
    return s;
  }

  /// An RTU server answering as unit `unit` on `device`.
  static std::unique_ptr<ModbusServer> rtu(const std::string& device, int baud, char parity, int unit) {
    std::unique_ptr<ModbusServer> s(new ModbusServer());
    s->ctx_ = modbus_new_rtu(device.c_str(), baud, parity, 8, 1);
    if (s->ctx_ == nullptr) throw std::runtime_error("modbus_new_rtu failed");
    modbus_set_slave(s->ctx_, unit);
    if (modbus_connect(s->ctx_) != 0) throw std::runtime_error("cannot open " + device + ": " + modbus_strerror(errno));
    modbus_set_indication_timeout(s->ctx_, 0, 20000);  // so the loop sees stop_ within 20 ms
    s->thread_ = std::thread([p = s.get()] { p->serve_rtu(); });
    return s;
  }

  ~ModbusServer() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    for (int fd : clients_) ::close(fd);
    if (listen_fd_ >= 0) ::close(listen_fd_);
    if (ctx_ != nullptr) {
      if (!tcp_) modbus_close(ctx_);
      modbus_free(ctx_);
    }
    modbus_mapping_free(mapping_);
  }
  ModbusServer(const ModbusServer&) = delete;
  ModbusServer& operator=(const ModbusServer&) = delete;

  [[nodiscard]] int port() const { return port_; }

  /// Changes registers while the server runs.
  template <class F>
  void edit(F f) {
    std::lock_guard lock(mutex_);
    f(mapping_);
  }
  /// Fills the registers of every entry of `map` with `value_of(channel)`; returns what the
  /// plugin must publish per channel.
  std::map<std::string, double> serve_map(const std::vector<MapEntry>& map, const std::function<double(const MapEntry&)>& value_of) {
    std::map<std::string, double> expected;
    edit([&](modbus_mapping_t* m) {
      for (const auto& e : map) expected[e.channel] = encode(m, e, value_of(e));
    });
    return expected;
  }

  /// A silent server receives requests and answers none (a meter that stopped answering).
  void set_silent(bool silent) { silent_ = silent; }
  /// Requests received while silent.
  [[nodiscard]] int silent_requests() const { return silent_requests_; }
  [[nodiscard]] int requests() const { return requests_; }
  /// Closes every client connection (a gateway restart, a cable pulled and put back).
  void drop_clients() { drop_ = true; }

 private:
  ModbusServer() : mapping_(modbus_mapping_new(0, 0, 0x10000, 0x10000)) {
    if (mapping_ == nullptr) throw std::runtime_error("modbus_mapping_new failed");
  }

  void handle(int rc, const std::uint8_t* query) {
    ++requests_;
    if (silent_) {
      ++silent_requests_;
      return;
    }
    std::lock_guard lock(mutex_);
    modbus_reply(ctx_, query, rc, mapping_);
  }

  void serve_tcp() {
    std::uint8_t query[MODBUS_TCP_MAX_ADU_LENGTH];
    while (!stop_) {
      if (drop_.exchange(false)) {
        for (int fd : clients_) ::close(fd);
        clients_.clear();
      }
      std::vector<pollfd> fds{{listen_fd_, POLLIN, 0}};
      for (int fd : clients_) fds.push_back({fd, POLLIN, 0});
      if (::poll(fds.data(), fds.size(), 10) <= 0) continue;
      if (fds[0].revents & POLLIN) {
        const int fd = ::accept(listen_fd_, nullptr, nullptr);
        if (fd >= 0) clients_.push_back(fd);
      }
      for (std::size_t i = 1; i < fds.size(); ++i) {
        if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        modbus_set_socket(ctx_, fds[i].fd);
        const int rc = modbus_receive(ctx_, query);
        if (rc > 0) {
          handle(rc, query);
        } else if (rc < 0) {
          ::close(fds[i].fd);
          clients_.erase(std::find(clients_.begin(), clients_.end(), fds[i].fd));
        }
      }
    }
  }

  void serve_rtu() {
    std::uint8_t query[MODBUS_RTU_MAX_ADU_LENGTH];
    while (!stop_) {
      const int rc = modbus_receive(ctx_, query);
      if (rc > 0) handle(rc, query);
      else if (rc < 0 && errno != ETIMEDOUT) modbus_flush(ctx_);
    }
  }

  bool tcp_ = false;
  modbus_t* ctx_ = nullptr;
  modbus_mapping_t* mapping_;
  std::mutex mutex_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::vector<int> clients_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> silent_{false};
  std::atomic<bool> drop_{false};
  std::atomic<int> requests_{0};
  std::atomic<int> silent_requests_{0};
};

// ---------------------------------------------------------------------------------------------
// sites

std::string site_with(const std::string& plugins) {
  return R"(site:
  id: MODBUS-TEST
  name: Modbus test site
  location: {lat: 31.2, lon: 121.5}
  timezone: Asia/Shanghai
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
  - {id: 2, type: gbt-dc, max_power_w: 60000}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
  power-2:
    plugin: sim-power
    connector: 2
)" + plugins;
}

struct Options {
  int poll_ms = 100;
  int timeout_ms = 300;
  std::string config;    ///< more config lines, each "      key: value\n"
  std::string instance;  ///< instance lines, e.g. "    connector: 1\n"

  static Options with_config(std::string c) {
    Options o;
    o.config = std::move(c);
    return o;
  }
};

std::string tcp_instance(const std::string& name, int port, const std::string& map_line, const Options& o = {}) {
  return "  " + name + ":\n    plugin: sensor-modbus\n" + o.instance + "    config:\n      transport: tcp\n      host: 127.0.0.1\n      port: " +
         std::to_string(port) + "\n      " + map_line + "\n      poll_ms: " + std::to_string(o.poll_ms) +
         "\n      timeout_ms: " + std::to_string(o.timeout_ms) + "\n" + o.config;
}

std::vector<fs::path> plugin_dirs() { return {PILECORE_PLUGIN_DIR}; }

core::InstanceInfo info(RunningSite& site, const std::string& name) {
  for (auto& i : site.runtime().instances()) {
    if (i.name == name) return i;
  }
  return {};  // not created yet
}

/// A physical value per channel, distinct per channel, of the right magnitude.
double value_for(const MapEntry& e) {
  const auto h = static_cast<double>(std::hash<std::string>{}(e.channel) % 97);
  if (e.channel.starts_with("voltage")) return 225 + h / 10;
  if (e.channel.starts_with("current")) return 10 + h / 7;
  if (e.channel.starts_with("power")) return 7000 + h * 13.7;
  if (e.channel == "frequency") return 49.97;
  if (e.channel == "energy_import") return 123456789;  // Wh: 123456.789 kWh on the meter
  if (e.channel == "energy_export") return 4321;
  if (e.channel == "temperature") return -5.3;
  if (e.channel == "humidity") return 45.6;
  return 1 + h;
}

void expect_all(InstanceLog& log, const std::map<std::string, double>& expected, const std::string& what) {
  for (const auto& [channel, want] : expected) {
    const auto got = log.last(channel);
    ASSERT_TRUE(got.has_value()) << what << ": no sample on " << channel;
    EXPECT_NEAR(*got, want, std::abs(want) * 1e-12 + 1e-12) << what << ": " << channel;
  }
}

bool has_all(InstanceLog& log, const std::map<std::string, double>& expected) {
  return std::all_of(expected.begin(), expected.end(), [&](const auto& kv) {
    const auto v = log.last(kv.first);
    return v && *v == kv.second;
  });
}

std::string find_program(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const fs::path p = fs::path(dir) / name;
    if (::access(p.c_str(), X_OK) == 0) return p.string();
  }
  return {};
}

}  // namespace

// Every channel of both shipped meter maps over Modbus TCP: word order, scaling, energy in Wh;
// then the gateway drops the connection and the plugin reconnects within the poll.
TEST(SensorModbus, TcpReadsEveryChannelOfTheShippedMeterMaps) {
  auto dtsu_map = read_map(kMeters / "chint-dtsu666.yaml");
  auto sdm_map = read_map(kMeters / "eastron-sdm630.yaml");
  ASSERT_GE(dtsu_map.size(), 12u);
  ASSERT_GE(sdm_map.size(), 12u);
  auto dtsu = ModbusServer::tcp();
  auto sdm = ModbusServer::tcp();
  const auto want_dtsu = dtsu->serve_map(dtsu_map, value_for);
  auto want_sdm = sdm->serve_map(sdm_map, value_for);
  // Independent of the encoder: 123456.789 kWh as the DTSU666 holds it is 0x47F1 0x2065, which is
  // 123456789 Wh; the SDM630's import register 0x0048 holds 0x449A 0x5000 = 1234.5 kWh.
  dtsu->edit([](modbus_mapping_t* m) {
    EXPECT_EQ(m->tab_input_registers[0x401E], 0x47F1);
    EXPECT_EQ(m->tab_input_registers[0x401F], 0x2065);
  });
  EXPECT_EQ(want_dtsu.at("energy_import"), 123456789);
  sdm->edit([](modbus_mapping_t* m) {
    m->tab_input_registers[0x48] = 0x449A;
    m->tab_input_registers[0x49] = 0x5000;
  });
  want_sdm["energy_import"] = 1234500;

  InstanceLog dlog("sensor:sensor-modbus:dtsu");
  InstanceLog slog("sensor:sensor-modbus:sdm");
  TempDir dir;
  RunningSite site(dir,
                   site_with(tcp_instance("dtsu", dtsu->port(), "model: chint-dtsu666") +
                             tcp_instance("sdm", sdm->port(), "model: eastron-sdm630", Options::with_config("      unit_id: 2\n"))),
                   plugin_dirs());
  ASSERT_TRUE(eventually([&] { return has_all(dlog, want_dtsu) && has_all(slog, want_sdm); }, 5s));
  expect_all(dlog, want_dtsu, "DTSU666");
  expect_all(slog, want_sdm, "SDM630");
  for (double e : dlog.values("energy_import")) EXPECT_EQ(e, std::floor(e)) << "energy is integer Wh";
  EXPECT_EQ(info(site, "dtsu").health, "up");
  EXPECT_EQ(info(site, "sdm").health, "up");

  // The channels and units the plugin declares are those of the map.
  const auto declared = site.on_strand([&] {
    auto* s = static_cast<sensor::Sensor*>(site.runtime().find_plugin("dtsu"));
    std::vector<std::pair<std::string, std::string>> out;
    for (const auto& c : s->channels()) out.emplace_back(c.name, c.unit);
    return out;
  });
  ASSERT_EQ(declared.size(), dtsu_map.size());
  for (std::size_t i = 0; i < declared.size(); ++i) {
    EXPECT_EQ(declared[i].first, dtsu_map[i].channel);
    EXPECT_EQ(declared[i].second, dtsu_map[i].unit);
  }

  // The connection drops; the next request reconnects and the readings go on, with no failed poll.
  sdm->drop_clients();
  sdm->edit([](modbus_mapping_t* m) {
    m->tab_input_registers[0x48] = 0x449A;
    m->tab_input_registers[0x49] = 0x6000;  // 1235.0 kWh
  });
  EXPECT_TRUE(eventually([&] { return slog.last("energy_import") == 1235000.0; }, 5s));
  EXPECT_TRUE(slog.grep("poll failed").empty()) << slog.grep("poll failed").front();
  EXPECT_EQ(site.stop(), 0);
}

// All types and both word orders, from holding and input registers, pinned with literal words.
TEST(SensorModbus, CustomMapTypesAndWordOrders) {
  TempDir dir;
  const auto map = dir.write("types.yaml", R"(model: test-types
description: every type and word order
registers:
  - {channel: f_big, address: 100, function: holding, type: float32, word_order: big, scale: 1, unit: V}
  - {channel: f_little, address: 102, function: 0x03, type: float32, word_order: little, scale: 1, unit: V}
  - {channel: i16, address: 104, function: holding, type: int16, scale: 0.1, unit: degC}
  - {channel: u16, address: 105, function: holding, type: uint16, scale: 0.1, unit: "%RH"}
  - {channel: i32_little, address: 106, function: input, type: int32, word_order: little, scale: 0.001, unit: A}
  - {channel: u32_big, address: 108, function: 0x04, type: uint32, word_order: big, scale: 1, unit: W}
  - {channel: energy_import, address: 200, function: input, type: float32, word_order: little, scale: 1000, unit: Wh}
)");
  auto server = ModbusServer::tcp();
  server->edit([](modbus_mapping_t* m) {
    auto* h = m->tab_registers;
    auto* in = m->tab_input_registers;
    h[100] = 0x449A, h[101] = 0x5000;  // 1234.5, high word first
    h[102] = 0x5000, h[103] = 0x449A;  // 1234.5, low word first
    h[104] = 0xFFCB;                   // -53 -> -5.3 degC
    h[105] = 0xFFCB;                   // 65483 -> 6548.3 %RH
    in[106] = 0x1DC0, in[107] = 0xFFFE;  // -123456 (0xFFFE1DC0), low word first -> -123.456 A
    in[108] = 0x89AB, in[109] = 0xCDEF;  // 2309737967 W
    in[200] = 0x2065, in[201] = 0x47F1;  // 123456.789 kWh, low word first -> 123456789 Wh
    // The same numbers in the other table must not be read.
    in[100] = 0x1111, in[101] = 0x1111;
  });
  InstanceLog log("sensor:sensor-modbus:meter");
  RunningSite site(dir, site_with(tcp_instance("meter", server->port(), "map_file: " + map.string())), plugin_dirs());
  const std::map<std::string, double> want = {
      {"f_big", 1234.5},       {"f_little", 1234.5},     {"i16", -53 * 0.1},           {"u16", 65483 * 0.1},
      {"i32_little", -123456 * 0.001}, {"u32_big", 2309737967.0}, {"energy_import", 123456789},
  };
  ASSERT_TRUE(eventually([&] { return has_all(log, want); }, 5s)) << "last energy_import " << log.last("energy_import").value_or(-1);
  expect_all(log, want, "types");
  EXPECT_EQ(info(site, "meter").health, "up");
}

// A register outside its range fails the poll like a missing answer: energy channels are 0 to
// 1e12 Wh unless the map says otherwise, any channel may declare `min` and `max` (in its unit),
// and nothing of such a poll is published.
TEST(SensorModbus, AReadingOutsideTheRegisterRangeFailsThePoll) {
  TempDir dir;
  const auto map = dir.write("ranged.yaml", R"(model: test-ranged
defaults: {function: input, type: float32}
registers:
  - {channel: voltage_l1, address: 0, scale: 1, unit: V, min: 0, max: 500}
  - {channel: energy_import, address: 2, scale: 1000, unit: Wh}
)");
  auto server = ModbusServer::tcp();
  MapEntry volts{"voltage_l1", 0, true, "float32", true, 1, "V"};
  MapEntry energy{"energy_import", 2, true, "float32", true, 1000, "Wh"};
  const auto serve = [&](double v, double wh) { server->edit([&](modbus_mapping_t* m) { encode(m, volts, v), encode(m, energy, wh); }); };
  serve(230, 5'000'000);
  InstanceLog log("sensor:sensor-modbus:meter");
  RunningSite site(dir, site_with(tcp_instance("meter", server->port(), "map_file: " + map.string(), Options::with_config("      fail_after: 1000\n"))),
                   plugin_dirs());
  ASSERT_TRUE(eventually([&] { return log.last("energy_import") == 5e6; }, 5s));

  const auto refused = [&](double v, double wh, const std::string& why) {
    const std::size_t published = log.values("energy_import").size();
    const std::size_t failed = log.grep(why).size();
    serve(v, wh);
    EXPECT_TRUE(eventually([&] { return log.grep(why).size() >= failed + 2; }, 5s)) << why;
    serve(230, 5'000'000);
    EXPECT_TRUE(eventually([&] { return log.values("energy_import").size() > published + 1; }, 5s));
    // Between the failure and the recovery nothing but the true value was published.
    for (double e : log.values("energy_import")) EXPECT_EQ(e, 5e6) << why;
    for (double u : log.values("voltage_l1")) EXPECT_EQ(u, 230) << why;
  };
  refused(230, -1000, "channel energy_import (input (0x04) register 0x0002) reads -1000 Wh, outside its range 0 to 1000000000000 Wh");
  refused(230, 1e13, "channel energy_import (input (0x04) register 0x0002) reads 10000000000000 Wh, outside its range");
  refused(500.5, 5'000'000, "channel voltage_l1 (input (0x04) register 0x0000) reads 500.5 V, outside its range 0 to 500 V");
  refused(-1, 5'000'000, "reads -1 V, outside its range");
  // At the bounds: published.
  serve(500, 1e12);
  EXPECT_TRUE(eventually([&] { return log.last("energy_import") == 1e12 && log.last("voltage_l1") == 500; }, 5s));
  EXPECT_EQ(info(site, "meter").health, "up");
}

// The DTSU666's import-energy register depends on the firmware: the shipped map reads 0x401E; a
// copy with that one line changed to 0x4000 reads the other register.
TEST(SensorModbus, FirmwareEnergyRegisterIsAOneLineChange) {
  std::ifstream in(kMeters / "chint-dtsu666.yaml");
  std::stringstream buf;
  buf << in.rdbuf();
  std::string text = buf.str();
  const std::string line = "{channel: energy_import, address: 0x401E,";
  ASSERT_EQ(text.find(line), text.rfind(line)) << "exactly one line names the register";
  ASSERT_NE(text.find(line), std::string::npos) << "the shipped map reads 0x401E";
  text.replace(text.find(line), line.size(), "{channel: energy_import, address: 0x4000,");

  TempDir dir;
  const auto custom = dir.write("dtsu666-old-firmware.yaml", text);
  auto server = ModbusServer::tcp();
  server->edit([](modbus_mapping_t* m) {
    m->tab_input_registers[0x401E] = 0x459C, m->tab_input_registers[0x401F] = 0x4000;  // 5000.0 kWh
    m->tab_input_registers[0x4000] = 0x4587, m->tab_input_registers[0x4001] = 0x0C00;  // 4321.5 kWh
  });
  InstanceLog shipped("sensor:sensor-modbus:shipped");
  InstanceLog old("sensor:sensor-modbus:old");
  RunningSite site(dir,
                   site_with(tcp_instance("shipped", server->port(), "model: chint-dtsu666") +
                             tcp_instance("old", server->port(), "map_file: " + custom.string())),
                   plugin_dirs());
  EXPECT_TRUE(eventually([&] { return shipped.last("energy_import") == 5000000.0; }, 5s)) << shipped.last("energy_import").value_or(-1);
  EXPECT_TRUE(eventually([&] { return old.last("energy_import") == 4321500.0; }, 5s)) << old.last("energy_import").value_or(-1);
  EXPECT_FALSE(old.grep(custom.string()).empty()) << "the log names the map file in use";
}

// Modbus RTU over a real pseudo-terminal pair: the XY-MD02 map (int16 below zero), 9600 8E1, unit 7.
TEST(SensorModbus, RtuOverAPseudoTerminalPair) {
  const std::string socat = find_program("socat");
  if (socat.empty()) GTEST_SKIP() << "socat is not installed";
  TempDir dir;
  const fs::path a = dir.path() / "ttyA";
  const fs::path b = dir.path() / "ttyB";
  Child pty({socat, "-d", "-d", "pty,raw,echo=0,link=" + a.string(), "pty,raw,echo=0,link=" + b.string()});
  ASSERT_TRUE(eventually([&] { return fs::exists(a) && fs::exists(b); }, 5s)) << "socat made no pty pair";

  auto map = read_map(kMeters / "xy-md02.yaml");
  auto server = ModbusServer::rtu(b.string(), 9600, 'E', 7);
  auto want = server->serve_map(map, value_for);
  EXPECT_EQ(want.at("temperature"), -53 * 0.1);
  server->edit([](modbus_mapping_t* m) { EXPECT_EQ(m->tab_input_registers[1], 0xFFCB) << "-53 in two's complement"; });

  InstanceLog log("sensor:sensor-modbus:cabinet");
  RunningSite site(dir, site_with(R"(  cabinet:
    plugin: sensor-modbus
    config:
      transport: rtu
      device: )" + a.string() + R"(
      baud: 9600
      parity: E
      unit_id: 7
      model: xy-md02
      poll_ms: 100
      timeout_ms: 300
)"),
                   plugin_dirs());
  ASSERT_TRUE(eventually([&] { return has_all(log, want); }, 5s));
  expect_all(log, want, "XY-MD02 over RTU");
  EXPECT_EQ(info(site, "cabinet").health, "up");

  // A new reading arrives on the next poll.
  server->edit([](modbus_mapping_t* m) { m->tab_input_registers[2] = 612; });
  EXPECT_TRUE(eventually([&] { return log.last("humidity") == 612 * 0.1; }, 5s));
  EXPECT_EQ(site.stop(), 0);
}

// refresh() reads at once instead of waiting for the next poll.
TEST(SensorModbus, RefreshGivesAFreshReadingAtOnce) {
  auto server = ModbusServer::tcp();
  const auto set_kwh = [&](std::uint16_t hi, std::uint16_t lo) {
    server->edit([&](modbus_mapping_t* m) { m->tab_input_registers[0x401E] = hi, m->tab_input_registers[0x401F] = lo; });
  };
  set_kwh(0x459C, 0x4000);  // 5000.0 kWh
  InstanceLog log("sensor:sensor-modbus:meter");
  TempDir dir;
  RunningSite site(dir, site_with(tcp_instance("meter", server->port(), "model: chint-dtsu666", [] {
                                    Options o;
                                    o.poll_ms = 600000;
                                    o.instance = "    connector: 1\n";
                                    return o;
                                  }())),
                   plugin_dirs());
  ASSERT_TRUE(eventually([&] { return log.last("energy_import") == 5000000.0; }, 5s)) << "the first poll comes at start";
  set_kwh(0x459C, 0x4800);  // 5001.0 kWh
  std::this_thread::sleep_for(pilecore::test::time_scale()(150ms));
  EXPECT_EQ(log.values("energy_import").size(), 1u) << "no poll for 10 minutes";

  const auto t0 = std::chrono::steady_clock::now();
  site.on_strand([&] { static_cast<sensor::Sensor*>(site.runtime().find_plugin("meter"))->refresh(); });
  ASSERT_TRUE(eventually([&] { return log.last("energy_import") == 5001000.0; }, 5s));
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_LT(took, test::time_scale()(500ms)) << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms";
  EXPECT_EQ(log.values("energy_import").size(), 2u);
  EXPECT_EQ(site.stop(), 0);
}

// A map with a mistake is refused when the site file is validated (pilectl config validate and
// pilecored alike), with a message naming the file, the line and the entry, at the map_file key;
// so are contradictory settings, each at the key concerned.
TEST(SensorModbus, MalformedMapFileIsRefusedWithFileLineAndEntry) {
  struct Case {
    std::string name;
    std::string yaml;
    std::vector<std::string> expect;
  };
  const std::vector<Case> cases = {
      {"bad-type.yaml",
       "model: broken\nregisters:\n  - {channel: voltage, address: 0x0000, function: input, type: float32, unit: V}\n"
       "  - {channel: current, address: 0x0006, function: input, type: float64, unit: A}\n",
       {"bad-type.yaml:4:", "registers[1] (channel 'current')", "unknown type 'float64'", "float32, int16, uint16, int32, uint32"}},
      {"no-address.yaml", "model: broken\ndefaults: {function: input, type: float32}\nregisters:\n  - {channel: voltage, unit: V}\n",
       {"no-address.yaml:4:", "registers[0] (channel 'voltage')", "missing 'address'"}},
      {"kwh.yaml", "model: broken\nregisters:\n  - {channel: energy_import, address: 0x48, function: input, type: float32, unit: kWh}\n",
       {"kwh.yaml:3:", "(channel 'energy_import')", "integer Wh", "scale 1000"}},
      {"overlap.yaml",
       "model: broken\ndefaults: {function: input, type: float32}\nregisters:\n  - {channel: a, address: 10, unit: V}\n"
       "  - {channel: b, address: 11, unit: V}\n",
       {"overlap.yaml:5:", "channel 'b'", "overlaps channel 'a'"}},
      {"syntax.yaml", "model: broken\nregisters:\n  - {channel: a, address: 10\n", {"syntax.yaml:", "not valid YAML"}},
      {"unknown-key.yaml", "model: broken\nregisters:\n  - {channel: a, adress: 10, function: input, type: int16, unit: V}\n",
       {"unknown-key.yaml:3:", "unknown key 'adress'", "allowed: channel, address"}},
      {"range.yaml", "model: broken\nregisters:\n  - {channel: v, address: 0, function: input, type: int16, unit: V, min: 10, max: 5}\n",
       {"range.yaml:3:", "(channel 'v')", "min 10 is above max 5"}},
      {"bound.yaml", "model: broken\nregisters:\n  - {channel: v, address: 0, function: input, type: int16, unit: V, max: lots}\n",
       {"bound.yaml:3:", "max 'lots' is not a finite number"}},
  };
  auto server = ModbusServer::tcp();
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    TempDir dir;
    const auto file = dir.write(c.name, c.yaml);
    core::PluginRegistry registry(plugin_dirs());
    const auto outcome = core::load_site_text(site_with(tcp_instance("meter", server->port(), "map_file: " + file.string())), "site.yaml", registry);
    EXPECT_FALSE(outcome.site) << "the site file is not valid";
    const std::string err = outcome.diagnostics.format();
    // At the map_file value: line 22 of the site file, after "      map_file: ".
    EXPECT_EQ(err.rfind("site.yaml:22:17: error: 'plugins.meter.config.map_file': invalid meter map: ", 0), 0u) << err;
    EXPECT_NE(err.find(file.string()), std::string::npos) << err;
    for (const auto& e : c.expect) EXPECT_NE(err.find(e), std::string::npos) << "missing '" << e << "' in: " << err;
  }

  // Settings that contradict each other are refused the same way.
  const std::vector<std::pair<std::string, std::string>> settings = {
      {tcp_instance("meter", server->port(), "model: xy-md02", Options::with_config("      map_file: /etc/pilecore/meters/x.yaml\n")),
       "site.yaml:25:17: error: 'plugins.meter.config.map_file': give either model or map_file, not both\n"},
      {"  meter:\n    plugin: sensor-modbus\n    config: {transport: tcp, model: xy-md02}\n",
       "site.yaml:18:13: error: 'plugins.meter.config.host': transport tcp needs host (the meter's or gateway's address)\n"},
      {"  meter:\n    plugin: sensor-modbus\n    config: {transport: rtu, device: /dev/null, baud: 1234, model: xy-md02, unit_id: 0}\n",
       // yaml-cpp reports no position for the value 0 here; the problem is then shown at the config block.
       "site.yaml:18:13: error: 'plugins.meter.config.unit_id': unit_id 0 is not a device address on an RTU line (1 to 247)\n"
       "site.yaml:18:55: error: 'plugins.meter.config.baud': baud 1234 is not a standard serial speed; use one of 300, 600, 1200, 2400, 4800, "
       "9600, 19200, 38400, 57600, 115200, 230400\n"},
      {"  meter:\n    plugin: sensor-modbus\n    config: {transport: tcp, host: 127.0.0.1, map_file: meters/x.yaml}\n",
       "site.yaml:18:57: error: 'plugins.meter.config.map_file': map_file 'meters/x.yaml' must be an absolute path\n"},
  };
  for (const auto& [yaml, expect] : settings) {
    core::PluginRegistry registry(plugin_dirs());
    const auto outcome = core::load_site_text(site_with(yaml), "site.yaml", registry);
    EXPECT_FALSE(outcome.site);
    EXPECT_EQ(outcome.diagnostics.format(), expect);
  }
}

// A meter that stops answering: each poll makes 1 + retries requests, the alarm and "down" come
// after fail_after polls, and the first good poll clears the alarm and reports "up".
TEST(SensorModbus, ReadFailuresRaiseTheAlarmAfterFailAfterPollsAndRecovery) {
  auto server = ModbusServer::tcp();
  auto map = read_map(kMeters / "chint-dtsu666.yaml");
  server->serve_map(map, value_for);
  InstanceLog log("sensor:sensor-modbus:meter");
  TempDir dir;
  RunningSite site(dir,
                   site_with("  meter:\n    plugin: sensor-modbus\n    connector: 1\n    config:\n      host: 127.0.0.1\n      port: " +
                             std::to_string(server->port()) +
                             "\n      model: chint-dtsu666\n      poll_ms: 100\n      timeout_ms: 100\n      retries: 2\n      fail_after: 3\n"),
                   plugin_dirs());
  ASSERT_TRUE(eventually([&] { return info(site, "meter").health == "up"; }, 5s));

  server->set_silent(true);
  ASSERT_TRUE(eventually([&] { return log.index_of("alarm meter.read_failed raised") >= 0; }, 5s));
  // The health reaches the host just after the alarm's log line: wait for it rather than race
  // it (under ASan the read came first and saw "degraded"). More polls may have failed by then.
  ASSERT_TRUE(eventually([&] { return info(site, "meter").health == "down"; }, 5s));
  const auto at_alarm = info(site, "meter");
  EXPECT_NE(at_alarm.detail.find("consecutive polls failed"), std::string::npos) << at_alarm.detail;
  const long alarm = log.index_of("alarm meter.read_failed raised");
  EXPECT_NE(log.lines()[static_cast<std::size_t>(alarm)].find("3 consecutive polls failed"), std::string::npos);
  // Exactly fail_after warnings came before the alarm, each after 1 + retries attempts.
  const long p1 = log.index_of("poll failed (1 of 3 before the alarm)");
  const long p2 = log.index_of("poll failed (2 of 3 before the alarm)");
  const long p3 = log.index_of("poll failed (3 of 3 before the alarm)");
  ASSERT_GE(p1, 0);
  EXPECT_LT(p1, p2);
  EXPECT_LT(p2, p3);
  EXPECT_LT(p3, alarm);
  for (const auto& l : log.grep("before the alarm)")) EXPECT_NE(l.find("after 3 attempt(s)"), std::string::npos) << l;
  EXPECT_EQ(log.grep("before the alarm)").size(), 3u) << "no warning per poll once the alarm is up";

  // Let a few more polls fail, then answer again.
  ASSERT_TRUE(eventually([&] { return log.grep("poll failed again").size() >= 2; }, 5s));
  server->set_silent(false);
  ASSERT_TRUE(eventually([&] { return log.index_of("alarm meter.read_failed cleared") >= 0; }, 5s));
  EXPECT_TRUE(eventually([&] { return info(site, "meter").health == "up"; }, 2s));
  // Bounded retries: every failed poll made exactly 1 + retries requests (the poll that was in
  // flight when the meter came back may have made up to two more before it succeeded).
  const auto failed_polls = static_cast<int>(log.grep("before the alarm)").size() + log.grep("poll failed again").size());
  EXPECT_GE(server->silent_requests(), 3 * failed_polls);
  EXPECT_LE(server->silent_requests(), 3 * failed_polls + 2);
  // Readings flow again.
  server->edit([](modbus_mapping_t* m) { m->tab_input_registers[0x401E] = 0x459C, m->tab_input_registers[0x401F] = 0x4000; });
  EXPECT_TRUE(eventually([&] { return log.last("energy_import") == 5000000.0; }, 5s));
  EXPECT_EQ(site.stop(), 0);
}

// stop() returns promptly even while a request is waiting for an answer that will not come.
TEST(SensorModbus, StopIsPromptDuringABlockedRead) {
  auto server = ModbusServer::tcp();
  server->set_silent(true);
  TempDir dir;
  RunningSite site(dir, site_with(tcp_instance("meter", server->port(), "model: eastron-sdm630", [] {
                                    Options o;
                                    o.timeout_ms = 10000;
                                    return o;
                                  }())), plugin_dirs());
  ASSERT_TRUE(eventually([&] { return site.runtime().ready() && server->silent_requests() >= 1; }, 5s));
  std::this_thread::sleep_for(pilecore::test::time_scale()(50ms));  // the driver thread is now inside the 10 s wait
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(site.stop(), 0);
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_LT(took, test::time_scale()(1s)) << "stop waited " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms";
}

// The session engine with a real Modbus meter: the session's energy is the difference of the
// meter's import register; when the meter stops answering, the session stops on the last good
// reading and the connector goes Faulted until the meter answers again.
TEST(SensorModbus, AMeterThatStopsAnsweringFaultsTheConnectorAndStopsTheSessionSafely) {
  auto server = ModbusServer::tcp();
  server->serve_map(read_map(kMeters / "chint-dtsu666.yaml"), value_for);
  const auto set_kwh = [&](std::uint16_t hi, std::uint16_t lo) {
    server->edit([&](modbus_mapping_t* m) { m->tab_input_registers[0x401E] = hi, m->tab_input_registers[0x401F] = lo; });
  };
  set_kwh(0x459C, 0x4000);  // 5000.0 kWh
  TempDir dir;
  RunningSite site(dir, R"(site: {id: MB-SESS, name: Modbus session, location: {lat: 31.2, lon: 121.5}, timezone: Asia/Shanghai}
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000, meter: meter}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
    config: {arrive_after_s: 0, ev_ready_delay_ms: 0}
)" + tcp_instance("meter", server->port(), "model: chint-dtsu666", [] {
                     Options o;
                     o.timeout_ms = 100;
                     o.instance = "    connector: 1\n";
                     o.config = "      retries: 1\n      fail_after: 2\n";
                     return o;
                   }()) + sim_payment_and_flat_tariff() +
                       // The test moves the register 1 kWh at once, faster than 60 kW can: allowed.
                       "charging: {meter_tolerance_wh: 1000}\n",
                   plugin_dirs());
  const auto request = [&](const nlohmann::json& req) {
    std::promise<nlohmann::json> p;
    auto f = p.get_future();
    site.runtime().dispatch([&] { site.runtime().handle_request(req, [&p](nlohmann::json r) { p.set_value(std::move(r)); }); });
    return f.get();
  };
  const auto connector = [&] { return request({{"cmd", "status"}})["connectors"][0]; };
  ASSERT_TRUE(eventually([&] { return site.runtime().ready() && connector()["status"] == "Preparing"; }, 5s));
  const auto started = request({{"cmd", "session_start"}, {"connector", 1}, {"token", "card:0451"}});
  ASSERT_TRUE(started.value("ok", false)) << started.dump();
  EXPECT_EQ(started["meter_start_wh"], 5000000) << "the meter's register, in Wh";
  set_kwh(0x459C, 0x4800);  // 5001.0 kWh
  ASSERT_TRUE(eventually([&] { return connector().value("meter_wh", 0) == 5001000; }, 5s));

  server->set_silent(true);
  ASSERT_TRUE(eventually([&] { return connector()["status"] == "Faulted"; }, 5s)) << connector().dump();
  nlohmann::json receipt;
  ASSERT_TRUE(eventually([&] {
    receipt = request({{"cmd", "receipt"}, {"transaction", started["transaction"]}});
    return receipt.value("status", "") == "closed";
  }, 5s)) << receipt.dump();
  EXPECT_EQ(receipt["stop_reason"], "Fault");
  EXPECT_EQ(receipt["meter_stop_wh"], 5001000) << "billed on the last good reading";
  EXPECT_EQ(receipt["energy_wh"], 1000);
  EXPECT_EQ(receipt["total_fen"], 150) << "1 kWh at 0.6950 + 0.8000 yuan";
  EXPECT_EQ(request({{"cmd", "session_start"}, {"connector", 1}})["ok"], false) << "no session on a connector without a meter";

  server->set_silent(false);
  EXPECT_TRUE(eventually([&] { return connector()["status"] == "Finishing"; }, 5s)) << "the meter answers: the vehicle is still plugged in";
  EXPECT_EQ(site.stop(), 0);
}

// ---------------------------------------------------------------------------------------------
// A lying meter (issue 10 §1): real sessions through the Runtime, billed from a DTSU666 served
// by a real libmodbus server whose import register misbehaves on command. What is billed must
// be exactly the difference of two readings the meter honestly held, and what is captured must
// be that bill, never the pre-authorisation.

namespace {

/// The default logger (the session engine's) captured for the test's duration.
class CoreLog {
 public:
  CoreLog() : previous_(spdlog::default_logger()), sink_(std::make_shared<pilecore::test::CaptureSink>()) {
    auto logger = std::make_shared<spdlog::logger>("core-capture", sink_);
    logger->set_level(spdlog::level::trace);
    spdlog::set_default_logger(logger);
  }
  ~CoreLog() { spdlog::set_default_logger(previous_); }
  CoreLog(const CoreLog&) = delete;
  CoreLog& operator=(const CoreLog&) = delete;
  std::size_t count(std::string_view needle) {
    const auto lines = sink_->lines();
    return static_cast<std::size_t>(std::count_if(lines.begin(), lines.end(), [&](const std::string& l) { return l.find(needle) != std::string::npos; }));
  }

 private:
  std::shared_ptr<spdlog::logger> previous_;
  std::shared_ptr<pilecore::test::CaptureSink> sink_;
};

enum class Lie { none, spike, random_words, negative, reset_to_zero, nan };

/// A DTSU666 measuring a vehicle: its register counts the energy that flows (at the rate the
/// test sets), or, while told to lie, holds something else. Written every 20 ms.
class LyingMeter {
 public:
  explicit LyingMeter(double start_wh) : server_(ModbusServer::tcp()), true_wh_(start_wh) {
    for (const auto& e : read_map(kMeters / "chint-dtsu666.yaml")) {
      if (e.channel == "energy_import") entry_ = e;
    }
    write();
    thread_ = std::thread([this] {
      while (!stop_) {
        std::this_thread::sleep_for(pilecore::test::time_scale()(20ms));
        std::lock_guard lock(mutex_);
        true_wh_ += rate_ * 0.02;
        write();
      }
    });
  }
  ~LyingMeter() {
    stop_ = true;
    thread_.join();
  }
  LyingMeter(const LyingMeter&) = delete;
  LyingMeter& operator=(const LyingMeter&) = delete;

  [[nodiscard]] int port() const { return server_->port(); }
  void flow(double wh_per_s) {
    std::lock_guard lock(mutex_);
    rate_ = wh_per_s;
  }
  void lie(Lie l) {
    std::lock_guard lock(mutex_);
    lie_ = l;
    write();
  }
  /// What the plugin publishes for the true count now (Wh, float32 kWh rounded as it rounds).
  [[nodiscard]] double honest() {
    std::lock_guard lock(mutex_);
    return honest_;
  }

 private:
  void write() {
    server_->edit([&](modbus_mapping_t* m) {
      switch (lie_) {
        case Lie::none: honest_ = encode(m, entry_, true_wh_); break;
        case Lie::spike: encode(m, entry_, 1e12); break;  // 1e9 kWh
        case Lie::random_words: {
          m->tab_input_registers[entry_.address] = static_cast<std::uint16_t>(rng_());
          m->tab_input_registers[entry_.address + 1] = static_cast<std::uint16_t>(rng_());
          break;
        }
        case Lie::negative: encode(m, entry_, -5000); break;
        case Lie::reset_to_zero: encode(m, entry_, 0); break;
        case Lie::nan: put32(m->tab_input_registers, entry_, 0x7FC00000u); break;
      }
    });
  }

  std::unique_ptr<ModbusServer> server_;
  MapEntry entry_;
  std::mutex mutex_;
  double true_wh_;
  double honest_ = 0;
  double rate_ = 0;
  Lie lie_ = Lie::none;
  std::minstd_rand rng_{20260310};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

/// One connector of 360 kW (the register may move 100 Wh a second) with a sim-power vehicle,
/// billed from `meter`; 69.50 + 80.00 fen/kWh, 300 yuan pre-authorised.
class LyingSite {
 public:
  LyingSite(LyingMeter& meter, const std::string& charging, int fail_after = 1000)
      : site_(dir_,
              R"(site: {id: LIE, name: Lying meter, location: {lat: 31.2, lon: 121.5}, timezone: Asia/Shanghai}
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 360000, meter: meter}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
    config: {arrive_after_s: 0, ev_ready_delay_ms: 0}
)" + tcp_instance("meter", meter.port(), "model: chint-dtsu666", [&] {
                Options o;
                o.timeout_ms = 200;
                o.instance = "    connector: 1\n";
                o.config = "      retries: 0\n      fail_after: " + std::to_string(fail_after) + "\n";
                return o;
              }()) + sim_payment_and_flat_tariff(30000) +
                  "charging:\n" + charging,
              plugin_dirs()) {}

  nlohmann::json request(const nlohmann::json& req) {
    std::promise<nlohmann::json> p;
    auto f = p.get_future();
    site_.runtime().dispatch([&] { site_.runtime().handle_request(req, [&p](nlohmann::json r) { p.set_value(std::move(r)); }); });
    return f.get();
  }
  nlohmann::json connector() { return request({{"cmd", "status"}})["connectors"][0]; }
  bool ready() { return site_.runtime().ready() && connector()["status"] == "Preparing"; }
  /// Waits until the engine's latest plausible reading is `wh`.
  bool reads(double wh) {
    return eventually([&] { return connector().value("meter_wh", std::int64_t{-1}) == static_cast<std::int64_t>(wh); }, 5s);
  }
  nlohmann::json closed(const std::string& txn) {
    nlohmann::json r;
    eventually([&] {
      r = request({{"cmd", "receipt"}, {"transaction", txn}});
      // Closed, and its capture (an operation of its own, asked once the close is on disk) answered.
      return r.value("status", "") == "closed" && r.value("capture_status", "") != "pending";
    }, 10s);
    return r;
  }
  int stop() { return site_.stop(); }

 private:
  TempDir dir_;
  RunningSite site_;
};

/// The bill of `wh` at 69.50 + 80.00 fen/kWh, each component rounded half up to the fen.
std::int64_t fen_for(std::int64_t wh) {
  const auto half_up = [](std::int64_t hundredths_fen_times_kwh) { return (hundredths_fen_times_kwh + 50'000) / 100'000; };
  return half_up(wh * 6950) + half_up(wh * 8000);
}

void expect_billed(const nlohmann::json& receipt, double start_wh, double stop_wh, const std::string& reason) {
  ASSERT_EQ(receipt.value("status", ""), "closed") << receipt.dump();
  EXPECT_EQ(receipt["stop_reason"], reason);
  EXPECT_EQ(receipt["meter_start_wh"], static_cast<std::int64_t>(start_wh)) << "billed from a reading the meter honestly held";
  EXPECT_EQ(receipt["meter_stop_wh"], static_cast<std::int64_t>(stop_wh)) << "billed to a reading the meter honestly held";
  const auto energy = static_cast<std::int64_t>(stop_wh - start_wh);
  EXPECT_EQ(receipt["energy_wh"], energy);
  EXPECT_EQ(receipt["total_fen"], fen_for(energy));
  EXPECT_EQ(receipt["captured_fen"], fen_for(energy)) << "the bill is captured, not the pre-authorisation";
  EXPECT_LT(receipt["captured_fen"].get<std::int64_t>(), 30000);
}

}  // namespace

// The register lies for a while in the middle of a session, then reads true again; too briefly
// to fault (meter_fault_after is high here). Not one lie is billed: the session's energy is the
// honest stop reading minus the honest start reading, whoever refused the lies (the plugin for
// what is outside the register's range or no number, the core's guard for the rest).
TEST(LyingMeter, ALieInTheMiddleOfASessionIsNeverBilled) {
  for (Lie lie : {Lie::spike, Lie::random_words, Lie::negative, Lie::reset_to_zero, Lie::nan}) {
    SCOPED_TRACE(static_cast<int>(lie));
    CoreLog core;
    LyingMeter meter(5'000'000);
    InstanceLog plugin("sensor:sensor-modbus:meter");
    LyingSite site(meter, "  meter_fault_after: 1000\n");
    ASSERT_TRUE(eventually([&] { return site.ready(); }, 5s));
    const double start = meter.honest();
    ASSERT_TRUE(site.reads(start));
    const auto started = site.request({{"cmd", "session_start"}, {"connector", 1}, {"token", "card:0451"}});
    ASSERT_TRUE(started.value("ok", false)) << started.dump();
    EXPECT_EQ(started["meter_start_wh"], static_cast<std::int64_t>(start));

    meter.flow(50);  // 180 kW
    std::this_thread::sleep_for(pilecore::test::time_scale()(500ms));
    meter.lie(lie);
    std::this_thread::sleep_for(pilecore::test::time_scale()(600ms));  // six polls
    meter.lie(Lie::none);
    std::this_thread::sleep_for(pilecore::test::time_scale()(500ms));
    meter.flow(0);
    const double end = meter.honest();
    ASSERT_TRUE(site.reads(end)) << site.connector().dump();
    EXPECT_GT(end - start, 50) << "energy flowed";

    const auto stopped = site.request({{"cmd", "session_stop"}, {"connector", 1}});
    ASSERT_TRUE(stopped.value("ok", false)) << stopped.dump();
    expect_billed(site.closed(started["transaction"]), start, end, "Local");
    const auto refused_by_core = core.count("implausible reading not billed");
    const auto refused_by_plugin = plugin.grep("poll failed").size();
    EXPECT_GE(refused_by_core + refused_by_plugin, 4u) << "the lie was seen and refused at every poll";
    if (lie == Lie::spike || lie == Lie::reset_to_zero) {
      EXPECT_GE(refused_by_core, 4u) << "in the register's range: the core's guard refuses it";
    }
    if (lie == Lie::negative || lie == Lie::nan) {
      EXPECT_GE(refused_by_plugin, 4u) << "outside the register's range: the plugin refuses it";
    }
    EXPECT_EQ(site.stop(), 0);
  }
}

// A lie that goes on: after meter_fault_after implausible readings in a row the session stops as
// Fault, billed to the last plausible reading, and the connector is Faulted (no session starts)
// until the meter reads plausibly again. The issue's "reset to 0 held until the stop" billed 0 Wh
// for 290 Wh with charging going on indefinitely.
TEST(LyingMeter, ALieThatGoesOnStopsTheSessionAsFaultBilledToTheLastPlausibleReading) {
  for (Lie lie : {Lie::spike, Lie::reset_to_zero}) {
    SCOPED_TRACE(static_cast<int>(lie));
    CoreLog core;
    LyingMeter meter(5'000'000);
    LyingSite site(meter, "  meter_fault_after: 3\n");
    ASSERT_TRUE(eventually([&] { return site.ready(); }, 5s));
    const double start = meter.honest();
    ASSERT_TRUE(site.reads(start));
    const auto started = site.request({{"cmd", "session_start"}, {"connector", 1}, {"token", "card:0451"}});
    ASSERT_TRUE(started.value("ok", false)) << started.dump();
    meter.flow(50);
    std::this_thread::sleep_for(pilecore::test::time_scale()(500ms));
    meter.flow(0);
    const double last_plausible = meter.honest();
    ASSERT_TRUE(site.reads(last_plausible));
    meter.flow(50);  // the vehicle keeps drawing: this energy is lost, not invented
    meter.lie(lie);
    ASSERT_TRUE(eventually([&] { return site.connector()["status"] == "Faulted"; }, 5s)) << site.connector().dump();
    expect_billed(site.closed(started["transaction"]), start, last_plausible, "Fault");
    EXPECT_GE(core.count("implausible reading not billed"), 3u);
    const auto refused = site.request({{"cmd", "session_start"}, {"connector", 1}});
    EXPECT_FALSE(refused.value("ok", true)) << "no session on a meter that lies";
    EXPECT_NE(refused.value("error", "").find("Faulted"), std::string::npos) << refused.dump();
    // It says since when, in the site's time with its offset, and why.
    EXPECT_TRUE(std::regex_search(refused.value("error", ""),
                                  std::regex(R"(is Faulted since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d\d:\d\d \(meter '[^']+' .+\): a session cannot start)")))
        << refused.dump();

    // The meter reads true again: the connector leaves Faulted (the vehicle is still plugged in),
    // and the next session is billed right.
    meter.flow(0);
    meter.lie(Lie::none);
    ASSERT_TRUE(eventually([&] { return site.connector()["status"] == "Finishing"; }, 5s)) << site.connector().dump();
    EXPECT_GE(core.count("reads plausibly again"), 1u);
    const double start2 = meter.honest();
    ASSERT_TRUE(site.reads(start2));
    const auto again = site.request({{"cmd", "session_start"}, {"connector", 1}});
    ASSERT_TRUE(again.value("ok", false)) << again.dump();
    meter.flow(50);
    std::this_thread::sleep_for(pilecore::test::time_scale()(400ms));
    meter.flow(0);
    const double end2 = meter.honest();
    ASSERT_TRUE(site.reads(end2));
    ASSERT_TRUE(site.request({{"cmd", "session_stop"}, {"connector", 1}}).value("ok", false));
    expect_billed(site.closed(again["transaction"]), start2, end2, "Local");
    EXPECT_EQ(site.stop(), 0);
  }
}

// A negative value at the start: no transaction opens on it (the pre-authorisation is released),
// and once the meter reads true a session starts and is billed from the true reading.
TEST(LyingMeter, ANegativeStartReadingOpensNoTransaction) {
  CoreLog core;
  LyingMeter meter(5'000'000);
  LyingSite site(meter, "  meter_timeout_ms: 800\n");
  ASSERT_TRUE(eventually([&] { return site.ready(); }, 5s));
  meter.lie(Lie::negative);
  std::this_thread::sleep_for(pilecore::test::time_scale()(300ms));
  const auto refused = site.request({{"cmd", "session_start"}, {"connector", 1}, {"token", "card:0451"}});
  EXPECT_FALSE(refused.value("ok", true)) << refused.dump();
  EXPECT_NE(refused.value("error", "").find("no plausible reading; authorisation released"), std::string::npos) << refused.dump();
  EXPECT_FALSE(site.connector().contains("session"));

  meter.lie(Lie::none);
  const double start = meter.honest();
  ASSERT_TRUE(site.reads(start));
  const auto started = site.request({{"cmd", "session_start"}, {"connector", 1}, {"token", "card:0451"}});
  ASSERT_TRUE(started.value("ok", false)) << started.dump();
  meter.flow(50);
  std::this_thread::sleep_for(pilecore::test::time_scale()(400ms));
  meter.flow(0);
  const double end = meter.honest();
  ASSERT_TRUE(site.reads(end));
  ASSERT_TRUE(site.request({{"cmd", "session_stop"}, {"connector", 1}}).value("ok", false));
  expect_billed(site.closed(started["transaction"]), start, end, "Local");
  EXPECT_EQ(site.stop(), 0);
}

// A register that holds while the power stage reports power: after meter_stall_ms the session
// stops as Fault, billed to the held reading; it does not run on for free.
TEST(LyingMeter, ARegisterThatHoldsWhilePowerFlowsStopsTheSession) {
  CoreLog core;
  LyingMeter meter(5'000'000);
  LyingSite site(meter, "  meter_stall_ms: 1000\n  meter_stall_power_w: 1000\n");
  ASSERT_TRUE(eventually([&] { return site.ready(); }, 5s));
  const double start = meter.honest();
  ASSERT_TRUE(site.reads(start));
  const auto started = site.request({{"cmd", "session_start"}, {"connector", 1}, {"token", "card:0451"}});
  ASSERT_TRUE(started.value("ok", false)) << started.dump();
  ASSERT_TRUE(eventually([&] { return site.connector().value("power_w", 0) > 1000; }, 5s)) << site.connector().dump();
  meter.flow(50);
  std::this_thread::sleep_for(pilecore::test::time_scale()(500ms));
  meter.flow(0);  // the vehicle still draws 60 kW; the register stops counting
  const double held = meter.honest();
  expect_billed(site.closed(started["transaction"]), start, held, "Fault");
  EXPECT_GE(core.count("while the power stage reports 60000 W"), 1u);
  EXPECT_EQ(site.stop(), 0);
}
