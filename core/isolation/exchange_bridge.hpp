// APDU exchanges across the socket pair, in both directions: a token presented by an isolated
// reader carries an exchange that lives in the child, and a token handed to an isolated payment
// method carries one that lives in the core. The side that owns the exchange registers it and
// sends its id; the other side gets a proxy whose transceive() is an event answered by an event,
// and whose present() is a short synchronous query.
#pragma once

#include <deque>
#include <map>
#include <memory>

#include "codec.hpp"
#include "peer.hpp"

namespace pilecore::core::isolation {

class ExchangeBridge {
 public:
  /// How many exchanges one side keeps reachable: a card is talked to during one authorisation,
  /// so older ones are released rather than kept for the process's life.
  static constexpr std::size_t kept = 16;

  explicit ExchangeBridge(std::weak_ptr<Peer> peer = {}) : peer_(std::move(peer)) {}
  void set_peer(std::weak_ptr<Peer> peer) { peer_ = std::move(peer); }

  /// Makes `x` reachable from the other side; returns its id (0 for none).
  std::uint64_t offer(const std::shared_ptr<identification::Exchange>& x) {
    if (!x) return 0;
    const auto id = ++next_offer_;
    offered_[id] = x;
    order_.push_back(id);
    while (order_.size() > kept) {
      offered_.erase(order_.front());
      order_.pop_front();
    }
    return id;
  }

  /// A proxy for an exchange the other side offered.
  std::shared_ptr<identification::Exchange> proxy(std::uint64_t id) {
    if (id == 0) return nullptr;
    return std::make_shared<Proxy>(*this, id);
  }

  /// Handles {"m":"x.present"} requests; nullopt when `request` is not one.
  std::optional<json> on_request(const json& request) {
    if (str(request, "m") != "x.present") return std::nullopt;
    auto it = offered_.find(static_cast<std::uint64_t>(integer(request, "x")));
    return json{{"present", it != offered_.end() && it->second->present()}};
  }

  /// Handles x.send and x.reply events; false when `event` is neither.
  bool on_event(const json& event) {
    const std::string m = str(event, "m");
    if (m == "x.send") {
      const auto cb = integer(event, "cb");
      auto it = offered_.find(static_cast<std::uint64_t>(integer(event, "x")));
      auto reply = [weak = peer_, cb](Status s, std::vector<std::uint8_t> data) {
        if (auto p = weak.lock()) p->send({{"t", "ev"}, {"m", "x.reply"}, {"cb", cb}, {"status", to_json(s)}, {"data", json::binary(std::move(data))}});
      };
      const json& apdu = member(event, "apdu");
      if (!apdu.is_binary()) throw std::invalid_argument("apdu is not a byte string");
      if (it == offered_.end()) {
        reply(Status(StatusCode::unavailable, "the card has left the field"), {});
      } else {
        it->second->transceive(apdu.get_binary(), reply);
      }
      return true;
    }
    if (m == "x.reply") {
      auto it = waiting_.find(static_cast<std::uint64_t>(integer(event, "cb")));
      if (it == waiting_.end()) throw std::invalid_argument("an APDU reply nobody waits for");
      auto done = std::move(it->second);
      waiting_.erase(it);
      const json& data = member(event, "data");
      if (!data.is_binary()) throw std::invalid_argument("APDU response is not a byte string");
      done(status_of(member(event, "status")), std::vector<std::uint8_t>(data.get_binary().begin(), data.get_binary().end()));
      return true;
    }
    return false;
  }

  /// The other side is gone: every transceive still waiting is answered unavailable.
  void fail_all() {
    auto w = std::move(waiting_);
    waiting_.clear();
    for (auto& [id, done] : w) done(Status(StatusCode::unavailable, "the plugin's process is gone"), {});
    offered_.clear();
    order_.clear();
  }

 private:
  class Proxy final : public identification::Exchange {
   public:
    Proxy(ExchangeBridge& b, std::uint64_t id) : bridge_(b), id_(id) {}
    void transceive(std::span<const std::uint8_t> command, Reply done) noexcept override {
      try {
        auto peer = bridge_.peer_.lock();
        const auto cb = ++bridge_.next_wait_;
        bridge_.waiting_[cb] = std::move(done);
        if (!peer || !peer->send({{"t", "ev"}, {"m", "x.send"}, {"x", id_}, {"cb", cb}, {"apdu", json::binary({command.begin(), command.end()})}})) {
          auto d = std::move(bridge_.waiting_[cb]);
          bridge_.waiting_.erase(cb);
          d(Status(StatusCode::unavailable, "the plugin's process is gone"), {});
        }
      } catch (...) {
      }
    }
    [[nodiscard]] bool present() const noexcept override {
      try {
        auto peer = bridge_.peer_.lock();
        if (!peer) return false;
        auto r = peer->call({{"m", "x.present"}, {"x", id_}}, std::chrono::milliseconds(500));
        // The answer is {"t":"ret","id":N,"r":{"present":...}}: the result is under "r".
        if (!r || !r->contains("r") || !(*r)["r"].is_object()) return false;
        return (*r)["r"].value("present", false);
      } catch (...) {
        return false;
      }
    }

   private:
    ExchangeBridge& bridge_;
    std::uint64_t id_;
  };

  std::weak_ptr<Peer> peer_;
  std::map<std::uint64_t, std::shared_ptr<identification::Exchange>> offered_;
  std::deque<std::uint64_t> order_;
  std::uint64_t next_offer_ = 0;
  std::map<std::uint64_t, identification::Exchange::Reply> waiting_;
  std::uint64_t next_wait_ = 0;
};

}  // namespace pilecore::core::isolation
