// bench/isolation: what `isolate: true` costs per call. The same plugin (sim-power, the power
// stage the engine calls most) is loaded twice: in this process, as pilecored loads it, and in
// its own pilecore-plugin-host process behind the core's proxy (core/isolation), as an
// isolated instance runs. Each call is set_power_limit(), a synchronous call with a Status
// answer: for the isolated instance one CBOR request and answer over the socket pair.
// Printed: p50, p99 and max of each; the isolated p99 must stay under 1 ms (exit 1 on a miss).
//
//   bench_isolation [--calls N]
#include <spdlog/spdlog.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <vector>

#include "../common/bench_env.hpp"
#include "clocks.hpp"
#include "isolated.hpp"
#include "logging.hpp"
#include "plugin_loader.hpp"
#include "site_config.hpp"

using namespace pilecore;
using namespace pilecore::core;
namespace asio = boost::asio;
namespace fs = std::filesystem;
using steady = std::chrono::steady_clock;

namespace {

class BenchHost final : public Host {
 public:
  BenchHost(asio::io_context& io, const ConfigValues& config, fs::path dir)
      : io_(io), config_(config), dir_(std::move(dir)), logger_(make_logger("bench")) {}
  [[nodiscard]] std::string_view instance_name() const noexcept override { return "power-1"; }
  [[nodiscard]] std::optional<std::uint32_t> connector() const noexcept override { return 1; }
  [[nodiscard]] Logger& log() noexcept override { return logger_; }
  [[nodiscard]] const Clock& clock() const noexcept override { return clock_; }
  [[nodiscard]] const ConfigValues& config() const noexcept override { return config_; }
  [[nodiscard]] std::string_view state_dir() noexcept override { return dir_.native(); }
  void post(std::function<void()> fn) noexcept override { asio::post(io_, std::move(fn)); }
  TimerId schedule(Duration delay, std::function<void()> fn) noexcept override {
    const TimerId id = ++next_;
    auto t = std::make_shared<asio::steady_timer>(io_, delay);
    timers_[id] = t;
    t->async_wait([this, id, t, fn = std::move(fn)](const boost::system::error_code& ec) {
      timers_.erase(id);
      if (!ec) fn();
    });
    return id;
  }
  void cancel(TimerId id) noexcept override {
    if (auto it = timers_.find(id); it != timers_.end()) it->second->cancel();
  }
  /// The in-process instance is gone: nothing of it may run any more.
  void cancel_all() {
    for (auto& [id, t] : timers_) t->cancel();
  }
  void publish(const Sample&) noexcept override {}
  void raise(const Alarm&) noexcept override {}
  void report_state(std::string_view, std::string_view) noexcept override {}
  void present(const identification::Token&) noexcept override {}
  // The benchmark's plugins upload nothing; were one to, it is told there is no back end.
  void upload(const UplinkRecord&, UploadCallback done) noexcept override {
    post([done = std::move(done)] { done(Status(StatusCode::unavailable, "the benchmark host has no back end")); });
  }

