// LoRaWAN regional limits and LoRa time on air, shared by the link-lorawan plugin, its tests and
// bench_lorawan so that the budget the link enforces and the figures the bench reports are the
// same arithmetic. Every number comes from DOMAIN.md section 5 (LoRaWAN):
//  - the payload table: RAKWireless RUI3 appendix and LoRaMac-node RegionCN470.h (the CN470
//    table differs between Regional Parameters 1.0.2 and LoRaWAN 1.0.4, so it is configurable);
//  - time on air: Semtech AN1200.13, with IH = 0, CR 4/5, CRC on, an 8-symbol preamble, low data
//    rate optimisation (DE = 1) for SF11/12 at 125 kHz, PL = application payload + 13 bytes;
//  - EU868: 1 % duty cycle on the default channels; CN470: no LoRaWAN duty cycle, but China's MIIT
//    notice 2019 No. 52 allows at most 1 s per transmission.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace pilecore::lorawan {

enum class Region : std::uint8_t { cn470, eu868 };
/// Which CN470 payload table the network server uses (EU868 has one).
enum class Cn470Table : std::uint8_t { rp102, lorawan104 };

inline constexpr std::uint32_t kBandwidthHz = 125000;  // DR0-5 of both regions
inline constexpr std::size_t kMacOverhead = 13;        // MHDR, FHDR without FOpts, FPort, MIC
inline constexpr std::int64_t kCn470MaxDwellUs = 1000000;
inline constexpr std::uint32_t kEu868DutyCyclePpm = 10000;  // 1 %
inline constexpr int kMaxDataRate = 5;

/// DR0-5 at 125 kHz are SF12 down to SF7 in both regions.
[[nodiscard]] constexpr int spreading_factor(int dr) { return 12 - dr; }

/// The largest application payload (no FOpts) at `dr`; 0 where the data rate is not allowed.
[[nodiscard]] constexpr std::size_t max_payload(Region region, int dr, Cn470Table table = Cn470Table::rp102) {
  constexpr std::array<std::size_t, 6> eu868 = {51, 51, 51, 115, 242, 242};
  constexpr std::array<std::size_t, 6> cn470_104 = {0, 23, 86, 184, 242, 242};
  if (dr < 0 || dr > kMaxDataRate) return 0;
  const auto i = static_cast<std::size_t>(dr);
  if (region == Region::cn470 && table == Cn470Table::lorawan104) return cn470_104[i];
  return eu868[i];  // CN470 RP 1.0.2 has the EU868 figures
}

/// Time on air of one uplink carrying `app_payload` bytes at spreading factor `sf`, in
/// microseconds (rounded up).
[[nodiscard]] constexpr std::int64_t time_on_air_us(std::size_t app_payload, int sf, std::uint32_t bandwidth_hz = kBandwidthHz) {
  const std::int64_t pl = static_cast<std::int64_t>(app_payload + kMacOverhead);
  const std::int64_t de = (sf >= 11 && bandwidth_hz == kBandwidthHz) ? 1 : 0;
  const std::int64_t ih = 0, crc = 1, cr = 1;
  const std::int64_t num = 8 * pl - 4 * sf + 28 + 16 * crc - 20 * ih;
  const std::int64_t den = 4 * (sf - 2 * de);
  const std::int64_t blocks = num > 0 ? (num + den - 1) / den : 0;
  const std::int64_t n = 8 + blocks * (cr + 4);
  // ToA = (8 + 4.25 + n) * 2^SF / BW = (49 + 4n) * 2^SF / (4 BW), kept in integers.
  const std::int64_t numerator = (49 + 4 * n) * (std::int64_t{1} << sf) * 1000000;
  const std::int64_t denominator = 4 * static_cast<std::int64_t>(bandwidth_hz);
  return (numerator + denominator - 1) / denominator;
}

/// The region's share of air time, in parts per million (1000000: no duty cycle).
[[nodiscard]] constexpr std::uint32_t duty_cycle_ppm(Region region) { return region == Region::eu868 ? kEu868DutyCyclePpm : 1000000; }

/// The longest single transmission, in microseconds; 0 = unlimited.
[[nodiscard]] constexpr std::int64_t max_dwell_us(Region region) { return region == Region::cn470 ? kCn470MaxDwellUs : 0; }

/// After a transmission of `air_us` that starts at t, the next may start at t + this: the
/// transmission plus the off time air * (1 / duty - 1) (DOMAIN.md: "at 1 % the wait after
/// sending is 147 s" for 1483 ms of air).
[[nodiscard]] constexpr std::int64_t min_interval_us(Region region, std::int64_t air_us) {
  return air_us * 1000000 / static_cast<std::int64_t>(duty_cycle_ppm(region));
}

/// The largest application payload that may go out at `dr`: the table's, reduced where the
/// region's dwell limit allows fewer bytes (CN470 at SF11 and SF12).
[[nodiscard]] constexpr std::size_t usable_payload(Region region, int dr, Cn470Table table = Cn470Table::rp102) {
  std::size_t n = max_payload(region, dr, table);
  const std::int64_t dwell = max_dwell_us(region);
  if (dwell == 0) return n;
  const int sf = spreading_factor(dr);
  while (n > 0 && time_on_air_us(n, sf) > dwell) --n;
  return n;
}

[[nodiscard]] constexpr std::string_view to_string(Region r) { return r == Region::cn470 ? "CN470" : "EU868"; }

[[nodiscard]] constexpr std::optional<Region> parse_region(std::string_view s) {
  if (s == "CN470") return Region::cn470;
  if (s == "EU868") return Region::eu868;
  return std::nullopt;
}

// The examples DOMAIN.md gives, checked where the formula is written.
static_assert(time_on_air_us(11, 12) / 1000 == 1482);  // "11 B app (PL 24) 1483 ms"
static_assert(time_on_air_us(51, 12) / 1000 == 2793);  // "51 B app (PL 64) 2794 ms"
static_assert(time_on_air_us(11, 7) / 1000 == 61 && time_on_air_us(11, 10) / 1000 == 370 && time_on_air_us(11, 11) / 1000 == 823);

}  // namespace pilecore::lorawan
