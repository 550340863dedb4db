#include "isolated.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/post.hpp>
#include <cstring>
#include <thread>

#include "codec.hpp"
#include "sandbox.hpp"

extern char** environ;

namespace pilecore::core::isolation {
namespace fs = std::filesystem;
using steady = std::chrono::steady_clock;

json config_to_json(const std::vector<Field>& fields, const ConfigValues& v) {
  json out = json::object();
  for (const auto& f : fields) {
    switch (f.type) {
      case FieldType::integer:
        if (auto x = v.get_integer(f.key)) out[f.key] = *x;
        break;
      case FieldType::number:
        if (auto x = v.get_number(f.key)) out[f.key] = *x;
        break;
      case FieldType::boolean:
        if (auto x = v.get_boolean(f.key)) out[f.key] = *x;
        break;
      case FieldType::string_list:
        if (auto x = v.get_string_list(f.key)) out[f.key] = *x;
        break;
      case FieldType::integer_list:
        if (auto x = v.get_integer_list(f.key)) out[f.key] = *x;
        break;
      case FieldType::object:
        if (const auto* o = v.get_object(f.key)) out[f.key] = config_to_json(f.fields, *o);
        break;
      case FieldType::list:
        if (auto items = v.get_object_list(f.key)) {
          json a = json::array();
          for (const auto* item : *items) a.push_back(config_to_json(f.fields, *item));
          out[f.key] = a;
        }
        break;
      default:
        if (auto x = v.get_string(f.key)) out[f.key] = std::string(*x);
        break;
    }
  }
  return out;
}

namespace {

const Status not_running(StatusCode::unavailable, "the plugin's isolated process is not running");

Status status_or(const std::optional<json>& r, const std::string& why) {
  if (!r) return Status(StatusCode::unavailable, fmt::format("the plugin's isolated process did not answer: {}", why));
  try {
    return status_of(*r);
  } catch (const std::exception& e) {
    return Status(StatusCode::failed, fmt::format("the plugin's isolated process answered nonsense: {}", e.what()));
  }
}

// --- the proxies: one per kind, each forwarding to the child ---

class SensorProxy final : public sensor::Sensor {
 public:
  explicit SensorProxy(Isolated& iso) : iso_(iso) {}
  Status start() noexcept override {
    Status s = iso_.start_child();
    if (s.ok()) {
      try {
        channels_ = channels_of(iso_.info().at("channels"));
      } catch (const std::exception&) {
        return Status(StatusCode::failed, "the isolated plugin declared malformed channels");
      }
    }
    return s;
  }
  void stop() noexcept override { iso_.stop_child(); }
  [[nodiscard]] std::span<const sensor::ChannelInfo> channels() const noexcept override { return channels_; }
  void refresh() noexcept override { iso_.notify("refresh", json::object()); }

 private:
  Isolated& iso_;
  std::vector<sensor::ChannelInfo> channels_;
};

class PowerProxy final : public power::PowerStage {
 public:
  explicit PowerProxy(Isolated& iso) : iso_(iso) {}
  Status start() noexcept override { return iso_.start_child(); }
  void stop() noexcept override { iso_.stop_child(); }
  void set_event_sink(power::EventSink sink) noexcept override { iso_.power_sink = std::move(sink); }
  Status close_contactor() noexcept override { return sync("close_contactor", json::object()); }
  Status open_contactor() noexcept override { return sync("open_contactor", json::object()); }
  Status set_power_limit(std::int64_t watts) noexcept override { return sync("set_power_limit", {{"w", watts}}); }
  [[nodiscard]] power::VehicleStatus vehicle() const noexcept override {
    try {
      std::string why;
      if (auto r = iso_.call("vehicle", json::object(), &why)) return vehicle_of(*r);
    } catch (...) {
    }
    return {};
  }

 private:
  Status sync(const std::string& m, json args) noexcept {
    try {
      std::string why;
      auto r = iso_.call(m, std::move(args), &why);
      return status_or(r, why);
    } catch (...) {
      return not_running;
    }
  }
  Isolated& iso_;
};

class PaymentProxy final : public payment::Method {
 public:
  explicit PaymentProxy(Isolated& iso) : iso_(iso) {}
  Status start() noexcept override {
    Status s = iso_.start_child();
    if (s.ok()) {
      try {
        caps_ = capabilities_of(iso_.info().at("capabilities"));
      } catch (const std::exception&) {
        return Status(StatusCode::failed, "the isolated plugin declared malformed capabilities");
      }
    }
    return s;
  }
  void stop() noexcept override { iso_.stop_child(); }
  [[nodiscard]] payment::Capabilities capabilities() const noexcept override { return caps_; }

