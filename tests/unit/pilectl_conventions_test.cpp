// pilectl as an operator and a script use it: usage errors exit 2, unknown commands get "did
// you mean", global options go before or after the command, --json gives one document,
// `transactions list` filters by the site's local day, times are printed in the site's zone
// with the offset (or UTC with --utc), refusals name what is wrong, and the manual pages and
// bash completion come from the same command tree.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <csignal>

#include <fstream>
#include <iterator>
#include <regex>
#include <set>
#include <sstream>

#include "storage.hpp"
#include "test_support.hpp"

using namespace pilecore::test;
using pilecore::core::Database;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const std::string pilectl = std::string(PILECORE_BIN_DIR) + "/pilectl";
const std::string pilecored = std::string(PILECORE_BIN_DIR) + "/pilecored";

const char* const two_connector_site = R"(site:
  id: OPS-1
  name: Operations test
  location: {lat: 31.2, lon: 121.5}
  timezone: Asia/Shanghai
connectors:
  - {id: 1, type: gbt-ac, max_power_w: 7000}
  - {id: 2, type: gbt-ac, max_power_w: 7000}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
  power-2:
    plugin: sim-power
    connector: 2
)";

ProcessResult ctl(std::vector<std::string> args) {
  args.insert(args.begin(), {pilectl, "--plugin-dir", PILECORE_PLUGIN_DIR});
  return run_process(args);
}

/// The commands a help text lists under "Subcommands:".
std::vector<std::string> subcommands_in_help(const std::string& help) {
  std::vector<std::string> out;
  std::istringstream in(help);
  std::string line;
  bool in_list = false;
  while (std::getline(in, line)) {
    if (line.rfind("Subcommands:", 0) == 0) {
      in_list = true;
      continue;
    }
    if (!in_list) continue;
    if (line.empty()) break;
    std::istringstream words(line);
    std::string name;
    words >> name;
    if (!name.empty()) out.push_back(name);
  }
  return out;
}

/// A state directory's database with five transactions around the Shanghai midnight of
/// 2026-11-26 (16:00 UTC on the 25th).
fs::path transactions_db(TempDir& dir) {
  const fs::path path = dir.path() / "pilecore.db";
  Database db(path);  // the real schema
  // id, connector, method, status, outcome, started (UTC ms), energy, total, captured
  db.exec(
      "INSERT INTO transactions(id, connector, method, user_token, authorized_fen, status, outcome, stop_reason, started_ms, stopped_ms,"
      " meter_start_wh, meter_stop_wh, energy_wh, total_fen, captured_fen, capture_status) VALUES"
      " ('OPS-1-1-000001', 1, 'sim',  'card:04A1', 20000, 'closed', 'completed', 'Local', 1795620600000, 1795622400000, 0, 7000, 7000, 812, 812, 'captured'),"   // 2026-11-25 15:30Z = 23:30 +08
      " ('OPS-1-2-000002', 2, 'card', 'card:04B2', 20000, 'closed', 'recovered', 'Shutdown', 1795624200000, 1795626000000, 0, 3000, 3000, 301, 301, 'captured'),"  // 16:30Z = 00:30 +08 on the 26th
      " ('OPS-1-1-000003', 1, 'card', 'card:04C3', 20000, 'closed', 'completed', 'Local', 1795663800000, 1795665600000, 7000, 9000, 2000, 150, 150, 'captured'),"  // 03:30Z = 11:30 +08
      " ('OPS-1-2-000004', 2, 'sim',  'card:04D4', 20000, 'open', '', '', 1795678200000, NULL, 3000, NULL, NULL, NULL, NULL, ''),"                            // 07:30Z = 15:30 +08
      " ('OPS-1-1-000005', 1, 'sim',  'card:04E5', 20000, 'closed', 'completed', 'Remote', 1795710600000, 1795712400000, 9000, 9500, 500, 40, 40, 'captured')"  // 16:30Z = 00:30 +08 on the 27th
  );
  return path;
}

std::vector<std::string> ids_of(const std::string& json_text) {
  std::vector<std::string> ids;
  for (const auto& t : json::parse(json_text)) ids.push_back(t.at("transaction").get<std::string>());
  return ids;
}

}  // namespace

