// pilectl: validate site files, inspect plugins, generate the schema and reference.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <fmt/std.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>
#include <iostream>

#include "build_config.hpp"
#include "cli_time.hpp"
#include "control_socket.hpp"
#include "crash_records.hpp"
#include "demo.hpp"
#include "ledger_commands.hpp"
#include "money.hpp"
#include "receipt.hpp"
#include "paths.hpp"
#include "pilectl_accounts.hpp"
#include "pilectl_cli.hpp"
#include "plugin_loader.hpp"
#include "reference.hpp"
#include "schema.hpp"
#include "site_config.hpp"
#include "transactions_command.hpp"

using namespace pilecore;
using namespace pilecore::core;

namespace {

std::vector<std::shared_ptr<const LoadedPlugin>> load_all(PluginRegistry& registry, std::vector<std::string>* refused = nullptr) {
  std::vector<std::shared_ptr<const LoadedPlugin>> out;
  for (const auto& name : registry.installed()) {
    auto r = registry.load(name);
    if (r.plugin) {
      out.push_back(r.plugin);
    } else if (refused) {
      refused->push_back(r.error);
    }
  }
  return out;
}

int write_output(const std::string& text, const std::string& output) {
  if (output.empty() || output == "-") {
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
  }
  std::ofstream out(output, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) {
    std::fprintf(stderr, "pilectl: cannot write %s\n", output.c_str());
    return 1;
  }
  return 0;
}

/// The diagnostics of a site file as editors take them: one object each.
nlohmann::json diagnostics_json(const Diagnostics& diags) {
  nlohmann::json all = nlohmann::json::array();
  for (const auto& d : diags.items()) {
    all.push_back({{"file", d.file}, {"line", d.pos.line}, {"column", d.pos.column},
                   {"severity", d.severity == Severity::error ? "error" : "warning"}, {"message", d.message}});
  }
  return all;
}

void print_json(const nlohmann::json& j) { std::printf("%s\n", j.dump(2).c_str()); }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pilectl " PILECORE_VERSION ": the pilecore command-line tool.", "pilectl"};
  app.set_version_flag("--version", PILECORE_VERSION);
  app.require_subcommand(1);
  // Global options: accepted before the command and, through fallthrough, after it.
  app.fallthrough();
  app.footer(
      "Exit status: 0 done; 1 the command ran and failed or was refused (an invalid site file, a broken ledger, a request pilecored "
      "refused or pilecored not reachable); 2 a usage error (an unknown command or option, a missing or malformed argument), and "
      "for ledger verify and the demo a check that could not run. See each command's page for more.");
  std::vector<std::string> plugin_dirs;
  std::string config_file, state_dir_opt, socket_opt, time_zone_opt;
  bool json = false, utc = false;
  app.add_option("--plugin-dir", plugin_dirs, "Plugin directory (repeatable); default $PILECORE_PLUGIN_PATH or the installed directory");
  app.add_option("-c,--config", config_file, "Site file (default for times and the database: /etc/pilecore/site.yaml when it exists)");
  app.add_option("--state-dir", state_dir_opt, "pilecored's state directory (default: as pilecored)");
  app.add_option("--socket", socket_opt, "pilecored's control socket (default: /run/pilecore/pilecored.sock, else <state dir>/pilecored.sock)");
  app.add_flag("--json", json, "Machine-readable output: one JSON document (watch: one object a line)");
  auto* utc_flag = app.add_flag("--utc", utc, "Print times in UTC instead of the site's time zone");
  app.add_option("--time-zone", time_zone_opt, "Print times in this IANA zone, e.g. Asia/Shanghai (default: the site's)")->excludes(utc_flag);

  auto registry = [&] {
    std::vector<std::filesystem::path> dirs(plugin_dirs.begin(), plugin_dirs.end());
    if (dirs.empty()) dirs = default_plugin_dirs();
    return PluginRegistry(dirs);
  };

  // config
  auto* config = app.add_subcommand("config", "Site files: validate them, generate their schema and reference");
  config->require_subcommand(1);
  std::string validate_file;
  bool quiet = false;
  auto* validate = config->add_subcommand("validate", "Check a site file; exit 0 when valid, 1 with every error as file:line:column");
  validate->add_option("FILE", validate_file, "Site file (default: the -c/--config file)");
  validate->add_flag("-q,--quiet", quiet, "Print nothing when the file is valid");
  validate->footer("Exit status: 0 valid (warnings allowed); 1 invalid, every error printed (with --json, as an array of {file, line, column, "
                   "severity, message} on standard output); 2 a usage error.");
  std::string schema_out;
  auto* schema = config->add_subcommand("schema", "Print the JSON Schema of site files for the installed plugins");
  schema->add_option("-o,--output", schema_out, "Write to this file instead of standard output");
  std::string reference_out, reference_format = "markdown";
  auto* reference = config->add_subcommand("reference", "Print the site file reference for the installed plugins (Markdown, or the site.yaml(5) manual page)");
  reference->add_option("-o,--output", reference_out, "Write to this file instead of standard output");
  reference->add_option("--format", reference_format, "markdown or man")->check(CLI::IsMember({"markdown", "man"}));

