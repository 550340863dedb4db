// payment-dcep, the offline e-CNY hard wallet: the real plugin (loaded from its .so and checked
// like any other) in a test Host whose strand is the test thread and whose clock moves only when
// the test says so, talking to the wallet card simulator (tests/sim/wallet) through an Exchange
// that answers asynchronously as a reader does. Every key and certificate is made here with
// OpenSSL SM2. The specification of the method; the protocol is in docs/payments.md.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <deque>
#include <map>
#include <set>
#include <mutex>

#include "plugin_loader.hpp"
#include "scheduler.hpp"
#include "site_config.hpp"
#include "post_queue.hpp"
#include "test_support.hpp"
#include "wallet_card.hpp"

using namespace pilecore;
using namespace std::chrono_literals;
using pilecore::sim::WalletCard;
using pilecore::test::TempDir;
namespace fs = std::filesystem;

namespace {

const std::chrono::sys_days kToday = std::chrono::year{2026} / 12 / 1;
const TimePoint kStart{std::chrono::duration_cast<Duration>(kToday.time_since_epoch())};
const std::string kWalletId = "0021000012345678";
const std::string kMerchant = "M-PILE-0001";
/// The sites' tariff (one flat price all week) and the wallet token bound to payment-dcep.
const std::string kFlatTariffWalletToken = R"(tariffs:
  decimals: 2
  plans:
    all:
      prices: {flat: {electricity: 69.50, service: 80.00}}
      periods: [{from: "00:00", to: "24:00", type: flat}]
  week: {mon: all, tue: all, wed: all, thu: all, fri: all, sat: all, sun: all}
payment:
  preauth_fen: 30000
  tokens:
    wallet: {method: ecny}
)";

std::chrono::system_clock::time_point years_from_today(int years) { return std::chrono::sys_days(kToday) + std::chrono::days(365 * years); }

class CapturingLogger final : public Logger {
 public:
  void write(LogLevel, std::string_view message) noexcept override {
    std::lock_guard lock(mutex);
    lines.emplace_back(message);
  }
  [[nodiscard]] bool enabled(LogLevel) const noexcept override { return true; }
  std::string all() {
    std::lock_guard lock(mutex);
    std::string out;
    for (const auto& l : lines) out += l + "\n";
    return out;
  }
  std::mutex mutex;
  std::vector<std::string> lines;
};

