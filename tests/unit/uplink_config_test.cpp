// The site file's `links` section (core/config/uplink_config.hpp): which link instance carries
// each uplink class, and the outbox's bound. Links are sim-link instances.
#include <gtest/gtest.h>

#include <string>

#include "plugin_loader.hpp"
#include "site_config.hpp"
#include "test_paths.hpp"

using namespace pilecore;
using namespace pilecore::core;
using pilecore::core::protocol::UplinkClass;

namespace {

std::string site(const std::string& plugins, const std::string& links) {
  return "site:\n"
         "  id: LINK-1\n"
         "  name: Links\n"
         "  location: {lat: 31.2, lon: 121.5}\n"
         "  timezone: Asia/Shanghai\n"
         "connectors:\n"
         "  - {id: 1, type: gbt-dc, max_power_w: 60000}\n"
         "plugins:\n"
         "  power-1:\n"
         "    plugin: sim-power\n"
         "    connector: 1\n" +
         plugins + links;
}

const std::string two_links =
    "  modem:\n"
    "    plugin: sim-link\n"
    "  lora:\n"
    "    plugin: sim-link\n";

LoadOutcome load(const std::string& text) {
  PluginRegistry registry({PILECORE_PLUGIN_DIR});
  return load_site_text(text, "site.yaml", registry);
}

std::string route(const SiteConfig& s, UplinkClass c) { return s.uplink.routing[c].primary + ">" + s.uplink.routing[c].fallback; }

}  // namespace

TEST(UplinkConfig, OneLinkCarriesEverythingByDefault) {
  auto out = load(site("  modem:\n    plugin: sim-link\n", ""));
  ASSERT_TRUE(out.site) << out.diagnostics.format();
  EXPECT_EQ(out.site->uplink.cellular, "modem");
  EXPECT_EQ(route(*out.site, UplinkClass::control), "modem>");
  EXPECT_EQ(route(*out.site, UplinkClass::telemetry), "modem>");
  EXPECT_EQ(out.site->uplink.outbox_max_records, 20000);
  EXPECT_EQ(out.site->uplink.first_retry_s, 15);
}

TEST(UplinkConfig, MoneyOver5GTelemetryOverLoRaWANEachFallingBackToTheOther) {
  auto out = load(site(two_links, "links:\n  lorawan: lora\n  outbox: {max_records: 500, max_retry_s: 120}\n"));
  ASSERT_TRUE(out.site) << out.diagnostics.format();
  EXPECT_EQ(out.site->uplink.cellular, "modem");
  EXPECT_EQ(route(*out.site, UplinkClass::control), "modem>lora");
  EXPECT_EQ(route(*out.site, UplinkClass::transaction), "modem>lora");
  EXPECT_EQ(route(*out.site, UplinkClass::status), "lora>modem");
  EXPECT_EQ(route(*out.site, UplinkClass::telemetry), "lora>modem");
  EXPECT_EQ(out.site->uplink.outbox_max_records, 500);
  EXPECT_EQ(out.site->uplink.max_retry_s, 120);
}

TEST(UplinkConfig, RoutesOverrideTheDefaultPerClass) {
  auto out = load(site(two_links,
                       "links:\n"
                       "  cellular: modem\n"
                       "  lorawan: lora\n"
                       "  routes:\n"
                       "    status: {primary: modem, fallback: lora}\n"
                       "    control: {primary: lora}\n"));
  ASSERT_TRUE(out.site) << out.diagnostics.format();
  EXPECT_EQ(route(*out.site, UplinkClass::status), "modem>lora");
  EXPECT_EQ(route(*out.site, UplinkClass::control), "lora>lora");  // what the file says, however odd
  EXPECT_EQ(route(*out.site, UplinkClass::telemetry), "lora>modem");
}

TEST(UplinkConfig, ReferencesMustNameLinksAndSeveralLinksAreNamedOrUnrouted) {
  auto ambiguous = load(site(two_links, "links:\n  outbox: {max_records: 500}\n"));
  ASSERT_TRUE(ambiguous.site) << ambiguous.diagnostics.format();
  EXPECT_EQ(route(*ambiguous.site, UplinkClass::transaction), ">");  // nothing guessed
  EXPECT_NE(ambiguous.diagnostics.format().find("the site has 2 link instances (modem, lora); say which is the 5G one in links.cellular"),
            std::string::npos)
      << ambiguous.diagnostics.format();

  auto not_a_link = load(site(two_links, "links:\n  cellular: power-1\n  lorawan: lora\n"));
  EXPECT_FALSE(not_a_link.site);
  EXPECT_NE(not_a_link.diagnostics.format().find("site.yaml:17:13"), std::string::npos) << not_a_link.diagnostics.format();
  EXPECT_NE(not_a_link.diagnostics.format().find("power-1"), std::string::npos) << not_a_link.diagnostics.format();

  auto backwards = load(site(two_links, "links:\n  lorawan: lora\n  outbox: {first_retry_s: 700, max_retry_s: 600}\n"));
  EXPECT_FALSE(backwards.site);
  EXPECT_NE(backwards.diagnostics.format().find("'links.outbox.first_retry_s' (700 s) is longer than max_retry_s (600 s)"), std::string::npos)
      << backwards.diagnostics.format();

  auto small = load(site(two_links, "links:\n  lorawan: lora\n  outbox: {max_records: 10}\n"));
  EXPECT_FALSE(small.site);
  EXPECT_NE(small.diagnostics.format().find("max_records"), std::string::npos) << small.diagnostics.format();
}

TEST(UplinkConfig, TheDeviceIdAndTheHeartbeat) {
  auto defaults = load(site("  modem:\n    plugin: sim-link\n", ""));
  ASSERT_TRUE(defaults.site) << defaults.diagnostics.format();
  EXPECT_EQ(defaults.site->uplink.device_id, 0);
  EXPECT_EQ(defaults.site->uplink.heartbeat_s, 300);

  auto set = load(site("  modem:\n    plugin: sim-link\n", "links:\n  device_id: 4294967295\n  heartbeat_s: 0\n"));
  ASSERT_TRUE(set.site) << set.diagnostics.format();
  EXPECT_EQ(set.site->uplink.device_id, 4294967295);
  EXPECT_EQ(set.site->uplink.heartbeat_s, 0);

  // The header's device id is 32 bits: a larger one would be sent truncated, as another pile.
  auto big = load(site("  modem:\n    plugin: sim-link\n", "links:\n  device_id: 4294967296\n"));
  EXPECT_FALSE(big.site);
  EXPECT_NE(big.diagnostics.format().find("device_id"), std::string::npos) << big.diagnostics.format();
}
