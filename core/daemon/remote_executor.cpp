#include "remote_executor.hpp"

#include <fmt/format.h>

#include "runtime.hpp"
#include "wire.hpp"

namespace pilecore::core {

namespace {

using Reply = std::function<void(CommandResult)>;
using nlohmann::json;

/// An argument that names a connector, or why it does not.
std::variant<std::uint32_t, std::string> connector_arg(const json& args, const char* name = "connector") {
  const auto it = args.find(name);
  if (it == args.end()) return fmt::format("\"{}\" is required", name);
  if (!it->is_number_unsigned() || it->get<std::uint64_t>() == 0 || it->get<std::uint64_t>() > 0xFFFFFFFFu) {
    return fmt::format("\"{}\" is a connector id (an unsigned integer above 0)", name);
  }
  return static_cast<std::uint32_t>(it->get<std::uint64_t>());
}

/// What a stopped session reports to the back end: the figures, never the user's token.
json stop_summary(const StopOutcome& o) {
  json j{{"ok", o.ok}, {"transaction", o.transaction}};
  if (!o.ok) j["error"] = o.error;
  if (o.receipt) {
    j["connector"] = o.receipt->record.connector;
    j["energy_wh"] = o.receipt->record.meter_stop_wh - o.receipt->record.meter_start_wh;
    j["total_fen"] = o.receipt->record.bill.total_fen;
    j["captured_fen"] = o.receipt->captured_fen;
  }
  return j;
}

void stop_session(Runtime& rt, SessionEngine& engine, const json& args, const Reply& reply) {
  std::uint32_t connector = 0;
  if (const auto t = args.find("transaction"); t != args.end()) {
    if (!t->is_string()) return reply(CommandResult::failed("\"transaction\" is text"));
    for (const auto& c : engine.status().connectors) {
      if (c.session && c.session->transaction == t->get<std::string>()) connector = c.id;
    }
    if (connector == 0) return reply(CommandResult::failed(fmt::format("no running session is transaction '{}'", t->get<std::string>())));
  } else {
    const auto c = connector_arg(args);
    if (const auto* e = std::get_if<std::string>(&c)) return reply(CommandResult::failed(*e + " (or \"transaction\")"));
    connector = std::get<std::uint32_t>(c);
  }
  (void)rt;
  engine.stop(connector, StopReason::remote, [reply](const StopOutcome& o) {
    if (!o.ok) return reply(CommandResult::failed(o.error));
    reply(CommandResult::done(fmt::format("{} stopped", o.transaction), stop_summary(o)));
  });
}

}  // namespace

RemoteCommands::Executor make_remote_executor(Runtime& rt, Duration retry_window) {
  return [&rt, retry_window](const protocol::Command& cmd, Reply reply) {
    SessionEngine* engine = rt.engine();
    if (engine == nullptr) return reply(CommandResult::failed("the pile is starting: no session engine yet"));
    const json& a = cmd.args;
    if (cmd.name == "emergency_stop") {
      engine->emergency_stop([reply](std::vector<StopOutcome> outcomes) {
        json stopped = json::array();
        for (const auto& o : outcomes) stopped.push_back(stop_summary(o));
        reply(CommandResult::done(fmt::format("every contactor opened; {} session(s) stopped", outcomes.size()), {{"stopped", std::move(stopped)}}));
      });
      return;
    }
    if (cmd.name == "stop_session") return stop_session(rt, *engine, a, reply);
    if (cmd.name == "retry_start") {
      const auto c = connector_arg(a);
      if (const auto* e = std::get_if<std::string>(&c)) return reply(CommandResult::failed(*e));
      engine->retry_last_start(std::get<std::uint32_t>(c), retry_window, [reply](const StartOutcome& o) {
        if (!o.ok) return reply(CommandResult::failed(o.error));
        reply(CommandResult::done(fmt::format("{} started", o.transaction), to_json(o)));
      });
      return;
    }
    if (cmd.name == "set_availability") {
      const auto c = connector_arg(a);
      if (const auto* e = std::get_if<std::string>(&c)) return reply(CommandResult::failed(*e));
      const auto av = a.find("available");
      if (av == a.end() || !av->is_boolean()) return reply(CommandResult::failed("\"available\" is true or false"));
      const auto r = engine->set_available(std::get<std::uint32_t>(c), av->get<bool>());
      if (!r.ok) return reply(CommandResult::failed(r.error));
      return reply(CommandResult::done(r.scheduled ? "scheduled: the connector becomes Unavailable when its session ends" : "accepted",
                                       {{"status", r.scheduled ? "scheduled" : "accepted"}}));
    }
    if (cmd.name == "set_power_limit") {
      std::optional<std::uint32_t> connector;
      if (a.contains("connector")) {
        const auto c = connector_arg(a);
        if (const auto* e = std::get_if<std::string>(&c)) return reply(CommandResult::failed(*e));
        connector = std::get<std::uint32_t>(c);
      }
      const auto w = a.find("watts");
      if (w == a.end() || !(w->is_null() || w->is_number_unsigned())) return reply(CommandResult::failed("\"watts\" is an unsigned integer, or null to lift the limit"));
      std::optional<std::int64_t> watts;
      if (!w->is_null()) {
        if (w->get<std::uint64_t>() > 100'000'000) return reply(CommandResult::failed("\"watts\" is at most 100000000"));
        watts = static_cast<std::int64_t>(w->get<std::uint64_t>());
      }
      if (Status st = engine->set_power_limit(connector, watts); !st.ok()) return reply(CommandResult::failed(st.message()));
      return reply(CommandResult::done(fmt::format("{} power limit {}", connector ? fmt::format("connector {}", *connector) : std::string("site"),
                                                   watts ? fmt::format("{} W", *watts) : std::string("lifted"))));
    }
    if (cmd.name == "status") {
      rt.handle_request({{"cmd", "status"}}, [reply](json body) { reply(CommandResult::done("status", {{"status", std::move(body)}})); });
      return;
    }
    if (cmd.name == "answer_step_up") {
      const auto c = connector_arg(a);
      if (const auto* e = std::get_if<std::string>(&c)) return reply(CommandResult::failed(*e));
      const auto confirmed = a.find("confirmed");
      if (confirmed == a.end() || !confirmed->is_boolean()) return reply(CommandResult::failed("\"confirmed\" is true or false"));
      engine->answer_step_up(std::get<std::uint32_t>(c), payment::StepUpAnswer{.kind = payment::ChallengeKind::app_confirmation, .value = {}, .confirmed = confirmed->get<bool>()},
                             [reply](const AnswerOutcome& o) {
                               if (!o.ok) return reply(CommandResult::failed(o.error));
                               reply(CommandResult::done(fmt::format("the answer went to {}", o.transaction), {{"transaction", o.transaction}}));
                             });
      return;
    }
    reply(CommandResult::failed(fmt::format("unknown command '{}'; this pile knows emergency_stop, stop_session, retry_start, set_availability, "
                                            "set_power_limit, status, answer_step_up and firmware",
                                            cmd.name)));
  };
}

}  // namespace pilecore::core
