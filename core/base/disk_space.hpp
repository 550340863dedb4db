// Low disk is an alarm before it is an outage (issue #10): the free space of the state
// directory's file system, checked every interval on the core's scheduler. Below the threshold
// `storage.low_disk` is raised with the bytes free and the threshold; above it, cleared. A full
// disk itself is handled where a write fails (checkpoint_health.hpp, the session close).
#pragma once


#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include "scheduler.hpp"

namespace pilecore::core {

struct DiskSpace {
  std::uint64_t free_bytes = 0;   ///< available to an unprivileged writer (statvfs f_bavail)
  std::uint64_t total_bytes = 0;
};

/// statvfs of `dir`; nullopt with `error` set when it fails.
std::optional<DiskSpace> disk_space(const std::filesystem::path& dir, std::string& error);

/// storage.low_disk raised (below the threshold) or cleared.
struct LowDiskAlarm {
  bool active = true;
  std::string path;
  std::uint64_t free_bytes = 0;
  std::int64_t threshold_bytes = 0;
  std::string message;
};

/// For `status`: the state directory's space and the alarm's threshold.
struct DiskStatus {
  std::string path;
  std::int64_t threshold_bytes = 0;
  bool low = false;
  std::optional<DiskSpace> space;  ///< none before the first successful probe
};

class LowDiskMonitor {
 public:
  /// The free space now (statvfs in the daemon; a test's own figures in unit tests).
  using Probe = std::function<std::optional<DiskSpace>(std::string& error)>;
  /// Gets each storage.low_disk alarm event: raised, and cleared.
  using Notify = std::function<void(const LowDiskAlarm& alarm)>;

  /// `threshold_bytes` 0 disables the alarm (the space is still measured for the status).
  LowDiskMonitor(Scheduler& scheduler, std::filesystem::path dir, Duration interval, std::int64_t threshold_bytes, Probe probe, Notify notify);
  ~LowDiskMonitor();
  LowDiskMonitor(const LowDiskMonitor&) = delete;
  LowDiskMonitor& operator=(const LowDiskMonitor&) = delete;

  /// Checks now, then every interval, until destroyed.
  void start();
  [[nodiscard]] bool low() const { return low_; }
  [[nodiscard]] const std::optional<DiskSpace>& last() const { return last_; }
  [[nodiscard]] DiskStatus status() const;

 private:
  void check();
  [[nodiscard]] LowDiskAlarm alarm(bool active) const;

  Scheduler& scheduler_;
  std::filesystem::path dir_;
  Duration interval_;
  std::int64_t threshold_;
  Probe probe_;
  Notify notify_;
  TimerId timer_ = 0;
  bool low_ = false;
  bool probe_failing_ = false;
  std::optional<DiskSpace> last_;
};

}  // namespace pilecore::core
