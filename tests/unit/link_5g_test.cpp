// link-5g, the 5G uplink: a real Mosquitto broker (two, for failover) with an mTLS listener
// on free loopback ports and certificates made here; the RM500Q modem simulated on a
// pseudo-terminal; the plugin loaded through the core's loader and driven through the SDK.
#include <gtest/gtest.h>
#include <mqtt/async_client.h>

#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "at_modem.hpp"
#include "modem_sim.hpp"
#include "mosquitto_broker.hpp"
#include "plugin_host.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace std::chrono_literals;
using pilecore::test::MosquittoBroker;
using pilecore::test::PluginHost;
using pilecore::test::TempDir;

namespace {

const std::string kPlugin = std::string(PILECORE_PLUGIN_DIR) + "/link-5g.so";
constexpr const char* kImsi = "460011234567890";
constexpr const char* kIccid = "89860112345678901234";

/// A frame of protocol.md §1: the 16-byte header with `type`, then `payload`.
std::vector<std::uint8_t> frame(std::uint8_t type, const std::string& payload) {
  std::vector<std::uint8_t> f{0x10, type, static_cast<std::uint8_t>(payload.size() >> 8), static_cast<std::uint8_t>(payload.size()), 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 1};
  f.insert(f.end(), payload.begin(), payload.end());
  return f;
}

/// The back end's side: an MQTT client with its own certificate from the operator's CA.
class BackEnd {
 public:
  BackEnd(const std::string& uri, const test::MqttPki& pki, const std::string& id) : client_(uri, id) {
    client_.start_consuming();
    client_.connect(test::client_tls_options(pki))->wait();
    client_.subscribe("pilecore/v1/site-1/pile-7/up/#", 1)->wait();
  }
  ~BackEnd() {
    try {
      client_.disconnect()->wait();
    } catch (...) {
    }
  }
  std::optional<mqtt::const_message_ptr> receive() {
    mqtt::const_message_ptr m;
    if (client_.try_consume_message_for(&m, 10s) && m) return m;
    return std::nullopt;
  }
  void command(const std::string& topic, const std::string& bytes) { client_.publish(topic, bytes.data(), bytes.size(), 1, false)->wait(); }

 private:
  mqtt::async_client client_;
};

struct Link5gTest : ::testing::Test {
  TempDir dir;
  test::MqttPki pki = test::make_mqtt_pki(dir.path());
  MosquittoBroker primary{dir.path(), pki, "primary"};
  sim::ModemSim modem;

