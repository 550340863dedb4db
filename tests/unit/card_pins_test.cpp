// Member-card PINs (payment-card, accounts: local): what risk control's step-up with a PIN at the
// pile checks for a real card (docs/risk.md). The table keeps only a salted PBKDF2 hash and counts
// wrong PINs in a row up to a lockout; `pilectl accounts set-pin` sets one from standard input;
// the plugin, asked with pin_required, answers a pin challenge and holds only after the right PIN.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <optional>
#include <string>

#include "account_store.hpp"
#include "card_pins.hpp"
#include "plugin_host.hpp"
#include "test_support.hpp"

using namespace pilecore;
using pilecore::card::AccountStore;
using pilecore::card::CardPins;
using pilecore::card::PinCheck;
using pilecore::test::TempDir;
namespace fs = std::filesystem;

namespace {

constexpr std::int64_t kNow = 1'772'323'200'000;  // 2026-03-01T00:00:00Z
const std::string kCardPlugin = std::string(PILECORE_PLUGIN_DIR) + "/payment-card.so";

std::string stored_hash(const fs::path& file, const std::string& account) {
  sqlite3* db = nullptr;
  sqlite3_open_v2(file.c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(db, "SELECT hash FROM pins WHERE account=?", -1, &s, nullptr);
  sqlite3_bind_text(s, 1, account.c_str(), -1, SQLITE_TRANSIENT);
  std::string out;
  if (sqlite3_step(s) == SQLITE_ROW) out = reinterpret_cast<const char*>(sqlite3_column_text(s, 0));
  sqlite3_finalize(s);
  sqlite3_close(db);
  return out;
}

}  // namespace

TEST(CardPins, OnlyASaltedHashIsKeptAndThreeWrongPinsInARowLockIt) {
  TempDir dir;
  const fs::path file = dir.path() / "cards.db";
  AccountStore store(file);
  store.add("M-1001", 10000, 0, kNow);
  store.add("M-1002", 10000, 0, kNow);
  CardPins pins(file);
  EXPECT_EQ(pins.check("M-1001", "4711", kNow), PinCheck::not_set);
  EXPECT_THROW(pins.set("M-1001", "471", kNow), std::invalid_argument);
  EXPECT_THROW(pins.set("M-1001", "47a1", kNow), std::invalid_argument);
  EXPECT_THROW(pins.set("M-9999", "4711", kNow), std::invalid_argument);
  pins.set("M-1001", "4711", kNow);
  pins.set("M-1002", "4711", kNow);
  const std::string h1 = stored_hash(file, "M-1001"), h2 = stored_hash(file, "M-1002");
  EXPECT_EQ(h1.rfind("pbkdf2-sha256$100000$", 0), 0U) << h1;
  EXPECT_NE(h1, h2) << "the same PIN hashes differently under another salt";
  EXPECT_TRUE(pins.has_pin("M-1001"));

  EXPECT_EQ(pins.check("M-1001", "4711", kNow), PinCheck::ok);
  EXPECT_EQ(pins.check("M-1001", "0000", kNow), PinCheck::wrong);
  EXPECT_EQ(pins.check("M-1001", "0000", kNow), PinCheck::wrong);
  EXPECT_EQ(pins.check("M-1001", "4711", kNow), PinCheck::ok) << "a right PIN starts the count again";
  for (int i = 0; i < card::kMaxPinFailures; ++i) EXPECT_EQ(pins.check("M-1001", "1111", kNow), PinCheck::wrong);
  EXPECT_EQ(pins.check("M-1001", "4711", kNow), PinCheck::locked) << "locked: even the right PIN is refused";
  // The count survives reopening (a power cut does not unlock it); the operator's new PIN does.
  EXPECT_EQ(CardPins(file).check("M-1001", "4711", kNow), PinCheck::locked);
  pins.set("M-1001", "2468", kNow);
  EXPECT_EQ(pins.check("M-1001", "2468", kNow), PinCheck::ok);
  EXPECT_TRUE(pins.clear("M-1001"));
  EXPECT_FALSE(pins.clear("M-1001"));
  EXPECT_EQ(pins.check("M-1001", "2468", kNow), PinCheck::not_set);
}

TEST(CardPins, TheCardAsksForItsPinWhenRiskControlDoesAndHoldsOnlyAfterTheRightOne) {
  TempDir dir;
  pilecore::test::PluginHost host(kCardPlugin, "{identify_by: uid}", dir.path() / "state");
  auto& m = host.create();
  EXPECT_TRUE(m.capabilities().verifies_pin) << "local accounts keep PINs";
  const fs::path file = dir.path() / "state" / "cards.db";
  const std::string account = card::uid_account_id(std::string_view("04c0ffee"));
  AccountStore(file, false).add(account, 10000, 0, kNow);
  CardPins(file).set(account, "4711", kNow);
  identification::Token token;
  token.type = "card";
  token.id = "04c0ffee";
  token.connector = 1;

  auto authorize = [&](const std::string& txn) {
    std::optional<payment::AuthorizationResult> out;
    m.authorize({.operation_id = txn + "/authorize", .transaction_id = txn, .connector = 1, .token = &token, .channel = {}, .amount_fen = 5000,
                 .deadline = {}, .pin_required = true},
                [&](payment::AuthorizationResult r) { out = std::move(r); });
    EXPECT_TRUE(host.run_until([&] { return out.has_value(); }));
    return out.value_or(payment::AuthorizationResult{});
  };
  auto answer = [&](const std::string& txn, const std::string& pin) {
    std::optional<payment::AuthorizationResult> out;
    m.answer_step_up(txn + "/authorize", {.kind = payment::ChallengeKind::pin, .value = pin, .confirmed = false},
                     [&](payment::AuthorizationResult r) { out = std::move(r); });
    EXPECT_TRUE(host.run_until([&] { return out.has_value(); }));
    return out.value_or(payment::AuthorizationResult{});
  };

  const auto asked = authorize("T1");
  ASSERT_EQ(asked.decision, payment::Decision::step_up) << asked.reason;
  EXPECT_EQ(asked.challenge.kind, payment::ChallengeKind::pin);
  const auto wrong = answer("T1", "1234");
  EXPECT_EQ(wrong.decision, payment::Decision::declined);
  EXPECT_EQ(wrong.reason, "wrong PIN");
  EXPECT_EQ(AccountStore(file, false).find(account, "2026-03-01")->held_fen, 0) << "nothing held for a wrong PIN";
  // A second answer to the same operation is not a second try.
  EXPECT_EQ(answer("T1", "4711").decision, payment::Decision::declined);

  ASSERT_EQ(authorize("T2").decision, payment::Decision::step_up);
  const auto right = answer("T2", "4711");
  ASSERT_EQ(right.decision, payment::Decision::approved) << right.reason;
  EXPECT_EQ(right.authorized_fen, 5000);
  EXPECT_EQ(AccountStore(file, false).find(account, "2026-03-01")->held_fen, 5000);

  // A card without a PIN cannot give that factor.
  CardPins(file).clear(account);
  ASSERT_EQ(authorize("T3").decision, payment::Decision::step_up);
  EXPECT_EQ(answer("T3", "4711").reason, "this card has no PIN: confirm in the app or pay another way");
}

TEST(CardPins, PilectlSetsAPinFromStandardInputAndShowsThatOneIsSet) {
  TempDir dir;
  const fs::path file = dir.path() / "cards.db";
  AccountStore(file).add("M-1001", 10000, 0, kNow);
  const std::string pilectl = std::string(PILECORE_BIN_DIR) + "/pilectl";
  const auto set = pilecore::test::run_process({"/bin/sh", "-c", "printf '4711\\n' | \"$0\" accounts --db \"$1\" set-pin M-1001", pilectl, file.string()});
  ASSERT_EQ(set.exit_code, 0) << set.err;
  EXPECT_EQ(set.out, "account M-1001: PIN set\n");
  EXPECT_EQ(CardPins(file).check("M-1001", "4711", kNow), PinCheck::ok);
  const auto show = pilecore::test::run_process({pilectl, "accounts", "--db", file.string(), "show", "M-1001"});
  EXPECT_NE(show.out.find("pin          set\n"), std::string::npos) << show.out;
  const auto bad = pilecore::test::run_process({"/bin/sh", "-c", "printf '12\\n' | \"$0\" accounts --db \"$1\" set-pin M-1001", pilectl, file.string()});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_EQ(bad.err, "pilectl: a PIN is 4 to 12 digits\n");
}
