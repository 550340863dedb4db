// Sessions survive a planned stop (#13: `systemctl restart`, a package upgrade). pilecored
// suspends each session in progress (power paused through the power stage, its reading and a
// suspension mark on disk, the transaction left open with its hold) and the next start resumes
// the same transaction: one transaction, one capture, a bill for all the energy of both parts.
// A suspension older than charging.resume_within_s, or a vehicle gone by the time the pile is
// back, ends the session billed to its reading at the suspension.
#include <gtest/gtest.h>

#include <string>

#include "clocks.hpp"
#include "money_operations.hpp"
#include "storage.hpp"
#include "test_support.hpp"
#include "transaction_repository.hpp"

namespace pilecore::core {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using test::eventually;
using test::RunningSite;
using test::TempDir;

/// One connector with sim-power (a vehicle plugged in at once unless `vehicle` is false) and
/// sim-payment; `charging`: the charging section's settings.
std::string site_yaml(const std::string& charging, bool vehicle = true) {
  std::string yaml = test::one_connector_sim_site("RES-1", "Resume test");
  if (!vehicle) {
    const std::string arrive = "arrive_after_s: 0";
    yaml.replace(yaml.find(arrive), arrive.size(), "arrive_after_s: -1");
  }
  return yaml + "charging: " + charging + "\n";
}

json connector1(RunningSite& site) { return site.request({{"cmd", "status"}})["connectors"][0]; }

std::int64_t energy(RunningSite& site) {
  const json c = connector1(site);
  return c.contains("session") ? c["session"].value("energy_wh", std::int64_t{0}) : -1;
}

/// The simulated clock's time, as RunningSite's clock_start takes it, `later` on.
std::string clock_text(RunningSite& site, Duration later = Duration(0)) { return format_utc(site.runtime().clock().now() + later); }

struct Suspended {
  std::string txn;
  std::int64_t energy_wh = 0;  ///< metered before the stop
  std::string clock;           ///< the simulated time at the stop
};

/// Starts a session, lets it charge, stops the pile as systemd does (a planned stop).
Suspended charge_then_stop(const TempDir& dir, const std::string& yaml) {
  Suspended out;
  RunningSite site(dir, yaml, {PILECORE_PLUGIN_DIR}, 60.0, "2026-03-02T02:00:00Z");
  EXPECT_TRUE(eventually([&] { return site.runtime().ready(); }));
  EXPECT_TRUE(eventually([&] { return connector1(site)["status"] == "Preparing"; })) << connector1(site).dump();
  const json started = site.request({{"cmd", "session_start"}, {"connector", 1}, {"token", "card:0451"}});
  EXPECT_TRUE(started.value("ok", false)) << started.dump();
  out.txn = started.value("transaction", "");
  EXPECT_TRUE(eventually([&] { return energy(site) >= 500; })) << connector1(site).dump();
  out.energy_wh = energy(site);
  EXPECT_EQ(site.stop(), 0);
  out.clock = clock_text(site, std::chrono::seconds(5));
  return out;
}

struct Stored {
  TransactionRow row;
  std::optional<Suspension> suspension;
  std::vector<MoneyOperation> operations;
  std::size_t transactions = 0;
};

Stored stored(const TempDir& dir, const std::string& txn) {
  Database db(dir.path() / "state" / "pilecore.db", Database::ReadOnly{});
  Stored s;
  TransactionRepository repo(db);
  s.row = repo.find(txn).value_or(TransactionRow{});
  s.suspension = repo.suspension(txn);
  s.operations = operations::of_transaction(db.handle(), txn);
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db.handle(), "SELECT COUNT(*) FROM transactions", -1, &st, nullptr);
  if (sqlite3_step(st) == SQLITE_ROW) s.transactions = static_cast<std::size_t>(sqlite3_column_int64(st, 0));
  sqlite3_finalize(st);
  return s;
}

std::int64_t confirmed(const Stored& s, OperationKind kind) {
  std::int64_t fen = 0;
  for (const auto& o : s.operations) {
    if (o.kind == kind && o.state == OperationStateRow::confirmed) fen += o.amount_fen;
  }
  return fen;
}

std::size_t count(const Stored& s, OperationKind kind) {
  return static_cast<std::size_t>(std::count_if(s.operations.begin(), s.operations.end(), [&](const MoneyOperation& o) { return o.kind == kind; }));
}

