// risk-behavior: a per-user model of amount, time of day, interval since the last session and
// connector (behavior_model.hpp); a payment outside the model's interval (95% by default) of a
// user with at least min_history sessions gets step_up. Why this model and not the LSTM the seed
// names: docs/risk.md.
//
// The models live in <state dir>/behavior.db (SQLite, one row a user, keyed by the salted user
// hash the core hands over: no token is stored). A model learns a session once it is closed and
// captured: at the user's next authorisation it folds in, from the core's history, every session
// closed since the last one it learnt, and persists itself. A crash between the capture and that
// moment loses nothing (the history is the source), and a model is never fed a session twice
// (it keeps the start time of the last one it learnt).
//
// At the authorisation it judges the time of day, the interval and the connector (the amount
// is then only the site's pre-authorisation, the same for everyone); at the capture the final
// amount.
#include <pilecore/pilecore.hpp>
#include <sqlite3.h>

#include <exception>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>

#include "behavior_model.hpp"

namespace {

using namespace pilecore;

constexpr ConfigKey keys[] = {
    {.key = "min_history", .type = ConfigType::integer, .default_value = "10", .min = 3, .max = 1000,
     .description = "Sessions a user must have before the model judges them (a newcomer is allowed)", .unit = "sessions"},
    {.key = "coverage_percent", .type = ConfigType::number, .default_value = "95", .min = 50, .max = 99.99,
     .description = "The model's interval: a payment outside the region holding this share of the user's usual sessions gets step_up",
     .unit = "%"},
};

std::int64_t ms(TimePoint t) { return t.time_since_epoch().count(); }

class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st_, nullptr) != SQLITE_OK) fail();
  }
  ~Stmt() { sqlite3_finalize(st_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  sqlite3_stmt* get() { return st_; }
  [[noreturn]] void fail() const { throw std::runtime_error(sqlite3_errmsg(db_)); }
  struct Reset {
    sqlite3_stmt* st;
    ~Reset() {
      sqlite3_reset(st);
      sqlite3_clear_bindings(st);
    }
  };

 private:
  sqlite3* db_;
  sqlite3_stmt* st_ = nullptr;
};

class Behavior final : public risk::Rule {
 public:
  explicit Behavior(Host& host)
      : host_(host),
        min_history_(host.config().integer("min_history")),
        coverage_(host.config().number("coverage_percent") / 100.0),
        file_(std::filesystem::path(std::string(host.state_dir())) / "behavior.db") {}
  ~Behavior() override { close(); }
  Behavior(const Behavior&) = delete;
  Behavior& operator=(const Behavior&) = delete;

  Status start() noexcept override {
    try {
      open();
      host_.report_state("up", fmt::format("judges users with {}+ sessions at {}% coverage; models in {}", min_history_, coverage_ * 100, file_.string()));
      return Status::success();
    } catch (const std::exception& e) {
      close();
      return Status::error(StatusCode::failed, fmt::format("{}: {}", file_.string(), e.what()));
    }
  }
  void stop() noexcept override { close(); }

  void evaluate(const risk::Context& c, const risk::History& history, TimePoint, risk::Callback done) noexcept override {
    risk::Result r;
    try {
      r = judge(c, history);
    } catch (const std::exception& e) {
      host_.log().error("{}", e.what());
      r = {risk::Verdict::step_up, fmt::format("risk-behavior failed: {}", e.what())};
    }
    try {
      done(std::move(r));
    } catch (...) {
    }
  }

 private:
  void open() {
    if (sqlite3_open_v2(file_.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK) {
      throw std::runtime_error(db_ ? sqlite3_errmsg(db_) : "out of memory");
    }
    // A model is a cache of the history (rebuilt from it if lost), not money: WAL without a
    // sync per commit keeps the strand's write to a few microseconds.
    for (const char* sql : {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL",
                            "CREATE TABLE IF NOT EXISTS models(user TEXT PRIMARY KEY, model BLOB NOT NULL) WITHOUT ROWID"}) {
      if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) throw std::runtime_error(sqlite3_errmsg(db_));
    }
    load_ = std::make_unique<Stmt>(db_, "SELECT model FROM models WHERE user=?");
    save_ = std::make_unique<Stmt>(db_, "INSERT OR REPLACE INTO models(user, model) VALUES(?,?)");
  }
  void close() noexcept {
    load_.reset();
    save_.reset();
    if (db_) sqlite3_close(db_);
    db_ = nullptr;
  }

  behavior::UserModel load(std::string_view user) {
    Stmt::Reset reset{load_->get()};
    sqlite3_bind_text(load_->get(), 1, user.data(), static_cast<int>(user.size()), SQLITE_STATIC);
    const int rc = sqlite3_step(load_->get());
    if (rc == SQLITE_DONE) return {};
    if (rc != SQLITE_ROW) load_->fail();
    const auto* p = static_cast<const char*>(sqlite3_column_blob(load_->get(), 0));
    try {
      return behavior::UserModel::decode({p, static_cast<std::size_t>(sqlite3_column_bytes(load_->get(), 0))});
    } catch (const std::invalid_argument& e) {
      // Learnt again from the history below: a damaged model must not stop the rule.
      host_.log().warn("a damaged behaviour model is learnt again from the history: {}", e.what());
      return {};
    }
  }
  void save(std::string_view user, const behavior::UserModel& m) {
    const std::string blob = m.encode();
    Stmt::Reset reset{save_->get()};
    sqlite3_bind_text(save_->get(), 1, user.data(), static_cast<int>(user.size()), SQLITE_STATIC);
    sqlite3_bind_blob(save_->get(), 2, blob.data(), static_cast<int>(blob.size()), SQLITE_STATIC);
    if (sqlite3_step(save_->get()) != SQLITE_DONE) save_->fail();
  }

  [[nodiscard]] risk::Result judge(const risk::Context& c, const risk::History& history) {
    if (!db_) return {risk::Verdict::step_up, "risk-behavior is not running"};
    behavior::UserModel m = load(c.user);
    if (c.phase == risk::Phase::authorize) {
      // Learn what was captured since the model last learnt (oldest first, in pages).
      bool learnt = false;
      for (;;) {
        std::size_t got = 0;
        const bool ok = history.sessions_after(c.user, TimePoint(Duration(m.last_start_ms())), kPage, [&](const risk::PastSession& s) {
          ++got;
          m.add({.started_ms = ms(s.started), .utc_offset_s = s.utc_offset_s, .amount_fen = s.amount_fen, .connector = s.connector});
        });
        if (!ok) return {risk::Verdict::step_up, "the session history cannot be read"};
        learnt = learnt || got > 0;
        if (got < kPage) break;
      }
      if (learnt) save(c.user, m);
    }
    if (m.sessions() < min_history_) return {};
    behavior::Query q{.time_ms = ms(c.time), .utc_offset_s = c.utc_offset_s, .connector = std::nullopt, .amount_fen = std::nullopt, .judge_time = false};
    if (c.phase == risk::Phase::authorize) {
      q.judge_time = true;
      q.connector = c.connector;
    } else {
      q.amount_fen = c.amount_fen;
    }
    const auto j = behavior::judge(m, q, coverage_);
    if (!j.outside) return {};
    return {risk::Verdict::step_up, fmt::format("outside the user's usual behaviour ({:.0f}% interval over {} sessions): score {:.1f} above {:.1f} ({})",
                                                coverage_ * 100, m.sessions(), j.score, j.threshold, j.detail)};
  }

  static constexpr std::size_t kPage = 256;
  Host& host_;
  std::int64_t min_history_;
  double coverage_;
  std::filesystem::path file_;
  sqlite3* db_ = nullptr;
  std::unique_ptr<Stmt> load_, save_;
};

}  // namespace

PILECORE_PLUGIN(Behavior, {.name = "risk-behavior", .version = "0.1.0", .vendor = "pilecore", .license = "Apache-2.0",
                           .description = "Risk rule: a per-user model of amount, time of day, interval and connector; step_up outside its 95% interval",
                           .config = keys})
