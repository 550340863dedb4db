#include "uplink_class.hpp"

namespace pilecore::core::protocol {

std::string_view to_string(UplinkClass c) {
  switch (c) {
    case UplinkClass::control: return "control";
    case UplinkClass::transaction: return "transaction";
    case UplinkClass::status: return "status";
    case UplinkClass::telemetry: return "telemetry";
  }
  return "telemetry";
}

std::optional<UplinkClass> parse_uplink_class(std::string_view name) {
  for (auto c : {UplinkClass::control, UplinkClass::transaction, UplinkClass::status, UplinkClass::telemetry}) {
    if (to_string(c) == name) return c;
  }
  return std::nullopt;
}

MessageType message_type(UplinkClass c) {
  switch (c) {
    case UplinkClass::control: return MessageType::control;
    case UplinkClass::transaction: return MessageType::transaction;
    case UplinkClass::status: return MessageType::status;
    case UplinkClass::telemetry: return MessageType::telemetry;
  }
  return MessageType::telemetry;
}

bool droppable(UplinkClass c) { return c == UplinkClass::status || c == UplinkClass::telemetry; }

link::TrafficClass traffic_class(UplinkClass c) {
  switch (c) {
    case UplinkClass::control: return link::TrafficClass::control;
    case UplinkClass::transaction: return link::TrafficClass::bulk;
    case UplinkClass::status:
    case UplinkClass::telemetry: return link::TrafficClass::telemetry;
  }
  return link::TrafficClass::telemetry;
}

}  // namespace pilecore::core::protocol