TEST(SuspendResume, APlannedStopSuspendsTheSessionAndTheNextStartResumesTheSameTransaction) {
  TempDir dir;
  const std::string yaml = site_yaml("{resume_within_s: 300}");
  const Suspended before = charge_then_stop(dir, yaml);
  ASSERT_FALSE(before.txn.empty());

  // On disk after the stop: the transaction open, its suspension with the reading, the hold
  // authorised and neither captured nor released.
  {
    const Stored s = stored(dir, before.txn);
    EXPECT_EQ(s.row.status, "open");
    ASSERT_TRUE(s.suspension.has_value());
    EXPECT_GE(s.suspension->meter_wh - s.row.meter_start_wh, before.energy_wh);
    EXPECT_EQ(confirmed(s, OperationKind::authorize), s.row.authorized_fen);
    EXPECT_EQ(count(s, OperationKind::capture), 0u);
    EXPECT_EQ(count(s, OperationKind::void_), 0u);
  }

  // The next start, five simulated seconds later: the same transaction charges again.
  std::int64_t resumed_from = 0;
  json receipt;
  {
    RunningSite site(dir, yaml, {PILECORE_PLUGIN_DIR}, 60.0, before.clock);
    ASSERT_TRUE(eventually([&] { return site.runtime().ready(); }));
    ASSERT_TRUE(eventually([&] {
      const json c = connector1(site);
      return c["status"] == "Charging" && c.contains("session") && c["session"].value("transaction", "") == before.txn;
    })) << connector1(site).dump();
    resumed_from = energy(site);
    EXPECT_GE(resumed_from, before.energy_wh) << "the energy before the stop is still the session's";
    ASSERT_TRUE(eventually([&] { return energy(site) >= resumed_from + 500; })) << connector1(site).dump();
    const json stopped = site.request({{"cmd", "session_stop"}, {"connector", 1}});
    ASSERT_TRUE(stopped.value("ok", false)) << stopped.dump();
    EXPECT_EQ(stopped.value("transaction", ""), before.txn);
    receipt = site.request({{"cmd", "receipt"}, {"transaction", before.txn}});
  }

  // One transaction, closed once, billed for both parts, captured once.
  const Stored s = stored(dir, before.txn);
  EXPECT_EQ(s.transactions, 1u);
  EXPECT_EQ(s.row.status, "closed");
  EXPECT_EQ(s.row.outcome, "completed");
  EXPECT_EQ(s.row.stop_reason, "Local");
  EXPECT_FALSE(s.suspension.has_value()) << "the mark goes once the session runs again";
  ASSERT_TRUE(s.row.meter_stop_wh && s.row.energy_wh && s.row.total_fen);
  EXPECT_EQ(*s.row.energy_wh, *s.row.meter_stop_wh - s.row.meter_start_wh);
  EXPECT_GE(*s.row.energy_wh, resumed_from + 500);
  EXPECT_EQ(count(s, OperationKind::capture), 1u);
  EXPECT_EQ(confirmed(s, OperationKind::capture), *s.row.total_fen);
  EXPECT_EQ(count(s, OperationKind::authorize), 1u) << "the hold of the first part carries the second";
}

TEST(SuspendResume, ASuspensionOlderThanResumeWithinIsClosedBilledToItsReading) {
  TempDir dir;
  const std::string yaml = site_yaml("{resume_within_s: 60}");
  const Suspended before = charge_then_stop(dir, yaml);
  ASSERT_FALSE(before.txn.empty());
  const std::int64_t suspended_wh = stored(dir, before.txn).suspension.value_or(Suspension{}).meter_wh;

  TimePoint at{};
  ASSERT_TRUE(parse_utc(before.clock, at));
  {
    // Back ten simulated minutes later: too late to resume.
    RunningSite site(dir, yaml, {PILECORE_PLUGIN_DIR}, 60.0, format_utc(at + std::chrono::minutes(10)));
    ASSERT_TRUE(eventually([&] { return site.runtime().ready(); }));
    ASSERT_TRUE(eventually([&] { return stored(dir, before.txn).row.status == "closed"; }));
    ASSERT_TRUE(eventually([&] { return confirmed(stored(dir, before.txn), OperationKind::capture) > 0; }));
    EXPECT_FALSE(connector1(site).contains("session")) << connector1(site).dump();
  }
  const Stored s = stored(dir, before.txn);
  EXPECT_EQ(s.row.outcome, "recovered");
  ASSERT_TRUE(s.row.meter_stop_wh && s.row.total_fen);
  EXPECT_EQ(*s.row.meter_stop_wh, suspended_wh) << "billed to the reading at the suspension";
  EXPECT_EQ(confirmed(s, OperationKind::capture), *s.row.total_fen);
  EXPECT_FALSE(s.suspension.has_value());
}

