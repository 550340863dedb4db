// pilecore-plugin-host: runs one plugin instance for pilecored, in a process of its own
// (`isolate: true` in the site file). pilecored starts it with the socket pair on fd 3 and
// sends "init"; from then on this process confines itself (core/isolation/sandbox.hpp), loads
// the plugin with the core's own loader and checks, and relays calls, callbacks and Host calls
// as messages (core/isolation/peer.hpp). The plugin is the same .so, built against the same SDK,
// unchanged: it sees a Host and an event loop of its own, with the SDK's threading rules.
#include <fmt/format.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>

#include "clocks.hpp"
#include "codec.hpp"
#include "exchange_bridge.hpp"
#include "peer.hpp"
#include "plugin_loader.hpp"
#include "sandbox.hpp"
#include "site_config.hpp"

namespace asio = boost::asio;
using namespace pilecore;
using namespace pilecore::core;
using namespace pilecore::core::isolation;

namespace {

/// The core's clock, followed: each heartbeat carries the core's time.
class FollowedClock final : public Clock {
 public:
  void set(TimePoint now, double speed) {
    std::lock_guard lock(mutex_);
    base_ = now;
    at_ = std::chrono::steady_clock::now();
    if (speed > 0) speed_ = speed;
  }
  [[nodiscard]] TimePoint now() const noexcept override {
    std::lock_guard lock(mutex_);
    const auto real = std::chrono::steady_clock::now() - at_;
    return base_ + std::chrono::duration_cast<Duration>(std::chrono::duration<double, std::milli>(
                       std::chrono::duration<double, std::milli>(real).count() * speed_));
  }
  [[nodiscard]] double speed() const noexcept override {
    std::lock_guard lock(mutex_);
    return speed_;
  }

 private:
  mutable std::mutex mutex_;
  TimePoint base_{};
  std::chrono::steady_clock::time_point at_ = std::chrono::steady_clock::now();
  double speed_ = 1;
};

class RelayLogger final : public Logger {
 public:
  explicit RelayLogger(std::weak_ptr<Peer>& peer) : peer_(peer) {}
  void write(LogLevel level, std::string_view message) noexcept override {
    try {
      if (auto p = peer_.lock()) p->send({{"t", "ev"}, {"m", "log"}, {"a", {{"level", static_cast<int>(level)}, {"text", message}}}});
    } catch (...) {
    }
  }
  [[nodiscard]] bool enabled(LogLevel level) const noexcept override { return level >= min_; }
  LogLevel min_ = LogLevel::info;

 private:
  std::weak_ptr<Peer>& peer_;
};

/// A risk rule's read-only history, answered by the core.
class RelayHistory final : public risk::History {
 public:
  RelayHistory(std::weak_ptr<Peer> peer, std::uint64_t cb) : peer_(std::move(peer)), cb_(cb) {}
  [[nodiscard]] std::optional<std::uint32_t> sessions_since(std::string_view user, TimePoint since) const noexcept override {
    auto n = ask("sessions", user, since);
    if (!n || *n < 0) return std::nullopt;
    return static_cast<std::uint32_t>(*n);
  }
  [[nodiscard]] std::optional<std::int64_t> amount_since_fen(std::string_view user, TimePoint since) const noexcept override {
    return ask("amount", user, since);
  }

 private:
  std::optional<std::int64_t> ask(const char* q, std::string_view user, TimePoint since) const noexcept {
    try {
      auto p = peer_.lock();
      if (!p) return std::nullopt;
      auto r = p->call({{"m", "history"}, {"a", {{"cb", cb_}, {"q", q}, {"user", user}, {"since", time_json(since)}}}}, std::chrono::seconds(1));
      if (!r || !r->contains("r") || !(*r)["r"].contains("n")) return std::nullopt;
      return (*r)["r"]["n"].get<std::int64_t>();
    } catch (...) {
      return std::nullopt;
    }
  }
  std::weak_ptr<Peer> peer_;
  std::uint64_t cb_;
};

class ChildHost final : public Host {
 public:
  ChildHost(asio::io_context& io, int fd) : io_(io), logger_(weak_) {
    peer_ = std::make_shared<Peer>(io.get_executor(), fd,
                                   Peer::Handlers{[this](const json& r) { return on_request(r); }, [this](const json& e) { on_event(e); },
                                                  [this](const std::string&) { finish(); }});
    weak_ = peer_;
    bridge_.set_peer(weak_);
  }

