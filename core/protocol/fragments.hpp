// Large transfers (a long ledger upload, a firmware image) over frames a link can carry
// (docs/protocol.md, "Fragmentation"). A fragmented frame sets flags::fragment and its payload
// starts with a 6-byte header: transfer id, fragment index, fragment count (big-endian u16).
// The fragments' bodies, concatenated in index order, are the message's payload followed by its
// SHA-256, so the receiver checks the whole transfer, not only each frame.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <utility>

#include "frame.hpp"
#include "pilecore/clock.hpp"

namespace pilecore::core::protocol {

inline constexpr std::size_t kFragmentHeaderSize = 6;
inline constexpr std::size_t kDigestSize = 32;

/// The frames of one transfer for a link whose largest frame is `mtu` bytes (header included).
/// `header` gives type, device, timestamp and the first fragment's sequence; each next fragment
/// takes the next sequence. Throws std::invalid_argument when `mtu` leaves no room for a body or
/// the transfer would need more than 65535 fragments.
[[nodiscard]] std::vector<Bytes> fragment(const Header& header, ByteView payload, std::size_t mtu, std::uint16_t transfer_id);

/// A message put back together: the first fragment's header fields and the whole payload.
struct Message {
  MessageType type = MessageType::status;
  std::uint32_t device_id = 0;
  std::uint32_t timestamp = 0;
  std::uint32_t sequence = 0;
  Bytes payload;
};

struct ReassemblyLimits {
  std::size_t max_payload = 1024 * 1024;  ///< bytes of one message, digest excluded
  std::uint16_t max_fragments = 4096;
  std::size_t max_transfers = 4;          ///< in progress at once (over all devices)
  Duration timeout = std::chrono::seconds(120);  ///< since the transfer's last new fragment
};

class Reassembler {
 public:
  explicit Reassembler(ReassemblyLimits limits = {}, Counters* counters = nullptr) : limits_(limits), counters_(counters) {}

  /// Takes one decoded frame with flags::fragment set. Returns the message when this fragment
  /// completed it, nothing while it is still incomplete (or the fragment was a duplicate), or
  /// why it was refused; a refused transfer is forgotten whole. Expires idle transfers first.
  [[nodiscard]] Result<std::optional<Message>> offer(const FrameView& frame, TimePoint now);
  /// Forgets transfers idle longer than the timeout (each counted as timed_out); how many.
  std::size_t expire(TimePoint now);

  [[nodiscard]] std::size_t in_progress() const { return transfers_.size(); }
  [[nodiscard]] std::size_t buffered_bytes() const;
  [[nodiscard]] std::uint64_t duplicates() const { return duplicates_; }

 private:
  using TransferKey = std::pair<std::uint32_t, std::uint16_t>;  // device id, transfer id
  struct Transfer {
    MessageType type;
    std::uint16_t count;
    std::map<std::uint16_t, Bytes> bodies;
    std::size_t bytes = 0;
    std::uint32_t timestamp = 0;
    std::uint32_t sequence = 0;
    TimePoint last{};
  };
  Failure fail(Error e, std::string message);

  ReassemblyLimits limits_;
  Counters* counters_;
  std::map<TransferKey, Transfer> transfers_;
  // Transfers completed lately: a fragment of one arriving again is a duplicate, not a new
  // transfer that would sit in a slot until it timed out.
  std::deque<TransferKey> completed_;
  std::uint64_t duplicates_ = 0;
};

}  // namespace pilecore::core::protocol
