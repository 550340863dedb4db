#include "pn532_emulator.hpp"

#include "raw_pty.hpp"
#include <fcntl.h>
#include <poll.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pilecore::sim {

namespace {

// PN532 command codes (UM0701-02 §7).
constexpr std::uint8_t kDiagnose = 0x00;
constexpr std::uint8_t kGetFirmwareVersion = 0x02;
constexpr std::uint8_t kGetGeneralStatus = 0x04;
constexpr std::uint8_t kReadRegister = 0x06;
constexpr std::uint8_t kWriteRegister = 0x08;
constexpr std::uint8_t kSetParameters = 0x12;
constexpr std::uint8_t kSAMConfiguration = 0x14;
constexpr std::uint8_t kPowerDown = 0x16;
constexpr std::uint8_t kRFConfiguration = 0x32;
constexpr std::uint8_t kInDataExchange = 0x40;
constexpr std::uint8_t kInCommunicateThru = 0x42;
constexpr std::uint8_t kInDeselect = 0x44;
constexpr std::uint8_t kInListPassiveTarget = 0x4A;
constexpr std::uint8_t kInRelease = 0x52;

// Status bytes (UM0701-02 §7.1).
constexpr std::uint8_t kOk = 0x00;
constexpr std::uint8_t kTimeout = 0x01;        // the target did not answer
constexpr std::uint8_t kWrongContext = 0x27;   // not acceptable in the current context

constexpr std::uint8_t kParamAutoRats = 0x10;  // SetParameters fAutomaticRATS

// Frames: preamble 00, start code 00 FF, then LEN LCS TFI data DCS, postamble 00.
const std::vector<std::uint8_t> kAck = {0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00};
// The application-level error frame: "syntax error" (UM0701-02 §6.2.1.5).
const std::vector<std::uint8_t> kErrorFrame = {0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00};

// The longest InDataExchange answer sent in one frame; longer ones are chained with MI. libnfc
// takes at most 264 bytes after the command code (status byte included).
constexpr std::size_t kMaxExchangeData = 262;

std::string hex(std::uint8_t b) {
  char s[3];
  std::snprintf(s, sizeof s, "%02x", b);
  return s;
}

}  // namespace

Pn532Emulator::Pn532Emulator(Pn532Options options) : options_(std::move(options)) {
  const pilecore::sim::RawPty pty = pilecore::sim::open_raw_pty();
  master_ = pty.master;
  slave_ = pty.slave;
  device_ = pty.device;
  if (::pipe2(wake_pipe_, O_CLOEXEC | O_NONBLOCK) != 0) {
    ::close(master_);
    ::close(slave_);
    throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
  }
  if (!options_.link.empty()) {
    const auto tmp = options_.link.string() + ".new";
    std::filesystem::remove(tmp);
    std::filesystem::create_symlink(device_, tmp);
    std::filesystem::rename(tmp, options_.link);
  }
  thread_ = std::thread([this] { run(); });
}

Pn532Emulator::~Pn532Emulator() {
  close();
  if (wake_pipe_[0] >= 0) ::close(wake_pipe_[0]);
  if (wake_pipe_[1] >= 0) ::close(wake_pipe_[1]);
}

void Pn532Emulator::close() {
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    closed_ = true;
  }
  wake();
  if (thread_.joinable()) thread_.join();
  if (!options_.link.empty()) {
    std::error_code ec;
    if (std::filesystem::read_symlink(options_.link, ec) == device_) std::filesystem::remove(options_.link, ec);
  }
  ::close(master_);
  ::close(slave_);
  master_ = slave_ = -1;
}

void Pn532Emulator::place(std::shared_ptr<Iso14443Card> card) {
  {
    std::lock_guard lock(mutex_);
    card_ = std::move(card);
    ++generation_;
  }
  wake();
}

void Pn532Emulator::remove() {
  {
    std::lock_guard lock(mutex_);
    card_.reset();
    ++generation_;
  }
  wake();
}

Pn532Emulator::Stats Pn532Emulator::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

unsigned Pn532Emulator::count(std::uint8_t command) const {
  std::lock_guard lock(mutex_);
  auto it = stats_.commands.find(command);
  return it == stats_.commands.end() ? 0 : it->second;
}

void Pn532Emulator::wake() {
  const char c = 1;
  [[maybe_unused]] auto n = ::write(wake_pipe_[1], &c, 1);
}

