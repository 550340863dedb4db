// A planned stop (SIGTERM, `systemctl stop`) while a session charges: the session is stopped as
// Shutdown, billed, and its capture answered before the payment method stops. The wait for that
// is bounded in real time (it must beat systemd's stop timeout), whatever the simulated clock's
// speed: bounded in clock time, as it was, at 600x its 7 simulated seconds were 12 ms, and the
// stop ended with the capture cut off (the payment method stopped under it, the capture pending
// and, on the arm64 demo, an exception on the event loop).
#include <gtest/gtest.h>

#include <string>

#include "money_operations.hpp"
#include "storage.hpp"
#include "test_support.hpp"
#include "transaction_repository.hpp"

namespace pilecore::core {
namespace {

using namespace std::chrono_literals;
using test::eventually;
using test::TempDir;

TEST(PlannedStop, AtAFastClockTheStoppedSessionIsBilledAndCapturedBeforeThePaymentMethodStops) {
  TempDir dir;
  // Sessions end at a planned stop (the default suspends them: suspend_resume_test.cpp).
  std::string yaml = test::one_connector_sim_site("STOP-1", "Planned stop") + "charging: {on_planned_stop: stop}\n";
  // The payment method answers in 9 simulated seconds and the risk rule in 1: the close's risk
  // check and capture alone take 10, more than the old bound of 7 (meter_timeout_ms + 2000). The
  // deadlines on them are long (risk 600 s, payment an hour: 1 s and 6 s of real time), so that
  // a loaded machine (ASan) never turns the start into a step-up or a decline.
  const std::string deadlines = "preauth_fen: 30000}";
  yaml.replace(yaml.find(deadlines), deadlines.size(), "preauth_fen: 30000, risk_timeout_ms: 600000, authorize_timeout_ms: 3600000}");
  const std::string instant = "config: {latency_ms: 0}";
  yaml.replace(yaml.find(instant), instant.size(), "config: {latency_ms: 9000}\n  rule:\n    plugin: sim-risk\n    config: {latency_ms: 1000}");
  std::string txn;
  {
    test::RunningSite site(dir, yaml, {PILECORE_PLUGIN_DIR}, 600.0);
    ASSERT_TRUE(eventually([&] { return site.runtime().ready(); }));
    const auto started = site.request({{"cmd", "session_start"}, {"connector", 1}, {"token", "card:0451"}});
    ASSERT_TRUE(started.value("ok", false)) << started.dump();
    txn = started.value("transaction", "");
    ASSERT_TRUE(eventually([&] {
      const auto st = site.request({{"cmd", "status"}});
      for (const auto& c : st["connectors"]) {
        if (c.value("id", 0) == 1 && c.contains("session") && c["session"].value("energy_wh", 0) > 0) return true;
      }
      return false;
    })) << "the session never metered energy";
    EXPECT_EQ(site.stop(), 0);
  }
  Database db(dir.path() / "state" / "pilecore.db", Database::ReadOnly{});
  const auto row = TransactionRepository(db).find(txn);
  ASSERT_TRUE(row.has_value());
  EXPECT_EQ(row->status, "closed");
  EXPECT_EQ(row->outcome, "completed") << "closed by the stop, not left for recovery";
  EXPECT_EQ(row->stop_reason, "Shutdown");
  ASSERT_TRUE(row->total_fen.has_value());
  EXPECT_GT(*row->total_fen, 0);
  bool captured = false;
  for (const auto& o : operations::of_transaction(db.handle(), txn)) {
    if (o.kind == OperationKind::capture) {
      EXPECT_EQ(o.state, OperationStateRow::confirmed) << "the capture was cut off: " << o.reason;
      EXPECT_EQ(o.amount_fen, *row->total_fen);
      captured = true;
    }
  }
  EXPECT_TRUE(captured) << "no capture was asked";
}

}  // namespace
}  // namespace pilecore::core
