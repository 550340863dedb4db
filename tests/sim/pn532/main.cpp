// pilecore-sim-pn532: a PN532 reader on a pseudo-terminal, driven from stdin, for the demo and
// for trying a reader plugin by hand. It prints the device to give libnfc
// (pn532_uart:/dev/pts/N), then reads one command a line:
//   tap <uid-hex>                 a member card (UID only) enters the field
//   tap-apdu <uid-hex> <aid-hex>  an ISO 14443-4 card that answers SELECT of that AID
//   tap-mifare <uid-hex> <sector> <key-a-hex> <key-b-hex> <block 0-2> <account>
//                                 a MIFARE Classic member card with the account in that block
//   tap-desfire <uid-hex> <aid-hex> <aes-key-hex|-> <file> <account>
//                                 a DESFire member card (key "-": the file is read without one)
//   remove                        the card leaves the field
//   stats                         frames and commands seen so far
//   quit                          (or end of input)
#include <cstdio>
#include <exception>
#include <iostream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <algorithm>
#include <sstream>
#include <string>

#include "cards.hpp"
#include "member_cards.hpp"
#include "pn532_emulator.hpp"

using pilecore::sim::from_hex;

int main(int argc, char** argv) {
  pilecore::sim::Pn532Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--link" && i + 1 < argc) {
      options.link = argv[++i];
    } else {
      std::cerr << "usage: pilecore-sim-pn532 [--link PATH]\n"
                   "Prints the pseudo-terminal of an emulated PN532, then reads commands on stdin:\n"
                   "  tap <uid-hex> | tap-apdu <uid-hex> <aid-hex> | tap-mifare <uid> <sector> <key-a> <key-b> <block> <account> |\n"
                   "  tap-desfire <uid> <aid> <aes-key|-> <file> <account> | remove | stats | quit\n";
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  try {
    pilecore::sim::Pn532Emulator reader(options);
    std::cout << reader.connstring() << std::endl;
    std::string line;
    while (std::getline(std::cin, line)) {
      std::istringstream in(line);
      std::string cmd;
      in >> cmd;
      try {
        if (cmd.empty()) continue;
        if (cmd == "quit") break;
        if (cmd == "remove") {
          reader.remove();
        } else if (cmd == "tap") {
          std::string uid;
          in >> uid;
          reader.place(std::make_shared<pilecore::sim::MemberCard>(from_hex(uid)));
        } else if (cmd == "tap-apdu") {
          std::string uid, aid;
          in >> uid >> aid;
          reader.place(std::make_shared<pilecore::sim::ApduCard>(from_hex(uid), std::vector<std::vector<std::uint8_t>>{from_hex(aid)}));
        } else if (cmd == "tap-mifare") {
          std::string uid, key_a, key_b, account;
          unsigned sector = 0, block = 0;
          in >> uid >> sector >> key_a >> key_b >> block >> account;
          auto card = std::make_shared<pilecore::sim::MifareClassicCard>(from_hex(uid));
          const auto a = from_hex(key_a), b = from_hex(key_b);
          if (a.size() != 6 || b.size() != 6 || block > 2) throw std::invalid_argument("keys are 12 hex digits, the block 0 to 2");
          pilecore::sim::MifareClassicCard::Key ka{}, kb{};
          std::copy(a.begin(), a.end(), ka.begin());
          std::copy(b.begin(), b.end(), kb.begin());
          card->set_keys(sector, ka, kb);
          card->write_text(sector * 4 + block, account);
          reader.place(card);
        } else if (cmd == "tap-desfire") {
          std::string uid, aid, key, account;
          unsigned file = 0;
          in >> uid >> aid >> key >> file >> account;
          auto card = std::make_shared<pilecore::sim::DesfireCard>(from_hex(uid));
          const auto id = from_hex(aid);
          if (id.size() != 3 || file > 31) throw std::invalid_argument("the AID is 6 hex digits, the file 0 to 31");
          const std::uint32_t n = static_cast<std::uint32_t>(id[0]) << 16 | static_cast<std::uint32_t>(id[1]) << 8 | id[2];
          std::optional<pilecore::sim::DesfireCard::AesKey> k;
          if (key != "-") {
            const auto bytes = from_hex(key);
            if (bytes.size() != 16) throw std::invalid_argument("an AES key is 32 hex digits");
            k.emplace();
            std::copy(bytes.begin(), bytes.end(), k->begin());
          }
          card->add_application(n, k);
          card->add_file(n, static_cast<std::uint8_t>(file), std::vector<std::uint8_t>(account.begin(), account.end()), k.has_value());
          reader.place(card);
        } else if (cmd == "stats") {
          const auto s = reader.stats();
          std::cout << "frames " << s.frames << " (extended " << s.extended_frames << "), checksum errors " << s.checksum_errors
                    << ", unknown commands " << s.unknown_commands << ", wake-ups " << s.wakeups << std::endl;
        } else {
          std::cout << "unknown command '" << cmd << "': tap, tap-apdu, tap-mifare, tap-desfire, remove, stats, quit" << std::endl;
          continue;
        }
        if (cmd != "stats") std::cout << "ok" << std::endl;
      } catch (const std::exception& e) {
        std::cout << "error: " << e.what() << std::endl;
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "pilecore-sim-pn532: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
