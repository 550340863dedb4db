// Charging sessions end to end, through the real loader, runtime, session engine, SQLite and
// simulated plugins: a session across a tariff boundary is billed per period; a fault mid-charge
// stops and bills it; a daemon killed with SIGKILL mid-session recovers it at the next start.
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>

#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>

#include "control_socket.hpp"
#include "receipt.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace pilecore::core;
using namespace pilecore::test;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

std::string site_yaml(const std::string& power_extra = "") {
  return R"(site:
  id: SESS-1
  name: Session test
  location: {lat: 31.2, lon: 121.5}
  timezone: Asia/Shanghai
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
    config:
      arrive_after_s: 0
      ev_ready_delay_ms: 0
      battery_capacity_wh: 200000
      initial_soc_pct: 10
      tick_ms: 1000
)" + power_extra + R"(
  sim:
    plugin: sim-payment
    config: {latency_ms: 0}
tariffs:
  decimals: 2
  plans:
    workday:
      prices:
        peak: {electricity: 100.44, service: 80.00}
        flat: {electricity: 69.50, service: 80.00}
        valley: {electricity: 39.46, service: 80.00}
      periods:
        - {from: "00:00", to: "07:00", type: valley}
        - {from: "07:00", to: "10:00", type: flat}
        - {from: "10:00", to: "15:00", type: peak}
        - {from: "15:00", to: "24:00", type: flat}
payment: {default_method: sim, preauth_fen: 30000, authorize_timeout_ms: 600000}  # 1 s of wall time at 600x: a loaded CI machine is slow
charging: {checkpoint_interval_s: 30, checkpoint_wh: 1000}
)";
}

/// Two connectors under one site limit, a cabinet sensor and a formula strategy.
std::string strategy_site(const std::string& strategy_config) {
  std::string y = R"(site: {id: STRAT-1, name: Strategy test, location: {lat: 31.2, lon: 121.5}, timezone: Asia/Shanghai}
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
  - {id: 2, type: gbt-dc, max_power_w: 60000}
plugins:
  cabinet:
    plugin: sim-sensor
    config: {interval_ms: 1000, temperature_c: 40, step: 0}
)";
  for (int c : {1, 2}) {
    y += fmt::format("  power-{0}:\n    plugin: sim-power\n    connector: {0}\n    config: {{arrive_after_s: 0, ev_ready_delay_ms: 0, battery_capacity_wh: 200000, initial_soc_pct: 10}}\n", c);
  }
  return y + "  strategy:\n    plugin: strategy-formula\n    config: " + strategy_config + "\n" + sim_payment_and_flat_tariff() +
         "charging: {site_max_power_w: 100000, setpoint_interval_s: 1}\n";
}

nlohmann::json request(RunningSite& site, const nlohmann::json& req) {
  std::promise<nlohmann::json> p;
  auto f = p.get_future();
  site.runtime().dispatch([&] { site.runtime().handle_request(req, [&p](nlohmann::json r) { p.set_value(std::move(r)); }); });
  return f.get();
}

TimePoint now_of(RunningSite& site) {
  TimePoint t;
  parse_utc(request(site, {{"cmd", "status"}})["time"].get<std::string>().substr(0, 19) + "Z", t);
  return t;
}

void check_bill_adds_up(const nlohmann::json& receipt) {
  const auto& bill = receipt["bill"];
  std::int64_t wh = 0, total = 0;
  for (const auto& l : bill["lines"]) {
    wh += l["wh"].get<std::int64_t>();
    EXPECT_EQ(l["total_fen"].get<std::int64_t>(), l["electricity_fen"].get<std::int64_t>() + l["service_fen"].get<std::int64_t>());
    total += l["total_fen"].get<std::int64_t>();
  }
  EXPECT_EQ(wh, bill["energy_wh"].get<std::int64_t>());
  EXPECT_EQ(total, bill["total_fen"].get<std::int64_t>());
  EXPECT_EQ(receipt["meter_stop_wh"].get<std::int64_t>() - receipt["meter_start_wh"].get<std::int64_t>(), bill["energy_wh"].get<std::int64_t>());
}

}  // namespace

