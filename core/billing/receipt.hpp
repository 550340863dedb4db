// Human-readable receipts from the transaction records the engine stores and the ledger signs.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "bill.hpp"

namespace pilecore::core {

/// The bill as a document: what the `bill` column stores, the ledger signs and receipts show.
/// One writer, so the three never differ.
nlohmann::json bill_json(const Bill& b);

/// An itemised receipt: energy, electricity and service per period, each rounded to the fen,
/// and the totals. Accepts a ledger record or a `receipt` reply. Times are shown in
/// `time_zone` (an IANA name, e.g. the site's) or in UTC when it is empty.
std::string format_receipt_text(const nlohmann::json& record, const std::string& time_zone = {});

}  // namespace pilecore::core
