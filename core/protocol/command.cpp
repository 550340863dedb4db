#include "command.hpp"

#include <fmt/format.h>

#include "payloads.hpp"

namespace pilecore::core::protocol {

namespace {

using json = nlohmann::json;

Failure bad(std::string message) { return {Error::bad_payload, std::move(message)}; }

}  // namespace

Bytes encode_signed_command(ByteView body, ByteView signature) {
  return json::to_cbor(json{{"m", json::binary(Bytes(body.begin(), body.end()))}, {"s", json::binary(Bytes(signature.begin(), signature.end()))}});
}

Result<SignedCommand> decode_signed_command(ByteView payload) {
  auto parsed = parse_cbor(payload);
  if (auto* f = std::get_if<Failure>(&parsed)) return *f;
  const auto& j = std::get<json>(parsed);
  if (!j.is_object()) return bad("a command is a CBOR map");
  const auto m = j.find("m");
  const auto s = j.find("s");
  if (m == j.end() || !m->is_binary() || m->get_binary().empty()) return bad("a command has its body \"m\" as a non-empty byte string");
  if (s == j.end() || !s->is_binary() || s->get_binary().empty()) return bad("a command has its signature \"s\" as a non-empty byte string");
  return SignedCommand{Bytes(m->get_binary().begin(), m->get_binary().end()), Bytes(s->get_binary().begin(), s->get_binary().end())};
}

Bytes encode_command_body(const Command& command) {
  return json::to_cbor(json{{"c", command.name}, {"a", command.args}, {"t", command.time}, {"q", command.seq}});
}

Result<Command> decode_command_body(ByteView body) {
  auto parsed = parse_cbor(body);
  if (auto* f = std::get_if<Failure>(&parsed)) return Failure{f->error, "the command body: " + f->message};
  auto& j = std::get<json>(parsed);
  if (!j.is_object()) return bad("a command body is a CBOR map");
  Command c;
  const auto name = j.find("c");
  if (name == j.end() || !name->is_string() || name->get_ref<const std::string&>().empty() ||
      name->get_ref<const std::string&>().size() > kMaxCommandNameSize) {
    return bad(fmt::format("a command's \"c\" is text of 1 to {} bytes", kMaxCommandNameSize));
  }
  c.name = name->get<std::string>();
  if (const auto a = j.find("a"); a != j.end()) {
    if (!a->is_object()) return bad("a command's arguments \"a\" are a map");
    c.args = std::move(*a);
  }
  const auto t = j.find("t");
  if (t == j.end() || !t->is_number_unsigned() || t->get<std::uint64_t>() > 0xFFFFFFFFu) return bad("a command's \"t\" is Unix seconds, an unsigned 32-bit integer");
  c.time = static_cast<std::uint32_t>(t->get<std::uint64_t>());
  const auto q = j.find("q");
  if (q == j.end() || !q->is_number_unsigned() || q->get<std::uint64_t>() == 0) return bad("a command's \"q\" is its sequence, an unsigned integer above 0");
  c.seq = q->get<std::uint64_t>();
  return c;
}

Bytes command_signed_bytes(std::uint32_t device_id, ByteView body) {
  Bytes out(kCommandSignatureContext.begin(), kCommandSignatureContext.end());
  put_u32(out, device_id);
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

}  // namespace pilecore::core::protocol
