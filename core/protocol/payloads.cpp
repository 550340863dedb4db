#include "payloads.hpp"

#include <fmt/format.h>

#include <stdexcept>

namespace pilecore::core::protocol {

namespace {

using json = nlohmann::json;

// nlohmann's DOM builder behind a depth guard: returning false from a SAX event stops the parse
// at once, so the recursion never goes deeper than the limit.
class BoundedDom {
 public:
  explicit BoundedDom(json& root) : dom_(root, false) {}
  bool null() { return dom_.null(); }
  bool boolean(bool v) { return dom_.boolean(v); }
  bool number_integer(json::number_integer_t v) { return dom_.number_integer(v); }
  bool number_unsigned(json::number_unsigned_t v) { return dom_.number_unsigned(v); }
  bool number_float(json::number_float_t v, const json::string_t& s) { return dom_.number_float(v, s); }
  bool string(json::string_t& v) { return dom_.string(v); }
  bool binary(json::binary_t& v) { return dom_.binary(v); }
  bool start_object(std::size_t n) { return enter() && dom_.start_object(n); }
  bool key(json::string_t& v) { return dom_.key(v); }
  bool end_object() {
    --depth_;
    return dom_.end_object();
  }
  bool start_array(std::size_t n) { return enter() && dom_.start_array(n); }
  bool end_array() {
    --depth_;
    return dom_.end_array();
  }
  template <class Exception>
  bool parse_error(std::size_t position, const std::string& token, const Exception& e) {
    (void)token;
    message_ = fmt::format("byte {}: {}", position, e.what());
    return false;
  }
  [[nodiscard]] const std::string& message() const { return message_; }

 private:
  bool enter() {
    if (++depth_ > kMaxCborDepth) {
      message_ = fmt::format("nested deeper than {} levels", kMaxCborDepth);
      return false;
    }
    return true;
  }
  nlohmann::detail::json_sax_dom_parser<json> dom_;
  int depth_ = 0;
  std::string message_;
};

Failure bad(std::string message) { return {Error::bad_payload, std::move(message)}; }

// A text member of a CBOR map, bounded; empty when absent or not text.
std::optional<std::string> text_member(const json& map, const char* name, std::size_t max) {
  auto it = map.find(name);
  if (it == map.end() || !it->is_string()) return std::nullopt;
  const auto& s = it->get_ref<const std::string&>();
  if (s.empty() || s.size() > max) return std::nullopt;
  return s;
}

}  // namespace

Result<json> parse_cbor(ByteView bytes) {
  if (bytes.empty()) return bad("an empty payload is not CBOR");
  json out;
  BoundedDom sax(out);
  bool ok = false;
  try {
    ok = json::sax_parse(bytes.begin(), bytes.end(), &sax, json::input_format_t::cbor, true);
  } catch (const json::exception& e) {
    // The DOM builder throws for sizes it cannot hold even with exceptions off.
    return bad(fmt::format("CBOR: {}", e.what()));
  }
  if (!ok) return bad(fmt::format("CBOR: {}", sax.message().empty() ? "malformed" : sax.message()));
  return out;
}

Bytes encode_record(const Record& record) {
  return json::to_cbor(json{{"k", record.key}, {"c", record.kind}, {"b", record.body}});
}

Result<Record> decode_record(ByteView payload) {
  auto parsed = parse_cbor(payload);
  if (auto* f = std::get_if<Failure>(&parsed)) return *f;
  auto& j = std::get<json>(parsed);
  if (!j.is_object()) return bad("a record is a CBOR map");
  auto key = text_member(j, "k", kMaxKeySize);
  if (!key) return bad(fmt::format("a record's \"k\" is text of 1 to {} bytes", kMaxKeySize));
  auto kind = text_member(j, "c", kMaxKindSize);
  if (!kind) return bad(fmt::format("a record's \"c\" is text of 1 to {} bytes", kMaxKindSize));
  auto body = j.find("b");
  if (body == j.end()) return bad("a record has a body \"b\"");
  return Record{std::move(*key), std::move(*kind), std::move(*body)};
}

Bytes encode_ack(const Ack& ack) {
  json j{{"a", ack.keys}};
  if (ack.ledger_seq) j["l"] = *ack.ledger_seq;
  return json::to_cbor(j);
}

Result<Ack> decode_ack(ByteView payload) {
  auto parsed = parse_cbor(payload);
  if (auto* f = std::get_if<Failure>(&parsed)) return *f;
  auto& j = std::get<json>(parsed);
  if (!j.is_object()) return bad("an ack is a CBOR map");
  Ack ack;
  auto keys = j.find("a");
  if (keys == j.end() || !keys->is_array()) return bad("an ack has an array of keys \"a\"");
  for (const auto& k : *keys) {
    if (!k.is_string() || k.get_ref<const std::string&>().empty() || k.get_ref<const std::string&>().size() > kMaxKeySize) {
      return bad(fmt::format("an ack's keys are text of 1 to {} bytes", kMaxKeySize));
    }
    ack.keys.push_back(k.get<std::string>());
  }
  if (auto l = j.find("l"); l != j.end()) {
    if (!l->is_number_unsigned()) return bad("an ack's \"l\" is an unsigned integer");
    ack.ledger_seq = l->get<std::uint64_t>();
  }
  return ack;
}

Bytes encode_compact_telemetry(const std::vector<ConnectorTelemetry>& records) {
  if (records.empty()) throw std::invalid_argument("compact telemetry needs at least one connector record");
  Bytes out;
  out.reserve(records.size() * kCompactRecordSize);
  for (const auto& r : records) {
    if (r.connector > 15) throw std::invalid_argument(fmt::format("compact telemetry numbers connectors 0 to 15, not {}", r.connector));
    if (r.power_w > kCompactMaxPowerW) throw std::invalid_argument(fmt::format("compact telemetry carries at most {} W, not {}", kCompactMaxPowerW, r.power_w));
    out.push_back(static_cast<std::uint8_t>((r.connector << 4) | static_cast<std::uint8_t>(r.status)));
    put_u16(out, static_cast<std::uint16_t>(r.power_w / kCompactPowerStepW));
    put_u32(out, r.meter_wh);
  }
  return out;
}

Result<std::vector<ConnectorTelemetry>> decode_compact_telemetry(ByteView payload) {
  if (payload.empty() || payload.size() % kCompactRecordSize != 0) {
    return bad(fmt::format("compact telemetry is a whole number of {}-byte records; got {} bytes", kCompactRecordSize, payload.size()));
  }
  std::vector<ConnectorTelemetry> out;
  for (std::size_t at = 0; at < payload.size(); at += kCompactRecordSize) {
    const std::uint8_t* p = payload.data() + at;
    const std::uint8_t status = p[0] & 0x0F;
    if (status > static_cast<std::uint8_t>(ConnectorStatus::faulted)) return bad(fmt::format("record {}: unknown connector status {}", at / kCompactRecordSize, status));
    out.push_back({static_cast<std::uint8_t>(p[0] >> 4), static_cast<ConnectorStatus>(status), get_u16(p + 1) * kCompactPowerStepW, get_u32(p + 3)});
  }
  return out;
}

}  // namespace pilecore::core::protocol
