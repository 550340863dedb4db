// reader-nfc: a contactless reader (NXP PN532 and whatever else libnfc drives) at a connector.
//
// It polls for ISO 14443A targets at 106 kbps. A target that enters the field is presented to
// the core once (Host::present): type "card" (card_token_type), or "wallet" (wallet_token_type)
// when it speaks ISO 14443-4 and answers SELECT of one of `wallet_aids` with 90 00; id the UID in
// hex; evidence atqa, sak and ats. While it stays, the token's Exchange carries APDUs to it (or,
// to a MIFARE Classic, its AUTH and READ frames, which the PN532 sends with InDataExchange); once
// it has left, present() is false and every transceive answers unavailable. A target that stays
// is not presented again; one that leaves and comes back is.
//
// Threading. libnfc blocks, so it runs on the instance's own reader thread; the core's strand
// never waits for it. The strand hands APDUs to the thread through a queue, and the thread posts
// answers, tokens and health back with Host::post. The queue and the "which target is in the
// field" generation live in a state object that the Exchange objects share, because a payment
// method may keep an Exchange after this instance has stopped: it then answers unavailable
// without touching the instance. Polling and presence checks are paced in real time: they pace
// hardware, not the site's (possibly simulated) clock.
//
// Failures. A reader that cannot be opened, or that stops answering (unplugged, its serial line
// gone), raises the alarm reader.unavailable and reports "down"; the thread reopens it, waiting
// reopen_min_ms, doubling up to reopen_max_ms; the first good open clears the alarm.
#include <nfc/nfc.h>

#include <pilecore/pilecore.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "hex.hpp"

namespace {

using namespace pilecore;
using Bytes = std::vector<std::uint8_t>;

constexpr ConfigKey keys[] = {
    {.key = "device", .type = ConfigType::string, .required = true,
     .description = "libnfc connection string of the reader: <driver>:<port>[:<baud>], e.g. pn532_uart:/dev/ttyS1 or "
                    "pn532_uart:/dev/ttyUSB0:115200 (no device scan is made)"},
    {.key = "poll_ms", .type = ConfigType::integer, .default_value = "200", .min = 10, .max = 10000,
     .description = "Time between two polls for a target and between two presence checks of a target in the field (real time)", .unit = "ms"},
    {.key = "card_token_type", .type = ConfigType::string, .default_value = "card",
     .description = "Token type of a card or phone held at the reader; payment.tokens in the site file maps it to a payment method"},
    {.key = "wallet_aids", .type = ConfigType::string_list, .default_value = "[]",
     .description = "Application ids (hex, 5 to 16 bytes) of wallet applets: an ISO 14443-4 target that answers SELECT of one "
                    "of them with 90 00 is presented as wallet_token_type"},
    {.key = "wallet_token_type", .type = ConfigType::string, .default_value = "wallet",
     .description = "Token type of a target that answers SELECT of a wallet AID"},
    {.key = "exchange_timeout_ms", .type = ConfigType::integer, .default_value = "1000", .min = 50, .max = 5000,
     .description = "How long the reader waits for a card's answer to one APDU before the reader counts as failed; stopping the "
                    "instance waits for at most one such exchange (real time)", .unit = "ms"},
    {.key = "reopen_min_ms", .type = ConfigType::integer, .default_value = "500", .min = 10, .max = 600000,
     .description = "First wait before reopening a reader that failed; doubles after each failed attempt (real time)", .unit = "ms"},
    {.key = "reopen_max_ms", .type = ConfigType::integer, .default_value = "30000", .min = 10, .max = 600000,
     .description = "Longest wait between two attempts to reopen a failed reader (real time)", .unit = "ms"},
};

std::string hex(const std::uint8_t* p, std::size_t n) {
  return pilecore::plugins::to_hex(p, n);
}

using pilecore::plugins::parse_hex;

/// The settings the declarations cannot check; every problem goes to `problem(key, message)`.
template <class Problem>
std::vector<Bytes> read_settings(const ConfigValues& c, Problem&& problem) {
  const std::string device = c.string("device");
  const auto colon = device.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == device.size()) {
    problem("device", "device '" + device + "' is not a libnfc connection string: write <driver>:<port>, e.g. pn532_uart:/dev/ttyS1");
  } else if (device.size() >= NFC_BUFSIZE_CONNSTRING) {
    problem("device", "device is longer than libnfc's " + std::to_string(NFC_BUFSIZE_CONNSTRING - 1) + " characters");
  }
  std::vector<Bytes> aids;
  const auto list = c.string_list("wallet_aids");
  for (std::size_t i = 0; i < list.size(); ++i) {
    auto aid = parse_hex(list[i]);
    if (!aid || aid->size() < 5 || aid->size() > 16) {
      problem("wallet_aids[" + std::to_string(i) + "]", "'" + list[i] + "' is not an AID: 5 to 16 bytes in hex, e.g. A000000333010101");
    } else {
      aids.push_back(std::move(*aid));
    }
  }
  if (c.string("card_token_type").empty()) problem("card_token_type", "the token type must not be empty");
  if (c.string("wallet_token_type").empty()) problem("wallet_token_type", "the token type must not be empty");
  if (c.integer("reopen_min_ms") > c.integer("reopen_max_ms")) problem("reopen_min_ms", "reopen_min_ms is above reopen_max_ms");
  return aids;
}

