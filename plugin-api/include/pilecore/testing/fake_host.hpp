// pilecore plugin SDK, for plugin authors' unit tests: a Host that runs on the test's thread.
//
// The test is the core: the thread that creates the FakeHost is the strand, posted functions and
// timers run only when the test says so (run_posted, run_until, advance), and the clock moves
// only through advance(). Everything the plugin hands the host (samples, alarms, states, tokens,
// uplink records, log lines) is recorded, and so is every call the threading rules forbid (a publish() from a
// driver thread, a callback answered twice or off the strand), so a test can assert there were
// none. It knows nothing of GoogleTest (whose namespace is ::testing, hence testkit); any
// framework will do.
//
//   #include <pilecore/testing/fake_host.hpp>
//   using namespace pilecore;
//   testkit::FakeHost host(testkit::compiled_in_plugin(), {{"pin", "2468"}, {"latency_ms", "0"}});
//   testkit::Instance<payment::Method> method(testkit::compiled_in_plugin(), host);
//   ASSERT_TRUE(method.start().ok());
//   auto answer = host.answer<payment::AuthorizationResult>();
//   method->authorize(request, answer.callback());
//   ASSERT_TRUE(host.run_until([&] { return answer.answered(); }));
//
// The plugin's source is compiled into the test executable (one plugin per executable), so the
// descriptor PILECORE_PLUGIN defines is compiled_in_plugin(); the instance is created and
// destroyed through it, as the core does. What this host does not do: the core's validation of
// the site file (FakeConfig checks types, ranges and allowed values of scalar and list keys, not
// objects), isolation, and the core's deadlines. A session through the real core is
// tests/integration/sdk_install.sh's job.
#pragma once

#include <stdlib.h>  // mkdtemp

#include <algorithm>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "pilecore/pilecore.hpp"

namespace pilecore_plugin_entry {
extern const ::pilecore::PluginDescriptor descriptor;  // defined by PILECORE_PLUGIN
}

