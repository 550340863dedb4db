// The plugin's durable state: dcep.db in the instance's state directory (owner-only, WAL,
// synchronous=FULL). Every accepted voucher, the highest counter seen per wallet, and the upload
// queue (docs/payments.md describes the tables): each row is a record the plugin hands the core
// (Host::upload) and stays 'queued' until the back end has acknowledged it, then 'uploaded'.
// Used from one thread at a time.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "wallet_protocol.hpp"

struct sqlite3;

namespace dcep {

struct Outcome {
  bool ok = false;  ///< confirmed; else failed with `reason`
  std::int64_t amount_fen = 0;
  std::string reference;
  std::string reason;
};

/// One upload_queue row with what its uplink record carries (docs/protocol.md, `voucher:`).
struct UploadRow {
  std::string operation_id;
  std::string kind;    ///< voucher | refund
  std::string reason;  ///< payment | change | void | refund
  std::string transaction_id;
  Bytes digest;        ///< SM3 of the voucher's signed body
  std::int64_t amount_fen = 0;
  Bytes voucher;       ///< the signed voucher as received: payment evidence, never logged
  std::int64_t created_ms = 0;
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
  /// Offline money not yet at the back end: queued vouchers less queued refunds.
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

  /// Every row still queued (not acknowledged by the back end), oldest first.
  std::vector<UploadRow> queued_uploads();
  /// The row of `operation_id` while it is queued.
  std::optional<UploadRow> queued_upload(const std::string& operation_id);
  /// The back end acknowledged the row's record: 'uploaded' at `now_ms`. False when it was not
  /// queued (already marked, or unknown).
  bool mark_uploaded(const std::string& operation_id, std::int64_t now_ms);

  Outcome capture(const std::string& transaction_id, const std::string& operation_id, std::int64_t amount_fen, std::int64_t now_ms);
  Outcome cancel(const std::string& transaction_id, const std::string& operation_id, std::int64_t now_ms);
  Outcome refund(const std::string& transaction_id, const std::string& operation_id, std::int64_t amount_fen, std::int64_t now_ms);

 private:
  void exec(const char* sql);
  sqlite3* db_ = nullptr;
  std::string path_;
};

}  // namespace dcep
