#include "ledger_anchor.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "crypto.hpp"
#include "statement.hpp"

namespace pilecore::core {

namespace fs = std::filesystem;

fs::path anchor_path(const fs::path& database) { return fs::path(database.string() + ".anchor"); }

std::optional<LedgerAnchor> read_anchor(const fs::path& file) {
  std::error_code ec;
  if (!fs::exists(file, ec)) return std::nullopt;
  std::ifstream in(file);
  std::string line;
  if (!in || !std::getline(in, line)) throw std::runtime_error(fmt::format("{}: cannot read the ledger anchor", file.string()));
  // "seq <n> hash <hex>", one line: small enough to read by eye.
  std::istringstream words(line);
  std::string seq_word, hash_word;
  LedgerAnchor a;
  if (!(words >> seq_word >> a.seq) || seq_word != "seq" || a.seq < 0) {
    throw std::runtime_error(fmt::format("{}: not a ledger anchor (expected \"seq <n> hash <hex>\", found \"{}\")", file.string(), line));
  }
  if (words >> hash_word) {
    if (hash_word != "hash" || !(words >> a.hash_hex) || a.hash_hex.find_first_not_of("0123456789abcdef") != std::string::npos) {
      throw std::runtime_error(fmt::format("{}: not a ledger anchor (expected \"seq <n> hash <hex>\", found \"{}\")", file.string(), line));
    }
  }
  return a;
}

void write_anchor(const fs::path& file, const LedgerAnchor& anchor) {
  const fs::path tmp = fs::path(file.string() + ".tmp");
  const std::string text = fmt::format("seq {}{}{}\n", anchor.seq, anchor.hash_hex.empty() ? "" : " hash ", anchor.hash_hex);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error(fmt::format("{}: cannot write the ledger anchor: {}", tmp.string(), std::strerror(errno)));
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
  const int saved = errno;
  ::close(fd);
  if (!ok) throw std::runtime_error(fmt::format("{}: cannot write the ledger anchor: {}", tmp.string(), std::strerror(saved)));
  fs::rename(tmp, file);
}

void record_anchor(Database& db, std::uint64_t seq) {
  const fs::path file = anchor_path(db.path());
  std::optional<LedgerAnchor> current;
  try {
    current = read_anchor(file);
  } catch (const std::exception& e) {
    // Kept as it is: verify reports it; overwriting would hide the finding.
    spdlog::error("{}; the back end's anchor (seq {}) is not recorded", e.what(), seq);
    return;
  }
  if (current && current->seq >= static_cast<std::int64_t>(seq)) return;
  LedgerAnchor a{static_cast<std::int64_t>(seq), {}};
  Stmt s(db, "SELECT hash FROM ledger WHERE seq=?");
  s.bind(1, a.seq);
  if (s.step()) {
    a.hash_hex = to_hex(s.blob(0));
  } else {
    spdlog::error("ledger anchoring: the back end holds ledger records up to seq {}, which this pile does not have", seq);
  }
  write_anchor(file, a);
}

std::optional<std::string> check_anchor(sqlite3* db, const LedgerAnchor& anchor) {
  if (anchor.seq <= 0) return std::nullopt;
  std::int64_t last = 0;
  {
    Stmt s(db, "SELECT COALESCE(MAX(seq), 0) FROM ledger");
    s.step();
    last = s.i64(0);
  }
  if (last < anchor.seq) {
    return fmt::format("the ledger ends at seq {}, but the back end acknowledged holding records up to seq {}: {} newest record(s) were removed, "
                       "or the database was replaced by an older copy",
                       last, anchor.seq, anchor.seq - last);
  }
  if (anchor.hash_hex.empty()) return std::nullopt;
  Stmt s(db, "SELECT hash FROM ledger WHERE seq=?");
  s.bind(1, anchor.seq);
  if (!s.step()) return fmt::format("seq {}, which the back end acknowledged, is missing", anchor.seq);
  const std::string here = to_hex(s.blob(0));
  if (here != anchor.hash_hex) {
    return fmt::format("seq {}: its hash is {}, but the back end acknowledged {}: the ledger was rewritten from there", anchor.seq, here,
                       anchor.hash_hex);
  }
  return std::nullopt;
}

std::optional<std::string> check_transactions(sqlite3* db) {
  // The session's own record (entry = txn) against the receipt-facing row.
  Stmt s(db,
         "SELECT t.id, l.seq, l.record, t.connector, t.method, t.meter_start_wh, t.meter_stop_wh, t.energy_wh, t.electricity_fen, t.service_fen, "
         "t.total_fen, t.outcome, t.authorized_fen FROM transactions t JOIN ledger l ON l.entry = t.id ORDER BY l.seq");
  while (s.step()) {
    const std::string id = s.text(0);
    const std::int64_t seq = s.i64(1);
    nlohmann::json r;
    try {
      const auto bytes = s.blob(2);
      r = nlohmann::json::parse(bytes.begin(), bytes.end());
    } catch (const std::exception&) {
      return fmt::format("seq {} (txn {}): its record is not JSON", seq, id);
    }
    const nlohmann::json bill = r.value("bill", nlohmann::json::object());
    auto num = [](const nlohmann::json& j, const char* k) { return j.contains(k) && j[k].is_number_integer() ? j[k].get<std::int64_t>() : std::int64_t{-1}; };
    auto opt = [&s](int c) { return s.null(c) ? std::int64_t{-1} : s.i64(c); };
    const struct {
      const char* column;
      std::int64_t row;
      std::int64_t signed_value;
    } figures[] = {{"connector", s.i64(3), num(r, "connector")},          {"meter_start_wh", s.i64(5), num(r, "meter_start_wh")},
                   {"meter_stop_wh", opt(6), num(r, "meter_stop_wh")},     {"energy_wh", opt(7), num(bill, "energy_wh")},
                   {"electricity_fen", opt(8), num(bill, "electricity_fen")}, {"service_fen", opt(9), num(bill, "service_fen")},
                   {"total_fen", opt(10), num(bill, "total_fen")}};
    for (const auto& f : figures) {
      if (f.row != f.signed_value) {
        return fmt::format("transaction {}: the transactions row says {} = {}, its signed record (seq {}) says {}", id, f.column, f.row, seq,
                           f.signed_value);
      }
    }
    if (s.text(4) != r.value("method", "")) {
      return fmt::format("transaction {}: the transactions row says method = {}, its signed record (seq {}) says {}", id, s.text(4), seq, r.value("method", ""));
    }
    if (s.text(11) != r.value("outcome", "")) {
      return fmt::format("transaction {}: the transactions row says outcome = {}, its signed record (seq {}) says {}", id, s.text(11), seq,
                         r.value("outcome", ""));
    }
  }
  // What the receipt says was captured against the confirmed capture's own record.
  Stmt c(db,
         "SELECT t.id, t.captured_fen, l.seq, l.record FROM transactions t JOIN ledger l ON l.entry = t.id || '/capture' "
         "WHERE t.captured_fen IS NOT NULL ORDER BY l.seq");
  while (c.step()) {
    nlohmann::json r;
    try {
      const auto bytes = c.blob(3);
      r = nlohmann::json::parse(bytes.begin(), bytes.end());
    } catch (const std::exception&) {
      return fmt::format("seq {} (txn {}): its record is not JSON", c.i64(2), c.text(0));
    }
    const std::int64_t captured = r.value("state", "") == "confirmed" ? r.value("amount_fen", std::int64_t{0}) : 0;
    if (c.i64(1) != captured) {
      return fmt::format("transaction {}: the transactions row says captured_fen = {}, its signed capture record (seq {}) says {}", c.text(0),
                         c.i64(1), c.i64(2), captured);
    }
  }
  return std::nullopt;
}

}  // namespace pilecore::core
