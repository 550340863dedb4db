// hello-payment: the example third-party payment method. It pays from stored-value accounts, as
// an operator's member scheme does: each token starts with an opening balance, a hold is taken at
// authorisation, the bill is debited at capture, and refunds credit it back. Balances and every
// operation's outcome are kept in a file in the instance's state directory.
//
// It shows the payment contract of SDK 2.0:
// - a driver thread (the "acquirer": here it only waits `latency_ms`, where a real plugin would
//   do its network I/O) that hands each result back to the core with host.post();
// - idempotency: an operation id seen before gets its first outcome again, never a second effect;
// - a PIN step-up above `pin_above_fen`;
// - a pending capture (`settle_later`): answered pending the first time, confirmed when asked
//   again with the same id;
// - refunds with their own ids, partial and several per transaction, never above the capture;
// - stop() answering what is still in flight, so nothing waits for an answer that never comes.
#include <pilecore/pilecore.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>

namespace {

using namespace pilecore;

constexpr ConfigKey keys[] = {
    {.key = "opening_balance_fen", .type = ConfigType::integer, .default_value = "10000", .min = 0, .max = 1e10,
     .description = "Balance of an account the first time its token is seen", .unit = "fen"},
    {.key = "pin_above_fen", .type = ConfigType::integer, .default_value = "0", .min = 0, .max = 1e10,
     .description = "Holds above this amount need the account's PIN first (0: never)", .unit = "fen"},
    {.key = "pin", .type = ConfigType::string, .default_value = "0000", .secret = true,
     .description = "The PIN every account shares (an example: a real scheme keeps one per account)"},
    {.key = "settle_later", .type = ConfigType::boolean, .default_value = "false",
     .description = "Answer each capture pending once before confirming it, as an acquirer that settles in batches does"},
    {.key = "latency_ms", .type = ConfigType::integer, .default_value = "50", .min = 0, .max = 60000,
     .description = "Time the acquirer thread takes for each call", .unit = "ms"},
};

/// Results built field by field: GCC 12's -Wextra warns on designated initialisers that leave
/// members out.
payment::AuthorizationResult declined(std::string reason) {
  payment::AuthorizationResult r;
  r.decision = payment::Decision::declined;
  r.reason = std::move(reason);
  return r;
}

payment::AuthorizationResult approved(std::int64_t fen, std::string reference) {
  payment::AuthorizationResult r;
  r.decision = payment::Decision::approved;
  r.authorized_fen = fen;
  r.reference = std::move(reference);
  return r;
}

payment::OperationResult outcome(payment::OperationState state, std::int64_t fen, std::string reference, std::string reason = {}) {
  payment::OperationResult r;
  r.state = state;
  r.amount_fen = fen;
  r.reference = std::move(reference);
  r.reason = std::move(reason);
  return r;
}

/// One line per account ("a <id> <balance>") and per finished operation ("o <id> <state> <fen> <ref>").
struct Book {
  std::map<std::string, std::int64_t> balances;
  std::map<std::string, payment::OperationResult> operations;
  std::map<std::string, std::int64_t> holds;      ///< authorisation operation id -> fen held
  std::map<std::string, std::string> account_of;  ///< transaction -> account
  std::map<std::string, std::int64_t> captured;   ///< transaction -> fen captured
  std::map<std::string, std::int64_t> refunded;   ///< transaction -> fen refunded

  void load(const std::filesystem::path& file) {
    std::ifstream in(file);
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream s(line);
      std::string tag, id;
      s >> tag >> id;
      if (tag == "a") {
        s >> balances[id];
      } else if (tag == "t") {
        s >> account_of[id] >> captured[id] >> refunded[id];
      } else if (tag == "o") {
        int state = 0;
        payment::OperationResult r;
        s >> state >> r.amount_fen >> r.reference;
        r.state = static_cast<payment::OperationState>(state);
        operations[id] = r;
      }
    }
  }

  /// Written whole to a temporary file and renamed over the old one: a crash leaves one or the other.
  void save(const std::filesystem::path& file) const {
    const auto tmp = file.string() + ".tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      for (const auto& [id, fen] : balances) out << "a " << id << ' ' << fen << '\n';
      for (const auto& [txn, account] : account_of) {
        out << "t " << txn << ' ' << account << ' ' << captured.at(txn) << ' ' << refunded.at(txn) << '\n';
      }
      for (const auto& [id, r] : operations) {
        out << "o " << id << ' ' << static_cast<int>(r.state) << ' ' << r.amount_fen << ' ' << (r.reference.empty() ? "-" : r.reference) << '\n';
      }
      out.flush();
      if (!out) throw std::runtime_error("cannot write " + tmp);
    }
    std::filesystem::rename(tmp, file);
  }
};

class HelloPayment final : public payment::Method {
 public:
  explicit HelloPayment(Host& host)
      : host_(host),
        opening_(host.config().integer("opening_balance_fen")),
        pin_above_(host.config().integer("pin_above_fen")),
        pin_(host.config().string("pin")),
        settle_later_(host.config().boolean("settle_later")),
        latency_(std::chrono::milliseconds(host.config().integer("latency_ms"))),
        file_(std::filesystem::path(host.state_dir()) / "accounts") {}

