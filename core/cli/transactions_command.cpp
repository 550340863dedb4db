#include "transactions_command.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "clocks.hpp"
#include "money.hpp"
#include "risk_repository.hpp"
#include "storage.hpp"

namespace pilecore::core {

namespace {
std::string fen_text(const std::optional<std::int64_t>& fen) { return fen ? format_yuan(*fen) : "-"; }

template <typename T>
nlohmann::json or_null(const std::optional<T>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

/// A closed one by how it ended; an open or stopping one by that.
std::string state_of(const TransactionListing& t) { return t.status == "closed" && !t.outcome.empty() ? t.outcome : t.status; }

nlohmann::json to_json(const TransactionListing& t) {
  nlohmann::json risk = nlohmann::json::array();
  for (const auto& d : t.decisions) risk.push_back({{"phase", d.phase}, {"verdict", d.verdict}, {"answers", d.answers}, {"decided", format_utc(d.decided)}});
  return {{"transaction", t.id},
          {"connector", t.connector},
          {"method", t.method},
          {"state", state_of(t)},
          {"status", t.status},
          {"outcome", t.outcome},
          {"stop_reason", t.stop_reason},
          {"started", format_utc(t.started)},
          {"stopped", t.stopped ? nlohmann::json(format_utc(*t.stopped)) : nlohmann::json(nullptr)},
          {"energy_wh", or_null(t.energy_wh)},
          {"total_fen", or_null(t.total_fen)},
          {"captured_fen", or_null(t.captured_fen)},
          {"capture_status", t.capture_status},
          {"risk", risk}};
}
}  // namespace

int list_transactions(const TransactionsQuery& q, std::ostream& out, std::ostream& err) {
  TransactionFilter filter;
  filter.limit = q.limit;
  filter.only = q.only;
  filter.connector = q.connector;
  filter.method = q.method;
  filter.state = q.state;
  if (!q.day.empty()) {
    TimePoint begin, end;
    std::string error;
    if (!local_day_bounds(q.day, q.view, begin, end, error)) {
      err << "pilectl: " << error << "\n";
      return 2;
    }
    filter.started_from = begin;
    filter.started_before = end;
  }
  std::error_code ec;
  if (!std::filesystem::exists(q.db, ec)) {
    err << fmt::format("pilectl: {}: no such database (give --db, or -c with the site file)\n", q.db.string());
    return 1;
  }
  try {
    Database db(q.db, Database::ReadOnly{});
    const auto rows = RiskRepository(db).listing(filter);
    if (!q.only.empty() && rows.empty()) {
      err << fmt::format("pilectl: {}: no transaction {}\n", q.db.string(), q.only);
      return 1;
    }
    if (q.json) {
      nlohmann::json all = nlohmann::json::array();
      for (const auto& t : rows) all.push_back(to_json(t));
      out << all.dump(2) << "\n";
      return 0;
    }
    constexpr auto row = "{:<24} {:>4} {:<10} {:<10} {:<26} {:>9} {:>10} {:>10}  {}\n";
    out << fmt::format(row, "TRANSACTION", "CONN", "METHOD", "STATE", "STARTED", "KWH", "TOTAL", "CAPTURED", "RISK");
    for (const auto& t : rows) {
      std::string risk;
      for (const auto& d : t.decisions) risk += fmt::format("{}{} {}", risk.empty() ? "" : ", ", d.phase, d.verdict);
      out << fmt::format(row, t.id, t.connector, t.method, state_of(t), format_time(t.started, q.view), t.energy_wh ? format_kwh(*t.energy_wh) : "-",
                         fen_text(t.total_fen), fen_text(t.captured_fen), risk.empty() ? "-" : risk);
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
    out << fmt::format("{} transaction(s); amounts in yuan; times in {}\n", rows.size(), q.view.name);
    return 0;
  } catch (const std::exception& e) {
    err << fmt::format("pilectl: {}: {}\n", q.db.string(), e.what());
    return 1;
  }
}

int list_transactions(const std::filesystem::path& db_path, std::size_t limit, const std::string& txn, std::ostream& out, std::ostream& err) {
  TransactionsQuery q;
  q.db = db_path;
  q.limit = limit;
  q.only = txn;
  return list_transactions(q, out, err);
}

}  // namespace pilecore::core