namespace pilecore {
inline namespace v2 {
namespace testkit {

/// The descriptor of the plugin whose source is compiled into this executable.
inline const PluginDescriptor& compiled_in_plugin() noexcept { return pilecore_plugin_entry::descriptor; }

/// 2026-01-01T00:00:00Z: where a FakeHost's clock starts unless told otherwise.
inline constexpr TimePoint default_start{std::chrono::duration_cast<Duration>(
    std::chrono::sys_days{std::chrono::year{2026} / 1 / 1}.time_since_epoch())};

/// A clock that moves only when the test moves it. Readable from any thread.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(TimePoint start = default_start) : now_(start) {}
  [[nodiscard]] TimePoint now() const noexcept override {
    std::lock_guard lock(mutex_);
    return now_;
  }
  [[nodiscard]] double speed() const noexcept override { return 1.0; }
  void set(TimePoint t) {
    std::lock_guard lock(mutex_);
    now_ = t;
  }

 private:
  mutable std::mutex mutex_;
  TimePoint now_;
};

/// One instance's configuration: the declared defaults, overridden by the test's values, each
/// written as in the site file ("2468", "true", "[10, 50, 90]"). Throws std::invalid_argument,
/// naming the key, for what the core would refuse: an undeclared key, a value of the wrong type,
/// out of range or not allowed, a required key not given. Object keys are not supported.
class FakeConfig final : public ConfigValues {
 public:
  FakeConfig(std::span<const ConfigKey> keys, const std::map<std::string, std::string>& values) {
    for (const auto& given : values) {
      if (std::none_of(keys.begin(), keys.end(), [&](const ConfigKey& k) { return k.key && given.first == k.key; })) {
        throw std::invalid_argument("configuration key '" + given.first + "' is not declared by the plugin");
      }
    }
    for (const ConfigKey& k : keys) {
      if (!k.key) continue;
      const auto given = values.find(k.key);
      if (k.type == ConfigType::object || k.type == ConfigType::object_list) {
        if (given != values.end()) throw std::invalid_argument(std::string("configuration key '") + k.key + "': object keys are not supported by FakeConfig");
        continue;
      }
      std::optional<std::string> text;
      if (given != values.end()) {
        text = given->second;
      } else if (k.default_value) {
        text = k.default_value;
      } else if (k.required) {
        throw std::invalid_argument(std::string("configuration key '") + k.key + "' is required");
      }
      if (text) values_[k.key] = parse(k, *text);
    }
  }

  [[nodiscard]] bool has(std::string_view key) const noexcept override { return values_.find(key) != values_.end(); }
  [[nodiscard]] std::optional<std::string_view> get_string(std::string_view key) const noexcept override {
    const Value* v = find(key);
    if (!v || !v->text) return std::nullopt;
    return std::string_view(*v->text);
  }
  [[nodiscard]] std::optional<std::int64_t> get_integer(std::string_view key) const noexcept override {
    const Value* v = find(key);
    return v ? v->integer : std::nullopt;
  }
  [[nodiscard]] std::optional<double> get_number(std::string_view key) const noexcept override {
    const Value* v = find(key);
    return v ? v->number : std::nullopt;
  }
  [[nodiscard]] std::optional<bool> get_boolean(std::string_view key) const noexcept override {
    const Value* v = find(key);
    return v ? v->boolean : std::nullopt;
  }
  [[nodiscard]] std::optional<std::vector<std::string>> get_string_list(std::string_view key) const override {
    const Value* v = find(key);
    return v ? v->strings : std::nullopt;
  }
  [[nodiscard]] std::optional<std::vector<std::int64_t>> get_integer_list(std::string_view key) const override {
    const Value* v = find(key);
    return v ? v->integers : std::nullopt;
  }
  [[nodiscard]] const ConfigValues* get_object(std::string_view) const noexcept override { return nullptr; }
  [[nodiscard]] std::optional<std::vector<const ConfigValues*>> get_object_list(std::string_view) const override { return std::nullopt; }

 private:
  struct Value {
    std::optional<std::string> text;
    std::optional<std::int64_t> integer;
    std::optional<double> number;
    std::optional<bool> boolean;
    std::optional<std::vector<std::string>> strings;
    std::optional<std::vector<std::int64_t>> integers;
  };

  [[nodiscard]] const Value* find(std::string_view key) const noexcept {
    const auto it = values_.find(key);
    return it == values_.end() ? nullptr : &it->second;
  }

  static std::string trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    if (s.size() >= 2 && (s.front() == '"' || s.front() == '\'') && s.back() == s.front()) s = s.substr(1, s.size() - 2);
    return std::string(s);
  }

  static std::vector<std::string> items(const ConfigKey& k, std::string_view text) {
    std::string_view s = text;
    while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
    while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
    if (s.size() < 2 || s.front() != '[' || s.back() != ']') fail(k, text, "a list is written [a, b]");
    s = s.substr(1, s.size() - 2);
    std::vector<std::string> out;
    while (!s.empty()) {
      const auto comma = s.find(',');
      out.push_back(trim(s.substr(0, comma)));
      if (comma == std::string_view::npos) break;
      s.remove_prefix(comma + 1);
    }
    if (out.size() == 1 && out[0].empty()) out.clear();
    return out;
  }

  [[noreturn]] static void fail(const ConfigKey& k, std::string_view text, std::string_view why) {
    throw std::invalid_argument(std::string("configuration key '") + k.key + "': '" + std::string(text) + "': " + std::string(why));
  }

  static std::int64_t integer_of(const ConfigKey& k, const std::string& s) {
    std::int64_t v = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || end != s.data() + s.size()) fail(k, s, "not a whole number");
    in_range(k, s, static_cast<double>(v));
    return v;
  }

  static void in_range(const ConfigKey& k, std::string_view text, double v) {
    if (v < k.min || v > k.max) fail(k, text, "out of range");
  }

