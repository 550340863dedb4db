// reader-nfc through libnfc's real pn532_uart driver, against the PN532 emulator on a
// pseudo-terminal (tests/sim/pn532). Nothing between the plugin and the emulator is mocked: the
// bytes libnfc writes to /dev/pts/N are the PN532 frames a reader on a serial line gets.
//
// The plugin is loaded by the real loader and its configuration validated by the real site
// parser. Most tests then run it under StrandHost, a host that does what the SDK promises (one
// strand thread for every call and post, post never inline, nothing after stop) and records what
// the plugin presents, raises and logs: the core keeps a presented token's Exchange for the payment
// method, so a test needs to hold it itself to talk to the card. The last test runs the real
// pilecored: a tap at connector 1's reader starts a session there.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <termios.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cards.hpp"
#include "member_cards.hpp"
#include "clocks.hpp"
#include "pilecore/pilecore.hpp"
#include "plugin_loader.hpp"
#include "pn532_emulator.hpp"
#include "site_config.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace std::chrono_literals;
using pilecore::sim::ApduCard;
using pilecore::sim::from_hex;
using pilecore::sim::MemberCard;
using pilecore::sim::Pn532Emulator;
using pilecore::test::eventually;
using pilecore::test::TempDir;
namespace fs = std::filesystem;

namespace {

using Bytes = std::vector<std::uint8_t>;
using Aids = std::vector<Bytes>;

// ---------------------------------------------------------------------------------------------
// a host for one plugin instance

class RecordingLogger final : public Logger {
 public:
  void write(LogLevel, std::string_view message) noexcept override {
    std::lock_guard lock(mutex_);
    lines_.emplace_back(message);
  }
  [[nodiscard]] bool enabled(LogLevel) const noexcept override { return true; }
  std::vector<std::string> lines() {
    std::lock_guard lock(mutex_);
    return lines_;
  }

 private:
  std::mutex mutex_;
  std::vector<std::string> lines_;
};

/// What the SDK promises a plugin, on one strand thread; records presents, alarms and states.
class StrandHost final : public Host {
 public:
  explicit StrandHost(const core::InstanceSpec& spec) : spec_(spec), thread_([this] { run(); }) {}
  ~StrandHost() override {
    {
      std::lock_guard lock(mutex_);
      done_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  StrandHost(const StrandHost&) = delete;
  StrandHost& operator=(const StrandHost&) = delete;

  [[nodiscard]] std::string_view instance_name() const noexcept override { return spec_.name; }
  [[nodiscard]] std::optional<std::uint32_t> connector() const noexcept override { return spec_.connector; }
  [[nodiscard]] Logger& log() noexcept override { return logger_; }
  [[nodiscard]] const Clock& clock() const noexcept override { return clock_; }
  [[nodiscard]] const ConfigValues& config() const noexcept override { return *spec_.config; }
  [[nodiscard]] std::string_view state_dir() noexcept override { return "/nonexistent"; }
  void post(std::function<void()> fn) noexcept override {
    {
      std::lock_guard lock(mutex_);
      if (!alive_) return;
      queue_.push_back([this, fn = std::move(fn)] {
        if (alive_) fn();  // nothing posted runs once the instance has stopped
      });
    }
    wake_.notify_all();
  }
  TimerId schedule(Duration, std::function<void()>) noexcept override {
    ADD_FAILURE() << "reader-nfc paces its hardware on its own thread; it sets no host timers";
    return 0;
  }
  void cancel(TimerId) noexcept override {}
  void publish(const Sample&) noexcept override { ADD_FAILURE() << "a reader publishes no samples"; }
  void raise(const Alarm& alarm) noexcept override {
    std::lock_guard lock(mutex_);
    alarms_[std::string(alarm.code)] = alarm.active;
  }
  void report_state(std::string_view state, std::string_view) noexcept override {
    std::lock_guard lock(mutex_);
    state_ = state;
  }
  void present(const identification::Token& token) noexcept override {
    std::lock_guard lock(mutex_);
    tokens_.push_back(token);
  }
  void upload(const UplinkRecord&, UploadCallback) noexcept override { ADD_FAILURE() << "a reader uploads no records"; }

  /// Runs `fn` on the strand and waits for it.
  template <class F>
  auto on_strand(F fn) -> decltype(fn()) {
    std::packaged_task<decltype(fn())()> task(std::move(fn));
    auto f = task.get_future();
    {
      std::lock_guard lock(mutex_);
      queue_.push_back([&task] { task(); });
    }
    wake_.notify_all();
    return f.get();
  }
  void mark_stopped() {
    on_strand([this] { alive_ = false; });
  }

  std::vector<identification::Token> tokens() {
    std::lock_guard lock(mutex_);
    return tokens_;
  }
  std::optional<bool> alarm(const std::string& code) {
    std::lock_guard lock(mutex_);
    auto it = alarms_.find(code);
    return it == alarms_.end() ? std::nullopt : std::optional<bool>(it->second);
  }
  std::string state() {
    std::lock_guard lock(mutex_);
    return state_;
  }
  std::vector<std::string> log_lines() { return logger_.lines(); }

 private:
  void run() {
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [this] { return done_ || !queue_.empty(); });
        if (queue_.empty()) return;
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      fn();
    }
  }

