// An operator's member-card back end over real HTTPS (HttpsProvider): the far side of
// payment-card with `accounts: online`. Accounts with a balance; holds, debits, releases and
// refunds, each idempotent on its operation id (a repeated id gets the first answer, no second
// effect).
//   POST /v1/cards/authorize {operation_id, transaction_id, account_id, amount_fen}
//        -> {decision: approved|declined, authorized_fen, reference, reason}
//   POST /v1/cards/capture   {operation_id, transaction_id, amount_fen} -> {state: confirmed|failed, amount_fen, reference, reason}
//   POST /v1/cards/cancel    {operation_id, transaction_id, authorization_id} -> {state, amount_fen, reference}
//   POST /v1/cards/refund    {operation_id, transaction_id, amount_fen, reason} -> {state, amount_fen, reference, reason}
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "https_provider.hpp"

namespace pilecore::sim {

class CardBackend final : public HttpsProvider {
 public:
  explicit CardBackend(const TestPki& pki) : HttpsProvider(pki) {}
  ~CardBackend() override { stop(); }
  void open_account(const std::string& account_id, std::int64_t balance_fen, bool blocked = false);
  [[nodiscard]] std::int64_t balance_fen(const std::string& account_id) const;
  /// Holds placed and neither captured nor released.
  [[nodiscard]] std::int64_t held_fen() const;
  /// Operations that took effect (repeats excluded).
  [[nodiscard]] std::size_t effects() const;

 protected:
  std::pair<int, nlohmann::json> handle(const std::string& path, const nlohmann::json& body) override;

 private:
  struct Account {
    std::int64_t balance = 0;
    bool blocked = false;
  };
  struct Txn {
    std::string account;
    std::int64_t held = 0;
    std::int64_t captured = 0;
    std::int64_t refunded = 0;
    bool open = true;
    std::string reference;
  };
  std::map<std::string, Account> accounts_;
  std::map<std::string, Txn> txns_;
  std::map<std::string, nlohmann::json> answered_;
  std::size_t effects_ = 0;
  std::uint64_t seq_ = 0;
};

}  // namespace pilecore::sim