/// libnfc keeps its driver list in a process global that nfc_init fills and nfc_exit frees, so
/// two readers in one pilecored share one context, made by the first and freed by the last.
class LibnfcContext {
 public:
  static nfc_context* acquire() {
    std::lock_guard lock(mutex());
    if (users()++ == 0) nfc_init(&context());
    return context();
  }
  static void release() {
    std::lock_guard lock(mutex());
    if (--users() == 0 && context() != nullptr) {
      nfc_exit(context());
      context() = nullptr;
    }
  }
  /// nfc_open walks the driver list; serialised against acquire and release.
  static nfc_device* open(const std::string& connstring) {
    std::lock_guard lock(mutex());
    return context() == nullptr ? nullptr : nfc_open(context(), connstring.c_str());
  }

 private:
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static int& users() {
    static int n = 0;
    return n;
  }
  static nfc_context*& context() {
    static nfc_context* c = nullptr;
    return c;
  }
};

/// What the reader thread, the strand and the Exchange objects share.
struct Shared {
  struct Request {
    std::uint64_t target = 0;
    Bytes apdu;
    identification::Exchange::Reply done;
  };
  struct Answer {
    identification::Exchange::Reply done;
    Status status;
    Bytes response;
  };
  std::mutex mutex;
  std::condition_variable wake;
  bool stopping = false;
  std::uint64_t target = 0;  ///< generation of the target in the field; 0 when none
  std::deque<Request> requests;
  std::deque<Answer> answers;  ///< finished on the reader thread, to be called on the strand
};

Status gone() { return Status::error(StatusCode::unavailable, "the card has left the reader's field"); }

class NfcExchange final : public identification::Exchange {
 public:
  NfcExchange(std::shared_ptr<Shared> shared, std::uint64_t target) : shared_(std::move(shared)), target_(target) {}

  void transceive(std::span<const std::uint8_t> command, Reply done) noexcept override {
    Shared::Request r;
    try {
      r.target = target_;
      r.apdu.assign(command.begin(), command.end());
    } catch (...) {
      done(Status::error(StatusCode::failed, "the reader could not queue the command (out of memory)"), {});
      return;
    }
    r.done = std::move(done);
    bool queued = false;
    {
      std::lock_guard lock(shared_->mutex);
      if (!shared_->stopping && shared_->target == target_) {
        try {
          shared_->requests.push_back(std::move(r));
          queued = true;
        } catch (...) {
        }
      }
    }
    if (queued) {
      shared_->wake.notify_all();
    } else if (r.done) {
      r.done(gone(), {});
    }
  }

  [[nodiscard]] bool present() const noexcept override {
    std::lock_guard lock(shared_->mutex);
    return !shared_->stopping && shared_->target == target_;
  }