  const core::InstanceSpec& spec_;
  RecordingLogger logger_;
  core::SystemClock clock_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
  bool done_ = false;
  std::atomic<bool> alive_{true};
  std::vector<identification::Token> tokens_;
  std::map<std::string, bool> alarms_;
  std::string state_;
  std::thread thread_;
};

std::string reader_site(const std::string& device, const std::string& extra_config) {
  return R"(site: {id: NFC-1, name: Reader test, location: {lat: 31.2, lon: 121.5}, timezone: Asia/Shanghai}
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
  reader:
    plugin: reader-nfc
    connector: 1
    config: {device: ")" +
         device + R"(", poll_ms: 20, exchange_timeout_ms: 5000, reopen_min_ms: 20, reopen_max_ms: 200)" + extra_config + "}\n";
}

/// One reader-nfc instance, created by its own descriptor with a configuration the real site
/// parser validated, running under a StrandHost.
class Reader {
 public:
  Reader(const std::string& device, const std::string& extra_config = "") : registry_({PILECORE_PLUGIN_DIR}) {
    auto outcome = core::load_site_text(reader_site(device, extra_config), "site.yaml", registry_);
    if (!outcome.site) throw std::runtime_error(outcome.diagnostics.format());
    site_ = std::move(*outcome.site);
    for (const auto& i : site_.instances) {
      if (i.name == "reader") spec_ = i;
    }
    host_ = std::make_unique<StrandHost>(spec_);
    const auto* d = spec_.loaded->descriptor;
    std::string error;
    plugin_ = host_->on_strand([&] { return d->create(*host_, &error); });
    if (plugin_ == nullptr) throw std::runtime_error(error);
    const Status s = host_->on_strand([&] { return plugin_->start(); });
    if (!s.ok()) throw std::runtime_error(s.message());
  }
  ~Reader() { stop(); }
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  void stop() {
    if (plugin_ == nullptr) return;
    host_->mark_stopped();
    host_->on_strand([this] {
      plugin_->stop();
      spec_.loaded->descriptor->destroy(plugin_);
    });
    plugin_ = nullptr;
  }
  StrandHost& host() { return *host_; }

  /// Sends one APDU on the strand, as a payment method does, and waits for the answer.
  std::pair<Status, Bytes> transceive(const std::shared_ptr<identification::Exchange>& x, const Bytes& apdu) {
    auto p = std::make_shared<std::promise<std::pair<Status, Bytes>>>();
    auto f = p->get_future();
    host_->on_strand([&] {
      x->transceive(apdu, [p](Status st, Bytes r) { p->set_value({std::move(st), std::move(r)}); });
    });
    if (f.wait_for(10s) != std::future_status::ready) return {Status::error(StatusCode::timeout, "no answer within 10 s"), {}};
    return f.get();
  }
  bool present(const std::shared_ptr<identification::Exchange>& x) {
    return host_->on_strand([&] { return x->present(); });
  }

