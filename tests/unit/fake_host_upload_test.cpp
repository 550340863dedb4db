// The SDK testing kit's Host::upload (pilecore/testing/fake_host.hpp, API 2.4): a plugin author's
// test plays the back end with acknowledge(); the kit answers as the core does: never inside the
// call, once, ok only after the ack (or at once for a key acknowledged before), a refusal for a
// record the core would refuse, and nothing after the instance stopped.
#include <gtest/gtest.h>

#include "pilecore/testing/fake_host.hpp"

namespace pilecore {
namespace {

struct Answers {
  std::vector<Status> got;
  UploadCallback done() {
    return [this](Status s) { got.push_back(std::move(s)); };
  }
};

UplinkRecord record(const std::string& key) { return {.key = key, .kind = "voucher", .body = {{"fen", std::int64_t{100}}}}; }

TEST(FakeHostUpload, AnUploadIsAnsweredOnceAfterTheTestAcknowledgesItsKey) {
  testkit::FakeHost host(std::span<const ConfigKey>{}, {}, {});
  Answers a;
  host.upload(record("voucher:T-1/authorize"), a.done());
  host.upload(record("voucher:T-1/authorize"), a.done());
  host.run_posted();
  EXPECT_TRUE(a.got.empty());
  EXPECT_EQ(host.waiting_uploads(), (std::vector<std::string>{"voucher:T-1/authorize", "voucher:T-1/authorize"}));
  EXPECT_EQ(host.acknowledge("voucher:T-1/authorize"), 2u);
  EXPECT_TRUE(a.got.empty()) << "posted, not called inside acknowledge()";
  host.run_posted();
  ASSERT_EQ(a.got.size(), 2u);
  EXPECT_TRUE(a.got[0].ok() && a.got[1].ok());
  // A key acknowledged before: at once (posted).
  host.upload(record("voucher:T-1/authorize"), a.done());
  EXPECT_EQ(a.got.size(), 2u);
  host.run_posted();
  EXPECT_EQ(a.got.size(), 3u);
  EXPECT_EQ(host.uploads().size(), 3u);
  EXPECT_EQ(host.uploads()[0].record.body.size(), 1u);
  EXPECT_TRUE(host.violations().empty());
}

TEST(FakeHostUpload, RefusalsAreTheCoresAndStoppingDropsWhatWaits) {
  testkit::FakeHost host(std::span<const ConfigKey>{}, {}, {});
  Answers a;
  host.upload(record("op:mine"), a.done());
  host.refuse_uploads(Status(StatusCode::busy, "the uplink outbox is full"));
  host.upload(record("voucher:T-2/authorize"), a.done());
  host.refuse_uploads(std::nullopt);
  host.upload(record("voucher:T-3/authorize"), a.done());
  host.run_posted();
  ASSERT_EQ(a.got.size(), 2u);
  EXPECT_EQ(a.got[0].code(), StatusCode::invalid_argument);
  EXPECT_EQ(a.got[0].message(), "the key prefix 'op:' is the core's own; choose another");
  EXPECT_EQ(a.got[1].code(), StatusCode::busy);
  host.stopped();
  EXPECT_EQ(host.acknowledge("voucher:T-3/authorize"), 0u) << "the stopped instance's upload is never answered";
  host.run_posted();
  EXPECT_EQ(a.got.size(), 2u);
}

TEST(FakeHostUpload, AnUploadOffTheStrandIsAViolation) {
  testkit::FakeHost host(std::span<const ConfigKey>{}, {}, {});
  Answers a;
  std::thread([&] { host.upload(record("voucher:T-1/authorize"), a.done()); }).join();
  ASSERT_EQ(host.violations().size(), 1u);
  EXPECT_EQ(host.violations()[0], "upload() was called off the strand");
}

}  // namespace
}  // namespace pilecore
