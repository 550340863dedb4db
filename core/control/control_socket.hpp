// The local control socket: a Unix stream socket (mode 0660, group pilecore when it exists)
// speaking one JSON object per line each way. pilectl is its client. A malformed or oversized
// request gets an error reply and is counted; it never stops the daemon.
//
//   {"cmd":"status"}
//   {"cmd":"session_start","connector":1,"method":"sim","token":"card:0451"}
//   {"cmd":"session_stop","connector":1}
//   {"cmd":"receipt","transaction":"SITE-1-000042"}
//   {"cmd":"watch"}   -> {"ok":true,"watching":true}, then one {"event":...} line per event
//
// A watcher stays subscribed until it disconnects. What the daemon holds for its clients is
// bounded (ControlLimits): a cap on connections (one over it gets an error line and is closed),
// a global bound on the bytes queued for all watchers together, of which each watcher may hold
// an equal share (one past its share is told so, disconnected and counted as dropped), and an
// idle timeout for connections that are not watching and send no complete request. When the
// process runs out of file descriptors the accept loop backs off instead of spinning, and says
// so once per episode.

#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>

namespace pilecore::core {

/// The control socket's limits; pilecored's --control-* options set them.
struct ControlLimits {
  std::size_t max_connections = 256;
  std::size_t max_queued_bytes = 8 * 1024 * 1024;
  std::chrono::milliseconds idle_timeout = std::chrono::seconds(30);
};

class ControlSocket {
 public:
  using Strand = boost::asio::strand<boost::asio::io_context::executor_type>;
  using Handler = std::function<void(const nlohmann::json& request, std::function<void(nlohmann::json)> reply)>;
  static constexpr std::size_t max_request_bytes = 64 * 1024;

  /// Binds `path` (replacing a stale socket file) and starts accepting; throws on failure.
  ControlSocket(Strand& strand, std::filesystem::path path, Handler handler, ControlLimits limits = {});
  ~ControlSocket();

  /// Sends an event to every watcher. Call on the strand.
  void publish(const nlohmann::json& event);

  /// Counters for `status`; call on the strand.
  [[nodiscard]] nlohmann::json stats() const;
  [[nodiscard]] std::uint64_t rejected() const;
  [[nodiscard]] std::uint64_t dropped_watchers() const;
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  [[nodiscard]] const ControlLimits& limits() const { return limits_; }

 private:
  class Session;
  struct State;
  void accept();
  void accept_failed(const boost::system::error_code& ec);

  Strand& strand_;
  std::filesystem::path path_;
  ControlLimits limits_;
  std::shared_ptr<State> state_;
  boost::asio::local::stream_protocol::acceptor acceptor_;
  boost::asio::steady_timer accept_retry_;
  std::chrono::milliseconds accept_backoff_{0};
};

/// pilectl's side: sends one request and waits for the reply line. Throws std::runtime_error
/// with a message naming the socket when the daemon cannot be reached.
nlohmann::json control_request(const std::filesystem::path& socket, const nlohmann::json& request,
                               std::chrono::milliseconds timeout = std::chrono::seconds(30));

/// pilectl's side of {"cmd":"watch"}: connects, subscribes, then hands out one event at a time.
class ControlWatch {
 public:
  /// Connects and subscribes; throws std::runtime_error naming the socket on failure.
  explicit ControlWatch(const std::filesystem::path& socket, std::chrono::milliseconds timeout = std::chrono::seconds(10));
  ~ControlWatch();
  ControlWatch(const ControlWatch&) = delete;
  ControlWatch& operator=(const ControlWatch&) = delete;

  /// The next event, or nullopt when none came within `timeout`. Throws std::runtime_error when
  /// the daemon closed the connection (it stopped, or dropped this watcher).
  std::optional<nlohmann::json> next(std::chrono::milliseconds timeout);

 private:
  std::optional<std::string> line(std::chrono::milliseconds timeout);
  std::filesystem::path path_;
  int fd_ = -1;
  std::string buffer_;
};

/// $RUNTIME_DIRECTORY/pilecored.sock under systemd, <state dir>/pilecored.sock otherwise.
std::filesystem::path default_socket_path(const std::filesystem::path& state_dir);

}  // namespace pilecore::core