 private:
  core::PluginRegistry registry_;
  core::SiteConfig site_;
  core::InstanceSpec spec_;
  std::unique_ptr<StrandHost> host_;
  Plugin* plugin_ = nullptr;
};

std::optional<std::string_view> evidence(const identification::Token& t, std::string_view key) { return t.find(key); }

const Bytes kPayAid = from_hex("A000000333010101");
Bytes select(const Bytes& aid) {
  Bytes c = {0x00, 0xA4, 0x04, 0x00, static_cast<std::uint8_t>(aid.size())};
  c.insert(c.end(), aid.begin(), aid.end());
  c.push_back(0x00);
  return c;
}

/// A card with the payment AID whose GET DATA (80 CA 9F 7F) answers a serial number.
std::shared_ptr<ApduCard> apdu_card(const std::string& uid) {
  return std::make_shared<ApduCard>(from_hex(uid), Aids{kPayAid}, [](std::span<const std::uint8_t> aid, std::span<const std::uint8_t> cmd) -> std::optional<Bytes> {
    if (!aid.empty() && cmd.size() >= 4 && cmd[0] == 0x80 && cmd[1] == 0xCA && cmd[2] == 0x9F && cmd[3] == 0x7F) return from_hex("0102030405069000");
    return std::nullopt;
  });
}

}  // namespace

// ---------------------------------------------------------------------------------------------

TEST(ReaderNfc, ATapPresentsOneTokenWithTheUidAndATargetThatStaysIsNotPresentedAgain) {
  Pn532Emulator pn532;
  Reader reader(pn532.connstring());
  ASSERT_TRUE(eventually([&] { return reader.host().state() == "up"; })) << reader.host().state();

  pn532.place(std::make_shared<MemberCard>(from_hex("04A1B2C3")));
  ASSERT_TRUE(eventually([&] { return reader.host().tokens().size() == 1; }));
  const auto t = reader.host().tokens()[0];
  EXPECT_EQ(t.type, "card");
  EXPECT_EQ(t.id, "04a1b2c3");
  EXPECT_EQ(t.connector, std::optional<std::uint32_t>(1));
  EXPECT_EQ(evidence(t, "atqa"), "0004");
  EXPECT_EQ(evidence(t, "sak"), "08");
  EXPECT_EQ(evidence(t, "ats"), std::nullopt);
  EXPECT_NE(t.exchange, nullptr) << "a MIFARE Classic card takes MIFARE frames (AUTH, READ) through the exchange";

  // libnfc checks a MIFARE Classic card's presence by selecting it again by UID: let it do so
  // several times; the card is still presented once.
  const unsigned lists = pn532.count(0x4A);
  ASSERT_TRUE(eventually([&] { return pn532.count(0x4A) >= lists + 5; }));
  EXPECT_EQ(reader.host().tokens().size(), 1u);

  // Taken away and tapped again: presented again. Another card: its own UID (7 bytes).
  pn532.remove();
  const unsigned after_remove = pn532.count(0x4A);
  ASSERT_TRUE(eventually([&] { return pn532.count(0x4A) >= after_remove + 3; }));  // polls with no card
  pn532.place(std::make_shared<MemberCard>(from_hex("04A1B2C3")));
  ASSERT_TRUE(eventually([&] { return reader.host().tokens().size() == 2; }));
  pn532.place(std::make_shared<MemberCard>(from_hex("04112233445566")));
  ASSERT_TRUE(eventually([&] { return reader.host().tokens().size() == 3; }));
  EXPECT_EQ(reader.host().tokens()[1].id, "04a1b2c3");
  EXPECT_EQ(reader.host().tokens()[2].id, "04112233445566");
  EXPECT_EQ(evidence(reader.host().tokens()[2], "atqa"), "0044");

  // The UIDs are personal data: the log says what came, never which.
  for (const auto& l : reader.host().log_lines()) {
    EXPECT_EQ(l.find("04a1b2c3"), std::string::npos) << l;
    EXPECT_EQ(l.find("04112233445566"), std::string::npos) << l;
  }
  EXPECT_EQ(pn532.stats().unknown_commands, 0u) << "libnfc sent a command the emulator does not know";
  EXPECT_EQ(pn532.stats().checksum_errors, 0u);
}

