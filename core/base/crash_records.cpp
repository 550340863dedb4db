#include "crash_records.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <stdexcept>

#include "clocks.hpp"

namespace pilecore::core {
namespace fs = std::filesystem;

CrashBook::CrashBook(fs::path file) : file_(std::move(file)) {
  std::ifstream in(file_, std::ios::binary);
  if (!in) return;
  std::ostringstream ss;
  ss << in.rdbuf();
  try {
    const auto j = nlohmann::json::parse(ss.str());
    for (const auto& [name, v] : j.at("instances").items()) {
      InstanceCrashes ic;
      ic.plugin = v.value("plugin", "");
      ic.quarantined = v.contains("quarantined");
      if (ic.quarantined) {
        ic.reason = v["quarantined"].value("reason", "");
        ic.since_ms = v["quarantined"].value("since_ms", std::int64_t{0});
      }
      for (const auto& c : v.value("crashes", nlohmann::json::array())) {
        ic.crashes.push_back({c.at("time_ms").get<std::int64_t>(), c.value("call", ""), c.value("kind", "crash"), c.value("signal", 0)});
      }
      entries_.emplace(name, std::move(ic));
    }
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("{}: not a crash record file ({}); remove it to forget every plugin crash and quarantine", file_.string(), e.what()));
  }
}

int CrashBook::record(const std::string& instance, const std::string& plugin, const CrashEntry& entry, const CrashPolicy& policy, TimePoint now) {
  auto& ic = entries_[instance];
  if (!plugin.empty()) ic.plugin = plugin;
  ic.crashes.push_back(entry);
  const std::int64_t oldest = (now - policy.window).time_since_epoch().count();
  std::erase_if(ic.crashes, [&](const CrashEntry& c) { return c.time_ms < oldest; });
  const int count = static_cast<int>(ic.crashes.size());
  if (!ic.quarantined && count >= policy.limit) {
    ic.quarantined = true;
    ic.since_ms = now.time_since_epoch().count();
    // The call the runtime records for a failure of an instance's own process.
    if (entry.call == "its isolated process") {
      // `isolate: true`: pilecored did not crash; the instance's own process did.
      ic.reason = fmt::format("quarantined: its isolated process failed {} time{} within {}, last by {}", count, count == 1 ? "" : "s",
                              describe_window(policy.window), entry.kind == "hang" ? "hanging" : "crashing");
    } else {
      ic.reason = fmt::format("quarantined: crashed pilecored {} time{} within {}, last during {} ({})", count, count == 1 ? "" : "s",
                              describe_window(policy.window), entry.call.empty() ? "an unnamed call" : entry.call,
                              entry.kind == "hang" ? "a hang ended by the watchdog" : "a crash");
    }
  }
  return count;
}

bool CrashBook::clear(const std::string& instance) { return entries_.erase(instance) > 0; }

bool CrashBook::quarantined(const std::string& instance) const {
  auto it = entries_.find(instance);
  return it != entries_.end() && it->second.quarantined;
}

void CrashBook::save() const {
  nlohmann::json inst = nlohmann::json::object();
  for (const auto& [name, ic] : entries_) {
    nlohmann::json crashes = nlohmann::json::array();
    for (const auto& c : ic.crashes) {
      crashes.push_back({{"time_ms", c.time_ms}, {"time", format_utc(TimePoint(Duration(c.time_ms)))}, {"call", c.call}, {"kind", c.kind}, {"signal", c.signal}});
    }
    nlohmann::json v = {{"plugin", ic.plugin}, {"crashes", crashes}};
    if (ic.quarantined) v["quarantined"] = {{"reason", ic.reason}, {"since_ms", ic.since_ms}, {"since", format_utc(TimePoint(Duration(ic.since_ms)))}};
    inst[name] = v;
  }
  const std::string text = nlohmann::json{{"instances", inst}}.dump(2) + "\n";
  const fs::path tmp = file_.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) throw std::runtime_error(fmt::format("cannot write {}", tmp.string()));
  }
  // pilectl may run as root on a file the daemon's user must rewrite later: give it to the
  // directory's owner, readable by nobody else.
  struct stat dir{};
  if (::stat(file_.parent_path().empty() ? "." : file_.parent_path().c_str(), &dir) == 0 && ::geteuid() == 0) {
    if (::chown(tmp.c_str(), dir.st_uid, dir.st_gid) != 0) {
      // Not fatal: root can still read it, and the daemon reports the error if it cannot.
    }
  }
  ::chmod(tmp.c_str(), 0640);
  std::error_code ec;
  fs::rename(tmp, file_, ec);
  if (ec) throw std::runtime_error(fmt::format("cannot replace {}: {}", file_.string(), ec.message()));
}

std::string describe_window(Duration window) {
  const auto s = std::chrono::duration_cast<std::chrono::seconds>(window).count();
  if (s % 3600 == 0) return fmt::format("{} h", s / 3600);
  if (s % 60 == 0) return fmt::format("{} min", s / 60);
  return fmt::format("{} s", s);
}

}  // namespace pilecore::core
