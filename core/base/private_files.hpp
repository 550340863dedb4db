// Owner-only files and directories whatever the umask: the state directory holds the database
// (user tokens, payment references), the token salt and the device key. A umask of 022 outside
// systemd made them 0755 and 0644, readable by every local user.
#pragma once

#include <filesystem>
#include <string>

namespace pilecore::core {

/// Creates `dir` (and missing parents; only the last one is made owner-only) with mode 0700.
/// A directory that already exists keeps its mode, which the site chose (systemd's
/// StateDirectoryMode=0750 lets the pilecore group in); the return value then names a problem
/// when other users (the "other" bits) can reach it, empty otherwise. Throws
/// std::runtime_error naming the directory when it cannot be made.
std::string ensure_private_directory(const std::filesystem::path& dir);

/// Creates `file` empty with mode 0600 when it does not exist, and takes the group and other
/// bits off it when it does and belongs to this user. Throws std::runtime_error naming the file
/// on failure. SQLite gives a database's -wal and -shm files the mode of the database file, so
/// calling this on the database before opening it covers them too.
void ensure_private_file(const std::filesystem::path& file);

}  // namespace pilecore::core
