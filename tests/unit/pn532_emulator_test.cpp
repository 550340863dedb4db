// The PN532 emulator (tests/sim/pn532) on its own: the HSU frames of NXP's PN532 user manual,
// built and checked here byte by byte, independently of libnfc and of the emulator's own code.
// reader_nfc_test.cpp drives it through libnfc's real pn532_uart driver.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "cards.hpp"
#include "pn532_emulator.hpp"

using namespace std::chrono_literals;
using pilecore::sim::Pn532Emulator;

namespace {

using Bytes = std::vector<std::uint8_t>;

// ---------------------------------------------------------------------------------------------
// the raw PN532 protocol, straight on the pseudo-terminal

/// The slave end of the emulator's pty, raw, read with a deadline.
class Line {
 public:
  explicit Line(const std::string& device) : fd_(::open(device.c_str(), O_RDWR | O_NOCTTY)) {
    if (fd_ < 0) throw std::runtime_error("open " + device);
    termios t{};
    ::tcgetattr(fd_, &t);
    ::cfmakeraw(&t);
    ::tcsetattr(fd_, TCSANOW, &t);
  }
  ~Line() { ::close(fd_); }
  Line(const Line&) = delete;
  Line& operator=(const Line&) = delete;
  void send(const Bytes& b) { ASSERT_EQ(::write(fd_, b.data(), b.size()), static_cast<ssize_t>(b.size())); }
  /// Exactly `n` bytes, or fewer when nothing more comes within 2 s.
  Bytes read(std::size_t n) {
    Bytes out;
    while (out.size() < n) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 2000) <= 0) break;
      std::uint8_t buf[512];
      const ssize_t got = ::read(fd_, buf, std::min(sizeof buf, n - out.size()));
      if (got <= 0) break;
      out.insert(out.end(), buf, buf + got);
    }
    return out;
  }
  /// Whatever arrives within `wait`.
  Bytes drain(std::chrono::milliseconds wait) {
    Bytes out;
    pollfd p{fd_, POLLIN, 0};
    while (::poll(&p, 1, static_cast<int>(wait.count())) > 0) {
      std::uint8_t buf[512];
      const ssize_t got = ::read(fd_, buf, sizeof buf);
      if (got <= 0) break;
      out.insert(out.end(), buf, buf + got);
    }
    return out;
  }

 private:
  int fd_;
};

/// A host-to-PN532 frame built here, independently of libnfc's and the emulator's code.
Bytes host_frame(const Bytes& payload) {
  const std::size_t len = payload.size() + 1;
  Bytes f = {0x00, 0x00, 0xFF};
  if (len < 256) {
    f.push_back(static_cast<std::uint8_t>(len));
    f.push_back(static_cast<std::uint8_t>(-static_cast<int>(len)));
  } else {
    const auto hi = static_cast<std::uint8_t>(len >> 8), lo = static_cast<std::uint8_t>(len);
    f.insert(f.end(), {0xFF, 0xFF, hi, lo, static_cast<std::uint8_t>(-(hi + lo))});
  }
  f.push_back(0xD4);
  int sum = 0xD4;
  for (auto b : payload) {
    f.push_back(b);
    sum += b;
  }
  f.push_back(static_cast<std::uint8_t>(-sum));
  f.push_back(0x00);
  return f;
}

const Bytes kAck = {0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00};

