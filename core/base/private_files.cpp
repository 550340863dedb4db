#include "private_files.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace pilecore::core {
namespace fs = std::filesystem;

std::string ensure_private_directory(const fs::path& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) throw std::runtime_error(fmt::format("{}: exists and is not a directory", dir.string()));
    if ((st.st_mode & S_IRWXO) != 0) {
      return fmt::format("{} is open to every local user (mode {:04o}); it holds the database and keys: chmod o-rwx {}", dir.string(),
                         st.st_mode & 07777, dir.string());
    }
    return {};
  }
  std::error_code ec;
  if (dir.has_parent_path()) fs::create_directories(dir.parent_path(), ec);
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    throw std::runtime_error(fmt::format("cannot create the directory {}: {}", dir.string(), std::strerror(errno)));
  }
  // mkdir's mode passes through the umask, which can only take bits away: a umask of 0077 is
  // harmless, but 0700 would leave the owner locked out. Set it exactly.
  if (::chmod(dir.c_str(), 0700) != 0) throw std::runtime_error(fmt::format("cannot make {} owner-only: {}", dir.string(), std::strerror(errno)));
  return {};
}

void ensure_private_file(const fs::path& file) {
  bool created = true;
  int fd = ::open(file.c_str(), O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0 && errno == EEXIST) {
    created = false;
    fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  }
  if (fd < 0) throw std::runtime_error(fmt::format("{}: cannot open: {}", file.string(), std::strerror(errno)));
  struct stat st {};
  int rc = ::fstat(fd, &st);
  // A new file gets exactly 0600 (open's mode passed through the umask); an existing one that
  // is ours loses its group and other bits. Someone else's file (root's, in a shared
  // directory) is left alone: chmod would fail anyway.
  const mode_t want = created ? 0600 : (st.st_mode & S_IRWXU);
  if (rc == 0 && st.st_uid == ::geteuid() && (st.st_mode & 07777) != want) rc = ::fchmod(fd, want);
  const int e = errno;
  ::close(fd);
  if (rc != 0) throw std::runtime_error(fmt::format("{}: cannot make it owner-only: {}", file.string(), std::strerror(e)));
}

}  // namespace pilecore::core
