// The `tariffs` and `transaction_tariffs` tables: each transaction's tariff, as the document
// (Tariff::document()) it started with, kept once per distinct tariff under its SHA-256. A
// reload or an upgrade that changes the price never reprices a session in progress, a
// recovered one or a resumed one: each is billed at its own tariff.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "pilecore/clock.hpp"
#include "storage.hpp"

namespace pilecore::core {

/// The key of a tariff document: lower-case hex SHA-256 of its text.
[[nodiscard]] std::string tariff_digest(std::string_view document);

class TariffRepository {
 public:
  explicit TariffRepository(Database& db) : db_(db) {}

  /// Records that `txn` is priced by `document` (stored once per digest). Inside the work that
  /// inserts the transaction row, so the two commit together.
  void assign(std::string_view txn, std::string_view document, TimePoint now);
  /// The document of the tariff `txn` started with; nullopt for a transaction opened before
  /// pilecore kept them (schema 10 and earlier).
  [[nodiscard]] std::optional<std::string> document_of(std::string_view txn);

 private:
  Database& db_;
};

}  // namespace pilecore::core
