#include "card_pins.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sqlite3.h>

#include <array>
#include <stdexcept>
#include <vector>

#include "hex.hpp"
#include "sqlite_stmt.hpp"

namespace pilecore::card {

namespace {

class Stmt : public pilecore::plugins::SqliteStmt {
 public:
  Stmt(sqlite3* db, const char* sql) : SqliteStmt(db, sql, "card PIN table") {}
};

std::vector<std::uint8_t> pbkdf2(std::string_view pin, const std::vector<std::uint8_t>& salt, int iterations) {
  std::vector<std::uint8_t> out(32);
  if (PKCS5_PBKDF2_HMAC(pin.data(), static_cast<int>(pin.size()), salt.data(), static_cast<int>(salt.size()), iterations, EVP_sha256(),
                        static_cast<int>(out.size()), out.data()) != 1) {
    throw std::runtime_error("PBKDF2 failed");
  }
  return out;
}

std::vector<std::uint8_t> from_hex(std::string_view h) {
  std::vector<std::uint8_t> out;
  if (h.size() % 2 != 0) throw std::runtime_error("the card PIN table holds a malformed hash");
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < h.size(); i += 2) {
    const int a = nibble(h[i]), b = nibble(h[i + 1]);
    if (a < 0 || b < 0) throw std::runtime_error("the card PIN table holds a malformed hash");
    out.push_back(static_cast<std::uint8_t>(a << 4 | b));
  }
  return out;
}

/// "pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>"
std::string encode(std::string_view pin) {
  std::vector<std::uint8_t> salt(16);
  if (RAND_bytes(salt.data(), static_cast<int>(salt.size())) != 1) throw std::runtime_error("no random bytes for the PIN's salt");
  const auto hash = pbkdf2(pin, salt, kPinIterations);
  return "pbkdf2-sha256$" + std::to_string(kPinIterations) + "$" + plugins::to_hex(salt.data(), salt.size()) + "$" +
         plugins::to_hex(hash.data(), hash.size());
}

bool matches(const std::string& stored, std::string_view pin) {
  const auto a = stored.find('$'), b = stored.find('$', a + 1), c = stored.find('$', b + 1);
  if (a == std::string::npos || b == std::string::npos || c == std::string::npos || stored.substr(0, a) != "pbkdf2-sha256") {
    throw std::runtime_error("the card PIN table holds a hash of an unknown kind");
  }
  const int iterations = std::stoi(stored.substr(a + 1, b - a - 1));
  if (iterations < 1 || iterations > 10'000'000) throw std::runtime_error("the card PIN table holds a malformed hash");
  const auto salt = from_hex(stored.substr(b + 1, c - b - 1));
  const auto want = from_hex(stored.substr(c + 1));
  const auto got = pbkdf2(pin, salt, iterations);
  return want.size() == got.size() && CRYPTO_memcmp(want.data(), got.data(), got.size()) == 0;
}

}  // namespace

bool valid_pin(std::string_view pin) {
  if (pin.size() < 4 || pin.size() > 12) return false;
  for (char c : pin) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

CardPins::CardPins(const std::filesystem::path& file) : file_(file.string()) {
  if (!std::filesystem::exists(file)) throw std::runtime_error("no account table at " + file_);
  db_ = plugins::open_plugin_db(file_, "account table");
  try {
    sqlite3_busy_timeout(db_, 5000);
    exec("PRAGMA synchronous=FULL");  // a failure counted must survive a power cut: it is the lockout
    exec("CREATE TABLE IF NOT EXISTS pins(account TEXT PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE, hash TEXT NOT NULL, "
         "failures INTEGER NOT NULL DEFAULT 0, updated_ms INTEGER NOT NULL)");
  } catch (...) {
    sqlite3_close(db_);
    throw;
  }
}

CardPins::~CardPins() { sqlite3_close(db_); }

void CardPins::exec(const char* sql) { plugins::exec_plugin_sql(db_, sql, "card PIN table", file_); }

void CardPins::set(const std::string& account, std::string_view pin, std::int64_t now_ms) {
  if (!valid_pin(pin)) throw std::invalid_argument("a PIN is 4 to 12 digits");
  {
    Stmt s(db_, "SELECT 1 FROM accounts WHERE id=?");
    s.bind(1, account);
    if (!s.step()) throw std::invalid_argument("no account " + account);
  }
  const std::string hash = encode(pin);
  Stmt s(db_, "INSERT INTO pins(account, hash, failures, updated_ms) VALUES(?1, ?2, 0, ?3) "
              "ON CONFLICT(account) DO UPDATE SET hash=?2, failures=0, updated_ms=?3");
  s.bind(1, account).bind(2, hash).bind(3, now_ms);
  s.step();
}

bool CardPins::clear(const std::string& account) {
  Stmt s(db_, "DELETE FROM pins WHERE account=?");
  s.bind(1, account);
  s.step();
  return sqlite3_changes(db_) == 1;
}

bool CardPins::has_pin(const std::string& account) {
  Stmt s(db_, "SELECT 1 FROM pins WHERE account=?");
  s.bind(1, account);
  return s.step();
}

PinCheck CardPins::check(const std::string& account, std::string_view pin, std::int64_t now_ms) {
  exec("BEGIN IMMEDIATE");
  try {
    std::string hash;
    std::int64_t failures = 0;
    {
      Stmt s(db_, "SELECT hash, failures FROM pins WHERE account=?");
      s.bind(1, account);
      if (!s.step()) {
        exec("ROLLBACK");
        return PinCheck::not_set;
      }
      hash = s.text(0);
      failures = s.i64(1);
    }
    if (failures >= kMaxPinFailures) {
      exec("ROLLBACK");
      return PinCheck::locked;
    }
    const bool ok = valid_pin(pin) && matches(hash, pin);
    Stmt u(db_, "UPDATE pins SET failures=?2, updated_ms=?3 WHERE account=?1");
    u.bind(1, account).bind(2, ok ? std::int64_t{0} : failures + 1).bind(3, now_ms);
    u.step();
    exec("COMMIT");
    return ok ? PinCheck::ok : PinCheck::wrong;
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

}  // namespace pilecore::card
