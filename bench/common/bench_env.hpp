// What the benchmarks print about where and when they ran: the file system a directory is on
// (an fsync on tmpfs costs nothing) and the load average (this machine is shared and noisy).
#pragma once

#include <sys/statfs.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace pilecore::bench {

inline std::string fs_type(const std::filesystem::path& dir) {
  struct statfs s {};
  if (::statfs(dir.c_str(), &s) != 0) return "?";
  switch (static_cast<unsigned long>(s.f_type)) {
    case 0xEF53: return "ext4";
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    case 0x01021994: return "tmpfs (no real fsync)";
    case 0x794c7630: return "overlayfs";
    case 0xF2F52010: return "f2fs";
    default: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "0x%lx", static_cast<unsigned long>(s.f_type));
      return buf;
    }
  }
}

inline std::string loadavg() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

}  // namespace pilecore::bench
