#include "bill.hpp"

#include <fmt/format.h>

#include <stdexcept>

namespace pilecore::core {

// 128-bit intermediates keep Wh x price exact; a GCC/Clang extension, hence the marker.
__extension__ using i128 = __int128;

namespace {

void add(std::vector<BillLine>& lines, const Slot& slot, std::int64_t wh) {
  if (wh == 0) return;
  for (auto& l : lines) {
    if (l.type == slot.type && l.plan == slot.plan && l.price == slot.price) {
      l.wh += wh;
      return;
    }
  }
  lines.push_back(BillLine{slot.type, slot.plan, slot.price, wh, 0, 0});
}

}  // namespace

Bill compute_bill(const Tariff& tariff, std::span<const MeterReading> readings) {
  Bill bill;
  bill.decimals = tariff.decimals();
  if (readings.empty()) return bill;
  for (std::size_t i = 1; i < readings.size(); ++i) {
    const auto& a = readings[i - 1];
    const auto& b = readings[i];
    if (b.time < a.time) throw std::invalid_argument("meter readings out of time order");
    if (b.wh < a.wh) {
      throw std::invalid_argument(fmt::format("the meter went backwards from {} Wh to {} Wh; was it replaced or reset?", a.wh, b.wh));
    }
    const std::int64_t delta = b.wh - a.wh;
    if (delta == 0) continue;
    Slot slot = tariff.slot_at(a.time);
    if (slot.end >= b.time || b.time == a.time) {
      add(bill.lines, slot, delta);
      continue;
    }
    // Spread over the slots in proportion to time: cumulative shares, so the parts sum exactly.
    const i128 span = (b.time - a.time).count();
    std::int64_t given = 0;
    TimePoint t = a.time;
    while (t < b.time) {
      slot = tariff.slot_at(t);
      const TimePoint end = std::min(slot.end, b.time);
      const i128 elapsed = (end - a.time).count();
      const auto cumulative = static_cast<std::int64_t>(static_cast<i128>(delta) * elapsed / span);
      add(bill.lines, slot, (end == b.time ? delta : cumulative) - given);
      given = end == b.time ? delta : cumulative;
      t = end;
    }
  }
  bill.energy_wh = readings.back().wh - readings.front().wh;
  for (auto& l : bill.lines) {
    l.electricity_fen = amount_fen(l.wh, {l.price.electricity, tariff.decimals()}, tariff.rounding());
    l.service_fen = amount_fen(l.wh, {l.price.service, tariff.decimals()}, tariff.rounding());
    bill.electricity_fen += l.electricity_fen;
    bill.service_fen += l.service_fen;
  }
  bill.total_fen = bill.electricity_fen + bill.service_fen;
  return bill;
}

std::string format_receipt(const Bill& bill) {
  std::string out;
  out += fmt::format("  {:<12} {:>10} {:>14} {:>12} {:>14} {:>12} {:>10}\n", "period", "kWh", "elec fen/kWh", "electricity", "svc fen/kWh", "service",
                     "amount");
  bool several_plans = false;
  for (const auto& l : bill.lines) several_plans = several_plans || l.plan != bill.lines.front().plan;
  for (const auto& l : bill.lines) {
    out += fmt::format("  {:<6}{} {:<4} {:>10} {:>14} {:>12} {:>14} {:>12} {:>10}{}\n", to_string(l.type), chinese_name(l.type), "", format_kwh(l.wh),
                       format_scaled(l.price.electricity, bill.decimals), format_yuan(l.electricity_fen), format_scaled(l.price.service, bill.decimals),
                       format_yuan(l.service_fen), format_yuan(l.total_fen()), several_plans ? "  " + l.plan : std::string());
  }
  out += fmt::format("  {:<12} {:>10} {:>14} {:>12} {:>14} {:>12} {:>10}\n", "total", format_kwh(bill.energy_wh), "", format_yuan(bill.electricity_fen), "",
                     format_yuan(bill.service_fen), format_yuan(bill.total_fen));
  out += "  (amounts in yuan; each amount rounded to the fen, then added)\n";
  return out;
}

}  // namespace pilecore::core
