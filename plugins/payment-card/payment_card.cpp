// payment-card: the member card (issue #9, item 2).
//
// A card held at the reader arrives as a token. The account it pays from is found one of three
// ways (`identify_by`): `uid`, a hash of the card's UID (the UID itself is never stored, logged
// or sent); `mifare_classic`, the account number in a block of a MIFARE Classic sector, read with
// AUTH (key A or B from the site file) and READ frames through the reader's exchange, the PN532
// running the Crypto1 handshake on chip; `desfire`, the account number in a file of a DESFire
// application, read with ISO 7816-wrapped native commands after an EV1 AES authentication when a
// key is configured.
//
// The account lives either on the pile (`accounts: local`: account_store.hpp, an SQLite table
// that `pilectl accounts` manages) or at the operator's back end (`accounts: online`: HTTPS/JSON
// with idempotency keys). Authorisation holds, capture debits, cancel releases, refunds credit
// back. Every operation is keyed by the core's operation id at both kinds of source, so a repeat
// never moves money twice. An online back end that does not answer is answered honestly:
// authorisations `unavailable`, captures, voids and refunds `pending` (the core asks again).
//
// Threads: card frames go through the reader's asynchronous transceive (answers on the strand);
// the account source (the driver interface AccountSource: LocalAccounts, the table on this
// plugin's own worker thread; OnlineAccounts, the back end on the HTTPS client's thread) answers
// on its thread, and each result is handed back with Host::post. Nothing blocks the strand.
#include <date/tz.h>
#include <openssl/rand.h>

#include <pilecore/pilecore.hpp>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "account_store.hpp"
#include "card_pins.hpp"
#include "job_thread.hpp"
#include "card_protocol.hpp"
#include "https_client.hpp"

