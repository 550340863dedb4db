// payment-dcep: the offline e-CNY hard wallet (issue #9, item 3).
//
// A wallet held at the reader arrives as a token whose `exchange` carries APDUs to it. The method
// selects the wallet application, reads the wallet's id, counter and certificate, checks the
// certificate chain to the configured root and the offline limits before the wallet signs
// anything, then sends the payment request (amount, merchant id, a fresh 16-byte nonce, the
// time) and verifies the voucher that comes back: the certificate, the SM2/SM3 signature, the
// nonce, the amount, the merchant and the wallet's counter (strictly increasing per wallet). A
// voucher seen before is refused, also after a restart: every accepted voucher is in dcep.db with
// its digest, and queued there for upload to the operator's bank.
//
// Upload (issue #12): every upload_queue row (the voucher, and each change, void or refund) is an
// uplink record `voucher:<operation id>` the plugin hands the core with Host::upload (SDK 2.4)
// right after committing it; the core's outbox takes it to the back end, which settles it with
// the bank. The row stays 'queued' until the core says the back end acknowledged it, then it is
// 'uploaded'. start() uploads every row still queued (an ack that came while the instance was
// not running is answered at once), and a refused upload (outbox full, no link) is tried again
// with backoff. So the offline limit counts what the back end does not have yet.
//
// The end amount is unknown at the start, and a wallet is offline: the pile cannot come back to
// it. So the method is prepay-and-refund: the voucher is for the whole hold, capture keeps the
// bill, and the change is a refund queued for the online settlement (docs/payments.md says why
// tap-again-at-the-end was not chosen).
//
// Threads: APDUs go through the reader's asynchronous transceive (answers come on the strand);
// verification and the database run on the plugin's own worker thread, and each result is posted
// back. Nothing blocks the strand. Wallet ids are personal data: logs show only their last four
// characters.
#include <pilecore/pilecore.hpp>

#include <condition_variable>
#include <deque>
#include <exception>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "job_thread.hpp"
#include "voucher_store.hpp"
#include "wallet_protocol.hpp"
#include "wallet_trust.hpp"

namespace {

using namespace pilecore;
using dcep::Bytes;

constexpr ConfigKey keys[] = {
    {.key = "merchant_id", .type = ConfigType::string, .required = true,
     .description = "The merchant id the operator's bank gave this site; sent in every payment request and checked in every voucher (1 to 32 printable ASCII characters)"},
    {.key = "root_ca_file", .type = ConfigType::string, .required = true,
     .description = "PEM file of the e-CNY root certificate(s) a wallet's certificate must chain to"},
    {.key = "issuer_ca_file", .type = ConfigType::string,
     .description = "PEM file of the intermediate (issuer) certificates between the root and the wallets; not written: none"},
    {.key = "per_payment_limit_fen", .type = ConfigType::integer, .default_value = "200000", .min = 1, .max = 4294967295.0,
     .description = "Largest offline payment; a larger hold is declined before the wallet signs", .unit = "fen"},
    {.key = "offline_limit_fen", .type = ConfigType::integer, .default_value = "500000", .min = 0, .max = 1e12,
     .description = "Most offline money the pile accepts that the back end does not have yet (vouchers not acknowledged by it, less such refunds)", .unit = "fen"},
    {.key = "token_types", .type = ConfigType::string_list, .default_value = "[wallet]",
     .description = "Token types this method accepts (payment.tokens in the site file routes them here)"},
};

/// Wallet ids are personal data: only the last four characters go into a log.
std::string mask(std::string_view id) {
  if (id.size() <= 4) return "****";
  return std::string(id.size() - 4, '*') + std::string(id.substr(id.size() - 4));
}

std::string to_hex(dcep::ByteView b) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (auto c : b) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

struct Settings {
  std::string merchant_id;
  std::string root_ca_file;
  std::string issuer_ca_file;
  std::int64_t per_payment_limit_fen = 0;
  std::int64_t offline_limit_fen = 0;
};

/// The one reading of the configuration, shared by validate() and the constructor.
Settings read_settings(const ConfigValues& c, const std::function<void(std::string_view, std::string)>& error) {
  Settings s{c.string("merchant_id"), c.string("root_ca_file"), std::string(c.get_string("issuer_ca_file").value_or("")), c.integer("per_payment_limit_fen"),
             c.integer("offline_limit_fen")};
  bool printable = !s.merchant_id.empty() && s.merchant_id.size() <= dcep::kMaxIdSize;
  for (char ch : s.merchant_id) printable = printable && ch > 0x20 && ch < 0x7F;
  if (!printable) error("merchant_id", "must be 1 to 32 printable ASCII characters without spaces");
  try {
    (void)dcep::Trust::count_certificates(s.root_ca_file);
  } catch (const std::exception& e) {
    error("root_ca_file", e.what());
  }
  if (!s.issuer_ca_file.empty()) {
    try {
      (void)dcep::Trust::count_certificates(s.issuer_ca_file);
    } catch (const std::exception& e) {
      error("issuer_ca_file", e.what());
    }
  }
  return s;
}

using Worker = pilecore::plugins::JobThread;

/// A refused upload is tried again after this, doubling up to kUploadRetryMax.
constexpr Duration kUploadRetryFirst = std::chrono::seconds(30);
constexpr Duration kUploadRetryMax = std::chrono::minutes(10);

/// The uplink record of one upload_queue row (docs/protocol.md section 4, `voucher:`).
UplinkRecord record_of(const dcep::UploadRow& r) {
  return {.key = "voucher:" + r.operation_id,
          .kind = "voucher",
          .body = {{"op", r.operation_id},
                   {"txn", r.transaction_id},
                   {"type", r.kind},
                   {"reason", r.reason},
                   {"fen", r.amount_fen},
                   {"digest", r.digest},
                   {"voucher", r.voucher},
                   {"time_ms", r.created_ms}}};
}

/// One authorisation in flight: answered exactly once, by the flow or by stop().
struct Flight {
  std::string transaction_id;
  std::int64_t amount_fen = 0;
  std::shared_ptr<identification::Exchange> exchange;
  payment::AuthorizationCallback done;
  bool answered = false;
  dcep::WalletInfo info;
  Bytes nonce;
  std::uint64_t time_ms = 0;
  Bytes collected;  ///< response data reassembled across GET RESPONSE
};

class DcepMethod final : public payment::Method {
 public:
  static void validate(const ConfigValues& config, ConfigReport& report) {
    (void)read_settings(config, [&](std::string_view key, const std::string& msg) { report.error(key, msg); });
  }

