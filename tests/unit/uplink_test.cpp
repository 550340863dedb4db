// The uplink (issue #12 items 2, 6, 7), as the back end sees it:
//  - every change the back end must learn of commits with its outbox record, or neither does;
//  - the daemon takes the records to the back end over a link plugin (sim-link plays the back
//    end and answers with the protocol's ack) and forgets each only when it is acknowledged;
//  - records outlive an outage and a restart, and arrive once each;
//  - the back end's ledger anchor lets `ledger verify` see a truncated ledger, an emptied one and
//    an older copy of the database, and verify checks the receipts' rows against the signed records.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <numeric>
#include <set>
#include <sstream>
#include <string>

#include "crypto.hpp"
#include "ledger.hpp"
#include "ledger_anchor.hpp"
#include "ledger_commands.hpp"
#include "money_operations.hpp"
#include "rak3172_sim.hpp"
#include "outbox.hpp"
#include "runtime.hpp"
#include "scheduler.hpp"
#include "statement.hpp"
#include "store_worker.hpp"
#include "test_support.hpp"
#include "transaction_repository.hpp"
#include "uplink.hpp"

namespace pilecore::core {
namespace {

using namespace std::chrono_literals;
using test::eventually;
using test::TempDir;
namespace fs = std::filesystem;

const TimePoint kStart = TimePoint{} + std::chrono::hours(24 * 20500);

/// A database with the uplink on, its storage thread, and a way to wait for a work.
struct Store {
  explicit Store(const fs::path& file, OutboxLimits limits = {}) : clock(kStart), db(std::make_unique<Database>(file)) {
    db->enable_uplink(limits, clock);
    worker = std::make_unique<StoreWorker>(*db, [](std::function<void()> fn) { fn(); });
  }
  ~Store() {
    worker->stop();
  }
  Status run(StoreWorker::Work work) {
    std::promise<Status> p;
    auto f = p.get_future();
    worker->submit(std::move(work), [&p](Status st) { p.set_value(st); });
    return f.get();
  }
  std::vector<std::string> keys() {
    std::vector<std::string> out;
    worker->run_sync([&](Database& d) {
      for (const auto& r : OutboxRepository(d).due(kStart + 1000h, 1000)) out.push_back(r.key);
    });
    return out;
  }
  ManualScheduler clock;
  std::unique_ptr<Database> db;
  std::unique_ptr<StoreWorker> worker;
};

MoneyOperation capture_op(const std::string& txn) {
  MoneyOperation op;
  op.id = txn + "/capture";
  op.txn = txn;
  op.kind = OperationKind::capture;
  op.amount_fen = 1250;
  op.method = "sim";
  op.created = op.updated = kStart;
  return op;
}

OutboxLimits at_most(std::size_t records) {
  OutboxLimits l;
  l.max_records = records;
  return l;
}

std::int64_t count(sqlite3* db, const std::string& sql) {
  Stmt s(db, sql.c_str());
  s.step();
  return s.i64(0);
}

TEST(UplinkOutbox, EachMoneyOperationStateIsARecordCommittedWithIt) {
  TempDir dir;
  {
    Store store(dir.path() / "p.db", at_most(2));
    auto op = capture_op("T-1");
    ASSERT_TRUE(store.run([&](Database& db) { operations::insert_intent(db, op); }).ok());
    op.state = OperationStateRow::confirmed;
    op.reference = "ACQ-9";
    ASSERT_TRUE(store.run([&](Database& db) { operations::update(db, op); }).ok());
    EXPECT_EQ(store.keys(), (std::vector<std::string>{"op:T-1/capture/intent", "op:T-1/capture/confirmed"}));

    // The outbox holds two money records and may drop neither: the next operation is refused
    // whole, its row with its record.
    const Status refused = store.run([&](Database& db) { operations::insert_intent(db, capture_op("T-2")); });
    EXPECT_FALSE(refused.ok());
    EXPECT_NE(refused.message().find("outbox is full"), std::string::npos) << refused.message();
    store.worker->run_sync([](Database& db) {
      EXPECT_FALSE(operations::find(db.handle(), "T-2/capture")) << "the operation rolled back with its record";
    });
  }
  // A restart (the Database closed and opened again) finds the records waiting.
  Store again(dir.path() / "p.db");
  EXPECT_EQ(again.keys(), (std::vector<std::string>{"op:T-1/capture/intent", "op:T-1/capture/confirmed"}));
}

TEST(UplinkOutbox, ALedgerAppendAndItsSeqAndHashCommitTogether) {
  TempDir dir;
  generate_identity(KeyAlgorithm::ecdsa_p256, dir.path() / "k", dir.path() / "c", "PILE-0001");
  Store store(dir.path() / "p.db", at_most(1));
  Ledger ledger(store.db->handle(), SigningKey((dir.path() / "k").string()), HashAlgorithm::sha256);
  ledger.uplink_through(*store.db);
  LedgerEntry first;
  ASSERT_TRUE(store.run([&](Database&) { first = ledger.append("T-1", test::sample_ledger_record(1, "T-1")); }).ok());
  std::optional<OutboxRecord> record;
  store.worker->run_sync([&](Database& d) { record = OutboxRepository(d).due(kStart, 10).at(0); });
  ASSERT_TRUE(record);
  EXPECT_EQ(record->key, "ledger:1");
  EXPECT_EQ(record->cls, protocol::UplinkClass::transaction);
  const auto decoded = std::get<protocol::Record>(protocol::decode_record(record->payload));
  EXPECT_EQ(decoded.body["seq"], 1);
  EXPECT_EQ(decoded.body["hash"], to_hex(first.hash));
  EXPECT_FALSE(decoded.body.contains("record")) << "the record names the user's token: it stays on the pile";

  const Status refused = store.run([&](Database&) { ledger.append("T-2", test::sample_ledger_record(2, "T-2")); });
  EXPECT_FALSE(refused.ok()) << "the outbox is full of a money record";
  EXPECT_EQ(count(store.db->handle(), "SELECT COUNT(*) FROM ledger"), 1) << "the ledger row rolled back with its record";
}

TEST(UplinkOutbox, ATransactionsCloseAndItsRecordCommitTogether) {
  TempDir dir;
  Store store(dir.path() / "p.db", at_most(1));
  ASSERT_TRUE(store.run([](Database& db) {
                TransactionRepository(db).insert({.id = "T-1", .connector = 1, .method = "sim", .user_token = "card:1", .user_hash = "h",
                                                  .payment_ref = "", .authorized_fen = 30000, .started = kStart, .meter_start_wh = 1000, .mode = "full"});
                enqueue_uplink(db, {"op:X/intent", "operation", 1}, protocol::UplinkClass::transaction);
              }).ok());
  const Status refused = store.run([](Database& db) {
    TransactionRepository(db).close("T-1", {.outcome = "completed", .meter_stop_wh = 2000, .energy_wh = 1000, .electricity_fen = 70,
                                            .service_fen = 80, .total_fen = 150, .capture_status = "", .bill_document = "{}", .stopped = kStart});
  });
  EXPECT_FALSE(refused.ok());
  store.worker->run_sync([](Database& db) { EXPECT_EQ(TransactionRepository(db).find("T-1")->status, "open") << "the close rolled back"; });
}

TEST(UplinkOutbox, ADatabaseWithoutTheUplinkGetsNoRecords) {
  // pilectl, or a site without a link: nothing would ever acknowledge them.
  TempDir dir;
  Database db(dir.path() / "p.db");
  db.exec("BEGIN IMMEDIATE");
  operations::insert_intent(db, capture_op("T-1"));
  db.exec("COMMIT");
  EXPECT_EQ(count(db.handle(), "SELECT COUNT(*) FROM outbox"), 0);
}

// ---------------------------------------------------------------------------------------------
// The daemon with sim-link as the back end.

std::string uplink_site(const std::string& link_config, const std::string& links_extra = "") {
  return R"(site: {id: UP-1, name: Uplink test, location: {lat: 31.2, lon: 121.5}, timezone: Asia/Shanghai}
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
  - {id: 2, type: gbt-dc, max_power_w: 60000}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
    config: {arrive_after_s: 0, ev_ready_delay_ms: 0, battery_capacity_wh: 200000, initial_soc_pct: 10, tick_ms: 1000}
  power-2:
    plugin: sim-power
    connector: 2
    config: {arrive_after_s: -1}
  backend:
    plugin: sim-link
    config: )" + link_config + "\n" +
         test::sim_payment_and_flat_tariff() + "links: {device_id: 123456, outbox: {first_retry_s: 600, max_retry_s: 600}" + links_extra + "}\n";
}

nlohmann::json request(test::RunningSite& site, const nlohmann::json& req) {
  std::promise<nlohmann::json> p;
  auto f = p.get_future();
  site.runtime().dispatch([&] { site.runtime().handle_request(req, [&p](nlohmann::json r) { p.set_value(std::move(r)); }); });
  return f.get();
}

/// One charge on connector 1, start to receipt.
nlohmann::json charge(test::RunningSite& site) {
  EXPECT_TRUE(eventually([&] { return site.runtime().ready(); }));
  EXPECT_TRUE(eventually([&] { return request(site, {{"cmd", "status"}})["connectors"][0]["status"] == "Preparing"; }));
  const auto started = request(site, {{"cmd", "session_start"}, {"connector", 1}, {"token", "card:0451"}});
  EXPECT_TRUE(started.value("ok", false)) << started.dump();
  EXPECT_TRUE(eventually([&] { return request(site, {{"cmd", "status"}})["connectors"][0]["status"] == "Charging"; }));
  // Some energy, so that there is a capture (and its records) to report.
  EXPECT_TRUE(eventually([&] {
    const auto st = request(site, {{"cmd", "status"}})["connectors"][0];
    return st.contains("session") && st["session"].value("energy_wh", 0) > 0;
  }));
  const auto stopped = request(site, {{"cmd", "session_stop"}, {"connector", 1}});
  EXPECT_TRUE(stopped.value("ok", false)) << stopped.dump();
  return stopped;
}

struct Identity {
  explicit Identity(const TempDir& dir) : key(dir.path() / "device.key"), cert(dir.path() / "device.crt") {
    generate_identity(KeyAlgorithm::ecdsa_p256, key, cert, "PILE-0001");
  }
  std::function<void(RuntimeOptions&)> options() const {
    return [k = key](RuntimeOptions& o) {
      o.make_ledger = [k](sqlite3* db) { return std::make_unique<Ledger>(db, SigningKey(k.string()), HashAlgorithm::sha256); };
    };
  }
  fs::path key, cert;
};

/// What the back end stored, key by key, from sim-link's log: how often each arrived.
std::map<std::string, int> arrivals(test::CaptureSink& log) {
  std::map<std::string, int> out;
  for (const auto& line : log.lines()) {
    if (const auto at = line.find("back end: stored "); at != std::string::npos) ++out[line.substr(line.rfind(' ') + 1)];
    if (line.rfind("back end: ", 0) == 0 && line.find(" again, already stored") != std::string::npos) {
      ++out[line.substr(10, line.find(' ', 10) - 10)];
    }
  }
  return out;
}

/// Waiting records that are not heartbeats, read while the daemon runs (WAL lets a reader in).
std::int64_t waiting(const fs::path& db) {
  Database ro(db, Database::ReadOnly{});
  return count(ro.handle(), "SELECT COUNT(*) FROM outbox WHERE kind != 'heartbeat'");
}

TEST(Uplink, MoneyLedgerStatusAndAlarmRecordsAreAcknowledgedAndTheOutboxDrains) {
  TempDir dir;
  Identity id(dir);
  auto log = test::capture_log("link:sim-link:backend");
  const fs::path db = dir.path() / "state" / "pilecore.db";
  std::string txn;
  std::int64_t anchored = 0;
  {
    // A low-disk threshold no file system meets: the storage.low_disk alarm is raised at once.
    test::RunningSite site(dir, uplink_site("{latency_ms: 10}", ", heartbeat_s: 1") + "storage: {low_disk_bytes: 1000000000000000}\n",
                           {PILECORE_PLUGIN_DIR}, 1.0, "2026-03-02T01:50:00Z", id.options());
    const auto stopped = charge(site);
    txn = stopped.value("transaction", "");
    ASSERT_FALSE(txn.empty());
    // The capture completes after the stop's reply: its outcome is the last money record.
    ASSERT_TRUE(eventually([&] { return arrivals(*log).contains("op:" + txn + "/capture/confirmed"); }, 20s));
    ASSERT_TRUE(eventually([&] { return waiting(db) == 0; }, 20s)) << waiting(db) << " records still waiting";
    const std::int64_t last_seq = [&] {
      Database ro(db, Database::ReadOnly{});
      return count(ro.handle(), "SELECT MAX(seq) FROM ledger");
    }();
    ASSERT_GE(last_seq, 2) << "the session's record and its capture's";
    ASSERT_TRUE(eventually([&] { return arrivals(*log).contains(fmt::format("ledger:{}", last_seq)); }));
    const auto got = arrivals(*log);
    for (const std::string& key : {txn + "/authorize", txn + "/capture"}) {
      EXPECT_TRUE(got.contains("op:" + key + "/intent")) << key;
      EXPECT_TRUE(got.contains("op:" + key + "/confirmed")) << key;
    }
    EXPECT_TRUE(got.contains("txn:" + txn + "/closed"));
    EXPECT_TRUE(got.contains("txn:" + txn + "/captured"));
    EXPECT_TRUE(got.contains("ledger:1"));
    auto with_prefix = [&](const std::string& p) {
      return std::count_if(got.begin(), got.end(), [&](const auto& kv) { return kv.first.rfind(p, 0) == 0; });
    };
    EXPECT_GE(with_prefix("status:1:"), 2) << "Charging and the stop's status changes";
    EXPECT_GE(with_prefix("alarm:"), 1) << "storage.low_disk";
    // The alarm carries what the app needs to send the driver to another connector.
    nlohmann::json alarm;
    for (const auto& line : log->lines()) {
      if (line.rfind("back end: body of alarm:", 0) == 0) alarm = nlohmann::json::parse(line.substr(line.find(": {") + 2));
    }
    ASSERT_TRUE(alarm.is_object());
    EXPECT_EQ(alarm["code"], "storage.low_disk");
    EXPECT_EQ(alarm["active"], true);
    EXPECT_FALSE(alarm["text"].get<std::string>().empty());
    EXPECT_EQ(alarm["site"]["id"], "UP-1");
    EXPECT_EQ(alarm["site"]["lat_e6"], 31200000);
    EXPECT_EQ(alarm["site"]["lon_e6"], 121500000);
    ASSERT_TRUE(alarm["available"].is_array());
    EXPECT_NE(std::find(alarm["available"].begin(), alarm["available"].end(), 2), alarm["available"].end()) << "connector 2 is free: " << alarm.dump();
    EXPECT_TRUE(eventually([&] {
      const auto now = arrivals(*log);
      return std::any_of(now.begin(), now.end(), [](const auto& kv) { return kv.first.rfind("hb:", 0) == 0; });
    })) << "a heartbeat every second";
    // The anchor: the back end's ack named the newest ledger seq, and the pile kept it with its hash.
    ASSERT_TRUE(eventually([&] {
      const auto a = read_anchor(anchor_path(db));
      return a && a->seq == last_seq;
    }));
    anchored = last_seq;
    const auto stats = site.on_strand([&] { return site.runtime().uplink()->stats(); });
    EXPECT_GT(stats.acks, 0u);
    EXPECT_EQ(stats.refusals.total(), 0u);
  }
  std::ostringstream out, err;
  ASSERT_EQ(ledger_verify(db, id.cert, out, err), 0) << err.str();
  EXPECT_NE(out.str().find(fmt::format("anchored: the back end holds records up to seq {}", anchored)), std::string::npos) << out.str();

  // The receipt's row edited: verify sees it disagree with the signed record.
  {
    Database rw(db);
    rw.exec("UPDATE transactions SET total_fen = total_fen - 100 WHERE id = '" + txn + "'");
  }
  std::ostringstream out2, err2;
  EXPECT_EQ(ledger_verify(db, id.cert, out2, err2), 1);
  EXPECT_NE(err2.str().find("total_fen"), std::string::npos) << err2.str();
}

/// uplink_site()'s link configuration for sim-link (`backend`), then a second link instance,
/// `lora`: link-lorawan on `module`, CN470 at `data_rate`, with `extra` config keys.
std::string sim_link_and_lora(const pilecore::sim::Rak3172Sim& module, int data_rate, const std::string& extra = "") {
  return fmt::format(R"({{latency_ms: 10}}
  lora:
    plugin: link-lorawan
    config: {{device: "{}", region: CN470, data_rate: {}, dev_eui: "70B3D57ED0061126", app_eui: "70B3D57ED0000001",
             app_key: "2B7E151628AED2A6ABF7158809CF4F3C", rx_linger_ms: 0{}}})",
                     module.device(), data_rate, extra);
}

