#include "demo.hpp"

#include <date/tz.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
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
#include "ledger_commands.hpp"
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
constexpr const char* kEnd = "23:50";        // the day ends once no session is open
constexpr std::uint32_t kCutConnector = 1;

/// Who comes to which connector when. Each arrival crosses a tariff boundary of the workday
/// plan (valley 00-07, flat 07-10, peak 10-15, flat 15-18, peak 18-19, sharp 19-21, flat 21-23,
/// valley 23-24); the 14:30 vehicle is charging at the power cut; the 12:10 vehicle faults.
const std::map<std::uint32_t, std::vector<const char*>> kArrivals = {
    {1, {"06:35", "09:30", "14:30", "18:30", "22:30"}},
    {2, {"06:50", "12:10", "17:20", "20:40"}},
};
const std::map<std::uint32_t, std::vector<const char*>> kFaults = {{2, {"12:35"}}};
constexpr int kFaultClearS = 900;
constexpr int kDepartAfterS = 600;

/// The cards the drivers present, in order of arrival; "blocked-card" is declined by the
/// simulated acquirer (sim-site.yaml's declined_tokens) and its driver pays by wallet instead.
const std::vector<const char*> kCards = {"card:04A1B2C3D4", "card:04E5F60718", "wallet:DCEP-8842", "blocked-card",
                                         "card:04AB12CD34", "card:0499887766", "wallet:DCEP-1207", "card:04F0E1D2C3",
                                         "card:0455667788", "card:04CAFE0001", "card:04CAFE0002", "card:04CAFE0003"};
constexpr const char* kFallbackCard = "wallet:DCEP-5510";

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

}  // namespace

std::string describe_event(const json& ev);

namespace {

/// The simulated site plus the scenario, as a site file.
std::string scenario_yaml(const fs::path& site_file, std::string& error) {
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
  root["charging"] = ch;
  // The same for the risk rules' answer (2 simulated seconds would be 0.3 ms of wall time) and
  // the payment method's (30 s would be 4 ms: the declined card was sometimes timed out).
  YAML::Node pay = root["payment"];
  pay["risk_timeout_ms"] = 600000;
  pay["authorize_timeout_ms"] = 600000;
  root["payment"] = pay;
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
      "# {}, one fault, a ledger identity, checkpoints spaced for a fast clock).\n{}\n",
      site_file.string(), day_text(), em.c_str());
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
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      std::fprintf(stderr, "pilectl demo: cannot run %s: %s\n", argv[0], std::strerror(errno));
      ::_exit(127);
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

std::string tail(const fs::path& file, std::size_t lines) {
  std::ifstream in(file);
  std::vector<std::string> all;
  for (std::string l; std::getline(in, l);) all.push_back(l);
  std::string out;
  for (std::size_t i = all.size() > lines ? all.size() - lines : 0; i < all.size(); ++i) out += "    " + all[i] + "\n";
  return out;
}

/// The day, driven through the control socket.
class Day {
 public:
  Day(const DemoOptions& o, std::ostream& out, std::string zone, fs::path state, fs::path site, fs::path log)
      : o_(o), out_(out), zone_(std::move(zone)), state_(std::move(state)), site_(std::move(site)), log_(std::move(log)) {}

  /// Plays the day; false (with `error`) when it could not be played to the end.
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
      const auto wall_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(static_cast<int>(2 * 86400 / o_.speed) + 60);
      for (;;) {
        if (std::chrono::steady_clock::now() > wall_deadline) throw std::runtime_error("the day did not end in time (is the machine overloaded? try --speed lower)");
        if (auto ev = watch_->next(20ms)) {
          on_event(*ev);
        } else {
          refresh_time();
        }
        if (!cut_done_ && now_ >= cut_at && open_.count(kCutConnector)) power_cut();
        if (now_ >= end_at && open_.empty()) break;
      }
      collect_receipts();
      line(now_, "", "the day is over: pilecored is stopped with SIGTERM");
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
  const std::string& cut_transaction() const { return cut_txn_; }

