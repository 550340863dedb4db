#include "fragments.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

#include "crypto.hpp"

namespace pilecore::core::protocol {

namespace {
constexpr std::size_t kCompletedRemembered = 16;
}

std::vector<Bytes> fragment(const Header& header, ByteView payload, std::size_t mtu, std::uint16_t transfer_id) {
  const std::size_t overhead = kHeaderSize + kFragmentHeaderSize;
  if (mtu <= overhead) throw std::invalid_argument(fmt::format("an MTU of {} bytes leaves no room for a fragment (the headers take {})", mtu, overhead));
  const std::size_t body_max = std::min(mtu, kHeaderSize + kMaxPayload) - overhead;
  Bytes whole(payload.begin(), payload.end());
  const Bytes sum = core::digest(HashAlgorithm::sha256, payload);
  whole.insert(whole.end(), sum.begin(), sum.end());
  const std::size_t count = (whole.size() + body_max - 1) / body_max;
  if (count > 0xFFFF) throw std::invalid_argument(fmt::format("{} bytes need {} fragments of {}; at most 65535", payload.size(), count, body_max));
  std::vector<Bytes> frames;
  frames.reserve(count);
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t at = i * body_max;
    const std::size_t n = std::min(body_max, whole.size() - at);
    Bytes body;
    body.reserve(kFragmentHeaderSize + n);
    put_u16(body, transfer_id);
    put_u16(body, static_cast<std::uint16_t>(i));
    put_u16(body, static_cast<std::uint16_t>(count));
    body.insert(body.end(), whole.begin() + static_cast<std::ptrdiff_t>(at), whole.begin() + static_cast<std::ptrdiff_t>(at + n));
    Header h = header;
    h.flags |= flags::fragment;
    h.sequence = header.sequence + static_cast<std::uint32_t>(i);
    frames.push_back(encode(h, body));
  }
  return frames;
}

Failure Reassembler::fail(Error e, std::string message) {
  if (counters_) counters_->count(e);
  return {e, std::move(message)};
}

std::size_t Reassembler::buffered_bytes() const {
  std::size_t n = 0;
  for (const auto& [key, t] : transfers_) n += t.bytes;
  return n;
}

std::size_t Reassembler::expire(TimePoint now) {
  std::size_t n = 0;
  for (auto it = transfers_.begin(); it != transfers_.end();) {
    if (now - it->second.last > limits_.timeout) {
      if (counters_) counters_->count(Error::timed_out);
      it = transfers_.erase(it);
      ++n;
    } else {
      ++it;
    }
  }
  return n;
}

Result<std::optional<Message>> Reassembler::offer(const FrameView& frame, TimePoint now) {
  expire(now);
  const auto& h = frame.header;
  if ((h.flags & flags::fragment) == 0) return fail(Error::bad_fragment, "not a fragment: the fragment flag is clear");
  if (frame.payload.size() <= kFragmentHeaderSize) {
    return fail(Error::bad_fragment, fmt::format("a fragment has a {}-byte fragment header and a body; got {} bytes", kFragmentHeaderSize, frame.payload.size()));
  }
  const std::uint8_t* p = frame.payload.data();
  const std::uint16_t id = get_u16(p);
  const std::uint16_t index = get_u16(p + 2);
  const std::uint16_t count = get_u16(p + 4);
  const ByteView body = frame.payload.subspan(kFragmentHeaderSize);
  const TransferKey key{h.device_id, id};
  if (count == 0 || index >= count) return fail(Error::bad_fragment, fmt::format("transfer {}: fragment {} of {}", id, index, count));
  if (count > limits_.max_fragments) return fail(Error::too_large, fmt::format("transfer {}: {} fragments (at most {})", id, count, limits_.max_fragments));
  if (std::find(completed_.begin(), completed_.end(), key) != completed_.end()) {
    ++duplicates_;
    return std::optional<Message>{};
  }

  auto it = transfers_.find(key);
  if (it == transfers_.end()) {
    if (transfers_.size() >= limits_.max_transfers) {
      return fail(Error::too_many_transfers, fmt::format("transfer {}: {} transfers already in progress", id, transfers_.size()));
    }
    it = transfers_.emplace(key, Transfer{h.type, count, {}, 0, 0, 0, now}).first;
  }
  Transfer& t = it->second;
  if (t.type != h.type || t.count != count) {
    auto message = fmt::format("transfer {}: fragment {} says type {} of {} fragments; the transfer is {} of {}", id, index, to_string(h.type), count,
                               to_string(t.type), t.count);
    transfers_.erase(it);  // `t` dies here
    return fail(Error::bad_fragment, std::move(message));
  }
  if (auto seen = t.bodies.find(index); seen != t.bodies.end()) {
    if (std::equal(seen->second.begin(), seen->second.end(), body.begin(), body.end())) {
      ++duplicates_;
      return std::optional<Message>{};
    }
    transfers_.erase(it);
    return fail(Error::fragment_conflict, fmt::format("transfer {}: fragment {} arrived twice with different bytes", id, index));
  }
  if (t.bytes + body.size() > limits_.max_payload + kDigestSize) {
    transfers_.erase(it);
    return fail(Error::too_large, fmt::format("transfer {}: more than {} bytes", id, limits_.max_payload));
  }
  t.bodies.emplace(index, Bytes(body.begin(), body.end()));
  t.bytes += body.size();
  t.last = now;
  if (index == 0) {
    t.timestamp = h.timestamp;
    t.sequence = h.sequence;
  }
  if (t.bodies.size() < t.count) return std::optional<Message>{};

  Bytes whole;
  whole.reserve(t.bytes);
  for (auto& [i, b] : t.bodies) whole.insert(whole.end(), b.begin(), b.end());
  Message m{t.type, h.device_id, t.timestamp, t.sequence, {}};
  transfers_.erase(it);
  if (whole.size() < kDigestSize) return fail(Error::digest_mismatch, fmt::format("transfer {}: {} bytes cannot hold its SHA-256", id, whole.size()));
  const ByteView content(whole.data(), whole.size() - kDigestSize);
  const Bytes sum = core::digest(HashAlgorithm::sha256, content);
  if (!std::equal(sum.begin(), sum.end(), whole.end() - static_cast<std::ptrdiff_t>(kDigestSize))) {
    return fail(Error::digest_mismatch, fmt::format("transfer {}: the SHA-256 of {} bytes does not match", id, content.size()));
  }
  completed_.push_back(key);
  if (completed_.size() > kCompletedRemembered) completed_.pop_front();
  whole.resize(content.size());
  m.payload = std::move(whole);
  return std::optional<Message>{std::move(m)};
}

}  // namespace pilecore::core::protocol
