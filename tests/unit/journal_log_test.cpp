// pilecored under systemd: its stderr lines carry the syslog priority ("<4>" for a warning), so
// `journalctl -p warning` finds them; the prefix is used only when stderr is the stream that
// $JOURNAL_STREAM names, and lines elsewhere keep their timestamps.
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <regex>
#include <sstream>

#include "journal_log.hpp"
#include "test_support.hpp"

using namespace pilecore::test;

TEST(JournalLog, PrioritiesPrefixEachLevelWhenStderrIsTheJournal) {
  TempDir dir;
  const auto file = dir.write("stream", "");
  const int fd = ::open(file.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  struct stat st {};
  ASSERT_EQ(::fstat(fd, &st), 0);
  const std::string stream = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
  ::setenv("JOURNAL_STREAM", stream.c_str(), 1);
  EXPECT_TRUE(pilecore::core::is_journal_stream(fd, std::getenv("JOURNAL_STREAM")));
  // Inherited by a process whose stderr went elsewhere: not the journal.
  EXPECT_FALSE(pilecore::core::is_journal_stream(STDOUT_FILENO == fd ? STDERR_FILENO : STDOUT_FILENO, std::getenv("JOURNAL_STREAM")));
  ::unsetenv("JOURNAL_STREAM");
  EXPECT_FALSE(pilecore::core::is_journal_stream(fd, nullptr));
  EXPECT_FALSE(pilecore::core::is_journal_stream(fd, "garbage"));
  EXPECT_FALSE(pilecore::core::is_journal_stream(fd, (stream + "x").c_str()));
  ::close(fd);

  std::ostringstream journal_out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_st>(journal_out);
  sink->set_formatter(pilecore::core::make_log_formatter(true));
  spdlog::logger logger("meter", sink);
  logger.set_level(spdlog::level::trace);
  logger.trace("t");
  logger.debug("d");
  logger.info("i");
  logger.warn("w");
  logger.error("e");
  logger.critical("c");
  EXPECT_EQ(journal_out.str(), "<7>trace [meter] t\n<7>debug [meter] d\n<6>info [meter] i\n<4>warning [meter] w\n<3>error [meter] e\n<2>critical [meter] c\n");

  std::ostringstream plain_out;
  auto plain = std::make_shared<spdlog::sinks::ostream_sink_st>(plain_out);
  plain->set_formatter(pilecore::core::make_log_formatter(false));
  spdlog::logger other("meter", plain);
  other.warn("w");
  EXPECT_TRUE(std::regex_match(plain_out.str(), std::regex("\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d\\.\\d{3} warning \\[meter\\] w\n"))) << plain_out.str();
}