  // plugins
  auto* plugins = app.add_subcommand("plugins", "Installed plugins, and the instances that crashed pilecored");
  plugins->require_subcommand(1);
  auto* list = plugins->add_subcommand("list", "Name, kind, version, API version and file of every installed plugin");
  list->footer("Exit status: 0 every plugin loads; 1 one or more are refused (each named with the reason); 2 a usage error.");
  std::string show_name;
  auto* show = plugins->add_subcommand("show", "A plugin's description and configuration keys, with types, defaults and ranges");
  show->add_option("NAME", show_name, "Plugin name (see `pilectl plugins list`)")->required();
  std::string enable_name;
  auto* crashes = plugins->add_subcommand("crashes", "Instances that crashed or hung pilecored, and those quarantined for it (from the state directory)");
  auto* enable = plugins->add_subcommand("enable", "Forget an instance's crashes and lift its quarantine; pilecored creates it again at its next start");
  enable->add_option("INSTANCE", enable_name, "Instance name, as under `plugins:` in the site file")->required();

  // Talking to the running daemon.
  auto* running = plugins->add_subcommand("running", "The running daemon's instances: state, and for isolated ones their process and restarts");
  auto* status = app.add_subcommand("status", "Connectors, sessions, live power and energy, plugin instances, alarms");
  auto* session = app.add_subcommand("session", "Start and stop charging sessions");
  session->require_subcommand(1);
  std::uint32_t session_connector = 0;
  std::string session_method, session_token, session_mode, stop_reason = "Local";
  auto* session_start = session->add_subcommand("start", "Authorise and start a session on a connector");
  session_start->add_option("CONNECTOR", session_connector, "Connector id")->required();
  session_start->add_option("--method", session_method, "Payment instance (default: payment.default_method)");
  session_start->add_option("--token", session_token, "The user's identity for that method (card UID, wallet id, ...)");
  session_start->add_option("--mode", session_mode,
                            "Charging mode: full (default: charging.default_mode), amount:<fen>, energy:<Wh> or <n>kWh, time:<minutes> or <n>s; "
                            "the hold follows it");
  auto* session_stop = session->add_subcommand("stop", "Stop the session on a connector, bill it and print the receipt");
  session_stop->add_option("CONNECTOR", session_connector, "Connector id")->required();
  session_stop->add_option("--reason", stop_reason, "Stop reason")->check(CLI::IsMember({"Local", "Remote"}));
  std::string answer_pin;
  bool answer_confirm = false;
  auto* session_answer = session->add_subcommand("answer", "Answer the step-up a session start waits for: the PIN typed at the pile, or a confirmation");
  session_answer->add_option("CONNECTOR", session_connector, "Connector id")->required();
  auto* pin_opt = session_answer->add_option("--pin", answer_pin, "The PIN the driver typed");
  session_answer->add_flag("--confirm", answer_confirm, "Confirmed in the operator's app (a risk step-up's app_confirmation; to pay another way, start with that --method instead)")->excludes(pin_opt);
  std::string refund_txn, refund_reason;
  std::int64_t refund_fen = 0;
  auto* refund = app.add_subcommand("refund", "Refund part or all of a transaction's capture (a refund id of its own; several per transaction)");
  refund->add_option("TXN", refund_txn, "Transaction id")->required();
  refund->add_option("FEN", refund_fen, "Amount in fen")->required()->check(CLI::PositiveNumber);
  refund->add_option("--reason", refund_reason, "Why, for the ledger and the receipt");
  std::string receipt_txn;
  auto* receipt = app.add_subcommand("receipt", "The itemised receipt of a transaction");
  receipt->add_option("TXN", receipt_txn, "Transaction id")->required();

  auto* reload = app.add_subcommand("reload", "Make pilecored read its site file again (as systemctl reload does): new tariffs apply to sessions that "
                                               "start from now on; exit 1 with the file's errors when it is invalid (the running configuration stays)");

  auto* watch = app.add_subcommand("watch", "Follow the daemon's events (connector status, sessions, tariff boundaries, alarms) until interrupted");

  // demo
  DemoOptions demo_opts;
  std::string demo_site, demo_daemon;
  auto* demo = app.add_subcommand("demo", "A simulated day at the pile: sessions across tariff periods, a fault, a power cut and recovery, "
                                          "receipts, the ledger verified; exit 0 when all of it happened as scripted");
  demo->add_option("--site", demo_site, "The simulated site to start from (default: the shipped sim-site.yaml)")->check(CLI::ExistingFile);
  demo->add_option("--pilecored", demo_daemon, "The daemon to run (default: the pilecored next to pilectl)");
  demo->add_option("--speed", demo_opts.speed, "Simulated seconds per real second")->check(CLI::Range(60.0, 100000.0));
  demo->add_option("--uplink", demo_opts.uplink,
                   "How the pile's records reach the operator: mqtt (link-5g and a simulated modem to a Mosquitto broker on loopback, "
                   "answered by the reference back end), loopback (sim-link inside pilecored), or auto: mqtt when Mosquitto and the back "
                   "end can run here")
      ->check(CLI::IsMember({"auto", "mqtt", "loopback"}))
      ->capture_default_str();
  demo->footer("The day's database, log and keys are kept in --state-dir (default: a new directory under $TMPDIR).\n"
               "Exit status: 0 the day happened as scripted and the ledger verifies; 1 a check failed (each named); 2 it could not run.");

