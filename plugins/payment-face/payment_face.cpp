// payment-face: pay by face. Two halves in one instance:
//
//  - The camera module. A face-recognition module at the connector recognises a face and gives
//    a face token (the module's template id: personal data) with a liveness score. The plugin
//    reads the module over its line protocol on TCP (docs/payments.md, "Face"), on a thread of
//    its own, and presents Token{type "face", id, evidence liveness} to the core through
//    Host::present: the site's payment.tokens sends it back here, to authorize().
//  - The method. authorize() refuses a liveness below `min_liveness` before any network call (a
//    photo held up to the camera must not even reach the provider); otherwise the face-pay
//    provider identifies the payer and holds the money, over HTTPS/JSON with the provider's
//    certificate checked against `provider_ca_file`. capture, cancel and refund are provider
//    calls too, idempotent on the operation id (the provider answers a repeat with the first
//    outcome), so the core's retries never move money twice.
//
// Unreachable is never "failed": a capture, void or refund the provider did not answer is
// `pending`, and the core asks again with the same id. An authorisation it did not answer is
// declined, and a release of whatever it may have held is sent with an id of its own.
#include <pilecore/pilecore.hpp>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "https_client.hpp"

namespace {

using namespace pilecore;
using plugins::HttpsClient;
using plugins::HttpsResponse;

constexpr ConfigKey keys[] = {
    {.key = "provider_url", .type = ConfigType::string, .required = true,
     .description = "Base URL of the face-pay provider's API (https://host[:port][/path])"},
    {.key = "provider_ca_file", .type = ConfigType::string, .required = true,
     .description = "PEM file of the CA that signs the provider's certificate; nothing else is trusted"},
    {.key = "provider_timeout_ms", .type = ConfigType::integer, .default_value = "5000", .min = 100, .max = 60000,
     .description = "Time allowed for one provider call (connect, TLS handshake, request and answer)", .unit = "ms"},
    {.key = "provider_api_key", .type = ConfigType::string, .default_value = "\"\"", .secret = true,
     .description = "Bearer token the provider issued to this site (empty: none sent)"},
    {.key = "merchant_id", .type = ConfigType::string, .default_value = "\"\"",
     .description = "The site's merchant id at the provider, sent with each authorisation"},
    {.key = "min_liveness", .type = ConfigType::number, .default_value = "0.9", .min = 0, .max = 1,
     .description = "Lowest liveness score accepted; a face below it is declined before any network call"},
    {.key = "module_host", .type = ConfigType::string, .default_value = "127.0.0.1",
     .description = "Address of the face camera module (its TCP line protocol)"},
    {.key = "module_port", .type = ConfigType::integer, .default_value = "0", .min = 0, .max = 65535,
     .description = "TCP port of the face camera module; 0: no module (faces come from another presenter)"},
    {.key = "module_reconnect_ms", .type = ConfigType::integer, .default_value = "1000", .min = 50, .max = 600000,
     .description = "Wait before reconnecting to the camera module after the connection is lost", .unit = "ms"},
};

payment::AuthorizationResult declined(std::string reason) {
  return {.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {}, .reason = std::move(reason), .challenge = {}};
}

payment::AuthorizationResult unavailable(std::string reason) {
  return {.decision = payment::Decision::unavailable, .authorized_fen = 0, .reference = {}, .reason = std::move(reason), .challenge = {}};
}
payment::OperationResult pending(std::string reason) {
  return {.state = payment::OperationState::pending, .amount_fen = 0, .reference = {}, .reason = std::move(reason)};
}

/// Why a provider call has no usable answer, in words for the log and the receipt.
std::string trouble(const HttpsResponse& r) {
  if (!r.answered()) return "face-pay provider unreachable: " + r.error;
  std::string msg = "face-pay provider error (HTTP " + std::to_string(r.status) + ")";
  if (r.body.is_object() && r.body.contains("error") && r.body["error"].is_string()) msg += ": " + r.body["error"].get<std::string>();
  return msg;
}

/// A liveness score as the module or another presenter wrote it ("0.970"); nullopt when it is not a number in [0, 1].
std::optional<double> parse_liveness(std::string_view text) {
  double v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || !(v >= 0.0 && v <= 1.0)) return std::nullopt;
  return v;
}

