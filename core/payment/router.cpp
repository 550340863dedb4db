#include "router.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

#include "statement.hpp"

namespace pilecore::core {

namespace {

std::string pct(std::uint64_t ppm) { return fmt::format("{}.{:02}%", ppm / 10'000, (ppm % 10'000) / 100); }

std::int64_t ms_of(TimePoint t) { return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count(); }

// Buckets per window: the window slides in steps of window/12 (five minutes of an hour).
constexpr std::int64_t buckets_per_window = 12;

}  // namespace

std::string_view to_string(RouteOrder o) {
  switch (o) {
    case RouteOrder::preferred: return "preferred";
    case RouteOrder::lowest_fee: return "lowest_fee";
    case RouteOrder::highest_success: return "highest_success";
  }
  return "unknown";
}

std::optional<RouteOrder> route_order_from(std::string_view s) {
  for (auto o : {RouteOrder::preferred, RouteOrder::lowest_fee, RouteOrder::highest_success}) {
    if (to_string(o) == s) return o;
  }
  return std::nullopt;
}

std::string RoutingDecision::summary() const {
  if (order.empty()) return {};
  std::string s = fmt::format("{}: {}", order.front(), reason);
  if (order.size() > 1) {
    s += "; then";
    for (std::size_t i = 1; i < order.size(); ++i) s += (i == 1 ? " " : ", ") + order[i];
  }
  return s;
}

Router::Router(RoutingRule rule, std::map<std::string, std::vector<ChannelSpec>> channels) : rule_(std::move(rule)) {
  if (rule_.window < std::chrono::seconds(buckets_per_window)) throw std::invalid_argument("routing window too short");
  for (auto& [method, specs] : channels) {
    Method m;
    for (auto& spec : specs) m.channels.push_back(Channel{std::move(spec), {}, {}});
    methods_.emplace(method, std::move(m));
  }
}

bool Router::routes(std::string_view method) const {
  auto it = methods_.find(method);
  return it != methods_.end() && !it->second.channels.empty();
}

std::int64_t Router::bucket_ms() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(rule_.window).count() / buckets_per_window;
}

void Router::prune(Channel& c, TimePoint now) const {
  const std::int64_t oldest = ms_of(now) - std::chrono::duration_cast<std::chrono::milliseconds>(rule_.window).count();
  std::erase_if(c.buckets, [&](const Bucket& b) { return b.start_ms + bucket_ms() <= oldest; });
}

ChannelView Router::view(const Channel& c, TimePoint now) const {
  ChannelView v;
  v.name = c.spec.name;
  v.fee_ppm = c.spec.fee_ppm;
  const std::int64_t oldest = ms_of(now) - std::chrono::duration_cast<std::chrono::milliseconds>(rule_.window).count();
  for (const auto& b : c.buckets) {
    if (b.start_ms + bucket_ms() <= oldest) continue;
    v.attempts += b.ok + b.failed;
    v.failures += b.failed;
  }
  if (v.attempts >= rule_.min_attempts && v.attempts > 0) {
    v.success_ppm = static_cast<std::uint32_t>(static_cast<std::uint64_t>(v.attempts - v.failures) * 1'000'000 / static_cast<std::uint64_t>(v.attempts));
  }
  const bool fee_ok = v.fee_ppm < rule_.max_fee_ppm;
  const bool success_ok = v.success_ppm && *v.success_ppm > rule_.min_success_ppm;
  v.eligible = fee_ok && success_ok;
  std::string fee = fmt::format("fee {} {} {}", pct(v.fee_ppm), fee_ok ? "<" : ">=", pct(rule_.max_fee_ppm));
  std::string success = v.success_ppm ? fmt::format("success {} {} {}", pct(*v.success_ppm), success_ok ? ">" : "<=", pct(rule_.min_success_ppm))
                                      : fmt::format("{} attempts in the window (< {}): success not known yet", v.attempts, rule_.min_attempts);
  v.why = fee + ", " + success;
  return v;
}

std::vector<ChannelView> Router::channels(std::string_view method, TimePoint now) const {
  std::vector<ChannelView> out;
  auto it = methods_.find(method);
  if (it == methods_.end()) return out;
  for (const auto& c : it->second.channels) out.push_back(view(c, now));
  return out;
}