  static Value parse(const ConfigKey& k, std::string_view raw) {
    Value v;
    const std::string s = trim(raw);
    switch (k.type) {
      case ConfigType::string:
      case ConfigType::instance_ref:
        v.text = s;
        break;
      case ConfigType::enumeration: {
        const std::string allowed = std::string("|") + (k.allowed ? k.allowed : "") + "|";
        if (allowed.find("|" + s + "|") == std::string::npos) fail(k, s, std::string("allowed: ") + (k.allowed ? k.allowed : ""));
        v.text = s;
        break;
      }
      case ConfigType::integer:
        v.integer = integer_of(k, s);
        v.number = static_cast<double>(*v.integer);
        break;
      case ConfigType::number: {
        std::size_t used = 0;
        double d = 0;
        try {
          d = std::stod(s, &used);
        } catch (const std::exception&) {
          fail(k, s, "not a number");
        }
        if (used != s.size()) fail(k, s, "not a number");
        in_range(k, s, d);
        v.number = d;
        break;
      }
      case ConfigType::boolean:
        if (s == "true") {
          v.boolean = true;
        } else if (s == "false") {
          v.boolean = false;
        } else {
          fail(k, s, "true or false");
        }
        break;
      case ConfigType::string_list:
        v.strings = items(k, raw);
        break;
      case ConfigType::integer_list: {
        std::vector<std::int64_t> out;
        for (const std::string& item : items(k, raw)) out.push_back(integer_of(k, item));
        v.integers = std::move(out);
        break;
      }
      case ConfigType::object:
      case ConfigType::object_list:
        break;
    }
    return v;
  }

  std::map<std::string, Value, std::less<>> values_;
};

/// What a validate function reported, "error: key: message" or "warning: key: message" a line.
inline std::vector<std::string> validate(const PluginDescriptor& plugin, const ConfigValues& config) {
  struct Report final : ConfigReport {
    std::vector<std::string> lines;
    void error(std::string_view key, std::string_view message) noexcept override { add("error", key, message); }
    void warning(std::string_view key, std::string_view message) noexcept override { add("warning", key, message); }
    void add(std::string_view severity, std::string_view key, std::string_view message) noexcept {
      try {
        lines.push_back(std::string(severity) + ": " + std::string(key) + ": " + std::string(message));
      } catch (...) {
      }
    }
  } report;
  if (plugin.validate) plugin.validate(config, report);
  return report.lines;
}

struct LogLine {
  LogLevel level;
  std::string message;
};
struct RecordedSample {
  std::string channel;
  std::string unit;
  double value = 0;
  TimePoint time{};
};
struct RecordedAlarm {
  AlarmSeverity severity = AlarmSeverity::warning;
  std::string code;
  std::string message;
  bool active = true;
};
struct RecordedState {
  std::string state;
  std::string detail;
};
/// One Host::upload() call. The test plays the back end: FakeHost::acknowledge(key).
struct RecordedUpload {
  UplinkRecord record;
  TimePoint time{};
};

class FakeHost;

/// The answers one callback received. A plugin answers exactly once, on the strand: count()
/// above 1 and a FakeHost violation ("answered off the strand") are bugs a test can assert on.
template <class Result>
class Answer {
 public:
  [[nodiscard]] std::function<void(Result)> callback() const {
    return [state = state_](Result r) {
      std::lock_guard lock(state->mutex);
      if (state->strand != std::this_thread::get_id() && state->violation) state->violation("a callback was answered off the strand");
      state->results.push_back(std::move(r));
    };
  }
  [[nodiscard]] bool answered() const {
    std::lock_guard lock(state_->mutex);
    return !state_->results.empty();
  }
  [[nodiscard]] std::size_t count() const {
    std::lock_guard lock(state_->mutex);
    return state_->results.size();
  }
  /// The first answer; throws std::logic_error when there is none yet.
  [[nodiscard]] Result value() const {
    std::lock_guard lock(state_->mutex);
    if (state_->results.empty()) throw std::logic_error("the callback has not been answered");
    return state_->results.front();
  }

 private:
  friend class FakeHost;
  struct State {
    std::mutex mutex;
    std::vector<Result> results;
    std::thread::id strand;
    std::function<void(std::string)> violation;
  };
  std::shared_ptr<State> state_ = std::make_shared<State>();
};

/// What a FakeHost says about its instance, where the test wants other than the defaults.
struct FakeHostOptions {
  std::string instance_name = "test";
  std::optional<std::uint32_t> connector = std::nullopt;
  std::filesystem::path state_dir = {};  ///< empty: a temporary directory, removed with the host
  TimePoint start = default_start;
  LogLevel log_level = LogLevel::trace;
};

class FakeHost final : public Host {
 public:
  using Options = FakeHostOptions;

  /// A host for an instance of `plugin` with these configuration values over its defaults.
  explicit FakeHost(const PluginDescriptor& plugin, const std::map<std::string, std::string>& config = {}, Options options = {})
      : FakeHost(std::span<const ConfigKey>(plugin.config, plugin.config_count), config, std::move(options)) {}

