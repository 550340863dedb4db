#include "behavior_model.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>
#include <stdexcept>

namespace pilecore::behavior {

namespace {

constexpr double kMinutesPerDay = 1440;
// Scale floors: a user who always pays the same, or always comes at 07:00 sharp, must not make
// a 1-minute or a 1-fen difference an anomaly.
constexpr double kFloorLogAmount = 0.15;   // about 15%
constexpr double kFloorMinutes = 30;       // half an hour
constexpr double kFloorLogInterval = 0.3;  // about 35%
// A connector used in less than this share of the window is outside the user's habits.
constexpr double kRareConnectorShare = 0.05;

template <class T>
void push(std::vector<T>& v, T x) {
  if (v.size() == kWindow) v.erase(v.begin());
  v.push_back(x);
}

double median(std::vector<double> v) {
  const std::size_t n = v.size();
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n / 2), v.end());
  const double hi = v[n / 2];
  if (n % 2) return hi;
  return (hi + *std::max_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n / 2))) / 2;
}

struct Robust {
  double centre = 0;
  double scale = 1;
};

Robust robust(const std::vector<double>& v, double floor) {
  const double m = median(v);
  std::vector<double> dev(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) dev[i] = std::abs(v[i] - m);
  const double n = static_cast<double>(v.size());
  // 1.4826 MAD estimates the standard deviation of a normal distribution; n / (n - 0.8) undoes
  // its bias in small samples (Croux & Rousseeuw 1992); sqrt(1 + 1/n) widens it to a prediction
  // for a new session, whose median is itself only estimated.
  return {m, std::max(1.4826 * median(std::move(dev)) * n / (n - 0.8) * std::sqrt(1 + 1 / n), floor)};
}

/// A statistic that follows Student's t with `dof` degrees of freedom, as the normal z of the
/// same tail probability (Wallace 1959: (8v+1)/(8v+3) sqrt(v ln(1 + t^2/v))): ten sessions are a
/// small sample, and their tails are heavier than a normal's.
double t_as_z(double t, double dof) {
  const double z = (8 * dof + 1) / (8 * dof + 3) * std::sqrt(dof * std::log1p(t * t / dof));
  return t < 0 ? -z : z;
}

double wrap_minutes(double d) {
  d = std::fmod(d, kMinutesPerDay);
  if (d < -kMinutesPerDay / 2) d += kMinutesPerDay;
  if (d >= kMinutesPerDay / 2) d -= kMinutesPerDay;
  return d;
}

/// Regularised lower incomplete gamma P(a, x), by its series (x small) or continued fraction.
double gamma_p(double a, double x) {
  if (x <= 0) return 0;
  const double lg = std::lgamma(a);
  if (x < a + 1) {
    double sum = 1 / a, term = sum;
    for (int n = 1; n < 500; ++n) {
      term *= x / (a + n);
      sum += term;
      if (std::abs(term) < std::abs(sum) * 1e-14) break;
    }
    return sum * std::exp(-x + a * std::log(x) - lg);
  }
  double b = x + 1 - a, c = 1e300, d = 1 / b, h = d;
  for (int i = 1; i < 500; ++i) {
    const double an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (std::abs(d) < 1e-300) d = 1e-300;
    c = b + an / c;
    if (std::abs(c) < 1e-300) c = 1e-300;
    d = 1 / d;
    const double del = d * c;
    h *= del;
    if (std::abs(del - 1) < 1e-14) break;
  }
  return 1 - std::exp(-x + a * std::log(x) - lg) * h;
}

}  // namespace

float log_amount(std::int64_t fen) { return static_cast<float>(std::log(static_cast<double>(std::max<std::int64_t>(fen, 1)))); }

float minute_of_day(std::int64_t utc_ms, std::int32_t utc_offset_s) {
  const std::int64_t local_s = utc_ms / 1000 + utc_offset_s;
  const std::int64_t day_s = ((local_s % 86400) + 86400) % 86400;
  return static_cast<float>(static_cast<double>(day_s) / 60.0);
}

void UserModel::add(const Observation& o) {
  if (o.amount_fen > 0) push(log_amount_, log_amount(o.amount_fen));
  push(minute_, minute_of_day(o.started_ms, o.utc_offset_s));
  if (sessions_ > 0 && o.started_ms > last_start_ms_) {
    const double hours = static_cast<double>(o.started_ms - last_start_ms_) / 3.6e6;
    push(log_interval_, static_cast<float>(std::log(std::max(hours, 1.0 / 60))));
  }
  push(connector_, o.connector);
  ++sessions_;
  last_start_ms_ = std::max(last_start_ms_, o.started_ms);
}

// Layout: "BM1", sessions (i64), last start (i64), then four arrays, each a count byte and its
// values (floats, or u32 connectors), native byte order (the file never leaves the pile).
std::string UserModel::encode() const {
  std::string out = "BM1";
  auto raw = [&out](const void* p, std::size_t n) { out.append(static_cast<const char*>(p), n); };
  raw(&sessions_, sizeof sessions_);
  raw(&last_start_ms_, sizeof last_start_ms_);
  for (const auto* v : {&log_amount_, &minute_, &log_interval_}) {
    out.push_back(static_cast<char>(v->size()));
    raw(v->data(), v->size() * sizeof(float));
  }
  out.push_back(static_cast<char>(connector_.size()));
  raw(connector_.data(), connector_.size() * sizeof(std::uint32_t));
  return out;
}

