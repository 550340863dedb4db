// The storage thread's contract (core/store/store_worker.hpp), on real SQLite files: order, a
// throwing work failing alone, group commit, a full database, a failed COMMIT, stop.
// The "strand" is a queue drained by the test's own thread, so a done that ran anywhere else,
// or inside submit(), is seen.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "storage.hpp"
#include "store_worker.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace pilecore::core;
using pilecore::test::TempDir;

namespace {

class TestStrand {
 public:
  StoreWorker::Poster poster() {
    return [this](std::function<void()> fn) {
      std::lock_guard lock(m_);
      q_.push_back(std::move(fn));
      cv_.notify_all();
    };
  }
  // Runs posted functions on this thread until `n` have run in total (a generous guard against
  // a hang, not a timing assertion).
  void run_until(std::size_t n) {
    while (ran_ < n) {
      std::function<void()> fn;
      {
        std::unique_lock lock(m_);
        ASSERT_TRUE(cv_.wait_for(lock, std::chrono::seconds(60), [&] { return !q_.empty(); })) << "nothing posted after " << ran_;
        fn = std::move(q_.front());
        q_.pop_front();
      }
      fn();
      ++ran_;
    }
  }
  [[nodiscard]] std::size_t pending() {
    std::lock_guard lock(m_);
    return q_.size();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> q_;
  std::size_t ran_ = 0;
};

// Holds the storage thread inside a work until released, so that what the test submits
// meanwhile is queued behind a running commit, deterministically.
class Gate {
 public:
  void wait_inside() {
    std::unique_lock lock(m_);
    entered_ = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return open_; });
  }
  void until_entered() {
    std::unique_lock lock(m_);
    cv_.wait(lock, [&] { return entered_; });
  }
  void open() {
    std::lock_guard lock(m_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool entered_ = false, open_ = false;
};

std::int64_t count(Database& db, const std::string& sql) {
  sqlite3_stmt* st = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db.handle(), sql.c_str(), -1, &st, nullptr), SQLITE_OK) << sqlite3_errmsg(db.handle());
  std::int64_t n = -1;
  if (sqlite3_step(st) == SQLITE_ROW) n = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return n;
}

void insert(Database& db, int v) { db.exec("INSERT INTO t(v) VALUES(" + std::to_string(v) + ")"); }

class StoreWorkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = std::make_unique<Database>(dir_.path() / "pilecore.db");
    db_->exec("CREATE TABLE t(v INTEGER NOT NULL)");
    worker_ = std::make_unique<StoreWorker>(*db_, strand_.poster());
  }
  void TearDown() override {
    worker_.reset();
    db_.reset();
  }
  // A worker whose deferred works wait `linger` for company (the fixture's has the default).
  void restart_with_linger(std::chrono::milliseconds linger) {
    worker_.reset();
    worker_ = std::make_unique<StoreWorker>(*db_, strand_.poster(), linger);
  }
  std::int64_t rows() {
    std::int64_t n = 0;
    worker_->run_sync([&](Database& db) { n = count(db, "SELECT count(*) FROM t"); });
    return n;
  }

  TempDir dir_;
  TestStrand strand_;
  std::unique_ptr<Database> db_;
  std::unique_ptr<StoreWorker> worker_;
};

}  // namespace

TEST_F(StoreWorkerTest, WorksRunOffTheCallersThreadInOrderAndTheirDonesRunOnTheStrandInOrder) {
  const auto strand_thread = std::this_thread::get_id();
  std::vector<std::thread::id> work_threads;
  std::vector<int> done_order;
  for (int i = 0; i < 100; ++i) {
    worker_->submit(
        [&, i](Database& db) {
          work_threads.push_back(std::this_thread::get_id());
          insert(db, i);
        },
        [&, i](const Status& st) {
          EXPECT_TRUE(st.ok()) << st.message();
          EXPECT_EQ(std::this_thread::get_id(), strand_thread);
          done_order.push_back(i);
        });
  }
  EXPECT_TRUE(done_order.empty());  // never inside submit()
  strand_.run_until(100);
  std::vector<int> expected(100);
  for (int i = 0; i < 100; ++i) expected[static_cast<std::size_t>(i)] = i;
  EXPECT_EQ(done_order, expected);
  for (const auto& id : work_threads) EXPECT_NE(id, strand_thread);
  // The rows were applied in submission order too.
  std::vector<int> stored;
  worker_->run_sync([&](Database& db) {
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(db.handle(), "SELECT v FROM t ORDER BY rowid", -1, &st, nullptr);
    while (sqlite3_step(st) == SQLITE_ROW) stored.push_back(sqlite3_column_int(st, 0));
    sqlite3_finalize(st);
  });
  EXPECT_EQ(stored, expected);
  EXPECT_EQ(worker_->works(), 100u);
}

