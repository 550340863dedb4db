#include "peer.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/post.hpp>
#include <cerrno>
#include <cstring>

namespace pilecore::core::isolation {

// Deadlines here are real time on purpose: they bound how long a process may keep the core
// waiting, which a simulated clock running faster must not shorten (as for systemd's watchdog).
using steady = std::chrono::steady_clock;

std::vector<std::uint8_t> encode_message(const json& message) {
  std::vector<std::uint8_t> body = json::to_cbor(message);
  if (body.size() > max_message_bytes) throw std::length_error(fmt::format("message of {} bytes is above the {} byte limit", body.size(), max_message_bytes));
  const auto n = static_cast<std::uint32_t>(body.size());
  std::vector<std::uint8_t> out{static_cast<std::uint8_t>(n >> 24), static_cast<std::uint8_t>(n >> 16), static_cast<std::uint8_t>(n >> 8),
                                static_cast<std::uint8_t>(n)};
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

std::optional<json> MessageReader::next(std::string& error) {
  if (failed_) return std::nullopt;
  const std::size_t have = buffer_.size() - consumed_;
  if (have < 4) return std::nullopt;
  const std::uint8_t* p = buffer_.data() + consumed_;
  const std::uint32_t n = (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | std::uint32_t{p[3]};
  if (n > max_message_bytes) {
    failed_ = true;
    error = fmt::format("a message announced {} bytes, above the {} byte limit", n, max_message_bytes);
    return std::nullopt;
  }
  if (have < 4 + std::size_t{n}) return std::nullopt;
  json message = json::from_cbor(p + 4, p + 4 + n, true, false);
  consumed_ += 4 + std::size_t{n};
  if (consumed_ == buffer_.size()) {
    buffer_.clear();
    consumed_ = 0;
  } else if (consumed_ > 65536) {
    buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(consumed_));
    consumed_ = 0;
  }
  if (message.is_discarded()) {
    failed_ = true;
    error = "a message is not valid CBOR";
    return std::nullopt;
  }
  if (!message.is_object() || !message.contains("t") || !message["t"].is_string()) {
    // Framing is intact: this one message is refused, the stream goes on.
    return json::object({{"t", "invalid"}});
  }
  return message;
}

Peer::Peer(boost::asio::any_io_executor executor, int fd, Handlers handlers) : stream_(executor), fd_(fd), handlers_(std::move(handlers)) {
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  stream_.assign(fd);
}

Peer::~Peer() {
  boost::system::error_code ec;
  stream_.close(ec);
}

void Peer::start() { arm(); }

void Peer::arm() {
  if (fd_ < 0 || reading_) return;
  reading_ = true;
  stream_.async_wait(boost::asio::posix::stream_descriptor::wait_read, [weak = weak_from_this()](const boost::system::error_code& ec) {
    auto self = weak.lock();
    if (!self) return;
    self->reading_ = false;
    if (ec || self->fd_ < 0) return;
    self->on_readable();
  });
}

bool Peer::read_available(std::string& why) {
  std::uint8_t buf[65536];
  for (;;) {
    const ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
      reader_.append(buf, static_cast<std::size_t>(n));
      if (static_cast<std::size_t>(n) < sizeof buf) return true;
      continue;
    }
    if (n == 0) {
      why = "the socket closed";
      return false;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
    why = fmt::format("the socket failed: {}", std::strerror(errno));
    return false;
  }
}

void Peer::on_readable() {
  auto self = shared_from_this();
  std::string why;
  const bool ok = read_available(why);
  std::string error;
  try {
    while (auto m = reader_.next(error)) queued_.push_back(std::move(*m));
  } catch (const std::exception& e) {
    error = fmt::format("a message could not be decoded: {}", e.what());
  }
  drain_queue();
  if (!error.empty()) {
    reject(error);
    lost(fmt::format("the stream is unreadable: {}", error));
    return;
  }
  if (!ok) {
    lost(why);
    return;
  }
  arm();
}

void Peer::drain_queue() {
  auto self = shared_from_this();
  while (!queued_.empty() && !in_call_ && fd_ >= 0) {
    json m = std::move(queued_.front());
    queued_.pop_front();
    dispatch(m);
  }
}

void Peer::dispatch(const json& m) {
  const std::string t = m["t"].get<std::string>();
  if (t == "ev") {
    try {
      if (!m.contains("m") || !m["m"].is_string()) throw std::invalid_argument("an event without a name");
      handlers_.event(m);
    } catch (const std::exception& e) {
      reject(fmt::format("event refused: {}", e.what()));
    }
  } else if (t == "req") {
    json answer;
    if (!m.contains("id") || !m["id"].is_number_unsigned()) {
      reject("a request without an id");
      return;
    }
    try {
      answer = handlers_.request(m);
    } catch (const std::exception& e) {
      reject(fmt::format("request refused: {}", e.what()));
      answer = {{"error", e.what()}};
    }
    answer["t"] = "ret";
    answer["id"] = m["id"];
    send(answer);
  } else if (t == "ret") {
    // An answer nobody waits for: the call it answers has timed out.
    reject("an answer to a call that is no longer waiting");
  } else {
    reject(fmt::format("a message of unknown type '{}'", t == "invalid" ? "(none)" : t));
  }
}

bool Peer::send(const json& message, std::chrono::milliseconds deadline) {
  std::vector<std::uint8_t> bytes;
  try {
    bytes = encode_message(message);
  } catch (const std::exception&) {
    return false;
  }
  std::lock_guard lock(write_mutex_);
  if (fd_ < 0) return false;
  const auto end = steady::now() + deadline;
  std::size_t off = 0;
  while (off < bytes.size()) {
    const ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      off += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - steady::now()).count();
      if (left <= 0) return false;
      pollfd p{fd_, POLLOUT, 0};
      ::poll(&p, 1, static_cast<int>(left));
      continue;
    }
    return false;
  }
  return true;
}

