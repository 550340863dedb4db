#include "wire.hpp"

#include <fmt/format.h>

#include <cmath>

#include "clocks.hpp"
#include "control_socket.hpp"
#include "overloaded.hpp"
#include "pilecore/risk.hpp"
#include "receipt.hpp"
#include "remote_commands.hpp"
#include "uplink.hpp"

namespace pilecore::core {
namespace {

std::int64_t ms_of(TimePoint t) { return t.time_since_epoch().count(); }

nlohmann::json refusal(const std::string& error) { return {{"ok", false}, {"error", error}}; }

}  // namespace

nlohmann::json to_json(const StartOutcome& o) {
  nlohmann::json j = {{"ok", o.ok}};
  if (!o.ok) j["error"] = o.error;
  if (!o.transaction.empty()) j["transaction"] = o.transaction;
  if (o.verdict) j["verdict"] = *o.verdict;
  if (o.connector) j["connector"] = *o.connector;
  if (o.meter_start_wh) j["meter_start_wh"] = *o.meter_start_wh;
  return j;
}

nlohmann::json to_json(const SessionRecord& r) {
  return {{"transaction", r.transaction},
          {"site", r.site},
          {"connector", r.connector},
          {"method", r.method},
          {"user", r.user},
          {"payment_ref", r.payment_ref},
          {"started_ms", ms_of(r.started)},
          {"stop_reason", r.stop_reason},
          {"stopped_ms", ms_of(r.stopped)},
          {"meter_start_wh", r.meter_start_wh},
          {"meter_stop_wh", r.meter_stop_wh},
          {"bill", bill_json(r.bill)},
          {"capture_fen", r.capture_fen},
          {"capture_operation", r.capture_operation},
          {"outcome", r.outcome},
          {"authorized_fen", r.authorized_fen},
          {"uncovered_fen", r.uncovered_fen},
          {"mode", r.mode}};
}

nlohmann::json to_json(const CloseReceipt& r) {
  nlohmann::json j = to_json(r.record);
  j["captured_fen"] = r.captured_fen;
  j["capture_status"] = r.capture_status;
  return j;
}

nlohmann::json to_json(const StopOutcome& o) {
  if (o.ok) {
    nlohmann::json j = {{"ok", true}, {"transaction", o.transaction}};
    if (o.receipt) j["receipt"] = to_json(*o.receipt);
    return j;
  }
  nlohmann::json j = refusal(o.error);
  if (!o.transaction.empty()) j["transaction"] = o.transaction;
  if (o.retry) j["retry"] = true;
  return j;
}

nlohmann::json to_json(const AnswerOutcome& o) {
  if (!o.ok) return refusal(o.error);
  return {{"ok", true}, {"transaction", o.transaction}};
}

nlohmann::json to_json(const RefundOutcome& o) {
  if (!o.operation) return refusal(o.error);
  const MoneyOperation& op = *o.operation;
  return {{"ok", o.ok}, {"operation", op.id}, {"state", std::string(to_string(op.state))}, {"amount_fen", op.amount_fen}, {"error", o.error}};
}

nlohmann::json to_json(const StatusSnapshot& s) {
  nlohmann::json conns = nlohmann::json::array();
  for (const auto& c : s.connectors) {
    nlohmann::json j = {{"id", c.id}, {"status", std::string(pilecore::to_string(c.status))}, {"plugged", c.plugged}};
    if (c.meter_wh) j["meter_wh"] = *c.meter_wh;
    if (c.power_w) j["power_w"] = *c.power_w;
    if (c.soc_pct) j["soc_pct"] = *c.soc_pct;
    if (c.session) {
      const auto& ss = *c.session;
      nlohmann::json sj = {{"transaction", ss.transaction}, {"method", ss.method}, {"user", ss.user}, {"started", format_utc(ss.started)},
                           {"setpoint_w", ss.setpoint_w}, {"stopping", ss.stopping}};
      if (ss.energy_wh) sj["energy_wh"] = *ss.energy_wh;
      if (ss.amount_fen) sj["amount_fen"] = *ss.amount_fen;
      j["session"] = sj;
    }
    if (c.step_up) {
      const auto& su = *c.step_up;
      j["step_up"] = {{"transaction", su.transaction}, {"factors", su.factors}, {"methods", su.methods}, {"reasons", su.reasons},
                      {"deadline", format_utc(su.deadline)}};
    }
    conns.push_back(j);
  }
  return {{"ok", true}, {"site", s.site}, {"time", format_utc(s.time)}, {"connectors", conns}};
}

nlohmann::json to_json(const Receipt& r) {
  if (!r.ok) return refusal(r.error);
  nlohmann::json j = {{"ok", true},
                      {"transaction", r.transaction},
                      {"connector", r.connector},
                      {"method", r.method},
                      {"user", r.user},
                      {"status", r.status},
                      {"outcome", r.outcome},
                      {"stop_reason", r.stop_reason},
                      {"started", format_utc(r.started)},
                      {"meter_start_wh", r.meter_start_wh}};
  if (r.stopped) j["stopped"] = format_utc(*r.stopped);
  if (r.meter_stop_wh) j["meter_stop_wh"] = *r.meter_stop_wh;
  if (r.energy_wh) j["energy_wh"] = *r.energy_wh;
  if (r.total_fen) j["total_fen"] = *r.total_fen;
  if (r.captured_fen) j["captured_fen"] = *r.captured_fen;
  j["authorized_fen"] = r.authorized_fen;
  if (r.uncovered_fen) j["uncovered_fen"] = *r.uncovered_fen;
  j["capture_status"] = r.capture_status;
  if (r.bill_document) j["bill"] = nlohmann::json::parse(*r.bill_document, nullptr, false);
  if (!r.mode.empty()) j["mode"] = r.mode;
  nlohmann::json ops = nlohmann::json::array();
  for (const auto& op : r.operations) {
    nlohmann::json o{{"operation", op.id}, {"kind", std::string(to_string(op.kind))}, {"state", std::string(to_string(op.state))},
                     {"amount_fen", op.amount_fen}, {"method", op.method}, {"reference", op.reference}, {"reason", op.reason}, {"attempts", op.attempts}};
    if (!op.channel.empty()) o["channel"] = op.channel;
    if (!op.routing.empty()) o["routing"] = op.routing;  // the router's decision and its reasons
    ops.push_back(std::move(o));
  }
  j["operations"] = ops;
  return j;
}

nlohmann::json to_json(const Event& e) {
  return std::visit(
      overloaded{
          [](const events::SessionStarted& v) -> nlohmann::json {
            return {{"event", "session_started"}, {"connector", v.connector}, {"transaction", v.transaction}, {"method", v.method}, {"user", v.user},
                    {"authorized_fen", v.authorized_fen}, {"payment_ref", v.payment_ref}, {"meter_start_wh", v.meter_start_wh}};
          },
          [](const events::StepUp& v) -> nlohmann::json {
            nlohmann::json j = {{"event", "step_up"}, {"connector", v.connector}, {"transaction", v.transaction}, {"kind", v.kind},
                                {"prompt", v.prompt}, {"deadline", format_utc(v.deadline)}, {"methods", v.methods}};
            // A risk step-up: every factor the driver may give, and why it was asked.
            if (!v.factors.empty()) {
              j["source"] = "risk";
              j["factors"] = v.factors;
              j["reasons"] = v.reasons;
            }
            return j;
          },
          [](const events::StartRefused& v) -> nlohmann::json {
            return {{"event", "start_refused"}, {"connector", v.connector}, {"transaction", v.transaction}, {"reason", v.reason}};
          },
          [](const events::TariffBoundary& v) -> nlohmann::json {
            return {{"event", "tariff_boundary"}, {"connector", v.connector}, {"transaction", v.transaction}, {"meter_wh", v.meter_wh},
                    {"boundary", format_utc(v.boundary)}, {"period", v.period}, {"plan", v.plan}};
          },
          [](const events::SessionStopping& v) -> nlohmann::json {
            return {{"event", "session_stopping"}, {"connector", v.connector}, {"transaction", v.transaction}, {"reason", v.reason}};
          },
          [](const events::SessionClosed& v) -> nlohmann::json {
            return {{"event", "session_closed"}, {"connector", v.connector}, {"transaction", v.transaction}, {"outcome", v.outcome},
                    {"stop_reason", v.stop_reason}, {"energy_wh", v.energy_wh}, {"total_fen", v.total_fen}, {"captured_fen", v.captured_fen},
                    {"capture_status", v.capture_status}, {"uncovered_fen", v.uncovered_fen}};
          },
          [](const events::Recovering& v) -> nlohmann::json { return {{"event", "recovering"}, {"transactions", v.transactions}}; },
          [](const events::OperationSettled& v) -> nlohmann::json {
            const auto& op = v.operation;
            return {{"event", "operation"}, {"transaction", op.txn}, {"operation", op.id}, {"kind", std::string(to_string(op.kind))},
                    {"state", std::string(to_string(op.state))}, {"amount_fen", op.amount_fen}, {"method", op.method}};
          },
          [](const events::MeterImplausible& v) -> nlohmann::json {
            nlohmann::json j = {{"event", "alarm"}, {"code", "meter.implausible"}, {"severity", "critical"}, {"active", v.active},
                                {"instance", v.instance}, {"connector", v.connector}, {"message", v.message}};
            if (!v.active) {
              if (v.meter_wh) j["meter_wh"] = *v.meter_wh;
              return j;
            }
            j["problem"] = v.problem;
            j["consecutive"] = v.consecutive;
            j["fault_after"] = v.fault_after;
            // JSON has no NaN or infinity: those go as text.
            if (std::isfinite(v.reading_wh)) j["reading_wh"] = v.reading_wh;
            else j["reading_wh"] = fmt::format("{}", v.reading_wh);
            if (v.last_plausible_wh) j["last_plausible_wh"] = *v.last_plausible_wh;
            return j;
          },
          [](const events::CloseFailed& v) -> nlohmann::json {
            return {{"event", "alarm"}, {"code", "storage.close_failed"}, {"severity", "critical"}, {"connector", v.connector}, {"active", v.active},
                    {"message", v.message}};
          },
          [](const events::CheckpointFailed& v) -> nlohmann::json {
            nlohmann::json j = {{"event", "alarm"},     {"code", "storage.checkpoint_failed"}, {"severity", "critical"}, {"active", v.active},
                                {"message", v.message}, {"consecutive", v.consecutive},        {"pause_after", v.pause_after}, {"paused", v.paused}};
            if (v.active) j["error"] = v.error;
            return j;
          },
      },
      e);
}

namespace {
std::string_view severity_name(AlarmSeverity s) {
  switch (s) {
    case AlarmSeverity::critical: return "critical";
    case AlarmSeverity::warning: return "warning";
    case AlarmSeverity::info: return "info";
  }
  return "warning";
}

nlohmann::json to_json(const InstanceInfo& i) {
  nlohmann::json j = {{"name", i.name},   {"plugin", i.plugin}, {"kind", i.kind}, {"state", std::string(to_string(i.state))},
                      {"health", i.health}, {"detail", i.detail}};
  if (i.isolated) j.update({{"isolated", true}, {"pid", i.pid}, {"restarts", i.restarts}, {"sandbox", i.sandbox}});
  return j;
}

nlohmann::json to_json(const DiskStatus& d) {
  nlohmann::json j = {{"path", d.path}, {"threshold_bytes", d.threshold_bytes}, {"low", d.low}};
  if (d.space) {
    j["free_bytes"] = d.space->free_bytes;
    j["total_bytes"] = d.space->total_bytes;
  }
  return j;
}

nlohmann::json to_json(const ActiveAlarm& a) {
  nlohmann::json j = std::visit(overloaded{[](const events::PluginAlarm& v) { return core::to_json(RuntimeEvent(v)); },
                                           [](const LowDiskAlarm& v) { return core::to_json(RuntimeEvent(v)); },
                                           [](const auto& v) { return core::to_json(Event(v)); }},
                                a.alarm);
  j.erase("event");
  j["since"] = format_utc(a.since);
  return j;
}
}  // namespace

nlohmann::json to_json(const RuntimeEvent& e) {
  return std::visit(
      overloaded{
          [](const events::Ready& v) -> nlohmann::json {
            return {{"event", "ready"}, {"site", v.site}, {"connectors", v.connectors}, {"instances", v.instances}, {"speed", v.speed}};
          },
          [](const events::ConnectorChanged& v) -> nlohmann::json {
            return {{"event", "connector"}, {"connector", v.connector}, {"status", std::string(pilecore::to_string(v.status))}, {"why", v.why}};
          },
          [](const events::InstanceFailed& v) -> nlohmann::json { return {{"event", "instance_failed"}, {"instance", v.instance}, {"reason", v.reason}}; },
          [](const events::InstanceRestarted& v) -> nlohmann::json { return {{"event", "instance_restarted"}, {"instance", v.instance}, {"pid", v.pid}}; },
          [](const events::PluginAlarm& v) -> nlohmann::json {
            return {{"event", "alarm"},          {"instance", v.instance}, {"code", v.code}, {"message", v.message}, {"active", v.active},
                    {"severity", severity_name(v.severity)}};
          },
          [](const LowDiskAlarm& v) -> nlohmann::json {
            return {{"event", "alarm"},          {"code", "storage.low_disk"},         {"severity", "warning"}, {"active", v.active},
                    {"path", v.path},            {"free_bytes", v.free_bytes},         {"threshold_bytes", v.threshold_bytes},
                    {"message", v.message}};
          },
          [](const events::LinkEndpoint& v) -> nlohmann::json {
            return {{"event", "link_endpoint"}, {"endpoint", v.prefer_backup ? "backup" : "primary"}, {"why", v.why}};
          },
      },
      e);
}

nlohmann::json to_json(const DaemonStatus& s) {
  auto st = to_json(s.engine);
  nlohmann::json inst = nlohmann::json::array();
  for (const auto& i : s.instances) inst.push_back(to_json(i));
  st["instances"] = inst;
  st["rejected_requests"] = s.control ? s.control->rejected() : 0;
  st["dropped_watchers"] = s.control ? s.control->dropped_watchers() : 0;
  if (s.control) st["control"] = s.control->stats();
  st["ready"] = s.ready;
  if (!s.timezone.empty()) st["timezone"] = s.timezone;
  nlohmann::json alarms = nlohmann::json::array();
  for (const auto& a : s.alarms) alarms.push_back(to_json(a));
  st["alarms"] = alarms;
  if (s.storage) st["storage"] = to_json(*s.storage);
  nlohmann::json admitted = nlohmann::json::object(), refused = nlohmann::json::object();
  for (std::size_t i = 0; i < s.admission.admitted.size(); ++i) {
    const std::string kind(risk::to_string(static_cast<risk::Inbound>(i)));
    admitted[kind] = s.admission.admitted[i];
    refused[kind] = s.admission.refused[i];
  }
  st["admission"] = {{"admitted", admitted}, {"refused", refused}, {"prefer_backup", s.admission.prefer_backup}};
  if (s.uplink) {
    const UplinkStats& u = s.uplink->stats();
    nlohmann::json refusals = nlohmann::json::object();
    for (std::size_t i = 0; i < protocol::kErrorCount; ++i) {
      const auto e = static_cast<protocol::Error>(i);
      if (u.refusals[e] > 0) refusals[std::string(protocol::to_string(e))] = u.refusals[e];
    }
    st["uplink"] = {{"frames_sent", u.frames_sent}, {"send_failures", u.send_failures}, {"records_tried", u.records_tried},
                    {"unroutable", u.unroutable},   {"acks", u.acks},                   {"acknowledged", u.acknowledged},
                    {"commands", u.commands},       {"foreign", u.foreign},             {"enqueue_failures", u.enqueue_failures},
                    {"refusals", refusals}};
    // Signed remote commands: accepted, rejected by reason, the highest sequence taken (the
    // heartbeat carries the same to the back end).
    st["uplink"]["command_outcomes"] = s.uplink->downlink().counters();
  }
  return st;
}

}  // namespace pilecore::core
