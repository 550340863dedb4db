// The transactional outbox (core/store/outbox.hpp) on real SQLite files: a record commits or
// rolls back with the change it reports, leaves by class priority, is retried with backoff, is
// removed only by the back end's acknowledgement, survives a restart, and when the bound is hit
// telemetry goes first and money records never go.
#include <gtest/gtest.h>

#include <future>
#include <string>
#include <vector>

#include "outbox.hpp"
#include "statement.hpp"
#include "storage.hpp"
#include "store_worker.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace pilecore::core;
using pilecore::core::protocol::UplinkClass;
using pilecore::test::TempDir;
using json = nlohmann::json;

namespace {

TimePoint at(int seconds) { return TimePoint(std::chrono::seconds(1767225600 + seconds)); }

protocol::Record rec(const std::string& key, const std::string& kind = "status", json body = json::object()) { return {key, kind, std::move(body)}; }

std::vector<std::string> keys(const std::vector<OutboxRecord>& records) {
  std::vector<std::string> out;
  for (const auto& r : records) out.push_back(r.key);
  return out;
}

std::int64_t count(Database& db, const char* sql) {
  Stmt s(db.handle(), sql);
  s.step();
  return s.i64(0);
}

// A state change to report: stands for a money operation or a status change.
void change_state(Database& db, const std::string& value) {
  Stmt(db.handle(), "INSERT INTO meta(key, value) VALUES(?, ?)").bind(1, value).bind(2, value).step();
}

class OutboxTest : public ::testing::Test {
 protected:
  std::filesystem::path file() const { return dir_.path() / "pilecore.db"; }
  TempDir dir_;
  std::unique_ptr<Database> db_ = std::make_unique<Database>(file());
};

}  // namespace

TEST_F(OutboxTest, RecordsLeaveByClassPriorityThenAge) {
  OutboxRepository box(*db_);
  EXPECT_EQ(box.enqueue(rec("t1", "meter"), UplinkClass::telemetry, at(0)), Enqueued::stored);
  box.enqueue(rec("s1"), UplinkClass::status, at(1));
  box.enqueue(rec("x1", "operation"), UplinkClass::transaction, at(2));
  box.enqueue(rec("c1", "verify"), UplinkClass::control, at(3));
  box.enqueue(rec("x2", "ledger"), UplinkClass::transaction, at(4));
  box.enqueue(rec("t2", "meter"), UplinkClass::telemetry, at(5));
  EXPECT_EQ(keys(box.due(at(5), 100)), (std::vector<std::string>{"c1", "x1", "x2", "s1", "t1", "t2"}));
  EXPECT_EQ(keys(box.due(at(5), 2)), (std::vector<std::string>{"c1", "x1"}));
  // A record enqueued later is not due before its time.
  EXPECT_EQ(keys(box.due(at(3), 100)), (std::vector<std::string>{"c1", "x1", "s1", "t1"}));
}

TEST_F(OutboxTest, ThePayloadIsTheCborRecordTheBackEndDecodes) {
  OutboxRepository box(*db_);
  box.enqueue(rec("op:T-1/capture", "operation", {{"txn", "T-1"}, {"fen", 1250}}), UplinkClass::transaction, at(0));
  const auto due = box.due(at(0), 1);
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].cls, UplinkClass::transaction);
  EXPECT_EQ(due[0].kind, "operation");
  EXPECT_EQ(due[0].created, at(0));
  const auto back = std::get<protocol::Record>(protocol::decode_record(due[0].payload));
  EXPECT_EQ(back.key, "op:T-1/capture");
  EXPECT_EQ(back.body, (json{{"txn", "T-1"}, {"fen", 1250}}));
}

TEST_F(OutboxTest, EnqueueingTheSameKeyTwiceKeepsOneRecord) {
  OutboxRepository box(*db_);
  EXPECT_EQ(box.enqueue(rec("x1", "operation"), UplinkClass::transaction, at(0)), Enqueued::stored);
  EXPECT_EQ(box.enqueue(rec("x1", "operation"), UplinkClass::transaction, at(1)), Enqueued::duplicate);
  EXPECT_EQ(box.due(at(1), 10).size(), 1u);
  EXPECT_THROW(box.enqueue(rec(""), UplinkClass::status, at(0)), std::invalid_argument);
  EXPECT_THROW(box.enqueue(rec(std::string(65, 'k')), UplinkClass::status, at(0)), std::invalid_argument);
  EXPECT_THROW(box.enqueue(rec("k", std::string(33, 'c')), UplinkClass::status, at(0)), std::invalid_argument);
}

