// The sim-* plugins, each through the real loader and runtime: a site file written to a temp
// directory, validated by load_site against the built plugins, run by core::Runtime on a
// simulated clock 1000 times faster than real time. Plugin objects are reached on the core's
// strand with Runtime::dispatch; nothing is mocked. The only test data is the risk History and
// the site files themselves.
//
// The power stage publishes its meter register as samples; the core only logs them (trace), so
// these tests read them from the instance's log through a capturing spdlog sink registered under
// the instance's logger name before the runtime starts.
#include <gtest/gtest.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <future>
#include <tuple>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "clocks.hpp"
#include "frame.hpp"
#include "payloads.hpp"
#include "pilecore/pilecore.hpp"
#include "plugin_loader.hpp"
#include "runtime.hpp"
#include "site_config.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace pilecore::core;
using namespace std::chrono_literals;
using pilecore::test::capture_log;
using pilecore::test::CaptureSink;
namespace fs = std::filesystem;

namespace {

constexpr double kSpeed = 1000;           // clock seconds per real second
constexpr auto kWait = std::chrono::seconds(5);  // real time; a test fails rather than hangs


/// Every connector needs a power stage: a sim-power instance for each of the test site's two
/// connectors that `plugins_yaml` does not already bind one to.
std::string power_stages_missing_from(const std::string& plugins_yaml) {
  std::set<std::string> bound;
  try {
    const YAML::Node plugins = YAML::Load("plugins:\n" + plugins_yaml)["plugins"];
    for (const auto& i : plugins) {
      if (i.second["plugin"] && i.second["plugin"].as<std::string>() == "sim-power" && i.second["connector"]) {
        bound.insert(i.second["connector"].as<std::string>());
      }
    }
  } catch (const YAML::Exception&) {
  }
  std::string out;
  for (const char* c : {"1", "2"}) {
    if (!bound.count(c)) out += fmt::format("  site-power-{}:\n    plugin: sim-power\n    connector: {}\n", c, c);
  }
  return out;
}

/// A site with the given plugin instances, running on its own thread.
class SimSite {
 public:
  /// A site in a fresh directory, removed afterwards; or in `keep`, which is neither emptied
  /// nor removed (so a second site can start on the first one's state).
  /// The site's clock starts at `start` (default 2026-03-01T08:00:00Z).
  explicit SimSite(const std::string& plugins_yaml, const fs::path& keep = {}, std::optional<TimePoint> start = std::nullopt) : keep_(!keep.empty()) {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = keep_ ? keep : fs::temp_directory_path() / fmt::format("pilecore-sim-{}-{}-{}", info->test_suite_name(), info->name(), ::getpid());
    if (!keep_) fs::remove_all(dir_);
    fs::create_directories(dir_);
    const fs::path file = dir_ / "site.yaml";
    std::ofstream(file) << "site:\n"
                           "  id: SIM-TEST\n"
                           "  name: Simulated test site\n"
                           "  location: {lat: 31.2304, lon: 121.4737}\n"
                           "  timezone: Asia/Shanghai\n"
                           "connectors:\n"
                           "  - {id: 1, type: gbt-dc, max_power_w: 60000}\n"
                           "  - {id: 2, type: gbt-dc, max_power_w: 60000}\n"
                           "plugins:\n"
                        << power_stages_missing_from(plugins_yaml) << plugins_yaml;
    PluginRegistry registry({PILECORE_PLUGIN_DIR});
    auto outcome = load_site(file, registry);
    if (!outcome.site) {
      ADD_FAILURE() << "the test site is invalid:\n" << outcome.diagnostics.format();
      return;
    }
    start_ = start.value_or(TimePoint{std::chrono::sys_days{std::chrono::year{2026} / 3 / 1}} + 8h);
    RuntimeOptions options;
    options.state_dir = dir_ / "state";
    options.clock = std::make_shared<ScaledClock>(start_, kSpeed);
    options.status_interval = Duration{0};
    options.notify_systemd = false;
    runtime_ = std::make_unique<Runtime>(std::move(*outcome.site), std::move(options));
    thread_ = std::thread([this] { rc_ = runtime_->run(); });
    const auto until = std::chrono::steady_clock::now() + kWait;
    while (!runtime_->ready() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
    if (!runtime_->ready()) {
      ADD_FAILURE() << "the runtime did not become ready: " << runtime_->start_error();
      return;
    }
    // ready() turns true inside the start-up handler, before it shows the connectors on the
    // indicators; a call through the strand waits for that handler to finish.
    on_strand([] {});
  }

  ~SimSite() {
    if (runtime_) {
      runtime_->request_stop();
      thread_.join();
      EXPECT_EQ(rc_, 0) << runtime_->start_error();
      runtime_.reset();
    }
    std::error_code ec;
    if (!keep_) fs::remove_all(dir_, ec);
  }
  SimSite(const SimSite&) = delete;
  SimSite& operator=(const SimSite&) = delete;

  [[nodiscard]] bool ok() const { return runtime_ && runtime_->ready(); }
  Runtime& runtime() { return *runtime_; }
  [[nodiscard]] TimePoint now() const { return runtime_->clock().now(); }

  /// Runs `fn` on the core's strand and returns its result.
  template <class F>
  auto on_strand(F&& fn) -> decltype(fn()) {
    using R = decltype(fn());
    std::promise<R> p;
    auto f = p.get_future();
    runtime_->dispatch([&] {
      try {
        if constexpr (std::is_void_v<R>) {
          fn();
          p.set_value();
        } else {
          p.set_value(fn());
        }
      } catch (...) {
        p.set_exception(std::current_exception());
      }
    });
    if (f.wait_for(kWait) != std::future_status::ready) throw std::runtime_error("the strand did not run the call in time");
    return f.get();
  }

  template <class T>
  T* plugin(std::string_view instance) {
    Plugin* p = runtime_->find_plugin(instance);
    if (p == nullptr) throw std::runtime_error("no running instance " + std::string(instance));
    if (runtime_->kind_of(instance) != T::kind) throw std::runtime_error("instance " + std::string(instance) + " is of another kind");
    return static_cast<T*>(p);
  }

  [[nodiscard]] InstanceInfo info(std::string_view instance) const {
    for (auto& i : runtime_->instances()) {
      if (i.name == instance) return i;
    }
    throw std::runtime_error("no instance " + std::string(instance));
  }

 private:
  bool keep_ = false;
  fs::path dir_;
  TimePoint start_{};
  std::unique_ptr<Runtime> runtime_;
  std::thread thread_;
  int rc_ = -1;
};

/// A value a plugin hands to a callback later, on the strand.
template <class T>
class Answer {
 public:
  std::function<void(T)> callback() {
    return [p = promise_](T v) { p->set_value(std::move(v)); };  // a second call would throw: exactly once
  }
  T get() {
    if (future_.wait_for(kWait) != std::future_status::ready) throw std::runtime_error("no answer in time");
    return future_.get();
  }

 private:
  std::shared_ptr<std::promise<T>> promise_ = std::make_shared<std::promise<T>>();
  std::future<T> future_ = promise_->get_future();
};

template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = kWait) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    if (pred()) return true;
    std::this_thread::sleep_for(1ms);
  }
  return pred();
}

// ---------------------------------------------------------------------------------------------
// payment

payment::AuthorizationResult authorize(SimSite& site, std::string_view instance, std::string id, std::string token, std::int64_t fen) {
  Answer<payment::AuthorizationResult> a;
  const identification::Token t{.type = "card", .id = token, .connector = 1, .evidence = {}, .exchange = nullptr};
  const std::string op = id + "/authorize";
  site.on_strand([&] {
    site.plugin<payment::Method>(instance)->authorize(
        {.operation_id = op, .transaction_id = id, .connector = 1, .token = &t, .channel = {}, .amount_fen = fen, .deadline = site.now() + 10min},
        a.callback());
  });
  return a.get();
}