  // keys
  auto* keys = app.add_subcommand("keys", "The device key and certificate");
  keys->require_subcommand(1);
  std::string keys_key, keys_cert, keys_algorithm, keys_cn, keys_operator;
  int keys_days = 730;
  bool keys_force = false;
  auto* keys_init_cmd = keys->add_subcommand("init", "Make a development key and self-signed certificate (for the demo and tests; a "
                                                     "production key comes from the operator's PKI or lives in a TPM)");
  keys_init_cmd->add_option("--key", keys_key, "Private key file to write (overrides the site file)");
  keys_init_cmd->add_option("--cert", keys_cert, "Certificate file to write (overrides the site file)");
  keys_init_cmd->add_option("--algorithm", keys_algorithm, "ecdsa-p256 or sm2 (overrides the site file)")->check(CLI::IsMember({"ecdsa-p256", "sm2"}));
  keys_init_cmd->add_option("--cn", keys_cn, "Subject CN: the pile's serial number (default: the site id)");
  keys_init_cmd->add_option("--operator", keys_operator, "Subject O: the operator (overrides the site file)");
  keys_init_cmd->add_option("--days", keys_days, "Validity in days")->check(CLI::Range(1, 36500));
  keys_init_cmd->add_flag("--force", keys_force, "Replace an existing key and certificate");
  std::string keys_owner;
  keys_init_cmd->add_option("--owner", keys_owner, "USER[:GROUP] who must read the key: the user pilecored runs as (default: the owner of the state directory)");
  keys_init_cmd->footer("With -c, paths, algorithm and operator come from the site file's identity section and the CN from site.id.\n"
                        "Exit status: 0 made; 1 a file exists (give --force) or it failed; 2 a usage error.");

  // ledger
  auto* ledger = app.add_subcommand("ledger", "The signed transaction ledger");
  ledger->require_subcommand(1);
  std::string ledger_db, ledger_cert;
  auto* ledger_verify_cmd = ledger->add_subcommand("verify", "Check the whole chain and every signature; exit 1 naming the first bad record");
  ledger_verify_cmd->add_option("--db", ledger_db, "Database file (default: from the site file, else <state dir>/pilecore.db)");
  ledger_verify_cmd->add_option("--cert", ledger_cert, "Device certificate (default: from the site file, else <state dir>/identity/device.crt)");
  bool ledger_accept_unsigned = false;
  ledger_verify_cmd->add_flag("--accept-unsigned-tail", ledger_accept_unsigned,
                              "Pass when the only unsigned records are the newest (a daemon stopped before writing their signatures; it signs them at its next start); the output says how many are not covered");
  ledger_verify_cmd->footer("Exit status: 0 the ledger is intact; 1 it is broken (the first bad record named); 2 the check cannot run (no "
                            "database, no ledger, an unreadable certificate, an invalid site file) or a usage error.");

  auto accounts = cli::add_accounts_command(app, cli::AccountsGlobals{&state_dir_opt, &json, &time_zone_opt});

  // transactions (read from the database, as ledger verify). `pilectl transactions` alone is
  // `transactions list`, as it was before list existed; the options are the group's, so they
  // are taken after either.
  TransactionsQuery tx;
  std::string tx_db;
  std::uint32_t tx_connector = 0;
  auto* transactions = app.add_subcommand("transactions", "Transactions from the database, with the risk engine's decisions and every rule's answer");
  transactions->add_option("--db", tx_db, "Database file (default: from the site file, else <state dir>/pilecore.db)");
  transactions->add_option("--limit", tx.limit, "How many, newest first (default 20)")->check(CLI::Range(1, 100000));
  transactions->add_option("--txn", tx.only, "Only this transaction");
  transactions->add_option("--day", tx.day, "Only those started on this day (YYYY-MM-DD) in the site's time zone (or --time-zone, --utc)");
  auto* tx_connector_opt = transactions->add_option("--connector", tx_connector, "Only this connector")->check(CLI::Range(1, 255));
  transactions->add_option("--method", tx.method, "Only this payment instance");
  transactions->add_option("--state", tx.state, "Only those in this state: open, stopping, closed, completed or recovered")
      ->check(CLI::IsMember({"open", "stopping", "closed", "completed", "recovered"}));
  auto* transactions_list = transactions->add_subcommand("list", "Transactions, newest first; the filters (--day, --connector, --method, --state, --limit) combine");
  transactions->footer("Exit status: 0 listed (also when none match); 1 the database cannot be read or --txn is not in it; 2 a usage error "
                       "(a malformed --day, an unknown state).");
  (void)transactions_list;

