// payment-credit: charge now, pay later.
//
// authorize() asks the credit provider (HTTPS/JSON, its certificate checked against
// `provider_ca_file`) for the user's score. Above `score_threshold` (650 by default) credit is
// granted without prepayment, up to `credit_limit_fen`. At or below it the answer is declined
// with a reason, or, when the site lists `step_up_methods`, a step-up asking the driver to pay
// with one of them.
//
// capture() turns the bill into a debt: the answer is `pending`, the debt is written to SQLite
// in the instance's state directory (owner-only), and the automatic debit is scheduled
// `debit_delay_s` later, then retried with backoff (`retry_first_s` doubling to `retry_max_s`)
// until it succeeds. The core's saga asks the capture again with the same operation id; once the
// debit has succeeded the answer is `confirmed`. The debit carries the capture's operation id, so
// the provider never debits twice, across retries and restarts alike. Debts and their timers
// survive a restart: start() reschedules every open debt from the database.
//
// A debt still open after `debit_within_h` blocks further credit for that user. The user is
// known to the database only as a keyed hash (HMAC-SHA256 with a random key of this instance),
// never by the id in clear; the provider's agreement id is what a debit names.
#include <pilecore/pilecore.hpp>

#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "https_client.hpp"
#include "sqlite_stmt.hpp"

namespace {

using namespace pilecore;
using plugins::HttpsClient;
using plugins::HttpsResponse;
namespace fs = std::filesystem;

constexpr ConfigKey keys[] = {
    {.key = "provider_url", .type = ConfigType::string, .required = true,
     .description = "Base URL of the credit provider's API (https://host[:port][/path])"},
    {.key = "provider_ca_file", .type = ConfigType::string, .required = true,
     .description = "PEM file of the CA that signs the provider's certificate; nothing else is trusted"},
    {.key = "provider_timeout_ms", .type = ConfigType::integer, .default_value = "5000", .min = 100, .max = 60000,
     .description = "Time allowed for one provider call (connect, TLS handshake, request and answer)", .unit = "ms"},
    {.key = "provider_api_key", .type = ConfigType::string, .default_value = "\"\"", .secret = true,
     .description = "Bearer token the provider issued to this site (empty: none sent)"},
    {.key = "score_threshold", .type = ConfigType::integer, .default_value = "650", .min = 0, .max = 1000,
     .description = "Credit is granted to a score above this; at or below it the answer is declined (or a step-up)"},
    {.key = "credit_limit_fen", .type = ConfigType::integer, .default_value = "50000", .min = 1, .max = 1e9,
     .description = "Most granted for one session; the core stops charging there", .unit = "fen"},
    {.key = "step_up_methods", .type = ConfigType::string_list, .default_value = "[]",
     .description = "Payment instances a driver refused credit may pay with instead (a step-up); empty: a plain decline"},
    {.key = "token_types", .type = ConfigType::string_list, .default_value = "[credit, app]",
     .description = "Token types this method accepts (payment.tokens in the site file routes them here)"},
    {.key = "debit_delay_s", .type = ConfigType::integer, .default_value = "3600", .min = 0, .max = 86400,
     .description = "Time from the capture (the debt) to the first automatic debit", .unit = "s"},
    {.key = "debit_within_h", .type = ConfigType::integer, .default_value = "24", .min = 1, .max = 720,
     .description = "A debt not debited this long after the capture is overdue: the user gets no more credit until it is paid",
     .unit = "h"},
    {.key = "retry_first_s", .type = ConfigType::integer, .default_value = "60", .min = 1, .max = 86400,
     .description = "Wait after a failed debit before the next attempt; doubles after each failure", .unit = "s"},
    {.key = "retry_max_s", .type = ConfigType::integer, .default_value = "3600", .min = 1, .max = 86400,
     .description = "Longest wait between two debit attempts", .unit = "s"},
};

payment::AuthorizationResult declined(std::string reason) {
  return {.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {}, .reason = std::move(reason), .challenge = {}};
}

payment::AuthorizationResult unavailable(std::string reason) {
  return {.decision = payment::Decision::unavailable, .authorized_fen = 0, .reference = {}, .reason = std::move(reason), .challenge = {}};
}
payment::OperationResult result(payment::OperationState s, std::int64_t fen, std::string ref, std::string reason) {
  return {.state = s, .amount_fen = fen, .reference = std::move(ref), .reason = std::move(reason)};
}

std::string trouble(const HttpsResponse& r) {
  if (!r.answered()) return "credit provider unreachable: " + r.error;
  std::string msg = "credit provider error (HTTP " + std::to_string(r.status) + ")";
  if (r.body.is_object() && r.body.contains("error") && r.body["error"].is_string()) msg += ": " + r.body["error"].get<std::string>();
  return msg;
}

std::int64_t ms(TimePoint t) { return t.time_since_epoch().count(); }

// --- a small SQLite wrapper -----------------------------------------------------------------

/// Statements on this plugin's database: errors name it.
class Stmt : public pilecore::plugins::SqliteStmt {
 public:
  Stmt(sqlite3* db, const char* sql) : SqliteStmt(db, sql, "sqlite") {}
};

struct Debt {
  std::string op, txn, user_key, agreement, state, reference;
  std::int64_t amount_fen = 0, due_ms = 0, deadline_ms = 0, next_ms = 0, attempts = 0;
};

class CreditPay final : public payment::Method {
 public:
  static void validate(const ConfigValues& config, ConfigReport& report) noexcept {
    try {
      plugins::HttpsUrl::parse(config.string("provider_url"));
      std::error_code ec;
      const std::string ca = config.string("provider_ca_file");
      if (!fs::is_regular_file(ca, ec)) report.error("provider_ca_file", "'" + ca + "' is not a readable file");
      if (config.integer("debit_delay_s") >= config.integer("debit_within_h") * 3600) {
        report.error("debit_delay_s", "the first debit must come before the debt is overdue (debit_within_h)");
      }
      if (config.integer("retry_first_s") > config.integer("retry_max_s")) report.error("retry_first_s", "must not be above retry_max_s");
    } catch (const std::exception& e) {
      report.error("provider_url", e.what());
    }
  }