TEST_F(StoreWorkerTest, WorksQueuedDuringACommitAreWrittenTogetherInTheNextOne) {
  Gate gate;
  worker_->submit([&](Database& db) { insert(db, 0); gate.wait_inside(); }, [](const Status&) {});
  gate.until_entered();
  for (int i = 1; i < 100; ++i) worker_->submit([i](Database& db) { insert(db, i); }, [](const Status& st) { EXPECT_TRUE(st.ok()) << st.message(); });
  gate.open();
  strand_.run_until(100);
  EXPECT_EQ(worker_->works(), 100u);
  EXPECT_EQ(worker_->commits(), 2u);  // the held one, then the 99 queued behind it in one
  EXPECT_EQ(rows(), 100);
}

TEST_F(StoreWorkerTest, AThrowingWorkIsRolledBackAloneAndGetsItsError) {
  Gate gate;
  std::vector<Status> results(4);
  worker_->submit([&](Database& db) { insert(db, 0); gate.wait_inside(); }, [&](const Status& st) { results[0] = st; });
  gate.until_entered();
  worker_->submit([](Database& db) { insert(db, 1); }, [&](const Status& st) { results[1] = st; });
  worker_->submit(
      [](Database& db) {
        insert(db, 2);
        throw std::runtime_error("the meter reading is implausible");
      },
      [&](const Status& st) { results[2] = st; });
  worker_->submit([](Database& db) { insert(db, 3); }, [&](const Status& st) { results[3] = st; });
  gate.open();
  strand_.run_until(4);
  EXPECT_TRUE(results[0].ok());
  EXPECT_TRUE(results[1].ok());
  EXPECT_FALSE(results[2].ok());
  EXPECT_EQ(results[2].message(), "the meter reading is implausible");
  EXPECT_TRUE(results[3].ok());
  worker_->run_sync([&](Database& db) {
    EXPECT_EQ(count(db, "SELECT count(*) FROM t WHERE v = 2"), 0);
    EXPECT_EQ(count(db, "SELECT count(*) FROM t"), 3);
  });
  EXPECT_EQ(worker_->commits(), 2u);
}

TEST_F(StoreWorkerTest, AWorkThatDoesNotFitInAFullDatabaseFailsAloneAndTheOthersCommit) {
  // A real full database: SQLite refuses to grow it past max_page_count (SQLITE_FULL).
  worker_->run_sync([](Database& db) {
    db.exec("CREATE TABLE big(b BLOB)");
    const auto pages = count(db, "PRAGMA page_count");
    db.exec("PRAGMA max_page_count=" + std::to_string(pages + 2));
  });
  Gate gate;
  std::vector<Status> results(3);
  worker_->submit([&](Database& db) { insert(db, 1); gate.wait_inside(); }, [&](const Status& st) { results[0] = st; });
  gate.until_entered();
  worker_->submit([](Database& db) { db.exec("INSERT INTO big VALUES(zeroblob(1000000))"); }, [&](const Status& st) { results[1] = st; });
  worker_->submit([](Database& db) { insert(db, 2); }, [&](const Status& st) { results[2] = st; });
  gate.open();
  strand_.run_until(3);
  EXPECT_TRUE(results[0].ok()) << results[0].message();
  ASSERT_FALSE(results[1].ok());
  EXPECT_NE(results[1].message().find("full"), std::string::npos) << results[1].message();
  EXPECT_TRUE(results[2].ok()) << results[2].message();
  EXPECT_EQ(rows(), 2);
}

