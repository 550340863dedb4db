// sim-payment: a simulated payment method (an acquirer in a box).
//
// authorize approves when the amount is within limit_fen and the user token is not declined;
// tokens in step_up_tokens are asked for a PIN (or an app confirmation) first. Every answer comes
// after latency_ms of host-clock time. capture, cancel and refund are idempotent on their
// operation id: a repeat returns the first outcome without a second effect; refunds have ids of
// their own, so a transaction may be refunded several times, partially, up to what was captured.
// increment (a top-up of an approved hold, API 2.1) adds up to what keeps the whole hold within
// limit_fen; declined tokens are declined; with `incremental: false` the method says it cannot.
// For tests of the core's failure handling: `capture_pending_polls` answers a capture pending that
// many times before confirming it, and `unresponsive` lists operations never answered at all.
// The plugin keeps a ledger of its operations, logs each one and journals it: one JSON line per
// operation, appended to acquirer.journal in the instance's state directory and replayed at
// start. An acquirer is another machine, so its ledger outlives a crash of the pile: after a
// kill -9 the recovered transaction is captured against the authorisation made before it, and
// a capture repeated by a recovery is answered "already done". A torn last line (the process died
// mid-write) is ignored with a warning; the operation it held was never answered.
#include <pilecore/pilecore.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace {

using namespace pilecore;

constexpr ConfigKey keys[] = {
    {.key = "limit_fen", .type = ConfigType::integer, .default_value = "50000", .min = 0, .max = 1e10,
     .description = "Largest amount approved in one authorisation; above it the answer is declined", .unit = "fen"},
    {.key = "declined_tokens", .type = ConfigType::string_list, .default_value = "[]",
     .description = "User tokens whose authorisations are always declined (a blocked card, an empty wallet)"},
    {.key = "step_up_tokens", .type = ConfigType::string_list, .default_value = "[]",
     .description = "User tokens whose authorisations need more proof (answer step_up)"},
    {.key = "latency_ms", .type = ConfigType::integer, .default_value = "300", .min = 0, .max = 600000,
     .description = "Host-clock time the simulated acquirer takes to answer each operation", .unit = "ms"},
    {.key = "reference_prefix", .type = ConfigType::string, .default_value = "SIM",
     .description = "Prefix of the acquirer references handed out (kept in the ledger)"},
    {.key = "pin", .type = ConfigType::string, .default_value = "1234", .secret = true,
     .description = "The PIN that answers a step-up (of a token in step_up_tokens, or one risk control asks); empty: this method checks no PIN"},
    {.key = "token_types", .type = ConfigType::string_list, .default_value = "[card, app]",
     .description = "Token types this method accepts (payment.tokens in the site file routes them here)"},
    {.key = "capture_pending_polls", .type = ConfigType::integer, .default_value = "0", .min = 0, .max = 1000,
     .description = "Answer each capture pending this many times before confirming it (an acquirer that settles later)"},
    {.key = "unresponsive", .type = ConfigType::string_list, .default_value = "[]",
     .description = "Operations never answered, for failure tests: any of authorize, step_up, capture, cancel, refund, increment"},
    {.key = "incremental", .type = ConfigType::boolean, .default_value = "true",
     .description = "Declare incremental authorisation: the core may raise a session's hold (up to limit_fen in all)"},
};

std::string yuan(std::int64_t fen) {
  const char* sign = fen < 0 ? "-" : "";
  const std::int64_t a = fen < 0 ? -fen : fen;
  return fmt::format("{}{}.{:02} yuan", sign, a / 100, a % 100);
}

/// Tokens identify people: log only the last four characters of a long one.
std::string mask(std::string_view token) {
  if (token.size() <= 8) return "***";
  return std::string(token.size() - 4, '*') + std::string(token.substr(token.size() - 4));
}

/// The token as the simulator's lists name it: "type:id".
std::string token_text(const identification::Token* t) { return t == nullptr ? std::string() : t->type + ":" + t->id; }