/// One FACE line of the module: "FACE <seq> <token> <liveness-permille>".
struct FaceLine {
  std::uint64_t seq = 0;
  std::string token;
  int liveness_permille = 0;
};

/// Parses a module line; on failure returns nullopt and says why in `why` (never echoing the token).
std::optional<FaceLine> parse_face_line(std::string_view line, std::string& why) {
  auto next = [&line]() {
    const auto sp = line.find(' ');
    std::string_view w = line.substr(0, sp);
    line = sp == std::string_view::npos ? std::string_view() : line.substr(sp + 1);
    return w;
  };
  if (next() != "FACE") {
    why = "not a FACE line";
    return std::nullopt;
  }
  FaceLine f;
  const std::string_view seq = next(), token = next(), live = next();
  if (!line.empty()) {
    why = "extra fields";
    return std::nullopt;
  }
  if (std::from_chars(seq.data(), seq.data() + seq.size(), f.seq).ec != std::errc() || seq.empty()) {
    why = "bad sequence number";
    return std::nullopt;
  }
  if (token.empty() || token.size() > 128 ||
      token.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") != std::string_view::npos) {
    why = "bad face token (1 to 128 of A-Z a-z 0-9 _ -)";
    return std::nullopt;
  }
  const auto [end, ec] = std::from_chars(live.data(), live.data() + live.size(), f.liveness_permille);
  if (live.empty() || ec != std::errc() || end != live.data() + live.size() || f.liveness_permille < 0 || f.liveness_permille > 1000) {
    why = "bad liveness (0 to 1000)";
    return std::nullopt;
  }
  f.token = std::string(token);
  return f;
}

class FacePay final : public payment::Method {
 public:
  static void validate(const ConfigValues& config, ConfigReport& report) noexcept {
    try {
      plugins::HttpsUrl::parse(config.string("provider_url"));
    } catch (const std::exception& e) {
      report.error("provider_url", e.what());
    }
    const std::string ca = config.string("provider_ca_file");
    std::error_code ec;
    if (!std::filesystem::is_regular_file(ca, ec)) report.error("provider_ca_file", "'" + ca + "' is not a readable file");
  }

  explicit FacePay(Host& host)
      : host_(host),
        min_liveness_(host.config().number("min_liveness")),
        merchant_(host.config().string("merchant_id")),
        module_host_(host.config().string("module_host")),
        module_port_(static_cast<int>(host.config().integer("module_port"))),
        reconnect_ms_(static_cast<int>(host.config().integer("module_reconnect_ms"))),
        client_(std::make_unique<HttpsClient>(plugins::HttpsSettings{.url = host.config().string("provider_url"),
                                                                     .ca_file = host.config().string("provider_ca_file"),
                                                                     .timeout = std::chrono::milliseconds(host.config().integer("provider_timeout_ms")),
                                                                     .bearer = host.config().string("provider_api_key")})) {}

  ~FacePay() override {
    stop_module();
    if (wake_fd_ >= 0) ::close(wake_fd_);
  }
  FacePay(const FacePay&) = delete;
  FacePay& operator=(const FacePay&) = delete;

  [[nodiscard]] payment::Capabilities capabilities() const noexcept override {
    payment::Capabilities c;
    try {
      c.token_types = {"face"};
      c.channels = {{.name = "face-pay", .fee_ppm = 6000}};
    } catch (...) {
    }
    return c;
  }

  Status start() noexcept override {
    try {
      if (module_port_ > 0) {
        wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (wake_fd_ < 0) return Status::error(StatusCode::failed, "eventfd failed");
        module_thread_ = std::thread([this] { module_loop(); });
      }
      host_.report_state(module_port_ > 0 ? "degraded" : "up",
                         module_port_ > 0 ? fmt::format("connecting to the camera module at {}:{}", module_host_, module_port_)
                                          : fmt::format("provider {}; no camera module", client_->url().host));
      return Status::success();
    } catch (const std::exception& e) {
      return Status::error(StatusCode::failed, e.what());
    }
  }

