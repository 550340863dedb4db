// pilecore plugin SDK: status values returned across the plugin boundary.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

namespace pilecore {
inline namespace v2 {

enum class StatusCode : std::uint8_t {
  ok = 0,
  invalid_argument,  ///< the request was malformed; retrying it will not help
  unavailable,       ///< the device or service is not reachable now; a retry may help
  timeout,           ///< the deadline passed
  declined,          ///< a counterpart said no (payment declined, command refused)
  busy,              ///< a conflicting operation is in progress
  not_supported,     ///< this plugin does not implement the operation
  failed,            ///< anything else; the message says what
};

/// Result of an operation: a code and, when not ok, a message a person can act on.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status success() { return {}; }
  static Status error(StatusCode code, std::string message) { return {code, std::move(message)}; }

  [[nodiscard]] bool ok() const noexcept { return code_ == StatusCode::ok; }
  explicit operator bool() const noexcept { return ok(); }
  [[nodiscard]] StatusCode code() const noexcept { return code_; }
  [[nodiscard]] const std::string& message() const noexcept { return message_; }

 private:
  StatusCode code_ = StatusCode::ok;
  std::string message_;
};

constexpr std::string_view to_string(StatusCode c) noexcept {
  switch (c) {
    case StatusCode::ok: return "ok";
    case StatusCode::invalid_argument: return "invalid_argument";
    case StatusCode::unavailable: return "unavailable";
    case StatusCode::timeout: return "timeout";
    case StatusCode::declined: return "declined";
    case StatusCode::busy: return "busy";
    case StatusCode::not_supported: return "not_supported";
    case StatusCode::failed: return "failed";
  }
  return "unknown";
}

}  // namespace v2
}  // namespace pilecore
