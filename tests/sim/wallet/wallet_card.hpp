// The e-CNY hard wallet simulator: a contactless card (Iso14443Card) that speaks the wallet
// protocol of docs/payments.md ("e-CNY hard wallet"): SELECT by AID, GET WALLET INFO, PAYMENT,
// GET RESPONSE for answers longer than one chunk. It holds a balance, a monotonic counter, an SM2
// key and its certificate, and signs each payment's voucher with SM2 over SM3.
//
// This encoder is written from the document, independently of the plugin's decoder, so a
// mistake made in one does not cancel out in the other. For failure tests it can misbehave.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "iso14443_card.hpp"
#include "sm2_pki.hpp"

namespace pilecore::sim {

class WalletCard final : public Iso14443Card {
 public:
  enum class Misbehaviour {
    none,
    replay_last_voucher,  ///< answer PAYMENT with the previous voucher, byte for byte
    wrong_nonce,          ///< sign a voucher whose nonce is not the one the pile sent
    forged_signature,     ///< sign the voucher with another key than the certificate's
    counter_back,         ///< sign with the previous voucher's counter again (a cloned or rolled-back wallet)
    wrong_amount,         ///< sign a voucher for one fen less than asked
  };

  struct Settings {
    std::string wallet_id;             ///< e.g. "0021000012345678"
    std::int64_t balance_fen = 0;
    std::uint32_t counter = 0;         ///< of the last voucher signed
    Pkey key;                          ///< SM2
    Cert certificate;
    std::size_t chunk = 200;           ///< most response data bytes in one APDU response
    std::vector<std::uint8_t> uid = {0x08, 0x12, 0x34, 0x56};  ///< random UID, as hard wallets use
  };

  explicit WalletCard(Settings settings);

  [[nodiscard]] std::vector<std::uint8_t> uid() const override { return settings_.uid; }
  [[nodiscard]] std::uint16_t atqa() const override { return 0x0004; }
  [[nodiscard]] std::uint8_t sak() const override { return 0x20; }
  [[nodiscard]] std::vector<std::uint8_t> ats() const override;
  std::vector<std::uint8_t> transceive(std::span<const std::uint8_t> command) override;

  void set_misbehaviour(Misbehaviour m);
  [[nodiscard]] std::int64_t balance_fen() const;
  [[nodiscard]] std::uint32_t counter() const;
  /// Vouchers signed so far (what the wallet debited itself for).
  [[nodiscard]] int vouchers_signed() const;

  /// The wallet's application id: F0 'P' 'C' 'D' 'C' 'E' 'P' 01.
  static const std::vector<std::uint8_t> kAid;

 private:
  std::vector<std::uint8_t> answer(std::span<const std::uint8_t> apdu);
  std::vector<std::uint8_t> send_data(std::vector<std::uint8_t> data);
  std::vector<std::uint8_t> next_chunk(std::size_t le);
  std::vector<std::uint8_t> payment(std::span<const std::uint8_t> data);

  mutable std::mutex mutex_;
  Settings settings_;
  Misbehaviour misbehaviour_ = Misbehaviour::none;
  bool selected_ = false;
  std::vector<std::uint8_t> pending_;  ///< response data not yet fetched with GET RESPONSE
  std::vector<std::uint8_t> last_voucher_;
  int signed_ = 0;
};

}  // namespace pilecore::sim