void Pn532Emulator::note(std::string_view message) const {
  if (options_.log) {
    options_.log(message);
  } else {
    std::fprintf(stderr, "pn532 emulator: %.*s\n", static_cast<int>(message.size()), message.data());
  }
}

// ---------------------------------------------------------------------------------------------
// the emulator's thread

void Pn532Emulator::run() {
  std::vector<std::uint8_t> buffer;
  for (;;) {
    pollfd fds[2] = {{master_, POLLIN, 0}, {wake_pipe_[0], POLLIN, 0}};
    const int n = ::poll(fds, 2, -1);
    if (n < 0 && errno != EINTR) return;
    if (fds[1].revents & POLLIN) {
      char drain[64];
      while (::read(wake_pipe_[0], drain, sizeof drain) > 0) {
      }
    }
    {
      std::lock_guard lock(mutex_);
      if (closed_) return;
    }
    if (fds[0].revents & POLLIN) {
      std::uint8_t chunk[512];
      const ssize_t got = ::read(master_, chunk, sizeof chunk);
      if (got > 0) buffer.insert(buffer.end(), chunk, chunk + got);
      on_bytes(buffer);
    }
    // A list that waits for a card (infinite retries) is answered when one arrives.
    bool answer_list = false;
    {
      std::lock_guard lock(mutex_);
      answer_list = list_pending_ && card_ != nullptr;
    }
    if (answer_list) {
      bool pending = false;
      const auto answer = list_passive_target({kInListPassiveTarget, 0x01, 0x00}, pending);
      send_frame(answer);
    }
  }
}

void Pn532Emulator::on_bytes(std::vector<std::uint8_t>& buf) {
  for (;;) {
    // Find the start code 00 FF; what comes before it is the wake-up preamble (55 55 00 ...),
    // the preamble byte, or line noise.
    std::size_t i = 0;
    while (i + 1 < buf.size() && !(buf[i] == 0x00 && buf[i + 1] == 0xFF)) ++i;
    const auto before = buf.begin() + static_cast<std::ptrdiff_t>(std::min(i, buf.size()));
    if (std::find(buf.begin(), before, 0x55) != before) {
      std::lock_guard lock(mutex_);
      ++stats_.wakeups;
      asleep_ = false;
    }
    if (i + 1 >= buf.size()) {
      // No start code yet: keep a trailing 00 that may be its first half.
      const bool keep = !buf.empty() && buf.back() == 0x00;
      buf.assign(keep ? 1 : 0, 0x00);
      return;
    }
    buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(i));
    if (buf.size() < 4) return;  // 00 FF LEN LCS
    const std::uint8_t len = buf[2], lcs = buf[3];
    if (len == 0x00 && lcs == 0xFF) {  // ACK: the host aborts the running command
      buf.erase(buf.begin(), buf.begin() + 4);
      std::lock_guard lock(mutex_);
      ++stats_.acks;
      list_pending_ = false;
      continue;
    }
    if (len == 0xFF && lcs == 0x00) {  // NACK: send the last answer again
      buf.erase(buf.begin(), buf.begin() + 4);
      std::vector<std::uint8_t> again;
      {
        std::lock_guard lock(mutex_);
        ++stats_.nacks;
        again = last_answer_;
      }
      if (!again.empty()) send_raw(again);
      continue;
    }
    std::size_t header = 4;
    std::size_t data_len = len;
    bool extended = false;
    if (len == 0xFF && lcs == 0xFF) {  // extended frame: 00 FF FF FF LENm LENl LCS
      if (buf.size() < 7) return;
      extended = true;
      header = 7;
      data_len = static_cast<std::size_t>(buf[4]) << 8 | buf[5];
      if (static_cast<std::uint8_t>(buf[4] + buf[5] + buf[6]) != 0 || data_len == 0) {
        {
          std::lock_guard lock(mutex_);
          ++stats_.checksum_errors;
        }
        note("extended frame with a bad length checksum dropped");
        buf.erase(buf.begin(), buf.begin() + 2);
        continue;
      }
    } else if (static_cast<std::uint8_t>(len + lcs) != 0 || len == 0) {
      {
        std::lock_guard lock(mutex_);
        ++stats_.checksum_errors;
      }
      note("frame with a bad length checksum (LEN " + hex(len) + ", LCS " + hex(lcs) + ") dropped");
      buf.erase(buf.begin(), buf.begin() + 2);
      continue;
    }
    if (buf.size() < header + data_len + 1) return;  // TFI .. DCS not all here yet
    std::uint8_t sum = 0;
    for (std::size_t k = 0; k <= data_len; ++k) sum = static_cast<std::uint8_t>(sum + buf[header + k]);
    const std::uint8_t tfi = buf[header];
    std::vector<std::uint8_t> payload(buf.begin() + static_cast<std::ptrdiff_t>(header + 1),
                                      buf.begin() + static_cast<std::ptrdiff_t>(header + data_len));
    std::size_t end = header + data_len + 1;
    if (end < buf.size() && buf[end] == 0x00) ++end;  // postamble
    buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(end));
    if (sum != 0) {
      {
        std::lock_guard lock(mutex_);
        ++stats_.checksum_errors;
      }
      note("frame with a bad data checksum dropped");
      continue;
    }
    if (tfi != 0xD4 || payload.empty()) {
      note("frame with TFI " + hex(tfi) + " (not host to PN532) ignored");
      continue;
    }
    {
      std::lock_guard lock(mutex_);
      ++stats_.frames;
      if (extended) ++stats_.extended_frames;
      ++stats_.commands[payload[0]];
    }
    on_frame(payload);
  }
}

