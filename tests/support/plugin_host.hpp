// A Host for plugin-level tests: loads a real plugin file through the core's loader, validates
// its configuration with the core's validator (the plugin's own validate() included), and runs
// it on the test's thread, which plays the core's strand. Time is a manual clock: timers fire
// only when the test advances it, so a 24-hour debit schedule runs in milliseconds, and a
// restart (destroy and create again over the same state directory) can come between any two
// steps. Work the plugin's threads post() is queued until the test drains it (run_until).
#pragma once

#include <yaml-cpp/yaml.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "pilecore/pilecore.hpp"
#include "plugin_loader.hpp"
#include "scheduler.hpp"
#include "schema.hpp"
#include "site_config.hpp"

namespace pilecore::test {

class PluginHost final : public Host {
 public:
  /// Loads `plugin_file` and checks `config_yaml` (a YAML mapping) against its declarations; a
  /// problem throws std::runtime_error with the diagnostics. Creates no instance yet.
  PluginHost(const std::filesystem::path& plugin_file, const std::string& config_yaml, std::filesystem::path state_dir,
             TimePoint start = TimePoint(std::chrono::sys_days(std::chrono::year(2026) / 3 / 1)), std::optional<std::uint32_t> connector = 1)
      : clock_(start), state_dir_(std::move(state_dir)), connector_(connector) {
    auto loaded = core::load_plugin_file(plugin_file);
    if (!loaded.plugin) throw std::runtime_error(loaded.error);
    plugin_ = loaded.plugin;
    const YAML::Node node = YAML::Load(config_yaml);
    core::Diagnostics diags;
    core::Validator(diags).validate_members(plugin_->config_fields, node, "config");
    if (diags.has_errors()) throw std::runtime_error(diags.format());
    config_ = std::make_unique<core::InstanceConfig>(plugin_->config_fields, node);
    if (plugin_->descriptor->validate != nullptr) {
      Report report;
      plugin_->descriptor->validate(*config_, report);
      if (!report.errors.empty()) throw std::runtime_error(report.errors);
    }
  }
  ~PluginHost() override { destroy(); }
  PluginHost(const PluginHost&) = delete;
  PluginHost& operator=(const PluginHost&) = delete;

  /// Creates and starts the instance; a failure throws.
  template <class T = payment::Method>
  T& create() {
    std::string error;
    instance_ = plugin_->descriptor->create(*this, &error);
    if (instance_ == nullptr) throw std::runtime_error("create failed: " + error);
    alive_ = true;
    const Status s = instance_->start();
    if (!s.ok()) throw std::runtime_error("start failed: " + std::string(s.message()));
    return *static_cast<T*>(instance_);
  }
  /// Stops and destroys the instance (a restart is destroy() then create()). Queued posts and
  /// timers of the old instance are dropped, as the core drops them.
  void destroy() {
    if (instance_ == nullptr) return;
    alive_ = false;
    instance_->stop();
    plugin_->descriptor->destroy(instance_);
    instance_ = nullptr;
    std::lock_guard lock(mutex_);
    posted_.clear();
    timers_.clear();
  }

  /// Runs posted work (waiting for it in real time) until `pred` holds or `limit` passes.
  bool run_until(const std::function<bool()>& pred, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
      std::function<void()> fn;
      {
        std::unique_lock lock(mutex_);
        if (!cv_.wait_until(lock, end, [&] { return !posted_.empty(); })) return pred();
        fn = std::move(posted_.front());
        posted_.pop_front();
      }
      if (alive_) fn();
      ++posts_run_;
    }
    return true;
  }
  /// How many posted functions have run so far.
  [[nodiscard]] std::size_t posts_run() const { return posts_run_; }
  /// Moves the manual clock forward, firing each timer due on the way at its own time.
  void advance(Duration d) {
    const TimePoint end = clock_.now() + d;
    while (true) {
      std::function<void()> fn;
      {
        std::lock_guard lock(mutex_);
        if (timers_.empty() || timers_.begin()->first.first > end) break;
        auto node = timers_.extract(timers_.begin());
        clock_.set(node.key().first);
        fn = std::move(node.mapped());
      }
      if (alive_) fn();
    }
    clock_.set(end);
  }
  [[nodiscard]] std::size_t timers() const {
    std::lock_guard lock(mutex_);
    return timers_.size();
  }
  /// When the next timer is due, if any.
  [[nodiscard]] std::optional<TimePoint> next_timer() const {
    std::lock_guard lock(mutex_);
    if (timers_.empty()) return std::nullopt;
    return timers_.begin()->first.first;
  }

  std::vector<identification::Token> presented;
  std::function<void(const identification::Token&)> on_present;
  std::vector<std::string> log_lines;
  std::vector<std::pair<std::string, std::string>> states;
  std::vector<std::pair<std::string, double>> samples;  ///< channel, value
  struct RaisedAlarm {
    AlarmSeverity severity = AlarmSeverity::warning;
    std::string code, message;
    bool active = true;
  };
  std::vector<RaisedAlarm> alarms;