std::optional<json> Peer::call(json request, std::chrono::milliseconds deadline, std::string* why) {
  auto self = shared_from_this();
  auto say = [&](std::string w) {
    if (why) *why = std::move(w);
  };
  if (fd_ < 0) {
    say("the process is not running");
    return std::nullopt;
  }
  const std::uint64_t id = ++next_id_;
  request["t"] = "req";
  request["id"] = id;
  const auto end = steady::now() + deadline;
  if (!send(request, deadline)) {
    say("the request could not be sent");
    return std::nullopt;
  }
  const bool outer = in_call_;
  const auto outer_id = awaited_id_;
  in_call_ = true;
  awaited_id_ = id;
  std::optional<json> answer;
  std::string lost_why;
  while (!answer && lost_why.empty()) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - steady::now()).count();
    if (left <= 0) break;
    pollfd p{fd_, POLLIN, 0};
    const int r = ::poll(&p, 1, static_cast<int>(left));
    if (r < 0 && errno != EINTR) {
      lost_why = fmt::format("poll failed: {}", std::strerror(errno));
      break;
    }
    if (r <= 0) continue;
    const bool ok = read_available(lost_why);
    std::string error;
    try {
      while (auto m = reader_.next(error)) {
        const std::string& t = (*m)["t"].get_ref<const std::string&>();
        if (t == "ret" && (*m).value("id", std::uint64_t{0}) == id) {
          answer = std::move(*m);
        } else if (t == "req") {
          dispatch(*m);  // a query from the other side while it works on ours
        } else if (t == "ret") {
          reject("an answer to a call that is no longer waiting");
        } else {
          queued_.push_back(std::move(*m));
        }
      }
    } catch (const std::exception& e) {
      error = fmt::format("a message could not be decoded: {}", e.what());
    }
    if (!error.empty()) {
      reject(error);
      lost_why = fmt::format("the stream is unreadable: {}", error);
    }
    if (ok && lost_why.empty()) continue;
    if (lost_why.empty()) lost_why = "the socket closed";
  }
  in_call_ = outer;
  awaited_id_ = outer_id;
  if (!lost_why.empty()) {
    say(lost_why);
    lost(lost_why);
  } else if (!answer) {
    say(fmt::format("no answer within {} ms", deadline.count()));
  }
  if (!queued_.empty() && !in_call_) boost::asio::post(stream_.get_executor(), [weak = weak_from_this()] {
      if (auto s = weak.lock()) s->drain_queue();
    });
  return answer;
}

void Peer::reject(const std::string& why) {
  ++rejected_;
  last_rejection_ = why;
}

void Peer::lost(const std::string& why) {
  close();
  if (closed_reported_) return;
  closed_reported_ = true;
  // Never inline: the owner reacts to a lost peer by failing the instance, which must not run
  // inside the call that noticed it.
  boost::asio::post(stream_.get_executor(), [weak = weak_from_this(), why] {
    if (auto s = weak.lock(); s && s->handlers_.closed) s->handlers_.closed(why);
  });
}

void Peer::close() {
  std::lock_guard lock(write_mutex_);
  if (fd_ < 0) return;
  boost::system::error_code ec;
  stream_.cancel(ec);
  stream_.close(ec);
  fd_ = -1;
}

}  // namespace pilecore::core::isolation
