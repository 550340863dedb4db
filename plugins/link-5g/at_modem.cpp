#include "at_modem.hpp"

#include "serial_speed.hpp"
#include <fcntl.h>
#include <poll.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <stdexcept>

namespace pilecore::link5g {

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::optional<long long> to_integer(std::string_view s) {
  s = trim(s);
  if (s.empty() || s == "-") return std::nullopt;
  long long v = 0;
  const auto* end = s.data() + s.size();
  auto [p, ec] = std::from_chars(s.data(), end, v);
  if (ec != std::errc() || p != end) return std::nullopt;
  return v;
}

/// A field that must be a number or "-" (invalid); anything else makes the answer malformed.
bool optional_number(const std::vector<std::string>& f, std::size_t i, std::optional<long long>& out) {
  if (i >= f.size()) return false;
  if (f[i] == "-" || f[i].empty()) {
    out.reset();
    return true;
  }
  out = to_integer(f[i]);
  return out.has_value();
}

std::optional<int> narrow(const std::optional<long long>& v) {
  if (!v || *v < -1000 || *v > 1000) return std::nullopt;
  return static_cast<int>(*v);
}

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

}  // namespace

std::vector<std::string> split_fields(std::string_view line) {
  const auto colon = line.find(':');
  if (colon != std::string_view::npos) line.remove_prefix(colon + 1);
  std::vector<std::string> out;
  std::string cur;
  bool quoted = false;
  for (char c : line) {
    if (c == '"') {
      quoted = !quoted;
    } else if (c == ',' && !quoted) {
      out.emplace_back(trim(cur));
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  out.emplace_back(trim(cur));
  return out;
}

std::optional<ServingCell> parse_serving_cell(const std::vector<std::string>& lines) {
  ServingCell cell;
  bool seen = false;
  for (const auto& line : lines) {
    if (!starts_with(line, "+QENG:")) continue;
    const auto f = split_fields(line);
    if (f.empty()) return std::nullopt;
    std::optional<long long> rsrp, rsrq, sinr;
    if (f[0] == "servingcell") {
      seen = true;
      if (f.size() < 2) return std::nullopt;
      cell.state = f[1];
      if (f.size() == 2) continue;  // SEARCH, or the first line of EN-DC (the RATs follow)
      cell.rat = f[2];
      if (cell.rat == "NR5G-SA") {
        // "servingcell",state,"NR5G-SA",duplex,MCC,MNC,cellID,PCID,TAC,ARFCN,band,bw,RSRP,RSRQ,SINR,scs,srxlev
        if (f.size() < 15 || !optional_number(f, 12, rsrp) || !optional_number(f, 13, rsrq) || !optional_number(f, 14, sinr)) return std::nullopt;
        cell.mcc = f[4];
        cell.mnc = f[5];
        cell.rsrp_dbm = narrow(rsrp);
        cell.rsrq_db = narrow(rsrq);
        if (sinr) cell.sinr_db = static_cast<double>(*sinr);
      } else if (cell.rat == "LTE") {
        // "servingcell",state,"LTE",is_tdd,MCC,MNC,cellID,PCID,earfcn,band,ul_bw,dl_bw,TAC,RSRP,RSRQ,RSSI,SINR,...
        if (f.size() < 17 || !optional_number(f, 13, rsrp) || !optional_number(f, 14, rsrq) || !optional_number(f, 16, sinr)) return std::nullopt;
        cell.mcc = f[4];
        cell.mnc = f[5];
        cell.rsrp_dbm = narrow(rsrp);
        cell.rsrq_db = narrow(rsrq);
        // LTE reports SINR as a code; the Network Application Note converts it as 2X - 20 dB.
        if (sinr) cell.sinr_db = 2.0 * static_cast<double>(*sinr) - 20.0;
      } else if (cell.rat != "WCDMA" && cell.rat != "GSM") {
        return std::nullopt;
      }
    } else if (f[0] == "LTE") {
      // EN-DC anchor: "LTE",is_tdd,MCC,MNC,cellID,PCID,earfcn,band,ul_bw,dl_bw,TAC,RSRP,RSRQ,RSSI,SINR,...
      if (f.size() < 15 || !optional_number(f, 11, rsrp) || !optional_number(f, 12, rsrq) || !optional_number(f, 14, sinr)) return std::nullopt;
      if (cell.rat.empty()) {  // the NR leg, when it follows, describes the radio better
        cell.rat = "LTE";
        cell.mcc = f[2];
        cell.mnc = f[3];
        cell.rsrp_dbm = narrow(rsrp);
        cell.rsrq_db = narrow(rsrq);
        if (sinr) cell.sinr_db = 2.0 * static_cast<double>(*sinr) - 20.0;
      }
    } else if (f[0] == "NR5G-NSA") {
      // EN-DC NR leg; its order differs from SA: "NR5G-NSA",MCC,MNC,PCID,RSRP,SINR,RSRQ,ARFCN,band,...
      if (f.size() < 7 || !optional_number(f, 4, rsrp) || !optional_number(f, 5, sinr) || !optional_number(f, 6, rsrq)) return std::nullopt;
      cell.rat = "NR5G-NSA";
      cell.mcc = f[1];
      cell.mnc = f[2];
      cell.rsrp_dbm = narrow(rsrp);
      cell.rsrq_db = narrow(rsrq);
      cell.sinr_db = sinr ? std::optional<double>(static_cast<double>(*sinr)) : std::nullopt;
    } else {
      return std::nullopt;
    }
  }
  if (!seen) return std::nullopt;
  return cell;
}

std::optional<int> parse_registration(std::string_view line) {
  if (!starts_with(line, "+CEREG:") && !starts_with(line, "+C5GREG:") && !starts_with(line, "+CREG:") && !starts_with(line, "+CGREG:")) return std::nullopt;
  const auto f = split_fields(line);
  if (f.size() < 2) return std::nullopt;  // a one-field line is an unsolicited +CEREG: <stat>
  const auto stat = to_integer(f[1]);
  if (!stat || *stat < 0 || *stat > 11) return std::nullopt;
  return static_cast<int>(*stat);
}

std::string_view registration_name(int stat) {
  switch (stat) {
    case 0: return "not registered, not searching";
    case 1: return "registered (home)";
    case 2: return "searching";
    case 3: return "registration denied";
    case 4: return "unknown";
    case 5: return "registered (roaming)";
    default: return "other";
  }
}

std::string mask(std::string_view id, std::size_t keep_head, std::size_t keep_tail) {
  if (id.size() <= keep_head + keep_tail) return std::string(id.size(), '*');
  std::string out(id.substr(0, keep_head));
  out.append(id.size() - keep_head - keep_tail, '*');
  out.append(id.substr(id.size() - keep_tail));
  return out;
}

bool supported_baud(long long baud) { return pilecore::plugins::serial_speed(baud).has_value(); }

AtPort::AtPort(const std::string& path, int baud) {
  fd_ = ::open(path.c_str(), O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
  if (fd_ < 0) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  termios t{};
  if (::tcgetattr(fd_, &t) != 0) {
    const int err = errno;
    ::close(fd_);
    throw std::runtime_error(path + " is not a serial port: " + std::strerror(err));
  }
  ::cfmakeraw(&t);
  t.c_cflag |= CLOCAL | CREAD;
  const speed_t speed = pilecore::plugins::serial_speed(baud).value_or(B115200);
  ::cfsetispeed(&t, speed);
  ::cfsetospeed(&t, speed);
  if (::tcsetattr(fd_, TCSANOW, &t) != 0) {
    const int err = errno;
    ::close(fd_);
    throw std::runtime_error("cannot configure " + path + ": " + std::strerror(err));
  }
}

AtPort::~AtPort() {
  if (fd_ >= 0) ::close(fd_);
}

bool AtPort::next_line(std::string& line, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    const auto eol = buffer_.find_first_of("\r\n");
    if (eol != std::string::npos) {
      line = buffer_.substr(0, eol);
      buffer_.erase(0, eol + 1);
      return true;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    const int n = ::poll(&p, 1, static_cast<int>(left));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    if ((p.revents & (POLLERR | POLLNVAL)) != 0) throw std::runtime_error(std::string("serial port error: ") + std::strerror(errno));
    char chunk[256];
    const ssize_t got = ::read(fd_, chunk, sizeof chunk);
    if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (got <= 0) {
      // POLLHUP with nothing to read: the device went away (a USB modem re-enumerating).
      if ((p.revents & POLLHUP) != 0 || got == 0) throw std::runtime_error("the serial port hung up");
      throw std::runtime_error(std::string("serial read: ") + std::strerror(errno));
    }
    buffer_.append(chunk, static_cast<std::size_t>(got));
    // A modem spewing bytes without line ends must not grow the buffer without bound.
    if (buffer_.size() > 4096) {
      ++counters_.garbage_lines;
      buffer_.clear();
    }
  }
}

AtReply AtPort::command(std::string_view command, std::string_view prefix, std::chrono::milliseconds timeout) {
  ++counters_.commands;
  std::string out(command);
  out.push_back('\r');
  std::size_t sent = 0;
  while (sent < out.size()) {
    const ssize_t n = ::write(fd_, out.data() + sent, out.size() - sent);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      pollfd p{fd_, POLLOUT, 0};
      ::poll(&p, 1, 100);
      continue;
    }
    if (n <= 0) throw std::runtime_error(std::string("serial write: ") + std::strerror(errno));
    sent += static_cast<std::size_t>(n);
  }
  AtReply reply;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string line;
  while (next_line(line, deadline)) {
    if (line.empty() || line == command) continue;  // blank separators; the echo before ATE0
    const bool printable = std::all_of(line.begin(), line.end(), [](char c) {
      const auto u = static_cast<unsigned char>(c);
      return u >= 0x20 && u < 0x7f;
    });
    if (!printable) {
      ++counters_.garbage_lines;
      continue;
    }
    if (line == "OK") {
      reply.final = AtReply::Final::ok;
      return reply;
    }
    if (line == "ERROR") {
      ++counters_.errors;
      reply.final = AtReply::Final::error;
      reply.error = "ERROR";
      return reply;
    }
    if (starts_with(line, "+CME ERROR:")) {
      ++counters_.errors;
      reply.final = AtReply::Final::cme_error;
      reply.error = std::string(trim(std::string_view(line).substr(11)));
      return reply;
    }
    const bool ours = prefix.empty() ? std::all_of(line.begin(), line.end(), [](char c) { return c >= '0' && c <= '9'; }) : starts_with(line, prefix);
    if (ours) {
      reply.lines.push_back(line);
    } else {
      ++counters_.unsolicited_lines;
    }
  }
  ++counters_.timeouts;
  reply.final = AtReply::Final::timeout;
  reply.error = "no final result within " + std::to_string(timeout.count()) + " ms";
  return reply;
}

}  // namespace pilecore::link5g
