// Not broken: a payment method whose descriptor says API 2.0, the minor before top-ups (2.1).
// A 2.x core must load it, and must never call increment() on it: a real 2.0 binary has no
// such entry in its vtable. This one has (it is built against 2.1 headers) and would approve
// every top-up, so a core that asked it would raise the hold, which the session test catches.
#include "broken.hpp"

namespace {

using namespace pilecore;

class OldMethod final : public payment::Method {
 public:
  explicit OldMethod(Host& /*host*/) {}
  Status start() noexcept override { return Status::success(); }
  void stop() noexcept override {}
  [[nodiscard]] payment::Capabilities capabilities() const noexcept override {
    payment::Capabilities c;
    try {
      c.incremental_authorization = true;  // a 2.0 plugin could already say so; the core must not believe it
      c.token_types = {"card"};
    } catch (...) {
    }
    return c;
  }
  void authorize(const payment::AuthorizationRequest& r, payment::AuthorizationCallback done) noexcept override {
    try {
      payment::AuthorizationResult a;
      a.decision = payment::Decision::approved;
      a.authorized_fen = r.amount_fen;
      a.reference = "OLD";
      done(std::move(a));
    } catch (...) {
    }
  }
  void answer_step_up(std::string_view, const payment::StepUpAnswer&, payment::AuthorizationCallback done) noexcept override {
    try {
      done({});
    } catch (...) {
    }
  }
  void capture(const payment::CaptureRequest& r, payment::OperationCallback done) noexcept override { confirm(r.amount_fen, done); }
  void cancel(const payment::VoidRequest&, payment::OperationCallback done) noexcept override { confirm(0, done); }
  void refund(const payment::RefundRequest& r, payment::OperationCallback done) noexcept override { confirm(r.amount_fen, done); }
  void increment(const payment::IncrementRequest& r, payment::AuthorizationCallback done) noexcept override {
    try {
      payment::AuthorizationResult a;
      a.decision = payment::Decision::approved;
      a.authorized_fen = r.amount_fen;
      done(std::move(a));
    } catch (...) {
    }
  }

 private:
  static void confirm(std::int64_t fen, const payment::OperationCallback& done) noexcept {
    try {
      done({.state = payment::OperationState::confirmed, .amount_fen = fen, .reference = "OLD", .reason = {}});
    } catch (...) {
    }
  }
};

constexpr PluginDescriptor make() {
  auto d = detail::make_descriptor<OldMethod>(PluginInfo{
      .name = "payment-api-2-0", .version = "1.0.0", .vendor = "pilecore tests", .license = "Apache-2.0", .description = "A payment method built for API 2.0"});
  d.api_minor = 0;
  return d;
}

}  // namespace

BROKEN_EXPORT(PILECORE_ENTRY_SYMBOL, make())