TEST_F(OutboxTest, ARecordCommitsAndRollsBackWithTheChangeItReports) {
  OutboxRepository box(*db_);
  db_->exec("BEGIN IMMEDIATE");
  change_state(*db_, "captured");
  box.enqueue(rec("x1", "operation"), UplinkClass::transaction, at(0));
  db_->exec("ROLLBACK");
  EXPECT_EQ(count(*db_, "SELECT COUNT(*) FROM meta"), 0);
  EXPECT_TRUE(box.due(at(0), 10).empty());

  db_->exec("BEGIN IMMEDIATE");
  change_state(*db_, "captured");
  box.enqueue(rec("x1", "operation"), UplinkClass::transaction, at(0));
  db_->exec("COMMIT");
  EXPECT_EQ(count(*db_, "SELECT COUNT(*) FROM meta"), 1);
  EXPECT_EQ(keys(box.due(at(0), 10)), std::vector<std::string>{"x1"});
}

TEST_F(OutboxTest, ALinksSendIsNotEnoughOnlyTheAckRemoves) {
  OutboxLimits limits;
  limits.first_retry = std::chrono::seconds(15);
  limits.max_retry = std::chrono::seconds(100);
  OutboxRepository box(*db_, limits);
  box.enqueue(rec("x1", "operation"), UplinkClass::transaction, at(0));
  box.enqueue(rec("x2", "operation"), UplinkClass::transaction, at(0));
  // Sent (the link said ok): waits for the ack, then is due again with backoff 15, 30, 60, 100, 100 s.
  int t = 0;
  for (int delay : {15, 30, 60, 100, 100}) {
    box.attempted("x1", at(t));
    EXPECT_EQ(keys(box.due(at(t + delay - 1), 10)), std::vector<std::string>{"x2"}) << "after a " << delay << " s backoff";
    EXPECT_EQ(keys(box.due(at(t + delay), 10)), (std::vector<std::string>{"x1", "x2"}));
    t += delay;
  }
  EXPECT_EQ(box.due(at(t), 10)[0].attempts, 5);
  EXPECT_EQ(box.next_due(), at(0));  // x2 has been due all along

  EXPECT_EQ(box.acknowledge({{"x1", "unknown"}, 41}), 1u);
  EXPECT_EQ(keys(box.due(at(t), 10)), std::vector<std::string>{"x2"});
  EXPECT_EQ(box.backend_ledger_seq(), 41u);
  EXPECT_EQ(box.acknowledge({{"x1"}, 40}), 0u);  // a repeated, late ack
  EXPECT_EQ(box.backend_ledger_seq(), 41u);      // anchoring never goes back
  box.attempted("x1", at(t));                    // its send completing after the ack: nothing
  EXPECT_EQ(box.acknowledge({{"x2"}, std::nullopt}), 1u);
  EXPECT_FALSE(box.next_due());
}

TEST_F(OutboxTest, RecordsAttemptsSequencesAndAnchoringSurviveARestart) {
  {
    OutboxRepository box(*db_);
    box.enqueue(rec("x1", "operation", {{"fen", 100}}), UplinkClass::transaction, at(0));
    box.enqueue(rec("t1", "meter"), UplinkClass::telemetry, at(0));
    box.attempted("x1", at(1));
    box.acknowledge({{}, 7});
    EXPECT_EQ(box.reserve_sequences(100), 0u);
    EXPECT_EQ(box.reserve_sequences(100), 100u);
  }
  db_.reset();
  db_ = std::make_unique<Database>(file());
  OutboxRepository box(*db_);
  EXPECT_EQ(keys(box.due(at(1), 10)), std::vector<std::string>{"t1"});
  const auto later = box.due(at(16), 10);
  ASSERT_EQ(keys(later), (std::vector<std::string>{"x1", "t1"}));
  EXPECT_EQ(later[0].attempts, 1);
  EXPECT_EQ(std::get<protocol::Record>(protocol::decode_record(later[0].payload)).body, (json{{"fen", 100}}));
  EXPECT_EQ(box.backend_ledger_seq(), 7u);
  EXPECT_EQ(box.reserve_sequences(1), 200u);  // never a number handed out before the restart
}

TEST_F(OutboxTest, FrameSequencesWrapAt32Bits) {
  OutboxRepository box(*db_);
  box.reserve_sequences(0xFFFFFFF0u);
  EXPECT_EQ(box.reserve_sequences(0x20), 0xFFFFFFF0u);
  EXPECT_EQ(box.reserve_sequences(1), 0x10u);
}

