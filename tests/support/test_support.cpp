#include "test_support.hpp"

#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

extern char** environ;

namespace pilecore::test {

ProcessResult run_process(const std::vector<std::string>& argv, const std::vector<std::string>& env, std::chrono::seconds timeout) {
  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0 || ::pipe2(err_pipe, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) envs.emplace_back(*e);
  for (const auto& e : env) envs.push_back(e);
  std::vector<char*> cargv, cenv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  for (const auto& e : envs) cenv.push_back(const_cast<char*>(e.c_str()));
  cenv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, cargv[0], &actions, nullptr, cargv.data(), cenv.data());
  posix_spawn_file_actions_destroy(&actions);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  if (rc != 0) {
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    throw std::runtime_error("cannot run " + argv[0]);
  }
  ProcessResult result;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  const auto deadline = std::chrono::steady_clock::now() + time_scale()(timeout);
  int open = 2;
  char buf[4096];
  while (open > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) {
      ::kill(pid, SIGKILL);
      break;
    }
    if (::poll(fds, 2, static_cast<int>(left)) <= 0) continue;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP))) continue;
      const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open;
      } else {
        (i == 0 ? result.out : result.err).append(buf, static_cast<std::size_t>(n));
      }
    }
  }
  for (auto& f : fds) {
    if (f.fd >= 0) ::close(f.fd);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
  return result;
}

namespace {
std::vector<char*> c_strings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (auto& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}
}  // namespace

Child::Child(const std::vector<std::string>& argv, const std::vector<std::string>& env) {
  char tmpl[] = "/tmp/pilecore-child-err-XXXXXX";
  const int err_fd = ::mkstemp(tmpl);
  if (err_fd < 0) throw std::runtime_error("mkstemp failed");
  err_file_ = tmpl;
  std::vector<std::string> args = argv;
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) envs.emplace_back(*e);
  envs.insert(envs.end(), env.begin(), env.end());
  auto cargv = c_strings(args);
  auto cenv = c_strings(envs);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, err_fd, 2);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  const int rc = posix_spawn(&pid_, cargv[0], &actions, nullptr, cargv.data(), cenv.data());
  posix_spawn_file_actions_destroy(&actions);
  ::close(err_fd);
  if (rc != 0) throw std::runtime_error("cannot run " + argv[0] + ": " + std::strerror(rc));
}

Child::~Child() {
  if (pid_ > 0 && status_ < 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  std::error_code ec;
  std::filesystem::remove(err_file_, ec);
}

void Child::signal(int signo) const {
  if (status_ < 0) ::kill(pid_, signo);
}

bool Child::wait_for_exit(std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (status_ < 0) {
    if (::waitpid(pid_, &status_, WNOHANG) == pid_) break;
    status_ = -1;
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

int Child::wait() {
  if (status_ < 0) ::waitpid(pid_, &status_, 0);
  if (WIFEXITED(status_)) return WEXITSTATUS(status_);
  return 128 + WTERMSIG(status_);
}

std::string Child::stderr_text() const {
  std::ifstream in(err_file_);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

NotifyListener::NotifyListener(const std::filesystem::path& path) : path_(path) {
  fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.string().size() >= sizeof addr.sun_path) throw std::runtime_error("notify socket path too long");
  std::strcpy(addr.sun_path, path.c_str());
  std::filesystem::remove(path);
  if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) throw std::runtime_error("cannot bind the notify socket");
}

NotifyListener::~NotifyListener() {
  if (fd_ >= 0) ::close(fd_);
  std::error_code ec;
  std::filesystem::remove(path_, ec);
}

namespace {

/// Reads datagrams from `fd` until one holds the line `line` (true) or `end` passes (false).
bool receive_line(int fd, const std::string& line, std::chrono::steady_clock::time_point end) {
  char buf[4096];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
    const ssize_t n = ::recv(fd, buf, sizeof buf - 1, 0);
    if (n <= 0) continue;
    const std::string msg(buf, static_cast<std::size_t>(n));
    std::size_t start = 0;
    while (start < msg.size()) {
      auto end_line = msg.find('\n', start);
      if (end_line == std::string::npos) end_line = msg.size();
      if (msg.compare(start, end_line - start, line) == 0) return true;
      start = end_line + 1;
    }
  }
}

}  // namespace

// A count is a rate over a real-time window (WATCHDOG=1 every few seconds): not stretched.
int NotifyListener::count(const std::string& line, std::chrono::milliseconds during) {
  const auto end = std::chrono::steady_clock::now() + during;
  int n = 0;
  while (std::chrono::steady_clock::now() < end) {
    if (receive_line(fd_, line, end)) ++n;
  }
  return n;
}

bool NotifyListener::wait_for(const std::string& line, std::chrono::milliseconds timeout) {
  return receive_line(fd_, line, std::chrono::steady_clock::now() + time_scale()(timeout));
}

std::shared_ptr<CaptureSink> capture_log(const std::string& logger_name) {
  spdlog::drop(logger_name);
  auto sink = std::make_shared<CaptureSink>();
  auto logger = std::make_shared<spdlog::logger>(logger_name, sink);
  logger->set_level(spdlog::level::trace);
  spdlog::register_logger(logger);
  return sink;
}

nlohmann::json sample_ledger_record(int i, const std::string& id, const std::string& outcome) {
  const std::int64_t start = 1'200'000 + 37'000LL * i;
  return {{"id", id},
          {"connector", 1 + i % 2},
          {"started_at", "2026-03-01T07:40:00Z"},
          {"stopped_at", "2026-03-01T08:25:31Z"},
          {"meter_start_wh", start},
          {"meter_stop_wh", start + 36'850},
          {"energy_wh", 36'850},
          {"lines",
           {{{"period", "flat"}, {"from", "2026-03-01T07:40:00Z"}, {"energy_wh", 12'000}, {"electricity_fen", 780}, {"service_fen", 480}},
            {{"period", "peak"}, {"from", "2026-03-01T08:00:00Z"}, {"energy_wh", 24'850}, {"electricity_fen", 2'733}, {"service_fen", 994}}}},
          {"electricity_fen", 3'513},
          {"service_fen", 1'474},
          {"total_fen", 4'987},
          {"currency", "CNY"},
          {"payment", {{"method", "wechat"}, {"reference", "4200001234202603010123456789"}, {"fee_fen", 30}}},
          {"id_tag", "04A2B3C4D5E6F7"},
          {"stop_reason", "EVDisconnected"},
          {"outcome", outcome}};
}

std::string one_connector_sim_site(const std::string& id, const std::string& name) {
  return "site: {id: " + id + ", name: " + name + R"(, location: {lat: 31.2, lon: 121.5}, timezone: Asia/Shanghai}
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
    config: {arrive_after_s: 0, ev_ready_delay_ms: 0, battery_capacity_wh: 200000, initial_soc_pct: 10, tick_ms: 1000}
)" + sim_payment_and_flat_tariff();
}

std::string sim_payment_and_flat_tariff(std::int64_t preauth_fen) {
  return R"(  sim:
    plugin: sim-payment
    config: {latency_ms: 0}
tariffs:
  decimals: 2
  plans:
    all:
      prices: {flat: {electricity: 69.50, service: 80.00}}
      periods: [{from: "00:00", to: "24:00", type: flat}]
  week: {mon: all, tue: all, wed: all, thu: all, fri: all, sat: all, sun: all}
payment: {default_method: sim, preauth_fen: )" +
         std::to_string(preauth_fen) + "}\n";
}

}  // namespace pilecore::test
