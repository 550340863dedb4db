#include "token_privacy.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <mutex>

#include "crypto.hpp"

namespace pilecore::core {
namespace {

constexpr std::size_t kSaltBytes = 32;
constexpr std::size_t kShown = 4;
constexpr std::size_t kShowFrom = 8;  // ids shorter than this show nothing: half must stay hidden

std::mutex salt_mutex;
std::string installed_salt;

bool is_hex_salt(const std::string& s) {
  return s.size() == 2 * kSaltBytes && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

}  // namespace

std::string mask_token(std::string_view token) {
  std::string_view prefix, id = token;
  if (const auto colon = token.find(':'); colon != std::string_view::npos && colon > 0 && colon <= 16) {
    prefix = token.substr(0, colon + 1);
    id = token.substr(colon + 1);
  }
  std::string out(prefix);
  if (id.size() >= kShowFrom) {
    out.append(id.size() - kShown, '*');
    out.append(id.substr(id.size() - kShown));
  } else {
    // The length of a short id says little, but a fixed width says nothing.
    out.append(kShown, '*');
  }
  return out;
}

std::string token_hash(std::string_view salt, std::string_view token) {
  std::string input;
  input.reserve(salt.size() + token.size());
  input.append(salt).append(token);
  return to_hex(digest(HashAlgorithm::sha256, as_bytes(input)));
}

std::string load_or_create_token_salt(const std::filesystem::path& state_dir) {
  const std::filesystem::path file = state_dir / "token-salt";
  if (std::ifstream in{file}; in) {
    std::string salt;
    std::getline(in, salt);
    if (!is_hex_salt(salt)) {
      throw std::runtime_error(fmt::format("{}: not a token salt ({} hex digits expected); move it away and a new one is made", file.string(), 2 * kSaltBytes));
    }
    return salt;
  }
  unsigned char raw[kSaltBytes];
  if (RAND_bytes(raw, sizeof raw) != 1) throw std::runtime_error(fmt::format("{}: no random bytes from OpenSSL for the token salt", file.string()));
  const std::string salt = to_hex(ByteView(raw, sizeof raw));
  // O_EXCL: two daemons starting on one state directory must not end with different salts.
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == EEXIST) return load_or_create_token_salt(state_dir);
    throw std::runtime_error(fmt::format("{}: cannot create the token salt: {}", file.string(), std::strerror(errno)));
  }
  const std::string line = salt + "\n";
  const bool ok = ::fchmod(fd, 0600) == 0 && ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()) && ::fsync(fd) == 0;
  const int e = errno;
  ::close(fd);
  if (!ok) {
    ::unlink(file.c_str());
    throw std::runtime_error(fmt::format("{}: cannot write the token salt: {}", file.string(), std::strerror(e)));
  }
  return salt;
}

void set_token_salt(std::string salt) {
  std::lock_guard lock(salt_mutex);
  installed_salt = std::move(salt);
}

std::string token_ref(std::string_view token) {
  std::string salt;
  {
    std::lock_guard lock(salt_mutex);
    salt = installed_salt;
  }
  if (salt.empty()) return mask_token(token);
  return fmt::format("{} #{}", mask_token(token), token_hash(salt, token).substr(0, 12));
}

std::string user_key(std::string_view token) {
  std::string salt;
  {
    std::lock_guard lock(salt_mutex);
    salt = installed_salt;
  }
  return token_hash(salt, token);
}

}  // namespace pilecore::core
