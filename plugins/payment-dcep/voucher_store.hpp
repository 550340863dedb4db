// The plugin's durable state: dcep.db in the instance's state directory (owner-only, WAL,
// synchronous=FULL). Every accepted voucher, the highest counter seen per wallet, and the upload
// queue the settlement uplink reads (docs/payments.md describes the tables: the uplink arrives
// in a later issue, and reads and marks rows itself). Used from one thread at a time.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "wallet_protocol.hpp"

struct sqlite3;

namespace dcep {

struct Outcome {
  bool ok = false;  ///< confirmed; else failed with `reason`
  std::int64_t amount_fen = 0;
  std::string reference;
  std::string reason;
};

struct HeldVoucher {
  std::int64_t amount_fen = 0;
  std::string reference;
};

class VoucherStore {
 public:
  /// Opens or creates the database; throws std::runtime_error naming the file.
  explicit VoucherStore(const std::string& path);
  ~VoucherStore();
  VoucherStore(const VoucherStore&) = delete;
  VoucherStore& operator=(const VoucherStore&) = delete;

  /// The voucher accepted for `transaction_id`, if any (a repeated authorisation).
  std::optional<HeldVoucher> find(const std::string& transaction_id);
  /// Offline money not yet settled online: queued vouchers less queued refunds.
  std::int64_t unsettled_fen();
  /// Whether a voucher with this digest (SM3 of its signed body) was accepted before.
  bool seen(ByteView digest);
  /// The highest counter accepted from `wallet_id`.
  std::optional<std::uint32_t> last_counter(const std::string& wallet_id);

  /// Records a verified voucher and queues it for upload, in one transaction, after checking
  /// again, inside it, what another payment may have changed: seen before, the counter, the
  /// offline limit. Null on success, else the reason for the decline.
  std::optional<std::string> accept(const Voucher& v, ByteView digest, const std::string& transaction_id, const std::string& reference,
                                    std::int64_t now_ms, std::int64_t offline_limit_fen);

  Outcome capture(const std::string& transaction_id, const std::string& operation_id, std::int64_t amount_fen, std::int64_t now_ms);
  Outcome cancel(const std::string& transaction_id, const std::string& operation_id, std::int64_t now_ms);
  Outcome refund(const std::string& transaction_id, const std::string& operation_id, std::int64_t amount_fen, std::int64_t now_ms);

 private:
  void exec(const char* sql);
  sqlite3* db_ = nullptr;
  std::string path_;
};

}  // namespace dcep