/// A LoRaWAN module's uplinks, as frames: how many transfers went out whole and in order, the
/// position (in order of first fragment) of each that did not, and how many went out whole after
/// the last that did not.
struct LoraTransfers {
  std::size_t whole = 0, single = 0, whole_after_broken = 0;
  std::vector<std::size_t> broken;
};
LoraTransfers lora_transfers(const std::vector<pilecore::sim::Rak3172Sim::Uplink>& uplinks) {
  LoraTransfers out;
  std::vector<std::pair<std::uint16_t, std::vector<std::uint16_t>>> transfers;  // id, indices as sent
  std::map<std::uint16_t, std::uint16_t> counts;
  for (const auto& up : uplinks) {
    auto decoded = protocol::decode(up.data);
    if (!std::holds_alternative<protocol::FrameView>(decoded)) {
      out.broken.push_back(transfers.size());
      continue;
    }
    const auto& f = std::get<protocol::FrameView>(decoded);
    if ((f.header.flags & protocol::flags::fragment) == 0 || f.payload.size() < 6) {
      ++out.single;
      continue;
    }
    const std::uint16_t id = protocol::get_u16(f.payload.data()), index = protocol::get_u16(f.payload.data() + 2);
    counts[id] = protocol::get_u16(f.payload.data() + 4);
    if (transfers.empty() || transfers.back().first != id) transfers.push_back({id, {}});
    transfers.back().second.push_back(index);
  }
  for (std::size_t i = 0; i < transfers.size(); ++i) {
    std::vector<std::uint16_t> expected(counts[transfers[i].first]);
    std::iota(expected.begin(), expected.end(), std::uint16_t{0});
    if (transfers[i].second == expected) {
      ++out.whole;
      ++out.whole_after_broken;
    } else {
      out.broken.push_back(i);
      out.whole_after_broken = 0;
    }
  }
  return out;
}

