#include "demo.hpp"

#include <date/tz.h>
#include <fcntl.h>
#include <poll.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <functional>
#include <future>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "clocks.hpp"
#include "control_socket.hpp"
#include "fd_lines.hpp"
#include "ledger_commands.hpp"
#include "statement.hpp"
#include "storage.hpp"
#include "money.hpp"
#include "paths.hpp"
#include "plugin_loader.hpp"
#include "receipt.hpp"
#include "site_config.hpp"
#include "token_privacy.hpp"

namespace pilecore::core {
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

// --- the scenario: Thursday 26 November 2026 (the workday plan), Beijing time ---------------
constexpr std::chrono::year_month_day kDate{std::chrono::year{2026}, std::chrono::month{11}, std::chrono::day{26}};
constexpr int kUtcOffsetHours = 8;  // the site's zone, Asia/Shanghai, has no daylight saving
constexpr const char* kStart = "06:00";      // the daemon starts
constexpr const char* kPowerCut = "14:50";   // SIGKILL, while a session charges on connector 1
constexpr int kOutageMinutes = 10;
/// The operator lowers the service fee from 0.80 to 0.60 yuan/kWh and reloads the site file
/// (`pilectl reload`, as `systemctl reload pilecore`), while the 17:20 car charges on connector 2:
/// that session keeps the price it started with, sessions after it pay the new one.
constexpr const char* kPriceChange = "17:40";
constexpr const char* kOldService = "service: 80.00";
constexpr const char* kNewService = "service: 60.00";
/// Planned restarts of pilecored (`systemctl restart`, as a package upgrade does) while cars
/// charge: SIGTERM, and the next pilecored a simulated minute after the old one has stopped. The
/// sessions are suspended and resumed, the same transactions with the same holds: at 07:05 a
/// member card (connector 1) and a face (connector 2), at 09:55 an e-CNY wallet (connector 1), at
/// 17:50 a credit session that keeps the price it started with before the 17:40 reload.
const std::vector<const char*> kRestarts = {"07:05", "09:55", "17:50"};
/// How long a driver whose car is plugged in (or who arrives) waits while the pile restarts
/// (sim-power), and how old a suspension the next start still resumes: a restart's stop takes a
/// few hundred milliseconds of wall time, half a simulated hour at 7200x, more on a loaded
/// machine.
constexpr int kDriverWaitsS = 3 * 3600;
constexpr const char* kEnd = "23:50";        // the day ends once no session is open
constexpr std::uint32_t kCutConnector = 1;

/// Who comes to which connector when. Each arrival crosses a tariff boundary of the workday
/// plan (valley 00-07, flat 07-10, peak 10-15, flat 15-18, peak 18-19, sharp 19-21, flat 21-23,
/// valley 23-24); the 14:30 vehicle is charging at the power cut; the 12:10 vehicle faults.
/// The 18:10 driver is stepped up and enters a PIN (PBKDF2, slow under a sanitizer): whether the
/// session starts a few minutes later or after 19:00, part of its energy is sharp.
const std::map<std::uint32_t, std::vector<const char*>> kArrivals = {
    {1, {"06:35", "09:30", "14:30", "18:10", "22:30"}},
    {2, {"06:50", "12:10", "17:20", "20:40"}},
};
const std::map<std::uint32_t, std::vector<const char*>> kFaults = {{2, {"12:35"}}};
constexpr int kFaultClearS = 900;
constexpr int kDepartAfterS = 600;

/// How each driver pays. Every method is the production plugin, talking over the real protocol
/// to its far side in pilecore-sim-payments: the member card and the e-CNY wallet through
/// reader-nfc and libnfc to an emulated PN532 at the connector (a tap starts the session, the
/// seed's proximity trigger), the face through the camera module and the face-pay provider
/// (HTTPS), credit through the credit provider (HTTPS).
enum class Pays {
  card_tap,    ///< a member card held at the connector's reader (payment-card, local accounts)
  wallet_tap,  ///< an e-CNY hard wallet held at the reader (payment-dcep)
  face,        ///< a face at the connector's camera (payment-face)
  credit_app,  ///< "charge now, pay later" chosen in the app (payment-credit)
  card_app,    ///< the app, with an amount to charge, paying by member card (a risk step-up)
};
struct Driver {
  Pays pays;
  const char* id;                ///< card UID (hex), wallet id, face token or credit user
  std::int64_t amount_fen = 0;   ///< card_app: the amount asked for (mode amount)
};
/// By connector, one per arrival of kArrivals. A vehicle that is back after the power cut is
/// its last driver's again.
const std::map<std::uint32_t, std::vector<Driver>> kDrivers = {
    {1, {{Pays::card_tap, "04A1B2C3"}, {Pays::card_tap, "04E5F607"}, {Pays::card_tap, "04AB12CD"}, {Pays::card_app, "04998877", 35000},
         {Pays::wallet_tap, "0021000087654321"}}},
    {2, {{Pays::face, "Fz81kQ2"}, {Pays::wallet_tap, "0021000055551234"}, {Pays::credit_app, "U-2046"}, {Pays::face, "Hm27xP9"}}},
};
/// The member cards' accounts on the pile (payment-card, accounts: local): UID, balance. The
/// 09:30 driver's card holds 0.50 yuan and is declined; that driver pays with kFallbackWallet.
const std::vector<std::pair<const char*, std::int64_t>> kAccounts = {
    {"04A1B2C3", 50000}, {"04E5F607", 50}, {"04AB12CD", 50000}, {"04998877", 100000}};
constexpr const char* kPinCard = "04998877";
constexpr const char* kPin = "4711";
constexpr const char* kFallbackWallet = "0021000012345678";
constexpr std::int64_t kWalletBalanceFen = 100000;
/// Faces the face-pay provider knows (most it approves at once), and the credit user's score.
const std::vector<std::pair<const char*, std::int64_t>> kFaces = {{"Fz81kQ2", 50000}, {"Hm27xP9", 50000}};
constexpr const char* kCreditUser = "U-2046";
constexpr int kCreditScore = 720;
/// The credit bill is debited 12 simulated hours after the session: the next morning.
constexpr int kCreditDebitDelayS = 12 * 3600;
/// After the day the operator refunds part of the session the fault stopped.
constexpr std::int64_t kRefundFen = 1000;
/// The night ends when the credit debit is through, at the latest at this time of the next day.
constexpr const char* kNextMorningLatest = "12:00";

/// The pile as the operator's back end knows it: the device id in its frames' headers, its name
/// in the MQTT topics (pilecore/v1/<site id>/<pile>/...).
constexpr std::uint32_t kDeviceId = 20261126;
constexpr const char* kPileId = "pile-01";
/// The operator takes connector 1 out of service for an inspection from the back end (signed
/// remote commands over MQTT), between its morning and afternoon drivers, and puts it back.
constexpr const char* kInspectionFrom = "12:00";
constexpr const char* kInspectionTo = "12:30";
constexpr std::uint32_t kInspectionConnector = 1;
/// The uplink outage, once the inspection's commands are answered: the back end's broker stops
/// for kBrokerDownMinutes, the modem loses its registration, and the LoRaWAN module resets and
/// finds the network refusing its joins; the network takes joins again after kJoinsRefusedMinutes
/// and the modem registers again after kUnregisteredMinutes. The 12:35 fault (an alarm and a
/// closed e-CNY session) falls inside it. Each phase also lasts kOutagePhaseWall of real time, so
/// that the links see it at any clock speed.
constexpr const char* kOutageFrom = "12:32";
constexpr int kBrokerDownMinutes = 10;
constexpr int kJoinsRefusedMinutes = 5;
constexpr int kUnregisteredMinutes = 8;
constexpr auto kOutagePhaseWall = std::chrono::milliseconds(150);
/// The pile's LoRaWAN identity at the network server (OTAA).
constexpr const char* kDevEui = "70B3D57ED0061126";
constexpr const char* kAppEui = "70B3D57ED0000001";
constexpr const char* kAppKey = "2B7E151628AED2A6ABF7158809CF4F3C";

/// "06:30" on the scenario's day, as an instant.
TimePoint utc_of(const char* hhmm) {
  int h = 0, m = 0;
  std::sscanf(hhmm, "%d:%d", &h, &m);
  return std::chrono::time_point_cast<Duration>(std::chrono::sys_days{kDate} + std::chrono::hours{h - kUtcOffsetHours} + std::chrono::minutes{m});
}

std::string day_text() { return date::format("%F", std::chrono::sys_days{kDate}); }

/// The same instant in RFC 3339 with the site's offset, as sim-power's arrive_at and fault_at take it.
std::string instant(const char* hhmm) { return fmt::format("{}T{}:00+{:02}:00", day_text(), hhmm, kUtcOffsetHours); }

std::string local_time(TimePoint t, const std::string& zone, const char* format = "%H:%M") {
  try {
    if (zone.empty()) return date::format(format, std::chrono::floor<std::chrono::seconds>(t));
    return date::format(format, date::make_zoned(zone, std::chrono::floor<std::chrono::seconds>(t)));
  } catch (const std::exception&) {
    return format_utc(t);
  }
}

std::optional<TimePoint> time_of(const json& j) {
  TimePoint t;
  if (j.contains("time") && j["time"].is_string() && parse_utc(j["time"].get<std::string>(), t)) return t;
  return std::nullopt;
}

std::string yuan(std::int64_t fen) { return format_yuan(fen) + " yuan"; }

/// The one number `sql` selects from the database at `db`, opened read-only (the daemon may be
/// writing it: WAL lets a reader in); -1 when it cannot be read now.
std::int64_t read_number(const fs::path& db, const char* sql) {
  try {
    Database ro(db, Database::ReadOnly{});
    Stmt q(ro.handle(), sql);
    return q.step() ? q.i64(0) : -1;
  } catch (const std::exception&) {
    return -1;
  }
}

}  // namespace

std::string describe_event(const json& ev);