TEST_F(OutboxTest, AtTheBoundTelemetryIsDroppedFirstThenStatusNeverMoney) {
  OutboxLimits limits;
  limits.max_records = 5;
  OutboxRepository box(*db_, limits);
  box.enqueue(rec("s1"), UplinkClass::status, at(0));
  box.enqueue(rec("t1", "meter"), UplinkClass::telemetry, at(1));
  box.enqueue(rec("s2"), UplinkClass::status, at(2));
  box.enqueue(rec("t2", "meter"), UplinkClass::telemetry, at(3));
  box.enqueue(rec("x1", "operation"), UplinkClass::transaction, at(4));
  // Full. Each money record takes the oldest telemetry's place, then the oldest status's.
  EXPECT_EQ(box.enqueue(rec("x2", "operation"), UplinkClass::transaction, at(5)), Enqueued::stored);
  EXPECT_EQ(keys(box.due(at(9), 10)), (std::vector<std::string>{"x1", "x2", "s1", "s2", "t2"}));
  box.enqueue(rec("c1", "verify"), UplinkClass::control, at(6));
  EXPECT_EQ(keys(box.due(at(9), 10)), (std::vector<std::string>{"c1", "x1", "x2", "s1", "s2"}));
  // New telemetry finds no telemetry to replace: it is the one dropped, not a status record.
  EXPECT_EQ(box.enqueue(rec("t3", "meter"), UplinkClass::telemetry, at(7)), Enqueued::dropped);
  // New status replaces the oldest status.
  EXPECT_EQ(box.enqueue(rec("s3"), UplinkClass::status, at(8)), Enqueued::stored);
  EXPECT_EQ(keys(box.due(at(9), 10)), (std::vector<std::string>{"c1", "x1", "x2", "s2", "s3"}));
  const OutboxStats st = box.stats();
  EXPECT_EQ(st.records, (std::array<std::int64_t, 4>{1, 2, 2, 0}));
  EXPECT_EQ(st.dropped, (std::array<std::int64_t, 4>{0, 0, 1, 3}));
}

TEST_F(OutboxTest, FullOfMoneyRecordsItRefusesAnotherAndTheChangeRollsBack) {
  OutboxLimits limits;
  limits.max_records = 3;
  OutboxRepository box(*db_, limits);
  box.enqueue(rec("x1", "operation"), UplinkClass::transaction, at(0));
  box.enqueue(rec("x2", "ledger"), UplinkClass::transaction, at(1));
  box.enqueue(rec("c1", "verify"), UplinkClass::control, at(2));
  EXPECT_EQ(box.enqueue(rec("s1"), UplinkClass::status, at(3)), Enqueued::dropped);

  // The same as the daemon will do it: the change and its record in one storage-thread work.
  StoreWorker worker(*db_, [](std::function<void()> fn) { fn(); });
  std::promise<Status> done;
  worker.submit(
      [&](Database& db) {
        change_state(db, "captured x3");
        OutboxRepository(db, limits).enqueue(rec("x3", "operation"), UplinkClass::transaction, at(4));
      },
      [&](Status s) { done.set_value(s); });
  const Status s = done.get_future().get();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("the uplink outbox is full (3 records"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("refused rather than dropping a money record"), std::string::npos) << s.message();
  worker.run_sync([&](Database& db) {
    EXPECT_EQ(count(db, "SELECT COUNT(*) FROM meta"), 0);  // the change did not happen either
    EXPECT_EQ(keys(OutboxRepository(db, limits).due(at(9), 10)), (std::vector<std::string>{"c1", "x1", "x2"}));
  });
  worker.stop();
  // Once the back end acknowledges, there is room again.
  box.acknowledge({{"x1"}, std::nullopt});
  EXPECT_EQ(box.enqueue(rec("x3", "operation"), UplinkClass::transaction, at(5)), Enqueued::stored);
}

TEST_F(OutboxTest, TheByteBoundDropsAsManyTelemetryRecordsAsItTakes) {
  OutboxLimits limits;
  limits.max_bytes = 200;
  OutboxRepository box(*db_, limits);
  const json blob = std::string(40, 'm');
  for (int i = 0; i < 3; ++i) box.enqueue(rec("t" + std::to_string(i), "meter", blob), UplinkClass::telemetry, at(i));
  const auto before = box.stats();
  EXPECT_EQ(before.records[3], 3);
  EXPECT_LE(before.bytes, 200);
  // A 120-byte body needs two telemetry records' room.
  EXPECT_EQ(box.enqueue(rec("x1", "operation", std::string(120, 'x')), UplinkClass::transaction, at(3)), Enqueued::stored);
  EXPECT_EQ(keys(box.due(at(9), 10)), (std::vector<std::string>{"x1", "t2"}));
  EXPECT_LE(box.stats().bytes, 200);
  // A money record larger than the whole bound can never fit: refused, nothing dropped.
  EXPECT_THROW(box.enqueue(rec("x2", "operation", std::string(300, 'x')), UplinkClass::transaction, at(4)), OutboxFull);
  EXPECT_EQ(keys(box.due(at(9), 10)), (std::vector<std::string>{"x1", "t2"}));
}