TEST(Session, ChargesAcrossATariffBoundaryAndBillsEachPeriod) {
  TempDir dir;
  // 09:50 on a Monday in Shanghai; the flat period ends at 10:00. 600x: a minute is 100 ms, so
  // the site has a second of wall time to start and authorise before the boundary (under ASan
  // on a busy machine two simulated minutes were not always enough).
  RunningSite site(dir, site_yaml(), {PILECORE_PLUGIN_DIR}, 600.0, "2026-03-02T01:50:00Z");
  ASSERT_TRUE(eventually([&] { return site.runtime().ready(); }));
  ASSERT_TRUE(eventually([&] { return request(site, {{"cmd", "status"}})["connectors"][0]["status"] == "Preparing"; }));
  const auto started = request(site, {{"cmd", "session_start"}, {"connector", 1}, {"token", "card:0451"}});
  ASSERT_TRUE(started.value("ok", false)) << started.dump();
  ASSERT_TRUE(eventually([&] { return request(site, {{"cmd", "status"}})["connectors"][0]["status"] == "Charging"; }));
  ASSERT_TRUE(eventually([&] { return now_of(site) > TimePoint{} + (std::chrono::sys_days{std::chrono::year{2026} / 3 / 2}.time_since_epoch() + 2h + 3min); }));
  const auto stopped = request(site, {{"cmd", "session_stop"}, {"connector", 1}});
  ASSERT_TRUE(stopped.value("ok", false)) << stopped.dump();
  const auto& r = stopped["receipt"];
  EXPECT_EQ(r["outcome"], "completed");
  EXPECT_EQ(r["capture_status"], "captured");
  ASSERT_EQ(r["bill"]["lines"].size(), 2u) << r.dump(2);
  EXPECT_EQ(r["bill"]["lines"][0]["period"], "flat");
  EXPECT_EQ(r["bill"]["lines"][1]["period"], "peak");
  check_bill_adds_up(r);
  EXPECT_EQ(r["captured_fen"], r["bill"]["total_fen"]);
  // The stored receipt is the same bill.
  const auto stored = request(site, {{"cmd", "receipt"}, {"transaction", started["transaction"]}});
  EXPECT_EQ(stored["bill"], r["bill"]);
  EXPECT_EQ(stored["status"], "closed");
  EXPECT_EQ(request(site, {{"cmd", "status"}})["connectors"][0]["status"], "Finishing");
}

TEST(Session, AFaultMidChargeStopsAndBillsTheSession) {
  TempDir dir;
  RunningSite site(dir, site_yaml("      fault_after_s: 120\n"), {PILECORE_PLUGIN_DIR}, 600.0, "2026-03-02T03:00:00Z");
  ASSERT_TRUE(eventually([&] { return site.runtime().ready(); }));
  ASSERT_TRUE(eventually([&] { return request(site, {{"cmd", "status"}})["connectors"][0]["status"] == "Preparing"; }));
  const auto started = request(site, {{"cmd", "session_start"}, {"connector", 1}});
  ASSERT_TRUE(started.value("ok", false)) << started.dump();
  ASSERT_TRUE(eventually([&] { return request(site, {{"cmd", "status"}})["connectors"][0]["status"] == "Faulted"; }));
  nlohmann::json receipt;
  ASSERT_TRUE(eventually([&] {
    receipt = request(site, {{"cmd", "receipt"}, {"transaction", started["transaction"]}});
    return receipt.value("status", "") == "closed";
  }));
  EXPECT_EQ(receipt["stop_reason"], "Fault");
  EXPECT_GT(receipt["energy_wh"].get<std::int64_t>(), 0);
  check_bill_adds_up(receipt);
}

