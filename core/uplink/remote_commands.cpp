#include "remote_commands.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

#include "crypto.hpp"

namespace pilecore::core {

namespace {

namespace fs = std::filesystem;
using protocol::Command;

constexpr std::size_t kRecentSequences = 256;
constexpr std::string_view kEmergencyStop = "emergency_stop";
constexpr std::string_view kFirmware = "firmware";

std::int64_t ms_of(TimePoint t) { return t.time_since_epoch().count(); }

std::int64_t unix_seconds(TimePoint t) { return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count(); }

[[noreturn]] void fail_errno(const std::string& what, const fs::path& file) {
  throw std::runtime_error(fmt::format("{}: {}: {}", file.string(), what, std::strerror(errno)));
}

void write_all(int fd, protocol::ByteView bytes, const fs::path& file) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail_errno("cannot write", file);
    done += static_cast<std::size_t>(n);
  }
}

}  // namespace

std::string_view to_string(CommandRejection r) {
  switch (r) {
    case CommandRejection::not_enabled: return "not_enabled";
    case CommandRejection::malformed: return "malformed";
    case CommandRejection::bad_signature: return "bad_signature";
    case CommandRejection::stale: return "stale";
    case CommandRejection::replayed: return "replayed";
    case CommandRejection::reordered: return "reordered";
    case CommandRejection::rate_limited: return "rate_limited";
  }
  return "unknown";
}

void write_file_atomically(const fs::path& file, protocol::ByteView bytes) {
  const fs::path tmp = file.string() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) fail_errno("cannot create", tmp);
  try {
    write_all(fd, bytes, tmp);
    if (::fsync(fd) != 0) fail_errno("cannot sync", tmp);
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), file.c_str()) != 0) {
    const int saved = errno;
    ::unlink(tmp.c_str());
    errno = saved;
    fail_errno("cannot rename the temporary file into place", file);
  }
  // The rename is durable only once the directory is.
  const fs::path dir = file.has_parent_path() ? file.parent_path() : fs::path(".");
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) fail_errno("cannot open the directory", dir);
  const int rc = ::fsync(dfd);
  ::close(dfd);
  if (rc != 0) fail_errno("cannot sync the directory", dir);
}

std::uint64_t read_command_sequence(const fs::path& file) {
  std::error_code ec;
  if (!fs::exists(file, ec)) return 0;
  std::ifstream in(file);
  std::string text;
  if (!in || !std::getline(in, text)) throw std::runtime_error(fmt::format("{}: cannot read the highest accepted command sequence", file.string()));
  static const std::regex number("[0-9]{1,19}");
  if (!std::regex_match(text, number)) {
    throw std::runtime_error(fmt::format("{}: holds '{}', not the highest accepted command sequence (a decimal number); check it, then remove it "
                                         "or write the back end's last sequence in it",
                                         file.string(), text.substr(0, 40)));
  }
  return std::stoull(text);
}

