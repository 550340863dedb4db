// Reload (SIGHUP, `systemctl reload pilecore`, `pilectl reload`): a valid new site file's tariffs
// apply to the sessions that start from then on, while a session in progress keeps the price it
// started with and its receipt says so; other changed settings are named for the next restart;
// an invalid file changes nothing. Each transaction keeps its tariff in the database, so a
// recovery after a crash bills at it too, whatever the file says by then.
#include <gtest/gtest.h>
#include <signal.h>

#include <set>

#include "control_socket.hpp"
#include "receipt.hpp"
#include "site_changes.hpp"
#include "tariff.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace pilecore::core;
using namespace pilecore::test;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

/// Two connectors, the simulated payment, one flat price around the clock (`electricity` fen
/// per kWh, no service fee) and `charging` as given.
std::string site(const std::string& electricity, const std::string& charging = "{checkpoint_interval_s: 30, checkpoint_wh: 1000}") {
  std::string y = R"(site: {id: RELOAD-1, name: Reload test, location: {lat: 31.2, lon: 121.5}, timezone: Asia/Shanghai}
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
  - {id: 2, type: gbt-dc, max_power_w: 60000}
plugins:
)";
  for (int c : {1, 2}) {
    y += fmt::format("  power-{0}:\n    plugin: sim-power\n    connector: {0}\n    config: {{arrive_after_s: 0, ev_ready_delay_ms: 0, battery_capacity_wh: 200000, initial_soc_pct: 10}}\n", c);
  }
  return y + R"(  sim:
    plugin: sim-payment
    config: {latency_ms: 0}
tariffs:
  decimals: 2
  plans:
    all:
      prices: {flat: {electricity: )" +
         electricity + R"(, service: 0.00}}
      periods: [{from: "00:00", to: "24:00", type: flat}]
  week: {mon: all, tue: all, wed: all, thu: all, fri: all, sat: all, sun: all}
payment: {default_method: sim, preauth_fen: 30000, authorize_timeout_ms: 600000}
charging: )" + charging + "\n";
}

/// pilecored on `file`, at 600x (slowed under an emulator: time_scale.hpp) from a Monday morning in
/// Shanghai.
struct Daemon {
  Daemon(const TempDir& dir, const fs::path& file, const std::string& name)
      : state(dir.path() / "state"),
        notify(dir.path() / (name + ".sock")),
        child({std::string(PILECORE_BIN_DIR) + "/pilecored", "--config", file.string(), "--state-dir", state.string(), "--clock-speed", test::time_scale().speed_arg(600),
               "--clock-start", "2026-03-02T03:00:00Z"},
              {notify.env()}) {}
  nlohmann::json ask(const nlohmann::json& req) { return control_request(state / "pilecored.sock", req); }
  /// A vehicle is plugged in and no session runs (Finishing: a new session without unplugging).
  bool can_start(int connector) {
    const auto status = ask({{"cmd", "status"}})["connectors"][connector - 1]["status"];
    return status == "Preparing" || status == "Finishing";
  }
  std::string start(int connector) {
    if (!eventually([&] { return can_start(connector); })) return {};
    const auto r = ask({{"cmd", "session_start"}, {"connector", connector}, {"token", fmt::format("card:04{}", connector)}});
    return r.value("ok", false) ? r["transaction"].get<std::string>() : std::string();
  }
  /// The connector's session has metered some energy (a kWh at least): its bill has a line.
  bool charged(int connector) {
    const auto c = ask({{"cmd", "status"}})["connectors"][connector - 1];
    return c.contains("session") && c["session"].value("energy_wh", std::int64_t{0}) >= 1000;
  }
  /// Stops the connector's session and returns its receipt.
  nlohmann::json stop(int connector) {
    const auto r = ask({{"cmd", "session_stop"}, {"connector", connector}});
    if (!r.value("ok", false)) return r;
    return ask({{"cmd", "receipt"}, {"transaction", r["transaction"]}});
  }
  fs::path state;
  NotifyListener notify;
  Child child;
};