TEST(Uplink, ALoraModuleGetsOneFrameAtATimeAndTransfersGoOutWhole) {
  // Status records go over LoRaWAN (links.lorawan), at CN470 DR3 whose 115-byte payload makes
  // them transfers of several uplinks. The module sends one uplink at a time; link-lorawan
  // refuses a second frame as busy meanwhile. After the first such refusal the uplink gives the
  // link one frame at a time, so every later transfer goes out whole and in order; meanwhile it
  // counts as unable to send, so choose_link() gives records to sim-link (the 5G link).
  TempDir dir;
  pilecore::sim::Rak3172Sim module;
  const std::string lora = sim_link_and_lora(module, 3, ", join_retry_min_s: 1");
  // A heartbeat (a status record of several uplinks here) every second, and a charge's status
  // changes: records that find the module free go over it, the others over sim-link.
  test::RunningSite site(dir, uplink_site(lora, ", cellular: backend, lorawan: lora, heartbeat_s: 1"), {PILECORE_PLUGIN_DIR}, 1.0,
                         "2026-03-02T01:50:00Z");
  ASSERT_TRUE(eventually([&] { return module.joined(); }, 20s));
  charge(site);
  // Only transfers sent before the first busy refusal came back may be cut short; after it,
  // every one goes out whole (without the queue, every transfer of several uplinks is cut).
  ASSERT_TRUE(eventually([&] { return lora_transfers(module.uplinks()).whole_after_broken >= 3; }, 30s))
      << "status records went over LoRaWAN as whole transfers: " << module.uplinks().size() << " uplinks, "
      << lora_transfers(module.uplinks()).broken.size() << " transfers cut";
  EXPECT_LE(lora_transfers(module.uplinks()).broken.size(), 3u) << "transfers cut after the uplink knew";
  const auto stats = site.on_strand([&] { return site.runtime().uplink()->stats(); });
  EXPECT_GE(stats.busy, 1u) << "the uplink learnt the module carries one frame at a time from a busy refusal";
}