namespace {

/// The four payment methods as a site integrator configures them (docs/payments.md), pointed at
/// the simulators: a reader at each connector, member cards from the pile's local account table,
/// the e-CNY wallet, the face at connector 2's camera, and credit.
void add_payment_methods(YAML::Node& root, const json& sims) {
  YAML::Node plugins = root["plugins"];
  const auto& readers = sims.at("readers");
  for (std::uint32_t c = 1; c <= readers.size(); ++c) {
    YAML::Node r;
    r["plugin"] = "reader-nfc";
    r["connector"] = c;
    r["config"]["device"] = readers.at(c - 1).get<std::string>();
    r["config"]["poll_ms"] = 50;
    YAML::Node aids(YAML::NodeType::Sequence);
    aids.push_back("F050434443455001");  // the wallet application (docs/payments.md)
    r["config"]["wallet_aids"] = aids;
    plugins[fmt::format("reader-{}", c)] = r;
  }
  YAML::Node card;
  card["plugin"] = "payment-card";
  card["config"]["identify_by"] = "uid";
  card["config"]["accounts"] = "local";
  card["config"]["time_zone"] = root["site"]["timezone"];
  plugins["card"] = card;
  YAML::Node ecny;
  ecny["plugin"] = "payment-dcep";
  ecny["config"]["merchant_id"] = "M-SIM-0001";
  ecny["config"]["root_ca_file"] = sims.at("ecny_root").get<std::string>();
  plugins["ecny"] = ecny;
  YAML::Node face;
  face["plugin"] = "payment-face";
  face["connector"] = 2;
  face["config"]["provider_url"] = sims.at("face_provider").get<std::string>();
  face["config"]["provider_ca_file"] = sims.at("provider_ca").get<std::string>();
  face["config"]["merchant_id"] = "M-SIM-0001";
  face["config"]["min_liveness"] = 0.9;
  face["config"]["module_host"] = sims.at("face_module").at("host").get<std::string>();
  face["config"]["module_port"] = sims.at("face_module").at("port").get<int>();
  face["config"]["module_reconnect_ms"] = 100;
  plugins["face"] = face;
  YAML::Node credit;
  credit["plugin"] = "payment-credit";
  credit["config"]["provider_url"] = sims.at("credit_provider").get<std::string>();
  credit["config"]["provider_ca_file"] = sims.at("provider_ca").get<std::string>();
  credit["config"]["debit_delay_s"] = kCreditDebitDelayS;
  plugins["credit"] = credit;
  root["plugins"] = plugins;
  YAML::Node tokens;
  tokens["card"]["method"] = "card";
  tokens["wallet"]["method"] = "ecny";
  tokens["face"]["method"] = "face";
  root["payment"]["tokens"] = tokens;
}

/// The uplink as the site integrator configures it (docs/protocol.md, docs/integrator-guide.md).
/// With `backend` (where the reference back end's broker and certificates are): link-5g on the
/// simulated modem, MQTT with mutual TLS to the broker on loopback, and the back end's command
/// key; link-lorawan on the simulated RAK3172 when the back end can take LoRaWAN through its
/// network server; the site's sim-link instances go. Without: the site's own sim-link plays the
/// back end. Either way the pile's device id, and retries and heartbeats spaced for a fast clock.
void add_uplink(YAML::Node& root, const json& sims, const json& backend) {
  YAML::Node links = root["links"];
  links["device_id"] = kDeviceId;
  // An hour of simulated time is half a second at 7200x: a record is not resent before its
  // acknowledgement had time to come back, and the heartbeat and the compact telemetry come hourly.
  links["heartbeat_s"] = 3600;
  links["telemetry_s"] = 3600;
  links["outbox"]["first_retry_s"] = 3600;
  links["outbox"]["max_retry_s"] = 3600;
  if (backend.is_object()) {
    YAML::Node plugins = root["plugins"];
    std::vector<std::string> loopback;
    for (auto it = plugins.begin(); it != plugins.end(); ++it) {
      if (it->second["plugin"] && it->second["plugin"].as<std::string>() == "sim-link") loopback.push_back(it->first.as<std::string>());
    }
    for (const auto& name : loopback) plugins.remove(name);
    YAML::Node modem;
    modem["plugin"] = "link-5g";
    YAML::Node c = modem["config"];
    c["serial_port"] = sims.at("modem").get<std::string>();
    c["poll_s"] = 300;  // registration and signal every 5 simulated minutes: the outage's lost registration is seen
    c["site_id"] = root["site"]["id"];
    c["pile_id"] = kPileId;
    c["primary"] = fmt::format("ssl://127.0.0.1:{}", backend.at("port").get<int>());
    c["tls_certificate"] = backend.at("device_cert").get<std::string>();
    c["tls_key"] = backend.at("device_key").get<std::string>();
    c["tls_ca"] = backend.at("ca").get<std::string>();
    plugins["modem"] = modem;
    links["cellular"] = "modem";
    if (backend.contains("lns_cert") && sims.contains("lorawan")) {
      // Status and telemetry go over LoRaWAN by default (protocol.md section 4), CN470 at DR5.
      YAML::Node lora;
      lora["plugin"] = "link-lorawan";
      YAML::Node l = lora["config"];
      l["device"] = sims.at("lorawan").get<std::string>();
      l["region"] = "CN470";
      l["dev_eui"] = kDevEui;
      l["app_eui"] = kAppEui;
      l["app_key"] = kAppKey;
      l["data_rate"] = 5;
      // The back end's ack comes back in the receive window of the uplink it answers, within
      // tens of milliseconds here: listen that long, not a field module's half second.
      l["rx_linger_ms"] = 150;
      l["join_retry_min_s"] = 60;
      l["join_retry_max_s"] = 300;
      plugins["lora"] = lora;
      links["lorawan"] = "lora";
    }
    root["plugins"] = plugins;
    links["commands"]["key"] = backend.at("command_public_key").get<std::string>();
    // The back end stamps a command with the pile's simulated time as the demo last saw it; at
    // 7200x the default 300 s window is 42 ms of wall time, less than a busy machine may lag.
    links["commands"]["window_s"] = 86400;
  }
  root["links"] = links;
}

/// The simulated site plus the scenario, as a site file; `sims` is where pilecore-sim-payments
/// put the far side of the payment methods, `backend` where the reference back end listens
/// (null: the loopback link).
std::string scenario_yaml(const fs::path& site_file, const json& sims, const json& backend, std::string& error) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(site_file.string());
  } catch (const std::exception& e) {
    error = fmt::format("{}: {}", site_file.string(), e.what());
    return {};
  }
  std::set<std::uint32_t> scripted;
  for (auto it = root["plugins"].begin(); it != root["plugins"].end(); ++it) {
    YAML::Node inst = it->second;
    const std::string plugin = inst["plugin"] ? inst["plugin"].as<std::string>() : "";
    if (plugin == "sim-sensor") inst["config"]["interval_ms"] = 60000;  // one reading a simulated minute
    if (plugin != "sim-power" || !inst["connector"]) continue;
    const auto connector = inst["connector"].as<std::uint32_t>();
    YAML::Node cfg = inst["config"];
    cfg["tick_ms"] = 5000;
    cfg["arrive_after_s"] = -1;
    cfg["depart_after_full_s"] = kDepartAfterS;
    cfg["driver_waits_s"] = kDriverWaitsS;
    YAML::Node arrive_at(YAML::NodeType::Sequence);
    if (auto a = kArrivals.find(connector); a != kArrivals.end()) {
      for (const char* t : a->second) arrive_at.push_back(instant(t));
    }
    cfg["arrive_at"] = arrive_at;
    YAML::Node fault_at(YAML::NodeType::Sequence);
    if (auto f = kFaults.find(connector); f != kFaults.end()) {
      for (const char* t : f->second) fault_at.push_back(instant(t));
      cfg["fault_detail"] = "insulation monitor: DC+ to PE below 100 kOhm";
      cfg["fault_clear_after_s"] = kFaultClearS;
    }
    cfg["fault_at"] = fault_at;
    cfg["fault_after_s"] = -1;
    scripted.insert(connector);
  }
  for (const auto& [c, _] : kArrivals) {
    if (!scripted.count(c)) {
      error = fmt::format("{}: the demo needs a sim-power instance on connector {}", site_file.string(), c);
      return {};
    }
  }
  // At thousands of times real time a simulated second is a fraction of a millisecond: commit
  // checkpoints and recompute setpoints less often, and give the meter and the risk rules a
  // simulated ten minutes (under 0.1 s of wall time) to answer, and a simulated hour before a
  // register that holds under power counts as stalled (2 minutes would be 17 ms, within the
  // scheduling jitter of a loaded machine).
  YAML::Node ch = root["charging"];
  ch["checkpoint_interval_s"] = 300;
  ch["checkpoint_wh"] = 2000;
  ch["setpoint_interval_s"] = 60;
  ch["meter_timeout_ms"] = 600000;
  ch["meter_stall_ms"] = 3600000;
  // A planned restart's stop takes a few hundred milliseconds of wall time: half a simulated
  // hour. The suspended sessions are resumed by a start up to kDriverWaitsS after it.
  ch["resume_within_s"] = kDriverWaitsS;
  ch["resume_plug_wait_s"] = 3600;
  root["charging"] = ch;
  // The same for the risk rules' answer (2 simulated seconds would be 0.3 ms of wall time) and
  // the payment method's (30 s would be 4 ms: the declined card was sometimes timed out).
  YAML::Node pay = root["payment"];
  // A tap's PN532 frames and a wallet's SM2 voucher take real milliseconds (an hour of
  // simulated time is half a second at 7200x), and so does the driver's PIN.
  pay["risk_timeout_ms"] = 600000;
  pay["authorize_timeout_ms"] = 3600000;
  pay["step_up"]["timeout_s"] = 3600;
  root["payment"] = pay;
  add_payment_methods(root, sims);
  add_uplink(root, sims, backend);
  if (!root["identity"]) {
    YAML::Node id;
    id["key"] = "identity/device.key";
    id["certificate"] = "identity/device.crt";
    id["algorithm"] = "ecdsa-p256";
    id["hash"] = "sha256";
    root["identity"] = id;
  }
  YAML::Emitter em;
  em << root;
  return fmt::format(
      "# Written by `pilectl demo`: {} with the demo's scenario (vehicles at set times on\n"
      "# {}, one fault, a ledger identity, the uplink, checkpoints spaced for a fast clock).\n{}\n",
      site_file.string(), day_text(), em.c_str());
}

/// In a forked child: runs `args` with its standard input, output and error on the given
/// descriptors (-1: as inherited). Never returns.
[[noreturn]] void exec_child(std::vector<std::string> args, int in, int out, int err) {
  if (in >= 0) ::dup2(in, 0);
  if (out >= 0) ::dup2(out, 1);
  if (err >= 0) ::dup2(err, 2);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  ::execv(argv[0], argv.data());
  std::fprintf(stderr, "pilectl demo: cannot run %s: %s\n", argv[0], std::strerror(errno));
  ::_exit(127);
}

