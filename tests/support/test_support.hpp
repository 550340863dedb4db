// Helpers shared by the unit tests: temporary directories, running the runtime on a thread,
// and running the real programs.
#pragma once

#include <nlohmann/json.hpp>
#include <spdlog/sinks/base_sink.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <future>
#include <string>
#include <thread>
#include <vector>
#include <sys/types.h>

#include "clocks.hpp"
#include "runtime.hpp"
#include "site_config.hpp"
#include "storage.hpp"
#include "test_paths.hpp"
#include "time_scale.hpp"

namespace pilecore::test {

/// A fresh directory under the system temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "pilecore-test-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  std::filesystem::path write(const std::string& name, const std::string& text) const {
    auto p = path_ / name;
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }

 private:
  std::filesystem::path path_;
};

/// Polls `pred` every 5 ms until it holds or `limit` passes (stretched by PILECORE_TIME_SCALE).
inline bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  const auto end = std::chrono::steady_clock::now() + time_scale()(limit);
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return pred();
}

/// Loads `site_yaml` (written into `dir`) with plugins from `plugin_dirs`, fails the test on
/// diagnostics, and runs the runtime on a thread until destroyed. The clock runs `clock_speed`
/// times real time, divided by PILECORE_TIME_SCALE (time_scale.hpp).
class RunningSite {
 public:
  RunningSite(const TempDir& dir, const std::string& site_yaml, std::vector<std::filesystem::path> plugin_dirs, double clock_speed = 1.0,
              const std::string& clock_start = "2026-03-01T00:00:00Z", const std::function<void(core::RuntimeOptions&)>& adjust = {})
      : registry_(std::move(plugin_dirs)) {
    auto outcome = core::load_site(dir.write("site.yaml", site_yaml), registry_);
    if (!outcome.site) throw std::runtime_error("site file invalid:\n" + outcome.diagnostics.format());
    core::RuntimeOptions options;
    options.state_dir = dir.path() / "state";
    options.notify_systemd = false;
    options.status_interval = Duration(0);
    TimePoint start;
    core::parse_utc(clock_start, start);
    options.clock = std::make_shared<core::ScaledClock>(start, time_scale().speed(clock_speed));
    if (adjust) adjust(options);
    runtime_ = std::make_unique<core::Runtime>(std::move(*outcome.site), std::move(options));
    thread_ = std::thread([this] { exit_code_ = runtime_->run(); });
  }
  ~RunningSite() { stop(); }

  core::Runtime& runtime() { return *runtime_; }
  /// Stops the runtime and returns its exit code.
  int stop() {
    if (thread_.joinable()) {
      runtime_->request_stop();
      thread_.join();
    }
    return exit_code_;
  }
  /// Runs `fn` on the core's strand and waits for its result.
  template <class F>
  auto on_strand(F fn) -> decltype(fn()) {
    std::promise<decltype(fn())> p;
    auto f = p.get_future();
    runtime_->dispatch([&] {
      if constexpr (std::is_void_v<decltype(fn())>) {
        fn();
        p.set_value();
      } else {
        p.set_value(fn());
      }
    });
    return f.get();
  }
  /// One control request, as the control socket hands it to the runtime, and its reply.
  nlohmann::json request(const nlohmann::json& req) {
    auto p = std::make_shared<std::promise<nlohmann::json>>();
    auto f = p->get_future();
    runtime_->dispatch([this, req, p] { runtime_->handle_request(req, [p](nlohmann::json r) { p->set_value(std::move(r)); }); });
    return f.get();
  }

 private:
  core::PluginRegistry registry_;
  std::unique_ptr<core::Runtime> runtime_;
  std::thread thread_;
  int exit_code_ = -1;
};

/// A child process started in the background; killed (SIGKILL) when destroyed if still running.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const std::vector<std::string>& env = {});
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  [[nodiscard]] pid_t pid() const { return pid_; }
  /// Sends `signo`; nothing once the exit has been collected (the pid may be another's by then).
  void signal(int signo) const;
  /// Waits for the exit; returns the exit code, or 128+signal when killed by a signal.
  int wait();
  /// Waits up to `timeout` for the exit; whether it came (then wait() returns at once).
  bool wait_for_exit(std::chrono::milliseconds timeout);
  /// What it wrote to stderr (complete after wait()).
  [[nodiscard]] std::string stderr_text() const;

 private:
  pid_t pid_ = -1;
  int status_ = -1;
  std::filesystem::path err_file_;
};

/// The receiving end of systemd's notify protocol: a datagram socket whose path goes into
/// NOTIFY_SOCKET for a child, so a test or benchmark sees READY=1 exactly as systemd does.
class NotifyListener {
 public:
  explicit NotifyListener(const std::filesystem::path& path);
  ~NotifyListener();
  NotifyListener(const NotifyListener&) = delete;
  NotifyListener& operator=(const NotifyListener&) = delete;
  [[nodiscard]] std::string env() const { return "NOTIFY_SOCKET=" + path_.string(); }
  /// Waits for a datagram containing the line `line` (e.g. "READY=1"); false on timeout
  /// (stretched by PILECORE_TIME_SCALE).
  bool wait_for(const std::string& line, std::chrono::milliseconds timeout);
  /// Counts the datagrams containing the line `line` (e.g. "WATCHDOG=1") that arrive within `during`.
  int count(const std::string& line, std::chrono::milliseconds during);

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

/// Result of running a program.
struct ProcessResult {
  int exit_code = -1;  // -1 when killed by a signal
  int signal = 0;
  std::string out;
  std::string err;
};

/// Collects the messages of one logger (see capture_log).
class CaptureSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  std::vector<std::string> lines() {
    std::lock_guard lock(mutex_);
    return lines_;
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override { lines_.emplace_back(msg.payload.data(), msg.payload.size()); }
  void flush_() override {}

 private:
  std::vector<std::string> lines_;
};

/// Replaces the logger `logger_name` (e.g. "power:sim-power:p1", as the runtime names an
/// instance's logger) with one at trace level that writes to a new CaptureSink, and returns it.
std::shared_ptr<CaptureSink> capture_log(const std::string& logger_name);

/// A finished transaction as the session engine would ledger it (about 640 bytes of JSON, two
/// bill lines), the i-th of a series: for the ledger's tests and its benchmark.
nlohmann::json sample_ledger_record(int i, const std::string& id, const std::string& outcome = "completed");

/// The end of a test site file: a `sim` payment instance that answers at once (the last entry
/// under `plugins:`), one flat tariff all week (69.50 + 80.00 fen/kWh) and the payment section
/// with `preauth_fen`. Charging settings, if any, follow it.
std::string sim_payment_and_flat_tariff(std::int64_t preauth_fen = 30000);
/// A whole site: one 60 kW connector whose sim-power vehicle arrives at once and asks for energy,
/// then sim_payment_and_flat_tariff().
std::string one_connector_sim_site(const std::string& id, const std::string& name);

/// Runs `argv` with optional extra environment, capturing stdout and stderr; killed after
/// `timeout` (stretched by PILECORE_TIME_SCALE).
ProcessResult run_process(const std::vector<std::string>& argv, const std::vector<std::string>& env = {},
                          std::chrono::seconds timeout = std::chrono::seconds(30));

}  // namespace pilecore::test
