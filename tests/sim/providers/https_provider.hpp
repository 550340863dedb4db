// Simulated payment providers over real HTTPS: a Boost.Beast server on 127.0.0.1 (a free port),
// presenting a certificate the test made (test_pki.hpp), on an io_context thread of its own.
// Each provider is another machine as far as the plugin is concerned: its state outlives a
// restart of the plugin, and it honours idempotency on the operation id as a real acquirer does.
//
// Behaviour for failure tests: latency before each answer, an outage (connections accepted and
// dropped with no answer), and HTTP errors for the next n requests. Every request that arrives is
// counted, so a test can prove that no network call was made.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <utility>

#include "test_pki.hpp"

namespace pilecore::sim {

class HttpsProvider {
 public:
  explicit HttpsProvider(const TestPki& pki);
  virtual ~HttpsProvider();
  HttpsProvider(const HttpsProvider&) = delete;
  HttpsProvider& operator=(const HttpsProvider&) = delete;

  [[nodiscard]] std::string url() const;  ///< "https://127.0.0.1:<port>"
  [[nodiscard]] int port() const { return port_; }
  /// Requests received (complete HTTP requests, also those dropped by an outage).
  [[nodiscard]] std::size_t requests() const { return requests_.load(); }
  /// Requests received for `path`.
  [[nodiscard]] std::size_t requests(const std::string& path) const;

  void set_latency(std::chrono::milliseconds latency) { latency_ms_.store(latency.count()); }
  /// While on, requests are read and then dropped with no answer (a provider that is down).
  void set_outage(bool on) { outage_.store(on); }
  /// The next `n` requests are answered with HTTP `status` and no effect.
  void fail_next(int n, int status = 503) {
    fail_status_.store(status);
    fail_next_.store(n);
  }
  /// Stops the server (also done by the destructor of each provider).
  void stop();

 protected:
  /// Answers one request: HTTP status and JSON body. Called on the server's thread.
  virtual std::pair<int, nlohmann::json> handle(const std::string& path, const nlohmann::json& body) = 0;
  mutable std::mutex mutex_;  ///< guards the providers' state (the server thread and the test)

 private:
  struct Impl;
  friend struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
  std::atomic<std::size_t> requests_{0};
  std::map<std::string, std::size_t> per_path_;  // under mutex_
  std::atomic<long long> latency_ms_{0};
  std::atomic<bool> outage_{false};
  std::atomic<int> fail_next_{0};
  std::atomic<int> fail_status_{503};
};

/// A face-pay provider: identifies the payer from a face token and holds, captures, releases and
/// refunds money, idempotent on the operation id (a repeated id gets the first answer, no second
/// effect).
///   POST /v1/face/authorize {operation_id, transaction_id, face_token, amount_fen, liveness}
///        -> {decision: approved|declined, authorized_fen, reference, reason}
///   POST /v1/face/capture   {operation_id, transaction_id, amount_fen} -> {state: confirmed|failed, amount_fen, reference, reason}
///   POST /v1/face/cancel    {operation_id, transaction_id}             -> {state, amount_fen, reference}
///   POST /v1/face/refund    {operation_id, transaction_id, amount_fen} -> {state, amount_fen, reference, reason}
class FacePayProvider final : public HttpsProvider {
 public:
  explicit FacePayProvider(const TestPki& pki) : HttpsProvider(pki) {}
  ~FacePayProvider() override { stop(); }
  /// A face the provider knows, with the most it approves in one authorisation.
  void enrol(const std::string& face_token, std::int64_t limit_fen);
  /// Money that moved, per transaction (captured less refunded).
  [[nodiscard]] std::int64_t captured_fen(const std::string& transaction_id) const;
  /// Holds placed and not released or captured.
  [[nodiscard]] std::int64_t held_fen() const;
  /// How many operations took effect (repeats excluded).
  [[nodiscard]] std::size_t effects() const;

 protected:
  std::pair<int, nlohmann::json> handle(const std::string& path, const nlohmann::json& body) override;

 private:
  struct Txn {
    std::int64_t authorized = 0;
    std::int64_t captured = 0;
    std::int64_t refunded = 0;
    bool released = false;
    std::string reference;
  };
  std::map<std::string, std::int64_t> faces_;
  std::map<std::string, Txn> txns_;
  std::map<std::string, nlohmann::json> answered_;  // operation id -> first answer
  std::size_t effects_ = 0;
  std::uint64_t seq_ = 0;
};

/// A credit provider ("charge now, pay later"): scores users and debits the agreement they signed.
///   POST /v1/credit/score  {user_id}                                      -> {score, agreement_id} | 404 {error}
///   POST /v1/credit/debit  {operation_id, agreement_id, amount_fen}       -> {state: confirmed|declined, amount_fen, reference, reason}
///   POST /v1/credit/refund {operation_id, debit_operation_id, amount_fen} -> {state: confirmed|failed, amount_fen, reference, reason}
/// Debits are idempotent on the operation id once confirmed; a declined debit may be tried again.
class CreditProvider final : public HttpsProvider {
 public:
  explicit CreditProvider(const TestPki& pki) : HttpsProvider(pki) {}
  ~CreditProvider() override { stop(); }
  void set_score(const std::string& user_id, int score);
  /// The next `n` debits are declined ("insufficient funds").
  void decline_debits(int n);
  /// Total debited from the agreement of `user_id` (refunds deducted).
  [[nodiscard]] std::int64_t debited_fen(const std::string& user_id) const;
  /// Debits that took effect (repeats excluded), and debit requests of any outcome.
  [[nodiscard]] std::size_t debits() const;
  [[nodiscard]] std::size_t debit_attempts() const;

 protected:
  std::pair<int, nlohmann::json> handle(const std::string& path, const nlohmann::json& body) override;

 private:
  std::map<std::string, int> scores_;
  std::map<std::string, std::string> agreements_;        // user -> agreement id
  std::map<std::string, std::int64_t> debited_;           // agreement -> fen
  std::map<std::string, nlohmann::json> answered_;        // operation id -> confirmed answer
  std::map<std::string, std::pair<std::string, std::int64_t>> debit_of_op_;  // debit op -> agreement, fen
  std::map<std::string, std::int64_t> refunded_of_debit_;
  int decline_ = 0;
  std::size_t debits_ = 0;
  std::size_t attempts_ = 0;
  std::uint64_t seq_ = 0;
};

}  // namespace pilecore::sim