/// Reads one PN532-to-host frame (normal or extended), checks both checksums and returns the
/// payload after TFI D5; empty on any mismatch.
Bytes read_answer(Line& line) {
  Bytes head = line.read(5);
  if (head.size() != 5 || head[0] != 0x00 || head[1] != 0x00 || head[2] != 0xFF) return {};
  std::size_t len = 0;
  if (head[3] == 0xFF && head[4] == 0xFF) {
    const Bytes ext = line.read(3);
    if (ext.size() != 3 || static_cast<std::uint8_t>(ext[0] + ext[1] + ext[2]) != 0) return {};
    len = static_cast<std::size_t>(ext[0]) << 8 | ext[1];
  } else {
    if (static_cast<std::uint8_t>(head[3] + head[4]) != 0) return {};
    len = head[3];
  }
  const Bytes body = line.read(len + 2);  // TFI, data, DCS, postamble
  if (body.size() != len + 2 || body[0] != 0xD5 || body[len + 1] != 0x00) return {};
  std::uint8_t sum = 0;
  for (std::size_t i = 0; i <= len; ++i) sum = static_cast<std::uint8_t>(sum + body[i]);
  if (sum != 0) return {};
  return Bytes(body.begin() + 1, body.begin() + static_cast<std::ptrdiff_t>(len));
}

/// Sends a command and returns its answer after checking the ACK.
Bytes command(Line& line, const Bytes& payload) {
  line.send(host_frame(payload));
  if (line.read(6) != kAck) return {0xAC, 0x4B};  // "no ACK", never a real answer
  return read_answer(line);
}

}  // namespace

