// Host::upload in the core (SDK 2.4, plugin_uploads.hpp): a plugin's record goes into the real
// outbox (a real SQLite file and storage thread), class transaction, once per key; its answer
// waits for the back end's ack; a key acknowledged before is answered at once and not written
// again; refusals write nothing. The daemon end to end (payment-dcep, sim-link as the back end,
// in-process and isolated) is in payment_dcep_test.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "outbox.hpp"
#include "plugin_upload_repository.hpp"
#include "plugin_uploads.hpp"
#include "scheduler.hpp"
#include "statement.hpp"
#include "storage.hpp"
#include "store_worker.hpp"
#include "post_queue.hpp"
#include "test_support.hpp"
#include "uplink.hpp"

namespace pilecore::core {
namespace {

using namespace std::chrono_literals;
using test::eventually;
using test::TempDir;
namespace fs = std::filesystem;

const TimePoint kStart = TimePoint{} + std::chrono::hours(24 * 20500);

/// The core's strand, played by the test thread.
using Strand = test::PostQueue;

/// One answer to an upload.
struct Answer {
  std::optional<Status> status;
  int count = 0;
  PluginUploads::Done done() {
    return [this](Status s) {
      ++count;
      status = std::move(s);
    };
  }
};

class PluginUploadsTest : public ::testing::Test {
 protected:
  explicit PluginUploadsTest(bool uplink = true, OutboxLimits limits = {}) { open(uplink, limits); }
  ~PluginUploadsTest() override { close(); }

  void open(bool uplink, OutboxLimits limits = {}) {
    db = std::make_unique<Database>(dir.path() / "pilecore.db");
    if (uplink) db->enable_uplink(limits, clock);
    worker = std::make_unique<StoreWorker>(*db, [this](std::function<void()> fn) { strand.post(std::move(fn)); });
    worker->on_enqueued([this] { ++wakes; });  // the sender's wake, as the daemon sets it
    uploads = std::make_unique<PluginUploads>(*worker, clock, [this](std::function<void()> fn) { strand.post(std::move(fn)); });
  }
  void close() {
    uploads.reset();
    if (worker) worker->stop();
    worker.reset();
    db.reset();
  }
  /// A restart of the daemon: a new connection, storage thread and PluginUploads on the same file.
  void restart() {
    close();
    open(true);
  }

  Answer& submit(const std::string& instance, const UplinkRecord& r) {
    answers.push_back(std::make_unique<Answer>());
    uploads->submit(instance, r, answers.back()->done());
    EXPECT_FALSE(answers.back()->status) << "never answered inside submit()";
    return *answers.back();
  }
  /// Runs the strand until every upload so far has had its storage work answered (or waits).
  void settle() {
    std::promise<void> p;
    auto f = p.get_future();
    worker->submit([](Database&) {}, [&p](Status) { p.set_value(); });
    ASSERT_TRUE(strand.run_until([&] { return f.wait_for(0s) == std::future_status::ready; }));
  }
  /// The back end's ack, taken in as the uplink does it: in a storage work, then on the strand.
  void ack(const std::vector<std::string>& keys) {
    auto named = std::make_shared<std::vector<std::string>>();
    bool done = false;
    worker->submit(
        [keys, named, this](Database& d) {
          OutboxRepository(d).acknowledge({keys, std::nullopt});
          *named = PluginUploadRepository(d).acknowledge(keys, clock.now());
        },
        [&, named](Status st) {
          ASSERT_TRUE(st.ok()) << st.message();
          uploads->acknowledged(*named);
          done = true;
        });
    ASSERT_TRUE(strand.run_until([&] { return done; }));
  }
  /// The first column of each row of `sql`.
  std::vector<std::string> rows(const std::string& sql) {
    std::vector<std::string> out;
    worker->run_sync([&](Database& d) {
      Stmt s(d.handle(), sql.c_str());
      while (s.step()) out.push_back(s.text(0));
    });
    return out;
  }
  std::vector<OutboxRecord> outbox() {
    std::vector<OutboxRecord> out;
    worker->run_sync([&](Database& d) { out = OutboxRepository(d).due(kStart + 1000h, 100); });
    return out;
  }