  void stop() noexcept override {
    stop_module();
    calls_.stop();
  }

  void authorize(const payment::AuthorizationRequest& request, payment::AuthorizationCallback done) noexcept override {
    try {
      const identification::Token* t = request.token;
      if (t == nullptr || t->type != "face" || t->id.empty()) return done(declined("not a face token"));
      const auto live_text = t->find("liveness");
      const auto live = live_text ? parse_liveness(*live_text) : std::nullopt;
      if (!live || *live < min_liveness_) {
        ++liveness_refusals_;
        if (refused_here_.size() > 1000) refused_here_.clear();  // only a courtesy: the provider also answers
        refused_here_.insert(std::string(request.transaction_id));
        host_.log().warn("{}: liveness {} below {:.3f}: declined without asking the provider ({} so far)", request.transaction_id,
                         live ? fmt::format("{:.3f}", *live) : std::string("missing"), min_liveness_, liveness_refusals_);
        return done(declined("liveness check failed: present your face again"));
      }
      const std::string op(request.operation_id), txn(request.transaction_id);
      const nlohmann::json body = {{"operation_id", op},     {"transaction_id", txn},      {"face_token", t->id},
                                   {"amount_fen", request.amount_fen}, {"liveness", *live}, {"merchant_id", merchant_}};
      auto cb = std::make_shared<payment::AuthorizationCallback>(std::move(done));
      const std::int64_t asked = request.amount_fen;
      call(
          "/v1/face/authorize", body,
          [this, cb, op, txn, asked](const HttpsResponse& r) {
            if (!r.ok() || !r.body.is_object()) {
              host_.log().warn("{}: authorisation not answered: {}", txn, trouble(r));
              release_unanswered(op, txn);
              // The channel failed, not the payer: unavailable, so the core may fail over.
              return (*cb)(unavailable(trouble(r)));
            }
            const std::string decision = r.body.value("decision", "");
            if (decision != "approved") {
              host_.log().info("{}: provider declined: {}", txn, r.body.value("reason", ""));
              return (*cb)(declined(r.body.value("reason", "declined by the face-pay provider")));
            }
            const std::int64_t held = std::min(asked, r.body.value("authorized_fen", std::int64_t{0}));
            host_.log().info("{}: approved, {} fen held (ref {})", txn, held, r.body.value("reference", ""));
            (*cb)({.decision = payment::Decision::approved, .authorized_fen = held, .reference = r.body.value("reference", ""), .reason = {},
                   .challenge = {}});
          },
          [cb] { (*cb)(declined("payment method stopped")); });
    } catch (const std::exception& e) {
      host_.log().error("authorize: {}", e.what());
      try {
        if (done) done(declined(std::string("payment method error: ") + e.what()));
      } catch (...) {
      }
    }
  }

  void answer_step_up(std::string_view, const payment::StepUpAnswer&, payment::AuthorizationCallback done) noexcept override {
    try {
      done(declined("face pay asks for no step-up"));
    } catch (...) {
    }
  }

  void capture(const payment::CaptureRequest& request, payment::OperationCallback done) noexcept override {
    operation("/v1/face/capture", "capture",
              {{"operation_id", std::string(request.operation_id)}, {"transaction_id", std::string(request.transaction_id)}, {"amount_fen", request.amount_fen}},
              std::string(request.transaction_id), std::move(done));
  }

  void cancel(const payment::VoidRequest& request, payment::OperationCallback done) noexcept override {
    // The core releases every declined authorisation; one refused here never reached the
    // provider, and its release need not either.
    try {
      if (refused_here_.erase(std::string(request.transaction_id)) > 0) return done({.state = payment::OperationState::confirmed, .amount_fen = 0, .reference = {}, .reason = {}});
    } catch (...) {
    }
    operation("/v1/face/cancel", "cancel", {{"operation_id", std::string(request.operation_id)}, {"transaction_id", std::string(request.transaction_id)}},
              std::string(request.transaction_id), std::move(done));
  }

