// The payload of a down `command` frame (docs/protocol.md section 3.4): the back end's signed
// remote command. Pure: the signature is checked above this layer (core/uplink), on the bytes
// signed_bytes() names, so the back end signs exactly what it sent and nothing is re-encoded.
//
//   payload = CBOR {"m": bstr body, "s": bstr signature}
//   body    = CBOR {"c": name, "a": {arguments}, "t": Unix seconds, "q": command sequence}
//   signed  = "PILECORE-CMD-1" || device id (4 bytes BE) || body
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <string_view>

#include "frame.hpp"

namespace pilecore::core::protocol {

/// Domain separation: a signature over a command can never be taken for one over anything else
/// the same key might sign.
inline constexpr std::string_view kCommandSignatureContext = "PILECORE-CMD-1";
inline constexpr std::size_t kMaxCommandNameSize = 32;

/// The outer map, before the signature is checked.
struct SignedCommand {
  Bytes body;       ///< exactly as the back end encoded (and signed) it
  Bytes signature;  ///< DER: ECDSA P-256 over SHA-256, or SM2 over SM3
};
[[nodiscard]] Bytes encode_signed_command(ByteView body, ByteView signature);
[[nodiscard]] Result<SignedCommand> decode_signed_command(ByteView payload);

/// The body, once its signature holds.
struct Command {
  std::string name;                                ///< "c", 1..32 bytes
  nlohmann::json args = nlohmann::json::object();  ///< "a", a map (may be absent: none)
  std::uint32_t time = 0;                          ///< "t", when the back end made it, Unix seconds
  std::uint64_t seq = 0;                           ///< "q", the back end's command sequence, > 0
};
[[nodiscard]] Bytes encode_command_body(const Command& command);
[[nodiscard]] Result<Command> decode_command_body(ByteView body);

/// The bytes the signature covers: the context, the addressed pile's device id, the body. The
/// device id makes a command for one pile worthless on another.
[[nodiscard]] Bytes command_signed_bytes(std::uint32_t device_id, ByteView body);

}  // namespace pilecore::core::protocol
