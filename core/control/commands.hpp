// The control socket's requests as types, and the one place that reads them from JSON and writes
// the replies: the daemon sees a Command and answers through a Responder, never JSON.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <variant>

#include <nlohmann/json.hpp>

#include "charging_session.hpp"
#include "pilecore/payment.hpp"
#include "pilecore/risk.hpp"
#include "runtime_events.hpp"
#include "session_results.hpp"

namespace pilecore::core {

namespace commands {
struct Status {};
struct SessionStart {
  std::uint32_t connector = 0;
  std::string method, token;
  std::string mode;  ///< full, amount:<fen>, energy:<Wh>, time:<minutes>; the engine checks it (clear errors)
};
/// Only Local or Remote: the other reasons are what the pile itself observed.
struct SessionStop {
  std::uint32_t connector = 0;
  StopReason reason = StopReason::local;
};
/// The driver's answer to a step-up: a PIN typed at the pile, or a confirmation.
struct SessionAnswer {
  std::uint32_t connector = 0;
  payment::StepUpAnswer answer;
};
struct Refund {
  std::string transaction;
  std::int64_t amount_fen = 0;
  std::string reason;
};
struct ReceiptOf {
  std::string transaction;
};
/// Re-reads the site file (as SIGHUP does): the reply says what applied and what waits for a restart.
struct Reload {};
/// pilecored --diag-storage-limit only: the database may grow `headroom_pages` past its size
/// now (0: full now); none: SQLite's own limit again.
struct DiagMaxPages {
  std::optional<std::int64_t> headroom_pages;
};
}  // namespace commands

using Command = std::variant<commands::Status, commands::SessionStart, commands::SessionStop, commands::SessionAnswer, commands::Refund,
                             commands::ReceiptOf, commands::DiagMaxPages, commands::Reload>;

struct ErrorReply {
  std::string message;
};
/// A reload's outcome: refused with the file's errors (the running configuration stays), or
/// what it applied and which changed settings take effect only at the next restart.
struct ReloadReply {
  bool ok = false;
  std::vector<std::string> errors;
  std::vector<std::string> applied;
  std::vector<std::string> restart_needed;
};
struct DiagPagesReply {
  std::int64_t page_count = 0, max_page_count = 0;
};

/// Sends the one reply a request gets; copyable, so an asynchronous answer can carry it.
class Responder {
 public:
  explicit Responder(std::function<void(nlohmann::json)> send) : send_(std::move(send)) {}
  void operator()(const StartOutcome& o) const;
  void operator()(const StopOutcome& o) const;
  void operator()(const AnswerOutcome& o) const;
  void operator()(const RefundOutcome& o) const;
  void operator()(const Receipt& r) const;
  void operator()(const DaemonStatus& s) const;
  void operator()(const DiagPagesReply& r) const;
  void operator()(const ReloadReply& r) const;
  void operator()(const ErrorReply& e) const;

 private:
  std::function<void(nlohmann::json)> send_;
};

struct CommandOptions {
  bool storage_diagnostics = false;  ///< accept diag_max_pages
  /// The admission guard, asked before a request is read into a Command (empty: admit all).
  /// Starting a session is an authorisation attempt, stopping or answering one is session
  /// control, anything else a control request. A refusal gets a cheap "rate limited" reply.
  std::function<bool(risk::Inbound)> admit;
};

using CommandHandler = std::function<void(Command command, Responder reply)>;

/// Reads one request line's JSON into a Command and hands it to `handler`; a request that is not
/// one gets its error reply here ("bad request: ..." or the unknown command and the list).
void serve_request(const nlohmann::json& request, std::function<void(nlohmann::json)> reply, const CommandOptions& options,
                   const CommandHandler& handler);

/// Sends an event, stamped with `time`, to every watcher of `socket`. Call on the strand.
void publish(ControlSocket& socket, const Event& e, TimePoint time);
void publish(ControlSocket& socket, const RuntimeEvent& e, TimePoint time);

}  // namespace pilecore::core