struct Transaction {
  std::string user_token;
  std::int64_t requested_fen = 0;
  payment::AuthorizationResult result;
  bool captured = false;
  std::int64_t captured_fen = 0;
  int capture_polls = 0;  ///< captures answered pending so far
  bool cancelled = false;
  std::map<std::string, std::int64_t> refunds;  ///< refund operation id -> fen
  std::int64_t refunded_fen = 0;
  std::map<std::string, std::int64_t> increments;  ///< top-up operation id -> fen added (0: declined)
};

class SimPayment final : public payment::Method {
 public:
  explicit SimPayment(Host& host)
      : host_(host),
        limit_fen_(host.config().integer("limit_fen")),
        declined_(host.config().string_list("declined_tokens")),
        step_up_(host.config().string_list("step_up_tokens")),
        latency_(host.config().integer("latency_ms")),
        prefix_(host.config().string("reference_prefix")),
        pin_(host.config().string("pin")),
        token_types_(host.config().string_list("token_types")),
        pending_polls_(static_cast<int>(host.config().integer("capture_pending_polls"))),
        unresponsive_(host.config().string_list("unresponsive")),
        incremental_(host.config().boolean("incremental")) {}

  [[nodiscard]] payment::Capabilities capabilities() const noexcept override {
    payment::Capabilities c;
    try {
      c.token_types = token_types_;
      c.incremental_authorization = incremental_;
      c.verifies_pin = !pin_.empty();
      c.channels = {{.name = prefix_, .fee_ppm = 6000}};
    } catch (...) {
    }
    return c;
  }

  Status start() noexcept override {
    try {
      if (Status s = replay(); !s.ok()) return s;
      host_.report_state("up", fmt::format("simulated acquirer, limit {}, latency {} ms", yuan(limit_fen_), latency_.count()));
      return Status::success();
    } catch (const std::exception& e) {
      return Status::error(StatusCode::failed, e.what());
    }
  }

  ~SimPayment() override {
    if (journal_fd_ >= 0) ::close(journal_fd_);
  }
  SimPayment(const SimPayment&) = delete;
  SimPayment& operator=(const SimPayment&) = delete;

  void stop() noexcept override {
    // Every callback is called exactly once, also when the method stops before answering.
    auto pending = std::move(pending_);
    pending_.clear();
    for (auto& [key, p] : pending) {
      host_.cancel(p.timer);
      try {
        p.abort();
      } catch (...) {
      }
    }
  }

  void authorize(const payment::AuthorizationRequest& request, payment::AuthorizationCallback done) noexcept override {
    auto fail_now = [&](std::string reason) {
      try {
        done(declined(std::move(reason)));
      } catch (...) {
      }
    };
    try {
      const TimePoint now = host_.clock().now();
      const std::string id(request.transaction_id);
      const std::string token = token_text(request.token);
      payment::AuthorizationResult result;
      if (id.empty()) {
        result = declined("the transaction has no id");
      } else if (auto it = ledger_.find(id); it != ledger_.end()) {
        // A repeat: the same answer, no new hold. A different request under the same id is refused.
        const Transaction& t = it->second;
        if (t.user_token == token && t.requested_fen == request.amount_fen) {
          result = t.result;
          host_.log().info("ledger: authorize {} repeated -> {} (no new hold)", id, to_string(result.decision));
        } else {
          result = declined("the transaction id was already used for another authorisation");
          host_.log().warn("ledger: authorize {} refused: id reused with {} for token {}", id, yuan(request.amount_fen), mask(token));
        }
      } else {
        result = decide(request, token);
        if (result.decision == payment::Decision::approved) result.reference = fmt::format("{}{:08}", prefix_, ++reference_seq_);
        if (result.decision == payment::Decision::step_up) {
          result.challenge = {.kind = payment::ChallengeKind::pin, .prompt = "请输入卡密码 / enter your PIN", .deadline = now + std::chrono::minutes(2), .methods = {}};
        }
        Transaction t;
        t.user_token = token;
        t.requested_fen = request.amount_fen;
        t.result = result;
        ledger_.emplace(id, std::move(t));
        journal({{"op", "authorize"}, {"id", id}, {"token", token}, {"requested_fen", request.amount_fen},
                 {"decision", std::string(to_string(result.decision))}, {"authorized_fen", result.authorized_fen}, {"reference", result.reference},
                 {"reason", result.reason}});
        host_.log().info("ledger: authorize {} connector {} token {} {} -> {}{}{}", id, request.connector, mask(token),
                         yuan(request.amount_fen), to_string(result.decision), result.reason.empty() ? "" : ": ", result.reason);
      }
      if (silent("authorize")) return;
      // Answers after the latency, also past the deadline: enforcing it is the core's job.
      auto shared = std::make_shared<payment::AuthorizationCallback>(std::move(done));
      later(
          latency_, [shared, result] { (*shared)(result); },
          [shared] { (*shared)(declined("payment method stopped")); });
    } catch (const std::exception& e) {
      host_.log().error("authorize failed: {}", e.what());
      if (done) fail_now(std::string("payment method error: ") + e.what());
    }
  }

