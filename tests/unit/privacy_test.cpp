// Data at rest and in the logs: user tokens are masked (and hashed with the pile's own salt) in
// logs and events; the state directory, the database with its -wal and -shm files and the salt
// are owner-only whatever the umask, also outside systemd; `pilectl keys init` as root makes
// the key for the user the daemon runs as, or refuses naming the command that would.
#include <gtest/gtest.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <regex>
#include <sstream>

#include "control_socket.hpp"
#include "ledger_commands.hpp"
#include "token_privacy.hpp"
#include "test_support.hpp"

using namespace pilecore;
using namespace pilecore::core;
using namespace pilecore::test;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

std::string site_yaml() { return one_connector_sim_site("PRIV-1", "Privacy test"); }

mode_t mode_of(const fs::path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return 07777;
  return st.st_mode & 07777;
}

}  // namespace

TEST(TokenPrivacy, TheMaskShowsTheTypeAndAtMostTheLastFour) {
  EXPECT_EQ(mask_token("card:04DEADBEEF"), "card:******BEEF");
  EXPECT_EQ(mask_token("wallet:DCEP-8842"), "wallet:*****8842");
  EXPECT_EQ(mask_token("card:0451"), "card:****") << "a short id shows nothing of itself";
  EXPECT_EQ(mask_token("card:0451DE"), "card:****") << "below eight characters, nothing";
  EXPECT_EQ(mask_token("blocked-card"), "********card") << "no type prefix: the whole token is the id";
  EXPECT_EQ(mask_token(""), "****");
}

