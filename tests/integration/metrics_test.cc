// End to end: the built outboxd binary serves /metrics, /healthz and /readyz
// on [http] listen while it relays, in poll and in cdc mode; the values move
// as events flow, and Prometheus' own promtool accepts the exposition.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "tests/integration/cdc/cdc_test_support.h"
#include "tests/integration/metrics_support.h"
#include "tests/integration/relay_test_support.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;

// --- poll ---------------------------------------------------------------------

class MetricsPollTest : public ::testing::Test {
 protected:
  void SetUp() override {
    RequireTool(kCurl, "curl");
    RequireTool(kPromtool, "prometheus");
    port_ = FreePort();
    type_ = UniqueTopic("order");
    topic_ = "outbox.event." + type_;
  }

  std::string Config(const TestDatabase& db) const {
    return "[postgres]\nconninfo = \"" + db.conninfo() + "\"\n" + "[kafka]\nbootstrap_servers = \"" +
           SharedServices().kafka_bootstrap + "\"\n" + HttpSection(port_) +
           "[[outbox]]\ntable = \"outbox\"\npoll_interval = \"100ms\"\n";
  }

  void Insert(const TestDatabase& db, int n) {
    db.Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, payload) SELECT '" + type_ +
            "', 'order-' || g, 'OrderCreated', '{}' FROM generate_series(1, " + std::to_string(n) + ") g");
  }

  const Scrape::Labels source_{{"source", "table:public.outbox"}};
  const Scrape::Labels table_{{"table", "public.outbox"}};
  int port_ = 0;
  std::string type_;
  std::string topic_;
};

TEST_F(MetricsPollTest, ValuesMoveAsEventsFlow) {
  TestDatabase db;
  db.Exec(OutboxDdl("outbox"));
  KafkaAdmin().CreateTopic(topic_, 1);
  Insert(db, 5);
  OutboxdProcess outboxd(Config(db));
  outboxd.Start();

  ASSERT_TRUE(WaitUntil([&] { return Get(port_, "/readyz").status == 200 || !outboxd.Running(); }, 60s))
      << Get(port_, "/readyz").body << outboxd.Log();
  ASSERT_TRUE(outboxd.Running()) << outboxd.Log();
  EXPECT_EQ(200, Get(port_, "/healthz").status);
  // The first sample is taken on connecting, before any row was deleted.
  Scrape first = ScrapeMetrics(port_);
  EXPECT_EQ(5, first.Or0("outboxd_outbox_pending_rows", table_)) << first.text();
  EXPECT_EQ(1, first.Or0("outboxd_build_info"));

  Insert(db, 15);
  ASSERT_TRUE(WaitUntil([&] { return ScrapeMetrics(port_).Or0("outboxd_events_published_total", source_) >= 20; }, 60s))
      << ScrapeMetrics(port_).text() << outboxd.Log();
  ASSERT_TRUE(WaitUntil([&] { return db.QueryInt64("SELECT count(*) FROM outbox") == 0; }, 30s));
  // Pending rows are sampled every 10 s.
  ASSERT_TRUE(
      WaitUntil([&] { return ScrapeMetrics(port_).Or0("outboxd_outbox_pending_rows", table_) == 0; }, 30s, 200ms))
      << ScrapeMetrics(port_).text();

  Scrape s = ScrapeMetrics(port_);
  EXPECT_EQ(20, s.Or0("outboxd_events_published_total", {{"source", "table:public.outbox"}, {"topic", topic_}}))
      << s.text();
  EXPECT_EQ(0, s.Or0("outboxd_events_in_flight", source_));
  EXPECT_EQ(0, s.Or0("outboxd_outbox_oldest_pending_age_seconds", table_));
  EXPECT_EQ(20, s.Or0("outboxd_commit_to_ack_seconds_count", source_));
  EXPECT_EQ(20, s.Or0("outboxd_batch_size_sum", source_));
  EXPECT_GE(s.Or0("outboxd_batch_size_count", source_), 2);
  EXPECT_EQ(0, s.Or0("outboxd_publish_errors_total"));
  EXPECT_EQ(0, s.Or0("outboxd_dead_lettered_total", source_));
  EXPECT_EQ(0, s.Or0("outboxd_halted", source_));
  EXPECT_EQ(0, s.Or0("outboxd_reconnects_total", source_));
  EXPECT_EQ(0, s.Or0("outboxd_kafka_queue_messages"));
  EXPECT_EQ(1, s.Or0("outboxd_ready"));
  EXPECT_GT(s.Or0("outboxd_last_delivery_timestamp_seconds", source_), 1.7e9);
  ExpectPromtoolAccepts(s.text());

  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
}