  void authorize(const payment::AuthorizationRequest& q, payment::AuthorizationCallback done) noexcept override {
    try {
      json a = {{"op", q.operation_id}, {"txn", q.transaction_id}, {"connector", q.connector}, {"channel", q.channel},
                {"amount_fen", q.amount_fen}, {"deadline", time_json(q.deadline)}, {"pin_required", q.pin_required}};
      if (q.token) {
        a["token"] = to_json(*q.token);
        a["x"] = iso_.exchanges().offer(q.token->exchange);
      }
      iso_.call_async("authorize", std::move(a), auth_answer(std::move(done)));
    } catch (...) {
    }
  }
  void answer_step_up(std::string_view op, const payment::StepUpAnswer& ans, payment::AuthorizationCallback done) noexcept override {
    try {
      iso_.call_async("answer_step_up", {{"op", op}, {"kind", static_cast<int>(ans.kind)}, {"value", ans.value}, {"confirmed", ans.confirmed}},
                      auth_answer(std::move(done)));
    } catch (...) {
    }
  }
  void increment(const payment::IncrementRequest& q, payment::AuthorizationCallback done) noexcept override {
    try {
      iso_.call_async("increment",
                      {{"op", q.operation_id}, {"txn", q.transaction_id}, {"authorization", q.authorization_id}, {"channel", q.channel},
                       {"amount_fen", q.amount_fen}, {"total_fen", q.total_fen}, {"deadline", time_json(q.deadline)}},
                      auth_answer(std::move(done)));
    } catch (...) {
    }
  }
  void capture(const payment::CaptureRequest& q, payment::OperationCallback done) noexcept override {
    op("capture", {{"op", q.operation_id}, {"txn", q.transaction_id}, {"amount_fen", q.amount_fen}, {"deadline", time_json(q.deadline)}}, std::move(done));
  }
  void cancel(const payment::VoidRequest& q, payment::OperationCallback done) noexcept override {
    op("cancel",
       {{"op", q.operation_id}, {"txn", q.transaction_id}, {"deadline", time_json(q.deadline)}, {"authorization", q.authorization_id}, {"channel", q.channel}},
       std::move(done));
  }
  void refund(const payment::RefundRequest& q, payment::OperationCallback done) noexcept override {
    op("refund", {{"op", q.operation_id}, {"txn", q.transaction_id}, {"amount_fen", q.amount_fen}, {"reason", q.reason}, {"deadline", time_json(q.deadline)}},
       std::move(done));
  }

 private:
  static std::function<void(const json*)> auth_answer(payment::AuthorizationCallback done) {
    return [done = std::move(done)](const json* r) {
      payment::AuthorizationResult out;
      try {
        if (r) {
          out = authorization_of(*r);
        } else {
          out.reason = "the payment method's isolated process is not running";
        }
      } catch (const std::exception& e) {
        out = {};
        out.reason = fmt::format("the payment method's isolated process answered nonsense: {}", e.what());
      }
      done(std::move(out));
    };
  }
  void op(const std::string& m, json a, payment::OperationCallback done) noexcept {
    try {
      iso_.call_async(m, std::move(a), [done = std::move(done)](const json* r) {
        payment::OperationResult out;
        try {
          if (r) {
            out = operation_of(*r);
          } else {
            // Not known to have failed: the saga asks again with the same operation id.
            out.state = payment::OperationState::pending;
            out.reason = "the payment method's isolated process is not running";
          }
        } catch (const std::exception& e) {
          out = {payment::OperationState::pending, 0, {}, fmt::format("the payment method's isolated process answered nonsense: {}", e.what())};
        }
        done(std::move(out));
      });
    } catch (...) {
    }
  }
  Isolated& iso_;
  payment::Capabilities caps_;
};

class RiskProxy final : public risk::Rule {
 public:
  explicit RiskProxy(Isolated& iso) : iso_(iso) {}
  Status start() noexcept override { return iso_.start_child(); }
  void stop() noexcept override { iso_.stop_child(); }
  void evaluate(const risk::Context& c, const risk::History& history, TimePoint deadline, risk::Callback done) noexcept override {
    try {
      json a = {{"phase", static_cast<int>(c.phase)}, {"txn", c.transaction_id}, {"connector", c.connector}, {"method", c.method},
                {"channel", c.channel}, {"user", c.user}, {"amount_fen", c.amount_fen}, {"time", time_json(c.time)}, {"deadline", time_json(deadline)},
                {"pile", c.pile}, {"day_start", time_json(c.day_start)}, {"utc_offset_s", c.utc_offset_s}};
      iso_.call_async("evaluate", std::move(a), [done = std::move(done)](const json* r) {
        risk::Result out{risk::Verdict::step_up, "the risk rule's isolated process is not running"};
        try {
          if (r) out = {enumerated(*r, "verdict", risk::Verdict::deny), str(*r, "reason")};
        } catch (const std::exception& e) {
          out = {risk::Verdict::step_up, fmt::format("the risk rule's isolated process answered nonsense: {}", e.what())};
        }
        done(std::move(out));
      });
      // call_async numbered the callback last: the child's history queries name it.
      iso_.set_risk_history(0, &history, deadline);
    } catch (...) {
    }
  }

