// pilecore plugin SDK: risk rules.
//
// The core runs every configured risk rule before a payment is authorised and again before it is
// captured, and combines their verdicts (any deny denies, else any step_up steps up). A rule
// answers through the callback before the deadline, exactly once; a late answer, an exception or
// a history it could not read is a failure, which the instance's `risk_on_failure` (site file)
// turns into allow, step_up (the default) or deny. A rule never sees who pays in clear: `user` is
// a salted hash of the token, stable on this pile.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "pilecore/clock.hpp"
#include "pilecore/plugin.hpp"

namespace pilecore {
inline namespace v2 {
namespace risk {

enum class Verdict : std::uint8_t { allow, step_up, deny };

constexpr std::string_view to_string(Verdict v) noexcept {
  switch (v) {
    case Verdict::allow: return "allow";
    case Verdict::step_up: return "step_up";
    case Verdict::deny: return "deny";
  }
  return "unknown";
}

/// When the rule runs: before the authorisation (on the estimate) or before the capture (on the
/// final amount).
enum class Phase : std::uint8_t { authorize, capture };

struct Context {
  Phase phase = Phase::authorize;
  std::string_view transaction_id;
  std::uint32_t connector = 0;
  std::string_view method;      ///< payment plugin instance name
  std::string_view channel;     ///< the acquirer chosen, when known
  std::string_view user;        ///< salted hash of the user's token (hex), never the token itself
  std::int64_t amount_fen = 0;  ///< estimated (authorize) or final (capture) amount
  TimePoint time{};
  // Since API 2.1.
  std::string_view pile;        ///< the site's id: which pile this runs on
  /// Midnight of `time`'s day in the site's time zone: a rule counting "per day" counts the day
  /// the site lives in, which a plugin cannot compute (it does not know the zone).
  TimePoint day_start{};
  std::int32_t utc_offset_s = 0;  ///< the site's offset from UTC at `time` (local = time + offset)
};

/// One past session of a user, as History::sessions_after reports it (since API 2.1).
struct PastSession {
  TimePoint started{};
  std::int64_t amount_fen = 0;     ///< what was captured, else what was billed
  std::uint32_t connector = 0;
  std::int32_t utc_offset_s = 0;   ///< the site's offset from UTC when it started
};

/// Read-only view of past transactions, kept by the core. Valid until the rule has answered
/// or the deadline has passed. A history that cannot be read answers std::nullopt: an error, never
/// a zero, so a broken database cannot make a rule fail open.
class History {
 public:
  virtual ~History() = default;
  [[nodiscard]] virtual std::optional<std::uint32_t> sessions_since(std::string_view user, TimePoint since) const noexcept = 0;
  [[nodiscard]] virtual std::optional<std::int64_t> amount_since_fen(std::string_view user, TimePoint since) const noexcept = 0;
  /// Since API 2.1: the user's closed sessions that started after `after`, oldest first, at most
  /// `limit` of them, each handed to `each`. Returns false when the history cannot be read (then
  /// `each` may have seen some of them: discard them). A history that cannot relay it (an
  /// isolated instance's) answers false.
  [[nodiscard]] virtual bool sessions_after(std::string_view user, TimePoint after, std::size_t limit,
                                            const std::function<void(const PastSession&)>& each) const noexcept {
    (void)user, (void)after, (void)limit, (void)each;
    return false;
  }
};

struct Result {
  Verdict verdict = Verdict::allow;
  std::string reason;  ///< required for step_up and deny; kept with the transaction
};

using Callback = std::function<void(Result)>;

/// What knocks at the pile's door (since API 2.2): the requests an admission guard meters
/// before the core does any work for them.
enum class Inbound : std::uint8_t {
  authorization,    ///< a session start: an authorisation attempt (control socket, remote command)
  token,            ///< a token presented at a reader or camera
  control_request,  ///< any other control-socket request (status, receipt, watch, ...)
  remote_command,   ///< a command from the back end
  session_control,  ///< stopping or answering a session in progress: never starved by the others
};
constexpr std::string_view to_string(Inbound i) noexcept {
  switch (i) {
    case Inbound::authorization: return "authorization";
    case Inbound::token: return "token";
    case Inbound::control_request: return "control_request";
    case Inbound::remote_command: return "remote_command";
    case Inbound::session_control: return "session_control";
  }
  return "unknown";
}

class Rule : public Plugin {
 public:
  static constexpr Kind kind = Kind::risk;

  virtual void evaluate(const Context& context, const History& history, TimePoint deadline, Callback done) noexcept = 0;

  /// Since API 2.2: admission of one inbound request at `now`, asked of every running in-process
  /// rule before the core does any work for it; false refuses it (the core answers "rate
  /// limited" and counts it). Called on the strand, for every request: it must be cheap (no
  /// I/O, no lock). The core asks it only of a rule built against API >= 2.2 (older plugins have
  /// no such entry in their vtable), and not of an isolated instance (a round trip to another
  /// process per request would make the guard the flood's target). The default admits all.
  [[nodiscard]] virtual bool admit(Inbound what, TimePoint now) noexcept {
    (void)what, (void)now;
    return true;
  }
};

}  // namespace risk
}  // namespace v2
}  // namespace pilecore
