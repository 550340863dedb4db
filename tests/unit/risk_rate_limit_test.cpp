// risk-rate-limit, the emergency layer: token buckets at the pile's door (risk::Rule::admit, API
// 2.2), the risk.flood alarm on a sustained flood, and the running pile refusing the excess
// cheaply while a session can still be stopped.
#include <gtest/gtest.h>

#include <future>

#include "plugin_host.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace pilecore::test;
using namespace std::chrono_literals;

namespace {

const std::filesystem::path kPlugin = std::filesystem::path(PILECORE_PLUGIN_DIR) / "risk-rate-limit.so";

struct Door {
  TempDir dir;
  PluginHost host;
  risk::Rule* rule = nullptr;
  explicit Door(const std::string& config) : host(kPlugin, config, dir.path() / "state") { rule = &host.create<risk::Rule>(); }
  /// Offers `n` requests of `kind` at the current instant; returns how many were admitted.
  int offer(int n, risk::Inbound kind = risk::Inbound::control_request) {
    int in = 0;
    for (int i = 0; i < n; ++i) in += rule->admit(kind, host.clock().now()) ? 1 : 0;
    return in;
  }
};

}  // namespace

TEST(RiskRateLimit, AdmitsOneSecondsWorthAtOnceThenTheRate) {
  Door d("{qps: 500}");
  EXPECT_EQ(d.offer(600), 500) << "the bucket holds one second's worth (burst 0 = qps)";
  d.host.advance(1ms);
  EXPECT_EQ(d.offer(10), 0) << "1 ms refills half a token at 500 a second";
  d.host.advance(1ms);
  EXPECT_EQ(d.offer(10), 1);
  d.host.advance(100ms);
  EXPECT_EQ(d.offer(100), 50);
}

TEST(RiskRateLimit, ExactlyTheRateIsAdmittedAndJustAboveIsNot) {
  Door d("{qps: 100, burst: 10}");
  // 100 a second, evenly spaced, for 10 s: every one is admitted.
  int in = 0;
  for (int i = 0; i < 1000; ++i) {
    in += d.offer(1);
    d.host.advance(10ms);
  }
  EXPECT_EQ(in, 1000);
  // 111 a second (every 9 ms, the host clock counts milliseconds) for 10 s: what passes is the
  // rate, and the excess (about 11 a second) is refused.
  in = 0;
  for (int i = 0; i < 1111; ++i) {
    in += d.offer(1);
    d.host.advance(9ms);
  }
  // The rate over 10 s, plus at most the burst the bucket still held.
  EXPECT_GE(in, 999);
  EXPECT_LE(in, 1011);
}

TEST(RiskRateLimit, EveryInboundKindSharesTheBucketButSessionControlHasItsOwn) {
  Door d("{qps: 10, session_control_qps: 3}");
  EXPECT_EQ(d.offer(4, risk::Inbound::authorization) + d.offer(3, risk::Inbound::token) + d.offer(2, risk::Inbound::remote_command) +
                d.offer(5, risk::Inbound::control_request),
            10);
  // The flood has emptied the main bucket; stopping a charge is still possible.
  EXPECT_EQ(d.offer(5, risk::Inbound::session_control), 3);
  EXPECT_EQ(d.offer(1, risk::Inbound::authorization), 0);
}

TEST(RiskRateLimit, ASustainedFloodRaisesRiskFloodAndQuietClearsIt) {
  Door d("{qps: 10, alarm_after_s: 3, clear_after_s: 5}");
  // Refusals in two consecutive seconds, then a quiet one: a busy moment, no alarm.
  for (int s = 0; s < 2; ++s) {
    d.offer(20);
    d.host.advance(1s);
  }
  d.host.advance(1s);
  EXPECT_TRUE(d.host.alarms.empty());
  // Refusals in three consecutive seconds: the alarm, critical, naming the counts.
  for (int s = 0; s < 3; ++s) {
    d.offer(30, risk::Inbound::authorization);
    d.host.advance(1s);
  }
  ASSERT_EQ(d.host.alarms.size(), 1u);
  EXPECT_EQ(d.host.alarms[0].code, "risk.flood");
  EXPECT_TRUE(d.host.alarms[0].active);
  EXPECT_EQ(d.host.alarms[0].severity, AlarmSeverity::critical);
  EXPECT_NE(d.host.alarms[0].message.find("authorization refused"), std::string::npos) << d.host.alarms[0].message;
  // Four quiet seconds are not enough; the fifth clears it.
  d.host.advance(4s);
  EXPECT_EQ(d.host.alarms.size(), 1u);
  d.host.advance(1s);
  ASSERT_EQ(d.host.alarms.size(), 2u);
  EXPECT_FALSE(d.host.alarms[1].active);
  EXPECT_EQ(d.host.timers(), 0u) << "nothing left to watch: no timer runs while quiet";
}

