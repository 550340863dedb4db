// The payment saga: the money side of a transaction, from authorisation (with step-up) to
// capture, void and refunds, as durable money operations (money_operations.hpp).
//
// Rules it keeps:
//  - An operation's intent is on disk before the plugin is called; its outcome is written after.
//  - The saga owns every deadline. A plugin that never answers cannot hold a connector: at the
//    deadline an authorisation counts as timed out (and is released with a void, since the
//    acquirer may still approve it), and a capture, void or refund stays pending and is asked
//    again with the same operation id, with backoff, until it is confirmed or failed. Answers
//    after the deadline are ignored.
//  - A capture that is unavailable or timed out is pending, never "0 captured".
//  - resume() (at start-up) carries on every operation that has no outcome: an authorisation cut
//    off by a crash is released, a capture, void or refund is asked again.
//  - With a router (set_router), a method with channels is authorised on the channel the router
//    chose; a channel that answers unavailable, or does not answer within the rule's
//    channel_timeout, fails over to the next channel of the decision while the method's deadline
//    lasts (an authorisation of its own, "<txn>/authorize/<n>"; the silent one is released with
//    "<txn>/void/<n>"). A decline is the payer's answer and never fails over. Every attempt's
//    outcome goes back to the router, which persists it.
// Everything runs on the core's strand; writes go through the StoreWorker.
#pragma once

#include <sqlite3.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "money_operations.hpp"
#include "router.hpp"
#include "pilecore/payment.hpp"
#include "scheduler.hpp"
#include "store_worker.hpp"

namespace pilecore::core {

class PaymentSaga {
 public:
  struct Settings {
    Duration authorize_timeout{30000};  ///< from the call to the plugin's answer (and per step-up answer)
    Duration operation_timeout{30000};  ///< capture, void, refund: per attempt
    Duration retry_first{5000};         ///< the first retry of a pending operation; doubles after
    Duration retry_max{600000};
  };
  struct Hooks {
    /// The running payment instance of that name, or nullptr.
    std::function<payment::Method*(std::string_view)> method;
    /// Inside the work that records a final outcome (confirmed or failed): chain and sign it, and
    /// update what depends on it (the transaction's captured amount). May be empty.
    std::function<void(Database&, const MoneyOperation&)> recorded;
    /// On the strand, once a final outcome is durable (events, receipts). May be empty.
    std::function<void(const MoneyOperation&)> settled;
  };

  struct Authorization {
    payment::Decision decision = payment::Decision::declined;
    std::int64_t authorized_fen = 0;
    std::string reference;
    std::string reason;
    bool timed_out = false;  ///< no answer by the deadline (the hold, if any, is being released)
  };
  using AuthorizationDone = std::function<void(Authorization)>;
  using ChallengeSink = std::function<void(const payment::Challenge&)>;
  using OperationDone = std::function<void(const MoneyOperation&)>;

  PaymentSaga(StoreWorker& store, sqlite3* reader, const Clock& clock, Scheduler& scheduler, Settings settings, Hooks hooks);
  ~PaymentSaga();
  PaymentSaga(const PaymentSaga&) = delete;
  PaymentSaga& operator=(const PaymentSaga&) = delete;

  /// Routes the authorisations of methods with channels through `router` (nullptr: none). The
  /// router outlives the saga.
  void set_router(Router* router) noexcept { router_ = router; }

  /// Authorises `amount_fen` for transaction `txn`. A step-up calls `challenged` (the core shows
  /// the prompt and relays the answer through answer_step_up); `done` is called once, with the
  /// final decision, a decline, or a timeout.
  /// `pin`: the PIN the driver entered because risk control asked a second factor (the method
  /// must verify PINs: API 2.3, capabilities().verifies_pin; the caller checks). The method is
  /// asked with pin_required; its `pin` challenge is answered with this PIN without the driver,
  /// and an approval that skipped the challenge is refused and released.
  void authorize(const std::string& txn, std::uint32_t connector, const std::string& method, const identification::Token& token,
                 std::int64_t amount_fen, ChallengeSink challenged, AuthorizationDone done, std::optional<std::string> pin = std::nullopt);
  /// Relays the driver's answer to the step-up waiting on `txn`. An error when none waits.
  Status answer_step_up(const std::string& txn, const payment::StepUpAnswer& answer);
  /// Whether a step-up waits on `txn`.
  [[nodiscard]] bool awaiting_step_up(const std::string& txn) const;