  void answer_step_up(std::string_view operation_id, const payment::StepUpAnswer& answer, payment::AuthorizationCallback done) noexcept override {
    try {
      // The operation id of an authorisation is "<transaction>/authorize".
      const std::string_view txn = operation_id.substr(0, operation_id.rfind('/'));
      Transaction* t = find(txn);
      payment::AuthorizationResult result;
      if (t == nullptr || t->result.decision != payment::Decision::step_up) {
        result = declined("no step-up is waiting for this transaction");
      } else {
        const bool passed = answer.kind == payment::ChallengeKind::pin ? answer.value == pin_ : answer.confirmed;
        if (passed && t->requested_fen <= limit_fen_) {
          result = {.decision = payment::Decision::approved, .authorized_fen = t->requested_fen,
                    .reference = fmt::format("{}{:08}", prefix_, ++reference_seq_), .reason = {}, .challenge = {}};
        } else {
          result = declined(passed ? "above the limit" : answer.kind == payment::ChallengeKind::pin ? "wrong PIN" : "not confirmed");
        }
        t->result = result;
        journal({{"op", "step_up"}, {"id", std::string(txn)}, {"decision", std::string(to_string(result.decision))},
                 {"authorized_fen", result.authorized_fen}, {"reference", result.reference}, {"reason", result.reason}});
        host_.log().info("ledger: step-up {} ({}) -> {}", txn, to_string(answer.kind), to_string(result.decision));
      }
      if (silent("step_up")) return;
      auto shared = std::make_shared<payment::AuthorizationCallback>(std::move(done));
      later(
          latency_, [shared, result] { (*shared)(result); },
          [shared] { (*shared)(declined("payment method stopped")); });
    } catch (const std::exception& e) {
      host_.log().error("answer_step_up failed: {}", e.what());
    }
  }