  TempDir dir;
  ManualScheduler clock{kStart};
  Strand strand;
  std::unique_ptr<Database> db;
  std::unique_ptr<StoreWorker> worker;
  std::unique_ptr<PluginUploads> uploads;
  std::vector<std::unique_ptr<Answer>> answers;
  int wakes = 0;
};

UplinkRecord voucher(const std::string& op, std::int64_t fen = 3000) {
  return {.key = "voucher:" + op,
          .kind = "voucher",
          .body = {{"op", op}, {"fen", fen}, {"digest", std::vector<std::uint8_t>{0xDE, 0xAD, 0x00, 0xFF}}, {"ok", true}, {"time_ms", std::int64_t{-5}}}};
}

TEST_F(PluginUploadsTest, ARecordIsWrittenToTheOutboxAndAnsweredOnlyWhenTheBackEndAcknowledgesIt) {
  auto& a = submit("ecny", voucher("T-1/authorize"));
  settle();
  EXPECT_FALSE(a.status) << "written, not yet acknowledged";
  EXPECT_EQ(wakes, 1) << "the sender is told";
  EXPECT_EQ(uploads->waiting(), 1u);
  const auto out = outbox();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].key, "voucher:T-1/authorize");
  EXPECT_EQ(out[0].cls, protocol::UplinkClass::transaction);
  EXPECT_EQ(out[0].kind, "voucher");
  EXPECT_EQ(rows("SELECT key || '|' || instance || '|' || kind || '|' || state FROM plugin_uploads"),
            std::vector<std::string>{"voucher:T-1/authorize|ecny|voucher|waiting"});

  ack({"voucher:T-1/authorize", "op:unrelated/intent"});
  ASSERT_TRUE(a.status);
  EXPECT_TRUE(a.status->ok()) << a.status->message();
  EXPECT_EQ(a.count, 1);
  EXPECT_EQ(uploads->waiting(), 0u);
  EXPECT_TRUE(outbox().empty());
  EXPECT_EQ(rows("SELECT state || '|' || acknowledged_ms FROM plugin_uploads"), std::vector<std::string>{"acknowledged|" + std::to_string(kStart.time_since_epoch().count())});
  ack({"voucher:T-1/authorize"});
  EXPECT_EQ(a.count, 1) << "an ack repeated answers nothing twice";
}

TEST_F(PluginUploadsTest, TheBodyIsTheCborMapOfProtocol31WithSortedNamesAndByteStrings) {
  submit("ecny", voucher("T-1/authorize"));
  settle();
  const auto out = outbox();
  ASSERT_EQ(out.size(), 1u);
  // Byte for byte: definite lengths, shortest integers, the body's names sorted (digest, fen,
  // ok, op, time_ms), bytes as a byte string, no tags.
  const auto expected = nlohmann::json::to_cbor(nlohmann::json{
      {"k", "voucher:T-1/authorize"},
      {"c", "voucher"},
      {"b", {{"digest", nlohmann::json::binary({0xDE, 0xAD, 0x00, 0xFF})}, {"fen", 3000}, {"ok", true}, {"op", "T-1/authorize"}, {"time_ms", -5}}}});
  EXPECT_EQ(out[0].payload, expected);
  auto decoded = protocol::decode_record(out[0].payload);
  ASSERT_TRUE(std::holds_alternative<protocol::Record>(decoded));
  const auto& body = std::get<protocol::Record>(decoded).body;
  ASSERT_TRUE(body["digest"].is_binary());
  EXPECT_EQ(static_cast<const std::vector<std::uint8_t>&>(body["digest"].get_binary()), (std::vector<std::uint8_t>{0xDE, 0xAD, 0x00, 0xFF}));
  EXPECT_EQ(body.begin().key(), "digest");
  // The exact bytes: the map of five starts A5, "digest" (66 ...) then 44 DE AD 00 FF.
  const std::vector<std::uint8_t> digest_entry{0x66, 'd', 'i', 'g', 'e', 's', 't', 0x44, 0xDE, 0xAD, 0x00, 0xFF};
  EXPECT_NE(std::search(out[0].payload.begin(), out[0].payload.end(), digest_entry.begin(), digest_entry.end()), out[0].payload.end());
}

