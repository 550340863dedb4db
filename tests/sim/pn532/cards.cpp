#include "cards.hpp"

#include <algorithm>
#include <stdexcept>

namespace pilecore::sim {

std::vector<std::uint8_t> from_hex(std::string_view text) {
  std::vector<std::uint8_t> out;
  int high = -1;
  for (char c : text) {
    if (c == ' ' || c == ':') continue;
    int v = -1;
    if (c >= '0' && c <= '9') v = c - '0';
    else if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') v = c - 'A' + 10;
    if (v < 0) throw std::invalid_argument("not a hex digit: '" + std::string(1, c) + "' in \"" + std::string(text) + "\"");
    if (high < 0) {
      high = v;
    } else {
      out.push_back(static_cast<std::uint8_t>(high << 4 | v));
      high = -1;
    }
  }
  if (high >= 0) throw std::invalid_argument("odd number of hex digits in \"" + std::string(text) + "\"");
  return out;
}

std::string to_hex(std::span<const std::uint8_t> bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (auto b : bytes) {
    out.push_back(digits[b >> 4]);
    out.push_back(digits[b & 0x0f]);
  }
  return out;
}

namespace {
void check_uid(const std::vector<std::uint8_t>& uid) {
  if (uid.size() != 4 && uid.size() != 7) {
    throw std::invalid_argument("an ISO 14443A UID has 4 or 7 bytes, not " + std::to_string(uid.size()));
  }
}
}  // namespace

MemberCard::MemberCard(std::vector<std::uint8_t> uid) : uid_(std::move(uid)) { check_uid(uid_); }

std::vector<std::uint8_t> MemberCard::transceive(std::span<const std::uint8_t> /*command*/) { return {0x6D, 0x00}; }

ApduCard::ApduCard(std::vector<std::uint8_t> uid, std::vector<std::vector<std::uint8_t>> aids, Handler handler)
    : uid_(std::move(uid)), aids_(std::move(aids)), handler_(std::move(handler)) {
  check_uid(uid_);
}

std::vector<std::uint8_t> ApduCard::transceive(std::span<const std::uint8_t> command) {
  ++commands_;
  // SELECT by DF name: CLA 00, INS A4, P1 04; Lc then the AID.
  if (command.size() >= 5 && command[0] == 0x00 && command[1] == 0xA4 && command[2] == 0x04) {
    const std::size_t lc = command[4];
    if (command.size() < 5 + lc) return {0x67, 0x00};  // wrong length
    const std::vector<std::uint8_t> aid(command.begin() + 5, command.begin() + 5 + static_cast<std::ptrdiff_t>(lc));
    std::lock_guard lock(mutex_);
    if (std::find(aids_.begin(), aids_.end(), aid) == aids_.end()) return {0x6A, 0x82};  // file not found
    selected_ = aid;
    return {0x90, 0x00};
  }
  std::vector<std::uint8_t> selected;
  {
    std::lock_guard lock(mutex_);
    selected = selected_;
  }
  if (handler_) {
    if (auto r = handler_(selected, command)) return *r;
  }
  return {0x6D, 0x00};
}

}  // namespace pilecore::sim