  void refund(const payment::RefundRequest& request, payment::OperationCallback done) noexcept override {
    operation("/v1/face/refund", "refund",
              {{"operation_id", std::string(request.operation_id)}, {"transaction_id", std::string(request.transaction_id)}, {"amount_fen", request.amount_fen},
               {"reason", std::string(request.reason)}},
              std::string(request.transaction_id), std::move(done));
  }

 private:
  /// One provider call; `answered` runs on the strand with the response, `stopped` instead when
  /// the instance stops first. Exactly one of them runs.
  void call(const std::string& path, const nlohmann::json& body, std::function<void(const HttpsResponse&)> answered, std::function<void()> stopped) {
    calls_.call(path, body, std::move(answered), std::move(stopped));
  }

  void operation(const char* path, const char* what, const nlohmann::json& body, std::string txn, payment::OperationCallback done) noexcept {
    try {
      auto cb = std::make_shared<payment::OperationCallback>(std::move(done));
      call(
          path, body,
          [this, cb, what, txn](const HttpsResponse& r) {
            // No answer, or a server error: not final. The core asks again with the same id.
            if (!r.answered() || r.status >= 500 || !r.body.is_object()) {
              host_.log().warn("{}: {} pending: {}", txn, what, trouble(r));
              return (*cb)(pending(trouble(r)));
            }
            if (!r.ok()) {
              host_.log().warn("{}: {} refused: {}", txn, what, trouble(r));
              return (*cb)({.state = payment::OperationState::failed, .amount_fen = 0, .reference = {}, .reason = trouble(r)});
            }
            const std::string state = r.body.value("state", "");
            payment::OperationResult out{.state = state == "confirmed" ? payment::OperationState::confirmed
                                                  : state == "failed"  ? payment::OperationState::failed
                                                                       : payment::OperationState::pending,
                                         .amount_fen = r.body.value("amount_fen", std::int64_t{0}),
                                         .reference = r.body.value("reference", ""),
                                         .reason = r.body.value("reason", "")};
            host_.log().info("{}: {} {} ({} fen){}{}", txn, what, state, out.amount_fen, out.reason.empty() ? "" : ": ", out.reason);
            (*cb)(std::move(out));
          },
          [cb] { (*cb)(pending("payment method stopped")); });
    } catch (const std::exception& e) {
      host_.log().error("{}: {}", what, e.what());
      try {
        if (done) done(pending(e.what()));
      } catch (...) {
      }
    }
  }

  /// The provider may have held money for an authorisation whose answer was lost: release it
  /// (idempotent at the provider; an id of its own so it never answers as the authorisation).
  void release_unanswered(const std::string& op, const std::string& txn) {
    call(
        "/v1/face/cancel", {{"operation_id", op + "/release"}, {"transaction_id", txn}},
        [this, txn](const HttpsResponse& r) {
          if (!r.ok()) host_.log().warn("{}: release after an unanswered authorisation failed: {}", txn, trouble(r));
        },
        [] {});
  }

  // --- the camera module, on its own thread ---

  void stop_module() {
    if (!module_thread_.joinable()) return;
    stopping_.store(true);
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto w = ::write(wake_fd_, &one, sizeof one);
    module_thread_.join();
    close_module();
  }

  void close_module() {
    std::lock_guard lock(fd_mutex_);
    if (module_fd_ >= 0) ::close(module_fd_);
    module_fd_ = -1;
  }