TEST(Uplink, CompactTelemetryGoesOverLoraWithEachConnectorsStatePowerAndMeter) {
  // links.telemetry_s: every second of clock time, the connectors in the compact layout
  // (protocol.md 3.3), on the telemetry class's link (LoRaWAN here), not through the outbox.
  // Then a capture's records, woken by their own commit.
  TempDir dir;
  pilecore::sim::Rak3172Sim module;
  const std::string lora = sim_link_and_lora(module, 5);
  auto log = test::capture_log("link:sim-link:backend");
  test::RunningSite site(dir, uplink_site(lora, ", cellular: backend, lorawan: lora, heartbeat_s: 0, telemetry_s: 1"), {PILECORE_PLUGIN_DIR}, 1.0,
                         "2026-03-02T01:50:00Z");
  ASSERT_TRUE(eventually([&] { return module.joined(); }, 20s));
  // The latest compact frame's reading of a connector, if any frame was sent.
  auto latest = [&](std::uint8_t connector) -> std::optional<protocol::ConnectorTelemetry> {
    std::optional<protocol::ConnectorTelemetry> found;
    for (const auto& up : module.uplinks()) {
      auto decoded = protocol::decode(up.data);
      if (!std::holds_alternative<protocol::FrameView>(decoded)) continue;
      const auto& f = std::get<protocol::FrameView>(decoded);
      if (f.header.type != protocol::MessageType::telemetry_compact) continue;
      EXPECT_EQ(f.header.device_id, 123456u);
      auto readings = protocol::decode_compact_telemetry(f.payload);
      if (!std::holds_alternative<std::vector<protocol::ConnectorTelemetry>>(readings)) {
        ADD_FAILURE() << "a compact frame that does not decode";
        continue;
      }
      for (const auto& r : std::get<std::vector<protocol::ConnectorTelemetry>>(readings)) {
        if (r.connector == connector) found = r;
      }
    }
    return found;
  };
  ASSERT_TRUE(eventually([&] { return latest(2).has_value(); }, 10s)) << "both connectors in the frame";
  EXPECT_EQ(latest(2)->status, protocol::ConnectorStatus::available);
  ASSERT_TRUE(eventually([&] { return request(site, {{"cmd", "status"}})["connectors"][0]["status"] == "Preparing"; }));
  const auto started = request(site, {{"cmd", "session_start"}, {"connector", 1}, {"token", "card:0451"}});
  ASSERT_TRUE(started.value("ok", false)) << started.dump();
  // Charging: a power and a meter register that moves.
  ASSERT_TRUE(eventually([&] {
    const auto r = latest(1);
    return r && r->status == protocol::ConnectorStatus::charging && r->power_w > 0 && r->meter_wh > 0;
  }, 15s));
  const auto stats = site.on_strand([&] { return site.runtime().uplink()->stats(); });
  EXPECT_GE(stats.telemetry_sent, 2u);
  // Not a record: nothing waits in the outbox for an acknowledgement of it.
  {
    Database ro(dir.path() / "state" / "pilecore.db", Database::ReadOnly{});
    EXPECT_EQ(count(ro.handle(), "SELECT COUNT(*) FROM outbox WHERE class = 3"), 0);
  }
  // No heartbeat, and the first resend 10 minutes away: the capture's records, committed after
  // the stop's last status change, leave because their commit wakes the sender.
  const auto stopped = request(site, {{"cmd", "session_stop"}, {"connector", 1}});
  ASSERT_TRUE(stopped.value("ok", false)) << stopped.dump();
  const std::string txn = stopped.value("transaction", "");
  EXPECT_TRUE(eventually([&] { return arrivals(*log).contains("op:" + txn + "/capture/confirmed"); }, 20s));
}