  explicit CreditPay(Host& host)
      : host_(host),
        threshold_(host.config().integer("score_threshold")),
        limit_fen_(host.config().integer("credit_limit_fen")),
        step_up_methods_(host.config().string_list("step_up_methods")),
        token_types_(host.config().string_list("token_types")),
        debit_delay_(std::chrono::seconds(host.config().integer("debit_delay_s"))),
        within_(std::chrono::hours(host.config().integer("debit_within_h"))),
        retry_first_(std::chrono::seconds(host.config().integer("retry_first_s"))),
        retry_max_(std::chrono::seconds(host.config().integer("retry_max_s"))),
        client_(std::make_unique<HttpsClient>(plugins::HttpsSettings{.url = host.config().string("provider_url"),
                                                                     .ca_file = host.config().string("provider_ca_file"),
                                                                     .timeout = std::chrono::milliseconds(host.config().integer("provider_timeout_ms")),
                                                                     .bearer = host.config().string("provider_api_key")})) {}

  ~CreditPay() override {
    if (db_ != nullptr) sqlite3_close(db_);
  }
  CreditPay(const CreditPay&) = delete;
  CreditPay& operator=(const CreditPay&) = delete;

  [[nodiscard]] payment::Capabilities capabilities() const noexcept override {
    payment::Capabilities c;
    try {
      c.needs_prepayment = false;
      c.token_types = token_types_;
      c.channels = {{.name = "credit", .fee_ppm = 6000}};
    } catch (...) {
    }
    return c;
  }

  Status start() noexcept override {
    try {
      open_store();
      std::size_t n = 0;
      for (const Debt& d : open_debts()) {
        schedule_debit(d.op, TimePoint(std::chrono::milliseconds(d.next_ms)));
        ++n;
      }
      host_.report_state("up", fmt::format("credit provider {}; {} open debt(s)", client_->url().host, n));
      return Status::success();
    } catch (const std::exception& e) {
      return Status::error(StatusCode::failed, e.what());
    }
  }

