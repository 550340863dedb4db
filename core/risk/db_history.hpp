// The risk rules' read-only history, read from the database on the strand's own connection.
// A database error is an error (std::nullopt, false), never a zero: a rule must not fail open.
#pragma once

#include "pilecore/risk.hpp"
#include "site_day.hpp"
#include "storage.hpp"

namespace pilecore::core {

class DbHistory final : public risk::History {
 public:
  DbHistory(Database& db, const SiteDay& day) : db_(db), day_(day) {}
  std::optional<std::uint32_t> sessions_since(std::string_view user, TimePoint since) const noexcept override;
  std::optional<std::int64_t> amount_since_fen(std::string_view user, TimePoint since) const noexcept override;
  bool sessions_after(std::string_view user, TimePoint after, std::size_t limit,
                      const std::function<void(const risk::PastSession&)>& each) const noexcept override;

 private:
  Database& db_;
  const SiteDay& day_;
};

}  // namespace pilecore::core
