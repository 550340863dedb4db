// The real programs, as an integrator and systemd use them: pilecored's readiness and shutdown
// through the notify socket, its refusal of a bad site file, and pilectl's commands.
#include <gtest/gtest.h>

#include "pilecore/version.hpp"
#include <signal.h>

#include <fstream>
#include <sstream>

#include "test_support.hpp"

using namespace pilecore::test;
namespace fs = std::filesystem;

namespace {

const std::string pilecored = std::string(PILECORE_BIN_DIR) + "/pilecored";
const std::string pilectl = std::string(PILECORE_BIN_DIR) + "/pilectl";

const char* const small_site = R"(site:
  id: PROG-1
  name: Programs test
  location: {lat: 31.2, lon: 121.5}
  timezone: Asia/Shanghai
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
plugins:
  cabinet:
    plugin: sim-sensor
    config: {interval_ms: 50}
  power-1:
    plugin: sim-power
    connector: 1
)";

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void ready_then_stop(int signo) {
  TempDir dir;
  NotifyListener notify(dir.path() / "notify.sock");
  Child daemon({pilecored, "--config", dir.write("site.yaml", small_site).string(), "--state-dir", (dir.path() / "state").string()},
               {notify.env()});
  ASSERT_TRUE(notify.wait_for("READY=1", std::chrono::seconds(10))) << daemon.stderr_text();
  daemon.signal(signo);
  EXPECT_TRUE(notify.wait_for("STOPPING=1", std::chrono::seconds(10)));
  EXPECT_EQ(daemon.wait(), 0) << daemon.stderr_text();
  const auto log = daemon.stderr_text();
  EXPECT_NE(log.find("ready: site PROG-1"), std::string::npos) << log;
  EXPECT_NE(log.find("[core] stopped"), std::string::npos) << log;
  EXPECT_TRUE(fs::exists(dir.path() / "state" / "pilecore.db"));
}

}  // namespace

TEST(Pilecored, TellsSystemdItIsReadyAndStopsCleanlyOnSigterm) { ready_then_stop(SIGTERM); }

TEST(Pilecored, StopsCleanlyOnSigint) { ready_then_stop(SIGINT); }

TEST(Pilecored, RefusesAnInvalidSiteFileWithEveryError) {
  TempDir dir;
  std::string bad = small_site;
  bad.replace(bad.find("Asia/Shanghai"), 13, "Asia/Shangai");
  bad.replace(bad.find("interval_ms: 50"), 15, "interval_ms: 5");
  const auto file = dir.write("site.yaml", bad).string();
  const auto r = run_process({pilecored, "--config", file, "--state-dir", (dir.path() / "state").string()});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find(file + ":5:13: error: 'site.timezone' is 'Asia/Shangai'"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(file + ":11:27: error: 'plugins.cabinet.config.interval_ms' is 5, out of range: allowed 10 to 3600000 ms"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("2 error(s); not starting"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir.path() / "state" / "pilecore.db")) << "nothing starts before the file is valid";
}

TEST(Pilectl, ValidateExitsZeroForValidAndOneForInvalid) {
  TempDir dir;
  auto ok = run_process({pilectl, "config", "validate", dir.write("ok.yaml", small_site).string()});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_NE(ok.out.find("valid: site PROG-1, 1 connector(s), 2 plugin instance(s)"), std::string::npos) << ok.out;
  auto quiet = run_process({pilectl, "config", "validate", "--quiet", dir.write("ok.yaml", small_site).string()});
  EXPECT_EQ(quiet.exit_code, 0);
  EXPECT_EQ(quiet.out, "");
  auto bad = run_process({pilectl, "config", "validate", dir.write("bad.yaml", "site: [\n").string()});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("bad.yaml:2:1: error: YAML syntax error"), std::string::npos) << bad.err;
  auto missing = run_process({pilectl, "config", "validate", (dir.path() / "nope.yaml").string()});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("nope.yaml: error: cannot read the file: No such file or directory"), std::string::npos) << missing.err;
}

