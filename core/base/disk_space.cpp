#include "disk_space.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/statvfs.h>

#include <cerrno>
#include <cstring>

namespace pilecore::core {

namespace {

std::string mib(std::uint64_t bytes) { return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1024.0 * 1024.0)); }

}  // namespace

std::optional<DiskSpace> disk_space(const std::filesystem::path& dir, std::string& error) {
  struct statvfs st {};
  if (::statvfs(dir.c_str(), &st) != 0) {
    error = fmt::format("statvfs {}: {}", dir.string(), std::strerror(errno));
    return std::nullopt;
  }
  const std::uint64_t unit = st.f_frsize != 0 ? st.f_frsize : st.f_bsize;
  return DiskSpace{static_cast<std::uint64_t>(st.f_bavail) * unit, static_cast<std::uint64_t>(st.f_blocks) * unit};
}

LowDiskMonitor::LowDiskMonitor(Scheduler& scheduler, std::filesystem::path dir, Duration interval, std::int64_t threshold_bytes, Probe probe,
                               Notify notify)
    : scheduler_(scheduler),
      dir_(std::move(dir)),
      interval_(interval.count() > 0 ? interval : Duration(1000)),
      threshold_(threshold_bytes < 0 ? 0 : threshold_bytes),
      probe_(std::move(probe)),
      notify_(std::move(notify)) {}

LowDiskMonitor::~LowDiskMonitor() {
  if (timer_ != 0) scheduler_.cancel(timer_);
}

void LowDiskMonitor::start() { check(); }

void LowDiskMonitor::check() {
  timer_ = 0;
  std::string error;
  last_ = probe_(error);
  if (!last_) {
    // The alarm keeps its last state: a failing statvfs says nothing about the space.
    if (!probe_failing_) spdlog::warn("cannot measure the free space of the state directory: {}", error);
    probe_failing_ = true;
  } else {
    probe_failing_ = false;
    const bool low = threshold_ > 0 && last_->free_bytes < static_cast<std::uint64_t>(threshold_);
    if (low != low_) {
      low_ = low;
      if (low) {
        spdlog::warn("state directory {}: {} free, below the {} threshold (storage.low_disk_bytes)", dir_.string(), mib(last_->free_bytes),
                     mib(static_cast<std::uint64_t>(threshold_)));
      } else {
        spdlog::info("state directory {}: {} free again, above the {} threshold", dir_.string(), mib(last_->free_bytes),
                     mib(static_cast<std::uint64_t>(threshold_)));
      }
      if (notify_) notify_(alarm(low));
    }
  }
  timer_ = scheduler_.after(interval_, [this] { check(); });
}

LowDiskAlarm LowDiskMonitor::alarm(bool active) const {
  const std::uint64_t free = last_ ? last_->free_bytes : 0;
  return {active, dir_.string(), free, threshold_,
          fmt::format("state directory {}: {} free, {} the {} threshold", dir_.string(), mib(free), active ? "below" : "above",
                      mib(static_cast<std::uint64_t>(threshold_)))};
}

DiskStatus LowDiskMonitor::status() const { return {dir_.string(), threshold_, low_, last_}; }

}  // namespace pilecore::core