payment::OperationResult capture(SimSite& site, std::string id, std::int64_t fen) {
  Answer<payment::OperationResult> a;
  const std::string op = id + "/capture";
  site.on_strand([&] { site.plugin<payment::Method>("pay")->capture({.operation_id = op, .transaction_id = id, .amount_fen = fen, .deadline = {}}, a.callback()); });
  return a.get();
}
payment::OperationResult refund(SimSite& site, std::string id, std::int64_t fen, std::string refund_id = "r1") {
  Answer<payment::OperationResult> a;
  site.on_strand([&] {
    site.plugin<payment::Method>("pay")->refund({.operation_id = refund_id, .transaction_id = id, .amount_fen = fen, .reason = {}, .deadline = {}},
                                                a.callback());
  });
  return a.get();
}
payment::OperationResult cancel(SimSite& site, std::string id) {
  Answer<payment::OperationResult> a;
  const std::string op = id + "/void";
  site.on_strand([&] { site.plugin<payment::Method>("pay")->cancel({.operation_id = op, .transaction_id = id, .deadline = {}, .authorization_id = {}, .channel = {}}, a.callback()); });
  return a.get();
}
bool confirmed(const payment::OperationResult& r) { return r.state == payment::OperationState::confirmed; }
bool failed(const payment::OperationResult& r) { return r.state == payment::OperationState::failed; }

constexpr const char* kPaymentSite = R"(  pay:
    plugin: sim-payment
    config:
      limit_fen: 50000
      declined_tokens: [blocked-card]
      step_up_tokens: [new-user]
      latency_ms: 300
  slow:
    plugin: sim-payment
    config:
      latency_ms: 600000
)";

TEST(SimPayment, ApprovesDeclinesAndStepsUp) {
  SimSite site(kPaymentSite);
  ASSERT_TRUE(site.ok());

  const TimePoint asked = site.now();
  auto ok = authorize(site, "pay", "T-1", "alice", 30000);
  EXPECT_EQ(ok.decision, payment::Decision::approved);
  EXPECT_EQ(ok.authorized_fen, 30000);
  EXPECT_TRUE(ok.reference.starts_with("SIM")) << ok.reference;
  EXPECT_GE(site.now() - asked, 300ms) << "the answer comes after latency_ms of host-clock time";

  auto over = authorize(site, "pay", "T-2", "alice", 50001);
  EXPECT_EQ(over.decision, payment::Decision::declined);
  EXPECT_EQ(over.authorized_fen, 0);
  EXPECT_NE(over.reason.find("above the limit of 500.00 yuan"), std::string::npos) << over.reason;
  EXPECT_EQ(authorize(site, "pay", "T-3", "alice", 50000).decision, payment::Decision::approved) << "the limit itself is allowed";

  auto blocked = authorize(site, "pay", "T-4", "blocked-card", 100);
  EXPECT_EQ(blocked.decision, payment::Decision::declined);
  EXPECT_FALSE(blocked.reason.empty());

  auto step = authorize(site, "pay", "T-5", "new-user", 100);
  EXPECT_EQ(step.decision, payment::Decision::step_up);
  EXPECT_EQ(step.authorized_fen, 0);
  EXPECT_EQ(step.challenge.kind, payment::ChallengeKind::pin);
  EXPECT_FALSE(step.challenge.prompt.empty());
  // The answer comes back to the method, which approves on the right PIN and declines otherwise.
  auto answer = [&](std::string txn, std::string pin) {
    Answer<payment::AuthorizationResult> a;
    site.on_strand([&] {
      site.plugin<payment::Method>("pay")->answer_step_up(txn + "/authorize", {.kind = payment::ChallengeKind::pin, .value = pin, .confirmed = false},
                                                          a.callback());
    });
    return a.get();
  };
  auto passed = answer("T-5", "1234");
  EXPECT_EQ(passed.decision, payment::Decision::approved);
  EXPECT_EQ(passed.authorized_fen, 100);
  ASSERT_EQ(authorize(site, "pay", "T-7", "new-user", 100).decision, payment::Decision::step_up);
  auto wrong = answer("T-7", "0000");
  EXPECT_EQ(wrong.decision, payment::Decision::declined);
  EXPECT_EQ(wrong.reason, "wrong PIN");

  EXPECT_EQ(authorize(site, "pay", "T-6", "alice", 0).decision, payment::Decision::declined);

  // Idempotent on the transaction id: the same answer, the same reference; a different request
  // under a used id is refused.
  auto again = authorize(site, "pay", "T-1", "alice", 30000);
  EXPECT_EQ(again.decision, payment::Decision::approved);
  EXPECT_EQ(again.reference, ok.reference);
  EXPECT_EQ(authorize(site, "pay", "T-1", "alice", 20000).decision, payment::Decision::declined);
}

TEST(SimPayment, CaptureCancelAndRefundAreIdempotentAndBounded) {
  auto log = capture_log("payment:sim-payment:pay");
  SimSite site(kPaymentSite);
  ASSERT_TRUE(site.ok());
  ASSERT_EQ(authorize(site, "pay", "T-1", "alice", 30000).decision, payment::Decision::approved);

  EXPECT_TRUE(failed(capture(site, "T-1", 30001))) << "above the authorised amount";
  EXPECT_TRUE(confirmed(capture(site, "T-1", 25000)));
  EXPECT_TRUE(confirmed(capture(site, "T-1", 25000))) << "a repeated capture is ok";
  EXPECT_TRUE(failed(capture(site, "T-1", 20000))) << "a conflicting capture";
  EXPECT_TRUE(failed(cancel(site, "T-1"))) << "captured: refund, not cancel";

  EXPECT_TRUE(failed(refund(site, "T-1", 25001))) << "above the captured amount";
  EXPECT_TRUE(confirmed(refund(site, "T-1", 3000, "T-1/refund/1")));
  EXPECT_TRUE(confirmed(refund(site, "T-1", 3000, "T-1/refund/1"))) << "a repeated refund is ok";
  EXPECT_TRUE(failed(refund(site, "T-1", 100, "T-1/refund/1"))) << "the same refund id with another amount";
  EXPECT_TRUE(confirmed(refund(site, "T-1", 2000, "T-1/refund/2"))) << "a second, partial refund has its own id";
  EXPECT_TRUE(failed(refund(site, "T-1", 20001, "T-1/refund/3"))) << "above what is left";

  EXPECT_TRUE(failed(capture(site, "T-nope", 1)));
  EXPECT_EQ(cancel(site, "T-nope").amount_fen, 0) << "nothing held: nothing to release";
  EXPECT_TRUE(failed(refund(site, "T-nope", 1)));

  ASSERT_EQ(authorize(site, "pay", "T-2", "bob", 10000).decision, payment::Decision::approved);
  EXPECT_TRUE(confirmed(cancel(site, "T-2")));
  EXPECT_TRUE(confirmed(cancel(site, "T-2"))) << "a repeated cancel is ok";
  EXPECT_TRUE(failed(capture(site, "T-2", 100))) << "cancelled";
  EXPECT_TRUE(failed(refund(site, "T-2", 100))) << "nothing captured";

  ASSERT_EQ(authorize(site, "pay", "T-3", "new-user", 100).decision, payment::Decision::step_up);
  EXPECT_TRUE(failed(capture(site, "T-3", 100))) << "not approved";

  // The ledger took each effect once: 250 yuan captured, 50 refunded, whatever the repeats.
  const auto lines = log->lines();
  const auto count = [&](std::string_view needle) {
    return std::count_if(lines.begin(), lines.end(), [&](const std::string& l) { return l.find(needle) != std::string::npos; });
  };
  EXPECT_EQ(count("ledger: capture T-1 250.00 yuan"), 1);
  EXPECT_EQ(count("captured total 250.00 yuan"), 1);
  EXPECT_EQ(count("ledger: refund T-1/refund/1 30.00 yuan"), 1);
  EXPECT_EQ(count("ledger: refund T-1/refund/2 20.00 yuan"), 1);
  EXPECT_EQ(count("refunded total 50.00 yuan"), 1);
  EXPECT_EQ(count("repeated; already done, no second effect"), 3);
  spdlog::drop("payment:sim-payment:pay");
}