TEST_F(PluginUploadsTest, TheSameKeyTwiceIsOneRecordAndBothUploadsAreAnswered) {
  auto& first = submit("ecny", voucher("T-1/authorize"));
  auto& second = submit("ecny", voucher("T-1/authorize", 9999));
  settle();
  ASSERT_EQ(outbox().size(), 1u);
  EXPECT_EQ(protocol::decode_record(outbox()[0].payload).index(), 0u);
  EXPECT_EQ(std::get<protocol::Record>(protocol::decode_record(outbox()[0].payload)).body["fen"], 3000) << "the first body stays";
  ack({"voucher:T-1/authorize"});
  EXPECT_TRUE(first.status && first.status->ok());
  EXPECT_TRUE(second.status && second.status->ok());
}

TEST_F(PluginUploadsTest, AKeyAcknowledgedBeforeIsAnsweredAtOnceAlsoAfterARestartAndNotWrittenAgain) {
  submit("ecny", voucher("T-1/authorize"));
  settle();
  ack({"voucher:T-1/authorize"});
  restart();
  auto& again = submit("ecny", voucher("T-1/authorize"));
  settle();
  ASSERT_TRUE(again.status);
  EXPECT_TRUE(again.status->ok());
  EXPECT_TRUE(outbox().empty()) << "not sent twice";
  EXPECT_EQ(uploads->waiting(), 0u);
}

TEST_F(PluginUploadsTest, AnUnacknowledgedRecordOutlivesARestartAndTheNewUploadWaitsForItsAck) {
  auto& before = submit("ecny", voucher("T-1/authorize"));
  settle();
  restart();  // the instance stopped before the ack: its answer is never given
  EXPECT_FALSE(before.status);
  ASSERT_EQ(outbox().size(), 1u) << "the record still goes out";
  auto& after = submit("ecny", voucher("T-1/authorize"));
  settle();
  EXPECT_FALSE(after.status);
  EXPECT_EQ(outbox().size(), 1u);
  ack({"voucher:T-1/authorize"});
  EXPECT_TRUE(after.status && after.status->ok());
  EXPECT_FALSE(before.status);
}

TEST_F(PluginUploadsTest, AnotherInstancesKeyIsRefusedAndNothingIsWritten) {
  submit("ecny-1", voucher("T-1/authorize"));
  settle();
  auto& other = submit("ecny-2", voucher("T-1/authorize"));
  settle();
  ASSERT_TRUE(other.status);
  EXPECT_EQ(other.status->code(), StatusCode::invalid_argument);
  EXPECT_EQ(other.status->message(), "the key 'voucher:T-1/authorize' belongs to instance 'ecny-1'; an instance's keys must not be another's");
  ack({"voucher:T-1/authorize"});
  auto& later = submit("ecny-2", voucher("T-1/authorize"));
  settle();
  EXPECT_EQ(later.status->code(), StatusCode::invalid_argument) << "also once acknowledged";
  EXPECT_EQ(rows("SELECT instance FROM plugin_uploads"), std::vector<std::string>{"ecny-1"});
}