TEST(Session, ASecondSessionWithoutUnpluggingCharges) {
  TempDir dir;
  RunningSite site(dir, site_yaml(), {PILECORE_PLUGIN_DIR}, 600.0, "2026-03-02T03:00:00Z");
  ASSERT_TRUE(eventually([&] { return site.runtime().ready(); }));
  ASSERT_TRUE(eventually([&] { return request(site, {{"cmd", "status"}})["connectors"][0]["status"] == "Preparing"; }));
  ASSERT_TRUE(request(site, {{"cmd", "session_start"}, {"connector", 1}, {"token", "card:0451"}}).value("ok", false));
  ASSERT_TRUE(eventually([&] { return request(site, {{"cmd", "status"}})["connectors"][0]["status"] == "Charging"; }));
  ASSERT_TRUE(request(site, {{"cmd", "session_stop"}, {"connector", 1}}).value("ok", false));
  ASSERT_EQ(request(site, {{"cmd", "status"}})["connectors"][0]["status"], "Finishing");
  // The driver changes their mind and starts again with the cable still in.
  const auto again = request(site, {{"cmd", "session_start"}, {"connector", 1}, {"token", "card:0451"}});
  ASSERT_TRUE(again.value("ok", false)) << again.dump();
  EXPECT_TRUE(eventually([&] {
    const auto c = request(site, {{"cmd", "status"}})["connectors"][0];
    return c["status"] == "Charging" && c.value("power_w", 0) > 0;
  })) << request(site, {{"cmd", "status"}}).dump(2);
}

TEST(Session, RequestsAreRefusedWithReasons) {
  TempDir dir;
  RunningSite site(dir, site_yaml(), {PILECORE_PLUGIN_DIR}, 600.0, "2026-03-02T03:00:00Z");
  ASSERT_TRUE(eventually([&] { return site.runtime().ready(); }));
  EXPECT_EQ(request(site, {{"cmd", "session_start"}, {"connector", 9}})["error"], "no connector 9");
  EXPECT_EQ(request(site, {{"cmd", "session_stop"}, {"connector", 1}})["error"], "connector 1 has no session");
  EXPECT_EQ(request(site, {{"cmd", "session_start"}, {"connector", 1}, {"method", "nope"}})["error"], "'nope' is not a running payment instance");
  EXPECT_EQ(request(site, {{"cmd", "warp"}})["error"], "unknown command 'warp'; commands: status, session_start, session_stop, session_answer, refund, receipt, reload, watch");
  EXPECT_EQ(request(site, {{"cmd", "receipt"}, {"transaction", "X"}})["error"], "no transaction 'X'");
}