TEST(ReaderNfc, AnApduExchangeRoundTripsWhileTheCardStaysAndAnswersUnavailableOnceItHasLeft) {
  Pn532Emulator pn532;
  Reader reader(pn532.connstring());
  auto card = apdu_card("08123456");
  pn532.place(card);
  ASSERT_TRUE(eventually([&] { return reader.host().tokens().size() == 1; }));
  const auto t = reader.host().tokens()[0];
  EXPECT_EQ(t.type, "card") << "no wallet AIDs are configured";
  EXPECT_EQ(evidence(t, "sak"), "20");
  EXPECT_EQ(evidence(t, "ats"), "7577810280");
  ASSERT_NE(t.exchange, nullptr);
  EXPECT_TRUE(reader.present(t.exchange));

  auto [st1, r1] = reader.transceive(t.exchange, select(kPayAid));
  ASSERT_TRUE(st1.ok()) << st1.message();
  EXPECT_EQ(r1, (Bytes{0x90, 0x00}));
  auto [st2, r2] = reader.transceive(t.exchange, {0x80, 0xCA, 0x9F, 0x7F, 0x00});
  ASSERT_TRUE(st2.ok()) << st2.message();
  EXPECT_EQ(r2, from_hex("0102030405069000"));
  auto [st3, r3] = reader.transceive(t.exchange, select(from_hex("A0000000041010")));
  EXPECT_EQ(r3, (Bytes{0x6A, 0x82})) << "an application the card does not have";

  // The longest short-APDU answer (256 bytes and SW1 SW2) comes back whole, in an extended
  // frame; so does a command long enough to need one. An answer longer than libnfc takes fails
  // that exchange, and the card stays usable.
  auto long_card = std::make_shared<ApduCard>(from_hex("08654321"), Aids{kPayAid},
                                              [](std::span<const std::uint8_t>, std::span<const std::uint8_t> cmd) -> std::optional<Bytes> {
                                                Bytes r(cmd[1] == 0x10 ? 256 : 400, cmd[1]);
                                                r.insert(r.end(), {0x90, 0x00});
                                                return r;
                                              });
  pn532.place(long_card);
  ASSERT_TRUE(eventually([&] { return !reader.present(t.exchange); })) << "the first card was replaced";
  auto [st4, r4] = reader.transceive(t.exchange, select(kPayAid));
  EXPECT_EQ(st4.code(), StatusCode::unavailable) << "every transceive after the card left answers unavailable";
  ASSERT_TRUE(eventually([&] { return reader.host().tokens().size() == 2; }));
  const auto t2 = reader.host().tokens()[1];
  Bytes command(250, 0x11);
  command.insert(command.begin(), {0x80, 0x10, 0x00, 0x00, 0xFA});
  auto [st5, r5] = reader.transceive(t2.exchange, command);
  ASSERT_TRUE(st5.ok()) << st5.message();
  ASSERT_EQ(r5.size(), 258u);
  EXPECT_EQ(r5[255], 0x10);
  EXPECT_EQ(r5[257], 0x00);
  auto [st6, r6] = reader.transceive(t2.exchange, {0x80, 0x12, 0x00, 0x00, 0x00});
  EXPECT_EQ(st6.code(), StatusCode::failed) << st6.message();
  EXPECT_TRUE(reader.present(t2.exchange));
  auto [st7, r7] = reader.transceive(t2.exchange, command);
  EXPECT_TRUE(st7.ok()) << st7.message();
  EXPECT_EQ(reader.host().tokens().size(), 2u) << "the card never left";
  EXPECT_GE(pn532.stats().extended_frames, 1u);
  EXPECT_EQ(pn532.stats().unknown_commands, 0u);
}

