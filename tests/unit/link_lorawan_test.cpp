// link-lorawan against the RAK3172 (RUI3) simulator on a pseudo-terminal (tests/sim/lorawan).
// Nothing between the plugin and the simulator is mocked: the plugin opens /dev/pts/N, sets it
// raw and speaks AT commands to a module that answers as the RUI3 manual says.
//
// The plugin is loaded by the real loader and its configuration checked by the real validator
// (PluginHost). Host time is a manual clock: join backoff and the EU868 duty cycle run on it, so a
// 40-second backoff or a 70-second off time costs nothing; the serial exchanges are real time.
#include <gtest/gtest.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "airtime.hpp"
#include "pilecore/pilecore.hpp"
#include "plugin_host.hpp"
#include "rak3172_sim.hpp"
#include "rui3.hpp"
#include "site_config.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace std::chrono_literals;
using pilecore::sim::Rak3172Sim;
using pilecore::test::PluginHost;
using pilecore::test::TempDir;
namespace lw = pilecore::lorawan;

namespace {

using Bytes = std::vector<std::uint8_t>;

constexpr const char* kAppKey = "2B7E151628AED2A6ABF7158809CF4F3C";
const std::string kPlugin = std::string(PILECORE_PLUGIN_DIR) + "/link-lorawan.so";

std::string config(const Rak3172Sim& module, const std::string& extra = "") {
  return "{device: " + module.device() + ", dev_eui: 70B3D57ED0000001, app_eui: '0000000000000001', app_key: " + kAppKey +
         ", join_retry_min_s: 10, join_retry_max_s: 40, command_timeout_ms: 1000, join_timeout_ms: 3000, send_timeout_ms: 3000,"
         " rx_linger_ms: 50, reopen_min_ms: 20, reopen_max_ms: 100" +
         extra + "}";
}

/// A frame of `n` bytes (its content does not matter to the link).
Bytes frame(std::size_t n, std::uint8_t fill = 0x10) { return Bytes(n, fill); }

struct Fixture {
  explicit Fixture(const std::string& extra = "") : host(kPlugin, config(module, extra), dir.path() / "state") {}
  Rak3172Sim module;
  TempDir dir;
  PluginHost host;
  link::Link* link = nullptr;
  std::vector<Bytes> received;