 private:
  std::shared_ptr<Shared> shared_;
  std::uint64_t target_;
};

/// libnfc errors that mean the reader itself is gone or mute, not just the card.
bool reader_failed(int res) { return res == NFC_EIO || res == NFC_ENOTSUCHDEV || res == NFC_ETIMEOUT || res == NFC_ESOFT; }

class NfcReader final : public sensor::Sensor {
 public:
  explicit NfcReader(Host& host)
      : host_(host),
        device_(host.config().string("device")),
        poll_(host.config().integer("poll_ms")),
        exchange_timeout_ms_(static_cast<int>(host.config().integer("exchange_timeout_ms"))),
        reopen_min_(host.config().integer("reopen_min_ms")),
        reopen_max_(host.config().integer("reopen_max_ms")),
        card_type_(host.config().string("card_token_type")),
        wallet_type_(host.config().string("wallet_token_type")),
        connector_(host.connector()) {
    std::string error;
    wallet_aids_ = read_settings(host.config(), [&](std::string_view, const std::string& message) {
      if (error.empty()) error = message;
    });
    if (!error.empty()) throw std::invalid_argument(error);
  }

  static void validate(const ConfigValues& config, ConfigReport& report) {
    read_settings(config, [&](std::string_view key, const std::string& message) { report.error(key, message); });
  }

  ~NfcReader() override { halt(); }
  NfcReader(const NfcReader&) = delete;
  NfcReader& operator=(const NfcReader&) = delete;

  Status start() noexcept override {
    try {
      shared_ = std::make_shared<Shared>();
      host_.report_state("degraded", "opening the reader at " + device_);
      thread_ = std::thread([this] { run(); });
      return Status::success();
    } catch (const std::exception& e) {
      return Status::error(StatusCode::failed, e.what());
    }
  }

  void stop() noexcept override { halt(); }

  [[nodiscard]] std::span<const sensor::ChannelInfo> channels() const noexcept override { return {}; }

 private:
  // ---------------------------------------------------------------------------------------
  // strand side

  /// Calls the answers the reader thread has finished.
  void deliver() {
    std::deque<Shared::Answer> ready;
    {
      std::lock_guard lock(shared_->mutex);
      ready.swap(shared_->answers);
    }
    for (auto& a : ready) a.done(a.status, std::move(a.response));
  }

  void reader_up(const std::string& detail) {
    if (alarm_) {
      alarm_ = false;
      host_.raise({.severity = AlarmSeverity::warning, .code = "reader.unavailable", .message = "the reader answers again: " + detail, .active = false});
    }
    host_.report_state("up", detail);
  }

  void reader_down(const std::string& why) {
    if (!alarm_) {
      alarm_ = true;
      host_.raise({.severity = AlarmSeverity::warning, .code = "reader.unavailable", .message = why, .active = true});
    }
    host_.report_state("down", why);
  }

  /// Stops and joins the reader thread, then answers what is left: the posts that would have
  /// done it no longer run once the instance stops. Idempotent.
  void halt() noexcept {
    if (!shared_) return;
    std::deque<Shared::Request> unanswered;
    {
      std::lock_guard lock(shared_->mutex);
      shared_->stopping = true;
      shared_->target = 0;
    }
    shared_->wake.notify_all();
    if (thread_.joinable()) thread_.join();
    {
      std::lock_guard lock(shared_->mutex);
      unanswered.swap(shared_->requests);
    }
    try {
      deliver();
      for (auto& r : unanswered) r.done(Status::error(StatusCode::unavailable, "the reader has stopped"), {});
    } catch (...) {
    }
  }

  // ---------------------------------------------------------------------------------------
  // reader thread

  /// Waits `d` or until stop; true when stopping.
  bool sleep_for(Duration d) {
    std::unique_lock lock(shared_->mutex);
    return shared_->wake.wait_for(lock, d, [this] { return shared_->stopping; });
  }

  bool stopping() {
    std::lock_guard lock(shared_->mutex);
    return shared_->stopping;
  }

