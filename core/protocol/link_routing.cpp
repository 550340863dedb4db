#include "link_routing.hpp"

#include <algorithm>

#include "fragments.hpp"

namespace pilecore::core::protocol {

LinkRouting default_routing(std::string_view five_g, std::string_view lorawan) {
  LinkRouting r;
  const std::string g(five_g);
  const std::string l(lorawan);
  r[UplinkClass::control] = {g, l};
  r[UplinkClass::transaction] = {g, l};
  r[UplinkClass::status] = l.empty() ? Route{g, ""} : Route{l, g};
  r[UplinkClass::telemetry] = l.empty() ? Route{g, ""} : Route{l, g};
  return r;
}

std::size_t fragment_count(std::size_t payload_size, std::size_t mtu) {
  const std::size_t overhead = kHeaderSize + kFragmentHeaderSize;
  if (mtu <= overhead) return 0;
  const std::size_t body = std::min(mtu, kHeaderSize + kMaxPayload) - overhead;
  return (payload_size + kDigestSize + body - 1) / body;
}

namespace {
std::optional<LinkChoice> usable(std::string_view name, std::size_t frame_size, std::span<const LinkSnapshot> links) {
  if (name.empty()) return std::nullopt;
  auto it = std::find_if(links.begin(), links.end(), [&](const LinkSnapshot& l) { return l.name == name; });
  if (it == links.end() || !it->up || !it->may_send_now || it->mtu == 0) return std::nullopt;
  if (frame_size <= it->mtu) return LinkChoice{it->name, false};
  const std::size_t payload = frame_size < kHeaderSize ? 0 : frame_size - kHeaderSize;
  const std::size_t n = fragment_count(payload, it->mtu);
  if (n == 0 || n > it->max_fragments) return std::nullopt;
  return LinkChoice{it->name, true};
}
}  // namespace

std::optional<LinkChoice> choose_link(const LinkRouting& routing, UplinkClass c, std::size_t frame_size, std::span<const LinkSnapshot> links) {
  const Route& route = routing[c];
  if (auto p = usable(route.primary, frame_size, links)) return p;
  return usable(route.fallback, frame_size, links);
}

}  // namespace pilecore::core::protocol