 private:
  Isolated& iso_;
};

class IndicatorProxy final : public indicator::Indicator {
 public:
  explicit IndicatorProxy(Isolated& iso) : iso_(iso) {}
  Status start() noexcept override { return iso_.start_child(); }
  void stop() noexcept override { iso_.stop_child(); }
  void show(std::uint32_t connector, ConnectorStatus status) noexcept override {
    try {
      iso_.notify("show", {{"connector", connector}, {"status", static_cast<int>(status)}});
    } catch (...) {
    }
  }
  void announce(std::uint32_t connector, std::string_view message) noexcept override {
    try {
      iso_.notify("announce", {{"connector", connector}, {"message", message}});
    } catch (...) {
    }
  }

 private:
  Isolated& iso_;
};

class StrategyProxy final : public strategy::Strategy {
 public:
  explicit StrategyProxy(Isolated& iso) : iso_(iso) {}
  Status start() noexcept override { return iso_.start_child(); }
  void stop() noexcept override { iso_.stop_child(); }
  [[nodiscard]] strategy::Setpoint compute(std::span<const strategy::Variable> vars) noexcept override {
    try {
      json a = json::array();
      for (const auto& v : vars) a.push_back({v.name, v.value});
      std::string why;
      auto r = iso_.call("compute", {{"vars", a}}, &why);
      if (!r) return {status_or(r, why), 0};
      return {status_of(member(*r, "status")), integer(*r, "watts")};
    } catch (const std::exception& e) {
      return {Status(StatusCode::failed, fmt::format("the strategy's isolated process answered nonsense: {}", e.what())), 0};
    }
  }

 private:
  Isolated& iso_;
};

class LinkProxy final : public link::Link {
 public:
  explicit LinkProxy(Isolated& iso) : iso_(iso) {}
  Status start() noexcept override {
    Status s = iso_.start_child();
    if (s.ok()) {
      try {
        limits_ = limits_of(iso_.info().at("limits"));
      } catch (const std::exception&) {
        return Status(StatusCode::failed, "the isolated plugin declared malformed link limits");
      }
    }
    return s;
  }
  void stop() noexcept override { iso_.stop_child(); }
  [[nodiscard]] link::Limits limits() const noexcept override { return limits_; }
  [[nodiscard]] link::State state() const noexcept override {
    try {
      if (auto r = iso_.call("link_state", json::object())) return enumerated(*r, "state", link::State::up);
    } catch (...) {
    }
    return link::State::down;
  }
  void send(std::span<const std::uint8_t> frame, link::TrafficClass cls, link::SendCallback done) noexcept override {
    try {
      iso_.call_async("send", {{"frame", json::binary({frame.begin(), frame.end()})}, {"class", static_cast<int>(cls)}},
                      [done = std::move(done)](const json* r) {
                        Status s = not_running;
                        try {
                          if (r) s = status_of(*r);
                        } catch (const std::exception& e) {
                          s = Status(StatusCode::failed, e.what());
                        }
                        done(std::move(s));
                      });
    } catch (...) {
    }
  }
  void set_receiver(link::Receiver receiver) noexcept override { iso_.link_receiver = std::move(receiver); }
  void prefer_backup(bool on) noexcept override {
    try {
      iso_.notify("prefer_backup", {{"on", on}});  // the plugin host calls it only on an API 2.2 link
    } catch (...) {
    }
  }

