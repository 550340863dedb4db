// The frames payment-card sends to a member card through the reader's exchange, and the parsing
// of the answers. Pure functions (no I/O), so the tests and the fuzz target reach them directly.
//
// MIFARE Classic (the PN532 runs these with InDataExchange; AUTH is done on chip):
//   AUTH  60|61 block key[6] uid[4]   (60 key A, 61 key B; uid: the last 4 bytes of the UID)
//         -> nothing (authenticated) or a refusal (the card halts)
//   READ  30 block                    -> 16 bytes
// MIFARE DESFire EV1, native commands wrapped in ISO 7816-4 (CLA 90, INS the command, P1 P2 00,
// Lc data, Le 00; the answer is data then 91 status):
//   5A SelectApplication AID[3, LSB first]; AA AuthenticateEV1 (AES) key_no, then AF with
//   E(RndA || RndB rotated left by one byte) and the card's E(RndA rotated); BD ReadData
//   file offset[3] length[3].
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace pilecore::card {

using Bytes = std::vector<std::uint8_t>;
using MifareKey = std::array<std::uint8_t, 6>;
using AesKey = std::array<std::uint8_t, 16>;

/// Hex to bytes; nullopt for anything but an even number of hex digits.
std::optional<Bytes> parse_hex(std::string_view text);

Bytes mifare_auth(bool key_b, std::uint8_t block, const MifareKey& key, std::span<const std::uint8_t> uid);
Bytes mifare_read(std::uint8_t block);

/// The account number held in a block or file: printable ASCII (A-Z a-z 0-9 - _ . :), 1 to 64
/// characters, padded at the end with zeros or spaces. Anything else: nullopt.
std::optional<std::string> account_from_bytes(std::span<const std::uint8_t> data);

Bytes desfire_command(std::uint8_t ins, std::span<const std::uint8_t> data);
struct DesfireAnswer {
  std::uint8_t status = 0;  ///< 00 ok, AF more frames, AE authentication error, A0 no application, ...
  Bytes data;
};
/// Splits a response APDU ending 91 xx; nullopt when it does not end so.
std::optional<DesfireAnswer> desfire_answer(std::span<const std::uint8_t> response);
std::string desfire_status_text(std::uint8_t status);
Bytes desfire_select(std::uint32_t aid);
Bytes desfire_read(std::uint8_t file, std::uint32_t offset, std::uint32_t length);

/// The host side of DESFire EV1 AES authentication with key 0 of the selected application.
class DesfireAesAuth {
 public:
  /// `rnd_a`: 16 random bytes (from RAND_bytes in production; fixed in the tests).
  DesfireAesAuth(const AesKey& key, const std::array<std::uint8_t, 16>& rnd_a) : key_(key), rnd_a_(rnd_a) {}
  /// The card's E(RndB) (16 bytes) in, the 32 bytes to send with AF out; nullopt for a bad size.
  std::optional<Bytes> answer_challenge(std::span<const std::uint8_t> enc_rnd_b);
  /// The card's E(RndA rotated) (16 bytes): whether the card proved it holds the key.
  bool verify(std::span<const std::uint8_t> enc_rnd_a_rotated);

 private:
  AesKey key_;
  std::array<std::uint8_t, 16> rnd_a_;
  std::array<std::uint8_t, 16> iv_{};
};

/// AES-128-CBC without padding; `data` a whole number of 16-byte blocks. Throws on failure.
Bytes aes_cbc(bool encrypt, const AesKey& key, std::span<const std::uint8_t, 16> iv, std::span<const std::uint8_t> data);

}  // namespace pilecore::card