TEST(SuspendResume, AResumedSessionWhoseVehicleLeftStopsAfterThePlugWait) {
  TempDir dir;
  const Suspended before = charge_then_stop(dir, site_yaml("{resume_plug_wait_s: 30}"));
  ASSERT_FALSE(before.txn.empty());
  const std::int64_t suspended_wh = stored(dir, before.txn).suspension.value_or(Suspension{}).meter_wh;
  {
    // The vehicle left while the pile restarted: nothing plugged in.
    RunningSite site(dir, site_yaml("{resume_plug_wait_s: 30}", false), {PILECORE_PLUGIN_DIR}, 60.0, before.clock);
    ASSERT_TRUE(eventually([&] { return site.runtime().ready(); }));
    ASSERT_TRUE(eventually([&] { return stored(dir, before.txn).row.status == "closed"; }, 20s));
    ASSERT_TRUE(eventually([&] { return confirmed(stored(dir, before.txn), OperationKind::capture) > 0; }));
  }
  const Stored s = stored(dir, before.txn);
  EXPECT_EQ(s.row.stop_reason, "EVDisconnected");
  ASSERT_TRUE(s.row.meter_stop_wh.has_value());
  EXPECT_EQ(*s.row.meter_stop_wh, suspended_wh);
  EXPECT_EQ(s.transactions, 1u);
}

TEST(SuspendResume, WithAutostartTheVehicleStillPluggedInResumesItsSessionAndStartsNoOther) {
  // The vehicle stays plugged in across the restart (sim-power's driver_waits_s): the stage
  // reports it the moment the engine attaches, before recover() has looked at the suspended
  // transaction. Autostart must wait for the recovery, else a second transaction opens on the
  // connector beside the one that resumes.
  TempDir dir;
  std::string yaml = site_yaml("{resume_within_s: 300}");
  for (const auto& [from, to] : {std::pair<std::string, std::string>{"tick_ms: 1000}", "tick_ms: 1000, driver_waits_s: 600}"},
                                 {"payment: {default_method: sim,", "payment: {autostart: true, default_method: sim,"}}) {
    ASSERT_NE(yaml.find(from), std::string::npos) << from;
    yaml.replace(yaml.find(from), from.size(), to);
  }
  std::string txn, clock;
  {
    RunningSite site(dir, yaml, {PILECORE_PLUGIN_DIR}, 60.0, "2026-03-02T02:00:00Z");
    ASSERT_TRUE(eventually([&] { return energy(site) >= 500; })) << connector1(site).dump();
    txn = connector1(site)["session"].value("transaction", "");
    ASSERT_EQ(site.stop(), 0);
    clock = clock_text(site, std::chrono::seconds(5));
  }
  ASSERT_TRUE(stored(dir, txn).suspension.has_value());
  {
    RunningSite site(dir, yaml, {PILECORE_PLUGIN_DIR}, 60.0, clock);
    ASSERT_TRUE(eventually([&] { return site.runtime().ready(); }));
    const std::int64_t resumed_from = energy(site);
    ASSERT_TRUE(eventually([&] { return energy(site) >= resumed_from + 300; })) << connector1(site).dump();
    EXPECT_EQ(connector1(site)["session"].value("transaction", ""), txn);
    EXPECT_EQ(stored(dir, txn).transactions, 1u) << "autostart opened another transaction beside the resumed one";
    const json stopped = site.request({{"cmd", "session_stop"}, {"connector", 1}});
    EXPECT_EQ(stopped.value("transaction", ""), txn) << stopped.dump();
  }
  const Stored s = stored(dir, txn);
  EXPECT_EQ(s.transactions, 1u);
  EXPECT_EQ(s.row.outcome, "completed");
  EXPECT_EQ(count(s, OperationKind::capture), 1u);
}

TEST(SuspendResume, WithOnPlannedStopStopTheSessionEndsAsShutdown) {
  TempDir dir;
  const Suspended before = charge_then_stop(dir, site_yaml("{on_planned_stop: stop}"));
  ASSERT_FALSE(before.txn.empty());
  const Stored s = stored(dir, before.txn);
  EXPECT_EQ(s.row.status, "closed");
  EXPECT_EQ(s.row.stop_reason, "Shutdown");
  EXPECT_FALSE(s.suspension.has_value());
  ASSERT_TRUE(s.row.total_fen.has_value());
  EXPECT_EQ(confirmed(s, OperationKind::capture), *s.row.total_fen);
}

}  // namespace
}  // namespace pilecore::core