TEST_F(StoreWorkerTest, AFailedCommitFailsEveryWorkOfItsGroupAndTheNextGroupStillCommits) {
  // A constraint that SQLite checks only at COMMIT: a deferred foreign key.
  worker_->run_sync([](Database& db) {
    db.exec("CREATE TABLE parent(id INTEGER PRIMARY KEY)");
    db.exec("CREATE TABLE child(p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)");
  });
  Gate gate;
  worker_->submit([&](Database&) { gate.wait_inside(); }, [](const Status&) {});
  gate.until_entered();
  std::vector<Status> results(3);
  worker_->submit([](Database& db) { insert(db, 1); }, [&](const Status& st) { results[0] = st; });
  worker_->submit([](Database& db) { db.exec("INSERT INTO child VALUES(42)"); }, [&](const Status& st) { results[1] = st; });
  worker_->submit([](Database& db) { insert(db, 2); }, [&](const Status& st) { results[2] = st; });
  gate.open();
  strand_.run_until(4);
  for (const auto& r : results) {
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.message().find("the commit failed: FOREIGN KEY constraint failed"), std::string::npos) << r.message();
  }
  EXPECT_EQ(rows(), 0);
  Status later = Status::error(StatusCode::failed, "not run");
  worker_->submit([](Database& db) { insert(db, 3); }, [&](const Status& st) { later = st; });
  strand_.run_until(5);
  EXPECT_TRUE(later.ok()) << later.message();
  EXPECT_EQ(rows(), 1);
}

TEST_F(StoreWorkerTest, StopWritesEverySubmittedWorkBeforeJoining) {
  int ok = 0;
  for (int i = 0; i < 200; ++i) worker_->submit([i](Database& db) { insert(db, i); }, [&](const Status& st) { ok += st.ok() ? 1 : 0; });
  worker_->stop();
  EXPECT_EQ(strand_.pending(), 200u);  // every done posted by the time stop() returns
  strand_.run_until(200);
  EXPECT_EQ(ok, 200);
  EXPECT_EQ(count(*db_, "SELECT count(*) FROM t"), 200);  // the thread is gone: read here
}

TEST_F(StoreWorkerTest, SubmitAfterStopFailsThroughTheStrand) {
  worker_->stop();
  bool ran = false;
  Status result;
  worker_->submit([&](Database&) { ran = true; }, [&](const Status& st) { result = st; });
  EXPECT_EQ(strand_.pending(), 1u);
  strand_.run_until(1);
  EXPECT_FALSE(ran);
  EXPECT_EQ(result.code(), StatusCode::unavailable);
  EXPECT_EQ(result.message(), "the storage thread has stopped");
}

TEST_F(StoreWorkerTest, RunSyncRunsAfterTheWorksSubmittedBeforeItAndPassesItsException) {
  for (int i = 0; i < 10; ++i) worker_->submit([i](Database& db) { insert(db, i); }, [](const Status&) {});
  EXPECT_EQ(rows(), 10);
  EXPECT_THROW(worker_->run_sync([](Database& db) { db.exec("SELECT * FROM no_such_table"); }), std::runtime_error);
  strand_.run_until(10);
}

TEST_F(StoreWorkerTest, AReaderConnectionReadsCommittedRowsWhileTheWriterIsInATransaction) {
  worker_->submit([](Database& db) { insert(db, 1); }, [](const Status&) {});
  strand_.run_until(1);
  Database reader(dir_.path() / "pilecore.db", Database::ReadOnly{});
  Gate gate;
  worker_->submit([&](Database& db) { insert(db, 2); gate.wait_inside(); }, [](const Status&) {});
  gate.until_entered();
  EXPECT_EQ(count(reader, "SELECT count(*) FROM t"), 1);  // not the uncommitted row, and no wait
  EXPECT_THROW(reader.exec("INSERT INTO t VALUES(9)"), std::runtime_error);
  gate.open();
  strand_.run_until(2);
  EXPECT_EQ(count(reader, "SELECT count(*) FROM t"), 2);
}

