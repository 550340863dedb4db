// The payment router: which channel (acquirer) of a payment method takes a payment.
//
// Each method lists its channels with their fee rates (`payment.channels` in the site file, or
// what the plugin declares in its capabilities). The router measures each channel's success rate
// live, over a sliding window of attempts, and orders the channels by the configured rule. The
// default is the seed's: eligible are the channels with fee_rate < 0.6% and success_rate > 99%
// (measured over at least `min_attempts` in the window); among them the user's preferred channel
// comes first, then the lowest fee. The channels that are not eligible follow, the most reliable
// first, so a failover still has somewhere to go when every channel is degraded.
//
// A channel with too few attempts in the window cannot show that it is reliable, and would never
// be chosen to show it: one payment in `probe_every` goes first to the least-tried of them (a
// probe), so a channel that recovered from an outage comes back.
//
// What counts: an attempt the channel answered (approved or declined: a decline is the payer's
// answer) is a success; an error, an unreachable acquirer or a timeout is a failure and fails over
// to the next channel in the order, within the method's deadline. Every decision keeps its
// reasons, for the operation row and the receipt.
//
// Pure logic on the time it is given; persistence of the counts is below (routing_stats).
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pilecore/clock.hpp"
#include "storage.hpp"

namespace pilecore::core {

struct ChannelSpec {
  std::string name;
  std::uint32_t fee_ppm = 0;  ///< fee in parts per million of the amount: 0.6% = 6000
};

enum class RouteOrder { preferred, lowest_fee, highest_success };
std::string_view to_string(RouteOrder o);
std::optional<RouteOrder> route_order_from(std::string_view s);

struct RoutingRule {
  std::uint32_t max_fee_ppm = 6000;         ///< eligible: fee strictly below (the seed's "fee < 0.6%")
  std::uint32_t min_success_ppm = 990'000;  ///< eligible: success rate strictly above (the seed's "> 99%")
  std::vector<RouteOrder> order{RouteOrder::preferred, RouteOrder::lowest_fee};
  Duration window = std::chrono::hours(1);  ///< the sliding window success rates are measured over
  int min_attempts = 20;                    ///< fewer in the window: the rate is not known yet
  int probe_every = 50;                     ///< one payment in this many probes an under-sampled channel (0: never)
  Duration channel_timeout = std::chrono::seconds(10);  ///< a channel silent this long fails over (within the method's deadline)
};

/// One channel as the router saw it when it decided.
struct ChannelView {
  std::string name;
  std::uint32_t fee_ppm = 0;
  int attempts = 0;  ///< in the window
  int failures = 0;
  std::optional<std::uint32_t> success_ppm;  ///< none below min_attempts
  bool eligible = false;
  std::string why;  ///< "fee 0.38% < 0.60%, success 99.62% > 99.00%", "success 97.10% <= 99.00%", "12 attempts in the window (< 20)"
};

struct RoutingDecision {
  std::string method;
  std::vector<std::string> order;  ///< the channels to try, first to last (the rest are the failover)
  std::string reason;              ///< why the first one
  std::vector<ChannelView> channels;
  bool probe = false;

  [[nodiscard]] bool empty() const noexcept { return order.empty(); }
  /// One line for the operation row and the receipt.
  [[nodiscard]] std::string summary() const;
};

/// A window bucket of one channel: the unit the counts are persisted in.
struct RoutingBucket {
  std::string method;
  std::string channel;
  std::int64_t start_ms = 0;
  int ok = 0;
  int failed = 0;
};

class Router {
 public:
  Router(RoutingRule rule, std::map<std::string, std::vector<ChannelSpec>> channels);

  /// The order to try `method`'s channels in for one payment. Empty when it has no channels
  /// (the method chooses its own).
  RoutingDecision choose(std::string_view method, std::string_view preferred, TimePoint now);
  /// The outcome of one attempt on a channel: answered (ok) or not (error, timeout). Returns the
  /// bucket it went into, to be persisted.
  RoutingBucket record(std::string_view method, std::string_view channel, bool ok, TimePoint now);
  /// The counts of one channel now (for status).
  [[nodiscard]] std::vector<ChannelView> channels(std::string_view method, TimePoint now) const;
  /// Counts read back at start.
  void restore(const std::vector<RoutingBucket>& buckets);

  [[nodiscard]] const RoutingRule& rule() const noexcept { return rule_; }
  [[nodiscard]] bool routes(std::string_view method) const;

 private:
  struct Bucket {
    std::int64_t start_ms = 0;
    int ok = 0;
    int failed = 0;
  };
  struct Channel {
    ChannelSpec spec;
    std::vector<Bucket> buckets;  ///< oldest first, within the window
    TimePoint last_tried{};
  };
  struct Method {
    std::vector<Channel> channels;
    std::uint64_t payments = 0;
  };

  [[nodiscard]] std::int64_t bucket_ms() const;
  [[nodiscard]] ChannelView view(const Channel& c, TimePoint now) const;
  void prune(Channel& c, TimePoint now) const;

  RoutingRule rule_;
  std::map<std::string, Method, std::less<>> methods_;
};

/// The `routing_stats` table: one row per method, channel and window bucket.
namespace routing_stats {
/// Writes the bucket's counts (inside a StoreWorker work).
void save(Database& db, const RoutingBucket& b);
/// The buckets newer than `since`.
std::vector<RoutingBucket> load(sqlite3* db, TimePoint since);
/// Drops buckets older than `before`.
void prune(Database& db, TimePoint before);
}  // namespace routing_stats

}  // namespace pilecore::core
