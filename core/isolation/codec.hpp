// The SDK's plain structs as CBOR-ready JSON, both ways. Decoding checks every member it reads
// (type and range): a malformed message from a child throws here and is refused by the caller.
#pragma once

#include <nlohmann/json.hpp>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "pilecore/pilecore.hpp"

namespace pilecore::core::isolation {

using json = nlohmann::json;

inline const json& member(const json& j, const char* key) {
  if (!j.is_object() || !j.contains(key)) throw std::invalid_argument(std::string("missing member '") + key + "'");
  return j[key];
}
inline std::string str(const json& j, const char* key) {
  const json& v = member(j, key);
  if (!v.is_string()) throw std::invalid_argument(std::string("member '") + key + "' is not a string");
  return v.get<std::string>();
}
inline std::int64_t integer(const json& j, const char* key) {
  const json& v = member(j, key);
  if (!v.is_number_integer()) throw std::invalid_argument(std::string("member '") + key + "' is not an integer");
  return v.get<std::int64_t>();
}
inline double number(const json& j, const char* key) {
  const json& v = member(j, key);
  if (!v.is_number()) throw std::invalid_argument(std::string("member '") + key + "' is not a number");
  return v.get<double>();
}
inline bool boolean(const json& j, const char* key) {
  const json& v = member(j, key);
  if (!v.is_boolean()) throw std::invalid_argument(std::string("member '") + key + "' is not a boolean");
  return v.get<bool>();
}
template <class E>
E enumerated(const json& j, const char* key, E last) {
  const std::int64_t v = integer(j, key);
  if (v < 0 || v > static_cast<std::int64_t>(last)) throw std::invalid_argument(std::string("member '") + key + "' is out of range");
  return static_cast<E>(v);
}

inline json time_json(TimePoint t) { return t.time_since_epoch().count(); }
inline TimePoint time_of(const json& j, const char* key) { return TimePoint(Duration(integer(j, key))); }

inline json to_json(const Status& s) { return {{"code", static_cast<int>(s.code())}, {"message", s.message()}}; }
inline Status status_of(const json& j) {
  return Status(enumerated(j, "code", StatusCode::failed), str(j, "message"));
}

// --- identification ---
inline json to_json(const identification::Token& t) {
  json ev = json::array();
  for (const auto& e : t.evidence) ev.push_back({e.key, e.value});
  json j = {{"type", t.type}, {"id", t.id}, {"evidence", ev}};
  if (t.connector) j["connector"] = *t.connector;
  return j;
}
inline identification::Token token_of(const json& j) {
  identification::Token t;
  t.type = str(j, "type");
  t.id = str(j, "id");
  if (j.contains("connector")) {
    const auto c = integer(j, "connector");
    if (c < 1 || c > 255) throw std::invalid_argument("token connector out of range");
    t.connector = static_cast<std::uint32_t>(c);
  }
  for (const auto& e : member(j, "evidence")) {
    if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_string()) throw std::invalid_argument("malformed evidence");
    t.evidence.push_back({e[0].get<std::string>(), e[1].get<std::string>()});
  }
  return t;
}

// --- uplink records (Host::upload) ---
inline json to_json(const UplinkRecord& r) {
  json body = json::array();
  for (const auto& f : r.body) {
    json v;
    if (const auto* i = std::get_if<std::int64_t>(&f.value)) v = *i;
    else if (const auto* t = std::get_if<std::string>(&f.value)) v = *t;
    else if (const auto* b = std::get_if<std::vector<std::uint8_t>>(&f.value)) v = json::binary(*b);
    else v = std::get<bool>(f.value);
    body.push_back({f.name, std::move(v)});
  }
  return {{"key", r.key}, {"kind", r.kind}, {"body", std::move(body)}};
}
inline UplinkRecord uplink_record_of(const json& j) {
  UplinkRecord r;
  r.key = str(j, "key");
  r.kind = str(j, "kind");
  const json& body = member(j, "body");
  if (!body.is_array()) throw std::invalid_argument("an uplink record's body is not a list");
  for (const auto& f : body) {
    if (!f.is_array() || f.size() != 2 || !f[0].is_string()) throw std::invalid_argument("a malformed uplink record field");
    const json& v = f[1];
    UplinkValue value;
    if (v.is_boolean()) value = v.get<bool>();
    else if (v.is_number_integer() && !(v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))) value = v.get<std::int64_t>();
    else if (v.is_string()) value = v.get<std::string>();
    else if (v.is_binary()) value = std::vector<std::uint8_t>(v.get_binary().begin(), v.get_binary().end());
    else throw std::invalid_argument("an uplink record field is not an integer, text, bytes or a truth value");
    r.body.push_back({f[0].get<std::string>(), std::move(value)});
  }
  return r;
}