  explicit DcepMethod(Host& host)
      : host_(host),
        settings_(read_settings(host.config(), [](std::string_view key, const std::string& msg) {
          throw std::runtime_error(std::string(key) + ": " + msg);
        })),
        token_types_(host.config().string_list("token_types")),
        trust_(std::make_shared<dcep::Trust>(settings_.root_ca_file, settings_.issuer_ca_file)) {}

  ~DcepMethod() override { stop(); }
  DcepMethod(const DcepMethod&) = delete;
  DcepMethod& operator=(const DcepMethod&) = delete;

  [[nodiscard]] payment::Capabilities capabilities() const noexcept override {
    payment::Capabilities c;
    try {
      c.offline = true;
      c.needs_prepayment = true;
      c.token_types = token_types_;
      c.channels = {{.name = "ecny", .fee_ppm = 0}};  // e-CNY carries no merchant fee
    } catch (...) {
    }
    return c;
  }

  Status start() noexcept override {
    try {
      const std::string path = (std::filesystem::path(std::string(host_.state_dir())) / "dcep.db").string();
      store_ = std::make_shared<dcep::VoucherStore>(path);
      worker_ = std::make_unique<Worker>();
      upload_retry_ = kUploadRetryFirst;
      upload_queued();  // what the back end had not acknowledged when the instance last ran
      host_.report_state("up", fmt::format("offline e-CNY wallet, {} fen a payment, {} fen until settlement", settings_.per_payment_limit_fen,
                                           settings_.offline_limit_fen));
      return Status::success();
    } catch (const std::exception& e) {
      return Status::error(StatusCode::failed, e.what());
    }
  }

  void stop() noexcept override {
    if (worker_) worker_->stop();  // finishes what it has; its posted results are dropped after stop
    worker_.reset();
    // Uploads waiting for the back end are not answered after stop: the next start uploads them.
    uploading_.clear();
    if (retry_timer_ != 0) host_.cancel(retry_timer_);
    retry_timer_ = 0;
    auto flights = std::move(flights_);
    flights_.clear();
    for (auto& [id, f] : flights) answer(f, declined("the payment method stopped"));
    // Results the worker posted are dropped once stopped: not final, the core asks again.
    auto ops = std::move(operations_);
    operations_.clear();
    for (auto& [id, done] : ops) {
      try {
        (*done)({.state = payment::OperationState::pending, .amount_fen = 0, .reference = {}, .reason = "the payment method stopped"});
      } catch (...) {
      }
    }
  }