namespace {

using namespace pilecore;
using card::Bytes;
using plugins::HttpsClient;
using plugins::HttpsResponse;

constexpr ConfigKey keys[] = {
    {.key = "identify_by", .type = ConfigType::enumeration, .default_value = "uid", .allowed = "uid|mifare_classic|desfire",
     .description = "How the card names its account: its UID (hashed), an account number in a MIFARE Classic block, or in a DESFire application's file"},
    {.key = "mifare_sector", .type = ConfigType::integer, .default_value = "1", .min = 0, .max = 15,
     .description = "mifare_classic: the sector that holds the account number"},
    {.key = "mifare_block", .type = ConfigType::integer, .default_value = "0", .min = 0, .max = 2,
     .description = "mifare_classic: the data block of that sector (0 to 2) with the account number, ASCII padded with zeros"},
    {.key = "mifare_key_type", .type = ConfigType::enumeration, .default_value = "A", .allowed = "A|B",
     .description = "mifare_classic: authenticate with key A or key B of the sector"},
    {.key = "mifare_key", .type = ConfigType::string, .default_value = "\"\"", .secret = true,
     .description = "mifare_classic: the sector key, 12 hex digits (required in that mode)"},
    {.key = "desfire_aid", .type = ConfigType::string, .default_value = "\"\"",
     .description = "desfire: the application id, 6 hex digits as the number is written (C0FFEE; sent LSB first) (required in that mode)"},
    {.key = "desfire_key", .type = ConfigType::string, .default_value = "\"\"", .secret = true,
     .description = "desfire: AES-128 key 0 of the application, 32 hex digits; empty: the file is read without authentication"},
    {.key = "desfire_file", .type = ConfigType::integer, .default_value = "1", .min = 0, .max = 31,
     .description = "desfire: the file with the account number"},
    {.key = "desfire_length", .type = ConfigType::integer, .default_value = "0", .min = 0, .max = 64,
     .description = "desfire: bytes read from the start of that file (ASCII, padded with zeros); 0: the whole file", .unit = "bytes"},
    {.key = "accounts", .type = ConfigType::enumeration, .default_value = "local", .allowed = "local|online",
     .description = "Where the accounts are: a table on the pile (pilectl accounts manages it; works offline), or the operator's back end"},
    {.key = "time_zone", .type = ConfigType::string, .default_value = "Asia/Shanghai",
     .description = "local: the time zone whose calendar day the daily limits count (IANA name)"},
    {.key = "min_hold_fen", .type = ConfigType::integer, .default_value = "100", .min = 1, .max = 1e9,
     .description = "local: a hold smaller than the one asked is granted only when at least this much is free; else declined", .unit = "fen"},
    {.key = "backend_url", .type = ConfigType::string, .default_value = "\"\"",
     .description = "online: base URL of the operator's card back end (https://host[:port][/path]) (required in that mode)"},
    {.key = "backend_ca_file", .type = ConfigType::string, .default_value = "\"\"",
     .description = "online: PEM file of the CA that signs the back end's certificate; nothing else is trusted (required in that mode)"},
    {.key = "backend_api_key", .type = ConfigType::string, .default_value = "\"\"", .secret = true,
     .description = "online: bearer token the back end issued to this site (empty: none sent)"},
    {.key = "backend_timeout_ms", .type = ConfigType::integer, .default_value = "5000", .min = 100, .max = 60000,
     .description = "online: time allowed for one back-end call (connect, TLS handshake, request and answer)", .unit = "ms"},
    {.key = "token_types", .type = ConfigType::string_list, .default_value = "[card]",
     .description = "Token types this method accepts (payment.tokens in the site file routes them here)"},
};

enum class Mode { uid, mifare_classic, desfire };

struct Settings {
  Mode mode = Mode::uid;
  std::uint8_t mifare_block = 0;  ///< absolute block number
  bool mifare_key_b = false;
  card::MifareKey mifare_key{};
  std::uint32_t desfire_aid = 0;
  std::optional<card::AesKey> desfire_key;
  std::uint8_t desfire_file = 1;
  std::uint32_t desfire_length = 0;
  bool online = false;
  std::string time_zone;
  std::int64_t min_hold_fen = 100;
};

/// The one reading of the configuration, shared by validate() and the constructor.
Settings read_settings(const ConfigValues& c, const std::function<void(std::string_view, std::string)>& error) {
  Settings s;
  const std::string mode = c.string("identify_by");
  s.mode = mode == "mifare_classic" ? Mode::mifare_classic : mode == "desfire" ? Mode::desfire : Mode::uid;
  s.mifare_block = static_cast<std::uint8_t>(c.integer("mifare_sector") * 4 + c.integer("mifare_block"));
  s.mifare_key_b = c.string("mifare_key_type") == "B";
  if (s.mode == Mode::mifare_classic) {
    const auto key = card::parse_hex(c.string("mifare_key"));
    if (!key || key->size() != 6) {
      error("mifare_key", "identify_by: mifare_classic needs the sector key as 12 hex digits, e.g. A0A1A2A3A4A5");
    } else {
      std::copy(key->begin(), key->end(), s.mifare_key.begin());
    }
  }
  if (s.mode == Mode::desfire) {
    const std::string aid = c.string("desfire_aid");
    const auto a = card::parse_hex(aid);
    if (!a || a->size() != 3) {
      error("desfire_aid", "identify_by: desfire needs the application id as 6 hex digits, e.g. C0FFEE");
    } else {
      s.desfire_aid = static_cast<std::uint32_t>((*a)[0]) << 16 | static_cast<std::uint32_t>((*a)[1]) << 8 | (*a)[2];
    }
    const std::string key = c.string("desfire_key");
    if (!key.empty()) {
      const auto k = card::parse_hex(key);
      if (!k || k->size() != 16) {
        error("desfire_key", "an AES-128 key is 32 hex digits (or leave it empty to read the file without authentication)");
      } else {
        s.desfire_key.emplace();
        std::copy(k->begin(), k->end(), s.desfire_key->begin());
      }
    }
  }
  s.desfire_file = static_cast<std::uint8_t>(c.integer("desfire_file"));
  s.desfire_length = static_cast<std::uint32_t>(c.integer("desfire_length"));
  s.online = c.string("accounts") == "online";
  s.time_zone = c.string("time_zone");
  s.min_hold_fen = c.integer("min_hold_fen");
  if (!s.online) {
    try {
      (void)date::locate_zone(s.time_zone);
    } catch (const std::exception&) {
      error("time_zone", "'" + s.time_zone + "' is not a time zone known to this system (an IANA name, e.g. Asia/Shanghai)");
    }
  } else {
    try {
      plugins::HttpsUrl::parse(c.string("backend_url"));
    } catch (const std::exception& e) {
      error("backend_url", std::string("accounts: online needs the back end's https URL: ") + e.what());
    }
    std::error_code ec;
    const std::string ca = c.string("backend_ca_file");
    if (!std::filesystem::is_regular_file(ca, ec)) error("backend_ca_file", "accounts: online needs the CA file of the back end; '" + ca + "' is not a readable file");
  }
  return s;
}

payment::AuthorizationResult declined(std::string reason) {
  return {.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {}, .reason = std::move(reason), .challenge = {}};
}
payment::AuthorizationResult unavailable(std::string reason) {
  return {.decision = payment::Decision::unavailable, .authorized_fen = 0, .reference = {}, .reason = std::move(reason), .challenge = {}};
}
payment::OperationResult op_result(payment::OperationState s, std::int64_t fen, std::string ref, std::string reason) {
  return {.state = s, .amount_fen = fen, .reference = std::move(ref), .reason = std::move(reason)};
}

std::string trouble(const HttpsResponse& r) {
  if (!r.answered()) return "card back end unreachable: " + r.error;
  std::string msg = "card back end error (HTTP " + std::to_string(r.status) + ")";
  if (r.body.is_object() && r.body.contains("error") && r.body["error"].is_string()) msg += ": " + r.body["error"].get<std::string>();
  return msg;
}

using Worker = pilecore::plugins::JobThread;

/// Where the accounts are: the small driver interface between the method and its far side.
/// Each call is answered exactly once, on any thread (the method hands the answer to the
/// strand); after stop() answers may still come but are not needed.
class AccountSource {
 public:
  virtual ~AccountSource() = default;
  using HoldDone = std::function<void(payment::AuthorizationResult)>;
  using OpDone = std::function<void(payment::OperationResult)>;
  virtual void hold(const std::string& op, const std::string& txn, const std::string& account, std::int64_t amount_fen, HoldDone done) = 0;
  virtual void capture(const std::string& op, const std::string& txn, std::int64_t amount_fen, OpDone done) = 0;
  virtual void release(const std::string& op, const std::string& txn, const std::string& authorization, OpDone done) = 0;
  virtual void refund(const std::string& op, const std::string& txn, std::int64_t amount_fen, const std::string& reason, OpDone done) = 0;
  using PinDone = std::function<void(card::PinCheck, std::string error)>;
  /// Checks the PIN of `account` (risk control's step-up); only a source that verifies_pin().
  virtual void check_pin(const std::string& account, const std::string& pin, PinDone done) = 0;
  [[nodiscard]] virtual bool verifies_pin() const = 0;
  /// Finishes or abandons what is under way and joins its thread.
  virtual void stop() = 0;
  [[nodiscard]] virtual std::string where() const = 0;
  [[nodiscard]] virtual bool offline() const = 0;
};

/// accounts: local. The SQLite table (account_store.hpp) on a worker thread of its own.
class LocalAccounts final : public AccountSource {
 public:
  LocalAccounts(const Host& host, const std::filesystem::path& file, std::int64_t min_hold_fen, const date::time_zone* zone)
      : host_(host),
        file_(file),
        store_(std::make_shared<card::AccountStore>(file)),
        pins_(std::make_shared<card::CardPins>(file)),
        min_hold_fen_(min_hold_fen),
        zone_(zone) {}
  ~LocalAccounts() override { LocalAccounts::stop(); }
  LocalAccounts(const LocalAccounts&) = delete;
  LocalAccounts& operator=(const LocalAccounts&) = delete;

