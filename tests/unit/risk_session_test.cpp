// The risk engine in a running pile: the rules run before the authorisation and again before
// the capture, their decisions are kept with the transaction, and `pilectl transactions` shows
// them (never the token).
#include <gtest/gtest.h>

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

std::string site(const std::string& risk_instances) {
  return R"(site: {id: RISK-1, name: Risk test, location: {lat: 31.2, lon: 121.5}, timezone: Asia/Shanghai}
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
    config: {arrive_after_s: 0, ev_ready_delay_ms: 0, battery_capacity_wh: 200000, initial_soc_pct: 10}
)" + risk_instances +
         sim_payment_and_flat_tariff(30000);
}

nlohmann::json request(RunningSite& s, const nlohmann::json& req) {
  std::promise<nlohmann::json> p;
  auto f = p.get_future();
  s.runtime().dispatch([&] { s.runtime().handle_request(req, [&p](nlohmann::json r) { p.set_value(std::move(r)); }); });
  return f.get();
}

std::string listing(const TempDir& dir, const std::string& txn) {
  std::ostringstream out, err;
  EXPECT_EQ(list_transactions(dir.path() / "state" / "pilecore.db", 10, txn, out, err), 0) << err.str();
  return out.str();
}

}  // namespace

TEST(RiskSession, ADeniedStartIsRefusedAndItsDecisionKept) {
  TempDir dir;
  RunningSite s(dir, site(R"(  amount:
    plugin: risk-amount
    config: {max_amount_fen: 20000, action: deny}
  daily:
    plugin: risk-daily-count
)"),
                {PILECORE_PLUGIN_DIR}, 60.0);
  ASSERT_TRUE(eventually([&] { return s.runtime().ready(); }));
  ASSERT_TRUE(eventually([&] { return request(s, {{"cmd", "status"}})["connectors"][0]["status"] == "Preparing"; }));
  // The site pre-authorises 300 yuan; the rule allows 200.
  const auto r = request(s, {{"cmd", "session_start"}, {"connector", 1}, {"token", "card:04A1B2C3"}});
  EXPECT_FALSE(r.value("ok", true)) << r.dump();
  EXPECT_NE(r.dump().find("estimated amount 300.00 yuan is above max_amount_fen 20000"), std::string::npos) << r.dump();
  s.stop();
  Database db(dir.path() / "state" / "pilecore.db", Database::ReadOnly{});
  const auto rows = RiskRepository(db).listing(10);
  ASSERT_TRUE(rows.empty()) << "a refused start leaves no transaction row";
  // The decision is kept under the transaction id the start was given.
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db.handle(), "SELECT txn_id, phase, verdict, answers FROM risk_decisions", -1, &st, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  const std::string phase = reinterpret_cast<const char*>(sqlite3_column_text(st, 1));
  const std::string verdict = reinterpret_cast<const char*>(sqlite3_column_text(st, 2));
  const std::string answers = reinterpret_cast<const char*>(sqlite3_column_text(st, 3));
  sqlite3_finalize(st);
  EXPECT_EQ(phase, "authorize");
  EXPECT_EQ(verdict, "deny");
  EXPECT_NE(answers.find("amount: deny (answered): estimated amount 300.00 yuan"), std::string::npos) << answers;
  EXPECT_NE(answers.find("daily: allow (answered)"), std::string::npos) << answers;
  EXPECT_EQ(answers.find("04A1B2C3"), std::string::npos) << "no token in a decision";
}

TEST(RiskSession, TheRulesRunBeforeTheAuthorisationAndBeforeTheCapture) {
  TempDir dir;
  RunningSite s(dir, site(R"(  amount:
    plugin: risk-amount
    risk_deadline_ms: 600000
  daily:
    plugin: risk-daily-count
    risk_deadline_ms: 600000
    risk_on_failure: deny
)"),
                {PILECORE_PLUGIN_DIR}, 60.0);
  ASSERT_TRUE(eventually([&] { return s.runtime().ready(); }));
  ASSERT_TRUE(eventually([&] { return request(s, {{"cmd", "status"}})["connectors"][0]["status"] == "Preparing"; }));
  const auto started = request(s, {{"cmd", "session_start"}, {"connector", 1}, {"token", "card:04A1B2C3"}});
  ASSERT_TRUE(started.value("ok", false)) << started.dump();
  const std::string txn = started["transaction"];
  ASSERT_TRUE(eventually([&] { return request(s, {{"cmd", "status"}})["connectors"][0]["status"] == "Charging"; }));
  // Some energy, so that there is something to capture (and a capture phase to judge).
  ASSERT_TRUE(eventually([&] {
    const auto st = request(s, {{"cmd", "status"}})["connectors"][0];
    return st.contains("session") && st["session"].value("energy_wh", 0) > 0;
  }));
  const auto stopped = request(s, {{"cmd", "session_stop"}, {"connector", 1}});
  ASSERT_TRUE(stopped.value("ok", false)) << stopped.dump();
  EXPECT_EQ(stopped["receipt"]["capture_status"], "captured") << "a capture-phase allow lets the capture go ahead";
  const auto text = listing(dir, txn);
  EXPECT_NE(text.find(txn), std::string::npos) << text;
  EXPECT_NE(text.find("authorize allow, capture allow"), std::string::npos) << text;
  EXPECT_NE(text.find("authorize amount: allow (answered)"), std::string::npos) << text;
  EXPECT_NE(text.find("capture   amount: allow (answered)"), std::string::npos) << text;
  EXPECT_NE(text.find("capture   daily: allow (answered)"), std::string::npos) << text;
  EXPECT_EQ(text.find("04A1B2C3"), std::string::npos) << "the listing never shows a token";
}

TEST(RiskSession, PilectlTransactionsNamesAnUnknownTransaction) {
  TempDir dir;
  {
    Database db(dir.path() / "p.db");
  }
  std::ostringstream out, err;
  EXPECT_EQ(list_transactions(dir.path() / "p.db", 10, "NOPE", out, err), 1);
  EXPECT_NE(err.str().find("no transaction NOPE"), std::string::npos) << err.str();
  EXPECT_EQ(list_transactions(dir.path() / "missing.db", 10, "", out, err), 1);
  EXPECT_NE(err.str().find("no such database"), std::string::npos) << err.str();
}