// A MIFARE Classic member card: its AUTH and READ frames go through the exchange (the PN532's
// InDataExchange runs the Crypto1 handshake on chip); a wrong key is refused by the card, which
// the reader answers as a failed exchange while the card stays usable.
TEST(ReaderNfc, MifareClassicFramesPassThroughTheExchangeAndAWrongKeyIsRefused) {
  Pn532Emulator pn532;
  Reader reader(pn532.connstring());
  auto card = std::make_shared<pilecore::sim::MifareClassicCard>(from_hex("04A1B2C3"));
  card->set_keys(2, {0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5}, {0xB0, 0xB1, 0xB2, 0xB3, 0xB4, 0xB5});
  card->write_text(8, "M0001234");
  pn532.place(card);
  ASSERT_TRUE(eventually([&] { return reader.host().tokens().size() == 1; }));
  const auto x = reader.host().tokens()[0].exchange;
  ASSERT_NE(x, nullptr);
  const Bytes auth_a = {0x60, 8, 0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0x04, 0xA1, 0xB2, 0xC3};
  auto [st1, r1] = reader.transceive(x, auth_a);
  ASSERT_TRUE(st1.ok()) << st1.message();
  EXPECT_TRUE(r1.empty());
  auto [st2, r2] = reader.transceive(x, {0x30, 8});
  ASSERT_TRUE(st2.ok()) << st2.message();
  ASSERT_EQ(r2.size(), 16u);
  EXPECT_EQ(std::string(r2.begin(), r2.begin() + 8), "M0001234");

  const Bytes wrong = {0x61, 8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x04, 0xA1, 0xB2, 0xC3};
  auto [st3, r3] = reader.transceive(x, wrong);
  EXPECT_FALSE(st3.ok());
  EXPECT_EQ(st3.code(), StatusCode::failed) << st3.message();
  EXPECT_EQ(card->refused_auths(), 1u);
  EXPECT_TRUE(reader.present(x)) << "a refused key does not take the card out of the field";
  auto [st4, r4] = reader.transceive(x, auth_a);
  EXPECT_TRUE(st4.ok()) << "selected again, the card takes the right key: " << st4.message();
  EXPECT_EQ(reader.host().tokens().size(), 1u);
}

TEST(ReaderNfc, ACardLeavingMidExchangeAnswersUnavailableAndTheReaderGoesOn) {
  Pn532Emulator pn532;
  Reader reader(pn532.connstring());
  std::promise<void> entered, release;
  auto released = release.get_future().share();
  std::atomic<bool> first{true};
  auto slow = std::make_shared<ApduCard>(from_hex("08AABBCC"), Aids{kPayAid},
                                         [&](std::span<const std::uint8_t>, std::span<const std::uint8_t>) -> std::optional<Bytes> {
                                           if (first.exchange(false)) {
                                             entered.set_value();
                                             released.wait();  // the holder pulls the card away now
                                           }
                                           return Bytes{0x90, 0x00};
                                         });
  pn532.place(slow);
  ASSERT_TRUE(eventually([&] { return reader.host().tokens().size() == 1; }));
  const auto x = reader.host().tokens()[0].exchange;
  ASSERT_NE(x, nullptr);

  auto p = std::make_shared<std::promise<std::pair<Status, Bytes>>>();
  auto answered = p->get_future();
  reader.host().on_strand([&] { x->transceive(Bytes{0x80, 0x20, 0x00, 0x00, 0x00}, [p](Status st, Bytes r) { p->set_value({st, r}); }); });
  ASSERT_EQ(entered.get_future().wait_for(10s), std::future_status::ready);
  pn532.remove();
  release.set_value();
  ASSERT_EQ(answered.wait_for(10s), std::future_status::ready);
  const auto [st, r] = answered.get();
  EXPECT_EQ(st.code(), StatusCode::unavailable) << st.message();
  EXPECT_TRUE(r.empty());
  EXPECT_TRUE(eventually([&] { return !reader.present(x); }));

  // The reader goes on: the next tap is presented and answers.
  pn532.place(apdu_card("08DDEEFF"));
  ASSERT_TRUE(eventually([&] { return reader.host().tokens().size() == 2; }));
  auto [st2, r2] = reader.transceive(reader.host().tokens()[1].exchange, select(kPayAid));
  ASSERT_TRUE(st2.ok()) << st2.message();
  EXPECT_EQ(r2, (Bytes{0x90, 0x00}));
  EXPECT_EQ(reader.host().alarm("reader.unavailable"), std::nullopt) << "a card leaving is no reader fault";
}

