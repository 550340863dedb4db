// The uplink wire protocol (core/protocol), as docs/protocol.md specifies it. The byte-level
// examples are read out of docs/protocol.md itself (its ```hex <name> blocks), so the
// specification a back-end team implements from and the code cannot drift apart.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>

#include "fragments.hpp"
#include "frame.hpp"
#include "link_routing.hpp"
#include "payloads.hpp"
#include "test_paths.hpp"
#include "uplink_class.hpp"

using namespace pilecore;
using namespace pilecore::core::protocol;
using json = nlohmann::json;

namespace {

// The bytes of the ```hex <name> block in docs/protocol.md: hex digit pairs, with anything
// after a '#' on a line being a comment.
Bytes doc_example(const std::string& name) {
  std::ifstream in(std::string(PILECORE_TEST_SOURCE_DIR) + "/docs/protocol.md");
  std::string line;
  bool inside = false;
  bool found = false;
  std::string digits;
  while (std::getline(in, line)) {
    if (!inside && line == "```hex " + name) {
      inside = found = true;
      continue;
    }
    if (inside && line.rfind("```", 0) == 0) break;
    if (!inside) continue;
    line = line.substr(0, line.find('#'));
    for (char c : line) {
      if (std::isxdigit(static_cast<unsigned char>(c))) digits += c;
    }
  }
  if (!found) throw std::runtime_error("docs/protocol.md has no ```hex " + name + " block");
  if (digits.size() % 2 != 0) throw std::runtime_error("odd number of hex digits in example " + name);
  Bytes out;
  for (std::size_t i = 0; i < digits.size(); i += 2) out.push_back(static_cast<std::uint8_t>(std::stoi(digits.substr(i, 2), nullptr, 16)));
  return out;
}

template <class T>
const T& ok(const Result<T>& r) {
  if (auto* f = std::get_if<Failure>(&r)) throw std::runtime_error("unexpected failure: " + f->message);
  return std::get<T>(r);
}

template <class T>
Error error_of(const Result<T>& r) {
  if (!std::holds_alternative<Failure>(r)) throw std::runtime_error("expected a failure, got a value");
  return std::get<Failure>(r).error;
}

TimePoint at(int seconds) { return TimePoint(std::chrono::seconds(1767225600 + seconds)); }

}  // namespace

// --- The examples of docs/protocol.md, decoded and re-encoded byte for byte ---------------------

TEST(ProtocolSpec, TransactionRecordExampleDecodesAndEncodesExactly) {
  const Bytes bytes = doc_example("transaction-record");
  const FrameView f = ok(decode(bytes));
  EXPECT_EQ(f.header.version, 1);
  EXPECT_EQ(f.header.flags, 0);
  EXPECT_EQ(f.header.type, MessageType::transaction);
  EXPECT_EQ(f.header.payload_length, 48);
  EXPECT_EQ(f.header.device_id, 123456u);
  EXPECT_EQ(f.header.timestamp, 1767225600u);  // 2026-01-01T00:00:00Z
  EXPECT_EQ(f.header.sequence, 7u);
  const Record r = ok(decode_record(f.payload));
  EXPECT_EQ(r.key, "op:T-1/capture");
  EXPECT_EQ(r.kind, "operation");
  EXPECT_EQ(r.body, (json{{"txn", "T-1"}, {"fen", 1250}}));

  Header h{1, 0, MessageType::transaction, 0, 123456, 1767225600, 7};
  EXPECT_EQ(encode(h, encode_record(r)), bytes);
}

TEST(ProtocolSpec, AckExampleNamesTheKeysAndTheLedgerSeq) {
  const Bytes bytes = doc_example("ack");
  const FrameView f = ok(decode(bytes));
  EXPECT_EQ(f.header.type, MessageType::ack);
  EXPECT_FALSE(is_uplink(f.header.type));
  EXPECT_EQ(f.header.device_id, 123456u);
  EXPECT_EQ(f.header.sequence, 3u);
  const Ack a = ok(decode_ack(f.payload));
  EXPECT_EQ(a.keys, std::vector<std::string>{"op:T-1/capture"});
  EXPECT_EQ(a.ledger_seq, 42u);
  EXPECT_EQ(encode({1, 0, MessageType::ack, 0, 123456, 1767225610, 3}, encode_ack(a)), bytes);
}