TEST(Session, AKilledDaemonRecoversTheOpenSessionAtItsNextStart) {
  TempDir dir;
  const auto file = dir.write("site.yaml", site_yaml());
  const fs::path state = dir.path() / "state";
  const std::string pilecored = std::string(PILECORE_BIN_DIR) + "/pilecored";
  const std::vector<std::string> args = {pilecored, "--config", file.string(), "--state-dir", state.string(), "--clock-speed", time_scale().speed_arg(600),
                                         "--clock-start", "2026-03-02T03:00:00Z"};
  std::string txn;
  {
    NotifyListener notify(dir.path() / "n1.sock");
    Child daemon(args, {notify.env()});
    ASSERT_TRUE(notify.wait_for("READY=1", 10s)) << daemon.stderr_text();
    ASSERT_TRUE(eventually([&] { return control_request(state / "pilecored.sock", {{"cmd", "status"}})["connectors"][0]["status"] == "Preparing"; }));
    // An hour asked for: the mode is on the transaction's row, so the recovered session's
    // receipt and ledger record still say what the driver asked for.
    const auto started = control_request(state / "pilecored.sock", {{"cmd", "session_start"}, {"connector", 1}, {"mode", "time:60"}});
    ASSERT_TRUE(started.value("ok", false)) << started.dump();
    txn = started["transaction"];
    std::this_thread::sleep_for(pilecore::test::time_scale()(300ms));  // three minutes of charging
    daemon.signal(SIGKILL);
    EXPECT_EQ(daemon.wait(), 128 + SIGKILL);
  }
  auto query = [&](const std::string& sql) {
    sqlite3* db = nullptr;
    sqlite3_open_v2((state / "pilecore.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr);
    std::string out = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) ? reinterpret_cast<const char*>(sqlite3_column_text(st, 0)) : "";
    sqlite3_finalize(st);
    sqlite3_close(db);
    return out;
  };
  EXPECT_EQ(query("SELECT status FROM transactions WHERE id='" + txn + "'"), "open") << "the transaction was committed before charging";
  {
    NotifyListener notify(dir.path() / "n2.sock");
    Child daemon({pilecored, "--config", file.string(), "--state-dir", state.string(), "--clock-speed", time_scale().speed_arg(600), "--clock-start", "2026-03-02T03:10:00Z"},
                 {notify.env()});
    ASSERT_TRUE(notify.wait_for("READY=1", 15s)) << daemon.stderr_text();
    const auto receipt = control_request(state / "pilecored.sock", {{"cmd", "receipt"}, {"transaction", txn}});
    EXPECT_EQ(receipt["status"], "closed") << receipt.dump(2);
    EXPECT_EQ(receipt["outcome"], "recovered");
    EXPECT_EQ(receipt.value("mode", ""), "time:3600s");
    EXPECT_NE(core::format_receipt_text(receipt, "Asia/Shanghai").find("asked for 60 min"), std::string::npos) << core::format_receipt_text(receipt, "Asia/Shanghai");
    EXPECT_GT(receipt["energy_wh"].get<std::int64_t>(), 0);
    check_bill_adds_up(receipt);
    daemon.signal(SIGTERM);
    EXPECT_EQ(daemon.wait(), 0) << daemon.stderr_text();
  }
  EXPECT_EQ(query("SELECT COUNT(*) FROM transactions"), "1") << "nothing billed twice";
}

TEST(ControlSocket, WatchersSeeTheSessionsEvents) {
  TempDir dir;
  const auto file = dir.write("site.yaml", site_yaml());
  NotifyListener notify(dir.path() / "n.sock");
  Child daemon({std::string(PILECORE_BIN_DIR) + "/pilecored", "--config", file.string(), "--state-dir", (dir.path() / "state").string(),
                "--clock-speed", time_scale().speed_arg(600), "--clock-start", "2026-03-02T03:00:00Z"},
               {notify.env()});
  ASSERT_TRUE(notify.wait_for("READY=1", 10s)) << daemon.stderr_text();
  const fs::path sock = dir.path() / "state" / "pilecored.sock";
  ControlWatch watch(sock);
  ControlWatch second(sock);  // any number of watchers
  ASSERT_TRUE(eventually([&] { return control_request(sock, {{"cmd", "status"}})["connectors"][0]["status"] == "Preparing"; }));
  const auto started = control_request(sock, {{"cmd", "session_start"}, {"connector", 1}, {"token", "card:0451"}});
  ASSERT_TRUE(started.value("ok", false)) << started.dump();
  std::this_thread::sleep_for(pilecore::test::time_scale()(100ms));
  const auto stopped = control_request(sock, {{"cmd", "session_stop"}, {"connector", 1}});
  ASSERT_TRUE(stopped.value("ok", false)) << stopped.dump();
  std::vector<nlohmann::json> events;
  for (;;) {
    auto ev = watch.next(5s);
    ASSERT_TRUE(ev) << "no session_closed event";
    ASSERT_TRUE(ev->contains("time")) << ev->dump();
    events.push_back(*ev);
    if ((*ev)["event"] == "session_closed") break;
  }
  auto find = [&](const std::string& kind) {
    return std::find_if(events.begin(), events.end(), [&](const nlohmann::json& e) { return e["event"] == kind; });
  };
  const auto st = find("session_started");
  ASSERT_NE(st, events.end());
  EXPECT_EQ((*st)["transaction"], started["transaction"]);
  EXPECT_TRUE((*st)["user"].get<std::string>().starts_with("card:**** #")) << "masked and hashed, never in clear";
  EXPECT_EQ((*st)["authorized_fen"], 30000);
  const auto charging = std::find_if(events.begin(), events.end(), [](const nlohmann::json& e) { return e["event"] == "connector" && e["status"] == "Charging"; });
  EXPECT_NE(charging, events.end());
  const auto stopping = find("session_stopping");
  ASSERT_NE(stopping, events.end());
  EXPECT_EQ((*stopping)["reason"], "Local");
  const auto& closed = events.back();
  EXPECT_EQ(closed["transaction"], started["transaction"]);
  EXPECT_EQ(closed["outcome"], "completed");
  EXPECT_EQ(closed["total_fen"], stopped["receipt"]["bill"]["total_fen"]);
  EXPECT_EQ(closed["energy_wh"], stopped["receipt"]["bill"]["energy_wh"]);
  EXPECT_LT(st - events.begin(), stopping - events.begin()) << "in order";
  // The second watcher saw the same stream.
  bool second_closed = false;
  while (auto ev = second.next(2s)) {
    if ((*ev)["event"] == "session_closed") {
      second_closed = true;
      break;
    }
  }
  EXPECT_TRUE(second_closed);
  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.wait(), 0);
  EXPECT_THROW(while (watch.next(5s)) {}, std::runtime_error) << "the watcher learns that the daemon stopped";
}