/// Starts `args` as a child whose standard input (`to`) and output (`from`) are pipes to this
/// process, its standard error appended to `log`.
void spawn_piped(std::vector<std::string> args, const fs::path& log, pid_t& pid, int& to, int& from) {
  int in[2], out[2];
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error(fmt::format("pipe: {}", std::strerror(errno)));
  pid = ::fork();
  if (pid < 0) throw std::runtime_error(fmt::format("fork: {}", std::strerror(errno)));
  if (pid == 0) exec_child(std::move(args), in[0], out[1], ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  ::close(in[0]);
  ::close(out[1]);
  to = in[1];
  from = out[0];
}

/// Waits up to `patience` for the child `pid` to exit (its input closed, it is quitting),
/// calling `meanwhile` between looks; then kills it. Its exit status; `pid` is -1 after.
int reap_child(pid_t& pid, std::chrono::milliseconds patience, const std::function<void()>& meanwhile = {}) {
  int st = 0;
  for (const auto until = std::chrono::steady_clock::now() + patience; pid > 0;) {
    if (meanwhile) meanwhile();
    if (::waitpid(pid, &st, WNOHANG) == pid) {
      pid = -1;
      break;
    }
    if (std::chrono::steady_clock::now() > until) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &st, 0);
      pid = -1;
      break;
    }
    std::this_thread::sleep_for(10ms);
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/// A helper program of the demo: beside pilectl in a build tree, <libexecdir>/pilecore when
/// installed (pilecore-sim).
fs::path helper_program(const std::string& name) {
  fs::path p = executable_dir() / name;
  if (::access(p.c_str(), X_OK) != 0) p = executable_dir().parent_path() / "libexec" / "pilecore" / name;
  return p;
}

/// A pilecored child process.
class Daemon {
 public:
  Daemon(const DemoOptions& o, const fs::path& site, const fs::path& state, const fs::path& socket, TimePoint clock_start, const fs::path& log)
      : socket_(socket) {
    std::vector<std::string> args = {o.pilecored.string(), "--config", site.string(), "--state-dir", state.string(), "--socket", socket.string(),
                                      "--clock-speed", fmt::format("{}", o.speed), "--clock-start", format_utc(clock_start), "--status-interval", "0"};
    for (const auto& d : o.plugin_dirs) {
      args.push_back("--plugin-dir");
      args.push_back(d.string());
    }
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error(fmt::format("fork: {}", std::strerror(errno)));
    if (pid_ == 0) {
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      exec_child(std::move(args), -1, fd, fd);
    }
  }
  ~Daemon() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  /// Subscribes to the event stream once the socket is there; throws when the daemon died.
  std::unique_ptr<ControlWatch> watch(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (int st = 0; ::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error(fmt::format("pilecored exited with status {} during start-up", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st)));
      }
      try {
        return std::make_unique<ControlWatch>(socket_, 5s);
      } catch (const std::runtime_error&) {
        if (std::chrono::steady_clock::now() > deadline) throw;
      }
      std::this_thread::sleep_for(5ms);
    }
  }

  json request(const json& req) { return control_request(socket_, req, 10s); }

  /// SIGKILL: a power cut, as far as the daemon can tell.
  void cut() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  /// SIGTERM, as systemd stops it; the exit status.
  int stop() {
    ::kill(pid_, SIGTERM);
    int st = 0;
    ::waitpid(pid_, &st, 0);
    pid_ = -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }

 private:
  fs::path socket_;
  pid_t pid_ = -1;
};

/// pilecore-sim-payments as a child process: the readers, cards, wallets, camera and
/// providers of the four payment methods. It stays up across the power cut, as the reader and
/// the providers are not the pile's to lose.
class Simulators {
 public:
  Simulators(const fs::path& program, const fs::path& dir, int readers, const fs::path& log) {
    spawn_piped({program.string(), "--dir", dir.string(), "--readers", std::to_string(readers)}, log, pid_, to_, from_);
    const std::string first = read_line(30s);
    where_ = json::parse(first, nullptr, false);
    if (!where_.is_object() || !where_.contains("readers")) throw std::runtime_error(fmt::format("{} did not start: {}", program.string(), first));
  }
  ~Simulators() {
    if (to_ >= 0) ::close(to_);  // end of input: it quits
    if (from_ >= 0) ::close(from_);
    reap_child(pid_, 2s);
  }
  Simulators(const Simulators&) = delete;
  Simulators& operator=(const Simulators&) = delete;

  /// Where everything is: the readers' libnfc devices, the camera's port, the providers' URLs
  /// and the certificate files.
  [[nodiscard]] const json& where() const { return where_; }

  /// One command; its one-line answer. Throws when the simulator does not answer.
  std::string command(const std::string& line) {
    const std::string text = line + "\n";
    if (::write(to_, text.data(), text.size()) != static_cast<ssize_t>(text.size())) throw std::runtime_error("the payment simulators stopped");
    return read_line(10s);
  }
  /// A command that must succeed.
  void must(const std::string& line) {
    const std::string answer = command(line);
    if (answer != "ok") throw std::runtime_error(fmt::format("payment simulators: '{}': {}", line, answer));
  }

 private:
  std::string read_line(std::chrono::milliseconds timeout) {
    std::string line;
    switch (core::read_line(from_, buffer_, timeout, line)) {
      case LineRead::line: return line;
      case LineRead::timeout: throw std::runtime_error("the payment simulators did not answer");
      case LineRead::closed: break;
    }
    throw std::runtime_error("the payment simulators stopped");
  }

  pid_t pid_ = -1;
  int to_ = -1, from_ = -1;
  std::string buffer_;
  json where_;
};

/// The operator's side of the uplink: the reference back end (tools/backend, `pilecore-backend
/// stack`) with the Mosquitto broker it starts on a free loopback port, mutual TLS with
/// certificates it makes. It takes signed-command requests a line each on its standard input and
/// reports what it receives a JSON line each on its standard output; the demo reads those
/// between the day's events so the back end never blocks on a full pipe.
class BackEnd {
 public:
  BackEnd(const fs::path& program, const fs::path& dir, const fs::path& log) {
    spawn_piped({program.string(), "stack", "--dir", dir.string()}, log, pid_, to_, from_);
    std::string first;
    if (core::read_line(from_, buffer_, 60s, first) != LineRead::line) {
      finish();
      throw std::runtime_error(fmt::format("the reference back end did not start (see {})", log.string()));
    }
    where_ = json::parse(first, nullptr, false);
    if (!where_.is_object() || !where_.contains("port")) {
      finish();
      throw std::runtime_error(fmt::format("the reference back end did not start: {}", first));
    }
  }
  ~BackEnd() { finish(); }
  BackEnd(const BackEnd&) = delete;
  BackEnd& operator=(const BackEnd&) = delete;

  /// The broker's port, the CA, the pile's certificate and key, the command key's public half,
  /// the back end's database.
  [[nodiscard]] const json& where() const { return where_; }

  /// Asks the back end to sign and send a command to the pile.
  void command(const json& request) {
    const std::string text = request.dump() + "\n";
    if (to_ < 0 || ::write(to_, text.data(), text.size()) != static_cast<ssize_t>(text.size())) throw std::runtime_error("the reference back end stopped");
  }

  /// Stops ("stop") or starts ("start") the back end's broker, on the same port.
  void broker(const std::string& what) { command({{"broker", what}}); }

  /// What the back end has said since the last call (without waiting).
  std::vector<json> events() {
    std::vector<json> out;
    std::string line;
    while (from_ >= 0 && core::read_line(from_, buffer_, 0ms, line) == LineRead::line) {
      if (auto j = json::parse(line, nullptr, false); j.is_object()) out.push_back(std::move(j));
    }
    return out;
  }

  /// End of input: the back end disconnects, stops its broker and exits. Its exit status.
  int finish() {
    if (to_ >= 0) ::close(to_);
    to_ = -1;
    const int st = reap_child(pid_, 10s, [this] { events(); });  // never let it block on a full pipe while it stops
    if (from_ >= 0) ::close(from_);
    from_ = -1;
    return st;
  }

 private:
  pid_t pid_ = -1;
  int to_ = -1, from_ = -1;
  std::string buffer_;
  json where_;
};

