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
// A watcher stays subscribed until it disconnects. Events are queued per watcher; one that
// falls more than max_queued_events behind is told so and disconnected (counted as dropped),
// so a stalled client never holds the daemon's memory.
#pragma once

#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/io_context.hpp>
#include <atomic>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <vector>
#include <nlohmann/json.hpp>

namespace pilecore::core {

class ControlSocket {
 public:
  using Strand = boost::asio::strand<boost::asio::io_context::executor_type>;
  using Handler = std::function<void(const nlohmann::json& request, std::function<void(nlohmann::json)> reply)>;
  static constexpr std::size_t max_request_bytes = 64 * 1024;
  static constexpr std::size_t max_queued_events = 4096;

  /// Binds `path` (replacing a stale socket file) and starts accepting; throws on failure.
  ControlSocket(Strand& strand, std::filesystem::path path, Handler handler);
  ~ControlSocket();

  /// Sends an event to every watcher. Call on the strand.
  void publish(const nlohmann::json& event);

  [[nodiscard]] std::uint64_t rejected() const { return rejected_.load(); }
  [[nodiscard]] std::uint64_t dropped_watchers() const { return dropped_.load(); }
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

 private:
  class Session;
  void accept();

  Strand& strand_;
  std::filesystem::path path_;
  Handler handler_;
  boost::asio::local::stream_protocol::acceptor acceptor_;
  std::atomic<std::uint64_t> rejected_{0};
  std::atomic<std::uint64_t> dropped_{0};
  std::vector<std::weak_ptr<Session>> watchers_;
  std::shared_ptr<bool> alive_;
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
