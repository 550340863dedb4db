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
  /// A frame to a card without ISO 14443-4, as the PN532's InDataExchange passes it (MIFARE
  /// Classic AUTH 60/61 block key[6] uid[4], which the chip runs itself, and READ 30 block).
  /// Fills `answer` and returns the PN532 status byte: 00 done, 01 no answer (timeout), 14 MIFARE
  /// authentication error. A card that knows no such frames stays silent.
  virtual std::uint8_t exchange_frame(std::span<const std::uint8_t> frame, std::vector<std::uint8_t>& answer) {
    (void)frame;
    (void)answer;
    return 0x01;
  }
  /// The card was selected again (InListPassiveTarget): like a real card it forgets any
  /// authentication and leaves HALT.
  virtual void reselected() {}
};

}  // namespace pilecore::sim
