// Stop reasons: a client may give only the reasons that are a client's (Local, Remote); the
// pile's own (Fault, Shutdown, EVFull, EVDisconnected, FundsExhausted, the modes' *Reached) are refused with a clear
// error. Whatever the reason, a stop leaves the connector's state machine in a state without a
// session: a Fault stop once left it Charging with no session, refusing every start.
#include <gtest/gtest.h>

#include <future>

#include "session_engine.hpp"
#include "test_support.hpp"
#include "wire.hpp"

using namespace pilecore;
using namespace pilecore::core;
using namespace pilecore::test;
using namespace std::chrono_literals;

namespace {

std::string site_yaml() { return one_connector_sim_site("STOP-1", "Stop test"); }

nlohmann::json request(RunningSite& site, const nlohmann::json& req) {
  std::promise<nlohmann::json> p;
  auto f = p.get_future();
  site.runtime().dispatch([&] { site.runtime().handle_request(req, [&p](nlohmann::json r) { p.set_value(std::move(r)); }); });
  return f.get();
}

nlohmann::json connector_1(RunningSite& site) { return request(site, {{"cmd", "status"}})["connectors"][0]; }

/// A running site with a session charging on connector 1; returns its transaction id.
std::string start_charging(RunningSite& site) {
  EXPECT_TRUE(eventually([&] { return site.runtime().ready() && connector_1(site)["status"] == "Preparing"; }));
  const auto started = request(site, {{"cmd", "session_start"}, {"connector", 1}, {"token", "card:0451"}});
  EXPECT_TRUE(started.value("ok", false)) << started.dump();
  EXPECT_TRUE(eventually([&] { return connector_1(site)["status"] == "Charging"; }));
  return started.value("transaction", "");
}

}  // namespace

TEST(StopReasons, AClientMayGiveOnlyLocalOrRemote) {
  TempDir dir;
  RunningSite site(dir, site_yaml(), {PILECORE_PLUGIN_DIR}, 600.0, "2026-03-02T03:00:00Z");
  const std::string txn = start_charging(site);
  for (const char* reason : {"Fault", "Shutdown", "EVFull", "EVDisconnected", "FundsExhausted", "EnergyReached", "TimeReached", "AmountReached"}) {
    const auto r = request(site, {{"cmd", "session_stop"}, {"connector", 1}, {"reason", reason}});
    EXPECT_EQ(r["ok"], false) << reason;
    EXPECT_EQ(r["error"], fmt::format("stop reason '{}' is the pile's own, not a client's; a client may give Local or Remote", reason));
    const auto c = connector_1(site);
    EXPECT_EQ(c["status"], "Charging") << "refused, so nothing changed";
    EXPECT_EQ(c["session"]["transaction"], txn);
  }
  EXPECT_EQ(request(site, {{"cmd", "session_stop"}, {"connector", 1}, {"reason", "Whim"}})["error"],
            "bad request: unknown stop reason 'Whim'; a client may give Local or Remote");
  const auto stopped = request(site, {{"cmd", "session_stop"}, {"connector", 1}, {"reason", "Remote"}});
  ASSERT_TRUE(stopped.value("ok", false)) << stopped.dump();
  EXPECT_EQ(stopped["receipt"]["stop_reason"], "Remote");
  EXPECT_EQ(connector_1(site)["status"], "Finishing");
}

TEST(StopReasons, EveryStopLeavesTheConnectorWithoutASession) {
  // Where each stop leaves a connector whose vehicle is still there (EVDisconnected: the
  // vehicle has gone, as far as the pile knows).
  const std::vector<std::pair<StopReason, std::string>> expected = {
      {StopReason::local, "Finishing"},          {StopReason::remote, "Finishing"}, {StopReason::shutdown, "Finishing"},
      {StopReason::funds_exhausted, "Finishing"}, {StopReason::ev_full, "Finishing"}, {StopReason::ev_disconnected, "Available"},
      {StopReason::fault, "Faulted"},           {StopReason::energy_reached, "Finishing"}, {StopReason::time_reached, "Finishing"},
      {StopReason::amount_reached, "Finishing"}};
  for (const auto& [reason, status] : expected) {
    SCOPED_TRACE(std::string(to_string(reason)));
    TempDir dir;
    RunningSite site(dir, site_yaml(), {PILECORE_PLUGIN_DIR}, 600.0, "2026-03-02T03:00:00Z");
    const std::string txn = start_charging(site);
    // Straight into the engine, as the pile's own handlers and any future caller would stop.
    std::promise<nlohmann::json> done;
    site.on_strand([&, reason = reason] { site.runtime().engine()->stop(1, reason, [&done](const StopOutcome& r) { done.set_value(to_json(r)); }); });
    auto f = done.get_future();
    ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
    const auto receipt = f.get();
    ASSERT_TRUE(receipt.value("ok", false)) << receipt.dump();
    EXPECT_EQ(receipt["receipt"]["stop_reason"], std::string(to_string(reason)));
    EXPECT_TRUE(eventually([&] { return connector_1(site)["status"] == status; }, 2s)) << connector_1(site).dump();
    EXPECT_FALSE(connector_1(site).contains("session"));
    if (reason != StopReason::fault) {
      // Consistent means usable: the next driver can start.
      const auto again = request(site, {{"cmd", "session_start"}, {"connector", 1}, {"token", "card:0451"}});
      EXPECT_TRUE(again.value("ok", false)) << again.dump();
    }
  }
}