  void answer(Shared::Request& r, Status status, Bytes response) {
    {
      std::lock_guard lock(shared_->mutex);
      shared_->answers.push_back({std::move(r.done), std::move(status), std::move(response)});
    }
    host_.post([this] { deliver(); });
  }

  void run() {
    LibnfcContext::acquire();
    nfc_device* dev = nullptr;
    Duration backoff = reopen_min_;
    unsigned failed_opens = 0;
    while (!stopping()) {
      if (dev == nullptr) {
        std::string error;
        dev = open(error);
        if (dev == nullptr) {
          // The alarm says it once; the log does not repeat it every attempt for a reader that stays away.
          host_.log().log(++failed_opens == 1 ? LogLevel::warn : LogLevel::debug, "{}; next attempt in {} ms", error, backoff.count());
          host_.post([this, error] { reader_down(error); });
          if (sleep_for(backoff)) break;
          backoff = std::min(backoff * 2, reopen_max_);
          continue;
        }
        backoff = reopen_min_;
        failed_opens = 0;
        const std::string detail = std::string(nfc_device_get_name(dev)) + " at " + device_;
        host_.log().info("reader open: {}", detail);
        host_.post([this, detail] { reader_up(detail); });
      }
      nfc_target nt;
      std::memset(&nt, 0, sizeof nt);
      const nfc_modulation iso14443a{.nmt = NMT_ISO14443A, .nbr = NBR_106};
      const int res = nfc_initiator_select_passive_target(dev, iso14443a, nullptr, 0, &nt);
      if (res < 0) {
        lose(dev, std::string("polling for cards failed: ") + nfc_strerror(dev));
        continue;
      }
      if (res == 0) {
        if (sleep_for(poll_)) break;
        continue;
      }
      serve(dev, nt);
    }
    if (dev != nullptr) nfc_close(dev);
    LibnfcContext::release();
  }

  nfc_device* open(std::string& error) {
    nfc_device* dev = LibnfcContext::open(device_);
    if (dev == nullptr) {
      error = "cannot open the reader at " + device_ + " (libnfc found no working device there)";
      return nullptr;
    }
    // Initiator mode; then one passive activation attempt per poll instead of libnfc's default
    // of waiting forever, so the thread comes back to serve exchanges and to stop.
    if (nfc_initiator_init(dev) < 0 || nfc_device_set_property_bool(dev, NP_INFINITE_SELECT, false) < 0) {
      error = "the reader at " + device_ + " refused to become an initiator: " + nfc_strerror(dev);
      nfc_close(dev);
      return nullptr;
    }
    return dev;
  }

  void lose(nfc_device*& dev, const std::string& why) {
    host_.log().warn("reader lost: {}", why);
    nfc_close(dev);
    dev = nullptr;
    host_.post([this, why] { reader_down(why); });
  }