  /// The capture of a transaction, for the caller to write (operations::insert_intent) in the same
  /// work as the bill it captures; then execute() it once that work is durable.
  [[nodiscard]] MoneyOperation capture_intent(const std::string& txn, const std::string& method, std::int64_t amount_fen) const;
  /// Calls the plugin for a capture, void, refund or debit whose intent is on disk. `first` (may be
  /// empty) gets the first answer: confirmed, failed, or pending (retried in the background).
  void execute(MoneyOperation op, OperationDone first);
  /// Releases the authorisation of a transaction that will not be captured.
  void release(const std::string& txn, const std::string& method);
  /// Refunds part or all of a captured transaction, under a refund id of its own.
  void refund(const std::string& txn, const std::string& method, std::int64_t amount_fen, const std::string& reason, OperationDone done);

  /// Raises the approved hold of `txn` by `amount_fen` (a top-up: an operation
  /// "<txn>/increment/<n>", its intent on disk before the plugin is asked). Only for a method
  /// whose plugin can (API 2.1 and capabilities().incremental_authorization): the caller checks.
  /// `first` gets the first answer: confirmed (amount_fen is what was added), failed (declined,
  /// unavailable), or pending (no answer in time: asked again in the background, never counted
  /// as granted until confirmed).
  void increment(const std::string& txn, const std::string& method, std::int64_t amount_fen, OperationDone first);

  /// At start-up, before sessions start: resumes every operation without an outcome and releases
  /// holds a crash left. Reads through the reader connection.
  void resume();

  /// Calls `done` once no capture, void or refund waits for the plugin's answer (those waiting
  /// for a retry do not count): a clean stop lets answers in flight land before the payment
  /// plugins stop. The caller bounds the wait.
  void drain(std::function<void()> done);

 private:
  struct Flight;
  void ask_authorize(const std::shared_ptr<Flight>& f);
  /// The channel of the current attempt failed (`why`); tries the next one. `release`: the
  /// channel may hold something (it did not answer), so this attempt is released.
  void fail_over(const std::shared_ptr<Flight>& f, const std::string& why, bool release);
  [[nodiscard]] bool can_fail_over(const Flight& f) const;
  void route_outcome(const Flight& f, bool ok);
  void on_authorization(const std::shared_ptr<Flight>& f, payment::AuthorizationResult r);
  void finish_authorization(const std::shared_ptr<Flight>& f, Authorization a, OperationStateRow state, bool release = false);
  void attempt(const std::string& op_id);
  void on_result(const std::string& op_id, std::uint64_t attempt_no, payment::OperationResult r);
  void record(MoneyOperation op, std::function<void(Status)> after);
  /// Writes the intent of a release (with, in the same commit, the end of the authorisation it
  /// releases, when given) and executes it.
  /// `authorization` is the authorisation released (its id names the void: "/authorize" ->
  /// "/void"); `write_outcome`: its outcome is written in the same commit.
  void start_void(const MoneyOperation& authorization, const std::string& why, bool write_outcome);
  /// The authorisation a release of `txn` releases: the approved one when known.
  [[nodiscard]] MoneyOperation authorization_of(const std::string& txn, const std::string& method) const;
  [[nodiscard]] Duration backoff(int attempts) const;

  StoreWorker& store_;
  sqlite3* reader_;
  const Clock& clock_;
  Scheduler& scheduler_;
  Settings settings_;
  Hooks hooks_;
  void check_drained();
  std::map<std::string, std::shared_ptr<Flight>> flights_;  ///< by operation id ("<txn>/authorize" for every attempt of one)
  std::map<std::string, MoneyOperation> approved_;            ///< by transaction: its approved authorisation, until released or captured
  Router* router_ = nullptr;
  std::vector<std::function<void()>> drained_;
  std::shared_ptr<bool> alive_;
};

}  // namespace pilecore::core
