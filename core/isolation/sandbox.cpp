#include "sandbox.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/stat.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/landlock.h>
#include <linux/securebits.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace pilecore::core::isolation {

std::optional<std::pair<uid_t, gid_t>> sandbox_user(const std::string& instance_state_dir) {
  if (::geteuid() != 0) return std::nullopt;
  struct stat st {};
  const std::string daemon_dir = instance_state_dir + "/../..";
  if (::stat(daemon_dir.c_str(), &st) != 0 || st.st_uid == 0) return std::nullopt;
  return std::make_pair(st.st_uid, st.st_gid);
}

namespace {

std::string drop_capabilities() {
  for (int cap = 0; cap <= 63; ++cap) {
    if (::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno == EINVAL) break;
  }
  if (::prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP | SECBIT_NO_SETUID_FIXUP_LOCKED |
                                     SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED) != 0) {
    return fmt::format("PR_SET_SECUREBITS: {}", std::strerror(errno));
  }
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  if (::syscall(SYS_capset, &header, data) != 0) return fmt::format("capset: {}", std::strerror(errno));
  return {};
}

}  // namespace

namespace {

constexpr std::uint64_t fs_read = LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR;
constexpr std::uint64_t fs_exec = LANDLOCK_ACCESS_FS_EXECUTE;
constexpr std::uint64_t fs_write_v1 = LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_REMOVE_DIR | LANDLOCK_ACCESS_FS_REMOVE_FILE |
                                      LANDLOCK_ACCESS_FS_MAKE_CHAR | LANDLOCK_ACCESS_FS_MAKE_DIR | LANDLOCK_ACCESS_FS_MAKE_REG |
                                      LANDLOCK_ACCESS_FS_MAKE_SOCK | LANDLOCK_ACCESS_FS_MAKE_FIFO | LANDLOCK_ACCESS_FS_MAKE_BLOCK |
                                      LANDLOCK_ACCESS_FS_MAKE_SYM;
constexpr std::uint64_t file_rights = LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_EXECUTE
#ifdef LANDLOCK_ACCESS_FS_TRUNCATE
                                      | LANDLOCK_ACCESS_FS_TRUNCATE
#endif
    ;

/// Adds `path` with `rights` (only those a file can have when it is not a directory). A path
/// that does not exist is skipped: /lib64 is not on every system.
bool allow(int ruleset, const std::string& path, std::uint64_t rights, std::uint64_t handled, std::string& error) {
  const int fd = ::open(path.c_str(), O_PATH | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && !S_ISDIR(st.st_mode)) rights &= file_rights;
  landlock_path_beneath_attr attr{};
  attr.allowed_access = rights & handled;
  attr.parent_fd = fd;
  const long r = ::syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &attr, 0);
  const int saved = errno;
  ::close(fd);
  if (r != 0) {
    error = fmt::format("landlock_add_rule({}): {}", path, std::strerror(saved));
    return false;
  }
  return true;
}

}  // namespace

SandboxOutcome enter_sandbox(const SandboxPlan& plan) {
  SandboxOutcome out;
  std::vector<std::string> held;
  if (auto user = sandbox_user(plan.state_dir)) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(user->second) != 0 || ::setuid(user->first) != 0) {
      out.error = fmt::format("cannot drop root to uid {}: {}", user->first, std::strerror(errno));
      return out;
    }
    if (::setuid(0) == 0) {
      out.error = "dropped root, yet could take it back";
      return out;
    }
    held.push_back(fmt::format("uid {}", user->first));
  } else if (::geteuid() == 0) {
    if (auto err = drop_capabilities(); !err.empty()) {
      out.error = fmt::format("cannot give up root's capabilities: {}", err);
      return out;
    }
    held.push_back("uid 0 without capabilities");
  }
  ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  held.push_back("no_new_privs");

  const long abi = ::syscall(SYS_landlock_create_ruleset, nullptr, 0, LANDLOCK_CREATE_RULESET_VERSION);
  if (abi < 1) {
    out.warnings.push_back(fmt::format("this kernel has no Landlock ({}); the plugin's process may read and write wherever its user may",
                                       std::strerror(errno)));
    held.push_back("no landlock");
    out.summary = fmt::format("{}", fmt::join(held, ", "));
    return out;
  }
  std::uint64_t handled = fs_read | fs_exec | fs_write_v1;
  if (abi >= 2) handled |= LANDLOCK_ACCESS_FS_REFER;
#ifdef LANDLOCK_ACCESS_FS_TRUNCATE
  if (abi >= 3) handled |= LANDLOCK_ACCESS_FS_TRUNCATE;
#endif
  landlock_ruleset_attr attr{};
  attr.handled_access_fs = handled;
  const int ruleset = static_cast<int>(::syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0));
  if (ruleset < 0) {
    out.error = fmt::format("landlock_create_ruleset: {}", std::strerror(errno));
    return out;
  }
  const std::uint64_t all = handled;
  std::string error;
  bool ok = allow(ruleset, plan.state_dir, all, handled, error) && allow(ruleset, plan.plugin_dir, fs_read | fs_exec, handled, error);
  for (const char* p : {"/usr", "/lib", "/lib64", "/etc/ld.so.cache", "/etc/localtime", "/usr/share/zoneinfo", "/etc/ssl", "/etc/hosts",
                        "/etc/resolv.conf", "/etc/nsswitch.conf", "/etc/passwd", "/proc/self", "/dev/urandom", "/sys/devices/system/cpu"}) {
    ok = ok && allow(ruleset, p, fs_read | fs_exec, handled, error);
  }
  ok = ok && allow(ruleset, "/dev/null", fs_read | LANDLOCK_ACCESS_FS_WRITE_FILE, handled, error);
  for (const auto& p : plan.paths) ok = ok && allow(ruleset, p, all, handled, error);
  if (ok && ::syscall(SYS_landlock_restrict_self, ruleset, 0) != 0) {
    error = fmt::format("landlock_restrict_self: {}", std::strerror(errno));
    ok = false;
  }
  ::close(ruleset);
  if (!ok) {
    out.error = error;
    return out;
  }
  held.push_back(fmt::format("landlock abi {}: writes only in {}", abi, plan.state_dir));
  out.summary = fmt::format("{}", fmt::join(held, ", "));
  return out;
}

}  // namespace pilecore::core::isolation