  /// The plugin's configuration; `over` replaces or adds keys (values are YAML text).
  std::string config(const std::map<std::string, std::string>& over = {}) {
    auto q = [](const std::string& v) { return "\"" + v + "\""; };
    std::map<std::string, std::string> k = {
        {"serial_port", q(modem.path())}, {"at_timeout_ms", "2000"},    {"poll_s", "30"},         {"reattach_after", "2"},
        {"site_id", "site-1"},            {"pile_id", "pile-7"},        {"primary", q(primary.uri())}, {"retry_s", "5"},
        {"connect_timeout_s", "5"},       {"failback_probe_s", "60"},   {"failover_after", "2"},  {"tls_ca", q(pki.ca.string())},
        {"tls_certificate", q(pki.client_cert.string())}, {"tls_key", q(pki.client_key.string())},
    };
    for (const auto& [key, value] : over) k[key] = value;
    std::string out = "{";
    for (const auto& [key, value] : k) out += (out.size() > 1 ? ", " : "") + key + ": " + value;
    return out + "}";
  }
  static std::string last_detail(const PluginHost& h) { return h.states.empty() ? std::string() : h.states.back().second; }
  static bool logged(const PluginHost& h, const std::string& needle) {
    return std::any_of(h.log_lines.begin(), h.log_lines.end(), [&](const std::string& l) { return l.find(needle) != std::string::npos; });
  }
  static bool alarm_active(const PluginHost& h, const std::string& code) {
    bool active = false;
    for (const auto& a : h.alarms) {
      if (a.code == code) active = a.active;
    }
    return active;
  }
  static link::Link& up(PluginHost& h) {
    auto& l = h.create<link::Link>();
    EXPECT_TRUE(h.run_until([&] { return l.state() == link::State::up; })) << "never up: " << last_detail(h);
    return l;
  }
  static Status send(PluginHost& h, link::Link& l, const std::vector<std::uint8_t>& f, link::TrafficClass cls = link::TrafficClass::control) {
    std::optional<Status> out;
    l.send(f, cls, [&](Status s) { out = std::move(s); });
    EXPECT_TRUE(h.run_until([&] { return out.has_value(); })) << "send never answered";
    return out.value_or(Status::error(StatusCode::failed, "no answer"));
  }
};

TEST(Link5gAt, ServingCellIsReadForEachRadioAndInvalidFieldsAreNone) {
  using link5g::parse_serving_cell;
  auto sa = parse_serving_cell({R"(+QENG: "servingcell","NOCONN","NR5G-SA","TDD",460,01,1A2B3C4D5,501,2A3B,504990,41,12,-92,-11,17,1,-)"});
  ASSERT_TRUE(sa);
  EXPECT_EQ(sa->rat, "NR5G-SA");
  EXPECT_EQ(sa->state, "NOCONN");
  EXPECT_EQ(sa->mcc, "460");
  EXPECT_EQ(sa->rsrp_dbm, -92);
  EXPECT_EQ(sa->rsrq_db, -11);
  EXPECT_EQ(sa->sinr_db, 17.0);

  auto lte = parse_serving_cell({R"(+QENG: "servingcell","CONNECT","LTE","FDD",460,01,5A3B2C1,123,1650,3,5,5,2A3B,-101,-12,-70,20,12,-,45)"});
  ASSERT_TRUE(lte);
  EXPECT_EQ(lte->rat, "LTE");
  EXPECT_EQ(lte->rsrp_dbm, -101);
  EXPECT_EQ(lte->sinr_db, 20.0);  // 2 * 20 - 20 dB

  // EN-DC: the NR leg's field order (RSRP, SINR, RSRQ) differs from SA's (RSRP, RSRQ, SINR).
  auto endc = parse_serving_cell({R"(+QENG: "servingcell","CONNECT")", R"(+QENG: "LTE","FDD",460,01,5A3B2C1,123,1650,3,5,5,2A3B,-95,-10,-62,20,12,-,45)",
                                  R"(+QENG: "NR5G-NSA",460,01,501,-84,21,-9,627264,78)"});
  ASSERT_TRUE(endc);
  EXPECT_EQ(endc->rat, "NR5G-NSA");
  EXPECT_EQ(endc->rsrp_dbm, -84);
  EXPECT_EQ(endc->sinr_db, 21.0);
  EXPECT_EQ(endc->rsrq_db, -9);

  auto search = parse_serving_cell({R"(+QENG: "servingcell","SEARCH")"});
  ASSERT_TRUE(search);
  EXPECT_FALSE(search->camped());
  EXPECT_FALSE(search->rsrp_dbm);

  auto dash = parse_serving_cell({R"(+QENG: "servingcell","LIMSRV","NR5G-SA","TDD",460,01,1A2B3C4D5,501,2A3B,504990,41,12,-,-,-,1,-)"});
  ASSERT_TRUE(dash);
  EXPECT_FALSE(dash->rsrp_dbm);
  EXPECT_FALSE(dash->sinr_db);

  EXPECT_FALSE(parse_serving_cell({R"(+QENG: "servingcell","NOCONN","NR5G-SA","TDD",460)"}));  // truncated
  EXPECT_FALSE(parse_serving_cell({R"(+QENG: "servingcell","NOCONN","NR5G-SA","TDD",460,01,1,2,3,4,5,6,x92,-11,17,1,-)"}));
  EXPECT_FALSE(parse_serving_cell({}));

  EXPECT_EQ(link5g::parse_registration("+C5GREG: 0,1"), 1);
  EXPECT_EQ(link5g::parse_registration("+CEREG: 2,5,\"2A3B\",\"5A3B2C1\",7"), 5);
  EXPECT_FALSE(link5g::parse_registration("+CEREG: 1"));  // an unsolicited stat, not the answer
  EXPECT_FALSE(link5g::parse_registration("+CEREG: 0,x"));
  EXPECT_EQ(link5g::mask(kImsi, 5, 2), "46001********90");
}

TEST_F(Link5gTest, TopicLevelsAndEndpointsAreCheckedBeforeTheLinkStarts) {
  auto refused = [&](const std::map<std::string, std::string>& extra) {
    try {
      PluginHost h(kPlugin, config(extra), dir.path() / "state");
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(refused({{"site_id", "\"a/b\""}}).find("site_id"), std::string::npos);
  EXPECT_NE(refused({{"pile_id", "\"p+\""}}).find("pile_id"), std::string::npos);
  EXPECT_NE(refused({{"pile_id", "\"#\""}}).find("pile_id"), std::string::npos);
  EXPECT_NE(refused({{"site_id", "\"\""}}).find("site_id"), std::string::npos);
  EXPECT_NE(refused({{"primary", "\"tcp://127.0.0.1:1883\""}}).find("TLS"), std::string::npos);
  EXPECT_NE(refused({{"backup", "\"" + primary.uri() + "\""}}).find("backup"), std::string::npos);
  EXPECT_NE(refused({{"baud", "12345"}}).find("baud"), std::string::npos);
  EXPECT_EQ(refused({}), "");
}

TEST(Link5gSite, TheShippedExampleSiteIsValid) {
  core::PluginRegistry registry({PILECORE_PLUGIN_DIR});
  auto out = core::load_site(std::filesystem::path(PILECORE_TEST_SOURCE_DIR) / "configs/link-5g-site.yaml", registry);
  ASSERT_TRUE(out.site) << out.diagnostics.format();
  EXPECT_EQ(out.site->uplink.cellular, "modem");
}

TEST_F(Link5gTest, ReadsTheModemAndPublishesEachClassOnItsTopicWithQos1) {
  BackEnd backend(primary.uri(), pki, "backend");
  PluginHost host(kPlugin, config(), dir.path() / "state");
  auto& link = up(host);
  EXPECT_NE(last_detail(host).find("registered (home), NR5G-SA NOCONN, RSRP -88 dBm, SINR 14 dB"), std::string::npos) << last_detail(host);
  EXPECT_NE(std::find(host.samples.begin(), host.samples.end(), std::pair<std::string, double>{"rsrp", -88}), host.samples.end());
  EXPECT_NE(std::find(host.samples.begin(), host.samples.end(), std::pair<std::string, double>{"sinr", 14}), host.samples.end());
  // The SIM's identities are in the log only masked.
  EXPECT_TRUE(logged(host, "IMSI 46001********90"));
  EXPECT_TRUE(logged(host, "ICCID 898601************34"));
  EXPECT_FALSE(logged(host, kImsi));
  EXPECT_FALSE(logged(host, kIccid));
  EXPECT_EQ(modem.count("AT+QENG=\"servingcell\""), 1u);
  EXPECT_EQ(modem.count("AT+CSQ"), 0u);

  // The frame's message type names the topic's class; other types follow the traffic class.
  const std::map<std::string, std::pair<std::vector<std::uint8_t>, link::TrafficClass>> sent = {
      {"control", {frame(0x01, "c"), link::TrafficClass::bulk}},        {"transaction", {frame(0x02, "t"), link::TrafficClass::control}},
      {"status", {frame(0x03, "s"), link::TrafficClass::bulk}},         {"telemetry", {frame(0x04, "m"), link::TrafficClass::control}},
      {"telemetry-compact", {frame(0x05, "k"), link::TrafficClass::control}}, {"other", {frame(0x7e, "o"), link::TrafficClass::bulk}},
  };
  for (const auto& [name, f] : sent) EXPECT_TRUE(send(host, link, f.first, f.second).ok()) << name;
  std::map<std::string, std::string> topic_of;  // payload letter -> topic
  for (std::size_t i = 0; i < sent.size(); ++i) {
    auto m = backend.receive();
    ASSERT_TRUE(m) << "message " << i << " never arrived";
    EXPECT_EQ((*m)->get_qos(), 1);
    EXPECT_FALSE((*m)->is_retained());
    const std::string& p = (*m)->get_payload();
    ASSERT_EQ(p.size(), 17u);
    topic_of[p.substr(16)] = (*m)->get_topic();
  }
  const std::string base = "pilecore/v1/site-1/pile-7/up/";
  EXPECT_EQ(topic_of["c"], base + "control");
  EXPECT_EQ(topic_of["t"], base + "transaction");
  EXPECT_EQ(topic_of["s"], base + "status");
  EXPECT_EQ(topic_of["m"], base + "telemetry");
  EXPECT_EQ(topic_of["k"], base + "telemetry");
  EXPECT_EQ(topic_of["o"], base + "transaction");  // bulk: ledger uploads travel with the transactions
}

TEST_F(Link5gTest, OnLteAndEnDcTheRegistrationAndSignalComeFromTheirOwnAnswers) {
  // LTE: +C5GREG says 0, +CEREG says registered; QENG's LTE SINR code 14 is 2 * 14 - 20 dB.
  modem.update([](sim::ModemSim::Settings& s) { s.rat = "LTE"; });
  {
    PluginHost host(kPlugin, config(), dir.path() / "state");
    up(host);
    EXPECT_NE(last_detail(host).find("registered (home), LTE NOCONN, RSRP -88 dBm, SINR 8 dB"), std::string::npos) << last_detail(host);
  }
  // EN-DC: the NR leg's line, whose field order differs from SA's, gives the figures.
  modem.update([](sim::ModemSim::Settings& s) { s.rat = "EN-DC"; });
  PluginHost host(kPlugin, config(), dir.path() / "state");
  up(host);
  EXPECT_NE(last_detail(host).find("NR5G-NSA CONNECT, RSRP -88 dBm, SINR 14 dB"), std::string::npos) << last_detail(host);
}

TEST_F(Link5gTest, DownCommandsReachTheReceiver) {
  PluginHost host(kPlugin, config(), dir.path() / "state");
  auto& link = host.create<link::Link>();
  std::vector<std::vector<std::uint8_t>> received;
  link.set_receiver([&](std::span<const std::uint8_t> f) { received.emplace_back(f.begin(), f.end()); });
  ASSERT_TRUE(host.run_until([&] { return link.state() == link::State::up; }));
  BackEnd backend(primary.uri(), pki, "backend");
  const auto ack = frame(0x81, "ack");
  backend.command("pilecore/v1/site-1/pile-7/down/cmd", std::string(ack.begin(), ack.end()));
  backend.command("pilecore/v1/site-1/pile-8/down/cmd", "another pile's");
  ASSERT_TRUE(host.run_until([&] { return !received.empty(); }));
  EXPECT_EQ(received.front(), ack);
  host.run_until([] { return false; }, 300ms);
  EXPECT_EQ(received.size(), 1u);
}

TEST_F(Link5gTest, FramesAreRefusedWhileDownAndAboveTheMtu) {
  PluginHost host(kPlugin, config({{"mtu_bytes", "64"}}), dir.path() / "state");
  auto& link = host.create<link::Link>();
  EXPECT_EQ(link.limits().mtu, 64u);
  EXPECT_EQ(send(host, link, frame(0x01, "early")).code(), StatusCode::unavailable);  // the modem has not answered yet
  ASSERT_TRUE(host.run_until([&] { return link.state() == link::State::up; }));
  EXPECT_EQ(send(host, link, frame(0x01, std::string(49, 'x'))).code(), StatusCode::invalid_argument);
  EXPECT_TRUE(send(host, link, frame(0x01, std::string(48, 'x'))).ok());
  EXPECT_EQ(send(host, link, {}).code(), StatusCode::invalid_argument);
}

TEST_F(Link5gTest, TheBrokerRefusesACertificateItsCaDidNotSign) {
  PluginHost host(kPlugin, config({{"tls_certificate", "\"" + pki.rogue_cert.string() + "\""}, {"tls_key", "\"" + pki.rogue_key.string() + "\""}}), dir.path() / "state");
  auto& link = host.create<link::Link>();
  ASSERT_TRUE(host.run_until([&] { return logged(host, "connect to the primary broker " + primary.uri() + " failed (1 in a row)"); }));
  EXPECT_NE(link.state(), link::State::up);
  EXPECT_EQ(send(host, link, frame(0x02, "t")).code(), StatusCode::unavailable);
  // With no backup it keeps trying the primary, and keeps being refused.
  host.advance(5s);
  ASSERT_TRUE(host.run_until([&] { return logged(host, "failed (2 in a row)"); }));
  EXPECT_NE(link.state(), link::State::up);
}

TEST_F(Link5gTest, FailsOverOnRepeatedFailuresAndFailsBackWhenThePrimaryReturns) {
  MosquittoBroker backup(dir.path(), pki, "backup");
  PluginHost host(kPlugin, config({{"backup", "\"" + backup.uri() + "\""}}), dir.path() / "state");
  auto& link = up(host);
  EXPECT_NE(last_detail(host).find("primary broker " + primary.uri()), std::string::npos);

  primary.stop();
  ASSERT_TRUE(host.run_until([&] { return link.state() != link::State::up; }));
  EXPECT_EQ(send(host, link, frame(0x02, "lost")).code(), StatusCode::unavailable);
  // It reconnects at once and fails; failover_after is 2, so the retry's failure moves it.
  ASSERT_TRUE(host.run_until([&] { return logged(host, "failed (1 in a row)"); }));
  EXPECT_NE(link.state(), link::State::up);
  host.advance(5s);  // retry_s
  ASSERT_TRUE(host.run_until([&] { return link.state() == link::State::up; })) << last_detail(host);
  EXPECT_TRUE(logged(host, "2 failed connects in a row: moving to the backup broker"));
  EXPECT_NE(last_detail(host).find("backup broker " + backup.uri()), std::string::npos) << last_detail(host);
  {
    BackEnd on_backup(backup.uri(), pki, "backend-b");
    EXPECT_TRUE(send(host, link, frame(0x02, "via backup")).ok());
    auto m = on_backup.receive();
    ASSERT_TRUE(m);
    EXPECT_EQ((*m)->get_topic(), "pilecore/v1/site-1/pile-7/up/transaction");
  }

  // The probe finds the primary still down and stays; once it is back the link returns.
  host.advance(60s);  // failback_probe_s
  ASSERT_TRUE(host.run_until([&] { return logged(host, "staying on the backup"); }));
  EXPECT_EQ(link.state(), link::State::up);
  primary.start();
  host.advance(60s);
  ASSERT_TRUE(host.run_until([&] { return link.state() == link::State::up && last_detail(host).find("primary broker") != std::string::npos; }))
      << last_detail(host);
  EXPECT_TRUE(send(host, link, frame(0x03, "home again")).ok());  // the primary's PUBACK
}

TEST_F(Link5gTest, TheRiskLayerCanHoldTheLinkOnTheBackup) {
  MosquittoBroker backup(dir.path(), pki, "backup");
  PluginHost host(kPlugin, config({{"backup", "\"" + backup.uri() + "\""}}), dir.path() / "state");
  auto& link = up(host);
  link.prefer_backup(true);
  ASSERT_TRUE(host.run_until([&] { return link.state() == link::State::up && last_detail(host).find("backup broker") != std::string::npos; }))
      << last_detail(host);
  // Held there: a healthy primary is not probed while the signal is on.
  host.advance(300s);
  host.run_until([] { return false; }, 300ms);
  EXPECT_NE(last_detail(host).find("backup broker"), std::string::npos);
  EXPECT_FALSE(logged(host, "the primary broker answers again"));
  link.prefer_backup(false);
  host.advance(60s);  // the next probe finds the primary healthy
  ASSERT_TRUE(host.run_until([&] { return link.state() == link::State::up && last_detail(host).find("primary broker") != std::string::npos; }))
      << last_detail(host);
}

TEST_F(Link5gTest, NoSimRaisesAnAlarmAndNothingConnects) {
  modem.update([](sim::ModemSim::Settings& s) { s.sim_present = false; });
  PluginHost host(kPlugin, config(), dir.path() / "state");
  auto& link = host.create<link::Link>();
  ASSERT_TRUE(host.run_until([&] { return alarm_active(host, "link-5g.sim"); }));
  EXPECT_NE(last_detail(host).find("SIM not inserted"), std::string::npos) << last_detail(host);  // +CME ERROR 10, verbose after AT+CMEE=2
  EXPECT_EQ(link.state(), link::State::down);
  EXPECT_EQ(modem.count("AT+CIMI"), 0u);
  // The SIM goes in: the next poll initialises the modem and the link comes up.
  modem.update([](sim::ModemSim::Settings& s) { s.sim_present = true; });
  host.advance(30s);
  ASSERT_TRUE(host.run_until([&] { return link.state() == link::State::up; })) << last_detail(host);
  EXPECT_FALSE(alarm_active(host, "link-5g.sim"));
}

TEST_F(Link5gTest, WithoutSignalTheLinkStaysDownAndTheModemIsReattached) {
  modem.update([](sim::ModemSim::Settings& s) {
    s.stat = 2;
    s.stat_after_reattach = 2;
  });
  PluginHost host(kPlugin, config(), dir.path() / "state");
  auto& link = host.create<link::Link>();
  ASSERT_TRUE(host.run_until([&] { return last_detail(host).find("searching") != std::string::npos; }));
  EXPECT_NE(last_detail(host).find("SEARCH"), std::string::npos) << last_detail(host);
  EXPECT_EQ(link.state(), link::State::down);
  EXPECT_TRUE(host.samples.empty());  // no cell, no signal figures
  host.advance(30s);  // the second poll without registration re-attaches (reattach_after: 2)
  ASSERT_TRUE(host.run_until([&] { return modem.count("AT+CFUN=1") == 1; }));
  EXPECT_EQ(modem.count("AT+CFUN=0"), 1u);
  EXPECT_EQ(link.state(), link::State::down);
}

TEST_F(Link5gTest, LostRegistrationIsAlarmedAndRecoveredByReattaching) {
  PluginHost host(kPlugin, config(), dir.path() / "state");
  auto& link = up(host);
  modem.update([](sim::ModemSim::Settings& s) {
    s.stat = 0;  // the network dropped the module
    s.stat_after_reattach = 1;
  });
  host.advance(30s);
  ASSERT_TRUE(host.run_until([&] { return alarm_active(host, "link-5g.registration"); }));
  EXPECT_EQ(link.state(), link::State::down);
  EXPECT_EQ(send(host, link, frame(0x01, "c")).code(), StatusCode::unavailable);
  EXPECT_EQ(modem.count("AT+CFUN=0"), 0u);
  host.advance(30s);
  ASSERT_TRUE(host.run_until([&] { return modem.count("AT+CFUN=1") == 1; }));
  ASSERT_TRUE(host.run_until([&] { return logged(host, "re-attached the modem"); }));
  host.advance(30s);
  ASSERT_TRUE(host.run_until([&] { return link.state() == link::State::up; })) << last_detail(host);
  EXPECT_FALSE(alarm_active(host, "link-5g.registration"));
}

TEST_F(Link5gTest, GarbageAndUnsolicitedLinesAreCountedAndIgnored) {
  modem.inject_before_next_answer(std::string("\x01\xfe\xff noise\r\n+QIND: \"csq\",20,99\r\n"));
  PluginHost host(kPlugin, config(), dir.path() / "state");
  auto& link = up(host);
  EXPECT_TRUE(logged(host, "ignored 1 garbage and 1 unsolicited line(s) from the modem (totals 1 and 1)")) << ::testing::PrintToString(host.log_lines);
  modem.inject_before_next_answer(std::string("\x02\x03\r\n"));
  host.advance(30s);
  ASSERT_TRUE(host.run_until([&] { return logged(host, "(totals 2 and 1)"); }));
  EXPECT_EQ(link.state(), link::State::up);
}

TEST_F(Link5gTest, ASilentModemIsAlarmedAndPickedUpWhenItAnswersAgain) {
  modem.update([](sim::ModemSim::Settings& s) { s.mute = true; });
  PluginHost host(kPlugin, config({{"at_timeout_ms", "200"}}), dir.path() / "state");
  auto& link = host.create<link::Link>();
  ASSERT_TRUE(host.run_until([&] { return alarm_active(host, "link-5g.modem"); }));
  EXPECT_NE(last_detail(host).find("ATE0: no final result within 200 ms"), std::string::npos) << last_detail(host);
  modem.update([](sim::ModemSim::Settings& s) { s.mute = false; });
  host.advance(30s);
  ASSERT_TRUE(host.run_until([&] { return link.state() == link::State::up; })) << last_detail(host);
  EXPECT_FALSE(alarm_active(host, "link-5g.modem"));
}

}  // namespace
