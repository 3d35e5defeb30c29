// The systemd notify protocol as outboxd speaks it (Type=notify,
// WatchdogSec=): run under a NOTIFY_SOCKET the test owns, outboxd must send
// READY=1 once connected, WATCHDOG=1 periodically while its loops turn, and
// STOPPING=1 on SIGTERM before exiting 0.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "common/unique_fd.h"
#include "tests/harness/outbox_schema.h"
#include "tests/integration/relay_test_support.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// A unix datagram socket standing in for systemd's notify socket.
class NotifySocket {
 public:
  explicit NotifySocket(const std::string& path) : path_(path) {
    fd_ = UniqueFd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!fd_.valid()) throw HarnessError("socket: " + std::string(std::strerror(errno)));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof(addr.sun_path)) throw HarnessError("socket path too long: " + path);
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    if (::bind(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      throw HarnessError("bind " + path + ": " + std::strerror(errno));
    }
  }
  ~NotifySocket() { ::unlink(path_.c_str()); }

  // Waits until a datagram containing `line` (e.g. "READY=1") arrives;
  // every datagram read is kept in messages().
  bool WaitFor(const std::string& line, std::chrono::milliseconds deadline) {
    const auto until = Clock::now() + deadline;
    while (true) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
      if (left.count() <= 0) return false;
      pollfd p{fd_.get(), POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::recv(fd_.get(), buf, sizeof buf, 0);
      if (n <= 0) continue;
      messages_.emplace_back(buf, static_cast<std::size_t>(n));
      if (Has(messages_.back(), line)) return true;
    }
  }
  static bool Has(const std::string& datagram, const std::string& line) {
    std::size_t start = 0;
    while (start <= datagram.size()) {
      std::size_t end = datagram.find('\n', start);
      if (end == std::string::npos) end = datagram.size();
      if (datagram.compare(start, end - start, line) == 0) return true;
      start = end + 1;
    }
    return false;
  }
  const std::vector<std::string>& messages() const { return messages_; }

 private:
  std::string path_;
  UniqueFd fd_;
  std::vector<std::string> messages_;
};

// A poll-mode config on `db`, which gets an outbox table.
std::string PollConfig(const TestDatabase& db) {
  db.Exec(OutboxDdl("outbox"));
  return "[postgres]\nconninfo = \"" + db.conninfo() + "\"\n[kafka]\nbootstrap_servers = \"" +
         SharedServices().kafka_bootstrap + "\"\n[[outbox]]\ntable = \"public.outbox\"\n";
}

TEST(SystemdNotify, ReadyThenWatchdogWhileRunningThenStoppingOnSigterm) {
  TestDatabase db;
  OutboxdProcess outboxd(PollConfig(db));
  NotifySocket notify(outboxd.dir() + "/notify.sock");
  outboxd.SetEnv("NOTIFY_SOCKET", outboxd.dir() + "/notify.sock");
  outboxd.SetEnv("WATCHDOG_USEC", "1000000");  // 1 s: WATCHDOG=1 about every 500 ms
  outboxd.Start();

  ASSERT_TRUE(notify.WaitFor("READY=1", 60s)) << outboxd.Log();
  EXPECT_EQ(1, db.QueryInt64("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
                             "application_name = 'outboxd'"))
      << "READY=1 comes after outboxd connected";
  // Several watchdog pings while it runs, not just one at start-up.
  const auto first = Clock::now();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(notify.WaitFor("WATCHDOG=1", 10s)) << "ping " << i << "\n" << outboxd.Log();
  EXPECT_GE(Clock::now() - first, 500ms) << "pings are spread over time";

  outboxd.Terminate();
  EXPECT_TRUE(notify.WaitFor("STOPPING=1", 30s)) << outboxd.Log();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
}

TEST(SystemdNotify, NoWatchdogPingsWithoutWatchdogUsec) {
  TestDatabase db;
  OutboxdProcess outboxd(PollConfig(db));
  NotifySocket notify(outboxd.dir() + "/notify.sock");
  outboxd.SetEnv("NOTIFY_SOCKET", outboxd.dir() + "/notify.sock");
  outboxd.Start();
  ASSERT_TRUE(notify.WaitFor("READY=1", 60s)) << outboxd.Log();
  // Nothing asked for pings: none come (waiting is the point here).
  EXPECT_FALSE(notify.WaitFor("WATCHDOG=1", 2s));
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
}

}  // namespace
}  // namespace outboxd::testing
