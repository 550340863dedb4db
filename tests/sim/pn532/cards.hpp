// Cards for the PN532 emulator: a member card that is only a UID (MIFARE Classic style, no
// APDUs) and an ISO 14443-4 card that answers SELECT by AID and, once an application is
// selected, whatever its handler says. The e-CNY wallet simulator is a card of the same kind.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "iso14443_card.hpp"

namespace pilecore::sim {

/// "04a1b2c3" -> {0x04, 0xa1, 0xb2, 0xc3}; spaces and colons are ignored. Throws
/// std::invalid_argument on anything else or an odd number of digits.
std::vector<std::uint8_t> from_hex(std::string_view text);
/// Lower-case hex, no separators.
std::string to_hex(std::span<const std::uint8_t> bytes);

/// A member card identified by its UID alone: ATQA 0004 (4-byte UID) or 0044 (7-byte UID),
/// SAK 08 (MIFARE Classic 1K). It has no ISO 14443-4 layer, so no APDUs.
class MemberCard final : public Iso14443Card {
 public:
  explicit MemberCard(std::vector<std::uint8_t> uid);
  [[nodiscard]] std::vector<std::uint8_t> uid() const override { return uid_; }
  [[nodiscard]] std::uint16_t atqa() const override { return uid_.size() == 4 ? 0x0004 : 0x0044; }
  [[nodiscard]] std::uint8_t sak() const override { return 0x08; }
  [[nodiscard]] std::vector<std::uint8_t> ats() const override { return {}; }
  /// Never reached through the emulator (a card without ISO 14443-4 gets no APDUs): "INS not
  /// supported".
  std::vector<std::uint8_t> transceive(std::span<const std::uint8_t> command) override;

 private:
  std::vector<std::uint8_t> uid_;
};

/// An ISO 14443-4 card (SAK 20) with applications. SELECT by name (00 A4 04 00 Lc AID [Le])
/// of one of `aids` answers 90 00 and selects it; of another AID, 6A 82. Every other command
/// goes to the handler with the selected AID (empty when none): its answer is the response
/// APDU; without a handler, or when it answers nothing, 6D 00.
class ApduCard final : public Iso14443Card {
 public:
  using Handler = std::function<std::optional<std::vector<std::uint8_t>>(std::span<const std::uint8_t> selected_aid,
                                                                          std::span<const std::uint8_t> command)>;
  ApduCard(std::vector<std::uint8_t> uid, std::vector<std::vector<std::uint8_t>> aids, Handler handler = {});

  [[nodiscard]] std::vector<std::uint8_t> uid() const override { return uid_; }
  [[nodiscard]] std::uint16_t atqa() const override { return uid_.size() == 4 ? 0x0004 : 0x0344; }
  [[nodiscard]] std::uint8_t sak() const override { return 0x20; }
  /// TL is not included: T0 75 (FSCI 5, TA TB TC follow), TA 77, TB 81, TC 02, one historical byte 80.
  [[nodiscard]] std::vector<std::uint8_t> ats() const override { return {0x75, 0x77, 0x81, 0x02, 0x80}; }
  std::vector<std::uint8_t> transceive(std::span<const std::uint8_t> command) override;

  /// Command APDUs received so far.
  [[nodiscard]] unsigned commands() const { return commands_.load(); }

 private:
  std::vector<std::uint8_t> uid_;
  std::vector<std::vector<std::uint8_t>> aids_;
  Handler handler_;
  std::mutex mutex_;
  std::vector<std::uint8_t> selected_;
  std::atomic<unsigned> commands_{0};
};

}  // namespace pilecore::sim