TEST(Uplink, RecordsWaitOutAnOutageAndARestartAndArriveOnceEach) {
  TempDir dir;
  Identity id(dir);
  const fs::path db = dir.path() / "state" / "pilecore.db";
  std::set<std::string> kept;
  {
    test::RunningSite site(dir, uplink_site("{start_down: true}", ", heartbeat_s: 0"), {PILECORE_PLUGIN_DIR}, 1.0, "2026-03-02T01:50:00Z",
                           id.options());
    charge(site);
  }
  {
    Database ro(db, Database::ReadOnly{});
    Stmt s(ro.handle(), "SELECT key FROM outbox");
    while (s.step()) kept.insert(s.text(0));
  }
  ASSERT_GE(kept.size(), 8u) << "the session's money, ledger and status records, all waiting for the link";
  EXPECT_TRUE(std::any_of(kept.begin(), kept.end(), [](const std::string& k) { return k.rfind("ledger:", 0) == 0; }));

  auto log = test::capture_log("link:sim-link:backend");
  test::RunningSite site(dir, uplink_site("{latency_ms: 10}", ", heartbeat_s: 0"), {PILECORE_PLUGIN_DIR}, 1.0, "2026-03-02T02:10:00Z",
                         id.options());
  ASSERT_TRUE(eventually([&] { return site.runtime().ready(); }));
  ASSERT_TRUE(eventually([&] { return waiting(db) == 0; }, 20s)) << waiting(db) << " records still waiting";
  const auto got = arrivals(*log);
  for (const auto& key : kept) {
    ASSERT_TRUE(got.contains(key)) << key << " was lost";
    EXPECT_EQ(got.at(key), 1) << key << " arrived more than once";
  }
}