  FakeHost(std::span<const ConfigKey> keys, const std::map<std::string, std::string>& config, Options options)
      : options_(std::move(options)), config_(keys, config), clock_(options_.start), logger_(*this), strand_(std::this_thread::get_id()) {}

  FakeHost(const FakeHost&) = delete;
  FakeHost& operator=(const FakeHost&) = delete;

  ~FakeHost() override {
    std::error_code ec;
    if (!own_dir_.empty()) std::filesystem::remove_all(own_dir_, ec);
  }

  // --- Host ---
  [[nodiscard]] std::string_view instance_name() const noexcept override { return options_.instance_name; }
  [[nodiscard]] std::optional<std::uint32_t> connector() const noexcept override { return options_.connector; }
  [[nodiscard]] Logger& log() noexcept override { return logger_; }
  [[nodiscard]] const Clock& clock() const noexcept override { return clock_; }
  [[nodiscard]] const ConfigValues& config() const noexcept override { return config_; }
  [[nodiscard]] std::string_view state_dir() noexcept override {
    on_strand("state_dir()");
    try {
      if (dir_.empty()) {
        if (options_.state_dir.empty()) {
          std::string pattern = (std::filesystem::temp_directory_path() / "pilecore-fake-host.XXXXXX").string();
          if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
          own_dir_ = pattern;
          dir_ = pattern;
        } else {
          std::filesystem::create_directories(options_.state_dir);
          dir_ = options_.state_dir.string();
        }
      }
    } catch (const std::exception& e) {
      violation(std::string("state_dir() could not be created: ") + e.what());
    }
    return dir_;
  }

  void post(std::function<void()> fn) noexcept override {
    try {
      std::lock_guard lock(mutex_);
      if (stopped_) return;  // not at all once the instance has stopped
      posted_.push_back(std::move(fn));
    } catch (...) {
      return;
    }
    wake_.notify_all();
  }
  TimerId schedule(Duration delay, std::function<void()> fn) noexcept override {
    on_strand("schedule()");
    try {
      std::lock_guard lock(mutex_);
      if (stopped_) return 0;
      const TimerId id = ++last_timer_;
      timers_.emplace(id, Timer{clock_.now() + std::max(delay, Duration(0)), std::move(fn)});
      return id;
    } catch (...) {
      return 0;
    }
  }
  void cancel(TimerId id) noexcept override {
    on_strand("cancel()");
    std::lock_guard lock(mutex_);
    timers_.erase(id);
  }
  void publish(const Sample& sample) noexcept override {
    on_strand("publish()");
    record([&] { samples_.push_back({std::string(sample.channel), std::string(sample.unit), sample.value, sample.time}); });
  }
  void raise(const Alarm& alarm) noexcept override {
    on_strand("raise()");
    record([&] { alarms_.push_back({alarm.severity, std::string(alarm.code), std::string(alarm.message), alarm.active}); });
  }
  void report_state(std::string_view state, std::string_view detail) noexcept override {
    on_strand("report_state()");
    record([&] { states_.push_back({std::string(state), std::string(detail)}); });
  }
  void present(const identification::Token& token) noexcept override {
    on_strand("present()");
    record([&] { tokens_.push_back(token); });
  }
  /// Records the upload. `done` is posted (never called inside): at once with the refusal set by
  /// refuse_uploads() or with invalid_argument for a record the core would refuse
  /// (uplink_record_error), at once with ok for a key acknowledged before, else when the test
  /// calls acknowledge(key). Like the core, a waiting upload of a key is not answered after stop().
  void upload(const UplinkRecord& r, UploadCallback done) noexcept override {
    on_strand("upload()");
    try {
      std::optional<Status> now;
      {
        std::lock_guard lock(mutex_);
        uploads_.push_back({r, clock_.now()});
        if (std::string why = uplink_record_error(r); !why.empty()) {
          now = Status(StatusCode::invalid_argument, std::move(why));
        } else if (refusal_) {
          now = *refusal_;
        } else if (acknowledged_.count(r.key) != 0) {
          now = Status::success();
        } else {
          waiting_.emplace(r.key, std::move(done));
        }
      }
      if (now) post([done = std::move(done), st = *now] { done(st); });
    } catch (...) {
      violation("upload() could not be recorded");
    }
  }

  // --- The test's side (call these on the thread that created the host) ---