  int run() {
    peer_->start();
    io_.run();
    return 0;
  }

  // --- Host ---
  [[nodiscard]] std::string_view instance_name() const noexcept override { return instance_; }
  [[nodiscard]] std::optional<std::uint32_t> connector() const noexcept override { return connector_; }
  [[nodiscard]] Logger& log() noexcept override { return logger_; }
  [[nodiscard]] const Clock& clock() const noexcept override { return clock_; }
  [[nodiscard]] const ConfigValues& config() const noexcept override { return *config_; }
  [[nodiscard]] std::string_view state_dir() noexcept override { return state_dir_; }
  void post(std::function<void()> fn) noexcept override {
    try {
      asio::post(io_, [this, fn = std::move(fn)] {
        if (running_) fn();
      });
    } catch (...) {
    }
  }
  TimerId schedule(Duration delay, std::function<void()> fn) noexcept override {
    if (!running_) return 0;
    try {
      const TimerId id = ++next_timer_;
      auto t = std::make_unique<asio::steady_timer>(io_);
      t->expires_after(real_duration(clock_, delay));
      t->async_wait([this, id, fn = std::move(fn)](const boost::system::error_code& ec) {
        if (ec || !running_) return;
        timers_.erase(id);
        fn();
      });
      timers_.emplace(id, std::move(t));
      return id;
    } catch (...) {
      return 0;
    }
  }
  void cancel(TimerId id) noexcept override {
    if (auto it = timers_.find(id); it != timers_.end()) {
      it->second->cancel();
      timers_.erase(it);
    }
  }
  void publish(const Sample& s) noexcept override {
    emit("publish", {{"channel", s.channel}, {"unit", s.unit}, {"value", s.value}, {"time", time_json(s.time)}});
  }
  void raise(const Alarm& a) noexcept override {
    emit("raise", {{"severity", static_cast<int>(a.severity)}, {"code", a.code}, {"message", a.message}, {"active", a.active}});
  }
  void report_state(std::string_view state, std::string_view detail) noexcept override { emit("state", {{"state", state}, {"detail", detail}}); }
  void present(const identification::Token& token) noexcept override {
    try {
      emit("present", {{"token", to_json(token)}, {"x", bridge_.offer(token.exchange)}});
    } catch (...) {
    }
  }
  // The core answers with an "uploaded" event naming the upload; stopped first, never.
  void upload(const UplinkRecord& record, UploadCallback done) noexcept override {
    if (!running_) return;
    try {
      const std::uint64_t id = ++next_upload_;
      uploads_.emplace(id, std::move(done));
      emit("upload", {{"u", id}, {"record", to_json(record)}});
    } catch (...) {
    }
  }

 private:
  void emit(const char* m, json a) noexcept {
    try {
      peer_->send({{"t", "ev"}, {"m", m}, {"a", std::move(a)}});
    } catch (...) {
    }
  }
  void answer(std::uint64_t cb, json r) { emit("cb", {{"cb", cb}, {"r", std::move(r)}}); }

  void finish() {
    if (plugin_ && running_) plugin_->stop();
    running_ = false;
    // Timers and posted work hold `this`; leave without running destructors of a plugin that
    // may be in any state: the core has already given up on this process.
    std::fflush(stderr);
    ::_exit(0);
  }

