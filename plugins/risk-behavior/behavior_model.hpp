// The per-user behaviour model of risk-behavior (docs/risk.md, "The behaviour model").
//
// Robust statistics over each user's last `kWindow` sessions, one feature at a time: the median
// and the median absolute deviation (MAD) of the amount (log), the site-local time of day
// (circular), the interval since the previous session (log), and the share of each connector.
// A new payment gets a robust z-score per numeric feature; their squares add up to a score that
// is compared with the chi-square quantile for the chosen coverage (95%) and the number of
// features judged. A connector the user (nearly) never uses counts as a feature at its boundary.
// No training, no hidden state: each user's model is a few dozen numbers one can print.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pilecore::behavior {

inline constexpr std::size_t kWindow = 32;

/// One past session, as the model learns it.
struct Observation {
  std::int64_t started_ms = 0;  ///< UTC
  std::int32_t utc_offset_s = 0;
  std::int64_t amount_fen = 0;  ///< 0: unknown (not learnt)
  std::uint32_t connector = 0;
};

class UserModel {
 public:
  void add(const Observation& o);
  [[nodiscard]] std::int64_t sessions() const noexcept { return sessions_; }
  [[nodiscard]] std::int64_t last_start_ms() const noexcept { return last_start_ms_; }

  [[nodiscard]] std::string encode() const;
  /// Throws std::invalid_argument on a blob that is not one encode() made.
  [[nodiscard]] static UserModel decode(std::string_view blob);

  [[nodiscard]] const std::vector<float>& log_amounts() const noexcept { return log_amount_; }
  [[nodiscard]] const std::vector<float>& minutes() const noexcept { return minute_; }
  [[nodiscard]] const std::vector<float>& log_intervals() const noexcept { return log_interval_; }
  [[nodiscard]] const std::vector<std::uint32_t>& connectors() const noexcept { return connector_; }

 private:
  std::int64_t sessions_ = 0;
  std::int64_t last_start_ms_ = 0;
  std::vector<float> log_amount_, minute_, log_interval_;
  std::vector<std::uint32_t> connector_;
};

/// What is judged: a payment about to be authorised (time, connector) or captured (amount).
struct Query {
  std::int64_t time_ms = 0;
  std::int32_t utc_offset_s = 0;
  std::optional<std::uint32_t> connector;
  std::optional<std::int64_t> amount_fen;
  bool judge_time = true;  ///< time of day and interval since the last session
};

struct Judgement {
  double score = 0;      ///< sum of squared robust z-scores
  int features = 0;      ///< how many were judged
  double threshold = 0;  ///< chi-square quantile for `features` at the coverage
  bool outside = false;  ///< score > threshold
  std::string detail;    ///< each feature's z, for the reason
};

/// The chi-square quantile with `dof` degrees of freedom at probability `p` (0 < p < 1).
[[nodiscard]] double chi_square_quantile(int dof, double p);

[[nodiscard]] Judgement judge(const UserModel& m, const Query& q, double coverage);

/// The feature values the model keeps (exposed for the tests and the benchmark).
[[nodiscard]] float log_amount(std::int64_t fen);
[[nodiscard]] float minute_of_day(std::int64_t utc_ms, std::int32_t utc_offset_s);

}  // namespace pilecore::behavior
