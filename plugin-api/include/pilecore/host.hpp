// pilecore plugin SDK: the services the core gives each plugin instance.
//
// Threading: the core runs one event loop. Every call the core makes into a plugin, and every
// callback it runs for a plugin (post, schedule), happens on that loop's strand, one at a time.
// A plugin with a blocking driver (serial, libmodbus, libnfc) runs it on its own thread and
// hands results back with post(); it never blocks the loop. An exception that escapes a
// callback is caught by the host: the instance is marked failed, its connector or link goes to
// a safe state and the daemon keeps running.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <cstdint>
#include <functional>
#include <optional>
#include <string_view>

#include "pilecore/clock.hpp"
#include "pilecore/config.hpp"
#include "pilecore/events.hpp"
#include "pilecore/identification.hpp"
#include "pilecore/log.hpp"

namespace pilecore {
inline namespace v1 {

class Host {
 public:
  virtual ~Host() = default;

  /// The instance's name in the site file (unique per site).
  [[nodiscard]] virtual std::string_view instance_name() const noexcept = 0;
  /// The connector this instance serves, when the site file binds it to one.
  [[nodiscard]] virtual std::optional<std::uint32_t> connector() const noexcept = 0;
  /// A logger whose lines are tagged [kind:plugin:instance].
  [[nodiscard]] virtual Logger& log() noexcept = 0;
  /// The host clock; never read the system clock directly.
  [[nodiscard]] virtual const Clock& clock() const noexcept = 0;
  /// This instance's validated configuration, defaults filled in.
  [[nodiscard]] virtual const ConfigValues& config() const noexcept = 0;
  /// A directory the instance may write to (under the daemon's state directory); created on
  /// first call.
  [[nodiscard]] virtual std::string_view state_dir() noexcept = 0;

  /// The core's executor (a strand), for plugins that do asynchronous I/O with Boost.Asio.
  /// Prefer post() and schedule(): they contain exceptions and attribute them to the plugin.
  [[nodiscard]] virtual boost::asio::any_io_executor executor() const noexcept = 0;
  /// Runs `fn` on the core's strand. Safe to call from any thread.
  virtual void post(std::function<void()> fn) noexcept = 0;
  /// Runs `fn` on the core's strand after `delay` of host-clock time. Returns 0 when the instance
  /// is stopping and the timer was not set.
  virtual TimerId schedule(Duration delay, std::function<void()> fn) noexcept = 0;
  /// Cancels a timer; harmless when it has already fired.
  virtual void cancel(TimerId id) noexcept = 0;

  /// Publishes a measurement. Call on the core's strand (use post() from a driver thread).
  virtual void publish(const Sample& sample) noexcept = 0;
  /// Raises or clears an alarm.
  virtual void raise(const Alarm& alarm) noexcept = 0;
  /// Reports the instance's health in a word ("up", "down", "degraded") and a detail.
  virtual void report_state(std::string_view state, std::string_view detail) noexcept = 0;
  /// Presents a token (a card at the reader, a recognised face) to the core, which sends it to
  /// the payment method the site binds its type to and starts authentication on its connector.
  /// Call on the core's strand.
  virtual void present(const identification::Token& token) noexcept = 0;
};

}  // namespace v1
}  // namespace pilecore