void write_command_sequence(const fs::path& file, std::uint64_t seq) {
  const std::string text = fmt::format("{}\n", seq);
  write_file_atomically(file, {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
}

RemoteCommands::RemoteCommands(const Clock& clock, StoreWorker& store, std::optional<RemoteCommandSettings> settings, Executor executor)
    : clock_(clock), store_(store), settings_(std::move(settings)), executor_(std::move(executor)) {
  if (!settings_) return;
  try {
    key_.emplace(settings_->key);
    if (!settings_->firmware_key.empty()) firmware_key_.emplace(settings_->firmware_key);
    highest_ = read_command_sequence(settings_->sequence_file);
    spdlog::info("remote commands: enabled ({} key), window {} s, highest accepted sequence {}{}", key_->algorithm(),
                 std::chrono::duration_cast<std::chrono::seconds>(settings_->window).count(), highest_,
                 firmware_key_ ? ", firmware transfers to " + settings_->firmware_staging.string() : "");
  } catch (const std::exception& e) {
    disabled_ = e.what();
    spdlog::error("remote commands: every command is refused: {}", disabled_);
  }
}

RemoteCommands::~RemoteCommands() { *alive_ = false; }

nlohmann::json RemoteCommands::counters() const {
  nlohmann::json rejected = nlohmann::json::object();
  for (std::size_t i = 0; i < kCommandRejectionCount; ++i) {
    if (rejected_[i] > 0) rejected[std::string(to_string(static_cast<CommandRejection>(i)))] = rejected_[i];
  }
  return {{"accepted", accepted_}, {"rejected", std::move(rejected)}, {"highest_seq", highest_}};
}

void RemoteCommands::reject(const protocol::Header& header, CommandRejection why, std::string message, const Answer& answer, const Command* cmd) {
  ++rejected_[static_cast<std::size_t>(why)];
  spdlog::warn("remote command (frame {}) rejected, {}: {}", header.sequence, to_string(why), message);
  nlohmann::json body{{"seq", header.sequence}, {"result", "rejected"}, {"reason", std::string(to_string(why))}, {"message", std::move(message)}};
  if (cmd) {
    body["q"] = cmd->seq;
    body["command"] = cmd->name;
  }
  answer({fmt::format("cmd:r{}:{}:{}", header.sequence, ms_of(clock_.now()), ++answers_ % 1000), "command_result", std::move(body)});
}

void RemoteCommands::on_command(const protocol::Header& header, protocol::ByteView payload, Answer answer) {
  if (admit && !admit()) {
    ++rejected_[static_cast<std::size_t>(CommandRejection::rate_limited)];
    return;
  }
  if (!settings_) return reject(header, CommandRejection::not_enabled, "commands are not enabled on this pile", answer);
  if (!disabled_.empty()) return reject(header, CommandRejection::not_enabled, "commands are not enabled on this pile: " + disabled_, answer);
  auto outer = protocol::decode_signed_command(payload);
  if (const auto* f = std::get_if<protocol::Failure>(&outer)) return reject(header, CommandRejection::malformed, f->message, answer);
  const auto& signed_cmd = std::get<protocol::SignedCommand>(outer);
  if (!key_->verify(protocol::command_signed_bytes(settings_->device_id, signed_cmd.body), signed_cmd.signature)) {
    return reject(header, CommandRejection::bad_signature,
                  fmt::format("the signature does not verify with the command key ({}) over \"{}\", device id {} and the body", key_->algorithm(),
                              protocol::kCommandSignatureContext, settings_->device_id),
                  answer);
  }
  auto body = protocol::decode_command_body(signed_cmd.body);
  if (const auto* f = std::get_if<protocol::Failure>(&body)) return reject(header, CommandRejection::malformed, f->message, answer);
  const Command& cmd = std::get<Command>(body);
  const std::int64_t now = unix_seconds(clock_.now());
  const std::int64_t window = std::chrono::duration_cast<std::chrono::seconds>(settings_->window).count();
  if (const std::int64_t skew = static_cast<std::int64_t>(cmd.time) - now; skew > window || skew < -window) {
    return reject(header, CommandRejection::stale,
                  fmt::format("made at {} (Unix s), {} s {} the pile's clock ({}); the window is {} s", cmd.time, skew < 0 ? -skew : skew,
                              skew < 0 ? "behind" : "ahead of", now, window),
                  answer, &cmd);
  }
  if (cmd.seq == highest_ || recent_.contains(cmd.seq)) {
    return reject(header, CommandRejection::replayed, fmt::format("sequence {} was accepted before", cmd.seq), answer, &cmd);
  }
  if (cmd.seq < highest_) {
    return reject(header, CommandRejection::reordered, fmt::format("sequence {} is below the highest accepted, {}", cmd.seq, highest_), answer, &cmd);
  }
  // Accepted: raised here, on the strand, so a copy arriving before the file is written is a replay.
  highest_ = cmd.seq;
  recent_.insert(cmd.seq);
  if (recent_.size() > kRecentSequences) recent_.erase(recent_.begin());
  ++accepted_;
  spdlog::info("remote command {} (sequence {}) accepted", cmd.name, cmd.seq);
  const bool at_once = cmd.name == kEmergencyStop;
  if (at_once) run(header, cmd, answer);
  store_.submit([file = settings_->sequence_file, seq = cmd.seq](Database&) { write_command_sequence(file, seq); },
                [this, alive = alive_, header, cmd, answer, at_once](Status st) {
                  if (!*alive) return;
                  if (!st.ok()) {
                    spdlog::error("remote commands: the accepted sequence {} could not be recorded: {}", cmd.seq, st.message());
                    if (!at_once) finish(header, cmd, CommandResult::failed("the pile could not record the command's sequence: " + st.message()), answer);
                    return;
                  }
                  if (!at_once) run(header, cmd, answer);
                });
}

void RemoteCommands::run(const protocol::Header& header, const Command& cmd, Answer answer) {
  if (cmd.name == kFirmware) return firmware(header, cmd, std::move(answer));
  if (!executor_) return finish(header, cmd, CommandResult::failed("this pile carries out no commands"), answer);
  executor_(cmd, [this, alive = alive_, header, cmd, answer](CommandResult r) {
    if (*alive) finish(header, cmd, r, answer);
  });
}

void RemoteCommands::finish(const protocol::Header& header, const Command& cmd, const CommandResult& result, const Answer& answer) {
  nlohmann::json body = result.detail.is_object() ? result.detail : nlohmann::json{{"detail", result.detail}};
  body["seq"] = header.sequence;
  body["q"] = cmd.seq;
  body["command"] = cmd.name;
  body["result"] = result.ok ? "ok" : "failed";
  body["message"] = result.message;
  if (result.ok) {
    spdlog::info("remote command {} (sequence {}): {}", cmd.name, cmd.seq, result.message);
  } else {
    spdlog::warn("remote command {} (sequence {}) failed: {}", cmd.name, cmd.seq, result.message);
  }
  answer({fmt::format("cmd:{}", cmd.seq), "command_result", std::move(body)});
}

void RemoteCommands::firmware(const protocol::Header& header, const Command& cmd, Answer answer) {
  if (!firmware_key_ || settings_->firmware_staging.empty()) {
    return finish(header, cmd, CommandResult::failed("firmware transfers are not enabled on this pile (links.commands.firmware_key)"), answer);
  }
  const auto name = cmd.args.find("name");
  const auto image = cmd.args.find("image");
  const auto sig = cmd.args.find("sig");
  static const std::regex file_name("[A-Za-z0-9_][A-Za-z0-9._-]{0,63}");
  if (name == cmd.args.end() || !name->is_string() || !std::regex_match(name->get_ref<const std::string&>(), file_name)) {
    return finish(header, cmd, CommandResult::failed("firmware: \"name\" is a file name of 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' or '-'"),
                  answer);
  }
  if (image == cmd.args.end() || !image->is_binary() || image->get_binary().empty() || sig == cmd.args.end() || !sig->is_binary()) {
    return finish(header, cmd, CommandResult::failed("firmware: \"image\" and \"sig\" are byte strings"), answer);
  }
  const auto& bytes = image->get_binary();
  if (!firmware_key_->verify(bytes, sig->get_binary())) {
    return finish(header, cmd,
                  CommandResult::failed(fmt::format("firmware: the image's signature does not verify with the firmware-signing key ({}); nothing was written",
                                                    firmware_key_->algorithm())),
                  answer);
  }
  const fs::path target = settings_->firmware_staging / name->get<std::string>();
  auto data = std::make_shared<std::vector<std::uint8_t>>(bytes.begin(), bytes.end());
  const std::string digest_hex = to_hex(digest(HashAlgorithm::sha256, *data));
  // Off the strand: an image is up to a MiB and its fsync is the slowest write the pile makes.
  store_.submit(
      [target, data](Database&) {
        fs::create_directories(target.parent_path());
        write_file_atomically(target, *data);
      },
      [this, alive = alive_, header, cmd, answer, target, size = data->size(), digest_hex](Status st) {
        if (!*alive) return;
        if (!st.ok()) return finish(header, cmd, CommandResult::failed("firmware: writing the image failed: " + st.message()), answer);
        finish(header, cmd,
               CommandResult::done(fmt::format("firmware image staged at {}", target.string()),
                                   {{"path", target.string()}, {"bytes", size}, {"sha256", digest_hex}}),
               answer);
      });
}

}  // namespace pilecore::core