  void increment(const payment::IncrementRequest& request, payment::AuthorizationCallback done) noexcept override {
    try {
      const std::string op(request.operation_id);
      Transaction* t = find(request.transaction_id);
      payment::AuthorizationResult result;
      if (!incremental_) {
        result = declined("this acquirer cannot raise a hold");
      } else if (t == nullptr || t->result.decision != payment::Decision::approved) {
        result = declined("no approved authorisation to raise");
      } else if (t->captured || t->cancelled) {
        result = declined("the authorisation is already captured or released");
      } else if (auto it = t->increments.find(op); it != t->increments.end()) {
        // A repeat: the same answer, nothing added twice.
        result = it->second > 0 ? payment::AuthorizationResult{.decision = payment::Decision::approved, .authorized_fen = it->second,
                                                               .reference = t->result.reference, .reason = {}, .challenge = {}}
                                : declined("declined before");
        host_.log().info("ledger: increment {} repeated -> {}", op, to_string(result.decision));
      } else {
        const std::string token = t->user_token;
        const bool blocked = std::find(declined_.begin(), declined_.end(), token) != declined_.end();
        const std::int64_t room = limit_fen_ - t->result.authorized_fen;
        const std::int64_t add = std::min(request.amount_fen, room);
        if (request.amount_fen <= 0) {
          result = declined(fmt::format("the amount {} fen is not positive", request.amount_fen));
        } else if (blocked) {
          result = declined("declined by the issuer");
        } else if (add <= 0) {
          result = declined(fmt::format("the hold is already at the limit of {}", yuan(limit_fen_)));
        } else {
          result = {.decision = payment::Decision::approved, .authorized_fen = add, .reference = t->result.reference, .reason = {}, .challenge = {}};
          t->result.authorized_fen += add;
        }
        t->increments.emplace(op, result.authorized_fen);
        journal({{"op", "increment"}, {"id", std::string(request.transaction_id)}, {"increment", op}, {"fen", result.authorized_fen}});
        host_.log().info("ledger: increment {} {} asked -> {} (hold now {})", op, yuan(request.amount_fen), to_string(result.decision),
                         yuan(t->result.authorized_fen));
      }
      if (silent("increment")) return;
      auto shared = std::make_shared<payment::AuthorizationCallback>(std::move(done));
      later(
          latency_, [shared, result] { (*shared)(result); },
          [shared] { (*shared)(declined("payment method stopped")); });
    } catch (const std::exception& e) {
      host_.log().error("increment failed: {}", e.what());
      try {
        if (done) done(declined(std::string("payment method error: ") + e.what()));
      } catch (...) {
      }
    }
  }

  void capture(const payment::CaptureRequest& request, payment::OperationCallback done) noexcept override {
    const std::string_view transaction_id = request.transaction_id;
    const std::int64_t amount_fen = request.amount_fen;
    if (silent("capture")) return;
    operation(done, [&]() -> payment::OperationResult {
      Transaction* t = find(transaction_id);
      if (t == nullptr) return unknown(transaction_id);
      if (t->result.decision != payment::Decision::approved) return failed("the authorisation was not approved");
      if (amount_fen < 0) return failed(fmt::format("capture amount {} fen is negative", amount_fen));
      if (t->cancelled) return failed("the authorisation was cancelled; nothing to capture");
      if (t->captured) {
        if (t->captured_fen == amount_fen) return repeat("capture", transaction_id, amount_fen, t->result.reference);
        return failed(fmt::format("already captured {}; a capture of {} conflicts with it", yuan(t->captured_fen), yuan(amount_fen)));
      }
      if (amount_fen > t->result.authorized_fen) {
        return failed(fmt::format("capture of {} is above the authorised {}", yuan(amount_fen), yuan(t->result.authorized_fen)));
      }
      if (t->capture_polls < pending_polls_) {
        ++t->capture_polls;
        host_.log().info("ledger: capture {} pending ({}/{})", transaction_id, t->capture_polls, pending_polls_);
        return {.state = payment::OperationState::pending, .amount_fen = 0, .reference = t->result.reference, .reason = "settling"};
      }
      t->captured = true;
      t->captured_fen = amount_fen;
      captured_total_fen_ += amount_fen;
      journal({{"op", "capture"}, {"id", std::string(transaction_id)}, {"fen", amount_fen}});
      host_.log().info("ledger: capture {} {} of {} authorised (ref {}); captured total {}", transaction_id, yuan(amount_fen),
                       yuan(t->result.authorized_fen), t->result.reference, yuan(captured_total_fen_));
      return confirmed(amount_fen, t->result.reference);
    });
  }

