// User tokens (card UIDs, wallet ids, face ids) identify people. The core keeps them in clear
// only where it must: in the database (0600, see docs/architecture.md) and in the calls to the
// payment and risk plugins. Logs and the event stream get a masked form, optionally followed by
// a salted hash so that an operator can tell that two sessions were the same card without
// learning the card.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

namespace pilecore::core {

/// The type prefix and at most the last four characters: "card:04DEADBEEF" -> "card:******BEEF".
/// An id shorter than eight characters shows none of them ("card:0451" -> "card:****"), so
/// at least half of every id stays hidden. A token without a "type:" prefix masks whole.
[[nodiscard]] std::string mask_token(std::string_view token);

/// SHA-256(salt || token) in lower-case hex (64 characters), through OpenSSL EVP. The salt is
/// the pile's own (token_salt()), so the same card hashes differently on two piles and a table
/// of hashed UIDs made elsewhere does not apply.
[[nodiscard]] std::string token_hash(std::string_view salt, std::string_view token);

/// Reads <state_dir>/token-salt, creating it (32 random bytes from OpenSSL's RAND_bytes, hex,
/// mode 0600 whatever the umask) when it does not exist. Throws std::runtime_error naming the
/// file when it cannot be read or made, or when it holds something other than a salt.
[[nodiscard]] std::string load_or_create_token_salt(const std::filesystem::path& state_dir);

/// The salt that token_ref() uses from now on. The runtime installs the pile's salt once its
/// state directory exists; a process-wide setting because every log line of the core that names
/// a token needs it, and threading it through every layer would put it in every signature.
void set_token_salt(std::string salt);

/// What logs and events carry for a token: mask_token(), then " #" and the first 12 hex digits
/// of token_hash() under the installed salt ("card:******BEEF #1f0c9a77e2d4"); the mask alone
/// before a salt is installed.
[[nodiscard]] std::string token_ref(std::string_view token);
/// token_hash() under the installed salt: how risk rules and their history know a user (empty
/// salt before one is installed, as in unit tests without a state directory).
[[nodiscard]] std::string user_key(std::string_view token);

}  // namespace pilecore::core
