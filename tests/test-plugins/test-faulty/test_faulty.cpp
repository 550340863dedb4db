// test-faulty: a sensor whose driver fails after a while, the way a real driver does when a
// device misbehaves: by throwing from a timer callback, or from work posted by its own thread.
#include <pilecore/pilecore.hpp>

#include <atomic>
#include <stdexcept>
#include <thread>

namespace {
using namespace pilecore;

constexpr ConfigKey keys[] = {
    {.key = "fail_after_ms", .type = ConfigType::integer, .default_value = "50", .min = 1, .max = 60000,
     .description = "Clock time before the driver fails", .unit = "ms"},
    {.key = "mode", .type = ConfigType::enumeration, .default_value = "timer", .allowed = "timer|thread",
     .description = "Where the failure surfaces: a host timer callback, or a function posted from a driver thread"},
};

class TestFaulty final : public sensor::Sensor {
 public:
  explicit TestFaulty(Host& host) : host_(host) {}
  ~TestFaulty() override { join(); }

  Status start() noexcept override {
    const Duration after(host_.config().integer("fail_after_ms"));
    if (host_.config().string("mode") == "timer") {
      host_.schedule(after, [] { throw std::runtime_error("simulated driver failure in a timer"); });
    } else {
      const auto real = std::chrono::milliseconds(static_cast<std::int64_t>(static_cast<double>(after.count()) / host_.clock().speed()) + 1);
      thread_ = std::thread([this, real] {
        std::this_thread::sleep_for(real);
        host_.post([] { throw std::runtime_error("simulated driver failure posted from a thread"); });
      });
    }
    return Status::success();
  }
  void stop() noexcept override {
    stopped_ = true;
    join();
  }
  [[nodiscard]] std::span<const sensor::ChannelInfo> channels() const noexcept override { return {}; }

 private:
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  Host& host_;
  std::thread thread_;
  std::atomic<bool> stopped_{false};
};
}  // namespace

PILECORE_PLUGIN(TestFaulty, {.name = "test-faulty", .version = "0.0.1", .vendor = "pilecore tests", .license = "Apache-2.0",
                             .description = "Fails at run time on purpose (containment tests)", .config = keys})
