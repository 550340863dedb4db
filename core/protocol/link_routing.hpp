// Which link carries each uplink class (issue #12): configuration names, per class, a primary
// link and a fallback, by link instance name. The default sends control and transactions over
// 5G and status and telemetry over LoRaWAN when the site has one; each class falls back to the
// other link, but only within that link's limits.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "uplink_class.hpp"

namespace pilecore::core::protocol {

struct Route {
  std::string primary;
  std::string fallback;  ///< empty: none
};

struct LinkRouting {
  std::array<Route, kUplinkClassCount> by_class;
  [[nodiscard]] const Route& operator[](UplinkClass c) const { return by_class[static_cast<std::size_t>(c)]; }
  [[nodiscard]] Route& operator[](UplinkClass c) { return by_class[static_cast<std::size_t>(c)]; }
};

/// The default for a site with a 5G link named `five_g` and, when not empty, a LoRaWAN link.
[[nodiscard]] LinkRouting default_routing(std::string_view five_g, std::string_view lorawan);

/// What the router needs to know of a link now.
struct LinkSnapshot {
  std::string_view name;
  bool up = false;
  std::size_t mtu = 0;           ///< the link's largest frame, header included
  bool may_send_now = true;      ///< false while its duty cycle or dwell time forbids a send
  std::uint16_t max_fragments = 1;  ///< how many frames one record may take on it (1: never fragment)
};

struct LinkChoice {
  std::string_view link;
  bool fragmented = false;  ///< the frame exceeds the link's MTU: send fragment() frames
};

/// The link a frame of `frame_size` bytes (header included) of class `c` goes on now: the
/// primary when it is up, may send and can carry the frame (whole or in at most its
/// max_fragments fragments), else the fallback on the same terms; nothing when neither can
/// (the record stays in the outbox).
[[nodiscard]] std::optional<LinkChoice> choose_link(const LinkRouting& routing, UplinkClass c, std::size_t frame_size,
                                                    std::span<const LinkSnapshot> links);

/// How many fragment() frames a payload of `payload_size` bytes takes on a link of `mtu`.
[[nodiscard]] std::size_t fragment_count(std::size_t payload_size, std::size_t mtu);

}  // namespace pilecore::core::protocol
