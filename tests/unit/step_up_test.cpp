// Risk step-up end to end (issue #11 item 5), on the shipped simulated site (configs/sim-site.yaml):
// a hold above the velocity rule's 300 yuan answers step_up, the start waits for a second factor,
// and each factor the site allows completes it: the card's PIN at the pile (checked by the payment
// method, never by the core), a confirmation in the app, or another payment method. Not completing
// it in time ends the start with the reason shown and spoken by the connector's indicator.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <future>
#include <sstream>

#include "risk_repository.hpp"
#include "storage.hpp"
#include "test_support.hpp"
#include "transactions_command.hpp"

using namespace pilecore;
using namespace pilecore::core;
using namespace pilecore::test;
using namespace std::chrono_literals;

namespace {

/// configs/sim-site.yaml with a vehicle waiting on connector 1 at once, answers without latency,
/// and `step_up` (a YAML map) in place of the file's payment.step_up.
std::string sim_site(const std::string& step_up) {
  YAML::Node root = YAML::LoadFile(std::string(PILECORE_TEST_SOURCE_DIR) + "/configs/sim-site.yaml");
  YAML::Node p1 = root["plugins"]["power-1"]["config"];
  p1["arrive_after_s"] = 0;
  p1["ev_ready_delay_ms"] = 0;
  root["plugins"]["sim"]["config"]["latency_ms"] = 0;
  root["plugins"]["wallet"]["config"]["latency_ms"] = 0;
  root["payment"]["step_up"] = YAML::Load(step_up);
  YAML::Emitter em;
  em << root;
  return em.c_str();
}

constexpr const char* kAllFactors = "{factors: [pin, app_confirmation, other_method], timeout_s: 600}";

nlohmann::json status_of(RunningSite& s) { return s.request({{"cmd", "status"}}); }

/// Sends a request whose reply comes later (a start waiting for its second factor).
std::future<nlohmann::json> send(RunningSite& s, const nlohmann::json& req) {
  auto p = std::make_shared<std::promise<nlohmann::json>>();
  auto f = p->get_future();
  s.runtime().dispatch([&s, req, p] { s.runtime().handle_request(req, [p](nlohmann::json r) { p->set_value(std::move(r)); }); });
  return f;
}

/// A start of 400 yuan (above the rule's 300) on connector 1; waits until its step-up is asked.
std::future<nlohmann::json> start_big(RunningSite& s, const std::string& token = "card:04A1B2C3D4") {
  EXPECT_TRUE(eventually([&] { return s.runtime().ready() && status_of(s)["connectors"][0]["status"] == "Preparing"; }));
  auto f = send(s, {{"cmd", "session_start"}, {"connector", 1}, {"token", token}, {"mode", "amount:40000"}});
  EXPECT_TRUE(eventually([&] { return status_of(s)["connectors"][0].contains("step_up"); })) << status_of(s).dump(2);
  return f;
}

nlohmann::json reply(std::future<nlohmann::json>& f) {
  if (f.wait_for(30s) != std::future_status::ready) return {{"ok", false}, {"error", "no reply within 30 s"}};
  return f.get();
}

/// `pilectl transactions` for one transaction, once its step-up outcome is on disk.
std::string listing(const TempDir& dir, const std::string& txn) {
  std::string shown;
  EXPECT_TRUE(eventually([&] {
    std::ostringstream out, err;
    if (list_transactions(dir.path() / "state" / "pilecore.db", 10, txn, out, err) != 0) return false;
    shown = out.str();
    return shown.find("    step_up ") != std::string::npos;
  })) << shown;
  return shown;
}

}  // namespace

TEST(StepUp, StatusShowsTheFactorsOfferedAndThePinAtThePileStartsTheSession) {
  TempDir dir;
  auto indicator = capture_log("indicator:sim-indicator:led-1");
  RunningSite site(dir, sim_site(kAllFactors), {PILECORE_PLUGIN_DIR}, 60.0, "2026-03-02T03:00:00Z");
  auto started = start_big(site);
  const auto waiting = status_of(site)["connectors"][0]["step_up"];
  EXPECT_EQ(waiting["factors"], nlohmann::json({"pin", "app_confirmation", "other_method"})) << waiting.dump();
  EXPECT_EQ(waiting["methods"], nlohmann::json({"wallet"})) << waiting.dump();
  EXPECT_NE(waiting.value("reasons", "").find("above"), std::string::npos) << waiting.dump();
  // The prompt is shown and spoken at the connector.
  EXPECT_TRUE(eventually([&] {
    for (const auto& l : indicator->lines()) {
      if (l.find("enter your PIN, or confirm in the app, or pay another way") != std::string::npos) return true;
    }
    return false;
  }));
  // The app says no: the start ends, nothing held. A new start is stepped up again; the PIN.
  ASSERT_TRUE(site.request({{"cmd", "session_answer"}, {"connector", 1}, {"confirmed", false}}).value("ok", false));
  auto first = reply(started);
  EXPECT_FALSE(first.value("ok", true)) << first.dump();
  EXPECT_EQ(first.value("error", ""), "the payment was not confirmed in the app") << first.dump();

  auto again = start_big(site);
  const auto answered = site.request({{"cmd", "session_answer"}, {"connector", 1}, {"pin", "1234"}});
  ASSERT_TRUE(answered.value("ok", false)) << answered.dump();
  const auto r = reply(again);
  ASSERT_TRUE(r.value("ok", false)) << r.dump();
  const std::string txn = r.value("transaction", "");
  EXPECT_TRUE(eventually([&] { return status_of(site)["connectors"][0]["status"] == "Charging"; }));
  // The second verification is kept with the transaction's risk decisions (never the PIN).
  const std::string shown = listing(dir, txn);
  EXPECT_NE(shown.find("step_up"), std::string::npos) << shown;
  EXPECT_NE(shown.find("pin: entered, checked by sim"), std::string::npos) << shown;
  EXPECT_EQ(shown.find("1234"), std::string::npos) << shown;
}