  json init(const json& a) {
    instance_ = str(a, "instance");
    state_dir_ = str(a, "state_dir");
    if (a.contains("connector")) connector_ = static_cast<std::uint32_t>(integer(a, "connector"));
    clock_.set(time_of(a, "now"), number(a, "speed"));
    if (a.contains("log_level")) logger_.min_ = enumerated(a, "log_level", LogLevel::critical);
    const std::filesystem::path file = str(a, "file");
    ::prctl(PR_SET_NAME, ("plugin:" + instance_).substr(0, 15).c_str());

    SandboxPlan plan{state_dir_, file.parent_path().string(), {}};
    for (const auto& p : member(a, "paths")) plan.paths.push_back(p.get<std::string>());
    SandboxOutcome sandbox = enter_sandbox(plan);
    if (!sandbox.error.empty()) return {{"error", fmt::format("the sandbox could not be set up: {}", sandbox.error)}};
    // The caps were set between fork and exec, where nothing can be reported: check them here
    // (a seccomp filter that refuses setrlimit would leave them unset).
    rlimit core_limit{}, as_limit{};
    ::getrlimit(RLIMIT_CORE, &core_limit);
    ::getrlimit(RLIMIT_AS, &as_limit);
    if (core_limit.rlim_max != 0) sandbox.warnings.push_back("core dumps could not be turned off for the isolated process");
    if (a.contains("memory_mb") && integer(a, "memory_mb") > 0 && as_limit.rlim_max == RLIM_INFINITY) {
      sandbox.warnings.push_back(fmt::format("the {} MiB memory cap could not be set for the isolated process", integer(a, "memory_mb")));
    }

    auto loaded = load_plugin_file(file);
    if (!loaded.plugin) return {{"error", loaded.error}};
    loaded_ = loaded.plugin;
    const auto* d = loaded_->descriptor;
    if (static_cast<int>(d->kind) != integer(a, "kind")) return {{"error", fmt::format("{} is no longer a {} plugin", file.string(), integer(a, "kind"))}};
    const YAML::Node node = YAML::Load(member(a, "config").dump());
    config_ = std::make_unique<InstanceConfig>(loaded_->config_fields, node);
    std::string error;
    plugin_ = d->create(*this, &error);
    if (!plugin_) return {{"error", fmt::format("plugin '{}' could not create an instance: {}", d->name, error.empty() ? "no reason given" : error)}};
    kind_ = d->kind;
    json info = {{"sandbox", sandbox.summary}, {"warnings", sandbox.warnings}};
    switch (kind_) {
      case Kind::sensor: info["channels"] = to_json(static_cast<sensor::Sensor*>(plugin_)->channels()); break;
      case Kind::payment: {
        payment::Capabilities caps = static_cast<payment::Method*>(plugin_)->capabilities();
        // verifies_pin is API 2.3: an older plugin's struct ends before it (what is there is not its answer).
        if (loaded_->descriptor->api_minor < 3) caps.verifies_pin = false;
        info["capabilities"] = to_json(caps);
        break;
      }
      case Kind::link: {
        auto* l = static_cast<link::Link*>(plugin_);
        info["limits"] = to_json(l->limits());
        l->set_receiver([this](std::span<const std::uint8_t> f) { emit("frame", {{"data", json::binary({f.begin(), f.end()})}}); });
        break;
      }
      case Kind::power:
        static_cast<power::PowerStage*>(plugin_)->set_event_sink(
            [this](power::Event e, std::string_view detail) { emit("power", {{"event", static_cast<int>(e)}, {"detail", detail}}); });
        break;
      default: break;
    }
    return {{"r", info}};
  }

  json on_request(const json& r) {
    if (auto x = bridge_.on_request(r)) return {{"r", *x}};
    const std::string m = str(r, "m");
    const json& a = member(r, "a");
    if (m == "init") {
      if (plugin_) throw std::invalid_argument("init twice");
      return init(a);
    }
    if (!plugin_) throw std::invalid_argument("a call before init");
    if (m == "start") {
      running_ = true;
      Status s = plugin_->start();
      if (!s.ok()) running_ = false;
      return {{"r", to_json(s)}};
    }
    if (m == "stop") {
      if (running_) plugin_->stop();
      running_ = false;
      for (auto& [id, t] : timers_) t->cancel();
      timers_.clear();
      uploads_.clear();
      return {{"r", json::object()}};
    }
    if (kind_ == Kind::power) {
      auto* p = static_cast<power::PowerStage*>(plugin_);
      if (m == "close_contactor") return {{"r", to_json(p->close_contactor())}};
      if (m == "open_contactor") return {{"r", to_json(p->open_contactor())}};
      if (m == "set_power_limit") return {{"r", to_json(p->set_power_limit(integer(a, "w")))}};
      if (m == "vehicle") return {{"r", to_json(p->vehicle())}};
    }
    if (kind_ == Kind::strategy && m == "compute") {
      std::vector<std::string> names;
      std::vector<strategy::Variable> vars;
      for (const auto& v : member(a, "vars")) names.push_back(v.at(0).get<std::string>());
      std::size_t i = 0;
      for (const auto& v : member(a, "vars")) vars.push_back({names[i++], v.at(1).get<double>()});
      const auto sp = static_cast<strategy::Strategy*>(plugin_)->compute(vars);
      return {{"r", {{"status", to_json(sp.status)}, {"watts", sp.watts}}}};
    }
    if (kind_ == Kind::link && m == "link_state") return {{"r", {{"state", static_cast<int>(static_cast<link::Link*>(plugin_)->state())}}}};
    throw std::invalid_argument(fmt::format("unknown call '{}' for a {} plugin", m, to_string(kind_)));
  }

