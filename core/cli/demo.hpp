// `pilectl demo`: a simulated day at the pile, end to end, through the real daemon.
//
// It takes the simulated site (configs/sim-site.yaml, or the installed copy), adds the day's
// scenario (which vehicles come when, one fault, the ledger's identity) and writes the result to
// <state dir>/site.yaml; makes a development key; starts pilecored under a fast clock; plays the
// drivers through the four payment methods' production plugins against pilecore-sim-payments
// (member cards and e-CNY wallets held to an emulated PN532 reader, which starts the session by
// proximity; a face at the camera; credit chosen in the app; a declined card; a risk step-up
// answered with the card's PIN); cuts the power once (SIGKILL) while a session runs and restarts
// the daemon, which recovers that session; refunds part of the faulted session; waits through
// the night for the credit bill's automatic debit; then stops the daemon, prints the itemised
// receipts, verifies the ledger and checks that the day happened as scripted. The pile's records
// go up to the reference back end (tools/backend) through a Mosquitto broker on loopback, over
// link-5g and a simulated modem; the back end acknowledges them, anchors the ledger and sends two
// signed remote commands; the demo checks that every ledger record and money operation arrived
// exactly once. Everything it prints comes from the daemon's event stream, its replies and its
// database, and from the back end's.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

namespace pilecore::core {

struct DemoOptions {
  std::filesystem::path site;       ///< empty: data_dir()/sim-site.yaml
  std::filesystem::path state_dir;  ///< empty: a fresh directory under $TMPDIR (kept, and printed)
  std::filesystem::path pilecored;  ///< empty: the pilecored next to this executable
  std::vector<std::filesystem::path> plugin_dirs;  ///< empty: pilecored's default
  /// empty: pilecore-sim-payments next to this executable, or in <libexecdir>/pilecore
  std::filesystem::path sim_payments;
  /// How the pile's records reach the operator: "mqtt" (link-5g over the simulated modem to a
  /// Mosquitto broker on loopback, answered by the reference back end, tools/backend),
  /// "loopback" (sim-link, inside pilecored, plays the back end), or "auto": mqtt when Mosquitto
  /// and the reference back end can run here, else loopback, saying why.
  std::string uplink = "auto";
  /// empty: pilecore-backend next to this executable, or in <libexecdir>/pilecore
  std::filesystem::path backend;
  double speed = 7200;              ///< simulated seconds per wall second
};

/// Runs the demo; 0 when the day happened as scripted and the ledger verifies, 1 otherwise
/// (each failed check named on `err`), 2 when it could not run (site, keys, daemon).
int run_demo(const DemoOptions& options, std::ostream& out, std::ostream& err);

/// What an event of the control socket's watch stream says, in words.
std::string describe_event(const nlohmann::json& event);

/// One line of text for an event of the control socket's watch stream, times in `time_zone`
/// (an IANA name; empty = UTC).
std::string format_event_text(const nlohmann::json& event, const std::string& time_zone);

}  // namespace pilecore::core
