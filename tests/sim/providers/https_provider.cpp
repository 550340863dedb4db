#include "https_provider.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <thread>

namespace pilecore::sim {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

struct HttpsProvider::Impl {
  HttpsProvider& owner;
  asio::io_context io;
  ssl::context tls{ssl::context::tls_server};
  tcp::acceptor acceptor{io};
  std::thread thread;
  bool stopped = false;

  Impl(HttpsProvider& o, const TestPki& pki) : owner(o) {
    tls.use_certificate_chain_file(pki.server_cert.string());
    tls.use_private_key_file(pki.server_key.string(), ssl::context::pem);
    const tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), 0);
    acceptor.open(ep.protocol());
    acceptor.set_option(tcp::acceptor::reuse_address(true));
    acceptor.bind(ep);
    acceptor.listen();
  }

  struct Session : std::enable_shared_from_this<Session> {
    Impl& impl;
    beast::ssl_stream<beast::tcp_stream> stream;
    beast::flat_buffer buffer;
    http::request<http::string_body> req;
    http::response<http::string_body> res;
    asio::steady_timer delay;
    Session(Impl& i, tcp::socket s) : impl(i), stream(std::move(s), i.tls), delay(i.io) {}

    void run() {
      auto self = shared_from_this();
      beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(10));
      stream.async_handshake(ssl::stream_base::server, [self](const boost::system::error_code& ec) {
        if (ec) return;  // e.g. the client refused our certificate
        http::async_read(self->stream, self->buffer, self->req, [self](const boost::system::error_code& ec2, std::size_t) {
          if (ec2) return;
          self->received();
        });
      });
    }

    void received() {
      HttpsProvider& p = impl.owner;
      p.requests_.fetch_add(1);
      const std::string path(req.target());
      {
        std::lock_guard lock(p.mutex_);
        ++p.per_path_[path];
      }
      if (p.outage_.load()) {
        beast::get_lowest_layer(stream).socket().close();  // down: no answer
        return;
      }
      delay.expires_after(std::chrono::milliseconds(p.latency_ms_.load()));
      delay.async_wait([self = shared_from_this(), path](const boost::system::error_code& ec) {
        if (ec) return;
        self->answer(path);
      });
    }

    void answer(const std::string& path) {
      HttpsProvider& p = impl.owner;
      int status = 200;
      nlohmann::json body;
      int left = p.fail_next_.load();
      while (left > 0 && !p.fail_next_.compare_exchange_weak(left, left - 1)) {
      }
      if (left > 0) {
        status = p.fail_status_.load();
        body = {{"error", "simulated provider error"}};
      } else {
        const auto in = nlohmann::json::parse(req.body(), nullptr, false);
        if (req.method() != http::verb::post || in.is_discarded() || !in.is_object()) {
          status = 400;
          body = {{"error", "a POST with a JSON object is expected"}};
        } else {
          try {
            std::tie(status, body) = p.handle(path, in);
          } catch (const std::exception& e) {
            status = 400;
            body = {{"error", e.what()}};
          }
        }
      }
      res.version(11);
      res.result(static_cast<http::status>(status));
      res.set(http::field::content_type, "application/json");
      res.keep_alive(false);
      res.body() = body.dump();
      res.prepare_payload();
      http::async_write(stream, res, [self = shared_from_this()](const boost::system::error_code&, std::size_t) {
        boost::system::error_code ignored;
        beast::get_lowest_layer(self->stream).socket().shutdown(tcp::socket::shutdown_both, ignored);
      });
    }
  };

  void accept() {
    acceptor.async_accept([this](const boost::system::error_code& ec, tcp::socket s) {
      if (ec) return;
      std::make_shared<Session>(*this, std::move(s))->run();
      accept();
    });
  }
};

HttpsProvider::HttpsProvider(const TestPki& pki) : impl_(std::make_unique<Impl>(*this, pki)) {
  port_ = impl_->acceptor.local_endpoint().port();
  impl_->accept();
  impl_->thread = std::thread([this] { impl_->io.run(); });
}

