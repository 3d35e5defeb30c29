// Proves the test harness works end to end: the shared PostgreSQL and Kafka
// that ctest's fixtures start, a throwaway database, a topic, records
// produced and read back with the real kcat client, process control, and
// private services that fault tests restart.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "tests/harness/test_env.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;

TEST(HarnessTest, DatabaseTopicAndKcatRoundTrip) {
  TestDatabase db;
  db.Exec(
      "CREATE TABLE items (id int PRIMARY KEY, name text);"
      "INSERT INTO items VALUES (1, 'one'), (2, NULL)");
  EXPECT_EQ(2, db.QueryInt64("SELECT count(*) FROM items"));
  EXPECT_EQ("one", db.QueryString("SELECT name FROM items WHERE id = 1"));
  const auto rows = db.Query("SELECT id::text, name FROM items ORDER BY id");
  ASSERT_EQ(2u, rows.size());
  EXPECT_EQ(std::optional<std::string>("1"), rows[0][0]);
  EXPECT_EQ(std::optional<std::string>("one"), rows[0][1]);
  EXPECT_EQ(std::nullopt, rows[1][1]);
  EXPECT_EQ("logical", db.QueryString("SHOW wal_level"));
  EXPECT_THROW(db.Exec("SELECT * FROM no_such_table"), HarnessError);

  const std::string bootstrap = SharedServices().kafka_bootstrap;
  KafkaAdmin admin;
  const std::string topic = UniqueTopic("harness");
  admin.CreateTopic(topic, 3, {{"retention.ms", "3600000"}});
  EXPECT_EQ(3, admin.PartitionCount(topic));

  static const char kNotUtf8[] = "\xff\xfe\0 not utf-8, \"quoted\" \\ \x01\n";
  const std::vector<KcatMessage> sent = {
      {"order-0", R"({"total": 10})", {{"id", "7f1c"}, {"type", "OrderCreated"}}, 0},
      {"order-1", std::string(kNotUtf8, sizeof kNotUtf8 - 1), {{"id", "a"}, {"id", "b"}}, 1},
      {std::nullopt, std::nullopt, {{"traceparent", "00-abc-01"}, {"empty", ""}}, 2},
  };
  ProduceWithKcat(bootstrap, topic, sent);

  const auto records = ConsumeTopic(bootstrap, topic, 3, 60s);
  ASSERT_EQ(3u, records.size());
  for (std::size_t i = 0; i < records.size(); ++i) {
    SCOPED_TRACE("record " + std::to_string(i));
    EXPECT_EQ(topic, records[i].topic);
    EXPECT_EQ(static_cast<int>(i), records[i].partition);
    EXPECT_EQ(0, records[i].offset);
    EXPECT_EQ(sent[i].key, records[i].key);
    EXPECT_EQ(sent[i].value, records[i].value);
    EXPECT_EQ(sent[i].headers, records[i].headers);
    EXPECT_GT(records[i].timestamp_ms, 0);
  }

  admin.DeleteTopic(topic);
  EXPECT_EQ(0, admin.PartitionCount(topic));
}

TEST(HarnessTest, ConsumingATopicThatDoesNotExistReadsNothing) {
  const std::string bootstrap = SharedServices().kafka_bootstrap;
  const std::string topic = UniqueTopic("harness-missing");
  EXPECT_TRUE(ConsumeTopic(bootstrap, topic, 0, 10s).empty());
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(ConsumeTopic(bootstrap, topic, 1, 1s).empty());
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  // Reading did not create it.
  EXPECT_EQ(0, KafkaAdmin().PartitionCount(topic));
}

TEST(HarnessTest, RunCommandReportsExitCodeOutputAndTimeout) {
  auto r = RunCommand({"sh", "-c", "read line; echo \"out $line\"; echo err >&2; exit 3"}, 10s, "hello\n");
  EXPECT_EQ(3, r.exit_code);
  EXPECT_NE(std::string::npos, r.output.find("out hello")) << r.output;
  EXPECT_NE(std::string::npos, r.output.find("err")) << r.output;

  EXPECT_EQ(128 + SIGTERM, RunCommand({"sh", "-c", "kill -TERM $$"}, 10s).exit_code);

  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(-1, RunCommand({"sleep", "30"}, 200ms).exit_code);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
}