 private:
  Isolated& iso_;
  link::Limits limits_;
};

std::string describe_exit(int st) {
  if (WIFSIGNALED(st)) {
    const char* name = sigabbrev_np(WTERMSIG(st));
    return fmt::format("died of SIG{}", name ? name : std::to_string(WTERMSIG(st)));
  }
  if (WIFEXITED(st)) return fmt::format("exited with status {}", WEXITSTATUS(st));
  return "ended";
}

}  // namespace

Isolated::Isolated(boost::asio::any_io_executor strand, Options options, Hooks hooks)
    : strand_(std::move(strand)), options_(std::move(options)), hooks_(std::move(hooks)), backoff_(options_.backoff_first) {
  switch (options_.kind) {
    case Kind::sensor: proxy_ = std::make_unique<SensorProxy>(*this); break;
    case Kind::power: proxy_ = std::make_unique<PowerProxy>(*this); break;
    case Kind::payment: proxy_ = std::make_unique<PaymentProxy>(*this); break;
    case Kind::risk: proxy_ = std::make_unique<RiskProxy>(*this); break;
    case Kind::indicator: proxy_ = std::make_unique<IndicatorProxy>(*this); break;
    case Kind::strategy: proxy_ = std::make_unique<StrategyProxy>(*this); break;
    case Kind::link: proxy_ = std::make_unique<LinkProxy>(*this); break;
  }
}

Isolated::~Isolated() {
  *alive_ = false;
  stopping_ = true;
  kill_child();
}

std::string Isolated::create() { return spawn(); }

std::string Isolated::spawn() {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return fmt::format("socketpair: {}", std::strerror(errno));
  std::error_code ec;
  fs::create_directories(options_.state_dir, ec);
  ::chmod(options_.state_dir.c_str(), 0700);
  if (auto user = sandbox_user(options_.state_dir.string())) {
    if (::chown(options_.state_dir.c_str(), user->first, user->second) != 0) {
      ::close(sv[0]);
      ::close(sv[1]);
      return fmt::format("cannot give {} to uid {}: {}", options_.state_dir.string(), user->first, std::strerror(errno));
    }
  }
  // Everything the child needs is prepared before fork: between fork and exec only
  // async-signal-safe calls (this process has threads).
  const std::string program = options_.host_program.string();
  const std::string name = "pilecore-plugin-host";
  const std::string fd_arg = "3";
  const std::string inst = options_.instance;
  std::vector<char*> argv{const_cast<char*>(name.c_str()), const_cast<char*>("--fd"), const_cast<char*>(fd_arg.c_str()),
                          const_cast<char*>("--instance"), const_cast<char*>(inst.c_str()), nullptr};
  rlimit no_core{0, 0};
  rlimit mem{RLIM_INFINITY, RLIM_INFINITY};
#if !defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer reserves terabytes of address space for its shadow: a cap would stop the
  // sanitizer build's child before main. Production builds have no sanitizer.
  if (options_.memory_mb > 0) mem.rlim_cur = mem.rlim_max = static_cast<rlim_t>(options_.memory_mb) << 20;
#endif
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(sv[0]);
    ::close(sv[1]);
    return fmt::format("fork: {}", std::strerror(errno));
  }
  if (pid == 0) {
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    if (sv[1] == 3) {
      ::fcntl(3, F_SETFD, 0);
    } else if (::dup2(sv[1], 3) < 0) {
      ::_exit(127);
    }
    const int null = ::open("/dev/null", O_RDWR);
    if (null >= 0) {
      ::dup2(null, 0);
      ::dup2(null, 1);
    }
    ::syscall(SYS_close_range, 4U, ~0U, 0U);
    ::setrlimit(RLIMIT_CORE, &no_core);
    ::setrlimit(RLIMIT_AS, &mem);
    ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    ::execve(program.c_str(), argv.data(), environ);
    ::_exit(127);
  }
  ::close(sv[1]);
  ::setpgid(pid, pid);
  pid_ = pid;
  ping_sent_ = pong_seen_ = 0;
  const std::uint64_t gen = ++generation_;
  peer_ = std::make_shared<Peer>(strand_, sv[0],
                                 Peer::Handlers{[this](const json& r) { return on_request(r); }, [this](const json& e) { on_event(e); },
                                                [this, gen](const std::string& why) {
                                                  if (gen == generation_) on_lost(why);
                                                }});
  // The APDU exchanges the core offers this child (a wallet at an in-process reader, for an
  // isolated payment method) answer over this child's socket.
  exchanges_.set_peer(peer_);
  peer_->start();
  json init = {{"file", options_.plugin_file.string()},
               {"instance", options_.instance},
               {"plugin", options_.plugin},
               {"kind", static_cast<int>(options_.kind)},
               {"config", options_.config},
               {"state_dir", options_.state_dir.string()},
               {"paths", options_.paths},
#if !defined(__SANITIZE_ADDRESS__)
               {"memory_mb", options_.memory_mb},
#endif
               {"now", time_json(hooks_.host->clock().now())},
               {"speed", hooks_.host->clock().speed()}};
  if (options_.connector) init["connector"] = *options_.connector;
  // The child drops what the core's logger would drop, before it crosses the socket.
  for (int l = 0; l <= static_cast<int>(LogLevel::critical); ++l) {
    if (hooks_.host->log().enabled(static_cast<LogLevel>(l))) {
      init["log_level"] = l;
      break;
    }
  }
  std::string why;
  auto r = call("init", std::move(init), &why, options_.start_deadline);
  if (!r) {
    const std::string how = kill_child();
    return fmt::format("its process ({}) {}: {}", program, how.empty() ? "did not start" : how, why);
  }
  info_ = *r;
  sandbox_ = info_.value("sandbox", "");
  for (const auto& w : info_.value("warnings", json::array())) {
    if (w.is_string()) hooks_.host->log().write(LogLevel::warn, w.get<std::string>());
  }
  return {};
}

