#include "control_socket.hpp"
#include "fd_lines.hpp"

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
#include <algorithm>
#include <deque>
#include <malloc.h>
#include <boost/asio/steady_timer.hpp>

namespace pilecore::core {
namespace asio = boost::asio;
using asio::local::stream_protocol;

/// What the sessions share with their socket; held by both, so a session that outlives the
/// ControlSocket (its last handler still queued) touches nothing freed.
struct ControlSocket::State {
  Handler handler;
  ControlLimits limits;
  bool alive = true;
  std::size_t connections = 0;
  std::size_t queued_bytes = 0;  // across all watchers' queues, replies included
  std::uint64_t rejected = 0;
  std::uint64_t dropped = 0;
  std::uint64_t refused = 0;      // connections over max_connections
  std::uint64_t idle_closed = 0;
  std::uint64_t fd_episodes = 0;  // times the accept loop ran out of file descriptors
  std::vector<std::weak_ptr<Session>> sessions;
  std::size_t watchers = 0;
};

class ControlSocket::Session : public std::enable_shared_from_this<ControlSocket::Session> {
 public:
  Session(ControlSocket& owner, stream_protocol::socket socket)
      : strand_(owner.strand_), state_(owner.state_), socket_(std::move(socket)), idle_(owner.strand_), buffer_(max_request_bytes + 1) {
    ++state_->connections;
  }
  ~Session() {
    state_->queued_bytes -= queued_bytes_;
    --state_->connections;
    if (watching_) --state_->watchers;
  }

  void read() {
    reading_ = true;
    arm_idle();
    asio::async_read_until(socket_, buffer_, '\n', asio::bind_executor(strand_, [self = shared_from_this()](boost::system::error_code ec, std::size_t n) {
      self->on_line(ec, n);
    }));
  }

  [[nodiscard]] bool watching() const { return watching_; }

