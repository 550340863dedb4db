#include "https_client.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace pilecore::plugins {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

HttpsUrl HttpsUrl::parse(const std::string& url) {
  constexpr std::string_view scheme = "https://";
  if (url.rfind(scheme, 0) != 0) throw std::invalid_argument("'" + url + "' is not an https:// URL");
  std::string rest = url.substr(scheme.size());
  HttpsUrl u;
  const auto slash = rest.find('/');
  std::string authority = rest.substr(0, slash);
  if (slash != std::string::npos) u.base_path = rest.substr(slash);
  while (!u.base_path.empty() && u.base_path.back() == '/') u.base_path.pop_back();
  if (!authority.empty() && authority.front() == '[') {  // [::1]:443
    const auto close = authority.find(']');
    if (close == std::string::npos) throw std::invalid_argument("'" + url + "': unclosed '[' in the host");
    u.host = authority.substr(1, close - 1);
    authority = authority.substr(close + 1);
    u.port = authority.empty() ? "443" : authority.substr(1);
  } else {
    const auto colon = authority.rfind(':');
    u.host = authority.substr(0, colon);
    u.port = colon == std::string::npos ? "443" : authority.substr(colon + 1);
  }
  if (u.host.empty()) throw std::invalid_argument("'" + url + "' has no host");
  if (u.port.empty() || u.port.find_first_not_of("0123456789") != std::string::npos || u.port.size() > 5 || std::stoi(u.port) == 0 ||
      std::stoi(u.port) > 65535) {
    throw std::invalid_argument("'" + url + "' has an invalid port");
  }
  return u;
}

namespace {

bool is_ip_address(const std::string& host) {
  boost::system::error_code ec;
  (void)asio::ip::make_address(host, ec);
  return !ec;
}

}  // namespace

struct HttpsClient::Impl {
  struct Request;

  HttpsSettings settings;
  HttpsUrl url;
  bool host_is_ip = false;
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  ssl::context tls{ssl::context::tls_client};
  std::thread thread;
  std::mutex mutex;  // in_flight and stopped
  std::map<std::uint64_t, std::shared_ptr<Request>> in_flight;
  std::uint64_t next_id = 0;
  bool stopped = false;

  explicit Impl(HttpsSettings s) : settings(std::move(s)), url(HttpsUrl::parse(settings.url)), host_is_ip(is_ip_address(url.host)) {
    tls.set_verify_mode(ssl::verify_peer);
    SSL_CTX_set_min_proto_version(tls.native_handle(), TLS1_2_VERSION);
    boost::system::error_code ec;
    tls.load_verify_file(settings.ca_file, ec);
    if (ec) throw std::runtime_error("cannot read the CA file '" + settings.ca_file + "': " + ec.message());
    thread = std::thread([this] { io.run(); });
  }

  void finished(std::uint64_t id) {
    std::lock_guard lock(mutex);
    in_flight.erase(id);
  }

  void stop() {
    {
      std::lock_guard lock(mutex);
      if (stopped) return;
      stopped = true;
    }
    work.reset();
    io.stop();
    if (thread.joinable()) thread.join();
    // The thread is gone: what is still in flight will never complete; answer it here.
    std::map<std::uint64_t, std::shared_ptr<Request>> left;
    {
      std::lock_guard lock(mutex);
      left.swap(in_flight);
    }
    for (auto& [id, r] : left) r->answer({.status = 0, .body = nullptr, .error = "the client stopped before the provider answered"});
  }

  struct Request : std::enable_shared_from_this<Request> {
    Impl& impl;
    std::uint64_t id;
    tcp::resolver resolver;
    beast::ssl_stream<beast::tcp_stream> stream;
    asio::steady_timer deadline;
    http::request<http::string_body> req;
    beast::flat_buffer buffer;
    http::response<http::string_body> res;
    Done done;
    bool timed_out = false;
    std::atomic<bool> answered{false};

    Request(Impl& i, std::uint64_t n, Done d)
        : impl(i), id(n), resolver(i.io), stream(i.io, i.tls), deadline(i.io), done(std::move(d)) {}

    void answer(HttpsResponse r) {
      if (answered.exchange(true)) return;
      try {
        done(std::move(r));
      } catch (...) {
      }
    }

    void fail(const std::string& what, const boost::system::error_code& ec) {
      std::string msg;
      if (timed_out) {
        msg = what + ": timed out after " + std::to_string(impl.settings.timeout.count()) + " ms";
      } else {
        msg = what + ": " + ec.message();
        const long v = SSL_get_verify_result(stream.native_handle());
        if (v != X509_V_OK) msg += std::string(" (provider certificate refused: ") + X509_verify_cert_error_string(v) + ")";
      }
      end({.status = 0, .body = nullptr, .error = msg});
    }

    void end(HttpsResponse r) {
      deadline.cancel();
      boost::system::error_code ignored;
      beast::get_lowest_layer(stream).socket().close(ignored);
      auto self = shared_from_this();  // keeps this alive past finished()
      impl.finished(id);
      answer(std::move(r));
    }

