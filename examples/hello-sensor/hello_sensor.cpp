// hello-sensor: the example third-party plugin. It reads a Linux thermal zone (on an RK3568
// board, /sys/class/thermal/thermal_zone0/temp holds the SoC temperature in millidegrees) and
// publishes it as the channel "soc_temperature". It shows the whole plugin contract: declared
// configuration and its deep validation, a timer on the host clock, samples, alarms and health
// reports.
#include <pilecore/pilecore.hpp>

#include <array>
#include <fstream>
#include <string>

namespace {

using namespace pilecore;

constexpr ConfigKey keys[] = {
    {.key = "path", .type = ConfigType::string, .default_value = "/sys/class/thermal/thermal_zone0/temp",
     .description = "File holding the temperature as an integer"},
    {.key = "divisor", .type = ConfigType::integer, .default_value = "1000", .min = 1, .max = 1000000,
     .description = "What the file's integer is divided by to give degrees Celsius (1000 for millidegrees)"},
    {.key = "interval_ms", .type = ConfigType::integer, .default_value = "5000", .min = 100, .max = 3600000,
     .description = "Time between readings", .unit = "ms"},
    {.key = "alarm_above_c", .type = ConfigType::number, .default_value = "85", .min = -40, .max = 150,
     .description = "Raise the alarm hello.overheat above this temperature", .unit = "degC"},
};

class HelloSensor final : public sensor::Sensor {
 public:
  // The configuration is already validated: every key with a default has a value.
  explicit HelloSensor(Host& host)
      : host_(host),
        path_(host.config().string("path")),
        divisor_(host.config().integer("divisor")),
        interval_(host.config().integer("interval_ms")),
        alarm_above_(host.config().number("alarm_above_c")),
        channels_{{{"soc_temperature", "degC", 1000.0 / static_cast<double>(interval_.count())}}} {}

  // What the declarations cannot say, checked by `pilectl config validate` and pilecored before
  // anything starts, and reported at the key's line and column in the site file. The file itself
  // may appear later (a driver loaded after boot), so only its form is checked here.
  static void validate(const ConfigValues& config, ConfigReport& report) {
    const std::string path = config.string("path");
    if (path.empty() || path.front() != '/') report.error("path", "'" + path + "' is not an absolute path; write the full path, e.g. /sys/class/thermal/thermal_zone0/temp");
  }

  Status start() noexcept override {
    read();
    return Status::success();
  }

  void stop() noexcept override { host_.cancel(timer_); }

  [[nodiscard]] std::span<const sensor::ChannelInfo> channels() const noexcept override { return channels_; }

 private:
  // Runs on the core's strand: quick file reads only. A slow device would get its own thread
  // and hand results back with host_.post().
  void read() {
    std::ifstream in(path_);
    long long raw = 0;
    if (in >> raw) {
      const double celsius = static_cast<double>(raw) / static_cast<double>(divisor_);
      host_.publish({.channel = "soc_temperature", .unit = "degC", .value = celsius, .time = host_.clock().now()});
      host_.report_state("up", path_);
      const bool hot = celsius > alarm_above_;
      if (hot != overheated_) {
        overheated_ = hot;
        host_.raise({.severity = AlarmSeverity::warning, .code = "hello.overheat", .message = "temperature above the alarm level", .active = hot});
      }
    } else {
      host_.report_state("down", "cannot read " + path_);
    }
    timer_ = host_.schedule(interval_, [this] { read(); });
  }

  Host& host_;
  std::string path_;
  std::int64_t divisor_;
  Duration interval_;
  double alarm_above_;
  std::array<sensor::ChannelInfo, 1> channels_;
  TimerId timer_ = 0;
  bool overheated_ = false;
};

}  // namespace

PILECORE_PLUGIN(HelloSensor, {.name = "hello-sensor", .version = "1.0.0", .vendor = "Example Vendor", .license = "MIT",
                              .description = "Reads a Linux thermal zone (example out-of-tree plugin)", .config = keys})