  void on_event(const json& e) {
    if (bridge_.on_event(e)) return;
    const std::string m = str(e, "m");
    const json& a = member(e, "a");
    if (m == "ping") {
      clock_.set(time_of(a, "now"), clock_.speed());
      emit("pong", {{"seq", integer(a, "seq")}});
      return;
    }
    if (m == "exit") {
      finish();
      return;
    }
    if (m == "uploaded") {
      auto it = uploads_.find(static_cast<std::uint64_t>(integer(a, "u")));
      // Dropped at stop: an answer that comes after it is not the plugin's any more.
      if (it == uploads_.end()) return;
      auto done = std::move(it->second);
      uploads_.erase(it);
      if (running_) done(status_of(member(a, "status")));
      return;
    }
    if (!plugin_ || !running_) throw std::invalid_argument(fmt::format("'{}' while the plugin is not running", m));
    const auto cb = e.contains("cb") ? static_cast<std::uint64_t>(integer(e, "cb")) : 0;
    if (m == "refresh" && kind_ == Kind::sensor) {
      static_cast<sensor::Sensor*>(plugin_)->refresh();
    } else if (m == "prefer_backup" && kind_ == Kind::link) {
      // prefer_backup() is API 2.2: a link built against 2.0 or 2.1 has no such entry in its vtable.
      if (loaded_->descriptor->api_minor >= 2) static_cast<link::Link*>(plugin_)->prefer_backup(boolean(a, "on"));
    } else if (m == "show" && kind_ == Kind::indicator) {
      static_cast<indicator::Indicator*>(plugin_)->show(static_cast<std::uint32_t>(integer(a, "connector")),
                                                         enumerated(a, "status", ConnectorStatus::faulted));
    } else if (m == "announce" && kind_ == Kind::indicator) {
      static_cast<indicator::Indicator*>(plugin_)->announce(static_cast<std::uint32_t>(integer(a, "connector")), str(a, "message"));
    } else if (kind_ == Kind::payment && cb != 0) {
      payment_call(m, a, cb);
    } else if (kind_ == Kind::risk && m == "evaluate" && cb != 0) {
      const std::string txn = str(a, "txn"), method = str(a, "method"), channel = str(a, "channel"), user = str(a, "user"), pile = str(a, "pile");
      risk::Context c{enumerated(a, "phase", risk::Phase::capture), txn, static_cast<std::uint32_t>(integer(a, "connector")), method, channel, user,
                      integer(a, "amount_fen"), time_of(a, "time"), pile, time_of(a, "day_start"),
                      static_cast<std::int32_t>(integer(a, "utc_offset_s"))};
      auto history = std::make_shared<RelayHistory>(weak_, cb);
      static_cast<risk::Rule*>(plugin_)->evaluate(c, *history, time_of(a, "deadline"), [this, cb, history](risk::Result r) {
        answer(cb, {{"verdict", static_cast<int>(r.verdict)}, {"reason", r.reason}});
      });
    } else if (kind_ == Kind::link && m == "send" && cb != 0) {
      const json& frame = member(a, "frame");
      if (!frame.is_binary()) throw std::invalid_argument("a frame that is not a byte string");
      static_cast<link::Link*>(plugin_)->send(frame.get_binary(), enumerated(a, "class", link::TrafficClass::bulk),
                                              [this, cb](Status s) { answer(cb, to_json(s)); });
    } else {
      throw std::invalid_argument(fmt::format("unknown event '{}' for a {} plugin", m, to_string(kind_)));
    }
  }

