// payment-face, the specification: a camera module's face is presented with its liveness; a
// live face is authorised by the face-pay provider over HTTPS (its certificate checked), a
// spoof is refused before any network call; capture, void and refund are provider calls,
// idempotent on the operation id; an unreachable provider makes an operation pending, never
// failed. The plugin is the real .so, the provider a real HTTPS server with a certificate the
// test makes, the camera module a TCP server speaking the module's line protocol.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>

#include "face_module_sim.hpp"
#include "https_provider.hpp"
#include "plugin_host.hpp"
#include "test_pki.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace std::chrono_literals;
using pilecore::test::PluginHost;
using pilecore::test::TempDir;

namespace {

const std::string kPlugin = std::string(PILECORE_PLUGIN_DIR) + "/payment-face.so";

std::string face_config(const sim::HttpsProvider& p, const std::string& ca, int module_port = 0) {
  return "{provider_url: \"" + p.url() + "\", provider_ca_file: \"" + ca + "\", provider_timeout_ms: 3000, min_liveness: 0.9, module_port: " +
         std::to_string(module_port) + ", module_reconnect_ms: 50}";
}

identification::Token face(const std::string& id, const std::string& liveness) {
  identification::Token t;
  t.type = "face";
  t.id = id;
  t.connector = 1;
  if (!liveness.empty()) t.evidence = {{"liveness", liveness}};
  return t;
}

payment::AuthorizationResult authorize(PluginHost& host, payment::Method& m, const std::string& txn, const identification::Token& t,
                                       std::int64_t fen = 30000) {
  std::optional<payment::AuthorizationResult> out;
  const std::string op = txn + "/authorize";
  m.authorize({.operation_id = op, .transaction_id = txn, .connector = 1, .token = &t, .channel = {}, .amount_fen = fen, .deadline = {}},
              [&](payment::AuthorizationResult r) { out = std::move(r); });
  EXPECT_TRUE(host.run_until([&] { return out.has_value(); })) << "authorize never answered";
  return out.value_or(payment::AuthorizationResult{});
}

payment::OperationResult capture(PluginHost& host, payment::Method& m, const std::string& txn, std::int64_t fen) {
  std::optional<payment::OperationResult> out;
  const std::string op = txn + "/capture";
  m.capture({.operation_id = op, .transaction_id = txn, .amount_fen = fen, .deadline = {}}, [&](payment::OperationResult r) { out = std::move(r); });
  EXPECT_TRUE(host.run_until([&] { return out.has_value(); })) << "capture never answered";
  return out.value_or(payment::OperationResult{});
}

struct FaceFixture : ::testing::Test {
  TempDir dir;
  sim::TestPki pki = sim::make_test_pki(dir.path());
  sim::FacePayProvider provider{pki};
  FaceFixture() { provider.enrol("FACE0001", 50000); }
};

TEST_F(FaceFixture, ALiveFaceIsAuthorisedByTheProviderThenCapturedAndRefundedOnceEach) {
  PluginHost host(kPlugin, face_config(provider, pki.ca_cert.string()), dir.path() / "state");
  auto& m = host.create();
  EXPECT_EQ(m.capabilities().token_types, std::vector<std::string>{"face"});

  const auto t = face("FACE0001", "0.970");
  const auto a = authorize(host, m, "T1", t);
  ASSERT_EQ(a.decision, payment::Decision::approved) << a.reason;
  EXPECT_EQ(a.authorized_fen, 30000);
  EXPECT_FALSE(a.reference.empty());
  EXPECT_EQ(provider.held_fen(), 30000);

  const auto c = capture(host, m, "T1", 1234);
  EXPECT_EQ(c.state, payment::OperationState::confirmed) << c.reason;
  EXPECT_EQ(c.amount_fen, 1234);
  // The core asks again with the same id after a restart: the same answer, no second capture.
  host.destroy();
  auto& again = host.create();
  const auto c2 = capture(host, again, "T1", 1234);
  EXPECT_EQ(c2.state, payment::OperationState::confirmed);
  EXPECT_EQ(provider.captured_fen("T1"), 1234);
  EXPECT_EQ(provider.effects(), 2u) << "one hold, one capture";

  std::optional<payment::OperationResult> r;
  again.refund({.operation_id = "T1/refund/1", .transaction_id = "T1", .amount_fen = 234, .reason = "short", .deadline = {}},
               [&](payment::OperationResult x) { r = x; });
  ASSERT_TRUE(host.run_until([&] { return r.has_value(); }));
  EXPECT_EQ(r->state, payment::OperationState::confirmed);
  EXPECT_EQ(provider.captured_fen("T1"), 1000);

  // Face ids are personal data: never in the plugin's log.
  for (const auto& l : host.log_lines) EXPECT_EQ(l.find("FACE0001"), std::string::npos) << l;
}

TEST_F(FaceFixture, ALowOrMissingLivenessIsDeclinedWithoutAnyNetworkCall) {
  PluginHost host(kPlugin, face_config(provider, pki.ca_cert.string()), dir.path() / "state");
  auto& m = host.create();
  for (const std::string live : {"0.500", "0.899", "", "high", "1.5"}) {
    const auto a = authorize(host, m, "T-" + live, face("FACE0001", live));
    EXPECT_EQ(a.decision, payment::Decision::declined) << live;
    EXPECT_NE(a.reason.find("liveness"), std::string::npos) << a.reason;
  }
  // The core releases each declined authorisation: that does not reach the provider either.
  std::optional<payment::OperationResult> released;
  m.cancel({.operation_id = "T-0.500/void", .transaction_id = "T-0.500", .deadline = {}, .authorization_id = "T-0.500/authorize", .channel = {}}, [&](payment::OperationResult r) { released = r; });
  ASSERT_TRUE(host.run_until([&] { return released.has_value(); }));
  EXPECT_EQ(released->state, payment::OperationState::confirmed);
  EXPECT_EQ(provider.requests(), 0u) << "a spoof never reaches the provider";
  EXPECT_EQ(authorize(host, m, "T-ok", face("FACE0001", "0.900")).decision, payment::Decision::approved) << "the threshold itself passes";
  EXPECT_EQ(provider.requests(), 1u);
}

TEST_F(FaceFixture, AProviderCertificateFromAnotherCaIsRefusedBeforeTheRequest) {
  TempDir other;
  const auto stranger = sim::make_test_pki(other.path(), "other", "some other CA");
  PluginHost host(kPlugin, face_config(provider, stranger.ca_cert.string()), dir.path() / "state");
  auto& m = host.create();
  const auto a = authorize(host, m, "T1", face("FACE0001", "0.990"));
  EXPECT_EQ(a.decision, payment::Decision::unavailable) << "the channel failed, not the payer: the core may fail over";
  EXPECT_NE(a.reason.find("certificate"), std::string::npos) << a.reason;
  EXPECT_EQ(provider.requests(), 0u) << "no request is sent over an unverified connection";
}

TEST_F(FaceFixture, ACertificateForAnotherHostIsRefused) {
  TempDir other;
  const auto misnamed = sim::make_test_pki(other.path(), "misnamed", "misnamed CA", {"pay.example.com"});
  sim::FacePayProvider wrong_name(misnamed);
  wrong_name.enrol("FACE0001", 50000);
  PluginHost host(kPlugin, face_config(wrong_name, misnamed.ca_cert.string()), dir.path() / "state");
  auto& m = host.create();
  const auto a = authorize(host, m, "T1", face("FACE0001", "0.990"));
  EXPECT_EQ(a.decision, payment::Decision::unavailable) << "the channel failed, not the payer: the core may fail over";
  EXPECT_NE(a.reason.find("certificate"), std::string::npos) << a.reason;
  EXPECT_EQ(wrong_name.requests(), 0u);
}

TEST_F(FaceFixture, AnUnknownFaceIsTheProvidersDecline) {
  PluginHost host(kPlugin, face_config(provider, pki.ca_cert.string()), dir.path() / "state");
  auto& m = host.create();
  const auto a = authorize(host, m, "T1", face("STRANGER", "0.990"));
  EXPECT_EQ(a.decision, payment::Decision::declined);
  EXPECT_EQ(a.reason, "face not recognised");
}

TEST_F(FaceFixture, AnOutageMakesTheCapturePendingAndTheRetryConfirmsIt) {
  PluginHost host(kPlugin, face_config(provider, pki.ca_cert.string()), dir.path() / "state");
  auto& m = host.create();
  ASSERT_EQ(authorize(host, m, "T1", face("FACE0001", "0.950")).decision, payment::Decision::approved);
  provider.set_outage(true);
  const auto down = capture(host, m, "T1", 500);
  EXPECT_EQ(down.state, payment::OperationState::pending) << "unreachable is never failed";
  provider.set_outage(false);
  provider.fail_next(1, 503);
  EXPECT_EQ(capture(host, m, "T1", 500).state, payment::OperationState::pending) << "a server error is not final either";
  EXPECT_EQ(capture(host, m, "T1", 500).state, payment::OperationState::confirmed);
  EXPECT_EQ(provider.captured_fen("T1"), 500);
}

TEST_F(FaceFixture, AnUnansweredAuthorisationIsUnavailableAndItsHoldReleased) {
  PluginHost host(kPlugin, face_config(provider, pki.ca_cert.string()), dir.path() / "state");
  auto& m = host.create();
  provider.fail_next(1, 500);
  const auto a = authorize(host, m, "T1", face("FACE0001", "0.950"));
  EXPECT_EQ(a.decision, payment::Decision::unavailable) << "the channel failed, not the payer: the core may fail over";
  EXPECT_NE(a.reason.find("HTTP 500"), std::string::npos) << a.reason;
  EXPECT_TRUE(host.run_until([&] { return provider.requests("/v1/face/cancel") == 1; })) << "a release follows";
  EXPECT_EQ(provider.held_fen(), 0);
}

TEST_F(FaceFixture, TheCameraModulesFacesArePresentedWithTheirLivenessAndAcknowledged) {
  sim::FaceModuleSim module;
  PluginHost host(kPlugin, face_config(provider, pki.ca_cert.string(), module.port()), dir.path() / "state");
  host.create();
  ASSERT_TRUE(pilecore::test::eventually([&] { return module.connected(); }));
  ASSERT_TRUE(host.run_until([&] { return !host.states.empty() && host.states.back().first == "up"; })) << "greeted by the module";
  EXPECT_NE(host.states.back().second.find("SIM-FACE-1"), std::string::npos);

  const int seq = module.show("FACE0001", 970);
  ASSERT_TRUE(host.run_until([&] { return host.presented.size() == 1; }));
  const auto& t = host.presented[0];
  EXPECT_EQ(t.type, "face");
  EXPECT_EQ(t.id, "FACE0001");
  EXPECT_EQ(t.connector, std::optional<std::uint32_t>(1));
  EXPECT_EQ(t.find("liveness"), std::optional<std::string_view>("0.970"));
  EXPECT_TRUE(pilecore::test::eventually([&] {
    const auto r = module.received();
    return !r.empty() && r.back() == "ACK " + std::to_string(seq);
  }));

  // A malformed line is answered ERR and counted, and the next face still comes through.
  module.send_line("FACE x FACE0001 970");
  module.send_line("FACE 9 FACE0001 4000");
  module.show("FACE0002", 500);
  ASSERT_TRUE(host.run_until([&] { return host.presented.size() == 2; }));
  EXPECT_EQ(host.presented[1].find("liveness"), std::optional<std::string_view>("0.500"));
  EXPECT_TRUE(pilecore::test::eventually([&] {
    const auto lines = module.received();
    return std::count_if(lines.begin(), lines.end(), [](const std::string& l) { return l.rfind("ERR ", 0) == 0; }) == 2;
  }));

  // The module reboots: the plugin reconnects by itself.
  module.drop();
  ASSERT_TRUE(pilecore::test::eventually([&] { return module.connected(); }));
  module.show("FACE0003", 990);
  EXPECT_TRUE(host.run_until([&] { return host.presented.size() == 3; }));
}

}  // namespace