TEST(ProtocolSpec, CompactTelemetryExampleFitsTheSmallestLoRaWANPayload) {
  const Bytes bytes = doc_example("compact-telemetry");
  EXPECT_EQ(bytes.size(), 23u);  // CN470 (LoRaWAN 1.0.4) DR1: 23 bytes
  const FrameView f = ok(decode(bytes));
  EXPECT_EQ(f.header.type, MessageType::telemetry_compact);
  const auto records = ok(decode_compact_telemetry(f.payload));
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].connector, 1);
  EXPECT_EQ(records[0].status, ConnectorStatus::charging);
  EXPECT_EQ(records[0].power_w, 7200u);
  EXPECT_EQ(records[0].meter_wh, 123456u);
  EXPECT_EQ(encode({1, 0, MessageType::telemetry_compact, 0, 123456, 1767225660, 8}, encode_compact_telemetry(records)), bytes);
}

TEST(ProtocolSpec, CompactTelemetryCarriesSeveralConnectorsAndTruncatesPowerTo10W) {
  const Bytes payload = encode_compact_telemetry({{1, ConnectorStatus::charging, 7209, 1}, {15, ConnectorStatus::faulted, 655350, 0xFFFFFFFF}});
  ASSERT_EQ(payload.size(), 14u);
  const auto back = ok(decode_compact_telemetry(payload));
  EXPECT_EQ(back[0].power_w, 7200u);
  EXPECT_EQ(back[1].connector, 15);
  EXPECT_EQ(back[1].status, ConnectorStatus::faulted);
  EXPECT_EQ(back[1].power_w, 655350u);
  EXPECT_EQ(back[1].meter_wh, 0xFFFFFFFFu);
  EXPECT_THROW((void)encode_compact_telemetry({{16, ConnectorStatus::available, 0, 0}}), std::invalid_argument);
  EXPECT_THROW((void)encode_compact_telemetry({{1, ConnectorStatus::available, 655360, 0}}), std::invalid_argument);
  EXPECT_THROW((void)encode_compact_telemetry({}), std::invalid_argument);
}

TEST(ProtocolSpec, FragmentedExampleIsWhatTheFragmenterSendsAndReassemblesToThePayload) {
  const std::vector<Bytes> frames{doc_example("fragment-0"), doc_example("fragment-1"), doc_example("fragment-2")};
  Bytes payload(20);
  for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<std::uint8_t>(i);
  EXPECT_EQ(fragment({1, 0, MessageType::status, 0, 123456, 1767225600, 100}, payload, 40, 0x0102), frames);

  Reassembler r;
  std::optional<Message> done;
  for (const auto& bytes : frames) {
    const FrameView f = ok(decode(bytes));
    EXPECT_EQ(f.header.flags, flags::fragment);
    EXPECT_LE(bytes.size(), 40u);
    ASSERT_FALSE(done);
    done = ok(r.offer(f, at(0)));
  }
  ASSERT_TRUE(done);
  EXPECT_EQ(done->payload, payload);
  EXPECT_EQ(done->type, MessageType::status);
  EXPECT_EQ(done->sequence, 100u);  // the first fragment's
  EXPECT_EQ(r.in_progress(), 0u);
}

// --- Malformed frames: refused with a reason, counted, never trusted -----------------------