/// Rows of a query on a database, each row's columns joined with '|' (read-only: a plugin or
/// the daemon may be writing it); none when it cannot be opened.
std::vector<std::string> sql_rows(const fs::path& file, const std::string& sql) {
  sqlite3* db = nullptr;
  std::vector<std::string> out;
  if (sqlite3_open_v2(file.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    sqlite3_close(db);
    return out;
  }
  sqlite3_busy_timeout(db, 2000);
  sqlite3_exec(
      db, sql.c_str(),
      [](void* o, int n, char** v, char**) {
        std::string row;
        for (int i = 0; i < n; ++i) row += (i ? "|" : "") + std::string(v[i] ? v[i] : "NULL");
        static_cast<std::vector<std::string>*>(o)->push_back(row);
        return 0;
      },
      &out, nullptr);
  sqlite3_close(db);
  return out;
}

/// A Host whose strand is the test thread: post() queues, run_until() drains the queue.
class TestHost final : public Host {
 public:
  TestHost(fs::path state_dir, std::shared_ptr<const ConfigValues> config) : state_dir_(std::move(state_dir)), config_(std::move(config)) {
    fs::create_directories(state_dir_);
    state_text_ = state_dir_.string();
  }
  [[nodiscard]] std::string_view instance_name() const noexcept override { return "ecny"; }
  [[nodiscard]] std::optional<std::uint32_t> connector() const noexcept override { return std::nullopt; }
  [[nodiscard]] Logger& log() noexcept override { return logger; }
  [[nodiscard]] const Clock& clock() const noexcept override { return scheduler; }
  [[nodiscard]] const ConfigValues& config() const noexcept override { return *config_; }
  [[nodiscard]] std::string_view state_dir() noexcept override { return state_text_; }
  void post(std::function<void()> fn) noexcept override { posted_.post(std::move(fn)); }
  TimerId schedule(Duration delay, std::function<void()> fn) noexcept override { return scheduler.after(delay, std::move(fn)); }
  void cancel(TimerId id) noexcept override { scheduler.cancel(id); }
  void publish(const Sample&) noexcept override {}
  void raise(const Alarm&) noexcept override {}
  void report_state(std::string_view state, std::string_view) noexcept override { reported = std::string(state); }
  void present(const identification::Token&) noexcept override {}
  /// Plays the core's outbox and the back end (`outbox`, which outlives a restart of the
  /// instance): records each upload; `done` waits for acknowledge(key), is posted ok at once for
  /// a key acknowledged before, and is posted the refusal while one is set.
  void upload(const UplinkRecord& record, UploadCallback done) noexcept override {
    outbox->uploads.push_back(record);
    if (outbox->refusal) {
      post([done = std::move(done), st = *outbox->refusal] { done(st); });
    } else if (outbox->acknowledged.count(record.key) != 0) {
      post([done = std::move(done)] { done(Status::success()); });
    } else {
      outbox->waiting.emplace(record.key, std::move(done));
    }
  }
  /// The back end acknowledges `key`; returns how many uploads of it were waiting.
  std::size_t acknowledge(const std::string& key) {
    outbox->acknowledged.insert(key);
    std::size_t n = 0;
    auto [first, last] = outbox->waiting.equal_range(key);
    for (auto it = first; it != last; ++it, ++n) post([done = std::move(it->second)] { done(Status::success()); });
    outbox->waiting.erase(first, last);
    return n;
  }
  [[nodiscard]] std::size_t waiting_uploads() const { return outbox->waiting.size(); }
  /// The uploads of `key` so far, over every start (a re-submission counts again).
  [[nodiscard]] std::size_t uploads_of(const std::string& key) const {
    return static_cast<std::size_t>(std::count_if(outbox->uploads.begin(), outbox->uploads.end(), [&](const UplinkRecord& r) { return r.key == key; }));
  }

  /// Runs posted work on this (the strand's) thread until `done` holds; false after 10 s.
  bool run_until(const std::function<bool()>& done) { return posted_.run_until(done); }
  /// Drops what was posted and not run, and the uploads still waiting for the back end: what
  /// the host does once an instance has stopped (their `done` is never called).
  void drop_posted() {
    posted_.clear();
    outbox->waiting.clear();
  }


  core::ManualScheduler scheduler{kStart};
  CapturingLogger logger;
  std::string reported;
  /// What the core's outbox and the back end hold: shared by the hosts of successive starts.
  struct Outbox {
    std::vector<UplinkRecord> uploads;
    std::multimap<std::string, UploadCallback> waiting;
    std::set<std::string> acknowledged;
    std::optional<Status> refusal;
  };
  std::shared_ptr<Outbox> outbox = std::make_shared<Outbox>();

 private:
  fs::path state_dir_;
  std::string state_text_;
  std::shared_ptr<const ConfigValues> config_;
  test::PostQueue posted_;
};

/// The reader's side of a wallet in the field: each APDU goes to the card, the answer comes
/// later on the strand. After `leave_after` commands the wallet is taken away.
class SimExchange final : public identification::Exchange {
 public:
  SimExchange(Host& host, sim::Iso14443Card& card) : host_(host), card_(card) {}
  void transceive(std::span<const std::uint8_t> command, Reply done) noexcept override {
    ++commands;
    if (leave_after && commands > *leave_after) in_field = false;
    if (!in_field) {
      host_.post([done] { done(Status::error(StatusCode::unavailable, "the target left the field"), {}); });
      return;
    }
    auto reply = card_.transceive(command);
    host_.post([done, reply = std::move(reply)] { done(Status::success(), reply); });
  }
  [[nodiscard]] bool present() const noexcept override { return in_field; }

  bool in_field = true;
  int commands = 0;
  std::optional<int> leave_after;

 private:
  Host& host_;
  sim::Iso14443Card& card_;
};

struct Pki {
  sim::Pkey root_key = sim::make_sm2_key(), issuer_key = sim::make_sm2_key(), wallet_key = sim::make_sm2_key();
  sim::Cert root = sim::make_certificate({"e-CNY test root", years_from_today(-5), years_from_today(20), true, 1}, root_key, nullptr, root_key);
  sim::Cert issuer = sim::make_certificate({"e-CNY test issuer", years_from_today(-2), years_from_today(8), true, 2}, issuer_key, root, root_key);
  sim::Cert wallet = sim::make_certificate({kWalletId, years_from_today(-1), years_from_today(2), false, 3}, wallet_key, issuer, issuer_key);
};

class DcepTest : public ::testing::Test {
 protected:
  DcepTest() {
    sim::write_file(dir.path() / "root.pem", sim::to_pem(pki.root));
    sim::write_file(dir.path() / "issuer.pem", sim::to_pem(pki.issuer));
    wallet = make_wallet(kWalletId, pki.wallet_key, pki.wallet, 100000);
  }
  ~DcepTest() override { stop_plugin(); }

  std::unique_ptr<WalletCard> make_wallet(const std::string& id, const sim::Pkey& key, const sim::Cert& cert, std::int64_t balance) {
    return std::make_unique<WalletCard>(WalletCard::Settings{.wallet_id = id, .balance_fen = balance, .counter = 7, .key = key, .certificate = cert,
                                                             .chunk = 200, .uid = {0x08, 0x01, 0x02, 0x03}});
  }

  std::string config_yaml(const std::string& extra = {}) const {
    return "{merchant_id: " + kMerchant + ", root_ca_file: " + (dir.path() / "root.pem").string() +
           ", issuer_ca_file: " + (dir.path() / "issuer.pem").string() + ", per_payment_limit_fen: 50000, offline_limit_fen: 80000" + extra + "}";
  }

  void start_plugin(const std::string& extra = {}) {
    auto loaded = registry.load("payment-dcep");
    ASSERT_TRUE(loaded.plugin) << loaded.error;
    plugin_info = loaded.plugin;
    auto config = std::make_shared<core::InstanceConfig>(plugin_info->config_fields, YAML::Load(config_yaml(extra)));
    host = std::make_unique<TestHost>(dir.path() / "state", config);
    host->outbox = outbox;
    if (clock_offset.count() != 0) host->scheduler.advance(clock_offset);
    std::string error;
    instance = plugin_info->descriptor->create(*host, &error);
    ASSERT_NE(instance, nullptr) << error;
    ASSERT_TRUE(instance->start().ok());
    method = dynamic_cast<payment::Method*>(instance);
    ASSERT_NE(method, nullptr);
  }
  void stop_plugin() {
    if (instance == nullptr) return;
    instance->stop();
    host->drop_posted();
    plugin_info->descriptor->destroy(instance);
    instance = nullptr;
    method = nullptr;
  }

  std::shared_ptr<SimExchange> exchange_for(sim::Iso14443Card& card) { return std::make_shared<SimExchange>(*host, card); }

  payment::AuthorizationResult authorize(const std::string& txn, std::int64_t fen, std::shared_ptr<SimExchange> ex = nullptr) {
    if (!ex) ex = exchange_for(*wallet);
    identification::Token token{.type = "wallet", .id = "08010203", .connector = 1, .evidence = {}, .exchange = ex};
    std::optional<payment::AuthorizationResult> result;
    const std::string op = txn + "/authorize";
    method->authorize({.operation_id = op, .transaction_id = txn, .connector = 1, .token = &token, .channel = {}, .amount_fen = fen,
                       .deadline = host->clock().now() + 30s},
                      [&](payment::AuthorizationResult r) {
                        EXPECT_FALSE(result) << "answered twice";
                        result = std::move(r);
                      });
    EXPECT_TRUE(host->run_until([&] { return result.has_value(); })) << "no answer";
    return result.value_or(payment::AuthorizationResult{});
  }

  template <class Call>
  payment::OperationResult operation(Call call) {
    std::optional<payment::OperationResult> result;
    call([&](payment::OperationResult r) { result = std::move(r); });
    EXPECT_TRUE(host->run_until([&] { return result.has_value(); })) << "no answer";
    return result.value_or(payment::OperationResult{});
  }
  payment::OperationResult capture(const std::string& txn, std::int64_t fen) {
    const std::string op = txn + "/capture";
    return operation([&](payment::OperationCallback cb) {
      method->capture({.operation_id = op, .transaction_id = txn, .amount_fen = fen, .deadline = host->clock().now() + 30s}, std::move(cb));
    });
  }
  payment::OperationResult cancel(const std::string& txn) {
    const std::string op = txn + "/void";
    return operation([&](payment::OperationCallback cb) {
      method->cancel({.operation_id = op, .transaction_id = txn, .deadline = host->clock().now() + 30s, .authorization_id = txn + "/authorize", .channel = {}}, std::move(cb));
    });
  }
  payment::OperationResult refund(const std::string& txn, const std::string& op, std::int64_t fen) {
    return operation([&](payment::OperationCallback cb) {
      method->refund({.operation_id = op, .transaction_id = txn, .amount_fen = fen, .reason = "test", .deadline = host->clock().now() + 30s},
                     std::move(cb));
    });
  }

  /// Rows of a query on the plugin's database, each row's columns joined with '|'.
  std::vector<std::string> query(const std::string& sql) const { return sql_rows(dir.path() / "state" / "dcep.db", sql); }

  TempDir dir;
  Pki pki;
  std::unique_ptr<WalletCard> wallet;
  core::PluginRegistry registry{{PILECORE_PLUGIN_DIR}};
  std::shared_ptr<const core::LoadedPlugin> plugin_info;
  std::unique_ptr<TestHost> host;
  std::shared_ptr<TestHost::Outbox> outbox = std::make_shared<TestHost::Outbox>();
  Plugin* instance = nullptr;
  payment::Method* method = nullptr;
  Duration clock_offset{0};
};

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST_F(DcepTest, AGoodPaymentHoldsTheVoucherAndQueuesItForSettlement) {
  start_plugin();
  const auto caps = method->capabilities();
  EXPECT_TRUE(caps.offline);
  EXPECT_TRUE(caps.needs_prepayment) << "prepay-and-refund";
  EXPECT_EQ(caps.token_types, std::vector<std::string>{"wallet"});

  const auto r = authorize("T-1", 30000);
  ASSERT_EQ(r.decision, payment::Decision::approved) << r.reason;
  EXPECT_EQ(r.authorized_fen, 30000);
  EXPECT_EQ(r.reference.rfind("ECNY-", 0), 0u) << r.reference;
  EXPECT_EQ(wallet->balance_fen(), 70000) << "the wallet paid the hold";
  EXPECT_EQ(wallet->counter(), 8u);
  EXPECT_EQ(query("SELECT wallet_id, counter, amount_fen, merchant_id, state FROM vouchers"),
            std::vector<std::string>{kWalletId + "|8|30000|" + kMerchant + "|held"});
  EXPECT_EQ(query("SELECT operation_id, kind, amount_fen, state FROM upload_queue"), std::vector<std::string>{"T-1/authorize|voucher|30000|queued"});

  // The bill is 123.45 yuan: capture keeps it, the change goes back through settlement.
  const auto c = capture("T-1", 12345);
  EXPECT_EQ(c.state, payment::OperationState::confirmed) << c.reason;
  EXPECT_EQ(c.amount_fen, 12345);
  EXPECT_EQ(c.reference, r.reference);
  EXPECT_EQ(capture("T-1", 12345).state, payment::OperationState::confirmed) << "a repeated capture is the same capture";
  EXPECT_EQ(capture("T-1", 12000).state, payment::OperationState::failed) << "a different capture conflicts";
  EXPECT_EQ(query("SELECT operation_id, kind, reason, amount_fen, state FROM upload_queue ORDER BY seq"),
            (std::vector<std::string>{"T-1/authorize|voucher|payment|30000|queued", "T-1/capture|refund|change|17655|queued"}));

  // Refunds have their own ids, are idempotent, and never exceed what was captured.
  EXPECT_EQ(refund("T-1", "T-1/refund/1", 2345).state, payment::OperationState::confirmed);
  EXPECT_EQ(refund("T-1", "T-1/refund/1", 2345).state, payment::OperationState::confirmed);
  EXPECT_EQ(refund("T-1", "T-1/refund/2", 10001).state, payment::OperationState::failed);
  EXPECT_EQ(refund("T-1", "T-1/refund/2", 10000).state, payment::OperationState::confirmed);
  EXPECT_EQ(query("SELECT COUNT(*), SUM(amount_fen) FROM upload_queue WHERE reason='refund'"), std::vector<std::string>{"2|12345"});

  // The wallet id never reaches the log in clear.
  const std::string log = host->logger.all();
  EXPECT_FALSE(contains(log, kWalletId)) << log;
  EXPECT_TRUE(contains(log, "************5678")) << log;
}

TEST_F(DcepTest, TheDatabaseIsOwnerOnly) {
  start_plugin();
  ASSERT_EQ(authorize("T-1", 1000).decision, payment::Decision::approved);
  struct stat st {};
  ASSERT_EQ(::stat((dir.path() / "state" / "dcep.db").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(query("PRAGMA journal_mode"), std::vector<std::string>{"wal"});
}

TEST_F(DcepTest, AVoidQueuesTheWholeVoucherForRefund) {
  start_plugin();
  ASSERT_EQ(authorize("T-1", 5000).decision, payment::Decision::approved);
  const auto v = cancel("T-1");
  EXPECT_EQ(v.state, payment::OperationState::confirmed);
  EXPECT_EQ(v.amount_fen, 5000);
  EXPECT_EQ(cancel("T-1").amount_fen, 5000) << "repeated: no second refund";
  EXPECT_EQ(query("SELECT operation_id, reason, amount_fen FROM upload_queue WHERE kind='refund'"), std::vector<std::string>{"T-1/void|void|5000"});
  EXPECT_EQ(capture("T-1", 100).state, payment::OperationState::failed);
  const auto nothing = cancel("T-unknown");
  EXPECT_EQ(nothing.state, payment::OperationState::confirmed);
  EXPECT_EQ(nothing.amount_fen, 0);
}

TEST_F(DcepTest, ARepeatedAuthorisationIsAnsweredFromDiskWithoutASecondTapAlsoAfterARestart) {
  start_plugin();
  const auto first = authorize("T-1", 3000);
  ASSERT_EQ(first.decision, payment::Decision::approved);
  stop_plugin();
  start_plugin();
  auto ex = exchange_for(*wallet);
  const auto again = authorize("T-1", 3000, ex);
  EXPECT_EQ(again.decision, payment::Decision::approved);
  EXPECT_EQ(again.reference, first.reference);
  EXPECT_EQ(ex->commands, 0) << "the wallet was not asked again";
  EXPECT_EQ(wallet->vouchers_signed(), 1);
}

TEST_F(DcepTest, AReusedVoucherIsRefusedAlsoAfterARestart) {
  start_plugin();
  ASSERT_EQ(authorize("T-1", 3000).decision, payment::Decision::approved);
  wallet->set_misbehaviour(WalletCard::Misbehaviour::replay_last_voucher);
  const auto replay = authorize("T-2", 3000);
  EXPECT_EQ(replay.decision, payment::Decision::declined);
  EXPECT_EQ(replay.reason, "this voucher was presented before (a replay)");

  stop_plugin();
  start_plugin();
  const auto after_restart = authorize("T-3", 3000);
  EXPECT_EQ(after_restart.decision, payment::Decision::declined);
  EXPECT_EQ(after_restart.reason, "this voucher was presented before (a replay)");
  EXPECT_EQ(query("SELECT COUNT(*) FROM vouchers"), std::vector<std::string>{"1"});
}

TEST_F(DcepTest, AVoucherForAnotherNonceIsRefused) {
  start_plugin();
  wallet->set_misbehaviour(WalletCard::Misbehaviour::wrong_nonce);
  const auto r = authorize("T-1", 3000);
  EXPECT_EQ(r.decision, payment::Decision::declined);
  EXPECT_TRUE(contains(r.reason, "nonce")) << r.reason;
  EXPECT_EQ(query("SELECT COUNT(*) FROM vouchers"), std::vector<std::string>{"0"});
  EXPECT_EQ(query("SELECT COUNT(*) FROM upload_queue"), std::vector<std::string>{"0"});
}

TEST_F(DcepTest, AVoucherForAnotherAmountIsRefused) {
  start_plugin();
  wallet->set_misbehaviour(WalletCard::Misbehaviour::wrong_amount);
  const auto r = authorize("T-1", 3000);
  EXPECT_EQ(r.decision, payment::Decision::declined);
  EXPECT_EQ(r.reason, "the voucher is for 2999 fen, the pile asked 3000 fen");
}

TEST_F(DcepTest, AForgedSignatureIsRefused) {
  start_plugin();
  wallet->set_misbehaviour(WalletCard::Misbehaviour::forged_signature);
  const auto r = authorize("T-1", 3000);
  EXPECT_EQ(r.decision, payment::Decision::declined);
  EXPECT_EQ(r.reason, "the voucher's signature is not the wallet's (forged or damaged)");
  EXPECT_EQ(query("SELECT COUNT(*) FROM vouchers"), std::vector<std::string>{"0"});
}

TEST_F(DcepTest, AnExpiredCertificateIsRefusedBeforeTheWalletSigns) {
  const auto expired = sim::make_certificate({kWalletId, years_from_today(-3), years_from_today(-1), false, 9}, pki.wallet_key, pki.issuer, pki.issuer_key);
  wallet = make_wallet(kWalletId, pki.wallet_key, expired, 100000);
  start_plugin();
  const auto r = authorize("T-1", 3000);
  EXPECT_EQ(r.decision, payment::Decision::declined);
  EXPECT_EQ(r.reason, "the wallet's certificate is not trusted: certificate has expired");
  EXPECT_EQ(wallet->vouchers_signed(), 0) << "the wallet was not debited for a voucher the pile refuses";
}

TEST_F(DcepTest, TheCertificateIsCheckedAtTheHostClocksTime) {
  // Valid for two more years on the host clock: three years on, the same wallet is expired.
  clock_offset = std::chrono::days(3 * 365);
  start_plugin();
  EXPECT_EQ(authorize("T-1", 3000).reason, "the wallet's certificate is not trusted: certificate has expired");
}

TEST_F(DcepTest, ACertificateFromAnotherRootIsRefused) {
  Pki other;  // a whole other PKI, with a wallet of the same id
  wallet = make_wallet(kWalletId, other.wallet_key, other.wallet, 100000);
  start_plugin();
  const auto r = authorize("T-1", 3000);
  EXPECT_EQ(r.decision, payment::Decision::declined);
  EXPECT_TRUE(contains(r.reason, "the wallet's certificate is not trusted: ")) << r.reason;
  EXPECT_EQ(wallet->vouchers_signed(), 0);
}

TEST_F(DcepTest, ACertificateOfAnotherWalletIsRefused) {
  wallet = make_wallet("0021000099999999", pki.wallet_key, pki.wallet, 100000);
  start_plugin();
  EXPECT_EQ(authorize("T-1", 3000).reason, "the wallet's certificate belongs to another wallet");
}

TEST_F(DcepTest, ACounterGoingBackIsRefused) {
  start_plugin();
  ASSERT_EQ(authorize("T-1", 3000).decision, payment::Decision::approved);
  wallet->set_misbehaviour(WalletCard::Misbehaviour::counter_back);
  const auto r = authorize("T-2", 3000);
  EXPECT_EQ(r.decision, payment::Decision::declined);
  EXPECT_EQ(r.reason, "the wallet's counter did not increase (8 after 8)");

  // A clone that reports an older counter is refused before it signs.
  auto clone = make_wallet(kWalletId, pki.wallet_key, pki.wallet, 100000);  // counter 7: behind the 8 already accepted
  stop_plugin();
  start_plugin();
  const auto c = authorize("T-3", 3000, exchange_for(*clone));
  EXPECT_EQ(c.reason, "the wallet's counter went back (7 after 8): a cloned or rolled-back wallet");
  EXPECT_EQ(clone->vouchers_signed(), 0);
}

TEST_F(DcepTest, OverTheLimitPerPaymentIsRefusedBeforeTheWalletIsAsked) {
  start_plugin();
  auto ex = exchange_for(*wallet);
  const auto r = authorize("T-1", 50001, ex);
  EXPECT_EQ(r.decision, payment::Decision::declined);
  EXPECT_EQ(r.reason, "50001 fen is above the offline limit of 50000 fen a payment");
  EXPECT_EQ(ex->commands, 0);
  EXPECT_EQ(authorize("T-2", 50000).decision, payment::Decision::approved);
}

TEST_F(DcepTest, TheCumulativeOfflineLimitHoldsUntilTheNextSettlement) {
  start_plugin();
  ASSERT_EQ(authorize("T-1", 50000).decision, payment::Decision::approved);
  const auto over = authorize("T-2", 30001);
  EXPECT_EQ(over.decision, payment::Decision::declined);
  EXPECT_EQ(over.reason, "the pile's offline limit until the next settlement is reached");
  EXPECT_EQ(wallet->vouchers_signed(), 1);
  // Change queued for refund lowers what is at stake offline.
  ASSERT_EQ(capture("T-1", 40000).state, payment::OperationState::confirmed);
  EXPECT_EQ(authorize("T-3", 40000).decision, payment::Decision::approved);  // 40000 + 40000 = the 80000 limit
  EXPECT_EQ(authorize("T-4", 1).decision, payment::Decision::declined);
  // The back end acknowledges what it holds (to settle with the bank); the limit is free again.
  for (const char* key : {"voucher:T-1/authorize", "voucher:T-1/capture", "voucher:T-3/authorize"}) EXPECT_EQ(host->acknowledge(key), 1u) << key;
  ASSERT_TRUE(host->run_until([&] { return query("SELECT COUNT(*) FROM upload_queue WHERE state='queued'") == std::vector<std::string>{"0"}; }));
  EXPECT_EQ(authorize("T-5", 10000).decision, payment::Decision::approved);
}

// ---------------------------------------------------------------------------------------------
// The upload of the queue (issue #12): each row is an uplink record the plugin hands the host,
// marked uploaded once the back end acknowledged it.

namespace {
const UplinkValue* field(const UplinkRecord& r, const std::string& name) {
  for (const auto& f : r.body) {
    if (f.name == name) return &f.value;
  }
  return nullptr;
}
template <class T>
T value_of(const UplinkRecord& r, const std::string& name) {
  const auto* v = field(r, name);
  if (v == nullptr || !std::holds_alternative<T>(*v)) throw std::runtime_error("no field " + name + " of that type in " + r.key);
  return std::get<T>(*v);
}
std::string hex(const std::vector<std::uint8_t>& b) {
  std::string out;
  for (auto c : b) out += fmt::format("{:02X}", c);
  return out;
}
}  // namespace

TEST_F(DcepTest, EveryQueuedRowIsUploadedAsAVoucherRecordAndMarkedOnceTheBackEndHasIt) {
  start_plugin();
  ASSERT_EQ(authorize("T-1", 30000).decision, payment::Decision::approved);
  ASSERT_EQ(capture("T-1", 12345).state, payment::OperationState::confirmed);
  ASSERT_EQ(refund("T-1", "T-1/refund/1", 2345).state, payment::OperationState::confirmed);
  ASSERT_EQ(refund("T-1", "T-1/refund/1", 2345).state, payment::OperationState::confirmed) << "a repeat";
  ASSERT_EQ(outbox->uploads.size(), 3u) << "one upload a row: the repeated refund is already waiting";
  EXPECT_EQ(host->waiting_uploads(), 3u);

  const auto& voucher = outbox->uploads[0];
  EXPECT_EQ(voucher.key, "voucher:T-1/authorize");
  EXPECT_EQ(voucher.kind, "voucher");
  EXPECT_EQ(value_of<std::string>(voucher, "op"), "T-1/authorize");
  EXPECT_EQ(value_of<std::string>(voucher, "txn"), "T-1");
  EXPECT_EQ(value_of<std::string>(voucher, "type"), "voucher");
  EXPECT_EQ(value_of<std::string>(voucher, "reason"), "payment");
  EXPECT_EQ(value_of<std::int64_t>(voucher, "fen"), 30000);
  EXPECT_EQ(value_of<std::int64_t>(voucher, "time_ms"), host->clock().now().time_since_epoch().count());
  // The digest and the signed voucher exactly as the plugin keeps them: the bank's evidence.
  EXPECT_EQ(query("SELECT hex(digest), hex(voucher) FROM vouchers"),
            std::vector<std::string>{hex(value_of<std::vector<std::uint8_t>>(voucher, "digest")) + "|" +
                                     hex(value_of<std::vector<std::uint8_t>>(voucher, "voucher"))});
  EXPECT_EQ(value_of<std::vector<std::uint8_t>>(voucher, "digest").size(), 32u) << "SM3";
  EXPECT_EQ(voucher.body.size(), 8u);
  EXPECT_EQ(uplink_record_error(voucher), "");

  const auto& change = outbox->uploads[1];
  EXPECT_EQ(change.key, "voucher:T-1/capture");
  EXPECT_EQ(change.kind, "voucher");
  EXPECT_EQ(value_of<std::string>(change, "type"), "refund");
  EXPECT_EQ(value_of<std::string>(change, "reason"), "change");
  EXPECT_EQ(value_of<std::int64_t>(change, "fen"), 30000 - 12345);
  EXPECT_EQ(value_of<std::vector<std::uint8_t>>(change, "voucher"), value_of<std::vector<std::uint8_t>>(voucher, "voucher"))
      << "a refund names the voucher it refunds";
  EXPECT_EQ(outbox->uploads[2].key, "voucher:T-1/refund/1");
  EXPECT_EQ(value_of<std::string>(outbox->uploads[2], "reason"), "refund");

  // Nothing is marked until the back end has it; then each row is, at the host clock's time.
  EXPECT_EQ(query("SELECT COUNT(*) FROM upload_queue WHERE state='queued'"), std::vector<std::string>{"3"});
  host->scheduler.advance(5s);
  ASSERT_EQ(host->acknowledge("voucher:T-1/capture"), 1u);
  const std::string acked_ms = std::to_string(host->clock().now().time_since_epoch().count());
  ASSERT_TRUE(host->run_until([&] { return query("SELECT state FROM upload_queue WHERE operation_id='T-1/capture'") == std::vector<std::string>{"uploaded"}; }));
  EXPECT_EQ(query("SELECT operation_id, state, COALESCE(uploaded_ms, '-') FROM upload_queue ORDER BY seq"),
            (std::vector<std::string>{"T-1/authorize|queued|-", "T-1/capture|uploaded|" + acked_ms, "T-1/refund/1|queued|-"}));
  host->acknowledge("voucher:T-1/authorize");
  host->acknowledge("voucher:T-1/refund/1");
  ASSERT_TRUE(host->run_until([&] { return query("SELECT COUNT(*) FROM upload_queue WHERE state='queued'") == std::vector<std::string>{"0"}; }));
  // Payment evidence is never logged: neither the wallet id nor the voucher.
  const std::string log = host->logger.all();
  EXPECT_FALSE(contains(log, kWalletId)) << log;
  EXPECT_FALSE(contains(log, hex(value_of<std::vector<std::uint8_t>>(voucher, "voucher")).substr(0, 40))) << log;
  EXPECT_TRUE(contains(log, "voucher:T-1/capture acknowledged by the back end")) << log;
}

TEST_F(DcepTest, ARestartBeforeTheAckUploadsEveryQueuedRowAgain) {
  start_plugin();
  ASSERT_EQ(authorize("T-1", 3000).decision, payment::Decision::approved);
  ASSERT_EQ(authorize("T-2", 4000).decision, payment::Decision::approved);
  ASSERT_EQ(cancel("T-2").state, payment::OperationState::confirmed);
  host->acknowledge("voucher:T-2/authorize");
  ASSERT_TRUE(host->run_until([&] { return query("SELECT state FROM upload_queue WHERE operation_id='T-2/authorize'") == std::vector<std::string>{"uploaded"}; }));
  stop_plugin();  // T-1's voucher and T-2's void wait for the back end: their answers never come to this instance

  outbox->uploads.clear();
  start_plugin();
  ASSERT_TRUE(host->run_until([&] { return outbox->uploads.size() == 2; }));
  EXPECT_EQ(outbox->uploads[0].key, "voucher:T-1/authorize");
  EXPECT_EQ(outbox->uploads[1].key, "voucher:T-2/void");
  EXPECT_EQ(value_of<std::string>(outbox->uploads[1], "reason"), "void");
  EXPECT_TRUE(contains(host->logger.all(), "2 queued record(s) not yet acknowledged by the back end: uploading")) << host->logger.all();
  host->acknowledge("voucher:T-1/authorize");
  host->acknowledge("voucher:T-2/void");
  ASSERT_TRUE(host->run_until([&] { return query("SELECT COUNT(*) FROM upload_queue WHERE state='queued'") == std::vector<std::string>{"0"}; }));
}

TEST_F(DcepTest, AKeyTheBackEndAcknowledgedWhileTheInstanceWasStoppedIsMarkedAtOnceAtTheNextStart) {
  start_plugin();
  ASSERT_EQ(authorize("T-1", 3000).decision, payment::Decision::approved);
  stop_plugin();
  host->acknowledge("voucher:T-1/authorize");  // the core had it in its outbox: the ack comes anyway
  EXPECT_EQ(query("SELECT state FROM upload_queue"), std::vector<std::string>{"queued"});
  start_plugin();
  ASSERT_TRUE(host->run_until([&] { return query("SELECT state FROM upload_queue") == std::vector<std::string>{"uploaded"}; }));
  EXPECT_EQ(host->uploads_of("voucher:T-1/authorize"), 2u) << "one before the stop, one at this start, answered at once";
  EXPECT_EQ(host->waiting_uploads(), 0u);
}

TEST_F(DcepTest, ARefusedUploadKeepsTheRowQueuedAndCountedAndIsTriedAgainWithBackoff) {
  start_plugin();
  outbox->refusal = Status(StatusCode::busy, "the uplink outbox is full");
  ASSERT_EQ(authorize("T-1", 50000).decision, payment::Decision::approved);
  ASSERT_TRUE(host->run_until([&] { return contains(host->logger.all(), "voucher:T-1/authorize (50000 fen) was not taken for upload (busy)"); }))
      << host->logger.all();
  EXPECT_EQ(query("SELECT state FROM upload_queue"), std::vector<std::string>{"queued"});
  EXPECT_EQ(authorize("T-2", 30001).reason, "the pile's offline limit until the next settlement is reached") << "still not at the back end";
  EXPECT_EQ(host->uploads_of("voucher:T-1/authorize"), 1u);

  // Tried again after 30 s, then 60 s, while the outbox stays full.
  auto refusals = [&] {
    const std::string log = host->logger.all();
    std::size_t n = 0;
    for (auto at = log.find("was not taken for upload"); at != std::string::npos; at = log.find("was not taken for upload", at + 1)) ++n;
    return n;
  };
  host->scheduler.advance(29s);
  host->run_until([] { return true; });
  EXPECT_EQ(host->uploads_of("voucher:T-1/authorize"), 1u);
  host->scheduler.advance(1s);
  ASSERT_TRUE(host->run_until([&] { return host->uploads_of("voucher:T-1/authorize") == 2 && refusals() == 2; }));
  host->scheduler.advance(59s);
  host->run_until([] { return true; });
  EXPECT_EQ(host->uploads_of("voucher:T-1/authorize"), 2u);
  outbox->refusal.reset();  // room again
  host->scheduler.advance(1s);
  ASSERT_TRUE(host->run_until([&] { return host->uploads_of("voucher:T-1/authorize") == 3 && host->waiting_uploads() == 1; }));
  host->acknowledge("voucher:T-1/authorize");
  ASSERT_TRUE(host->run_until([&] { return query("SELECT state FROM upload_queue") == std::vector<std::string>{"uploaded"}; }));
  EXPECT_EQ(authorize("T-2", 30001).decision, payment::Decision::approved);
}

TEST_F(DcepTest, AWalletThatLeavesTheFieldMidPaymentIsDeclinedAndNothingIsStored) {
  start_plugin();
  for (int after : {0, 1, 2, 3, 4}) {
    SCOPED_TRACE(after);
    auto ex = exchange_for(*wallet);
    ex->leave_after = after;  // SELECT, GET WALLET INFO (+1 GET RESPONSE), PAYMENT (+ GET RESPONSEs)
    const auto r = authorize("T-" + std::to_string(after), 3000, ex);
    EXPECT_EQ(r.decision, payment::Decision::declined);
    EXPECT_EQ(r.reason, "the wallet left the reader before the payment completed; present it again");
  }
  EXPECT_EQ(query("SELECT COUNT(*) FROM vouchers"), std::vector<std::string>{"0"});
  // Back in the field, the same wallet pays.
  EXPECT_EQ(authorize("T-again", 3000).decision, payment::Decision::approved);
}

TEST_F(DcepTest, WithoutAWalletInTheFieldNothingIsAsked) {
  start_plugin();
  identification::Token token{.type = "wallet", .id = "x", .connector = 1, .evidence = {}, .exchange = nullptr};
  std::optional<payment::AuthorizationResult> result;
  method->authorize({.operation_id = "T-1/authorize", .transaction_id = "T-1", .connector = 1, .token = &token, .channel = {}, .amount_fen = 100,
                     .deadline = host->clock().now() + 30s},
                    [&](payment::AuthorizationResult r) { result = std::move(r); });
  ASSERT_TRUE(host->run_until([&] { return result.has_value(); }));
  EXPECT_EQ(result->reason, "hold the e-CNY wallet at the reader");
}

TEST_F(DcepTest, ACardWithoutTheWalletApplicationIsDeclined) {
  /// A member card: answers every SELECT with 6A82.
  class OtherCard final : public sim::Iso14443Card {
   public:
    [[nodiscard]] std::vector<std::uint8_t> uid() const override { return {1, 2, 3, 4}; }
    [[nodiscard]] std::uint16_t atqa() const override { return 4; }
    [[nodiscard]] std::uint8_t sak() const override { return 0x20; }
    [[nodiscard]] std::vector<std::uint8_t> ats() const override { return {0x78}; }
    std::vector<std::uint8_t> transceive(std::span<const std::uint8_t>) override { return {0x6A, 0x82}; }
  } card;
  start_plugin();
  EXPECT_EQ(authorize("T-1", 100, exchange_for(card)).reason, "this card has no e-CNY wallet application (6A82)");
}

TEST_F(DcepTest, StoppingAnswersAnAuthorisationInFlight) {
  start_plugin();
  identification::Token token{.type = "wallet", .id = "x", .connector = 1, .evidence = {}, .exchange = exchange_for(*wallet)};
  std::optional<payment::AuthorizationResult> result;
  method->authorize({.operation_id = "T-1/authorize", .transaction_id = "T-1", .connector = 1, .token = &token, .channel = {}, .amount_fen = 100,
                     .deadline = host->clock().now() + 30s},
                    [&](payment::AuthorizationResult r) { result = std::move(r); });
  stop_plugin();
  ASSERT_TRUE(result);
  EXPECT_EQ(result->decision, payment::Decision::declined);
}

TEST_F(DcepTest, StoppingAnswersAnOperationInFlightPendingSoTheCoreAsksAgain) {
  start_plugin();
  ASSERT_EQ(authorize("T-1", 3000).decision, payment::Decision::approved);
  std::optional<payment::OperationResult> result;
  method->capture({.operation_id = "T-1/capture", .transaction_id = "T-1", .amount_fen = 1000, .deadline = host->clock().now() + 30s},
                  [&](payment::OperationResult r) { result = std::move(r); });
  stop_plugin();  // the worker's answer is posted, and dropped: the instance has stopped
  ASSERT_TRUE(result);
  EXPECT_EQ(result->state, payment::OperationState::pending);
  // Asked again after the restart: the capture the worker committed is answered, not repeated.
  start_plugin();
  const auto again = capture("T-1", 1000);
  EXPECT_EQ(again.state, payment::OperationState::confirmed);
  EXPECT_EQ(query("SELECT COUNT(*) FROM upload_queue WHERE reason='change'"), std::vector<std::string>{"1"});
}

TEST_F(DcepTest, TheSiteFileIsCheckedBeforeAnythingStarts) {
  auto loaded = registry.load("payment-dcep");
  ASSERT_TRUE(loaded.plugin) << loaded.error;
  struct Report final : ConfigReport {
    void error(std::string_view key, std::string_view message) noexcept override { errors.push_back(std::string(key) + ": " + std::string(message)); }
    void warning(std::string_view, std::string_view) noexcept override {}
    std::vector<std::string> errors;
  } report;
  const core::InstanceConfig config(loaded.plugin->config_fields,
                                    YAML::Load("{merchant_id: 'two words', root_ca_file: " + (dir.path() / "missing.pem").string() + "}"));
  ASSERT_NE(loaded.plugin->descriptor->validate, nullptr);
  loaded.plugin->descriptor->validate(config, report);
  ASSERT_EQ(report.errors.size(), 2u) << ::testing::PrintToString(report.errors);
  EXPECT_EQ(report.errors[0], "merchant_id: must be 1 to 32 printable ASCII characters without spaces");
  EXPECT_TRUE(contains(report.errors[1], "root_ca_file: ")) << report.errors[1];
  EXPECT_TRUE(contains(report.errors[1], "missing.pem: cannot be read")) << report.errors[1];
}

// ---------------------------------------------------------------------------------------------
// Through the real pilecored: a wallet held at connector 1's reader (test-wallet-reader, which
// presents it with Host::present and an exchange to the wallet simulator) starts a session
// there; payment-dcep takes the hold as a voucher, the session charges and is billed, and the
// bill is captured with the change queued for settlement.

namespace {

const std::string kPilecored = std::string(PILECORE_BIN_DIR) + "/pilecored";
const std::string kPilectl = std::string(PILECORE_BIN_DIR) + "/pilectl";

}  // namespace

TEST(DcepThroughPilecored, AWalletPresentedAtTheReaderChargesBillsAndCaptures) {
  TempDir dir;
  Pki pki;
  sim::write_file(dir.path() / "root.pem", sim::to_pem(pki.root));
  sim::write_file(dir.path() / "issuer.pem", sim::to_pem(pki.issuer));
  sim::write_file(dir.path() / "wallet.pem", sim::to_pem(pki.wallet));
  sim::write_file(dir.path() / "wallet.key", sim::to_pem(pki.wallet_key));
  const fs::path state = dir.path() / "state";
  const std::string site = R"(site: {id: DCEP-1, name: e-CNY test, location: {lat: 31.2, lon: 121.5}, timezone: Asia/Shanghai}
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
    config: {arrive_after_s: 0, ev_ready_delay_ms: 0, battery_capacity_wh: 200000, initial_soc_pct: 10, tick_ms: 1000}
  reader-1:
    plugin: test-wallet-reader
    connector: 1
    config: {wallet_id: ")" + kWalletId + R"(", wallet_key_file: )" + (dir.path() / "wallet.key").string() + ", wallet_cert_file: " +
                           (dir.path() / "wallet.pem").string() + R"(, balance_fen: 100000, present_after_ms: 5000}
  ecny:
    plugin: payment-dcep
    config: {merchant_id: )" + kMerchant + ", root_ca_file: " + (dir.path() / "root.pem").string() + ", issuer_ca_file: " +
                           (dir.path() / "issuer.pem").string() + "}\n" + kFlatTariffWalletToken;
  test::Child daemon({kPilecored, "--config", dir.write("site.yaml", site).string(), "--state-dir", state.string(), "--plugin-dir", PILECORE_PLUGIN_DIR,
                      "--plugin-dir", PILECORE_TEST_PLUGIN_DIR, "--status-interval", "0", "--clock-speed", test::time_scale().speed_arg(60), "--clock-start", "2026-12-01T02:00:00Z"});
  auto ctl = [&](std::vector<std::string> args) {
    args.insert(args.begin(), kPilectl);
    args.insert(args.end(), {"--state-dir", state.string()});
    return test::run_process(args);
  };
  nlohmann::json connector;
  ASSERT_TRUE(test::eventually(
      [&] {
        const auto r = ctl({"status", "--json"});
        if (r.exit_code != 0) return false;
        connector = nlohmann::json::parse(r.out)["connectors"][0];
        return connector.value("status", "") == "Charging";
      },
      30s))
      << connector.dump() << "\n" << daemon.stderr_text();
  const std::string txn = connector["session"]["transaction"];
  EXPECT_EQ(connector["session"]["method"], "ecny");
  // Some energy flows (a minute of clock time a second), then the driver stops at the pile.
  ASSERT_TRUE(test::eventually(
      [&] {
        const auto r = ctl({"status", "--json"});
        return r.exit_code == 0 && nlohmann::json::parse(r.out)["connectors"][0]["session"].value("energy_wh", 0) > 0;
      },
      30s));
  const auto stopped = ctl({"session", "stop", "1"});
  ASSERT_EQ(stopped.exit_code, 0) << stopped.err;
  nlohmann::json receipt;
  ASSERT_TRUE(test::eventually(
      [&] {
        const auto r = ctl({"receipt", txn, "--json"});
        if (r.exit_code != 0) return false;
        receipt = nlohmann::json::parse(r.out);
        return receipt.value("capture_status", "") == "captured";
      },
      30s))
      << receipt.dump();
  const std::int64_t bill = receipt["bill"]["total_fen"];
  EXPECT_GT(bill, 0);
  EXPECT_LE(bill, 30000);
  EXPECT_EQ(receipt["captured_fen"], bill);
  EXPECT_EQ(receipt["method"], "ecny");
  ASSERT_EQ(receipt["operations"].size(), 2u) << receipt.dump();
  EXPECT_EQ(receipt["operations"][0]["kind"], "authorize");
  EXPECT_EQ(receipt["operations"][0]["amount_fen"], 30000) << "prepaid: the voucher is for the whole hold";
  EXPECT_EQ(receipt["operations"][0]["reference"].get<std::string>().rfind("ECNY-", 0), 0u) << receipt.dump();
  EXPECT_EQ(receipt["operations"][1]["kind"], "capture");
  EXPECT_EQ(receipt["operations"][1]["state"], "confirmed");

  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.wait(), 0) << daemon.stderr_text();
  // The voucher and the change are in the upload queue; the wallet id is in no log line.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open_v2((state / "plugins" / "ecny" / "dcep.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  std::vector<std::string> rows;
  sqlite3_exec(
      db, "SELECT kind, reason, amount_fen, state FROM upload_queue ORDER BY seq",
      [](void* out, int n, char** v, char**) {
        std::string row;
        for (int i = 0; i < n; ++i) row += (i ? "|" : "") + std::string(v[i] ? v[i] : "NULL");
        static_cast<std::vector<std::string>*>(out)->push_back(row);
        return 0;
      },
      &rows, nullptr);
  sqlite3_close(db);
  EXPECT_EQ(rows, (std::vector<std::string>{"voucher|payment|30000|queued", "refund|change|" + std::to_string(30000 - bill) + "|queued"}));
  EXPECT_FALSE(contains(daemon.stderr_text(), kWalletId));
}

// ---------------------------------------------------------------------------------------------
// The vouchers' way to the back end through the real pilecored (issue #12): payment-dcep hands
// each queued row to Host::upload, the core's outbox takes it over sim-link (which plays the back
// end and acknowledges), and the row is marked uploaded when the ack is in; in-process and
// isolated (the call and its answer cross pilecore-plugin-host's socket).

namespace {

struct DcepSite {
  explicit DcepSite(TempDir& d) : dir(d), state(d.path() / "state") {
    sim::write_file(dir.path() / "root.pem", sim::to_pem(pki.root));
    sim::write_file(dir.path() / "issuer.pem", sim::to_pem(pki.issuer));
    sim::write_file(dir.path() / "wallet.pem", sim::to_pem(pki.wallet));
    sim::write_file(dir.path() / "wallet.key", sim::to_pem(pki.wallet_key));
  }

  /// The site: with the wallet at the reader (a session), or without (no vehicle, no wallet);
  /// `link`: sim-link's config, or empty for a site without links.
  std::string site(bool session, const std::string& link, bool isolate) const {
    std::string s = R"(site: {id: DCEP-2, name: e-CNY upload test, location: {lat: 31.2, lon: 121.5}, timezone: Asia/Shanghai}
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
    config: )" + std::string(session ? "{arrive_after_s: 0, ev_ready_delay_ms: 0, battery_capacity_wh: 200000, initial_soc_pct: 10, tick_ms: 1000}"
                                                      : "{arrive_after_s: -1}") + "\n";
    if (session) {
      s += "  reader-1:\n    plugin: test-wallet-reader\n    connector: 1\n    config: {wallet_id: \"" + kWalletId +
           "\", wallet_key_file: " + (dir.path() / "wallet.key").string() + ", wallet_cert_file: " + (dir.path() / "wallet.pem").string() +
           ", balance_fen: 100000, present_after_ms: 5000}\n";
    }
    // Isolated, it reads the trust anchors from the test's directory.
    s += "  ecny:\n    plugin: payment-dcep\n" + (isolate ? "    isolate: true\n    isolate_paths: [" + dir.path().string() + "]\n" : std::string()) +
         "    config: {merchant_id: " + kMerchant +
         ", root_ca_file: " + (dir.path() / "root.pem").string() + ", issuer_ca_file: " + (dir.path() / "issuer.pem").string() + "}\n";
    if (!link.empty()) s += "  backend:\n    plugin: sim-link\n    config: " + link + "\n";
    s += kFlatTariffWalletToken;
    if (!link.empty()) s += "links: {device_id: 4242, heartbeat_s: 0, outbox: {first_retry_s: 5, max_retry_s: 5}}\n";
    return s;
  }

  std::unique_ptr<test::Child> start(const std::string& site_text, const std::string& clock_start) {
    return std::make_unique<test::Child>(std::vector<std::string>{
        kPilecored, "--config", dir.write("site.yaml", site_text).string(), "--state-dir", state.string(), "--plugin-dir", PILECORE_PLUGIN_DIR,
        "--plugin-dir", PILECORE_TEST_PLUGIN_DIR, "--status-interval", "0", "--clock-speed", test::time_scale().speed_arg(60), "--clock-start",
        clock_start});
  }

  test::ProcessResult ctl(std::vector<std::string> args) const {
    args.insert(args.begin(), kPilectl);
    args.insert(args.end(), {"--state-dir", state.string()});
    return test::run_process(args);
  }

  /// One session paid with the wallet, stopped and captured; returns its transaction id.
  std::string charge(test::Child& daemon) const {
    nlohmann::json connector;
    EXPECT_TRUE(test::eventually(
        [&] {
          const auto r = ctl({"status", "--json"});
          if (r.exit_code != 0) return false;
          connector = nlohmann::json::parse(r.out)["connectors"][0];
          return connector.value("status", "") == "Charging";
        },
        30s))
        << connector.dump() << "\n" << daemon.stderr_text();
    if (!connector.contains("session")) return {};
    const std::string txn = connector["session"]["transaction"];
    EXPECT_TRUE(test::eventually(
        [&] {
          const auto r = ctl({"status", "--json"});
          return r.exit_code == 0 && nlohmann::json::parse(r.out)["connectors"][0]["session"].value("energy_wh", 0) > 0;
        },
        30s));
    EXPECT_EQ(ctl({"session", "stop", "1"}).exit_code, 0);
    EXPECT_TRUE(test::eventually(
        [&] {
          const auto r = ctl({"receipt", txn, "--json"});
          return r.exit_code == 0 && nlohmann::json::parse(r.out).value("capture_status", "") == "captured";
        },
        30s));
    return txn;
  }

  std::vector<std::string> queue() const { return sql_rows(state / "plugins" / "ecny" / "dcep.db", "SELECT operation_id, state FROM upload_queue ORDER BY seq"); }
  std::vector<std::string> core(const std::string& sql) const { return sql_rows(state / "pilecore.db", sql); }

  TempDir& dir;
  fs::path state;
  Pki pki;
};

/// How often sim-link's back end saw `key` arrive (stored, or again).
int arrivals(const std::string& log, const std::string& key) {
  int n = 0;
  for (const std::string& what : {"back end: stored voucher record " + key + "\n", "back end: " + key + " again, already stored"}) {
    for (auto at = log.find(what); at != std::string::npos; at = log.find(what, at + 1)) ++n;
  }
  return n;
}

void vouchers_reach_the_back_end(bool isolate) {
  TempDir dir;
  DcepSite s(dir);
  auto daemon = s.start(s.site(true, "{latency_ms: 10, mtu_bytes: 4096}", isolate), "2026-12-01T02:00:00Z");
  const std::string txn = s.charge(*daemon);
  ASSERT_FALSE(txn.empty()) << daemon->stderr_text();
  ASSERT_TRUE(test::eventually([&] { return s.queue() == std::vector<std::string>{txn + "/authorize|uploaded", txn + "/capture|uploaded"}; }, 30s))
      << ::testing::PrintToString(s.queue()) << "\n" << daemon->stderr_text();
  // The core remembers the keys, their owner and the acknowledgement; the outbox has let them go.
  EXPECT_EQ(s.core("SELECT key, instance, kind, state FROM plugin_uploads ORDER BY key"),
            (std::vector<std::string>{"voucher:" + txn + "/authorize|ecny|voucher|acknowledged", "voucher:" + txn + "/capture|ecny|voucher|acknowledged"}));
  EXPECT_EQ(s.core("SELECT COUNT(*) FROM outbox WHERE kind='voucher'"), std::vector<std::string>{"0"});
  daemon->signal(SIGTERM);
  EXPECT_EQ(daemon->wait(), 0) << daemon->stderr_text();
  const std::string log = daemon->stderr_text();
  EXPECT_EQ(arrivals(log, "voucher:" + txn + "/authorize"), 1) << log;
  EXPECT_EQ(arrivals(log, "voucher:" + txn + "/capture"), 1) << log;
  EXPECT_FALSE(contains(log, kWalletId)) << "payment evidence is never logged";
}

}  // namespace