  void cancel(const payment::VoidRequest& request, payment::OperationCallback done) noexcept override {
    const std::string_view transaction_id = request.transaction_id;
    if (silent("cancel")) return;
    operation(done, [&]() -> payment::OperationResult {
      Transaction* t = find(transaction_id);
      // Nothing was held (never authorised here, or declined): nothing to release.
      if (t == nullptr || t->result.decision != payment::Decision::approved) return confirmed(0, {});
      if (t->captured) return failed("already captured; refund it instead");
      if (t->cancelled) return repeat("cancel", transaction_id, t->result.authorized_fen, t->result.reference);
      t->cancelled = true;
      journal({{"op", "cancel"}, {"id", std::string(transaction_id)}});
      host_.log().info("ledger: cancel {} releases {} ({})", transaction_id, yuan(t->result.authorized_fen), to_string(t->result.decision));
      return confirmed(t->result.authorized_fen, t->result.reference);
    });
  }

  void refund(const payment::RefundRequest& request, payment::OperationCallback done) noexcept override {
    const std::string_view transaction_id = request.transaction_id;
    const std::int64_t amount_fen = request.amount_fen;
    const std::string refund_id(request.operation_id);
    if (silent("refund")) return;
    operation(done, [&]() -> payment::OperationResult {
      Transaction* t = find(transaction_id);
      if (t == nullptr) return failed(fmt::format("unknown transaction '{}'", transaction_id));
      if (!t->captured) return failed("nothing was captured; cancel the authorisation instead");
      if (amount_fen <= 0) return failed(fmt::format("refund amount {} fen is not positive", amount_fen));
      if (auto it = t->refunds.find(refund_id); it != t->refunds.end()) {
        if (it->second == amount_fen) return repeat("refund", refund_id, amount_fen, t->result.reference);
        return failed(fmt::format("refund {} was {}; a repeat of it with {} conflicts", refund_id, yuan(it->second), yuan(amount_fen)));
      }
      if (t->refunded_fen + amount_fen > t->captured_fen) {
        return failed(fmt::format("refund of {} is above what is left of the captured {} ({} refunded)", yuan(amount_fen), yuan(t->captured_fen),
                                  yuan(t->refunded_fen)));
      }
      t->refunds.emplace(refund_id, amount_fen);
      t->refunded_fen += amount_fen;
      refunded_total_fen_ += amount_fen;
      journal({{"op", "refund"}, {"id", std::string(transaction_id)}, {"refund", refund_id}, {"fen", amount_fen}});
      host_.log().info("ledger: refund {} {} of {} captured; refunded total {}", refund_id, yuan(amount_fen), yuan(t->captured_fen),
                       yuan(refunded_total_fen_));
      return confirmed(amount_fen, t->result.reference);
    });
  }

