// pilecored: the charging pile controller daemon.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <fmt/std.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <thread>

#include "build_config.hpp"
#include "ledger.hpp"
#include "clocks.hpp"
#include "logging.hpp"
#include "paths.hpp"
#include "plugin_loader.hpp"
#include "runtime.hpp"
#include "site_config.hpp"

using namespace pilecore;
using namespace pilecore::core;

int main(int argc, char** argv) {
  CLI::App app{"pilecored " PILECORE_VERSION ": the pilecore charging pile controller.\n"
               "Validates the site file, loads its plugins and runs the pile until SIGTERM."};
  app.set_version_flag("--version", PILECORE_VERSION);
  std::string config;
  std::string state_dir;
  std::vector<std::string> plugin_dirs;
  std::string log_level;
  double clock_speed = 1.0;
  std::string clock_start;
  double status_interval_s = 300;
  std::string socket;
  bool check = false;
  app.add_option("-c,--config", config, "Site file (YAML)")->required()->check(CLI::ExistingFile);
  app.add_option("--state-dir", state_dir, "State directory (database); default $STATE_DIRECTORY, <build>/state or /var/lib/pilecore");
  app.add_option("--plugin-dir", plugin_dirs, "Plugin directory (repeatable); default $PILECORE_PLUGIN_PATH or the installed directory");
  app.add_option("--log-level", log_level, "Override the site file's log level")->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  app.add_option("--clock-speed", clock_speed, "Run a simulated clock this many times faster than real time (tests, demo)")->check(CLI::Range(0.001, 1e6));
  app.add_option("--clock-start", clock_start, "Start the simulated clock at this UTC time, e.g. 2026-01-01T00:00:00Z");
  app.add_option("--status-interval", status_interval_s, "Seconds of clock time between idle status lines (0 = none)")->check(CLI::Range(0.0, 1e9));
  app.add_option("--socket", socket, "Control socket for pilectl; default $RUNTIME_DIRECTORY/pilecored.sock or <state dir>/pilecored.sock; 'none' disables it");
  ControlLimits control_limits;
  double control_idle_s = static_cast<double>(control_limits.idle_timeout.count()) / 1000.0;
  app.add_option("--control-max-connections", control_limits.max_connections, "Most control socket connections open at once; one more gets an error line")
      ->check(CLI::Range(1, 100000));
  app.add_option("--control-queue-bytes", control_limits.max_queued_bytes,
                 "Most bytes queued for all watchers together; a watcher past its equal share is disconnected")
      ->check(CLI::Range(4096, 1 << 30));
  app.add_option("--control-idle-timeout", control_idle_s, "Seconds after which a connection that is not watching and sends no complete request is closed (0 = never)")
      ->check(CLI::Range(0.0, 86400.0));
  app.add_flag("--check", check,
               "Start the pile (every plugin created and started), then stop at once: exit 0 when it started, 2 when the site file "
               "is invalid, 3 when start-up failed");
  bool diag_storage_limit = false;
  // Test-only (docs/architecture.md, "A full disk"): the control socket accepts diag_max_pages,
  // which caps the database's size for a real SQLITE_FULL. No group: hidden from --help.
  app.add_flag("--diag-storage-limit", diag_storage_limit, "")->group("");
  app.footer("Exit status: 0 stopped cleanly (SIGTERM, SIGINT, or --check started the pile); 2 the command line, the site file or the "
             "device identity is wrong (systemd does not restart it: RestartPreventExitStatus=2); 3 start-up failed (a plugin, the "
             "database, the control socket); other values are failures systemd restarts.");
  // Usage errors exit 2 like a bad site file, not with CLI11's 104-109: both are the
  // operator's to fix, and the unit's RestartPreventExitStatus=2 stops a restart loop on them.
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  init_logging(log_level.empty() ? "info" : log_level);
  std::vector<std::filesystem::path> dirs(plugin_dirs.begin(), plugin_dirs.end());
  if (dirs.empty()) dirs = default_plugin_dirs();
  PluginRegistry registry(dirs);

  auto outcome = load_site(config, registry);
  const auto& diags = outcome.diagnostics;
  if (!diags.items().empty()) std::fputs(diags.format().c_str(), stderr);
  if (!outcome.site) {
    std::fprintf(stderr, "pilecored: %s: %zu error(s); not starting. Check it with: pilectl config validate %s\n", config.c_str(),
                 diags.error_count(), config.c_str());
    return 2;
  }
  if (log_level.empty()) spdlog::set_level(spdlog::level::from_str(outcome.site->log_level));

  RuntimeOptions options;
  options.state_dir = state_dir.empty() ? default_state_dir() : std::filesystem::path(state_dir);
  options.status_interval = Duration(static_cast<std::int64_t>(status_interval_s * 1000));
  control_limits.idle_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(control_idle_s * 1000));
  options.control_limits = control_limits;
  options.storage_diagnostics = diag_storage_limit;
  // A segfault or abort inside a plugin call is written to the state directory and named at the
  // next start (crash attribution, quarantine: docs/architecture.md).
  options.catch_fatal_signals = true;
  // SIGHUP and `pilectl reload` read the same file again, with the same plugins' checks.
  options.reload_site = [config, &registry] { return load_site(config, registry); };
  if (socket != "none") options.socket_path = socket.empty() ? default_socket_path(options.state_dir) : std::filesystem::path(socket);
  if (clock_speed != 1.0 || !clock_start.empty()) {
    TimePoint start = SystemClock().now();
    if (!clock_start.empty() && !parse_utc(clock_start, start)) {
      std::fprintf(stderr, "pilecored: --clock-start '%s' is not a UTC time like 2026-01-01T00:00:00Z\n", clock_start.c_str());
      return 2;
    }
    options.clock = std::make_shared<ScaledClock>(start, clock_speed);
  }
  if (outcome.site->identity) {
    // The ledger: every finished transaction, signed by the device key. The key and certificate
    // are checked now (a daemon that cannot sign must not start charging); the runtime makes the
    // Ledger over its database and runs its signer.
    const auto& id = *outcome.site->identity;
    const std::string key_location = resolve_identity_location(id.key, options.state_dir);
    const std::string cert_path = resolve_identity_location(id.certificate, options.state_dir);
    try {
      const SigningKey key(key_location);
      if (key.algorithm() != id.algorithm) {
        std::fprintf(stderr, "pilecored: %s is a %s key but identity.algorithm is %s\n", key_location.c_str(), std::string(to_string(key.algorithm())).c_str(),
                     std::string(to_string(id.algorithm)).c_str());
        return 2;
      }
      const VerifyingKey cert{std::filesystem::path(cert_path)};
      if (!cert.verify(as_bytes("pilecore identity check"), key.sign(as_bytes("pilecore identity check")))) {
        std::fprintf(stderr, "pilecored: %s is not the certificate of the key %s\n", cert_path.c_str(), key_location.c_str());
        return 2;
      }
      spdlog::info("device identity: key {}, certificate {} ({}, SHA-256 {}); ledger hash {}", key_location, cert_path, cert.subject(), cert.fingerprint(),
                   to_string(id.hash));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "pilecored: %s\n", e.what());
      return 2;
    }
    options.make_ledger = [key_location, hash = id.hash](sqlite3* db) { return std::make_unique<Ledger>(db, SigningKey(key_location), hash); };
  }
  spdlog::info("pilecored {} starting: site file {}, state {}, plugins from {}", PILECORE_VERSION, config, options.state_dir.string(),
               [&] { std::string s; for (const auto& d : dirs) s += (s.empty() ? "" : ":") + d.string(); return s; }());
  Runtime runtime(std::move(*outcome.site), std::move(options));
  // --check: what `pilectl config validate` promises ("pilecored will start"), proved by starting.
  std::atomic<bool> finished{false};
  std::thread checker;
  if (check) {
    checker = std::thread([&] {
      while (!finished.load()) {
        if (runtime.ready()) {
          runtime.request_stop();
          return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    });
  }
  const int rc = runtime.run();
  finished = true;
  if (checker.joinable()) checker.join();
  if (rc != 0) {
    std::fprintf(stderr, "pilecored: start-up failed: %s\n", runtime.start_error().empty() ? "see the messages above" : runtime.start_error().c_str());
  } else {
    spdlog::info("stopped");
  }
  return rc;
}