  void authorize(const payment::AuthorizationRequest& request, payment::AuthorizationCallback done) noexcept override {
    try {
      auto f = std::make_shared<Flight>();
      f->transaction_id = std::string(request.transaction_id);
      f->amount_fen = request.amount_fen;
      f->done = std::move(done);
      if (request.token != nullptr) f->exchange = request.token->exchange;
      if (!worker_) return answer(f, declined("the payment method is not running"));
      if (f->transaction_id.empty()) return answer(f, declined("the transaction has no id"));
      if (flights_.count(f->transaction_id) != 0) return answer(f, declined("this transaction is already being authorised"));
      flights_[f->transaction_id] = f;
      // A repeat (the core asks again after a restart) is answered from the database, without a
      // second tap.
      on_worker(f, [store = store_, txn = f->transaction_id]() -> std::function<void(DcepMethod&, const std::shared_ptr<Flight>&)> {
        auto held = store->find(txn);
        return [held](DcepMethod& self, const std::shared_ptr<Flight>& fl) { self.after_lookup(fl, held); };
      });
    } catch (const std::exception& e) {
      host_.log().error("authorize failed: {}", e.what());
      try {
        if (done) done(declined(std::string("payment method error: ") + e.what()));
      } catch (...) {
      }
    }
  }

  void answer_step_up(std::string_view, const payment::StepUpAnswer&, payment::AuthorizationCallback done) noexcept override {
    try {
      done(declined("an e-CNY wallet payment asks for no step-up"));
    } catch (...) {
    }
  }

  void capture(const payment::CaptureRequest& r, payment::OperationCallback done) noexcept override {
    operation(std::move(done), [txn = std::string(r.transaction_id), op = std::string(r.operation_id), fen = r.amount_fen](dcep::VoucherStore& s, std::int64_t now) {
      return s.capture(txn, op, fen, now);
    }, "capture", std::string(r.operation_id));
  }
  void cancel(const payment::VoidRequest& r, payment::OperationCallback done) noexcept override {
    operation(std::move(done), [txn = std::string(r.transaction_id), op = std::string(r.operation_id)](dcep::VoucherStore& s, std::int64_t now) {
      return s.cancel(txn, op, now);
    }, "void", std::string(r.operation_id));
  }
  void refund(const payment::RefundRequest& r, payment::OperationCallback done) noexcept override {
    operation(std::move(done), [txn = std::string(r.transaction_id), op = std::string(r.operation_id), fen = r.amount_fen](dcep::VoucherStore& s, std::int64_t now) {
      return s.refund(txn, op, fen, now);
    }, "refund", std::string(r.operation_id));
  }

 private:
  using Next = std::function<void(DcepMethod&, const std::shared_ptr<Flight>&)>;

  static payment::AuthorizationResult declined(std::string reason) {
    return {.decision = payment::Decision::declined, .authorized_fen = 0, .reference = {}, .reason = std::move(reason), .challenge = {}};
  }

  void answer(const std::shared_ptr<Flight>& f, payment::AuthorizationResult r) {
    if (f->answered) return;
    f->answered = true;
    flights_.erase(f->transaction_id);
    if (r.decision == payment::Decision::declined) {
      ++declines_;
      host_.log().warn("{}: declined: {} ({} declined since start)", f->transaction_id, r.reason, declines_);
    }
    try {
      if (f->done) f->done(std::move(r));
    } catch (...) {
    }
  }

  [[nodiscard]] std::int64_t now_ms() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(host_.clock().now().time_since_epoch()).count();
  }

  /// Runs `job` on the worker; its continuation runs on the strand, unless the flight was
  /// answered meanwhile (stopped) or the job threw (declined with the reason).
  template <class Job>
  void on_worker(const std::shared_ptr<Flight>& f, Job job) {
    worker_->submit([this, f, job = std::move(job)] {
      Next next;
      std::string error;
      try {
        next = job();
      } catch (const std::exception& e) {
        error = e.what();
      }
      host_.post([this, f, next = std::move(next), error = std::move(error)] {
        if (f->answered) return;
        if (!next) return answer(f, declined("payment method error: " + error));
        next(*this, f);
      });
    });
  }

