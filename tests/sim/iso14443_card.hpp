// A contactless card (or phone) in a simulated reader's field, as the PN532 emulator offers it to
// libnfc: what InListPassiveTarget reports about it, and its answers to command APDUs once
// ISO 14443-4 is up. Member cards and the e-CNY wallet are cards of this kind.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace pilecore::sim {

class Iso14443Card {
 public:
  virtual ~Iso14443Card() = default;
  /// 4 or 7 bytes.
  [[nodiscard]] virtual std::vector<std::uint8_t> uid() const = 0;
  [[nodiscard]] virtual std::uint16_t atqa() const = 0;
  /// 0x20 when the card speaks ISO 14443-4 (APDUs); 0x08 for a MIFARE Classic 1K.
  [[nodiscard]] virtual std::uint8_t sak() const = 0;
  /// The answer to select (without its length byte); empty for a card without ISO 14443-4.
  [[nodiscard]] virtual std::vector<std::uint8_t> ats() const = 0;
  /// One command APDU in, the response APDU (data, then SW1 SW2) out.
  virtual std::vector<std::uint8_t> transceive(std::span<const std::uint8_t> command) = 0;
};

}  // namespace pilecore::sim