  ~HelloPayment() override { stop(); }

  [[nodiscard]] payment::Capabilities capabilities() const noexcept override {
    payment::Capabilities c;
    try {
      c.token_types = {"card"};
      c.channels = {{.name = "hello-acquirer", .fee_ppm = 3000}};
    } catch (...) {
    }
    return c;
  }

  Status start() noexcept override {
    try {
      book_.load(file_);
      thread_ = std::thread([this] { run(); });
      host_.report_state("up", "stored-value accounts in " + file_.string());
      return Status::success();
    } catch (const std::exception& e) {
      return Status::error(StatusCode::failed, e.what());
    }
  }

  // Joins the acquirer thread. Its posts will not run once the instance has stopped (Host::post),
  // so calls still queued are answered here, as the contract asks: pending for an operation (the
  // core asks again after the restart), declined for an authorisation.
  void stop() noexcept override {
    {
      std::lock_guard lock(mutex_);
      if (stopping_) return;
      stopping_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
    std::deque<Job> left;
    {
      std::lock_guard lock(mutex_);
      left.swap(queue_);
    }
    for (auto& job : left) job.abandon();  // here, on the strand, not on the acquirer thread
  }

  void authorize(const payment::AuthorizationRequest& r, payment::AuthorizationCallback done) noexcept override {
    // Copy what the job needs: the request's views are valid during this call only.
    const std::string op(r.operation_id), txn(r.transaction_id), account = r.token ? r.token->id : std::string();
    const std::int64_t amount = r.amount_fen;
    submit({[this, op, txn, account, amount, done] {
              payment::AuthorizationResult res = hold(op, txn, account, amount);
              host_.post([done, res] { done(res); });
            },
            [done] { done(declined("the payment method stopped")); }});
  }

  void answer_step_up(std::string_view operation_id, const payment::StepUpAnswer& answer, payment::AuthorizationCallback done) noexcept override {
    const std::string op(operation_id), given = answer.value;
    submit({[this, op, given, done] {
              payment::AuthorizationResult res;
              std::lock_guard lock(book_mutex_);
              auto it = challenged_.find(op);
              if (it == challenged_.end()) {
                res = declined("no PIN was asked for this payment");
              } else if (given != pin_) {
                challenged_.erase(it);
                res = declined("wrong PIN");
              } else {
                const Pending p = it->second;
                challenged_.erase(it);
                res = place_hold(op, p.txn, p.account, p.amount);
              }
              host_.post([done, res] { done(res); });
            },
            [done] { done(declined("the payment method stopped")); }});
  }

  void capture(const payment::CaptureRequest& r, payment::OperationCallback done) noexcept override {
    const std::string op(r.operation_id), txn(r.transaction_id);
    const std::int64_t amount = r.amount_fen;
    submit_operation(done, [this, op, txn, amount] { return debit(op, txn, amount); });
  }

  void cancel(const payment::VoidRequest& r, payment::OperationCallback done) noexcept override {
    const std::string op(r.operation_id), txn(r.transaction_id);
    submit_operation(done, [this, op, txn] { return release(op, txn); });
  }

  void refund(const payment::RefundRequest& r, payment::OperationCallback done) noexcept override {
    const std::string op(r.operation_id), txn(r.transaction_id);
    const std::int64_t amount = r.amount_fen;
    submit_operation(done, [this, op, txn, amount] { return credit(op, txn, amount); });
  }

  /// API 2.1. This acquirer's holds are fixed: capabilities() does not declare
  /// incremental_authorization, so the core never asks; answered honestly all the same.
  void increment(const payment::IncrementRequest& r, payment::AuthorizationCallback done) noexcept override {
    (void)r;
    try {
      payment::AuthorizationResult out;
      out.decision = payment::Decision::declined;
      out.reason = "hello-acquirer cannot raise a hold";
      done(std::move(out));
    } catch (...) {
    }
  }

 private:
  struct Job {
    std::function<void()> run;
    std::function<void()> abandon;
  };
  struct Pending {
    std::string txn, account;
    std::int64_t amount = 0;
  };

  void submit(Job job) {
    {
      std::lock_guard lock(mutex_);
      if (!stopping_) {
        queue_.push_back(std::move(job));
        wake_.notify_one();
        return;
      }
    }
    job.abandon();
  }

  void submit_operation(payment::OperationCallback done, std::function<payment::OperationResult()> work) {
    submit({[this, done, work] {
              payment::OperationResult res;
              try {
                res = work();
              } catch (const std::exception& e) {
                // The book could not be saved: nothing is known to have moved. Pending, so the
                // core asks again rather than recording an outcome we cannot stand behind.
                res = outcome(payment::OperationState::pending, 0, "", e.what());
              }
              host_.post([done, res] { done(res); });
            },
            [done] { done(outcome(payment::OperationState::pending, 0, "", "the payment method stopped")); }});
  }

  // The acquirer thread: one call at a time, each after the simulated network latency.
  void run() {
    for (;;) {
      Job job;
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (stopping_) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      {
        std::unique_lock lock(mutex_);
        if (wake_.wait_for(lock, latency_, [this] { return stopping_; })) {
          queue_.push_front(std::move(job));  // stop() answers it
          return;
        }
      }
      job.run();
    }
  }

  payment::AuthorizationResult hold(const std::string& op, const std::string& txn, const std::string& account, std::int64_t amount) {
    if (account.empty()) return declined("no card was presented");
    std::lock_guard lock(book_mutex_);
    if (auto it = book_.holds.find(op); it != book_.holds.end()) {
      return approved(it->second, "H-" + op);
    }
    if (pin_above_ > 0 && amount > pin_above_) {
      challenged_[op] = {txn, account, amount};
      payment::Challenge c;
      c.kind = payment::ChallengeKind::pin;
      c.prompt = "Enter your card PIN";
      c.deadline = host_.clock().now() + std::chrono::seconds(60);
      payment::AuthorizationResult r;
      r.decision = payment::Decision::step_up;
      r.reason = "a PIN is needed above the limit";
      r.challenge = c;
      return r;
    }
    return place_hold(op, txn, account, amount);
  }

  // book_mutex_ held.
  payment::AuthorizationResult place_hold(const std::string& op, const std::string& txn, const std::string& account, std::int64_t amount) {
    const std::int64_t balance = book_.balances.try_emplace(account, opening_).first->second;
    if (balance <= 0) return declined("the account is empty");
    const std::int64_t held = std::min(balance, amount);  // a partial hold: the core stops charging there
    book_.holds[op] = held;
    book_.account_of[txn] = account;
    book_.captured.try_emplace(txn, 0);
    book_.refunded.try_emplace(txn, 0);
    book_.save(file_);
    return approved(held, "H-" + op);
  }

  payment::OperationResult debit(const std::string& op, const std::string& txn, std::int64_t amount) {
    std::lock_guard lock(book_mutex_);
    if (auto it = book_.operations.find(op); it != book_.operations.end()) return it->second;  // asked again: the first outcome
    auto account = book_.account_of.find(txn);
    if (account == book_.account_of.end()) return outcome(payment::OperationState::failed, 0, "", "no authorisation for this transaction");
    if (settle_later_ && settling_.insert(op).second) {
      return outcome(payment::OperationState::pending, 0, "S-" + op, "settles with the next batch");
    }
    book_.balances[account->second] -= amount;
    book_.captured[txn] += amount;
    const payment::OperationResult r = outcome(payment::OperationState::confirmed, amount, "S-" + op);
    book_.operations[op] = r;
    book_.save(file_);
    return r;
  }

  payment::OperationResult release(const std::string& op, const std::string& txn) {
    std::lock_guard lock(book_mutex_);
    if (auto it = book_.operations.find(op); it != book_.operations.end()) return it->second;
    // A hold only reserves: nothing moved, so a release only forgets it. Unknown: confirmed with 0.
    std::erase_if(book_.holds, [&](const auto& h) { return h.first.starts_with(txn + "/"); });
    const payment::OperationResult r = outcome(payment::OperationState::confirmed, 0, "V-" + op);
    book_.operations[op] = r;
    book_.save(file_);
    return r;
  }

  payment::OperationResult credit(const std::string& op, const std::string& txn, std::int64_t amount) {
    std::lock_guard lock(book_mutex_);
    if (auto it = book_.operations.find(op); it != book_.operations.end()) return it->second;
    auto account = book_.account_of.find(txn);
    if (account == book_.account_of.end()) return outcome(payment::OperationState::failed, 0, "", "unknown transaction");
    const std::int64_t left = book_.captured[txn] - book_.refunded[txn];
    payment::OperationResult r;
    if (amount <= 0 || amount > left) {
      r = outcome(payment::OperationState::failed, 0, "", "refund above what is left of the capture (" + std::to_string(left) + " fen)");
    } else {
      book_.balances[account->second] += amount;
      book_.refunded[txn] += amount;
      r = outcome(payment::OperationState::confirmed, amount, "R-" + op);
    }
    book_.operations[op] = r;
    book_.save(file_);
    return r;
  }

  Host& host_;
  const std::int64_t opening_;
  const std::int64_t pin_above_;
  const std::string pin_;
  const bool settle_later_;
  const std::chrono::milliseconds latency_;
  const std::filesystem::path file_;

  std::mutex mutex_;  // the queue
  std::condition_variable wake_;
  std::deque<Job> queue_;
  bool stopping_ = false;
  std::thread thread_;

  std::mutex book_mutex_;  // the accounts (the acquirer thread; start() before it runs)
  Book book_;
  std::map<std::string, Pending> challenged_;
  std::set<std::string> settling_;
};

}  // namespace

PILECORE_PLUGIN(HelloPayment, {.name = "hello-payment", .version = "1.0.0", .vendor = "Example Vendor", .license = "MIT",
                               .description = "Stored-value accounts (example out-of-tree payment method)", .config = keys})