  void hold(const std::string& op, const std::string& txn, const std::string& account, std::int64_t amount_fen, HoldDone done) override {
    // The day is read now, when the driver asked, not when the worker gets to it.
    const std::string day = today();
    const std::int64_t now = now_ms(), min_hold = min_hold_fen_;
    worker_.submit([store = store_, op, txn, account, amount_fen, min_hold, day, now, done = std::move(done)] {
      card::HoldResult r;
      try {
        r = store->hold(op, txn, account, amount_fen, min_hold, day, now);
      } catch (const std::exception& e) {
        r.reason = std::string("the account table failed: ") + e.what();
      }
      if (r.approved) return done({.decision = payment::Decision::approved, .authorized_fen = r.amount_fen, .reference = r.reference, .reason = {}, .challenge = {}});
      done(declined(r.reason));
    });
  }
  void capture(const std::string& op, const std::string& txn, std::int64_t amount_fen, OpDone done) override {
    const std::string day = today();
    const std::int64_t now = now_ms();
    run([=](card::AccountStore& s) { return s.capture(op, txn, amount_fen, day, now); }, std::move(done));
  }
  void release(const std::string& op, const std::string& txn, const std::string&, OpDone done) override {
    const std::int64_t now = now_ms();
    run([=](card::AccountStore& s) { return s.release(op, txn, now); }, std::move(done));
  }
  void refund(const std::string& op, const std::string& txn, std::int64_t amount_fen, const std::string&, OpDone done) override {
    const std::int64_t now = now_ms();
    run([=](card::AccountStore& s) { return s.refund(op, txn, amount_fen, now); }, std::move(done));
  }
  void check_pin(const std::string& account, const std::string& pin, PinDone done) override {
    const std::int64_t now = now_ms();
    worker_.submit([pins = pins_, account, pin, now, done = std::move(done)] {
      try {
        done(pins->check(account, pin, now), {});
      } catch (const std::exception& e) {
        done(card::PinCheck::not_set, std::string("the PIN table failed: ") + e.what());
      }
    });
  }
  [[nodiscard]] bool verifies_pin() const override { return true; }
  void stop() override { worker_.stop(); }
  [[nodiscard]] std::string where() const override { return "on the pile (" + file_.string() + ")"; }
  [[nodiscard]] bool offline() const override { return true; }