TEST(ControlSocket, MalformedRequestsGetAnErrorAndAreCounted) {
  TempDir dir;
  const auto file = dir.write("site.yaml", site_yaml());
  NotifyListener notify(dir.path() / "n.sock");
  Child daemon({std::string(PILECORE_BIN_DIR) + "/pilecored", "--config", file.string(), "--state-dir", (dir.path() / "state").string()}, {notify.env()});
  ASSERT_TRUE(notify.wait_for("READY=1", 10s)) << daemon.stderr_text();
  const fs::path sock = dir.path() / "state" / "pilecored.sock";
  // Raw lines through the real socket: not JSON, JSON without cmd, a number as connector.
  for (const std::string& bad : {std::string("hello"), std::string("{\"nocmd\":1}"), std::string("[1,2]")}) {
    boost::asio::io_context io;
    boost::asio::local::stream_protocol::socket s(io);
    s.connect(boost::asio::local::stream_protocol::endpoint(sock.string()));
    boost::asio::write(s, boost::asio::buffer(bad + "\n"));
    boost::asio::streambuf buf;
    boost::asio::read_until(s, buf, '\n');
    const std::string line(boost::asio::buffers_begin(buf.data()), boost::asio::buffers_end(buf.data()));
    EXPECT_NE(line.find("malformed request"), std::string::npos) << line;
  }
  const auto typed = control_request(sock, {{"cmd", "session_start"}, {"connector", "one"}});
  EXPECT_EQ(typed["error"], "bad request: \"connector\" must be a positive integer");
  const auto st = control_request(sock, {{"cmd", "status"}});
  EXPECT_TRUE(st.value("ok", false));
  EXPECT_EQ(st["rejected_requests"], 3) << "the three malformed lines";
  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.wait(), 0);
}

std::int64_t setpoint_of(RunningSite& site, int connector) {
  const auto st = request(site, {{"cmd", "status"}});
  const auto& c = st["connectors"][connector - 1];
  return c.contains("session") ? c["session"].value("setpoint_w", std::int64_t{-1}) : -1;
}

void start_both(RunningSite& site, bool second = true) {
  ASSERT_TRUE(eventually([&] { return site.runtime().ready(); }));
  for (int c = 1; c <= (second ? 2 : 1); ++c) {
    ASSERT_TRUE(eventually([&] { return request(site, {{"cmd", "status"}})["connectors"][c - 1]["status"] == "Preparing"; }));
    const auto r = request(site, {{"cmd", "session_start"}, {"connector", c}});
    ASSERT_TRUE(r.value("ok", false)) << r.dump();
  }
}

TEST(Strategy, TheCoreClampsToTheConnectorAndTheSiteLimit) {
  TempDir dir;
  RunningSite site(dir, strategy_site("{formula: \"90000\"}"), {PILECORE_PLUGIN_DIR}, 600.0, "2026-03-02T03:00:00Z");
  start_both(site);
  EXPECT_TRUE(eventually([&] { return setpoint_of(site, 1) == 60000; })) << "90 kW asked, the connector allows 60 kW: " << setpoint_of(site, 1);
  EXPECT_TRUE(eventually([&] { return setpoint_of(site, 2) == 40000; })) << "the site's 100 kW less connector 1's 60 kW: " << setpoint_of(site, 2);
  EXPECT_TRUE(eventually([&] { return request(site, {{"cmd", "status"}})["connectors"][1].value("power_w", 0) == 40000; }))
      << "the power stage delivers the clamped setpoint";
}

