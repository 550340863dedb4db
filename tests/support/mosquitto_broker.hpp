// A real Mosquitto broker for tests: an mTLS listener on a free loopback port, certificates the
// test makes with the openssl command line (a CA, the broker's certificate for 127.0.0.1, a
// client certificate the CA signed and one a stranger CA signed). Stopped and restarted on the
// same port to play an outage.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mqtt/async_client.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace pilecore::test {

struct MqttPki {
  std::filesystem::path ca, server_cert, server_key;
  std::filesystem::path client_cert, client_key;  ///< signed by `ca`
  std::filesystem::path rogue_cert, rogue_key;    ///< signed by a CA the broker does not trust
};

/// Paho connect options for the broker's other clients (the back end's side in the tests and
/// bench_estop): clean session, mutual TLS with the PKI's client certificate.
inline mqtt::connect_options client_tls_options(const MqttPki& pki) {
  auto ssl = mqtt::ssl_options_builder()
                 .trust_store(pki.ca.string())
                 .key_store(pki.client_cert.string())
                 .private_key(pki.client_key.string())
                 .enable_server_cert_auth(true)
                 .finalize();
  return mqtt::connect_options_builder().clean_session(true).ssl(std::move(ssl)).connect_timeout(std::chrono::seconds(5)).finalize();
}

namespace detail {
inline void openssl(const std::vector<std::string>& args) {
  std::vector<std::string> argv{"/usr/bin/openssl"};
  argv.insert(argv.end(), args.begin(), args.end());
  Child c(argv);
  if (c.wait() != 0) throw std::runtime_error("openssl " + args.front() + " failed: " + c.stderr_text());
}
inline void make_ca(const std::filesystem::path& dir, const std::string& name) {
  openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", (dir / (name + ".key")).string(), "-out",
           (dir / (name + ".crt")).string(), "-days", "2", "-subj", "/CN=" + name});
}
inline void make_leaf(const std::filesystem::path& dir, const std::string& ca, const std::string& name, const std::string& extensions, int serial) {
  const auto ext = dir / (name + ".ext");
  std::ofstream(ext) << extensions << "\n";
  openssl({"req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", (dir / (name + ".key")).string(), "-out",
           (dir / (name + ".csr")).string(), "-subj", "/CN=" + name});
  openssl({"x509", "-req", "-in", (dir / (name + ".csr")).string(), "-CA", (dir / (ca + ".crt")).string(), "-CAkey", (dir / (ca + ".key")).string(),
           "-set_serial", std::to_string(serial), "-days", "2", "-out", (dir / (name + ".crt")).string(), "-extfile", ext.string()});
}
}  // namespace detail

/// Makes the certificates in `dir`; throws std::runtime_error when openssl fails.
inline MqttPki make_mqtt_pki(const std::filesystem::path& dir) {
  detail::make_ca(dir, "mqtt-ca");
  detail::make_ca(dir, "stranger-ca");
  detail::make_leaf(dir, "mqtt-ca", "broker", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth", 2);
  detail::make_leaf(dir, "mqtt-ca", "pile", "extendedKeyUsage=clientAuth", 3);
  detail::make_leaf(dir, "stranger-ca", "rogue", "extendedKeyUsage=clientAuth", 4);
  return {dir / "mqtt-ca.crt", dir / "broker.crt", dir / "broker.key", dir / "pile.crt", dir / "pile.key", dir / "rogue.crt", dir / "rogue.key"};
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice).
inline int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) ::close(fd);
    throw std::runtime_error("no free loopback port");
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

inline bool accepts_connections(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  if (fd >= 0) ::close(fd);
  return ok;
}

class MosquittoBroker {
 public:
  /// Starts mosquitto with a TLS listener that requires a client certificate signed by pki.ca.
  /// `extra`: more lines of mosquitto.conf (global options, before the listener).
  MosquittoBroker(const std::filesystem::path& dir, const MqttPki& pki, const std::string& name = "broker", const std::string& extra = "")
      : port_(free_loopback_port()) {
    conf_ = dir / (name + ".conf");
    std::ofstream f(conf_);
    f << extra << "persistence false\n"
      << "log_dest stderr\n"
      << "log_type error\nlog_type warning\n";
    // As root mosquitto drops to the user `mosquitto`, which cannot read the test's 0700 directory.
    if (::geteuid() == 0) f << "user root\n";
    f << "listener " << port_ << " 127.0.0.1\n"
      << "cafile " << pki.ca.string() << "\n"
      << "certfile " << pki.server_cert.string() << "\n"
      << "keyfile " << pki.server_key.string() << "\n"
      << "require_certificate true\n"
      << "allow_anonymous true\n";
    f.close();
    start();
  }
  ~MosquittoBroker() { stop(); }
  MosquittoBroker(const MosquittoBroker&) = delete;
  MosquittoBroker& operator=(const MosquittoBroker&) = delete;

  [[nodiscard]] int port() const { return port_; }
  [[nodiscard]] std::string uri() const { return "ssl://127.0.0.1:" + std::to_string(port_); }
  [[nodiscard]] bool running() const { return child_ != nullptr; }

  /// Starts it again on the same port; returns once it accepts connections.
  void start() {
    if (child_) return;
    child_ = std::make_unique<Child>(std::vector<std::string>{"/usr/sbin/mosquitto", "-c", conf_.string()});
    if (!eventually([&] { return accepts_connections(port_); })) {
      const std::string err = child_->stderr_text();
      child_.reset();
      throw std::runtime_error("mosquitto did not start on port " + std::to_string(port_) + ": " + err);
    }
  }
  /// Kills it (every connection drops at once, as in a crash or a network cut).
  void stop() {
    if (!child_) return;
    child_->signal(SIGKILL);
    child_->wait();
    child_.reset();
  }

 private:
  int port_;
  std::filesystem::path conf_;
  std::unique_ptr<Child> child_;
};

}  // namespace pilecore::test
