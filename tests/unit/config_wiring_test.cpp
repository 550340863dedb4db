// Structured configuration keys (SDK 2.0): a plugin may declare lists of integers, objects with
// nested keys, lists of objects and references to other instances. The site loader validates
// them with file:line:column, checks that a reference names an instance of the declared kind
// (with a "did you mean"), hands the values to the plugin through ConfigValues, runs the
// plugin's own validate with problems placed at the nested key, and describes the keys in the
// JSON Schema and the reference. The plugin is tests/test-plugins/test-wiring.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "plugin_loader.hpp"
#include "reference.hpp"
#include "runtime.hpp"
#include "schema.hpp"
#include "site_config.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace pilecore::core;
using namespace std::chrono_literals;

namespace {

/// A site with a power stage, a sensor and a test-wiring instance 'ring' whose config block is
/// `ring_config` (lines indented by 6). The block starts at line 20.
std::string site(const std::string& ring_config) {
  return "site:\n"
         "  id: WIRE-1\n"
         "  name: Wiring\n"
         "  location: {lat: 31.2, lon: 121.5}\n"
         "  timezone: Asia/Shanghai\n"
         "connectors:\n"
         "  - {id: 1, type: gbt-dc, max_power_w: 60000}\n"
         "plugins:\n"
         "  power-1:\n"
         "    plugin: sim-power\n"
         "    connector: 1\n"
         "  temp-1:\n"
         "    plugin: sim-sensor\n"
         "  led-1:\n"
         "    plugin: sim-indicator\n"
         "    connector: 1\n"
         "  ring:\n"
         "    plugin: test-wiring\n"
         "    config:\n" +
         ring_config;
}

LoadOutcome load(const std::string& text) {
  PluginRegistry registry({PILECORE_PLUGIN_DIR, PILECORE_TEST_PLUGIN_DIR});
  return load_site_text(text, "site.yaml", registry);
}

const InstanceSpec& instance(const SiteConfig& s, const std::string& name) {
  for (const auto& i : s.instances) {
    if (i.name == name) return i;
  }
  throw std::runtime_error("no instance " + name);
}

const std::string kFull =
    "      power: power-1\n"
    "      levels: [5, 60]\n"
    "      tls: {ca_file: /etc/ssl/ca.pem}\n"
    "      steps:\n"
    "        - {at_pct: 20, colour: red, sensor: temp-1}\n"
    "        - {at_pct: 80}\n";

TEST(ConfigWiring, StructuredValuesReachThePluginWithDefaultsFilledIn) {
  const auto outcome = load(site(kFull));
  ASSERT_TRUE(outcome.site) << outcome.diagnostics.format();
  const ConfigValues& c = *instance(*outcome.site, "ring").config;
  EXPECT_EQ(c.string("power"), "power-1");
  EXPECT_EQ(c.integer_list("levels"), (std::vector<std::int64_t>{5, 60}));
  const ConfigValues& tls = c.object("tls");
  EXPECT_EQ(tls.string("ca_file"), "/etc/ssl/ca.pem");
  EXPECT_TRUE(tls.boolean("verify")) << "a nested key's default is filled in";
  const auto steps = c.object_list("steps");
  ASSERT_EQ(steps.size(), 2u);
  EXPECT_EQ(steps[0]->integer("at_pct"), 20);
  EXPECT_EQ(steps[0]->string("colour"), "red");
  EXPECT_EQ(steps[0]->string("sensor"), "temp-1");
  EXPECT_EQ(steps[1]->string("colour"), "green");
  EXPECT_FALSE(steps[1]->has("sensor"));
  // Keys of the wrong type are a programming error in the plugin, reported as such.
  EXPECT_THROW((void)c.integer_list("power"), ConfigError);
  EXPECT_THROW((void)c.object("levels"), ConfigError);
  EXPECT_EQ(c.get_object("steps"), nullptr);

  const auto described = instance(*outcome.site, "ring").config->describe(instance(*outcome.site, "ring").loaded->config_fields);
  EXPECT_EQ(described.at("levels"), "[5, 60]");
  EXPECT_EQ(described.at("tls.ca_file"), "/etc/ssl/ca.pem");
  EXPECT_EQ(described.at("steps[1].colour"), "green");
}

TEST(ConfigWiring, DefaultsOfAListOfIntegers) {
  const auto outcome = load(site("      power: power-1\n"));
  ASSERT_TRUE(outcome.site) << outcome.diagnostics.format();
  const ConfigValues& c = *instance(*outcome.site, "ring").config;
  EXPECT_EQ(c.integer_list("levels"), (std::vector<std::int64_t>{10, 50, 90}));
  EXPECT_EQ(c.get_object("tls"), nullptr) << "an object that is not written is absent";
  EXPECT_FALSE(c.get_object_list("steps"));
}

TEST(ConfigWiring, TheRunningPluginSeesTheSameValues) {
  pilecore::test::TempDir dir;
  pilecore::test::RunningSite running(dir, site(kFull), {PILECORE_PLUGIN_DIR, PILECORE_TEST_PLUGIN_DIR});
  ASSERT_TRUE(pilecore::test::eventually([&] {
    for (const auto& i : running.runtime().instances()) {
      if (i.name == "ring" && i.health == "up") return true;
    }
    return false;
  }));
  for (const auto& i : running.runtime().instances()) {
    if (i.name == "ring") {
      EXPECT_EQ(i.detail, "power=power-1 levels=5,60 tls=/etc/ssl/ca.pem:true step=20:red:temp-1 step=80:green:-");
    }
  }
  EXPECT_EQ(running.stop(), 0);
}

TEST(ConfigWiring, AReferenceToAMissingInstanceSuggestsTheClosest) {
  const auto outcome = load(site("      power: powr-1\n"));
  EXPECT_FALSE(outcome.site);
  EXPECT_EQ(outcome.diagnostics.format(),
            "site.yaml:20:14: error: 'plugins.ring.config.power' is 'powr-1', but there is no instance of that name in 'plugins'; "
            "did you mean 'power-1'? power instances: power-1\n");
}

TEST(ConfigWiring, AReferenceToAnInstanceOfTheWrongKind) {
  const auto outcome = load(site("      power: led-1\n      steps:\n        - {at_pct: 20, sensor: power-1}\n"));
  EXPECT_FALSE(outcome.site);
  EXPECT_EQ(outcome.diagnostics.format(),
            "site.yaml:20:14: error: 'plugins.ring.config.power' is 'led-1', an indicator instance (sim-indicator), but it must name a "
            "power instance; power instances: power-1\n"
            "site.yaml:22:32: error: 'plugins.ring.config.steps[0].sensor' is 'power-1', a power instance (sim-power), but it must name a "
            "sensor instance; sensor instances: temp-1\n");
}

TEST(ConfigWiring, ListItemsAndNestedKeysAreValidatedWithTheirPosition) {
  const auto outcome = load(site("      power: power-1\n      levels: [5, 150]\n      tls: {verify: maybe}\n      steps:\n        - {at_pct: 20, colr: red}\n"));
  EXPECT_FALSE(outcome.site);
  EXPECT_EQ(outcome.diagnostics.format(),
            "site.yaml:21:15: error: 'plugins.ring.config.levels' item 1 is 150, out of range: allowed 0 to 100 %\n"
            "site.yaml:22:12: error: 'plugins.ring.config.tls' is missing the required key 'ca_file' (CA bundle)\n"
            "site.yaml:22:21: error: 'plugins.ring.config.tls.verify' must be true or false, got 'maybe'\n"
            "site.yaml:24:24: error: unknown key 'colr' in 'plugins.ring.config.steps[0]'; allowed keys: at_pct, colour, sensor\n");
}

TEST(ConfigWiring, ThePluginsValidatePointsAtTheNestedKey) {
  const auto outcome = load(site("      power: power-1\n      steps:\n        - {at_pct: 50}\n        - {at_pct: 40}\n"));
  EXPECT_FALSE(outcome.site);
  EXPECT_EQ(outcome.diagnostics.format(),
            "site.yaml:23:20: error: 'plugins.ring.config.steps[1].at_pct': 40 % is not above the previous step's 50 %\n");
}

TEST(ConfigWiring, JsonSchemaDescribesEveryStructuredType) {
  PluginRegistry registry({PILECORE_TEST_PLUGIN_DIR});
  const auto loaded = registry.load("test-wiring");
  ASSERT_TRUE(loaded.plugin) << loaded.error;
  const auto schema = site_json_schema({loaded.plugin});
  const auto& branches = schema["properties"]["plugins"]["additionalProperties"]["allOf"];
  ASSERT_EQ(branches.size(), 1u);
  const auto& props = branches[0]["then"]["properties"]["config"]["properties"];
  EXPECT_EQ(props["power"]["type"], "string");
  EXPECT_EQ(props["power"]["x-pilecore-instance-kind"], "power");
  EXPECT_EQ(props["levels"]["type"], "array");
  EXPECT_EQ(props["levels"]["items"]["type"], "integer");
  EXPECT_EQ(props["levels"]["items"]["maximum"], 100);
  EXPECT_EQ(props["levels"]["default"], nlohmann::json::array({10, 50, 90}));
  EXPECT_EQ(props["tls"]["type"], "object");
  EXPECT_EQ(props["tls"]["required"], nlohmann::json::array({"ca_file"}));
  EXPECT_EQ(props["tls"]["additionalProperties"], false);
  EXPECT_EQ(props["steps"]["type"], "array");
  EXPECT_EQ(props["steps"]["items"]["properties"]["sensor"]["x-pilecore-instance-kind"], "sensor");
  // The core's own references are described the same way.
  EXPECT_EQ(schema["properties"]["connectors"]["items"]["properties"]["power"]["x-pilecore-instance-kind"], "power");
}

TEST(ConfigWiring, ReferenceListsNestedKeys) {
  PluginRegistry registry({PILECORE_TEST_PLUGIN_DIR});
  const auto loaded = registry.load("test-wiring");
  ASSERT_TRUE(loaded.plugin) << loaded.error;
  const std::string md = site_reference_markdown({loaded.plugin});
  EXPECT_NE(md.find("| `power` | instance name | required | the name of a power instance | The power stage whose state is shown |"), std::string::npos) << md;
  EXPECT_NE(md.find("| `levels` | list of integers | `[10, 50, 90]` | 0 to 100; % | Brightness levels |"), std::string::npos) << md;
  EXPECT_NE(md.find("| `tls.ca_file` | string | required |  | CA bundle |"), std::string::npos) << md;
  EXPECT_NE(md.find("| `steps[].at_pct` | integer | required | 0 to 100; % | State of charge |"), std::string::npos) << md;
  const std::string shown = plugin_description_text(*loaded.plugin);
  EXPECT_NE(shown.find("steps[].colour"), std::string::npos) << shown;
}

// Declarations the core refuses when the plugin loads (the plugin's bug, not the integrator's).
TEST(ConfigWiring, InvalidStructuredDeclarationsAreRefused) {
  Field out;
  const ConfigKey no_fields{.key = "tls", .type = ConfigType::object, .description = "TLS"};
  EXPECT_EQ(field_from_config_key(no_fields, out), "key 'tls': an object needs its nested keys (fields, field_count)");
  const ConfigKey no_kind{.key = "reader", .type = ConfigType::instance_ref, .description = "Reader"};
  EXPECT_EQ(field_from_config_key(no_kind, out), "key 'reader': an instance reference needs ref_kind, one of the plugin kinds (got 0)");
  const ConfigKey stray_kind{.key = "port", .type = ConfigType::integer, .description = "Port", .ref_kind = Kind::power};
  EXPECT_EQ(field_from_config_key(stray_kind, out), "key 'port': ref_kind is only for instance_ref");
  static const ConfigKey bad_child[] = {{.key = "Bad", .type = ConfigType::string, .description = "x"}};
  const ConfigKey nested{.key = "tls", .type = ConfigType::object, .description = "TLS", .fields = bad_child, .field_count = 1};
  EXPECT_EQ(field_from_config_key(nested, out),
            "in key 'tls': key 'Bad': names must be lower case letters, digits and '_', starting with a letter");
  static ConfigKey loop[1] = {};
  loop[0] = {.key = "again", .type = ConfigType::object, .description = "x", .fields = loop, .field_count = 1};
  EXPECT_EQ(field_from_config_key(loop[0], out),
            "in key 'again': in key 'again': in key 'again': key 'again': objects nest more than 3 levels deep");
  const ConfigKey bad_default{.key = "levels", .type = ConfigType::integer_list, .default_value = "[1, 200]", .max = 100, .description = "x"};
  EXPECT_EQ(field_from_config_key(bad_default, out), "key 'levels': the default item 1 is 200, out of range: allowed at most 100");
}

}  // namespace
