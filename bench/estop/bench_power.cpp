// bench-power: a power stage that stamps each contactor-open call, for bench/estop only (built
// outside the production plugin directory, never installed). open_contactor() writes the
// CLOCK_MONOTONIC time of the call, 8 bytes, to the pipe named by `stamp_fd` (in process: the
// benchmark's own descriptor), so the benchmark sees the instant the core's emergency stop reached
// the power stage, with nothing of the power stage's own work after it. A vehicle is plugged and
// ready from the start, as on a charging connector.
#include <pilecore/pilecore.hpp>

#include <time.h>
#include <unistd.h>

#include <cstdint>

namespace {

using namespace pilecore;

constexpr ConfigKey keys[] = {
    {.key = "stamp_fd", .type = ConfigType::integer, .default_value = "-1", .min = -1, .max = 65535,
     .description = "The descriptor each contactor-open call writes its CLOCK_MONOTONIC time to (nanoseconds, 8 bytes); -1: none"},
};

class BenchPower final : public power::PowerStage {
 public:
  explicit BenchPower(Host& host) : host_(host), fd_(static_cast<int>(host.config().integer("stamp_fd"))) {}

  Status start() noexcept override {
    host_.report_state("up", "bench power stage: stamps contactor-open calls");
    return Status::success();
  }
  void stop() noexcept override {}
  void set_event_sink(power::EventSink sink) noexcept override { sink_ = std::move(sink); }
  Status close_contactor() noexcept override {
    closed_ = true;
    return Status::success();
  }
  Status open_contactor() noexcept override {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    closed_ = false;
    if (fd_ >= 0) {
      const std::int64_t ns = static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
      // Never blocks (the pipe is non-blocking): a stamp lost to a full pipe is a stop the
      // benchmark counts as missed.
      if (::write(fd_, &ns, sizeof ns) != static_cast<ssize_t>(sizeof ns)) return Status::success();
    }
    return Status::success();
  }
  Status set_power_limit(std::int64_t watts) noexcept override {
    limit_w_ = watts;
    return Status::success();
  }
  [[nodiscard]] power::VehicleStatus vehicle() const noexcept override { return {.soc_percent = 50.0, .battery_temperature_c = 25.0, .power_w = closed_ ? limit_w_ : 0}; }

 private:
  Host& host_;
  int fd_;
  power::EventSink sink_;
  bool closed_ = false;
  std::int64_t limit_w_ = 0;
};

}  // namespace

PILECORE_PLUGIN(BenchPower, {.name = "bench-power", .version = "1.0.0", .vendor = "pilecore", .license = "Apache-2.0",
                             .description = "A power stage that stamps contactor-open calls (bench/estop only)", .config = keys})
