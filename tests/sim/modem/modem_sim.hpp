// A Quectel RM500Q-class modem on a pseudo-terminal, answering the AT commands link-5g sends:
// ATE0/ATE1, AT+CMEE, AT+CPIN?, AT+CIMI, AT+QCCID, AT+GSN/AT+CGSN, AT+C5GREG?, AT+CEREG?,
// AT+QENG="servingcell" (NR5G-SA, LTE or EN-DC answer layouts, SEARCH without a cell),
// AT+CFUN=0/1 and AT+CFUN?. Unknown commands answer ERROR. The test sets what the network
// looks like (Settings) at any time and can push raw bytes (garbage, URCs) onto the line.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace pilecore::sim {

struct ModemSettings {
  bool sim_present = true;
  std::string imsi = "460011234567890";
  std::string iccid = "89860112345678901234";
  std::string imei = "866123456789012";
  /// Radio access technology when registered: "NR5G-SA", "LTE" or "EN-DC" (LTE anchor + NR leg).
  std::string rat = "NR5G-SA";
  int stat = 1;  ///< registration: 1 home, 5 roaming, 2 searching, 3 denied, 0 idle
  int rsrp = -88, rsrq = -11, sinr = 14;
  /// AT+CFUN=1 after AT+CFUN=0 registers again with this stat (a re-attach that works);
  /// negative: the network stays as it was before.
  int stat_after_reattach = 1;
  bool mute = false;  ///< read commands but answer nothing (a hung module)
};

class ModemSim {
 public:
  using Settings = ModemSettings;

  explicit ModemSim(Settings settings = {});
  ~ModemSim();
  ModemSim(const ModemSim&) = delete;
  ModemSim& operator=(const ModemSim&) = delete;

  /// The pseudo-terminal's device, e.g. /dev/pts/7, the plugin's serial_port.
  [[nodiscard]] const std::string& path() const { return device_; }
  /// Changes what the modem reports, from the test's thread.
  void update(const std::function<void(Settings&)>& change);
  /// Writes raw bytes to the line now (between or before answers).
  void inject(const std::string& bytes);
  /// Bytes written in front of the next answer only (then cleared).
  void inject_before_next_answer(const std::string& bytes);
  /// How many times `command` (e.g. "AT+CFUN=0") was received.
  [[nodiscard]] unsigned count(const std::string& command) const;

 private:
  void run();
  std::string answer(const std::string& command);
  void write_all(const std::string& bytes);

  int master_ = -1, slave_ = -1;
  int wake_[2] = {-1, -1};
  std::string device_;
  mutable std::mutex mutex_;
  Settings s_;
  bool echo_ = true;
  int cmee_ = 0;
  bool radio_on_ = true;
  std::string before_next_;
  std::map<std::string, unsigned> counts_;
  std::atomic<bool> closing_{false};
  std::thread thread_;
};

}  // namespace pilecore::sim