/// The electricity price of each line of a receipt's bill (in 1/100 fen per kWh: decimals 2).
std::set<std::int64_t> prices_of(const nlohmann::json& receipt) {
  std::set<std::int64_t> out;
  for (const auto& l : receipt["bill"]["lines"]) out.insert(l["electricity_price"].get<std::int64_t>());
  return out;
}

}  // namespace

TEST(Reload, ANewTariffAppliesToNewSessionsWhileOneInProgressKeepsItsPrice) {
  TempDir dir;
  const auto file = dir.write("site.yaml", site("100.00"));
  Daemon d(dir, file, "n");
  ASSERT_TRUE(d.notify.wait_for("READY=1", 15s)) << d.child.stderr_text();
  const std::string first = d.start(1);
  ASSERT_FALSE(first.empty()) << d.child.stderr_text();

  // The operator doubles the price and also changes a setting that needs a restart, then
  // reloads as systemd does: SIGHUP.
  dir.write("site.yaml", site("200.00", "{checkpoint_interval_s: 60, checkpoint_wh: 1000}"));
  d.child.signal(SIGHUP);
  ASSERT_TRUE(eventually([&] { return d.child.stderr_text().find("reload: ") != std::string::npos; })) << d.child.stderr_text();
  ASSERT_TRUE(eventually([&] { return d.child.stderr_text().find("take effect at the next restart") != std::string::npos; }));
  const std::string log = d.child.stderr_text();
  EXPECT_NE(log.find("applied tariffs: sessions that start from now on; 1 session(s) in progress keep the price they started with"), std::string::npos)
      << log;
  EXPECT_NE(log.find("(systemctl restart pilecore): charging"), std::string::npos) << log;

  const std::string second = d.start(2);
  ASSERT_FALSE(second.empty());
  ASSERT_TRUE(eventually([&] { return d.charged(1) && d.charged(2); })) << d.ask({{"cmd", "status"}}).dump(2);
  const auto kept = d.stop(1);
  const auto repriced = d.stop(2);
  ASSERT_EQ(kept.value("transaction", ""), first) << kept.dump(2);
  ASSERT_EQ(repriced.value("transaction", ""), second) << repriced.dump(2);
  EXPECT_GT(kept["energy_wh"].get<std::int64_t>(), 0);
  EXPECT_GT(repriced["energy_wh"].get<std::int64_t>(), 0);
  EXPECT_EQ(prices_of(kept), (std::set<std::int64_t>{10000})) << kept.dump(2);
  EXPECT_EQ(prices_of(repriced), (std::set<std::int64_t>{20000})) << repriced.dump(2);
  // The receipt of the session that kept its price says so; the other's has nothing to say.
  EXPECT_NE(format_receipt_text(kept, "Asia/Shanghai").find("priced at the tariff in force when the session started"), std::string::npos)
      << format_receipt_text(kept, "Asia/Shanghai");
  EXPECT_EQ(format_receipt_text(repriced, "Asia/Shanghai").find("priced at the tariff"), std::string::npos);

  // A broken file: refused with its errors at their line, and nothing changes.
  dir.write("site.yaml", site("200.00") + "tarifs: {}\n");
  const auto refused = d.ask({{"cmd", "reload"}});
  EXPECT_FALSE(refused.value("ok", true)) << refused.dump(2);
  ASSERT_TRUE(refused.contains("errors")) << refused.dump(2);
  EXPECT_NE(refused["errors"][0].get<std::string>().find("site.yaml:"), std::string::npos) << refused.dump(2);
  EXPECT_NE(refused["errors"].dump().find("tarifs"), std::string::npos) << refused.dump(2);
  EXPECT_NE(d.child.stderr_text().find("the running configuration stays"), std::string::npos);
  ASSERT_FALSE(d.start(1).empty());
  ASSERT_TRUE(eventually([&] { return d.charged(1); }));
  EXPECT_EQ(prices_of(d.stop(1)), (std::set<std::int64_t>{20000})) << "the last valid file's tariff still applies";

  // The same file again: nothing to apply, and the checkpoint interval is still named (it is
  // not applied yet).
  dir.write("site.yaml", site("200.00", "{checkpoint_interval_s: 60, checkpoint_wh: 1000}"));
  const auto same = d.ask({{"cmd", "reload"}});
  EXPECT_TRUE(same.value("ok", false)) << same.dump(2);
  EXPECT_TRUE(same["applied"].empty()) << same.dump(2);
  EXPECT_EQ(same["restart_needed"], nlohmann::json::array({"charging.checkpoint_interval_s"})) << same.dump(2);

  // A new hold: the session charging keeps its own, the next one is held the new amount; a
  // payment setting read while sessions run waits for the restart.
  const std::string held_before = d.start(1);
  ASSERT_FALSE(held_before.empty());
  std::string higher = site("200.00", "{checkpoint_interval_s: 60, checkpoint_wh: 1000}");
  higher.replace(higher.find("preauth_fen: 30000"), std::string("preauth_fen: 30000").size(), "preauth_fen: 45000, max_hold_fen: 90000");
  dir.write("site.yaml", higher);
  const auto held = d.ask({{"cmd", "reload"}});
  EXPECT_TRUE(held.value("ok", false)) << held.dump(2);
  EXPECT_NE(held["applied"].dump().find("payment.preauth_fen: 45000 fen"), std::string::npos) << held.dump(2);
  EXPECT_EQ(held["restart_needed"], nlohmann::json::array({"payment.max_hold_fen", "charging.checkpoint_interval_s"})) << held.dump(2);
  const std::string held_after = d.start(2);
  ASSERT_FALSE(held_after.empty());
  EXPECT_EQ(d.stop(1).value("authorized_fen", 0), 30000);
  EXPECT_EQ(d.stop(2).value("authorized_fen", 0), 45000);
  d.child.signal(SIGTERM);
  EXPECT_EQ(d.child.wait(), 0) << d.child.stderr_text();
}