  /// Presents the target and serves it until it leaves, the reader fails or the instance stops.
  void serve(nfc_device*& dev, const nfc_target& nt) {
    const nfc_iso14443a_info& a = nt.nti.nai;
    const bool iso4 = (a.btSak & 0x20) != 0;
    std::string type = card_type_;
    if (iso4 && !wallet_aids_.empty()) {
      for (const auto& aid : wallet_aids_) {
        Bytes select = {0x00, 0xA4, 0x04, 0x00, static_cast<std::uint8_t>(aid.size())};
        select.insert(select.end(), aid.begin(), aid.end());
        select.push_back(0x00);
        std::uint8_t rx[264];
        const int n = nfc_initiator_transceive_bytes(dev, select.data(), select.size(), rx, sizeof rx, exchange_timeout_ms_);
        if (n < 0) {
          if (reader_failed(n)) return lose(dev, std::string("selecting a wallet application failed: ") + nfc_strerror(dev));
          if (nfc_initiator_target_is_present(dev, nullptr) != NFC_SUCCESS) return;  // gone before it could be presented
          continue;
        }
        if (n >= 2 && rx[n - 2] == 0x90 && rx[n - 1] == 0x00) {
          type = wallet_type_;
          break;
        }
      }
    }
    std::uint64_t generation = 0;
    {
      std::lock_guard lock(shared_->mutex);
      generation = ++generations_;
      shared_->target = generation;
    }
    identification::Token token;
    token.type = type;
    token.id = hex(a.abtUid, a.szUidLen);
    token.connector = connector_;
    token.evidence = {{"atqa", hex(a.abtAtqa, 2)}, {"sak", hex(&a.btSak, 1)}};
    if (a.szAtsLen > 0) token.evidence.push_back({"ats", hex(a.abtAts, a.szAtsLen)});
    // A MIFARE Classic (SAK bit 3 without ISO 14443-4) gets the channel too: its frames (AUTH,
    // READ) go through the same InDataExchange, the chip running the Crypto1 handshake itself.
    const bool mifare_classic = !iso4 && (a.btSak & 0x08) != 0;
    if (iso4 || mifare_classic) token.exchange = std::make_shared<NfcExchange>(shared_, generation);
    // The UID is personal data: the log says what kind of target came, never which.
    // By value: libnfc's target structs are packed, and fmt binds its arguments by reference.
    const std::size_t uid_len = a.szUidLen;
    const unsigned sak = a.btSak;
    host_.log().info("a {} entered the field ({}-byte UID, ATQA {}, SAK {:02x}{})", type, uid_len, hex(a.abtAtqa, 2), sak,
                     iso4 ? ", APDUs offered" : mifare_classic ? ", MIFARE frames offered" : "");
    host_.post([this, token = std::move(token)] { host_.present(token); });

    for (;;) {
      std::optional<Shared::Request> request;
      {
        std::unique_lock lock(shared_->mutex);
        shared_->wake.wait_for(lock, poll_, [this] { return shared_->stopping || !shared_->requests.empty(); });
        if (shared_->stopping) return;
        if (!shared_->requests.empty()) {
          request = std::move(shared_->requests.front());
          shared_->requests.pop_front();
        }
      }
      if (request && request->target != generation) {
        answer(*request, gone(), {});
        continue;
      }
      int res = 0;
      std::string failure;
      if (request) {
        std::uint8_t rx[264];
        res = nfc_initiator_transceive_bytes(dev, request->apdu.data(), request->apdu.size(), rx, sizeof rx, exchange_timeout_ms_);
        if (res >= 0) {
          answer(*request, Status::success(), Bytes(rx, rx + res));
          continue;
        }
        failure = nfc_strerror(dev);  // before the presence check overwrites it
      }
      if (!reader_failed(res)) res = nfc_initiator_target_is_present(dev, nullptr);
      if (res == NFC_SUCCESS) {
        // Still here: the exchange failed for another reason (a protocol error, an answer
        // too long); the card stays usable.
        if (request) {
          answer(*request, Status::error(StatusCode::failed, "the exchange failed: " + failure), {});
        }
        continue;
      }
      {
        std::lock_guard lock(shared_->mutex);
        shared_->target = 0;
      }
      if (request) answer(*request, gone(), {});
      host_.log().info("the {} left the field", type);
      if (reader_failed(res)) return lose(dev, std::string("the reader stopped answering: ") + nfc_strerror(dev));
      nfc_initiator_deselect_target(dev);
      return;
    }
  }

  Host& host_;
  std::string device_;
  Duration poll_;
  int exchange_timeout_ms_;
  Duration reopen_min_;
  Duration reopen_max_;
  std::string card_type_;
  std::string wallet_type_;
  std::optional<std::uint32_t> connector_;
  std::vector<Bytes> wallet_aids_;

  std::shared_ptr<Shared> shared_;
  std::thread thread_;
  std::uint64_t generations_ = 0;  ///< reader thread only

  // strand side
  bool alarm_ = false;
};

}  // namespace

PILECORE_PLUGIN(NfcReader, {.name = "reader-nfc", .version = "0.1.0", .vendor = "pilecore", .license = "Apache-2.0",
                            .description = "Contactless reader (PN532 and others, libnfc): presents cards and phones as tokens, "
                                           "APDU exchange while they stay in the field",
                            .config = keys})
