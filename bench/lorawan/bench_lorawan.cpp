// bench_lorawan: what one status report costs on LoRaWAN, in bytes and time on air, as the
// compact telemetry frame (docs/protocol.md 3.3), as the CBOR telemetry record the outbox sends
// over MQTT, and as the same report in JSON; and the shortest report interval each region allows.
//
// All of it is computed, not measured on air: the payload tables, the time-on-air formula and the
// regional rules are those of DOMAIN.md section 5, through the header the link-lorawan plugin
// enforces them with (plugins/link-lorawan/airtime.hpp). A report that does not fit one uplink is
// counted as the fragments the core's outbox would send (core/protocol fragment()).
//
// Target (issue #12): a compact status report fits one uplink within CN470's 1 s per
// transmission at SF10 or faster. Exits 1 when it does not.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <string>
#include <vector>

#include "airtime.hpp"
#include "fragments.hpp"
#include "frame.hpp"
#include "payloads.hpp"

namespace {

using namespace pilecore::core::protocol;
namespace lw = pilecore::lorawan;

struct Report {
  std::string name;
  MessageType type;
  Bytes payload;
};

/// The pile's status: two connectors, one charging at 7.2 kW, one free.
const std::vector<ConnectorTelemetry> kConnectors = {
    {.connector = 1, .status = ConnectorStatus::charging, .power_w = 7200, .meter_wh = 123456},
    {.connector = 2, .status = ConnectorStatus::available, .power_w = 0, .meter_wh = 98765},
};

nlohmann::json as_json() {
  static constexpr const char* names[] = {"Available", "Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing", "Reserved", "Unavailable", "Faulted"};
  nlohmann::json connectors = nlohmann::json::array();
  for (const auto& c : kConnectors) {
    connectors.push_back({{"connector", c.connector}, {"status", names[static_cast<int>(c.status)]}, {"power_w", c.power_w}, {"meter_wh", c.meter_wh}});
  }
  return {{"ts", 1767225660}, {"connectors", connectors}};
}

Header header(MessageType type) { return {.type = type, .device_id = 0x00000001, .timestamp = 0x6955B93C, .sequence = 8}; }

/// The frames a report takes on a link of `mtu` bytes: one, or the outbox's fragments.
std::vector<Bytes> frames_for(const Report& r, std::size_t mtu) {
  Bytes whole = encode(header(r.type), r.payload);
  if (whole.size() <= mtu) return {whole};
  if (mtu <= kHeaderSize + kFragmentHeaderSize) return {};
  return fragment(header(r.type), r.payload, mtu, 1);
}

struct Cost {
  std::size_t uplinks = 0;  ///< 0: cannot be sent at this data rate
  std::int64_t air_us = 0;
  std::int64_t longest_us = 0;
};

Cost cost(const Report& r, lw::Region region, int dr, lw::Cn470Table table) {
  const std::size_t mtu = lw::usable_payload(region, dr, table);
  Cost c;
  for (const auto& f : frames_for(r, mtu)) {
    const auto air = lw::time_on_air_us(f.size(), lw::spreading_factor(dr));
    c.air_us += air;
    c.longest_us = std::max(c.longest_us, air);
    ++c.uplinks;
  }
  return c;
}

std::string seconds(std::int64_t us) { return fmt::format("{:.1f}", static_cast<double>(us) / 1e6); }

}  // namespace

int main() {
  const std::vector<Report> reports = {
      {"compact (type 0x05)", MessageType::telemetry_compact, encode_compact_telemetry(kConnectors)},
      {"CBOR record (type 0x04)", MessageType::telemetry, encode_record({.key = "tm-1-8", .kind = "meter", .body = as_json()})},
      {"JSON", MessageType::telemetry, [] {
         const std::string text = as_json().dump();
         return Bytes(text.begin(), text.end());
       }()},
  };

  fmt::print("One status report, 2 connectors (DOMAIN.md section 5: CR 4/5, 8-symbol preamble, explicit header, CRC, DE at SF11/12, 125 kHz)\n\n");
  fmt::print("{:<26} {:>8} {:>8}   time on air of one frame (ms), as if it fitted\n", "layout", "payload", "frame");
  fmt::print("{:<26} {:>8} {:>8}  {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}\n", "", "B", "B", "SF7", "SF8", "SF9", "SF10", "SF11", "SF12");
  for (const auto& r : reports) {
    const std::size_t frame = kHeaderSize + r.payload.size();
    fmt::print("{:<26} {:>8} {:>8} ", r.name, r.payload.size(), frame);
    for (int sf = 7; sf <= 12; ++sf) fmt::print(" {:>7.1f}", static_cast<double>(lw::time_on_air_us(frame, sf)) / 1000);
    fmt::print("\n");
  }

  struct Setting {
    const char* name;
    lw::Region region;
    lw::Cn470Table table;
  };
  const Setting settings[] = {
      {"EU868 (1 % duty cycle)", lw::Region::eu868, lw::Cn470Table::rp102},
      {"CN470 RP 1.0.2 (1 s/tx)", lw::Region::cn470, lw::Cn470Table::rp102},
      {"CN470 LoRaWAN 1.0.4 (1 s/tx)", lw::Region::cn470, lw::Cn470Table::lorawan104},
  };
  fmt::print("\nUplinks per report (fragments when over the MTU) and the shortest report interval, s\n");
  fmt::print("(EU868: the report's air time x 100; CN470: no duty cycle, so the air time itself; '-': cannot be sent)\n");
  for (const auto& s : settings) {
    fmt::print("\n{}\n{:<26} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n", s.name, "layout", "DR5 SF7", "DR4 SF8", "DR3 SF9", "DR2 SF10", "DR1 SF11", "DR0 SF12");
    for (const auto& r : reports) {
      fmt::print("{:<26}", r.name);
      for (int dr = 5; dr >= 0; --dr) {
        const Cost c = cost(r, s.region, dr, s.table);
        if (c.uplinks == 0) {
          fmt::print(" {:>10}", "-");
          continue;
        }
        fmt::print(" {:>10}", fmt::format("{}x {}", c.uplinks, seconds(lw::min_interval_us(s.region, c.air_us))));
      }
      fmt::print("\n");
    }
    fmt::print("{:<26}", "  MTU at this DR, B");
    for (int dr = 5; dr >= 0; --dr) fmt::print(" {:>10}", lw::usable_payload(s.region, dr, s.table));
    fmt::print("\n");
  }

  // The target: one uplink, within 1 s, in CN470 at SF10 and every faster rate, with either
  // CN470 table.
  bool met = true;
  fmt::print("\nTarget: the compact report is one uplink of at most 1 s in CN470 at SF10 or faster\n");
  for (const auto table : {lw::Cn470Table::rp102, lw::Cn470Table::lorawan104}) {
    for (int dr = 2; dr <= 5; ++dr) {
      const Cost c = cost(reports[0], lw::Region::cn470, dr, table);
      const bool ok = c.uplinks == 1 && c.longest_us <= lw::kCn470MaxDwellUs;
      met = met && ok;
      fmt::print("  {} DR{} (SF{}): {} uplink(s), {:.1f} ms  {}\n", table == lw::Cn470Table::rp102 ? "RP 1.0.2   " : "LoRaWAN 1.0.4", dr,
                 lw::spreading_factor(dr), c.uplinks, static_cast<double>(c.longest_us) / 1000, ok ? "ok" : "MISSED");
    }
  }
  fmt::print("{}\n", met ? "target met" : "target MISSED");
  return met ? 0 : 1;
}