TEST(RiskRateLimit, AsARuleItAllows) {
  Door d("{}");
  std::optional<risk::Result> r;
  struct NoHistory final : risk::History {
    std::optional<std::uint32_t> sessions_since(std::string_view, TimePoint) const noexcept override { return std::nullopt; }
    std::optional<std::int64_t> amount_since_fen(std::string_view, TimePoint) const noexcept override { return std::nullopt; }
  } history;
  d.rule->evaluate({}, history, d.host.clock().now() + 1s, [&](risk::Result x) { r = std::move(x); });
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->verdict, risk::Verdict::allow);
}

namespace {

std::string flood_site(const std::string& limit_config) {
  return R"(site: {id: FLOOD-1, name: Flood test, location: {lat: 31.2, lon: 121.5}, timezone: Asia/Shanghai}
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
    config: {arrive_after_s: 0, ev_ready_delay_ms: 0, battery_capacity_wh: 200000, initial_soc_pct: 10}
  door:
    plugin: risk-rate-limit
    config: )" + limit_config + R"(
  uplink:
    plugin: sim-link
    config: {latency_ms: 0}
)" +
         sim_payment_and_flat_tariff(30000);
}

nlohmann::json request(RunningSite& s, const nlohmann::json& req) { return s.request(req); }

/// `status`, asked until the guard admits it.
nlohmann::json admitted_status(RunningSite& s) {
  nlohmann::json st;
  EXPECT_TRUE(eventually([&] {
    st = request(s, {{"cmd", "status"}});
    return st.value("ok", false);
  }));
  return st;
}

}  // namespace

TEST(RiskRateLimitSite, TheExcessIsRefusedCheaplyAndCountedWhileSessionsCanStillBeStopped) {
  TempDir dir;
  RunningSite s(dir, flood_site("{qps: 1, burst: 3, session_control_qps: 100}"), {PILECORE_PLUGIN_DIR});
  ASSERT_TRUE(eventually([&] { return s.runtime().ready(); }));
  int refused = 0;
  for (int i = 0; i < 40; ++i) {
    const auto r = request(s, {{"cmd", "receipt"}, {"transaction", "NONE"}});
    if (r.value("rate_limited", false)) {
      ++refused;
      EXPECT_NE(r.value("error", "").find("rate limited"), std::string::npos) << r.dump();
    }
  }
  EXPECT_GE(refused, 20) << "3 at once and 1 a second: most of 40 requests in a moment are refused";
  // Session control has its own bucket: a stop is answered on its merits (no session here).
  const auto stop = request(s, {{"cmd", "session_stop"}, {"connector", 1}});
  EXPECT_FALSE(stop.value("rate_limited", false)) << stop.dump();
  const auto st = admitted_status(s);
  EXPECT_GE(st["admission"]["refused"]["control_request"].get<int>(), refused) << st["admission"].dump();
  EXPECT_GE(st["admission"]["admitted"]["session_control"].get<int>(), 1) << st["admission"].dump();
  EXPECT_FALSE(st["admission"]["prefer_backup"].get<bool>());
}

TEST(RiskRateLimitSite, ASustainedFloodSwitchesTheLinksToBackupAndBack) {
  TempDir dir;
  // At 60x, a simulated second is 17 ms of wall time.
  RunningSite s(dir, flood_site("{qps: 2, alarm_after_s: 2, clear_after_s: 3}"), {PILECORE_PLUGIN_DIR}, 60.0);
  ASSERT_TRUE(eventually([&] { return s.runtime().ready(); }));
  bool backup = false;
  ASSERT_TRUE(eventually([&] {
    for (int i = 0; i < 20; ++i) {
      const auto r = request(s, {{"cmd", "status"}});
      if (r.value("ok", false) && r["admission"]["prefer_backup"].get<bool>()) backup = true;
    }
    return backup;
  })) << "refusals in consecutive seconds raise risk.flood";
  const auto st = admitted_status(s);
  bool alarm = false;
  for (const auto& a : st["alarms"]) alarm = alarm || a.value("code", "") == "risk.flood";
  EXPECT_TRUE(alarm) << st["alarms"].dump();
  // The link was told (sim-link shows it in its state's detail).
  std::string detail;
  for (const auto& i : st["instances"]) {
    if (i.value("name", "") == "uplink") detail = i.value("detail", "");
  }
  EXPECT_NE(detail.find("backup endpoint"), std::string::npos) << st["instances"].dump();
  // Quiet: the alarm clears and the links fail back.
  EXPECT_TRUE(eventually([&] {
    std::this_thread::sleep_for(pilecore::test::time_scale()(20ms));
    const auto r = request(s, {{"cmd", "status"}});
    if (!r.value("ok", false) || r["admission"]["prefer_backup"].get<bool>()) return false;
    for (const auto& i : r["instances"]) {
      if (i.value("name", "") == "uplink") return i.value("detail", "").find("primary endpoint") != std::string::npos;
    }
    return false;
  }));
}
