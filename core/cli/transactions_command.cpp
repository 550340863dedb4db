#include "transactions_command.hpp"

#include <date/date.h>
#include <fmt/format.h>

#include "money.hpp"
#include "risk_repository.hpp"
#include "storage.hpp"

namespace pilecore::core {

namespace {
std::string fen_text(const std::optional<std::int64_t>& fen) { return fen ? fmt::format("{}.{:02}", *fen / 100, (*fen < 0 ? -*fen : *fen) % 100) : "-"; }
}  // namespace

int list_transactions(const std::filesystem::path& db_path, std::size_t limit, const std::string& txn, std::ostream& out, std::ostream& err) {
  std::error_code ec;
  if (!std::filesystem::exists(db_path, ec)) {
    err << fmt::format("pilectl: {}: no such database\n", db_path.string());
    return 1;
  }
  try {
    Database db(db_path, Database::ReadOnly{});
    const auto rows = RiskRepository(db).listing(limit, txn);
    if (!txn.empty() && rows.empty()) {
      err << fmt::format("pilectl: {}: no transaction {}\n", db_path.string(), txn);
      return 1;
    }
    out << fmt::format("{:<22} {:>4} {:<12} {:<8} {:<20} {:>10} {:>10}  {}\n", "TRANSACTION", "CONN", "METHOD", "STATUS", "STARTED (UTC)", "TOTAL",
                       "CAPTURED", "RISK");
    for (const auto& t : rows) {
      std::string risk;
      for (const auto& d : t.decisions) risk += fmt::format("{}{} {}", risk.empty() ? "" : ", ", d.phase, d.verdict);
      out << fmt::format("{:<22} {:>4} {:<12} {:<8} {:<20} {:>10} {:>10}  {}\n", t.id, t.connector, t.method, t.status,
                         date::format("%F %T", std::chrono::floor<std::chrono::seconds>(t.started)), fen_text(t.total_fen),
                         fen_text(t.captured_fen), risk.empty() ? "-" : risk);
      for (const auto& d : t.decisions) {
        std::size_t at = 0;
        while (at <= d.answers.size() && !d.answers.empty()) {
          const auto nl = d.answers.find('\n', at);
          out << fmt::format("    {:<9} {}\n", d.phase, d.answers.substr(at, nl == std::string::npos ? std::string::npos : nl - at));
          if (nl == std::string::npos) break;
          at = nl + 1;
        }
      }
    }
    return 0;
  } catch (const std::exception& e) {
    err << fmt::format("pilectl: {}: {}\n", db_path.string(), e.what());
    return 1;
  }
}

}  // namespace pilecore::core