TEST_F(MetricsPollTest, ReadyzAnswers503WhilePostgresIsDown) {
  ServiceControl svc;  // a private PostgreSQL to stop; Kafka is the shared one
  svc.StartPostgres();
  TestDatabase db(svc.info());
  db.Exec(OutboxDdl("outbox"));
  OutboxdProcess outboxd(Config(db));
  outboxd.Start();
  ASSERT_TRUE(WaitUntil([&] { return Get(port_, "/readyz").status == 200 || !outboxd.Running(); }, 60s))
      << Get(port_, "/readyz").body << outboxd.Log();

  svc.StopPostgresKeepData();
  ASSERT_TRUE(WaitUntil([&] { return Get(port_, "/readyz").status == 503; }, 30s)) << outboxd.Log();
  const HttpResponse down = Get(port_, "/readyz");
  EXPECT_NE(std::string::npos, down.body.find("poll: not connected to PostgreSQL")) << down.body;
  EXPECT_EQ(0, ScrapeMetrics(port_).Or0("outboxd_ready"));
  EXPECT_EQ(200, Get(port_, "/healthz").status) << "the loop keeps turning while PostgreSQL is down";

  svc.StartPostgresAgain();
  ASSERT_TRUE(WaitUntil([&] { return Get(port_, "/readyz").status == 200; }, 60s))
      << Get(port_, "/readyz").body << outboxd.Log();
  EXPECT_GE(
      ScrapeMetrics(port_).Or0("outboxd_reconnects_total", {{"source", "table:public.outbox"}, {"target", "postgres"}}),
      1);
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
}

TEST_F(MetricsPollTest, AnAddressInUseIsAStartupErrorNamingIt) {
  TestDatabase db;
  db.Exec(OutboxDdl("outbox"));
  OutboxdProcess first(Config(db));
  first.Start();
  ASSERT_TRUE(WaitUntil([&] { return Get(port_, "/healthz").status == 200 || !first.Running(); }, 30s)) << first.Log();
  OutboxdProcess second(Config(db));
  second.Start();
  EXPECT_EQ(69, second.WaitExit(30s)) << second.Log();
  EXPECT_NE(std::string::npos, second.Log().find("127.0.0.1:" + std::to_string(port_))) << second.Log();
  first.Terminate();
  EXPECT_EQ(0, first.WaitExit(30s)) << first.Log();
}

// --- cdc ----------------------------------------------------------------------

class MetricsCdcTest : public CdcTest {};

TEST_F(MetricsCdcTest, ValuesMoveAsEventsFlow) {
  RequireTool(kCurl, "curl");
  RequireTool(kPromtool, "prometheus");
  const int port = FreePort();
  db_->Exec(OutboxDdl("outbox") + "; CREATE TABLE orders (id int PRIMARY KEY, total int)");
  const std::string type = UniqueTopic("order");
  KafkaAdmin().CreateTopic("outbox.event." + type, 1);
  KafkaAdmin().CreateTopic(TableTopic("orders"), 1);
  CdcToml toml = Toml();
  toml.tables = {"public.orders"};
  toml.message_prefix = "outbox";
  toml.outbox_blocks = "[[outbox]]\ntable = \"public.outbox\"\nsource = \"cdc\"\n" + HttpSection(port);
  OutboxdProcess outboxd(toml.Build());
  ASSERT_TRUE(StartStreaming(outboxd)) << outboxd.Log();
  ASSERT_TRUE(WaitUntil([&] { return Get(port, "/readyz").status == 200 || !outboxd.Running(); }, 60s))
      << Get(port, "/readyz").body << outboxd.Log();
  EXPECT_EQ(200, Get(port, "/healthz").status);

  // One transaction of 10 outbox events, 5 of one row change each, one message.
  db_->Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, payload) SELECT '" + type +
            "', 'k' || g, 'Created', '{}' FROM generate_series(1, 10) g");
  for (int i = 0; i < 5; ++i) {
    db_->Exec("INSERT INTO orders VALUES (" + std::to_string(i) + ", 10)");
  }
  db_->Exec("SELECT pg_logical_emit_message(true, 'outbox', '{\"aggregatetype\": \"" + type +
            "\", \"aggregateid\": \"m\", \"type\": \"Noted\", \"payload\": {}}')");

  const Scrape::Labels table_source{{"source", "table:public.outbox"}};
  const Scrape::Labels slot_source{{"source", "slot:" + slot_}};
  ASSERT_TRUE(WaitUntil(
      [&] {
        Scrape s = ScrapeMetrics(port);
        return s.Or0("outboxd_events_published_total", table_source) >= 10 &&
               s.Or0("outboxd_events_published_total", slot_source) >= 6;
      },
      60s))
      << ScrapeMetrics(port).text() << outboxd.Log();
  // The slot is sampled every 10 s; wait for a sample taken after the events.
  const uint64_t wal = CurrentWalInsertLsn();
  ASSERT_TRUE(WaitConfirmed(wal));
  ASSERT_TRUE(WaitUntil(
      [&] {
        return ScrapeMetrics(port).Or0("outboxd_replication_slot_confirmed_lsn", {{"slot", slot_}}) >=
               static_cast<double>(wal);
      },
      30s, 200ms))
      << ScrapeMetrics(port).text();

  Scrape s = ScrapeMetrics(port);
  EXPECT_EQ(10, s.Or0("outboxd_events_published_total",
                      {{"source", "table:public.outbox"}, {"topic", "outbox.event." + type}}))
      << s.text();
  EXPECT_EQ(5, s.Or0("outboxd_events_published_total", {{"source", "slot:" + slot_}, {"topic", TableTopic("orders")}}));
  EXPECT_EQ(1,
            s.Or0("outboxd_events_published_total", {{"source", "slot:" + slot_}, {"topic", "outbox.event." + type}}));
  EXPECT_EQ(0, s.Or0("outboxd_events_in_flight"));
  EXPECT_EQ(16, s.Or0("outboxd_commit_to_ack_seconds_count"));
  // Events per transaction, on the slot's source: 10, then 1 five times, then 1.
  EXPECT_EQ(7, s.Or0("outboxd_batch_size_count", slot_source));
  EXPECT_EQ(16, s.Or0("outboxd_batch_size_sum", slot_source));
  EXPECT_TRUE(s.Value("outboxd_replication_slot_lag_bytes", {{"slot", slot_}}).has_value());
  EXPECT_GT(s.Or0("outboxd_replication_slot_wal_retained_bytes", {{"slot", slot_}}), 0);
  EXPECT_EQ(0, s.Or0("outboxd_publish_errors_total"));
  EXPECT_EQ(0, s.Or0("outboxd_reconnects_total"));
  EXPECT_EQ(0, s.Or0("outboxd_kafka_queue_messages"));
  EXPECT_EQ(1, s.Or0("outboxd_ready"));
  EXPECT_GT(s.Or0("outboxd_last_delivery_timestamp_seconds", slot_source), 1.7e9);
  ExpectPromtoolAccepts(s.text());

  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
}

