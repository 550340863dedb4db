#include "control_socket.hpp"

#include <fmt/format.h>
#include <grp.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>
#include <cstdlib>
#include <cstring>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <deque>

namespace pilecore::core {
namespace asio = boost::asio;
using asio::local::stream_protocol;

class ControlSocket::Session : public std::enable_shared_from_this<ControlSocket::Session> {
 public:
  Session(ControlSocket& owner, stream_protocol::socket socket)
      : owner_(owner), socket_(std::move(socket)), buffer_(max_request_bytes + 1) {}

  void read() {
    asio::async_read_until(socket_, buffer_, '\n', asio::bind_executor(owner_.strand_, [self = shared_from_this()](boost::system::error_code ec, std::size_t n) {
      self->on_line(ec, n);
    }));
  }

  /// Queues an event line for a watcher; false when it fell too far behind (then it is closed).
  bool push_event(const std::string& line) {
    if (closing_) return false;
    if (queue_.size() >= max_queued_events) {
      queue_.clear();
      send("{\"event\":\"dropped\",\"error\":\"this watcher fell too far behind and is disconnected\"}\n", true);
      return false;
    }
    send(line, false);
    return true;
  }

 private:
  void on_line(boost::system::error_code ec, std::size_t n) {
    if (!*alive_) return;
    if (ec == asio::error::not_found) {
      ++owner_.rejected_;
      reply({{"ok", false}, {"error", fmt::format("request longer than {} bytes", max_request_bytes)}}, true);
      return;
    }
    if (ec) return;  // the client went away
    std::string line(asio::buffers_begin(buffer_.data()), asio::buffers_begin(buffer_.data()) + static_cast<std::ptrdiff_t>(n));
    buffer_.consume(n);
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    nlohmann::json request = nlohmann::json::parse(line, nullptr, false);
    if (request.is_discarded() || !request.is_object() || !request.contains("cmd") || !request["cmd"].is_string()) {
      ++owner_.rejected_;
      spdlog::warn("control socket: malformed request rejected ({} so far)", owner_.rejected_.load());
      reply({{"ok", false}, {"error", "malformed request: send one JSON object per line with a string \"cmd\""}}, false);
      return;
    }
    if (request["cmd"] == "watch") {
      if (!watching_) {
        watching_ = true;
        owner_.watchers_.push_back(weak_from_this());
      }
      reply({{"ok", true}, {"watching", true}}, false);
      return;
    }
    try {
      owner_.handler_(request, [self = shared_from_this()](nlohmann::json response) { self->reply(std::move(response), false); });
    } catch (const std::exception& e) {
      ++owner_.rejected_;
      reply({{"ok", false}, {"error", fmt::format("bad request: {}", e.what())}}, false);
    }
  }

  /// A reply re-arms the read once written: one request at a time per connection.
  void reply(const nlohmann::json& response, bool close_after) {
    send(response.dump() + "\n", close_after);
    rearm_after_write_ = !close_after;
  }

  /// Writes queue up: an event may be sent while a reply is being written.
  void send(std::string text, bool close_after) {
    queue_.push_back(std::move(text));
    if (close_after) closing_ = true;
    if (!writing_) write_next();
  }

  void write_next() {
    if (queue_.empty()) {
      writing_ = false;
      if (closing_) {
        boost::system::error_code ec;
        socket_.shutdown(stream_protocol::socket::shutdown_both, ec);
        socket_.close(ec);
        return;
      }
      if (rearm_after_write_) {
        rearm_after_write_ = false;
        read();
      }
      return;
    }
    writing_ = true;
    auto text = std::make_shared<std::string>(std::move(queue_.front()));
    queue_.pop_front();
    asio::async_write(socket_, asio::buffer(*text), asio::bind_executor(owner_.strand_, [self = shared_from_this(), text](boost::system::error_code ec, std::size_t) {
      if (ec) {
        self->writing_ = false;
        self->queue_.clear();
        self->closing_ = true;
        return;
      }
      self->write_next();
    }));
  }