TEST(Strategy, AmbientTemperatureComesFromTheCabinetSensor) {
  TempDir dir;
  RunningSite site(dir, strategy_site("{formula: \"ambient_temperature > 35 ? 20000 : 50000\"}"), {PILECORE_PLUGIN_DIR}, 600.0,
                   "2026-03-02T03:00:00Z");
  std::this_thread::sleep_for(pilecore::test::time_scale()(20ms));  // a few cabinet readings at 40 degC
  start_both(site, false);
  EXPECT_TRUE(eventually([&] { return setpoint_of(site, 1) == 20000; })) << setpoint_of(site, 1);
}

TEST(Strategy, AStrategyWithoutAnAnswerFallsBackLowNotToFullPower) {
  TempDir dir;
  // grid_limit is declared but nobody supplies it: every evaluation fails.
  RunningSite site(dir, strategy_site("{formula: grid_limit, variables: [grid_limit]}"), {PILECORE_PLUGIN_DIR}, 600.0, "2026-03-02T03:00:00Z");
  start_both(site, false);
  EXPECT_TRUE(eventually([&] { return setpoint_of(site, 1) == 3500; })) << setpoint_of(site, 1);
  std::this_thread::sleep_for(pilecore::test::time_scale()(30ms));  // several more failed evaluations keep it
  EXPECT_EQ(setpoint_of(site, 1), 3500);
  EXPECT_TRUE(eventually([&] { return request(site, {{"cmd", "status"}})["connectors"][0].value("power_w", 0) == 3500; }));
}

namespace {

// The step-up path end to end: the payment method asks for a PIN, the start waits, the answer
// on the control socket goes back to the method, and the session starts. Then two partial
// refunds of the closed transaction, each an operation of its own, and one too many.
TEST(Session, AStepUpIsAnsweredAtThePileAndRefundsArePartialAndRepeated) {
  TempDir dir;
  std::string yaml = site_yaml();
  const std::string plain = "config: {latency_ms: 0}";
  yaml.replace(yaml.find(plain), plain.size(), "config: {latency_ms: 0, step_up_tokens: [card:NEW1]}");
  RunningSite site(dir, yaml, {PILECORE_PLUGIN_DIR}, 600.0, "2026-03-02T03:00:00Z");
  ASSERT_TRUE(eventually([&] { return site.runtime().ready() && request(site, {{"cmd", "status"}})["connectors"][0]["status"] == "Preparing"; }));

  EXPECT_EQ(request(site, {{"cmd", "session_answer"}, {"connector", 1}, {"pin", "1234"}})["error"], "connector 1 has no step-up waiting for an answer");
  std::promise<nlohmann::json> started;
  auto started_f = started.get_future();
  site.runtime().dispatch([&] {
    site.runtime().handle_request({{"cmd", "session_start"}, {"connector", 1}, {"token", "card:NEW1"}}, [&](nlohmann::json r) { started.set_value(std::move(r)); });
  });
  // The start waits for the driver; the answer goes through once the challenge is out.
  ASSERT_TRUE(eventually([&] { return request(site, {{"cmd", "session_answer"}, {"connector", 1}, {"pin", "1234"}}).value("ok", false); }));
  ASSERT_EQ(started_f.wait_for(10s), std::future_status::ready);
  const auto s = started_f.get();
  ASSERT_TRUE(s.value("ok", false)) << s.dump();
  const std::string txn = s["transaction"];

  std::this_thread::sleep_for(pilecore::test::time_scale()(300ms));  // three minutes of charging
  const auto stopped = request(site, {{"cmd", "session_stop"}, {"connector", 1}});
  ASSERT_TRUE(stopped.value("ok", false)) << stopped.dump();
  const std::int64_t captured = stopped["receipt"].value("captured_fen", std::int64_t{0});
  ASSERT_GT(captured, 100) << stopped.dump();

  const auto r1 = request(site, {{"cmd", "refund"}, {"transaction", txn}, {"amount_fen", 60}, {"reason", "short charge"}});
  EXPECT_EQ(r1.value("operation", ""), txn + "/refund/1") << r1.dump();
  EXPECT_EQ(r1.value("state", ""), "confirmed");
  const auto r2 = request(site, {{"cmd", "refund"}, {"transaction", txn}, {"amount_fen", 40}});
  EXPECT_EQ(r2.value("operation", ""), txn + "/refund/2") << r2.dump();
  const auto too_much = request(site, {{"cmd", "refund"}, {"transaction", txn}, {"amount_fen", captured}});
  EXPECT_FALSE(too_much.value("ok", true)) << "above what is left to refund";

  const auto receipt = request(site, {{"cmd", "receipt"}, {"transaction", txn}});
  std::map<std::string, std::string> states;
  std::int64_t refunded = 0;
  for (const auto& op : receipt["operations"]) {
    states[op["kind"]] = op["state"];
    if (op["kind"] == "refund" && op["state"] == "confirmed") refunded += op["amount_fen"].get<std::int64_t>();
  }
  EXPECT_EQ(states["authorize"], "confirmed") << receipt.dump(2);
  EXPECT_EQ(states["capture"], "confirmed");
  EXPECT_EQ(refunded, 100);
}

}  // namespace