void Pn532Emulator::on_frame(const std::vector<std::uint8_t>& payload) {
  send_raw(kAck);
  {
    // A new command ends a list still waiting for a card.
    std::lock_guard lock(mutex_);
    list_pending_ = false;
  }
  bool wait = false;
  const auto answer = execute(payload, wait);
  if (wait) return;  // InListPassiveTarget with infinite retries: answered when a card comes
  send_frame(answer);
}

std::vector<std::uint8_t> Pn532Emulator::execute(const std::vector<std::uint8_t>& p, bool& wait) {
  const std::uint8_t code = p[0];
  const auto reply = static_cast<std::uint8_t>(code + 1);
  switch (code) {
    case kGetFirmwareVersion:
      return {reply, 0x32, 0x01, 0x06, 0x07};  // PN532, firmware 1.6, ISO 14443A + B + ISO 18092
    case kDiagnose: {
      if (p.size() >= 2 && p[1] == 0x00) {  // communication test: NumTst and its data come back
        std::vector<std::uint8_t> r(p);
        r[0] = reply;
        return r;
      }
      if (p.size() >= 2 && p[1] == 0x06) {  // attention request / card presence
        std::lock_guard lock(mutex_);
        const bool here = listed_ && card_ && listed_generation_ == generation_;
        return {reply, here ? kOk : kTimeout};
      }
      note("Diagnose test " + (p.size() >= 2 ? hex(p[1]) : std::string("(none)")) + " is not emulated; answered 00");
      return {reply, kOk};
    }
    case kGetGeneralStatus: {
      std::lock_guard lock(mutex_);
      std::vector<std::uint8_t> r = {reply, 0x00, static_cast<std::uint8_t>(field_ ? 1 : 0), static_cast<std::uint8_t>(listed_ ? 1 : 0)};
      if (listed_) r.insert(r.end(), {0x01, 0x00, 0x00, 0x00});  // Tg 1, 106 kbps both ways, type A
      r.push_back(0x00);  // SAM status
      return r;
    }
    case kReadRegister: {
      std::lock_guard lock(mutex_);
      std::vector<std::uint8_t> r = {reply};
      for (std::size_t k = 1; k + 1 < p.size(); k += 2) r.push_back(registers_[static_cast<std::uint16_t>(p[k] << 8 | p[k + 1])]);
      return r;
    }
    case kWriteRegister: {
      std::lock_guard lock(mutex_);
      for (std::size_t k = 1; k + 2 < p.size(); k += 3) registers_[static_cast<std::uint16_t>(p[k] << 8 | p[k + 1])] = p[k + 2];
      return {reply};
    }
    case kSetParameters: {
      std::lock_guard lock(mutex_);
      if (p.size() >= 2) parameters_ = p[1];
      return {reply};
    }
    case kSAMConfiguration: {
      std::lock_guard lock(mutex_);
      asleep_ = false;
      if (p.size() >= 2 && p[1] != 0x01) note("SAMConfiguration mode " + hex(p[1]) + ": only normal mode (01) is emulated");
      return {reply};
    }
    case kPowerDown: {
      std::lock_guard lock(mutex_);
      asleep_ = true;
      field_ = false;
      listed_ = false;
      return {reply, kOk};
    }
    case kRFConfiguration: {
      std::lock_guard lock(mutex_);
      if (p.size() >= 3 && p[1] == 0x01) {  // RF field
        field_ = (p[2] & 0x01) != 0;
        if (!field_) listed_ = false;  // no field, no powered card
      } else if (p.size() >= 5 && p[1] == 0x05) {  // MxRtyATR, MxRtyPSL, MxRtyPassiveActivation
        passive_retries_ = p[4];
      }
      return {reply};
    }
    case kInListPassiveTarget:
      return list_passive_target(p, wait);
    case kInDataExchange:
      return data_exchange(p);
    case kInCommunicateThru:
      return communicate_thru(p);
    case kInDeselect:
    case kInRelease: {
      std::lock_guard lock(mutex_);
      listed_ = false;
      iso4_ = false;
      chain_.clear();
      return {reply, kOk};
    }
    default:
      break;
  }
  {
    std::lock_guard lock(mutex_);
    ++stats_.unknown_commands;
  }
  note("unknown command " + hex(code) + " (" + std::to_string(p.size() - 1) + " data bytes): answered with a syntax error frame");
  return {};  // send_frame sends the syntax-error frame for an empty answer
}

