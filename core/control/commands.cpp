#include "commands.hpp"

#include <fmt/format.h>

#include <stdexcept>

#include "clocks.hpp"
#include "control_socket.hpp"
#include "wire.hpp"

namespace pilecore::core {
namespace {

std::uint32_t connector_of(const nlohmann::json& req) {
  if (!req.contains("connector") || !req["connector"].is_number_integer() || req["connector"].get<std::int64_t>() < 1 ||
      req["connector"].get<std::int64_t>() > 255) {
    throw std::invalid_argument("\"connector\" must be a positive integer");
  }
  return req["connector"].get<std::uint32_t>();
}

std::string text(const nlohmann::json& req, const char* key) {
  if (!req.contains(key)) return {};
  if (!req[key].is_string()) throw std::invalid_argument(fmt::format("\"{}\" must be a string", key));
  return req[key].get<std::string>();
}

/// A request that is well formed but not allowed: its message is the whole reply.
struct Refused {
  std::string message;
};

std::variant<Command, Refused> parse(const nlohmann::json& req, const CommandOptions& options) {
  const std::string cmd = req.value("cmd", "");
  if (cmd == "status") return commands::Status{};
  if (cmd == "session_start") return commands::SessionStart{connector_of(req), text(req, "method"), text(req, "token"), text(req, "mode")};
  if (cmd == "session_stop") {
    const std::string reason = text(req, "reason");
    const auto r = reason.empty() ? std::optional<StopReason>(StopReason::local) : stop_reason_from(reason);
    if (!r) throw std::invalid_argument(fmt::format("unknown stop reason '{}'; a client may give Local or Remote", reason));
    // Fault, Shutdown, EVFull, EVDisconnected and FundsExhausted are what the pile itself
    // observed; a client claiming one would put a false reason on the receipt and the ledger.
    if (*r != StopReason::local && *r != StopReason::remote) {
      return Refused{fmt::format("stop reason '{}' is the pile's own, not a client's; a client may give Local or Remote", reason)};
    }
    return commands::SessionStop{connector_of(req), *r};
  }
  if (cmd == "session_answer") {
    commands::SessionAnswer a{connector_of(req), {}};
    if (const std::string pin = text(req, "pin"); !pin.empty()) {
      a.answer.kind = payment::ChallengeKind::pin;
      a.answer.value = pin;
    } else {
      a.answer.kind = payment::ChallengeKind::app_confirmation;
      a.answer.confirmed = req.value("confirmed", false);
    }
    return a;
  }
  if (cmd == "refund") {
    if (!req.contains("amount_fen") || !req["amount_fen"].is_number_integer()) throw std::invalid_argument("\"amount_fen\" must be an integer");
    return commands::Refund{text(req, "transaction"), req["amount_fen"].get<std::int64_t>(), text(req, "reason")};
  }
  if (cmd == "receipt") return commands::ReceiptOf{text(req, "transaction")};
  if (cmd == "reload") return commands::Reload{};
  if (cmd == "diag_max_pages" && options.storage_diagnostics) {
    commands::DiagMaxPages d;
    if (req.contains("headroom_pages") && !req["headroom_pages"].is_null()) {
      if (!req["headroom_pages"].is_number_integer() || req["headroom_pages"].get<std::int64_t>() < 0) {
        throw std::invalid_argument("\"headroom_pages\" must be a non-negative integer or null");
      }
      d.headroom_pages = req["headroom_pages"].get<std::int64_t>();
    }
    return d;
  }
  return Refused{fmt::format("unknown command '{}'; commands: status, session_start, session_stop, session_answer, refund, receipt, reload, watch", cmd)};
}

nlohmann::json error_json(const std::string& message) { return {{"ok", false}, {"error", message}}; }

}  // namespace

void Responder::operator()(const StartOutcome& o) const { send_(to_json(o)); }
void Responder::operator()(const StopOutcome& o) const { send_(to_json(o)); }
void Responder::operator()(const AnswerOutcome& o) const { send_(to_json(o)); }
void Responder::operator()(const RefundOutcome& o) const { send_(to_json(o)); }
void Responder::operator()(const Receipt& r) const { send_(to_json(r)); }
void Responder::operator()(const DaemonStatus& s) const { send_(to_json(s)); }
void Responder::operator()(const DiagPagesReply& r) const { send_({{"ok", true}, {"page_count", r.page_count}, {"max_page_count", r.max_page_count}}); }
void Responder::operator()(const ErrorReply& e) const { send_(error_json(e.message)); }
void Responder::operator()(const ReloadReply& r) const {
  nlohmann::json j{{"ok", r.ok}, {"applied", r.applied}, {"restart_needed", r.restart_needed}};
  if (!r.ok) {
    j["errors"] = r.errors;
    j["error"] = r.errors.empty() ? std::string("reload failed") : r.errors.front();
  }
  send_(j);
}

void serve_request(const nlohmann::json& request, std::function<void(nlohmann::json)> reply, const CommandOptions& options,
                   const CommandHandler& handler) {
  if (options.admit) {
    const nlohmann::json* cmd = nullptr;
    if (request.is_object()) {
      if (const auto it = request.find("cmd"); it != request.end()) cmd = &*it;
    }
    const std::string_view name = cmd && cmd->is_string() ? std::string_view(cmd->get_ref<const std::string&>()) : std::string_view();
    const risk::Inbound kind = name == "session_start"                            ? risk::Inbound::authorization
                               : name == "session_stop" || name == "session_answer" ? risk::Inbound::session_control
                                                                                    : risk::Inbound::control_request;
    if (!options.admit(kind)) {
      nlohmann::json r = error_json("rate limited: the pile is refusing requests above its configured rate; try again in a moment");
      r["rate_limited"] = true;
      reply(std::move(r));
      return;
    }
  }
  std::variant<Command, Refused> parsed;
  try {
    parsed = parse(request, options);
  } catch (const std::exception& e) {
    reply(error_json(fmt::format("bad request: {}", e.what())));
    return;
  }
  if (const auto* refused = std::get_if<Refused>(&parsed)) {
    reply(error_json(refused->message));
    return;
  }
  try {
    handler(std::get<Command>(std::move(parsed)), Responder(reply));
  } catch (const std::exception& e) {
    reply(error_json(fmt::format("bad request: {}", e.what())));
  }
}

void publish(ControlSocket& socket, const Event& e, TimePoint time) {
  auto j = to_json(e);
  j["time"] = format_utc(time);
  socket.publish(j);
}

void publish(ControlSocket& socket, const RuntimeEvent& e, TimePoint time) {
  auto j = to_json(e);
  j["time"] = format_utc(time);
  socket.publish(j);
}

}  // namespace pilecore::core