  void stop() noexcept override {
    for (auto& [op, id] : timers_) host_.cancel(id);
    timers_.clear();
    calls_.stop();
  }

  void authorize(const payment::AuthorizationRequest& request, payment::AuthorizationCallback done) noexcept override {
    try {
      const std::string txn(request.transaction_id), op(request.operation_id);
      const identification::Token* t = request.token;
      if (t == nullptr || t->id.empty() || std::find(token_types_.begin(), token_types_.end(), t->type) == token_types_.end()) {
        return done(declined("this token cannot pay on credit"));
      }
      {  // a repeat of a granted authorisation: the same answer
        Stmt s(db_, "SELECT granted_fen, agreement FROM grants WHERE txn=?");
        s.bind(1, txn);
        if (s.step()) {
          return done({.decision = payment::Decision::approved, .authorized_fen = s.i64(0), .reference = s.text(1), .reason = {}, .challenge = {}});
        }
      }
      const std::string user = user_key(t->type + ":" + t->id);
      const TimePoint now = host_.clock().now();
      {
        Stmt s(db_, "SELECT COUNT(*) FROM debts WHERE user_key=? AND state='open' AND deadline_ms<=?");
        s.bind(1, user).bind(2, ms(now));
        s.step();
        if (s.i64(0) > 0) {
          host_.log().warn("{}: credit refused: the user has an overdue debt", txn);
          return done(declined("an unpaid credit bill is past its deadline: no credit until it is paid"));
        }
      }
      auto cb = std::make_shared<payment::AuthorizationCallback>(std::move(done));
      const std::int64_t asked = request.amount_fen;
      call(
          "/v1/credit/score", {{"user_id", t->id}, {"operation_id", op}},
          [this, cb, txn, op, user, asked](const HttpsResponse& r) {
            if (r.status == 404) return (*cb)(declined("no credit agreement for this user"));
            if (!r.ok() || !r.body.is_object() || !r.body.contains("score")) {
              host_.log().warn("{}: credit check not answered: {}", txn, trouble(r));
              // The channel failed, not the payer: unavailable, so the core may fail over.
              return (*cb)(unavailable(trouble(r)));
            }
            const std::int64_t score = r.body.value("score", std::int64_t{0});
            if (score <= threshold_) {
              const std::string why = fmt::format("credit score at or below the site's threshold of {}", threshold_);
              host_.log().info("{}: credit refused: {}", txn, why);
              if (step_up_methods_.empty()) return (*cb)(declined(why));
              awaiting_.insert(op);
              return (*cb)({.decision = payment::Decision::step_up, .authorized_fen = 0, .reference = {}, .reason = why,
                            .challenge = {.kind = payment::ChallengeKind::other_method,
                                          .prompt = "信用额度不可用，请换用其他支付方式 / credit is not available: please pay another way",
                                          .deadline = host_.clock().now() + std::chrono::minutes(2),
                                          .methods = step_up_methods_}});
            }
            const std::int64_t granted = std::min(asked, limit_fen_);
            const std::string agreement = r.body.value("agreement_id", "");
            Stmt s(db_, "INSERT OR IGNORE INTO grants(txn, op, user_key, agreement, granted_fen, created_ms) VALUES(?,?,?,?,?,?)");
            s.bind(1, txn).bind(2, op).bind(3, user).bind(4, agreement).bind(5, granted).bind(6, ms(host_.clock().now()));
            s.step();
            host_.log().info("{}: credit granted, up to {} fen", txn, granted);
            (*cb)({.decision = payment::Decision::approved, .authorized_fen = granted, .reference = agreement, .reason = {}, .challenge = {}});
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

  void answer_step_up(std::string_view operation_id, const payment::StepUpAnswer& answer, payment::AuthorizationCallback done) noexcept override {
    try {
      const bool waited = awaiting_.erase(std::string(operation_id)) > 0;
      // Credit is not granted either way: a driver who paid with another method is that method's.
      done(declined(!waited ? "no step-up is waiting for this operation"
                    : answer.confirmed ? "paid with another method"
                                       : "credit not granted"));
    } catch (...) {
    }
  }

  void capture(const payment::CaptureRequest& request, payment::OperationCallback done) noexcept override {
    try {
      const std::string op(request.operation_id), txn(request.transaction_id);
      if (auto d = debt(op)) {
        if (d->state == "paid") return done(result(payment::OperationState::confirmed, d->amount_fen, d->reference, {}));
        return done(result(payment::OperationState::pending, 0, d->agreement,
                           d->attempts == 0 ? "debit scheduled" : fmt::format("debit retried {} time(s)", d->attempts)));
      }
      Stmt g(db_, "SELECT user_key, agreement, granted_fen, cancelled FROM grants WHERE txn=?");
      g.bind(1, txn);
      if (!g.step()) return done(result(payment::OperationState::failed, 0, {}, "no credit was granted for this transaction"));
      if (g.i64(3) != 0) return done(result(payment::OperationState::failed, 0, {}, "the credit was released; nothing to capture"));
      if (request.amount_fen < 0 || request.amount_fen > g.i64(2)) {
        return done(result(payment::OperationState::failed, 0, {}, fmt::format("{} fen is outside the {} fen granted", request.amount_fen, g.i64(2))));
      }
      if (request.amount_fen == 0) return done(result(payment::OperationState::confirmed, 0, g.text(1), "nothing owed"));
      const TimePoint now = host_.clock().now();
      Debt d{.op = op, .txn = txn, .user_key = g.text(0), .agreement = g.text(1), .state = "open", .reference = {}, .amount_fen = request.amount_fen,
             .due_ms = ms(now + debit_delay_), .deadline_ms = ms(now + within_), .next_ms = ms(now + debit_delay_), .attempts = 0};
      Stmt s(db_,
             "INSERT INTO debts(op, txn, user_key, agreement, amount_fen, created_ms, due_ms, deadline_ms, next_ms, attempts, state) "
             "VALUES(?,?,?,?,?,?,?,?,?,0,'open')");
      s.bind(1, d.op).bind(2, d.txn).bind(3, d.user_key).bind(4, d.agreement).bind(5, d.amount_fen).bind(6, ms(now)).bind(7, d.due_ms);
      s.bind(8, d.deadline_ms).bind(9, d.next_ms);
      s.step();
      schedule_debit(op, now + debit_delay_);
      host_.log().info("{}: {} fen owed; the debit is due in {} s, overdue after {} h", txn, d.amount_fen,
                       std::chrono::duration_cast<std::chrono::seconds>(debit_delay_).count(), std::chrono::duration_cast<std::chrono::hours>(within_).count());
      done(result(payment::OperationState::pending, 0, d.agreement, "debit scheduled"));
    } catch (const std::exception& e) {
      host_.log().error("capture: {}", e.what());
      try {
        if (done) done(result(payment::OperationState::pending, 0, {}, e.what()));
      } catch (...) {
      }
    }
  }

  void cancel(const payment::VoidRequest& request, payment::OperationCallback done) noexcept override {
    try {
      const std::string txn(request.transaction_id);
      Stmt d(db_, "SELECT COUNT(*) FROM debts WHERE txn=?");
      d.bind(1, txn);
      d.step();
      if (d.i64(0) > 0) return done(result(payment::OperationState::failed, 0, {}, "already captured; refund it instead"));
      Stmt s(db_, "UPDATE grants SET cancelled=1 WHERE txn=?");
      s.bind(1, txn);
      s.step();
      // Credit holds no money: there is nothing to give back.
      done(result(payment::OperationState::confirmed, 0, {}, {}));
    } catch (const std::exception& e) {
      try {
        done(result(payment::OperationState::pending, 0, {}, e.what()));
      } catch (...) {
      }
    }
  }

  void refund(const payment::RefundRequest& request, payment::OperationCallback done) noexcept override {
    try {
      const std::string op(request.operation_id), txn(request.transaction_id);
      {
        Stmt s(db_, "SELECT amount_fen, reference FROM refunds WHERE op=?");
        s.bind(1, op);
        if (s.step()) return done(result(payment::OperationState::confirmed, s.i64(0), s.text(1), {}));
      }
      std::optional<Debt> d;
      {
        Stmt s(db_, "SELECT op FROM debts WHERE txn=?");
        s.bind(1, txn);
        if (s.step()) d = debt(s.text(0));
      }
      if (!d) return done(result(payment::OperationState::failed, 0, {}, "nothing was captured"));
      std::int64_t refunded = 0;
      {
        Stmt s(db_, "SELECT COALESCE(SUM(amount_fen), 0) FROM refunds WHERE txn=?");
        s.bind(1, txn);
        s.step();
        refunded = s.i64(0);
      }
      if (request.amount_fen <= 0 || refunded + request.amount_fen > d->amount_fen) {
        return done(result(payment::OperationState::failed, 0, {}, fmt::format("{} fen is above what is left to refund", request.amount_fen)));
      }
      if (d->state == "open") {
        // Not debited yet: the refund lowers what the debit will take.
        Stmt u(db_, "UPDATE debts SET amount_fen=amount_fen-? WHERE op=?");
        u.bind(1, request.amount_fen).bind(2, d->op);
        u.step();
        record_refund(op, txn, request.amount_fen, "debt-reduced");
        return done(result(payment::OperationState::confirmed, request.amount_fen, "debt-reduced", {}));
      }
      auto cb = std::make_shared<payment::OperationCallback>(std::move(done));
      const std::int64_t amount = request.amount_fen;
      call(
          "/v1/credit/refund", {{"operation_id", op}, {"debit_operation_id", d->op}, {"amount_fen", amount}},
          [this, cb, op, txn, amount](const HttpsResponse& r) {
            if (!r.answered() || r.status >= 500 || !r.body.is_object()) return (*cb)(result(payment::OperationState::pending, 0, {}, trouble(r)));
            if (r.body.value("state", "") != "confirmed") {
              return (*cb)(result(payment::OperationState::failed, 0, {}, r.body.value("reason", trouble(r))));
            }
            record_refund(op, txn, amount, r.body.value("reference", ""));
            (*cb)(result(payment::OperationState::confirmed, amount, r.body.value("reference", ""), {}));
          },
          [cb] { (*cb)(result(payment::OperationState::pending, 0, {}, "payment method stopped")); });
    } catch (const std::exception& e) {
      try {
        if (done) done(result(payment::OperationState::pending, 0, {}, e.what()));
      } catch (...) {
      }
    }
  }

 private:
  /// One provider call; `answered` runs on the strand with the response, `stopped` instead when
  /// the instance stops first. Exactly one of them runs.
  void call(const std::string& path, const nlohmann::json& body, std::function<void(const HttpsResponse&)> answered, std::function<void()> stopped) {
    calls_.call(path, body, std::move(answered), std::move(stopped));
  }

  void open_store() {
    const fs::path dir(std::string(host_.state_dir()));
    const fs::path file = dir / "credit.db";
    // Owner-only from the first byte: the file is created before SQLite opens it.
    const int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) throw std::runtime_error("cannot create " + file.string());
    ::fchmod(fd, 0600);
    ::close(fd);
    db_ = plugins::open_plugin_db(file.string(), "credit database");
    exec("PRAGMA journal_mode=WAL");
    exec("PRAGMA synchronous=FULL");  // a debt is money: on disk before the capture is answered
    exec("CREATE TABLE IF NOT EXISTS grants(txn TEXT PRIMARY KEY, op TEXT, user_key TEXT, agreement TEXT, granted_fen INTEGER, "
         "created_ms INTEGER, cancelled INTEGER NOT NULL DEFAULT 0)");
    exec("CREATE TABLE IF NOT EXISTS debts(op TEXT PRIMARY KEY, txn TEXT, user_key TEXT, agreement TEXT, amount_fen INTEGER, created_ms INTEGER, "
         "due_ms INTEGER, deadline_ms INTEGER, next_ms INTEGER, attempts INTEGER, state TEXT, reference TEXT, last_error TEXT, paid_ms INTEGER)");
    exec("CREATE INDEX IF NOT EXISTS debts_user ON debts(user_key, state)");
    exec("CREATE TABLE IF NOT EXISTS refunds(op TEXT PRIMARY KEY, txn TEXT, amount_fen INTEGER, reference TEXT)");
    exec("CREATE TABLE IF NOT EXISTS secrets(name TEXT PRIMARY KEY, value BLOB)");
    // The key of the user hash: random, made once, kept with the debts it keys.
    load_or_make_key();
    for (const char* suffix : {"-wal", "-shm"}) ::chmod((file.string() + suffix).c_str(), 0600);
  }

  void load_or_make_key() {
    sqlite3_stmt* s = nullptr;
    sqlite3_prepare_v2(db_, "SELECT value FROM secrets WHERE name='user_key'", -1, &s, nullptr);
    if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_bytes(s, 0) == 32) {
      const auto* p = static_cast<const unsigned char*>(sqlite3_column_blob(s, 0));
      key_.assign(p, p + 32);
    }
    sqlite3_finalize(s);
    if (!key_.empty()) return;
    key_.resize(32);
    if (RAND_bytes(key_.data(), 32) != 1) throw std::runtime_error("no random bytes for the user key");
    sqlite3_prepare_v2(db_, "INSERT INTO secrets(name, value) VALUES('user_key', ?)", -1, &s, nullptr);
    sqlite3_bind_blob(s, 1, key_.data(), 32, SQLITE_TRANSIENT);
    const int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE) throw std::runtime_error(std::string("cannot store the user key: ") + sqlite3_errmsg(db_));
  }

  void exec(const char* sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err ? err : "unknown error";
      sqlite3_free(err);
      throw std::runtime_error("sqlite: " + msg);
    }
  }