// ---------------------------------------------------------------------------------------------
// link

Status send(SimSite& site, std::string_view instance, std::size_t bytes, std::uint8_t fill = 0x42) {
  Answer<Status> a;
  std::vector<std::uint8_t> frame(bytes, fill);
  for (std::size_t i = 0; i < frame.size() && i < 8; ++i) frame[i] = static_cast<std::uint8_t>(i + 1);
  site.on_strand([&] { site.plugin<link::Link>(instance)->send(frame, link::TrafficClass::telemetry, a.callback()); });
  return a.get();
}

constexpr const char* kLinkSite = R"(  lora:
    plugin: sim-link
    config:
      mtu_bytes: 64
      duty_cycle_ppm: 1000
      us_per_byte: 10000
      latency_ms: 100
      ack: true
  free:
    plugin: sim-link
    config:
      mtu_bytes: 64
      duty_cycle_ppm: 1000
      us_per_byte: 10000
      enforce_duty_cycle: false
      ack: false
  dark:
    plugin: sim-link
    config:
      start_down: true
)";

TEST(SimPayment, ItsJournalOutlivesARestartOfTheDaemon) {
  // The acquirer is another machine: what it authorised and captured before the pile restarted
  // is still there after, so a recovered transaction is captured once, against its hold.
  const fs::path dir = fs::temp_directory_path() / fmt::format("pilecore-sim-journal-{}", ::getpid());
  fs::remove_all(dir);
  std::string reference;
  {
    SimSite site(kPaymentSite, dir);
    ASSERT_TRUE(site.ok());
    const auto a = authorize(site, "pay", "T-1", "alice", 30000);
    ASSERT_EQ(a.decision, payment::Decision::approved);
    reference = a.reference;
    ASSERT_EQ(authorize(site, "pay", "T-2", "bob", 10000).decision, payment::Decision::approved);
    EXPECT_TRUE(confirmed(capture(site, "T-2", 4000)));
  }
  const fs::path journal = dir / "state" / "plugins" / "pay" / "acquirer.journal";
  ASSERT_TRUE(fs::exists(journal));
  std::ofstream(journal, std::ios::app) << R"({"op":"capture","id":"T-1","f)";  // a write cut short by a crash
  {
    SimSite site(kPaymentSite, dir);
    ASSERT_TRUE(site.ok());
    const auto again = authorize(site, "pay", "T-1", "alice", 30000);
    EXPECT_EQ(again.decision, payment::Decision::approved);
    EXPECT_EQ(again.reference, reference) << "the same hold, not a new one";
    EXPECT_TRUE(confirmed(capture(site, "T-1", 25000))) << "the torn line was not a capture";
    EXPECT_TRUE(confirmed(capture(site, "T-2", 4000))) << "a capture repeated after the restart is the same capture";
    EXPECT_TRUE(failed(capture(site, "T-2", 5000))) << "and a different one conflicts with it";
    const auto fresh = authorize(site, "pay", "T-3", "carol", 100);
    EXPECT_NE(fresh.reference, reference) << "references keep counting after a restart";
  }
  std::ifstream in(journal);
  std::size_t captures = 0;
  for (std::string line; std::getline(in, line);) captures += line.find(R"("op":"capture")") != std::string::npos && line.find(R"("fen")") != std::string::npos;
  EXPECT_EQ(captures, 2u) << "one capture each for T-1 and T-2";
  std::error_code ec;
  fs::remove_all(dir, ec);
}

TEST(SimLink, LimitsMtuAndState) {
  SimSite site(kLinkSite);
  ASSERT_TRUE(site.ok());
  const auto limits = site.on_strand([&] { return site.plugin<link::Link>("lora")->limits(); });
  EXPECT_EQ(limits.mtu, 64u);
  EXPECT_EQ(limits.duty_cycle_ppm, 1000u);
  EXPECT_EQ(site.on_strand([&] { return site.plugin<link::Link>("lora")->state(); }), link::State::up);
  EXPECT_EQ(site.info("lora").health, "up");

  const Status big = send(site, "lora", 65);
  EXPECT_EQ(big.code(), StatusCode::invalid_argument);
  EXPECT_NE(big.message().find("larger than the MTU of 64 B"), std::string::npos) << big.message();
  EXPECT_TRUE(send(site, "lora", 64).ok());

  EXPECT_EQ(site.on_strand([&] { return site.plugin<link::Link>("dark")->state(); }), link::State::down);
  EXPECT_EQ(site.info("dark").health, "down");
  EXPECT_EQ(send(site, "dark", 10).code(), StatusCode::unavailable);
}

TEST(SimLink, DutyCycleRefusesWithBusy) {
  SimSite site(kLinkSite);
  ASSERT_TRUE(site.ok());
  // 0.1 % of 3600 s is 3.6 s of air time; a 60-byte frame takes 600 ms: six fit, the seventh not.
  std::vector<Answer<Status>> answers(7);
  site.on_strand([&] {
    std::vector<std::uint8_t> frame(60, 0x55);
    for (auto& a : answers) site.plugin<link::Link>("lora")->send(frame, link::TrafficClass::bulk, a.callback());
  });
  for (std::size_t i = 0; i < 6; ++i) EXPECT_TRUE(answers[i].get().ok()) << "frame " << i;
  const Status busy = answers[6].get();
  EXPECT_EQ(busy.code(), StatusCode::busy);
  EXPECT_NE(busy.message().find("retry in"), std::string::npos) << busy.message();

  // The same traffic on a link that does not enforce its duty cycle goes through.
  for (int i = 0; i < 7; ++i) EXPECT_TRUE(send(site, "free", 60).ok()) << "frame " << i;
}

// sim-link plays the back end: a record frame is answered with the protocol's application-level
// ack (docs/protocol.md 3.2), naming its key and the highest ledger seq seen, addressed to the
// device that sent it; a frame that does not decode is not acknowledged.
TEST(SimLink, AnswersARecordWithTheProtocolAck) {
  SimSite site(kLinkSite);
  ASSERT_TRUE(site.ok());
  std::mutex m;
  std::vector<std::vector<std::uint8_t>> received;
  site.on_strand([&] {
    site.plugin<link::Link>("lora")->set_receiver([&](std::span<const std::uint8_t> f) {
      std::lock_guard lock(m);
      received.emplace_back(f.begin(), f.end());
    });
  });
  auto record_frame = [](const protocol::Record& r, std::uint32_t seq) {
    protocol::Header h;
    h.type = protocol::MessageType::transaction;
    h.device_id = 123456;
    h.timestamp = 1767225600;
    h.sequence = seq;
    return protocol::encode(h, protocol::encode_record(r));
  };
  auto send_frame = [&](const std::vector<std::uint8_t>& frame) {
    Answer<Status> a;
    site.on_strand([&] { site.plugin<link::Link>("lora")->send(frame, link::TrafficClass::bulk, a.callback()); });
    return a.get();
  };
  ASSERT_TRUE(send_frame(record_frame({"ledger:7", "ledger", {{"seq", 7}}}, 1)).ok());
  ASSERT_TRUE(send(site, "lora", 20).ok()) << "handed over, but not a protocol frame: no ack";
  ASSERT_TRUE(send_frame(record_frame({"op:T-1/capture", "operation", {{"fen", 1250}}}, 2)).ok());
  ASSERT_TRUE(eventually([&] {
    std::lock_guard lock(m);
    return received.size() >= 2;
  }));
  std::lock_guard lock(m);
  ASSERT_EQ(received.size(), 2u);
  std::vector<std::string> keys;
  for (const auto& bytes : received) {
    const auto frame = protocol::decode(bytes);
    ASSERT_TRUE(std::holds_alternative<protocol::FrameView>(frame));
    const auto& f = std::get<protocol::FrameView>(frame);
    EXPECT_EQ(f.header.type, protocol::MessageType::ack);
    EXPECT_EQ(f.header.device_id, 123456u);
    const auto ack = protocol::decode_ack(f.payload);
    ASSERT_TRUE(std::holds_alternative<protocol::Ack>(ack));
    const auto& a = std::get<protocol::Ack>(ack);
    ASSERT_EQ(a.keys.size(), 1u);
    keys.push_back(a.keys[0]);
    EXPECT_EQ(a.ledger_seq, std::optional<std::uint64_t>(7)) << "the anchor: the highest ledger seq the back end holds";
  }
  EXPECT_EQ(keys, (std::vector<std::string>{"ledger:7", "op:T-1/capture"}));
}

