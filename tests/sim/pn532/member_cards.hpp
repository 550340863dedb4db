// Member cards that carry an account number, for payment-card: a MIFARE Classic 1K with sectors
// and keys (the PN532 runs AUTH on chip, so the model answers frames with the chip's status) and
// a MIFARE DESFire EV1 with applications, an AES key and data files (native commands wrapped in
// ISO 7816-4 APDUs: CLA 90, INS the native command, answers ending 91 xx).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "iso14443_card.hpp"

namespace pilecore::sim {

/// A MIFARE Classic 1K: 16 sectors of 4 blocks, the last of each the trailer (key A, access
/// bits, key B). New cards have transport keys FF..FF and zero data. AUTH with a wrong key is
/// refused with status 14 and the card halts: nothing answers until it is selected again (as a
/// real card does after a failed Crypto1 handshake). READ of a block outside the authenticated
/// sector is refused the same way. Key A reads back as zeros.
class MifareClassicCard final : public Iso14443Card {
 public:
  using Key = std::array<std::uint8_t, 6>;
  using Block = std::array<std::uint8_t, 16>;
  explicit MifareClassicCard(std::vector<std::uint8_t> uid);

  void set_keys(unsigned sector, const Key& key_a, const Key& key_b);
  void write(unsigned block, const Block& data);
  /// Writes `text` (ASCII, padded with zeros) into `block`.
  void write_text(unsigned block, const std::string& text);

  [[nodiscard]] std::vector<std::uint8_t> uid() const override { return uid_; }
  [[nodiscard]] std::uint16_t atqa() const override { return uid_.size() == 4 ? 0x0004 : 0x0044; }
  [[nodiscard]] std::uint8_t sak() const override { return 0x08; }
  [[nodiscard]] std::vector<std::uint8_t> ats() const override { return {}; }
  std::vector<std::uint8_t> transceive(std::span<const std::uint8_t> command) override;
  std::uint8_t exchange_frame(std::span<const std::uint8_t> frame, std::vector<std::uint8_t>& answer) override;
  void reselected() override;

  [[nodiscard]] unsigned refused_auths() const { return refused_auths_.load(); }
  [[nodiscard]] unsigned reads() const { return reads_.load(); }

 private:
  std::vector<std::uint8_t> uid_;
  mutable std::mutex mutex_;
  std::array<Block, 64> blocks_{};
  std::optional<unsigned> authenticated_;  ///< the sector authenticated, if any
  bool halted_ = false;
  std::atomic<unsigned> refused_auths_{0};
  std::atomic<unsigned> reads_{0};
};

/// A MIFARE DESFire EV1 (SAK 20, ISO 14443-4) with the native commands payment-card uses, each
/// wrapped as CLA 90 INS P1=00 P2=00 [Lc data] Le=00:
///   5A SelectApplication AID[3, LSB first]        -> 91 00 | 91 A0 (no such application)
///   AA AuthenticateEV1 (AES) key_no               -> E(RndB) 91 AF; then
///   AF E(RndA || RndB<<<8) [32]                   -> E(RndA<<<8) 91 00 | 91 AE (wrong key)
///   BD ReadData file offset[3] length[3] (LSB first) -> data 91 00 | 91 AE (authenticate first) |
///                                                      91 F0 (no such file) | 91 BE (out of bounds)
/// Anything else 91 1C; another CLA 6E 00. AES-128-CBC throughout, the IV chained over the
/// handshake as EV1 does. Files are plain: their data is read as stored.
class DesfireCard final : public Iso14443Card {
 public:
  using AesKey = std::array<std::uint8_t, 16>;
  explicit DesfireCard(std::vector<std::uint8_t> uid);
  /// An application (AID as the 24-bit number, e.g. 0xC0FFEE); `key` none: no authentication.
  void add_application(std::uint32_t aid, std::optional<AesKey> key);
  /// A file of the application; `needs_auth`: ReadData only after authentication with key 0.
  void add_file(std::uint32_t aid, std::uint8_t file, std::vector<std::uint8_t> data, bool needs_auth);

  [[nodiscard]] std::vector<std::uint8_t> uid() const override { return uid_; }
  [[nodiscard]] std::uint16_t atqa() const override { return 0x0344; }
  [[nodiscard]] std::uint8_t sak() const override { return 0x20; }
  /// DESFire EV1's ATS: T0 75, TA 77, TB 81, TC 02, historical byte 80.
  [[nodiscard]] std::vector<std::uint8_t> ats() const override { return {0x75, 0x77, 0x81, 0x02, 0x80}; }
  std::vector<std::uint8_t> transceive(std::span<const std::uint8_t> command) override;
  void reselected() override;

  [[nodiscard]] unsigned refused_auths() const { return refused_auths_.load(); }
  [[nodiscard]] unsigned authentications() const { return authentications_.load(); }

 private:
  struct Application {
    std::optional<AesKey> key;
    std::map<std::uint8_t, std::pair<std::vector<std::uint8_t>, bool>> files;
  };
  std::vector<std::uint8_t> uid_;
  std::mutex mutex_;
  std::map<std::uint32_t, Application> apps_;
  std::optional<std::uint32_t> selected_;
  bool authenticated_ = false;
  bool awaiting_second_step_ = false;
  std::array<std::uint8_t, 16> rnd_b_{};
  std::array<std::uint8_t, 16> iv_{};
  std::atomic<unsigned> refused_auths_{0};
  std::atomic<unsigned> authentications_{0};
};

}  // namespace pilecore::sim
