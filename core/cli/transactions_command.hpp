// `pilectl transactions`: the newest transactions of a database, read-only, each with the risk
// engine's decisions (before the authorisation, before the capture) and every rule's answer.
// No token is shown: a transaction row keeps it, the listing does not.
#pragma once

#include <cstddef>
#include <filesystem>
#include <ostream>
#include <string>

namespace pilecore::core {

/// Prints the newest `limit` transactions (or only `txn`); returns the exit code (0, or 1 when
/// the database cannot be read or `txn` is not in it).
int list_transactions(const std::filesystem::path& db_path, std::size_t limit, const std::string& txn, std::ostream& out, std::ostream& err);

}  // namespace pilecore::core