UserModel UserModel::decode(std::string_view blob) {
  UserModel m;
  std::size_t at = 0;
  auto take = [&](void* p, std::size_t n) {
    if (blob.size() - at < n) throw std::invalid_argument("a behaviour model cut short");
    std::memcpy(p, blob.data() + at, n);
    at += n;
  };
  if (blob.substr(0, 3) != "BM1") throw std::invalid_argument("not a behaviour model (no BM1 header)");
  at = 3;
  take(&m.sessions_, sizeof m.sessions_);
  take(&m.last_start_ms_, sizeof m.last_start_ms_);
  auto count = [&] {
    std::uint8_t n = 0;
    take(&n, 1);
    if (n > kWindow) throw std::invalid_argument("a behaviour model with a window larger than this version keeps");
    return n;
  };
  for (auto* v : {&m.log_amount_, &m.minute_, &m.log_interval_}) {
    v->resize(count());
    take(v->data(), v->size() * sizeof(float));
  }
  m.connector_.resize(count());
  take(m.connector_.data(), m.connector_.size() * sizeof(std::uint32_t));
  if (at != blob.size()) throw std::invalid_argument("a behaviour model with trailing bytes");
  return m;
}

double chi_square_quantile(int dof, double p) {
  const double a = dof / 2.0;
  double lo = 0, hi = 1;
  while (gamma_p(a, hi / 2) < p) hi *= 2;
  for (int i = 0; i < 100; ++i) {
    const double mid = (lo + hi) / 2;
    (gamma_p(a, mid / 2) < p ? lo : hi) = mid;
  }
  return (lo + hi) / 2;
}

Judgement judge(const UserModel& m, const Query& q, double coverage) {
  Judgement j;
  auto add = [&j](const char* name, double t, std::size_t n) {
    const double z = t_as_z(t, static_cast<double>(n - 1));
    j.score += z * z;
    ++j.features;
    j.detail += fmt::format("{}{} z={:.1f}", j.detail.empty() ? "" : ", ", name, z);
  };
  // A feature is judged only when the window holds enough of it to have a median and a spread.
  constexpr std::size_t kEnough = 3;
  if (q.amount_fen && *q.amount_fen > 0 && m.log_amounts().size() >= kEnough) {
    const std::vector<double> v(m.log_amounts().begin(), m.log_amounts().end());
    const Robust r = robust(v, kFloorLogAmount);
    add("amount", (log_amount(*q.amount_fen) - r.centre) / r.scale, v.size());
  }
  if (q.judge_time && m.minutes().size() >= kEnough) {
    // Circular: offsets from the window's mean direction, so 23:50 and 00:10 are 20 minutes apart.
    double s = 0, c = 0;
    for (float x : m.minutes()) {
      s += std::sin(x / kMinutesPerDay * 2 * std::numbers::pi);
      c += std::cos(x / kMinutesPerDay * 2 * std::numbers::pi);
    }
    const double ref = std::atan2(s, c) / (2 * std::numbers::pi) * kMinutesPerDay;
    std::vector<double> off;
    off.reserve(m.minutes().size());
    for (float x : m.minutes()) off.push_back(wrap_minutes(x - ref));
    const Robust r = robust(off, kFloorMinutes);
    add("time of day", wrap_minutes(wrap_minutes(minute_of_day(q.time_ms, q.utc_offset_s) - ref) - r.centre) / r.scale, off.size());
  }
  if (q.judge_time && m.log_intervals().size() >= kEnough && q.time_ms > m.last_start_ms()) {
    const std::vector<double> v(m.log_intervals().begin(), m.log_intervals().end());
    const Robust r = robust(v, kFloorLogInterval);
    const double hours = static_cast<double>(q.time_ms - m.last_start_ms()) / 3.6e6;
    add("interval", (std::log(std::max(hours, 1.0 / 60)) - r.centre) / r.scale, v.size());
  }
  if (q.connector && m.connectors().size() >= kEnough) {
    const auto same = std::count(m.connectors().begin(), m.connectors().end(), *q.connector);
    const double share = static_cast<double>(same) / static_cast<double>(m.connectors().size());
    // Outside the connectors that hold 95% of the user's sessions: a categorical feature at the
    // boundary of its interval (z = 1.96), so it tips the score only together with another.
    const double z = share < kRareConnectorShare ? 1.96 : 0;
    j.score += z * z;
    ++j.features;
    j.detail += fmt::format("{}connector {} share {:.0f}%", j.detail.empty() ? "" : ", ", *q.connector, share * 100);
  }
  if (j.features == 0) return j;
  // The quantile takes thousands of gamma-function steps: computed once per coverage (an
  // instance has one) and number of features.
  struct Cache {
    double coverage = -1;
    double quantile[5] = {};
  };
  static thread_local Cache cache;
  if (cache.coverage != coverage) {
    cache.coverage = coverage;
    for (int k = 1; k <= 4; ++k) cache.quantile[k] = chi_square_quantile(k, coverage);
  }
  j.threshold = cache.quantile[j.features];
  j.outside = j.score > j.threshold;
  return j;
}

}  // namespace pilecore::behavior