std::string Isolated::kill_child(std::chrono::milliseconds grace) {
  ++generation_;  // whatever the old peer still reports is about a child that is gone
  if (peer_) {
    rejected_ += peer_->rejected();
    peer_->close();
    peer_.reset();
  }
  if (heartbeat_timer_) heartbeat_timer_->cancel();
  if (pid_ <= 0) return {};
  int st = 0;
  pid_t got = 0;
  const auto end = steady::now() + grace;
  while ((got = ::waitpid(pid_, &st, WNOHANG)) == 0 && steady::now() < end) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  if (got == 0) {
    ::kill(-pid_, SIGKILL);
    ::kill(pid_, SIGKILL);
    while ((got = ::waitpid(pid_, &st, 0)) < 0 && errno == EINTR) {
    }
    const std::string how = (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) ? "was killed" : describe_exit(st);
    pid_ = -1;
    return fmt::format("process {}", how);
  }
  // Its process group too: a plugin that forked leaves nothing behind.
  ::kill(-pid_, SIGKILL);
  pid_ = -1;
  return got > 0 ? fmt::format("process {}", describe_exit(st)) : std::string("process is gone");
}

std::optional<json> Isolated::call(const std::string& method, json args, std::string* why, std::optional<std::chrono::milliseconds> deadline) {
  if (!peer_ || !peer_->open()) {
    if (why) *why = "the process is not running";
    return std::nullopt;
  }
  auto peer = peer_;
  std::string w;
  const auto limit = deadline.value_or(options_.call_deadline);
  auto r = peer->call({{"m", method}, {"a", std::move(args)}}, limit, &w);
  if (!r) {
    if (peer->open()) {
      // No answer in time: the child is hung in the plugin. It is ended now, not at the next
      // heartbeat, and failed after this call has returned.
      w = fmt::format("hung: no answer to {} within {} ms", method, limit.count());
      const std::uint64_t gen = generation_;
      peer->close();
      boost::asio::post(strand_, [this, alive = alive_, gen, w] {
        if (*alive && gen == generation_) on_lost(w);
      });
    }
    if (why) *why = w;
    return std::nullopt;
  }
  if (r->contains("error")) {
    if (why) *why = r->value("error", std::string("an error"));
    return std::nullopt;
  }
  if (!r->contains("r")) {
    if (why) *why = "an answer without a result";
    return std::nullopt;
  }
  return std::move((*r)["r"]);
}

