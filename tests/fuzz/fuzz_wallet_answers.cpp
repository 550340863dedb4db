// libFuzzer target: what an e-CNY wallet (or anything held at the reader) answers the pile.
// payment-dcep parses these bytes before it trusts anything about them; the parsers must end
// with a value or an error message, never read out of bounds, and a voucher's signed body must
// be the leading bytes of what was received (the signature covers exactly those).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "wallet_protocol.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> in(data, size);
  (void)dcep::split_response(in);
  if (auto info = dcep::parse_wallet_info(in); auto* w = std::get_if<dcep::WalletInfo>(&info)) {
    if (w->wallet_id.empty() || w->wallet_id.size() > dcep::kMaxIdSize || w->certificate.empty()) std::abort();
  }
  if (auto voucher = dcep::parse_voucher(in); auto* v = std::get_if<dcep::Voucher>(&voucher)) {
    if (v->signed_body.size() > size || !std::equal(v->signed_body.begin(), v->signed_body.end(), data)) std::abort();
    if (v->nonce.size() != dcep::kNonceSize || v->signature.empty() || v->certificate.empty()) std::abort();
  }
  return 0;
}