/// Runs `args` (pilectl itself, for `accounts`), with `input` on its standard input; its exit
/// status, and what it printed in `output`.
int run_tool(std::vector<std::string> args, const std::string& input, std::string& output) {
  int in[2], out[2];
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error(fmt::format("pipe: {}", std::strerror(errno)));
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error(fmt::format("fork: {}", std::strerror(errno)));
  if (pid == 0) exec_child(std::move(args), in[0], out[1], out[1]);
  ::close(in[0]);
  ::close(out[1]);
  if (!input.empty() && ::write(in[1], input.data(), input.size()) < 0) output = "cannot write its input";
  ::close(in[1]);
  char chunk[4096];
  for (ssize_t n; (n = ::read(out[0], chunk, sizeof chunk)) > 0;) output.append(chunk, static_cast<std::size_t>(n));
  ::close(out[0]);
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

std::string tail(const fs::path& file, std::size_t lines) {
  std::ifstream in(file);
  std::vector<std::string> all;
  for (std::string l; std::getline(in, l);) all.push_back(l);
  std::string out;
  for (std::size_t i = all.size() > lines ? all.size() - lines : 0; i < all.size(); ++i) out += "    " + all[i] + "\n";
  return out;
}

/// The day, driven through the control socket and the payment simulators.
class Day {
 public:
  Day(const DemoOptions& o, std::ostream& out, std::string zone, fs::path state, fs::path site, fs::path log, Simulators& sims, BackEnd* backend,
      std::string site_id)
      : o_(o),
        out_(out),
        zone_(std::move(zone)),
        state_(std::move(state)),
        site_(std::move(site)),
        log_(std::move(log)),
        sims_(sims),
        backend_(backend),
        site_id_(std::move(site_id)) {}

  /// Plays the day and the night after it; false (with `error`) when it could not be played
  /// to the end.
  bool play(std::string& error) {
    try {
      socket_ = state_ / "pilecored.sock";
      TimePoint start = utc_of(kStart);
      now_ = start;
      line(start, "", fmt::format("pilecored starts ({}x: a simulated hour every {:.1f} s)", o_.speed, 3600.0 / o_.speed));
      daemon_ = std::make_unique<Daemon>(o_, site_, state_, socket_, start, log_);
      subscribe();
      const TimePoint cut_at = utc_of(kPowerCut);
      const TimePoint end_at = utc_of(kEnd);
      const TimePoint latest = utc_of(kNextMorningLatest) + std::chrono::hours(24);
      const auto wall_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(static_cast<int>(3 * 86400 / o_.speed) + 60);
      bool night = false;
      for (;;) {
        if (std::chrono::steady_clock::now() > wall_deadline) throw std::runtime_error("the day did not end in time (is the machine overloaded? try --speed lower)");
        if (auto ev = watch_->next(20ms)) {
          on_event(*ev);
        } else {
          refresh_time();
        }
        collect_replies();
        if (backend_) from_backend();
        if (!cut_done_ && now_ >= cut_at && open_.count(kCutConnector)) power_cut();
        if (restarts_done_ < kRestarts.size() && now_ >= utc_of(kRestarts[restarts_done_])) planned_restart();
        if (!price_changed_ && now_ >= utc_of(kPriceChange)) price_change();
        if (now_ < end_at || !open_.empty() || !starts_.empty()) continue;
        if (!refund_done_) refund();
        if (pending_captures_.empty()) break;
        if (!night) {
          night = true;
          line(now_, "", fmt::format("the day's sessions are over; {} capture(s) wait: credit is debited {} h after its session", pending_captures_.size(),
                                     kCreditDebitDelayS / 3600));
        }
        if (now_ > latest) throw std::runtime_error(fmt::format("{} capture(s) still pending the next noon", pending_captures_.size()));
      }
      collect_receipts();
      stats_ = json::parse(sims_.command("stats"), nullptr, false);
      if (backend_) uplink_drained_ = drain_uplink();
      line(now_, "", "all settled: pilecored is stopped with SIGTERM");
      watch_.reset();
      const int rc = daemon_->stop();
      daemon_.reset();
      if (rc != 0) {
        error = fmt::format("pilecored exited with status {} on SIGTERM", rc);
        return false;
      }
      return true;
    } catch (const std::exception& e) {
      error = e.what();
      return false;
    }
  }

  const std::vector<json>& receipts() const { return receipts_; }
  std::size_t declined() const { return declined_; }
  bool power_cut_done() const { return cut_done_; }
  bool reload_applied() const { return reload_applied_; }
  const std::set<std::string>& charging_at_reload() const { return charging_at_reload_; }
  const std::string& cut_transaction() const { return cut_txn_; }
  std::size_t restarts_done() const { return restarts_done_; }
  /// The transactions charging at a planned restart: their energy then, and whether the next
  /// pilecored showed each of them on its connector again.
  struct Restarted {
    std::string at;          ///< the restart's time, "07:05"
    std::uint32_t connector = 0;
    std::int64_t energy_wh = 0;
    bool resumed = false;
  };
  const std::map<std::string, Restarted>& restarted() const { return restarted_; }
  std::size_t tap_starts() const { return tap_starts_; }
  bool step_up_answered() const { return !step_up_txn_.empty(); }
  const std::string& step_up_transaction() const { return step_up_txn_; }
  /// When the credit bill's capture was confirmed (the debit went through), if it was.
  std::optional<TimePoint> credit_settled() const { return credit_settled_; }
  const json& simulator_stats() const { return stats_; }
  /// The back end's answers to its remote commands, by command sequence.
  const std::map<std::int64_t, json>& command_results() const { return results_; }
  std::size_t commands_sent() const { return commands_sent_; }
  /// No control or transaction record was left unacknowledged in the outbox at the end.
  bool uplink_drained() const { return uplink_drained_; }
  /// The uplink outage: whether it ran to its end, how long the broker was down, the backup
  /// taken just before it.
  bool outage_done() const { return outage_step_ >= 4 && broker_started_.has_value(); }
  std::chrono::minutes broker_down() const {
    return broker_stopped_ && broker_started_ ? std::chrono::duration_cast<std::chrono::minutes>(*broker_started_ - *broker_stopped_) : std::chrono::minutes(0);
  }
  const fs::path& backup_copy() const { return snapshot_; }
  /// Alarm events the daemon sent on the watch stream: (code, raised, when).
  const std::vector<std::tuple<std::string, bool, TimePoint>>& alarms() const { return alarms_; }
  /// The day plays the uplink outage (LoRaWAN and the back end's broker are there).
  void with_outage() { lorawan_ = true; }
  bool outage_planned() const { return lorawan_; }

 private:
  /// What a driver at a connector is doing until the session starts or is refused.
  struct Attempt {
    Driver driver;
    int tries = 0;
    bool in_field = false;   ///< a card or wallet is at the reader
    bool fallback = false;   ///< paying with kFallbackWallet after a declined card
  };

  void line(TimePoint t, const std::string& who, const std::string& what) {
    out_ << fmt::format("{}  {:<12} {}\n", local_time(t, zone_, "%a %H:%M"), who, what);
    out_.flush();
  }

  void subscribe() {
    watch_ = daemon_->watch(10s);
    // Recovery runs before the daemon says it is ready, possibly before we subscribed: wait for
    // ready, then ask for what we may have missed.
    for (int i = 0;; ++i) {
      const json st = daemon_->request({{"cmd", "status"}});
      if (auto t = time_of(st)) now_ = std::max(now_, *t);
      if (st.value("ready", false)) {
        // A vehicle may have plugged in between the daemon's start and this answer (a slow
        // start-up at 7200x is half a simulated hour): its Preparing event may have gone before
        // the subscription, so the snapshot is what says a driver is waiting.
        std::vector<std::uint32_t> waiting;
        for (const auto& c : st.value("connectors", json::array())) {
          const auto id = c.value("id", 0u);
          status_[id] = c.value("status", "");
          if (status_[id] == "Preparing" && !c.contains("session")) waiting.push_back(id);
        }
        for (const auto id : waiting) driver_arrives(now_, id);
        break;
      }
      if (i > 2000) throw std::runtime_error("pilecored did not become ready");
      std::this_thread::sleep_for(2ms);
    }
  }

  void refresh_time() {
    const json st = daemon_->request({{"cmd", "status"}});
    if (auto t = time_of(st)) now_ = std::max(now_, *t);
  }

  static std::string who(std::uint32_t connector) { return connector ? fmt::format("connector {}", connector) : ""; }

  void on_event(const json& ev) {
    const auto t = time_of(ev).value_or(now_);
    now_ = std::max(now_, t);
    const std::string kind = ev.value("event", "");
    const std::uint32_t connector = ev.value("connector", 0u);
    if (kind == "connector") {
      const std::string before = status_[connector];
      const std::string now = ev.value("status", "");
      status_[connector] = now;
      line(t, who(connector), describe_event(ev));
      if (now == "Preparing" && before == "Available") driver_arrives(t, connector);
      return;
    }
    if (kind == "session_started") {
      open_[connector] = ev.value("transaction", "");
      if (auto a = attempts_.find(connector); a != attempts_.end()) {
        if (a->second.in_field) {
          ++tap_starts_;
          sims_.must(fmt::format("remove {}", connector));  // the driver puts the card or wallet away
        }
        attempts_.erase(a);
      }
    }
    if (kind == "step_up") {
      line(t, who(connector), describe_event(ev));
      answer_step_up(t, connector, ev);
      return;
    }
    if (kind == "start_refused") {
      line(t, who(connector), fmt::format("refused: {}", ev.value("reason", "")));
      start_refused(t, connector, ev.value("reason", ""));
      return;
    }
    if (kind == "session_closed") {
      const std::string txn = ev.value("transaction", "");
      open_.erase(connector);
      closed_.insert(txn);
      if (ev.value("capture_status", "").rfind("pending", 0) == 0) pending_captures_.insert(txn);
      if (ev.value("stop_reason", "") == "Fault") faulted_txn_ = txn;
    }
    if (kind == "operation") {
      const std::string txn = ev.value("transaction", "");
      const bool settles = ev.value("kind", "") == "capture" && ev.value("state", "") == "confirmed" && pending_captures_.erase(txn) > 0;
      if (settles && ev.value("method", "") == "credit") credit_settled_ = t;
      if (settles) line(t, "", describe_event(ev));
      return;
    }
    if (kind == "alarm") alarms_.emplace_back(ev.value("code", ""), ev.value("active", true), t);
    if (kind == "ready" || kind == "recovering" || kind.rfind("session_", 0) == 0 || kind == "tariff_boundary" || kind == "alarm" ||
        kind == "instance_failed") {
      line(t, who(connector), describe_event(ev));
    }
  }

  /// A driver plugs in: the one scheduled for the latest arrival at this connector so far (a
  /// vehicle back after the power cut is its driver's again).
  void driver_arrives(TimePoint t, std::uint32_t connector) {
    if (open_.count(connector)) return;  // a session resumed after a restart: its vehicle is back, not a new one
    const auto arrivals = kArrivals.find(connector);
    const auto drivers = kDrivers.find(connector);
    if (arrivals == kArrivals.end() || drivers == kDrivers.end()) return;
    std::size_t i = 0;
    while (i + 1 < arrivals->second.size() && utc_of(arrivals->second[i + 1]) <= t) ++i;
    Attempt a{.driver = drivers->second.at(std::min(i, drivers->second.size() - 1))};
    pay(t, connector, a);
    attempts_[connector] = a;
  }

  void pay(TimePoint t, std::uint32_t connector, Attempt& a) {
    ++a.tries;
    const Driver& d = a.driver;
    const std::string at = who(connector);
    if (a.fallback) {
      line(t, at, "the driver holds an e-CNY hard wallet to the reader instead");
      sims_.must(fmt::format("tap-wallet {} {} {}", connector, kFallbackWallet, kWalletBalanceFen));
      a.in_field = true;
      return;
    }
    switch (d.pays) {
      case Pays::card_tap:
        line(t, at, fmt::format("the driver holds a member card ({}) to the reader", mask_token(fmt::format("card:{}", d.id))));
        sims_.must(fmt::format("tap {} {}", connector, d.id));
        a.in_field = true;
        break;
      case Pays::wallet_tap:
        line(t, at, fmt::format("the driver holds an e-CNY hard wallet ({}) to the reader", mask_token(fmt::format("wallet:{}", d.id))));
        sims_.must(fmt::format("tap-wallet {} {} {}", connector, d.id, kWalletBalanceFen));
        a.in_field = true;
        break;
      case Pays::face: {
        line(t, at, "the driver looks into the camera (face payment)");
        // payment-face connects to the camera module at its start (again after the power cut).
        std::string answer;
        for (int i = 0; i < 500 && (answer = sims_.command(fmt::format("face {} 970", d.id))) != "ok"; ++i) std::this_thread::sleep_for(10ms);
        if (answer != "ok") throw std::runtime_error("face camera: " + answer);
        break;
      }
      case Pays::credit_app:
        line(t, at, "the driver chooses \"charge now, pay later\" (credit) in the app");
        start_in_background({{"cmd", "session_start"}, {"connector", connector}, {"method", "credit"}, {"token", fmt::format("credit:{}", d.id)}});
        break;
      case Pays::card_app:
        line(t, at, fmt::format("the driver asks the app for {} of charging, paid by member card", yuan(d.amount_fen)));
        start_in_background({{"cmd", "session_start"},
                             {"connector", connector},
                             {"method", "card"},
                             {"token", fmt::format("card:{}", d.id)},
                             {"mode", fmt::format("amount:{}", d.amount_fen)}});
        break;
    }
  }

  /// A start through the control socket answers when the session has started or was refused,
  /// which may wait for the driver's second factor: it goes on its own connection so the day
  /// goes on meanwhile. Its outcome is read from the events.
  void start_in_background(json req) {
    const fs::path socket = socket_;
    starts_.push_back(std::async(std::launch::async, [socket, req = std::move(req)] { return control_request(socket, req, 60s); }));
  }

  void collect_replies() {
    for (auto it = starts_.begin(); it != starts_.end();) {
      if (it->wait_for(0s) != std::future_status::ready) {
        ++it;
        continue;
      }
      try {
        it->get();
      } catch (const std::exception& e) {
        line(now_, "", fmt::format("the app's request failed: {}", e.what()));
      }
      it = starts_.erase(it);
    }
  }

  void start_refused(TimePoint t, std::uint32_t connector, const std::string& reason) {
    auto it = attempts_.find(connector);
    if (it == attempts_.end()) return;
    Attempt& a = it->second;
    if (a.in_field) {
      sims_.must(fmt::format("remove {}", connector));
      a.in_field = false;
    }
    // A declined card is followed by another means; a refusal that says nothing of the card
    // (an answer that came too late on a machine too loaded for this speed) by the same again,
    // as a driver taps again.
    if (reason.find("declined") != std::string::npos && !a.fallback) {
      ++declined_;
      a.fallback = true;
      a.tries = 0;
    }
    if (a.tries >= 4) {
      attempts_.erase(it);
      return;
    }
    pay(t, connector, a);
  }

  void answer_step_up(TimePoint t, std::uint32_t connector, const json& ev) {
    const auto factors = ev.value("factors", json::array());
    const bool pin = std::find(factors.begin(), factors.end(), "pin") != factors.end();
    auto a = attempts_.find(connector);
    if (!pin || a == attempts_.end() || std::string(a->second.driver.id) != kPinCard) {
      line(t, who(connector), "nobody answers the second verification");
      return;
    }
    line(t, who(connector), "the driver enters the card's PIN at the pile");
    step_up_txn_ = ev.value("transaction", "");
    start_in_background({{"cmd", "session_answer"}, {"connector", connector}, {"pin", kPin}});
  }

  /// The operator gives back part of the session that the fault stopped.
  void refund() {
    refund_done_ = true;
    if (faulted_txn_.empty()) return;
    const json r = daemon_->request({{"cmd", "refund"}, {"transaction", faulted_txn_}, {"amount_fen", kRefundFen}, {"reason", "goodwill: the charge stopped on a fault"}});
    line(now_, "operator", fmt::format("refunds {} of {} (the charge stopped on a fault): {}", yuan(kRefundFen), faulted_txn_,
                                       r.value("ok", false) ? r.value("state", std::string("asked")) : "refused: " + r.value("error", std::string("?"))));
  }

  /// The site file with the lower service fee, written whole and renamed into place (an editor
  /// or a configuration tool does the same), then the reload.
  void price_change() {
    price_changed_ = true;
    std::ifstream in(site_);
    std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    for (std::size_t at; (at = text.find(kOldService)) != std::string::npos;) text.replace(at, std::string(kOldService).size(), kNewService);
    const fs::path next = site_.string() + ".new";
    {
      std::ofstream out(next, std::ios::trunc);
      out << text;
    }
    fs::rename(next, site_);
    for (const auto& [connector, txn] : open_) charging_at_reload_.insert(txn);
    const json r = daemon_->request({{"cmd", "reload"}});
    std::string what;
    for (const auto& a : r.value("applied", json::array())) what += (what.empty() ? "" : "; ") + a.get<std::string>();
    if (!r.value("ok", false)) what = "refused: " + r.value("error", std::string("no answer"));
    reload_applied_ = r.value("ok", false) && !r.value("applied", json::array()).empty();
    line(now_, "operator", fmt::format("lowers the service fee to 0.60 yuan/kWh and reloads the site file (pilectl reload): {}", what));
  }

  void power_cut() {
    cut_done_ = true;
    cut_txn_ = open_[kCutConnector];
    const json st = daemon_->request({{"cmd", "status"}});
    std::string meter;
    if (const auto sessions = sessions_of(st); sessions.count(cut_txn_) > 0) meter = fmt::format(", {} kWh so far", format_kwh(sessions.at(cut_txn_).second));
    if (auto tt = time_of(st)) now_ = std::max(now_, *tt);
    line(now_, "", fmt::format("*** POWER CUT: pilecored is killed (SIGKILL) while {} charges on connector {}{}", cut_txn_, kCutConnector, meter));
    watch_.reset();
    for (auto& f : starts_) f.wait();
    starts_.clear();
    daemon_->cut();
    daemon_.reset();
    const TimePoint back = now_ + std::chrono::minutes(kOutageMinutes);
    line(back, "", fmt::format("*** power is back after {} minutes: pilecored restarts and recovers what was open", kOutageMinutes));
    open_.clear();
    start_again(back);
    const json r = daemon_->request({{"cmd", "receipt"}, {"transaction", cut_txn_}});
    if (r.value("status", "") == "closed") {
      closed_.insert(cut_txn_);
      line(now_, who(kCutConnector),
           fmt::format("{} recovered from the meter: {} kWh, {} ({})", cut_txn_, format_kwh(r.value("energy_wh", std::int64_t{0})),
                       yuan(r.value("total_fen", std::int64_t{0})), r.value("capture_status", "")));
      if (r.value("capture_status", "").rfind("pending", 0) == 0) pending_captures_.insert(cut_txn_);
    } else {
      line(now_, who(kCutConnector), fmt::format("{} is {} after the restart", cut_txn_, r.value("status", "unknown")));
    }
  }

  /// The next pilecored, its clock starting at `at`, after a power cut or a planned restart:
  /// drivers who were still presenting a card or wallet put it away (they present it again
  /// when the new daemon shows them waiting).
  void start_again(TimePoint at) {
    now_ = at;
    status_.clear();
    for (const auto& [connector, a] : attempts_) {
      if (a.in_field) sims_.must(fmt::format("remove {}", connector));
    }
    attempts_.clear();
    daemon_ = std::make_unique<Daemon>(o_, site_, state_, socket_, at, log_);
    subscribe();
  }

  /// The charging sessions in a status answer: transaction -> (connector, energy so far).
  static std::map<std::string, std::pair<std::uint32_t, std::int64_t>> sessions_of(const json& st) {
    std::map<std::string, std::pair<std::uint32_t, std::int64_t>> out;
    for (const auto& c : st.value("connectors", json::array())) {
      if (c.contains("session")) out[c["session"].value("transaction", "")] = {c.value("id", 0u), c["session"].value("energy_wh", std::int64_t{0})};
    }
    return out;
  }

  /// A planned restart (kRestarts): SIGTERM, as systemd stops the service for a restart or a
  /// package upgrade, and the next pilecored. The sessions charging are suspended and must come
  /// back as the same transactions.
  void planned_restart() {
    const char* at = kRestarts[restarts_done_++];
    for (auto& f : starts_) f.wait();  // an app's start in flight is answered first
    collect_replies();
    const json st = daemon_->request({{"cmd", "status"}});
    if (auto tt = time_of(st)) now_ = std::max(now_, *tt);
    const auto before = sessions_of(st);
    std::string what;
    for (const auto& [txn, cs] : before) {
      restarted_[txn] = Restarted{.at = at, .connector = cs.first, .energy_wh = cs.second};
      what += fmt::format("{}{} on connector {} ({} kWh)", what.empty() ? "" : ", ", txn, cs.first, format_kwh(cs.second));
    }
    line(now_, "", fmt::format("*** planned restart (systemctl restart, as a package upgrade does): SIGTERM while {} charge{}",
                               what.empty() ? std::string("no session") : what, before.size() == 1 ? "s" : ""));
    watch_.reset();
    const auto wall = std::chrono::steady_clock::now();
    const int rc = daemon_->stop();
    daemon_.reset();
    if (rc != 0) throw std::runtime_error(fmt::format("pilecored exited with status {} on the planned restart's SIGTERM", rc));
    // The old pilecored's clock ran on while it stopped: the next one starts a minute after it.
    const auto stopping = std::chrono::duration_cast<Duration>((std::chrono::steady_clock::now() - wall) * o_.speed);
    start_again(now_ + stopping + std::chrono::minutes(1));
    const auto after = sessions_of(daemon_->request({{"cmd", "status"}}));
    for (const auto& [txn, cs] : before) {
      const auto it = after.find(txn);
      restarted_[txn].resumed = it != after.end() && it->second.first == cs.first;
      line(now_, who(cs.first), restarted_[txn].resumed ? fmt::format("{} resumed: the same transaction, hold and price, {} kWh so far", txn, format_kwh(it->second.second))
                                                        : fmt::format("{} did not resume", txn));
    }
  }

  /// The back end's events: records as they arrive (counted), and the answers to its remote
  /// commands (shown). Then the operator's inspection of connector 1, from the back end.
  void from_backend() {
    for (const json& ev : backend_->events()) {
      const std::string kind = ev.value("event", "");
      if (kind == "record") ++(ev.value("link", "mqtt") == "lorawan" ? lorawan_records_ : records_);
      if (kind == "broker") broker_event(ev);
      if (kind == "command_result") {  // the pile's answer record's body is "result"
        const json body = ev.value("result", json::object());
        results_[ev.value("q", std::int64_t{0})] = body;
        line(now_, "back end", fmt::format("the pile answers {} #{}: {}{}", ev.value("command", "?"), ev.value("q", 0), body.value("result", "?"),
                                           body.contains("message") ? ": " + body.value("message", "") : std::string()));
      }
    }
    const bool from = now_ >= utc_of(kInspectionFrom), to = now_ >= utc_of(kInspectionTo);
    if (from && inspection_ == 0) {
      remote(fmt::format("takes connector {} out of service for an inspection", kInspectionConnector), "set_availability",
             {{"connector", kInspectionConnector}, {"available", false}});
      inspection_ = 1;
    } else if (to && inspection_ == 1) {
      remote(fmt::format("puts connector {} back in service", kInspectionConnector), "set_availability", {{"connector", kInspectionConnector}, {"available", true}});
      inspection_ = 2;
    }
    if (lorawan_) outage();
  }

  /// The uplink outage, a phase at a time (kOutageFrom): each step waits for its simulated time
  /// and for kOutagePhaseWall of real time since the step before.
  void outage() {
    const auto wall = std::chrono::steady_clock::now();
    const bool phase_over = wall >= outage_step_wall_ + kOutagePhaseWall;
    auto step = [&](const std::string& what) {
      ++outage_step_;
      outage_step_wall_ = wall;
      line(now_, "", what);
    };
    switch (outage_step_) {
      case 0:
        // After the inspection's two commands are answered: a command sent into the outage
        // would wait for the pile's next connection, which the demo does not script.
        if (now_ < utc_of(kOutageFrom) || inspection_ < 2 || results_.size() < commands_sent_) return;
        snapshot_ = backup();
        backend_->broker("stop");
        sims_.must("modem-registration 2");
        sims_.must("lorawan-joins fail");
        sims_.must("lorawan-reset");
        outage_from_ = now_;
        step(fmt::format("*** UPLINK OUTAGE: the back end's broker stops, the modem loses its registration, the LoRaWAN module resets and the "
                         "network refuses its joins (the operator's backup of the database was taken just before: {})",
                         snapshot_.string()));
        return;
      case 1:
        if (now_ < outage_from_ + std::chrono::minutes(kJoinsRefusedMinutes) || !phase_over) return;
        sims_.must("lorawan-joins ok");
        return step("the LoRaWAN network accepts joins again");
      case 2:
        if (now_ < outage_from_ + std::chrono::minutes(kUnregisteredMinutes) || !phase_over) return;
        sims_.must("modem-registration 1");
        return step("the modem finds its network again (registered, home)");
      case 3:
        if (!broker_stopped_ || now_ < *broker_stopped_ + std::chrono::minutes(kBrokerDownMinutes) || !phase_over) return;
        backend_->broker("start");
        return step("the back end's broker starts again on the same port");
      default: return;
    }
  }

  void broker_event(const json& ev) {
    const std::string state = ev.value("state", "");
    if (state == "stopped" && !broker_stopped_) broker_stopped_ = now_;
    if (state == "started" && broker_stopped_ && !broker_started_) {
      broker_started_ = now_;
      line(now_, "back end", fmt::format("the broker is back after {} simulated minutes", std::chrono::duration_cast<std::chrono::minutes>(now_ - *broker_stopped_).count()));
    }
  }

  /// The operator's backup of the pile's database (a consistent copy, as `sqlite3 .backup` or
  /// VACUUM INTO takes one while the daemon runs): the older copy the ledger's anchor must catch.
  fs::path backup() {
    const fs::path dir = state_ / "backup";
    fs::create_directories(dir);
    const fs::path copy = dir / "pilecore.db";
    std::error_code ec;
    fs::remove(copy, ec);
    Database ro(state_ / "pilecore.db", Database::ReadOnly{});
    Stmt vacuum(ro.handle(), "VACUUM INTO ?");
    vacuum.bind(1, copy.string());
    vacuum.step();
    return copy;
  }

  /// A remote command from the operator's back end: signed with its command key and sent over
  /// MQTT; the pile's answer comes back as a record. Stamped with the pile's (simulated) time.
  void remote(const std::string& what, const std::string& command, const json& args) {
    const auto t = std::chrono::duration_cast<std::chrono::seconds>(now_.time_since_epoch()).count();
    backend_->command({{"site", site_id_}, {"pile", kPileId}, {"device", kDeviceId}, {"command", command}, {"args", args}, {"t", t}});
    ++commands_sent_;
    line(now_, "back end", fmt::format("the operator {} (remote command {}, signed)", what, command));
  }

  /// Waits (in wall time) until the outbox holds no control or transaction record, status change
  /// or alarm: every money operation, ledger record, command answer, connector state and alarm
  /// acknowledged by the back end (heartbeats come on, each superseding the last).
  bool drain_uplink() {
    fs::path db = state_ / "pilecore.db";
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    for (;;) {
      from_backend();
      // -1: busy, the daemon writes; ask again.
      const std::int64_t waiting = read_number(db, "SELECT count(*) FROM outbox WHERE class <= 1 OR kind IN ('status', 'alarm')");
      if (waiting == 0) {
        line(now_, "back end", fmt::format("every control and transaction record, status change and alarm is acknowledged ({} records received over MQTT, {} over LoRaWAN)", records_,
                                           lorawan_records_));
        return true;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        line(now_, "back end", fmt::format("{} control, transaction, status or alarm record(s) still wait for the back end's acknowledgement", waiting));
        return false;
      }
      std::this_thread::sleep_for(50ms);
    }
  }

  void collect_receipts() {
    for (const auto& txn : closed_) {
      json r = daemon_->request({{"cmd", "receipt"}, {"transaction", txn}});
      if (r.value("ok", false)) receipts_.push_back(std::move(r));
    }
    std::sort(receipts_.begin(), receipts_.end(), [](const json& a, const json& b) { return a.value("transaction", "") < b.value("transaction", ""); });
  }

  const DemoOptions& o_;
  std::ostream& out_;
  std::string zone_;
  fs::path state_, site_, log_, socket_;
  Simulators& sims_;
  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<ControlWatch> watch_;
  TimePoint now_{};
  std::map<std::uint32_t, std::string> status_;
  std::map<std::uint32_t, std::string> open_;  // connector -> transaction
  std::map<std::uint32_t, Attempt> attempts_;  // connector -> the driver trying to start
  std::vector<std::future<json>> starts_;      // control requests on their own connections
  std::set<std::string> closed_;
  std::set<std::string> pending_captures_;
  std::vector<json> receipts_;
  std::size_t declined_ = 0;
  std::size_t tap_starts_ = 0;
  bool cut_done_ = false;
  std::size_t restarts_done_ = 0;
  std::map<std::string, Restarted> restarted_;  ///< by transaction
  bool price_changed_ = false;
  bool reload_applied_ = false;
  std::set<std::string> charging_at_reload_;  ///< the sessions that keep their price
  bool refund_done_ = false;
  std::string cut_txn_, faulted_txn_, step_up_txn_;
  BackEnd* backend_ = nullptr;
  std::string site_id_;
  int inspection_ = 0;  ///< 0 before, 1 out of service, 2 back
  std::map<std::int64_t, json> results_;
  std::size_t commands_sent_ = 0;
  std::size_t records_ = 0, lorawan_records_ = 0;
  bool uplink_drained_ = false;
  bool lorawan_ = false;
  int outage_step_ = 0;
  std::chrono::steady_clock::time_point outage_step_wall_{};
  TimePoint outage_from_{};
  std::optional<TimePoint> broker_stopped_, broker_started_;
  fs::path snapshot_;
  std::vector<std::tuple<std::string, bool, TimePoint>> alarms_;
  std::optional<TimePoint> credit_settled_;
  json stats_;
};

}  // namespace

