// pilecore plugin SDK: records a plugin hands the core for the operator's back end (API 2.4).
//
// A plugin that keeps money evidence of its own (payment-dcep's offline vouchers) gives each
// record to Host::upload(). The core writes it into its outbox (docs/protocol.md section 4), the
// same store-and-forward path as the core's own money records, and answers once the back end has
// acknowledged it. There is no CBOR in the SDK: the body is a list of named values, which the core
// encodes as the CBOR map of protocol.md 3.1 (names sorted byte by byte).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "pilecore/status.hpp"

namespace pilecore {
inline namespace v2 {

/// One value of a record's body: an integer (money in fen, energy in Wh, time in Unix
/// milliseconds: never floating point), text (UTF-8), bytes, or a truth value.
using UplinkValue = std::variant<std::int64_t, std::string, std::vector<std::uint8_t>, bool>;

struct UplinkField {
  std::string name;   ///< 1 to 32 bytes, unique within the record
  UplinkValue value;
};

/// One uplink record (class `transaction`). The core refuses, with `invalid_argument` and the
/// reason:
///  - a `key` that is not 1 to 64 bytes of printable ASCII without spaces, that starts with one
///    of the core's own prefixes (`op:`, `ledger:`, `txn:`, `status:`, `alarm:`, `hb:`, `cmd:`),
///    or that another instance of the site has already used (keys belong to the first instance
///    that uploads them, forever);
///  - a `kind` that is not 1 to 32 bytes of `[a-z0-9_]`, or one of the core's own kinds
///    (`operation`, `ledger`, `transaction`, `status`, `alarm`, `heartbeat`, `command_result`,
///    `meter`);
///  - a body with an empty, over-long or repeated name, or whose encoded record is above 16 KiB.
struct UplinkRecord {
  std::string key;   ///< the idempotency key the back end acknowledges, e.g. "voucher:<operation id>"
  std::string kind;  ///< what the record is, e.g. "voucher"
  std::vector<UplinkField> body;
};

/// What is wrong with `record` by the rules above that can be checked without the core (all but
/// the owner of the key and the encoded size); empty when nothing is. The core and the testing
/// kit's FakeHost refuse with this reason.
[[nodiscard]] inline std::string uplink_record_error(const UplinkRecord& record) {
  constexpr std::size_t max_key = 64, max_kind = 32, max_name = 32;
  constexpr std::array<std::string_view, 7> core_prefixes{"op:", "ledger:", "txn:", "status:", "alarm:", "hb:", "cmd:"};
  constexpr std::array<std::string_view, 8> core_kinds{"operation", "ledger", "transaction", "status", "alarm", "heartbeat", "command_result", "meter"};
  const std::string& k = record.key;
  if (k.empty() || k.size() > max_key) return "an uplink record's key is 1 to 64 bytes, not " + std::to_string(k.size());
  if (!std::all_of(k.begin(), k.end(), [](char c) { return c > 0x20 && c < 0x7F; })) {
    return "an uplink record's key is printable ASCII without spaces";
  }
  for (std::string_view p : core_prefixes) {
    if (std::string_view(k).substr(0, p.size()) == p) return "the key prefix '" + std::string(p) + "' is the core's own; choose another";
  }
  const std::string& kind = record.kind;
  if (kind.empty() || kind.size() > max_kind ||
      !std::all_of(kind.begin(), kind.end(), [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'; })) {
    return "an uplink record's kind is 1 to 32 characters of [a-z0-9_]";
  }
  for (std::string_view c : core_kinds) {
    if (kind == c) return "the kind '" + kind + "' is the core's own; choose another";
  }
  for (std::size_t i = 0; i < record.body.size(); ++i) {
    const std::string& n = record.body[i].name;
    if (n.empty() || n.size() > max_name) return "a body field's name is 1 to 32 bytes";
    for (std::size_t j = 0; j < i; ++j) {
      if (record.body[j].name == n) return "the body field '" + n + "' is given twice";
    }
  }
  return {};
}

/// The answer to Host::upload: ok once the back end has acknowledged the record, else why the
/// core refused it (see Host::upload for the codes).
using UploadCallback = std::function<void(Status)>;

}  // namespace v2
}  // namespace pilecore