 private:
  void run(std::function<card::MoneyResult(card::AccountStore&)> fn, OpDone done) {
    worker_.submit([store = store_, fn = std::move(fn), done = std::move(done)] {
      try {
        const card::MoneyResult r = fn(*store);
        done(op_result(r.confirmed ? payment::OperationState::confirmed : payment::OperationState::failed, r.amount_fen, r.reference, r.reason));
      } catch (const std::exception& e) {
        // Not done (the transaction rolled back): the core asks again with the same id.
        done(op_result(payment::OperationState::pending, 0, {}, std::string("the account table failed: ") + e.what()));
      }
    });
  }
  [[nodiscard]] std::int64_t now_ms() const { return host_.clock().now().time_since_epoch().count(); }
  /// The site's local calendar day by the host clock: the day daily limits count.
  [[nodiscard]] std::string today() const {
    const auto local = date::make_zoned(zone_, host_.clock().now()).get_local_time();
    const date::year_month_day ymd{date::floor<date::days>(local)};
    return fmt::format("{:04}-{:02}-{:02}", static_cast<int>(ymd.year()), static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()));
  }

  const Host& host_;
  std::filesystem::path file_;
  std::shared_ptr<card::AccountStore> store_;
  std::shared_ptr<card::CardPins> pins_;
  std::int64_t min_hold_fen_;
  const date::time_zone* zone_;
  Worker worker_;
};

/// accounts: online. The operator's back end over HTTPS/JSON; the core's operation ids are the
/// idempotency keys.
class OnlineAccounts final : public AccountSource {
 public:
  explicit OnlineAccounts(plugins::HttpsSettings settings) : client_(std::move(settings)) {}
  ~OnlineAccounts() override { OnlineAccounts::stop(); }
  OnlineAccounts(const OnlineAccounts&) = delete;
  OnlineAccounts& operator=(const OnlineAccounts&) = delete;

  void hold(const std::string& op, const std::string& txn, const std::string& account, std::int64_t amount_fen, HoldDone done) override {
    client_.post("/v1/cards/authorize", {{"operation_id", op}, {"transaction_id", txn}, {"account_id", account}, {"amount_fen", amount_fen}},
                 [this, op, txn, done = std::move(done)](HttpsResponse r) {
                   if (r.ok() && r.body.is_object()) {
                     const std::string decision = r.body.value("decision", "");
                     if (decision == "approved") {
                       return done({.decision = payment::Decision::approved, .authorized_fen = r.body.value("authorized_fen", std::int64_t{0}),
                                    .reference = r.body.value("reference", ""), .reason = {}, .challenge = {}});
                     }
                     if (decision == "declined") return done(declined(r.body.value("reason", "declined by the card back end")));
                   }
                   if (r.answered() && r.status >= 400 && r.status < 500) return done(declined(trouble(r)));
                   // The channel failed, not the card: unavailable, and a release in case the
                   // back end held money before its answer was lost.
                   client_.post("/v1/cards/cancel", {{"operation_id", op + "/release"}, {"transaction_id", txn}, {"authorization_id", op}}, [](HttpsResponse) {});
                   done(unavailable(trouble(r)));
                 });
  }
  void capture(const std::string& op, const std::string& txn, std::int64_t amount_fen, OpDone done) override {
    operation("capture", {{"operation_id", op}, {"transaction_id", txn}, {"amount_fen", amount_fen}}, std::move(done));
  }
  void release(const std::string& op, const std::string& txn, const std::string& authorization, OpDone done) override {
    operation("cancel", {{"operation_id", op}, {"transaction_id", txn}, {"authorization_id", authorization}}, std::move(done));
  }
  void refund(const std::string& op, const std::string& txn, std::int64_t amount_fen, const std::string& reason, OpDone done) override {
    operation("refund", {{"operation_id", op}, {"transaction_id", txn}, {"amount_fen", amount_fen}, {"reason", reason}}, std::move(done));
  }
  void stop() override { client_.stop(); }
  [[nodiscard]] std::string where() const override { return "at " + client_.url().host; }
  [[nodiscard]] bool offline() const override { return false; }
  // The card back end's API has no PIN check: risk control does not offer a PIN for these cards.
  void check_pin(const std::string&, const std::string&, PinDone done) override { done(card::PinCheck::not_set, "the card back end checks no PIN"); }
  [[nodiscard]] bool verifies_pin() const override { return false; }