std::vector<std::uint8_t> Pn532Emulator::list_passive_target(const std::vector<std::uint8_t>& p, bool& pending) {
  constexpr std::uint8_t reply = kInListPassiveTarget + 1;
  std::lock_guard lock(mutex_);
  field_ = true;  // the chip switches the field on to poll
  listed_ = false;
  iso4_ = false;
  chain_.clear();
  if (p.size() < 3 || p[1] == 0) return {reply, 0x00};
  if (p[2] != 0x00) return {reply, 0x00};  // only ISO 14443A at 106 kbps has cards here
  if (!card_) {
    if (passive_retries_ == 0xff && p.size() == 3) {
      list_pending_ = true;  // the real chip keeps polling until a card comes or the host aborts
      pending = true;
    }
    return {reply, 0x00};
  }
  const auto uid = card_->uid();
  if (p.size() > 3) {
    // A UID to select (cascaded: CT 88 before the first three bytes of a 7-byte UID).
    std::vector<std::uint8_t> want(p.begin() + 3, p.end());
    if (want.size() == 8 && want[0] == 0x88) want.erase(want.begin());
    if (want != uid) return {reply, 0x00};
  }
  listed_ = true;
  listed_generation_ = generation_;
  card_->reselected();
  iso4_ = (card_->sak() & 0x20) != 0 && (parameters_ & kParamAutoRats) != 0;
  block_number_ = 0;
  return target_data_locked(reply);
}

std::vector<std::uint8_t> Pn532Emulator::target_data_locked(std::uint8_t code) const {
  const auto uid = card_->uid();
  const std::uint16_t atqa = card_->atqa();
  std::vector<std::uint8_t> r = {code, 0x01, 0x01, static_cast<std::uint8_t>(atqa >> 8), static_cast<std::uint8_t>(atqa & 0xff), card_->sak(),
                                 static_cast<std::uint8_t>(uid.size())};
  r.insert(r.end(), uid.begin(), uid.end());
  if (iso4_) {
    const auto ats = card_->ats();
    r.push_back(static_cast<std::uint8_t>(ats.size() + 1));  // TL counts itself
    r.insert(r.end(), ats.begin(), ats.end());
  }
  return r;
}

std::vector<std::uint8_t> Pn532Emulator::data_exchange(const std::vector<std::uint8_t>& p) {
  constexpr std::uint8_t reply = kInDataExchange + 1;
  std::shared_ptr<Iso14443Card> card;
  std::uint64_t generation = 0;
  std::vector<std::uint8_t> answer;
  {
    std::lock_guard lock(mutex_);
    if (p.size() < 2 || p[1] != 0x01 || !listed_) return {reply, kWrongContext};
    if (!card_ || listed_generation_ != generation_) return {reply, kTimeout};
    if (p.size() == 2 && !chain_.empty()) {
      answer.swap(chain_);  // the host asks for the rest of a chained answer
    } else {
      chain_.clear();
      if (!iso4_) {
        // MIFARE Classic: the chip runs AUTH (Crypto1) itself and passes READ through; the card
        // model answers with the status the chip would report.
        auto frame_card = card_;
        std::vector<std::uint8_t> data;
        const std::uint8_t st = frame_card->exchange_frame(std::span<const std::uint8_t>(p).subspan(2), data);
        if (st == kTimeout) note("InDataExchange frame to a card without ISO 14443-4 was not answered");
        std::vector<std::uint8_t> r = {reply, st};
        if (st == kOk) r.insert(r.end(), data.begin(), data.end());
        return r;
      }
      card = card_;
      generation = generation_;
    }
  }
  if (card) {
    // The card answers outside the lock: a test may take it away meanwhile.
    answer = card->transceive(std::span<const std::uint8_t>(p).subspan(2));
    std::lock_guard lock(mutex_);
    if (generation != generation_) return {reply, kTimeout};  // torn off mid-exchange
  }
  std::lock_guard lock(mutex_);
  std::uint8_t status = kOk;
  if (answer.size() > kMaxExchangeData) {
    chain_.assign(answer.begin() + kMaxExchangeData, answer.end());
    answer.resize(kMaxExchangeData);
    status = 0x40;  // MI: more information follows
  }
  std::vector<std::uint8_t> r = {reply, status};
  r.insert(r.end(), answer.begin(), answer.end());
  return r;
}

