#include "connector_fsm.hpp"

#include <fmt/format.h>

namespace pilecore::core {

using S = ConnectorStatus;
using E = ConnectorEvent;

std::string_view to_string(ConnectorEvent e) {
  switch (e) {
    case E::plugged: return "plugged";
    case E::unplugged: return "unplugged";
    case E::ev_ready: return "ev_ready";
    case E::ev_paused: return "ev_paused";
    case E::ev_full: return "ev_full";
    case E::fault: return "fault";
    case E::fault_cleared: return "fault_cleared";
    case E::authorized_start: return "authorized_start";
    case E::user_stop: return "user_stop";
    case E::remote_stop: return "remote_stop";
    case E::funds_exhausted: return "funds_exhausted";
    case E::evse_suspend: return "evse_suspend";
    case E::evse_resume: return "evse_resume";
    case E::reserve: return "reserve";
    case E::reservation_ended: return "reservation_ended";
    case E::set_unavailable: return "set_unavailable";
    case E::set_available: return "set_available";
  }
  return "unknown";
}

bool ConnectorFsm::in_session(ConnectorStatus s) {
  return s == S::charging || s == S::suspended_ev || s == S::suspended_evse;
}

namespace {

constexpr bool is_stop(E e) { return e == E::user_stop || e == E::remote_stop || e == E::funds_exhausted; }

/// The transition table. `nullopt` = refused. Statuses follow OCPP 1.6's allowed transitions
/// (../shared/DOMAIN.md section 2); where OCPP leaves a choice, the comment says which we took.
std::optional<S> next(S s, E e, bool plugged, S before_fault) {
  if (e == E::fault) return s == S::faulted ? std::nullopt : std::optional<S>(S::faulted);  // from any state
  switch (s) {
    case S::available:
      if (e == E::plugged) return S::preparing;
      if (e == E::reserve) return S::reserved;
      if (e == E::set_unavailable) return S::unavailable;
      // A start authorised before the vehicle is plugged in (app or remote start) waits in
      // Preparing for the plug.
      if (e == E::authorized_start) return S::preparing;
      return std::nullopt;
    case S::preparing:
      if (e == E::unplugged) return S::available;
      if (e == E::authorized_start) return plugged ? std::optional<S>(S::charging) : std::nullopt;
      if (e == E::ev_ready || e == E::ev_paused || e == E::plugged) return S::preparing;  // vehicle handshake before authorisation
      if (is_stop(e)) return plugged ? S::finishing : S::available;  // cancelled before charging
      if (e == E::set_unavailable) return S::unavailable;
      return std::nullopt;
    case S::charging:
      if (e == E::ev_paused) return S::suspended_ev;
      if (e == E::evse_suspend) return S::suspended_evse;
      if (e == E::ev_ready) return S::charging;
      if (e == E::ev_full || is_stop(e)) return S::finishing;
      if (e == E::unplugged) return S::available;  // forced stop: the vehicle left
      if (e == E::set_unavailable) return S::unavailable;
      return std::nullopt;
    case S::suspended_ev:
      if (e == E::ev_ready) return S::charging;
      if (e == E::ev_paused) return S::suspended_ev;
      if (e == E::evse_suspend) return S::suspended_evse;
      if (e == E::ev_full || is_stop(e)) return S::finishing;
      if (e == E::unplugged) return S::available;
      if (e == E::set_unavailable) return S::unavailable;
      return std::nullopt;
    case S::suspended_evse:
      if (e == E::evse_resume) return S::charging;
      if (e == E::evse_suspend) return S::suspended_evse;
      if (e == E::ev_paused) return S::suspended_evse;  // the pile's hold outranks the vehicle's pause
      if (e == E::ev_ready) return S::suspended_evse;
      if (e == E::ev_full || is_stop(e)) return S::finishing;
      if (e == E::unplugged) return S::available;
      if (e == E::set_unavailable) return S::unavailable;
      return std::nullopt;
    case S::finishing:
      if (e == E::unplugged) return S::available;
      if (e == E::authorized_start) return S::preparing;  // a new session without unplugging
      if (e == E::ev_paused || e == E::ev_full || e == E::ev_ready) return S::finishing;
      if (e == E::set_unavailable) return S::unavailable;
      return std::nullopt;
    case S::reserved:
      if (e == E::plugged) return S::preparing;
      if (e == E::reservation_ended) return S::available;
      if (e == E::set_unavailable) return S::unavailable;
      return std::nullopt;
    case S::unavailable:
      if (e == E::set_available) return plugged ? S::preparing : S::available;
      if (e == E::plugged || e == E::unplugged) return S::unavailable;
      return std::nullopt;
    case S::faulted:
      if (e == E::plugged || e == E::unplugged) return S::faulted;
      if (e == E::fault_cleared) {
        // Back to the status before the fault (OCPP I1-I8), except that a session cannot
        // resume: the fault stopped it, so a vehicle still plugged in is Finishing.
        if (before_fault == S::unavailable) return S::unavailable;
        if (before_fault == S::reserved && !plugged) return S::reserved;
        if (!plugged) return S::available;
        return before_fault == S::preparing ? S::preparing : S::finishing;
      }
      return std::nullopt;
  }
  return std::nullopt;
}

}  // namespace

Transition ConnectorFsm::check(ConnectorEvent event) const {
  bool plugged = plugged_;
  if (event == E::plugged) plugged = true;
  if (event == E::unplugged) plugged = false;
  if (auto to = next(status_, event, plugged, before_fault_)) return {true, *to, {}};
  return {false, status_, fmt::format("'{}' is not allowed in {}", to_string(event), to_string(status_))};
}

Transition ConnectorFsm::apply(ConnectorEvent event) {
  Transition t = check(event);
  if (!t.allowed) return t;
  if (event == E::plugged) plugged_ = true;
  if (event == E::unplugged) plugged_ = false;
  if (t.to == S::faulted && status_ != S::faulted) before_fault_ = status_;
  status_ = t.to;
  return t;
}

}  // namespace pilecore::core