 private:
  void operation(const char* what, const nlohmann::json& body, OpDone done) {
    client_.post(std::string("/v1/cards/") + what, body, [done = std::move(done)](HttpsResponse r) {
      if (!r.answered() || r.status >= 500 || (r.ok() && !r.body.is_object())) {
        // Not known whether the back end did it: pending, never "0 captured". The core asks
        // again with the same operation id, which the back end de-duplicates.
        return done(op_result(payment::OperationState::pending, 0, {}, trouble(r)));
      }
      if (!r.ok()) return done(op_result(payment::OperationState::failed, 0, {}, trouble(r)));
      const std::string state = r.body.value("state", "");
      if (state == "confirmed") return done(op_result(payment::OperationState::confirmed, r.body.value("amount_fen", std::int64_t{0}), r.body.value("reference", ""), {}));
      if (state == "pending") return done(op_result(payment::OperationState::pending, 0, {}, r.body.value("reason", "pending at the back end")));
      done(op_result(payment::OperationState::failed, 0, {}, r.body.value("reason", "refused by the card back end")));
    });
  }
  HttpsClient client_;
};

class CardMethod final : public payment::Method {
 public:
  static void validate(const ConfigValues& config, ConfigReport& report) {
    (void)read_settings(config, [&](std::string_view key, const std::string& msg) { report.error(key, msg); });
  }

  explicit CardMethod(Host& host)
      : host_(host),
        settings_(read_settings(host.config(), [](std::string_view key, const std::string& msg) { throw std::runtime_error(std::string(key) + ": " + msg); })),
        token_types_(host.config().string_list("token_types")) {}

  ~CardMethod() override { stop(); }
  CardMethod(const CardMethod&) = delete;
  CardMethod& operator=(const CardMethod&) = delete;

  [[nodiscard]] payment::Capabilities capabilities() const noexcept override {
    payment::Capabilities c;
    try {
      c.offline = !settings_.online;
      c.token_types = token_types_;
      c.channels = {{.name = settings_.online ? "card-online" : "card-local", .fee_ppm = 0}};
      c.verifies_pin = !settings_.online;  // the PINs pilectl accounts set-pin keeps (card_pins.hpp)
    } catch (...) {
    }
    return c;
  }

  Status start() noexcept override {
    try {
      life_ = std::make_shared<int>(0);
      if (settings_.online) {
        const ConfigValues& c = host_.config();
        source_ = std::make_unique<OnlineAccounts>(plugins::HttpsSettings{.url = c.string("backend_url"),
                                                                          .ca_file = c.string("backend_ca_file"),
                                                                          .timeout = std::chrono::milliseconds(c.integer("backend_timeout_ms")),
                                                                          .bearer = c.string("backend_api_key")});
      } else {
        source_ = std::make_unique<LocalAccounts>(host_, std::filesystem::path(std::string(host_.state_dir())) / "cards.db", settings_.min_hold_fen,
                                                  date::locate_zone(settings_.time_zone));
      }
      const char* how = settings_.mode == Mode::uid ? "UID" : settings_.mode == Mode::mifare_classic ? "MIFARE Classic sector" : "DESFire application";
      host_.report_state("up", fmt::format("member cards by {}, accounts {}", how, source_->where()));
      return Status::success();
    } catch (const std::exception& e) {
      return Status::error(StatusCode::failed, e.what());
    }
  }

  void stop() noexcept override {
    life_.reset();  // card answers that come later are ignored
    try {
      if (source_) source_->stop();  // finishes or abandons its work; posted answers are dropped after stop
    } catch (...) {
    }
    pin_waits_.clear();  // their step-ups were answered; the core declines them at its deadline
    auto pending = std::move(pending_);
    pending_.clear();
    for (auto& [id, on_stop] : pending) {
      try {
        on_stop();
      } catch (...) {
      }
    }
  }