  /// Runs what has been posted, and what that posts, until nothing is left. Returns how many ran.
  std::size_t run_posted() {
    std::size_t ran = 0;
    for (;;) {
      std::function<void()> fn;
      {
        std::lock_guard lock(mutex_);
        if (posted_.empty()) return ran;
        fn = std::move(posted_.front());
        posted_.pop_front();
      }
      fn();
      ++ran;
    }
  }

  /// Runs posted functions as the plugin's threads post them until `done()` holds; false when it
  /// still does not after `wait` of real time (the plugin's own threads run in real time).
  bool run_until(const std::function<bool()>& done, std::chrono::milliseconds wait = std::chrono::seconds(10)) {
    const auto until = std::chrono::steady_clock::now() + wait;
    for (;;) {
      run_posted();
      if (done()) return true;
      std::unique_lock lock(mutex_);
      if (!wake_.wait_until(lock, until, [this] { return !posted_.empty(); })) {
        lock.unlock();
        run_posted();
        return done();
      }
    }
  }

  /// Moves the clock forward by `d`, running each timer that falls due at its time, in order,
  /// and what is posted meanwhile.
  void advance(Duration d) {
    const TimePoint target = clock_.now() + d;
    for (;;) {
      run_posted();
      std::function<void()> fn;
      {
        std::lock_guard lock(mutex_);
        auto next = std::min_element(timers_.begin(), timers_.end(), [](const auto& a, const auto& b) {
          return a.second.at != b.second.at ? a.second.at < b.second.at : a.first < b.first;
        });
        if (next == timers_.end() || next->second.at > target) break;
        clock_.set(std::max(clock_.now(), next->second.at));
        fn = std::move(next->second.fn);
        timers_.erase(next);
      }
      fn();
    }
    clock_.set(target);
    run_posted();
  }

  /// What the core does once an instance has stopped: what is still posted or scheduled is
  /// dropped, later posts do not run, and uploads still waiting are never answered.
  /// Instance::stop() calls it.
  void stopped() {
    std::lock_guard lock(mutex_);
    stopped_ = true;
    posted_.clear();
    timers_.clear();
    waiting_.clear();
  }

  /// The back end acknowledges `key`: every upload of it still waiting is answered ok (posted:
  /// run_posted() delivers it), and later uploads of the key are answered ok at once. Returns how
  /// many uploads were waiting.
  std::size_t acknowledge(const std::string& key) {
    std::vector<UploadCallback> dones;
    {
      std::lock_guard lock(mutex_);
      acknowledged_.insert(key);
      auto [first, last] = waiting_.equal_range(key);
      for (auto it = first; it != last; ++it) dones.push_back(std::move(it->second));
      waiting_.erase(first, last);
    }
    for (auto& d : dones) post([d = std::move(d)] { d(Status::success()); });
    return dones.size();
  }
  /// From now on every upload is refused with `refusal` (e.g. the core's "outbox full", code
  /// busy); nullopt: uploads wait for acknowledge() again.
  void refuse_uploads(std::optional<Status> refusal) {
    std::lock_guard lock(mutex_);
    refusal_ = std::move(refusal);
  }
  /// Every upload() call, in order (a re-submission is a call of its own).
  [[nodiscard]] std::vector<RecordedUpload> uploads() const { return copy(uploads_); }
  /// The keys of uploads waiting for acknowledge(), sorted (a key uploaded twice is there twice).
  [[nodiscard]] std::vector<std::string> waiting_uploads() const {
    std::lock_guard lock(mutex_);
    std::vector<std::string> out;
    for (const auto& [key, done] : waiting_) out.push_back(key);
    return out;
  }

  /// A recorder for one callback the test hands the plugin.
  template <class Result>
  [[nodiscard]] Answer<Result> answer() {
    Answer<Result> a;
    a.state_->strand = strand_;
    a.state_->violation = [this](std::string what) { violation(std::move(what)); };
    return a;
  }