TEST_F(PluginUploadsTest, RecordsTheProtocolCannotCarryOrThatWouldPassForTheCoresAreRefused) {
  struct Case {
    UplinkRecord record;
    std::string why;
  };
  std::vector<Case> cases{
      {{.key = std::string(65, 'k'), .kind = "voucher", .body = {}}, "an uplink record's key is 1 to 64 bytes, not 65"},
      {{.key = "", .kind = "voucher", .body = {}}, "an uplink record's key is 1 to 64 bytes, not 0"},
      {{.key = "voucher:a b", .kind = "voucher", .body = {}}, "an uplink record's key is printable ASCII without spaces"},
      {{.key = "op:T-1/authorize/confirmed", .kind = "voucher", .body = {}}, "the key prefix 'op:' is the core's own; choose another"},
      {{.key = "ledger:7", .kind = "voucher", .body = {}}, "the key prefix 'ledger:' is the core's own; choose another"},
      {{.key = "voucher:1", .kind = "Voucher", .body = {}}, "an uplink record's kind is 1 to 32 characters of [a-z0-9_]"},
      {{.key = "voucher:1", .kind = "ledger", .body = {}}, "the kind 'ledger' is the core's own; choose another"},
      {{.key = "voucher:1", .kind = "voucher", .body = {{"a", std::int64_t{1}}, {"a", true}}}, "the body field 'a' is given twice"},
      {{.key = "voucher:1", .kind = "voucher", .body = {{"", std::int64_t{1}}}}, "a body field's name is 1 to 32 bytes"},
      {{.key = "voucher:1", .kind = "voucher", .body = {{"blob", std::vector<std::uint8_t>(16 * 1024, 1)}}},
       "the record is 16418 bytes encoded; at most 16384"},
  };
  // The longest key the protocol allows is taken.
  auto& longest = submit("ecny", {.key = std::string(64, 'k'), .kind = "voucher", .body = {}});
  for (const auto& c : cases) {
    auto& a = submit("ecny", c.record);
    strand.run_until([&] { return a.status.has_value(); });
    ASSERT_TRUE(a.status) << c.why;
    EXPECT_EQ(a.status->code(), StatusCode::invalid_argument) << c.why;
    EXPECT_EQ(a.status->message(), c.why);
  }
  settle();
  EXPECT_FALSE(longest.status);
  ASSERT_EQ(outbox().size(), 1u);
  EXPECT_EQ(outbox()[0].key, std::string(64, 'k'));
}

class FullOutbox : public PluginUploadsTest {
 protected:
  FullOutbox() : PluginUploadsTest(true, [] {
    OutboxLimits l;
    l.max_records = 2;
    return l;
  }()) {}
};

TEST_F(FullOutbox, AnOutboxFullOfMoneyRecordsRefusesBusyAndWritesNothing) {
  submit("ecny", voucher("T-1/authorize"));
  submit("ecny", voucher("T-2/authorize"));
  auto& third = submit("ecny", voucher("T-3/authorize"));
  settle();
  ASSERT_TRUE(third.status);
  EXPECT_EQ(third.status->code(), StatusCode::busy);
  EXPECT_NE(third.status->message().find("the uplink outbox is full"), std::string::npos) << third.status->message();
  EXPECT_EQ(rows("SELECT key FROM plugin_uploads ORDER BY key"), (std::vector<std::string>{"voucher:T-1/authorize", "voucher:T-2/authorize"}));
  // Room again once the back end has the first: the third goes in.
  ack({"voucher:T-1/authorize"});
  auto& again = submit("ecny", voucher("T-3/authorize"));
  settle();
  EXPECT_FALSE(again.status) << "written, waiting";
  EXPECT_EQ(outbox().size(), 2u);
}

class NoUplink : public PluginUploadsTest {
 protected:
  NoUplink() : PluginUploadsTest(false) {}
};

TEST_F(NoUplink, APileWithoutALinkRefusesUnavailableAndWritesNothing) {
  auto& a = submit("ecny", voucher("T-1/authorize"));
  settle();
  ASSERT_TRUE(a.status);
  EXPECT_EQ(a.status->code(), StatusCode::unavailable);
  EXPECT_EQ(a.status->message(), "this pile has no link to a back end (the site file's links); nothing can be uploaded");
  EXPECT_TRUE(rows("SELECT key FROM plugin_uploads").empty());
}

}  // namespace
}  // namespace pilecore::core