  void authorize(const payment::AuthorizationRequest& request, payment::AuthorizationCallback done) noexcept override {
    try {
      const identification::Token* t = request.token;
      if (t == nullptr || t->id.empty() || std::find(token_types_.begin(), token_types_.end(), t->type) == token_types_.end()) {
        return done(declined("this token is not a member card"));
      }
      auto cb = std::make_shared<payment::AuthorizationCallback>(std::move(done));
      const std::uint64_t id = begin([cb] { (*cb)(declined("payment method stopped")); });
      auto answer = [this, id, cb](payment::AuthorizationResult r) {
        if (finish(id)) (*cb)(std::move(r));
      };
      const std::string op(request.operation_id), txn(request.transaction_id);
      const std::int64_t amount = request.amount_fen;
      const bool pin_required = request.pin_required;
      identify(*t, id, [this, id, op, txn, amount, answer, pin_required](std::optional<std::string> account, std::string why) {
        if (!account) {
          host_.log().info("{}: card declined: {}", txn, why);
          return answer(declined(why));
        }
        if (pin_required) {
          // Risk control asked for the card's PIN: the hold waits for it (answer_step_up).
          pin_waits_[op] = PinWait{.txn = txn, .account = *account, .amount = amount};
          payment::AuthorizationResult r;
          r.decision = payment::Decision::step_up;
          r.reason = "the card's PIN is asked";
          r.challenge = {.kind = payment::ChallengeKind::pin, .prompt = "请输入卡密码 / enter your card's PIN",
                         .deadline = host_.clock().now() + std::chrono::minutes(2), .methods = {}};
          return answer(std::move(r));
        }
        hold(id, op, txn, *account, amount, answer);
      });
    } catch (const std::exception& e) {
      host_.log().error("authorize: {}", e.what());
      try {
        if (done) done(declined(std::string("payment method error: ") + e.what()));
      } catch (...) {
      }
    }
  }

  void answer_step_up(std::string_view operation_id, const payment::StepUpAnswer& ans, payment::AuthorizationCallback done) noexcept override {
    try {
      const auto it = pin_waits_.find(std::string(operation_id));
      if (it == pin_waits_.end() || ans.kind != payment::ChallengeKind::pin) return done(declined("no step-up is waiting for this operation"));
      const PinWait w = it->second;
      pin_waits_.erase(it);
      auto cb = std::make_shared<payment::AuthorizationCallback>(std::move(done));
      const std::uint64_t id = begin([cb] { (*cb)(declined("payment method stopped")); });
      auto answer = [this, id, cb](payment::AuthorizationResult r) {
        if (finish(id)) (*cb)(std::move(r));
      };
      const std::string op(operation_id);
      source_->check_pin(w.account, ans.value, [this, id, op, w, answer](card::PinCheck c, std::string error) {
        host_.post([this, id, op, w, answer, c, error] {
          if (!active(id)) return;
          if (!error.empty()) {
            host_.log().error("{}: {}", w.txn, error);
            return answer(declined("the card's PIN could not be checked"));
          }
          switch (c) {
            case card::PinCheck::ok: return hold(id, op, w.txn, w.account, w.amount, answer);
            case card::PinCheck::wrong:
              host_.log().info("{}: card {}: wrong PIN", w.txn, card::mask(w.account));
              return answer(declined("wrong PIN"));
            case card::PinCheck::locked:
              host_.log().warn("{}: card {}: PIN locked after {} wrong PINs", w.txn, card::mask(w.account), card::kMaxPinFailures);
              return answer(declined("the card's PIN is locked after too many wrong PINs: ask the operator"));
            case card::PinCheck::not_set: return answer(declined("this card has no PIN: confirm in the app or pay another way"));
          }
        });
      });
    } catch (const std::exception& e) {
      host_.log().error("answer_step_up: {}", e.what());
    }
  }

  void capture(const payment::CaptureRequest& request, payment::OperationCallback done) noexcept override {
    operation(std::move(done), "capture", std::string(request.transaction_id), [op = std::string(request.operation_id), txn = std::string(request.transaction_id),
                                                                                 fen = request.amount_fen](AccountSource& s, AccountSource::OpDone d) {
      s.capture(op, txn, fen, std::move(d));
    });
  }

  void cancel(const payment::VoidRequest& request, payment::OperationCallback done) noexcept override {
    operation(std::move(done), "cancel", std::string(request.transaction_id), [op = std::string(request.operation_id), txn = std::string(request.transaction_id),
                                                                                auth = std::string(request.authorization_id)](AccountSource& s, AccountSource::OpDone d) {
      s.release(op, txn, auth, std::move(d));
    });
  }

  void refund(const payment::RefundRequest& request, payment::OperationCallback done) noexcept override {
    operation(std::move(done), "refund", std::string(request.transaction_id), [op = std::string(request.operation_id), txn = std::string(request.transaction_id),
                                                                               fen = request.amount_fen, why = std::string(request.reason)](AccountSource& s, AccountSource::OpDone d) {
      s.refund(op, txn, fen, why, std::move(d));
    });
  }