  [[nodiscard]] std::string user_key(const std::string& token) const {
    unsigned char out[32];
    std::size_t len = 0;
    if (EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, key_.data(), key_.size(), reinterpret_cast<const unsigned char*>(token.data()),
                  token.size(), out, sizeof out, &len) == nullptr) {
      throw std::runtime_error("HMAC failed");
    }
    std::string hex;
    for (std::size_t i = 0; i < len; ++i) hex += fmt::format("{:02x}", out[i]);
    return hex;
  }

  std::optional<Debt> debt(const std::string& op) {
    Stmt s(db_, "SELECT op, txn, user_key, agreement, state, COALESCE(reference, ''), amount_fen, due_ms, deadline_ms, next_ms, attempts FROM debts WHERE op=?");
    s.bind(1, op);
    if (!s.step()) return std::nullopt;
    return Debt{.op = s.text(0), .txn = s.text(1), .user_key = s.text(2), .agreement = s.text(3), .state = s.text(4), .reference = s.text(5),
                .amount_fen = s.i64(6), .due_ms = s.i64(7), .deadline_ms = s.i64(8), .next_ms = s.i64(9), .attempts = s.i64(10)};
  }

  std::vector<Debt> open_debts() {
    std::vector<std::string> ops;
    Stmt s(db_, "SELECT op FROM debts WHERE state='open' ORDER BY next_ms");
    while (s.step()) ops.push_back(s.text(0));
    std::vector<Debt> out;
    for (const auto& op : ops) {
      if (auto d = debt(op)) out.push_back(std::move(*d));
    }
    return out;
  }