std::string describe_event(const json& ev) {
  const std::string kind = ev.value("event", "");
  std::string what;
  if (kind == "connector") {
    std::string why = ev.value("why", "");
    if (why.rfind("power stage: ", 0) == 0) why = why.substr(13);
    what = fmt::format("{} ({})", ev.value("status", ""), why);
  } else if (kind == "session_started") {
    what = fmt::format("{} started for {}: {} held ({}), meter {} kWh", ev.value("transaction", ""), ev.value("user", ""),
                       yuan(ev.value("authorized_fen", std::int64_t{0})), ev.value("payment_ref", ""), format_kwh(ev.value("meter_start_wh", std::int64_t{0})));
  } else if (kind == "tariff_boundary") {
    what = fmt::format("{} enters the {} period ({}): meter {} kWh committed", ev.value("transaction", ""), ev.value("period", ""), ev.value("plan", ""),
                       format_kwh(ev.value("meter_wh", std::int64_t{0})));
  } else if (kind == "session_stopping") {
    what = fmt::format("{} stopping ({})", ev.value("transaction", ""), ev.value("reason", ""));
  } else if (kind == "session_closed") {
    what = fmt::format("{} {} ({}): {} kWh, {}, paid {} ({})", ev.value("transaction", ""), ev.value("outcome", ""), ev.value("stop_reason", ""),
                       format_kwh(ev.value("energy_wh", std::int64_t{0})), yuan(ev.value("total_fen", std::int64_t{0})),
                       yuan(ev.value("captured_fen", std::int64_t{0})), ev.value("capture_status", ""));
  } else if (kind == "recovering") {
    std::string ids;
    for (const auto& id : ev.value("transactions", json::array())) ids += (ids.empty() ? "" : ", ") + id.get<std::string>();
    what = fmt::format("recovering {} left open: {}", ev["transactions"].size() == 1 ? "a transaction" : "transactions", ids);
  } else if (kind == "alarm") {
    what = fmt::format("alarm {} {} by {}: {}", ev.value("code", ""), ev.value("active", true) ? "raised" : "cleared", ev.value("instance", ""), ev.value("message", ""));
  } else if (kind == "instance_failed") {
    what = fmt::format("instance {} failed: {}", ev.value("instance", ""), ev.value("reason", ""));
  } else if (kind == "step_up") {
    std::string reasons;
    for (const auto& r : ev.value("reasons", json::array())) reasons += (reasons.empty() ? "" : "; ") + r.get<std::string>();
    std::string factors;
    for (const auto& f : ev.value("factors", json::array())) factors += (factors.empty() ? "" : ", ") + f.get<std::string>();
    what = ev.value("source", "") == "risk" ? fmt::format("{}: risk control asks for a second verification ({}); the driver may give: {}", ev.value("transaction", ""), reasons, factors)
                                            : fmt::format("{}: the payment method asks: {}", ev.value("transaction", ""), ev.value("prompt", ""));
  } else if (kind == "start_refused") {
    what = fmt::format("{} refused: {}", ev.value("transaction", ""), ev.value("reason", ""));
  } else if (kind == "operation") {
    what = fmt::format("{} {} of {} {} ({})", ev.value("transaction", ""), ev.value("kind", ""), yuan(ev.value("amount_fen", std::int64_t{0})),
                       ev.value("state", ""), ev.value("method", ""));
  } else if (kind == "ready") {
    what = fmt::format("pilecored ready: site {}, {} connectors, {} plugin instances", ev.value("site", ""), ev.value("connectors", 0), ev.value("instances", 0));
  } else {
    what = ev.dump();
  }
  return what;
}