TEST(PilectlConventions, UsageErrorsExitTwoNotCli11Codes) {
  EXPECT_EQ(ctl({"status", "--no-such-option"}).exit_code, 2);
  EXPECT_EQ(ctl({"receipt"}).exit_code, 2);                                       // a required argument missing
  EXPECT_EQ(ctl({"transactions", "list", "--state", "sideways"}).exit_code, 2);    // a value not allowed
  EXPECT_EQ(ctl({"session", "stop", "one"}).exit_code, 2);                         // not a number
  EXPECT_EQ(ctl({"--utc", "--time-zone", "Asia/Shanghai", "status"}).exit_code, 2);  // excluded together
  const auto bad = ctl({"status", "--no-such-option"});
  EXPECT_NE(bad.err.find("--no-such-option"), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find("pilectl status --help"), std::string::npos) << bad.err;
}

TEST(PilectlConventions, BarePilectlPrintsHelpAndExitsTwo) {
  const auto r = run_process({pilectl});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("Subcommands:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("transactions"), std::string::npos) << r.err;
  const auto group = run_process({pilectl, "config"});  // a command that needs its subcommand
  EXPECT_EQ(group.exit_code, 2);
  EXPECT_NE(group.err.find("validate"), std::string::npos) << group.err;
  EXPECT_EQ(run_process({pilectl, "--help"}).exit_code, 0);
  EXPECT_EQ(run_process({pilectl, "session", "stop", "--help"}).exit_code, 0);
  EXPECT_EQ(run_process({pilectl, "--version"}).exit_code, 0);
}

TEST(PilectlConventions, UnknownCommandSaysTheNearestOne) {
  const auto top = run_process({pilectl, "statsu"});
  EXPECT_EQ(top.exit_code, 2);
  EXPECT_NE(top.err.find("unknown command 'statsu'; did you mean 'status'?"), std::string::npos) << top.err;
  const auto nested = run_process({pilectl, "config", "valdate", "site.yaml"});
  EXPECT_EQ(nested.exit_code, 2);
  EXPECT_NE(nested.err.find("unknown command 'valdate'; did you mean 'validate'?"), std::string::npos) << nested.err;
  const auto far = run_process({pilectl, "xyzzy"});
  EXPECT_EQ(far.exit_code, 2);
  EXPECT_NE(far.err.find("unknown command 'xyzzy'"), std::string::npos) << far.err;
  EXPECT_EQ(far.err.find("did you mean"), std::string::npos) << far.err;
}

TEST(PilectlConventions, GlobalOptionsAreTakenBeforeOrAfterTheCommand) {
  const auto before = run_process({pilectl, "--json", "--plugin-dir", PILECORE_PLUGIN_DIR, "plugins", "list"});
  const auto after = run_process({pilectl, "plugins", "list", "--plugin-dir", PILECORE_PLUGIN_DIR, "--json"});
  ASSERT_EQ(before.exit_code, 0) << before.err;
  ASSERT_EQ(after.exit_code, 0) << after.err;
  EXPECT_EQ(before.out, after.out);
  EXPECT_TRUE(json::parse(after.out).is_array());
  TempDir dir;
  const auto site = dir.write("site.yaml", two_connector_site).string();
  // The site file is -c/--config everywhere, also after the command and for validate.
  EXPECT_EQ(ctl({"config", "validate", "-c", site}).exit_code, 0);
  EXPECT_EQ(ctl({"-c", site, "config", "validate", "--quiet"}).exit_code, 0);
}

TEST(PilectlConventions, ValidateJsonGivesEditorDiagnostics) {
  TempDir dir;
  std::string broken = two_connector_site;
  broken.replace(broken.find("Asia/Shanghai"), 13, "Asia/Shangai");
  broken.replace(broken.find("max_power_w: 7000}\n  - "), 18, "max_power_w: 7000, colour: red}");
  const auto file = dir.write("site.yaml", broken).string();
  const auto r = ctl({"config", "validate", "--json", file});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  const json diags = json::parse(r.out);
  ASSERT_TRUE(diags.is_array());
  ASSERT_GE(diags.size(), 2U) << r.out;
  std::set<std::size_t> lines;
  for (const auto& d : diags) {
    EXPECT_EQ(d.at("file"), file);
    EXPECT_EQ(d.at("severity"), "error");
    EXPECT_GT(d.at("column").get<int>(), 0);
    EXPECT_FALSE(d.at("message").get<std::string>().empty());
    lines.insert(d.at("line").get<std::size_t>());
  }
  EXPECT_TRUE(lines.count(5)) << r.out;  // the time zone's line
  const auto ok = ctl({"config", "validate", "--json", dir.write("good.yaml", two_connector_site).string()});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(json::parse(ok.out), json::array());
}

TEST(PilectlTransactions, FiltersBySiteLocalDayConnectorMethodAndState) {
  TempDir dir;
  const auto db = transactions_db(dir).string();
  const auto site = dir.write("site.yaml", two_connector_site).string();
  // Shanghai's 26 November: from 16:00 UTC on the 25th to 16:00 UTC on the 26th.
  auto day = ctl({"transactions", "list", "--db", db, "-c", site, "--day", "2026-11-26", "--json"});
  ASSERT_EQ(day.exit_code, 0) << day.err;
  EXPECT_EQ(ids_of(day.out), (std::vector<std::string>{"OPS-1-2-000004", "OPS-1-1-000003", "OPS-1-2-000002"}));
  // The same day in UTC holds the 23:30 session of the Shanghai 25th and not the 00:30 of the 27th.
  auto utc_day = ctl({"transactions", "list", "--db", db, "--utc", "--day", "2026-11-26", "--json"});
  EXPECT_EQ(ids_of(utc_day.out), (std::vector<std::string>{"OPS-1-1-000005", "OPS-1-2-000004", "OPS-1-1-000003"}));
  auto conn = ctl({"transactions", "list", "--db", db, "--connector", "2", "--json"});
  EXPECT_EQ(ids_of(conn.out), (std::vector<std::string>{"OPS-1-2-000004", "OPS-1-2-000002"}));
  auto method = ctl({"--json", "transactions", "list", "--db", db, "--method", "card"});
  EXPECT_EQ(ids_of(method.out), (std::vector<std::string>{"OPS-1-1-000003", "OPS-1-2-000002"}));
  EXPECT_EQ(ids_of(ctl({"transactions", "list", "--db", db, "--state", "recovered", "--json"}).out), (std::vector<std::string>{"OPS-1-2-000002"}));
  EXPECT_EQ(ids_of(ctl({"transactions", "list", "--db", db, "--state", "open", "--json"}).out), (std::vector<std::string>{"OPS-1-2-000004"}));
  // Filters combine, and the limit applies after them.
  EXPECT_EQ(ids_of(ctl({"transactions", "list", "--db", db, "--state", "completed", "--connector", "1", "--limit", "1", "--json"}).out),
            (std::vector<std::string>{"OPS-1-1-000005"}));
  EXPECT_EQ(ctl({"transactions", "list", "--db", db, "--method", "face", "--json"}).out, "[]\n");
}

TEST(PilectlTransactions, JsonIsOneArrayWithUtcTimesAndFen) {
  TempDir dir;
  const auto db = transactions_db(dir).string();
  const auto r = ctl({"transactions", "list", "--db", db, "--txn", "OPS-1-2-000002", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json all = json::parse(r.out);
  ASSERT_EQ(all.size(), 1U);
  const auto& t = all[0];
  EXPECT_EQ(t.at("connector"), 2);
  EXPECT_EQ(t.at("method"), "card");
  EXPECT_EQ(t.at("state"), "recovered");
  EXPECT_EQ(t.at("stop_reason"), "Shutdown");
  EXPECT_EQ(t.at("started"), "2026-11-25T16:30:00.000Z");
  EXPECT_EQ(t.at("energy_wh"), 3000);
  EXPECT_EQ(t.at("total_fen"), 301);
  EXPECT_EQ(r.out.find("04B2"), std::string::npos) << "no token in the listing";
  // An open one has no bill yet: null, not 0.
  const json open = json::parse(ctl({"transactions", "list", "--db", db, "--state", "open", "--json"}).out);
  EXPECT_TRUE(open[0].at("total_fen").is_null());
  EXPECT_TRUE(open[0].at("energy_wh").is_null());
}

TEST(PilectlTransactions, TextTableShowsLocalTimesWithTheOffset) {
  TempDir dir;
  const auto db = transactions_db(dir).string();
  const auto local = ctl({"transactions", "--db", db, "--time-zone", "Asia/Shanghai", "--txn", "OPS-1-2-000002"});  // `list` is the default
  ASSERT_EQ(local.exit_code, 0) << local.err;
  EXPECT_NE(local.out.find("2026-11-26 00:30:00 +08:00"), std::string::npos) << local.out;
  EXPECT_NE(local.out.find("3.000"), std::string::npos) << local.out;
  EXPECT_NE(local.out.find("times in Asia/Shanghai"), std::string::npos) << local.out;
  const auto utc = ctl({"transactions", "list", "--db", db, "--utc", "--txn", "OPS-1-2-000002"});
  EXPECT_NE(utc.out.find("2026-11-25 16:30:00 +00:00"), std::string::npos) << utc.out;
  const auto open = ctl({"transactions", "list", "--db", db, "--state", "open", "--utc"});
  EXPECT_NE(open.out.find("OPS-1-2-000004"), std::string::npos) << open.out;
  EXPECT_EQ(open.out.find("0.000"), std::string::npos) << "no energy yet is '-', not 0: " << open.out;
}

TEST(PilectlTransactions, BadDayAndMissingDatabaseAreClearErrors) {
  TempDir dir;
  const auto db = transactions_db(dir).string();
  const auto bad = ctl({"transactions", "list", "--db", db, "--day", "26/11/2026"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--day '26/11/2026' is not a date like"), std::string::npos) << bad.err;
  EXPECT_EQ(ctl({"transactions", "list", "--db", db, "--day", "2026-02-30"}).exit_code, 2);
  const auto zone = ctl({"transactions", "list", "--db", db, "--time-zone", "Asia/Shangai"});
  EXPECT_EQ(zone.exit_code, 2);
  EXPECT_NE(zone.err.find("'Asia/Shangai' is not a known time zone"), std::string::npos) << zone.err;
  const auto missing = ctl({"transactions", "list", "--db", (dir.path() / "nope.db").string()});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("no such database"), std::string::npos) << missing.err;
  EXPECT_FALSE(fs::exists(dir.path() / "nope.db"));
}

TEST(PilectlDaemon, StatusInTheSiteZoneUtcOnRequestAndNoSuchConnector) {
  TempDir dir;
  NotifyListener notify(dir.path() / "notify.sock");
  const auto state = (dir.path() / "state").string();
  Child daemon({pilecored, "-c", dir.write("site.yaml", two_connector_site).string(), "--state-dir", state, "--plugin-dir", PILECORE_PLUGIN_DIR,
                "--clock-start", "2026-11-26T06:50:00Z", "--clock-speed", "1"},
               {notify.env()});
  ASSERT_TRUE(notify.wait_for("READY=1", std::chrono::seconds(20))) << daemon.stderr_text();

  const auto st = ctl({"status", "--state-dir", state});
  ASSERT_EQ(st.exit_code, 0) << st.err;
  EXPECT_TRUE(std::regex_search(st.out, std::regex("site OPS-1 at 2026-11-26 14:5[0-9]:[0-9]{2} \\+08:00"))) << st.out;
  const auto utc = ctl({"--utc", "status", "--state-dir", state});
  EXPECT_TRUE(std::regex_search(utc.out, std::regex("at 2026-11-26 06:5[0-9]:[0-9]{2} \\+00:00"))) << utc.out;
  const json j = json::parse(ctl({"status", "--state-dir", state, "--json"}).out);
  EXPECT_EQ(j.at("timezone"), "Asia/Shanghai");

  const auto stop = ctl({"session", "stop", "7", "--state-dir", state});
  EXPECT_EQ(stop.exit_code, 1);
  EXPECT_NE(stop.err.find("there is no connector 7 on this pile; its connectors: 1, 2"), std::string::npos) << stop.err;
  const auto start = ctl({"session", "start", "7", "--token", "card:04A1", "--state-dir", state});
  EXPECT_EQ(start.exit_code, 1);
  EXPECT_NE(start.err.find("no connector 7"), std::string::npos) << start.err;
  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.wait(), 0) << daemon.stderr_text();
}

TEST(PilectlDocs, BashCompletionHasEveryCommandOfTheHelp) {
  const auto script = run_process({pilectl, "completion", "bash"});
  ASSERT_EQ(script.exit_code, 0) << script.err;
  const auto top = subcommands_in_help(run_process({pilectl, "--help"}).out);
  ASSERT_GE(top.size(), 10U);
  // The top level's words: the line for the empty command path.
  const auto at = script.out.find("\"\") echo '");
  ASSERT_NE(at, std::string::npos) << script.out;
  std::istringstream first_line(script.out.substr(at + 10, script.out.find('\'', at + 10) - at - 10));
  std::set<std::string> top_words{std::istream_iterator<std::string>(first_line), std::istream_iterator<std::string>()};
  for (const auto& cmd : top) {
    EXPECT_TRUE(top_words.count(cmd)) << cmd;
    for (const auto& sub : subcommands_in_help(run_process({pilectl, cmd, "--help"}).out)) {
      EXPECT_NE(script.out.find("\"" + cmd + " " + sub + "\")"), std::string::npos) << cmd << " " << sub;
    }
  }
  // And bash completes with it: "pilectl transactions li" -> list, "pilectl con" -> config.
  TempDir dir;
  const auto file = dir.write("pilectl.bash", script.out).string();
  const auto r = run_process({"/bin/bash", "-c",
                              "source '" + file + "'; COMP_WORDS=(pilectl transactions li); COMP_CWORD=2; _pilectl; echo \"${COMPREPLY[*]}\";"
                              " COMP_WORDS=(pilectl con); COMP_CWORD=1; _pilectl; echo \"${COMPREPLY[*]}\";"
                              " COMP_WORDS=(pilectl transactions list --da); COMP_CWORD=3; _pilectl; echo \"${COMPREPLY[*]}\""});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "list\nconfig\n--day\n");
}

TEST(PilectlDocs, ManualPageForEveryCommandAndSiteYamlFromTheSchema) {
  TempDir dir;
  const auto r = ctl({"manpages", (dir.path() / "man").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> expected = {"pilectl.1"};
  for (const auto& cmd : subcommands_in_help(run_process({pilectl, "--help"}).out)) {
    expected.push_back("pilectl-" + cmd + ".1");
    for (const auto& sub : subcommands_in_help(run_process({pilectl, cmd, "--help"}).out)) expected.push_back("pilectl-" + cmd + "-" + sub + ".1");
  }
  for (const auto& page : expected) {
    const fs::path p = dir.path() / "man" / page;
    ASSERT_TRUE(fs::exists(p)) << page;
    std::ifstream in(p);
    std::stringstream text;
    text << in.rdbuf();
    EXPECT_NE(text.str().find(".SH EXIT STATUS"), std::string::npos) << page;
  }
  // site.yaml(5) holds every key of the reference, which the schema's declarations generate.
  const auto reference = ctl({"config", "reference"}).out;
  std::ifstream in(dir.path() / "man" / "site.yaml.5");
  std::stringstream man;
  man << in.rdbuf();
  std::regex key("^\\| `([^`]+)` \\|");
  std::istringstream lines(reference);
  std::string line;
  int keys = 0;
  while (std::getline(lines, line)) {
    std::smatch m;
    if (!std::regex_search(line, m, key)) continue;
    ++keys;
    std::string k = m[1];
    std::string escaped;
    for (char c : k) escaped += c == '-' ? std::string("\\-") : std::string(1, c);
    EXPECT_NE(man.str().find("\\fB" + escaped + "\\fR"), std::string::npos) << k;
  }
  EXPECT_GT(keys, 50);
  // groff (groff-base, which man needs) reads the pages without a warning.
  if (!fs::exists("/usr/bin/groff")) GTEST_SKIP() << "no /usr/bin/groff to check the pages' troff";
  for (const auto& page : {"pilectl.1", "pilectl-transactions-list.1", "site.yaml.5"}) {
    const auto g = run_process({"/usr/bin/groff", "-man", "-Tutf8", "-ww", "-z", (dir.path() / "man" / page).string()});
    EXPECT_EQ(g.exit_code, 0) << page;
    EXPECT_EQ(g.err, "") << page;
  }
}
