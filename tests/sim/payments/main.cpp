// pilecore-sim-payments: the far side of the four payment methods in one process, for
// `pilectl demo` and for trying a site by hand. Each part speaks the real protocol, so the
// production plugins run unchanged against it:
//   - one emulated PN532 per reader on a pseudo-terminal (libnfc's pn532_uart driver talks to
//     it), with member cards and e-CNY hard wallets put into and taken out of its field;
//   - an e-CNY root (SM2) that signs each wallet's certificate: payment-dcep's root_ca_file;
//   - the face camera module (PCFM/1 over TCP) and the face-pay provider (HTTPS);
//   - the credit provider (HTTPS);
//   - one test CA for both providers' TLS certificates: the plugins' provider_ca_file;
//   - the pile's 5G modem (a Quectel RM500Q on a pseudo-terminal, answering link-5g's AT
//     commands), for the demo's uplink;
//   - the pile's LoRaWAN module (a RAK3172 with RUI3 on a pseudo-terminal, for link-lorawan) and,
//     once told where the back end's broker is, the network server behind it (ChirpStack v4's
//     MQTT integration).
//
// It prints one JSON line describing where everything is, then reads one command a line and
// answers each with one line ("ok", a JSON object, or "error: ..."):
//   tap R UID-HEX                      a member card (UID only) enters reader R's field (1-based)
//   tap-wallet R WALLET-ID BALANCE-FEN an e-CNY wallet enters reader R's field; the same id
//                                      later is the same wallet (its balance and counter)
//   remove R                           whatever is in reader R's field leaves it
//   enrol-face TOKEN LIMIT-FEN         the face-pay provider knows this face
//   face TOKEN LIVENESS-PERMILLE       the camera module recognises a face ("error" until
//                                      payment-face has connected to it)
//   credit-score USER SCORE            the credit provider's score for a user
//   modem-registration STAT            the modem's network registration from now on (3GPP
//                                      +C5GREG stat: 1 home, 5 roaming, 2 searching, 0 idle)
//   lorawan-joins fail|ok              the LoRaWAN network refuses every join from now on, or accepts
//   lorawan-reset                      the LoRaWAN module loses its session (a reset): it must join again
//   network-server PORT CA CERT KEY    the network server connects to the broker on 127.0.0.1:PORT
//                                      (mutual TLS) and forwards the module's uplinks and downlinks
//   stats                              {"credit_debits", "credit_debit_attempts", "credit_debited_fen"
//                                       per scored user, "face_effects", "wallets" balances, "lorawan"}
//   quit                               (or end of input)
#include <chrono>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cards.hpp"
#include "https_provider.hpp"
#include "face_module_sim.hpp"
#include "modem_sim.hpp"
#include "network_server.hpp"
#include "pn532_emulator.hpp"
#include "sm2_pki.hpp"
#include "test_pki.hpp"
#include "wallet_card.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace pilecore::sim;

namespace {

constexpr const char* kUsage =
    "usage: pilecore-sim-payments --dir DIR [--readers N] [--provider-latency-ms MS]\n"
    "Writes the simulators' certificates into DIR, prints one JSON line (readers' libnfc devices,\n"
    "the face module's port, the providers' URLs, the CA files, the modem's and the LoRaWAN module's serial ports), then reads\n"
    "commands on stdin:\n"
    "  tap R UID | tap-wallet R WALLET-ID BALANCE-FEN | remove R | enrol-face TOKEN LIMIT-FEN |\n"
    "  face TOKEN LIVENESS-PERMILLE | credit-score USER SCORE | modem-registration STAT |\n"
    "  lorawan-joins fail|ok | lorawan-reset | network-server PORT CA CERT KEY | stats | quit\n";

std::chrono::system_clock::time_point years_from_now(int years) { return std::chrono::system_clock::now() + std::chrono::hours(24 * 366 * years); }

/// The e-CNY root and the wallets it certified, by wallet id.
class Wallets {
 public:
  explicit Wallets(const fs::path& dir) : root_key_(make_sm2_key()) {
    root_ = make_certificate({"pilecore simulated e-CNY root", years_from_now(-5), years_from_now(20), true, 1}, root_key_, nullptr, root_key_);
    root_file_ = dir / "ecny-root.pem";
    write_file(root_file_, to_pem(root_));
  }
  [[nodiscard]] const fs::path& root_file() const { return root_file_; }