// OutboxdProcess against a stand-in daemon, so the harness is tested apart
// from the real binary.
class HarnessFakeDaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("outboxd-fake-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    const auto script = dir_ / "outboxd";
    std::ofstream(script) << "#!/bin/sh\n"
                             "echo \"args: $*\"\n"
                             "echo \"config: $(cat \"$3\")\"\n"
                             "echo \"env: $FAKE_SETTING\"\n"
                             "trap 'echo stopping; exit 0' TERM\n"
                             "while :; do sleep 0.05; done\n";
    std::filesystem::permissions(script, std::filesystem::perms::owner_all);
    const char* old = std::getenv("OUTBOXD_BINARY");
    if (old) old_binary_ = old;
    ::setenv("OUTBOXD_BINARY", script.c_str(), 1);
  }
  void TearDown() override {
    if (old_binary_) {
      ::setenv("OUTBOXD_BINARY", old_binary_->c_str(), 1);
    } else {
      ::unsetenv("OUTBOXD_BINARY");
    }
    std::filesystem::remove_all(dir_);
  }

  std::filesystem::path dir_;
  std::optional<std::string> old_binary_;
};

TEST_F(HarnessFakeDaemonTest, StartsWithConfigFileAndStopsOnSigterm) {
  OutboxdProcess p("[log]\nlevel = \"debug\"\n");
  p.SetEnv("FAKE_SETTING", "42");
  p.Start();
  ASSERT_TRUE(p.WaitForLog("env: 42", 10s)) << p.Log();
  EXPECT_NE(std::string::npos, p.Log().find("args: run -c " + p.config_path())) << p.Log();
  EXPECT_NE(std::string::npos, p.Log().find("config: [log]")) << p.Log();
  EXPECT_TRUE(p.Running());
  EXPECT_GT(ProcessRssKb(p.pid()).first, 0);
  EXPECT_EQ(-1, p.WaitExit(100ms));

  p.Terminate();
  EXPECT_EQ(0, p.WaitExit(10s)) << p.Log();
  EXPECT_NE(std::string::npos, p.Log().find("stopping"));
  EXPECT_FALSE(p.Running());

  // Started again after a crash: same config, log appended.
  const std::size_t before = p.LogSize();
  p.Start();
  ASSERT_TRUE(p.WaitForLog("args:", 10s, before)) << p.Log();
  p.Kill();
  EXPECT_EQ(128 + SIGKILL, p.WaitExit(10s));
}

TEST(HarnessTest, WaitUntilAndProcessMemory) {
  int calls = 0;
  EXPECT_TRUE(WaitUntil([&] { return ++calls == 3; }, 10s, 1ms));
  EXPECT_FALSE(WaitUntil([] { return false; }, 50ms));
  const ProcessMemory mem = ReadProcessMemory(::getpid());
  EXPECT_GT(mem.rss_kb, 0);
  EXPECT_GE(mem.peak_rss_kb, mem.rss_kb);
  EXPECT_LT(FreePort(), 65536);
}

// What fault tests rely on: private services that come back on the same
// address with their data.
TEST(HarnessTest, PrivateServicesRestartWithTheirData) {
  ServiceControl services;
  services.StartPostgres();
  services.StartKafka();
  ASSERT_NE(SharedServices().pg_port, services.pg_port());
  ASSERT_NE(SharedServices().kafka_bootstrap, services.kafka_bootstrap());
  {
    TestDatabase db(services.info());
    db.Exec("CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)");
    const int port = services.pg_port();
    services.RestartPostgres();
    EXPECT_EQ(port, services.pg_port());
    EXPECT_EQ(1, db.QueryInt64("SELECT count(*) FROM kept"));
  }

  const std::string topic = UniqueTopic("harness-private");
  ProduceWithKcat(services.kafka_bootstrap(), topic, {{"k", "before", {}, -1}});
  const std::string bootstrap = services.kafka_bootstrap();
  services.StopKafkaKeepData();
  EXPECT_TRUE(ConsumeTopic(bootstrap, topic, 1, 2s).empty());
  services.StartKafkaAgain();
  EXPECT_EQ(bootstrap, services.kafka_bootstrap());
  ProduceWithKcat(services.kafka_bootstrap(), topic, {{"k", "after", {}, -1}});
  const auto records = ConsumeTopic(services.kafka_bootstrap(), topic, 2, 30s);
  ASSERT_EQ(2u, records.size());
  EXPECT_EQ(std::optional<std::string>("before"), records[0].value);
  EXPECT_EQ(std::optional<std::string>("after"), records[1].value);
}

}  // namespace
}  // namespace outboxd::testing
