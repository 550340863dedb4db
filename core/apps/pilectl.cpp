// pilectl: validate site files, inspect plugins, generate the schema and reference.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <fmt/std.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "build_config.hpp"
#include "control_socket.hpp"
#include "crash_records.hpp"
#include "demo.hpp"
#include "ledger_commands.hpp"
#include "money.hpp"
#include "receipt.hpp"
#include "paths.hpp"
#include "pilectl_accounts.hpp"
#include "plugin_loader.hpp"
#include "reference.hpp"
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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pilectl " PILECORE_VERSION ": the pilecore command-line tool."};
  app.set_version_flag("--version", PILECORE_VERSION);
  app.require_subcommand(1);
  std::vector<std::string> plugin_dirs;
  app.add_option("--plugin-dir", plugin_dirs, "Plugin directory (repeatable); default $PILECORE_PLUGIN_PATH or the installed directory");

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
  validate->add_option("FILE", validate_file, "Site file")->required();
  validate->add_flag("-q,--quiet", quiet, "Print nothing when the file is valid");
  std::string schema_out;
  auto* schema = config->add_subcommand("schema", "Print the JSON Schema of site files for the installed plugins");
  schema->add_option("-o,--output", schema_out, "Write to this file instead of standard output");
  std::string reference_out;
  auto* reference = config->add_subcommand("reference", "Print the site file reference (Markdown) for the installed plugins");
  reference->add_option("-o,--output", reference_out, "Write to this file instead of standard output");

  // plugins
  auto* plugins = app.add_subcommand("plugins", "Installed plugins, and the instances that crashed pilecored");
  plugins->require_subcommand(1);
  bool list_json = false;
  auto* list = plugins->add_subcommand("list", "Name, kind, version, API version and file of every installed plugin");
  list->add_flag("--json", list_json, "Machine-readable output");
  std::string show_name;
  auto* show = plugins->add_subcommand("show", "A plugin's description and configuration keys, with types, defaults and ranges");
  show->add_option("NAME", show_name, "Plugin name (see `pilectl plugins list`)")->required();
  std::string crashes_state_dir, enable_name;
  bool crashes_json = false;
  auto* crashes = plugins->add_subcommand("crashes", "Instances that crashed or hung pilecored, and those quarantined for it (from the state directory)");
  crashes->add_option("--state-dir", crashes_state_dir, "pilecored's state directory (default: as pilecored)");
  crashes->add_flag("--json", crashes_json, "Machine-readable output");
  auto* enable = plugins->add_subcommand("enable", "Forget an instance's crashes and lift its quarantine; pilecored creates it again at its next start");
  enable->add_option("INSTANCE", enable_name, "Instance name, as under `plugins:` in the site file")->required();
  enable->add_option("--state-dir", crashes_state_dir, "pilecored's state directory (default: as pilecored)");

  // Talking to the running daemon.
  std::string socket_opt, state_dir_opt;
  auto add_socket_options = [&](CLI::App* cmd) {
    cmd->add_option("--socket", socket_opt, "pilecored's control socket (default: /run/pilecore/pilecored.sock, else <state dir>/pilecored.sock)");
    cmd->add_option("--state-dir", state_dir_opt, "pilecored's state directory, to find its socket");
  };
  bool running_json = false;
  auto* running = plugins->add_subcommand("running", "The running daemon's instances: state, and for isolated ones their process and restarts");
  running->add_flag("--json", running_json, "Machine-readable output");
  add_socket_options(running);
  bool status_json = false;
  auto* status = app.add_subcommand("status", "Connectors, sessions, live power and energy, plugin instances");
  status->add_flag("--json", status_json, "Machine-readable output");
  add_socket_options(status);
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
  add_socket_options(session_start);
  auto* session_stop = session->add_subcommand("stop", "Stop the session on a connector, bill it and print the receipt");
  session_stop->add_option("CONNECTOR", session_connector, "Connector id")->required();
  session_stop->add_option("--reason", stop_reason, "Stop reason")->check(CLI::IsMember({"Local", "Remote"}));
  add_socket_options(session_stop);
  std::string answer_pin;
  bool answer_confirm = false;
  auto* session_answer = session->add_subcommand("answer", "Answer the step-up a session start waits for: the PIN typed at the pile, or a confirmation");
  session_answer->add_option("CONNECTOR", session_connector, "Connector id")->required();
  auto* pin_opt = session_answer->add_option("--pin", answer_pin, "The PIN the driver typed");
  session_answer->add_flag("--confirm", answer_confirm, "Confirmed in the operator's app (a risk step-up's app_confirmation; to pay another way, start with that --method instead)")->excludes(pin_opt);
  add_socket_options(session_answer);
  std::string refund_txn, refund_reason;
  std::int64_t refund_fen = 0;
  auto* refund = app.add_subcommand("refund", "Refund part or all of a transaction's capture (a refund id of its own; several per transaction)");
  refund->add_option("TXN", refund_txn, "Transaction id")->required();
  refund->add_option("FEN", refund_fen, "Amount in fen")->required()->check(CLI::PositiveNumber);
  refund->add_option("--reason", refund_reason, "Why, for the ledger and the receipt");
  add_socket_options(refund);
  std::string receipt_txn;
  bool receipt_json = false;
  auto* receipt = app.add_subcommand("receipt", "The itemised receipt of a transaction");
  receipt->add_option("TXN", receipt_txn, "Transaction id")->required();
  receipt->add_flag("--json", receipt_json, "Machine-readable output");
  add_socket_options(receipt);

  bool watch_json = false;
  auto* watch = app.add_subcommand("watch", "Follow the daemon's events (connector status, sessions, tariff boundaries, alarms) until interrupted");
  watch->add_flag("--json", watch_json, "One JSON object per line, as the socket sends them");
  std::string watch_tz;
  watch->add_option("--time-zone", watch_tz, "Show times in this IANA zone, e.g. Asia/Shanghai (default UTC)");
  add_socket_options(watch);

  // demo
  DemoOptions demo_opts;
  std::string demo_site, demo_state, demo_daemon;
  auto* demo = app.add_subcommand("demo", "A simulated day at the pile: sessions across tariff periods, a fault, a power cut and recovery, "
                                          "receipts, the ledger verified; exit 0 when all of it happened as scripted");
  demo->add_option("--state-dir", demo_state, "Keep the day's database, log and keys here (default: a new directory under $TMPDIR; kept)");
  demo->add_option("--site", demo_site, "The simulated site to start from (default: the shipped sim-site.yaml)")->check(CLI::ExistingFile);
  demo->add_option("--pilecored", demo_daemon, "The daemon to run (default: the pilecored next to pilectl)");
  demo->add_option("--speed", demo_opts.speed, "Simulated seconds per real second")->check(CLI::Range(60.0, 100000.0));

  // keys
  auto* keys = app.add_subcommand("keys", "The device key and certificate");
  keys->require_subcommand(1);
  std::string keys_config, keys_state_dir, keys_key, keys_cert, keys_algorithm, keys_cn, keys_operator;
  int keys_days = 730;
  bool keys_force = false;
  auto* keys_init_cmd = keys->add_subcommand("init", "Make a development key and self-signed certificate (for the demo and tests; a "
                                                     "production key comes from the operator's PKI or lives in a TPM)");
  keys_init_cmd->add_option("--config", keys_config, "Site file: paths, algorithm and operator from its identity section, CN from site.id");
  keys_init_cmd->add_option("--state-dir", keys_state_dir, "State directory relative paths are under (default: as pilecored)");
  keys_init_cmd->add_option("--key", keys_key, "Private key file to write (overrides the site file)");
  keys_init_cmd->add_option("--cert", keys_cert, "Certificate file to write (overrides the site file)");
  keys_init_cmd->add_option("--algorithm", keys_algorithm, "ecdsa-p256 or sm2 (overrides the site file)")->check(CLI::IsMember({"ecdsa-p256", "sm2"}));
  keys_init_cmd->add_option("--cn", keys_cn, "Subject CN: the pile's serial number (default: the site id)");
  keys_init_cmd->add_option("--operator", keys_operator, "Subject O: the operator (overrides the site file)");
  keys_init_cmd->add_option("--days", keys_days, "Validity in days")->check(CLI::Range(1, 36500));
  keys_init_cmd->add_flag("--force", keys_force, "Replace an existing key and certificate");
  std::string keys_owner;
  keys_init_cmd->add_option("--owner", keys_owner, "USER[:GROUP] who must read the key: the user pilecored runs as (default: the owner of the state directory)");

  // ledger
  auto* ledger = app.add_subcommand("ledger", "The signed transaction ledger");
  ledger->require_subcommand(1);
  std::string ledger_db, ledger_config, ledger_cert, ledger_state_dir;
  auto* ledger_verify_cmd = ledger->add_subcommand("verify", "Check the whole chain and every signature; exit 1 naming the first bad record");
  ledger_verify_cmd->add_option("--db", ledger_db, "Database file (default: from the site file, else <state dir>/pilecore.db)");
  ledger_verify_cmd->add_option("--config", ledger_config, "Site file: the database and the certificate from its storage and identity sections");
  ledger_verify_cmd->add_option("--cert", ledger_cert, "Device certificate (default: from the site file, else <state dir>/identity/device.crt)");
  bool ledger_accept_unsigned = false;
  ledger_verify_cmd->add_flag("--accept-unsigned-tail", ledger_accept_unsigned,
                              "Pass when the only unsigned records are the newest (a daemon stopped before writing their signatures; it signs them at its next start); the output says how many are not covered");
  ledger_verify_cmd->add_option("--state-dir", ledger_state_dir, "State directory relative paths are under (default: the --db file's directory, else as pilecored)");

  auto accounts = cli::add_accounts_command(app);

  // transactions (read from the database, as ledger verify)
  std::string tx_db, tx_config, tx_only;
  std::size_t tx_limit = 20;
  auto* transactions = app.add_subcommand("transactions", "The newest transactions with the risk engine's decisions and every rule's answer");
  transactions->add_option("--db", tx_db, "Database file (default: from the site file, else <state dir>/pilecore.db)");
  transactions->add_option("--config", tx_config, "Site file: the database from its storage section");
  transactions->add_option("--limit", tx_limit, "How many, newest first")->check(CLI::Range(1, 100000));
  transactions->add_option("--txn", tx_only, "Only this transaction");

  CLI11_PARSE(app, argc, argv);
  if (accounts->chosen()) return accounts->run(std::cout, std::cerr);

  // The identity section and site id of a site file, for keys init and ledger verify.
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
  if (*demo) {
    demo_opts.site = demo_site;
    demo_opts.state_dir = demo_state;
    demo_opts.pilecored = demo_daemon;
    demo_opts.plugin_dirs.assign(plugin_dirs.begin(), plugin_dirs.end());
    return run_demo(demo_opts, std::cout, std::cerr);
  }
  if (*keys_init_cmd) {
    std::optional<SiteConfig> site;
    if (!keys_config.empty() && !load_for_identity(keys_config, site)) return 1;
    const IdentityConfig id = site && site->identity ? *site->identity : IdentityConfig{};
    const std::filesystem::path state = keys_state_dir.empty() ? default_state_dir() : std::filesystem::path(keys_state_dir);
    IdentityOptions o;
    o.key = keys_key.empty() ? resolve_identity_location(id.key, state) : keys_key;
    o.certificate = keys_cert.empty() ? resolve_identity_location(id.certificate, state) : keys_cert;
    o.algorithm = keys_algorithm.empty() ? id.algorithm : *parse_key_algorithm(keys_algorithm);
    o.common_name = !keys_cn.empty() ? keys_cn : site ? site->id : std::string();
    o.organization = keys_operator.empty() ? id.organization : keys_operator;
    o.validity_days = keys_days;
    o.force = keys_force;
    try {
      o.owner = resolve_key_owner(keys_owner, state);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "pilectl: %s\n", e.what());
      return 1;
    }
    return keys_init(o, std::cout, std::cerr);
  }
  if (*transactions) {
    std::optional<SiteConfig> site;
    if (!tx_config.empty() && !load_for_identity(tx_config, site)) return 2;
    const std::filesystem::path db = !tx_db.empty() ? std::filesystem::path(tx_db)
                                                    : std::filesystem::path(resolve_identity_location(site ? site->database : "pilecore.db", default_state_dir()));
    return list_transactions(db, tx_limit, tx_only, std::cout, std::cerr);
  }
  if (*ledger_verify_cmd) {
    std::optional<SiteConfig> site;
    if (!ledger_config.empty() && !load_for_identity(ledger_config, site)) return 2;
    const std::filesystem::path state = !ledger_state_dir.empty() ? std::filesystem::path(ledger_state_dir)
                                        : !ledger_db.empty()      ? std::filesystem::absolute(ledger_db).parent_path()
                                                                  : default_state_dir();
    const IdentityConfig id = site && site->identity ? *site->identity : IdentityConfig{};
    const std::filesystem::path db = !ledger_db.empty() ? std::filesystem::path(ledger_db)
                                                        : std::filesystem::path(resolve_identity_location(site ? site->database : "pilecore.db", state));
    const std::filesystem::path cert = !ledger_cert.empty() ? std::filesystem::path(ledger_cert) : std::filesystem::path(resolve_identity_location(id.certificate, state));
    return ledger_verify(db, cert, std::cout, std::cerr, VerifyOptions{ledger_accept_unsigned});
  }

  auto socket_path = [&]() -> std::filesystem::path {
    if (!socket_opt.empty()) return socket_opt;
    if (!state_dir_opt.empty()) return std::filesystem::path(state_dir_opt) / "pilecored.sock";
    if (const char* env = std::getenv("RUNTIME_DIRECTORY"); env && *env) return default_socket_path(default_state_dir());
    std::error_code ec;
    if (std::filesystem::exists("/run/pilecore/pilecored.sock", ec)) return "/run/pilecore/pilecored.sock";
    return default_state_dir() / "pilecored.sock";
  };
  auto request = [&](const nlohmann::json& req, nlohmann::json& out) -> bool {
    try {
      // A start may wait for a driver's second verification (payment.step_up.timeout_s, up to an
      // hour) and the payment method; the daemon answers it either way.
      const bool start = req.value("cmd", "") == "session_start";
      out = control_request(socket_path(), req, start ? std::chrono::milliseconds(std::chrono::hours(1) + std::chrono::minutes(11)) : std::chrono::seconds(30));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "pilectl: %s\n", e.what());
      return false;
    }
    if (!out.value("ok", false)) {
      std::fprintf(stderr, "pilectl: %s\n", out.value("error", std::string("request failed")).c_str());
      return false;
    }
    return true;
  };

  if (*watch) {
    try {
      ControlWatch w(socket_path());
      for (;;) {
        if (auto ev = w.next(std::chrono::hours(24))) {
          const std::string text = watch_json ? ev->dump() : format_event_text(*ev, watch_tz);
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
    if (running_json) {
      std::printf("%s\n", r.value("instances", nlohmann::json::array()).dump(2).c_str());
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
  if (*status) {
    nlohmann::json r;
    if (!request({{"cmd", "status"}}, r)) return 1;
    if (status_json) {
      std::printf("%s\n", r.dump(2).c_str());
      return 0;
    }
    std::printf("site %s at %s\n", r.value("site", "").c_str(), r.value("time", "").c_str());
    for (const auto& c : r["connectors"]) {
      std::printf("connector %d  %-13s power %6.1f kW  meter %s kWh", c.value("id", 0), c.value("status", "").c_str(),
                  static_cast<double>(c.value("power_w", 0)) / 1000.0, format_kwh(c.value("meter_wh", std::int64_t{0})).c_str());
      if (c.contains("soc_pct")) std::printf("  SoC %.1f%%", c.value("soc_pct", 0.0));
      std::printf("\n");
      if (c.contains("session")) {
        const auto& s = c["session"];
        std::printf("  session %s (%s via %s) since %s: %s kWh, %s yuan so far%s\n", s.value("transaction", "").c_str(), s.value("user", "").c_str(),
                    s.value("method", "").c_str(), s.value("started", "").c_str(), format_kwh(s.value("energy_wh", std::int64_t{0})).c_str(),
                    format_yuan(s.value("amount_fen", std::int64_t{0})).c_str(), s.value("stopping", false) ? " (stopping)" : "");
      }
    }
    if (r.contains("storage") && r["storage"].contains("free_bytes")) {
      const auto& d = r["storage"];
      std::printf("storage %s: %.1f MiB free of %.1f MiB%s\n", d.value("path", "").c_str(), static_cast<double>(d.value("free_bytes", std::uint64_t{0})) / 1048576.0,
                  static_cast<double>(d.value("total_bytes", std::uint64_t{0})) / 1048576.0, d.value("low", false) ? " (LOW)" : "");
    }
    for (const auto& a : r.value("alarms", nlohmann::json::array())) {
      std::printf("alarm %s %s since %s: %s\n", a.value("code", "").c_str(), a.value("severity", "").c_str(), a.value("since", "").c_str(),
                  a.value("message", "").c_str());
    }
    for (const auto& i : r["instances"]) {
      std::printf("instance %-14s %-9s %-14s %-8s %s%s%s\n", i.value("name", "").c_str(), i.value("kind", "").c_str(), i.value("plugin", "").c_str(),
                  i.value("state", "").c_str(), i.value("health", "").c_str(), i.value("detail", "").empty() ? "" : ": ", i.value("detail", "").c_str());
    }
    return 0;
  }
  if (*session_start) {
    nlohmann::json r;
    if (!request({{"cmd", "session_start"}, {"connector", session_connector}, {"method", session_method}, {"token", session_token}, {"mode", session_mode}}, r)) return 1;
    std::printf("connector %u: session %s started (meter %s kWh)\n", session_connector, r.value("transaction", "").c_str(),
                format_kwh(r.value("meter_start_wh", std::int64_t{0})).c_str());
    return 0;
  }
  if (*session_stop) {
    nlohmann::json r;
    if (!request({{"cmd", "session_stop"}, {"connector", session_connector}, {"reason", stop_reason}}, r)) return 1;
    std::fputs(format_receipt_text(r["receipt"]).c_str(), stdout);
    return 0;
  }
  if (*session_answer) {
    nlohmann::json req = {{"cmd", "session_answer"}, {"connector", session_connector}};
    if (!answer_pin.empty()) {
      req["pin"] = answer_pin;
    } else {
      req["confirmed"] = answer_confirm;
    }
    nlohmann::json r;
    if (!request(req, r)) return 1;
    std::printf("connector %u: answer passed on for %s\n", session_connector, r.value("transaction", "").c_str());
    return 0;
  }
  if (*refund) {
    nlohmann::json r;
    if (!request({{"cmd", "refund"}, {"transaction", refund_txn}, {"amount_fen", refund_fen}, {"reason", refund_reason}}, r)) return 1;
    std::printf("%s: %s yuan, %s\n", r.value("operation", "").c_str(), format_yuan(r.value("amount_fen", std::int64_t{0})).c_str(),
                r.value("state", "").c_str());
    return 0;
  }
  if (*receipt) {
    nlohmann::json r;
    if (!request({{"cmd", "receipt"}, {"transaction", receipt_txn}}, r)) return 1;
    if (receipt_json) {
      std::printf("%s\n", r.dump(2).c_str());
    } else {
      std::fputs(format_receipt_text(r).c_str(), stdout);
    }
    return 0;
  }
  if (*validate) {
    auto reg = registry();
    auto outcome = load_site(validate_file, reg);
    const auto& diags = outcome.diagnostics;
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
    return write_output(site_reference_markdown(load_all(reg)), reference_out);
  }
  if (*list) {
    auto reg = registry();
    const auto names = reg.installed();
    int width = 18;  // wide enough for every name, so the columns stay aligned
    for (const auto& n : names) width = std::max(width, static_cast<int>(n.size()));
    nlohmann::json j = nlohmann::json::array();
    int refused = 0;
    if (!list_json) std::printf("%-*s %-10s %-9s %-5s %s\n", width, "NAME", "KIND", "VERSION", "API", "FILE");
    for (const auto& name : names) {
      auto r = reg.load(name);
      if (r.plugin) {
        const auto* d = r.plugin->descriptor;
        if (list_json) {
          j.push_back({{"name", d->name}, {"kind", std::string(to_string(d->kind))}, {"version", d->version},
                       {"api", fmt::format("{}.{}", d->api_major, d->api_minor)}, {"file", r.plugin->file.string()}});
        } else {
          std::printf("%-*s %-10s %-9s %-5s %s\n", width, d->name, std::string(to_string(d->kind)).c_str(), d->version,
                      fmt::format("{}.{}", d->api_major, d->api_minor).c_str(), r.plugin->file.c_str());
        }
      } else {
        ++refused;
        if (list_json) {
          j.push_back({{"name", name}, {"refused", r.error}});
        } else {
          std::printf("%-*s %-10s %s\n", width, name.c_str(), "REFUSED", r.error.c_str());
        }
      }
    }
    if (list_json) std::printf("%s\n", j.dump(2).c_str());
    if (!list_json && names.empty()) std::printf("(no plugins in %s)\n", fmt::format("{}", fmt::join(reg.dirs(), ", ")).c_str());
    return refused ? 1 : 0;
  }
  if (*crashes || *enable) {
    const auto state = crashes_state_dir.empty() ? default_state_dir() : std::filesystem::path(crashes_state_dir);
    try {
      CrashBook book(state / "plugin-crashes.json");
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
      if (crashes_json) {
        nlohmann::json j = nlohmann::json::array();
        for (const auto& [name, ic] : book.instances()) {
          j.push_back({{"instance", name}, {"plugin", ic.plugin}, {"crashes", ic.crashes.size()}, {"quarantined", ic.quarantined}, {"reason", ic.reason},
                       {"last_call", ic.crashes.empty() ? "" : ic.crashes.back().call}});
        }
        std::printf("%s\n", j.dump(2).c_str());
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
    std::fputs(plugin_description_text(*r.plugin).c_str(), stdout);
    return 0;
  }
  return 0;
}