 private:
  using Identified = std::function<void(std::optional<std::string> account, std::string why)>;
  using Reply = identification::Exchange::Reply;

  // --- bookkeeping of calls in flight: each is answered once, by its flow or by stop() -------

  std::uint64_t begin(std::function<void()> on_stop) {
    const std::uint64_t id = ++seq_;
    pending_[id] = std::move(on_stop);
    return id;
  }
  bool active(std::uint64_t id) const { return pending_.count(id) != 0; }
  bool finish(std::uint64_t id) { return pending_.erase(id) != 0; }

  // --- identification -------------------------------------------------------------------------

  /// Sends one frame; the answer comes to `next` on the strand unless the method stopped or
  /// the call was answered meanwhile.
  void send(std::uint64_t id, const std::shared_ptr<identification::Exchange>& x, const Bytes& frame, Reply next) {
    std::weak_ptr<int> life = life_;
    x->transceive(frame, [this, life, id, next = std::move(next)](Status st, std::vector<std::uint8_t> r) {
      if (life.expired() || !active(id)) return;
      next(std::move(st), std::move(r));
    });
  }

  void identify(const identification::Token& t, std::uint64_t id, Identified done) {
    if (settings_.mode == Mode::uid) {
      try {
        return done(card::uid_account_id(std::string_view(t.id)), {});
      } catch (const std::exception&) {
        return done(std::nullopt, "the card's UID is not readable");
      }
    }
    if (!t.exchange || !t.exchange->present()) return done(std::nullopt, "the card left the reader before it could be read: present it again");
    if (settings_.mode == Mode::mifare_classic) {
      const auto uid = card::parse_hex(t.id);
      if (!uid || uid->size() < 4) return done(std::nullopt, "the card's UID is not readable");
      return read_mifare(id, t.exchange, *uid, 3, std::move(done));
    }
    read_desfire(id, t.exchange, std::move(done));
  }

  static std::string left_or(const std::shared_ptr<identification::Exchange>& x, std::string why) {
    return x->present() ? std::move(why) : "the card left the reader before it could be read: present it again";
  }

  void read_mifare(std::uint64_t id, std::shared_ptr<identification::Exchange> x, Bytes uid, int tries, Identified done) {
    const std::uint8_t block = settings_.mifare_block;
    send(id, x, card::mifare_auth(settings_.mifare_key_b, block, settings_.mifare_key, uid),
         [this, id, x, uid, tries, block, done](Status st, Bytes) {
           if (!st.ok()) {
             const unsigned sector = block / 4U;
             host_.log().warn("a card refused the configured key {} of sector {}", settings_.mifare_key_b ? 'B' : 'A', sector);
             return done(std::nullopt, left_or(x, fmt::format("the card refused the site's key for sector {}: not a member card of this operator", sector)));
           }
           send(id, x, card::mifare_read(block), [this, id, x, uid, tries, done](Status st2, Bytes r) {
             if (!st2.ok() || r.size() != 16) {
               // The reader's presence check re-selects a MIFARE Classic card, which forgets its
               // authentication; one that fell between AUTH and READ costs one more round.
               if (tries > 1 && x->present()) return read_mifare(id, x, uid, tries - 1, done);
               return done(std::nullopt, left_or(x, "the card's account block could not be read"));
             }
             auto account = card::account_from_bytes(r);
             if (!account) return done(std::nullopt, "the card's account block holds no account number");
             done(std::move(account), {});
           });
         });
  }