// ---------------------------------------------------------------------------------------------
// risk

class TestHistory final : public risk::History {
 public:
  std::map<std::string, std::uint32_t, std::less<>> sessions;
  std::map<std::string, std::int64_t, std::less<>> amounts;
  mutable TimePoint asked_since{};

  bool broken = false;  ///< answers as an unreadable database does

  [[nodiscard]] std::optional<std::uint32_t> sessions_since(std::string_view user, TimePoint since) const noexcept override {
    asked_since = since;
    if (broken) return std::nullopt;
    auto it = sessions.find(user);
    return it == sessions.end() ? 0 : it->second;
  }
  [[nodiscard]] std::optional<std::int64_t> amount_since_fen(std::string_view user, TimePoint) const noexcept override {
    if (broken) return std::nullopt;
    auto it = amounts.find(user);
    return it == amounts.end() ? 0 : it->second;
  }
};

risk::Result evaluate(SimSite& site, std::string_view instance, const TestHistory& history, std::string token, std::int64_t fen, TimePoint when) {
  Answer<risk::Result> a;
  site.on_strand([&] {
    site.plugin<risk::Rule>(instance)->evaluate(
        {.phase = risk::Phase::authorize, .transaction_id = "T-r", .connector = 1, .method = "pay", .channel = {}, .user = token, .amount_fen = fen, .time = when, .pile = {}, .day_start = {}, .utc_offset_s = 0},
        history,
        site.now() + 5s, a.callback());
  });
  return a.get();
}

TEST(SimRisk, DailySessionsAndSingleAmountNeedStepUp) {
  SimSite site(R"(  rule:
    plugin: sim-risk
  strict:
    plugin: sim-risk
    config:
      verdict: deny
      reason: region under review
      latency_ms: 200
      max_sessions_per_day: 2
)");
  ASSERT_TRUE(site.ok());
  TestHistory h;
  h.sessions = {{"alice", 4}, {"bob", 5}};
  const TimePoint when = site.now();

  auto fine = evaluate(site, "rule", h, "alice", 100000, when);
  EXPECT_EQ(fine.verdict, risk::Verdict::allow) << "the 5th session and exactly 1000 yuan are allowed: " << fine.reason;
  EXPECT_EQ(when - h.asked_since, std::chrono::hours(24));

  auto sixth = evaluate(site, "rule", h, "bob", 5000, when);
  EXPECT_EQ(sixth.verdict, risk::Verdict::step_up);
  EXPECT_NE(sixth.reason.find("max_sessions_per_day 5"), std::string::npos) << sixth.reason;

  // A history that cannot be read is not zero sessions: the rule steps up.
  TestHistory broken;
  broken.broken = true;
  auto unknown = evaluate(site, "rule", broken, "alice", 100, when);
  EXPECT_EQ(unknown.verdict, risk::Verdict::step_up);
  EXPECT_NE(unknown.reason.find("cannot be read"), std::string::npos) << unknown.reason;

  auto big = evaluate(site, "rule", h, "carol", 100001, when);
  EXPECT_EQ(big.verdict, risk::Verdict::step_up);
  EXPECT_NE(big.reason.find("max_amount_fen 100000"), std::string::npos) << big.reason;

  auto both = evaluate(site, "rule", h, "bob", 200000, when);
  EXPECT_EQ(both.verdict, risk::Verdict::step_up);
  EXPECT_NE(both.reason.find("max_sessions_per_day"), std::string::npos);
  EXPECT_NE(both.reason.find("max_amount_fen"), std::string::npos);

  // A configured deny is the most severe answer and keeps every reason.
  const TimePoint asked = site.now();
  auto denied = evaluate(site, "strict", h, "alice", 100, when);
  EXPECT_EQ(denied.verdict, risk::Verdict::deny);
  EXPECT_NE(denied.reason.find("region under review"), std::string::npos) << denied.reason;
  EXPECT_NE(denied.reason.find("max_sessions_per_day 2"), std::string::npos) << denied.reason;
  EXPECT_GE(site.now() - asked, 200ms) << "answered after latency_ms";
}

// ---------------------------------------------------------------------------------------------
// indicator

TEST(SimIndicator, ShowsTheSeedsColours) {
  auto log = capture_log("indicator:sim-indicator:led1");
  SimSite site(R"(  led1:
    plugin: sim-indicator
    connector: 1
  ring:
    plugin: sim-indicator
)");
  ASSERT_TRUE(site.ok());
  // At start the core shows every connector Available: waiting, yellow.
  EXPECT_EQ(site.info("led1").detail, "1 yellow");
  EXPECT_EQ(site.info("ring").detail, "1 yellow, 2 yellow");

  const auto show = [&](std::uint32_t c, ConnectorStatus s) {
    site.on_strand([&] {
      site.plugin<indicator::Indicator>("led1")->show(c, s);
      site.plugin<indicator::Indicator>("ring")->show(c, s);
    });
  };
  show(1, ConnectorStatus::charging);
  EXPECT_EQ(site.info("led1").detail, "1 green");
  show(1, ConnectorStatus::faulted);
  EXPECT_EQ(site.info("led1").detail, "1 red");
  show(1, ConnectorStatus::unavailable);
  EXPECT_EQ(site.info("led1").detail, "1 off");
  for (auto s : {ConnectorStatus::available, ConnectorStatus::preparing, ConnectorStatus::finishing, ConnectorStatus::reserved,
                 ConnectorStatus::suspended_ev, ConnectorStatus::suspended_evse}) {
    show(1, s);
    EXPECT_EQ(site.info("led1").detail, "1 yellow") << pilecore::to_string(s);
  }
  show(2, ConnectorStatus::charging);
  EXPECT_EQ(site.info("led1").detail, "1 yellow") << "led1 is connector 1's ring only";
  EXPECT_EQ(site.info("ring").detail, "1 yellow, 2 green");
  EXPECT_EQ(site.info("led1").health, "up");

  site.on_strand([&] { site.plugin<indicator::Indicator>("led1")->announce(1, "当前充电功率45kW，预计充满时间32分钟"); });
  const auto lines = log->lines();
  const auto has = [&](std::string_view needle) {
    return std::any_of(lines.begin(), lines.end(), [&](const std::string& l) { return l.find(needle) != std::string::npos; });
  };
  EXPECT_TRUE(has("[connector 1] LED green"));
  EXPECT_TRUE(has("[connector 1] LED red"));
  EXPECT_TRUE(has("[connector 1] LED off"));
  EXPECT_TRUE(has("[connector 1] says: 当前充电功率45kW，预计充满时间32分钟"));
  // Only changes are logged: one line per colour change (yellow, green, red, off, yellow).
  EXPECT_EQ(std::count_if(lines.begin(), lines.end(), [](const std::string& l) { return l.find("] LED ") != std::string::npos; }), 5);
  spdlog::drop("indicator:sim-indicator:led1");
}

// ---------------------------------------------------------------------------------------------
// strategy