TEST(TokenPrivacy, TheHashIsSaltedSha256) {
  // SHA-256("abc") (FIPS 180-2, appendix B.1): salt "a", token "bc".
  EXPECT_EQ(token_hash("a", "bc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_NE(token_hash("salt-of-pile-1", "card:04DEADBEEF"), token_hash("salt-of-pile-2", "card:04DEADBEEF"));
}

TEST(TokenPrivacy, TheSaltIsThePilesOwnAndOwnerOnly) {
  TempDir dir;
  const mode_t old = ::umask(022);
  const std::string salt = load_or_create_token_salt(dir.path());
  ::umask(old);
  EXPECT_TRUE(std::regex_match(salt, std::regex("[0-9a-f]{64}"))) << salt;
  EXPECT_EQ(mode_of(dir.path() / "token-salt"), 0600u);
  EXPECT_EQ(load_or_create_token_salt(dir.path()), salt) << "kept across restarts";
  TempDir other;
  EXPECT_NE(load_or_create_token_salt(other.path()), salt);
  dir.write("token-salt", "not a salt\n");
  try {
    (void)load_or_create_token_salt(dir.path());
    FAIL() << "a damaged salt file was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find((dir.path() / "token-salt").string() + ": not a token salt"), std::string::npos) << e.what();
  }
}

TEST(TokenPrivacy, NoFullCardUidInTheLogOrTheEventStream) {
  const std::string uid = "04DEADBEEF";
  TempDir dir;
  const auto file = dir.write("site.yaml", site_yaml());
  NotifyListener notify(dir.path() / "n.sock");
  Child daemon({std::string(PILECORE_BIN_DIR) + "/pilecored", "--config", file.string(), "--state-dir", (dir.path() / "state").string(), "--clock-speed",
                time_scale().speed_arg(600), "--clock-start", "2026-03-02T03:00:00Z", "--log-level", "trace"},
               {notify.env()});
  ASSERT_TRUE(notify.wait_for("READY=1", 10s)) << daemon.stderr_text();
  const fs::path sock = dir.path() / "state" / "pilecored.sock";
  ControlWatch watch(sock);
  ASSERT_TRUE(eventually([&] { return control_request(sock, {{"cmd", "status"}})["connectors"][0]["status"] == "Preparing"; }));
  const auto started = control_request(sock, {{"cmd", "session_start"}, {"connector", 1}, {"token", "card:" + uid}});
  ASSERT_TRUE(started.value("ok", false)) << started.dump();
  std::this_thread::sleep_for(100ms);
  ASSERT_TRUE(control_request(sock, {{"cmd", "session_stop"}, {"connector", 1}}).value("ok", false));
  std::vector<nlohmann::json> events;
  for (;;) {
    auto ev = watch.next(5s);
    ASSERT_TRUE(ev) << "no session_closed event";
    events.push_back(*ev);
    if ((*ev)["event"] == "session_closed") break;
  }
  daemon.signal(SIGTERM);
  ASSERT_EQ(daemon.wait(), 0);
  const std::string log = daemon.stderr_text();
  // The last four are all a mask shows; "DEADBEEF" would be more than that.
  for (const auto& e : events) EXPECT_EQ(e.dump().find("DEADBEEF"), std::string::npos) << e.dump();
  EXPECT_EQ(log.find("DEADBEEF"), std::string::npos) << log;
  const auto st = std::find_if(events.begin(), events.end(), [](const nlohmann::json& e) { return e["event"] == "session_started"; });
  ASSERT_NE(st, events.end());
  const std::string user = (*st)["user"];
  EXPECT_TRUE(std::regex_match(user, std::regex(R"(card:\*{6}BEEF #[0-9a-f]{12})"))) << user;
  // The hash is the pile's: the same card on the same pile is the same reference.
  const std::string salt = load_or_create_token_salt(dir.path() / "state");
  EXPECT_EQ(user, "card:******BEEF #" + token_hash(salt, "card:" + uid).substr(0, 12));
  EXPECT_NE(log.find("start requested (" + user + " via sim)"), std::string::npos) << log;
}

TEST(TokenPrivacy, StatusReceiptsAndTheWatchStreamNameATokenOnlyMasked) {
  const std::string uid = "04DEADBEEF";
  TempDir dir;
  const auto file = dir.write("site.yaml", site_yaml());
  NotifyListener notify(dir.path() / "n.sock");
  Child daemon({std::string(PILECORE_BIN_DIR) + "/pilecored", "--config", file.string(), "--state-dir", (dir.path() / "state").string(), "--clock-speed",
                time_scale().speed_arg(600), "--clock-start", "2026-03-02T03:00:00Z"},
               {notify.env()});
  ASSERT_TRUE(notify.wait_for("READY=1", 10s)) << daemon.stderr_text();
  const fs::path sock = dir.path() / "state" / "pilecored.sock";
  ControlWatch watch(sock);
  ASSERT_TRUE(eventually([&] { return control_request(sock, {{"cmd", "status"}})["connectors"][0]["status"] == "Preparing"; }));
  const auto started = control_request(sock, {{"cmd", "session_start"}, {"connector", 1}, {"token", "card:" + uid}});
  ASSERT_TRUE(started.value("ok", false)) << started.dump();
  const std::string salt = load_or_create_token_salt(dir.path() / "state");
  const std::string ref = "card:******BEEF #" + token_hash(salt, "card:" + uid).substr(0, 12);
  // Everything a client can read while the session runs, when it stops, and afterwards.
  nlohmann::json status;
  ASSERT_TRUE(eventually([&] {
    status = control_request(sock, {{"cmd", "status"}});
    return status["connectors"][0].contains("session");
  }));
  EXPECT_EQ(status["connectors"][0]["session"]["user"], ref);
  const auto stopped = control_request(sock, {{"cmd", "session_stop"}, {"connector", 1}});
  ASSERT_TRUE(stopped.value("ok", false)) << stopped.dump();
  EXPECT_EQ(stopped["receipt"]["user"], ref);
  const auto receipt = control_request(sock, {{"cmd", "receipt"}, {"transaction", started["transaction"]}});
  ASSERT_TRUE(receipt.value("ok", false)) << receipt.dump();
  EXPECT_EQ(receipt["user"], ref);
  std::vector<nlohmann::json> events;
  for (;;) {
    auto ev = watch.next(5s);
    ASSERT_TRUE(ev) << "no session_closed event";
    events.push_back(*ev);
    if ((*ev)["event"] == "session_closed") break;
  }
  for (const auto& doc : {status, stopped, receipt}) EXPECT_EQ(doc.dump().find("DEADBEEF"), std::string::npos) << doc.dump();
  for (const auto& e : events) EXPECT_EQ(e.dump().find("DEADBEEF"), std::string::npos) << e.dump();
  daemon.signal(SIGTERM);
  ASSERT_EQ(daemon.wait(), 0);
}

TEST(Permissions, StateDirectoryAndDatabaseAreOwnerOnlyWhateverTheUmask) {
  TempDir dir;
  const auto file = dir.write("site.yaml", site_yaml());
  const fs::path state = dir.path() / "state";
  NotifyListener notify(dir.path() / "n.sock");
  // Outside systemd, with the commonest umask.
  Child daemon({"/bin/sh", "-c", "umask 022 && exec \"$0\" \"$@\"", std::string(PILECORE_BIN_DIR) + "/pilecored", "--config", file.string(),
                "--state-dir", state.string()},
               {notify.env()});
  ASSERT_TRUE(notify.wait_for("READY=1", 10s)) << daemon.stderr_text();
  EXPECT_EQ(mode_of(state), 0700u);
  EXPECT_EQ(mode_of(state / "pilecore.db"), 0600u);
  EXPECT_EQ(mode_of(state / "pilecore.db-wal"), 0600u);
  EXPECT_EQ(mode_of(state / "pilecore.db-shm"), 0600u);
  EXPECT_EQ(mode_of(state / "token-salt"), 0600u);
  daemon.signal(SIGTERM);
  ASSERT_EQ(daemon.wait(), 0);

  // A database an older version left 0644 is tightened at the next start; a state directory
  // the site made keeps its mode, with a warning when every user can enter it.
  ASSERT_EQ(::chmod((state / "pilecore.db").c_str(), 0644), 0);
  ASSERT_EQ(::chmod(state.c_str(), 0755), 0);
  Child again({std::string(PILECORE_BIN_DIR) + "/pilecored", "--config", file.string(), "--state-dir", state.string()}, {notify.env()});
  ASSERT_TRUE(notify.wait_for("READY=1", 10s)) << again.stderr_text();
  EXPECT_EQ(mode_of(state / "pilecore.db"), 0600u);
  EXPECT_EQ(mode_of(state), 0755u);
  again.signal(SIGTERM);
  ASSERT_EQ(again.wait(), 0);
  EXPECT_NE(again.stderr_text().find(state.string() + " is open to every local user (mode 0755)"), std::string::npos) << again.stderr_text();
}

TEST(KeyOwnership, KeysInitMakesTheKeyForTheDaemonsUser) {
  if (::geteuid() != 0) GTEST_SKIP() << "giving a file to another user needs root";
  const passwd* nobody = ::getpwnam("nobody");
  ASSERT_NE(nobody, nullptr);
  const uid_t uid = nobody->pw_uid;
  const gid_t gid = nobody->pw_gid;
  TempDir dir;
  ASSERT_EQ(::chmod(dir.path().c_str(), 0711), 0);  // nobody may pass through to the state directory
  // The package makes the state directory for the daemon's user: here "nobody".
  const fs::path state = dir.path() / "state";
  fs::create_directory(state);
  ASSERT_EQ(::chown(state.c_str(), uid, gid), 0);
  const auto owner = resolve_key_owner("", state);
  ASSERT_TRUE(owner);
  EXPECT_EQ(owner->uid, uid);
  EXPECT_EQ(owner->gid, gid);

  IdentityOptions o;
  o.key = state / "identity" / "device.key";
  o.certificate = state / "identity" / "device.crt";
  o.common_name = "SITE-42";
  o.owner = owner;
  std::ostringstream out, err;
  ASSERT_EQ(keys_init(o, out, err), 0) << err.str();
  EXPECT_NE(out.str().find("owner:       " + owner->name + " (the user pilecored runs as)"), std::string::npos) << out.str();
  for (const fs::path& p : {state / "identity", o.key, o.certificate}) {
    struct stat st {};
    ASSERT_EQ(::stat(p.c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, uid) << p;
    EXPECT_EQ(st.st_gid, gid) << p;
  }
  EXPECT_EQ(mode_of(o.key), 0600u);
  // And the daemon's user can really read it: a child process that is that user opens it.
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(gid) != 0 || ::setuid(uid) != 0) ::_exit(2);
    const int fd = ::open(o.key.c_str(), O_RDONLY);
    ::_exit(fd >= 0 ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "user nobody cannot read the key";

  // An explicit --owner wins over the directory's owner.
  const auto root = resolve_key_owner("root:root", state);
  EXPECT_FALSE(root) << "root running as root: nothing to give away";
  EXPECT_THROW((void)resolve_key_owner("no-such-user-pilecore", state), std::runtime_error);
}

TEST(KeyOwnership, AsRootWithoutAStateDirectoryKeysInitRefusesNamingTheCommand) {
  if (::geteuid() != 0) GTEST_SKIP() << "the refusal is for root";
  TempDir dir;
  const fs::path state = dir.path() / "missing";
  // The daemon's account exists ("nobody" stands in for "pilecore"): a root-only key would stop it.
  try {
    (void)resolve_key_owner("", state, "nobody");
    FAIL() << "no refusal";
  } catch (const std::runtime_error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("Give the owner: pilectl keys init --owner nobody"), std::string::npos) << m;
    EXPECT_NE(m.find("install -d -o nobody -g nobody -m 0750 " + state.string()), std::string::npos) << m;
  }
  // No such account: the daemon runs as root too (a bench, a test), the key is root's.
  EXPECT_FALSE(resolve_key_owner("", state, "no-such-user-pilecore"));
  // Through pilectl, --owner gives it away.
  const auto ok = run_process({std::string(PILECORE_BIN_DIR) + "/pilectl", "keys", "init", "--state-dir", state.string(), "--cn", "SITE-42", "--owner", "nobody"});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_NE(ok.out.find("owner:       nobody:"), std::string::npos) << ok.out;
  struct stat st {};
  ASSERT_EQ(::stat((state / "identity" / "device.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, ::getpwnam("nobody")->pw_uid);
}