// Charging modes through the control socket: a mode that is not allowed is refused before
// anything is held; an amount session holds that amount and ends with AmountReached; a site
// whose method can raise holds tops a full session up instead of stopping it at the hold.
TEST(Session, AModeAskedAtTheStartSetsTheHoldAndTheSessionEndsAtItsTarget) {
  TempDir dir;
  RunningSite site(dir, site_yaml(), {PILECORE_PLUGIN_DIR}, 600.0, "2026-03-02T03:00:00Z");
  ASSERT_TRUE(eventually([&] { return site.runtime().ready() && request(site, {{"cmd", "status"}})["connectors"][0]["status"] == "Preparing"; }));
  EXPECT_EQ(request(site, {{"cmd", "session_start"}, {"connector", 1}, {"mode", "turbo"}})["error"],
            "unknown charging mode 'turbo'; modes: full, amount:<fen>, energy:<Wh> (or <n>kWh), time:<minutes> (or <n>m, <n>s)");
  EXPECT_EQ(request(site, {{"cmd", "session_start"}, {"connector", 1}, {"mode", "amount:100001"}})["error"],
            "mode 'amount:100001': 100001 fen is above the site's limit of 100000 fen (payment.max_hold_fen)");
  const auto started = request(site, {{"cmd", "session_start"}, {"connector", 1}, {"token", "card:0451"}, {"mode", "amount:300"}});
  ASSERT_TRUE(started.value("ok", false)) << started.dump();
  nlohmann::json receipt;
  ASSERT_TRUE(eventually([&] {
    receipt = request(site, {{"cmd", "receipt"}, {"transaction", started["transaction"]}});
    return receipt.value("status", "") == "closed" && receipt.value("capture_status", "") == "captured";
  })) << receipt.dump(2);
  EXPECT_EQ(receipt["stop_reason"], "AmountReached");
  EXPECT_EQ(receipt["authorized_fen"], 300) << "the hold follows the mode, not payment.preauth_fen";
  const std::int64_t total = receipt["total_fen"].get<std::int64_t>(), captured = receipt["captured_fen"].get<std::int64_t>();
  EXPECT_LE(captured, 300);
  EXPECT_EQ(captured + receipt.value("uncovered_fen", std::int64_t{0}), total) << "captured and uncovered make up the bill";
  for (const auto& op : receipt["operations"]) {
    if (op["kind"] == "authorize") {
      EXPECT_EQ(op["amount_fen"], 300);
    }
  }
}