  /// Waits for `fd` to be readable, or the stop signal, or `timeout_ms`. False when stopping.
  bool wait_readable(int fd, int timeout_ms, bool& readable) {
    pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {fd, POLLIN, 0}};
    readable = false;
    const int n = ::poll(fds, fd >= 0 ? 2 : 1, timeout_ms);
    if (stopping_.load()) return false;
    if (n > 0 && fd >= 0 && (fds[1].revents & (POLLIN | POLLHUP | POLLERR))) readable = true;
    return true;
  }

  int connect_module() {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (::getaddrinfo(module_host_.c_str(), std::to_string(module_port_).c_str(), &hints, &res) != 0 || res == nullptr) return -1;
    int fd = -1;
    for (addrinfo* a = res; a != nullptr && fd < 0; a = a->ai_next) {
      fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
      if (fd >= 0 && ::connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
        ::close(fd);
        fd = -1;
      }
    }
    ::freeaddrinfo(res);
    if (fd >= 0) {
      const int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
  }

  void module_loop() {
    bool readable = false;
    while (!stopping_.load()) {
      const int fd = connect_module();
      if (fd < 0) {
        if (!wait_readable(-1, reconnect_ms_, readable)) return;
        continue;
      }
      {
        std::lock_guard lock(fd_mutex_);
        module_fd_ = fd;
      }
      std::string buffer;
      bool greeted = false;
      while (true) {
        if (!wait_readable(fd, 1000, readable)) return;
        if (!readable) continue;
        char chunk[1024];
        const ssize_t got = ::recv(fd, chunk, sizeof chunk, 0);
        if (got <= 0) break;
        buffer.append(chunk, static_cast<std::size_t>(got));
        if (buffer.size() > 64 * 1024) break;  // no line is that long: not our module
        for (auto nl = buffer.find('\n'); nl != std::string::npos; nl = buffer.find('\n')) {
          std::string line = buffer.substr(0, nl);
          buffer.erase(0, nl + 1);
          if (!line.empty() && line.back() == '\r') line.pop_back();
          if (!greeted) {
            greeted = true;
            if (line.rfind("PCFM/1", 0) != 0) {
              host_.post([this] { host_.report_state("down", "the camera module does not speak PCFM/1"); });
              break;
            }
            host_.post([this, line] { host_.report_state("up", fmt::format("camera module {}", line.substr(7))); });
            continue;
          }
          on_module_line(line);
        }
      }
      close_module();
      host_.post([this] { host_.report_state("degraded", "camera module connection lost; reconnecting"); });
      if (!wait_readable(-1, reconnect_ms_, readable)) return;
    }
  }

  void on_module_line(const std::string& line) {
    std::string why;
    auto face = parse_face_line(line, why);
    if (!face) {
      const std::uint64_t n = ++bad_lines_;
      send_module("ERR " + why);
      host_.post([this, why, n] { host_.log().warn("camera module: unreadable line ignored: {} ({} so far)", why, n); });
      return;
    }
    host_.post([this, f = std::move(*face)] {
      identification::Token t;
      t.type = "face";
      t.id = f.token;
      t.connector = host_.connector();
      t.evidence = {{"liveness", fmt::format("{:.3f}", f.liveness_permille / 1000.0)}, {"module_seq", std::to_string(f.seq)}};
      host_.present(t);
      send_module("ACK " + std::to_string(f.seq));
    });
  }

  void send_module(const std::string& line) {
    std::lock_guard lock(fd_mutex_);
    if (module_fd_ < 0) return;
    const std::string text = line + "\n";
    [[maybe_unused]] const auto w = ::send(module_fd_, text.data(), text.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  }

  Host& host_;
  double min_liveness_;
  std::string merchant_;
  std::string module_host_;
  int module_port_;
  int reconnect_ms_;
  std::unique_ptr<HttpsClient> client_;
  plugins::ProviderCalls calls_{*client_, [this](std::function<void()> fn) { host_.post(std::move(fn)); }};
  std::uint64_t liveness_refusals_ = 0;
  std::set<std::string> refused_here_;  // transactions declined before any provider call
  std::atomic<std::uint64_t> bad_lines_{0};
  std::thread module_thread_;
  std::atomic<bool> stopping_{false};
  int wake_fd_ = -1;
  std::mutex fd_mutex_;
  int module_fd_ = -1;
};

}  // namespace

PILECORE_PLUGIN(FacePay, {.name = "payment-face", .version = "0.1.0", .vendor = "pilecore", .license = "Apache-2.0",
                          .description = "Pay by face: a camera module's face token with liveness, authorised by a face-pay provider over HTTPS",
                          .config = keys})
