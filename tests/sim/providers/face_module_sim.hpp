// A simulated face-recognition camera module speaking the module's line protocol over TCP
// (docs/payments.md, "Face"): the module listens, payment-face connects, and the module sends
//   PCFM/1 <model>                          once, on connect
//   FACE <seq> <face_token> <liveness>      per face recognised (liveness in thousandths, 0..1000)
// and reads the plugin's answers
//   ACK <seq>                               the face was presented to the core
//   ERR <text>                              a line the plugin could not read
// Listens on 127.0.0.1, a free port; serves one plugin connection at a time (the latest).
#pragma once

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace pilecore::sim {

class FaceModuleSim {
 public:
  explicit FaceModuleSim(std::string model = "SIM-FACE-1");
  ~FaceModuleSim();
  FaceModuleSim(const FaceModuleSim&) = delete;
  FaceModuleSim& operator=(const FaceModuleSim&) = delete;

  [[nodiscard]] int port() const { return port_; }
  [[nodiscard]] bool connected() const { return client_fd_.load() >= 0; }
  /// Sends a recognised face; returns its sequence number (0 when no plugin is connected).
  int show(const std::string& face_token, int liveness_permille);
  /// Sends a raw line (for malformed-input tests); false when no plugin is connected.
  bool send_line(const std::string& line);
  /// The lines the plugin sent, in order.
  [[nodiscard]] std::vector<std::string> received() const;
  /// Drops the connection (a module reboot); the plugin is expected to reconnect.
  void drop();

 private:
  void run();
  std::string model_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<int> client_fd_{-1};
  std::atomic<bool> stop_{false};
  std::atomic<int> seq_{0};
  mutable std::mutex mutex_;
  std::vector<std::string> received_;
  std::thread thread_;
};

}  // namespace pilecore::sim