  /// Queues an event line for a watcher; false when it is past its share of the global bound
  /// (then it is closed at once: a client that does not read would never take the notice, and
  /// its queue is what must be freed).
  bool push_event(const std::string& line) {
    if (closing_) return false;
    const std::size_t share = state_->limits.max_queued_bytes / std::max<std::size_t>(1, state_->watchers);
    if (queued_bytes_ + line.size() > share) {
      if (!writing_) {
        static const std::string notice = "{\"event\":\"dropped\",\"error\":\"this watcher fell too far behind and is disconnected\"}\n";
        [[maybe_unused]] const auto n = ::send(socket_.native_handle(), notice.data(), notice.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      }
      close();
      return false;
    }
    send(line, false);
    return true;
  }

  /// Closes the connection and frees its queue now; pending handlers finish with an error.
  void close() {
    closing_ = true;
    if (watching_) {  // no longer one of those the queue bound is shared among
      watching_ = false;
      --state_->watchers;
    }
    idle_.cancel();
    forget_queue();
    boost::system::error_code ec;
    socket_.shutdown(stream_protocol::socket::shutdown_both, ec);
    socket_.close(ec);
  }

 private:
  void arm_idle() {
    if (state_->limits.idle_timeout.count() <= 0) return;
    // Real time, not the pile's clock: this is how long a client process has kept a file
    // descriptor of ours without asking anything, whatever speed a simulated clock runs at.
    idle_.expires_after(state_->limits.idle_timeout);
    idle_.async_wait(asio::bind_executor(strand_, [self = shared_from_this()](boost::system::error_code ec) {
      // reading_: a request in progress (its reply not yet written) is not idleness.
      if (ec || self->closing_ || self->watching_ || !self->reading_) return;
      ++self->state_->idle_closed;
      self->close();
    }));
  }

  void on_line(boost::system::error_code ec, std::size_t n) {
    reading_ = false;
    idle_.cancel();
    if (!state_->alive || closing_) return;
    if (ec == asio::error::not_found) {
      ++state_->rejected;
      reply({{"ok", false}, {"error", fmt::format("request longer than {} bytes", max_request_bytes)}}, true);
      return;
    }
    if (ec) {  // the client went away, or the line was never finished
      close();
      return;
    }
    std::string line(asio::buffers_begin(buffer_.data()), asio::buffers_begin(buffer_.data()) + static_cast<std::ptrdiff_t>(n));
    buffer_.consume(n);
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    nlohmann::json request = nlohmann::json::parse(line, nullptr, false);
    if (request.is_discarded() || !request.is_object() || !request.contains("cmd") || !request["cmd"].is_string()) {
      ++state_->rejected;
      spdlog::warn("control socket: malformed request rejected ({} so far)", state_->rejected);
      reply({{"ok", false}, {"error", "malformed request: send one JSON object per line with a string \"cmd\""}}, false);
      return;
    }
    if (request["cmd"] == "watch") {
      if (!watching_) {
        watching_ = true;
        ++state_->watchers;
        // The kernel's buffer for a client that does not read is memory too, outside our
        // bound: keep it small for watchers (replies to requests are short anyway).
        boost::system::error_code ignored;
        socket_.set_option(asio::socket_base::send_buffer_size(32 * 1024), ignored);
      }
      reply({{"ok", true}, {"watching", true}}, false);
      return;
    }
    try {
      state_->handler(request, [self = shared_from_this()](nlohmann::json response) { self->reply(std::move(response), false); });
    } catch (const std::exception& e) {
      ++state_->rejected;
      reply({{"ok", false}, {"error", fmt::format("bad request: {}", e.what())}}, false);
    }
  }

  /// A reply re-arms the read once written: one request at a time per connection.
  void reply(const nlohmann::json& response, bool close_after) {
    if (closing_) return;
    send(response.dump() + "\n", close_after);
    rearm_after_write_ = !close_after;
  }

  /// Writes queue up: an event may be sent while a reply is being written.
  void send(std::string text, bool close_after) {
    queued_bytes_ += text.size();
    state_->queued_bytes += text.size();
    queue_.push_back(std::move(text));
    if (close_after) closing_after_write_ = true;
    if (!writing_) write_next();
  }

  void forget_queue() {
    state_->queued_bytes -= queued_bytes_;
    queued_bytes_ = 0;
    queue_.clear();
  }

  void write_next() {
    if (closing_) return;
    if (queue_.empty()) {
      writing_ = false;
      if (closing_after_write_) {
        close();
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
    asio::async_write(socket_, asio::buffer(*text), asio::bind_executor(strand_, [self = shared_from_this(), text](boost::system::error_code ec, std::size_t) {
      // The line stays counted until the kernel has it: an unread watcher's in-flight line is
      // part of what it holds.
      if (!self->closing_) {
        self->queued_bytes_ -= text->size();
        self->state_->queued_bytes -= text->size();
      }
      self->writing_ = false;
      if (ec) {
        self->close();
        return;
      }
      self->write_next();
    }));
  }

  Strand& strand_;
  std::shared_ptr<State> state_;
  stream_protocol::socket socket_;
  asio::steady_timer idle_;
  asio::streambuf buffer_;
  std::deque<std::string> queue_;
  std::size_t queued_bytes_ = 0;
  bool writing_ = false;
  bool closing_ = false;
  bool closing_after_write_ = false;
  bool rearm_after_write_ = false;
  bool watching_ = false;
  bool reading_ = false;
};

void ControlSocket::publish(const nlohmann::json& event) {
  if (state_->watchers == 0) return;
  const std::string line = event.dump() + "\n";
  std::size_t dropped = 0;
  std::erase_if(state_->sessions, [&](const std::weak_ptr<Session>& w) {
    auto s = w.lock();
    if (!s) return true;
    if (!s->watching() || s->push_event(line)) return false;
    ++dropped;
    return true;
  });
  if (dropped > 0) {
    state_->dropped += dropped;
    spdlog::warn("control socket: {} watcher(s) past their share of the {} bytes queued for all watchers disconnected ({} so far)", dropped,
                 state_->limits.max_queued_bytes, state_->dropped);
    // Event lines are small allocations; without a trim the heap keeps the pages the dropped
    // queues used, and the daemon's RSS stays at its peak.
    ::malloc_trim(0);
  }
}

nlohmann::json ControlSocket::stats() const {
  return {{"connections", state_->connections},         {"watchers", state_->watchers},       {"queued_bytes", state_->queued_bytes},
          {"refused_connections", state_->refused},     {"idle_closed", state_->idle_closed}, {"fd_exhaustion_episodes", state_->fd_episodes},
          {"max_connections", limits_.max_connections}, {"max_queued_bytes", limits_.max_queued_bytes}};
}

std::uint64_t ControlSocket::rejected() const { return state_->rejected; }
std::uint64_t ControlSocket::dropped_watchers() const { return state_->dropped; }

ControlSocket::ControlSocket(Strand& strand, std::filesystem::path path, Handler handler, ControlLimits limits)
    : strand_(strand),
      path_(std::move(path)),
      limits_(limits),
      state_(std::make_shared<State>()),
      acceptor_(strand),
      accept_retry_(strand) {
  state_->handler = std::move(handler);
  state_->limits = limits_;
  if (limits_.max_connections == 0) throw std::invalid_argument("control socket: max_connections must be at least 1");
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
  state_->alive = false;
  boost::system::error_code ec;
  acceptor_.close(ec);
  accept_retry_.cancel();
  for (auto& w : state_->sessions) {
    if (auto s = w.lock()) s->close();
  }
  state_->sessions.clear();
  std::error_code fec;
  std::filesystem::remove(path_, fec);
}

void ControlSocket::accept() {
  acceptor_.async_accept(asio::bind_executor(strand_, [this, state = state_](boost::system::error_code ec, stream_protocol::socket socket) {
    if (!state->alive || ec == asio::error::operation_aborted) return;
    if (ec) {
      accept_failed(ec);
      return;
    }
    if (accept_backoff_.count() > 0) {
      spdlog::info("control socket: accepting connections again");
      accept_backoff_ = std::chrono::milliseconds(0);
    }
    if (state->connections >= limits_.max_connections) {
      // Said on the socket rather than by leaving the client in the backlog, where it would
      // wait for a reply that never comes.
      ++state->refused;
      const std::string line = fmt::format("{{\"ok\":false,\"error\":\"pilecored has {} control connections open, its limit; try again later\"}}\n",
                                           state->connections);
      [[maybe_unused]] const auto n = ::send(socket.native_handle(), line.data(), line.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      boost::system::error_code ignored;
      socket.close(ignored);
    } else {
      auto session = std::make_shared<Session>(*this, std::move(socket));
      std::erase_if(state->sessions, [](const std::weak_ptr<Session>& w) { return w.expired(); });
      state->sessions.push_back(session);
      session->read();
    }
    accept();
  }));
}

void ControlSocket::accept_failed(const boost::system::error_code& ec) {
  const bool out_of_fds = ec.value() == EMFILE || ec.value() == ENFILE || ec.value() == ENOBUFS || ec.value() == ENOMEM;
  if (!out_of_fds) {
    spdlog::warn("control socket: accept failed: {}", ec.message());
    accept();
    return;
  }
  // The connection stays in the listen backlog and the socket stays readable: accepting again
  // at once would spin. Wait, longer each time, until a descriptor is free (an idle connection
  // timed out, a client left). Said once per episode, not once per attempt.
  if (accept_backoff_.count() == 0) {
    ++state_->fd_episodes;
    spdlog::warn("control socket: cannot accept: {} ({} control connections open); retrying with backoff until descriptors are free",
                 ec.message(), state_->connections);
    accept_backoff_ = std::chrono::milliseconds(20);
  } else {
    accept_backoff_ = std::min(accept_backoff_ * 2, std::chrono::milliseconds(1000));
  }
  accept_retry_.expires_after(accept_backoff_);
  accept_retry_.async_wait(asio::bind_executor(strand_, [this, state = state_](boost::system::error_code e) {
    if (!e && state->alive) accept();
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
  // A daemon that refuses the connection (over its connection limit) says why and closes,
  // possibly before the request is written: the write then fails with a broken pipe, but the
  // reason is still waiting to be read, and is what the user should see.
  const auto write_error = ec;
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
  if (ec) throw std::runtime_error(fmt::format("{}: {}", socket_path.string(), (write_error ? write_error : ec).message()));
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
  // As in control_request: a refused connection may be closed before the request is sent; its
  // reason is still readable below.
  [[maybe_unused]] const auto sent = ::send(fd_, req.data(), req.size(), MSG_NOSIGNAL);
  std::optional<std::string> ack;
  try {
    ack = line(timeout);
  } catch (const std::exception&) {
    ::close(fd_);
    fd_ = -1;
    throw;
  }
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
  std::string out;
  LineRead r = LineRead::closed;
  try {
    r = read_line(fd_, buffer_, timeout, out);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(fmt::format("{}: {}", path_.string(), e.what()));
  }
  if (r == LineRead::closed) throw std::runtime_error(fmt::format("{}: pilecored closed the connection", path_.string()));
  if (r == LineRead::timeout) return std::nullopt;
  return out;
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
