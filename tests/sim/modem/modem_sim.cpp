#include "modem_sim.hpp"

#include "raw_pty.hpp"
#include <fcntl.h>
#include <poll.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace pilecore::sim {

namespace {

std::string cme(int cmee, int code, const char* text) {
  if (cmee == 2) return std::string("+CME ERROR: ") + text + "\r\n";
  if (cmee == 1) return "+CME ERROR: " + std::to_string(code) + "\r\n";
  return "ERROR\r\n";
}

}  // namespace

ModemSim::ModemSim(Settings settings) : s_(std::move(settings)) {
  const pilecore::sim::RawPty pty = pilecore::sim::open_raw_pty();
  master_ = pty.master;
  slave_ = pty.slave;
  device_ = pty.device;
  if (::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) {
    ::close(master_);
    ::close(slave_);
    throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
  }
  thread_ = std::thread([this] { run(); });
}

ModemSim::~ModemSim() {
  closing_ = true;
  const char c = 1;
  [[maybe_unused]] auto n = ::write(wake_[1], &c, 1);
  if (thread_.joinable()) thread_.join();
  ::close(master_);
  ::close(slave_);
  ::close(wake_[0]);
  ::close(wake_[1]);
}

void ModemSim::update(const std::function<void(Settings&)>& change) {
  std::lock_guard lock(mutex_);
  change(s_);
}

void ModemSim::inject(const std::string& bytes) {
  std::lock_guard lock(mutex_);
  write_all(bytes);
}

void ModemSim::inject_before_next_answer(const std::string& bytes) {
  std::lock_guard lock(mutex_);
  before_next_ += bytes;
}

unsigned ModemSim::count(const std::string& command) const {
  std::lock_guard lock(mutex_);
  auto it = counts_.find(command);
  return it == counts_.end() ? 0 : it->second;
}

void ModemSim::write_all(const std::string& bytes) {
  std::size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n = ::write(master_, bytes.data() + sent, bytes.size() - sent);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    sent += static_cast<std::size_t>(n);
  }
}

void ModemSim::run() {
  std::string line;
  while (!closing_) {
    pollfd fds[2] = {{master_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0 && errno != EINTR) return;
    if (closing_) return;
    if ((fds[0].revents & POLLIN) == 0) continue;
    char chunk[256];
    const ssize_t got = ::read(master_, chunk, sizeof chunk);
    if (got <= 0) continue;
    for (ssize_t i = 0; i < got; ++i) {
      const char c = chunk[i];
      if (c == '\n') continue;
      if (c != '\r') {
        line.push_back(c);
        continue;
      }
      std::lock_guard lock(mutex_);
      const std::string cmd = line;
      line.clear();
      if (cmd.empty()) continue;
      ++counts_[cmd];
      if (s_.mute) continue;
      std::string out = std::move(before_next_);
      before_next_.clear();
      if (echo_) out += cmd + "\r\n";
      out += answer(cmd);
      write_all(out);
    }
  }
}

// Called with the mutex held.
std::string ModemSim::answer(const std::string& cmd) {
  const std::string ok = "\r\nOK\r\n";
  const int stat = radio_on_ ? s_.stat : 0;
  const bool registered = stat == 1 || stat == 5;
  if (cmd == "AT") return ok;
  if (cmd == "ATE0" || cmd == "ATE1") {
    echo_ = cmd == "ATE1";
    return ok;
  }
  if (cmd.rfind("AT+CMEE=", 0) == 0) {
    cmee_ = std::atoi(cmd.c_str() + 8);
    return ok;
  }
  const bool needs_sim = cmd == "AT+CPIN?" || cmd == "AT+CIMI" || cmd == "AT+QCCID";
  if (needs_sim && !s_.sim_present) return "\r\n" + cme(cmee_, 10, "SIM not inserted");
  if (cmd == "AT+CPIN?") return "\r\n+CPIN: READY\r\n" + ok;
  if (cmd == "AT+CIMI") return "\r\n" + s_.imsi + "\r\n" + ok;
  if (cmd == "AT+QCCID") return "\r\n+QCCID: " + s_.iccid + "\r\n" + ok;
  if (cmd == "AT+GSN" || cmd == "AT+CGSN") return "\r\n" + s_.imei + "\r\n" + ok;
  if (cmd == "AT+CFUN?") return std::string("\r\n+CFUN: ") + (radio_on_ ? "1" : "0") + "\r\n" + ok;
  if (cmd == "AT+CFUN=0") {
    radio_on_ = false;
    return ok;
  }
  if (cmd == "AT+CFUN=1") {
    radio_on_ = true;
    if (s_.stat_after_reattach >= 0) s_.stat = s_.stat_after_reattach;
    return ok;
  }
  const bool nr_sa = s_.rat == "NR5G-SA";
  if (cmd == "AT+C5GREG?") return "\r\n+C5GREG: 0," + std::to_string(nr_sa || !registered ? stat : 0) + "\r\n" + ok;
  if (cmd == "AT+CEREG?") return "\r\n+CEREG: 0," + std::to_string(!nr_sa || !registered ? stat : 0) + "\r\n" + ok;
  if (cmd == "AT+QENG=\"servingcell\"") {
    if (!registered) return "\r\n+QENG: \"servingcell\",\"SEARCH\"\r\n" + ok;
    const std::string r = std::to_string(s_.rsrp), q = std::to_string(s_.rsrq), n = std::to_string(s_.sinr);
    if (s_.rat == "LTE") {
      return "\r\n+QENG: \"servingcell\",\"NOCONN\",\"LTE\",\"FDD\",460,01,5A3B2C1,123,1650,3,5,5,2A3B," + r + "," + q + ",-60," + n +
             ",12,-,45\r\n" + ok;
    }
    if (s_.rat == "EN-DC") {
      return "\r\n+QENG: \"servingcell\",\"CONNECT\"\r\n+QENG: \"LTE\",\"FDD\",460,01,5A3B2C1,123,1650,3,5,5,2A3B,-95,-10,-62,20,12,-,45\r\n"
             "+QENG: \"NR5G-NSA\",460,01,501," + r + "," + n + "," + q + ",627264,78\r\n" + ok;
    }
    return "\r\n+QENG: \"servingcell\",\"NOCONN\",\"NR5G-SA\",\"TDD\",460,01,1A2B3C4D5,501,2A3B,504990,41,12," + r + "," + q + "," + n + ",1,-\r\n" + ok;
  }
  return "\r\nERROR\r\n";
}

}  // namespace pilecore::sim