TEST(Session, AFullSessionIsToppedUpByAMethodThatCanRaiseItsHold) {
  TempDir dir;
  std::string yaml = site_yaml();
  const std::string pay = "payment: {default_method: sim, preauth_fen: 30000, authorize_timeout_ms: 600000}";
  yaml.replace(yaml.find(pay), pay.size(), "payment: {default_method: sim, preauth_fen: 1000, increment_step_fen: 1000, max_hold_fen: 3000, authorize_timeout_ms: 600000}");
  RunningSite site(dir, yaml, {PILECORE_PLUGIN_DIR}, 600.0, "2026-03-02T03:00:00Z");
  ASSERT_TRUE(eventually([&] { return site.runtime().ready() && request(site, {{"cmd", "status"}})["connectors"][0]["status"] == "Preparing"; }));
  const auto started = request(site, {{"cmd", "session_start"}, {"connector", 1}, {"token", "card:0451"}});
  ASSERT_TRUE(started.value("ok", false)) << started.dump();
  nlohmann::json receipt;
  ASSERT_TRUE(eventually([&] {
    receipt = request(site, {{"cmd", "receipt"}, {"transaction", started["transaction"]}});
    return receipt.value("status", "") == "closed" && receipt.value("capture_status", "") == "captured";
  })) << receipt.dump(2);
  // 1000 held, raised twice by 1000 up to the site's 3000, then stopped for funds at that. The
  // top-up is asked half a step (about three simulated minutes here) before the hold.
  EXPECT_EQ(receipt["stop_reason"], "FundsExhausted");
  EXPECT_EQ(receipt["authorized_fen"], 3000) << receipt.dump(2);
  std::vector<std::string> increments;
  for (const auto& op : receipt["operations"]) {
    if (op["kind"] == "increment") {
      increments.push_back(op["operation"]);
      EXPECT_EQ(op["state"], "confirmed");
      EXPECT_EQ(op["amount_fen"], 1000);
    }
  }
  const std::string txn = started["transaction"];
  EXPECT_EQ(increments, (std::vector<std::string>{txn + "/increment/1", txn + "/increment/2"}));
  EXPECT_GT(receipt["captured_fen"].get<std::int64_t>(), 2000) << "captured beyond the first hold";
  EXPECT_LE(receipt["captured_fen"].get<std::int64_t>(), 3000);
}


// A plugin built against API 2.0 loads into this 2.1 core, but is never asked for a top-up, even
// when it claims the capability: a 2.0 binary has no increment() to call. The session stops at
// its hold.
TEST(Session, APluginBuiltForApi20IsNeverAskedToRaiseTheHold) {
  TempDir dir;
  std::string yaml = site_yaml();
  const std::string sim = "  sim:\n    plugin: sim-payment\n    config: {latency_ms: 0}\n";
  yaml.replace(yaml.find(sim), sim.size(), "  old:\n    plugin: payment-api-2-0\n");
  const std::string pay = "payment: {default_method: sim, preauth_fen: 30000, authorize_timeout_ms: 600000}";
  yaml.replace(yaml.find(pay), pay.size(), "payment: {default_method: old, preauth_fen: 1000, increment_step_fen: 1000, authorize_timeout_ms: 600000}");
  RunningSite site(dir, yaml, {PILECORE_PLUGIN_DIR, PILECORE_BROKEN_PLUGIN_DIR}, 600.0, "2026-03-02T03:00:00Z");
  ASSERT_TRUE(eventually([&] { return site.runtime().ready() && request(site, {{"cmd", "status"}})["connectors"][0]["status"] == "Preparing"; }));
  const auto started = request(site, {{"cmd", "session_start"}, {"connector", 1}, {"token", "card:0451"}});
  ASSERT_TRUE(started.value("ok", false)) << started.dump();
  nlohmann::json receipt;
  ASSERT_TRUE(eventually([&] {
    receipt = request(site, {{"cmd", "receipt"}, {"transaction", started["transaction"]}});
    return receipt.value("status", "") == "closed" && receipt.value("capture_status", "") == "captured";
  })) << receipt.dump(2);
  EXPECT_EQ(receipt["stop_reason"], "FundsExhausted");
  EXPECT_EQ(receipt["authorized_fen"], 1000);
  for (const auto& op : receipt["operations"]) {
    EXPECT_NE(op["kind"], "increment") << receipt.dump(2);
  }
}
