// `isolate: true`: a plugin instance in its own sandboxed process (pilecore-plugin-host).
//
// The core keeps one proxy object per isolated instance; it implements the instance's SDK
// interface (sensor, power, payment, risk, indicator, strategy, link) and forwards each call
// over the socket pair. The engine cannot tell the proxy from the plugin. What the child does
// to itself (a segfault, a hang, a runaway allocation) ends the child only: the proxy answers
// calls in flight as the SDK's deadline rules prescribe (unavailable, pending, step_up), tells
// the owner, which takes the connector out of service and counts the crash, and the child is
// started again after a backoff that doubles from 1 s.
#pragma once

#include <sys/types.h>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "exchange_bridge.hpp"
#include "peer.hpp"
#include "pilecore/pilecore.hpp"
#include "schema.hpp"

namespace pilecore::core::isolation {

struct Options {
  std::filesystem::path host_program;  ///< pilecore-plugin-host
  std::filesystem::path plugin_file;   ///< the .so, already checked by the core's loader
  std::string instance;
  std::string plugin;
  Kind kind = Kind::sensor;
  std::optional<std::uint32_t> connector;
  json config;                        ///< the validated configuration, defaults filled in
  std::filesystem::path state_dir;    ///< the only place the child may write
  std::vector<std::string> paths;     ///< further paths it may read and write (a device, a socket)
  std::int64_t memory_mb = 256;       ///< address-space cap; 0: none
  std::chrono::milliseconds call_deadline{2000};
  std::chrono::milliseconds start_deadline{10000};
  std::chrono::milliseconds heartbeat_interval{500};
  std::chrono::milliseconds heartbeat_deadline{3000};
  std::chrono::milliseconds backoff_first{1000};
  std::chrono::milliseconds backoff_cap{60000};
};

/// The instance's configuration as JSON, walking the plugin's declared keys; the child rebuilds
/// the same ConfigValues from it.
json config_to_json(const std::vector<Field>& fields, const ConfigValues& values);

class Isolated {
 public:
  struct Hooks {
    Host* host = nullptr;  ///< the core's Host for the instance: log, clock, publish, raise, report_state, present
    /// The child died or hung; returns whether to start it again (false: quarantined).
    std::function<bool(const std::string& reason)> failed;
    /// A restarted child is running again.
    std::function<void()> restored;
  };

  Isolated(boost::asio::any_io_executor strand, Options options, Hooks hooks);
  ~Isolated();
  Isolated(const Isolated&) = delete;
  Isolated& operator=(const Isolated&) = delete;

  /// Starts the child and creates the plugin instance in it: empty, or why not.
  std::string create();
  /// The proxy the core calls; valid for this object's life, across restarts of the child.
  [[nodiscard]] Plugin* plugin() { return proxy_.get(); }

  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] unsigned restarts() const { return restarts_; }
  [[nodiscard]] bool up() const { return peer_ && peer_->open(); }
  /// Messages from the child refused as malformed, over all its lives.
  [[nodiscard]] std::uint64_t rejected() const { return rejected_ + (peer_ ? peer_->rejected() : 0); }
  [[nodiscard]] std::string sandbox() const { return sandbox_; }

  // For the proxies.
  std::optional<json> call(const std::string& method, json args, std::string* why = nullptr, std::optional<std::chrono::milliseconds> deadline = {});
  /// An asynchronous call: `done` gets the answer, or nullptr when the child is gone first.
  void call_async(const std::string& method, json args, std::function<void(const json*)> done);
  void notify(const std::string& method, json args);
  [[nodiscard]] const json& info() const { return info_; }
  [[nodiscard]] ExchangeBridge& exchanges() { return exchanges_; }
  [[nodiscard]] const Options& options() const { return options_; }
  Status start_child();
  /// start() failed: end the process, report the failure and start again after the backoff.
  void fail_and_restart(const std::string& why);
  void stop_child();
  void set_risk_history(std::uint64_t cb, const risk::History* history, TimePoint deadline);
  std::function<void(power::Event, std::string_view)> power_sink;
  std::function<void(std::span<const std::uint8_t>)> link_receiver;

 private:
  std::string spawn();
  void on_event(const json& e);
  json on_request(const json& r);
  void on_lost(const std::string& why);
  /// Ends the child (after `grace` for it to exit by itself) and reaps it; says how it ended.
  std::string kill_child(std::chrono::milliseconds grace = std::chrono::milliseconds(0));
  void fail_pending();
  void heartbeat();
  void schedule_restart();
  void restart();

  boost::asio::any_io_executor strand_;
  Options options_;
  Hooks hooks_;
  std::unique_ptr<Plugin> proxy_;
  std::shared_ptr<Peer> peer_;
  ExchangeBridge exchanges_;
  pid_t pid_ = -1;
  json info_;
  std::string sandbox_;
  std::map<std::uint64_t, std::function<void(const json*)>> pending_;
  struct HistoryRef {
    const risk::History* history;
    TimePoint deadline;
  };
  std::map<std::uint64_t, HistoryRef> histories_;
  std::uint64_t next_cb_ = 0;
  std::uint64_t generation_ = 0;
  unsigned restarts_ = 0;
  std::uint64_t rejected_ = 0;
  bool stopping_ = false;
  bool started_ = false;
  std::uint64_t ping_sent_ = 0;
  std::uint64_t pong_seen_ = 0;
  std::chrono::steady_clock::time_point ping_time_{};
  std::chrono::steady_clock::time_point up_since_{};
  std::chrono::milliseconds backoff_;
  std::unique_ptr<boost::asio::steady_timer> heartbeat_timer_;
  std::unique_ptr<boost::asio::steady_timer> restart_timer_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace pilecore::core::isolation