TEST(SimStrategy, ScalesBasePowerWithAFloor) {
  SimSite site(R"(  strat:
    plugin: sim-strategy
    config:
      factor: 0.5
      min_power_w: 3000
)");
  ASSERT_TRUE(site.ok());
  const auto compute = [&](std::vector<strategy::Variable> vars) {
    return site.on_strand([&] { return site.plugin<strategy::Strategy>("strat")->compute(vars); });
  };
  auto sp = compute({{"soc", 40}, {"base_power", 40000}});
  ASSERT_TRUE(sp.status.ok()) << sp.status.message();
  EXPECT_EQ(sp.watts, 20000);
  sp = compute({{"base_power", 4001}});
  EXPECT_EQ(sp.watts, 3000) << "the floor";
  auto missing = compute({{"soc", 40}});
  EXPECT_FALSE(missing.status.ok());
  EXPECT_EQ(missing.status.code(), StatusCode::invalid_argument);
  EXPECT_NE(missing.status.message().find("base_power"), std::string::npos) << missing.status.message();
  EXPECT_FALSE(compute({{"base_power", std::nan("")}}).status.ok());
  EXPECT_FALSE(compute({{"base_power", -1}}).status.ok());
}

// ---------------------------------------------------------------------------------------------
// power

/// Collects the power stage's events (the sink is called on the strand). The list outlives this
/// object: a test's Events is destroyed before its SimSite (declared after it), and the plugin
/// may report an event in between.
struct Events {
  struct List {
    std::mutex m;
    std::vector<std::pair<power::Event, std::string>> items;
  };
  std::shared_ptr<List> list = std::make_shared<List>();

  power::EventSink sink() {
    return [l = list](power::Event e, std::string_view detail) {
      std::lock_guard lock(l->m);
      l->items.emplace_back(e, std::string(detail));
    };
  }
  bool wait_for(power::Event e, std::chrono::milliseconds timeout = kWait) { return eventually([&] { return has(e); }, timeout); }
  bool has(power::Event e) {
    std::lock_guard lock(list->m);
    return std::any_of(list->items.begin(), list->items.end(), [&](const auto& x) { return x.first == e; });
  }
  std::vector<power::Event> kinds() {
    std::lock_guard lock(list->m);
    std::vector<power::Event> out;
    for (const auto& x : list->items) out.push_back(x.first);
    return out;
  }
  std::string detail(power::Event e) {
    std::lock_guard lock(list->m);
    for (const auto& x : list->items) {
      if (x.first == e) return x.second;
    }
    return {};
  }
};

/// The values of one sample channel, in publication order, from the core's trace log.
std::vector<double> samples(CaptureSink& log, const std::string& channel) {
  const std::regex re("^" + channel + " = ([-0-9.e+]+) ");
  std::vector<double> out;
  for (const auto& l : log.lines()) {
    std::smatch m;
    if (std::regex_search(l, m, re)) out.push_back(std::stod(m[1].str()));
  }
  return out;
}

TEST(SimPower, PlugReadyChargeTaperAndFull) {
  auto log = capture_log("power:sim-power:p1");
  SimSite site(R"(  p1:
    plugin: sim-power
    connector: 1
    config:
      arrive_after_s: 1
      ev_ready_delay_ms: 1000
      battery_capacity_wh: 10000
      initial_soc_pct: 50
      target_soc_pct: 90
      max_power_w: 40000
      taper_start_pct: 80
      meter_start_wh: 1000
      depart_after_full_s: 600  # 0.6 s of wall time at 1000x: the checks after full run before the driver leaves
)");
  ASSERT_TRUE(site.ok());
  Events ev;
  site.on_strand([&] { site.plugin<power::PowerStage>("p1")->set_event_sink(ev.sink()); });
  ASSERT_TRUE(ev.wait_for(power::Event::ev_ready));
  {
    const auto k = ev.kinds();
    ASSERT_GE(k.size(), 2u);
    EXPECT_EQ(k[0], power::Event::plugged);
    EXPECT_EQ(k[1], power::Event::ev_ready);
  }
  auto v = site.on_strand([&] { return site.plugin<power::PowerStage>("p1")->vehicle(); });
  ASSERT_TRUE(v.soc_percent && v.battery_temperature_c);
  EXPECT_NEAR(*v.soc_percent, 50, 0.01);
  EXPECT_NEAR(*v.battery_temperature_c, 25, 0.01);
  EXPECT_EQ(v.power_w, 0) << "contactor still open";

  ASSERT_TRUE(site.on_strand([&] { return site.plugin<power::PowerStage>("p1")->close_contactor(); }).ok());
  v = site.on_strand([&] { return site.plugin<power::PowerStage>("p1")->vehicle(); });
  EXPECT_EQ(v.power_w, 40000) << "the vehicle's maximum, below the stage's rating";

  // Watch the session until the vehicle is full.
  double last_soc = 50;
  double max_temp = 25;
  const bool full = eventually([&] {
    const auto s = site.on_strand([&] { return site.plugin<power::PowerStage>("p1")->vehicle(); });
    if (s.soc_percent) {
      EXPECT_GE(*s.soc_percent, last_soc) << "SoC never falls while charging";
      last_soc = *s.soc_percent;
      max_temp = std::max(max_temp, s.battery_temperature_c.value_or(0));
    }
    return ev.has(power::Event::ev_full);
  });
  ASSERT_TRUE(full);
  EXPECT_GT(max_temp, 25.5) << "the battery warms while charging";
  // The taper, from every step's samples (each step publishes power, then soc): full power up to
  // 80 % SoC, less above it. Read from the log, not by polling, which a slow machine may let skip
  // the few steps between 85 % and full.
  {
    const std::regex power_re("^power = ([-0-9.e+]+) "), soc_re("^soc = ([-0-9.e+]+) ");
    double soc_now = 50;
    int full_power_steps = 0, tapered_steps = 0;
    for (const auto& l : log->lines()) {
      std::smatch m;
      if (std::regex_search(l, m, soc_re)) soc_now = std::stod(m[1].str());
      if (!std::regex_search(l, m, power_re)) continue;
      const double p = std::stod(m[1].str());
      if (p <= 0) continue;
      if (soc_now < 79) {
        EXPECT_EQ(p, 40000) << "below 80 % SoC the vehicle takes its maximum; at " << soc_now;
        ++full_power_steps;
      } else if (soc_now > 81) {
        EXPECT_LT(p, 40000) << "taper above 80 % SoC; at " << soc_now;
        ++tapered_steps;
      }
    }
    EXPECT_GT(full_power_steps, 0);
    EXPECT_GT(tapered_steps, 0) << "the vehicle tapered above 80 %";
  }
  v = site.on_strand([&] { return site.plugin<power::PowerStage>("p1")->vehicle(); });
  ASSERT_TRUE(v.soc_percent) << "still plugged in";
  EXPECT_NEAR(*v.soc_percent, 90, 0.01) << "the vehicle stops drawing at its target";
  EXPECT_EQ(v.power_w, 0) << "a full vehicle takes no power";
  EXPECT_NE(ev.detail(power::Event::ev_full).find("target reached"), std::string::npos);

  // The meter register: integer Wh, never falling, 4000 Wh delivered from 50 % to 90 % of 10 kWh.
  const auto energy = samples(*log, "energy_import");
  ASSERT_GT(energy.size(), 10u);
  EXPECT_EQ(energy.front(), 1000);
  EXPECT_TRUE(std::is_sorted(energy.begin(), energy.end()));
  for (double e : energy) EXPECT_EQ(e, std::floor(e));
  EXPECT_EQ(energy.back() - energy.front(), 4000);
  const auto soc = samples(*log, "soc");
  ASSERT_FALSE(soc.empty());
  EXPECT_TRUE(std::is_sorted(soc.begin(), soc.end()));

  // The driver unplugs 600 s after full: no vehicle values any more, and no closing.
  ASSERT_TRUE(ev.wait_for(power::Event::unplugged));
  const auto [gone, closed] = site.on_strand([&] {
    auto* p = site.plugin<power::PowerStage>("p1");
    return std::make_pair(p->vehicle(), p->close_contactor());
  });
  EXPECT_FALSE(gone.soc_percent.has_value());
  EXPECT_EQ(closed.code(), StatusCode::unavailable);
  spdlog::drop("power:sim-power:p1");
}