void Isolated::call_async(const std::string& method, json args, std::function<void(const json*)> done) {
  const std::uint64_t cb = ++next_cb_;
  if (!peer_ || !peer_->open()) {
    done(nullptr);
    return;
  }
  pending_[cb] = std::move(done);
  if (!peer_->send({{"t", "ev"}, {"m", method}, {"a", std::move(args)}, {"cb", cb}})) {
    auto d = std::move(pending_[cb]);
    pending_.erase(cb);
    d(nullptr);
  }
}

void Isolated::notify(const std::string& method, json args) {
  if (peer_ && peer_->open()) peer_->send({{"t", "ev"}, {"m", method}, {"a", std::move(args)}});
}

void Isolated::set_risk_history(std::uint64_t cb, const risk::History* history, TimePoint deadline) {
  if (cb == 0) cb = next_cb_;
  if (pending_.count(cb) != 0) histories_[cb] = {history, deadline};
}

Status Isolated::start_child() {
  if (!peer_) {
    // Created but its process lost before start: one more go.
    if (auto err = spawn(); !err.empty()) return Status(StatusCode::unavailable, err);
  }
  std::string why;
  auto r = call("start", json::object(), &why, options_.start_deadline);
  Status s = r ? [&] {
    try {
      return status_of(*r);
    } catch (const std::exception& e) {
      return Status(StatusCode::failed, fmt::format("its process answered nonsense: {}", e.what()));
    }
  }()
               : Status(StatusCode::unavailable, fmt::format("its isolated process failed during start: {}", why));
  if (s.ok()) {
    started_ = true;
    up_since_ = steady::now();
    heartbeat();
  }
  return s;
}

void Isolated::stop_child() {
  stopping_ = true;
  if (restart_timer_) restart_timer_->cancel();
  if (peer_ && peer_->open()) {
    call("stop", json::object());
    if (peer_) peer_->send({{"t", "ev"}, {"m", "exit"}, {"a", json::object()}});
  }
  kill_child(std::chrono::milliseconds(1000));
  fail_pending();
}

void Isolated::fail_pending() {
  auto pending = std::move(pending_);
  pending_.clear();
  histories_.clear();
  for (auto& [id, done] : pending) done(nullptr);
  exchanges_.fail_all();
}

void Isolated::heartbeat() {
  if (!peer_ || stopping_) return;
  const auto now = steady::now();
  if (pong_seen_ < ping_sent_) {
    if (now - ping_time_ > options_.heartbeat_deadline) {
      const std::string why = fmt::format("hung: no heartbeat answer within {} ms", options_.heartbeat_deadline.count());
      on_lost(why);
      return;
    }
  } else {
    ping_time_ = now;
    peer_->send({{"t", "ev"}, {"m", "ping"}, {"a", {{"seq", ++ping_sent_}, {"now", time_json(hooks_.host->clock().now())}}}});
  }
  heartbeat_timer_ = std::make_unique<boost::asio::steady_timer>(strand_);
  heartbeat_timer_->expires_after(options_.heartbeat_interval);
  heartbeat_timer_->async_wait([this, alive = alive_](const boost::system::error_code& ec) {
    if (!ec && *alive) heartbeat();
  });
}

void Isolated::on_lost(const std::string& why) {
  if (pid_ <= 0 && !peer_) return;
  const bool was_up = started_;
  const std::string how = kill_child();
  fail_pending();
  if (stopping_) return;
  if (was_up && steady::now() - up_since_ >= options_.backoff_cap) backoff_ = options_.backoff_first;
  started_ = false;
  const std::string reason = fmt::format("its isolated {} ({})", how.empty() ? "process ended" : how, why);
  if (hooks_.failed && hooks_.failed(reason)) schedule_restart();
}

void Isolated::schedule_restart() {
  hooks_.host->log().write(LogLevel::warn, fmt::format("restarting its isolated process in {} ms", backoff_.count()));
  restart_timer_ = std::make_unique<boost::asio::steady_timer>(strand_);
  restart_timer_->expires_after(backoff_);
  backoff_ = std::min(backoff_ * 2, options_.backoff_cap);
  restart_timer_->async_wait([this, alive = alive_](const boost::system::error_code& ec) {
    if (!ec && *alive && !stopping_) restart();
  });
}