  // Generated documentation: the manual pages (the package build) and the bash completion.
  std::string man_dir;
  auto* manpages = app.add_subcommand("manpages", "Write pilectl's manual pages, one per command, and site.yaml(5) into a directory");
  manpages->add_option("DIR", man_dir, "Directory to write them in")->required();
  manpages->group("");
  std::string completion_shell;
  auto* completion = app.add_subcommand("completion", "Print the shell completion script (bash): source it, or install it as /usr/share/bash-completion/completions/pilectl");
  completion->add_option("SHELL", completion_shell, "bash")->required()->check(CLI::IsMember({"bash"}));

  if (auto rc = cli::parse_command_line(app, argc, argv, std::cout, std::cerr)) return *rc;
  if (accounts->chosen()) return accounts->run(std::cout, std::cerr);

  // Where times are shown: --utc, --time-zone, else the site's zone (the daemon's status reply
  // when it was asked, else the site file), else UTC; always printed with the offset.
  const std::filesystem::path site_file = !config_file.empty() ? std::filesystem::path(config_file)
                                          : std::filesystem::exists("/etc/pilecore/site.yaml") ? std::filesystem::path("/etc/pilecore/site.yaml")
                                                                                               : std::filesystem::path();
  auto time_view = [&](const nlohmann::json* status_reply, TimeView& view) -> bool {
    std::string error;
    if (utc) {
      view = utc_view();
      return true;
    }
    std::string name = time_zone_opt;
    if (name.empty() && status_reply) name = status_reply->value("timezone", "");
    if (name.empty() && !site_file.empty()) name = site_file_time_zone(site_file).value_or("");
    if (name.empty()) {
      view = utc_view();
      return true;
    }
    if (auto v = zone_view(name, &error)) {
      view = *v;
      return true;
    }
    std::fprintf(stderr, "pilectl: %s\n", error.c_str());
    return false;
  };

