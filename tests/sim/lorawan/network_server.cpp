#include "network_server.hpp"

#include <openssl/evp.h>

#include <cctype>
#include <chrono>
#include <condition_variable>
#include <mqtt/async_client.h>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

namespace pilecore::sim {

namespace {

using nlohmann::json;
using namespace std::chrono_literals;

std::string base64(const std::vector<std::uint8_t>& data) {
  std::string out(4 * ((data.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), data.data(), static_cast<int>(data.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

/// Strict base64 (RFC 4648, padded); nullopt when it is not.
std::optional<std::vector<std::uint8_t>> unbase64(const std::string& text) {
  if (text.empty() || text.size() % 4 != 0) return std::nullopt;
  std::vector<std::uint8_t> out(text.size() / 4 * 3);
  const int n = EVP_DecodeBlock(out.data(), reinterpret_cast<const unsigned char*>(text.data()), static_cast<int>(text.size()));
  if (n < 0) return std::nullopt;
  std::size_t pad = 0;
  if (text.back() == '=') ++pad;
  if (text[text.size() - 2] == '=') ++pad;
  out.resize(static_cast<std::size_t>(n) - pad);
  return out;
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

struct NetworkServer::Impl {
  Settings settings;
  mqtt::async_client client;
  std::mutex mutex;
  std::condition_variable wake;
  bool stopping = false;
  std::thread thread;

  explicit Impl(Settings s)
      : settings(std::move(s)), client(fmt_uri(settings), "pilecore-network-server", mqtt::create_options(MQTTVERSION_3_1_1)) {}

  static std::string fmt_uri(const Settings& s) { return "ssl://" + s.host + ":" + std::to_string(s.port); }
  [[nodiscard]] std::string prefix() const { return "application/" + settings.application_id + "/device/"; }
};

NetworkServer::NetworkServer(Rak3172Sim& module, Settings settings) : module_(module), impl_(std::make_unique<Impl>(std::move(settings))) {
  Impl& im = *impl_;
  im.client.set_message_callback([this](mqtt::const_message_ptr m) {
    // application/<app>/device/<dev eui>/command/down: {"devEui", "confirmed", "fPort", "data"}
    const std::string dev_eui = lower(module_.setting("DEVEUI"));
    const json j = json::parse(m->get_payload_str(), nullptr, false);
    std::optional<std::vector<std::uint8_t>> data;
    int port = 0;
    if (j.is_object() && j.contains("data") && j["data"].is_string() && j.contains("fPort") && j["fPort"].is_number_integer()) {
      data = unbase64(j["data"].get<std::string>());
      port = j["fPort"].get<int>();
    }
    if (!data || data->empty() || port < 1 || port > 223 || m->get_topic() != impl_->prefix() + dev_eui + "/command/down" ||
        lower(j.value("devEui", std::string())) != dev_eui) {
      ++bad_downlinks_;
      return;
    }
    ++downlinks_;
    module_.queue_downlink(port, std::move(*data));
  });
  module_.on_uplink([this](const Rak3172Sim::Uplink& up) {
    Impl& i = *impl_;
    const std::string dev_eui = lower(module_.setting("DEVEUI"));
    const json event{{"deviceInfo", {{"applicationId", i.settings.application_id}, {"devEui", dev_eui}}},
                     {"adr", module_.setting("ADR") == "1"},
                     {"dr", up.dr},
                     {"fCnt", up.fcnt},
                     {"fPort", up.port},
                     {"confirmed", up.confirmed},
                     {"data", base64(up.data)}};
    try {
      if (!i.client.is_connected()) {
        ++lost_;
        return;
      }
      i.client.publish(i.prefix() + dev_eui + "/event/up", event.dump(), 1, false);
      ++forwarded_;
    } catch (const mqtt::exception&) {
      ++lost_;
    }
  });
  // Connects, and connects again whenever the connection is gone (the broker stopped).
  im.thread = std::thread([this] {
    Impl& i = *impl_;
    auto ssl = mqtt::ssl_options_builder()
                   .trust_store(i.settings.ca.string())
                   .key_store(i.settings.cert.string())
                   .private_key(i.settings.key.string())
                   .enable_server_cert_auth(true)
                   .finalize();
    const auto options = mqtt::connect_options_builder().clean_session(true).ssl(std::move(ssl)).connect_timeout(2s).finalize();
    std::unique_lock lock(i.mutex);
    while (!i.stopping) {
      if (!i.client.is_connected()) {
        lock.unlock();
        try {
          i.client.connect(options)->wait_for(3s);
          if (i.client.is_connected()) i.client.subscribe(i.prefix() + "+/command/down", 1)->wait_for(3s);
        } catch (const mqtt::exception&) {
          // the broker is down: try again shortly
        }
        lock.lock();
      }
      i.wake.wait_for(lock, 50ms);
    }
  });
}

NetworkServer::~NetworkServer() {
  module_.on_uplink({});
  {
    std::lock_guard lock(impl_->mutex);
    impl_->stopping = true;
  }
  impl_->wake.notify_all();
  if (impl_->thread.joinable()) impl_->thread.join();
  try {
    if (impl_->client.is_connected()) impl_->client.disconnect()->wait_for(2s);
  } catch (const mqtt::exception&) {
  }
}

}  // namespace pilecore::sim