// The ledger's signatures: nobody waits on them, so they must not cost an fsync each.
TEST_F(StoreWorkerTest, ADeferredWorkRidesInTheCommitOfTheNextSubmittedWork) {
  restart_with_linger(std::chrono::hours(1));
  std::vector<std::string> done_order;
  worker_->submit_deferred([](Database& db) { insert(db, 1); }, [&](const Status& st) { done_order.push_back(st.ok() ? "deferred" : st.message()); });
  Gate gate;
  std::int64_t seen_inside = -1;
  worker_->submit(
      [&](Database& db) {
        seen_inside = count(db, "SELECT count(*) FROM t");
        insert(db, 2);
        gate.wait_inside();
      },
      [&](const Status& st) { done_order.push_back(st.ok() ? "submitted" : st.message()); });
  gate.until_entered();
  EXPECT_EQ(worker_->commits(), 0u);  // the deferred work was not committed on its own
  EXPECT_EQ(seen_inside, 1);          // it is in the same transaction, before the later work
  gate.open();
  strand_.run_until(2);
  EXPECT_EQ(done_order, (std::vector<std::string>{"deferred", "submitted"}));
  EXPECT_EQ(worker_->commits(), 1u);
  EXPECT_EQ(worker_->works(), 2u);
  EXPECT_EQ(worker_->deferred_only_commits(), 0u);
}

TEST_F(StoreWorkerTest, ADeferredWorkWithNoCompanyIsCommittedAloneWhenTheLingerRunsOut) {
  restart_with_linger(std::chrono::milliseconds(1));
  Status result = Status::error(StatusCode::failed, "not run");
  worker_->submit_deferred([](Database& db) { insert(db, 1); }, [&](const Status& st) { result = st; });
  strand_.run_until(1);  // no other work ever comes: the linger alone gets it written
  EXPECT_TRUE(result.ok()) << result.message();
  EXPECT_EQ(worker_->commits(), 1u);
  EXPECT_EQ(worker_->deferred_only_commits(), 1u);
  EXPECT_EQ(rows(), 1);
}

TEST_F(StoreWorkerTest, RunSyncAndStopWriteTheDeferredWorksHeldBeforeThem) {
  restart_with_linger(std::chrono::hours(1));
  int ok = 0;
  worker_->submit_deferred([](Database& db) { insert(db, 1); }, [&](const Status& st) { ok += st.ok() ? 1 : 0; });
  EXPECT_EQ(rows(), 1);  // run_sync sees it
  worker_->submit_deferred([](Database& db) { insert(db, 2); }, [&](const Status& st) { ok += st.ok() ? 1 : 0; });
  worker_->stop();
  strand_.run_until(2);
  EXPECT_EQ(ok, 2);
  EXPECT_EQ(count(*db_, "SELECT count(*) FROM t"), 2);
}

TEST_F(StoreWorkerTest, AFailingDeferredWorkFailsAloneInTheCommitItRidesIn) {
  restart_with_linger(std::chrono::hours(1));
  std::vector<Status> results(2);
  worker_->submit_deferred([](Database& db) { db.exec("UPDATE no_such_table SET x = 1"); }, [&](const Status& st) { results[0] = st; });
  worker_->submit([](Database& db) { insert(db, 2); }, [&](const Status& st) { results[1] = st; });
  strand_.run_until(2);
  EXPECT_FALSE(results[0].ok());
  EXPECT_NE(results[0].message().find("no_such_table"), std::string::npos) << results[0].message();
  EXPECT_TRUE(results[1].ok()) << results[1].message();
  EXPECT_EQ(rows(), 1);
}

TEST(StoreReader, RefusesADatabaseThatDoesNotExist) {
  TempDir dir;
  EXPECT_THROW(Database(dir.path() / "missing.db", Database::ReadOnly{}), std::runtime_error);
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "missing.db"));
}