 private:
  /// Loads the journal of earlier runs and opens it for appending.
  Status replay() {
    journal_path_ = (std::filesystem::path(std::string(host_.state_dir())) / "acquirer.journal").string();
    std::ifstream in(journal_path_, std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::istringstream lines(text);
    std::string line;
    std::size_t n = 0, bad = 0;
    while (std::getline(lines, line)) {
      ++n;
      const auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.is_object() || !apply(j)) {
        ++bad;
        host_.log().warn("{}:{}: unreadable journal line ignored (a write cut short by a crash?)", journal_path_, n);
      }
    }
    for (const auto& [id, t] : ledger_) {
      if (t.captured) captured_total_fen_ += t.captured_fen;
      refunded_total_fen_ += t.refunded_fen;
      if (t.result.decision == payment::Decision::approved) ++reference_seq_;
    }
    journal_fd_ = ::open(journal_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (journal_fd_ < 0) return Status::error(StatusCode::failed, fmt::format("cannot open the journal {}: {}", journal_path_, std::strerror(errno)));
    // End a torn last line, so the next operation starts a line of its own.
    if (!text.empty() && text.back() != '\n' && ::write(journal_fd_, "\n", 1) != 1) {
      return Status::error(StatusCode::failed, fmt::format("cannot write the journal {}: {}", journal_path_, std::strerror(errno)));
    }
    if (n > 0) host_.log().info("journal {}: {} operation(s) replayed, {} transaction(s)", journal_path_, n - bad, ledger_.size());
    return Status::success();
  }

  /// Applies one journal line to the ledger; false when it is not a valid operation.
  bool apply(const nlohmann::json& j) {
    try {
      const std::string op = j.at("op").get<std::string>();
      const std::string id = j.at("id").get<std::string>();
      if (op == "authorize") {
        Transaction t;
        t.user_token = j.at("token").get<std::string>();
        t.requested_fen = j.at("requested_fen").get<std::int64_t>();
        const std::string d = j.at("decision").get<std::string>();
        t.result.decision = d == "approved" ? payment::Decision::approved : d == "step_up" ? payment::Decision::step_up : payment::Decision::declined;
        t.result.authorized_fen = j.at("authorized_fen").get<std::int64_t>();
        t.result.reference = j.at("reference").get<std::string>();
        t.result.reason = j.at("reason").get<std::string>();
        ledger_[id] = std::move(t);
        return true;
      }
      Transaction* t = find(id);
      if (t == nullptr) return false;
      if (op == "capture") {
        t->captured = true;
        t->captured_fen = j.at("fen").get<std::int64_t>();
      } else if (op == "cancel") {
        t->cancelled = true;
      } else if (op == "refund") {
        const std::int64_t fen = j.at("fen").get<std::int64_t>();
        t->refunds[j.value("refund", id + "/refund")] = fen;
        t->refunded_fen += fen;
      } else if (op == "increment") {
        const std::int64_t fen = j.at("fen").get<std::int64_t>();
        t->increments[j.at("increment").get<std::string>()] = fen;
        t->result.authorized_fen += fen;
      } else if (op == "step_up") {
        const std::string d = j.at("decision").get<std::string>();
        t->result.decision = d == "approved" ? payment::Decision::approved : payment::Decision::declined;
        t->result.authorized_fen = j.at("authorized_fen").get<std::int64_t>();
        t->result.reference = j.at("reference").get<std::string>();
        t->result.reason = j.at("reason").get<std::string>();
      } else {
        return false;
      }
      return true;
    } catch (const nlohmann::json::exception&) {
      return false;
    }
  }

  /// Appends one operation to the journal (one write() with O_APPEND).
  void journal(const nlohmann::json& op) {
    if (journal_fd_ < 0) return;
    const std::string line = op.dump() + "\n";
    const ssize_t w = ::write(journal_fd_, line.data(), line.size());
    if (w != static_cast<ssize_t>(line.size())) {
      host_.log().error("journal {}: {}", journal_path_, w < 0 ? std::strerror(errno) : "short write");
      host_.raise({.severity = AlarmSeverity::critical, .code = "payment.journal_failed", .message = "the acquirer journal cannot be written", .active = true});
    }
  }

  struct Pending {
    TimerId timer = 0;
    std::function<void()> abort;
  };

  static payment::AuthorizationResult declined(std::string reason) {
    return {.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {}, .reason = std::move(reason), .challenge = {}};
  }
  static payment::OperationResult confirmed(std::int64_t fen, std::string reference) {
    return {.state = payment::OperationState::confirmed, .amount_fen = fen, .reference = std::move(reference), .reason = {}};
  }
  payment::OperationResult failed(std::string reason) {
    host_.log().warn("ledger: refused: {}", reason);
    return {.state = payment::OperationState::failed, .amount_fen = 0, .reference = {}, .reason = std::move(reason)};
  }
  [[nodiscard]] bool silent(std::string_view op) const {
    if (std::find(unresponsive_.begin(), unresponsive_.end(), op) == unresponsive_.end()) return false;
    host_.log().warn("{} left unanswered (unresponsive)", op);
    return true;
  }

  [[nodiscard]] payment::AuthorizationResult decide(const payment::AuthorizationRequest& r, const std::string& token) const {
    // A list names a token as "type:id" or by its id alone.
    auto listed = [&](const std::vector<std::string>& list, std::string_view t) {
      const std::string_view id = r.token ? std::string_view(r.token->id) : std::string_view();
      return std::find_if(list.begin(), list.end(), [&](const std::string& e) { return e == t || (!id.empty() && e == id); }) != list.end();
    };
    if (r.amount_fen <= 0) return declined(fmt::format("the amount {} fen is not positive", r.amount_fen));
    if (listed(declined_, token)) return declined("declined by the issuer");
    if (r.amount_fen > limit_fen_) return declined(fmt::format("{} is above the limit of {}", yuan(r.amount_fen), yuan(limit_fen_)));
    // pin_required (API 2.3): risk control asked for the PIN as the second factor.
    if (listed(step_up_, token) || (r.pin_required && !pin_.empty())) {
      return {.decision = payment::Decision::step_up, .authorized_fen = 0, .reference = {}, .reason = "the issuer asks for more proof", .challenge = {}};
    }
    return {.decision = payment::Decision::approved, .authorized_fen = r.amount_fen, .reference = {}, .reason = {}, .challenge = {}};
  }

  Transaction* find(std::string_view id) {
    auto it = ledger_.find(std::string(id));
    return it == ledger_.end() ? nullptr : &it->second;
  }
  payment::OperationResult unknown(std::string_view id) { return failed(fmt::format("unknown transaction '{}'", id)); }
  payment::OperationResult repeat(std::string_view op, std::string_view id, std::int64_t fen, std::string reference) {
    host_.log().info("ledger: {} {} repeated; already done, no second effect", op, id);
    return confirmed(fen, std::move(reference));
  }

  /// Decides now (so a repeat issued before the answer already sees the effect), answers after
  /// the latency.
  template <class Decide>
  void operation(payment::OperationCallback& done, Decide&& decide_op) noexcept {
    try {
      payment::OperationResult r = decide_op();
      auto shared = std::make_shared<payment::OperationCallback>(std::move(done));
      later(
          latency_, [shared, r] { (*shared)(r); },
          // Stopped before answering: not final, the core asks again.
          [shared] { (*shared)({.state = payment::OperationState::pending, .amount_fen = 0, .reference = {}, .reason = "payment method stopped"}); });
    } catch (const std::exception& e) {
      host_.log().error("payment operation failed: {}", e.what());
      try {
        if (done) done({.state = payment::OperationState::pending, .amount_fen = 0, .reference = {}, .reason = e.what()});
      } catch (...) {
      }
    }
  }

  void later(Duration delay, std::function<void()> deliver, std::function<void()> abort) {
    const std::uint64_t key = ++pending_seq_;
    pending_[key].abort = std::move(abort);
    const TimerId timer = host_.schedule(delay, [this, key, deliver = std::move(deliver)] {
      pending_.erase(key);
      deliver();
    });
    if (timer == 0) {  // stopping: answer now rather than never
      auto p = std::move(pending_[key]);
      pending_.erase(key);
      p.abort();
      return;
    }
    pending_[key].timer = timer;
  }

  Host& host_;
  std::int64_t limit_fen_;
  std::vector<std::string> declined_;
  std::vector<std::string> step_up_;
  Duration latency_;
  std::string prefix_;
  std::string pin_;
  std::vector<std::string> token_types_;
  int pending_polls_;
  std::vector<std::string> unresponsive_;
  bool incremental_;
  std::map<std::string, Transaction, std::less<>> ledger_;
  std::map<std::uint64_t, Pending> pending_;
  std::uint64_t pending_seq_ = 0;
  std::uint64_t reference_seq_ = 0;
  std::int64_t captured_total_fen_ = 0;
  std::int64_t refunded_total_fen_ = 0;
  std::string journal_path_;
  int journal_fd_ = -1;
};

}  // namespace

PILECORE_PLUGIN(SimPayment, {.name = "sim-payment", .version = "0.1.0", .vendor = "pilecore", .license = "Apache-2.0",
                             .description = "Simulated payment method: limits, declines, step-up, top-ups, latency, idempotent ledger",
                             .config = keys})