TEST(DcepThroughPilecored, TheVoucherAndItsChangeReachTheBackEndOnceAndAreMarkedUploaded) { vouchers_reach_the_back_end(false); }

TEST(DcepThroughPilecored, AnIsolatedInstanceUploadsThroughItsProcessBoundaryAlike) { vouchers_reach_the_back_end(true); }

TEST(DcepThroughPilecored, VouchersWaitOutAnOutageAndARestartAndAnAcknowledgedKeyIsNotSentAgain) {
  TempDir dir;
  DcepSite s(dir);
  std::string txn;
  {
    // The link is down for the whole run: the records wait in the outbox, the rows stay queued.
    auto daemon = s.start(s.site(true, "{start_down: true, mtu_bytes: 4096}", false), "2026-12-01T02:00:00Z");
    txn = s.charge(*daemon);
    ASSERT_FALSE(txn.empty()) << daemon->stderr_text();
    daemon->signal(SIGTERM);
    ASSERT_EQ(daemon->wait(), 0) << daemon->stderr_text();
  }
  const std::string voucher = "voucher:" + txn + "/authorize", change = "voucher:" + txn + "/capture";
  EXPECT_EQ(s.queue(), (std::vector<std::string>{txn + "/authorize|queued", txn + "/capture|queued"}));
  EXPECT_EQ(s.core("SELECT key FROM outbox WHERE kind='voucher' ORDER BY key"), (std::vector<std::string>{voucher, change}));
  {
    // Back up after a restart: the outbox sends them, the plugin uploads them again at start and
    // waits for the same acknowledgement; each arrives once.
    auto daemon = s.start(s.site(false, "{latency_ms: 10, mtu_bytes: 4096}", false), "2026-12-01T03:00:00Z");
    ASSERT_TRUE(test::eventually([&] { return s.queue() == std::vector<std::string>{txn + "/authorize|uploaded", txn + "/capture|uploaded"}; }, 30s))
        << ::testing::PrintToString(s.queue()) << "\n" << daemon->stderr_text();
    daemon->signal(SIGTERM);
    ASSERT_EQ(daemon->wait(), 0) << daemon->stderr_text();
    const std::string log = daemon->stderr_text();
    EXPECT_EQ(arrivals(log, voucher), 1) << log;
    EXPECT_EQ(arrivals(log, change), 1) << log;
  }
  // A crash between the ack and the plugin's mark: the row is queued again. The next start
  // uploads it, and the core answers from what it remembers: acknowledged, nothing sent.
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open_v2((s.state / "plugins" / "ecny" / "dcep.db").c_str(), &db, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, ("UPDATE upload_queue SET state='queued', uploaded_ms=NULL WHERE operation_id='" + txn + "/authorize'").c_str(), nullptr,
                           nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }
  auto daemon = s.start(s.site(false, "{latency_ms: 10, mtu_bytes: 4096}", false), "2026-12-01T04:00:00Z");
  ASSERT_TRUE(test::eventually([&] { return s.queue() == std::vector<std::string>{txn + "/authorize|uploaded", txn + "/capture|uploaded"}; }, 30s))
      << ::testing::PrintToString(s.queue()) << "\n" << daemon->stderr_text();
  daemon->signal(SIGTERM);
  ASSERT_EQ(daemon->wait(), 0) << daemon->stderr_text();
  EXPECT_EQ(arrivals(daemon->stderr_text(), voucher), 0) << daemon->stderr_text();
}

TEST(DcepThroughPilecored, WithoutALinkTheRowsStayQueuedAndCountAgainstTheOfflineLimit) {
  TempDir dir;
  DcepSite s(dir);
  auto daemon = s.start(s.site(true, "", false), "2026-12-01T02:00:00Z");
  const std::string txn = s.charge(*daemon);
  ASSERT_FALSE(txn.empty()) << daemon->stderr_text();
  ASSERT_TRUE(test::eventually([&] { return contains(daemon->stderr_text(), "voucher:" + txn + "/capture"); }, 30s)) << daemon->stderr_text();
  daemon->signal(SIGTERM);
  ASSERT_EQ(daemon->wait(), 0) << daemon->stderr_text();
  EXPECT_EQ(s.queue(), (std::vector<std::string>{txn + "/authorize|queued", txn + "/capture|queued"}));
  EXPECT_TRUE(contains(daemon->stderr_text(), "was not taken for upload (unavailable): this pile has no link to a back end")) << daemon->stderr_text();
  EXPECT_EQ(s.core("SELECT COUNT(*) FROM plugin_uploads"), std::vector<std::string>{"0"});
}
