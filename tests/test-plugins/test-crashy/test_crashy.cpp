// test-crashy: a sensor that takes the process down the ways an out-of-tree driver does: a
// segfault in a timer callback or in start(), or a callback that never returns. No exception,
// nothing the host can catch: only the watchdog, crash attribution and quarantine contain it.
#include <pilecore/pilecore.hpp>

#include <sys/mman.h>
#include <unistd.h>

namespace {
using namespace pilecore;

constexpr ConfigKey keys[] = {
    {.key = "mode", .type = ConfigType::enumeration, .default_value = "segv_callback", .allowed = "segv_callback|segv_start|hang_callback|none",
     .description = "How it misbehaves: segfault in a timer callback, segfault in start(), block the core forever in a timer callback, or not at all"},
    {.key = "after_ms", .type = ConfigType::integer, .default_value = "300", .min = 1, .max = 600000,
     .description = "Clock time from start() to the callback that misbehaves", .unit = "ms"},
};

// A store to a page that may not be written: a real fault from the MMU, as a driver bug makes,
// and not undefined behaviour that a sanitizer build would report instead of faulting.
void segfault() {
  void* page = ::mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  *static_cast<volatile int*>(page) = 42;
}

class TestCrashy final : public sensor::Sensor {
 public:
  explicit TestCrashy(Host& host) : host_(host) {}

  Status start() noexcept override {
    const auto mode = host_.config().string("mode");
    if (mode == "segv_start") segfault();
    if (mode == "none") return Status::success();
    host_.schedule(Duration(host_.config().integer("after_ms")), [this, mode] {
      if (mode == "segv_callback") segfault();
      if (mode == "hang_callback") {
        host_.log().warn("blocking the core's strand forever");
        for (;;) ::pause();
      }
    });
    return Status::success();
  }
  void stop() noexcept override {}
  [[nodiscard]] std::span<const sensor::ChannelInfo> channels() const noexcept override { return {}; }

 private:
  Host& host_;
};
}  // namespace

PILECORE_PLUGIN(TestCrashy, {.name = "test-crashy", .version = "0.0.1", .vendor = "pilecore tests", .license = "Apache-2.0",
                             .description = "Crashes or hangs pilecored on purpose (watchdog, crash attribution and quarantine tests)",
                             .config = keys})