  void read_desfire(std::uint64_t id, std::shared_ptr<identification::Exchange> x, Identified done) {
    send(id, x, card::desfire_select(settings_.desfire_aid), [this, id, x, done](Status st, Bytes r) {
      const auto a = st.ok() ? card::desfire_answer(r) : std::nullopt;
      if (!a) return done(std::nullopt, left_or(x, "the card does not answer DESFire commands"));
      if (a->status != 0x00) return done(std::nullopt, "not a member card of this operator: " + card::desfire_status_text(a->status));
      if (!settings_.desfire_key) return read_desfire_file(id, x, done);
      auto auth = std::make_shared<card::DesfireAesAuth>(*settings_.desfire_key, random_block());
      const std::array<std::uint8_t, 1> key_no = {0};
      send(id, x, card::desfire_command(0xAA, key_no), [this, id, x, auth, done](Status st2, Bytes r2) {
        const auto a2 = st2.ok() ? card::desfire_answer(r2) : std::nullopt;
        if (!a2) return done(std::nullopt, left_or(x, "the card did not answer the authentication"));
        const auto reply = a2->status == 0xAF ? auth->answer_challenge(a2->data) : std::nullopt;
        if (!reply) return done(std::nullopt, "the card refused authentication: " + card::desfire_status_text(a2->status));
        send(id, x, card::desfire_command(0xAF, *reply), [this, id, x, auth, done](Status st3, Bytes r3) {
          const auto a3 = st3.ok() ? card::desfire_answer(r3) : std::nullopt;
          if (!a3) return done(std::nullopt, left_or(x, "the card did not finish the authentication"));
          if (a3->status != 0x00 || !auth->verify(a3->data)) {
            host_.log().warn("a DESFire card failed authentication with the site's key ({})", card::desfire_status_text(a3->status));
            return done(std::nullopt, "the card failed authentication with the site's key: not a member card of this operator");
          }
          read_desfire_file(id, x, done);
        });
      });
    });
  }

  void read_desfire_file(std::uint64_t id, const std::shared_ptr<identification::Exchange>& x, Identified done) {
    send(id, x, card::desfire_read(settings_.desfire_file, 0, settings_.desfire_length), [x, done](Status st, Bytes r) {
      const auto a = st.ok() ? card::desfire_answer(r) : std::nullopt;
      if (!a) return done(std::nullopt, left_or(x, "the card's account file could not be read"));
      if (a->status != 0x00) return done(std::nullopt, "the card's account file could not be read: " + card::desfire_status_text(a->status));
      auto account = card::account_from_bytes(a->data);
      if (!account) return done(std::nullopt, "the card's account file holds no account number");
      done(std::move(account), {});
    });
  }

  static std::array<std::uint8_t, 16> random_block() {
    std::array<std::uint8_t, 16> b{};
    if (RAND_bytes(b.data(), 16) != 1) throw std::runtime_error("no random bytes for the card authentication");
    return b;
  }

  // --- the account source ----------------------------------------------------------------------

  void hold(std::uint64_t id, const std::string& op, const std::string& txn, const std::string& account, std::int64_t amount,
            const std::function<void(payment::AuthorizationResult)>& answer) {
    source_->hold(op, txn, account, amount, [this, id, txn, account, answer](payment::AuthorizationResult r) {
      host_.post([this, id, txn, account, answer, r = std::move(r)] {
        if (!active(id)) return;
        if (r.decision == payment::Decision::approved) {
          host_.log().info("{}: card {} holds {} fen", txn, card::mask(account), r.authorized_fen);
        } else {
          host_.log().info("{}: card {} {}: {}", txn, card::mask(account), payment::to_string(r.decision), r.reason);
        }
        answer(r);
      });
    });
  }

  void operation(payment::OperationCallback done, const char* what, const std::string& txn,
                 const std::function<void(AccountSource&, AccountSource::OpDone)>& call) noexcept {
    try {
      auto cb = std::make_shared<payment::OperationCallback>(std::move(done));
      const std::uint64_t id = begin([cb] { (*cb)(op_result(payment::OperationState::pending, 0, {}, "payment method stopped")); });
      call(*source_, [this, id, cb, what, txn](payment::OperationResult r) {
        host_.post([this, id, cb, what, txn, r = std::move(r)] {
          if (!finish(id)) return;
          if (r.state != payment::OperationState::confirmed) host_.log().warn("{}: {} {}: {}", txn, what, payment::to_string(r.state), r.reason);
          (*cb)(r);
        });
      });
    } catch (const std::exception& e) {
      try {
        if (done) done(op_result(payment::OperationState::pending, 0, {}, e.what()));
      } catch (...) {
      }
    }
  }

  Host& host_;
  Settings settings_;
  std::vector<std::string> token_types_;
  std::unique_ptr<AccountSource> source_;
  std::shared_ptr<int> life_;
  std::map<std::uint64_t, std::function<void()>> pending_;
  /// Authorisations waiting for the card's PIN (risk step-up), by operation id.
  struct PinWait {
    std::string txn, account;
    std::int64_t amount = 0;
  };
  std::map<std::string, PinWait> pin_waits_;
  std::uint64_t seq_ = 0;
};

}  // namespace

PILECORE_PLUGIN(CardMethod, {.name = "payment-card", .version = "0.1.0", .vendor = "pilecore", .license = "Apache-2.0",
                             .description = "Member card by UID, MIFARE Classic sector or DESFire application; accounts on the pile (SQLite) or at the operator's back end",
                             .config = keys})
