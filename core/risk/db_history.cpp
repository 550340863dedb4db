#include "db_history.hpp"

#include <spdlog/spdlog.h>

#include "risk_repository.hpp"
#include "transaction_repository.hpp"

namespace pilecore::core {

std::optional<std::uint32_t> DbHistory::sessions_since(std::string_view user, TimePoint since) const noexcept {
  try {
    return TransactionRepository(db_).sessions_since(user, since);
  } catch (const std::exception& e) {
    spdlog::error("risk history: {}", e.what());
    return std::nullopt;
  }
}

std::optional<std::int64_t> DbHistory::amount_since_fen(std::string_view user, TimePoint since) const noexcept {
  try {
    return TransactionRepository(db_).amount_since_fen(user, since);
  } catch (const std::exception& e) {
    spdlog::error("risk history: {}", e.what());
    return std::nullopt;
  }
}

bool DbHistory::sessions_after(std::string_view user, TimePoint after, std::size_t limit,
                               const std::function<void(const risk::PastSession&)>& each) const noexcept {
  try {
    RiskRepository(db_).sessions_after(user, after, limit, [&](const UserSessionRow& r) {
      each({.started = r.started, .amount_fen = r.amount_fen, .connector = r.connector, .utc_offset_s = day_.utc_offset_s(r.started)});
    });
    return true;
  } catch (const std::exception& e) {
    spdlog::error("risk history: {}", e.what());
    return false;
  }
}

}  // namespace pilecore::core
