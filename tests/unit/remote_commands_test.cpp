// Signed remote commands (issue #12 item 5; docs/protocol.md section 3.4), as the back end sees
// them:
//  - the example of docs/protocol.md verifies and decodes byte for byte;
//  - a pile runs each command it is sent (through the uplink's down path, on a running site with
//    sim-link as the back end) and answers each with a `command_result` record that reaches the
//    back end;
//  - a command that is not enabled, malformed, badly signed, stale, replayed or reordered does
//    nothing, is counted by reason, and the back end is told why;
//  - the highest accepted sequence survives a restart;
//  - a firmware image is written to the staging directory only when its signature holds.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <filesystem>
#include <algorithm>
#include <fstream>
#include <future>
#include <initializer_list>
#include <optional>
#include <string>

#include "command.hpp"
#include "command_key.hpp"
#include "crypto.hpp"
#include "fragments.hpp"
#include "plugin_loader.hpp"
#include "remote_commands.hpp"
#include "runtime.hpp"
#include "site_config.hpp"
#include "test_support.hpp"
#include "uplink.hpp"

namespace pilecore::core {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using test::eventually;
using test::TempDir;
namespace fs = std::filesystem;

constexpr std::uint32_t kDevice = 123456;

/// The text of a ```<lang> <name> block of docs/protocol.md.
std::string doc_block(const std::string& lang, const std::string& name) {
  std::ifstream in(std::string(PILECORE_TEST_SOURCE_DIR) + "/docs/protocol.md");
  std::string line, out;
  bool inside = false;
  while (std::getline(in, line)) {
    if (!inside && line == "```" + lang + " " + name) {
      inside = true;
      continue;
    }
    if (inside && line.rfind("```", 0) == 0) return out;
    if (inside) out += line + "\n";
  }
  throw std::runtime_error("docs/protocol.md has no ```" + lang + " " + name + " block");
}

Bytes doc_hex(const std::string& name) {
  std::string digits;
  std::istringstream text(doc_block("hex", name));
  std::string line;
  while (std::getline(text, line)) {
    for (char c : line.substr(0, line.find('#'))) {
      if (std::isxdigit(static_cast<unsigned char>(c))) digits += c;
    }
  }
  Bytes out;
  for (std::size_t i = 0; i + 1 < digits.size(); i += 2) out.push_back(static_cast<std::uint8_t>(std::stoi(digits.substr(i, 2), nullptr, 16)));
  return out;
}

TEST(RemoteCommandExample, TheDocumentsBytesVerifyAndDecode) {
  TempDir dir;
  const fs::path key = dir.write("command-key.pem", doc_block("pem", "command-key"));
  const protocol::CommandKey verifier(key);
  EXPECT_EQ(verifier.algorithm(), "ecdsa-p256");

  const Bytes frame_bytes = doc_hex("command");
  const auto frame = std::get<protocol::FrameView>(protocol::decode(frame_bytes));
  EXPECT_EQ(frame.header.type, protocol::MessageType::command);
  EXPECT_EQ(frame.header.device_id, kDevice);
  EXPECT_EQ(frame.header.sequence, 4u);
  const auto outer = std::get<protocol::SignedCommand>(protocol::decode_signed_command(frame.payload));
  const Bytes signed_bytes = protocol::command_signed_bytes(kDevice, outer.body);
  EXPECT_EQ(signed_bytes, doc_hex("command-signed-bytes")) << "the signed bytes are the prefix, the device id and the body";
  EXPECT_TRUE(verifier.verify(signed_bytes, outer.signature));
  EXPECT_FALSE(verifier.verify(protocol::command_signed_bytes(kDevice + 1, outer.body), outer.signature)) << "another pile's device id";

  const auto cmd = std::get<protocol::Command>(protocol::decode_command_body(outer.body));
  EXPECT_EQ(cmd.name, "set_power_limit");
  EXPECT_EQ(cmd.args, (json{{"connector", 1}, {"watts", 7000}}));
  EXPECT_EQ(cmd.time, 0x6955B90Au);
  EXPECT_EQ(cmd.seq, 1u);
  // The pile encodes the body the same way (shortest integers, keys in order), and the outer map.
  EXPECT_EQ(protocol::encode_command_body(cmd), outer.body);
  EXPECT_EQ(protocol::encode_signed_command(outer.body, outer.signature), Bytes(frame.payload.begin(), frame.payload.end()));
}

TEST(RemoteCommandExample, AKeyOfAnotherKindIsRefusedNamingTheFile) {
  TempDir dir;
  EVP_PKEY* rsa = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(2048));
  ASSERT_NE(rsa, nullptr);
  const fs::path pem = dir.path() / "rsa.pem";
  {
    BIO* out = BIO_new_file(pem.c_str(), "w");
    PEM_write_bio_PUBKEY(out, rsa);
    BIO_free(out);
  }
  EVP_PKEY_free(rsa);
  try {
    protocol::CommandKey k(pem);
    FAIL() << "an RSA key was taken";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("rsa.pem: a RSA key; commands are signed with ECDSA P-256 or SM2"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// The back end: signs commands with its key and frames them for this pile.

struct Backend {
  explicit Backend(const TempDir& dir, KeyAlgorithm alg = KeyAlgorithm::ecdsa_p256, const std::string& name = "backend")
      : key(dir.path() / (name + ".key")), cert(dir.path() / (name + ".crt")) {
    generate_identity(alg, key, cert, "BACKEND");
  }
  /// The command frame (or its fragments over a link of `mtu` bytes).
  std::vector<Bytes> frames(const protocol::Command& cmd, std::size_t mtu = 0, const SigningKey* signer = nullptr) {
    const Bytes body = protocol::encode_command_body(cmd);
    const SigningKey own(key.string());
    const Bytes sig = (signer ? *signer : own).sign(protocol::command_signed_bytes(kDevice, body));
    return frames_of(protocol::encode_signed_command(body, sig), mtu);
  }
  std::vector<Bytes> frames_of(const Bytes& payload, std::size_t mtu = 0) {
    protocol::Header h;
    h.type = protocol::MessageType::command;
    h.device_id = kDevice;
    h.timestamp = 0;
    h.sequence = ++frame_seq;
    if (mtu == 0) return {protocol::encode(h, payload)};
    auto out = protocol::fragment(h, payload, mtu, static_cast<std::uint16_t>(frame_seq));
    frame_seq += static_cast<std::uint32_t>(out.size()) - 1;
    return out;
  }
  fs::path key, cert;
  std::uint32_t frame_seq = 0;
};

std::string site_yaml(const std::string& commands, const std::string& sim_payment = "{latency_ms: 0}") {
  return R"(site: {id: CMD-1, name: Command test, location: {lat: 31.2, lon: 121.5}, timezone: Asia/Shanghai}
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
  - {id: 2, type: gbt-dc, max_power_w: 60000}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
    config: {arrive_after_s: 0, ev_ready_delay_ms: 0, battery_capacity_wh: 200000, initial_soc_pct: 10, tick_ms: 200}
  power-2:
    plugin: sim-power
    connector: 2
    config: {arrive_after_s: -1}
  backend:
    plugin: sim-link
    config: {latency_ms: 5, mtu_bytes: 65551}
  sim:
    plugin: sim-payment
    config: )" + sim_payment + R"(
tariffs:
  decimals: 2
  plans:
    all:
      prices: {flat: {electricity: 69.50, service: 80.00}}
      periods: [{from: "00:00", to: "24:00", type: flat}]
  week: {mon: all, tue: all, wed: all, thu: all, fri: all, sat: all, sun: all}
payment: {default_method: sim, preauth_fen: 30000}
links: {device_id: 123456, heartbeat_s: 0)" +
         (commands.empty() ? std::string() : ", commands: " + commands) + "}\n";
}

/// A running site, the back end's log (what sim-link stored) and a way to send it commands.
struct Pile {
  Pile(const TempDir& dir, const std::string& yaml, double speed = 1.0)
      : log(test::capture_log("link:sim-link:backend")), payment_log(test::capture_log("payment:sim-payment:sim")), site(dir, yaml, {PILECORE_PLUGIN_DIR}, speed, "2026-03-02T01:50:00Z") {
    EXPECT_TRUE(eventually([&] { return site.runtime().ready(); }));
  }
  std::uint32_t now() { return static_cast<std::uint32_t>(std::chrono::duration_cast<std::chrono::seconds>(site.runtime().clock().now().time_since_epoch()).count()); }
  void deliver(const std::vector<Bytes>& frames) {
    site.on_strand([&] {
      for (const auto& f : frames) site.runtime().uplink()->on_frame("backend", f);
    });
  }
  /// The body of the first command_result record the back end stored whose key starts with `prefix`.
  std::optional<json> stored(const std::string& prefix) {
    for (const auto& line : log->lines()) {
      const std::string head = "back end: body of " + prefix;
      if (line.rfind(head, 0) == 0) return json::parse(line.substr(line.find(": {") + 2));
    }
    return std::nullopt;
  }
  json result(const std::string& prefix) {
    std::optional<json> r;
    EXPECT_TRUE(eventually([&] { return (r = stored(prefix)).has_value(); }, 20s)) << "no answer " << prefix;
    return r.value_or(json::object());
  }
  /// Sends a signed command and waits for its answer `cmd:<q>`.
  json run(Backend& backend, const std::string& name, json args, std::uint64_t q) {
    deliver(backend.frames({.name = name, .args = std::move(args), .time = now(), .seq = q}));
    return result(fmt::format("cmd:{}:", q));
  }
  json request(const json& req) { return site.request(req); }
  json connector(int i) { return request({{"cmd", "status"}})["connectors"][i]; }
  json counters() {
    return site.on_strand([&] { return site.runtime().uplink()->downlink().counters(); });
  }

  /// Lines of the sim payment method's log that contain every one of `parts`.
  std::size_t payment_lines(std::initializer_list<std::string_view> parts) {
    std::size_t n = 0;
    for (const auto& l : payment_log->lines()) {
      if (std::all_of(parts.begin(), parts.end(), [&](std::string_view s) { return l.find(s) != std::string::npos; })) ++n;
    }
    return n;
  }

  std::shared_ptr<test::CaptureSink> log;
  std::shared_ptr<test::CaptureSink> payment_log;
  test::RunningSite site;
};

std::string commands_section(const Backend& b, const std::string& extra = "") {
  return "{key: " + b.cert.string() + extra + "}";
}

/// Starts a session on connector 1 and waits until it has metered some energy.
std::string charge(Pile& p) {
  EXPECT_TRUE(eventually([&] { return p.connector(0)["status"] == "Preparing"; }));
  const auto started = p.request({{"cmd", "session_start"}, {"connector", 1}, {"token", "card:0451"}});
  EXPECT_TRUE(started.value("ok", false)) << started.dump();
  EXPECT_TRUE(eventually([&] {
    const auto c = p.connector(0);
    return c["status"] == "Charging" && c.contains("session") && c["session"].value("energy_wh", 0) > 0;
  }, 20s));
  return started.value("transaction", "");
}

// --- Rejections --------------------------------------------------------------------------------

TEST(RemoteCommands, APileWithoutACommandKeyRefusesEveryCommand) {
  TempDir dir;
  Backend backend(dir);
  Pile p(dir, site_yaml(""));
  p.deliver(backend.frames({.name = "emergency_stop", .args = json::object(), .time = p.now(), .seq = 1}));
  const auto r = p.result("cmd:r1:");
  EXPECT_EQ(r["result"], "rejected");
  EXPECT_EQ(r["reason"], "not_enabled");
  EXPECT_EQ(r["message"], "commands are not enabled on this pile");
  EXPECT_EQ(p.counters()["rejected"]["not_enabled"], 1);
  // The operator sees the same in the control socket's status.
  std::promise<json> answered;
  auto status = answered.get_future();
  p.site.runtime().dispatch([&] { p.site.runtime().handle_request({{"cmd", "status"}}, [&](json reply) { answered.set_value(std::move(reply)); }); });
  const json st = status.get();
  EXPECT_EQ(st["uplink"]["command_outcomes"]["rejected"]["not_enabled"], 1) << st.dump(2);
  EXPECT_EQ(st["uplink"]["command_outcomes"]["accepted"], 0) << st.dump(2);
}

TEST(RemoteCommands, EachRejectionReasonIsAnsweredAndCountedAndDoesNothing) {
  TempDir dir;
  Backend backend(dir);
  Backend stranger(dir, KeyAlgorithm::ecdsa_p256, "stranger");
  Pile p(dir, site_yaml(commands_section(backend, ", window_s: 60")));
  ASSERT_TRUE(eventually([&] { return p.connector(1)["status"] == "Available"; }));
  const auto unavailable = json{{"connector", 2}, {"available", false}};

  // malformed: not the CBOR map of two byte strings.
  p.deliver(backend.frames_of(json::to_cbor(json{{"m", "text"}, {"s", 1}})));
  EXPECT_EQ(p.result("cmd:r1:")["reason"], "malformed");
  // bad_signature: signed by another key; and a body changed after signing.
  const SigningKey other(stranger.key.string());
  p.deliver(backend.frames({.name = "set_availability", .args = unavailable, .time = p.now(), .seq = 1}, 0, &other));
  auto bad_sig = p.result("cmd:r2:");
  EXPECT_EQ(bad_sig["reason"], "bad_signature");
  {
    const Bytes body = protocol::encode_command_body({.name = "set_availability", .args = unavailable, .time = p.now(), .seq = 1});
    const Bytes sig = SigningKey(backend.key.string()).sign(protocol::command_signed_bytes(kDevice, body));
    Bytes tampered = protocol::encode_command_body({.name = "set_availability", .args = unavailable, .time = p.now(), .seq = 2});
    p.deliver(backend.frames_of(protocol::encode_signed_command(tampered, sig)));
    EXPECT_EQ(p.result("cmd:r3:")["reason"], "bad_signature");
  }
  // stale: outside the 60 s window, either way.
  p.deliver(backend.frames({.name = "set_availability", .args = unavailable, .time = p.now() - 3600, .seq = 1}));
  auto stale = p.result("cmd:r4:");
  EXPECT_EQ(stale["reason"], "stale");
  EXPECT_NE(stale["message"].get<std::string>().find("the window is 60 s"), std::string::npos) << stale.dump();
  p.deliver(backend.frames({.name = "set_availability", .args = unavailable, .time = p.now() + 3600, .seq = 1}));
  EXPECT_EQ(p.result("cmd:r5:")["reason"], "stale");
  EXPECT_EQ(p.connector(1)["status"], "Available") << "nothing rejected acted";

  // Accepted: sequence 10.
  auto ok = p.run(backend, "status", json::object(), 10);
  EXPECT_EQ(ok["result"], "ok") << ok.dump();
  // replayed: the same frame again; and the same sequence in a new command.
  p.deliver(backend.frames({.name = "set_availability", .args = unavailable, .time = p.now(), .seq = 10}));
  auto replayed = p.result("cmd:r7:");
  EXPECT_EQ(replayed["reason"], "replayed");
  EXPECT_EQ(replayed["q"], 10);
  // reordered: below the highest accepted.
  p.deliver(backend.frames({.name = "set_availability", .args = unavailable, .time = p.now(), .seq = 9}));
  EXPECT_EQ(p.result("cmd:r8:")["reason"], "reordered");
  EXPECT_EQ(p.connector(1)["status"], "Available") << "nothing rejected acted";

  const auto c = p.counters();
  EXPECT_EQ(c["accepted"], 1);
  EXPECT_EQ(c["highest_seq"], 10);
  EXPECT_EQ(c["rejected"], (json{{"malformed", 1}, {"bad_signature", 2}, {"stale", 2}, {"replayed", 1}, {"reordered", 1}}));
}

TEST(RemoteCommands, AFloodIsRefusedByTheRiskLayerBeforeAnySignatureIsChecked) {
  TempDir dir;
  Backend backend(dir);
  // risk-rate-limit at 1 request a second, one of burst: the first command goes through.
  Pile p(dir, site_yaml(commands_section(backend), "{latency_ms: 0}\n  flood:\n    plugin: risk-rate-limit\n    config: {qps: 1, burst: 1}"));
  for (std::uint64_t q = 1; q <= 3; ++q) p.deliver(backend.frames({.name = "status", .args = json::object(), .time = p.now(), .seq = q}));
  EXPECT_EQ(p.result("cmd:1:")["result"], "ok");
  ASSERT_TRUE(eventually([&] { return p.counters()["rejected"].value("rate_limited", 0) == 2; })) << p.counters().dump();
  EXPECT_EQ(p.counters()["accepted"], 1);
  EXPECT_FALSE(p.stored("cmd:2:").has_value()) << "a refused frame is not answered";
  // The control socket shares the bucket: its status is admitted once the bucket refills.
  json admission;
  EXPECT_TRUE(eventually([&] {
    admission = p.request({{"cmd", "status"}}).value("admission", json());
    return admission.is_object();
  }, 20s));
  EXPECT_EQ(admission["refused"].value("remote_command", 0), 2) << admission.dump();
}

TEST(RemoteCommands, TheHighestAcceptedSequenceSurvivesARestart) {
  TempDir dir;
  Backend backend(dir);
  const std::string yaml = site_yaml(commands_section(backend));
  {
    Pile p(dir, yaml);
    EXPECT_EQ(p.run(backend, "status", json::object(), 5)["result"], "ok");
  }
  EXPECT_EQ(read_command_sequence(dir.path() / "state" / "command-sequence"), 5u);
  Pile p(dir, yaml);
  backend.frame_seq = 100;
  p.deliver(backend.frames({.name = "status", .args = json::object(), .time = p.now(), .seq = 5}));
  EXPECT_EQ(p.result("cmd:r101:")["reason"], "replayed");
  p.deliver(backend.frames({.name = "status", .args = json::object(), .time = p.now(), .seq = 4}));
  EXPECT_EQ(p.result("cmd:r102:")["reason"], "reordered");
  EXPECT_EQ(p.run(backend, "status", json::object(), 6)["result"], "ok");
}

TEST(RemoteCommands, AnSm2CommandKeyWorksToo) {
  TempDir dir;
  Backend backend(dir, KeyAlgorithm::sm2);
  Pile p(dir, site_yaml(commands_section(backend)));
  auto r = p.run(backend, "status", json::object(), 1);
  EXPECT_EQ(r["result"], "ok") << r.dump();
}

// --- The commands -------------------------------------------------------------------------------

TEST(RemoteCommands, EmergencyStopOpensTheContactorsAndBillsTheEnergyMetered) {
  TempDir dir;
  Backend backend(dir);
  Pile p(dir, site_yaml(commands_section(backend)));
  const std::string txn = charge(p);
  auto r = p.run(backend, "emergency_stop", json::object(), 1);
  ASSERT_EQ(r["result"], "ok") << r.dump();
  ASSERT_EQ(r["stopped"].size(), 1u) << r.dump();
  EXPECT_EQ(r["stopped"][0]["transaction"], txn);
  EXPECT_GT(r["stopped"][0]["energy_wh"].get<std::int64_t>(), 0);
  EXPECT_TRUE(r["stopped"][0]["total_fen"].is_number_integer()) << "billed";
  EXPECT_FALSE(r.dump().find("0451") != std::string::npos) << "no token in the answer";
  const auto receipt = p.request({{"cmd", "receipt"}, {"transaction", txn}});
  EXPECT_EQ(receipt["stop_reason"], "Remote") << receipt.dump();
  EXPECT_EQ(receipt["energy_wh"], r["stopped"][0]["energy_wh"]);
  EXPECT_NE(p.connector(0)["status"], "Charging");
  EXPECT_TRUE(eventually([&] { return p.connector(0).value("power_w", -1) == 0; })) << "the contactor is open";
}

TEST(RemoteCommands, StopASessionByTransactionOrConnector) {
  TempDir dir;
  Backend backend(dir);
  Pile p(dir, site_yaml(commands_section(backend)));
  const std::string txn = charge(p);
  auto none = p.run(backend, "stop_session", {{"connector", 2}}, 1);
  EXPECT_EQ(none["result"], "failed");
  EXPECT_EQ(none["message"], "connector 2 has no session");
  auto unknown = p.run(backend, "stop_session", {{"transaction", "T-NONE"}}, 2);
  EXPECT_EQ(unknown["result"], "failed");
  auto r = p.run(backend, "stop_session", {{"transaction", txn}}, 3);
  ASSERT_EQ(r["result"], "ok") << r.dump();
  EXPECT_EQ(r["transaction"], txn);
  EXPECT_EQ(r["connector"], 1);
  EXPECT_GT(r["energy_wh"].get<std::int64_t>(), 0);
}

TEST(RemoteCommands, AvailabilityFollowsOcppChangeAvailability) {
  TempDir dir;
  Backend backend(dir);
  Pile p(dir, site_yaml(commands_section(backend)));
  ASSERT_TRUE(eventually([&] { return p.connector(1)["status"] == "Available"; }));
  // A free connector: at once, and no session starts on it.
  EXPECT_EQ(p.run(backend, "set_availability", {{"connector", 2}, {"available", false}}, 1)["status"], "accepted");
  EXPECT_EQ(p.connector(1)["status"], "Unavailable");
  EXPECT_FALSE(p.request({{"cmd", "session_start"}, {"connector", 2}, {"token", "card:1"}}).value("ok", true));
  EXPECT_EQ(p.run(backend, "set_availability", {{"connector", 2}, {"available", true}}, 2)["status"], "accepted");
  EXPECT_EQ(p.connector(1)["status"], "Available");
  // A connector in a session: Unavailable when the session ends.
  charge(p);
  EXPECT_EQ(p.run(backend, "set_availability", {{"connector", 1}, {"available", false}}, 3)["status"], "scheduled");
  EXPECT_EQ(p.connector(0)["status"], "Charging") << "the session goes on";
  EXPECT_TRUE(p.request({{"cmd", "session_stop"}, {"connector", 1}}).value("ok", false));
  EXPECT_TRUE(eventually([&] { return p.connector(0)["status"] == "Unavailable"; }));
  EXPECT_EQ(p.run(backend, "set_availability", {{"connector", 9}, {"available", false}}, 4)["result"], "failed");
}

TEST(RemoteCommands, ThePowerLimitCapsTheSetpoints) {
  TempDir dir;
  Backend backend(dir);
  Pile p(dir, site_yaml(commands_section(backend)));
  charge(p);
  ASSERT_GT(p.connector(0)["session"]["setpoint_w"].get<std::int64_t>(), 7000);
  EXPECT_EQ(p.run(backend, "set_power_limit", {{"connector", 1}, {"watts", 7000}}, 1)["result"], "ok");
  EXPECT_EQ(p.connector(0)["session"]["setpoint_w"], 7000);
  // The site's cap under the connector's.
  EXPECT_EQ(p.run(backend, "set_power_limit", {{"watts", 3000}}, 2)["result"], "ok");
  EXPECT_EQ(p.connector(0)["session"]["setpoint_w"], 3000);
  EXPECT_EQ(p.run(backend, "set_power_limit", {{"watts", nullptr}}, 3)["result"], "ok");
  EXPECT_EQ(p.run(backend, "set_power_limit", {{"connector", 1}, {"watts", nullptr}}, 4)["result"], "ok");
  EXPECT_GT(p.connector(0)["session"]["setpoint_w"].get<std::int64_t>(), 7000) << "lifted";
  EXPECT_EQ(p.run(backend, "set_power_limit", {{"watts", -5}}, 5)["result"], "failed");
}

TEST(RemoteCommands, PowerCapsAndAvailabilitySurviveARestart) {
  // A restart or an upgrade must not undo what the back end set: a connector out of service
  // stays so (OCPP's ChangeAvailability persists across a reboot), and a cap keeps capping.
  TempDir dir;
  Backend backend(dir);
  const std::string yaml = site_yaml(commands_section(backend));
  {
    Pile p(dir, yaml);
    ASSERT_TRUE(eventually([&] { return p.connector(1)["status"] == "Available"; }));
    EXPECT_EQ(p.run(backend, "set_availability", {{"connector", 2}, {"available", false}}, 1)["status"], "accepted");
    EXPECT_EQ(p.run(backend, "set_power_limit", {{"connector", 1}, {"watts", 7000}}, 2)["result"], "ok");
    EXPECT_EQ(p.run(backend, "set_power_limit", {{"watts", 5000}}, 3)["result"], "ok");
  }
  {
    Pile p(dir, yaml);
    ASSERT_TRUE(eventually([&] { return p.connector(1)["status"] == "Unavailable"; })) << p.connector(1).dump();
    EXPECT_FALSE(p.request({{"cmd", "session_start"}, {"connector", 2}, {"token", "card:1"}}).value("ok", true));
    charge(p);
    EXPECT_EQ(p.connector(0)["session"]["setpoint_w"], 5000) << "the site's cap, under the connector's";
    EXPECT_EQ(p.run(backend, "set_power_limit", {{"watts", nullptr}}, 4)["result"], "ok");
    EXPECT_EQ(p.connector(0)["session"]["setpoint_w"], 7000) << "the connector's cap";
    EXPECT_EQ(p.run(backend, "set_availability", {{"connector", 2}, {"available", true}}, 5)["status"], "accepted");
    EXPECT_TRUE(p.request({{"cmd", "session_stop"}, {"connector", 1}}).value("ok", false));
  }
  Pile p(dir, yaml);
  ASSERT_TRUE(eventually([&] { return p.connector(1)["status"] == "Available"; })) << "put back in service before the restart";
  charge(p);
  EXPECT_EQ(p.connector(0)["session"]["setpoint_w"], 7000) << "the site's cap was lifted, the connector's still holds";
}

TEST(RemoteCommands, StatusAnswersWithTheStatusBody) {
  TempDir dir;
  Backend backend(dir);
  Pile p(dir, site_yaml(commands_section(backend)));
  auto r = p.run(backend, "status", json::object(), 1);
  ASSERT_EQ(r["result"], "ok");
  EXPECT_EQ(r["status"]["site"], "CMD-1") << r.dump();
  EXPECT_EQ(r["status"]["connectors"].size(), 2u);
  auto unknown = p.run(backend, "reboot", json::object(), 2);
  EXPECT_EQ(unknown["result"], "failed");
  EXPECT_NE(unknown["message"].get<std::string>().find("unknown command 'reboot'"), std::string::npos);
}

TEST(RemoteCommands, AnAppConfirmationAnswersAStepUp) {
  TempDir dir;
  Backend backend(dir);
  Pile p(dir, site_yaml(commands_section(backend), "{latency_ms: 0, step_up_tokens: [\"card:5UP\"]}"));
  EXPECT_EQ(p.run(backend, "answer_step_up", {{"connector", 1}, {"confirmed", true}}, 1)["message"], "connector 1 has no step-up waiting for an answer");
  ASSERT_TRUE(eventually([&] { return p.connector(0)["status"] == "Preparing"; }));
  auto started = std::make_shared<std::promise<json>>();
  p.site.runtime().dispatch([&p, started] {
    p.site.runtime().handle_request({{"cmd", "session_start"}, {"connector", 1}, {"token", "card:5UP"}}, [started](json r) { started->set_value(std::move(r)); });
  });
  ASSERT_TRUE(eventually([&] { return p.payment_lines({"ledger: authorize", "step_up"}) > 0; })) << "the issuer asks for more proof";
  auto r = p.run(backend, "answer_step_up", {{"connector", 1}, {"confirmed", true}}, 2);
  ASSERT_EQ(r["result"], "ok") << r.dump();
  const auto reply = started->get_future().get();
  EXPECT_TRUE(reply.value("ok", false)) << reply.dump();
  EXPECT_EQ(r["transaction"], reply["transaction"]);
}

TEST(RemoteCommands, RetryStartsTheLastRefusedStartAgainWithTheSameToken) {
  TempDir dir;
  Backend backend(dir);
  Pile p(dir, site_yaml(commands_section(backend), "{latency_ms: 0, declined_tokens: [\"card:BAD\"]}"));
  EXPECT_EQ(p.run(backend, "retry_start", {{"connector", 1}}, 1)["message"], "connector 1 has no refused start to retry");
  ASSERT_TRUE(eventually([&] { return p.connector(0)["status"] == "Preparing"; }));
  const auto refused = p.request({{"cmd", "session_start"}, {"connector", 1}, {"token", "card:BAD"}});
  ASSERT_FALSE(refused.value("ok", true));
  const std::size_t declined = p.payment_lines({"ledger: authorize", "declined"});
  ASSERT_EQ(declined, 1u);
  auto r = p.run(backend, "retry_start", {{"connector", 1}}, 2);
  EXPECT_EQ(r["result"], "failed");
  EXPECT_NE(r["message"].get<std::string>().find("declined"), std::string::npos) << r.dump();
  EXPECT_EQ(p.payment_lines({"ledger: authorize", "declined"}), 2u) << "the same card was asked again, in a transaction of its own";
  EXPECT_EQ(r.dump().find("BAD"), std::string::npos) << "no token in the answer";
  // The retry was refused in turn: that refusal is the one a next retry starts again.
  EXPECT_EQ(p.run(backend, "retry_start", {{"connector", 1}}, 3)["result"], "failed");
  EXPECT_EQ(p.payment_lines({"ledger: authorize", "declined"}), 3u);
}

TEST(RemoteCommands, ARetryComesWithinTheWindow) {
  TempDir dir;
  Backend backend(dir);
  // 60 clock seconds per real second: the window of 5 s passes quickly.
  Pile p(dir, site_yaml(commands_section(backend, ", retry_window_s: 5, window_s: 3600"), "{latency_ms: 0, declined_tokens: [\"card:BAD\"]}"), 60.0);
  ASSERT_TRUE(eventually([&] { return p.connector(0)["status"] == "Preparing"; }));
  ASSERT_FALSE(p.request({{"cmd", "session_start"}, {"connector", 1}, {"token", "card:BAD"}}).value("ok", true));
  const auto t0 = p.now();
  ASSERT_TRUE(eventually([&] { return p.now() > t0 + 10; }));
  auto r = p.run(backend, "retry_start", {{"connector", 1}}, 1);
  EXPECT_EQ(r["result"], "failed");
  EXPECT_NE(r["message"].get<std::string>().find("a retry is taken within 5 s"), std::string::npos) << r.dump();
}

// --- Firmware ------------------------------------------------------------------------------------

Bytes image_of(std::size_t n) {
  Bytes out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::uint8_t>((i * 131) ^ (i >> 8));
  return out;
}

TEST(RemoteCommands, AFirmwareImageIsStagedOnlyWhenItsSignatureHolds) {
  TempDir dir;
  Backend backend(dir);
  Backend firmware(dir, KeyAlgorithm::ecdsa_p256, "firmware");
  const fs::path staging = dir.path() / "staging";
  Pile p(dir, site_yaml(commands_section(backend, ", firmware_key: " + firmware.cert.string() + ", firmware_staging: " + staging.string())));
  const Bytes image = image_of(40000);
  const SigningKey fw(firmware.key.string());
  const SigningKey not_fw(backend.key.string());
  auto args = [&](const std::string& name, const Bytes& sig) {
    return json{{"name", name}, {"image", json::binary(image)}, {"sig", json::binary(sig)}};
  };
  // Signed by the command key, not the firmware key: refused, nothing written. Fragmented for a
  // link of 1024 bytes (a transfer of command frames, docs/protocol.md section 5).
  p.deliver(backend.frames({.name = "firmware", .args = args("pile-2.0.bin", not_fw.sign(image)), .time = p.now(), .seq = 1}, 1024));
  auto bad = p.result("cmd:1:");
  EXPECT_EQ(bad["result"], "failed");
  EXPECT_NE(bad["message"].get<std::string>().find("does not verify with the firmware-signing key"), std::string::npos) << bad.dump();
  EXPECT_FALSE(fs::exists(staging / "pile-2.0.bin"));
  // A bad file name is refused before anything else.
  auto bad_name = p.run(backend, "firmware", args("../etc/passwd", fw.sign(image)), 2);
  EXPECT_EQ(bad_name["result"], "failed");
  // Signed by the firmware key: written whole.
  const auto frames = backend.frames({.name = "firmware", .args = args("pile-2.0.bin", fw.sign(image)), .time = p.now(), .seq = 3}, 1024);
  ASSERT_GT(frames.size(), 30u) << "a transfer of many fragments";
  p.deliver(frames);
  auto ok = p.result("cmd:3:");
  ASSERT_EQ(ok["result"], "ok") << ok.dump();
  EXPECT_EQ(ok["bytes"], image.size());
  EXPECT_EQ(ok["sha256"], to_hex(digest(HashAlgorithm::sha256, image)));
  std::ifstream in(staging / "pile-2.0.bin", std::ios::binary);
  const Bytes written((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(written, image);
  EXPECT_FALSE(fs::exists(staging / "pile-2.0.bin.tmp"));
}

TEST(RemoteCommands, FirmwareWithoutAFirmwareKeyIsRefused) {
  TempDir dir;
  Backend backend(dir);
  Pile p(dir, site_yaml(commands_section(backend)));
  auto r = p.run(backend, "firmware", {{"name", "x.bin"}, {"image", json::binary(Bytes{1, 2, 3})}, {"sig", json::binary(Bytes{4})}}, 1);
  EXPECT_EQ(r["result"], "failed");
  EXPECT_NE(r["message"].get<std::string>().find("firmware transfers are not enabled"), std::string::npos);
}

// --- The site file ---------------------------------------------------------------------------------

TEST(RemoteCommandsConfig, KeysAreCheckedAtTheirLine) {
  TempDir dir;
  Backend backend(dir);
  PluginRegistry registry({PILECORE_PLUGIN_DIR});
  auto load = [&](const std::string& commands) { return load_site_text(site_yaml(commands), "site.yaml", registry); };
  const auto good = load(commands_section(backend, ", window_s: 120"));
  ASSERT_TRUE(good.site) << good.diagnostics.format();
  ASSERT_TRUE(good.site->uplink.commands);
  EXPECT_EQ(good.site->uplink.commands->window_s, 120);
  EXPECT_EQ(good.site->uplink.commands->key, backend.cert.string());

  const auto missing = load("{key: " + (dir.path() / "nope.pem").string() + "}");
  EXPECT_FALSE(missing.site);
  const std::string m = missing.diagnostics.format();
  EXPECT_NE(m.find("site.yaml:28:"), std::string::npos) << m;
  EXPECT_NE(m.find("'links.commands.key': " + (dir.path() / "nope.pem").string() + ": cannot read the file"), std::string::npos) << m;

  const auto relative = load("{key: backend.pem}");
  EXPECT_NE(relative.diagnostics.format().find("'links.commands.key' must be an absolute path"), std::string::npos) << relative.diagnostics.format();
  const auto no_key = load("{window_s: 10}");
  EXPECT_FALSE(no_key.site);
  EXPECT_NE(no_key.diagnostics.format().find("key"), std::string::npos) << no_key.diagnostics.format();
  const auto half = load(commands_section(backend, ", firmware_key: " + backend.cert.string()));
  EXPECT_NE(half.diagnostics.format().find("firmware_key and firmware_staging go together"), std::string::npos) << half.diagnostics.format();
}

}  // namespace
}  // namespace pilecore::core