// --- both sources in one process ------------------------------------------------

// A poll table and a cdc slot relayed by one outboxd: two source threads,
// librdkafka's threads and the HTTP listener's share the Metrics while
// /metrics is scraped over and over (the ThreadSanitizer target of
// scripts/test.sh --tsan).
TEST_F(MetricsCdcTest, PollAndCdcSourcesRunTogetherWhileScraped) {
  RequireTool(kCurl, "curl");
  const int port = FreePort();
  db_->Exec(OutboxDdl("poll_outbox") + "; CREATE TABLE orders (id int PRIMARY KEY, total int)");
  const std::string type = UniqueTopic("order");
  KafkaAdmin().CreateTopic("outbox.event." + type, 1);
  KafkaAdmin().CreateTopic(TableTopic("orders"), 1);
  CdcToml toml = Toml();
  toml.tables = {"public.orders"};
  toml.outbox_blocks =
      "[[outbox]]\ntable = \"public.poll_outbox\"\norder_by = \"seq\"\npoll_interval = \"50ms\"\n" + HttpSection(port);
  OutboxdProcess outboxd(toml.Build());
  ASSERT_TRUE(StartStreaming(outboxd)) << outboxd.Log();
  ASSERT_TRUE(outboxd.WaitForLog("relaying \"public.poll_outbox\"", 30s)) << outboxd.Log();

  constexpr int kRounds = 20;
  for (int i = 0; i < kRounds; ++i) {
    db_->Exec("INSERT INTO poll_outbox (aggregatetype, aggregateid, type, payload) SELECT '" + type +
              "', 'k' || g, 'Created', '{}' FROM generate_series(1, 10) g");
    db_->Exec("INSERT INTO orders VALUES (" + std::to_string(i) + ", 10)");
    EXPECT_EQ(200, Get(port, "/metrics").status);
    EXPECT_EQ(200, Get(port, "/healthz").status);
  }
  const Scrape::Labels poll_source{{"source", "table:public.poll_outbox"}};
  const Scrape::Labels slot_source{{"source", "slot:" + slot_}};
  ASSERT_TRUE(WaitUntil(
      [&] {
        Scrape m = ScrapeMetrics(port);
        return m.Or0("outboxd_events_published_total", poll_source) >= 10 * kRounds &&
               m.Or0("outboxd_events_published_total", slot_source) >= kRounds;
      },
      60s))
      << ScrapeMetrics(port).text() << outboxd.Log();
  Scrape m = ScrapeMetrics(port);
  EXPECT_EQ(10 * kRounds, m.Or0("outboxd_events_published_total", poll_source));
  EXPECT_EQ(kRounds, m.Or0("outboxd_events_published_total", slot_source));
  EXPECT_EQ(1, m.Or0("outboxd_ready"));
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
}

}  // namespace
}  // namespace outboxd::testing
