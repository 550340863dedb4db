// sim-sensor: a simulated temperature and humidity module (the XY-MD02 class of device), with a
// bounded random walk so a site has live readings without hardware.
#include <pilecore/pilecore.hpp>

#include <algorithm>
#include <random>

namespace {

using namespace pilecore;

constexpr ConfigKey keys[] = {
    {.key = "interval_ms", .type = ConfigType::integer, .default_value = "1000", .min = 10, .max = 3600000,
     .description = "Time between samples (host clock); 10 ms is the 100 Hz maximum", .unit = "ms"},
    {.key = "temperature_c", .type = ConfigType::number, .default_value = "25", .min = -40, .max = 85,
     .description = "Temperature the simulated module starts at", .unit = "degC"},
    {.key = "humidity_pct", .type = ConfigType::number, .default_value = "50", .min = 0, .max = 100,
     .description = "Relative humidity the simulated module starts at", .unit = "%RH"},
    {.key = "step", .type = ConfigType::number, .default_value = "0.1", .min = 0, .max = 10,
     .description = "Largest change of either reading between two samples"},
    {.key = "seed", .type = ConfigType::integer, .default_value = "1", .min = 0, .max = 4294967295.0,
     .description = "Random seed, so a run can be repeated"},
};

class SimSensor final : public sensor::Sensor {
 public:
  explicit SimSensor(Host& host)
      : host_(host),
        interval_(host.config().integer("interval_ms")),
        temperature_(host.config().number("temperature_c")),
        humidity_(host.config().number("humidity_pct")),
        step_(host.config().number("step")),
        rng_(static_cast<std::uint32_t>(host.config().integer("seed"))),
        channels_{{{"temperature", "degC", 1000.0 / static_cast<double>(interval_.count())},
                   {"humidity", "%RH", 1000.0 / static_cast<double>(interval_.count())}}} {}

  Status start() noexcept override {
    host_.report_state("up", "simulated");
    arm();
    return Status::success();
  }
  void stop() noexcept override {
    host_.cancel(timer_);
    timer_ = 0;
  }
  [[nodiscard]] std::span<const sensor::ChannelInfo> channels() const noexcept override { return channels_; }

 private:
  void arm() {
    timer_ = host_.schedule(interval_, [this] { tick(); });
  }
  void tick() {
    std::uniform_real_distribution<double> d(-step_, step_);
    temperature_ = std::clamp(temperature_ + d(rng_), -40.0, 85.0);
    humidity_ = std::clamp(humidity_ + d(rng_), 0.0, 100.0);
    const TimePoint now = host_.clock().now();
    host_.publish({.channel = "temperature", .unit = "degC", .value = temperature_, .time = now});
    host_.publish({.channel = "humidity", .unit = "%RH", .value = humidity_, .time = now});
    arm();
  }

  Host& host_;
  Duration interval_;
  double temperature_;
  double humidity_;
  double step_;
  std::mt19937 rng_;
  std::array<sensor::ChannelInfo, 2> channels_;
  TimerId timer_ = 0;
};

}  // namespace

PILECORE_PLUGIN(SimSensor, {.name = "sim-sensor", .version = "0.1.0", .vendor = "pilecore", .license = "Apache-2.0",
                            .description = "Simulated temperature and humidity module", .config = keys})
