// test-wallet-reader: a reader that, `present_after_ms` after start, presents an e-CNY wallet
// (the wallet card simulator, with the key and certificate the test made) at its connector,
// with an exchange channel that carries APDUs to it, as reader-nfc does with a real wallet. For
// the end-to-end test of payment-dcep through pilecored (payment_dcep_test.cpp); never installed.
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <pilecore/pilecore.hpp>

#include <memory>
#include <mutex>
#include <stdexcept>

#include "wallet_card.hpp"

namespace {

using namespace pilecore;

constexpr ConfigKey keys[] = {
    {.key = "wallet_id", .type = ConfigType::string, .required = true, .description = "The wallet's id (its certificate's CN)"},
    {.key = "wallet_key_file", .type = ConfigType::string, .required = true, .description = "PEM SM2 private key of the wallet"},
    {.key = "wallet_cert_file", .type = ConfigType::string, .required = true, .description = "PEM certificate of the wallet"},
    {.key = "balance_fen", .type = ConfigType::integer, .default_value = "100000", .min = 0, .max = 1e10, .description = "The wallet's balance", .unit = "fen"},
    {.key = "present_after_ms", .type = ConfigType::integer, .default_value = "0", .min = 0, .max = 3600000,
     .description = "Host-clock time from start to the wallet being held at the reader", .unit = "ms"},
};

template <class T>
T read_pem(const std::string& file, T (*read)(BIO*, T*, pem_password_cb*, void*)) {
  BIO* bio = BIO_new_file(file.c_str(), "r");
  if (bio == nullptr) throw std::runtime_error(file + ": cannot be read");
  T value = read(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (value == nullptr) throw std::runtime_error(file + ": not PEM");
  return value;
}

/// Outlives the reader if the payment method keeps it: once the reader stops, the wallet has left.
class Exchange final : public identification::Exchange {
 public:
  Exchange(Host& host, std::shared_ptr<sim::WalletCard> card) : host_(&host), card_(std::move(card)) {}
  void transceive(std::span<const std::uint8_t> command, Reply done) noexcept override {
    std::lock_guard lock(mutex_);
    try {
      if (host_ == nullptr) {
        done(Status::error(StatusCode::unavailable, "the wallet left the field"), {});
        return;
      }
      host_->post([done, reply = card_->transceive(command)] { done(Status::success(), reply); });
    } catch (...) {
    }
  }
  [[nodiscard]] bool present() const noexcept override {
    std::lock_guard lock(mutex_);
    return host_ != nullptr;
  }
  void leave() {
    std::lock_guard lock(mutex_);
    host_ = nullptr;
  }

 private:
  mutable std::mutex mutex_;
  Host* host_;
  std::shared_ptr<sim::WalletCard> card_;
};

class TestWalletReader final : public sensor::Sensor {
 public:
  explicit TestWalletReader(Host& host) : host_(host) {
    const auto& c = host.config();
    sim::Pkey key(read_pem<EVP_PKEY*>(c.string("wallet_key_file"), &PEM_read_bio_PrivateKey), sim::PkeyDeleter{});
    sim::Cert cert(read_pem<X509*>(c.string("wallet_cert_file"), &PEM_read_bio_X509), sim::X509Deleter{});
    card_ = std::make_shared<sim::WalletCard>(sim::WalletCard::Settings{.wallet_id = c.string("wallet_id"), .balance_fen = c.integer("balance_fen"),
                                                                        .counter = 0, .key = key, .certificate = cert, .chunk = 200,
                                                                        .uid = {0x08, 0xA1, 0xB2, 0xC3}});
  }
  Status start() noexcept override {
    exchange_ = std::make_shared<Exchange>(host_, card_);
    timer_ = host_.schedule(std::chrono::milliseconds(host_.config().integer("present_after_ms")), [this] {
      identification::Token token{.type = "wallet", .id = "08A1B2C3", .connector = host_.connector(), .evidence = {{"sak", "20"}}, .exchange = exchange_};
      host_.present(token);
    });
    return Status::success();
  }
  void stop() noexcept override {
    host_.cancel(timer_);
    if (exchange_) exchange_->leave();
  }
  [[nodiscard]] std::span<const sensor::ChannelInfo> channels() const noexcept override { return {}; }

 private:
  Host& host_;
  std::shared_ptr<sim::WalletCard> card_;
  std::shared_ptr<Exchange> exchange_;
  TimerId timer_ = 0;
};

}  // namespace

PILECORE_PLUGIN(TestWalletReader, {.name = "test-wallet-reader", .version = "0.1.0", .vendor = "pilecore", .license = "Apache-2.0",
                                   .description = "Test only: presents a simulated e-CNY wallet at its connector", .config = keys})
