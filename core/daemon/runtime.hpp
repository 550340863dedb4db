// The daemon's runtime: one io_context, one strand holding the core's state, the plugin
// instances and their host services, start-up and orderly shutdown.
#pragma once

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "pilecore/clock.hpp"
#include "pilecore/connector_status.hpp"
#include "pilecore/plugin.hpp"
#include "commands.hpp"
#include "control_socket.hpp"
#include "instance_info.hpp"
#include "runtime_events.hpp"
#include "router.hpp"
#include "session_engine.hpp"
#include "site_config.hpp"

namespace pilecore::core {

class Instance;
class Database;
class LowDiskMonitor;
class StrandScheduler;
class Ledger;
class StoreWorker;
class Uplink;
class PluginUploads;

struct RuntimeOptions {
  std::filesystem::path state_dir;
  std::shared_ptr<Clock> clock;               // SystemClock when null
  Duration status_interval = std::chrono::minutes(5);  // host-clock time between idle status lines
  bool notify_systemd = true;
  std::filesystem::path socket_path;  // the local control socket; none when empty
  ControlLimits control_limits;       // connections, queued bytes, idle timeout
  /// Makes the ledger over the connection its records are appended on; set by the daemon when
  /// the site has a device identity. The runtime signs what a crash left unsigned before it
  /// starts anything, then moves signing off the commit path (a signer thread whose signatures
  /// the storage thread writes), and at shutdown drains the signer, then the storage thread.
  std::function<std::unique_ptr<Ledger>(sqlite3*)> make_ledger;
  /// Install the fatal-signal handler that writes the in-flight plugin call to the state
  /// directory (crash attribution). pilecored sets it; a test runtime inside gtest does not.
  bool catch_fatal_signals = false;
  /// Test-only: accept the `diag_max_pages` control command, which caps the database's size
  /// (PRAGMA max_page_count on the writing connection) so a test gets a real SQLITE_FULL where it
  /// cannot mount a small file system, and lifts the cap to "free the space". pilecored's hidden
  /// --diag-storage-limit sets it; never in production.
  bool storage_diagnostics = false;
  /// pilecore-plugin-host, for instances with `isolate: true`; empty: the one beside this
  /// program (/proc/self/exe).
  std::filesystem::path plugin_host;
  /// Reads and validates the site file again, for a reload (SIGHUP, `pilectl reload`); pilecored
  /// sets it to load_site over the file it started with. Empty: a reload is refused.
  std::function<LoadOutcome()> reload_site;
};

class Runtime {
 public:
  Runtime(SiteConfig site, RuntimeOptions options);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  /// Creates and starts every instance, tells systemd it is ready and runs the event loop until
  /// request_stop() or SIGTERM/SIGINT. Returns 0 after a clean stop, 3 when start-up failed.
  int run();
  /// Thread-safe; the instances are stopped in reverse order.
  void request_stop();
  /// Thread-safe; true once every instance has started.
  [[nodiscard]] bool ready() const { return ready_.load(); }

  /// Thread-safe snapshots, for pilectl and tests.
  [[nodiscard]] std::vector<InstanceInfo> instances() const;
  [[nodiscard]] std::map<std::uint32_t, ConnectorStatus> connectors() const;
  [[nodiscard]] std::uint64_t samples_received() const { return samples_.load(); }
  [[nodiscard]] std::string start_error() const;

  /// Runs `fn` on the core's strand (thread-safe). Tests and the local control socket use it
  /// to reach plugin objects without racing the event loop.
  void dispatch(std::function<void()> fn);
  /// The plugin object of a running instance, or nullptr. Call on the strand only; cast it to
  /// the kind's interface (e.g. static_cast<payment::Method*>) after checking kind_of().
  [[nodiscard]] Plugin* find_plugin(std::string_view instance) const;
  [[nodiscard]] std::optional<Kind> kind_of(std::string_view instance) const;
  /// The session engine (exists once the instances have started). Use on the strand.
  [[nodiscard]] SessionEngine* engine() { return engine_.get(); }
  /// Re-reads the site file (reload_site). An invalid file changes nothing and its errors are
  /// logged; a valid one applies its tariffs to the sessions that start from now on (those in
  /// progress keep their price) and its log level, and names in the log every other changed
  /// setting, which takes effect at the next restart. On the strand.
  void reload(std::function<void(ReloadReply)> done);
  /// Handles one control request (the socket's handler; tests call it directly on the strand).
  void handle_request(const nlohmann::json& request, std::function<void(nlohmann::json)> reply);
  /// The admission guard: asks the risk rules of API >= 2.2 (risk-rate-limit) whether to let an
  /// inbound request in, and counts the answer for `status`. On the strand.
  [[nodiscard]] bool admit(risk::Inbound what);