 private:
  void line(TimePoint t, const std::string& who, const std::string& what) {
    out_ << fmt::format("{}  {:<12} {}\n", local_time(t, zone_), who, what);
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

  void on_event(const json& ev) {
    const auto t = time_of(ev).value_or(now_);
    now_ = std::max(now_, t);
    const std::string kind = ev.value("event", "");
    const std::uint32_t connector = ev.value("connector", 0u);
    const std::string who = connector ? fmt::format("connector {}", connector) : "";
    if (kind == "connector") {
      const std::string before = status_[connector];
      const std::string now = ev.value("status", "");
      status_[connector] = now;
      line(t, who, describe_event(ev));
      if (now == "Preparing" && before == "Available") driver_arrives(t, connector);
      return;
    }
    if (kind == "session_started") open_[connector] = ev.value("transaction", "");
    if (kind == "session_closed") {
      open_.erase(connector);
      closed_.insert(ev.value("transaction", ""));
    }
    if (kind == "ready" || kind == "recovering" || kind.rfind("session_", 0) == 0 || kind == "tariff_boundary" || kind == "alarm" ||
        kind == "instance_failed") {
      line(t, who, describe_event(ev));
    }
  }

  /// A driver plugs in and presents a card; a declined card is followed by another means.
  void driver_arrives(TimePoint t, std::uint32_t connector) {
    std::string card = next_card_ < kCards.size() ? kCards[next_card_++] : kFallbackCard;
    for (int attempt = 0; attempt < 4; ++attempt) {
      line(t, fmt::format("connector {}", connector), fmt::format("the driver presents {}", mask_token(card)));
      const json r = daemon_->request({{"cmd", "session_start"}, {"connector", connector}, {"method", "sim"}, {"token", card}});
      if (r.value("ok", false)) break;
      const std::string error = r.value("error", "?");
      line(t, fmt::format("connector {}", connector), fmt::format("refused: {}", error));
      // A declined card is followed by another means; a refusal that says nothing of the card
      // (an answer that came too late on a machine too loaded for 7200x) by the same card again,
      // as a driver taps again.
      if (error.find("declined") != std::string::npos) {
        ++declined_;
        card = kFallbackCard;
      }
    }
  }

  void power_cut() {
    cut_done_ = true;
    cut_txn_ = open_[kCutConnector];
    const json st = daemon_->request({{"cmd", "status"}});
    std::string meter;
    for (const auto& c : st.value("connectors", json::array())) {
      if (c.value("id", 0u) == kCutConnector && c.contains("session")) {
        meter = fmt::format(", {} kWh so far", format_kwh(c["session"].value("energy_wh", std::int64_t{0})));
      }
    }
    if (auto tt = time_of(st)) now_ = std::max(now_, *tt);
    line(now_, "", fmt::format("*** POWER CUT: pilecored is killed (SIGKILL) while {} charges on connector {}{}", cut_txn_, kCutConnector, meter));
    watch_.reset();
    daemon_->cut();
    daemon_.reset();
    const TimePoint back = now_ + std::chrono::minutes(kOutageMinutes);
    line(back, "", fmt::format("*** power is back after {} minutes: pilecored restarts and recovers what was open", kOutageMinutes));
    now_ = back;
    open_.clear();
    status_.clear();
    daemon_ = std::make_unique<Daemon>(o_, site_, state_, socket_, back, log_);
    subscribe();
    const json r = daemon_->request({{"cmd", "receipt"}, {"transaction", cut_txn_}});
    if (r.value("status", "") == "closed") {
      closed_.insert(cut_txn_);
      line(now_, fmt::format("connector {}", kCutConnector),
           fmt::format("{} recovered from the meter: {} kWh, {} ({})", cut_txn_, format_kwh(r.value("energy_wh", std::int64_t{0})),
                       yuan(r.value("total_fen", std::int64_t{0})), r.value("capture_status", "")));
    } else {
      line(now_, fmt::format("connector {}", kCutConnector), fmt::format("{} is {} after the restart", cut_txn_, r.value("status", "unknown")));
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
  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<ControlWatch> watch_;
  TimePoint now_{};
  std::map<std::uint32_t, std::string> status_;
  std::map<std::uint32_t, std::string> open_;  // connector -> transaction
  std::set<std::string> closed_;
  std::vector<json> receipts_;
  std::size_t next_card_ = 0;
  std::size_t declined_ = 0;
  bool cut_done_ = false;
  std::string cut_txn_;
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

  // The site with the scenario, validated like any site file.
  std::string error;
  const std::string yaml = scenario_yaml(o.site, error);
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
  out << fmt::format("device key and certificate: {} ({})\n\n", id.certificate.string(), to_string(id.algorithm));

  const fs::path log = state / "pilecored.log";
  Day day(o, out, cfg.timezone, state, site, log);
  const bool played = day.play(error);
  if (!played) {
    err << fmt::format("pilectl demo: {}\n  the last lines of {}:\n{}", error, log.string(), tail(log, 15));
    return 2;
  }

  out << fmt::format("\nReceipts (times in {}; each period's electricity and service rounded to the fen, then added)\n\n", cfg.timezone);
  std::int64_t energy = 0, billed = 0, paid = 0;
  std::size_t recovered = 0, faulted = 0, split = 0, open = 0;
  for (const auto& r : day.receipts()) {
    out << format_receipt_text(r, cfg.timezone) << "\n";
    energy += r.value("energy_wh", std::int64_t{0});
    billed += r.value("total_fen", std::int64_t{0});
    paid += r.value("captured_fen", std::int64_t{0});
    recovered += r.value("outcome", "") == "recovered" ? 1 : 0;
    faulted += r.value("stop_reason", "") == "Fault" ? 1 : 0;
    open += r.value("status", "") == "closed" ? 0 : 1;
    if (r.contains("bill") && r["bill"].value("lines", json::array()).size() > 1) ++split;
  }
  out << fmt::format("{} transactions, {} kWh, billed {}, paid {}\n", day.receipts().size(), format_kwh(energy), yuan(billed), yuan(paid));

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
  check(verified == 0, "the ledger verifies");
  check(day.receipts().size() >= 8, fmt::format("at least 8 transactions (got {})", day.receipts().size()));
  check(open == 0, fmt::format("every transaction is closed ({} are not)", open));
  check(split >= 4, fmt::format("sessions split at tariff boundaries ({} were)", split));
  check(faulted >= 1, "a session stopped by the fault");
  check(day.power_cut_done() && recovered == 1, fmt::format("one session recovered after the power cut ({} were)", recovered));
  check(day.declined() >= 1, "a declined card");
  check(billed == paid, fmt::format("every fen billed was paid (billed {}, paid {})", billed, paid));
  out << "\n";
  if (!failed.empty()) {
    for (const auto& f : failed) err << "pilectl demo: check failed: " << f << "\n";
    err << fmt::format("pilectl demo: see {}\n", log.string());
    return 1;
  }
  out << fmt::format("All checks passed. Inspect the day with:\n  sqlite3 {} 'SELECT id, outcome, energy_wh, total_fen FROM transactions'\n"
                     "  pilectl ledger verify --db {} --cert {}\n  less {}\n",
                     db.string(), db.string(), id.certificate.string(), log.string());
  return 0;
}

}  // namespace pilecore::core
