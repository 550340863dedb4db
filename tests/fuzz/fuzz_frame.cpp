// libFuzzer target: what arrives from a link (a broker, a LoRaWAN network server). The input is
// a series of frames, each preceded by its length (2 bytes, big-endian), so one input can drive
// a whole reassembly. Every frame must end as a value or a counted refusal, never a crash or a
// read out of bounds, and what is accepted must mean exactly what its bytes say: a decoded frame
// re-encodes to the same bytes, compact telemetry too, and a record or ack survives a round trip.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "fragments.hpp"
#include "frame.hpp"
#include "payloads.hpp"

using namespace pilecore::core::protocol;

namespace {

void check_payload(MessageType type, ByteView payload) {
  switch (type) {
    case MessageType::control:
    case MessageType::transaction:
    case MessageType::status:
    case MessageType::telemetry:
      if (auto r = decode_record(payload); auto* rec = std::get_if<Record>(&r)) {
        auto again = decode_record(encode_record(*rec));
        auto* back = std::get_if<Record>(&again);
        if (!back || back->key != rec->key || back->kind != rec->kind) std::abort();
      }
      break;
    case MessageType::ack:
      if (auto r = decode_ack(payload); auto* ack = std::get_if<Ack>(&r)) {
        auto again = decode_ack(encode_ack(*ack));
        auto* back = std::get_if<Ack>(&again);
        if (!back || back->keys != ack->keys || back->ledger_seq != ack->ledger_seq) std::abort();
      }
      break;
    case MessageType::telemetry_compact:
      if (auto r = decode_compact_telemetry(payload); auto* t = std::get_if<std::vector<ConnectorTelemetry>>(&r)) {
        // Power is carried in 10 W steps, so decoding then encoding gives back the very bytes.
        if (encode_compact_telemetry(*t) != Bytes(payload.begin(), payload.end())) std::abort();
      }
      break;
    case MessageType::command: break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Counters counters;
  Reassembler reassembler({.max_payload = 4096, .max_fragments = 64, .max_transfers = 2, .timeout = std::chrono::seconds(10)}, &counters);
  pilecore::TimePoint now{};
  std::span<const std::uint8_t> in(data, size);
  // The whole input as one frame too: the common case of a link delivering one.
  if (auto r = decode(in, &counters); auto* f = std::get_if<FrameView>(&r)) {
    if (encode(f->header, f->payload) != Bytes(in.begin(), in.end())) std::abort();
  }
  while (in.size() >= 2) {
    const std::size_t n = std::min<std::size_t>(get_u16(in.data()), in.size() - 2);
    const ByteView bytes = in.subspan(2, n);
    in = in.subspan(2 + n);
    now += std::chrono::seconds(1);
    auto r = decode(bytes, &counters);
    auto* f = std::get_if<FrameView>(&r);
    if (!f) continue;
    if (f->header.payload_length != f->payload.size() || encode(f->header, f->payload) != Bytes(bytes.begin(), bytes.end())) std::abort();
    if ((f->header.flags & flags::fragment) == 0) {
      check_payload(f->header.type, f->payload);
      continue;
    }
    auto done = reassembler.offer(*f, now);
    if (auto* m = std::get_if<std::optional<Message>>(&done); m && *m) {
      if ((*m)->payload.size() > 4096) std::abort();
      check_payload((*m)->type, (*m)->payload);
    }
    if (reassembler.in_progress() > 2 || reassembler.buffered_bytes() > 2 * (4096 + kDigestSize)) std::abort();
  }
  return 0;
}