TEST(StepUp, AWrongPinIsTheMethodsDeclineAndNothingIsHeld) {
  TempDir dir;
  RunningSite site(dir, sim_site(kAllFactors), {PILECORE_PLUGIN_DIR}, 60.0, "2026-03-02T03:00:00Z");
  auto started = start_big(site);
  ASSERT_TRUE(site.request({{"cmd", "session_answer"}, {"connector", 1}, {"pin", "9999"}}).value("ok", false));
  const auto r = reply(started);
  EXPECT_FALSE(r.value("ok", true)) << r.dump();
  EXPECT_NE(r.value("error", "").find("wrong PIN"), std::string::npos) << r.dump();
  EXPECT_FALSE(status_of(site)["connectors"][0].contains("session"));
}

TEST(StepUp, AConfirmationInTheAppStartsTheSession) {
  TempDir dir;
  RunningSite site(dir, sim_site(kAllFactors), {PILECORE_PLUGIN_DIR}, 60.0, "2026-03-02T03:00:00Z");
  auto started = start_big(site);
  ASSERT_TRUE(site.request({{"cmd", "session_answer"}, {"connector", 1}, {"confirmed", true}}).value("ok", false));
  const auto r = reply(started);
  ASSERT_TRUE(r.value("ok", false)) << r.dump();
  EXPECT_NE(listing(dir, r.value("transaction", "")).find("app_confirmation: confirmed in the app"), std::string::npos);
}

TEST(StepUp, AnotherPaymentMethodPaysTheSameTransaction) {
  TempDir dir;
  RunningSite site(dir, sim_site(kAllFactors), {PILECORE_PLUGIN_DIR}, 60.0, "2026-03-02T03:00:00Z");
  auto started = start_big(site);
  const std::string txn = status_of(site)["connectors"][0]["step_up"].value("transaction", "");
  // The same method again is not a second factor.
  const auto same = site.request({{"cmd", "session_start"}, {"connector", 1}, {"method", "sim"}, {"token", "card:04A1B2C3D4"}});
  EXPECT_NE(same.value("error", "").find("waits for a second verification"), std::string::npos) << same.dump();
  EXPECT_NE(same.value("error", "").find("payment with wallet"), std::string::npos) << same.dump();
  // The wallet: both starts are answered with the one session.
  auto by_wallet = send(site, {{"cmd", "session_start"}, {"connector", 1}, {"method", "wallet"}, {"token", "wallet:0012345"}});
  const auto w = reply(by_wallet);
  const auto r = reply(started);
  ASSERT_TRUE(w.value("ok", false)) << w.dump();
  ASSERT_TRUE(r.value("ok", false)) << r.dump();
  EXPECT_EQ(w.value("transaction", ""), txn);
  EXPECT_EQ(r.value("transaction", ""), txn);
  EXPECT_TRUE(eventually([&] { return status_of(site)["connectors"][0].contains("session"); }));
  EXPECT_EQ(status_of(site)["connectors"][0]["session"].value("method", ""), "wallet") << status_of(site).dump(2);
  EXPECT_NE(listing(dir, txn).find("other_method: wallet instead of sim"), std::string::npos) << listing(dir, txn);
}