 private:
  asio::io_context& io_;
  const ConfigValues& config_;
  fs::path dir_;
  SystemClock clock_;
  PluginLogger logger_;
  TimerId next_ = 0;
  std::map<TimerId, std::shared_ptr<asio::steady_timer>> timers_;
};

struct Figures {
  double p50_us, p99_us, max_us;
};

Figures measure(power::PowerStage& p, int calls) {
  std::vector<double> us;
  us.reserve(static_cast<std::size_t>(calls));
  for (int i = 0; i < calls; ++i) {
    const auto t0 = steady::now();
    Status s = p.set_power_limit(20000 + (i % 1000));
    const auto t1 = steady::now();
    if (!s.ok()) {
      std::fprintf(stderr, "bench_isolation: set_power_limit failed: %s\n", s.message().c_str());
      std::exit(2);
    }
    us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  std::sort(us.begin(), us.end());
  auto at = [&](double q) { return us[static_cast<std::size_t>(q * static_cast<double>(us.size() - 1))]; };
  return {at(0.5), at(0.99), us.back()};
}

}  // namespace

int main(int argc, char** argv) {
  int calls = 20000;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--calls") == 0) calls = std::max(100, std::atoi(argv[i + 1]));
  }
  spdlog::set_level(spdlog::level::warn);
  const fs::path dir = fs::temp_directory_path() / ("bench_isolation." + std::to_string(::getpid()));
  fs::create_directories(dir / "plugins" / "power-1");
  auto loaded = load_plugin_file(fs::path(PILECORE_BENCH_PLUGIN_DIR) / "sim-power.so");
  if (!loaded.plugin) {
    std::fprintf(stderr, "bench_isolation: %s\n", loaded.error.c_str());
    return 2;
  }
  const InstanceConfig config(loaded.plugin->config_fields, YAML::Node(YAML::NodeType::Map));
  asio::io_context io;
  BenchHost host(io, config, dir / "plugins" / "power-1");

  // In this process.
  std::string error;
  Plugin* in_process = loaded.plugin->descriptor->create(host, &error);
  if (in_process == nullptr || !in_process->start().ok()) {
    std::fprintf(stderr, "bench_isolation: sim-power did not start in process: %s\n", error.c_str());
    return 2;
  }
  measure(*static_cast<power::PowerStage*>(in_process), calls / 10);  // warm-up
  const Figures local = measure(*static_cast<power::PowerStage*>(in_process), calls);
  in_process->stop();
  host.cancel_all();
  loaded.plugin->descriptor->destroy(in_process);

  // In its own process, through the proxy.
  isolation::Options o;
  o.host_program = fs::path(PILECORE_BENCH_BIN_DIR) / "pilecore-plugin-host";
  o.plugin_file = loaded.plugin->file;
  o.instance = "power-1";
  o.plugin = "sim-power";
  o.kind = Kind::power;
  o.connector = 1;
  o.config = isolation::config_to_json(loaded.plugin->config_fields, config);
  o.state_dir = dir / "plugins" / "power-1";
  isolation::Isolated::Hooks hooks;
  hooks.host = &host;
  hooks.failed = [](const std::string& why) {
    std::fprintf(stderr, "bench_isolation: the isolated process failed: %s\n", why.c_str());
    std::exit(2);
    return false;
  };
  auto strand = asio::make_strand(io);
  isolation::Isolated iso(strand, o, hooks);
  if (auto err = iso.create(); !err.empty()) {
    std::fprintf(stderr, "bench_isolation: %s\n", err.c_str());
    return 2;
  }
  Figures isolated{};
  std::string sandbox;
  asio::post(strand, [&] {
    auto* p = static_cast<power::PowerStage*>(iso.plugin());
    if (Status s = iso.plugin()->start(); !s.ok()) {
      std::fprintf(stderr, "bench_isolation: the isolated sim-power did not start: %s\n", s.message().c_str());
      std::exit(2);
    }
    measure(*p, calls / 10);
    isolated = measure(*p, calls);
    sandbox = iso.sandbox();
    iso.plugin()->stop();
  });
  io.run();
  std::error_code ec;
  fs::remove_all(dir, ec);

  std::printf("bench_isolation: %d set_power_limit() calls to sim-power, load %s\n", calls, bench::loadavg().c_str());
  std::printf("  isolated sandbox: %s\n", sandbox.c_str());
  std::printf("  %-12s p50 %8.1f us  p99 %8.1f us  max %8.1f us\n", "in process", local.p50_us, local.p99_us, local.max_us);
  std::printf("  %-12s p50 %8.1f us  p99 %8.1f us  max %8.1f us\n", "isolated", isolated.p50_us, isolated.p99_us, isolated.max_us);
  const bool ok = isolated.p99_us < 1000.0;
  std::printf("  target: isolated p99 < 1000 us: %s\n", ok ? "met" : "MISSED");
  return ok ? 0 : 1;
}