TEST(SimPower, EnergyIsIntegratedWithoutLossAndOpenStopsAtOnce) {
  auto log = capture_log("power:sim-power:p2");
  SimSite site(R"(  p2:
    plugin: sim-power
    connector: 2
    config:
      arrive_after_s: 0
      ev_ready_delay_ms: 0
      battery_capacity_wh: 100000
      initial_soc_pct: 10
)");
  ASSERT_TRUE(site.ok());
  Events ev;
  site.on_strand([&] { site.plugin<power::PowerStage>("p2")->set_event_sink(ev.sink()); });
  ASSERT_TRUE(ev.wait_for(power::Event::ev_ready));
  EXPECT_EQ(ev.kinds().front(), power::Event::plugged) << "a late sink learns the present state";

  // 7000 W is 1.94 Wh a one-second tick: dropping the fraction would lose about half the energy.
  EXPECT_EQ(site.on_strand([&] { return site.plugin<power::PowerStage>("p2")->set_power_limit(-1); }).code(), StatusCode::invalid_argument);
  // The clock runs at 1000x: a millisecond between a call and reading the clock is a second of
  // 7000 W (1.9 Wh). So each instant is bracketed, and the energy must lie between the shortest
  // and the longest time the contactor can have been closed (less the fraction carried).
  const auto [t0_before, t0_after] = site.on_strand([&] {
    auto* p = site.plugin<power::PowerStage>("p2");
    EXPECT_TRUE(p->set_power_limit(7000).ok());
    const TimePoint before = site.now();
    EXPECT_TRUE(p->close_contactor().ok());
    return std::make_pair(before, site.now());
  });
  std::this_thread::sleep_for(150ms);  // about 150 s of clock time
  const auto [t1_before, t1_after, power_after] = site.on_strand([&] {
    auto* p = site.plugin<power::PowerStage>("p2");
    EXPECT_GT(p->vehicle().power_w, 0);
    const TimePoint before = site.now();
    EXPECT_TRUE(p->open_contactor().ok());
    return std::make_tuple(before, site.now(), p->vehicle().power_w);
  });
  EXPECT_EQ(power_after, 0) << "open_contactor stops the power at once";

  auto energy = samples(*log, "energy_import");
  ASSERT_FALSE(energy.empty());
  const double metered = energy.back();
  auto wh = [](auto d) { return 7000.0 * static_cast<double>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) / 3.6e6; };
  const double least = wh(t1_before - t0_after), most = wh(t1_after - t0_before);
  EXPECT_GT(least, 100) << "enough time passed to tell";
  EXPECT_GE(metered, least - 1.0) << "energy kept below 1 Wh is carried, not lost";
  EXPECT_LE(metered, most) << "no energy is metered that was not delivered";

  // Nothing flows after the contactor opened.
  std::this_thread::sleep_for(30ms);
  energy = samples(*log, "energy_import");
  EXPECT_EQ(energy.back(), metered);
  EXPECT_EQ(site.on_strand([&] { return site.plugin<power::PowerStage>("p2")->vehicle().power_w; }), 0);
  spdlog::drop("power:sim-power:p2");
}

TEST(SimPower, InjectedFaultOpensTheContactorAndClears) {
  SimSite site(R"(  p3:
    plugin: sim-power
    connector: 1
    config:
      arrive_after_s: 0
      ev_ready_delay_ms: 0
      fault_after_s: 300
      fault_detail: test insulation fault
      fault_clear_after_s: 60
)");
  ASSERT_TRUE(site.ok());
  Events ev;
  site.on_strand([&] { site.plugin<power::PowerStage>("p3")->set_event_sink(ev.sink()); });
  ASSERT_TRUE(ev.wait_for(power::Event::ev_ready));
  ASSERT_TRUE(site.on_strand([&] { return site.plugin<power::PowerStage>("p3")->close_contactor(); }).ok());
  EXPECT_GT(site.on_strand([&] { return site.plugin<power::PowerStage>("p3")->vehicle().power_w; }), 0);

  ASSERT_TRUE(ev.wait_for(power::Event::fault));
  EXPECT_EQ(ev.detail(power::Event::fault), "test insulation fault");
  const auto [power_w, closed] = site.on_strand([&] {
    auto* p = site.plugin<power::PowerStage>("p3");
    return std::make_pair(p->vehicle().power_w, p->close_contactor());
  });
  EXPECT_EQ(power_w, 0) << "the fault opened the contactor";
  EXPECT_EQ(closed.code(), StatusCode::unavailable) << "no closing while faulted";
  EXPECT_EQ(site.info("p3").health, "degraded");

  ASSERT_TRUE(ev.wait_for(power::Event::fault_cleared));
  EXPECT_EQ(site.info("p3").health, "up");
  EXPECT_TRUE(site.on_strand([&] { return site.plugin<power::PowerStage>("p3")->close_contactor(); }).ok());
}

TEST(SimPower, BatteryOverTemperatureFaults) {
  SimSite site(R"(  hot:
    plugin: sim-power
    connector: 2
    config:
      arrive_after_s: 0
      ev_ready_delay_ms: 0
      heating_c_per_kwh: 5
      max_battery_temperature_c: 30
)");
  ASSERT_TRUE(site.ok());
  Events ev;
  site.on_strand([&] { site.plugin<power::PowerStage>("hot")->set_event_sink(ev.sink()); });
  ASSERT_TRUE(ev.wait_for(power::Event::ev_ready));
  ASSERT_TRUE(site.on_strand([&] { return site.plugin<power::PowerStage>("hot")->close_contactor(); }).ok());
  // 60 kW heats the battery by 5 degC a kWh: above 30 degC within about a minute of clock time.
  ASSERT_TRUE(ev.wait_for(power::Event::fault));
  EXPECT_NE(ev.detail(power::Event::fault).find("battery over-temperature"), std::string::npos) << ev.detail(power::Event::fault);
  const auto v = site.on_strand([&] { return site.plugin<power::PowerStage>("hot")->vehicle(); });
  EXPECT_EQ(v.power_w, 0);
  // It faulted above 30 degC and has cooled since (no power); on a loaded machine the clock runs
  // on between the fault and this read, so only "close to the limit" holds.
  EXPECT_GT(v.battery_temperature_c.value_or(0), 29.5);
}

