// A real Runtime for an in-process benchmark: loaded from a site file, run on a thread of its
// own (its event loop is the core's strand), waited for until ready, and stopped and joined
// however the benchmark leaves (an exception included), so no bench leaves a loop running.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "plugin_loader.hpp"
#include "runtime.hpp"
#include "site_config.hpp"

namespace pilecore::bench {

/// Polls `pred` (every half millisecond) until it holds or `limit` has passed.
inline bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  return true;
}

class BenchRuntime {
 public:
  /// Loads `site_file` with plugins from `plugin_dirs` and runs it with `options` (the state
  /// directory and, for a ledger, make_ledger; systemd and the status line are switched off).
  /// Throws when the site is invalid or the runtime does not get ready within `start_limit`.
  BenchRuntime(const std::filesystem::path& site_file, std::vector<std::filesystem::path> plugin_dirs, core::RuntimeOptions options,
               std::chrono::seconds start_limit = std::chrono::seconds(30)) {
    core::PluginRegistry registry(std::move(plugin_dirs));
    auto outcome = core::load_site(site_file, registry);
    if (!outcome.site) throw std::runtime_error("site file invalid:\n" + outcome.diagnostics.format());
    options.notify_systemd = false;
    options.status_interval = pilecore::Duration(0);
    rt_ = std::make_unique<core::Runtime>(std::move(*outcome.site), std::move(options));
    loop_ = std::thread([this] { exit_code_ = rt_->run(); });
    if (!wait_until([this] { return rt_->ready() || !rt_->start_error().empty(); }, start_limit) || !rt_->ready()) {
      const std::string why = rt_->start_error();
      stop();
      throw std::runtime_error("the runtime did not start: " + why);
    }
  }
  ~BenchRuntime() { stop(); }
  BenchRuntime(const BenchRuntime&) = delete;
  BenchRuntime& operator=(const BenchRuntime&) = delete;

  core::Runtime& rt() { return *rt_; }

  /// Runs `fn` on the strand and waits for it.
  void on_strand(const std::function<void()>& fn) {
    std::promise<void> p;
    rt_->dispatch([&] {
      fn();
      p.set_value();
    });
    p.get_future().get();
  }

  /// One control request, as the control socket hands it over, and its reply.
  nlohmann::json request(const nlohmann::json& req) {
    auto p = std::make_shared<std::promise<nlohmann::json>>();
    auto f = p->get_future();
    rt_->dispatch([this, req, p] { rt_->handle_request(req, [p](nlohmann::json reply) { p->set_value(std::move(reply)); }); });
    return f.get();
  }

  /// Stops the runtime and joins its loop; returns run()'s exit code (0: a clean stop). Idempotent.
  int stop() {
    if (loop_.joinable()) {
      rt_->request_stop();
      loop_.join();
    }
    return exit_code_;
  }

 private:
  std::unique_ptr<core::Runtime> rt_;
  std::thread loop_;
  int exit_code_ = -1;
};

}  // namespace pilecore::bench
