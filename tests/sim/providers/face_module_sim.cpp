#include "face_module_sim.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <stdexcept>

namespace pilecore::sim {

FaceModuleSim::FaceModuleSim(std::string model) : model_(std::move(model)) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) throw std::runtime_error("face module sim: socket failed");
  const int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listen_fd_, 4) != 0) {
    ::close(listen_fd_);
    throw std::runtime_error("face module sim: bind/listen failed");
  }
  socklen_t len = sizeof a;
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
  port_ = ntohs(a.sin_port);
  thread_ = std::thread([this] { run(); });
}

FaceModuleSim::~FaceModuleSim() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  drop();
  ::close(listen_fd_);
}

int FaceModuleSim::show(const std::string& face_token, int liveness_permille) {
  const int seq = ++seq_;
  return send_line("FACE " + std::to_string(seq) + " " + face_token + " " + std::to_string(liveness_permille)) ? seq : 0;
}

bool FaceModuleSim::send_line(const std::string& line) {
  std::lock_guard lock(mutex_);
  const int fd = client_fd_.load();
  if (fd < 0) return false;
  const std::string text = line + "\n";
  return ::send(fd, text.data(), text.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(text.size());
}

std::vector<std::string> FaceModuleSim::received() const {
  std::lock_guard lock(mutex_);
  return received_;
}

void FaceModuleSim::drop() {
  std::lock_guard lock(mutex_);
  const int fd = client_fd_.exchange(-1);
  if (fd >= 0) ::close(fd);
}

void FaceModuleSim::run() {
  std::string buffer;
  while (!stop_.load()) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {client_fd_.load(), POLLIN, 0}};
    const int n = ::poll(fds, fds[1].fd >= 0 ? 2 : 1, 20);
    if (n <= 0) continue;
    if (fds[0].revents & POLLIN) {
      const int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c >= 0) {
        const int one = 1;
        ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        drop();
        buffer.clear();
        const std::string banner = "PCFM/1 " + model_ + "\n";
        ::send(c, banner.data(), banner.size(), MSG_NOSIGNAL);
        client_fd_.store(c);
      }
      continue;
    }
    if (fds[1].fd >= 0 && (fds[1].revents & (POLLIN | POLLHUP | POLLERR))) {
      char chunk[512];
      const ssize_t got = ::recv(fds[1].fd, chunk, sizeof chunk, 0);
      if (got <= 0) {
        drop();
        continue;
      }
      buffer.append(chunk, static_cast<std::size_t>(got));
      for (auto nl = buffer.find('\n'); nl != std::string::npos; nl = buffer.find('\n')) {
        std::string line = buffer.substr(0, nl);
        buffer.erase(0, nl + 1);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        std::lock_guard lock(mutex_);
        received_.push_back(std::move(line));
      }
    }
  }
}

}  // namespace pilecore::sim