TEST(ProtocolDecode, RefusesEveryMalformedHeaderAndCountsWhy) {
  const Bytes good = doc_example("transaction-record");
  Counters c;
  auto with = [&](auto edit) {
    Bytes b = good;
    edit(b);
    return b;
  };
  EXPECT_EQ(error_of(decode(Bytes(good.begin(), good.begin() + 15), &c)), Error::truncated);
  EXPECT_EQ(error_of(decode(Bytes{}, &c)), Error::truncated);
  EXPECT_EQ(error_of(decode(Bytes(good.begin(), good.end() - 1), &c)), Error::truncated);  // 47 of 48 payload bytes
  EXPECT_EQ(error_of(decode(with([](Bytes& b) { b.push_back(0); }), &c)), Error::trailing_bytes);
  EXPECT_EQ(error_of(decode(with([](Bytes& b) { b[0] = 0x20; }), &c)), Error::bad_version);
  EXPECT_EQ(error_of(decode(with([](Bytes& b) { b[0] = 0x12; }), &c)), Error::reserved_flags);
  EXPECT_EQ(error_of(decode(with([](Bytes& b) { b[1] = 0x7E; }), &c)), Error::unknown_type);
  // A length field claiming the maximum over a short frame is refused, not followed.
  EXPECT_EQ(error_of(decode(with([](Bytes& b) { b[2] = 0xFF, b[3] = 0xFF; }), &c)), Error::truncated);
  EXPECT_EQ(c[Error::truncated], 4u);
  EXPECT_EQ(c[Error::trailing_bytes], 1u);
  EXPECT_EQ(c[Error::bad_version], 1u);
  EXPECT_EQ(c[Error::reserved_flags], 1u);
  EXPECT_EQ(c[Error::unknown_type], 1u);
  EXPECT_EQ(c.total(), 8u);
  const auto short_by_one = decode(Bytes(good.begin(), good.end() - 1));
  EXPECT_EQ(std::get<Failure>(short_by_one).message, "the header announces 48 payload bytes; 47 arrived");
}

TEST(ProtocolDecode, EncodeRefusesAPayloadTheLengthFieldCannotHold) {
  EXPECT_THROW((void)encode({}, Bytes(kMaxPayload + 1)), std::length_error);
  EXPECT_EQ(encode({}, Bytes(kMaxPayload)).size(), kHeaderSize + kMaxPayload);
}

TEST(ProtocolPayloads, RecordsAndAcksOfTheWrongShapeAreRefused) {
  auto cbor = [](const json& j) { return json::to_cbor(j); };
  EXPECT_EQ(error_of(decode_record(cbor(json::array({1, 2})))), Error::bad_payload);
  EXPECT_EQ(error_of(decode_record(cbor({{"k", ""}, {"c", "x"}, {"b", 1}}))), Error::bad_payload);
  EXPECT_EQ(error_of(decode_record(cbor({{"k", std::string(65, 'k')}, {"c", "x"}, {"b", 1}}))), Error::bad_payload);
  EXPECT_EQ(error_of(decode_record(cbor({{"k", "a"}, {"c", 7}, {"b", 1}}))), Error::bad_payload);
  EXPECT_EQ(error_of(decode_record(cbor({{"k", "a"}, {"c", "x"}}))), Error::bad_payload);
  // Unknown members are ignored: a newer sender may add some.
  EXPECT_EQ(ok(decode_record(cbor({{"k", "a"}, {"c", "x"}, {"b", 1}, {"z", true}}))).key, "a");
  EXPECT_EQ(error_of(decode_ack(cbor({{"a", {1}}}))), Error::bad_payload);
  EXPECT_EQ(error_of(decode_ack(cbor({{"a", json::array()}, {"l", -1}}))), Error::bad_payload);
  EXPECT_EQ(error_of(decode_ack(cbor({{"l", 1}}))), Error::bad_payload);
  EXPECT_TRUE(ok(decode_ack(cbor({{"a", json::array()}}))).keys.empty());
}

TEST(ProtocolPayloads, CborThatIsTruncatedTrailedTaggedOrTooDeepIsRefused) {
  Bytes rec = encode_record({"k", "c", json{{"x", 1}}});
  EXPECT_EQ(error_of(parse_cbor(Bytes(rec.begin(), rec.end() - 1))), Error::bad_payload);
  Bytes trailing = rec;
  trailing.push_back(0x00);
  EXPECT_EQ(error_of(parse_cbor(trailing)), Error::bad_payload);
  EXPECT_EQ(error_of(parse_cbor(Bytes{0xC1, 0x00})), Error::bad_payload);  // tag 1
  EXPECT_EQ(error_of(parse_cbor(Bytes{})), Error::bad_payload);
  // A text string announcing 4 GiB in a 5-byte item.
  EXPECT_EQ(error_of(parse_cbor(Bytes{0x7A, 0xFF, 0xFF, 0xFF, 0xFF})), Error::bad_payload);
  // An array announcing 2^64-1 elements.
  EXPECT_EQ(error_of(parse_cbor(Bytes{0x9B, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF})), Error::bad_payload);
  // 16 levels are fine; 17 are refused, and 60000 do not exhaust the stack.
  Bytes deep(16, 0x81);
  deep.push_back(0x00);
  EXPECT_NO_THROW((void)ok(parse_cbor(deep)));
  deep.insert(deep.begin(), 0x81);
  EXPECT_EQ(std::get<Failure>(parse_cbor(deep)).message, "CBOR: nested deeper than 16 levels");
  Bytes abyss(60000, 0x81);
  EXPECT_EQ(error_of(parse_cbor(abyss)), Error::bad_payload);
}

