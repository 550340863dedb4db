#include "remote_settings.hpp"

#include <charconv>
#include <string>
#include <string_view>

#include "statement.hpp"

namespace pilecore::core {
namespace {

std::optional<std::int64_t> number(std::string_view text) {
  std::int64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return v;
}

}  // namespace

RemoteSettings load_remote_settings(Database& db) {
  RemoteSettings s;
  for (Stmt q(db, "SELECT key, value FROM meta WHERE key LIKE 'remote.%'"); q.step();) {
    const std::string key = q.text(0), value = q.text(1);
    const auto v = number(value);
    if (!v) continue;  // not written by this code: ignored, as a missing row would be
    if (key == "remote.site_cap_w") {
      s.site_cap_w = *v;
    } else if (key.rfind("remote.cap_w.", 0) == 0) {
      if (const auto id = number(std::string_view(key).substr(13)); id && *id > 0) s.cap_w[static_cast<std::uint32_t>(*id)] = *v;
    } else if (key.rfind("remote.unavailable.", 0) == 0) {
      if (const auto id = number(std::string_view(key).substr(19)); id && *id > 0 && *v != 0) s.unavailable.insert(static_cast<std::uint32_t>(*id));
    }
  }
  return s;
}

void save_remote_settings(Database& db, const RemoteSettings& s) {
  Stmt(db, "DELETE FROM meta WHERE key LIKE 'remote.%'").step();
  const auto put = [&](const std::string& key, std::int64_t value) {
    Stmt(db, "INSERT INTO meta(key, value) VALUES(?, ?)").bind(1, key).bind(2, std::to_string(value)).step();
  };
  if (s.site_cap_w) put("remote.site_cap_w", *s.site_cap_w);
  for (const auto& [id, w] : s.cap_w) put("remote.cap_w." + std::to_string(id), w);
  for (const auto id : s.unavailable) put("remote.unavailable." + std::to_string(id), 1);
}

}  // namespace pilecore::core
