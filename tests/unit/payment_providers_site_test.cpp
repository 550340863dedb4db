// payment-face and payment-credit in a whole running site (the real runtime: loader, site
// validation, session engine, payment saga, strand): a face shown to the camera module starts a
// session that the face-pay provider authorises and that is billed and captured; a spoof starts
// nothing and reaches no provider; a credit session's bill becomes a debt that the saga keeps
// asking about until the automatic debit has gone through.
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <string>
#include <thread>

#include "face_module_sim.hpp"
#include "https_provider.hpp"
#include "test_pki.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace std::chrono_literals;
using pilecore::test::eventually;
using pilecore::test::RunningSite;
using pilecore::test::TempDir;

namespace {

nlohmann::json request(RunningSite& site, const nlohmann::json& req) {
  std::promise<nlohmann::json> p;
  auto f = p.get_future();
  site.runtime().dispatch([&] { site.runtime().handle_request(req, [&p](nlohmann::json r) { p.set_value(std::move(r)); }); });
  return f.get();
}

std::string status_of(RunningSite& site) { return request(site, {{"cmd", "status"}})["connectors"][0].value("status", ""); }

/// One connector; `payment` is the YAML of the payment instances, `tokens` of payment.tokens.
std::string site_yaml(const std::string& payment, const std::string& default_method, const std::string& tokens) {
  return R"(site: {id: PAY-1, name: Provider test, location: {lat: 31.2, lon: 121.5}, timezone: Asia/Shanghai}
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
    config: {arrive_after_s: 0, ev_ready_delay_ms: 0, battery_capacity_wh: 200000, initial_soc_pct: 10, tick_ms: 1000}
)" + payment + R"(
tariffs:
  decimals: 2
  plans:
    all:
      prices: {flat: {electricity: 69.50, service: 80.00}}
      periods: [{from: "00:00", to: "24:00", type: flat}]
  week: {mon: all, tue: all, wed: all, thu: all, fri: all, sat: all, sun: all}
payment: {default_method: )" + default_method + ", preauth_fen: 20000, authorize_timeout_ms: 600000, tokens: " + tokens + "}\n";
}

nlohmann::json capture_of(const nlohmann::json& receipt) {
  for (const auto& op : receipt["operations"]) {
    if (op["kind"] == "capture") return op;
  }
  return {};
}

TEST(ProviderSite, AFaceAtTheCameraStartsASessionThatTheProviderAuthorisesAndCaptures) {
  TempDir dir;
  const auto pki = sim::make_test_pki(dir.path());
  sim::FacePayProvider provider(pki);
  provider.enrol("FACE0001", 50000);
  sim::FaceModuleSim module;
  const std::string face = R"(  face:
    plugin: payment-face
    connector: 1
    config: {provider_url: ")" + provider.url() + R"(", provider_ca_file: ")" + pki.ca_cert.string() +
                           R"(", module_port: )" + std::to_string(module.port()) + R"(, module_reconnect_ms: 50, min_liveness: 0.9})";
  RunningSite site(dir, site_yaml(face, "face", "{face: {method: face}}"), {PILECORE_PLUGIN_DIR}, 60.0, "2026-03-02T03:00:00Z");
  ASSERT_TRUE(eventually([&] { return site.runtime().ready() && status_of(site) == "Preparing" && module.connected(); }));

  // A photo: refused by the plugin, no provider call, no session.
  module.show("FACE0001", 400);
  ASSERT_TRUE(eventually([&] {
    for (const auto& l : module.received()) {
      if (l == "ACK 1") return true;
    }
    return false;
  }));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(status_of(site), "Preparing");
  EXPECT_EQ(provider.requests(), 0u);

  module.show("FACE0001", 980);
  ASSERT_TRUE(eventually([&] { return status_of(site) == "Charging"; })) << status_of(site);
  std::this_thread::sleep_for(300ms);
  const auto stopped = request(site, {{"cmd", "session_stop"}, {"connector", 1}});
  ASSERT_TRUE(stopped.value("ok", false)) << stopped.dump();
  const std::string txn = stopped["receipt"].value("transaction", stopped.value("transaction", ""));
  const std::int64_t captured = stopped["receipt"].value("captured_fen", std::int64_t{0});
  EXPECT_GT(captured, 0) << stopped.dump();
  ASSERT_FALSE(txn.empty()) << stopped.dump();
  EXPECT_EQ(provider.captured_fen(txn), captured);
  EXPECT_EQ(provider.held_fen(), 0);
  EXPECT_EQ(provider.requests("/v1/face/authorize"), 1u);
}

TEST(ProviderSite, ACreditSessionsBillIsADebtConfirmedOnceTheDebitWentThrough) {
  TempDir dir;
  const auto pki = sim::make_test_pki(dir.path());
  sim::CreditProvider provider(pki);
  provider.set_score("u-good", 720);
  provider.decline_debits(1);
  const std::string credit = R"(  credit:
    plugin: payment-credit
    config: {provider_url: ")" + provider.url() + R"(", provider_ca_file: ")" + pki.ca_cert.string() +
                             R"(", debit_delay_s: 60, retry_first_s: 60})";
  RunningSite site(dir, site_yaml(credit, "credit", "{credit: {method: credit}}"), {PILECORE_PLUGIN_DIR}, 60.0, "2026-03-02T03:00:00Z");
  ASSERT_TRUE(eventually([&] { return site.runtime().ready() && status_of(site) == "Preparing"; }));

  const auto started = request(site, {{"cmd", "session_start"}, {"connector", 1}, {"token", "credit:u-good"}});
  ASSERT_TRUE(started.value("ok", false)) << started.dump();
  const std::string txn = started["transaction"];
  ASSERT_TRUE(eventually([&] { return status_of(site) == "Charging"; }));
  std::this_thread::sleep_for(300ms);
  const auto stopped = request(site, {{"cmd", "session_stop"}, {"connector", 1}});
  ASSERT_TRUE(stopped.value("ok", false)) << stopped.dump();

  // Pending first (a debt), then confirmed by the saga's retry once the second debit succeeded.
  nlohmann::json receipt;
  ASSERT_TRUE(eventually(
      [&] {
        receipt = request(site, {{"cmd", "receipt"}, {"transaction", txn}});
        return capture_of(receipt).value("state", "") == "confirmed";
      },
      20s))
      << receipt.dump(2);
  const std::int64_t captured = capture_of(receipt)["amount_fen"].get<std::int64_t>();
  EXPECT_GT(captured, 0);
  EXPECT_EQ(provider.debited_fen("u-good"), captured);
  EXPECT_EQ(provider.debits(), 1u);
  EXPECT_EQ(provider.debit_attempts(), 2u) << "one declined, one retried with the same operation id";

  // A low score through the site: declined with the reason, no session.
  provider.set_score("u-low", 500);
  const auto low = request(site, {{"cmd", "session_start"}, {"connector", 1}, {"token", "credit:u-low"}});
  EXPECT_FALSE(low.value("ok", true));
  EXPECT_NE(low.dump().find("650"), std::string::npos) << low.dump();
}

}  // namespace