TEST(ProtocolPayloads, CompactTelemetryOfAPartialRecordOrUnknownStatusIsRefused) {
  EXPECT_EQ(error_of(decode_compact_telemetry(Bytes(6))), Error::bad_payload);
  EXPECT_EQ(error_of(decode_compact_telemetry(Bytes{})), Error::bad_payload);
  EXPECT_EQ(error_of(decode_compact_telemetry(Bytes{0x19, 0, 0, 0, 0, 0, 0})), Error::bad_payload);  // status 9
}

// --- Fragmentation ------------------------------------------------------------------------

namespace {

struct Transfer {
  Bytes payload;
  std::vector<Bytes> frames;
};

Transfer make_transfer(std::size_t size, std::size_t mtu, std::uint16_t id, std::uint32_t device = 9) {
  Transfer t;
  t.payload.resize(size);
  for (std::size_t i = 0; i < size; ++i) t.payload[i] = static_cast<std::uint8_t>(i * 7 + id);
  t.frames = fragment({1, 0, MessageType::command, 0, device, 1767225600, 1000}, t.payload, mtu, id);
  return t;
}

Result<std::optional<Message>> offer(Reassembler& r, const Bytes& frame, TimePoint now) { return r.offer(ok(decode(frame)), now); }

}  // namespace

