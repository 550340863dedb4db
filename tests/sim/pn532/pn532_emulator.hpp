// A PN532 NFC controller on a pseudo-terminal, for libnfc's real `pn532_uart` driver.
//
// It speaks the PN532's host protocol over HSU (the UART link of NXP's PN532 user manual,
// UM0701-02 §6.2): the wake-up preamble (0x55 and zeros), ACK and NACK frames, normal and
// extended information frames with their length and data checksums, and the syntax-error frame
// for a command it does not know. It answers every command libnfc 1.8.0 sends to a PN532 when it
// opens the device, initialises an initiator, polls for ISO 14443A targets at 106 kbps, talks to
// them and closes: GetFirmwareVersion, Diagnose (communication test, card presence),
// SAMConfiguration, SetParameters, RFConfiguration, ReadRegister, WriteRegister,
// InListPassiveTarget (with a UID to re-select a card too), InDataExchange (ISO 14443-4
// through the chip, with MI chaining of long answers; MIFARE Classic AUTH and READ frames to
// the card model, with the chip's status), InCommunicateThru (raw ISO 14443-4
// blocks: libnfc's presence check), InDeselect, InRelease, GetGeneralStatus and PowerDown.
// Anything else is logged and counted.
//
// The field holds at most one card (a pilecore::sim::Iso14443Card): place() puts it there,
// remove() takes it away, also while the card is answering an APDU, and then the chip answers
// that exchange with a timeout, as a card torn off a real reader does.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "iso14443_card.hpp"

namespace pilecore::sim {

struct Pn532Options {
  /// When set, a symbolic link to the pseudo-terminal: a stable device path that a new emulator
  /// takes over, so a reader can "come back" at the same place. Created atomically.
  std::filesystem::path link;
  /// Where unknown commands and frame errors are reported; default: stderr.
  std::function<void(std::string_view)> log;
};

class Pn532Emulator {
 public:
  struct Stats {
    unsigned frames = 0;           ///< information frames received with good checksums
    unsigned extended_frames = 0;  ///< ... of which extended frames
    unsigned checksum_errors = 0;  ///< frames dropped for a bad length or data checksum
    unsigned unknown_commands = 0;
    unsigned acks = 0;   ///< ACK frames from the host (an abort of the running command)
    unsigned nacks = 0;  ///< NACK frames from the host (send the last answer again)
    unsigned wakeups = 0;
    std::map<std::uint8_t, unsigned> commands;  ///< command code -> count
  };

  explicit Pn532Emulator(Pn532Options options = {});
  ~Pn532Emulator();
  Pn532Emulator(const Pn532Emulator&) = delete;
  Pn532Emulator& operator=(const Pn532Emulator&) = delete;

  /// The pseudo-terminal's device, e.g. /dev/pts/7.
  [[nodiscard]] const std::string& device() const { return device_; }
  /// The path libnfc should open: the link when there is one, else the device.
  [[nodiscard]] std::string path() const { return options_.link.empty() ? device_ : options_.link.string(); }
  /// libnfc's connection string for it: "pn532_uart:<path>".
  [[nodiscard]] std::string connstring() const { return "pn532_uart:" + path(); }

  /// Puts `card` into the field (replacing the card there, which leaves).
  void place(std::shared_ptr<Iso14443Card> card);
  /// Takes the card out of the field; an exchange under way is answered with a timeout.
  void remove();
  /// The reader disappears: the pseudo-terminal is closed (and the link removed). Idempotent.
  void close();

  [[nodiscard]] Stats stats() const;
  [[nodiscard]] unsigned count(std::uint8_t command) const;

 private:
  void run();
  void wake();
  void on_bytes(std::vector<std::uint8_t>& buffer);
  void on_frame(const std::vector<std::uint8_t>& payload);
  /// The answer to command `p`; none (`wait` set) while a list waits for a card; empty for the
  /// syntax-error frame.
  std::vector<std::uint8_t> execute(const std::vector<std::uint8_t>& p, bool& wait);
  std::vector<std::uint8_t> list_passive_target(const std::vector<std::uint8_t>& p, bool& pending);
  std::vector<std::uint8_t> data_exchange(const std::vector<std::uint8_t>& p);
  std::vector<std::uint8_t> communicate_thru(const std::vector<std::uint8_t>& p);
  std::vector<std::uint8_t> target_data_locked(std::uint8_t code) const;
  void send_frame(const std::vector<std::uint8_t>& payload);
  void send_raw(const std::vector<std::uint8_t>& bytes);
  void note(std::string_view message) const;

  Pn532Options options_;
  std::string device_;
  int master_ = -1;
  int slave_ = -1;  ///< kept open so the master never sees a hang-up between two users
  int wake_pipe_[2] = {-1, -1};
  std::thread thread_;

  mutable std::mutex mutex_;  // everything below
  bool closed_ = false;
  std::shared_ptr<Iso14443Card> card_;
  std::uint64_t generation_ = 0;  ///< changes with every place() and remove()
  // the chip's state (only the emulator thread changes it, under the mutex)
  bool listed_ = false;           ///< a target is selected (Tg 1)
  std::uint64_t listed_generation_ = 0;
  bool iso4_ = false;             ///< ... and ISO 14443-4 is up (RATS done)
  std::uint8_t block_number_ = 0;
  std::vector<std::uint8_t> chain_;  ///< the rest of a chained InDataExchange answer
  std::uint8_t parameters_ = 0;      ///< SetParameters flags
  std::uint8_t passive_retries_ = 0xff;  ///< RFConfiguration MxRtyPassiveActivation
  bool field_ = false;
  bool asleep_ = false;
  bool list_pending_ = false;  ///< an InListPassiveTarget waits for a card (infinite retries)
  std::map<std::uint16_t, std::uint8_t> registers_;
  std::vector<std::uint8_t> last_answer_;  ///< the last frame sent, for a NACK
  Stats stats_;
};

}  // namespace pilecore::sim