    void run() {
      auto self = shared_from_this();
      deadline.expires_after(impl.settings.timeout);
      deadline.async_wait([self](const boost::system::error_code& ec) {
        if (ec) return;
        self->timed_out = true;
        self->resolver.cancel();
        boost::system::error_code ignored;
        beast::get_lowest_layer(self->stream).socket().close(ignored);
      });
      SSL* ssl_handle = stream.native_handle();
      X509_VERIFY_PARAM* param = SSL_get0_param(ssl_handle);
      const std::string& host = impl.url.host;
      // The certificate must name the host we asked for: an IP address in its SAN, or the DNS name.
      if (impl.host_is_ip) {
        X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str());
      } else {
        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        X509_VERIFY_PARAM_set1_host(param, host.c_str(), host.size());
        SSL_set_tlsext_host_name(ssl_handle, host.c_str());
      }
      resolver.async_resolve(host, impl.url.port, [self](const boost::system::error_code& ec, const tcp::resolver::results_type& results) {
        if (ec) return self->fail("cannot resolve " + self->impl.url.host, ec);
        beast::get_lowest_layer(self->stream).async_connect(results, [self](const boost::system::error_code& ec2, const tcp::endpoint&) {
          if (ec2) return self->fail("cannot connect to " + self->impl.url.host + ":" + self->impl.url.port, ec2);
          self->stream.async_handshake(ssl::stream_base::client, [self](const boost::system::error_code& ec3) {
            if (ec3) return self->fail("TLS handshake with " + self->impl.url.host, ec3);
            http::async_write(self->stream, self->req, [self](const boost::system::error_code& ec4, std::size_t) {
              if (ec4) return self->fail("sending the request", ec4);
              http::async_read(self->stream, self->buffer, self->res, [self](const boost::system::error_code& ec5, std::size_t) {
                if (ec5) return self->fail("reading the answer", ec5);
                HttpsResponse r;
                r.status = static_cast<int>(self->res.result_int());
                if (!self->res.body().empty()) {
                  r.body = nlohmann::json::parse(self->res.body(), nullptr, false);
                  if (r.body.is_discarded()) {
                    r.body = nullptr;
                    r.error = "the provider's answer (HTTP " + std::to_string(r.status) + ") is not JSON";
                    r.status = 0;
                  }
                }
                self->end(std::move(r));
              });
            });
          });
        });
      });
    }
  };
};

HttpsClient::HttpsClient(HttpsSettings settings) : impl_(std::make_unique<Impl>(std::move(settings))) {}

HttpsClient::~HttpsClient() { stop(); }

void HttpsClient::stop() { impl_->stop(); }

const HttpsUrl& HttpsClient::url() const { return impl_->url; }

void HttpsClient::post(const std::string& path, const nlohmann::json& body, Done done) {
  std::shared_ptr<Impl::Request> r;
  {
    std::lock_guard lock(impl_->mutex);
    if (!impl_->stopped) {
      r = std::make_shared<Impl::Request>(*impl_, ++impl_->next_id, std::move(done));
      impl_->in_flight.emplace(r->id, r);
    }
  }
  if (!r) {
    done({.status = 0, .body = nullptr, .error = "the client has stopped"});
    return;
  }
  r->req.method(http::verb::post);
  r->req.target(impl_->url.base_path + path);
  r->req.version(11);
  const bool default_port = impl_->url.port == "443";
  r->req.set(http::field::host, (impl_->url.host.find(':') != std::string::npos ? "[" + impl_->url.host + "]" : impl_->url.host) +
                                    (default_port ? "" : ":" + impl_->url.port));
  r->req.set(http::field::user_agent, "pilecore");
  r->req.set(http::field::content_type, "application/json");
  r->req.set(http::field::accept, "application/json");
  r->req.set(http::field::connection, "close");
  if (!impl_->settings.bearer.empty()) r->req.set(http::field::authorization, "Bearer " + impl_->settings.bearer);
  r->req.body() = body.dump();
  r->req.prepare_payload();
  asio::post(impl_->io, [r] { r->run(); });
}

void ProviderCalls::call(const std::string& path, const nlohmann::json& body, std::function<void(const HttpsResponse&)> answered,
                         std::function<void()> stopped) {
  const std::uint64_t id = ++seq_;
  calls_[id] = Call{std::move(answered), std::move(stopped)};
  client_.post(path, body, [this, id](HttpsResponse r) {
    to_strand_([this, id, r = std::move(r)] {
      auto it = calls_.find(id);
      if (it == calls_.end()) return;
      auto fn = std::move(it->second.answered);
      calls_.erase(it);
      fn(r);
    });
  });
}

void ProviderCalls::stop() noexcept {
  client_.stop();
  auto calls = std::move(calls_);
  calls_.clear();
  for (auto& [id, c] : calls) {
    try {
      c.stopped();
    } catch (...) {
    }
  }
}

}  // namespace pilecore::plugins