// --- payment ---
inline json to_json(const payment::Challenge& c) {
  return {{"kind", static_cast<int>(c.kind)}, {"prompt", c.prompt}, {"deadline", time_json(c.deadline)}, {"methods", c.methods}};
}
inline payment::Challenge challenge_of(const json& j) {
  payment::Challenge c;
  c.kind = enumerated(j, "kind", payment::ChallengeKind::app_confirmation);
  c.prompt = str(j, "prompt");
  c.deadline = time_of(j, "deadline");
  for (const auto& m : member(j, "methods")) c.methods.push_back(m.get<std::string>());
  return c;
}
inline json to_json(const payment::AuthorizationResult& r) {
  return {{"decision", static_cast<int>(r.decision)}, {"authorized_fen", r.authorized_fen}, {"reference", r.reference}, {"reason", r.reason},
          {"challenge", to_json(r.challenge)}};
}
inline payment::AuthorizationResult authorization_of(const json& j) {
  payment::AuthorizationResult r;
  r.decision = enumerated(j, "decision", payment::Decision::unavailable);
  r.authorized_fen = integer(j, "authorized_fen");
  r.reference = str(j, "reference");
  r.reason = str(j, "reason");
  r.challenge = challenge_of(member(j, "challenge"));
  return r;
}
inline json to_json(const payment::OperationResult& r) {
  return {{"state", static_cast<int>(r.state)}, {"amount_fen", r.amount_fen}, {"reference", r.reference}, {"reason", r.reason}};
}
inline payment::OperationResult operation_of(const json& j) {
  payment::OperationResult r;
  r.state = enumerated(j, "state", payment::OperationState::failed);
  r.amount_fen = integer(j, "amount_fen");
  r.reference = str(j, "reference");
  r.reason = str(j, "reason");
  return r;
}
inline json to_json(const payment::Capabilities& c) {
  json ch = json::array();
  for (const auto& x : c.channels) ch.push_back({x.name, x.fee_ppm});
  return {{"offline", c.offline}, {"prepayment", c.needs_prepayment}, {"incremental", c.incremental_authorization}, {"token_types", c.token_types},
          {"channels", ch}, {"verifies_pin", c.verifies_pin}};
}
inline payment::Capabilities capabilities_of(const json& j) {
  payment::Capabilities c;
  c.offline = boolean(j, "offline");
  c.needs_prepayment = boolean(j, "prepayment");
  c.incremental_authorization = boolean(j, "incremental");
  c.verifies_pin = boolean(j, "verifies_pin");
  for (const auto& t : member(j, "token_types")) c.token_types.push_back(t.get<std::string>());
  for (const auto& x : member(j, "channels")) c.channels.push_back({x.at(0).get<std::string>(), x.at(1).get<std::uint32_t>()});
  return c;
}

// --- power ---
inline json to_json(const power::VehicleStatus& v) {
  json j = {{"power_w", v.power_w}};
  if (v.soc_percent) j["soc"] = *v.soc_percent;
  if (v.battery_temperature_c) j["battery_c"] = *v.battery_temperature_c;
  return j;
}
inline power::VehicleStatus vehicle_of(const json& j) {
  power::VehicleStatus v;
  v.power_w = integer(j, "power_w");
  if (j.contains("soc")) v.soc_percent = number(j, "soc");
  if (j.contains("battery_c")) v.battery_temperature_c = number(j, "battery_c");
  return v;
}

// --- sensor ---
inline json to_json(std::span<const sensor::ChannelInfo> chans) {
  json a = json::array();
  for (const auto& c : chans) a.push_back({{"name", c.name}, {"unit", c.unit}, {"rate_hz", c.rate_hz}});
  return a;
}
inline std::vector<sensor::ChannelInfo> channels_of(const json& a) {
  std::vector<sensor::ChannelInfo> out;
  if (!a.is_array()) throw std::invalid_argument("channels is not a list");
  for (const auto& c : a) out.push_back({str(c, "name"), str(c, "unit"), number(c, "rate_hz")});
  return out;
}

// --- link ---
inline json to_json(const link::Limits& l) {
  return {{"mtu", l.mtu}, {"duty_ppm", l.duty_cycle_ppm}, {"dwell_ms", l.max_dwell.count()}};
}
inline link::Limits limits_of(const json& j) {
  link::Limits l;
  const auto mtu = integer(j, "mtu");
  const auto duty = integer(j, "duty_ppm");
  if (mtu < 0 || duty < 0 || duty > 1000000) throw std::invalid_argument("link limits out of range");
  l.mtu = static_cast<std::size_t>(mtu);
  l.duty_cycle_ppm = static_cast<std::uint32_t>(duty);
  l.max_dwell = Duration(integer(j, "dwell_ms"));
  return l;
}

}  // namespace pilecore::core::isolation
