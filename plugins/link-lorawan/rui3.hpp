// The lines a RAK3172 with RUI3 firmware writes on its AT serial port, classified.
//
// Source: RAKwireless RUI3 AT Command Manual (rakwireless-docs,
// docs/RUI3/Serial-Operating-Modes/AT-Command-Manual and the RAK3172 module's AT-Command-Manual):
// a command ends with CR LF; the module answers a query with "AT+XXX=<value>" and then a status
// line ("OK", or an error such as "AT_ERROR", "AT_PARAM_ERROR", "AT_BUSY_ERROR",
// "AT_NO_NETWORK_JOINED"); work that takes air time answers OK at once and reports later with
// an event: "+EVT:JOINED", "+EVT:JOIN_FAILED_RX_TIMEOUT", "+EVT:TX_DONE",
// "+EVT:SEND_CONFIRMED_OK" / "+EVT:SEND_CONFIRMED_FAILED" (older RUI3 builds write the last two
// with spaces), and a downlink as "+EVT:RX_1:<rssi>:<snr>:UNICAST:<port>:<hex>" (RX_2, RX_B and
// RX_C for the other windows and classes).
#pragma once

#include <charconv>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hex.hpp"

namespace pilecore::lorawan::rui3 {

enum class Kind : std::uint8_t {
  ok,
  error,            ///< `text` is the error word (AT_ERROR, AT_BUSY_ERROR, ...)
  value,            ///< "AT+XXX=<value>": `name` and `text`
  joined,
  join_failed,
  tx_done,
  confirmed_ok,
  confirmed_failed,
  downlink,         ///< port, rssi, snr, data
  other_event,      ///< a "+EVT:" line this driver has no use for
  garbage,          ///< anything else (boot banners, line noise)
};

struct Line {
  Kind kind = Kind::garbage;
  std::string name;
  std::string text;
  int port = 0;
  int rssi = 0;
  int snr = 0;
  std::vector<std::uint8_t> data;
};

namespace detail {
inline std::optional<int> to_int(std::string_view s) {
  int v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}
inline std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  for (;;) {
    const auto i = s.find(sep);
    out.push_back(s.substr(0, i));
    if (i == std::string_view::npos) return out;
    s.remove_prefix(i + 1);
  }
}
}  // namespace detail

/// Classifies one line (without its CR LF).
inline Line classify(std::string_view s) {
  Line l;
  while (!s.empty() && (s.back() == '\r' || s.back() == ' ')) s.remove_suffix(1);
  if (s == "OK") {
    l.kind = Kind::ok;
    return l;
  }
  if (s.starts_with("AT_") && s.ends_with("_ERROR")) {
    l.kind = Kind::error;
    l.text = s;
    return l;
  }
  if (s == "AT_NO_NETWORK_JOINED") {
    l.kind = Kind::error;
    l.text = s;
    return l;
  }
  if (s.starts_with("+EVT:")) {
    const std::string_view e = s.substr(5);
    if (e == "JOINED") {
      l.kind = Kind::joined;
    } else if (e.starts_with("JOIN_FAILED") || e.starts_with("JOIN FAILED")) {
      l.kind = Kind::join_failed;
      l.text = e;
    } else if (e == "TX_DONE") {
      l.kind = Kind::tx_done;
    } else if (e == "SEND_CONFIRMED_OK" || e == "SEND CONFIRMED OK") {
      l.kind = Kind::confirmed_ok;
    } else if (e == "SEND_CONFIRMED_FAILED" || e == "SEND CONFIRMED FAILED" || e.starts_with("SEND_CONFIRMED_FAILED")) {
      l.kind = Kind::confirmed_failed;
    } else if (e.starts_with("RX_")) {
      // RX_1:<rssi>:<snr>:UNICAST:<port>:<hex>; the hex may be empty (an ACK without data).
      const auto f = detail::split(e, ':');
      if (f.size() != 6) return l;
      const auto rssi = detail::to_int(f[1]), snr = detail::to_int(f[2]), port = detail::to_int(f[4]);
      auto data = pilecore::plugins::parse_hex(f[5]);
      if (!rssi || !snr || !port || *port < 0 || *port > 255 || !data) return l;
      l.kind = Kind::downlink;
      l.rssi = *rssi;
      l.snr = *snr;
      l.port = *port;
      l.name = f[3];
      l.data = std::move(*data);
    } else {
      l.kind = Kind::other_event;
      l.text = e;
    }
    return l;
  }
  if (s.starts_with("AT+")) {
    const auto eq = s.find('=');
    if (eq != std::string_view::npos && eq > 3) {
      l.kind = Kind::value;
      l.name = s.substr(3, eq - 3);
      l.text = s.substr(eq + 1);
      return l;
    }
  }
  return l;
}

}  // namespace pilecore::lorawan::rui3