std::vector<std::uint8_t> Pn532Emulator::communicate_thru(const std::vector<std::uint8_t>& p) {
  constexpr std::uint8_t reply = kInCommunicateThru + 1;
  std::shared_ptr<Iso14443Card> card;
  std::uint64_t generation = 0;
  std::uint8_t pcb = 0;
  std::vector<std::uint8_t> apdu;
  {
    std::lock_guard lock(mutex_);
    if (p.size() < 2 || !listed_ || !card_ || listed_generation_ != generation_ || !iso4_) return {reply, kTimeout};
    pcb = p[1];
    if ((pcb & 0xF6) == 0xB2) {  // R(NAK): the card answers R(ACK) with its block number
      return {reply, kOk, static_cast<std::uint8_t>(0xA2 | block_number_)};
    }
    if ((pcb & 0xF7) == 0xC2) {  // S(DESELECT)
      listed_ = false;
      iso4_ = false;
      return {reply, kOk, pcb};
    }
    if ((pcb & 0xE2) != 0x02) {
      note("InCommunicateThru block " + hex(pcb) + " is not emulated; answered with a timeout");
      return {reply, kTimeout};
    }
    // An I-block: PCB [CID] [NAD] then the APDU.
    std::size_t at = 2 + ((pcb & 0x08) ? 1 : 0) + ((pcb & 0x04) ? 1 : 0);
    if (at > p.size()) return {reply, kTimeout};
    apdu.assign(p.begin() + static_cast<std::ptrdiff_t>(at), p.end());
    card = card_;
    generation = generation_;
  }
  auto answer = card->transceive(apdu);
  std::lock_guard lock(mutex_);
  if (generation != generation_) return {reply, kTimeout};
  block_number_ = pcb & 0x01;
  std::vector<std::uint8_t> r = {reply, kOk, static_cast<std::uint8_t>(0x02 | block_number_)};
  r.insert(r.end(), answer.begin(), answer.end());
  return r;
}

void Pn532Emulator::send_frame(const std::vector<std::uint8_t>& payload) {
  if (payload.empty()) {
    send_raw(kErrorFrame);
    return;
  }
  // TFI D5 (PN532 to host), then the payload.
  const std::size_t len = payload.size() + 1;
  std::vector<std::uint8_t> f = {0x00, 0x00, 0xFF};
  if (len <= 0xFF) {
    f.push_back(static_cast<std::uint8_t>(len));
    f.push_back(static_cast<std::uint8_t>(0x100 - len));
  } else {
    const auto hi = static_cast<std::uint8_t>(len >> 8), lo = static_cast<std::uint8_t>(len & 0xff);
    f.insert(f.end(), {0xFF, 0xFF, hi, lo, static_cast<std::uint8_t>(0x100 - ((hi + lo) & 0xff))});
  }
  f.push_back(0xD5);
  std::uint8_t sum = 0xD5;
  for (auto b : payload) {
    f.push_back(b);
    sum = static_cast<std::uint8_t>(sum + b);
  }
  f.push_back(static_cast<std::uint8_t>(0x100 - sum));
  f.push_back(0x00);
  {
    std::lock_guard lock(mutex_);
    last_answer_ = f;
  }
  send_raw(f);
}

void Pn532Emulator::send_raw(const std::vector<std::uint8_t>& bytes) {
  pilecore::sim::write_all(master_, bytes.data(), bytes.size());
}

}  // namespace pilecore::sim
