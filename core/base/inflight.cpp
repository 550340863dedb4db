#include "inflight.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace pilecore::core {
namespace {

// The one record the handler reads. `len` is zeroed while the text is rewritten, so a signal in
// the middle of an update sees "nothing in flight" rather than a torn name.
struct Slot {
  char text[InFlight::capacity];  // instance '\t' plugin '\t' call
  volatile std::sig_atomic_t len;
  volatile std::sig_atomic_t tid;  // the thread that set it
};
Slot g_slot{};
int g_fd = -1;

int this_tid() noexcept {
  // glibc does not cache gettid(); one syscall per thread is enough.
  thread_local const int tid = static_cast<int>(::syscall(SYS_gettid));
  return tid;
}

// Copies a name into the record. Tabs and newlines are the record's separators; names never
// hold them, but what a caller passes is not ours to trust blindly.
std::size_t put(char* out, std::size_t at, std::size_t cap, std::string_view s) noexcept {
  for (char ch : s) {
    if (at >= cap) break;
    out[at++] = (ch == '\t' || ch == '\n') ? ' ' : ch;
  }
  return at;
}

std::size_t put_raw(char* out, std::size_t at, std::size_t cap, std::string_view s) noexcept {
  for (char ch : s) {
    if (at >= cap) break;
    out[at++] = ch;
  }
  return at;
}

// Only async-signal-safe calls from here on (signal-safety(7)): write, getpid, syscall,
// sigaction, raise.
std::size_t put_int(char* out, std::size_t at, std::size_t cap, int v) noexcept {
  char digits[12];
  int n = 0;
  unsigned u = v < 0 ? 0u : static_cast<unsigned>(v);
  do {
    digits[n++] = static_cast<char>('0' + u % 10);
    u /= 10;
  } while (u != 0 && n < 11);
  while (n > 0 && at < cap) out[at++] = digits[--n];
  return at;
}

void on_fatal_signal(int signo, siginfo_t* info, void*) {
  const int saved_errno = errno;
  char buf[InFlight::capacity + 64];
  const std::size_t cap = sizeof buf - 1;
  std::size_t n = put_int(buf, 0, cap, signo);
  const int len = g_slot.len;
  const bool from_outside = info != nullptr && (info->si_code == SI_USER || info->si_code == SI_QUEUE) && info->si_pid != ::getpid();
  const bool on_calling_thread = static_cast<int>(::syscall(SYS_gettid)) == g_slot.tid;
  const char* kind = from_outside ? "\thang\t" : len == 0 ? "\tcore\t" : on_calling_thread ? "\tcrash\t" : "\tother_thread\t";
  n = put_raw(buf, n, cap, kind);
  for (int i = 0; i < len && n < cap; ++i) buf[n++] = g_slot.text[i];
  buf[n++] = '\n';
  if (g_fd >= 0) {
    const char* p = buf;
    std::size_t left = n;
    while (left > 0) {
      const ssize_t w = ::write(g_fd, p, left);
      if (w <= 0) break;
      p += w;
      left -= static_cast<std::size_t>(w);
    }
  }
  errno = saved_errno;
  // SA_RESETHAND restored the default action; the raised signal is delivered when the handler
  // returns (a fault would also recur), so the process dies by it and systemd sees why.
  ::raise(signo);
}

}  // namespace

InFlight::InFlight(std::string_view instance, std::string_view plugin, std::string_view call) noexcept
    : saved_len_(g_slot.len), saved_tid_(g_slot.tid) {
  std::memcpy(saved_, g_slot.text, static_cast<std::size_t>(saved_len_));
  g_slot.len = 0;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  std::size_t n = put(g_slot.text, 0, capacity, instance);
  n = put_raw(g_slot.text, n, capacity, "\t");
  n = put(g_slot.text, n, capacity, plugin);
  n = put_raw(g_slot.text, n, capacity, "\t");
  n = put(g_slot.text, n, capacity, call);
  g_slot.tid = this_tid();
  std::atomic_signal_fence(std::memory_order_seq_cst);
  g_slot.len = static_cast<std::sig_atomic_t>(n);
}

InFlight::~InFlight() {
  g_slot.len = 0;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  std::memcpy(g_slot.text, saved_, static_cast<std::size_t>(saved_len_));
  g_slot.tid = saved_tid_;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  g_slot.len = saved_len_;
}

void install_crash_handler(const std::filesystem::path& file) {
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error("cannot open " + file.string() + " for crash attribution: " + std::strerror(errno));
  if (g_fd >= 0) ::close(g_fd);
  g_fd = fd;
  // A plugin that recurses without end overflows the stack; the handler needs a stack of its own.
  static char alt_stack[64 * 1024];
  stack_t ss{};
  ss.ss_sp = alt_stack;
  ss.ss_size = sizeof alt_stack;
  ::sigaltstack(&ss, nullptr);
  struct sigaction sa{};
  sa.sa_sigaction = on_fatal_signal;
  sa.sa_flags = SA_SIGINFO | SA_RESETHAND | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  for (int signo : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT}) ::sigaction(signo, &sa, nullptr);
}

std::optional<InFlightReport> take_crash_report(const std::filesystem::path& file) {
  std::string text;
  {
    std::ifstream in(file, std::ios::binary);
    if (!in) return std::nullopt;
    std::ostringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  std::error_code ec;
  std::filesystem::remove(file, ec);
  if (text.empty()) return std::nullopt;
  InFlightReport r;
  std::vector<std::string> parts;
  std::string line = text.substr(0, text.find('\n'));
  std::size_t start = 0;
  for (;;) {
    const auto tab = line.find('\t', start);
    parts.push_back(line.substr(start, tab == std::string::npos ? std::string::npos : tab - start));
    if (tab == std::string::npos) break;
    start = tab + 1;
  }
  if (parts.size() < 2) {
    r.kind = "unreadable";
    return r;
  }
  try {
    r.signal = std::stoi(parts[0]);
  } catch (const std::exception&) {
    r.kind = "unreadable";
    return r;
  }
  r.kind = parts[1];
  if (parts.size() >= 5) {
    r.instance = parts[2];
    r.plugin = parts[3];
    r.call = parts[4];
  }
  return r;
}

std::string signal_name(int signo) {
  switch (signo) {
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGILL: return "SIGILL";
    case SIGFPE: return "SIGFPE";
    case SIGABRT: return "SIGABRT";
    default: return "signal " + std::to_string(signo);
  }
}

}  // namespace pilecore::core