  // The identity section and site id of a site file, for keys init, ledger verify, transactions.
  auto load_for_identity = [&](const std::string& file, std::optional<SiteConfig>& site) -> bool {
    auto reg = registry();
    auto outcome = load_site(file, reg);
    if (!outcome.site) {
      std::fputs(outcome.diagnostics.format().c_str(), stderr);
      std::fprintf(stderr, "pilectl: %s: invalid; check it with: pilectl config validate %s\n", file.c_str(), file.c_str());
      return false;
    }
    site = std::move(outcome.site);
    return true;
  };
  // A command that writes text to streams, under --json: {"ok", "exit", "output"} so a script
  // gets the outcome and the words in one document.
  auto run_as_json = [&](const std::function<int(std::ostream&, std::ostream&)>& run) -> int {
    if (!json) return run(std::cout, std::cerr);
    std::ostringstream out, err;
    const int rc = run(out, err);
    print_json({{"ok", rc == 0}, {"exit", rc}, {"output", out.str()}, {"error", err.str()}});
    return rc;
  };
  const std::filesystem::path default_state = state_dir_opt.empty() ? default_state_dir() : std::filesystem::path(state_dir_opt);
  if (*manpages) {
    std::error_code ec;
    std::filesystem::create_directories(man_dir, ec);
    for (const auto& [name, text] : cli::manual_pages(app, PILECORE_VERSION)) {
      if (write_output(text, (std::filesystem::path(man_dir) / name).string()) != 0) return 1;
    }
    auto reg = registry();
    return write_output(cli::site_reference_man(site_reference_markdown(load_all(reg)), PILECORE_VERSION), (std::filesystem::path(man_dir) / "site.yaml.5").string());
  }
  if (*completion) {
    std::fputs(cli::bash_completion(app).c_str(), stdout);
    return 0;
  }
  if (*demo) {
    demo_opts.site = demo_site;
    demo_opts.state_dir = state_dir_opt;
    demo_opts.pilecored = demo_daemon;
    demo_opts.plugin_dirs.assign(plugin_dirs.begin(), plugin_dirs.end());
    return run_demo(demo_opts, std::cout, std::cerr);
  }
  if (*keys_init_cmd) {
    std::optional<SiteConfig> site;
    if (!config_file.empty() && !load_for_identity(config_file, site)) return 1;
    const IdentityConfig id = site && site->identity ? *site->identity : IdentityConfig{};
    IdentityOptions o;
    o.key = keys_key.empty() ? resolve_identity_location(id.key, default_state) : keys_key;
    o.certificate = keys_cert.empty() ? resolve_identity_location(id.certificate, default_state) : keys_cert;
    o.algorithm = keys_algorithm.empty() ? id.algorithm : *parse_key_algorithm(keys_algorithm);
    o.common_name = !keys_cn.empty() ? keys_cn : site ? site->id : std::string();
    o.organization = keys_operator.empty() ? id.organization : keys_operator;
    o.validity_days = keys_days;
    o.force = keys_force;
    try {
      o.owner = resolve_key_owner(keys_owner, default_state);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "pilectl: %s\n", e.what());
      return 1;
    }
    return run_as_json([&](std::ostream& out, std::ostream& err) { return keys_init(o, out, err); });
  }
  if (*transactions) {
    std::optional<SiteConfig> site;
    if (!config_file.empty() && !load_for_identity(config_file, site)) return 2;
    tx.db = !tx_db.empty() ? std::filesystem::path(tx_db)
                           : std::filesystem::path(resolve_identity_location(site ? site->database : "pilecore.db", default_state));
    if (tx_connector_opt->count() > 0) tx.connector = tx_connector;
    tx.json = json;
    if (!utc && time_zone_opt.empty() && site) {
      if (auto v = zone_view(site->timezone)) tx.view = *v;
    } else if (!time_view(nullptr, tx.view)) {
      return 2;
    }
    return list_transactions(tx, std::cout, std::cerr);
  }
  if (*ledger_verify_cmd) {
    std::optional<SiteConfig> site;
    if (!config_file.empty() && !load_for_identity(config_file, site)) return 2;
    const std::filesystem::path state = !state_dir_opt.empty() ? std::filesystem::path(state_dir_opt)
                                        : !ledger_db.empty()   ? std::filesystem::absolute(ledger_db).parent_path()
                                                               : default_state_dir();
    const IdentityConfig id = site && site->identity ? *site->identity : IdentityConfig{};
    const std::filesystem::path db = !ledger_db.empty() ? std::filesystem::path(ledger_db)
                                                        : std::filesystem::path(resolve_identity_location(site ? site->database : "pilecore.db", state));
    const std::filesystem::path cert = !ledger_cert.empty() ? std::filesystem::path(ledger_cert) : std::filesystem::path(resolve_identity_location(id.certificate, state));
    return run_as_json([&](std::ostream& out, std::ostream& err) { return ledger_verify(db, cert, out, err, VerifyOptions{ledger_accept_unsigned}); });
  }

  auto socket_path = [&]() -> std::filesystem::path {
    if (!socket_opt.empty()) return socket_opt;
    if (!state_dir_opt.empty()) return std::filesystem::path(state_dir_opt) / "pilecored.sock";
    if (const char* env = std::getenv("RUNTIME_DIRECTORY"); env && *env) return default_socket_path(default_state_dir());
    std::error_code ec;
    if (std::filesystem::exists("/run/pilecore/pilecored.sock", ec)) return "/run/pilecore/pilecored.sock";
    return default_state_dir() / "pilecored.sock";
  };
  // `ok` false: the daemon refused; the error is printed unless the caller wants to add to it.
  auto exchange = [&](const nlohmann::json& req, nlohmann::json& out) -> bool {
    try {
      // A start may wait for a driver's second verification (payment.step_up.timeout_s, up to an
      // hour) and the payment method; the daemon answers it either way.
      const bool start = req.value("cmd", "") == "session_start";
      out = control_request(socket_path(), req, start ? std::chrono::milliseconds(std::chrono::hours(1) + std::chrono::minutes(11)) : std::chrono::seconds(30));
    } catch (const std::exception& e) {
      out = {{"ok", false}, {"error", e.what()}};
      return false;
    }
    return out.value("ok", false);
  };
  auto request = [&](const nlohmann::json& req, nlohmann::json& out) -> bool {
    if (exchange(req, out)) return true;
    std::fprintf(stderr, "pilectl: %s\n", out.value("error", std::string("request failed")).c_str());
    return false;
  };
  // The status reply, for the site's zone and its connectors; null when pilecored does not answer.
  auto status_reply = [&]() -> std::optional<nlohmann::json> {
    nlohmann::json r;
    if (!exchange({{"cmd", "status"}}, r)) return std::nullopt;
    return r;
  };
  // A connector the pile does not have, said before anything is asked of it.
  auto check_connector = [&](const std::optional<nlohmann::json>& st, std::uint32_t id) -> bool {
    if (!st || !st->contains("connectors")) return true;  // the daemon's own answer will say
    std::string ids;
    for (const auto& c : (*st)["connectors"]) {
      if (c.value("id", 0u) == id) return true;
      ids += (ids.empty() ? "" : ", ") + std::to_string(c.value("id", 0u));
    }
    std::fprintf(stderr, "pilectl: there is no connector %u on this pile; its connectors: %s\n", id, ids.c_str());
    return false;
  };
  // What a refusal leaves unsaid that the status knows: a Faulted connector's active alarms.
  auto explain_refusal = [&](const std::string& error, std::uint32_t connector, const TimeView& view) {
    std::string why;
    if (error.find("Faulted") != std::string::npos) {
      if (auto st = status_reply()) {
        for (const auto& a : st->value("alarms", nlohmann::json::array())) {
          if (a.value("connector", 0u) != connector && a.contains("connector")) continue;
          why += fmt::format("\n  {} ({}, {}) since {}", a.value("message", ""), a.value("code", ""), a.value("severity", ""),
                             format_time_text(a.value("since", ""), view));
        }
      }
    }
    std::fprintf(stderr, "pilectl: %s%s\n", error.c_str(), why.c_str());
  };

  if (*watch) {
    TimeView view;
    {
      const auto st = json || utc || !time_zone_opt.empty() ? std::nullopt : status_reply();
      if (!time_view(st ? &*st : nullptr, view)) return 2;
    }
    try {
      ControlWatch w(socket_path());
      for (;;) {
        if (auto ev = w.next(std::chrono::hours(24))) {
          std::string text;
          if (json) {
            text = ev->dump();
          } else {
            const std::uint32_t c = ev->value("connector", 0u);
            text = fmt::format("{}  {:<12} {}", format_time_text(ev->value("time", ""), view), c ? fmt::format("connector {}", c) : "", describe_event(*ev));
          }
          std::printf("%s\n", text.c_str());
          std::fflush(stdout);
        }
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "pilectl: %s\n", e.what());
      return 1;
    }
  }
  if (*running) {
    nlohmann::json r;
    if (!request({{"cmd", "status"}}, r)) return 1;
    if (json) {
      print_json(r.value("instances", nlohmann::json::array()));
      return 0;
    }
    std::printf("%-16s %-18s %-10s %-9s %-9s %-8s %-8s %s\n", "INSTANCE", "PLUGIN", "KIND", "STATE", "PROCESS", "PID", "RESTARTS", "DETAIL");
    for (const auto& i : r.value("instances", nlohmann::json::array())) {
      const bool iso = i.value("isolated", false);
      const int pid = i.value("pid", 0);
      std::printf("%-16s %-18s %-10s %-9s %-9s %-8s %-8s %s\n", i.value("name", "").c_str(), i.value("plugin", "").c_str(), i.value("kind", "").c_str(),
                  i.value("state", "").c_str(), iso ? "isolated" : "pilecored", iso && pid > 0 ? std::to_string(pid).c_str() : "-",
                  iso ? std::to_string(i.value("restarts", 0)).c_str() : "-",
                  (iso && !i.value("sandbox", "").empty() && i.value("detail", "").empty() ? i.value("sandbox", "") : i.value("detail", "")).c_str());
    }
    return 0;
  }
  // A reading the daemon does not have is missing, not zero.
  auto kwh_or_missing = [](const nlohmann::json& j, const char* key) {
    return j.contains(key) && j[key].is_number_integer() ? format_kwh(j[key].get<std::int64_t>()) + " kWh" : std::string("missing");
  };
  if (*status) {
    nlohmann::json r;
    if (!request({{"cmd", "status"}}, r)) return 1;
    if (json) {
      print_json(r);
      return 0;
    }
    TimeView view;
    if (!time_view(&r, view)) return 2;
    std::printf("site %s at %s\n", r.value("site", "").c_str(), format_time_text(r.value("time", ""), view).c_str());
    for (const auto& c : r["connectors"]) {
      const std::string power = c.contains("power_w") ? fmt::format("{:6.1f} kW", static_cast<double>(c.value("power_w", 0)) / 1000.0) : std::string("missing");
      std::printf("connector %d  %-13s power %s  meter %s", c.value("id", 0), c.value("status", "").c_str(), power.c_str(), kwh_or_missing(c, "meter_wh").c_str());
      if (c.contains("soc_pct")) std::printf("  SoC %.1f%%", c.value("soc_pct", 0.0));
      std::printf("\n");
      if (c.contains("session")) {
        const auto& s = c["session"];
        std::printf("  session %s (%s via %s) since %s: %s, %s so far%s\n", s.value("transaction", "").c_str(), s.value("user", "").c_str(),
                    s.value("method", "").c_str(), format_time_text(s.value("started", ""), view).c_str(), kwh_or_missing(s, "energy_wh").c_str(),
                    s.contains("amount_fen") ? (format_yuan(s.value("amount_fen", std::int64_t{0})) + " yuan").c_str() : "amount missing",
                    s.value("stopping", false) ? " (stopping)" : "");
      }
    }
    if (r.contains("storage") && r["storage"].contains("free_bytes")) {
      const auto& d = r["storage"];
      std::printf("storage %s: %.1f MiB free of %.1f MiB%s\n", d.value("path", "").c_str(), static_cast<double>(d.value("free_bytes", std::uint64_t{0})) / 1048576.0,
                  static_cast<double>(d.value("total_bytes", std::uint64_t{0})) / 1048576.0, d.value("low", false) ? " (LOW)" : "");
    }
    for (const auto& a : r.value("alarms", nlohmann::json::array())) {
      std::printf("alarm %s %s since %s: %s\n", a.value("code", "").c_str(), a.value("severity", "").c_str(),
                  format_time_text(a.value("since", ""), view).c_str(), a.value("message", "").c_str());
    }
    for (const auto& i : r["instances"]) {
      std::printf("instance %-14s %-9s %-14s %-8s %s%s%s\n", i.value("name", "").c_str(), i.value("kind", "").c_str(), i.value("plugin", "").c_str(),
                  i.value("state", "").c_str(), i.value("health", "").c_str(), i.value("detail", "").empty() ? "" : ": ", i.value("detail", "").c_str());
    }
    std::printf("times in %s\n", view.name.c_str());
    return 0;
  }
  if (*session_start || *session_stop || *session_answer) {
    const auto st = status_reply();
    if (!check_connector(st, session_connector)) return 1;
    TimeView view;
    if (!time_view(st ? &*st : nullptr, view)) return 2;
    nlohmann::json req;
    if (*session_start) {
      req = {{"cmd", "session_start"}, {"connector", session_connector}, {"method", session_method}, {"token", session_token}, {"mode", session_mode}};
    } else if (*session_stop) {
      req = {{"cmd", "session_stop"}, {"connector", session_connector}, {"reason", stop_reason}};
    } else {
      req = {{"cmd", "session_answer"}, {"connector", session_connector}};
      if (!answer_pin.empty()) {
        req["pin"] = answer_pin;
      } else {
        req["confirmed"] = answer_confirm;
      }
    }
    nlohmann::json r;
    if (!exchange(req, r)) {
      if (json) print_json(r);
      explain_refusal(r.value("error", std::string("request failed")), session_connector, view);
      return 1;
    }
    if (json) {
      print_json(r);
    } else if (*session_start) {
      std::printf("connector %u: session %s started (meter %s)\n", session_connector, r.value("transaction", "").c_str(), kwh_or_missing(r, "meter_start_wh").c_str());
    } else if (*session_stop) {
      std::fputs(format_receipt_text(r["receipt"], view.name).c_str(), stdout);
    } else {
      std::printf("connector %u: answer passed on for %s\n", session_connector, r.value("transaction", "").c_str());
    }
    return 0;
  }
  if (*refund) {
    nlohmann::json r;
    if (!request({{"cmd", "refund"}, {"transaction", refund_txn}, {"amount_fen", refund_fen}, {"reason", refund_reason}}, r)) return 1;
    if (json) {
      print_json(r);
      return 0;
    }
    std::printf("%s: %s yuan, %s\n", r.value("operation", "").c_str(), format_yuan(r.value("amount_fen", std::int64_t{0})).c_str(),
                r.value("state", "").c_str());
    return 0;
  }
  if (*receipt) {
    nlohmann::json r;
    if (!request({{"cmd", "receipt"}, {"transaction", receipt_txn}}, r)) return 1;
    if (json) {
      print_json(r);
      return 0;
    }
    TimeView view;
    const auto st = utc || !time_zone_opt.empty() ? std::nullopt : status_reply();
    if (!time_view(st ? &*st : nullptr, view)) return 2;
    std::fputs(format_receipt_text(r, view.name).c_str(), stdout);
    return 0;
  }
  if (*reload) {
    nlohmann::json r;
    const bool answered = exchange({{"cmd", "reload"}}, r);
    if (json) {
      print_json(r);
      return answered ? 0 : 1;
    }
    if (!answered) {
      const auto errors = r.value("errors", std::vector<std::string>{});
      if (errors.empty()) std::fprintf(stderr, "pilectl: %s\n", r.value("error", std::string("reload failed")).c_str());
      if (!errors.empty()) std::fprintf(stderr, "pilectl: the site file is not valid; pilecored keeps running with the one it has:\n");
      for (const auto& e : errors) std::fprintf(stderr, "%s\n", e.c_str());
      return 1;
    }
    const auto applied = r.value("applied", std::vector<std::string>{});
    const auto later = r.value("restart_needed", std::vector<std::string>{});
    if (applied.empty()) std::printf("reloaded: nothing to apply\n");
    for (const auto& a : applied) std::printf("applied: %s\n", a.c_str());
    for (const auto& l : later) std::printf("at the next restart: %s\n", l.c_str());
    return 0;
  }
  if (*validate) {
    if (validate_file.empty()) validate_file = config_file;
    if (validate_file.empty()) {
      std::fputs("pilectl config validate: no site file: give FILE (or -c FILE)\n", stderr);
      return 2;
    }
    auto reg = registry();
    auto outcome = load_site(validate_file, reg);
    const auto& diags = outcome.diagnostics;
    if (json) {
      // Editors' problem matchers read them from standard output; the exit status says valid.
      print_json(diagnostics_json(diags));
      return outcome.site ? 0 : 1;
    }
    if (!diags.items().empty()) std::fputs(diags.format().c_str(), stderr);
    if (!outcome.site) {
      std::fprintf(stderr, "%s: invalid: %zu error(s)\n", validate_file.c_str(), diags.error_count());
      return 1;
    }
    if (!quiet) {
      std::printf("%s: valid: site %s, %zu connector(s), %zu plugin instance(s)\n", validate_file.c_str(), outcome.site->id.c_str(),
                  outcome.site->connectors.size(), outcome.site->instances.size());
    }
    return 0;
  }
  if (*schema) {
    auto reg = registry();
    return write_output(site_json_schema(load_all(reg)).dump(2) + "\n", schema_out);
  }
  if (*reference) {
    auto reg = registry();
    return write_output(reference_format == "man" ? cli::site_reference_man(site_reference_markdown(load_all(reg)), PILECORE_VERSION) : site_reference_markdown(load_all(reg)), reference_out);
  }
  if (*list) {
    auto reg = registry();
    const auto names = reg.installed();
    int width = 18;  // wide enough for every name, so the columns stay aligned
    for (const auto& n : names) width = std::max(width, static_cast<int>(n.size()));
    nlohmann::json j = nlohmann::json::array();
    int refused = 0;
    if (!json) std::printf("%-*s %-10s %-9s %-5s %s\n", width, "NAME", "KIND", "VERSION", "API", "FILE");
    for (const auto& name : names) {
      auto r = reg.load(name);
      if (r.plugin) {
        const auto* d = r.plugin->descriptor;
        if (json) {
          j.push_back({{"name", d->name}, {"kind", std::string(to_string(d->kind))}, {"version", d->version},
                       {"api", fmt::format("{}.{}", d->api_major, d->api_minor)}, {"file", r.plugin->file.string()}});
        } else {
          std::printf("%-*s %-10s %-9s %-5s %s\n", width, d->name, std::string(to_string(d->kind)).c_str(), d->version,
                      fmt::format("{}.{}", d->api_major, d->api_minor).c_str(), r.plugin->file.c_str());
        }
      } else {
        ++refused;
        if (json) {
          j.push_back({{"name", name}, {"refused", r.error}});
        } else {
          std::printf("%-*s %-10s %s\n", width, name.c_str(), "REFUSED", r.error.c_str());
        }
      }
    }
    if (json) print_json(j);
    if (!json && names.empty()) std::printf("(no plugins in %s)\n", fmt::format("{}", fmt::join(reg.dirs(), ", ")).c_str());
    return refused ? 1 : 0;
  }
  if (*crashes || *enable) {
    try {
      CrashBook book(default_state / "plugin-crashes.json");
      if (*enable) {
        const bool was_quarantined = book.quarantined(enable_name);
        if (!book.clear(enable_name)) {
          std::printf("instance %s has no crash records in %s; nothing to enable\n", enable_name.c_str(), book.file().c_str());
          return 0;
        }
        book.save();
        std::printf("instance %s: crash records cleared%s; pilecored creates it at its next start (systemctl restart pilecore)\n",
                    enable_name.c_str(), was_quarantined ? " and quarantine lifted" : "");
        return 0;
      }
      if (json) {
        nlohmann::json j = nlohmann::json::array();
        for (const auto& [name, ic] : book.instances()) {
          j.push_back({{"instance", name}, {"plugin", ic.plugin}, {"crashes", ic.crashes.size()}, {"quarantined", ic.quarantined}, {"reason", ic.reason},
                       {"last_call", ic.crashes.empty() ? "" : ic.crashes.back().call}});
        }
        print_json(j);
        return 0;
      }
      if (book.instances().empty()) {
        std::printf("no plugin instance has crashed pilecored (%s)\n", book.file().c_str());
        return 0;
      }
      std::printf("%-14s %-16s %-8s %-12s %s\n", "INSTANCE", "PLUGIN", "CRASHES", "STATE", "LAST");
      for (const auto& [name, ic] : book.instances()) {
        const std::string last = ic.crashes.empty() ? std::string("-") : fmt::format("{} during {}", ic.crashes.back().kind, ic.crashes.back().call);
        std::printf("%-14s %-16s %-8zu %-12s %s\n", name.c_str(), ic.plugin.c_str(), ic.crashes.size(), ic.quarantined ? "QUARANTINED" : "enabled",
                    last.c_str());
        if (ic.quarantined) std::printf("  %s; re-enable: pilectl plugins enable %s\n", ic.reason.c_str(), name.c_str());
      }
      return 0;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "pilectl: %s\n", e.what());
      return 1;
    }
  }
  if (*show) {
    auto reg = registry();
    auto r = reg.load(show_name);
    if (!r.plugin) {
      if (!reg.find(show_name)) {
        std::fprintf(stderr, "pilectl: no plugin named '%s'; installed plugins: %s\n", show_name.c_str(),
                     fmt::format("{}", fmt::join(reg.installed(), ", ")).c_str());
      } else {
        std::fprintf(stderr, "pilectl: %s\n", r.error.c_str());
      }
      return 1;
    }
    if (json) {
      const auto* d = r.plugin->descriptor;
      nlohmann::json key_schemas = nlohmann::json::object();
      for (const auto& f : r.plugin->config_fields) key_schemas[f.key] = to_json_schema(f);
      print_json({{"name", d->name}, {"kind", std::string(to_string(d->kind))}, {"version", d->version}, {"api", fmt::format("{}.{}", d->api_major, d->api_minor)},
                  {"vendor", d->vendor ? d->vendor : ""}, {"license", d->license ? d->license : ""}, {"description", d->description ? d->description : ""},
                  {"file", r.plugin->file.string()}, {"config", key_schemas}});
      return 0;
    }
    std::fputs(plugin_description_text(*r.plugin).c_str(), stdout);
    return 0;
  }
  return 0;
}
