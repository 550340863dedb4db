// pilecore-sim-pn532: a PN532 reader on a pseudo-terminal, driven from stdin, for the demo and
// for trying a reader plugin by hand. It prints the device to give libnfc
// (pn532_uart:/dev/pts/N), then reads one command a line:
//   tap <uid-hex>                 a member card (UID only) enters the field
//   tap-apdu <uid-hex> <aid-hex>  an ISO 14443-4 card that answers SELECT of that AID
//   remove                        the card leaves the field
//   stats                         frames and commands seen so far
//   quit                          (or end of input)
#include <cstdio>
#include <exception>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>

#include "cards.hpp"
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
                   "  tap <uid-hex> | tap-apdu <uid-hex> <aid-hex> | remove | stats | quit\n";
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
        } else if (cmd == "stats") {
          const auto s = reader.stats();
          std::cout << "frames " << s.frames << " (extended " << s.extended_frames << "), checksum errors " << s.checksum_errors
                    << ", unknown commands " << s.unknown_commands << ", wake-ups " << s.wakeups << std::endl;
        } else {
          std::cout << "unknown command '" << cmd << "': tap, tap-apdu, remove, stats, quit" << std::endl;
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