// ---------------------------------------------------------------------------------------------
// Anchoring in `pilectl ledger verify`.

class Anchoring : public ::testing::Test {
 protected:
  void SetUp() override {
    generate_identity(KeyAlgorithm::ecdsa_p256, dir_.path() / "k", cert_, "PILE-0001");
    Database db(db_);
    Ledger ledger(db.handle(), SigningKey((dir_.path() / "k").string()), HashAlgorithm::sha256);
    for (int i = 1; i <= 5; ++i) {
      if (i == 4) {
        // The copy an attacker would restore: three records, before two more were acknowledged.
        db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
        fs::copy_file(db_, old_copy_);
      }
      db.exec("BEGIN IMMEDIATE");
      ledger.append("T-" + std::to_string(i), test::sample_ledger_record(i, "T-" + std::to_string(i)));
      db.exec("COMMIT");
    }
    // What the storage thread does with an ack naming seq 5.
    record_anchor(db, 5);
  }
  int verify(std::string& message) {
    std::ostringstream out, err;
    const int rc = ledger_verify(db_, cert_, out, err);
    message = out.str() + err.str();
    return rc;
  }
  void edit(const std::string& sql) {
    Database db(db_);
    db.exec(sql);
  }

  TempDir dir_;
  fs::path db_ = dir_.path() / "p.db";
  fs::path old_copy_ = dir_.path() / "old.db";
  fs::path cert_ = dir_.path() / "c";
};