TEST(Reload, ARecoveredSessionIsBilledAtTheTariffItStartedWith) {
  TempDir dir;
  const auto file = dir.write("site.yaml", site("100.00"));
  std::string txn;
  {
    Daemon d(dir, file, "n1");
    ASSERT_TRUE(d.notify.wait_for("READY=1", 15s)) << d.child.stderr_text();
    txn = d.start(1);
    ASSERT_FALSE(txn.empty());
    // Committed readings beyond the start (checkpoint_wh: 1000), so the recovery has energy to bill.
    ASSERT_TRUE(eventually([&] { return d.charged(1); }));
    d.child.signal(SIGKILL);
    EXPECT_EQ(d.child.wait(), 128 + SIGKILL);
  }
  // The price changed while the pile was down; the open session was agreed at the old one.
  dir.write("site.yaml", site("300.00"));
  Daemon d(dir, file, "n2");
  ASSERT_TRUE(d.notify.wait_for("READY=1", 15s)) << d.child.stderr_text();
  const auto receipt = d.ask({{"cmd", "receipt"}, {"transaction", txn}});
  EXPECT_EQ(receipt["outcome"], "recovered") << receipt.dump(2);
  EXPECT_GT(receipt["energy_wh"].get<std::int64_t>(), 0);
  EXPECT_EQ(prices_of(receipt), (std::set<std::int64_t>{10000})) << receipt.dump(2);
  EXPECT_NE(format_receipt_text(receipt, "Asia/Shanghai").find("priced at the tariff in force when the session started"), std::string::npos);
  d.child.signal(SIGTERM);
  EXPECT_EQ(d.child.wait(), 0) << d.child.stderr_text();
}

