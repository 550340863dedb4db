// A small HTTPS/JSON client for plugins that talk to a provider (face-pay, credit): Boost.Beast
// over OpenSSL on an io_context thread of its own, so nothing it does blocks the core's strand.
//
// The provider is authenticated: its certificate must chain to the configured CA file and name
// the host (DNS name or IP address) of the URL, or the request fails before a byte of the body
// is sent. Each request has one deadline covering connect, handshake, write and read.
//
// No Boost type appears in this header: plugins include it and hand results to the core with
// Host::post, as the SDK requires.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace pilecore::plugins {

struct HttpsSettings {
  std::string url;      ///< "https://host[:port][/base/path]"
  std::string ca_file;  ///< PEM file of the CA(s) that sign the provider's certificate
  std::chrono::milliseconds timeout{5000};
  std::string bearer;   ///< sent as "Authorization: Bearer ..." when not empty; never logged
};

struct HttpsResponse {
  int status = 0;          ///< HTTP status; 0 when no response came (see error)
  nlohmann::json body;     ///< the parsed JSON body (null when empty or not JSON)
  std::string error;       ///< transport or TLS failure, or an unparsable body; empty when a response came
  [[nodiscard]] bool ok() const { return error.empty() && status >= 200 && status < 300; }
  /// Whether the provider answered at all (an HTTP error is an answer; a refused certificate is not).
  [[nodiscard]] bool answered() const { return error.empty() && status != 0; }
};

/// The parts of an https URL; throws std::invalid_argument for anything else.
struct HttpsUrl {
  std::string host;
  std::string port;
  std::string base_path;  ///< without a trailing '/', may be empty
  static HttpsUrl parse(const std::string& url);
};

class HttpsClient {
 public:
  using Done = std::function<void(HttpsResponse)>;

  /// Reads the CA file now (throws std::runtime_error with the reason when it cannot) and starts
  /// the I/O thread.
  explicit HttpsClient(HttpsSettings settings);
  /// Stops the thread; requests still running are answered with an error first.
  ~HttpsClient();
  HttpsClient(const HttpsClient&) = delete;
  HttpsClient& operator=(const HttpsClient&) = delete;

  /// POSTs `body` as JSON to base_path + `path`. `done` is called exactly once, on the client's
  /// thread (hand the result to the strand with Host::post).
  void post(const std::string& path, const nlohmann::json& body, Done done);

  /// Stops the thread now (also done by the destructor). Pending requests are answered with
  /// an error; requests made afterwards are answered at once with an error.
  void stop();

  [[nodiscard]] const HttpsUrl& url() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// A provider-backed method's calls in flight, kept on the plugin's strand: each is answered
/// exactly once, by the provider's response (`answered`, on the strand) or, when the plugin stops
/// first, by `stopped`.
class ProviderCalls {
 public:
  /// Hands a function to the plugin's strand (Host::post).
  using ToStrand = std::function<void(std::function<void()>)>;

  ProviderCalls(HttpsClient& client, ToStrand to_strand) : client_(client), to_strand_(std::move(to_strand)) {}
  ProviderCalls(const ProviderCalls&) = delete;
  ProviderCalls& operator=(const ProviderCalls&) = delete;

  /// POSTs `body` to `path`. Call on the strand.
  void call(const std::string& path, const nlohmann::json& body, std::function<void(const HttpsResponse&)> answered, std::function<void()> stopped);

  /// Stops the client (its last answers are posted, and posts no longer run after the plugin's
  /// stop) and answers every call still waiting with its `stopped`. Call on the strand.
  void stop() noexcept;

 private:
  struct Call {
    std::function<void(const HttpsResponse&)> answered;
    std::function<void()> stopped;
  };
  HttpsClient& client_;
  ToStrand to_strand_;
  std::map<std::uint64_t, Call> calls_;  // strand only
  std::uint64_t seq_ = 0;
};

}  // namespace pilecore::plugins