TEST(SimPower, IdlesWithoutAVehicle) {
  SimSite site(R"(  p4:
    plugin: sim-power
    connector: 1
)");
  ASSERT_TRUE(site.ok());
  Events ev;
  site.on_strand([&] { site.plugin<power::PowerStage>("p4")->set_event_sink(ev.sink()); });
  std::this_thread::sleep_for(20ms);
  EXPECT_TRUE(ev.kinds().empty());
  const auto [v, closed] = site.on_strand([&] {
    auto* p = site.plugin<power::PowerStage>("p4");
    return std::make_pair(p->vehicle(), p->close_contactor());
  });
  EXPECT_FALSE(v.soc_percent.has_value());
  EXPECT_EQ(v.power_w, 0);
  EXPECT_EQ(closed.code(), StatusCode::unavailable) << "no vehicle, no closing";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// power: the simulated meter's register is non-volatile, like a real meter's

namespace {

/// energy_import in sim-power's register file (the newest of its two records), or -1.
double register_file_wh(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  const std::string image((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  double wh = -1;
  unsigned long long best = 0;
  for (std::size_t off : {std::size_t{0}, std::size_t{4096}}) {
    if (image.size() <= off) continue;
    unsigned long long seq = 0;
    long long v = 0;
    if (std::sscanf(image.c_str() + off, "pilecore-meter v1 seq=%llu wh=%lld", &seq, &v) == 2 && seq >= best) {
      best = seq;
      wh = static_cast<double>(v);
    }
  }
  return wh;
}

/// One life of a daemon: runs a site with a sim-power instance in `dir`, charges until the meter
/// has advanced by `charge_wh`, and stops. Returns the published energy_import values.
std::vector<double> charge_once(const fs::path& dir, std::int64_t meter_start_wh, double charge_wh) {
  auto log = capture_log("power:sim-power:pm");
  const fs::path file = dir / "site.yaml";
  std::ofstream(file) << "site:\n"
                         "  id: SIM-TEST\n"
                         "  name: Simulated test site\n"
                         "  location: {lat: 31.2304, lon: 121.4737}\n"
                         "  timezone: Asia/Shanghai\n"
                         "connectors:\n"
                         "  - {id: 1, type: gbt-dc, max_power_w: 60000}\n"
                         "plugins:\n"
                         "  pm:\n"
                         "    plugin: sim-power\n"
                         "    connector: 1\n"
                         "    config:\n"
                         "      arrive_after_s: 1\n"  // the tick at 1 s publishes the register before any charging
                         "      ev_ready_delay_ms: 1000\n"
                         "      battery_capacity_wh: 200000\n"
                         "      initial_soc_pct: 10\n"
                         "      max_power_w: 30000\n"
                         "      meter_start_wh: "
                      << meter_start_wh << "\n";
  PluginRegistry registry({PILECORE_PLUGIN_DIR});
  auto outcome = load_site(file, registry);
  if (!outcome.site) throw std::runtime_error("the test site is invalid:\n" + outcome.diagnostics.format());
  RuntimeOptions options;
  options.state_dir = dir / "state";
  options.clock = std::make_shared<ScaledClock>(TimePoint{std::chrono::sys_days{std::chrono::year{2026} / 3 / 1}} + 8h, kSpeed);
  options.status_interval = Duration{0};
  options.notify_systemd = false;
  Runtime rt(std::move(*outcome.site), std::move(options));
  int rc = -1;
  std::thread thread([&] { rc = rt.run(); });
  const auto on_strand = [&](auto fn) {
    std::promise<void> done;
    rt.dispatch([&] {
      fn();
      done.set_value();
    });
    done.get_future().wait();
  };
  const fs::path reg = dir / "state" / "plugins" / "pm" / "energy_import.register";
  Events ev;
  EXPECT_TRUE(eventually([&] { return rt.ready(); })) << rt.start_error();
  if (rt.ready()) {
    on_strand([&] { static_cast<power::PowerStage*>(rt.find_plugin("pm"))->set_event_sink(ev.sink()); });
    EXPECT_TRUE(ev.wait_for(power::Event::ev_ready));
    on_strand([&] { EXPECT_TRUE(static_cast<power::PowerStage*>(rt.find_plugin("pm"))->close_contactor().ok()); });
    // At every instant the file holds at least what has been published: a kill -9 at any
    // point loses no reading anyone has seen.
    EXPECT_TRUE(eventually([&] {
      const auto e = samples(*log, "energy_import");
      if (e.empty()) return false;
      EXPECT_GE(register_file_wh(reg), e.back());
      return e.back() >= e.front() + charge_wh;
    }));
  }
  rt.request_stop();
  thread.join();
  EXPECT_EQ(rc, 0) << rt.start_error();
  auto energy = samples(*log, "energy_import");
  spdlog::drop("power:sim-power:pm");
  return energy;
}

}  // namespace

TEST(SimPower, VehiclesComeOnScheduleAndOneAfterAnother) {
  // The site clock starts at 2026-03-01T08:00:00Z. 07:00 is past (skipped); a vehicle comes at
  // 09:01:00; the one due at 09:01:20 (17:01:20 in Beijing) finds it still there and drives on;
  // a fault comes at 09:01:40; after the first vehicle leaves (unplugged 10 s after the fault
  // clears) the next comes arrive_every_s later. The first hour (3.6 s at this speed) leaves time
  // for the test to attach its event sink after a slow start (a sanitizer build).
  SimSite site(R"(  p5:
    plugin: sim-power
    connector: 1
    config:
      ev_ready_delay_ms: 0
      arrive_at: ["2026-03-01T07:00:00Z", "2026-03-01T09:01:00Z", "2026-03-01T17:01:20+08:00"]
      fault_at: ["2026-03-01T09:01:40Z"]
      fault_clear_after_s: 10
      depart_after_full_s: 10
      arrive_every_s: 20
)");
  ASSERT_TRUE(site.ok());
  Events ev;
  site.on_strand([&] { site.plugin<power::PowerStage>("p5")->set_event_sink(ev.sink()); });
  const TimePoint start = TimePoint{std::chrono::sys_days{std::chrono::year{2026} / 3 / 1}} + 8h;
  EXPECT_FALSE(ev.has(power::Event::plugged)) << "07:00 was before the start";
  ASSERT_TRUE(ev.wait_for(power::Event::plugged, 15s));
  EXPECT_GE(site.now(), start + 3660s);
  ASSERT_TRUE(ev.wait_for(power::Event::fault, 10s));
  EXPECT_GE(site.now(), start + 3700s);
  ASSERT_TRUE(ev.wait_for(power::Event::unplugged, 10s));
  EXPECT_GE(site.now(), start + 3720s) << "the fault cleared after 10 s, the driver left 10 s later";
  ASSERT_TRUE(eventually([&] { return ev.kinds().size() >= 6; }, 10s));
  const std::vector<power::Event> expected = {power::Event::plugged, power::Event::ev_ready,  power::Event::fault,
                                              power::Event::fault_cleared, power::Event::unplugged, power::Event::plugged};
  const auto kinds = ev.kinds();
  ASSERT_GE(kinds.size(), expected.size());
  EXPECT_TRUE(std::equal(expected.begin(), expected.end(), kinds.begin())) << "the 09:01:20 vehicle did not replace the first one";
  EXPECT_GE(site.now(), start + 3740s) << "the next vehicle came arrive_every_s after the first left";
}

TEST(SimPower, APluggedVehicleWaitsForThePileAcrossAStop) {
  const fs::path dir = fs::temp_directory_path() / fmt::format("pilecore-sim-vehicle-stays-{}", ::getpid());
  fs::remove_all(dir);
  const fs::path file = dir / "state" / "plugins" / "pv" / "vehicle.state";
  const auto yaml = [](int waits_s, int arrive_after_s, const std::string& arrive_at = "[]") {
    return fmt::format(R"(  pv:
    plugin: sim-power
    connector: 1
    config:
      arrive_after_s: {}
      arrive_at: {}
      ev_ready_delay_ms: 0
      battery_capacity_wh: 60000
      initial_soc_pct: 20
      driver_waits_s: {}
)",
                       arrive_after_s, arrive_at, waits_s);
  };
  const TimePoint t0 = TimePoint{std::chrono::sys_days{std::chrono::year{2026} / 3 / 1}} + 8h;
  double soc_at_stop = 0;
  {  // a vehicle arrives and charges; the stage stops with it plugged in
    SimSite site(yaml(600, 0), dir, t0);
    ASSERT_TRUE(site.ok());
    Events ev;
    site.on_strand([&] { site.plugin<power::PowerStage>("pv")->set_event_sink(ev.sink()); });
    ASSERT_TRUE(ev.wait_for(power::Event::ev_ready));
    site.on_strand([&] { EXPECT_TRUE(site.plugin<power::PowerStage>("pv")->close_contactor().ok()); });
    ASSERT_TRUE(eventually([&] { return site.on_strand([&] { return *site.plugin<power::PowerStage>("pv")->vehicle().soc_percent; }) > 21.0; }));
  }
  {
    std::ifstream in(file);
    std::string text;
    ASSERT_TRUE(std::getline(in, text)) << "the stop kept the vehicle in " << file;
    long long wh = 0;
    ASSERT_EQ(std::sscanf(text.c_str(), "pilecore-vehicle v1 state=%*d battery_wh=%lld", &wh), 1) << text;
    soc_at_stop = 100.0 * static_cast<double>(wh) / 60000.0;
    EXPECT_GT(soc_at_stop, 21.0);
  }
  {  // the pile is back 5 minutes later: the same vehicle, its battery as it was, asks again
    auto log = capture_log("power:sim-power:pv");
    SimSite site(yaml(600, -1), dir, t0 + 5min);
    ASSERT_TRUE(site.ok());
    Events ev;
    site.on_strand([&] { site.plugin<power::PowerStage>("pv")->set_event_sink(ev.sink()); });
    ASSERT_TRUE(ev.wait_for(power::Event::ev_ready));
    EXPECT_EQ(ev.kinds().front(), power::Event::plugged);
    const auto lines = log->lines();
    EXPECT_TRUE(std::any_of(lines.begin(), lines.end(), [](const std::string& l) { return l.find("plugged: the vehicle plugged in before the restart is still there") != std::string::npos; }));
    const double soc = site.on_strand([&] { return *site.plugin<power::PowerStage>("pv")->vehicle().soc_percent; });
    EXPECT_NEAR(soc, soc_at_stop, 1e-9) << "a new vehicle would be at 20 %";
    spdlog::drop("power:sim-power:pv");
  }
  ASSERT_TRUE(fs::exists(file)) << "stopped again with the vehicle plugged in";
  {  // back after 20 minutes, longer than the driver waits: nobody is there
    SimSite site(yaml(600, -1), dir, t0 + 30min);
    ASSERT_TRUE(site.ok());
    Events ev;
    site.on_strand([&] { site.plugin<power::PowerStage>("pv")->set_event_sink(ev.sink()); });
    std::this_thread::sleep_for(50ms);  // 50 s of the site's time: far past ev_ready_delay_ms
    EXPECT_TRUE(ev.kinds().empty());
    EXPECT_FALSE(site.on_strand([&] { return site.plugin<power::PowerStage>("pv")->vehicle().soc_percent.has_value(); }));
    EXPECT_FALSE(fs::exists(file)) << "read once, at the start";
  }
  // A file the stage did not write plugs nothing in.
  fs::create_directories(file.parent_path());
  std::ofstream(file) << "pilecore-vehicle v1 state=9 battery_wh=1 battery_mc=0 at_ms=0 due_ms=0\n";
  {
    SimSite site(yaml(600, -1), dir, t0 + 31min);
    ASSERT_TRUE(site.ok());
    EXPECT_FALSE(site.on_strand([&] { return site.plugin<power::PowerStage>("pv")->vehicle().soc_percent.has_value(); }));
    EXPECT_FALSE(fs::exists(file));
  }
  // Stopped at 08:40 with no vehicle; a vehicle due at 08:45 comes while the pile is down and
  // its driver waits: the 08:50 start finds it plugged in. One due at 08:35, before the stop, came
  // and went while the pile ran.
  const auto instant = [](std::chrono::minutes m) { return fmt::format("2026-03-01T08:{:02}:00Z", m.count()); };  // t0 + m
  // (The 08:45 arrival is armed at the stop: the stop keeps it as still due, which it is also
  // when a stop keeps the strand too busy to run a timer that is already due.)
  { SimSite site(yaml(600, -1, fmt::format("[\"{}\"]", instant(45min))), dir, t0 + 40min); }
  ASSERT_TRUE(fs::exists(file)) << "the stop's instant is kept with no vehicle too";
  {
    std::ifstream in(file);
    std::string text;
    std::getline(in, text);
    EXPECT_NE(text.find(fmt::format("due_ms={}", std::chrono::duration_cast<std::chrono::milliseconds>((t0 + 45min).time_since_epoch()).count())),
              std::string::npos)
        << text;
  }
  {
    SimSite site(yaml(600, -1, fmt::format("[\"{}\", \"{}\"]", instant(35min), instant(45min))), dir, t0 + 50min);
    ASSERT_TRUE(site.ok());
    Events ev;
    site.on_strand([&] { site.plugin<power::PowerStage>("pv")->set_event_sink(ev.sink()); });
    ASSERT_TRUE(ev.wait_for(power::Event::ev_ready));
    EXPECT_NEAR(site.on_strand([&] { return *site.plugin<power::PowerStage>("pv")->vehicle().soc_percent; }), 20.0, 1e-9) << "a new vehicle";
  }
  // After a crash (no stop, so no file), the 08:45 vehicle is not made up.
  fs::remove(file);
  {
    SimSite site(yaml(600, -1, fmt::format("[\"{}\"]", instant(45min))), dir, t0 + 50min);
    ASSERT_TRUE(site.ok());
    std::this_thread::sleep_for(50ms);
    EXPECT_FALSE(site.on_strand([&] { return site.plugin<power::PowerStage>("pv")->vehicle().soc_percent.has_value(); }));
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
}

/// Runs the site in `dir`/site.yaml once, expecting the start-up to fail: its start error.
std::string start_error_of(const fs::path& dir) {
  PluginRegistry registry({PILECORE_PLUGIN_DIR});
  auto outcome = load_site(dir / "site.yaml", registry);
  if (!outcome.site) return "invalid site: " + outcome.diagnostics.format();
  RuntimeOptions options;
  options.state_dir = dir / "state";
  options.clock = std::make_shared<ScaledClock>(TimePoint{std::chrono::sys_days{std::chrono::year{2026} / 3 / 1}}, kSpeed);
  options.status_interval = Duration{0};
  options.notify_systemd = false;
  Runtime rt(std::move(*outcome.site), std::move(options));
  const int rc = rt.run();
  return rc == 3 ? rt.start_error() : fmt::format("the runtime exited with {}, not 3", rc);
}

TEST(SimPower, RefusesAnInstantItCannotRead) {
  const fs::path dir = fs::temp_directory_path() / fmt::format("pilecore-sim-bad-instant-{}", ::getpid());
  fs::create_directories(dir);
  std::ofstream(dir / "site.yaml") << R"(site: {id: BAD, name: Bad instant, location: {lat: 31.2, lon: 121.4}, timezone: Asia/Shanghai}
connectors: [{id: 1, type: gbt-dc, max_power_w: 60000}]
plugins:
  p6: {plugin: sim-power, connector: 1, config: {arrive_at: ["2026-03-01 08:00"]}}
)";
  const std::string error = start_error_of(dir);
  EXPECT_NE(error.find("arrive_at: '2026-03-01 08:00' is not an RFC 3339 instant"), std::string::npos) << error;
  std::error_code ec;
  fs::remove_all(dir, ec);
}

TEST(SimPower, MeterRegisterIsNonVolatileAcrossRestarts) {
  const fs::path dir = fs::temp_directory_path() / fmt::format("pilecore-sim-meter-register-{}", ::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path reg = dir / "state" / "plugins" / "pm" / "energy_import.register";

  // A new meter starts at meter_start_wh and charges.
  const auto first = charge_once(dir, 1000, 300);
  ASSERT_FALSE(first.empty());
  EXPECT_EQ(first.front(), 1000);
  EXPECT_GE(first.back(), 1300);
  const double stored = register_file_wh(reg);
  EXPECT_GE(stored, first.back()) << "stop persists the energy delivered up to the stop";
  EXPECT_FALSE(fs::exists(reg.string() + ".tmp")) << "no temporary file left behind";

  // The next daemon on the same state directory continues the register; meter_start_wh is only
  // for a new meter.
  const auto second = charge_once(dir, 5, 300);
  ASSERT_FALSE(second.empty());
  EXPECT_EQ(second.front(), stored) << "the register continues where it stopped";
  EXPECT_GE(second.back(), stored + 300);
  EXPECT_TRUE(std::is_sorted(second.begin(), second.end()));
  EXPECT_GE(register_file_wh(reg), second.back());

  // A register file that cannot be trusted stops the start-up instead of resetting the meter.
  std::ofstream(reg) << "energy_import_wh twelve\n";
  const std::string error = start_error_of(dir);
  EXPECT_NE(error.find("is corrupt"), std::string::npos) << error;
  EXPECT_NE(error.find("energy_import.register"), std::string::npos) << error;
  std::error_code ec;
  fs::remove_all(dir, ec);
}