TEST(ReaderNfc, ATargetThatSelectsAWalletAidIsPresentedAsAWallet) {
  Pn532Emulator pn532;
  Reader reader(pn532.connstring(), ", wallet_aids: [D156000001E0C3, A000000333010101]");
  pn532.place(apdu_card("08000001"));  // has A000000333010101
  ASSERT_TRUE(eventually([&] { return reader.host().tokens().size() == 1; }));
  EXPECT_EQ(reader.host().tokens()[0].type, "wallet");
  pn532.place(std::make_shared<ApduCard>(from_hex("08000002"), Aids{from_hex("A0000000041010")}));
  ASSERT_TRUE(eventually([&] { return reader.host().tokens().size() == 2; }));
  EXPECT_EQ(reader.host().tokens()[1].type, "card");
  pn532.place(std::make_shared<MemberCard>(from_hex("11223344")));
  ASSERT_TRUE(eventually([&] { return reader.host().tokens().size() == 3; }));
  EXPECT_EQ(reader.host().tokens()[2].type, "card") << "a card without ISO 14443-4 is never asked";
}

TEST(ReaderNfc, AReaderThatDisappearsRaisesAnAlarmAndIsReopenedWhenItComesBack) {
  TempDir dir;
  const fs::path link = dir.path() / "nfc0";
  auto pn532 = std::make_unique<Pn532Emulator>(sim::Pn532Options{.link = link, .log = {}});
  Reader reader("pn532_uart:" + link.string());
  ASSERT_TRUE(eventually([&] { return reader.host().state() == "up"; }));
  EXPECT_EQ(reader.host().alarm("reader.unavailable"), std::nullopt);

  pn532.reset();  // the serial line is gone
  ASSERT_TRUE(eventually([&] { return reader.host().alarm("reader.unavailable") == true; }));
  EXPECT_EQ(reader.host().state(), "down");

  pn532 = std::make_unique<Pn532Emulator>(sim::Pn532Options{.link = link, .log = {}});
  ASSERT_TRUE(eventually([&] { return reader.host().alarm("reader.unavailable") == false; })) << "cleared once reopened";
  EXPECT_EQ(reader.host().state(), "up");
  pn532->place(std::make_shared<MemberCard>(from_hex("04A1B2C3")));
  ASSERT_TRUE(eventually([&] { return reader.host().tokens().size() == 1; }));
}

TEST(ReaderNfc, AnExchangeKeptAfterTheReaderStoppedAnswersUnavailable) {
  Pn532Emulator pn532;
  auto reader = std::make_unique<Reader>(pn532.connstring());
  pn532.place(apdu_card("08123456"));
  ASSERT_TRUE(eventually([&] { return reader->host().tokens().size() == 1; }));
  const auto x = reader->host().tokens()[0].exchange;
  reader->stop();
  // The payment method may keep the Exchange longer than the reader lives.
  reader.reset();
  std::optional<Status> got;
  x->transceive(select(kPayAid), [&](Status st, Bytes) { got = st; });
  ASSERT_TRUE(got.has_value()) << "answered at once: nothing is left to answer later";
  EXPECT_EQ(got->code(), StatusCode::unavailable);
  EXPECT_FALSE(x->present());
}

TEST(ReaderNfc, ConfigurationMistakesAreReportedBeforeAnythingStarts) {
  core::PluginRegistry registry({PILECORE_PLUGIN_DIR});
  const auto out = core::load_site_text(reader_site("/dev/ttyS1", ", wallet_aids: [A0000003, zz]"), "site.yaml", registry);
  ASSERT_FALSE(out.site.has_value());
  const std::string text = out.diagnostics.format();
  EXPECT_NE(text.find("device '/dev/ttyS1' is not a libnfc connection string"), std::string::npos) << text;
  EXPECT_NE(text.find("'A0000003' is not an AID"), std::string::npos) << text;
  EXPECT_NE(text.find("'zz' is not an AID"), std::string::npos) << text;
}