  void record_refund(const std::string& op, const std::string& txn, std::int64_t fen, const std::string& reference) {
    Stmt s(db_, "INSERT OR IGNORE INTO refunds(op, txn, amount_fen, reference) VALUES(?,?,?,?)");
    s.bind(1, op).bind(2, txn).bind(3, fen).bind(4, reference);
    s.step();
  }

  void schedule_debit(const std::string& op, TimePoint at) {
    const Duration delay = std::max(Duration(0), std::chrono::duration_cast<Duration>(at - host_.clock().now()));
    if (auto it = timers_.find(op); it != timers_.end()) host_.cancel(it->second);
    const TimerId id = host_.schedule(delay, [this, op] {
      timers_.erase(op);
      debit(op);
    });
    if (id != 0) timers_[op] = id;
  }

  void debit(const std::string& op) {
    try {
      auto d = debt(op);
      if (!d || d->state != "open" || debiting_.count(op) != 0) return;
      if (d->amount_fen <= 0) {  // refunded in full before the debit: nothing owed
        settle(*d, "nothing-owed");
        return;
      }
      debiting_.insert(op);
      call(
          "/v1/credit/debit", {{"operation_id", op}, {"agreement_id", d->agreement}, {"amount_fen", d->amount_fen}},
          [this, op](const HttpsResponse& r) {
            debiting_.erase(op);
            auto cur = debt(op);
            if (!cur || cur->state != "open") return;
            if (r.ok() && r.body.is_object() && r.body.value("state", "") == "confirmed") return settle(*cur, r.body.value("reference", ""));
            const std::string why = r.ok() && r.body.is_object() ? r.body.value("reason", "declined") : trouble(r);
            retry_later(*cur, why);
          },
          [this, op] { debiting_.erase(op); });
    } catch (const std::exception& e) {
      host_.log().error("debit: {}", e.what());
    }
  }

