#include "runtime.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cmath>
#include <csignal>
#include <fstream>
#include <iterator>

#include "build_config.hpp"
#include "clocks.hpp"
#include "overloaded.hpp"
#include "disk_space.hpp"
#include "inflight.hpp"
#include "isolated.hpp"
#include "logging.hpp"
#include "pilecore/pilecore.hpp"
#include "ledger.hpp"
#include "plugin_uploads.hpp"
#include "private_files.hpp"
#include "statement.hpp"
#include "storage.hpp"
#include "strand_scheduler.hpp"
#include "store_worker.hpp"
#include "token_privacy.hpp"
#include "remote_executor.hpp"
#include "site_changes.hpp"
#include "uplink.hpp"
#include "wire.hpp"

namespace pilecore::core {
namespace asio = boost::asio;
namespace fs = std::filesystem;

/// One plugin instance and the host services it sees.
class Instance final : public Host {
 public:
  Instance(Runtime& rt, const InstanceSpec& spec)
      : rt_(rt),
        spec_(spec),
        logger_(make_logger(fmt::format("{}:{}:{}", to_string(spec.loaded->descriptor->kind), spec.plugin, spec.name))),
        plugin_logger_(logger_),
        alive_(std::make_shared<std::atomic<bool>>(true)) {}

  ~Instance() override { destroy(); }

  // --- Host ---
  [[nodiscard]] std::string_view instance_name() const noexcept override { return spec_.name; }
  [[nodiscard]] std::optional<std::uint32_t> connector() const noexcept override { return spec_.connector; }
  [[nodiscard]] Logger& log() noexcept override { return plugin_logger_; }
  [[nodiscard]] const Clock& clock() const noexcept override { return rt_.clock(); }
  [[nodiscard]] const ConfigValues& config() const noexcept override { return *spec_.config; }
  [[nodiscard]] std::string_view state_dir() noexcept override {
    if (state_dir_.empty()) {
      std::error_code ec;
      const fs::path p = rt_.state_dir() / "plugins" / spec_.name;
      fs::create_directories(p, ec);
      state_dir_ = p.string();
    }
    return state_dir_;
  }

  void post(std::function<void()> fn) noexcept override {
    try {
      asio::post(rt_.strand(), [this, alive = alive_, fn = std::move(fn)]() {
        if (alive->load()) guarded(fn, "a posted callback");
      });
    } catch (...) {
    }
  }