  link::Link& start() {
    link = &host.create<link::Link>();
    link->set_receiver([this](std::span<const std::uint8_t> f) { received.emplace_back(f.begin(), f.end()); });
    return *link;
  }
  bool up() {
    return host.run_until([&] { return link->state() == link::State::up; });
  }
  Status send(const Bytes& f, link::TrafficClass cls = link::TrafficClass::telemetry) {
    std::optional<Status> result;
    link->send(f, cls, [&](Status s) { result = std::move(s); });
    if (!host.run_until([&] { return result.has_value(); })) return Status::error(StatusCode::timeout, "the test got no answer in 10 s");
    return *result;
  }
  std::string last_state() const { return host.states.empty() ? "" : host.states.back().first; }
  std::optional<bool> alarm(const std::string& code) const {
    std::optional<bool> v;
    for (const auto& [severity, c, message, active] : host.alarms) {
      if (c == code) v = active;
    }
    return v;
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// the arithmetic (DOMAIN.md section 5)

TEST(LorawanAirtime, MatchesTheWorkedExamplesAndTheRegionalTables) {
  EXPECT_EQ(lw::time_on_air_us(11, 12) / 1000, 1482);  // 1483 ms rounded in DOMAIN.md
  EXPECT_EQ(lw::time_on_air_us(51, 12) / 1000, 2793);
  EXPECT_EQ(lw::time_on_air_us(11, 9) / 1000, 205);
  EXPECT_EQ(lw::min_interval_us(lw::Region::eu868, lw::time_on_air_us(11, 12)) / 1000000, 148);  // 1483 ms + 147 s off
  EXPECT_EQ(lw::min_interval_us(lw::Region::cn470, 500000), 500000) << "CN470 has no duty cycle";
  EXPECT_EQ(lw::max_payload(lw::Region::eu868, 2), 51u);
  EXPECT_EQ(lw::max_payload(lw::Region::cn470, 1, lw::Cn470Table::lorawan104), 23u);
  EXPECT_EQ(lw::max_payload(lw::Region::cn470, 0, lw::Cn470Table::lorawan104), 0u);
  // CN470's 1 s per transmission: SF11 carries only 23 of the table's 51 bytes, SF12 nothing.
  EXPECT_EQ(lw::usable_payload(lw::Region::cn470, 1), 23u);
  EXPECT_LE(lw::time_on_air_us(23, 11), 1000000);
  EXPECT_GT(lw::time_on_air_us(24, 11), 1000000);
  EXPECT_EQ(lw::usable_payload(lw::Region::cn470, 0), 0u);
  EXPECT_EQ(lw::usable_payload(lw::Region::eu868, 0), 51u) << "EU868 has no dwell limit";
}

TEST(LorawanRui3, ClassifiesTheModulesLines) {
  namespace r = lw::rui3;
  EXPECT_EQ(r::classify("OK").kind, r::Kind::ok);
  EXPECT_EQ(r::classify("AT_BUSY_ERROR").text, "AT_BUSY_ERROR");
  EXPECT_EQ(r::classify("AT_NO_NETWORK_JOINED").kind, r::Kind::error);
  EXPECT_EQ(r::classify("AT+DR=3").text, "3");
  EXPECT_EQ(r::classify("+EVT:JOINED").kind, r::Kind::joined);
  EXPECT_EQ(r::classify("+EVT:JOIN_FAILED_RX_TIMEOUT").kind, r::Kind::join_failed);
  EXPECT_EQ(r::classify("+EVT:SEND CONFIRMED OK").kind, r::Kind::confirmed_ok) << "older RUI3 builds write spaces";
  const auto d = r::classify("+EVT:RX_1:-28:8:UNICAST:2:00000710");
  ASSERT_EQ(d.kind, r::Kind::downlink);
  EXPECT_EQ(d.rssi, -28);
  EXPECT_EQ(d.snr, 8);
  EXPECT_EQ(d.port, 2);
  EXPECT_EQ(d.data, (Bytes{0x00, 0x00, 0x07, 0x10}));
  EXPECT_EQ(r::classify("+EVT:RX_1:-28:8:UNICAST:2:0G").kind, r::Kind::garbage) << "bad hex is not a downlink";
  EXPECT_EQ(r::classify("+EVT:RX_1:-28:UNICAST:2:00").kind, r::Kind::garbage);
  EXPECT_EQ(r::classify("RAKwireless RAK3172 Example").kind, r::Kind::garbage);
}

// ---------------------------------------------------------------------------------------------
// join

TEST(LinkLorawan, JoinsByOtaaRetryingWithADoublingBackoffOnTheHostClock) {
  Fixture f(", region: EU868");
  f.module.fail_joins(2);
  auto& link = f.start();
  EXPECT_NE(link.state(), link::State::up);

  // First attempt fails: down, next attempt in 10 s of host time.
  ASSERT_TRUE(f.host.run_until([&] { return f.host.timers() == 1; }));
  EXPECT_EQ(f.module.join_attempts(), 1u);
  EXPECT_EQ(link.state(), link::State::down);
  EXPECT_EQ(f.last_state(), "down");
  EXPECT_EQ(*f.host.next_timer() - f.host.clock().now(), Duration(10s));
  f.host.advance(10s);
  ASSERT_TRUE(f.host.run_until([&] { return f.module.join_attempts() == 2 && f.host.timers() == 1; }));
  EXPECT_EQ(*f.host.next_timer() - f.host.clock().now(), Duration(20s)) << "the wait doubles";
  f.host.advance(20s);
  ASSERT_TRUE(f.up());
  EXPECT_EQ(f.module.join_attempts(), 3u);
  EXPECT_EQ(f.last_state(), "up");

  // The module was set up for OTAA in EU868 (band 4) with the configured keys.
  EXPECT_EQ(f.module.setting("NWM"), "1");
  EXPECT_EQ(f.module.setting("NJM"), "1");
  EXPECT_EQ(f.module.setting("BAND"), "4");
  EXPECT_EQ(f.module.setting("DEVEUI"), "70B3D57ED0000001");
  EXPECT_EQ(f.module.setting("APPKEY"), kAppKey);
  EXPECT_EQ(f.module.setting("DR"), "2");
  const auto limits = link.limits();
  EXPECT_EQ(limits.mtu, 51u);
  EXPECT_EQ(limits.duty_cycle_ppm, 10000u);
  EXPECT_EQ(limits.max_dwell, Duration(0));
  for (const auto& line : f.host.log_lines) EXPECT_EQ(line.find(kAppKey), std::string::npos) << "the app key is a secret: " << line;
}

TEST(LinkLorawan, Cn470SelectsBandOneAndDeclaresItsOneSecondDwell) {
  Fixture f(", region: CN470");
  auto& link = f.start();
  ASSERT_TRUE(f.up());
  EXPECT_EQ(f.module.setting("BAND"), "1");
  EXPECT_EQ(link.limits().duty_cycle_ppm, 1000000u);
  EXPECT_EQ(link.limits().max_dwell, Duration(1s));
}

// ---------------------------------------------------------------------------------------------
// uplinks and downlinks

TEST(LinkLorawan, AnUnconfirmedUplinkGoesOutOnTheConfiguredPortAsHex) {
  Fixture f(", port: 42");
  f.start();
  ASSERT_TRUE(f.up());
  const Bytes sent = {0x10, 0x05, 0x00, 0x07, 0xAB};
  EXPECT_TRUE(f.send(sent).ok());
  const auto up = f.module.uplinks();
  ASSERT_EQ(up.size(), 1u);
  EXPECT_EQ(up[0].port, 42);
  EXPECT_EQ(up[0].data, sent);
  EXPECT_FALSE(up[0].confirmed);
}

TEST(LinkLorawan, AConfirmedUplinkIsHandedOverOnlyWhenTheNetworkAcknowledgesIt) {
  Fixture f(", confirmed: true");
  f.start();
  ASSERT_TRUE(f.up());
  EXPECT_EQ(f.module.setting("CFM"), "1");
  EXPECT_TRUE(f.send(frame(20)).ok());
  f.module.fail_confirmations(1);
  const Status s = f.send(frame(20));
  EXPECT_EQ(s.code(), StatusCode::unavailable) << s.message();
  EXPECT_NE(std::string(s.message()).find("SEND_CONFIRMED_FAILED"), std::string::npos);
  const auto up = f.module.uplinks();
  ASSERT_EQ(up.size(), 2u);
  EXPECT_TRUE(up[0].confirmed && up[1].confirmed);
  EXPECT_EQ(f.link->state(), link::State::up) << "one lost acknowledgement is not a lost network";
}

TEST(LinkLorawan, ADownlinkInTheReceiveWindowReachesTheReceiver) {
  Fixture f;
  f.start();
  ASSERT_TRUE(f.up());
  const Bytes ack = {0x10, 0x81, 0x00, 0x02, 0xA0, 0x00};
  f.module.queue_downlink(10, ack);
  EXPECT_TRUE(f.send(frame(23)).ok());
  ASSERT_TRUE(f.host.run_until([&] { return !f.received.empty(); }));
  EXPECT_EQ(f.received[0], ack);
  // Nothing queued: no downlink with the next uplink.
  EXPECT_TRUE(f.send(frame(23)).ok());
  EXPECT_EQ(f.received.size(), 1u);
}

// ---------------------------------------------------------------------------------------------
// limits

TEST(LinkLorawan, AFrameOverTheDataRatesPayloadIsRefusedAndNeverReachesTheModule) {
  Fixture f(", region: CN470, cn470_table: lorawan1.0.4, data_rate: 1");
  auto& link = f.start();
  ASSERT_TRUE(f.up());
  EXPECT_EQ(link.limits().mtu, 23u) << "CN470 LoRaWAN 1.0.4 DR1";
  const Status s = f.send(frame(24));
  EXPECT_EQ(s.code(), StatusCode::invalid_argument);
  EXPECT_NE(std::string(s.message()).find("23 B"), std::string::npos) << s.message();
  EXPECT_TRUE(f.module.uplinks().empty());
  // The smallest compact telemetry frame (docs/protocol.md 8.3, 23 bytes) fits.
  EXPECT_TRUE(f.send(frame(23)).ok());
  EXPECT_EQ(f.module.uplinks().size(), 1u);
}

TEST(LinkLorawan, Cn470RefusesAFrameThatWouldBeOnAirForMoreThanOneSecond) {
  // DR1 is SF11: the RP 1.0.2 table allows 51 bytes, but 24 bytes already take 1.07 s.
  Fixture f(", region: CN470, data_rate: 1");
  auto& link = f.start();
  ASSERT_TRUE(f.up());
  EXPECT_EQ(link.limits().mtu, 23u) << "the MTU is the dwell limit's, not the table's 51";
  const Status s = f.send(frame(40));
  EXPECT_EQ(s.code(), StatusCode::invalid_argument);
  EXPECT_NE(std::string(s.message()).find("1000 ms per transmission"), std::string::npos) << s.message();
  EXPECT_TRUE(f.module.uplinks().empty());
  EXPECT_TRUE(f.send(frame(23)).ok());
}

TEST(LinkLorawan, Cn470AtSf12IsRefusedWhenTheSiteIsValidated) {
  Rak3172Sim module;
  TempDir dir;
  try {
    PluginHost host(kPlugin, config(module, ", region: CN470, data_rate: 0"), dir.path());
    FAIL() << "DR0 in CN470 was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("data_rate"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("DR1 or faster"), std::string::npos) << e.what();
  }
}

TEST(LinkLorawan, Eu868HoldsToOnePercentDutyCycleAndSaysHowLongToWait) {
  Fixture f(", region: EU868, data_rate: 2");
  f.start();
  ASSERT_TRUE(f.up());
  const auto air = lw::time_on_air_us(30, 10);
  const auto interval = std::chrono::microseconds(lw::min_interval_us(lw::Region::eu868, air));
  EXPECT_EQ(interval.count(), air * 100);
  ASSERT_TRUE(f.send(frame(30)).ok());

  const Status busy = f.send(frame(30));
  EXPECT_EQ(busy.code(), StatusCode::busy) << "the outbox routes it to the other link";
  EXPECT_NE(std::string(busy.message()).find("off time"), std::string::npos) << busy.message();
  f.host.advance(std::chrono::duration_cast<Duration>(interval) - 1ms);
  EXPECT_EQ(f.send(frame(30)).code(), StatusCode::busy);
  f.host.advance(1ms);
  EXPECT_TRUE(f.send(frame(30)).ok());
  EXPECT_EQ(f.module.uplinks().size(), 2u);
}

TEST(LinkLorawan, AModuleThatRefusesTheUplinkGivesTheAirTimeBack) {
  Fixture f(", region: EU868");
  f.start();
  ASSERT_TRUE(f.up());
  f.module.busy_sends(1);
  const Status s = f.send(frame(30));
  EXPECT_EQ(s.code(), StatusCode::busy);
  EXPECT_NE(std::string(s.message()).find("AT_BUSY_ERROR"), std::string::npos);
  EXPECT_TRUE(f.send(frame(30)).ok()) << "nothing went on air, so no off time runs";
}

TEST(LinkLorawan, AModuleThatLostItsSessionJoinsAgain) {
  Fixture f;
  auto& link = f.start();
  ASSERT_TRUE(f.up());
  f.module.forget_session();
  const Status s = f.send(frame(20));
  EXPECT_EQ(s.code(), StatusCode::unavailable);
  EXPECT_NE(std::string(s.message()).find("AT_NO_NETWORK_JOINED"), std::string::npos);
  ASSERT_TRUE(f.host.run_until([&] { return f.module.join_attempts() == 2 && link.state() == link::State::up; }));
  EXPECT_TRUE(f.send(frame(20)).ok());
}

TEST(LinkLorawan, WithAdrTheMtuFollowsTheDataRateTheNetworkSets) {
  Fixture f(", region: EU868, adr: true, data_rate: 0");
  auto& link = f.start();
  ASSERT_TRUE(f.up());
  EXPECT_EQ(link.limits().mtu, 51u);
  f.module.set_network_dr(5);
  ASSERT_TRUE(f.send(frame(20)).ok());
  EXPECT_EQ(link.limits().mtu, 242u);
}

// ---------------------------------------------------------------------------------------------
// a module that misbehaves

TEST(LinkLorawan, ASilentModuleRaisesAnAlarmAndTheLinkRecoversWhenItAnswersAgain) {
  Fixture f;
  auto& link = f.start();
  ASSERT_TRUE(f.up());
  f.module.set_silent(true);
  const Status s = f.send(frame(20));
  EXPECT_EQ(s.code(), StatusCode::unavailable) << s.message();
  ASSERT_TRUE(f.host.run_until([&] { return f.alarm("lorawan.module_unavailable") == true; }));
  EXPECT_EQ(link.state(), link::State::down);
  EXPECT_EQ(f.send(frame(20)).code(), StatusCode::unavailable) << "down: refused at once";

  f.module.set_silent(false);
  ASSERT_TRUE(f.host.run_until([&] { return f.alarm("lorawan.module_unavailable") == false && link.state() == link::State::up; }));
  EXPECT_EQ(f.module.join_attempts(), 2u) << "a reopened module joins again";
  EXPECT_TRUE(f.send(frame(20)).ok());
}

TEST(LinkLorawan, StoppingAnswersTheUplinkInFlightOnce) {
  Fixture f;
  f.start();
  ASSERT_TRUE(f.up());
  f.module.set_silent(true);  // the uplink waits for an answer that will not come
  int calls = 0;
  Status last;
  f.link->send(frame(20), link::TrafficClass::telemetry, [&](Status s) {
    ++calls;
    last = std::move(s);
  });
  f.host.destroy();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(last.code(), StatusCode::unavailable) << last.message();
}

TEST(LinkLorawan, AModuleThatIsNotThereRaisesTheAlarmAtStart) {
  TempDir dir;
  // Not a closed simulator's /dev/pts/N: another test process may have that number by now.
  const std::string device = (dir.path() / "ttyLORA0").string();
  PluginHost host(kPlugin,
                  "{device: " + device + ", dev_eui: 70B3D57ED0000001, app_eui: '0000000000000001', app_key: " + kAppKey +
                      ", command_timeout_ms: 200, reopen_min_ms: 20, reopen_max_ms: 40}",
                  dir.path());
  auto& link = host.create<link::Link>();
  ASSERT_TRUE(host.run_until([&] { return !host.alarms.empty(); }));
  EXPECT_EQ(host.alarms[0].code, "lorawan.module_unavailable");
  EXPECT_TRUE(host.alarms[0].active);
  EXPECT_EQ(link.state(), link::State::down);
  host.destroy();  // stops while it waits to reopen
}

TEST(LinkLorawan, GarbageFromTheModuleIsIgnoredAndCounted) {
  Fixture f;
  f.start();
  ASSERT_TRUE(f.up());
  f.module.emit("RAKwireless RAK3172 boot banner");
  f.module.emit(std::string("\x01\x02\xff noise", 9));
  EXPECT_TRUE(f.send(frame(20)).ok());
  EXPECT_EQ(f.module.uplinks().size(), 1u);
  const bool counted = std::any_of(f.host.log_lines.begin(), f.host.log_lines.end(), [](const std::string& l) { return l.find("(2 so far)") != std::string::npos; });
  EXPECT_TRUE(counted);
  for (const auto& line : f.host.log_lines) EXPECT_EQ(line.find("banner"), std::string::npos) << "lines are counted, not echoed: " << line;
}

// ---------------------------------------------------------------------------------------------
// the example site

TEST(LinkLorawan, TheExampleSiteFileIsValid) {
  core::PluginRegistry registry({PILECORE_PLUGIN_DIR});
  const auto outcome = core::load_site(std::string(PILECORE_TEST_SOURCE_DIR) + "/configs/lorawan-site.yaml", registry);
  ASSERT_TRUE(outcome.site.has_value()) << outcome.diagnostics.format();
  const auto it = std::find_if(outcome.site->instances.begin(), outcome.site->instances.end(), [](const auto& i) { return i.name == "lora"; });
  ASSERT_NE(it, outcome.site->instances.end());
  EXPECT_EQ(it->config->string("region"), "CN470");
  EXPECT_EQ(it->config->integer("data_rate"), 2);
}