// The proximity trigger end to end: the real pilecored loads reader-nfc for connector 1, libnfc
// opens the emulated PN532, a vehicle is plugged in, and a member card held at the reader starts a
// session on connector 1 through the payment method the site binds "card" tokens to.
TEST(ReaderNfc, ATapAtAConnectorsReaderStartsASessionThereInPilecored) {
  using pilecore::test::Child;
  using pilecore::test::NotifyListener;
  using pilecore::test::run_process;
  TempDir dir;
  Pn532Emulator pn532;
  const fs::path state = dir.path() / "state";
  const std::string site = R"(site: {id: NFC-2, name: Tap test, location: {lat: 31.2, lon: 121.5}, timezone: Asia/Shanghai}
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
  - {id: 2, type: gbt-dc, max_power_w: 60000}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
    config: {arrive_after_s: 0, ev_ready_delay_ms: 0, battery_capacity_wh: 200000, initial_soc_pct: 10, tick_ms: 1000}
  power-2:
    plugin: sim-power
    connector: 2
    config: {arrive_after_s: 0, ev_ready_delay_ms: 0, battery_capacity_wh: 200000, initial_soc_pct: 10, tick_ms: 1000}
  reader-1:
    plugin: reader-nfc
    connector: 1
    config: {device: ")" + pn532.connstring() + R"(", poll_ms: 50}
  sim:
    plugin: sim-payment
    config: {latency_ms: 0, token_types: [card]}
tariffs:
  decimals: 2
  plans:
    all:
      prices: {flat: {electricity: 69.50, service: 80.00}}
      periods: [{from: "00:00", to: "24:00", type: flat}]
  week: {mon: all, tue: all, wed: all, thu: all, fri: all, sat: all, sun: all}
payment:
  preauth_fen: 30000
  tokens: {card: {method: sim}}
)";
  NotifyListener notify(dir.path() / "notify.sock");
  Child daemon({std::string(PILECORE_BIN_DIR) + "/pilecored", "--config", dir.write("site.yaml", site).string(), "--state-dir", state.string(),
                "--plugin-dir", PILECORE_PLUGIN_DIR, "--status-interval", "0"},
               {notify.env()});
  ASSERT_TRUE(notify.wait_for("READY=1", std::chrono::seconds(20))) << daemon.stderr_text();
  auto status = [&] {
    const auto r = run_process({std::string(PILECORE_BIN_DIR) + "/pilectl", "status", "--json", "--state-dir", state.string()});
    return r.exit_code == 0 ? nlohmann::json::parse(r.out) : nlohmann::json::object();
  };
  auto connector = [&](int id) {
    for (const auto& c : status().value("connectors", nlohmann::json::array())) {
      if (c.value("id", 0) == id) return c;
    }
    return nlohmann::json::object();
  };
  ASSERT_TRUE(eventually([&] { return connector(1).value("status", "") == "Preparing"; }, 20s)) << status().dump(2);

  pn532.place(std::make_shared<MemberCard>(from_hex("04C0FFEE")));
  ASSERT_TRUE(eventually([&] { return connector(1).value("status", "") == "Charging"; }, 20s)) << status().dump(2);
  EXPECT_EQ(connector(1)["session"].value("method", ""), "sim");
  EXPECT_EQ(connector(2).value("status", ""), "Preparing") << "the tap was at connector 1's reader";

  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.wait(), 0) << daemon.stderr_text();
  const std::string log = daemon.stderr_text();
  EXPECT_NE(log.find("a card entered the field (4-byte UID, ATQA 0004, SAK 08, MIFARE frames offered)"), std::string::npos) << log;
  EXPECT_EQ(log.find("04c0ffee"), std::string::npos) << "the card's UID is never logged in clear";
}