void Isolated::restart() {
  std::string err = spawn();
  if (err.empty()) {
    Status s = start_child();
    if (!s.ok()) err = s.message();
  }
  if (!err.empty()) {
    fail_and_restart(fmt::format("failed to restart: {}", err));
    return;
  }
  if (options_.kind == Kind::power) {
    // A fresh process knows nothing of the contactor its predecessor left: open it before the
    // connector is offered again.
    std::string why;
    if (!call("open_contactor", json::object(), &why)) hooks_.host->log().write(LogLevel::error, "could not open the contactor after a restart: " + why);
  }
  ++restarts_;
  hooks_.host->log().write(LogLevel::info, fmt::format("its isolated process runs again (pid {}, restart {})", pid_, restarts_));
  if (hooks_.restored) hooks_.restored();
}

void Isolated::fail_and_restart(const std::string& why) {
  const std::string how = kill_child();
  fail_pending();
  started_ = false;
  if (!stopping_ && hooks_.failed && hooks_.failed(how.empty() ? why : fmt::format("its isolated {} ({})", how, why))) schedule_restart();
}

json Isolated::on_request(const json& r) {
  if (auto x = exchanges_.on_request(r)) return {{"r", *x}};
  const std::string m = str(r, "m");
  const json& a = member(r, "a");
  if (m == "history") {
    auto it = histories_.find(static_cast<std::uint64_t>(integer(a, "cb")));
    if (it == histories_.end() || hooks_.host->clock().now() > it->second.deadline) return {{"r", {{"none", true}}}};
    const std::string user = str(a, "user");
    const TimePoint since = time_of(a, "since");
    json out = json::object();
    if (str(a, "q") == "sessions") {
      if (auto n = it->second.history->sessions_since(user, since)) out["n"] = *n;
    } else {
      if (auto n = it->second.history->amount_since_fen(user, since)) out["n"] = *n;
    }
    return {{"r", out}};
  }
  throw std::invalid_argument(fmt::format("unknown request '{}'", m));
}

void Isolated::on_event(const json& e) {
  if (exchanges_.on_event(e)) return;
  const std::string m = str(e, "m");
  const json& a = member(e, "a");
  Host& host = *hooks_.host;
  if (m == "pong") {
    pong_seen_ = static_cast<std::uint64_t>(integer(a, "seq"));
  } else if (m == "cb") {
    auto it = pending_.find(static_cast<std::uint64_t>(integer(a, "cb")));
    if (it == pending_.end()) throw std::invalid_argument("an answer to a call that is not waiting (answered twice?)");
    auto done = std::move(it->second);
    pending_.erase(it);
    histories_.erase(static_cast<std::uint64_t>(integer(a, "cb")));
    done(&member(a, "r"));
  } else if (m == "log") {
    const auto level = enumerated(a, "level", LogLevel::critical);
    host.log().write(level, str(a, "text"));
  } else if (m == "publish") {
    const std::string channel = str(a, "channel");
    const std::string unit = str(a, "unit");
    host.publish(Sample{channel, unit, number(a, "value"), time_of(a, "time")});
  } else if (m == "raise") {
    const std::string code = str(a, "code");
    const std::string message = str(a, "message");
    host.raise(Alarm{enumerated(a, "severity", AlarmSeverity::critical), code, message, boolean(a, "active")});
  } else if (m == "state") {
    host.report_state(str(a, "state"), str(a, "detail"));
  } else if (m == "present") {
    auto token = token_of(member(a, "token"));
    token.exchange = exchanges_.proxy(static_cast<std::uint64_t>(integer(a, "x")));
    host.present(token);
  } else if (m == "upload") {
    // Host::upload from the child: the answer goes back as "uploaded", to this process only
    // (a restarted child uploads again what it has not seen acknowledged).
    const auto id = integer(a, "u");
    host.upload(uplink_record_of(member(a, "record")), [this, alive = alive_, gen = generation_, id](Status s) {
      if (*alive && gen == generation_) notify("uploaded", {{"u", id}, {"status", to_json(s)}});
    });
  } else if (m == "power") {
    const auto ev = enumerated(a, "event", power::Event::fault_cleared);
    const std::string detail = str(a, "detail");
    if (power_sink) power_sink(ev, detail);
  } else if (m == "frame") {
    const json& data = member(a, "data");
    if (!data.is_binary()) throw std::invalid_argument("a frame that is not a byte string");
    if (link_receiver) link_receiver(std::span<const std::uint8_t>(data.get_binary().data(), data.get_binary().size()));
  } else {
    throw std::invalid_argument(fmt::format("unknown event '{}'", m));
  }
}

}  // namespace pilecore::core::isolation
