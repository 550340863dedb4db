#include "card_backend.hpp"

namespace pilecore::sim {

void CardBackend::open_account(const std::string& account_id, std::int64_t balance_fen, bool blocked) {
  std::lock_guard lock(mutex_);
  accounts_[account_id] = Account{balance_fen, blocked};
}

std::int64_t CardBackend::balance_fen(const std::string& account_id) const {
  std::lock_guard lock(mutex_);
  auto it = accounts_.find(account_id);
  return it == accounts_.end() ? 0 : it->second.balance;
}

std::int64_t CardBackend::held_fen() const {
  std::lock_guard lock(mutex_);
  std::int64_t sum = 0;
  for (const auto& [id, t] : txns_) {
    if (t.open) sum += t.held;
  }
  return sum;
}

std::size_t CardBackend::effects() const {
  std::lock_guard lock(mutex_);
  return effects_;
}

std::pair<int, nlohmann::json> CardBackend::handle(const std::string& path, const nlohmann::json& in) {
  std::lock_guard lock(mutex_);
  const std::string op = in.at("operation_id").get<std::string>();
  if (auto it = answered_.find(op); it != answered_.end()) return {200, it->second};
  const std::string txn = in.at("transaction_id").get<std::string>();
  nlohmann::json out;
  auto result = [&](const char* state, std::int64_t fen, const std::string& ref, const std::string& reason) {
    out = {{"state", state}, {"amount_fen", fen}, {"reference", ref}, {"reason", reason}};
  };
  auto available = [&](const std::string& account) {
    std::int64_t held = 0;
    for (const auto& [id, t] : txns_) {
      if (t.open && t.account == account) held += t.held;
    }
    return accounts_[account].balance - held;
  };
  if (path == "/v1/cards/authorize") {
    const std::string account = in.at("account_id").get<std::string>();
    const std::int64_t amount = in.at("amount_fen").get<std::int64_t>();
    auto a = accounts_.find(account);
    if (a == accounts_.end()) {
      out = {{"decision", "declined"}, {"reason", "unknown card"}};
    } else if (a->second.blocked) {
      out = {{"decision", "declined"}, {"reason", "this card is blocked"}};
    } else if (txns_.count(txn) != 0) {
      out = {{"decision", "declined"}, {"reason", "transaction id already used"}};
    } else if (const std::int64_t free = available(account); free <= 0) {
      out = {{"decision", "declined"}, {"reason", "insufficient balance"}};
    } else {
      Txn t;
      t.account = account;
      t.held = std::min(amount, free);
      t.reference = "CB" + std::to_string(++seq_);
      txns_[txn] = t;
      ++effects_;
      out = {{"decision", "approved"}, {"authorized_fen", t.held}, {"reference", t.reference}};
    }
  } else {
    auto it = txns_.find(txn);
    if (path == "/v1/cards/capture") {
      const std::int64_t amount = in.at("amount_fen").get<std::int64_t>();
      if (it == txns_.end()) {
        result("failed", 0, "", "unknown transaction");
      } else if (!it->second.open) {
        result("failed", 0, it->second.reference, "the hold is closed");
      } else if (amount < 0 || amount > it->second.held) {
        result("failed", 0, it->second.reference, "above the authorised amount");
      } else {
        it->second.captured = amount;
        it->second.open = false;
        accounts_[it->second.account].balance -= amount;
        ++effects_;
        result("confirmed", amount, it->second.reference, "");
      }
    } else if (path == "/v1/cards/cancel") {
      if (it == txns_.end() || !it->second.open) {
        result("confirmed", 0, it == txns_.end() ? "" : it->second.reference, "");
      } else {
        it->second.open = false;
        ++effects_;
        result("confirmed", 0, it->second.reference, "");
      }
    } else if (path == "/v1/cards/refund") {
      const std::int64_t amount = in.at("amount_fen").get<std::int64_t>();
      if (it == txns_.end() || it->second.captured == 0) {
        result("failed", 0, "", "nothing was captured");
      } else if (amount <= 0 || it->second.refunded + amount > it->second.captured) {
        result("failed", 0, it->second.reference, "above what is left to refund");
      } else {
        it->second.refunded += amount;
        accounts_[it->second.account].balance += amount;
        ++effects_;
        result("confirmed", amount, it->second.reference, "");
      }
    } else {
      return {404, {{"error", "no such endpoint: " + path}}};
    }
  }
  answered_[op] = out;
  return {200, out};
}

}  // namespace pilecore::sim
