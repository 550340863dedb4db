// payment-card, the member card. First its parts on their own: the account table (holds,
// debits, releases and refunds, idempotent on operation ids, across reopening), the frames it
// sends to MIFARE Classic and DESFire cards (against the card models the PN532 emulator holds),
// and `pilectl accounts`. Then the whole chain in the real pilecored: a card held at a
// connector's reader (the PN532 emulator on a pseudo-terminal, through libnfc's real pn532_uart
// driver and reader-nfc) starts a session paid from its account, debited at capture; declines
// say why; a wrong MIFARE key and a wrong DESFire key are refused; the online back end (HTTPS,
// a test-made certificate) authorises and captures, and when it is down the answer is honest.
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <string>
#include <thread>

#include "account_store.hpp"
#include "card_backend.hpp"
#include "card_protocol.hpp"
#include "cards.hpp"
#include "member_cards.hpp"
#include "plugin_host.hpp"
#include "pn532_emulator.hpp"
#include "test_pki.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace std::chrono_literals;
using pilecore::card::AccountStore;
using pilecore::sim::from_hex;
using pilecore::sim::Pn532Emulator;
using pilecore::test::eventually;
using pilecore::test::TempDir;
namespace fs = std::filesystem;

namespace {

constexpr std::int64_t kNow = 1'772'323'200'000;  // 2026-03-01T00:00:00Z

// ---------------------------------------------------------------------------------------------
// the account table

TEST(CardAccounts, AHoldIsCapturedOnceRefundedInPartsAndEveryRepeatAnswersTheFirstOutcome) {
  TempDir dir;
  const fs::path file = dir.path() / "cards.db";
  {
    AccountStore s(file);
    s.add("M0001", 10000, 0, kNow);
    const auto h = s.hold("op-a", "T1", "M0001", 3000, 100, "2026-03-01", kNow);
    ASSERT_TRUE(h.approved) << h.reason;
    EXPECT_EQ(h.amount_fen, 3000);
    EXPECT_EQ(s.find("M0001", "2026-03-01")->held_fen, 3000);
    const auto again = s.hold("op-a", "T1", "M0001", 3000, 100, "2026-03-01", kNow);
    EXPECT_TRUE(again.approved);
    EXPECT_EQ(again.reference, h.reference) << "the same authorisation, not a second hold";
    EXPECT_EQ(s.find("M0001", "2026-03-01")->held_fen, 3000);

    const auto c = s.capture("op-c", "T1", 2345, "2026-03-01", kNow);
    ASSERT_TRUE(c.confirmed) << c.reason;
    EXPECT_EQ(c.amount_fen, 2345);
  }
  // Reopened (a restart): the capture asked again moves nothing more.
  AccountStore s(file);
  const auto c2 = s.capture("op-c", "T1", 2345, "2026-03-01", kNow);
  EXPECT_TRUE(c2.confirmed);
  EXPECT_EQ(c2.amount_fen, 2345);
  auto a = *s.find("M0001", "2026-03-01");
  EXPECT_EQ(a.balance_fen, 10000 - 2345);
  EXPECT_EQ(a.held_fen, 0);
  EXPECT_EQ(a.spent_fen, 2345);

  EXPECT_TRUE(s.refund("r1", "T1", 1000, kNow).confirmed);
  EXPECT_TRUE(s.refund("r1", "T1", 1000, kNow).confirmed) << "a repeated refund id is the same refund";
  EXPECT_TRUE(s.refund("r2", "T1", 1345, kNow).confirmed);
  const auto too_much = s.refund("r3", "T1", 1, kNow);
  EXPECT_FALSE(too_much.confirmed);
  EXPECT_NE(too_much.reason.find("above the 0 fen left"), std::string::npos) << too_much.reason;
  EXPECT_EQ(s.find("M0001", "2026-03-01")->balance_fen, 10000);

  EXPECT_FALSE(s.capture("op-x", "T9", 10, "2026-03-01", kNow).confirmed) << "no authorisation";
  EXPECT_FALSE(s.refund("r9", "T9", 10, kNow).confirmed) << "nothing captured";
}

TEST(CardAccounts, DeclinesSayWhyAndAShortBalanceGivesAPartialHoldAboveTheMinimum) {
  TempDir dir;
  AccountStore s(dir.path() / "cards.db");
  s.add("M0001", 5000, 0, kNow);
  s.add("M0002", 50, 0, kNow);
  s.add("M0003", 100000, 8000, kNow);
  s.add("M0004", 100000, 0, kNow);
  s.set_blocked("M0004", true, kNow);

  EXPECT_EQ(s.hold("o1", "T1", "NOPE", 1000, 100, "2026-03-01", kNow).reason, "this card has no account here");
  EXPECT_EQ(s.hold("o2", "T2", "M0004", 1000, 100, "2026-03-01", kNow).reason, "this card is blocked");
  const auto poor = s.hold("o3", "T3", "M0002", 1000, 100, "2026-03-01", kNow);
  EXPECT_FALSE(poor.approved);
  EXPECT_EQ(poor.reason, "insufficient balance: 50 fen available");

  const auto part = s.hold("o4", "T4", "M0001", 20000, 100, "2026-03-01", kNow);
  ASSERT_TRUE(part.approved);
  EXPECT_EQ(part.amount_fen, 5000) << "what the balance allows";
  EXPECT_EQ(s.hold("o5", "T5", "M0001", 20000, 100, "2026-03-01", kNow).reason, "insufficient balance: 0 fen available")
      << "the first hold reserved the balance";

  // The daily limit counts the day's captures and the open holds.
  ASSERT_TRUE(s.hold("o6", "T6", "M0003", 6000, 100, "2026-03-01", kNow).approved);
  ASSERT_TRUE(s.capture("c6", "T6", 6000, "2026-03-01", kNow).confirmed);
  const auto over = s.hold("o7", "T7", "M0003", 5000, 3000, "2026-03-01", kNow);
  EXPECT_FALSE(over.approved);
  EXPECT_EQ(over.reason, "daily limit reached: 2000 fen left today");
  const auto next_day = s.hold("o8", "T8", "M0003", 5000, 3000, "2026-03-02", kNow);
  EXPECT_TRUE(next_day.approved) << "a new local day, a new limit: " << next_day.reason;
  EXPECT_EQ(next_day.amount_fen, 5000);
}

TEST(CardAccounts, AReleaseFreesTheHoldAndAnAccountInUseCannotBeRemoved) {
  TempDir dir;
  AccountStore s(dir.path() / "cards.db");
  s.add("M0001", 5000, 0, kNow);
  ASSERT_TRUE(s.hold("o1", "T1", "M0001", 4000, 100, "2026-03-01", kNow).approved);
  try {
    s.remove("M0001");
    FAIL() << "removed while held";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("1 open authorisation(s)"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(s.release("v1", "T1", kNow).confirmed);
  EXPECT_TRUE(s.release("v1", "T1", kNow).confirmed) << "a repeat, nothing left to release";
  EXPECT_EQ(s.find("M0001", "2026-03-01")->held_fen, 0);
  EXPECT_FALSE(s.capture("c1", "T1", 10, "2026-03-01", kNow).confirmed) << "a released hold is not captured";
  EXPECT_EQ(s.find("M0001", "2026-03-01")->balance_fen, 5000);
  s.remove("M0001");
  EXPECT_FALSE(s.find("M0001", "2026-03-01"));
  EXPECT_THROW(s.remove("M0001"), std::invalid_argument);
  EXPECT_THROW(s.add("bad id!", 0, 0, kNow), std::invalid_argument);
  EXPECT_THROW(s.top_up("M0001", 100, kNow), std::invalid_argument);
}

TEST(CardAccounts, TwoConnectionsWriteTheSameTableAsPilectlAndPilecoredDo) {
  TempDir dir;
  AccountStore daemon(dir.path() / "cards.db");
  AccountStore operator_tool(dir.path() / "cards.db", false);
  operator_tool.add("M0001", 1000, 0, kNow);
  ASSERT_TRUE(daemon.hold("o1", "T1", "M0001", 800, 100, "2026-03-01", kNow).approved);
  EXPECT_EQ(operator_tool.top_up("M0001", 500, kNow), 1500);
  ASSERT_TRUE(daemon.capture("c1", "T1", 800, "2026-03-01", kNow).confirmed);
  EXPECT_EQ(operator_tool.find("M0001", "2026-03-01")->balance_fen, 700);
  EXPECT_THROW(AccountStore(dir.path() / "missing.db", false), std::runtime_error) << "only add creates a table";
}

TEST(CardAccounts, AUidIsKnownOnlyByItsHash) {
  const std::string id = card::uid_account_id(std::string_view("04C0FFEE"));
  EXPECT_EQ(id, card::uid_account_id(std::string_view("04c0ffee")));
  EXPECT_EQ(id.rfind("uid-", 0), 0u);
  EXPECT_EQ(id.size(), 36u);
  EXPECT_EQ(id.find("04c0ffee"), std::string::npos);
  EXPECT_NE(id, card::uid_account_id(std::string_view("04c0ffef")));
  EXPECT_THROW(card::uid_account_id(std::string_view("04c0ff")), std::invalid_argument);
  EXPECT_EQ(card::mask("M00012345"), "****2345");
}

// ---------------------------------------------------------------------------------------------
// the card frames, against the emulator's card models

TEST(CardFrames, MifareClassicAuthAndReadGiveTheAccountAndAWrongKeyHaltsTheCard) {
  sim::MifareClassicCard c(from_hex("04A1B2C3"));
  const card::MifareKey key = {0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5};
  c.set_keys(1, key, {0xB0, 0xB1, 0xB2, 0xB3, 0xB4, 0xB5});
  c.write_text(5, "M0001234");
  const auto uid = from_hex("04A1B2C3");
  std::vector<std::uint8_t> out;
  EXPECT_EQ(c.exchange_frame(card::mifare_auth(false, 5, key, uid), out), 0x00);
  EXPECT_EQ(c.exchange_frame(card::mifare_read(5), out), 0x00);
  EXPECT_EQ(card::account_from_bytes(out), std::optional<std::string>("M0001234"));
  out.clear();
  EXPECT_EQ(c.exchange_frame(card::mifare_auth(true, 5, key, uid), out), 0x14) << "key A given as key B";
  EXPECT_EQ(c.exchange_frame(card::mifare_read(5), out), 0x01) << "halted until selected again";
  c.reselected();
  EXPECT_EQ(c.exchange_frame(card::mifare_read(5), out), 0x14) << "no authentication, no read";
  c.reselected();
  EXPECT_EQ(c.exchange_frame(card::mifare_auth(false, 5, key, uid), out), 0x00);
  EXPECT_EQ(c.exchange_frame(card::mifare_read(8), out), 0x14) << "another sector needs its own authentication";

  EXPECT_FALSE(card::account_from_bytes(std::vector<std::uint8_t>(16, 0)));
  EXPECT_FALSE(card::account_from_bytes(from_hex("4d30ff00")));
  EXPECT_EQ(card::account_from_bytes(from_hex("4d3120200000")), std::optional<std::string>("M1"));
}

TEST(CardFrames, DesfireAesAuthenticationProvesBothSidesAndGuardsTheFile) {
  sim::DesfireCard c(from_hex("04112233445566"));
  const card::AesKey key = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
  c.add_application(0xC0FFEE, key);
  c.add_file(0xC0FFEE, 1, {'D', '7', '7', 0, 0, 0}, true);
  auto answer = [&](const card::Bytes& cmd) { return *card::desfire_answer(c.transceive(cmd)); };
  EXPECT_EQ(card::desfire_select(0xC0FFEE), from_hex("905A000003EEFFC000"));
  EXPECT_EQ(answer(card::desfire_select(0x123456)).status, 0xA0);
  EXPECT_EQ(answer(card::desfire_select(0xC0FFEE)).status, 0x00);
  EXPECT_EQ(answer(card::desfire_read(1, 0, 6)).status, 0xAE) << "the file needs authentication";

  const std::array<std::uint8_t, 16> rnd_a = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6};
  card::DesfireAesAuth auth(key, rnd_a);
  const auto challenge = answer(card::desfire_command(0xAA, std::array<std::uint8_t, 1>{0}));
  ASSERT_EQ(challenge.status, 0xAF);
  const auto reply = auth.answer_challenge(challenge.data);
  ASSERT_TRUE(reply);
  const auto proof = answer(card::desfire_command(0xAF, *reply));
  ASSERT_EQ(proof.status, 0x00);
  EXPECT_TRUE(auth.verify(proof.data)) << "the card knows the key";
  const auto file = answer(card::desfire_read(1, 0, 6));
  ASSERT_EQ(file.status, 0x00);
  EXPECT_EQ(card::account_from_bytes(file.data), std::optional<std::string>("D77"));

  // The wrong key: the card refuses the answer to its challenge.
  card::AesKey wrong = key;
  wrong[0] ^= 0xFF;
  card::DesfireAesAuth bad(wrong, rnd_a);
  EXPECT_EQ(answer(card::desfire_select(0xC0FFEE)).status, 0x00);
  const auto ch2 = answer(card::desfire_command(0xAA, std::array<std::uint8_t, 1>{0}));
  EXPECT_EQ(answer(card::desfire_command(0xAF, *bad.answer_challenge(ch2.data))).status, 0xAE);
  EXPECT_EQ(c.refused_auths(), 1u);
  EXPECT_EQ(answer(card::desfire_read(1, 0, 6)).status, 0xAE);
}

// ---------------------------------------------------------------------------------------------
// the method in a test host: restarts and stops

const std::string kCardPlugin = std::string(PILECORE_PLUGIN_DIR) + "/payment-card.so";

identification::Token uid_card(const std::string& uid) {
  identification::Token t;
  t.type = "card";
  t.id = uid;
  t.connector = 1;
  return t;
}

TEST(CardMethod, ACaptureAskedAgainAfterARestartDebitsOnceAndCallsOutAtStopAreAnswered) {
  TempDir dir;
  pilecore::test::PluginHost host(kCardPlugin, "{identify_by: uid}", dir.path() / "state");
  auto* m = &host.create();
  {
    AccountStore s(dir.path() / "state" / "cards.db", false);
    s.add(card::uid_account_id(std::string_view("04c0ffee")), 10000, 0, kNow);
  }
  const auto token = uid_card("04c0ffee");
  std::optional<payment::AuthorizationResult> auth;
  m->authorize({.operation_id = "T1/a", .transaction_id = "T1", .connector = 1, .token = &token, .channel = {}, .amount_fen = 5000, .deadline = {}},
               [&](payment::AuthorizationResult r) { auth = std::move(r); });
  ASSERT_TRUE(host.run_until([&] { return auth.has_value(); }));
  ASSERT_EQ(auth->decision, payment::Decision::approved) << auth->reason;
  EXPECT_EQ(auth->authorized_fen, 5000);

  auto capture = [&](payment::Method& method) {
    std::optional<payment::OperationResult> out;
    method.capture({.operation_id = "T1/c", .transaction_id = "T1", .amount_fen = 1234, .deadline = {}}, [&](payment::OperationResult r) { out = std::move(r); });
    EXPECT_TRUE(host.run_until([&] { return out.has_value(); }));
    return out.value_or(payment::OperationResult{});
  };
  EXPECT_EQ(capture(*m).state, payment::OperationState::confirmed);
  host.destroy();
  m = &host.create();
  const auto again = capture(*m);
  EXPECT_EQ(again.state, payment::OperationState::confirmed);
  EXPECT_EQ(again.amount_fen, 1234);
  EXPECT_EQ(AccountStore(dir.path() / "state" / "cards.db", false).find(card::uid_account_id(std::string_view("04c0ffee")), "2026-03-01")->balance_fen,
            10000 - 1234);

  // A back end that does not answer, and the method stops: the calls out are answered
  // (declined, pending), never left hanging.
  TempDir dir2;
  const auto pki = sim::make_test_pki(dir2.path());
  sim::CardBackend backend(pki);
  backend.set_outage(true);
  pilecore::test::PluginHost online(kCardPlugin,
                                    "{accounts: online, backend_url: \"" + backend.url() + "\", backend_ca_file: \"" + pki.ca_cert.string() +
                                        "\", backend_timeout_ms: 60000}",
                                    dir2.path() / "state");
  auto& o = online.create();
  std::optional<payment::AuthorizationResult> a2;
  std::optional<payment::OperationResult> c2;
  o.authorize({.operation_id = "T2/a", .transaction_id = "T2", .connector = 1, .token = &token, .channel = {}, .amount_fen = 5000, .deadline = {}},
              [&](payment::AuthorizationResult r) { a2 = std::move(r); });
  o.capture({.operation_id = "T3/c", .transaction_id = "T3", .amount_fen = 10, .deadline = {}}, [&](payment::OperationResult r) { c2 = std::move(r); });
  ASSERT_TRUE(eventually([&] { return backend.requests() >= 2; }));
  EXPECT_FALSE(a2.has_value());
  online.destroy();
  ASSERT_TRUE(a2.has_value()) << "answered at stop";
  EXPECT_EQ(a2->decision, payment::Decision::declined);
  ASSERT_TRUE(c2.has_value());
  EXPECT_EQ(c2->state, payment::OperationState::pending) << "not known whether the back end did it";
}

// ---------------------------------------------------------------------------------------------
// pilectl accounts

struct Ctl {
  fs::path db;
  pilecore::test::ProcessResult operator()(std::vector<std::string> args) const {
    std::vector<std::string> argv = {std::string(PILECORE_BIN_DIR) + "/pilectl", "accounts", "--db", db.string()};
    argv.insert(argv.end(), args.begin(), args.end());
    return pilecore::test::run_process(argv);
  }
};

TEST(PilectlAccounts, ManagesTheLocalTableWithClearErrors) {
  TempDir dir;
  Ctl ctl{dir.path() / "cards.db"};
  auto r = ctl({"add", "M0001", "--balance-fen", "5000", "--daily-limit-fen", "3000"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("account M0001 opened with 50.00 yuan"), std::string::npos) << r.out;
  EXPECT_EQ(ctl({"add", "--uid", "04C0FFEE", "--balance-fen", "100"}).exit_code, 0);
  r = ctl({"add", "M0001"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("account M0001 exists already"), std::string::npos) << r.err;

  EXPECT_EQ(ctl({"top-up", "M0001", "250"}).exit_code, 0);
  EXPECT_EQ(ctl({"block", "M0001"}).exit_code, 0);
  EXPECT_EQ(ctl({"set-limit", "M0001", "0"}).exit_code, 0);
  r = ctl({"show", "M0001", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["balance_fen"], 5250);
  EXPECT_EQ(j["status"], "blocked");
  EXPECT_EQ(j["daily_limit_fen"], 0);
  EXPECT_EQ(ctl({"unblock", "M0001"}).exit_code, 0);
  EXPECT_EQ(ctl({"set-balance", "M0001", "42"}).exit_code, 0);
  r = ctl({"list", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["account"], "M0001");
  EXPECT_EQ(j[0]["status"], "active");
  EXPECT_EQ(j[0]["balance_fen"], 42);
  EXPECT_EQ(j[1]["account"], card::uid_account_id(std::string_view("04c0ffee")));
  r = ctl({"list"});
  EXPECT_NE(r.out.find("2 account(s)"), std::string::npos) << r.out;

  r = ctl({"show", "M0404"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no account M0404"), std::string::npos) << r.err;
  r = ctl({"top-up", "M0001", "0"});
  EXPECT_NE(r.exit_code, 0) << "a top-up is positive";
  r = ctl({"add", "--uid", "xyz"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("hex digits"), std::string::npos) << r.err;
  EXPECT_EQ(ctl({"remove", "M0001"}).exit_code, 0);
  EXPECT_EQ(ctl({"remove", "M0001"}).exit_code, 1);
  r = pilecore::test::run_process({std::string(PILECORE_BIN_DIR) + "/pilectl", "accounts", "--db", (dir.path() / "nowhere" / "cards.db").string(), "list"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no account table at"), std::string::npos) << r.err;
}

// ---------------------------------------------------------------------------------------------
// the whole chain in pilecored

/// A running pilecored with N connectors, each with a PN532 emulator and reader-nfc whose card
/// token type is `token_types[i]`; `payment` is the YAML of the payment instances.
class CardSite {
 public:
  CardSite(TempDir& dir, const std::vector<std::string>& token_types, const std::string& payment, const std::string& tokens)
      : dir_(dir), state_(dir.path() / "state") {
    std::string site = "site: {id: CARD-1, name: Card test, location: {lat: 31.2, lon: 121.5}, timezone: Asia/Shanghai}\nconnectors:\n";
    for (std::size_t i = 1; i <= token_types.size(); ++i) site += "  - {id: " + std::to_string(i) + ", type: gbt-dc, max_power_w: 60000}\n";
    site += "plugins:\n";
    for (std::size_t i = 1; i <= token_types.size(); ++i) {
      readers_.push_back(std::make_unique<Pn532Emulator>());
      const std::string n = std::to_string(i);
      site += "  power-" + n + ":\n    plugin: sim-power\n    connector: " + n +
              "\n    config: {arrive_after_s: 0, ev_ready_delay_ms: 0, battery_capacity_wh: 200000, initial_soc_pct: 10, tick_ms: 1000}\n";
      site += "  reader-" + n + ":\n    plugin: reader-nfc\n    connector: " + n + "\n    config: {device: \"" + readers_.back()->connstring() +
              "\", poll_ms: 100, card_token_type: " + token_types[i - 1] + "}\n";
    }
    site += payment;
    site += R"(tariffs:
  decimals: 2
  plans:
    all:
      prices: {flat: {electricity: 69.50, service: 80.00}}
      periods: [{from: "00:00", to: "24:00", type: flat}]
  week: {mon: all, tue: all, wed: all, thu: all, fri: all, sat: all, sun: all}
payment: {preauth_fen: 20000, authorize_timeout_ms: 600000, tokens: )" + tokens + "}\n";
    notify_ = std::make_unique<pilecore::test::NotifyListener>(dir.path() / "notify.sock");
    daemon_ = std::make_unique<pilecore::test::Child>(
        std::vector<std::string>{std::string(PILECORE_BIN_DIR) + "/pilecored", "--config", dir.write("site.yaml", site).string(), "--state-dir",
                                 state_.string(), "--plugin-dir", PILECORE_PLUGIN_DIR, "--status-interval", "0", "--clock-speed", pilecore::test::time_scale().speed_arg(30)},
        std::vector<std::string>{notify_->env()});
    ready_ = notify_->wait_for("READY=1", 20s);
  }
  ~CardSite() {
    if (daemon_) {
      daemon_->signal(SIGTERM);
      daemon_->wait();
    }
  }
  [[nodiscard]] bool ready() const { return ready_; }
  [[nodiscard]] std::string log() const { return daemon_->stderr_text(); }
  Pn532Emulator& reader(int connector) { return *readers_.at(static_cast<std::size_t>(connector - 1)); }
  const fs::path& state() const { return state_; }

  pilecore::test::ProcessResult ctl(std::vector<std::string> args) const {
    std::vector<std::string> argv = {std::string(PILECORE_BIN_DIR) + "/pilectl"};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), {"--state-dir", state_.string()});
    return pilecore::test::run_process(argv);
  }
  /// `pilectl accounts` on instance `instance`'s table.
  pilecore::test::ProcessResult accounts(const std::string& instance, std::vector<std::string> args) const {
    std::vector<std::string> argv = {std::string(PILECORE_BIN_DIR) + "/pilectl", "accounts", "--state-dir", state_.string(), "--instance", instance};
    argv.insert(argv.end(), args.begin(), args.end());
    return pilecore::test::run_process(argv);
  }
  nlohmann::json connector(int id) const {
    const auto r = ctl({"status", "--json"});
    if (r.exit_code != 0) return nlohmann::json::object();
    for (const auto& c : nlohmann::json::parse(r.out).value("connectors", nlohmann::json::array())) {
      if (c.value("id", 0) == id) return c;
    }
    return nlohmann::json::object();
  }
  std::string status(int id) const { return connector(id).value("status", ""); }

  /// Takes whatever card is at the reader away, lets the reader see the empty field, then holds
  /// `card` there.
  void tap(int connector, std::shared_ptr<sim::Iso14443Card> card) {
    auto& r = reader(connector);
    r.remove();
    const unsigned polls = r.count(0x4A);
    eventually([&] { return r.count(0x4A) >= polls + 3; });
    r.place(std::move(card));
  }
  /// Waits for `text` in pilecored's log.
  bool logged(const std::string& text) const {
    return eventually([&] { return log().find(text) != std::string::npos; }, 20s);
  }
  /// Stops the session on `connector`; its receipt.
  nlohmann::json stop(int connector) {
    const std::string txn = this->connector(connector)["session"].value("transaction", "");
    const auto r = ctl({"session", "stop", std::to_string(connector)});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    const auto rc = ctl({"receipt", txn, "--json"});
    return rc.exit_code == 0 ? nlohmann::json::parse(rc.out) : nlohmann::json::object();
  }

 private:
  TempDir& dir_;
  fs::path state_;
  std::vector<std::unique_ptr<Pn532Emulator>> readers_;
  std::unique_ptr<pilecore::test::NotifyListener> notify_;
  std::unique_ptr<pilecore::test::Child> daemon_;
  bool ready_ = false;
};

std::int64_t balance(const CardSite& site, const std::string& instance, const std::vector<std::string>& account) {
  std::vector<std::string> args = {"show"};
  args.insert(args.end(), account.begin(), account.end());
  args.push_back("--json");
  const auto r = site.accounts(instance, args);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.exit_code == 0 ? nlohmann::json::parse(r.out).value("balance_fen", std::int64_t{-1}) : -1;
}

TEST(CardSite, ATappedCardIsDeclinedWithItsReasonUntilItsAccountAllowsThenDebitedAtCapture) {
  TempDir dir;
  CardSite site(dir, {"card"}, "  card:\n    plugin: payment-card\n    config: {min_hold_fen: 1000}\n", "{card: {method: card}}");
  ASSERT_TRUE(site.ready()) << site.log();
  ASSERT_TRUE(eventually([&] { return site.status(1) == "Preparing"; }, 20s)) << site.log();
  const auto card = std::make_shared<sim::MemberCard>(from_hex("04C0FFEE"));

  // No account yet.
  site.tap(1, card);
  ASSERT_TRUE(site.logged("payment declined: this card has no account here")) << site.log();
  // Opened while pilecored runs, but blocked.
  auto r = site.accounts("card", {"add", "--uid", "04c0ffee", "--balance-fen", "300"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(site.accounts("card", {"block", "--uid", "04c0ffee"}).exit_code, 0);
  site.tap(1, card);
  ASSERT_TRUE(site.logged("payment declined: this card is blocked")) << site.log();
  ASSERT_EQ(site.accounts("card", {"unblock", "--uid", "04c0ffee"}).exit_code, 0);
  site.tap(1, card);
  ASSERT_TRUE(site.logged("payment declined: insufficient balance: 300 fen available")) << site.log();
  ASSERT_EQ(site.accounts("card", {"top-up", "--uid", "04c0ffee", "49700"}).exit_code, 0);
  ASSERT_EQ(site.accounts("card", {"set-limit", "--uid", "04c0ffee", "500"}).exit_code, 0);
  site.tap(1, card);
  ASSERT_TRUE(site.logged("payment declined: daily limit reached: 500 fen left today")) << site.log();
  EXPECT_EQ(site.status(1), "Preparing") << "no decline starts a session";
  ASSERT_EQ(site.accounts("card", {"set-limit", "--uid", "04c0ffee", "0"}).exit_code, 0);

  site.tap(1, card);
  ASSERT_TRUE(eventually([&] { return site.status(1) == "Charging"; }, 20s)) << site.log();
  EXPECT_EQ(site.connector(1)["session"].value("method", ""), "card");
  const auto held = site.accounts("card", {"show", "--uid", "04c0ffee", "--json"});
  EXPECT_EQ(nlohmann::json::parse(held.out).value("held_fen", 0), 20000) << held.out;
  std::this_thread::sleep_for(300ms);
  const auto receipt = site.stop(1);
  const std::int64_t captured = receipt.value("captured_fen", std::int64_t{0});
  EXPECT_GT(captured, 0) << receipt.dump(2);
  EXPECT_EQ(receipt.value("capture_status", ""), "captured") << receipt.dump(2);
  EXPECT_EQ(balance(site, "card", {"--uid", "04c0ffee"}), 50000 - captured) << "debited at capture, once";
  const auto after = nlohmann::json::parse(site.accounts("card", {"show", "--uid", "04c0ffee", "--json"}).out);
  EXPECT_EQ(after.value("held_fen", -1), 0);
  EXPECT_EQ(after.value("spent_fen", -1), captured);

  const std::string log = site.log();
  EXPECT_EQ(log.find("04c0ffee"), std::string::npos) << "the UID is never logged";
  EXPECT_EQ(log.find(card::uid_account_id(std::string_view("04c0ffee"))), std::string::npos) << "nor the account key in full";
}

TEST(CardSite, MifareClassicAndDesfireCardsAreReadWithTheSitesKeysAndAWrongKeyIsRefused) {
  TempDir dir;
  const std::string payment = R"(  mcard:
    plugin: payment-card
    config: {token_types: [mcard], identify_by: mifare_classic, mifare_sector: 2, mifare_block: 1, mifare_key_type: B, mifare_key: B0B1B2B3B4B5}
  dcard:
    plugin: payment-card
    config: {token_types: [dcard], identify_by: desfire, desfire_aid: C0FFEE, desfire_key: 000102030405060708090A0B0C0D0E0F, desfire_file: 2}
)";
  CardSite site(dir, {"mcard", "dcard"}, payment, "{mcard: {method: mcard}, dcard: {method: dcard}}");
  ASSERT_TRUE(site.ready()) << site.log();
  ASSERT_TRUE(eventually([&] { return site.status(1) == "Preparing" && site.status(2) == "Preparing"; }, 20s)) << site.log();
  ASSERT_TRUE(eventually([&] { return site.accounts("mcard", {"add", "M0007", "--balance-fen", "40000"}).exit_code == 0; }, 10s));
  ASSERT_TRUE(eventually([&] { return site.accounts("dcard", {"add", "D0009", "--balance-fen", "40000"}).exit_code == 0; }, 10s));

  // MIFARE Classic: another operator's card (its own key B) is refused; ours is read.
  auto foreign = std::make_shared<sim::MifareClassicCard>(from_hex("04A1B2C3"));
  foreign->write_text(9, "M0007");
  site.tap(1, foreign);
  ASSERT_TRUE(site.logged("payment declined: the card refused the site's key for sector 2")) << site.log();
  EXPECT_GE(foreign->refused_auths(), 1u);
  auto ours = std::make_shared<sim::MifareClassicCard>(from_hex("04D1E2F3"));
  ours->set_keys(2, {0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5}, {0xB0, 0xB1, 0xB2, 0xB3, 0xB4, 0xB5});
  ours->write_text(9, "M0007");
  site.tap(1, ours);
  ASSERT_TRUE(eventually([&] { return site.status(1) == "Charging"; }, 20s)) << site.log();

  // DESFire: a card with another key fails the AES authentication; ours is read.
  const sim::DesfireCard::AesKey key = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  auto other = std::make_shared<sim::DesfireCard>(from_hex("04112233445566"));
  other->add_application(0xC0FFEE, sim::DesfireCard::AesKey{});
  other->add_file(0xC0FFEE, 2, {'D', '0', '0', '0', '9'}, true);
  site.tap(2, other);
  ASSERT_TRUE(site.logged("payment declined: the card failed authentication with the site's key")) << site.log();
  auto desfire = std::make_shared<sim::DesfireCard>(from_hex("04665544332211"));
  desfire->add_application(0xC0FFEE, key);
  desfire->add_file(0xC0FFEE, 2, {'D', '0', '0', '0', '9', 0, 0, 0}, true);
  site.tap(2, desfire);
  ASSERT_TRUE(eventually([&] { return site.status(2) == "Charging"; }, 20s)) << site.log();
  EXPECT_EQ(desfire->authentications(), 1u);

  std::this_thread::sleep_for(300ms);
  const auto r1 = site.stop(1);
  const auto r2 = site.stop(2);
  EXPECT_GT(r1.value("captured_fen", std::int64_t{0}), 0) << r1.dump(2);
  EXPECT_GT(r2.value("captured_fen", std::int64_t{0}), 0) << r2.dump(2);
  EXPECT_EQ(balance(site, "mcard", {"M0007"}), 40000 - r1.value("captured_fen", std::int64_t{0}));
  EXPECT_EQ(balance(site, "dcard", {"D0009"}), 40000 - r2.value("captured_fen", std::int64_t{0}));
  const std::string log = site.log();
  EXPECT_EQ(log.find("M0007"), std::string::npos) << "account numbers are masked in the log";
  EXPECT_EQ(log.find("B0B1B2B3B4B5"), std::string::npos);
}

TEST(CardSite, OnlineAccountsAtTheBackEndAndABackEndThatIsDownIsAnsweredHonestly) {
  TempDir dir;
  const auto pki = sim::make_test_pki(dir.path());
  sim::CardBackend backend(pki);
  const std::string account = card::uid_account_id(std::string_view("04c0ffee"));
  backend.open_account(account, 50000);
  const std::string payment = "  card:\n    plugin: payment-card\n    config: {accounts: online, backend_url: \"" + backend.url() + "\", backend_ca_file: \"" +
                              pki.ca_cert.string() + "\", backend_timeout_ms: 1000}\n";
  CardSite site(dir, {"card"}, payment, "{card: {method: card}}");
  ASSERT_TRUE(site.ready()) << site.log();
  ASSERT_TRUE(eventually([&] { return site.status(1) == "Preparing"; }, 20s)) << site.log();
  const auto card = std::make_shared<sim::MemberCard>(from_hex("04C0FFEE"));

  // Down: the authorisation is unavailable (the channel, not the card), nothing is held.
  backend.set_outage(true);
  site.tap(1, card);
  ASSERT_TRUE(site.logged("card back end unreachable")) << site.log();
  ASSERT_TRUE(eventually([&] { return backend.requests("/v1/cards/cancel") >= 1; }, 10s)) << "a release follows, in case a hold was made";
  EXPECT_EQ(site.status(1), "Preparing");
  EXPECT_EQ(backend.held_fen(), 0);

  backend.set_outage(false);
  site.tap(1, card);
  ASSERT_TRUE(eventually([&] { return site.status(1) == "Charging"; }, 20s)) << site.log();
  EXPECT_EQ(backend.held_fen(), 20000);
  std::this_thread::sleep_for(300ms);

  // Down at the capture: pending, never "0 captured"; the saga asks again, same operation id,
  // and the back end debits once it is back.
  backend.set_outage(true);
  const auto receipt = site.stop(1);
  EXPECT_EQ(receipt.value("capture_status", ""), "pending") << receipt.dump(2);
  EXPECT_NE(site.log().find("capture pending: card back end unreachable"), std::string::npos) << site.log();
  backend.set_outage(false);
  const std::string txn = receipt.value("transaction", "");
  ASSERT_TRUE(eventually([&] { return backend.held_fen() == 0; }, 30s)) << site.log();
  const auto done = nlohmann::json::parse(site.ctl({"receipt", txn, "--json"}).out);
  const std::int64_t captured = done.value("captured_fen", std::int64_t{0});
  EXPECT_GT(captured, 0) << done.dump(2);
  EXPECT_EQ(backend.balance_fen(account), 50000 - captured) << "debited once";
  EXPECT_EQ(site.log().find("04c0ffee"), std::string::npos);
}

}  // namespace