TEST(Pilectl, ValidatesTheShippedSimulatedSite) {
  auto r = run_process({pilectl, "config", "validate", std::string(PILECORE_TEST_SOURCE_DIR) + "/configs/sim-site.yaml"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST(Pilectl, ValidatesEveryShippedExampleSite) {
  // configs/ holds one example per kind of site (the simulated one, a provincial tariff, ...):
  // each must stay valid as the schema grows.
  int seen = 0;
  for (const auto& e : fs::directory_iterator(fs::path(PILECORE_TEST_SOURCE_DIR) / "configs")) {
    if (e.path().extension() != ".yaml") continue;
    ++seen;
    auto r = run_process({pilectl, "config", "validate", e.path().string()});
    EXPECT_EQ(r.exit_code, 0) << e.path() << "\n" << r.err;
  }
  EXPECT_GE(seen, 2);
}

TEST(Pilectl, HelpAtEveryLevel) {
  for (const auto& args : std::vector<std::vector<std::string>>{{pilectl, "--help"},
                                                                {pilectl, "config", "--help"},
                                                                {pilectl, "config", "validate", "--help"},
                                                                {pilectl, "config", "schema", "--help"},
                                                                {pilectl, "config", "reference", "--help"},
                                                                {pilectl, "plugins", "--help"},
                                                                {pilectl, "plugins", "list", "--help"},
                                                                {pilectl, "plugins", "show", "--help"},
                                                                {pilecored, "--help"}}) {
    auto r = run_process(args);
    EXPECT_EQ(r.exit_code, 0) << args.back() << ": " << r.err;
    EXPECT_NE(r.out.find("Usage:"), std::string::npos) << r.out;
  }
}

TEST(Pilectl, PluginsListAndShow) {
  auto list = run_process({pilectl, "plugins", "list"});
  EXPECT_EQ(list.exit_code, 0) << list.out << list.err;
  // The API column is the SDK's version, which every in-tree plugin is built against.
  EXPECT_NE(list.out.find(fmt::format("sim-sensor         sensor     0.1.0     {}.{}   ", PILECORE_API_MAJOR, PILECORE_API_MINOR)), std::string::npos)
      << list.out;
  auto json = run_process({pilectl, "plugins", "list", "--json"});
  EXPECT_EQ(json.exit_code, 0);
  EXPECT_NE(json.out.find("\"name\": \"sim-sensor\""), std::string::npos) << json.out;
  auto show = run_process({pilectl, "plugins", "show", "sim-sensor"});
  EXPECT_EQ(show.exit_code, 0);
  EXPECT_NE(show.out.find("Plugin sim-sensor 0.1.0\n  Kind:         sensor\n"), std::string::npos) << show.out;
  EXPECT_NE(show.out.find("  interval_ms            integer      `1000`\n                         10 to 3600000; ms\n"), std::string::npos) << show.out;
  auto unknown = run_process({pilectl, "plugins", "show", "sim-sensr"});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_NE(unknown.err.find("no plugin named 'sim-sensr'; installed plugins: "), std::string::npos) << unknown.err;
}

TEST(Pilectl, CommittedSchemaAndReferenceAreCurrent) {
  // configs/schema/site.schema.json and docs/config-reference.md are generated from the same
  // declarations the validator uses; `make schema` regenerates them.
  auto schema = run_process({pilectl, "config", "schema"});
  ASSERT_EQ(schema.exit_code, 0) << schema.err;
  EXPECT_EQ(schema.out, slurp(fs::path(PILECORE_TEST_SOURCE_DIR) / "configs/schema/site.schema.json"))
      << "configs/schema/site.schema.json is stale: run `make schema` and commit it";
  auto reference = run_process({pilectl, "config", "reference"});
  ASSERT_EQ(reference.exit_code, 0) << reference.err;
  EXPECT_EQ(reference.out, slurp(fs::path(PILECORE_TEST_SOURCE_DIR) / "docs/config-reference.md"))
      << "docs/config-reference.md is stale: run `make schema` and commit it";
}

TEST(Pilectl, DemoPlaysTheDayAndVerifiesTheLedger) {
  // What `make demo` runs, from the build tree with no arguments but the state directory: it
  // finds the simulated site and the plugins itself.
  TempDir dir;
  const fs::path state = dir.path() / "day";
  // At 1800x rather than make demo's 7200x: a PIN check is 100,000 rounds of PBKDF2, about 0.7 s
  // of real time under ASan's interceptors, and the method's deadline is an hour of simulated
  // time (payment.authorize_timeout_ms' maximum): 0.5 s at 7200x, 2 s here.
  const auto r = run_process({pilectl, "demo", "--state-dir", state.string(), "--speed", time_scale().speed_arg(1800)}, {}, std::chrono::seconds(400));
  // The state directory goes with the test: on a failure, the daemon's log says what it saw.
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << "\n--- pilecored.log ---\n" << slurp(state / "pilecored.log");
  EXPECT_NE(r.out.find("state directory (kept): " + state.string()), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("refused: payment declined"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("completed (Fault)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("*** POWER CUT"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("recovered from the meter"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("*** planned restart (systemctl restart"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("resumed: the same transaction, hold and price"), std::string::npos) << r.out;
  // The 18:10 session bills sharp energy, crossing into the period or started in it (the PIN
  // check's time under a sanitizer decides which).
  EXPECT_NE(r.out.find("sharp  尖"), std::string::npos) << r.out;  // a receipt line
  EXPECT_NE(r.out.find("ledger OK: "), std::string::npos) << r.out;
  // The four payment methods, through their production plugins and the simulators' protocols.
  EXPECT_NE(r.out.find("payment methods used: card, credit, ecny, face"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("risk control asks for a second verification"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("the driver enters the card's PIN"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("capture of"), std::string::npos) << r.out;  // the credit debit, the next morning
  EXPECT_NE(r.out.find("refunded 10.00 yuan"), std::string::npos) << r.out;
  // The uplink: link-5g over the simulated modem to Mosquitto and the reference back end (both
  // are build dependencies), two signed remote commands answered, every record held once.
  EXPECT_NE(r.out.find("uplink: link-5g on a simulated RM500Q modem, MQTT with mutual TLS"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Unavailable (made unavailable by a remote command)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("the pile answers set_availability #2: ok"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Back end: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("anchored: the back end holds records up to seq"), std::string::npos) << r.out;
  // The outage: LoRaWAN through the simulated network server, the broker stopped and started,
  // and the backup from before it caught by the anchor.
  EXPECT_NE(r.out.find("uplink: link-lorawan on a simulated RAK3172"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("*** UPLINK OUTAGE"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("the broker is back after"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("ledger BROKEN: the ledger ends at seq"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("All checks passed"), std::string::npos) << r.out;
  // The state is left for inspection, and an independent check of the ledger agrees.
  EXPECT_TRUE(fs::exists(state / "pilecore.db"));
  EXPECT_TRUE(fs::exists(state / "pilecored.log"));
  const auto verify = run_process({pilectl, "ledger", "verify", "--config", (state / "site.yaml").string(), "--state-dir", state.string()});
  EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;
  // A used state directory is refused rather than mixed with a new day.
  const auto again = run_process({pilectl, "demo", "--state-dir", state.string()});
  EXPECT_EQ(again.exit_code, 2);
  EXPECT_NE(again.err.find("already holds a pilecore.db"), std::string::npos) << again.err;
}