  void settle(const Debt& d, const std::string& reference) {
    Stmt s(db_, "UPDATE debts SET state='paid', reference=?, paid_ms=? WHERE op=?");
    s.bind(1, reference).bind(2, ms(host_.clock().now())).bind(3, d.op);
    s.step();
    host_.log().info("{}: debt of {} fen debited (ref {}) after {} failed attempt(s)", d.txn, d.amount_fen, reference, d.attempts);
  }

  void retry_later(const Debt& d, const std::string& why) {
    const std::int64_t attempts = d.attempts + 1;
    Duration wait = retry_first_;
    for (std::int64_t i = 1; i < attempts && wait < retry_max_; ++i) wait *= 2;
    wait = std::min(wait, retry_max_);
    const TimePoint now = host_.clock().now();
    Stmt s(db_, "UPDATE debts SET attempts=?, next_ms=?, last_error=? WHERE op=?");
    s.bind(1, attempts).bind(2, ms(now + wait)).bind(3, why).bind(4, d.op);
    s.step();
    const bool overdue = ms(now) >= d.deadline_ms;
    host_.log().warn("{}: debit attempt {} failed: {}; next in {} s{}", d.txn, attempts, why,
                     std::chrono::duration_cast<std::chrono::seconds>(wait).count(), overdue ? " (overdue: the user's credit is blocked)" : "");
    schedule_debit(d.op, now + wait);
  }

  Host& host_;
  std::int64_t threshold_;
  std::int64_t limit_fen_;
  std::vector<std::string> step_up_methods_;
  std::vector<std::string> token_types_;
  Duration debit_delay_, within_, retry_first_, retry_max_;
  std::unique_ptr<HttpsClient> client_;
  sqlite3* db_ = nullptr;
  std::vector<unsigned char> key_;
  plugins::ProviderCalls calls_{*client_, [this](std::function<void()> fn) { host_.post(std::move(fn)); }};
  std::set<std::string> awaiting_;   // operation ids with a step-up out
  std::set<std::string> debiting_;   // debts with a debit in flight
  std::map<std::string, TimerId> timers_;
};

}  // namespace

PILECORE_PLUGIN(CreditPay, {.name = "payment-credit", .version = "0.1.0", .vendor = "pilecore", .license = "Apache-2.0",
                            .description = "Charge now, pay later: a credit score check, the bill as a debt, the automatic debit retried across restarts",
                            .config = keys})
