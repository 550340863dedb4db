// risk-amount: a single amount above a limit (1000 yuan by default).
//
// At the authorisation it judges the estimate (the pre-authorisation the site asks for), at the
// capture the final bill: a session that outgrows the limit while charging is caught at its
// capture even when its estimate was small. The limit itself is allowed ("above" it is not).
#include <pilecore/pilecore.hpp>

#include <exception>
#include <string>

namespace {

using namespace pilecore;

constexpr ConfigKey keys[] = {
    {.key = "max_amount_fen", .type = ConfigType::integer, .default_value = "100000", .min = 1, .max = 1e12,
     .description = "The largest single amount allowed (100000 fen = 1000 yuan); above it gets `action`", .unit = "fen"},
    {.key = "action", .type = ConfigType::enumeration, .default_value = "step_up", .allowed = "step_up|deny",
     .description = "The verdict for an amount above max_amount_fen"},
};

std::string yuan(std::int64_t fen) { return fmt::format("{}{}.{:02} yuan", fen < 0 ? "-" : "", (fen < 0 ? -fen : fen) / 100, (fen < 0 ? -fen : fen) % 100); }

class Amount final : public risk::Rule {
 public:
  explicit Amount(Host& host)
      : host_(host),
        max_(host.config().integer("max_amount_fen")),
        action_(host.config().string("action") == "deny" ? risk::Verdict::deny : risk::Verdict::step_up) {}

  Status start() noexcept override {
    try {
      host_.report_state("up", fmt::format("a single amount above {} gets {}", yuan(max_), risk::to_string(action_)));
      return Status::success();
    } catch (const std::exception& e) {
      return Status::error(StatusCode::failed, e.what());
    }
  }
  void stop() noexcept override {}

  void evaluate(const risk::Context& c, const risk::History&, TimePoint, risk::Callback done) noexcept override {
    risk::Result r;
    try {
      if (c.amount_fen > max_) {
        r = {action_, fmt::format("{} amount {} is above max_amount_fen {} ({})", c.phase == risk::Phase::capture ? "final" : "estimated",
                                  yuan(c.amount_fen), max_, yuan(max_))};
      }
    } catch (const std::exception& e) {
      r = {risk::Verdict::step_up, fmt::format("risk-amount failed: {}", e.what())};
    }
    try {
      done(std::move(r));
    } catch (...) {
    }
  }

 private:
  Host& host_;
  std::int64_t max_;
  risk::Verdict action_;
};

}  // namespace

PILECORE_PLUGIN(Amount, {.name = "risk-amount", .version = "0.1.0", .vendor = "pilecore", .license = "Apache-2.0",
                         .description = "Risk rule: a single amount above a limit (1000 yuan by default), the estimate at authorisation and the final amount at capture",
                         .config = keys})