TEST(ProtocolFragments, OutOfOrderAndDuplicatedFragmentsStillReassembleOnce) {
  const Transfer t = make_transfer(1000, 100, 5);
  ASSERT_EQ(t.frames.size(), 14u);  // 1032 bytes in 78-byte bodies
  std::vector<std::size_t> order(t.frames.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = order.size() - 1 - i;
  Reassembler r;
  int completed = 0;
  for (std::size_t i : order) {
    if (i == 3) {
      EXPECT_FALSE(ok(offer(r, t.frames[7], at(1))));  // a duplicate, mid-transfer
    }
    if (auto m = ok(offer(r, t.frames[i], at(1)))) {
      ++completed;
      EXPECT_EQ(m->payload, t.payload);
    }
  }
  EXPECT_EQ(completed, 1);
  // A late duplicate of the completed transfer is not a new transfer.
  EXPECT_FALSE(ok(offer(r, t.frames[2], at(2))));
  EXPECT_EQ(r.in_progress(), 0u);
  EXPECT_EQ(r.duplicates(), 2u);
}

TEST(ProtocolFragments, ALostFragmentTimesOutAndFreesItsMemory) {
  const Transfer t = make_transfer(300, 64, 6);
  Counters c;
  Reassembler r({.max_payload = 4096, .max_fragments = 64, .max_transfers = 2, .timeout = std::chrono::seconds(30)}, &c);
  for (std::size_t i = 0; i + 1 < t.frames.size(); ++i) EXPECT_FALSE(ok(offer(r, t.frames[i], at(static_cast<int>(i)))));
  EXPECT_EQ(r.in_progress(), 1u);
  EXPECT_GT(r.buffered_bytes(), 0u);
  EXPECT_EQ(r.expire(at(30 + static_cast<int>(t.frames.size()) - 2)), 0u);  // idle exactly the timeout: kept
  EXPECT_EQ(r.expire(at(31 + static_cast<int>(t.frames.size()) - 2)), 1u);
  EXPECT_EQ(r.in_progress(), 0u);
  EXPECT_EQ(r.buffered_bytes(), 0u);
  EXPECT_EQ(c[Error::timed_out], 1u);
  // The last fragment, arriving after that, starts over and never completes on its own.
  EXPECT_FALSE(ok(offer(r, t.frames.back(), at(100))));
}

TEST(ProtocolFragments, ATransferOverTheSizeBoundIsRefusedAndForgotten) {
  Counters c;
  Reassembler r({.max_payload = 200, .max_fragments = 64, .max_transfers = 2, .timeout = std::chrono::seconds(30)}, &c);
  const Transfer t = make_transfer(400, 64, 7);
  Error last{};
  for (const auto& f : t.frames) {
    auto res = offer(r, f, at(0));
    if (std::holds_alternative<Failure>(res)) {
      last = std::get<Failure>(res).error;
      break;
    }
  }
  EXPECT_EQ(last, Error::too_large);
  EXPECT_EQ(r.in_progress(), 0u);
  EXPECT_EQ(c[Error::too_large], 1u);
  // A count over the fragment bound is refused at its first fragment.
  Reassembler few({.max_payload = 1 << 20, .max_fragments = 4, .max_transfers = 2, .timeout = std::chrono::seconds(30)}, &c);
  EXPECT_EQ(error_of(offer(few, make_transfer(400, 64, 8).frames[0], at(0))), Error::too_large);
}

TEST(ProtocolFragments, ADigestMismatchIsRefused) {
  Transfer t = make_transfer(100, 64, 9);
  t.frames[1].back() ^= 0x01;  // one bit of the data (or of the digest), in transit
  Counters c;
  Reassembler r({}, &c);
  Result<std::optional<Message>> res = std::optional<Message>{};
  for (const auto& f : t.frames) res = offer(r, f, at(0));
  EXPECT_EQ(error_of(res), Error::digest_mismatch);
  EXPECT_EQ(c[Error::digest_mismatch], 1u);
  EXPECT_EQ(r.in_progress(), 0u);
}

TEST(ProtocolFragments, AFragmentThatContradictsItsTransferEndsIt) {
  const Transfer t = make_transfer(300, 64, 10);
  Counters c;
  Reassembler r({}, &c);
  EXPECT_FALSE(ok(offer(r, t.frames[0], at(0))));
  Bytes conflicting = t.frames[0];
  conflicting.back() ^= 0xFF;
  EXPECT_EQ(error_of(offer(r, conflicting, at(0))), Error::fragment_conflict);
  EXPECT_EQ(r.in_progress(), 0u);

  EXPECT_FALSE(ok(offer(r, t.frames[0], at(0))));
  Bytes recounted = t.frames[1];
  recounted[kHeaderSize + 5] += 1;  // the count
  const auto refused = offer(r, recounted, at(0));
  EXPECT_EQ(error_of(refused), Error::bad_fragment);
  EXPECT_EQ(std::get<Failure>(refused).message, "transfer 10: fragment 1 says type command of 9 fragments; the transfer is command of 8");
  Bytes beyond = t.frames[1];
  beyond[kHeaderSize + 2] = 0x7F;  // index past the count
  EXPECT_EQ(error_of(offer(r, beyond, at(0))), Error::bad_fragment);
  Bytes headless = encode({1, flags::fragment, MessageType::command, 0, 9, 0, 0}, Bytes{0, 1, 0, 0, 0, 1});
  EXPECT_EQ(error_of(offer(r, headless, at(0))), Error::bad_fragment);  // a header but no body
  EXPECT_EQ(c[Error::bad_fragment], 3u);
}

TEST(ProtocolFragments, TransfersBeyondTheBoundAreRefusedUntilOneEnds) {
  Counters c;
  Reassembler r({.max_payload = 4096, .max_fragments = 64, .max_transfers = 2, .timeout = std::chrono::seconds(30)}, &c);
  const Transfer a = make_transfer(200, 64, 1), b = make_transfer(200, 64, 2), d = make_transfer(200, 64, 3);
  EXPECT_FALSE(ok(offer(r, a.frames[0], at(0))));
  EXPECT_FALSE(ok(offer(r, b.frames[0], at(0))));
  EXPECT_EQ(error_of(offer(r, d.frames[0], at(0))), Error::too_many_transfers);
  // The same transfer id from another device is another transfer.
  EXPECT_EQ(error_of(offer(r, make_transfer(200, 64, 1, 10).frames[0], at(0))), Error::too_many_transfers);
  for (std::size_t i = 1; i < a.frames.size(); ++i) (void)ok(offer(r, a.frames[i], at(1)));
  EXPECT_EQ(r.in_progress(), 1u);
  EXPECT_FALSE(ok(offer(r, d.frames[0], at(2))));
  EXPECT_EQ(c[Error::too_many_transfers], 2u);
}

TEST(ProtocolFragments, TheFragmenterRefusesAnMtuWithNoRoomForData) {
  EXPECT_THROW((void)fragment({}, Bytes(10), 22, 1), std::invalid_argument);
  EXPECT_EQ(fragment({}, Bytes(10), 23, 1).size(), 42u);  // one byte a fragment: 10 + 32 digest bytes
  EXPECT_THROW((void)fragment({}, Bytes(70000), 23, 1), std::invalid_argument);
  EXPECT_EQ(fragment_count(10, 23), 42u);
}

// --- Classes and link routing ---------------------------------------------------------------

TEST(ProtocolRouting, DefaultSendsMoneyOver5GAndTelemetryOverLoRaWAN) {
  const LinkRouting routing = default_routing("cell", "lora");
  const std::vector<LinkSnapshot> both{{"cell", true, 1024, true, 1}, {"lora", true, 51, true, 1}};
  auto via = [&](UplinkClass c, std::size_t size, std::span<const LinkSnapshot> links) -> std::string {
    auto choice = choose_link(routing, c, size, links);
    return choice ? std::string(choice->link) + (choice->fragmented ? "/fragmented" : "") : "none";
  };
  EXPECT_EQ(via(UplinkClass::control, 200, both), "cell");
  EXPECT_EQ(via(UplinkClass::transaction, 200, both), "cell");
  EXPECT_EQ(via(UplinkClass::status, 40, both), "lora");
  EXPECT_EQ(via(UplinkClass::telemetry, 23, both), "lora");
  // Too large for LoRaWAN: status falls back to 5G.
  EXPECT_EQ(via(UplinkClass::status, 200, both), "cell");
  const std::vector<LinkSnapshot> cell_down{{"cell", false, 1024, true, 1}, {"lora", true, 51, true, 1}};
  // 5G down: a small control record goes over LoRaWAN, a large transaction waits.
  EXPECT_EQ(via(UplinkClass::control, 45, cell_down), "lora");
  EXPECT_EQ(via(UplinkClass::transaction, 200, cell_down), "none");
  const std::vector<LinkSnapshot> fragmenting{{"cell", false, 1024, true, 1}, {"lora", true, 51, true, 16}};
  EXPECT_EQ(via(UplinkClass::transaction, 200, fragmenting), "lora/fragmented");
  const std::vector<LinkSnapshot> lora_busy{{"cell", true, 1024, true, 1}, {"lora", true, 51, false, 1}};
  EXPECT_EQ(via(UplinkClass::telemetry, 23, lora_busy), "cell");  // duty cycle spent
  // Without LoRaWAN everything is on 5G, with no fallback.
  const LinkRouting only = default_routing("cell", "");
  EXPECT_EQ(only[UplinkClass::telemetry].primary, "cell");
  EXPECT_TRUE(only[UplinkClass::telemetry].fallback.empty());
}

TEST(ProtocolRouting, ClassesKnowTheirPriorityTypeAndWhetherTheyMayBeDropped) {
  EXPECT_LT(UplinkClass::control, UplinkClass::transaction);
  EXPECT_LT(UplinkClass::transaction, UplinkClass::status);
  EXPECT_LT(UplinkClass::status, UplinkClass::telemetry);
  EXPECT_FALSE(droppable(UplinkClass::control));
  EXPECT_FALSE(droppable(UplinkClass::transaction));
  EXPECT_TRUE(droppable(UplinkClass::status));
  EXPECT_TRUE(droppable(UplinkClass::telemetry));
  EXPECT_EQ(message_type(UplinkClass::transaction), MessageType::transaction);
  EXPECT_EQ(parse_uplink_class("status"), UplinkClass::status);
  EXPECT_FALSE(parse_uplink_class("bulk"));
}
