#include "rak3172_sim.hpp"

#include "raw_pty.hpp"
#include <fcntl.h>
#include <poll.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <optional>
#include <stdexcept>

namespace pilecore::sim {

namespace {

std::optional<int> to_int(std::string_view s) {
  int v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

std::optional<std::vector<std::uint8_t>> from_hex(std::string_view s) {
  if (s.size() % 2 != 0) return std::nullopt;
  std::vector<std::uint8_t> out;
  for (std::size_t i = 0; i < s.size(); i += 2) {
    unsigned v = 0;
    const auto [p, ec] = std::from_chars(s.data() + i, s.data() + i + 2, v, 16);
    if (ec != std::errc() || p != s.data() + i + 2) return std::nullopt;
    out.push_back(static_cast<std::uint8_t>(v));
  }
  return out;
}

std::string to_hex_upper(const std::vector<std::uint8_t>& b) {
  std::string s;
  char x[3];
  for (auto c : b) {
    std::snprintf(x, sizeof x, "%02X", c);
    s += x;
  }
  return s;
}

bool is_hex_of(std::string_view s, std::size_t digits) { return s.size() == digits && from_hex(s).has_value(); }

}  // namespace

Rak3172Sim::Rak3172Sim() {
  const pilecore::sim::RawPty pty = pilecore::sim::open_raw_pty();
  master_ = pty.master;
  slave_ = pty.slave;
  device_ = pty.device;
  if (::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) {
    ::close(master_);
    ::close(slave_);
    throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
  }
  // The module's defaults (RUI3): LoRaWAN mode, OTAA, unconfirmed, DR0, no ADR.
  settings_ = {{"NWM", "1"}, {"NJM", "1"}, {"CFM", "0"}, {"DR", "0"}, {"ADR", "0"}, {"CLASS", "A"}, {"BAND", "4"}};
  thread_ = std::thread([this] { run(); });
}

Rak3172Sim::~Rak3172Sim() {
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
  }
  const char c = 1;
  [[maybe_unused]] auto n = ::write(wake_[1], &c, 1);
  if (thread_.joinable()) thread_.join();
  ::close(master_);
  ::close(slave_);
  ::close(wake_[0]);
  ::close(wake_[1]);
}

void Rak3172Sim::fail_joins(unsigned n) {
  std::lock_guard lock(mutex_);
  join_failures_ = n;
}
void Rak3172Sim::fail_confirmations(unsigned n) {
  std::lock_guard lock(mutex_);
  confirm_failures_ = n;
}
void Rak3172Sim::busy_sends(unsigned n) {
  std::lock_guard lock(mutex_);
  busy_ = n;
}
void Rak3172Sim::queue_downlink(int port, std::vector<std::uint8_t> data) {
  {
    std::lock_guard lock(mutex_);
    if (std::chrono::steady_clock::now() >= rx_open_until_) {
      downlinks_.emplace_back(port, std::move(data));
      return;
    }
    rx_open_until_ = {};  // one downlink per uplink
  }
  emit("+EVT:RX_1:-70:8:UNICAST:" + std::to_string(port) + ":" + to_hex_upper(data));
}
void Rak3172Sim::on_uplink(std::function<void(const Uplink&)> fn) {
  std::lock_guard lock(mutex_);
  on_uplink_ = std::move(fn);
}
void Rak3172Sim::set_rx_window(std::chrono::milliseconds window) {
  std::lock_guard lock(mutex_);
  rx_window_ = window;
}
void Rak3172Sim::set_network_dr(int dr) {
  std::lock_guard lock(mutex_);
  network_dr_ = dr;
}
void Rak3172Sim::set_silent(bool silent) {
  std::lock_guard lock(mutex_);
  silent_ = silent;
}
void Rak3172Sim::forget_session() {
  std::lock_guard lock(mutex_);
  joined_ = false;
}
void Rak3172Sim::emit(std::string_view line) {
  {
    std::lock_guard lock(mutex_);
    outbox_.emplace_back(line);
  }
  const char c = 1;
  [[maybe_unused]] auto n = ::write(wake_[1], &c, 1);
}

std::vector<Rak3172Sim::Uplink> Rak3172Sim::uplinks() const {
  std::lock_guard lock(mutex_);
  return uplinks_;
}
std::vector<std::string> Rak3172Sim::commands() const {
  std::lock_guard lock(mutex_);
  return commands_;
}
unsigned Rak3172Sim::join_attempts() const {
  std::lock_guard lock(mutex_);
  return join_attempts_;
}
bool Rak3172Sim::joined() const {
  std::lock_guard lock(mutex_);
  return joined_;
}
std::string Rak3172Sim::setting(const std::string& name) const {
  std::lock_guard lock(mutex_);
  auto it = settings_.find(name);
  return it == settings_.end() ? std::string() : it->second;
}

void Rak3172Sim::run() {
  std::string buffer;
  for (;;) {
    pollfd fds[2] = {{master_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    const int n = ::poll(fds, 2, -1);
    if (n < 0 && errno != EINTR) return;
    if (fds[1].revents & POLLIN) {
      char drain[64];
      while (::read(wake_[0], drain, sizeof drain) > 0) {
      }
    }
    std::vector<std::string> raw;
    {
      std::lock_guard lock(mutex_);
      if (closed_) return;
      raw.swap(outbox_);
    }
    for (const auto& l : raw) answer(l);
    if (fds[0].revents & POLLIN) {
      char chunk[512];
      const ssize_t got = ::read(master_, chunk, sizeof chunk);
      if (got <= 0) continue;
      buffer.append(chunk, static_cast<std::size_t>(got));
      // A command ends with CR LF; a lone CR or LF ends it too, as on the module.
      for (;;) {
        const auto end = buffer.find_first_of("\r\n");
        if (end == std::string::npos) break;
        std::string line = buffer.substr(0, end);
        buffer.erase(0, end + 1);
        if (!line.empty()) on_line(line);
      }
    }
  }
}

void Rak3172Sim::on_line(const std::string& line) {
  std::vector<std::string> events;
  std::string status;
  std::size_t sent = 0;
  {
    std::lock_guard lock(mutex_);
    commands_.push_back(line);
    if (silent_) return;
    sent = uplinks_.size();
  }
  status = execute(line, events);
  answer(status);
  for (const auto& e : events) answer(e);
  std::function<void(const Uplink&)> network;
  Uplink up;
  {
    std::lock_guard lock(mutex_);
    if (uplinks_.size() == sent || !on_uplink_) return;
    network = on_uplink_;
    up = uplinks_.back();
  }
  network(up);
}

void Rak3172Sim::answer(const std::string& text) {
  const std::string bytes = text + "\r\n";
  pilecore::sim::write_all(master_, bytes.data(), bytes.size());
}

std::size_t Rak3172Sim::max_payload_locked() const {
  // The module's own table (RUI3 appendix): DR0-2 51, DR3 115, DR4-5 242 bytes in both bands.
  const int dr = to_int(settings_.at("DR")).value_or(0);
  static constexpr std::size_t table[] = {51, 51, 51, 115, 242, 242};
  return dr >= 0 && dr <= 5 ? table[dr] : 0;
}

std::string Rak3172Sim::execute(const std::string& line, std::vector<std::string>& events) {
  std::lock_guard lock(mutex_);
  if (line == "AT") return "OK";
  if (!line.starts_with("AT+")) return "AT_ERROR";
  const auto eq = line.find('=');
  if (eq == std::string::npos) return "AT_ERROR";
  const std::string name = line.substr(3, eq - 3);
  const std::string value = line.substr(eq + 1);
  if (value == "?") {
    if (name == "NJS") return std::string("AT+NJS=") + (joined_ ? "1" : "0") + "\r\nOK";
    auto it = settings_.find(name);
    if (it == settings_.end()) return "AT_ERROR";
    return "AT+" + name + "=" + it->second + "\r\nOK";
  }
  auto flag = [&](std::string_view v) { return v == "0" || v == "1"; };
  if (name == "NWM" || name == "NJM" || name == "ADR" || name == "CFM") {
    if (!flag(value)) return "AT_PARAM_ERROR";
  } else if (name == "BAND") {
    const auto b = to_int(value);
    if (!b || *b < 0 || *b > 12) return "AT_PARAM_ERROR";
  } else if (name == "DR") {
    const auto d = to_int(value);
    if (!d || *d < 0 || *d > 5) return "AT_PARAM_ERROR";
  } else if (name == "DEVEUI" || name == "APPEUI") {
    if (!is_hex_of(value, 16)) return "AT_PARAM_ERROR";
  } else if (name == "APPKEY") {
    if (!is_hex_of(value, 32)) return "AT_PARAM_ERROR";
  } else if (name == "CLASS") {
    if (value != "A" && value != "B" && value != "C") return "AT_PARAM_ERROR";
  } else if (name == "JOIN") {
    // AT+JOIN=<join>:<auto-join>:<interval 7-255>:<attempts 0-255>
    std::vector<std::string> f;
    for (std::size_t s = 0;;) {
      const auto c = value.find(':', s);
      f.push_back(value.substr(s, c == std::string::npos ? std::string::npos : c - s));
      if (c == std::string::npos) break;
      s = c + 1;
    }
    if (f.size() != 4 || !flag(f[0]) || !flag(f[1])) return "AT_PARAM_ERROR";
    const auto interval = to_int(f[2]), attempts = to_int(f[3]);
    if (!interval || *interval < 7 || *interval > 255 || !attempts || *attempts < 0 || *attempts > 255) return "AT_PARAM_ERROR";
    if (f[0] == "0") return "OK";
    if (settings_["NWM"] != "1" || settings_["NJM"] != "1" || !settings_.contains("DEVEUI") || !settings_.contains("APPEUI") ||
        !settings_.contains("APPKEY")) {
      return "AT_ERROR";
    }
    ++join_attempts_;
    fcnt_ = 0;
    if (join_failures_ > 0) {
      --join_failures_;
      events.emplace_back("+EVT:JOIN_FAILED_RX_TIMEOUT");
    } else {
      joined_ = true;
      events.emplace_back("+EVT:JOINED");
    }
    return "OK";
  } else if (name == "SEND") {
    const auto colon = value.find(':');
    if (colon == std::string::npos) return "AT_PARAM_ERROR";
    const auto port = to_int(value.substr(0, colon));
    auto data = from_hex(value.substr(colon + 1));
    if (!port || *port < 1 || *port > 223 || !data || data->empty()) return "AT_PARAM_ERROR";
    if (!joined_) return "AT_NO_NETWORK_JOINED";
    if (busy_ > 0) {
      --busy_;
      return "AT_BUSY_ERROR";
    }
    if (data->size() > max_payload_locked()) return "AT_PARAM_ERROR";
    const bool confirmed = settings_["CFM"] == "1";
    uplinks_.push_back({*port, std::move(*data), confirmed, to_int(settings_["DR"]).value_or(0), fcnt_++});
    if (confirmed) {
      if (confirm_failures_ > 0) {
        --confirm_failures_;
        events.emplace_back("+EVT:SEND_CONFIRMED_FAILED(4)");
      } else {
        events.emplace_back("+EVT:SEND_CONFIRMED_OK");
      }
    } else {
      events.emplace_back("+EVT:TX_DONE");
    }
    // Class A: a queued downlink arrives in RX1 after this uplink, reported after the result.
    if (!downlinks_.empty()) {
      auto [dport, ddata] = std::move(downlinks_.front());
      downlinks_.pop_front();
      events.push_back("+EVT:RX_1:-70:8:UNICAST:" + std::to_string(dport) + ":" + to_hex_upper(ddata));
      rx_open_until_ = {};
    } else {
      rx_open_until_ = std::chrono::steady_clock::now() + rx_window_;
    }
    if (network_dr_ >= 0 && settings_["ADR"] == "1") {
      settings_["DR"] = std::to_string(network_dr_);
      network_dr_ = -1;
    }
    return "OK";
  } else {
    return "AT_ERROR";
  }
  settings_[name] = value;
  return "OK";
}

}  // namespace pilecore::sim