  template <class Op>
  void operation(payment::OperationCallback done, Op op, const char* what, std::string operation_id) noexcept {
    auto shared = std::make_shared<payment::OperationCallback>(std::move(done));
    const std::uint64_t key = ++operation_seq_;
    try {
      if (!worker_ || !store_) {
        (*shared)({.state = payment::OperationState::pending, .amount_fen = 0, .reference = {}, .reason = "the payment method is not running"});
        return;
      }
      const std::int64_t now = now_ms();
      operations_[key] = shared;
      worker_->submit([this, key, op = std::move(op), store = store_, now, what, operation_id = std::move(operation_id)] {
        payment::OperationResult r;
        std::optional<dcep::UploadRow> row;
        try {
          const dcep::Outcome o = op(*store, now);
          r = {.state = o.ok ? payment::OperationState::confirmed : payment::OperationState::failed, .amount_fen = o.amount_fen,
               .reference = o.reference, .reason = o.reason};
          // The change, void or refund this committed (or a repeat's, still queued).
          if (o.ok) row = store->queued_upload(operation_id);
        } catch (const std::exception& e) {
          // The disk, not the request: not final, the core asks again.
          r = {.state = payment::OperationState::pending, .amount_fen = 0, .reference = {}, .reason = e.what()};
        }
        host_.post([this, key, r, what, row = std::move(row)] {
          if (row) upload(*row);
          auto it = operations_.find(key);
          if (it == operations_.end()) return;
          auto callback = std::move(it->second);
          operations_.erase(it);
          host_.log().info("{} {}: {} fen{}{}", what, to_string(r.state), r.amount_fen, r.reason.empty() ? "" : ": ", r.reason);
          (*callback)(r);
        });
      });
    } catch (const std::exception& e) {
      operations_.erase(key);
      try {
        (*shared)({.state = payment::OperationState::pending, .amount_fen = 0, .reference = {}, .reason = e.what()});
      } catch (...) {
      }
    }
  }

  // --- the upload of the queue's rows (Host::upload) ------------------------------------------

  /// Reads every queued row on the worker and uploads those not already waiting for the back end.
  void upload_queued() {
    if (!worker_) return;
    worker_->submit([this, store = store_] {
      std::vector<dcep::UploadRow> rows;
      try {
        rows = store->queued_uploads();
      } catch (const std::exception& e) {
        host_.log().error("the upload queue cannot be read: {}; trying again later", e.what());
        host_.post([this] { retry_uploads_later(); });
        return;
      }
      host_.post([this, rows = std::move(rows)] {
        if (!rows.empty()) host_.log().info("{} queued record(s) not yet acknowledged by the back end: uploading", rows.size());
        for (const auto& r : rows) upload(r);
      });
    });
  }

  /// Hands one row's record to the core; once the back end has it, the row is 'uploaded'.
  void upload(const dcep::UploadRow& row) {
    if (!uploading_.insert(row.operation_id).second) return;  // already waiting for the back end
    host_.upload(record_of(row), [this, op = row.operation_id, fen = row.amount_fen](Status st) {
      uploading_.erase(op);
      if (!st.ok()) {
        host_.log().warn("voucher:{} ({} fen) was not taken for upload ({}): {}; it stays queued", op, fen, to_string(st.code()), st.message());
        if (st.code() != StatusCode::invalid_argument) retry_uploads_later();
        return;
      }
      upload_retry_ = kUploadRetryFirst;
      if (!worker_) return;
      worker_->submit([this, store = store_, op, now = now_ms()] {
        try {
          if (store->mark_uploaded(op, now)) host_.log().info("voucher:{} acknowledged by the back end", op);
        } catch (const std::exception& e) {
          // Still queued: the next start uploads it again, and the core answers at once.
          host_.log().error("voucher:{} was acknowledged but could not be marked so: {}", op, e.what());
        }
      });
    });
  }

  void retry_uploads_later() {
    if (retry_timer_ != 0 || !worker_) return;
    retry_timer_ = host_.schedule(upload_retry_, [this] {
      retry_timer_ = 0;
      upload_queued();
    });
    upload_retry_ = std::min(upload_retry_ * 2, kUploadRetryMax);
  }

  // --- the authorisation flow, one step per function ---------------------------------------

