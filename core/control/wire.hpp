// The control socket's JSON: one to_json per type the core answers or announces with. This is
// the only place the wire's field names are written (docs/integrator-guide.md documents them;
// pilectl and the tests read them), so a domain type can change shape without the wire noticing.
#pragma once

#include <nlohmann/json.hpp>

#include "runtime_events.hpp"
#include "session_results.hpp"

namespace pilecore::core {

nlohmann::json to_json(const StartOutcome& o);
nlohmann::json to_json(const StopOutcome& o);
nlohmann::json to_json(const AnswerOutcome& o);
nlohmann::json to_json(const RefundOutcome& o);
nlohmann::json to_json(const StatusSnapshot& s);
nlohmann::json to_json(const Receipt& r);
/// The session's record: the ledger signs exactly this, and a stop's receipt is it plus the capture.
nlohmann::json to_json(const SessionRecord& r);
nlohmann::json to_json(const CloseReceipt& r);
/// An event, without its time (the daemon stamps it).
nlohmann::json to_json(const Event& e);
nlohmann::json to_json(const RuntimeEvent& e);
/// `status`: the engine's snapshot, the instances, the control socket's counters, the active
/// alarms (each as its event without "event", with "since") and the state directory's space.
nlohmann::json to_json(const DaemonStatus& s);

}  // namespace pilecore::core