TEST(Reload, ChangedSettingsAreNamedAsInTheFileAndCommentsDoNotCount) {
  const std::string before = site("100.00");
  EXPECT_TRUE(changed_settings(before, "# a comment\n" + before).empty());
  EXPECT_EQ(changed_settings(before, site("200.00")), (std::vector<std::string>{"tariffs"}));
  // An instance's own settings are named by instance; one added or removed too.
  std::string other = site("100.00");
  other.replace(other.find("initial_soc_pct: 10}\n  sim:"), std::string("initial_soc_pct: 10}").size(), "initial_soc_pct: 50}");
  EXPECT_EQ(changed_settings(before, other), (std::vector<std::string>{"plugins.power-2"}));
  std::string added = before;
  added.replace(added.find("tariffs:"), 8, "  spare:\n    plugin: sim-sensor\ntariffs:");
  EXPECT_EQ(changed_settings(before, added), (std::vector<std::string>{"plugins.spare"}));
  EXPECT_EQ(changed_settings(added, before), (std::vector<std::string>{"plugins.spare"}));
  EXPECT_TRUE(applies_on_reload("tariffs"));
  EXPECT_TRUE(applies_on_reload("log"));
  EXPECT_TRUE(applies_on_reload("payment.preauth_fen"));
  EXPECT_TRUE(applies_on_reload("charging.on_planned_stop"));
  EXPECT_FALSE(applies_on_reload("payment.max_hold_fen"));
  EXPECT_FALSE(applies_on_reload("payment"));
  // payment and charging are named key by key, as plugins are by instance.
  std::string held = before;
  held.replace(held.find("preauth_fen: 30000"), std::string("preauth_fen: 30000").size(), "preauth_fen: 40000");
  EXPECT_EQ(changed_settings(before, held), (std::vector<std::string>{"payment.preauth_fen"}));
  EXPECT_FALSE(applies_on_reload("plugins.power-2"));
  EXPECT_FALSE(applies_on_reload("connectors"));
}

TEST(Reload, ATariffDocumentPricesEveryInstantAsTheTariffItCameFrom) {
  // Seasons, a plan crossing midnight, a sharp period, a dated and a yearly holiday: everything
  // a stored tariff must bring back.
  Plan summer{"summer", {}, {}};
  summer.prices[static_cast<int>(PeriodType::sharp)] = Price{15000, 8000};
  summer.prices[static_cast<int>(PeriodType::peak)] = Price{10044, 8000};
  summer.prices[static_cast<int>(PeriodType::flat)] = Price{6950, 8000};
  summer.prices[static_cast<int>(PeriodType::valley)] = Price{3946, 8000};
  summer.windows = {{22 * 60, 6 * 60, PeriodType::valley}, {6 * 60, 11 * 60, PeriodType::flat}, {11 * 60, 12 * 60, PeriodType::sharp},
                    {12 * 60, 18 * 60, PeriodType::peak}, {18 * 60, 22 * 60, PeriodType::flat}};
  Plan winter{"winter", {}, {}};
  winter.prices = summer.prices;
  winter.windows = {{23 * 60, 7 * 60, PeriodType::valley}, {7 * 60, 23 * 60, PeriodType::flat}};
  Plan holiday{"holiday", {}, {}};
  holiday.prices[static_cast<int>(PeriodType::valley)] = Price{3000, 5000};
  holiday.windows = {{0, 0, PeriodType::valley}};
  std::array<std::string, 7> none;
  const Tariff original("Asia/Shanghai", 2, Rounding::half_up, {{"summer", summer}, {"winter", winter}, {"holiday", holiday}}, none,
                        {{"2026-10-01", "holiday"}, {"05-01", "holiday"}},
                        {Season{"summer", 6, 1, 9, 30, {"summer", "summer", "summer", "summer", "summer", "summer", "summer"}},
                         Season{"winter", 10, 1, 5, 31, {"winter", "winter", "winter", "winter", "winter", "winter", "winter"}}});
  const auto doc = original.document();
  const Tariff copy = Tariff::from_document(nlohmann::json::parse(doc.dump()));
  EXPECT_EQ(copy.document(), doc);
  TimePoint t;
  ASSERT_TRUE(parse_utc("2026-01-01T00:00:00Z", t));
  for (int i = 0; i < 365 * 24 * 4; ++i, t += std::chrono::minutes(15)) {
    const Slot a = original.slot_at(t), b = copy.slot_at(t);
    ASSERT_TRUE(a.start == b.start && a.end == b.end && a.type == b.type && a.plan == b.plan && a.price == b.price) << format_utc(t);
  }
  EXPECT_THROW(Tariff::from_document(nlohmann::json{{"time_zone", "Asia/Shanghai"}}), std::invalid_argument);
}