TEST_F(Anchoring, AnAnchoredLedgerVerifies) {
  std::string m;
  EXPECT_EQ(verify(m), 0) << m;
  EXPECT_NE(m.find("the back end holds records up to seq 5"), std::string::npos) << m;
  const auto a = read_anchor(anchor_path(db_));
  ASSERT_TRUE(a);
  EXPECT_EQ(a->hash_hex.size(), 64u);
}

TEST_F(Anchoring, TheNewestRecordsDeletedAreFound) {
  edit("DELETE FROM ledger WHERE seq >= 4");
  std::string m;
  EXPECT_EQ(verify(m), 1) << m;
  EXPECT_NE(m.find("the ledger ends at seq 3, but the back end acknowledged holding records up to seq 5"), std::string::npos) << m;
}

TEST_F(Anchoring, AnEmptiedLedgerIsFound) {
  edit("DELETE FROM ledger");
  std::string m;
  EXPECT_EQ(verify(m), 1) << m;
  EXPECT_NE(m.find("the ledger ends at seq 0"), std::string::npos) << m;
}

TEST_F(Anchoring, AnOlderCopyOfTheDatabaseIsFound) {
  fs::remove(fs::path(db_.string() + "-wal"));
  fs::remove(fs::path(db_.string() + "-shm"));
  fs::copy_file(old_copy_, db_, fs::copy_options::overwrite_existing);
  std::string m;
  EXPECT_EQ(verify(m), 1) << m;
  EXPECT_NE(m.find("ends at seq 3"), std::string::npos) << m;
}