  [[nodiscard]] std::vector<LogLine> logs() const { return copy(logs_); }
  [[nodiscard]] std::vector<RecordedSample> samples() const { return copy(samples_); }
  [[nodiscard]] std::vector<RecordedAlarm> alarms() const { return copy(alarms_); }
  [[nodiscard]] std::vector<RecordedState> states() const { return copy(states_); }
  [[nodiscard]] std::vector<identification::Token> tokens() const { return copy(tokens_); }
  /// Calls the threading rules forbid, each a sentence; empty for a well-behaved plugin.
  [[nodiscard]] std::vector<std::string> violations() const { return copy(violations_); }
  /// Whether any log line contains `text` (e.g. to check that a PIN or card id is never logged).
  [[nodiscard]] bool logged(std::string_view text) const {
    std::lock_guard lock(mutex_);
    return std::any_of(logs_.begin(), logs_.end(), [&](const LogLine& l) { return l.message.find(text) != std::string::npos; });
  }
  [[nodiscard]] std::size_t timers() const {
    std::lock_guard lock(mutex_);
    return timers_.size();
  }
  ManualClock& manual_clock() noexcept { return clock_; }

 private:
  struct Timer {
    TimePoint at;
    std::function<void()> fn;
  };

  class FakeLogger final : public Logger {
   public:
    explicit FakeLogger(FakeHost& host) : host_(host) {}
    void write(LogLevel level, std::string_view message) noexcept override {
      host_.record([&] { host_.logs_.push_back({level, std::string(message)}); });
    }
    [[nodiscard]] bool enabled(LogLevel level) const noexcept override { return level >= host_.options_.log_level; }

   private:
    FakeHost& host_;
  };

  template <class F>
  void record(F&& f) noexcept {
    try {
      std::lock_guard lock(mutex_);
      f();
    } catch (...) {
    }
  }
  template <class T>
  std::vector<T> copy(const std::vector<T>& v) const {
    std::lock_guard lock(mutex_);
    return v;
  }
  void on_strand(std::string_view call) noexcept {
    if (std::this_thread::get_id() != strand_) {
      try {
        violation(std::string(call) + " was called off the strand");
      } catch (...) {
      }
    }
  }
  void violation(std::string what) noexcept {
    record([&] { violations_.push_back(std::move(what)); });
  }

  Options options_;
  FakeConfig config_;
  ManualClock clock_;
  FakeLogger logger_;
  std::thread::id strand_;
  std::string dir_;
  std::filesystem::path own_dir_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> posted_;
  std::map<TimerId, Timer> timers_;
  TimerId last_timer_ = 0;
  bool stopped_ = false;
  std::vector<LogLine> logs_;
  std::vector<RecordedSample> samples_;
  std::vector<RecordedAlarm> alarms_;
  std::vector<RecordedState> states_;
  std::vector<identification::Token> tokens_;
  std::vector<RecordedUpload> uploads_;
  std::multimap<std::string, UploadCallback> waiting_;
  std::set<std::string> acknowledged_;
  std::optional<Status> refusal_;
  std::vector<std::string> violations_;
};

/// One plugin instance, created and destroyed through the descriptor as the core does, of the
/// kind interface `Interface` (payment::Method, sensor::Sensor, ...). Throws std::runtime_error
/// with the plugin's message when its constructor fails, or when the kind does not match.
template <class Interface>
class Instance {
 public:
  Instance(const PluginDescriptor& plugin, FakeHost& host) : plugin_(plugin), host_(host) {
    if (plugin.kind != Interface::kind) throw std::runtime_error(std::string("plugin '") + plugin.name + "' is not of the kind asked for");
    std::string error;
    Plugin* p = plugin.create(host, &error);
    if (p == nullptr) throw std::runtime_error(std::string("plugin '") + plugin.name + "' could not be created: " + error);
    object_ = p;
    typed_ = static_cast<Interface*>(p);
  }
  Instance(const Instance&) = delete;
  Instance& operator=(const Instance&) = delete;
  ~Instance() {
    stop();
    plugin_.destroy(object_);
  }

  Status start() {
    started_ = true;
    return object_->start();
  }
  /// Stops the instance (once), then drops what it left posted or scheduled, as the core does.
  void stop() {
    if (!started_ || stopped_) return;
    stopped_ = true;
    object_->stop();
    host_.stopped();
  }
  Interface* operator->() noexcept { return typed_; }
  Interface& operator*() noexcept { return *typed_; }

 private:
  const PluginDescriptor& plugin_;
  FakeHost& host_;
  Plugin* object_ = nullptr;
  Interface* typed_ = nullptr;
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace testkit
}  // namespace v2
}  // namespace pilecore