  std::shared_ptr<WalletCard> get(const std::string& id, std::int64_t balance_fen) {
    if (auto it = wallets_.find(id); it != wallets_.end()) return it->second;
    WalletCard::Settings s;
    s.wallet_id = id;
    s.balance_fen = balance_fen;
    s.key = make_sm2_key();
    s.certificate = make_certificate({id, years_from_now(-1), years_from_now(2), false, static_cast<std::int64_t>(wallets_.size() + 2)}, s.key, root_, root_key_);
    // A random-looking UID per wallet, as hard wallets use.
    s.uid = {0x08, 0x5A, 0xC3, static_cast<std::uint8_t>(0x10 + wallets_.size())};
    return wallets_[id] = std::make_shared<WalletCard>(std::move(s));
  }

  [[nodiscard]] json balances() const {
    json j = json::object();
    for (const auto& [id, w] : wallets_) j[id] = w->balance_fen();
    return j;
  }

 private:
  Pkey root_key_;
  Cert root_;
  fs::path root_file_;
  std::map<std::string, std::shared_ptr<WalletCard>> wallets_;
};

}  // namespace

int main(int argc, char** argv) {
  fs::path dir;
  int readers = 1;
  long latency_ms = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--dir" && i + 1 < argc) {
      dir = argv[++i];
    } else if (a == "--readers" && i + 1 < argc) {
      readers = std::atoi(argv[++i]);
    } else if (a == "--provider-latency-ms" && i + 1 < argc) {
      latency_ms = std::atol(argv[++i]);
    } else {
      std::cerr << kUsage;
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  if (dir.empty() || readers < 1 || readers > 8 || latency_ms < 0) {
    std::cerr << kUsage;
    return 2;
  }
  try {
    fs::create_directories(dir);
    std::vector<std::unique_ptr<Pn532Emulator>> field;
    json devices = json::array();
    for (int r = 0; r < readers; ++r) {
      Pn532Options o;
      o.log = [](std::string_view) {};  // frames libnfc retries are normal; nobody reads them here
      field.push_back(std::make_unique<Pn532Emulator>(o));
      devices.push_back(field.back()->connstring());
    }
    Wallets wallets(dir);
    const TestPki pki = make_test_pki(dir, "provider", "pilecore simulated providers CA");
    FacePayProvider face_pay(pki);
    CreditProvider credit(pki);
    face_pay.set_latency(std::chrono::milliseconds(latency_ms));
    credit.set_latency(std::chrono::milliseconds(latency_ms));
    FaceModuleSim module;
    ModemSim modem;
    Rak3172Sim lorawan;
    // The network server answers within the receive windows when the back end acknowledges an
    // uplink at once: link-lorawan listens rx_linger_ms for such a late downlink.
    lorawan.set_rx_window(std::chrono::milliseconds(200));
    std::unique_ptr<NetworkServer> network;
    std::map<std::string, bool> scored;  // users given a score, for stats

    std::cout << json{{"readers", devices},
                      {"face_module", {{"host", "127.0.0.1"}, {"port", module.port()}}},
                      {"face_provider", face_pay.url()},
                      {"credit_provider", credit.url()},
                      {"provider_ca", fs::absolute(pki.ca_cert).string()},
                      {"ecny_root", fs::absolute(wallets.root_file()).string()},
                      {"modem", modem.path()},
                      {"lorawan", lorawan.device()}}
                     .dump()
              << std::endl;

    auto reader = [&](std::istream& in) -> Pn532Emulator& {
      int r = 0;
      if (!(in >> r) || r < 1 || r > readers) throw std::invalid_argument("no such reader (they are numbered from 1)");
      return *field[static_cast<std::size_t>(r - 1)];
    };
    std::string line;
    while (std::getline(std::cin, line)) {
      std::istringstream in(line);
      std::string cmd;
      in >> cmd;
      if (cmd.empty()) continue;
      if (cmd == "quit") break;
      try {
        if (cmd == "tap") {
          auto& r = reader(in);
          std::string uid;
          in >> uid;
          r.place(std::make_shared<MemberCard>(from_hex(uid)));
        } else if (cmd == "tap-wallet") {
          auto& r = reader(in);
          std::string id;
          std::int64_t balance = 0;
          if (!(in >> id >> balance)) throw std::invalid_argument("tap-wallet R WALLET-ID BALANCE-FEN");
          r.place(wallets.get(id, balance));
        } else if (cmd == "remove") {
          reader(in).remove();
        } else if (cmd == "enrol-face") {
          std::string token;
          std::int64_t limit = 0;
          if (!(in >> token >> limit)) throw std::invalid_argument("enrol-face TOKEN LIMIT-FEN");
          face_pay.enrol(token, limit);
        } else if (cmd == "face") {
          std::string token;
          int liveness = 0;
          if (!(in >> token >> liveness)) throw std::invalid_argument("face TOKEN LIVENESS-PERMILLE");
          if (module.show(token, liveness) == 0) throw std::runtime_error("payment-face is not connected to the camera module");
        } else if (cmd == "credit-score") {
          std::string user;
          int score = 0;
          if (!(in >> user >> score)) throw std::invalid_argument("credit-score USER SCORE");
          credit.set_score(user, score);
          scored[user] = true;
        } else if (cmd == "modem-registration") {
          int stat = 0;
          if (!(in >> stat) || stat < 0 || stat > 5) throw std::invalid_argument("modem-registration STAT (0..5)");
          modem.update([stat](ModemSim::Settings& m) {
            m.stat = stat;
            m.stat_after_reattach = stat == 1 || stat == 5 ? stat : -1;  // a re-attach finds the network as it is
          });
        } else if (cmd == "lorawan-joins") {
          std::string what;
          in >> what;
          if (what != "fail" && what != "ok") throw std::invalid_argument("lorawan-joins fail|ok");
          lorawan.fail_joins(what == "fail" ? ~0u : 0u);
        } else if (cmd == "lorawan-reset") {
          lorawan.forget_session();
        } else if (cmd == "network-server") {
          NetworkServer::Settings ns;
          if (!(in >> ns.port >> ns.ca >> ns.cert >> ns.key) || ns.port < 1 || ns.port > 65535) throw std::invalid_argument("network-server PORT CA CERT KEY");
          network.reset();
          network = std::make_unique<NetworkServer>(lorawan, ns);
        } else if (cmd == "stats") {
          json debited = json::object();
          for (const auto& [user, _] : scored) debited[user] = credit.debited_fen(user);
          std::cout << json{{"credit_debits", credit.debits()},
                            {"credit_debit_attempts", credit.debit_attempts()},
                            {"credit_debited_fen", debited},
                            {"face_effects", face_pay.effects()},
                            {"wallets", wallets.balances()},
                            {"lorawan", {{"uplinks", lorawan.uplinks().size()},
                                         {"join_attempts", lorawan.join_attempts()},
                                         {"forwarded", network ? network->forwarded() : 0},
                                         {"lost", network ? network->lost() : 0},
                                         {"downlinks", network ? network->downlinks() : 0},
                                         {"bad_downlinks", network ? network->bad_downlinks() : 0}}}}
                           .dump()
                    << std::endl;
          continue;
        } else {
          std::cout << "error: unknown command '" << cmd
                    << "': tap, tap-wallet, remove, enrol-face, face, credit-score, modem-registration, lorawan-joins, lorawan-reset, network-server, stats, quit" << std::endl;
          continue;
        }
        std::cout << "ok" << std::endl;
      } catch (const std::exception& e) {
        std::cout << "error: " << e.what() << std::endl;
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "pilecore-sim-payments: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
