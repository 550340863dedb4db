// The site file's sections for charging and billing: tariffs, payment, charging, and the
// connectors' power stage and meter. Declared as schema Fields (validated with everything else)
// plus the checks a schema cannot express (prices within the declared decimals, periods
// covering the day, references to instances of the right kind).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "diagnostics.hpp"
#include "schema.hpp"
#include "tariff.hpp"

namespace pilecore::core {

struct InstanceSpec;
struct ConnectorConfig;

/// One channel (acquirer) of a payment method: `payment.channels`.
struct ChannelSetting {
  std::string method;  ///< the payment instance
  std::string name;
  std::uint32_t fee_ppm = 0;  ///< parts per million: 0.38% = 3800
};

/// The payment router's rule: `payment.routing` (core/payment/router.hpp).
struct RoutingSettings {
  std::uint32_t max_fee_ppm = 6000;
  std::uint32_t min_success_ppm = 990'000;
  std::vector<std::string> order{"preferred", "lowest_fee"};
  std::int64_t window_s = 3600;
  std::int64_t min_attempts = 20;
  std::int64_t probe_every = 50;
  std::int64_t channel_timeout_ms = 10000;
};

/// What a risk step-up may ask of the driver: `payment.step_up` (docs/risk.md, step-up).
struct StepUpSettings {
  /// Offered in this order when they can be: pin (the method verifies it: API 2.3),
  /// app_confirmation (the back end's command or a control-socket answer), other_method.
  std::vector<std::string> factors{"pin", "app_confirmation", "other_method"};
  std::int64_t timeout_s = 120;  ///< not completed by then: the session ends unstarted
};

struct PaymentSettings {
  std::string default_method;      // payment instance used by autostart and `pilectl session start` without --method
  std::int64_t preauth_fen = 20000;  // the hold of a `full` session (docs/payments.md, charging modes)
  std::int64_t max_hold_fen = 100000;       // no mode holds more: an `amount` above it is refused
  std::int64_t increment_step_fen = 0;  // top-up asked of a method with incremental authorisation; 0: none (the default)
  std::map<std::string, std::string> token_methods;  // payment.tokens: token type -> payment instance
  bool autostart = false;          // start a session with default_method when a vehicle plugs in
  std::int64_t risk_timeout_ms = 2000;        // risk rules not answered by then count as step_up
  std::int64_t authorize_timeout_ms = 30000;  // the payment method's deadline
  std::vector<ChannelSetting> channels;       // payment.channels
  RoutingSettings routing;                    // payment.routing
  StepUpSettings step_up;                     // payment.step_up
};

/// What a billing meter's energy_import reading must satisfy (core/charging/meter_guard.hpp).
struct MeterPlausibility {
  /// Above the lifetime energy of any connector (1 MW for 100 years is 8.8e11 Wh), and below
  /// 2^53, so the double a plugin publishes holds every Wh exactly and no int64 sum overflows.
  std::int64_t max_wh = 1'000'000'000'000;
  std::int64_t tolerance_wh = 20;   ///< over the max-power allowance: register steps, float32 rounding
  std::int64_t tolerance_pct = 10;  ///< of the max-power allowance: meter class, clock skew between polls
  std::int64_t fault_after = 3;     ///< consecutive implausible readings before the connector faults
  std::int64_t stall_power_w = 1000;  ///< power stage power above which the meter must advance
  std::int64_t stall_ms = 120'000;    ///< ...within this long
};

struct ChargingSettings {
  std::int64_t checkpoint_interval_ms = 60'000;
  std::int64_t checkpoint_wh = 100;
  std::int64_t meter_timeout_ms = 10'000;
  std::int64_t setpoint_interval_ms = 10'000;
  std::optional<std::int64_t> site_max_power_w;
  std::int64_t fallback_power_w = 3500;  // setpoint when the strategy gives none and none came before
  std::string ambient_sensor;            // empty: any instance not bound to a connector publishing "temperature"
  std::int64_t ambient_max_age_ms = 600'000;
  MeterPlausibility meter;
  std::string default_mode = "full";     // a session_start without a mode: full, amount:<fen>, energy:<Wh>, time:<minutes>
  std::int64_t max_energy_wh = 200'000;  // most an `energy` session may ask for
  std::int64_t max_time_s = 86'400;      // longest a `time` session may ask for
  /// A planned stop (SIGTERM: systemctl stop/restart, a package upgrade): suspend the sessions in
  /// progress for the next start to resume (true), or stop and bill them (false).
  bool suspend_on_stop = true;
  std::int64_t resume_within_s = 300;      // a suspended session older than this is closed at the start, not resumed
  std::int64_t resume_plug_wait_s = 120;   // a resumed session whose vehicle is not plugged in by then stops
};

struct SessionConfig {
  std::optional<Tariff> tariff;  // no tariffs section: sessions cannot start
  PaymentSettings payment;
  ChargingSettings charging;
};

Field tariffs_field();
Field payment_field();
Field charging_field();

/// The tariff of a `tariffs` section already valid against tariffs_field(): the semantic checks
/// (prices with more decimals than declared, a period without prices, days and dates without a
/// plan, gaps and overlaps) reported into `diags`; nullopt when there are any.
std::optional<Tariff> parse_tariffs(const YAML::Node& tariffs, const std::string& time_zone, Diagnostics& diags);

/// Builds the SessionConfig from a root already validated against the schema; reports semantic
/// problems into `diags`. Fills each connector's power/meter instance when not given.
SessionConfig parse_session_config(const YAML::Node& root, const std::string& time_zone, std::vector<ConnectorConfig>& connectors,
                                   const std::vector<InstanceSpec>& instances, Diagnostics& diags);

}  // namespace pilecore::core
