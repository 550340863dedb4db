// A RAK3172 LoRaWAN module with RUI3 firmware on a pseudo-terminal, and the network behind it.
//
// It answers the AT commands a host uses to run a class A OTAA device, as the RUI3 AT Command
// Manual (RAKwireless) specifies them: AT, AT+NWM, AT+NJM, AT+BAND (1 = CN470, 4 = EU868),
// AT+DEVEUI, AT+APPEUI, AT+APPKEY, AT+ADR, AT+DR, AT+CFM, AT+CLASS, AT+NJS, AT+JOIN=w:x:y:z and
// AT+SEND=<port>:<hex>, each with "OK" or an error word (AT_ERROR, AT_PARAM_ERROR, AT_BUSY_ERROR,
// AT_NO_NETWORK_JOINED), a query with "AT+XXX=<value>" first, and the events that follow work on
// air: +EVT:JOINED / +EVT:JOIN_FAILED_RX_TIMEOUT, +EVT:TX_DONE, +EVT:SEND_CONFIRMED_OK / _FAILED
// and +EVT:RX_1:<rssi>:<snr>:UNICAST:<port>:<hex> for a downlink.
//
// The network side is scripted: joins that fail before one is accepted, downlinks queued for the
// next uplink (class A), confirmations that fail, AT_BUSY_ERROR answers, a data rate the network
// sets by ADR, and a module that goes silent (answers nothing) or forgets its session.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace pilecore::sim {

class Rak3172Sim {
 public:
  struct Uplink {
    int port = 0;
    std::vector<std::uint8_t> data;
    bool confirmed = false;
    int dr = 0;
    std::uint32_t fcnt = 0;  ///< the uplink frame counter, from 0 after each join
  };

  Rak3172Sim();
  ~Rak3172Sim();
  Rak3172Sim(const Rak3172Sim&) = delete;
  Rak3172Sim& operator=(const Rak3172Sim&) = delete;

  /// The pseudo-terminal's device, e.g. /dev/pts/7.
  [[nodiscard]] const std::string& device() const { return device_; }

  /// The next `n` join attempts fail (+EVT:JOIN_FAILED_RX_TIMEOUT).
  void fail_joins(unsigned n);
  /// The next `n` confirmed uplinks are not acknowledged (+EVT:SEND_CONFIRMED_FAILED).
  void fail_confirmations(unsigned n);
  /// The next `n` AT+SEND answer AT_BUSY_ERROR.
  void busy_sends(unsigned n);
  /// A downlink for the next uplink's receive window.
  void queue_downlink(int port, std::vector<std::uint8_t> data);
  /// With ADR on, the network moves the module to `dr` at the next uplink.
  void set_network_dr(int dr);
  /// The module stops answering (true) or answers again (false); what it is sent meanwhile is lost.
  void set_silent(bool silent);
  /// The module loses its session (a reset): AT+SEND answers AT_NO_NETWORK_JOINED until it joins.
  void forget_session();
  /// The network behind the gateway: `fn` is called with each uplink the module sent (on the
  /// simulator's thread, after the module's answer and events; never under its lock). Set it
  /// before the host sends anything.
  void on_uplink(std::function<void(const Uplink&)> fn);
  /// A downlink queued within `window` after an uplink that found none waiting is delivered at
  /// once (the network server answered within the receive windows; the host hears it late).
  /// Default 0: only downlinks already queued at the uplink are delivered.
  void set_rx_window(std::chrono::milliseconds window);
  /// Writes a raw line to the host (a boot banner, line noise).
  void emit(std::string_view line);

  [[nodiscard]] std::vector<Uplink> uplinks() const;
  [[nodiscard]] std::vector<std::string> commands() const;
  [[nodiscard]] unsigned join_attempts() const;
  [[nodiscard]] bool joined() const;
  /// A setting as the host last wrote it ("BAND", "DR", "APPKEY", ...); empty if never written.
  [[nodiscard]] std::string setting(const std::string& name) const;

 private:
  void run();
  void on_line(const std::string& line);
  void answer(const std::string& text);  // one line, CR LF added
  std::string execute(const std::string& line, std::vector<std::string>& events);
  [[nodiscard]] std::size_t max_payload_locked() const;

  std::string device_;
  int master_ = -1;
  int slave_ = -1;  ///< kept open so the master never sees a hang-up between two users
  int wake_[2] = {-1, -1};
  std::thread thread_;

  mutable std::mutex mutex_;  // everything below
  bool closed_ = false;
  bool silent_ = false;
  bool joined_ = false;
  unsigned join_failures_ = 0;
  unsigned confirm_failures_ = 0;
  unsigned busy_ = 0;
  int network_dr_ = -1;
  unsigned join_attempts_ = 0;
  std::deque<std::pair<int, std::vector<std::uint8_t>>> downlinks_;
  std::map<std::string, std::string> settings_;
  std::vector<Uplink> uplinks_;
  std::vector<std::string> commands_;
  std::vector<std::string> outbox_;  ///< lines emit() queued for the thread to write
  std::function<void(const Uplink&)> on_uplink_;
  std::chrono::milliseconds rx_window_{0};
  std::chrono::steady_clock::time_point rx_open_until_{};  ///< the last uplink's window for a late downlink
  std::uint32_t fcnt_ = 0;
};

}  // namespace pilecore::sim