  ControlSocket& owner_;
  stream_protocol::socket socket_;
  asio::streambuf buffer_;
  std::shared_ptr<bool> alive_ = owner_.alive_;
  std::deque<std::string> queue_;
  bool writing_ = false;
  bool closing_ = false;
  bool rearm_after_write_ = false;
  bool watching_ = false;
};

void ControlSocket::publish(const nlohmann::json& event) {
  if (watchers_.empty()) return;
  const std::string line = event.dump() + "\n";
  std::erase_if(watchers_, [&](const std::weak_ptr<Session>& w) {
    auto s = w.lock();
    if (!s) return true;
    if (s->push_event(line)) return false;
    ++dropped_;
    spdlog::warn("control socket: a watcher fell {} events behind and was disconnected", max_queued_events);
    return true;
  });
}

ControlSocket::ControlSocket(Strand& strand, std::filesystem::path path, Handler handler)
    : strand_(strand), path_(std::move(path)), handler_(std::move(handler)), acceptor_(strand), alive_(std::make_shared<bool>(true)) {
  std::error_code ec;
  if (path_.has_parent_path()) std::filesystem::create_directories(path_.parent_path(), ec);
  std::filesystem::remove(path_, ec);  // a stale socket from a crash
  const mode_t old = ::umask(0117);   // srw-rw----
  try {
    acceptor_.open(stream_protocol());
    acceptor_.bind(stream_protocol::endpoint(path_.string()));
    acceptor_.listen();
  } catch (const std::exception& e) {
    ::umask(old);
    throw std::runtime_error(fmt::format("control socket {}: {}", path_.string(), e.what()));
  }
  ::umask(old);
  if (const group* g = ::getgrnam("pilecore"); g != nullptr) {
    if (::chown(path_.c_str(), static_cast<uid_t>(-1), g->gr_gid) != 0) spdlog::warn("control socket: cannot give it to group pilecore");
  }
  accept();
}

ControlSocket::~ControlSocket() {
  *alive_ = false;
  boost::system::error_code ec;
  acceptor_.close(ec);
  std::error_code fec;
  std::filesystem::remove(path_, fec);
}

void ControlSocket::accept() {
  acceptor_.async_accept(asio::bind_executor(strand_, [this, alive = alive_](boost::system::error_code ec, stream_protocol::socket socket) {
    if (!*alive) return;
    if (!ec) std::make_shared<Session>(*this, std::move(socket))->read();
    if (ec != asio::error::operation_aborted) accept();
  }));
}

nlohmann::json control_request(const std::filesystem::path& socket_path, const nlohmann::json& request, std::chrono::milliseconds timeout) {
  asio::io_context io;
  stream_protocol::socket socket(io);
  boost::system::error_code ec;
  socket.connect(stream_protocol::endpoint(socket_path.string()), ec);
  if (ec) {
    throw std::runtime_error(fmt::format("cannot reach pilecored at {}: {} (is it running? give --socket or --state-dir)", socket_path.string(), ec.message()));
  }
  const std::string line = request.dump() + "\n";
  asio::write(socket, asio::buffer(line), ec);
  if (ec) throw std::runtime_error(fmt::format("{}: {}", socket_path.string(), ec.message()));
  asio::streambuf buf;
  std::string reply;
  bool done = false;
  asio::async_read_until(socket, buf, '\n', [&](boost::system::error_code e, std::size_t n) {
    done = true;
    ec = e;
    if (!e) reply.assign(asio::buffers_begin(buf.data()), asio::buffers_begin(buf.data()) + static_cast<std::ptrdiff_t>(n));
  });
  io.run_for(timeout);
  if (!done) throw std::runtime_error(fmt::format("{}: no reply within {} ms", socket_path.string(), timeout.count()));
  if (ec) throw std::runtime_error(fmt::format("{}: {}", socket_path.string(), ec.message()));
  auto j = nlohmann::json::parse(reply, nullptr, false);
  if (j.is_discarded()) throw std::runtime_error(fmt::format("{}: unreadable reply", socket_path.string()));
  return j;
}

ControlWatch::ControlWatch(const std::filesystem::path& socket, std::chrono::milliseconds timeout) : path_(socket) {
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw std::runtime_error(fmt::format("socket: {}", std::strerror(errno)));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string p = socket.string();
  if (p.size() >= sizeof(addr.sun_path)) {
    ::close(fd_);
    throw std::runtime_error(fmt::format("{}: the socket path is too long", p));
  }
  std::memcpy(addr.sun_path, p.c_str(), p.size() + 1);
  if (::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    const int e = errno;
    ::close(fd_);
    throw std::runtime_error(fmt::format("cannot reach pilecored at {}: {} (is it running? give --socket or --state-dir)", p, std::strerror(e)));
  }
  const std::string req = "{\"cmd\":\"watch\"}\n";
  if (::send(fd_, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
    const int e = errno;
    ::close(fd_);
    throw std::runtime_error(fmt::format("{}: {}", p, std::strerror(e)));
  }
  const auto ack = line(timeout);
  const auto j = ack ? nlohmann::json::parse(*ack, nullptr, false) : nlohmann::json();
  if (!j.is_object() || !j.value("watching", false)) {
    ::close(fd_);
    throw std::runtime_error(fmt::format("{}: the daemon did not accept the watch request{}", p, ack ? ": " + *ack : ""));
  }
}

ControlWatch::~ControlWatch() {
  if (fd_ >= 0) ::close(fd_);
}

std::optional<std::string> ControlWatch::line(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (const auto nl = buffer_.find('\n'); nl != std::string::npos) {
      std::string out = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return out;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() < 0) return std::nullopt;
    pollfd pfd{fd_, POLLIN, 0};
    const int r = ::poll(&pfd, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw std::runtime_error(fmt::format("{}: poll: {}", path_.string(), std::strerror(errno)));
    if (r == 0) return std::nullopt;
    char chunk[8192];
    const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw std::runtime_error(fmt::format("{}: pilecored closed the connection", path_.string()));
    buffer_.append(chunk, static_cast<std::size_t>(n));
  }
}

std::optional<nlohmann::json> ControlWatch::next(std::chrono::milliseconds timeout) {
  auto l = line(timeout);
  if (!l) return std::nullopt;
  auto j = nlohmann::json::parse(*l, nullptr, false);
  if (j.is_discarded()) throw std::runtime_error(fmt::format("{}: unreadable event line", path_.string()));
  return j;
}

std::filesystem::path default_socket_path(const std::filesystem::path& state_dir) {
  if (const char* env = std::getenv("RUNTIME_DIRECTORY"); env != nullptr && *env != '\0') {
    std::string s(env);
    return std::filesystem::path(s.substr(0, s.find(':'))) / "pilecored.sock";
  }
  return state_dir / "pilecored.sock";
}

}  // namespace pilecore::core