  // Used by the host services of the instances (on the strand).
  void on_instance_failed(Instance& instance, const std::string& reason);
  /// An isolated instance's process died or hung: fail the instance, count it in the crash
  /// book; returns whether to start its process again (false once quarantined).
  bool on_isolated_failed(Instance& instance, const std::string& reason);
  void on_isolated_restored(Instance& instance);
  [[nodiscard]] std::filesystem::path plugin_host() const;
  void on_sample(Instance& instance, const Sample& sample);
  void on_alarm(Instance& instance, const Alarm& alarm);
  void on_state(Instance& instance, std::string_view state, std::string_view detail);
  /// Host::upload of an instance (plugin_uploads.hpp): `done` on the strand, never inside.
  void upload(Instance& instance, const UplinkRecord& record, std::function<void(Status)> done);
  [[nodiscard]] const Clock& clock() const { return *clock_; }
  [[nodiscard]] boost::asio::strand<boost::asio::io_context::executor_type>& strand() { return strand_; }
  [[nodiscard]] const std::filesystem::path& state_dir() const { return options_.state_dir; }
  /// The storage thread (exists while run() runs): every write submitted here is off the strand.
  [[nodiscard]] StoreWorker* store() { return store_.get(); }
  /// The ledger, when the site has a device identity (exists while run() runs).
  [[nodiscard]] Ledger* ledger() { return ledger_.get(); }
  /// The uplink sender, when the site has a link (exists once the instances have started). Use
  /// on the strand.
  [[nodiscard]] Uplink* uplink() { return uplink_.get(); }

 private:
  bool create_instances();
  void start_instances();
  void shutdown();
  void finish_shutdown();
  void stop_storage();
  void announce_ready();
  /// The payment router over the channels of the site file and of the running payment methods.
  void make_router();
  void on_command(Command command, Responder reply);
  /// Sends an event (with the clock's time) to the control socket's watchers.
  void publish_event(const Event& event);
  void publish_event(const RuntimeEvent& event);
  void track_alarm(const std::optional<AlarmEvent>& alarm);
  /// The uplink sender over the running link instances (when the database has the uplink on).
  void start_uplink();
  /// An alarm's status record: code, connector, the site and where it is, the text, and the
  /// connectors available now (so the app can offer another one).
  void report_alarm(const AlarmEvent& alarm);
  /// The test-only `diag_max_pages` command (RuntimeOptions::storage_diagnostics).
  void diag_max_pages(std::optional<std::int64_t> headroom_pages, Responder reply);
  void set_connector(std::uint32_t id, ConnectorStatus status, const std::string& why);
  void schedule_status();
  void update_snapshot(const Instance& instance);
  /// Reads what the previous process left in flight when it died, counts it against the
  /// instance and quarantines it at the site's limit. An unusable record file is logged and the
  /// start goes on: refusing to start would turn one bad file into a dead pile.
  void account_previous_crash();
  /// WATCHDOG=1 to systemd from a timer on the strand, at half the interval systemd asks for:
  /// a strand that hangs stops feeding it, and systemd ends and restarts the daemon.
  void feed_watchdog(std::chrono::microseconds interval);

  SiteConfig site_;
  RuntimeOptions options_;
  std::shared_ptr<Clock> clock_;
  boost::asio::io_context io_;
  boost::asio::strand<boost::asio::io_context::executor_type> strand_;
  // Threads: db_ is the writing connection; once running, only the storage thread (store_) uses
  // it, for every write and for the ledger's appends and signatures. The session engine reads
  // through a read-only connection of its own.
  std::unique_ptr<Database> db_;
  std::unique_ptr<StoreWorker> store_;
  std::unique_ptr<Ledger> ledger_;
  std::vector<std::unique_ptr<Instance>> instances_;
  std::map<std::uint32_t, ConnectorStatus> connector_status_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<std::uint64_t> samples_{0};
  int exit_code_ = 0;
  std::unique_ptr<boost::asio::steady_timer> status_timer_;
  std::unique_ptr<boost::asio::steady_timer> watchdog_timer_;
  std::unique_ptr<CrashBook> crash_book_;
  std::unique_ptr<Router> router_;              ///< the payment router, when a method has channels; outlives engine_
  std::vector<RoutingBucket> routing_buckets_;  ///< its counts, read at start
  std::unique_ptr<SessionEngine> engine_;
  std::unique_ptr<ControlSocket> control_;
  std::unique_ptr<StrandScheduler> scheduler_;
  std::unique_ptr<LowDiskMonitor> disk_;  ///< storage.low_disk
  std::unique_ptr<Uplink> uplink_;
  std::unique_ptr<PluginUploads> plugin_uploads_;  ///< Host::upload; exists while the storage thread does
  std::uint64_t uplink_records_ = 0;  ///< keeps status and alarm keys unique within one millisecond
  /// Active alarms (the core's and the plugins'), by code and instance or connector: `status` shows them.
  std::map<std::string, ActiveAlarm> active_alarms_;  ///< by alarm_key
  AdmissionCounts admission_;  ///< the admission guard's counts and the backup-endpoint signal

  mutable std::mutex snapshot_mutex_;
  std::vector<InstanceInfo> snapshot_;
  std::map<std::uint32_t, ConnectorStatus> connector_snapshot_;
  std::string start_error_;
};

}  // namespace pilecore::core