TEST_F(Anchoring, ALedgerRewrittenFromTheAnchoredSeqIsFound) {
  // Same length, other contents: the chain is intact (signed with the device key), the hash at
  // the anchored seq is not the one the back end holds.
  fs::remove(db_);
  fs::remove(fs::path(db_.string() + "-wal"));
  fs::remove(fs::path(db_.string() + "-shm"));
  {
    Database db(db_);
    Ledger ledger(db.handle(), SigningKey((dir_.path() / "k").string()), HashAlgorithm::sha256);
    for (int i = 1; i <= 5; ++i) {
      db.exec("BEGIN IMMEDIATE");
      ledger.append("X-" + std::to_string(i), test::sample_ledger_record(i, "X-" + std::to_string(i)));
      db.exec("COMMIT");
    }
  }
  std::string m;
  EXPECT_EQ(verify(m), 1) << m;
  EXPECT_NE(m.find("seq 5: its hash is"), std::string::npos) << m;
}

TEST_F(Anchoring, AnEditedAnchorFileIsAFinding) {
  std::ofstream(anchor_path(db_)) << "seq five\n";
  std::string m;
  EXPECT_EQ(verify(m), 1) << m;
  EXPECT_NE(m.find("not a ledger anchor"), std::string::npos) << m;
}

}  // namespace
}  // namespace pilecore::core