  void payment_call(const std::string& m, const json& a, std::uint64_t cb) {
    auto* p = static_cast<payment::Method*>(plugin_);
    auto auth_done = [this, cb](payment::AuthorizationResult r) { answer(cb, to_json(r)); };
    auto op_done = [this, cb](payment::OperationResult r) { answer(cb, to_json(r)); };
    const std::string op = str(a, "op");
    if (m == "answer_step_up") {
      payment::StepUpAnswer ans{enumerated(a, "kind", payment::ChallengeKind::app_confirmation), str(a, "value"), boolean(a, "confirmed")};
      p->answer_step_up(op, ans, auth_done);
      return;
    }
    const std::string txn = str(a, "txn");
    if (m == "authorize") {
      const std::string channel = str(a, "channel");
      std::optional<identification::Token> token;
      if (a.contains("token")) {
        token = token_of(member(a, "token"));
        token->exchange = bridge_.proxy(static_cast<std::uint64_t>(integer(a, "x")));
      }
      payment::AuthorizationRequest q{op, txn, static_cast<std::uint32_t>(integer(a, "connector")), token ? &*token : nullptr, channel,
                                      integer(a, "amount_fen"), time_of(a, "deadline"), boolean(a, "pin_required")};
      p->authorize(q, auth_done);
    } else if (m == "increment") {
      // increment() is API 2.1: a plugin built against 2.0 has no such entry in its vtable.
      if (loaded_->descriptor->api_minor < 1) {
        payment::AuthorizationResult r;
        r.reason = "the plugin was built against API 2.0, which has no incremental authorisation";
        auth_done(std::move(r));
        return;
      }
      const std::string authorization = str(a, "authorization"), channel = str(a, "channel");
      p->increment({op, txn, authorization, channel, integer(a, "amount_fen"), integer(a, "total_fen"), time_of(a, "deadline")}, auth_done);
    } else if (m == "capture") {
      p->capture({op, txn, integer(a, "amount_fen"), time_of(a, "deadline")}, op_done);
    } else if (m == "cancel") {
      const std::string authorization = a.contains("authorization") ? str(a, "authorization") : std::string();
      const std::string channel = a.contains("channel") ? str(a, "channel") : std::string();
      p->cancel({op, txn, time_of(a, "deadline"), authorization, channel}, op_done);
    } else if (m == "refund") {
      const std::string reason = str(a, "reason");
      p->refund({op, txn, integer(a, "amount_fen"), reason, time_of(a, "deadline")}, op_done);
    } else {
      throw std::invalid_argument(fmt::format("unknown payment call '{}'", m));
    }
  }

  asio::io_context& io_;
  std::shared_ptr<Peer> peer_;
  std::weak_ptr<Peer> weak_;
  RelayLogger logger_;
  FollowedClock clock_;
  ExchangeBridge bridge_;
  std::string instance_;
  std::optional<std::uint32_t> connector_;
  std::string state_dir_;
  std::unique_ptr<InstanceConfig> config_;
  std::shared_ptr<const LoadedPlugin> loaded_;
  Plugin* plugin_ = nullptr;
  Kind kind_ = Kind::sensor;
  bool running_ = false;
  std::map<TimerId, std::unique_ptr<asio::steady_timer>> timers_;
  TimerId next_timer_ = 0;
  std::map<std::uint64_t, UploadCallback> uploads_;  ///< Host::upload calls the core has not answered
  std::uint64_t next_upload_ = 0;
};

}  // namespace

#if defined(__SANITIZE_ADDRESS__)
// In a sanitizer build a plugin's segfault must still end this process with the signal, as in
// production, so that the core sees (and the tests check) a crash and not an exit status; the
// instrumentation still reports every memory error it finds.
extern "C" const char* __asan_default_options() { return "handle_segv=0:handle_sigbus=0:handle_abort=0"; }
#endif

int main(int argc, char** argv) {
  int fd = -1;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--fd") == 0) fd = std::atoi(argv[i + 1]);
  }
  if (fd < 0) {
    std::fprintf(stderr, "pilecore-plugin-host: started by pilecored for an instance with `isolate: true`; not a command to run by hand\n");
    return 2;
  }
  asio::io_context io;
  ChildHost host(io, fd);
  return host.run();
}
