// One end of the socket pair between pilecored and an isolated plugin's host process.
//
// A message is a 4-byte big-endian length and a CBOR map (nlohmann::json::to_cbor). Three shapes:
//   {"t":"req","id":N,"m":...}  a call that the other side answers with {"t":"ret","id":N,...}
//   {"t":"ret","id":N,...}      the answer
//   {"t":"ev","m":...}          one-way: an event, a log line, an asynchronous callback's answer
// Both ends use this class: the core on its strand, the host process on its own event loop.
// A synchronous call blocks its caller until the answer or the deadline: the core does that only
// for the SDK's synchronous methods (start, close_contactor, compute, ...), each with a deadline,
// so a hung child costs a bounded wait and is then killed. Requests that arrive while waiting
// are answered at once (they are queries: a risk rule's history, an APDU exchange's presence);
// events are queued and delivered after the call returns, in order.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace pilecore::core::isolation {

using json = nlohmann::json;

/// Largest message either side accepts; a longer length prefix is a malformed message.
inline constexpr std::uint32_t max_message_bytes = 1U << 22;

/// Length prefix and CBOR body of one message.
std::vector<std::uint8_t> encode_message(const json& message);

/// Splits a byte stream into messages. A length above the limit, or a body that is not a CBOR
/// map with a string "t", is an error: the stream cannot be trusted any more.
class MessageReader {
 public:
  void append(const std::uint8_t* data, std::size_t size) { buffer_.insert(buffer_.end(), data, data + size); }
  /// The next complete message; nullopt when more bytes are needed or on error (then `error`
  /// says why and the reader stays failed).
  std::optional<json> next(std::string& error);

 private:
  std::vector<std::uint8_t> buffer_;
  std::size_t consumed_ = 0;
  bool failed_ = false;
};

class Peer : public std::enable_shared_from_this<Peer> {
 public:
  struct Handlers {
    /// A request: returns the answer's members (the core adds "t" and "id"). Throwing answers
    /// {"error": what} and counts the message as rejected.
    std::function<json(const json& request)> request;
    /// An event. Throwing counts it as rejected.
    std::function<void(const json& event)> event;
    /// The socket closed or the stream became unreadable; called once.
    std::function<void(const std::string& why)> closed;
  };

  /// Takes ownership of `fd` (made non-blocking).
  Peer(boost::asio::any_io_executor executor, int fd, Handlers handlers);
  ~Peer();
  Peer(const Peer&) = delete;
  Peer& operator=(const Peer&) = delete;

  /// Starts reading asynchronously on the executor.
  void start();
  /// Sends one message; any thread. False when the socket is closed or the write could not
  /// finish within `deadline` (the other side stopped reading): then the peer is closed.
  bool send(const json& message, std::chrono::milliseconds deadline = std::chrono::seconds(2));
  /// A synchronous request (call on the executor). nullopt when no answer came within
  /// `deadline` or the socket closed; `why` says which.
  std::optional<json> call(json request, std::chrono::milliseconds deadline, std::string* why = nullptr);
  /// Closes the socket; `closed` is not called for a close asked for here.
  void close();

  [[nodiscard]] bool open() const { return fd_ >= 0; }
  /// Messages refused as malformed or unexpected.
  [[nodiscard]] std::uint64_t rejected() const { return rejected_; }
  /// The last rejection, for the log.
  [[nodiscard]] const std::string& last_rejection() const { return last_rejection_; }

 private:
  void arm();
  void on_readable();
  /// Reads what is there; false on EOF or error (then `why` is set).
  bool read_available(std::string& why);
  void dispatch(const json& message);
  void drain_queue();
  void lost(const std::string& why);
  void reject(const std::string& why);

  boost::asio::posix::stream_descriptor stream_;
  int fd_ = -1;
  Handlers handlers_;
  MessageReader reader_;
  std::mutex write_mutex_;
  std::uint64_t next_id_ = 0;
  std::deque<json> queued_;
  bool in_call_ = false;
  bool reading_ = false;
  bool closed_reported_ = false;
  std::uint64_t rejected_ = 0;
  std::string last_rejection_;
  std::optional<json> awaited_;
  std::uint64_t awaited_id_ = 0;
};

}  // namespace pilecore::core::isolation