HttpsProvider::~HttpsProvider() { stop(); }

void HttpsProvider::stop() {
  if (!impl_ || impl_->stopped) return;
  impl_->stopped = true;
  impl_->io.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

std::string HttpsProvider::url() const { return "https://127.0.0.1:" + std::to_string(port_); }

std::size_t HttpsProvider::requests(const std::string& path) const {
  std::lock_guard lock(mutex_);
  auto it = per_path_.find(path);
  return it == per_path_.end() ? 0 : it->second;
}

// ---------------------------------------------------------------------------------------------
// face pay

void FacePayProvider::enrol(const std::string& face_token, std::int64_t limit_fen) {
  std::lock_guard lock(mutex_);
  faces_[face_token] = limit_fen;
}

std::int64_t FacePayProvider::captured_fen(const std::string& transaction_id) const {
  std::lock_guard lock(mutex_);
  auto it = txns_.find(transaction_id);
  return it == txns_.end() ? 0 : it->second.captured - it->second.refunded;
}

std::int64_t FacePayProvider::held_fen() const {
  std::lock_guard lock(mutex_);
  std::int64_t held = 0;
  for (const auto& [id, t] : txns_) {
    if (!t.released && t.captured == 0) held += t.authorized;
  }
  return held;
}

std::size_t FacePayProvider::effects() const {
  std::lock_guard lock(mutex_);
  return effects_;
}

std::pair<int, nlohmann::json> FacePayProvider::handle(const std::string& path, const nlohmann::json& in) {
  std::lock_guard lock(mutex_);
  const std::string op = in.at("operation_id").get<std::string>();
  if (auto it = answered_.find(op); it != answered_.end()) return {200, it->second};
  const std::string txn = in.at("transaction_id").get<std::string>();
  nlohmann::json out;
  auto op_result = [&](const char* state, std::int64_t fen, const std::string& ref, const std::string& reason) {
    out = {{"state", state}, {"amount_fen", fen}, {"reference", ref}, {"reason", reason}};
  };
  if (path == "/v1/face/authorize") {
    const std::string face = in.at("face_token").get<std::string>();
    const std::int64_t amount = in.at("amount_fen").get<std::int64_t>();
    auto f = faces_.find(face);
    if (f == faces_.end()) {
      out = {{"decision", "declined"}, {"reason", "face not recognised"}};
    } else if (amount <= 0 || amount > f->second) {
      out = {{"decision", "declined"}, {"reason", "above the payer's face-pay limit"}};
    } else if (txns_.count(txn) != 0) {
      out = {{"decision", "declined"}, {"reason", "transaction id already used"}};
    } else {
      Txn t;
      t.authorized = amount;
      t.reference = "FP" + std::to_string(++seq_);
      txns_[txn] = t;
      ++effects_;
      out = {{"decision", "approved"}, {"authorized_fen", amount}, {"reference", t.reference}};
    }
  } else {
    auto it = txns_.find(txn);
    if (path == "/v1/face/capture") {
      const std::int64_t amount = in.at("amount_fen").get<std::int64_t>();
      if (it == txns_.end()) {
        op_result("failed", 0, "", "unknown transaction");
      } else if (it->second.released) {
        op_result("failed", 0, it->second.reference, "the hold was released");
      } else if (amount < 0 || amount > it->second.authorized) {
        op_result("failed", 0, it->second.reference, "above the authorised amount");
      } else if (it->second.captured > 0) {
        op_result("failed", 0, it->second.reference, "already captured under another operation");
      } else {
        it->second.captured = amount;
        ++effects_;
        op_result("confirmed", amount, it->second.reference, "");
      }
    } else if (path == "/v1/face/cancel") {
      if (it == txns_.end()) {
        op_result("confirmed", 0, "", "");
      } else if (it->second.captured > 0) {
        op_result("failed", 0, it->second.reference, "already captured; refund it instead");
      } else {
        it->second.released = true;
        ++effects_;
        op_result("confirmed", it->second.authorized, it->second.reference, "");
      }
    } else if (path == "/v1/face/refund") {
      const std::int64_t amount = in.at("amount_fen").get<std::int64_t>();
      if (it == txns_.end() || it->second.captured == 0) {
        op_result("failed", 0, "", "nothing was captured");
      } else if (amount <= 0 || it->second.refunded + amount > it->second.captured) {
        op_result("failed", 0, it->second.reference, "above what is left to refund");
      } else {
        it->second.refunded += amount;
        ++effects_;
        op_result("confirmed", amount, it->second.reference, "");
      }
    } else {
      return {404, {{"error", "no such endpoint"}}};
    }
  }
  answered_[op] = out;
  return {200, out};
}

// ---------------------------------------------------------------------------------------------
// credit

void CreditProvider::set_score(const std::string& user_id, int score) {
  std::lock_guard lock(mutex_);
  scores_[user_id] = score;
}

void CreditProvider::decline_debits(int n) {
  std::lock_guard lock(mutex_);
  decline_ = n;
}

std::int64_t CreditProvider::debited_fen(const std::string& user_id) const {
  std::lock_guard lock(mutex_);
  auto ag = agreements_.find(user_id);
  if (ag == agreements_.end()) return 0;
  auto it = debited_.find(ag->second);
  return it == debited_.end() ? 0 : it->second;
}

std::size_t CreditProvider::debits() const {
  std::lock_guard lock(mutex_);
  return debits_;
}

std::size_t CreditProvider::debit_attempts() const {
  std::lock_guard lock(mutex_);
  return attempts_;
}

std::pair<int, nlohmann::json> CreditProvider::handle(const std::string& path, const nlohmann::json& in) {
  std::lock_guard lock(mutex_);
  if (path == "/v1/credit/score") {
    const std::string user = in.at("user_id").get<std::string>();
    auto it = scores_.find(user);
    if (it == scores_.end()) return {404, {{"error", "no credit agreement for this user"}}};
    auto [ag, fresh] = agreements_.emplace(user, "");
    if (fresh) ag->second = "AG" + std::to_string(100000 + agreements_.size());  // opaque: not the user id
    return {200, {{"score", it->second}, {"agreement_id", ag->second}}};
  }
  const std::string op = in.at("operation_id").get<std::string>();
  if (auto it = answered_.find(op); it != answered_.end()) return {200, it->second};
  const std::int64_t amount = in.at("amount_fen").get<std::int64_t>();
  if (path == "/v1/credit/debit") {
    ++attempts_;
    const std::string agreement = in.at("agreement_id").get<std::string>();
    if (amount <= 0) return {200, {{"state", "declined"}, {"reason", "amount is not positive"}}};
    if (decline_ > 0) {
      --decline_;
      return {200, {{"state", "declined"}, {"reason", "insufficient funds"}}};
    }
    debited_[agreement] += amount;
    debit_of_op_[op] = {agreement, amount};
    ++debits_;
    nlohmann::json out = {{"state", "confirmed"}, {"amount_fen", amount}, {"reference", "DB" + std::to_string(++seq_)}, {"reason", ""}};
    answered_[op] = out;
    return {200, out};
  }
  if (path == "/v1/credit/refund") {
    const std::string debit_op = in.at("debit_operation_id").get<std::string>();
    auto d = debit_of_op_.find(debit_op);
    if (d == debit_of_op_.end()) return {200, {{"state", "failed"}, {"reason", "no such debit"}}};
    if (amount <= 0 || refunded_of_debit_[debit_op] + amount > d->second.second) {
      return {200, {{"state", "failed"}, {"reason", "above what is left of the debit"}}};
    }
    refunded_of_debit_[debit_op] += amount;
    debited_[d->second.first] -= amount;
    nlohmann::json out = {{"state", "confirmed"}, {"amount_fen", amount}, {"reference", "RF" + std::to_string(++seq_)}, {"reason", ""}};
    answered_[op] = out;
    return {200, out};
  }
  return {404, {{"error", "no such endpoint"}}};
}

}  // namespace pilecore::sim
