// The modem side of link-5g: a Quectel RM500Q-class module on its AT serial port.
//
// AtPort is the blocking command/answer exchange (run on the plugin's modem thread, never on the
// core's strand); the parse_* functions read the answers and are pure, so the unit tests and a
// fuzzer can feed them anything. Answer formats: Quectel RG50xQ & RM5xxQ AT commands manual and
// Network Application Note (3GPP TS 27.007 for +CEREG/+C5GREG/+CME ERROR).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pilecore::link5g {

/// One field list of an answer line such as `+QENG: "servingcell","NOCONN","NR5G-SA",...`: the
/// text after the prefix's colon, split at commas, quotes removed, blanks trimmed.
std::vector<std::string> split_fields(std::string_view line);

/// The serving cell as AT+QENG="servingcell" reports it. In 5G SA AT+CSQ answers 99,99, so this
/// is where signal quality comes from.
struct ServingCell {
  std::string state;  ///< SEARCH, LIMSRV, NOCONN, CONNECT; empty when the answer had none
  std::string rat;    ///< NR5G-SA, LTE, NR5G-NSA (EN-DC: the NR leg), or empty
  std::string mcc, mnc;
  std::optional<int> rsrp_dbm;  ///< "-" (invalid) gives none
  std::optional<int> rsrq_db;
  std::optional<double> sinr_db;
  [[nodiscard]] bool camped() const { return state == "NOCONN" || state == "CONNECT" || state == "LIMSRV"; }
};

/// Reads the answer lines of AT+QENG="servingcell" (every line, any order). None when no line is
/// a servingcell line or a line is malformed (too few fields, a number that is not one).
std::optional<ServingCell> parse_serving_cell(const std::vector<std::string>& lines);

/// `+CEREG: <n>,<stat>[,...]` or `+C5GREG: ...` (the answer to the read command): <stat>.
std::optional<int> parse_registration(std::string_view line);
/// 1 (home) and 5 (roaming) are registered; 2 searching, 3 denied, 0 not searching, 4 unknown.
inline bool is_registered(int stat) { return stat == 1 || stat == 5; }
std::string_view registration_name(int stat);

/// Shows the first `keep_head` and last `keep_tail` characters, the rest as '*': IMSI and ICCID
/// identify a subscriber, so logs carry only enough to tell two SIMs apart.
std::string mask(std::string_view id, std::size_t keep_head, std::size_t keep_tail);

struct AtReply {
  enum class Final : std::uint8_t { ok, error, cme_error, timeout };
  Final final = Final::timeout;
  std::string error;               ///< the +CME ERROR text (numeric or verbose), or a description
  std::vector<std::string> lines;  ///< the information lines that belong to the command
  [[nodiscard]] bool ok() const { return final == Final::ok; }
};

/// The prefix of a command that answers only OK or an error: no line starts with a line feed, so
/// every line before the final result is counted as unsolicited.
inline constexpr std::string_view kNoInformation = "\n";

/// The modem's serial port in raw mode. Not thread-safe: one thread owns it.
class AtPort {
 public:
  struct Counters {
    std::uint64_t commands = 0;
    std::uint64_t timeouts = 0;
    std::uint64_t errors = 0;             ///< ERROR and +CME ERROR finals
    std::uint64_t garbage_lines = 0;      ///< lines with bytes no AT answer contains (line noise)
    std::uint64_t unsolicited_lines = 0;  ///< printable lines that answer nothing asked (URCs)
  };

  /// Opens `path` (O_NOCTTY, raw 8N1 at `baud`); throws std::runtime_error saying why not.
  AtPort(const std::string& path, int baud);
  ~AtPort();
  AtPort(const AtPort&) = delete;
  AtPort& operator=(const AtPort&) = delete;

  /// Sends `command` + CR and collects its answer until a final result code or `timeout`.
  /// Information lines are those starting with `prefix`; an empty prefix takes lines of digits
  /// (the bare answers of AT+CIMI and AT+GSN). Everything else is counted and ignored.
  AtReply command(std::string_view command, std::string_view prefix, std::chrono::milliseconds timeout);

  [[nodiscard]] const Counters& counters() const { return counters_; }

 private:
  bool next_line(std::string& line, std::chrono::steady_clock::time_point deadline);

  int fd_ = -1;
  std::string buffer_;
  Counters counters_;
};

/// True for a baud rate termios can set (the RM500Q's UART takes 9600 to 921600).
bool supported_baud(long long baud);

}  // namespace pilecore::link5g