std::string format_event_text(const json& ev, const std::string& zone) {
  const auto t = time_of(ev);
  const std::uint32_t connector = ev.value("connector", 0u);
  return fmt::format("{}  {:<12} {}", t ? local_time(*t, zone) : "--:--", connector ? fmt::format("connector {}", connector) : "", describe_event(ev));
}

namespace {

/// What the pile's database says the back end must hold: a key per ledger record, per money
/// operation's state and per closed transaction (docs/protocol.md section 4), per e-CNY voucher
/// or refund in payment-dcep's upload queue (`dcep_db`, when there is one), and the highest
/// ledger seq.
std::pair<std::set<std::string>, std::int64_t> expected_records(const fs::path& db_path, const fs::path& dcep_db) {
  std::set<std::string> keys;
  std::int64_t highest = 0;
  Database db(db_path, Database::ReadOnly{});
  for (Stmt q(db.handle(), "SELECT seq FROM ledger"); q.step();) {
    keys.insert(fmt::format("ledger:{}", q.i64(0)));
    highest = std::max(highest, q.i64(0));
  }
  for (Stmt q(db.handle(), "SELECT id, state, attempts FROM operations"); q.step();) {
    keys.insert(fmt::format("op:{}/{}{}", q.text(0), q.text(1), q.text(1) == "pending" ? fmt::format("/{}", q.i64(2)) : ""));
  }
  for (Stmt q(db.handle(), "SELECT id FROM transactions WHERE status = 'closed'"); q.step();) keys.insert(fmt::format("txn:{}/closed", q.text(0)));
  std::error_code ec;
  if (fs::exists(dcep_db, ec)) {
    Database vouchers(dcep_db, Database::ReadOnly{});
    for (Stmt q(vouchers.handle(), "SELECT operation_id FROM upload_queue"); q.step();) keys.insert(fmt::format("voucher:{}", q.text(0)));
  }
  return {keys, highest};
}

/// The uplink's part of the summary: the back end stops, its report is read, and every record
/// the pile's database says it must hold is checked to be there, once; the ledger anchored at
/// its last record; the remote commands answered.
void uplink_summary(BackEnd& backend, const fs::path& program, const fs::path& db, const fs::path& cert, const std::string& verified, const Day& day,
                    std::ostream& out, const std::function<void(bool, const std::string&)>& check) {
  const json& where = backend.where();
  const int rc = backend.finish();
  std::string said;
  const int rr = run_tool({program.string(), "report", "--db", where.value("db", ""), "--json"}, "", said);
  const json report = json::parse(said, nullptr, false);
  json device;
  for (const auto& d : report.is_object() ? report.value("devices", json::array()) : json::array()) {
    if (d.value("device", json()) == json(kDeviceId)) device = d;
  }
  check(rc == 0 && rr == 0 && device.is_object(), fmt::format("the reference back end stopped cleanly (status {}) and reported (status {}) on device {}", rc, rr, kDeviceId));
  if (!device.is_object()) return;
  std::set<std::string> held;
  for (const auto& k : device.value("keys", json::array())) held.insert(k.get<std::string>());
  std::string kinds;
  std::size_t records = 0;
  const json by_kind = device.value("records", json::object());  // named: items() does not keep a temporary alive
  for (const auto& [kind, n] : by_kind.items()) {
    kinds += fmt::format("{}{} {}", kinds.empty() ? "" : ", ", n.get<std::size_t>(), kind);
    records += n.get<std::size_t>();
  }
  out << fmt::format("\nBack end: {} records held ({}); {} resent records and {} repeated frames dropped as duplicates; ledger held to seq {}; "
                     "{} compact telemetry frames\n",
                     records, kinds, device.value("record_duplicates", 0), device.value("frame_duplicates", 0),
                     device.value("ledger_anchor", json()).is_number() ? device["ledger_anchor"].dump() : "-", device.value("compact_telemetry_frames", 0));
  check(device.value("compact_telemetry_frames", 0) > 0, "the pile's compact telemetry reached the back end");
  const fs::path dcep_db = db.parent_path() / "plugins" / "ecny" / "dcep.db";
  auto [expected, highest] = expected_records(db, dcep_db);
  std::vector<std::string> missing;
  for (const auto& k : expected) {
    if (!held.count(k)) missing.push_back(k);
  }
  const auto vouchers = std::count_if(expected.begin(), expected.end(), [](const std::string& k) { return k.rfind("voucher:", 0) == 0; });
  check(missing.empty(), fmt::format("every ledger record, money operation, closed transaction and e-CNY voucher ({}) reached the back end ({} of {} missing{}{})",
                                     vouchers, missing.size(), expected.size(), missing.empty() ? "" : ", e.g. ", missing.empty() ? "" : missing.front()));
  check(vouchers > 0, "the e-CNY sessions' vouchers were uploaded");
  // payment-dcep marks a voucher uploaded when the back end's ack names it: none still queued.
  const std::int64_t queued = read_number(dcep_db, "SELECT count(*) FROM upload_queue WHERE state = 'queued'");
  check(queued == 0, fmt::format("payment-dcep holds no voucher still waiting for the back end ({} queued)", queued));
  check(highest > 0 && device.value("ledger_anchor", json()) == json(highest) && verified.find(fmt::format("up to seq {},", highest)) != std::string::npos,
        fmt::format("the ledger anchored at its last record, seq {} (the back end holds {}; ledger verify said: {})", highest,
                    device.value("ledger_anchor", json()).dump(), verified));
  check(day.uplink_drained(), "every control and transaction record, status change and alarm acknowledged by the back end at the end of the day");
  // Alarms have no row on the pile but their outbox record: each one the watch stream showed
  // must be held, keyed alarm:<ms>:<n> (the record is stamped a moment after the event).
  std::vector<std::int64_t> alarm_ms;
  for (const auto& k : held) {
    if (k.rfind("alarm:", 0) == 0) alarm_ms.push_back(std::strtoll(k.c_str() + 6, nullptr, 10));
  }
  std::size_t alarms_missing = 0;
  std::string first_missing;
  for (const auto& [code, active, t] : day.alarms()) {
    const std::int64_t ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
    if (std::none_of(alarm_ms.begin(), alarm_ms.end(), [&](std::int64_t a) { return a >= ms - 60000 && a <= ms + 60000; })) {
      if (alarms_missing++ == 0) first_missing = fmt::format("{} {}", code, active ? "raised" : "cleared");
    }
  }
  check(!day.alarms().empty() && alarms_missing == 0, fmt::format("every alarm raised or cleared reached the back end ({} of {} missing{}{})", alarms_missing,
                                                                   day.alarms().size(), first_missing.empty() ? "" : ", e.g. ", first_missing));
  if (day.outage_planned()) {
    const json by_link = device.value("records_by_link", json::object());
    const json lora = day.simulator_stats().value("lorawan", json::object());
    out << fmt::format("Uplink outage: the broker was down {} simulated minutes; LoRaWAN: {} join attempts, {} uplinks ({} reached the back end's "
                       "broker, {} lost with it), {} downlinks; records first held from MQTT {}, from LoRaWAN {}\n",
                       day.broker_down().count(), lora.value("join_attempts", 0), lora.value("uplinks", 0), lora.value("forwarded", 0), lora.value("lost", 0),
                       lora.value("downlinks", 0), by_link.value("mqtt", 0), by_link.value("lorawan", 0));
    check(day.outage_done() && day.broker_down() >= std::chrono::minutes(kBrokerDownMinutes),
          fmt::format("the uplink outage played to its end, the broker down at least {} simulated minutes (it was {})", kBrokerDownMinutes, day.broker_down().count()));
    check(by_link.value("lorawan", 0) > 0 && lora.value("downlinks", 0) > 0, "records went up over LoRaWAN, and acknowledgements came down");
    // The operator's backup from before the outage, put in the database's place: the anchor
    // the back end acknowledged since (kept beside the database) says the copy is short.
    const fs::path copy = day.backup_copy();
    std::error_code ec;
    fs::copy_file(fs::path(db.string() + ".anchor"), fs::path(copy.string() + ".anchor"), fs::copy_options::overwrite_existing, ec);
    const std::int64_t copy_highest = read_number(copy, "SELECT COALESCE(MAX(seq), 0) FROM ledger");
    // The copy was taken while the daemon ran: its newest records may not be signed yet, which
    // ledger verify accepts when told; what it must not accept is a copy the anchor outruns.
    std::ostringstream vo, ve;
    VerifyOptions accept_tail;
    accept_tail.accept_unsigned_tail = true;
    const int rv = ec ? -1 : ledger_verify(copy, cert, vo, ve, accept_tail);
    std::string said_copy = ve.str().empty() ? vo.str() : ve.str();
    while (!said_copy.empty() && said_copy.back() == '\n') said_copy.pop_back();
    out << fmt::format("The backup from before the outage in the database's place (ends at ledger seq {}): pilectl ledger verify --accept-unsigned-tail says: {}\n", copy_highest,
                       said_copy);
    const json anchor = device.value("ledger_anchor", json());
    check(rv == 1 && said_copy.find("BROKEN") != std::string::npos && said_copy.find("anchor") != std::string::npos && anchor.is_number() &&
              anchor.get<std::int64_t>() > copy_highest,
          fmt::format("the ledger anchor catches the older copy of the database (verify status {}; the back end holds seq {}, the copy ends at {})", rv,
                      anchor.dump(), copy_highest));
  }
  const auto& results = day.command_results();
  const bool all_ok = std::all_of(results.begin(), results.end(), [](const auto& r) { return r.second.value("result", "") == "ok"; });
  check(day.commands_sent() == 2 && results.size() == 2 && all_ok,
        fmt::format("the back end's two remote commands answered ok ({} sent, {} answered)", day.commands_sent(), results.size()));
}

}  // namespace