  // --- Host ---
  [[nodiscard]] std::string_view instance_name() const noexcept override { return "test"; }
  [[nodiscard]] std::optional<std::uint32_t> connector() const noexcept override { return connector_; }
  [[nodiscard]] Logger& log() noexcept override { return logger_; }
  [[nodiscard]] const Clock& clock() const noexcept override { return clock_; }
  [[nodiscard]] const ConfigValues& config() const noexcept override { return *config_; }
  [[nodiscard]] std::string_view state_dir() noexcept override {
    std::error_code ec;
    std::filesystem::create_directories(state_dir_, ec);
    state_dir_text_ = state_dir_.string();
    return state_dir_text_;
  }
  void post(std::function<void()> fn) noexcept override {
    {
      std::lock_guard lock(mutex_);
      posted_.push_back(std::move(fn));
    }
    cv_.notify_all();
  }
  TimerId schedule(Duration delay, std::function<void()> fn) noexcept override {
    if (!alive_) return 0;
    std::lock_guard lock(mutex_);
    const TimerId id = ++next_timer_;
    timers_.emplace(std::pair{clock_.now() + delay, id}, std::move(fn));
    return id;
  }
  void cancel(TimerId id) noexcept override {
    std::lock_guard lock(mutex_);
    for (auto it = timers_.begin(); it != timers_.end(); ++it) {
      if (it->first.second == id) {
        timers_.erase(it);
        return;
      }
    }
  }
  void publish(const Sample& s) noexcept override { samples.emplace_back(std::string(s.channel), s.value); }
  void raise(const Alarm& a) noexcept override { alarms.push_back({a.severity, std::string(a.code), std::string(a.message), a.active}); }
  void report_state(std::string_view state, std::string_view detail) noexcept override { states.emplace_back(state, detail); }
  void present(const identification::Token& token) noexcept override {
    presented.push_back(token);
    if (on_present) on_present(token);
  }
  /// Records the record; `done` waits for acknowledge(key), is posted ok at once for a key
  /// acknowledged before, and is posted the refusal `refuse_uploads` holds.
  void upload(const UplinkRecord& record, UploadCallback done) noexcept override {
    uploads.push_back(record);
    if (refuse_uploads) {
      post([done = std::move(done), st = *refuse_uploads] { done(st); });
    } else if (acknowledged_.count(record.key) != 0) {
      post([done = std::move(done)] { done(Status::success()); });
    } else {
      waiting_.emplace(record.key, std::move(done));
    }
  }
  /// The back end acknowledges `key`: every upload of it waiting is answered (posted). Returns how many.
  std::size_t acknowledge(const std::string& key) {
    acknowledged_.insert(key);
    std::size_t n = 0;
    auto [first, last] = waiting_.equal_range(key);
    for (auto it = first; it != last; ++it, ++n) post([done = std::move(it->second)] { done(Status::success()); });
    waiting_.erase(first, last);
    return n;
  }

 private:
  class ManualClock final : public Clock {
   public:
    explicit ManualClock(TimePoint t) : now_(t) {}
    [[nodiscard]] TimePoint now() const noexcept override {
      std::lock_guard lock(m_);
      return now_;
    }
    [[nodiscard]] double speed() const noexcept override { return 1.0; }
    void set(TimePoint t) {
      std::lock_guard lock(m_);
      now_ = t;
    }

   private:
    mutable std::mutex m_;
    TimePoint now_;
  };
  class LineLogger final : public Logger {
   public:
    explicit LineLogger(PluginHost& h) : h_(h) {}
    void write(LogLevel, std::string_view message) noexcept override {
      std::lock_guard lock(h_.log_mutex_);
      h_.log_lines.emplace_back(message);
    }
    [[nodiscard]] bool enabled(LogLevel) const noexcept override { return true; }

   private:
    PluginHost& h_;
  };
  struct Report final : ConfigReport {
    std::string errors;
    void error(std::string_view key, std::string_view message) noexcept override {
      errors += std::string(key) + ": " + std::string(message) + "\n";
    }
    void warning(std::string_view, std::string_view) noexcept override {}
  };

  ManualClock clock_;
  std::filesystem::path state_dir_;
  std::string state_dir_text_;
  std::optional<std::uint32_t> connector_;
  std::shared_ptr<const core::LoadedPlugin> plugin_;
  std::unique_ptr<core::InstanceConfig> config_;
  Plugin* instance_ = nullptr;
  bool alive_ = false;
  LineLogger logger_{*this};
  std::mutex log_mutex_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> posted_;
  std::map<std::pair<TimePoint, TimerId>, std::function<void()>> timers_;
  TimerId next_timer_ = 0;
  std::size_t posts_run_ = 0;
  std::multimap<std::string, UploadCallback> waiting_;
  std::set<std::string> acknowledged_;

 public:
  std::vector<UplinkRecord> uploads;
  std::optional<Status> refuse_uploads;
};

}  // namespace pilecore::test
