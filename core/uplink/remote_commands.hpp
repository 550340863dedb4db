// Signed remote commands (issue #12 item 5; docs/protocol.md section 3.4): the DownlinkHandler
// that checks a down `command` and hands it on.
//
//  - Checked in this order, the first failure answering `rejected` with its reason and counted:
//    not_enabled (no command key), malformed, bad_signature, stale (its timestamp further than the
//    window from the pile's clock), replayed (a sequence accepted before), reordered (below the
//    highest accepted). The signature comes before anything that reads the body's values, so an
//    unauthenticated frame changes no state.
//  - The highest accepted sequence is written to a file in the state directory (atomically, on
//    the storage thread) before the command acts, so a restart does not reopen replay; an
//    emergency stop acts at once and is recorded meanwhile: a stop taken twice is harmless, a
//    stop that waits for a disk is not.
//  - `firmware` is carried out here (it needs no session engine): the image is verified against
//    the firmware-signing key before a byte of it is written, then written atomically to the
//    staging directory. Every other command goes to the Executor (the daemon's, over the engine).
//  - Every command is answered through `answer`: a control record `cmd:<q>` (accepted) or
//    `cmd:r<frame sequence>:<ms>` (rejected), kind `command_result`.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "command.hpp"
#include "command_key.hpp"
#include "pilecore/clock.hpp"
#include "payloads.hpp"
#include "store_worker.hpp"

namespace pilecore::core {

/// What the pile answers to a down `command` frame.
class DownlinkHandler {
 public:
  using Answer = std::function<void(protocol::Record)>;
  virtual ~DownlinkHandler() = default;
  /// Answers through `answer` (now or later, on the strand), exactly once.
  virtual void on_command(const protocol::Header& header, protocol::ByteView payload, Answer answer) = 0;
  /// Counts for the heartbeat and status: accepted, and rejected by reason.
  [[nodiscard]] virtual nlohmann::json counters() const { return nlohmann::json::object(); }
};

/// rate_limited: refused by the risk layer's admission guard before anything is decoded or
/// verified, counted and not answered (a flood must not cost a signature check or an outbox write).
enum class CommandRejection : std::uint8_t { not_enabled, malformed, bad_signature, stale, replayed, reordered, rate_limited };
inline constexpr std::size_t kCommandRejectionCount = 7;
[[nodiscard]] std::string_view to_string(CommandRejection r);

/// An accepted command's outcome: `ok`, or why it could not be done (`failed`), and what the
/// command returns (status: the status body; firmware: the image's digest).
struct CommandResult {
  bool ok = false;
  std::string message;
  nlohmann::json detail = nlohmann::json::object();
  static CommandResult done(std::string message, nlohmann::json detail = nlohmann::json::object()) { return {true, std::move(message), std::move(detail)}; }
  static CommandResult failed(std::string message) { return {false, std::move(message), nlohmann::json::object()}; }
};

struct RemoteCommandSettings {
  std::uint32_t device_id = 0;
  std::filesystem::path key;            ///< the back end's command key (public, PEM)
  Duration window = std::chrono::minutes(5);
  std::filesystem::path firmware_key;   ///< empty: firmware transfers are refused
  std::filesystem::path firmware_staging;
  std::filesystem::path sequence_file;  ///< the highest accepted sequence, kept across restarts
};

class RemoteCommands final : public DownlinkHandler {
 public:
  /// Carries out an accepted command (not firmware) and answers through the callback, once.
  using Executor = std::function<void(const protocol::Command&, std::function<void(CommandResult)>)>;

  /// No settings: every command is refused not_enabled. A key or a sequence file that cannot be
  /// read is logged and refuses every command too (with the reason in the answer).
  RemoteCommands(const Clock& clock, StoreWorker& store, std::optional<RemoteCommandSettings> settings, Executor executor);
  ~RemoteCommands() override;

  void on_command(const protocol::Header& header, protocol::ByteView payload, Answer answer) override;
  [[nodiscard]] nlohmann::json counters() const override;

  [[nodiscard]] std::uint64_t accepted() const { return accepted_; }
  [[nodiscard]] std::uint64_t rejected(CommandRejection r) const { return rejected_[static_cast<std::size_t>(r)]; }
  [[nodiscard]] std::uint64_t highest_sequence() const { return highest_; }

  /// The risk layer's admission guard (Runtime::admit(risk::Inbound::remote_command)), asked
  /// first for every command frame; empty: every one is admitted.
  std::function<bool()> admit;

 private:
  void reject(const protocol::Header& header, CommandRejection why, std::string message, const Answer& answer, const protocol::Command* cmd = nullptr);
  void run(const protocol::Header& header, const protocol::Command& cmd, Answer answer);
  void firmware(const protocol::Header& header, const protocol::Command& cmd, Answer answer);
  void finish(const protocol::Header& header, const protocol::Command& cmd, const CommandResult& result, const Answer& answer);

  const Clock& clock_;
  StoreWorker& store_;
  std::optional<RemoteCommandSettings> settings_;
  Executor executor_;
  std::optional<protocol::CommandKey> key_;
  std::optional<protocol::CommandKey> firmware_key_;
  std::string disabled_;  ///< why commands are refused although configured (a key or file unreadable)
  std::uint64_t highest_ = 0;
  std::set<std::uint64_t> recent_;  ///< recently accepted sequences: tells a replay from a reordering
  std::uint64_t accepted_ = 0;
  std::array<std::uint64_t, kCommandRejectionCount> rejected_{};
  std::uint64_t answers_ = 0;  ///< keeps rejection keys unique within one millisecond
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

/// The highest accepted sequence in `file`: 0 when it does not exist. Throws std::runtime_error
/// naming the file when it cannot be read or does not hold one decimal number.
std::uint64_t read_command_sequence(const std::filesystem::path& file);
/// Writes it atomically (a synced temporary file renamed over it, the directory synced).
void write_command_sequence(const std::filesystem::path& file, std::uint64_t seq);
/// Writes `bytes` to `file` atomically, mode 0600 (firmware staging, the sequence file).
void write_file_atomically(const std::filesystem::path& file, protocol::ByteView bytes);

}  // namespace pilecore::core