  void after_lookup(const std::shared_ptr<Flight>& f, const std::optional<dcep::HeldVoucher>& held) {
    if (held) {
      host_.log().info("{}: authorisation repeated; the voucher accepted before answers it (no second tap)", f->transaction_id);
      return answer(f, {.decision = payment::Decision::approved, .authorized_fen = held->amount_fen, .reference = held->reference, .reason = {}, .challenge = {}});
    }
    if (!f->exchange || !f->exchange->present()) return answer(f, declined("hold the e-CNY wallet at the reader"));
    if (f->amount_fen <= 0) return answer(f, declined(fmt::format("the amount {} fen is not positive", f->amount_fen)));
    if (f->amount_fen > settings_.per_payment_limit_fen) {
      return answer(f, declined(fmt::format("{} fen is above the offline limit of {} fen a payment", f->amount_fen, settings_.per_payment_limit_fen)));
    }
    send(f, dcep::select_command(), [](DcepMethod& self, const std::shared_ptr<Flight>& fl, const dcep::Response& r) {
      if (!r.ok()) return self.answer(fl, declined(dcep::describe_status(r.sw)));
      if (r.data.empty() || r.data[0] != dcep::kProtocolVersion) return self.answer(fl, declined("the wallet speaks another protocol version"));
      self.send(fl, dcep::get_wallet_info_command(), [](DcepMethod& s, const std::shared_ptr<Flight>& f2, const dcep::Response& info) {
        s.after_info(f2, info);
      });
    });
  }

  /// Sends one command and reassembles a chunked answer (61xx, GET RESPONSE) before `then`.
  void send(const std::shared_ptr<Flight>& f, const Bytes& command,
            std::function<void(DcepMethod&, const std::shared_ptr<Flight>&, const dcep::Response&)> then, int round = 0) {
    if (round == 0) f->collected.clear();
    f->exchange->transceive(command, [this, f, then = std::move(then), round](Status st, std::vector<std::uint8_t> reply) mutable {
      if (f->answered) return;
      if (!st.ok() || !f->exchange->present()) {
        return answer(f, declined("the wallet left the reader before the payment completed; present it again"));
      }
      auto r = dcep::split_response(reply);
      if (!r) return answer(f, declined("the wallet's answer is shorter than a status word"));
      f->collected.insert(f->collected.end(), r->data.begin(), r->data.end());
      if (r->more()) {
        if (round + 1 >= dcep::kMaxChunks) return answer(f, declined("the wallet's answer does not end"));
        return send(f, dcep::get_response_command(static_cast<std::uint8_t>(r->sw & 0xFF)), std::move(then), round + 1);
      }
      r->data = std::move(f->collected);
      then(*this, f, *r);
    });
  }

  void after_info(const std::shared_ptr<Flight>& f, const dcep::Response& r) {
    if (!r.ok()) return answer(f, declined(dcep::describe_status(r.sw)));
    auto parsed = dcep::parse_wallet_info(r.data);
    if (auto* e = std::get_if<std::string>(&parsed)) return answer(f, declined("the wallet's answer is malformed: " + *e));
    f->info = std::get<dcep::WalletInfo>(std::move(parsed));
    // Before the wallet signs anything: is it a wallet we trust, may the pile take this much
    // offline now, is its counter ahead of what we saw? A wallet is never debited for a voucher
    // the pile would then refuse for one of these reasons.
    const std::time_t now = std::chrono::duration_cast<std::chrono::seconds>(host_.clock().now().time_since_epoch()).count();
    on_worker(f, [f, now, store = store_, trust = trust_, limit = settings_.offline_limit_fen]() -> Next {
      std::string why;
      if (auto bad = trust->verify_certificate(f->info.certificate, f->info.wallet_id, now)) {
        why = *bad;
      } else if (auto last = store->last_counter(f->info.wallet_id); last && f->info.counter < *last) {
        why = fmt::format("the wallet's counter went back ({} after {}): a cloned or rolled-back wallet", f->info.counter, *last);
      } else if (store->unsettled_fen() + f->amount_fen > limit) {
        why = "the pile's offline limit until the next settlement is reached";
      }
      return [why](DcepMethod& self, const std::shared_ptr<Flight>& fl) {
        if (!why.empty()) return self.answer(fl, declined(why));
        self.pay(fl);
      };
    });
  }

  void pay(const std::shared_ptr<Flight>& f) {
    try {
      f->nonce = dcep::random_bytes(dcep::kNonceSize);
    } catch (const std::exception& e) {
      return answer(f, declined(e.what()));
    }
    f->time_ms = static_cast<std::uint64_t>(now_ms());
    host_.log().info("{}: wallet {} asked to pay {} fen (counter {})", f->transaction_id, mask(f->info.wallet_id), f->amount_fen, f->info.counter);
    send(f, dcep::payment_command(static_cast<std::uint32_t>(f->amount_fen), settings_.merchant_id, f->nonce, f->time_ms),
         [](DcepMethod& self, const std::shared_ptr<Flight>& fl, const dcep::Response& r) { self.after_payment(fl, r); });
  }

