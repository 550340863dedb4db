#include "uplink_config.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>

#include "command_key.hpp"
#include "site_config.hpp"

namespace pilecore::core {

namespace {

using protocol::UplinkClass;

Field link_ref(std::string key, std::string description) {
  Field f = field(std::move(key), FieldType::instance_ref, std::move(description));
  f.ref_kind = "link";
  return f;
}

constexpr UplinkClass kClasses[] = {UplinkClass::control, UplinkClass::transaction, UplinkClass::status, UplinkClass::telemetry};

}  // namespace

Field links_schema() {
  std::vector<Field> routes;
  for (UplinkClass c : kClasses) {
    routes.push_back(with_fields(field(std::string(protocol::to_string(c)), FieldType::object, fmt::format("The links {} records go on", protocol::to_string(c))),
                                 {link_ref("primary", "The link tried first"), link_ref("fallback", "The link used when the primary is down, busy or too small for the record")}));
  }
  return with_fields(
      field("links", FieldType::object, "Which link carries each uplink class, and the outbox that keeps records until the back end acknowledges them"),
      {link_ref("cellular", "The 5G link instance: control and transaction records (default: the site's only link instance)"),
       link_ref("lorawan", "The LoRaWAN link instance, if any: status and telemetry records"),
       with_fields(field("routes", FieldType::object, "Per class, overrides of the default routing"), std::move(routes)),
       with_fields(field("outbox", FieldType::object, "The uplink outbox's bound and retries"),
                   {with_default(with_range(field("max_records", FieldType::integer, "Records kept at most; telemetry, then status, is dropped first"), 100, 10'000'000), "20000"),
                    with_default(with_range(field("max_bytes", FieldType::integer, "Payload bytes kept at most"), 65536, 1e12, "bytes"), "33554432"),
                    with_default(with_range(field("first_retry_s", FieldType::integer, "Wait for an acknowledgement before the first resend; doubles per resend"), 1, 86400, "s"), "15"),
                    with_default(with_range(field("max_retry_s", FieldType::integer, "Longest wait between resends"), 1, 86400, "s"), "600")}),
       with_default(with_range(field("device_id", FieldType::integer, "This pile's device id in every frame's header, assigned by the operator (docs/protocol.md section 1)"),
                               0, 4294967295.0),
                    "0"),
       with_default(with_range(field("heartbeat_s", FieldType::integer, "Clock time between status heartbeats (the connectors' states, the outbox's fill); 0: none"),
                               0, 86400, "s"),
                    "300"),
       with_default(with_range(field("telemetry_s", FieldType::integer,
                                     "Clock time between compact telemetry frames (each connector's state, power and meter register; not "
                                     "acknowledged, sent on the telemetry class's link); 0: none"),
                               0, 86400, "s"),
                    "300"),
       with_fields(field("commands", FieldType::object,
                         "Signed remote commands from the back end (docs/protocol.md section 3.4); without this section every command is refused"),
                   {field("key", FieldType::string, "The back end's command key: its public half, a PEM file (public key or certificate, P-256 or SM2), absolute path", true),
                    with_default(with_range(field("window_s", FieldType::integer, "A command is refused as stale when its timestamp is further than this from the pile's clock"), 1, 86400, "s"), "300"),
                    with_default(with_range(field("retry_window_s", FieldType::integer, "How long after a refused start the back end may ask for it again (retry_start)"), 1, 86400, "s"), "300"),
                    field("firmware_key", FieldType::string, "The firmware-signing key's public half (PEM), absolute path; without it firmware transfers are refused"),
                    field("firmware_staging", FieldType::string, "The directory a verified firmware image is written to (absolute path); installing it is the package manager's job")})});
}

namespace {

// A key that does not load is refused at its line: a pile that cannot check a command's
// signature would refuse every command, and nobody would see why until one is needed.
void check_key(const YAML::Node& node, const std::string& path, std::string& out, Diagnostics& diags) {
  if (!node.IsDefined() || node.IsNull() || !node.IsScalar()) return;
  const std::string value = node.Scalar();
  if (!std::filesystem::path(value).is_absolute()) {
    diags.error(position_of(node), fmt::format("'{}' must be an absolute path, not '{}'", path, value));
    return;
  }
  try {
    protocol::CommandKey key{std::filesystem::path(value)};
  } catch (const std::exception& e) {
    diags.error(position_of(node), fmt::format("'{}': {}", path, e.what()));
    return;
  }
  out = value;
}

std::optional<CommandsConfig> parse_commands(const YAML::Node& node, const Field& schema, Diagnostics& diags) {
  if (!node.IsDefined() || node.IsNull() || !node.IsMap()) return std::nullopt;
  CommandsConfig cfg;
  check_key(member(node, "key"), "links.commands.key", cfg.key, diags);
  check_key(member(node, "firmware_key"), "links.commands.firmware_key", cfg.firmware_key, diags);
  for (auto [name, target] : {std::pair{"window_s", &cfg.window_s}, std::pair{"retry_window_s", &cfg.retry_window_s}}) {
    const YAML::Node n = member(node, name);
    if (!n.IsDefined() || n.IsNull()) continue;
    for (const auto& f : schema.fields) {
      Value v;
      if (f.key == name && !parse_value(f, n, v) && std::holds_alternative<std::int64_t>(v)) *target = std::get<std::int64_t>(v);
    }
  }
  const YAML::Node staging = member(node, "firmware_staging");
  if (staging.IsDefined() && staging.IsScalar()) {
    if (!std::filesystem::path(staging.Scalar()).is_absolute()) {
      diags.error(position_of(staging), fmt::format("'links.commands.firmware_staging' must be an absolute path, not '{}'", staging.Scalar()));
    } else {
      cfg.firmware_staging = staging.Scalar();
    }
  }
  const YAML::Node fw_key = member(node, "firmware_key");
  if (fw_key.IsDefined() != staging.IsDefined()) {
    diags.error(position_of(fw_key.IsDefined() ? fw_key : staging),
                "'links.commands': firmware_key and firmware_staging go together: an image is verified with the one and written to the other");
  }
  if (cfg.key.empty()) return std::nullopt;  // refused above (or missing: the schema says so)
  return cfg;
}

}  // namespace

UplinkConfig parse_uplink_config(const YAML::Node& links, const std::vector<InstanceSpec>& instances, Diagnostics& diags) {
  UplinkConfig cfg;
  std::vector<std::string> named;
  std::vector<std::string> link_instances;
  for (const auto& i : instances) {
    named.push_back(i.name);
    if (i.loaded && i.loaded->descriptor->kind == Kind::link) link_instances.push_back(i.name);
  }
  auto ref = [&](const YAML::Node& node, const std::string& path, std::string& out) {
    if (node.IsDefined() && node.IsScalar() && check_instance_reference(node, path, {Kind::link}, instances, named, diags)) out = node.Scalar();
  };
  ref(member(links, "cellular"), "links.cellular", cfg.cellular);
  ref(member(links, "lorawan"), "links.lorawan", cfg.lorawan);
  if (!member(links, "cellular").IsDefined()) {
    // The default: the one link instance that is not the LoRaWAN one.
    std::vector<std::string> candidates;
    for (const auto& l : link_instances) {
      if (l != cfg.lorawan) candidates.push_back(l);
    }
    if (candidates.size() == 1) {
      cfg.cellular = candidates[0];
    } else if (candidates.size() > 1) {
      // A warning, not an error: sites with several links were valid before this section was
      // read, and nothing sends from the outbox yet. Nothing is guessed: no default route.
      diags.warning(position_of(links), fmt::format("'links': the site has {} link instances ({}); say which is the 5G one in links.cellular "
                                                    "(and the LoRaWAN one in links.lorawan), or uplink records have no default route",
                                                    link_instances.size(), fmt::join(link_instances, ", ")));
    }
  }
  cfg.routing = protocol::default_routing(cfg.cellular, cfg.lorawan);
  const YAML::Node routes = member(links, "routes");
  for (UplinkClass c : kClasses) {
    const std::string name(protocol::to_string(c));
    const YAML::Node route = member(routes, name);
    if (!route.IsDefined() || !route.IsMap()) continue;
    protocol::Route r;
    ref(member(route, "primary"), "links.routes." + name + ".primary", r.primary);
    ref(member(route, "fallback"), "links.routes." + name + ".fallback", r.fallback);
    if (!r.primary.empty()) cfg.routing[c].primary = r.primary;
    if (member(route, "fallback").IsDefined()) cfg.routing[c].fallback = r.fallback;
  }
  const Field schema = links_schema();
  const Field& outbox_schema = schema.fields[3];
  const YAML::Node outbox = member(links, "outbox");
  std::int64_t* targets[] = {&cfg.outbox_max_records, &cfg.outbox_max_bytes, &cfg.first_retry_s, &cfg.max_retry_s};
  for (std::size_t i = 0; i < outbox_schema.fields.size(); ++i) {
    const YAML::Node n = member(outbox, outbox_schema.fields[i].key);
    if (!n.IsDefined() || n.IsNull()) continue;
    Value v;
    if (!parse_value(outbox_schema.fields[i], n, v) && std::holds_alternative<std::int64_t>(v)) *targets[i] = std::get<std::int64_t>(v);
  }
  for (auto [index, target] : {std::pair{std::size_t{4}, &cfg.device_id}, std::pair{std::size_t{5}, &cfg.heartbeat_s}, std::pair{std::size_t{6}, &cfg.telemetry_s}}) {
    const YAML::Node n = member(links, schema.fields[index].key);
    if (!n.IsDefined() || n.IsNull()) continue;
    Value v;
    if (!parse_value(schema.fields[index], n, v) && std::holds_alternative<std::int64_t>(v)) *target = std::get<std::int64_t>(v);
  }
  cfg.commands = parse_commands(member(links, "commands"), schema.fields[7], diags);
  if (cfg.first_retry_s > cfg.max_retry_s) {
    diags.error(position_of(member(outbox, "first_retry_s")),
                fmt::format("'links.outbox.first_retry_s' ({} s) is longer than max_retry_s ({} s)", cfg.first_retry_s, cfg.max_retry_s));
  }
  return cfg;
}

}  // namespace pilecore::core