TEST(StepUp, NotCompletedInTimeEndsTheStartWithTheReasonShownAndSpoken) {
  TempDir dir;
  auto indicator = capture_log("indicator:sim-indicator:led-1");
  RunningSite site(dir, sim_site("{factors: [app_confirmation], timeout_s: 10}"), {PILECORE_PLUGIN_DIR}, 600.0, "2026-03-02T03:00:00Z");
  EXPECT_TRUE(eventually([&] { return site.runtime().ready() && status_of(site)["connectors"][0]["status"] == "Preparing"; }));
  auto started = send(site, {{"cmd", "session_start"}, {"connector", 1}, {"token", "card:04A1B2C3D4"}, {"mode", "amount:40000"}});
  const auto r = reply(started);
  EXPECT_FALSE(r.value("ok", true)) << r.dump();
  EXPECT_EQ(r.value("error", ""), "the second verification was not completed in time") << r.dump();
  EXPECT_EQ(r.value("verdict", ""), "step_up") << r.dump();
  EXPECT_TRUE(eventually([&] {
    for (const auto& l : indicator->lines()) {
      if (l.find("says: the second verification was not completed in time") != std::string::npos) return true;
    }
    return false;
  }));
  // The connector is free again: a start within the rule's limit goes ahead without a step-up.
  const auto small = site.request({{"cmd", "session_start"}, {"connector", 1}, {"token", "card:04A1B2C3D4"}});
  EXPECT_TRUE(small.value("ok", false)) << small.dump();
  // A start that never began has no transaction row to list; its decisions are kept all the same.
  Database db(dir.path() / "state" / "pilecore.db", Database::ReadOnly{});
  std::vector<RiskDecisionRow> decisions;
  ASSERT_TRUE(eventually([&] {
    decisions = RiskRepository(db).decisions(r.value("transaction", ""));
    return decisions.size() == 2;
  }));
  EXPECT_EQ(decisions[0].phase, "authorize");
  EXPECT_EQ(decisions[0].verdict, "step_up");
  EXPECT_EQ(decisions[1].phase, "step_up");
  EXPECT_EQ(decisions[1].verdict, "deny");
  EXPECT_EQ(decisions[1].answers, "none: not completed in time");
}

TEST(StepUp, OnlyTheConfiguredFactorsThatCanBeGivenAreOffered) {
  TempDir dir;
  // The wallet checks no PIN: a step-up of a wallet payment cannot offer one.
  RunningSite site(dir, sim_site("{factors: [pin, app_confirmation], timeout_s: 600}"), {PILECORE_PLUGIN_DIR}, 60.0, "2026-03-02T03:00:00Z");
  EXPECT_TRUE(eventually([&] { return site.runtime().ready() && status_of(site)["connectors"][0]["status"] == "Preparing"; }));
  auto started = send(site, {{"cmd", "session_start"}, {"connector", 1}, {"method", "wallet"}, {"token", "wallet:0012345"}, {"mode", "amount:40000"}});
  ASSERT_TRUE(eventually([&] { return status_of(site)["connectors"][0].contains("step_up"); }));
  EXPECT_EQ(status_of(site)["connectors"][0]["step_up"]["factors"], nlohmann::json({"app_confirmation"}));
  const auto pin = site.request({{"cmd", "session_answer"}, {"connector", 1}, {"pin", "1234"}});
  EXPECT_EQ(pin.value("error", ""), "pin is not a second factor offered for " + status_of(site)["connectors"][0]["step_up"].value("transaction", "") +
                                        " (offered: app_confirmation)")
      << pin.dump();
  ASSERT_TRUE(site.request({{"cmd", "session_answer"}, {"connector", 1}, {"confirmed", true}}).value("ok", false));
  EXPECT_TRUE(reply(started).value("ok", false));
}

TEST(StepUp, NoFactorsMeansAStepUpRefusesTheStart) {
  TempDir dir;
  RunningSite site(dir, sim_site("{factors: []}"), {PILECORE_PLUGIN_DIR}, 60.0, "2026-03-02T03:00:00Z");
  EXPECT_TRUE(eventually([&] { return site.runtime().ready() && status_of(site)["connectors"][0]["status"] == "Preparing"; }));
  const auto r = site.request({{"cmd", "session_start"}, {"connector", 1}, {"token", "card:04A1B2C3D4"}, {"mode", "amount:40000"}});
  EXPECT_FALSE(r.value("ok", true));
  EXPECT_NE(r.value("error", "").find("no second factor can be offered here"), std::string::npos) << r.dump();
}

TEST(StepUp, TheFactorsAreCheckedInTheSiteFile) {
  TempDir dir;
  std::string yaml = sim_site(kAllFactors);
  yaml.replace(yaml.find("other_method]"), std::string("other_method]").size(), "sms]");
  PluginRegistry registry({PILECORE_PLUGIN_DIR});
  const auto outcome = load_site(dir.write("site.yaml", yaml), registry);
  EXPECT_FALSE(outcome.site);
  const std::string text = outcome.diagnostics.format();
  EXPECT_NE(text.find("'payment.step_up.factors' has 'sms'; allowed: pin, app_confirmation, other_method"), std::string::npos) << text;
  EXPECT_NE(text.find("site.yaml:"), std::string::npos) << text;
}