  void after_payment(const std::shared_ptr<Flight>& f, const dcep::Response& r) {
    if (!r.ok()) return answer(f, declined(dcep::describe_status(r.sw)));
    auto parsed = dcep::parse_voucher(r.data);
    if (auto* e = std::get_if<std::string>(&parsed)) return answer(f, declined("the wallet's voucher is malformed: " + *e));
    const std::time_t now = std::chrono::duration_cast<std::chrono::seconds>(host_.clock().now().time_since_epoch()).count();
    on_worker(f, [f, now, v = std::get<dcep::Voucher>(std::move(parsed)), store = store_, trust = trust_, settings = settings_]() -> Next {
      const Bytes digest = dcep::sm3(v.signed_body);
      const std::string reference = "ECNY-" + to_hex(digest).substr(0, 20);
      std::string why;
      if (v.wallet_id != f->info.wallet_id || v.certificate != f->info.certificate) {
        why = "the voucher comes from another wallet than the one read";
      } else if (auto bad = trust->verify_certificate(v.certificate, v.wallet_id, now)) {
        why = *bad;
      } else if (!trust->verify_signature(v.certificate, v.signed_body, v.signature)) {
        why = "the voucher's signature is not the wallet's (forged or damaged)";
      } else if (auto seen = store->find(f->transaction_id); seen) {
        why = "this transaction already has a voucher";
      } else {
        // Seen before is checked ahead of the nonce, so a replay is named for what it is.
        if (store->seen(digest)) {
          why = "this voucher was presented before (a replay)";
        } else if (v.nonce != f->nonce || v.time_ms != f->time_ms) {
          why = "the voucher does not answer this payment request (nonce or time differ): a replayed or substituted voucher";
        } else if (v.amount_fen != static_cast<std::uint32_t>(f->amount_fen)) {
          why = fmt::format("the voucher is for {} fen, the pile asked {} fen", v.amount_fen, f->amount_fen);
        } else if (v.merchant_id != settings.merchant_id) {
          why = "the voucher names another merchant";
        } else if (v.counter <= f->info.counter) {
          why = fmt::format("the wallet's counter did not increase ({} after {})", v.counter, f->info.counter);
        } else if (auto refused = store->accept(v, digest, f->transaction_id, reference, now * 1000, settings.offline_limit_fen)) {
          why = *refused;
        }
      }
      std::optional<dcep::UploadRow> row;
      if (why.empty()) row = store->queued_upload(f->transaction_id + "/authorize");
      return [why, reference, amount = static_cast<std::int64_t>(v.amount_fen), wallet = mask(v.wallet_id), counter = v.counter, row = std::move(row)](
                 DcepMethod& self, const std::shared_ptr<Flight>& fl) {
        if (!why.empty()) return self.answer(fl, declined(why));
        if (row) self.upload(*row);
        self.host_.log().info("{}: voucher {} accepted from wallet {}: {} fen, counter {}; queued for settlement", fl->transaction_id, reference, wallet,
                              amount, counter);
        self.answer(fl, {.decision = payment::Decision::approved, .authorized_fen = amount, .reference = reference, .reason = {}, .challenge = {}});
      };
    });
  }

  Host& host_;
  Settings settings_;
  std::vector<std::string> token_types_;
  std::shared_ptr<const dcep::Trust> trust_;
  std::shared_ptr<dcep::VoucherStore> store_;
  std::unique_ptr<Worker> worker_;
  std::map<std::string, std::shared_ptr<Flight>> flights_;
  std::map<std::uint64_t, std::shared_ptr<payment::OperationCallback>> operations_;  ///< captures, voids, refunds not yet answered
  std::uint64_t operation_seq_ = 0;
  std::uint64_t declines_ = 0;
  std::set<std::string> uploading_;  ///< operation ids whose record waits for the back end's ack
  TimerId retry_timer_ = 0;
  Duration upload_retry_ = kUploadRetryFirst;
};

}  // namespace

PILECORE_PLUGIN(DcepMethod, {.name = "payment-dcep", .version = "0.1.0", .vendor = "pilecore", .license = "Apache-2.0",
                             .description = "Offline e-CNY hard wallet over the reader's APDU exchange: SM2/SM3 vouchers, offline limits, vouchers uploaded to the back end",
                             .config = keys})
