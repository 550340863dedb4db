// bench-meter: a meter that answers at once, for bench/session only (built outside the production
// plugin directory, never installed). refresh() publishes the energy_import register with one
// post() to the core's strand, as a driver thread hands a reading back; it never waits for a
// device, so what bench/session measures around a meter read is the core's own handling of it.
// The register advances by `wh_per_read` at each reading, so a session has some energy to bill.
// With `publish_every_ms` it also publishes on its own timer, as a meter polled by its driver
// does, so bench/strand's sessions checkpoint while they charge.
#include <pilecore/pilecore.hpp>

#include <array>

namespace {

using namespace pilecore;

constexpr ConfigKey keys[] = {
    {.key = "meter_start_wh", .type = ConfigType::integer, .default_value = "1000000", .min = 0, .max = 1e12,
     .description = "Register at start", .unit = "Wh"},
    {.key = "wh_per_read", .type = ConfigType::integer, .default_value = "10", .min = 0, .max = 1000000,
     .description = "How much the register advances at each reading", .unit = "Wh"},
    {.key = "publish_every_ms", .type = ConfigType::integer, .default_value = "0", .min = 0, .max = 60000,
     .description = "Also publish (and advance) on a timer this often; 0 = only when asked", .unit = "ms"},
};

class BenchMeter final : public sensor::Sensor {
 public:
  explicit BenchMeter(Host& host)
      : host_(host), wh_(host.config().integer("meter_start_wh")), step_(host.config().integer("wh_per_read")),
        every_(host.config().integer("publish_every_ms")), channels_{{{"energy_import", "Wh", 1}}} {}

  Status start() noexcept override {
    publish();
    if (every_ > 0) tick();
    host_.report_state("up", "bench meter: answers refresh() at once");
    return Status::success();
  }
  void stop() noexcept override {
    if (timer_ != 0) host_.cancel(timer_);
    timer_ = 0;
  }
  [[nodiscard]] std::span<const sensor::ChannelInfo> channels() const noexcept override { return channels_; }
  void refresh() noexcept override {
    host_.post([this] {
      wh_ += step_;
      publish();
    });
  }

 private:
  void tick() {
    timer_ = host_.schedule(std::chrono::milliseconds(every_), [this] {
      wh_ += step_;
      publish();
      tick();
    });
  }
  void publish() {
    host_.publish({.channel = "energy_import", .unit = "Wh", .value = static_cast<double>(wh_), .time = host_.clock().now()});
  }

  Host& host_;
  std::int64_t wh_;
  std::int64_t step_;
  std::int64_t every_;
  TimerId timer_ = 0;
  std::array<sensor::ChannelInfo, 1> channels_;
};

}  // namespace

PILECORE_PLUGIN(BenchMeter, {.name = "bench-meter", .version = "1.0.0", .vendor = "pilecore", .license = "Apache-2.0",
                             .description = "A meter that answers at once (bench/session only)", .config = keys})
