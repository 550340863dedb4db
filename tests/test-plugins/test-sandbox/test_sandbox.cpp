// test-sandbox: a sensor that tries, in start(), to write a file in its state directory and one
// outside it, and says what happened through report_state. Isolated, the second write must be
// refused by the sandbox; in-process nothing stops it (the control case).
#include <pilecore/pilecore.hpp>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

namespace {
using namespace pilecore;

constexpr ConfigKey keys[] = {
    {.key = "outside", .type = ConfigType::string, .required = true, .description = "A file outside the state directory to try to create"},
};

std::string try_write(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return std::strerror(errno);
  std::fputs("written\n", f);
  std::fclose(f);
  return "written";
}

class TestSandbox final : public sensor::Sensor {
 public:
  explicit TestSandbox(Host& host) : host_(host) {}
  Status start() noexcept override {
    const std::string inside = try_write(std::string(host_.state_dir()) + "/probe");
    const std::string outside = try_write(host_.config().string("outside"));
    host_.report_state("up", "inside: " + inside + "; outside: " + outside);
    return Status::success();
  }
  void stop() noexcept override {}
  [[nodiscard]] std::span<const sensor::ChannelInfo> channels() const noexcept override { return {}; }

 private:
  Host& host_;
};
}  // namespace

PILECORE_PLUGIN(TestSandbox, {.name = "test-sandbox", .version = "0.0.1", .vendor = "pilecore tests", .license = "Apache-2.0",
                              .description = "Tries to write outside its state directory (isolation sandbox test)", .config = keys})