RoutingDecision Router::choose(std::string_view method, std::string_view preferred, TimePoint now) {
  RoutingDecision d;
  d.method = std::string(method);
  auto it = methods_.find(method);
  if (it == methods_.end() || it->second.channels.empty()) return d;
  Method& m = it->second;
  ++m.payments;
  for (auto& c : m.channels) {
    prune(c, now);
    d.channels.push_back(view(c, now));
  }

  std::vector<const ChannelView*> eligible, rest;
  for (const auto& v : d.channels) (v.eligible ? eligible : rest).push_back(&v);
  auto by_rule = [&](const ChannelView* a, const ChannelView* b) {
    for (RouteOrder o : rule_.order) {
      switch (o) {
        case RouteOrder::preferred:
          if ((a->name == preferred) != (b->name == preferred)) return a->name == preferred;
          break;
        case RouteOrder::lowest_fee:
          if (a->fee_ppm != b->fee_ppm) return a->fee_ppm < b->fee_ppm;
          break;
        case RouteOrder::highest_success:
          if (a->success_ppm.value_or(0) != b->success_ppm.value_or(0)) return a->success_ppm.value_or(0) > b->success_ppm.value_or(0);
          break;
      }
    }
    return a->name < b->name;
  };
  // Not eligible: the most reliable first; a channel not measured yet ranks as if it just met
  // the rule, above one measured below it.
  auto by_reliability = [&](const ChannelView* a, const ChannelView* b) {
    const auto ra = a->success_ppm.value_or(rule_.min_success_ppm), rb = b->success_ppm.value_or(rule_.min_success_ppm);
    if (ra != rb) return ra > rb;
    if (a->fee_ppm != b->fee_ppm) return a->fee_ppm < b->fee_ppm;
    return a->name < b->name;
  };
  std::stable_sort(eligible.begin(), eligible.end(), by_rule);
  std::stable_sort(rest.begin(), rest.end(), by_reliability);
  for (const auto* v : eligible) d.order.push_back(v->name);
  for (const auto* v : rest) d.order.push_back(v->name);

  if (!eligible.empty()) {
    const auto* first = eligible.front();
    std::string which = !preferred.empty() && first->name == preferred ? "the user's preferred channel"
                        : eligible.size() == 1                         ? "the only eligible channel"
                                                                       : fmt::format("first of {} eligible by {}", eligible.size(), [&] {
                                                                           std::string s;
                                                                           for (auto o : rule_.order) s += (s.empty() ? "" : ", ") + std::string(to_string(o));
                                                                           return s;
                                                                         }());
    d.reason = fmt::format("{} ({})", which, first->why);
  } else {
    d.reason = fmt::format("no channel meets the rule; the most reliable ({})", rest.front()->why);
  }

  // A probe: the least-tried channel whose rate is not known yet goes first, now and then.
  if (rule_.probe_every > 0 && m.payments % static_cast<std::uint64_t>(rule_.probe_every) == 0) {
    const Channel* pick = nullptr;
    for (const auto& c : m.channels) {
      const auto v = view(c, now);
      if (v.success_ppm) continue;
      if (!pick || v.attempts < view(*pick, now).attempts || (v.attempts == view(*pick, now).attempts && c.last_tried < pick->last_tried)) pick = &c;
    }
    if (pick && pick->spec.name != d.order.front()) {
      std::erase(d.order, pick->spec.name);
      d.order.insert(d.order.begin(), pick->spec.name);
      d.probe = true;
      d.reason = fmt::format("probe, one payment in {} ({})", rule_.probe_every, view(*pick, now).why);
    }
  }
  return d;
}

RoutingBucket Router::record(std::string_view method, std::string_view channel, bool ok, TimePoint now) {
  auto it = methods_.find(method);
  if (it == methods_.end()) return {};
  for (auto& c : it->second.channels) {
    if (c.spec.name != channel) continue;
    prune(c, now);
    const std::int64_t start = ms_of(now) / bucket_ms() * bucket_ms();
    if (c.buckets.empty() || c.buckets.back().start_ms != start) c.buckets.push_back(Bucket{start, 0, 0});
    Bucket& b = c.buckets.back();
    (ok ? b.ok : b.failed) += 1;
    c.last_tried = now;
    return RoutingBucket{std::string(method), c.spec.name, b.start_ms, b.ok, b.failed};
  }
  return {};
}

void Router::restore(const std::vector<RoutingBucket>& buckets) {
  for (const auto& rb : buckets) {
    auto it = methods_.find(rb.method);
    if (it == methods_.end()) continue;
    for (auto& c : it->second.channels) {
      if (c.spec.name != rb.channel) continue;
      auto at = std::find_if(c.buckets.begin(), c.buckets.end(), [&](const Bucket& b) { return b.start_ms >= rb.start_ms; });
      if (at != c.buckets.end() && at->start_ms == rb.start_ms) {
        at->ok = rb.ok;
        at->failed = rb.failed;
      } else {
        c.buckets.insert(at, Bucket{rb.start_ms, rb.ok, rb.failed});
      }
    }
  }
}

namespace routing_stats {

void save(Database& db, const RoutingBucket& b) {
  Stmt(db,
       "INSERT INTO routing_stats(method, channel, bucket_ms, ok, failed) VALUES(?,?,?,?,?)"
       " ON CONFLICT(method, channel, bucket_ms) DO UPDATE SET ok = excluded.ok, failed = excluded.failed")
      .bind(1, b.method)
      .bind(2, b.channel)
      .bind(3, b.start_ms)
      .bind(4, std::int64_t{b.ok})
      .bind(5, std::int64_t{b.failed})
      .step();
}

std::vector<RoutingBucket> load(sqlite3* db, TimePoint since) {
  std::vector<RoutingBucket> out;
  Stmt st(db, "SELECT method, channel, bucket_ms, ok, failed FROM routing_stats WHERE bucket_ms >= ? ORDER BY bucket_ms");
  st.bind(1, ms_of(since));
  while (st.step()) out.push_back({st.text(0), st.text(1), st.i64(2), static_cast<int>(st.i64(3)), static_cast<int>(st.i64(4))});
  return out;
}

void prune(Database& db, TimePoint before) { Stmt(db, "DELETE FROM routing_stats WHERE bucket_ms < ?").bind(1, ms_of(before)).step(); }

}  // namespace routing_stats

}  // namespace pilecore::core