  TimerId schedule(Duration delay, std::function<void()> fn) noexcept override {
    if (!alive_->load()) return 0;
    try {
      const TimerId id = ++next_timer_;
      auto timer = std::make_unique<asio::steady_timer>(rt_.strand());
      timer->expires_after(real_duration(rt_.clock(), delay));
      timer->async_wait([this, alive = alive_, id, fn = std::move(fn)](const boost::system::error_code& ec) {
        if (ec || !alive->load()) return;
        timers_.erase(id);
        guarded(fn, "a timer callback");
      });
      timers_.emplace(id, std::move(timer));
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

  void publish(const Sample& sample) noexcept override {
    if (alive_->load()) rt_.on_sample(*this, sample);
  }
  void raise(const Alarm& alarm) noexcept override {
    if (alive_->load()) rt_.on_alarm(*this, alarm);
  }
  void report_state(std::string_view state, std::string_view detail) noexcept override {
    if (alive_->load()) rt_.on_state(*this, state, detail);
  }
  void present(const identification::Token& token) noexcept override {
    if (!alive_->load()) return;
    try {
      // A flood of taps is refused at the door, counted in status, and not logged line by line.
      if (!rt_.admit(risk::Inbound::token)) return;
      if (auto* e = rt_.engine()) e->present(token, spec_.connector);
    } catch (const std::exception& e) {
      logger_->error("a presented token was lost: {}", e.what());
    }
  }

  void upload(const UplinkRecord& record, UploadCallback done) noexcept override {
    // Stopped: no answer, as for post(); the plugin uploads again at its next start.
    if (!alive_->load()) return;
    try {
      rt_.upload(*this, record, [this, alive = alive_, done = std::move(done)](Status st) {
        if (alive->load()) guarded([&] { done(std::move(st)); }, "an upload's answer");
      });
    } catch (const std::exception& e) {
      logger_->error("an uplink record was lost before the core took it: {}", e.what());
    }
  }

  // --- lifecycle, on the strand ---
  /// Returns an empty string on success, else the reason.
  std::string create() {
    const auto* d = spec_.loaded->descriptor;
    if (spec_.isolate) return create_isolated();
    std::string error;
    {
      const auto mark = in_flight("create");
      plugin_ = d->create(*this, &error);
    }
    if (plugin_ == nullptr) {
      if (error.empty()) {
        return fmt::format("instance '{}': plugin '{}' ({}) returned no instance and gave no reason; report this to its vendor ({})",
                           spec_.name, spec_.plugin, spec_.loaded->file.string(), d->vendor ? d->vendor : "unknown");
      }
      return fmt::format("instance '{}': plugin '{}' ({}) could not create an instance: {}", spec_.name, spec_.plugin,
                         spec_.loaded->file.string(), error);
    }
    return {};
  }

  std::string start() {
    Status s = [&] {
      const auto mark = in_flight("start");
      return plugin_->start();
    }();
    if (!s.ok()) {
      return fmt::format("instance '{}': plugin '{}' failed to start ({}): {}", spec_.name, spec_.plugin, pilecore::to_string(s.code()), s.message());
    }
    state_ = InstanceState::running;
    return {};
  }

  void stop() {
    if (state_ != InstanceState::running) return;
    alive_->store(false);
    cancel_all_timers();
    {
      const auto mark = in_flight("stop");
      plugin_->stop();
    }
    state_ = InstanceState::stopped;
  }

  void fail(const std::string& reason) {
    if (state_ != InstanceState::running) return;
    alive_->store(false);
    cancel_all_timers();
    {
      const auto mark = in_flight("stop after a failure");
      plugin_->stop();
    }
    state_ = InstanceState::failed;
    detail_ = reason;
    rt_.on_instance_failed(*this, reason);
  }

  void destroy() {
    if (isolated_) {
      plugin_ = nullptr;
      isolated_.reset();
      return;
    }
    if (plugin_ != nullptr) {
      alive_->store(false);
      cancel_all_timers();
      const auto mark = in_flight("destroy");
      spec_.loaded->descriptor->destroy(plugin_);
      plugin_ = nullptr;
    }
  }

  /// Quarantined: never created; the snapshot and the status show why.
  void disable(const std::string& reason) {
    state_ = InstanceState::disabled;
    detail_ = reason;
  }

  /// Marks a call into this instance's plugin for crash attribution (inflight.hpp).
  [[nodiscard]] InFlight in_flight(std::string_view call) const { return InFlight(spec_.name, spec_.plugin, call); }

  template <class T>
  T* as() {
    return static_cast<T*>(plugin_);
  }
  [[nodiscard]] Plugin* plugin() const { return plugin_; }
  [[nodiscard]] isolation::Isolated* isolated() const { return isolated_.get(); }
  /// An isolated instance whose process died (failed) or came back (running).
  void set_isolated_state(InstanceState s, std::string detail) {
    state_ = s;
    detail_ = std::move(detail);
  }

  [[nodiscard]] const InstanceSpec& spec() const { return spec_; }
  [[nodiscard]] Kind kind() const { return spec_.loaded->descriptor->kind; }
  [[nodiscard]] InstanceState state() const { return state_; }
  [[nodiscard]] spdlog::logger& logger() { return *logger_; }
  std::string health;
  std::string detail_;

 private:
  void guarded(const std::function<void()>& fn, std::string_view call) noexcept {
    try {
      const auto mark = in_flight(call);
      fn();
    } catch (const std::exception& e) {
      fail(fmt::format("a callback threw: {}", e.what()));
    } catch (...) {
      fail("a callback threw an unknown exception");
    }
  }

  std::string create_isolated() {
    isolation::Options o;
    o.host_program = rt_.plugin_host();
    o.plugin_file = spec_.loaded->file;
    o.instance = spec_.name;
    o.plugin = spec_.plugin;
    o.kind = kind();
    o.connector = spec_.connector;
    o.config = isolation::config_to_json(spec_.loaded->config_fields, *spec_.config);
    o.state_dir = std::string(state_dir());
    o.paths = spec_.isolate_paths;
    o.memory_mb = spec_.isolate_memory_mb;
    isolation::Isolated::Hooks hooks;
    hooks.host = this;
    hooks.failed = [this](const std::string& reason) { return rt_.on_isolated_failed(*this, reason); };
    hooks.restored = [this] { rt_.on_isolated_restored(*this); };
    isolated_ = std::make_unique<isolation::Isolated>(rt_.strand(), std::move(o), std::move(hooks));
    if (auto err = isolated_->create(); !err.empty()) {
      isolated_.reset();
      return fmt::format("instance '{}': plugin '{}' ({}) could not be started in its own process: {}", spec_.name, spec_.plugin,
                         spec_.loaded->file.string(), err);
    }
    plugin_ = isolated_->plugin();
    logger_->info("isolated in process {} ({})", isolated_->pid(), isolated_->sandbox());
    return {};
  }

  void cancel_all_timers() {
    for (auto& [id, t] : timers_) t->cancel();
    timers_.clear();
  }

  Runtime& rt_;
  InstanceSpec spec_;
  std::shared_ptr<spdlog::logger> logger_;
  PluginLogger plugin_logger_;
  std::shared_ptr<std::atomic<bool>> alive_;
  Plugin* plugin_ = nullptr;
  InstanceState state_ = InstanceState::created;
  std::map<TimerId, std::unique_ptr<asio::steady_timer>> timers_;
  TimerId next_timer_ = 0;
  std::string state_dir_;
  std::unique_ptr<isolation::Isolated> isolated_;
};

Runtime::Runtime(SiteConfig site, RuntimeOptions options)
    : site_(std::move(site)),
      options_(std::move(options)),
      clock_(options_.clock ? options_.clock : std::make_shared<SystemClock>()),
      strand_(asio::make_strand(io_)) {
  for (const auto& c : site_.connectors) connector_status_[c.id] = ConnectorStatus::available;
  connector_snapshot_ = connector_status_;
}

void Runtime::reload(std::function<void(ReloadReply)> done) {
  ReloadReply r;
  if (!options_.reload_site || site_.file.empty()) {
    r.errors.push_back("this pilecored cannot reload: it was not started from a site file");
    return done(r);
  }
  if (!engine_ || !ready_) {
    r.errors.push_back("pilecored is still starting; reload once it is ready");
    return done(r);
  }
  LoadOutcome loaded = options_.reload_site();
  if (!loaded.site) {
    for (const auto& d : loaded.diagnostics.items()) {
      if (d.severity == Severity::error) r.errors.push_back(d.format());
    }
    if (r.errors.empty()) r.errors.push_back(fmt::format("{}: cannot be read", site_.file.string()));
    spdlog::error("reload: {} has {} error(s); the running configuration stays:", site_.file.string(), r.errors.size());
    for (const auto& e : r.errors) spdlog::error("reload:   {}", e);
    return done(r);
  }
  r.ok = true;
  SiteConfig& next = *loaded.site;
  // Compared with the text the pile started with (site_.text is not replaced by a reload: what
  // waits for a restart keeps waiting until one).
  for (const auto& setting : changed_settings(site_.text, next.text)) {
    if (!applies_on_reload(setting)) r.restart_needed.push_back(setting);
  }
  // The tariffs: sessions that start from now on. A session in progress keeps the tariff it
  // started with (stored with its transaction) and its receipt says so.
  const std::string before = site_.session.tariff ? site_.session.tariff->document().dump() : std::string();
  const std::string after = next.session.tariff ? next.session.tariff->document().dump() : std::string();
  if (before != after) {
    if (next.session.tariff) {
      std::size_t running = 0;
      for (const auto& c : engine_->status().connectors) running += c.session ? 1 : 0;
      engine_->set_tariff(*next.session.tariff);
      site_.session.tariff = next.session.tariff;
      r.applied.push_back(fmt::format("tariffs: sessions that start from now on; {} session(s) in progress keep the price they started with", running));
    } else {
      r.restart_needed.push_back("tariffs");
    }
  }
  if (next.log_level != site_.log_level) {
    spdlog::set_level(spdlog::level::from_str(next.log_level));
    site_.log_level = next.log_level;
    r.applied.push_back(fmt::format("log level: {}", next.log_level));
  }
  // Settings read when a session starts, or when the pile stops or starts (applies_on_reload):
  // the engine reads them from site_, so the new values serve from now on, and a session in
  // progress keeps its hold.
  auto& pay = site_.session.payment;
  const auto& next_pay = next.session.payment;
  if (next_pay.preauth_fen != pay.preauth_fen) {
    pay.preauth_fen = next_pay.preauth_fen;
    r.applied.push_back(fmt::format("payment.preauth_fen: {} fen held for sessions that start from now on", pay.preauth_fen));
  }
  if (next_pay.autostart != pay.autostart) {
    pay.autostart = next_pay.autostart;
    r.applied.push_back(fmt::format("payment.autostart: {}", pay.autostart ? "a vehicle plugged in from now on starts a session" : "off"));
  }
  auto& ch = site_.session.charging;
  const auto& next_ch = next.session.charging;
  if (next_ch.suspend_on_stop != ch.suspend_on_stop) {
    ch.suspend_on_stop = next_ch.suspend_on_stop;
    r.applied.push_back(fmt::format("charging.on_planned_stop: {} at the next planned stop", ch.suspend_on_stop ? "suspend" : "stop"));
  }
  if (next_ch.resume_within_s != ch.resume_within_s || next_ch.resume_plug_wait_s != ch.resume_plug_wait_s) {
    ch.resume_within_s = next_ch.resume_within_s;
    ch.resume_plug_wait_s = next_ch.resume_plug_wait_s;
    r.applied.push_back(fmt::format("charging.resume_within_s {} s, resume_plug_wait_s {} s: at the next start", ch.resume_within_s, ch.resume_plug_wait_s));
  }
  spdlog::info("reload: {}: {}", site_.file.string(), r.applied.empty() ? std::string("nothing to apply") : fmt::format("applied {}", fmt::join(r.applied, "; ")));
  if (!r.restart_needed.empty()) {
    spdlog::warn("reload: changed settings that take effect at the next restart (systemctl restart pilecore): {}", fmt::join(r.restart_needed, ", "));
  }
  done(r);
}

Runtime::~Runtime() {
  // Destroy in reverse creation order; each instance destroys its plugin object.
  while (!instances_.empty()) instances_.pop_back();
  stop_storage();
}

void Runtime::stop_storage() {
  // The signer first (its last signatures are submissions), then the storage thread, which
  // writes everything submitted before it joins; the ledger's statements go before its
  // connection closes. The event loop has stopped: db_ is free for this thread.
  if (ledger_) ledger_->stop_signer(true);
  if (store_) store_->stop();
  ledger_.reset();
}

std::string Runtime::start_error() const {
  std::lock_guard lock(snapshot_mutex_);
  return start_error_;
}

bool Runtime::create_instances() {
  for (const auto& spec : site_.instances) {
    auto inst = std::make_unique<Instance>(*this, spec);
    if (crash_book_ && crash_book_->quarantined(spec.name)) {
      const auto& reason = crash_book_->instances().at(spec.name).reason;
      inst->logger().error("not started: {}; the rest of the pile runs without it. Once the plugin is fixed: pilectl plugins enable {}", reason, spec.name);
      inst->disable(reason);
      instances_.push_back(std::move(inst));
      update_snapshot(*instances_.back());
      continue;
    }
    if (auto err = inst->create(); !err.empty()) {
      spdlog::error("{}", err);
      std::lock_guard lock(snapshot_mutex_);
      start_error_ = err;
      return false;
    }
    instances_.push_back(std::move(inst));
    update_snapshot(*instances_.back());
  }
  return true;
}

void Runtime::start_instances() {
  for (auto& inst : instances_) {
    if (inst->state() == InstanceState::disabled) continue;
    if (auto err = inst->start(); !err.empty() && inst->isolated()) {
      // Contained like a crash: the instance fails, the pile starts without it, and its
      // process is started again after the backoff.
      inst->isolated()->fail_and_restart(err);
      continue;
    } else if (!err.empty()) {
      spdlog::error("{}", err);
      {
        std::lock_guard lock(snapshot_mutex_);
        start_error_ = err;
      }
      exit_code_ = 3;
      shutdown();
      return;
    }
    update_snapshot(*inst);
  }
  for (const auto& inst : instances_) {
    const auto& s = inst->spec();
    spdlog::info("instance {:<14} {:<9} {} {}{}{}", s.name, to_string(inst->kind()), s.plugin, s.loaded->descriptor->version,
                 s.connector ? fmt::format(" (connector {})", *s.connector) : "", inst->state() == InstanceState::disabled ? " DISABLED" : "");
  }
  for (const auto& inst : instances_) {
    if (inst->kind() != Kind::indicator || inst->state() != InstanceState::running) continue;
    const auto mark = inst->in_flight("show");
    for (const auto& [id, st] : connector_status_) inst->as<indicator::Indicator>()->show(id, st);
  }
  SessionEngine::Hooks hooks;
  hooks.find = [this](std::string_view name) {
    SessionEngine::PluginRef ref;
    for (const auto& inst : instances_) {
      if (inst->spec().name == name && inst->state() == InstanceState::running) {
        ref = {inst->plugin(), inst->kind(), inst->spec().loaded->descriptor->api_minor};
      }
    }
    return ref;
  };
  hooks.running_of_kind = [this](Kind k) {
    std::vector<std::string> out;
    for (const auto& inst : instances_) {
      if (inst->kind() == k && inst->state() == InstanceState::running) out.push_back(inst->spec().name);
    }
    return out;
  };
  hooks.status_changed = [this](std::uint32_t id, ConnectorStatus st, const std::string& why) { set_connector(id, st, why); };
  if (ledger_) {
    hooks.ledger_append = [this](const SessionRecord& r) { ledger_->append(r.transaction, to_json(r)); };
    hooks.ledger_contains = [this](const std::string& txn) { return ledger_->contains(txn); };
    // Each money operation's outcome is a record of its own, chained after the session's: a
    // refund days later is as verifiable as the capture.
    hooks.ledger_operation = [this](Database&, const MoneyOperation& op) {
      if (ledger_->contains(op.id)) return;
      ledger_->append(op.id, op.txn,
                      {{"entry", op.id}, {"transaction", op.txn}, {"site", site_.id}, {"operation", std::string(to_string(op.kind))},
                       {"state", std::string(to_string(op.state))}, {"amount_fen", op.amount_fen}, {"method", op.method}, {"channel", op.channel},
                       {"reference", op.reference}, {"reason", op.reason}, {"attempts", op.attempts}, {"routing", op.routing},
                       {"time_ms", op.updated.time_since_epoch().count()}});
    };
  }
  hooks.event = [this](const Event& e) { publish_event(e); };
  hooks.announce = [this](std::uint32_t id, const std::string& message) {
    for (auto& inst : instances_) {
      if (inst->kind() == Kind::indicator && inst->state() == InstanceState::running) inst->as<indicator::Indicator>()->announce(id, message);
    }
  };
  engine_ = std::make_unique<SessionEngine>(site_, *db_, *store_, *clock_, strand_, std::move(hooks));
  make_router();
  if (router_) engine_->set_router(router_.get());
  engine_->attach();
  scheduler_ = std::make_unique<StrandScheduler>(strand_, *clock_);
  disk_ = std::make_unique<LowDiskMonitor>(
      *scheduler_, options_.state_dir, site_.storage.disk_check_interval, site_.storage.low_disk_bytes,
      [dir = options_.state_dir](std::string& error) { return disk_space(dir, error); }, [this](const LowDiskAlarm& a) { publish_event(RuntimeEvent(a)); });
  start_uplink();  // before the first disk check: its alarm is a record too
  disk_->start();
  for (const auto& inst : instances_) {
    // Before recovery: a session must not start on a connector whose plugin is quarantined, and
    // recovery itself runs because the quarantined plugin is no longer started to crash it.
    if (inst->state() == InstanceState::disabled) engine_->on_instance_disabled(inst->spec().name, inst->spec().connector, inst->detail_);
    if (inst->state() == InstanceState::failed) engine_->on_instance_failed(inst->spec().name, inst->spec().connector);
  }
  if (!options_.socket_path.empty()) {
    try {
      control_ = std::make_unique<ControlSocket>(
          strand_, options_.socket_path, [this](const nlohmann::json& req, std::function<void(nlohmann::json)> reply) { handle_request(req, std::move(reply)); },
          options_.control_limits);
      spdlog::info("control socket {}", options_.socket_path.string());
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
      {
        std::lock_guard lock(snapshot_mutex_);
        start_error_ = e.what();
      }
      exit_code_ = 3;
      shutdown();
      return;
    }
  }
  engine_->recover([this] { announce_ready(); });
}

void Runtime::make_router() {
  // A method's channels: those the site lists, else those the plugin declares when it has a
  // choice to make (two or more).
  std::map<std::string, std::vector<ChannelSpec>> channels;
  for (const auto& c : site_.session.payment.channels) channels[c.method].push_back({c.name, c.fee_ppm});
  for (const auto& inst : instances_) {
    if (inst->kind() != Kind::payment || inst->state() != InstanceState::running || channels.count(inst->spec().name) != 0) continue;
    const auto mark = inst->in_flight("capabilities");
    const auto caps = inst->as<payment::Method>()->capabilities();
    if (caps.channels.size() < 2) continue;
    for (const auto& c : caps.channels) channels[inst->spec().name].push_back({c.name, c.fee_ppm});
  }
  if (channels.empty()) return;
  const auto& r = site_.session.payment.routing;
  RoutingRule rule;
  rule.max_fee_ppm = r.max_fee_ppm;
  rule.min_success_ppm = r.min_success_ppm;
  rule.order.clear();
  for (const auto& o : r.order) {
    if (auto k = route_order_from(o)) rule.order.push_back(*k);
  }
  rule.window = std::chrono::seconds(r.window_s);
  rule.min_attempts = static_cast<int>(r.min_attempts);
  rule.probe_every = static_cast<int>(r.probe_every);
  rule.channel_timeout = std::chrono::milliseconds(r.channel_timeout_ms);
  for (const auto& [method, list] : channels) {
    std::string names;
    for (const auto& c : list) names += fmt::format("{}{} ({}.{:02}%)", names.empty() ? "" : ", ", c.name, c.fee_ppm / 10'000, c.fee_ppm % 10'000 / 100);
    spdlog::info("payment router: '{}' over {}", method, names);
  }
  router_ = std::make_unique<Router>(std::move(rule), std::move(channels));
  router_->restore(routing_buckets_);
  routing_buckets_.clear();
}

void Runtime::announce_ready() {
  if (stopping_) return;
  ready_ = true;
  spdlog::info("ready: site {} ({}), {} connector(s), {} plugin instance(s), clock {} at {}x", site_.id, site_.name, site_.connectors.size(),
               instances_.size(), format_utc(clock_->now()), clock_->speed());
  if (options_.notify_systemd) {
    sd_notifyf(0, "READY=1\nSTATUS=ready: %zu connector(s), %zu instance(s)", site_.connectors.size(), instances_.size());
  }
  publish_event(events::Ready{site_.id, site_.connectors.size(), instances_.size(), clock_->speed()});
  schedule_status();
}

void Runtime::track_alarm(const std::optional<AlarmEvent>& alarm) {
  if (!alarm) return;
  report_alarm(*alarm);
  const std::string key = alarm_key(*alarm);
  if (!alarm_active(*alarm)) {
    active_alarms_.erase(key);
    return;
  }
  // An update of an active alarm keeps when it was first raised.
  const auto it = active_alarms_.find(key);
  const TimePoint since = it != active_alarms_.end() ? it->second.since : clock_->now();
  active_alarms_.insert_or_assign(key, ActiveAlarm{*alarm, since});
}

void Runtime::publish_event(const Event& event) {
  track_alarm(alarm_of(event));
  if (control_) publish(*control_, event, clock_->now());
}

void Runtime::publish_event(const RuntimeEvent& event) {
  track_alarm(alarm_of(event));
  if (control_) publish(*control_, event, clock_->now());
}

void Runtime::schedule_status() {
  if (options_.status_interval.count() <= 0) return;
  status_timer_ = std::make_unique<asio::steady_timer>(strand_);
  status_timer_->expires_after(real_duration(*clock_, options_.status_interval));
  status_timer_->async_wait([this](const boost::system::error_code& ec) {
    if (ec || stopping_) return;
    std::string conns;
    for (const auto& [id, st] : connector_status_) conns += fmt::format("{}{} {}", conns.empty() ? "" : ", ", id, pilecore::to_string(st));
    std::size_t running = 0;
    for (const auto& inst : instances_) running += inst->state() == InstanceState::running ? 1 : 0;
    spdlog::info("status at {}: connectors {}; {}/{} instance(s) running; {} sample(s) received", format_utc(clock_->now()), conns, running,
                 instances_.size(), samples_.load());
    schedule_status();
  });
}

void Runtime::shutdown() {
  if (stopping_.exchange(true)) return;
  if (options_.notify_systemd) sd_notify(0, "STOPPING=1");
  if (status_timer_) status_timer_->cancel();
  if (engine_) {
    // Running sessions are stopped and billed first; what cannot finish in time is recovered
    // at the next start.
    engine_->stop_all([this] { finish_shutdown(); });
    return;
  }
  finish_shutdown();
}

void Runtime::finish_shutdown() {
  spdlog::info("stopping {} instance(s)", instances_.size());
  control_.reset();
  disk_.reset();
  if (uplink_) uplink_->stop();
  for (auto it = instances_.rbegin(); it != instances_.rend(); ++it) {
    (*it)->stop();
    update_snapshot(**it);
  }
  engine_.reset();
  stop_storage();  // every submitted write, signatures included, is on disk before the plugins go
  uplink_.reset();
  for (auto it = instances_.rbegin(); it != instances_.rend(); ++it) (*it)->destroy();
  io_.stop();
}

void Runtime::handle_request(const nlohmann::json& req, std::function<void(nlohmann::json)> reply) {
  serve_request(req, std::move(reply), CommandOptions{.storage_diagnostics = options_.storage_diagnostics, .admit = [this](risk::Inbound k) { return admit(k); }},
                [this](Command c, Responder r) { on_command(std::move(c), std::move(r)); });
}

bool Runtime::admit(risk::Inbound what) {
  // Every running in-process rule of API 2.2 or later is asked; the first refusal refuses. An
  // isolated instance is not asked (a round trip per request would make the guard the target).
  const TimePoint now = clock_->now();
  bool ok = true;
  for (const auto& inst : instances_) {
    if (inst->kind() != Kind::risk || inst->state() != InstanceState::running || inst->isolated() != nullptr) continue;
    if (inst->spec().loaded->descriptor->api_minor < 2) continue;
    if (!inst->as<risk::Rule>()->admit(what, now)) {
      ok = false;
      break;
    }
  }
  const auto i = static_cast<std::size_t>(what);
  if (i < admission_.admitted.size()) ++(ok ? admission_.admitted : admission_.refused)[i];
  return ok;
}


void Runtime::on_command(Command command, Responder reply) {
  if (!engine_) return reply(ErrorReply{"pilecored is still starting"});
  std::visit(overloaded{
                 [&](const commands::Status&) {
                   DaemonStatus st{engine_->status(), instances(), control_.get(), ready_.load(), {}, std::nullopt, admission_, uplink_.get(), site_.timezone};
                   for (const auto& [key, a] : active_alarms_) st.alarms.push_back(a);
                   if (disk_) st.storage = disk_->status();
                   reply(st);
                 },
                 [&](commands::SessionStart& c) { engine_->start(c.connector, std::move(c.method), std::move(c.token), reply, std::nullopt, std::move(c.mode)); },
                 [&](const commands::SessionStop& c) { engine_->stop(c.connector, c.reason, reply); },
                 [&](commands::SessionAnswer& c) { engine_->answer_step_up(c.connector, std::move(c.answer), reply); },
                 [&](const commands::Refund& c) { engine_->refund(c.transaction, c.amount_fen, c.reason, reply); },
                 [&](const commands::ReceiptOf& c) { reply(engine_->receipt(c.transaction)); },
                 [&](const commands::DiagMaxPages& c) { diag_max_pages(c.headroom_pages, reply); },
                 [&](const commands::Reload&) { reload([reply](const ReloadReply& r) { reply(r); }); },
             },
             command);
}

void Runtime::diag_max_pages(std::optional<std::int64_t> headroom, Responder reply) {
  // On the writing connection, in the storage thread's order, so every write submitted after the
  // reply sees it.
  auto result = std::make_shared<std::pair<std::int64_t, std::int64_t>>();
  store_->submit(
      [headroom, result](Database& db) {
        auto scalar = [&db](const std::string& sql) {
          Stmt q(db.handle(), sql.c_str());
          q.step();
          return q.i64(0);
        };
        result->first = scalar("PRAGMA page_count");
        result->second = scalar(fmt::format("PRAGMA max_page_count={}", headroom ? result->first + *headroom : std::int64_t{4294967294}));
      },
      [result, reply = std::move(reply)](const Status& st) {
        if (!st.ok()) return reply(ErrorReply{st.message()});
        spdlog::warn("diagnostics: the database may grow to {} pages (now {})", result->second, result->first);
        reply(DiagPagesReply{result->first, result->second});
      });
}

int Runtime::run() {
  try {
    // Owner-only: the database holds user tokens and the directory the token salt and keys.
    if (const auto open = ensure_private_directory(options_.state_dir); !open.empty()) spdlog::warn("{}", open);
    set_token_salt(load_or_create_token_salt(options_.state_dir));
  } catch (const std::exception& e) {
    std::lock_guard lock(snapshot_mutex_);
    start_error_ = fmt::format("the state directory {}: {}", options_.state_dir.string(), e.what());
    spdlog::error("{}", start_error_);
    return 3;
  }
  try {
    fs::path db = site_.database;
    if (db.is_relative()) db = options_.state_dir / db;
    db_ = std::make_unique<Database>(db);
    db_->record_boot(format_utc(clock_->now()), PILECORE_VERSION, site_.id);
    spdlog::info("database {} (schema {})", db.string(), db_->schema_version());
    // Records go into the outbox only when something can take them to the back end: on a site
    // without a link they would pile up until the bound refuses sessions.
    if (!site_.uplink.cellular.empty() || !site_.uplink.lorawan.empty()) {
      db_->enable_uplink({.max_records = static_cast<std::size_t>(site_.uplink.outbox_max_records),
                          .max_bytes = static_cast<std::size_t>(site_.uplink.outbox_max_bytes),
                          .first_retry = std::chrono::seconds(site_.uplink.first_retry_s),
                          .max_retry = std::chrono::seconds(site_.uplink.max_retry_s)},
                         *clock_);
    }
    if (options_.make_ledger) {
      ledger_ = options_.make_ledger(db_->handle());
      ledger_->uplink_through(*db_);
      // Before anything starts: a record is never left unsigned across a restart.
      if (const auto signed_now = ledger_->sign_pending(); signed_now > 0) {
        spdlog::warn("ledger: signed {} record(s) that the last run committed but had not signed", signed_now);
      }
    }
    // The payment router's counts: read now, while db_ is still this thread's.
    routing_buckets_ = routing_stats::load(db_->handle(), clock_->now() - std::chrono::seconds(site_.session.payment.routing.window_s) - std::chrono::hours(1));
    // From here on db_ belongs to the storage thread.
    store_ = std::make_unique<StoreWorker>(*db_, [this](std::function<void()> fn) { asio::post(strand_, std::move(fn)); });
    // Before the instances: a plugin uploads what is still unacknowledged in its start().
    plugin_uploads_ = std::make_unique<PluginUploads>(*store_, *clock_, [this](std::function<void()> fn) { asio::post(strand_, std::move(fn)); });
    // The signatures are made on the signer thread (a TPM's 50-200 ms never on the strand) and
    // written by a later group commit.
    if (ledger_) ledger_->sign_off_path(*store_);
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    std::lock_guard lock(snapshot_mutex_);
    start_error_ = e.what();
    return 3;
  }
  account_previous_crash();
  if (options_.catch_fatal_signals) {
    try {
      install_crash_handler(options_.state_dir / "crash-inflight");
    } catch (const std::exception& e) {
      spdlog::error("{}; a plugin that crashes pilecored will not be named at the next start", e.what());
    }
  }
  if (!create_instances()) return 3;

  if (options_.notify_systemd) {
    std::uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
      spdlog::info("systemd watchdog: {} ms; fed from the core's strand every {} ms", usec / 1000, usec / 2000);
      asio::post(strand_, [this, usec] { feed_watchdog(std::chrono::microseconds(usec / 2)); });
    }
  }

  asio::signal_set signals(io_, SIGINT, SIGTERM);
  signals.async_wait(asio::bind_executor(strand_, [this](const boost::system::error_code& e, int signo) {
    if (e) return;
    spdlog::info("received {}", signo == SIGTERM ? "SIGTERM" : "SIGINT");
    shutdown();
  }));
  // SIGHUP (systemctl reload pilecore): the site file again, without ending a session.
  asio::signal_set hangups(io_, SIGHUP);
  std::function<void()> await_hangup = [&] {
    hangups.async_wait(asio::bind_executor(strand_, [this, &await_hangup](const boost::system::error_code& e, int) {
      if (e || stopping_) return;
      spdlog::info("received SIGHUP: reloading {}", site_.file.string());
      reload([](const ReloadReply&) {});
      await_hangup();
    }));
  };
  await_hangup();
  auto work = asio::make_work_guard(io_);
  asio::post(strand_, [this] { start_instances(); });
  for (;;) {
    try {
      io_.run();
      stop_storage();
      break;
    } catch (const std::exception& e) {
      spdlog::error("an exception escaped a handler on the event loop (not attributable to one plugin): {}", e.what());
    } catch (...) {
      spdlog::error("an unknown exception escaped a handler on the event loop");
    }
  }
  return exit_code_;
}

void Runtime::account_previous_crash() {
  // The report first: the handler installed next truncates its file.
  const std::optional<InFlightReport> report = take_crash_report(options_.state_dir / "crash-inflight");
  try {
    crash_book_ = std::make_unique<CrashBook>(options_.state_dir / "plugin-crashes.json");
  } catch (const std::exception& e) {
    spdlog::error("{}; quarantine of crashing plugins is off for this run", e.what());
  }
  if (!report) return;
  const std::string sig = signal_name(report->signal);
  if (report->kind == "unreadable") {
    spdlog::error("the previous pilecored left an unreadable crash record; it is ignored");
    return;
  }
  if (report->instance.empty() || (report->kind != "crash" && report->kind != "hang")) {
    // Not attributable to an instance: nothing to quarantine, but the operator must hear of it.
    spdlog::error("pilecored died of {} {}{}", sig,
                  report->kind == "hang" ? "while hung outside any plugin call (the watchdog ended it)"
                  : report->kind == "other_thread" ? "on a thread that was not calling a plugin (a plugin's own thread, or the core's)"
                                                   : "outside any plugin call",
                  report->instance.empty() ? "" : fmt::format("; the core was calling instance {} ({})", report->instance, report->call));
    return;
  }
  std::string plugin = report->plugin;
  if (plugin.empty()) {
    for (const auto& s : site_.instances) {
      if (s.name == report->instance) plugin = s.plugin;
    }
  }
  const auto& policy = site_.crash_policy;
  if (!crash_book_) {
    spdlog::error("instance {} (plugin {}) {} pilecored during {} ({}); not counted: the crash records cannot be read", report->instance,
                  plugin.empty() ? "unknown" : plugin, report->kind == "hang" ? "hung" : "crashed", report->call, sig);
    return;
  }
  const int count = crash_book_->record(report->instance, plugin,
                                        CrashEntry{clock_->now().time_since_epoch().count(), report->call, report->kind, report->signal}, policy,
                                        clock_->now());
  spdlog::error("instance {} (plugin {}) {} pilecored during {} ({}); {} of {} within {} before it is quarantined", report->instance,
                plugin.empty() ? "unknown" : plugin, report->kind == "hang" ? "hung" : "crashed", report->call, sig, count, policy.limit,
                describe_window(policy.window));
  if (crash_book_->quarantined(report->instance)) {
    spdlog::error("instance {}: {}", report->instance, crash_book_->instances().at(report->instance).reason);
  }
  try {
    crash_book_->save();
  } catch (const std::exception& e) {
    spdlog::error("{}; this crash is not remembered at the next start", e.what());
  }
}

void Runtime::feed_watchdog(std::chrono::microseconds interval) {
  if (options_.notify_systemd) sd_notify(0, "WATCHDOG=1");
  // Real time on purpose: systemd's watchdog does not follow a simulated clock.
  watchdog_timer_ = std::make_unique<asio::steady_timer>(strand_);
  watchdog_timer_->expires_after(interval);
  watchdog_timer_->async_wait([this, interval](const boost::system::error_code& ec) {
    if (!ec) feed_watchdog(interval);
  });
}

void Runtime::request_stop() {
  asio::post(strand_, [this] { shutdown(); });
}

void Runtime::dispatch(std::function<void()> fn) { asio::post(strand_, std::move(fn)); }

Plugin* Runtime::find_plugin(std::string_view instance) const {
  for (const auto& inst : instances_) {
    if (inst->spec().name == instance && inst->state() == InstanceState::running) return inst->plugin();
  }
  return nullptr;
}

std::optional<Kind> Runtime::kind_of(std::string_view instance) const {
  for (const auto& inst : instances_) {
    if (inst->spec().name == instance) return inst->kind();
  }
  return std::nullopt;
}

void Runtime::update_snapshot(const Instance& inst) {
  std::lock_guard lock(snapshot_mutex_);
  const auto& s = inst.spec();
  auto it = std::find_if(snapshot_.begin(), snapshot_.end(), [&](const InstanceInfo& i) { return i.name == s.name; });
  if (it == snapshot_.end()) {
    snapshot_.push_back({});
    it = std::prev(snapshot_.end());
  }
  *it = InstanceInfo{s.name, s.plugin, std::string(to_string(inst.kind())), s.loaded->descriptor->version, s.connector, inst.state(),
                     inst.health, inst.detail_, s.isolate, 0, 0, {}};

  if (const auto* iso = inst.isolated()) {
    it->pid = iso->up() ? iso->pid() : 0;
    it->restarts = iso->restarts();
    it->sandbox = iso->sandbox();
  }
}

std::vector<InstanceInfo> Runtime::instances() const {
  std::lock_guard lock(snapshot_mutex_);
  return snapshot_;
}

std::map<std::uint32_t, ConnectorStatus> Runtime::connectors() const {
  std::lock_guard lock(snapshot_mutex_);
  return connector_snapshot_;
}

void Runtime::set_connector(std::uint32_t id, ConnectorStatus status, const std::string& why) {
  auto it = connector_status_.find(id);
  if (it == connector_status_.end() || it->second == status) return;
  const bool bad = status == ConnectorStatus::faulted || status == ConnectorStatus::unavailable;
  spdlog::log(bad ? spdlog::level::warn : spdlog::level::info, "connector {}: {} -> {} ({})", id, pilecore::to_string(it->second),
              pilecore::to_string(status), why);
  it->second = status;
  {
    std::lock_guard lock(snapshot_mutex_);
    connector_snapshot_ = connector_status_;
  }
  for (auto& inst : instances_) {
    if (inst->kind() != Kind::indicator || inst->state() != InstanceState::running) continue;
    const auto mark = inst->in_flight("show");
    inst->as<indicator::Indicator>()->show(id, status);
  }
  publish_event(events::ConnectorChanged{id, status, why});
  if (uplink_) {
    const std::int64_t now_ms = clock_->now().time_since_epoch().count();
    uplink_->report({fmt::format("status:{}:{}:{}", id, now_ms, ++uplink_records_ % 1000), "status",
                     {{"connector", id}, {"status", std::string(pilecore::to_string(status))}, {"why", why}, {"time_ms", now_ms}}},
                    protocol::UplinkClass::status);
  }
}

void Runtime::start_uplink() {
  if (db_->uplink() == nullptr) return;
  UplinkSettings settings{.device_id = static_cast<std::uint32_t>(site_.uplink.device_id),
                          .routing = site_.uplink.routing,
                          .heartbeat = std::chrono::seconds(site_.uplink.heartbeat_s),
                          .telemetry = std::chrono::seconds(site_.uplink.telemetry_s),
                          .batch = 32};
  std::optional<RemoteCommandSettings> commands;
  if (const auto& c = site_.uplink.commands) {
    commands = RemoteCommandSettings{.device_id = settings.device_id,
                                     .key = c->key,
                                     .window = std::chrono::seconds(c->window_s),
                                     .firmware_key = c->firmware_key,
                                     .firmware_staging = c->firmware_staging,
                                     .sequence_file = options_.state_dir / "command-sequence"};
  }
  auto downlink = std::make_unique<RemoteCommands>(*clock_, *store_, std::move(commands),
                                                   make_remote_executor(*this, std::chrono::seconds(site_.uplink.commands ? site_.uplink.commands->retry_window_s : 300)));
  // The risk layer's emergency guard sees every command frame before its signature is checked.
  downlink->admit = [this] { return admit(risk::Inbound::remote_command); };
  uplink_ = std::make_unique<Uplink>(*clock_, *scheduler_, *store_, std::move(settings), std::move(downlink));
  // A record a money operation, a ledger append or a close committed leaves at once.
  store_->on_enqueued([this] {
    if (uplink_) uplink_->wake();
  });
  uplink_->set_acknowledged([this](const std::vector<std::string>& keys) {
    if (plugin_uploads_) plugin_uploads_->acknowledged(keys);
  });
  for (const auto& inst : instances_) {
    if (inst->kind() == Kind::link && inst->state() == InstanceState::running) uplink_->add_link(inst->spec().name, inst->as<link::Link>());
  }
  uplink_->set_telemetry_body([this] {
    std::vector<protocol::ConnectorTelemetry> out;
    if (!engine_) return out;
    for (const auto& c : engine_->status().connectors) {
      if (c.id > 15) continue;  // the compact layout numbers connectors 0..15
      const auto clamp = [](std::optional<std::int64_t> v, std::int64_t hi) { return static_cast<std::uint32_t>(std::clamp<std::int64_t>(v.value_or(0), 0, hi)); };
      out.push_back({.connector = static_cast<std::uint8_t>(c.id),
                     .status = static_cast<protocol::ConnectorStatus>(c.status),
                     .power_w = clamp(c.power_w, protocol::kCompactMaxPowerW),
                     .meter_wh = clamp(c.meter_wh, 0xFFFFFFFFLL)});
    }
    return out;
  });
  uplink_->set_heartbeat_body([this] {
    nlohmann::json connectors = nlohmann::json::object();
    for (const auto& [id, st] : connector_status_) connectors[std::to_string(id)] = std::string(pilecore::to_string(st));
    return nlohmann::json{{"site", site_.id}, {"connectors", std::move(connectors)}};
  });
  uplink_->start();
}

void Runtime::report_alarm(const AlarmEvent& alarm) {
  if (!uplink_) return;
  std::string code;
  std::optional<std::uint32_t> connector;
  std::string text;
  std::visit(overloaded{[&](const events::MeterImplausible& v) { code = "meter.implausible", connector = v.connector, text = v.message; },
                        [&](const events::CloseFailed& v) { code = "storage.close_failed", connector = v.connector, text = v.message; },
                        [&](const events::CheckpointFailed& v) { code = "storage.checkpoint_failed", text = v.message; },
                        [&](const events::PluginAlarm& v) {
                          code = v.code, text = v.message;
                          for (const auto& inst : instances_) {
                            if (inst->spec().name == v.instance) connector = inst->spec().connector;
                          }
                        },
                        [&](const LowDiskAlarm& v) { code = "storage.low_disk", text = v.message; }},
             alarm);
  nlohmann::json available = nlohmann::json::array();
  for (const auto& [id, st] : connector_status_) {
    if (st == ConnectorStatus::available && (!connector || id != *connector)) available.push_back(id);
  }
  const std::int64_t now_ms = clock_->now().time_since_epoch().count();
  nlohmann::json body{{"code", code},
                      {"active", alarm_active(alarm)},
                      {"text", text},
                      {"site", {{"id", site_.id}, {"name", site_.name}, {"lat_e6", std::llround(site_.latitude * 1e6)}, {"lon_e6", std::llround(site_.longitude * 1e6)}}},
                      {"available", std::move(available)},
                      {"time_ms", now_ms}};
  if (connector) body["connector"] = *connector;
  uplink_->report({fmt::format("alarm:{}:{}", now_ms, ++uplink_records_ % 1000), "alarm", std::move(body)}, protocol::UplinkClass::status);
}

void Runtime::upload(Instance& inst, const UplinkRecord& record, std::function<void(Status)> done) {
  if (!plugin_uploads_) {
    asio::post(strand_, [done = std::move(done)] { done(Status(StatusCode::unavailable, "pilecored's storage is not running")); });
    return;
  }
  plugin_uploads_->submit(inst.spec().name, record, std::move(done));
}

void Runtime::on_instance_failed(Instance& inst, const std::string& reason) {
  inst.logger().error("failed and stopped: {}", reason);
  publish_event(events::InstanceFailed{inst.spec().name, reason});
  update_snapshot(inst);
  const auto& s = inst.spec();
  if (s.connector) {
    // A connector whose plugin failed cannot be trusted to charge or bill: open the contactor
    // through its power stage when that still runs, and take the connector out of service.
    for (auto& other : instances_) {
      if (other->kind() == Kind::power && other->spec().connector == s.connector && other->state() == InstanceState::running) {
        const auto mark = other->in_flight("open_contactor");
        if (Status st = other->as<power::PowerStage>()->open_contactor(); !st.ok()) {
          other->logger().error("could not open the contactor: {}", st.message());
        }
      }
    }
    if (!engine_) set_connector(*s.connector, ConnectorStatus::faulted, fmt::format("instance '{}' failed", s.name));
  }
  if (engine_) engine_->on_instance_failed(s.name, s.connector);
  if (inst.kind() == Kind::link) spdlog::warn("link '{}' is down; uplink traffic stays queued for the other links", s.name);
}

std::filesystem::path Runtime::plugin_host() const {
  if (!options_.plugin_host.empty()) return options_.plugin_host;
  std::error_code ec;
  return fs::read_symlink("/proc/self/exe", ec).parent_path() / "pilecore-plugin-host";
}

bool Runtime::on_isolated_failed(Instance& inst, const std::string& reason) {
  const auto& s = inst.spec();
  const bool was_running = inst.state() == InstanceState::running;
  inst.set_isolated_state(InstanceState::failed, reason);
  if (was_running) {
    on_instance_failed(inst, reason);
  } else {
    inst.logger().error("{}", reason);
    update_snapshot(inst);
  }
  if (!crash_book_) return true;
  const bool hang = reason.find("hung") != std::string::npos;
  const int count = crash_book_->record(s.name, s.plugin, CrashEntry{clock_->now().time_since_epoch().count(), "its isolated process" /* crash_records.cpp words its quarantine by it */, hang ? "hang" : "crash", 0},
                                        site_.crash_policy, clock_->now());
  try {
    crash_book_->save();
  } catch (const std::exception& e) {
    spdlog::error("{}; this crash is not remembered at the next start", e.what());
  }
  if (!crash_book_->quarantined(s.name)) {
    inst.logger().warn("{} of {} failures within {} before it is quarantined", count, site_.crash_policy.limit, describe_window(site_.crash_policy.window));
    return true;
  }
  const std::string why = crash_book_->instances().at(s.name).reason;
  inst.logger().error("{}; not restarted. Once the plugin is fixed: pilectl plugins enable {}", why, s.name);
  inst.disable(why);
  update_snapshot(inst);
  if (engine_) engine_->on_instance_disabled(s.name, s.connector, why);
  return false;
}

void Runtime::on_isolated_restored(Instance& inst) {
  const auto& s = inst.spec();
  inst.set_isolated_state(InstanceState::running, fmt::format("restarted {} time(s)", inst.isolated() ? inst.isolated()->restarts() : 0));
  update_snapshot(inst);
  publish_event(events::InstanceRestarted{s.name, inst.isolated() ? inst.isolated()->pid() : 0});
  if (inst.kind() == Kind::indicator) {
    for (const auto& [id, st] : connector_status_) inst.as<indicator::Indicator>()->show(id, st);
  }
  if (engine_) engine_->on_instance_restored(s.name, s.connector);
}

void Runtime::on_sample(Instance& inst, const Sample& sample) {
  samples_.fetch_add(1, std::memory_order_relaxed);
  inst.logger().trace("{} = {} {}", sample.channel, sample.value, sample.unit);
  if (engine_) engine_->on_sample(inst.spec().name, sample);
}

void Runtime::on_alarm(Instance& inst, const Alarm& alarm) {
  const auto lvl = alarm.active ? (alarm.severity == AlarmSeverity::critical ? spdlog::level::err : spdlog::level::warn) : spdlog::level::info;
  inst.logger().log(lvl, "alarm {} {}: {}", alarm.code, alarm.active ? "raised" : "cleared", alarm.message);
  publish_event(events::PluginAlarm{inst.spec().name, std::string(alarm.code), std::string(alarm.message), alarm.active, alarm.severity});
  // A risk rule's sustained-flood alarm is the signal to move the uplink to its backup endpoint.
  if (inst.kind() == Kind::risk && alarm.code == "risk.flood" && alarm.active != admission_.prefer_backup) {
    admission_.prefer_backup = alarm.active;
    spdlog::warn("links: {} ({})", alarm.active ? "switching to the backup endpoint" : "failing back to the primary endpoint", alarm.message);
    publish_event(events::LinkEndpoint{alarm.active, std::string(alarm.message)});
    // prefer_backup() is API 2.2: an older link binary has no such entry in its vtable. An
    // isolated link's proxy forwards it and its plugin host makes the same check.
    for (const auto& l : instances_) {
      if (l->kind() != Kind::link || l->state() != InstanceState::running) continue;
      if (l->isolated() == nullptr && l->spec().loaded->descriptor->api_minor < 2) continue;
      const auto mark = l->in_flight("prefer_backup");
      l->as<link::Link>()->prefer_backup(alarm.active);
    }
  }
  if (engine_) engine_->on_alarm(inst.spec().name, alarm);
}

void Runtime::on_state(Instance& inst, std::string_view state, std::string_view detail) {
  if (inst.health != state) inst.logger().info("{}{}{}", state, detail.empty() ? "" : ": ", detail);
  inst.health = std::string(state);
  inst.detail_ = std::string(detail);
  update_snapshot(inst);
  if (inst.kind() == Kind::link && state == "up" && uplink_) uplink_->wake();
}

}  // namespace pilecore::core