int run_demo(const DemoOptions& options, std::ostream& out, std::ostream& err) {
  DemoOptions o = options;
  if (o.site.empty()) o.site = data_dir() / "sim-site.yaml";
  if (o.pilecored.empty()) o.pilecored = executable_dir() / "pilecored";
  std::error_code ec;
  if (!fs::exists(o.site, ec)) {
    err << fmt::format("pilectl demo: the simulated site {} is missing (install pilecore-sim, or give --site)\n", o.site.string());
    return 2;
  }
  if (::access(o.pilecored.c_str(), X_OK) != 0) {
    err << fmt::format("pilectl demo: cannot run {} (give --pilecored)\n", o.pilecored.string());
    return 2;
  }
  if (o.sim_payments.empty()) o.sim_payments = helper_program("pilecore-sim-payments");
  if (::access(o.sim_payments.c_str(), X_OK) != 0) {
    err << fmt::format("pilectl demo: cannot run the payment simulators {} (install pilecore-sim)\n", o.sim_payments.string());
    return 2;
  }
  fs::path state = o.state_dir;
  if (state.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = fmt::format("{}/pilecore-demo.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (::mkdtemp(templ.data()) == nullptr) {
      err << fmt::format("pilectl demo: cannot make a state directory from {}: {}\n", templ, std::strerror(errno));
      return 2;
    }
    state = templ;
  } else {
    fs::create_directories(state, ec);
    if (fs::exists(state / "pilecore.db", ec)) {
      err << fmt::format("pilectl demo: {} already holds a pilecore.db; give an empty or new --state-dir\n", state.string());
      return 2;
    }
  }
  state = fs::absolute(state);
  out << fmt::format("pilecore demo: a simulated day at site {} on {}\n", o.site.string(), day_text());
  out << fmt::format("state directory (kept): {}\n", state.string());

  // The far side of the payment methods: readers, cards, wallets, camera, providers.
  std::string error;
  std::unique_ptr<Simulators> sims;
  try {
    sims = std::make_unique<Simulators>(o.sim_payments, state / "sim", static_cast<int>(kArrivals.size()), state / "simulators.log");
  } catch (const std::exception& e) {
    err << fmt::format("pilectl demo: {}\n", e.what());
    return 2;
  }

  // The operator's side of the uplink: the reference back end with a Mosquitto broker on
  // loopback, unless asked for the loopback link or these cannot run here.
  std::unique_ptr<BackEnd> backend;
  if (o.uplink != "loopback") {
    if (o.backend.empty()) o.backend = helper_program("pilecore-backend");
    std::string why;
    if (::access("/usr/sbin/mosquitto", X_OK) != 0) {
      why = "Mosquitto is not installed (/usr/sbin/mosquitto; Debian package mosquitto)";
    } else if (::access(o.backend.c_str(), X_OK) != 0) {
      why = fmt::format("the reference back end {} is not installed (pilecore-sim)", o.backend.string());
    } else {
      try {
        backend = std::make_unique<BackEnd>(o.backend, state / "backend", state / "backend.log");
      } catch (const std::exception& e) {
        why = e.what();
      }
    }
    if (!backend && o.uplink == "mqtt") {
      err << fmt::format("pilectl demo: --uplink mqtt: {}\n", why);
      return 2;
    }
    if (!backend) out << fmt::format("uplink: {}; the pile's records go to sim-link instead, a loopback link inside pilecored that plays the back end\n", why);
  }
  bool lorawan = false;
  if (backend) {
    out << fmt::format("uplink: link-5g on a simulated RM500Q modem, MQTT with mutual TLS to Mosquitto on 127.0.0.1:{}, answered by the reference "
                       "back end (log {})\n",
                       backend->where().value("port", 0), (state / "backend.log").string());
    const json& w = backend->where();
    if (w.contains("lns_cert") && sims->where().contains("lorawan")) {
      // The LoRaWAN network server (ChirpStack's MQTT integration) on the back end's broker.
      const std::string answer = sims->command(fmt::format("network-server {} {} {} {}", w.value("port", 0), w.value("ca", ""), w.value("lns_cert", ""),
                                                           w.value("lns_key", "")));
      lorawan = answer == "ok";
      out << (lorawan ? "uplink: link-lorawan on a simulated RAK3172 (CN470), through a simulated network server to the same back end; "
                        "status records go that way\n"
                      : fmt::format("uplink: no LoRaWAN: the network server did not start: {}\n", answer));
    }
  } else if (o.uplink == "loopback") {
    out << "uplink: sim-link, a loopback link inside pilecored that plays the back end (--uplink loopback)\n";
  }

  // The site with the scenario, validated like any site file.
  json backend_where = backend ? backend->where() : json();
  if (!lorawan && backend_where.is_object()) backend_where.erase("lns_cert");
  const std::string yaml = scenario_yaml(o.site, sims->where(), backend_where, error);
  if (yaml.empty()) {
    err << "pilectl demo: " << error << "\n";
    return 2;
  }
  const fs::path site = state / "site.yaml";
  std::ofstream(site) << yaml;
  std::vector<fs::path> dirs = o.plugin_dirs.empty() ? default_plugin_dirs() : o.plugin_dirs;
  PluginRegistry registry(dirs);
  auto outcome = load_site(site, registry);
  if (!outcome.site) {
    err << outcome.diagnostics.format();
    err << fmt::format("pilectl demo: the scenario site {} is invalid\n", site.string());
    return 2;
  }
  const SiteConfig& cfg = *outcome.site;
  out << fmt::format("site file with the scenario: {}\n", site.string());

  // The device key that signs the ledger.
  IdentityOptions id;
  id.key = resolve_identity_location(cfg.identity->key, state);
  id.certificate = resolve_identity_location(cfg.identity->certificate, state);
  id.algorithm = cfg.identity->algorithm;
  id.common_name = cfg.id;
  id.organization = cfg.identity->organization;
  std::ostringstream keys_out, keys_err;
  if (keys_init(id, keys_out, keys_err) != 0) {
    err << keys_err.str() << "pilectl demo: cannot make the device key\n";
    return 2;
  }
  out << fmt::format("device key and certificate: {} ({})\n", id.certificate.string(), to_string(id.algorithm));

  // The member cards' accounts, as an operator opens them with pilectl accounts; one card has
  // a PIN for the risk step-up. The face-pay provider knows two faces; the credit provider
  // scores one user.
  const std::string pilectl = (executable_dir() / "pilectl").string();
  // The instance's state directory, as pilecored makes it (owner-only): `accounts add` opens
  // the table in an existing directory only, so a mistyped path is not a new table.
  fs::create_directories(state / "plugins" / "card", ec);
  fs::permissions(state / "plugins", fs::perms::owner_all, ec);
  fs::permissions(state / "plugins" / "card", fs::perms::owner_all, ec);
  for (const auto& [uid, balance] : kAccounts) {
    std::string said;
    std::vector<std::string> args = {pilectl, "accounts", "--state-dir", state.string(), "--instance", "card", "--time-zone", cfg.timezone,
                                     "add", "--uid", uid, "--balance-fen", std::to_string(balance)};
    int rc = run_tool(args, "", said);
    if (rc == 0 && std::string(uid) == kPinCard) {
      args = {pilectl, "accounts", "--state-dir", state.string(), "--instance", "card", "set-pin", "--uid", uid};
      rc = run_tool(args, std::string(kPin) + "\n", said);
    }
    if (rc != 0) {
      err << fmt::format("pilectl demo: pilectl accounts failed ({}): {}\n", rc, said);
      return 2;
    }
  }
  out << fmt::format("member-card accounts: {} in {}\n", kAccounts.size(), (state / "plugins" / "card" / "cards.db").string());
  try {
    for (const auto& [face, limit] : kFaces) sims->must(fmt::format("enrol-face {} {}", face, limit));
    sims->must(fmt::format("credit-score {} {}", kCreditUser, kCreditScore));
  } catch (const std::exception& e) {
    err << fmt::format("pilectl demo: {}\n", e.what());
    return 2;
  }
  out << fmt::format("payment simulators (PN532 readers, e-CNY wallets, face camera and provider, credit provider): {}\n\n",
                     (state / "simulators.log").string());

  const fs::path log = state / "pilecored.log";
  Day day(o, out, cfg.timezone, state, site, log, *sims, backend.get(), cfg.id);
  if (lorawan) day.with_outage();
  const bool played = day.play(error);
  if (!played) {
    err << fmt::format("pilectl demo: {}\n  the last lines of {}:\n{}", error, log.string(), tail(log, 15));
    return 2;
  }

  out << fmt::format("\nReceipts (times in {}; each period's electricity and service rounded to the fen, then added)\n\n", cfg.timezone);
  std::int64_t energy = 0, billed = 0, paid = 0;
  std::int64_t refunded = 0;
  std::size_t recovered = 0, faulted = 0, split = 0, open = 0;
  std::set<std::string> methods;
  bool credit_paid = false;
  for (const auto& r : day.receipts()) {
    methods.insert(r.value("method", ""));
    for (const auto& op : r.value("operations", json::array())) {
      if (op.value("kind", "") == "refund" && op.value("state", "") == "confirmed") refunded += op.value("amount_fen", std::int64_t{0});
    }
    if (r.value("method", "") == "credit") credit_paid = r.value("capture_status", "") == "captured" && r.value("captured_fen", std::int64_t{0}) == r.value("total_fen", std::int64_t{-1});
    out << format_receipt_text(r, cfg.timezone) << "\n";
    energy += r.value("energy_wh", std::int64_t{0});
    billed += r.value("total_fen", std::int64_t{0});
    paid += r.value("captured_fen", std::int64_t{0});
    recovered += r.value("outcome", "") == "recovered" ? 1 : 0;
    faulted += r.value("stop_reason", "") == "Fault" ? 1 : 0;
    open += r.value("status", "") == "closed" ? 0 : 1;
    if (r.contains("bill") && r["bill"].value("lines", json::array()).size() > 1) ++split;
  }
  out << fmt::format("{} transactions, {} kWh, billed {}, paid {}, refunded {}\n", day.receipts().size(), format_kwh(energy), yuan(billed), yuan(paid),
                     yuan(refunded));
  std::string used;
  for (const auto& m : methods) used += (used.empty() ? "" : ", ") + m;
  out << fmt::format("payment methods used: {}\n", used);

  out << "\nLedger: ";
  fs::path db = cfg.database;
  if (db.is_relative()) db = state / db;
  std::ostringstream verify_out, verify_err;
  const int verified = ledger_verify(db, id.certificate, verify_out, verify_err);
  out << verify_out.str() << verify_err.str();

  // Did the day happen as scripted?
  std::vector<std::string> failed;
  auto check = [&](bool ok, const std::string& what) {
    if (!ok) failed.push_back(what);
  };
  if (backend) uplink_summary(*backend, o.backend, db, id.certificate, verify_out.str(), day, out, check);
  check(verified == 0, "the ledger verifies");
  check(day.receipts().size() >= 8, fmt::format("at least 8 transactions (got {})", day.receipts().size()));
  check(open == 0, fmt::format("every transaction is closed ({} are not)", open));
  check(split >= 4, fmt::format("sessions split at tariff boundaries ({} were)", split));
  check(faulted >= 1, "a session stopped by the fault");
  check(day.power_cut_done() && recovered == 1, fmt::format("one session recovered after the power cut ({} were)", recovered));
  // The planned restarts: each session charging then was suspended and resumed as the same
  // transaction, charged on after it, and was closed once, not as a shutdown or a recovery.
  std::set<std::string> methods_resumed;
  std::size_t resumed_ok = 0;
  for (const auto& [txn, rs] : day.restarted()) {
    const auto r = std::find_if(day.receipts().begin(), day.receipts().end(), [&](const json& x) { return x.value("transaction", "") == txn; });
    const bool ok = rs.resumed && r != day.receipts().end() && r->value("status", "") == "closed" && r->value("outcome", "") != "recovered" &&
                    r->value("stop_reason", "") != "Shutdown" && r->value("stop_reason", "") != "EVDisconnected" &&
                    r->value("energy_wh", std::int64_t{0}) > rs.energy_wh && r->value("captured_fen", std::int64_t{-1}) == r->value("total_fen", std::int64_t{0});
    if (!ok) continue;
    ++resumed_ok;
    methods_resumed.insert(r->value("method", ""));
  }
  std::string resumed_methods;
  for (const auto& m : methods_resumed) resumed_methods += (resumed_methods.empty() ? "" : ", ") + m;
  check(day.restarts_done() == kRestarts.size() && !day.restarted().empty() && resumed_ok == day.restarted().size() && methods_resumed.size() >= 4,
        fmt::format("the sessions charging at the {} planned restarts resumed as the same transactions, charged on and were paid in full ({} of {}; "
                    "methods {})",
                    kRestarts.size(), resumed_ok, day.restarted().size(), resumed_methods));
  check(day.declined() >= 1, "a declined card");
  check(billed == paid, fmt::format("every fen billed was paid (billed {}, paid {})", billed, paid));
  for (const char* m : {"card", "ecny", "face", "credit"}) check(methods.count(m) > 0, fmt::format("a session paid with {}", m));
  check(day.tap_starts() >= 1, "a session started by holding a card or wallet to the reader");
  check(day.step_up_answered() && std::any_of(day.receipts().begin(), day.receipts().end(),
                                               [&](const json& r) { return r.value("transaction", "") == day.step_up_transaction(); }),
        "a risk step-up answered with the card's PIN, and its session charged");
  const auto settled = day.credit_settled();
  check(credit_paid && settled && local_time(*settled, cfg.timezone, "%F") != day_text(),
        "the credit bill debited the next morning, in full");
  check(day.simulator_stats().value("credit_debits", 0) >= 1, "the credit provider debited the agreement");
  // The price change by reload: the session charging then kept the old service fee (and its
  // receipt says so); the sessions after it pay the new one.
  std::size_t kept = 0, repriced = 0;
  for (const auto& r : day.receipts()) {
    const auto& lines = r.contains("bill") ? r["bill"].value("lines", json::array()) : json::array();
    const bool all_old = !lines.empty() && std::all_of(lines.begin(), lines.end(), [](const json& l) { return l.value("service_price", 0) == 8000; });
    const bool all_new = !lines.empty() && std::all_of(lines.begin(), lines.end(), [](const json& l) { return l.value("service_price", 0) == 6000; });
    if (day.charging_at_reload().count(r.value("transaction", "")) > 0) {
      kept += all_old && r["bill"].contains("tariff_note") ? 1 : 0;
    } else if (TimePoint started; parse_utc(r.value("started", ""), started) && local_time(started, cfg.timezone, "%H:%M") > kPriceChange) {
      repriced += all_new ? 1 : 0;
    }
  }
  check(day.reload_applied() && kept >= 1 && kept == day.charging_at_reload().size(),
        fmt::format("the session charging at the {} reload kept its price, said on its receipt ({} of {})", kPriceChange, kept, day.charging_at_reload().size()));
  check(repriced >= 2, fmt::format("sessions after the reload paid the new service fee ({} did)", repriced));
  check(refunded == kRefundFen, fmt::format("a refund of {} confirmed (got {})", yuan(kRefundFen), yuan(refunded)));
  out << "\n";
  if (!failed.empty()) {
    for (const auto& f : failed) err << "pilectl demo: check failed: " << f << "\n";
    err << fmt::format("pilectl demo: see {}\n", log.string());
    return 1;
  }
  out << fmt::format("All checks passed. Inspect the day with:\n  pilectl transactions list --db {} --day {} --time-zone {}\n"
                     "  pilectl ledger verify --db {} --cert {}\n  less {}\n",
                     db.string(), day_text(), cfg.timezone, db.string(), id.certificate.string(), log.string());
  return 0;
}

}  // namespace pilecore::core
