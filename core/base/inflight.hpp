// Crash attribution: which plugin instance the core is calling, kept where a fatal-signal
// handler can write it out with async-signal-safe calls only, so the next start can say which
// instance took pilecored down and count it (see crash_records.hpp).
//
// Every call from the core into a plugin (create, start, stop, destroy, callbacks the host runs
// for it, the session engine's calls into payment, power, strategy...) is wrapped in an
// InFlight marker:
//
//   { InFlight mark(instance_name, "capture"); method->capture(...); }
//
// Markers nest (a plugin that calls back into the core, which calls another plugin) and restore
// the outer one when they end. The marker is one preallocated record, not a heap structure: the
// handler reads it while the process is broken, and setting it costs two small copies.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace pilecore::core {

class InFlight {
 public:
  /// `call` names what the core asked for ("start", "a timer callback", "capture"); `plugin` is
  /// the plugin's name when the caller knows it (the next start looks it up otherwise).
  InFlight(std::string_view instance, std::string_view call) noexcept : InFlight(instance, {}, call) {}
  InFlight(std::string_view instance, std::string_view plugin, std::string_view call) noexcept;
  ~InFlight();
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;

  static constexpr std::size_t capacity = 232;

 private:
  char saved_[capacity];
  int saved_len_;
  int saved_tid_;
};

/// What the handler wrote: the signal and what was in flight when it came.
struct InFlightReport {
  int signal = 0;
  /// "crash": a fault on the thread making the call; "hang": the signal came from outside
  /// (systemd's watchdog sends SIGABRT) while the call was in flight; "other_thread": a fault
  /// on a thread that was not making a plugin call (a plugin's own thread, or the core's).
  std::string kind;
  std::string instance;  // empty when nothing was in flight
  std::string plugin;    // empty when the marker did not name it
  std::string call;
};

/// Installs the handler for SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGABRT: it writes the marker to
/// `file` (opened now, so the handler needs no allocation or path lookup), then lets the signal
/// take its default action (core dump, exit by signal). Call once, on the thread that will run
/// the event loop: that thread also gets an alternate signal stack, so a stack overflow in a
/// plugin is attributed too. Throws std::runtime_error when the file cannot be opened.
void install_crash_handler(const std::filesystem::path& file);

/// Reads and removes the report a previous process left in `file`; nullopt when there is none
/// (a clean stop, or a SIGKILL, which no handler sees). A torn or foreign file yields a report
/// with kind "unreadable" rather than an exception: the start must go on.
std::optional<InFlightReport> take_crash_report(const std::filesystem::path& file);

/// The human wording of a signal ("SIGSEGV"), for the log line.
std::string signal_name(int signo);

}  // namespace pilecore::core
