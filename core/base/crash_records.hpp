// The crash records of plugin instances and their quarantine, kept in a small JSON file in the
// state directory (plugin-crashes.json). pilecored adds a record at start when the previous
// process died inside a plugin call (inflight.hpp) and quarantines an instance that crashed it
// `limit` times within `window`; `pilectl plugins enable` clears an instance's records. A file
// of its own, not the database: pilectl edits it with the daemon stopped or running, and it must
// be readable even when the database is what is broken.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "pilecore/clock.hpp"

namespace pilecore::core {

struct CrashPolicy {
  int limit = 3;                                   // crashes within `window` that quarantine
  Duration window = std::chrono::minutes(10);
};

struct CrashEntry {
  std::int64_t time_ms = 0;  // Unix milliseconds, from the daemon's clock
  std::string call;
  std::string kind;  // "crash" or "hang"
  int signal = 0;
};

struct InstanceCrashes {
  std::string plugin;
  std::vector<CrashEntry> crashes;  // oldest first, only those within the window when last counted
  bool quarantined = false;
  std::string reason;  // why it is quarantined
  std::int64_t since_ms = 0;
};

class CrashBook {
 public:
  /// Reads `file`; a missing file is an empty book. Throws std::runtime_error naming the file
  /// when it exists but is not a crash book (the caller decides whether that stops a start).
  explicit CrashBook(std::filesystem::path file);

  /// Adds a crash of `instance` at `now`, forgets its crashes older than the window, and
  /// quarantines it when `policy.limit` remain. Returns the number within the window.
  int record(const std::string& instance, const std::string& plugin, const CrashEntry& entry, const CrashPolicy& policy, TimePoint now);
  /// Forgets every record of `instance`; false when it had none.
  bool clear(const std::string& instance);
  /// Writes the file atomically (a temporary file renamed over it), owned like its directory.
  void save() const;

  [[nodiscard]] bool quarantined(const std::string& instance) const;
  [[nodiscard]] const std::map<std::string, InstanceCrashes>& instances() const { return entries_; }
  [[nodiscard]] const std::filesystem::path& file() const { return file_; }

 private:
  std::filesystem::path file_;
  std::map<std::string, InstanceCrashes> entries_;
};

/// "3 crashes in 10 min": the policy's window in words, for log lines and the status.
std::string describe_window(Duration window);

}  // namespace pilecore::core