TEST(Pn532Emulator, AnswersFramesChecksumsNacksAndUnknownCommandsAsAPn532Does) {
  std::vector<std::string> notes;
  std::mutex m;
  Pn532Emulator pn532({.link = {}, .log = [&](std::string_view s) {
                         std::lock_guard lock(m);
                         notes.emplace_back(s);
                       }});
  Line line(pn532.device());

  // Wake-up preamble, then GetFirmwareVersion: ACK, then PN532 v1.6 supporting A, B and 18092.
  Bytes wake = {0x55, 0x55, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
  line.send(wake);
  line.send(host_frame({0x02}));
  EXPECT_EQ(line.read(6), kAck);
  EXPECT_EQ(line.read(13), (Bytes{0x00, 0x00, 0xFF, 0x06, 0xFA, 0xD5, 0x03, 0x32, 0x01, 0x06, 0x07, 0xE8, 0x00}));

  // A NACK asks for the last answer again.
  line.send({0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00});
  EXPECT_EQ(line.read(13), (Bytes{0x00, 0x00, 0xFF, 0x06, 0xFA, 0xD5, 0x03, 0x32, 0x01, 0x06, 0x07, 0xE8, 0x00}));

  // A frame with a wrong data checksum is dropped, unanswered.
  Bytes bad = host_frame({0x02});
  bad[bad.size() - 2] ^= 0x01;
  line.send(bad);
  EXPECT_TRUE(line.drain(100ms).empty());

  // An extended frame (here a 300-byte communication test) is answered with an extended frame.
  Bytes diag = {0x00, 0x00};
  for (int i = 0; i < 299; ++i) diag.push_back(static_cast<std::uint8_t>(i));
  line.send(host_frame(diag));
  EXPECT_EQ(line.read(6), kAck);
  const Bytes answer = line.read(8 + 2 + 300 + 2);
  ASSERT_EQ(answer.size(), 312u);
  EXPECT_EQ((Bytes(answer.begin(), answer.begin() + 8)), (Bytes{0x00, 0x00, 0xFF, 0xFF, 0xFF, 0x01, 0x2E, 0xD1}));  // LEN 302
  EXPECT_EQ(answer[8], 0xD5);
  EXPECT_EQ(answer[9], 0x01);
  EXPECT_TRUE(std::equal(diag.begin() + 1, diag.end(), answer.begin() + 10));

  // An unknown command: ACK, then the syntax-error frame; logged and counted.
  line.send(host_frame({0x58, 0x01}));
  EXPECT_EQ(line.read(6), kAck);
  EXPECT_EQ(line.read(8), (Bytes{0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00}));

  const auto s = pn532.stats();
  EXPECT_EQ(s.frames, 3u);
  EXPECT_EQ(s.extended_frames, 1u);
  EXPECT_EQ(s.checksum_errors, 1u);
  EXPECT_EQ(s.nacks, 1u);
  EXPECT_EQ(s.unknown_commands, 1u);
  EXPECT_GE(s.wakeups, 1u);
  std::lock_guard lock(m);
  ASSERT_EQ(notes.size(), 2u);
  EXPECT_NE(notes[1].find("unknown command 58"), std::string::npos) << notes[1];
}


TEST(Pn532Emulator, ListsTheCardInItsFieldAndChainsAnAnswerTooLongForOneFrame) {
  Pn532Emulator pn532;
  Line line(pn532.device());
  // Out of reset the chip retries passive activation forever: a list waits for a card.
  line.send(host_frame({0x4A, 0x01, 0x00}));
  EXPECT_EQ(line.read(6), kAck);
  EXPECT_TRUE(line.drain(100ms).empty());
  pn532.place(std::make_shared<pilecore::sim::MemberCard>(Bytes{0x04, 0x11, 0x22, 0x33}));
  EXPECT_EQ(read_answer(line), (Bytes{0x4B, 0x01, 0x01, 0x00, 0x04, 0x08, 0x04, 0x04, 0x11, 0x22, 0x33}));
  pn532.remove();
  EXPECT_EQ(command(line, {0x12, 0x10}), (Bytes{0x13}));                          // SetParameters: automatic RATS
  EXPECT_EQ(command(line, {0x32, 0x05, 0x00, 0x01, 0x02}), (Bytes{0x33}));        // RFConfiguration: passive retries 2
  EXPECT_EQ(command(line, {0x4A, 0x01, 0x00}), (Bytes{0x4B, 0x00}));              // no card: no target
  EXPECT_EQ(command(line, {0x40, 0x01, 0x00, 0xA4, 0x04, 0x00}), (Bytes{0x41, 0x27})) << "nothing selected";

  const Bytes aid = {0xA0, 0x00, 0x00, 0x03, 0x33};
  pn532.place(std::make_shared<pilecore::sim::ApduCard>(Bytes{0x08, 0x01, 0x02, 0x03}, std::vector<Bytes>{aid},
                                                        [](std::span<const std::uint8_t>, std::span<const std::uint8_t>) -> std::optional<Bytes> {
                                                          Bytes r(400, 0x77);
                                                          r.insert(r.end(), {0x90, 0x00});
                                                          return r;
                                                        }));
  // NbTg 1, Tg 1, ATQA 0004, SAK 20, UID, then the ATS with its length byte.
  EXPECT_EQ(command(line, {0x4A, 0x01, 0x00}),
            (Bytes{0x4B, 0x01, 0x01, 0x00, 0x04, 0x20, 0x04, 0x08, 0x01, 0x02, 0x03, 0x06, 0x75, 0x77, 0x81, 0x02, 0x80}));
  EXPECT_EQ(command(line, {0x40, 0x01, 0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x33}), (Bytes{0x41, 0x00, 0x90, 0x00}));
  EXPECT_EQ(command(line, {0x42, 0xB2}), (Bytes{0x43, 0x00, 0xA2})) << "R(NAK) is answered R(ACK): the card is there";

  // 402 bytes: 262 with MI (status 40), then the rest when the host asks with an empty exchange.
  const Bytes first = command(line, {0x40, 0x01, 0x80, 0xCA, 0x00, 0x00, 0x00});
  ASSERT_EQ(first.size(), 2u + 262u);
  EXPECT_EQ(first[1], 0x40);
  const Bytes rest = command(line, {0x40, 0x01});
  ASSERT_EQ(rest.size(), 2u + 140u);
  EXPECT_EQ(rest[1], 0x00);
  EXPECT_EQ(rest[rest.size() - 2], 0x90);

  pn532.remove();
  EXPECT_EQ(command(line, {0x42, 0xB2}), (Bytes{0x43, 0x01})) << "gone: the chip times out";
  EXPECT_EQ(command(line, {0x00, 0x06}), (Bytes{0x01, 0x01}));
  EXPECT_EQ(command(line, {0x52, 0x00}), (Bytes{0x53, 0x00}));  // InRelease
  EXPECT_EQ(pn532.stats().unknown_commands, 0u);
}
