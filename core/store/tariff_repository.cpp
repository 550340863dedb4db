#include "tariff_repository.hpp"

#include "crypto.hpp"
#include "statement.hpp"

namespace pilecore::core {

std::string tariff_digest(std::string_view document) {
  return to_hex(digest(HashAlgorithm::sha256, as_bytes(document)));
}

void TariffRepository::assign(std::string_view txn, std::string_view document, TimePoint now) {
  const std::string key = tariff_digest(document);
  Stmt(db_, "INSERT OR IGNORE INTO tariffs(digest, document, first_used_ms) VALUES(?,?,?)")
      .bind(1, key)
      .bind(2, document)
      .bind(3, static_cast<std::int64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count()))
      .step();
  Stmt(db_, "INSERT INTO transaction_tariffs(txn_id, digest) VALUES(?,?)").bind(1, txn).bind(2, key).step();
}

std::optional<std::string> TariffRepository::document_of(std::string_view txn) {
  Stmt st(db_, "SELECT t.document FROM transaction_tariffs x JOIN tariffs t ON t.digest = x.digest WHERE x.txn_id = ?");
  st.bind(1, txn);
  if (!st.step()) return std::nullopt;
  return st.text(0);
}

}  // namespace pilecore::core
