// Billing a session from its meter readings: energy split by tariff slot, each line's
// electricity and service rounded to fen, then added.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "tariff.hpp"

namespace pilecore::core {

struct MeterReading {
  TimePoint time;
  std::int64_t wh = 0;  // the meter's import-energy register
};

struct BillLine {
  PeriodType type = PeriodType::flat;
  std::string plan;
  Price price;
  std::int64_t wh = 0;
  std::int64_t electricity_fen = 0;
  std::int64_t service_fen = 0;
  [[nodiscard]] std::int64_t total_fen() const { return electricity_fen + service_fen; }
};

struct Bill {
  std::int64_t energy_wh = 0;  // last reading - first reading
  std::vector<BillLine> lines;  // in order of first use
  std::int64_t electricity_fen = 0;
  std::int64_t service_fen = 0;
  std::int64_t total_fen = 0;
  int decimals = 0;             // of the prices in the lines
};

/// Bills the energy between consecutive readings. Readings must be in time order with a
/// non-decreasing register (throws std::invalid_argument otherwise). Energy between two readings
/// that lie in different slots (a reading missed at a boundary, e.g. across a power cut) is
/// shared between the slots in proportion to time, in whole Wh, so the lines always add up to
/// the meter's difference. The same readings always give the same bill.
Bill compute_bill(const Tariff& tariff, std::span<const MeterReading> readings);

/// An itemised receipt, one line per period.
std::string format_receipt(const Bill& bill);

}  // namespace pilecore::core
