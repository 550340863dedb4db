// pilecore plugin SDK: the services the core gives each plugin instance.
//
// Threading. The core runs one event loop; its state lives on one strand. The rules:
//  - Every call the core makes into a plugin (constructor, start, stop, every interface method)
//    and every callback it runs for a plugin (post, schedule, the sinks and receivers a plugin
//    is given) happens on that strand, one at a time. So a plugin needs no lock for state that
//    only the strand touches.
//  - Never block the strand. A plugin with blocking or asynchronous I/O (serial, libmodbus,
//    libnfc, HTTPS, MQTT) runs it on a thread it owns, started in start() and joined in stop(),
//    and hands each result back with post(). No Boost type crosses the plugin boundary: the
//    core's event loop is not the plugin's to run I/O on.
//  - From any thread: post(), log(), clock(), config(), instance_name(), connector().
//  - Only on the strand: schedule(), cancel(), publish(), raise(), report_state(), state_dir(),
//    present(), upload(), and every callback the core hands the plugin (a link's `done`, a risk rule's answer, ...).
//    From a driver thread, post() a lambda that makes the call.
//  - A callback the core passes to a plugin (e.g. link::Link::send's `done`) is called exactly
//    once, on the strand, either before the call returns (synchronously) or later. Never twice,
//    never not at all: where a deadline applies the core enforces it and ignores a late answer,
//    but the plugin still answers. Each SDK call that takes a callback says so.
//  - An exception that escapes a callback is caught by the host: the instance is marked failed,
//    its connector or link goes to a safe state and the daemon keeps running.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string_view>

#include "pilecore/clock.hpp"
#include "pilecore/config.hpp"
#include "pilecore/events.hpp"
#include "pilecore/identification.hpp"
#include "pilecore/log.hpp"
#include "pilecore/uplink.hpp"

namespace pilecore {
inline namespace v2 {

class Host {
 public:
  virtual ~Host() = default;

  /// The instance's name in the site file (unique per site).
  [[nodiscard]] virtual std::string_view instance_name() const noexcept = 0;
  /// The connector this instance serves, when the site file binds it to one.
  [[nodiscard]] virtual std::optional<std::uint32_t> connector() const noexcept = 0;
  /// A logger whose lines are tagged [kind:plugin:instance]. Any thread.
  [[nodiscard]] virtual Logger& log() noexcept = 0;
  /// The host clock; never read the system clock directly. Any thread.
  [[nodiscard]] virtual const Clock& clock() const noexcept = 0;
  /// This instance's validated configuration, defaults filled in. Immutable: any thread.
  [[nodiscard]] virtual const ConfigValues& config() const noexcept = 0;
  /// A directory the instance may write to (under the daemon's state directory); created on
  /// first call. Strand only (call it in the constructor or start() and keep the path).
  [[nodiscard]] virtual std::string_view state_dir() noexcept = 0;

  /// Runs `fn` on the core's strand, later (never inside this call). Safe from any thread: the
  /// one way a driver thread hands results to the core. `fn` runs at most once, and not at all
  /// once the instance has stopped, so it may capture `this`.
  virtual void post(std::function<void()> fn) noexcept = 0;
  /// Runs `fn` once on the core's strand after `delay` of host-clock time. Strand only. Returns
  /// 0 when the instance is stopping and the timer was not set.
  virtual TimerId schedule(Duration delay, std::function<void()> fn) noexcept = 0;
  /// Cancels a timer; harmless when it has already fired. Strand only.
  virtual void cancel(TimerId id) noexcept = 0;

  /// Publishes a measurement. Strand only (post() from a driver thread).
  virtual void publish(const Sample& sample) noexcept = 0;
  /// Raises or clears an alarm. Strand only.
  virtual void raise(const Alarm& alarm) noexcept = 0;
  /// Reports the instance's health in a word ("up", "down", "degraded") and a detail. Strand
  /// only.
  virtual void report_state(std::string_view state, std::string_view detail) noexcept = 0;
  /// Presents a token (a card at the reader, a recognised face) to the core, which sends it to
  /// the payment method the site binds its type to and starts authentication on its connector.
  /// Call on the core's strand.
  virtual void present(const identification::Token& token) noexcept = 0;

  /// API 2.4. Hands the core one record for the operator's back end (uplink.hpp). Strand only.
  ///  - The core writes it durably into its outbox, class transaction, under `record.key`,
  ///    and the outbox sends it until the back end acknowledges that key (docs/protocol.md
  ///    sections 3.2 and 4): across outages and restarts, never dropped.
  ///  - Idempotent on the key: a key already waiting is not written twice (the first body stays,
  ///    a second upload only waits for the same acknowledgement); a key the back end has already
  ///    acknowledged answers ok at once and is not sent again.
  ///  - `done` is called once, on the strand, never inside this call: ok when the back end has
  ///    acknowledged the key; otherwise a refusal, and then nothing was written:
  ///    `invalid_argument` (the record breaks a rule of uplink.hpp; retrying it will not help),
  ///    `busy` (the outbox is full of money records the back end has not acknowledged yet),
  ///    `unavailable` (this pile has no link to a back end, or its database failed). Upload
  ///    a refused record again later: its state change must not be forgotten.
  ///  - If the instance stops before the acknowledgement, `done` is not called (as for post());
  ///    the record stays in the outbox and still goes out. Keep your own "not yet acknowledged"
  ///    mark and upload those records again at the next start(): that is how an instance learns
  ///    of an acknowledgement that came while it was not running.
  ///  - In an isolated instance the call and its answer cross the socket; the same rules hold.
  virtual void upload(const UplinkRecord& record, UploadCallback done) noexcept = 0;
};

}  // namespace v2
}  // namespace pilecore
