// End to end: the built outboxd binary relays a real PostgreSQL outbox table
// into a real Kafka broker; kcat reads what arrived.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <thread>

#include "common/pg.h"
#include "tests/integration/relay_test_support.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;

class PollRelayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = std::make_unique<TestDatabase>();
    type_ = UniqueTopic("order");  // aggregatetype: routes to outbox.event.<type_>
    topic_ = "outbox.event." + type_;
  }

  std::string Config(const std::string& outbox_extra = "", const std::string& kafka_extra = "") {
    return "[postgres]\nconninfo = \"" + db_->conninfo() + "\"\n" + "[kafka]\nbootstrap_servers = \"" +
           SharedServices().kafka_bootstrap + "\"\n" + kafka_extra + "\n[log]\nlevel = \"debug\"\n" +
           "[[outbox]]\ntable = \"public.outbox\"\norder_by = \"seq\"\npoll_interval = \"100ms\"\n" + outbox_extra +
           "\n";
  }

  void Insert(const std::string& aggregateid, const std::string& payload_json,
              const std::string& type = "OrderCreated") {
    db_->Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('" + type_ + "', '" +
              aggregateid + "', '" + type + "', '" + payload_json + "')");
  }

  int64_t Rows(const std::string& where = "true") {
    return db_->QueryInt64("SELECT count(*) FROM outbox WHERE " + where);
  }

  std::vector<KafkaRecord> Consume(const std::string& topic, std::size_t n) {
    auto records = ConsumeTopic(SharedServices().kafka_bootstrap, topic, n, 60s);
    EXPECT_GE(records.size(), n) << "topic " << topic;
    return records;
  }

  std::unique_ptr<TestDatabase> db_;
  std::string type_;
  std::string topic_;
};

TEST_F(PollRelayTest, PublishesDebeziumCompatibleRecordsThenDeletesRows) {
  db_->Exec(OutboxDdl("outbox"));
  Insert("order-1", R"({"total": 10})");
  Insert("order-2", R"({"total": 20})");
  const auto ids = db_->Query("SELECT id::text, aggregateid, payload::text FROM outbox ORDER BY seq");

  OutboxdProcess outboxd(Config());
  outboxd.Start();
  auto records = Consume(topic_, 2);
  ASSERT_TRUE(WaitUntil([&] { return Rows() == 0; }, 30s)) << outboxd.Log();

  ASSERT_EQ(2u, records.size());
  for (std::size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(topic_, records[i].topic);
    EXPECT_EQ(ids[i][1], records[i].key);
    EXPECT_EQ(ids[i][2], records[i].value);  // jsonb as PostgreSQL prints it
    EXPECT_EQ(*ids[i][0], HeaderValue(records[i], "id"));
  }
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
}

TEST_F(PollRelayTest, MarkModeSetsSentColumnAndKeepsRows) {
  db_->Exec(OutboxDdl("outbox", /*with_sent_at=*/true));
  for (int i = 0; i < 5; ++i) Insert("order-" + std::to_string(i), "{}");
  OutboxdProcess outboxd(Config("after_delivery = \"mark\"\nsent_column = \"sent_at\""));
  outboxd.Start();
  Consume(topic_, 5);
  ASSERT_TRUE(WaitUntil([&] { return Rows("sent_at IS NULL") == 0; }, 30s)) << outboxd.Log();
  EXPECT_EQ(5, Rows());
  // Marked rows are not published again.
  Insert("order-5", "{}");
  ASSERT_TRUE(WaitUntil([&] { return Rows("sent_at IS NULL") == 0; }, 30s)) << outboxd.Log();
  outboxd.Terminate();
  ASSERT_EQ(0, outboxd.WaitExit(30s));
  EXPECT_EQ(6u, ConsumeTopic(SharedServices().kafka_bootstrap, topic_, 6, 30s).size());
}

TEST_F(PollRelayTest, CustomKeyHeadersAndTopicTemplate) {
  db_->Exec(OutboxDdl("outbox") + "; ALTER TABLE outbox ADD COLUMN trace text");
  db_->Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, payload, trace) VALUES ('" + type_ +
            "', 'a-1', 'Shipped', '{\"x\": 1}', '00-abc-01')");
  OutboxdProcess outboxd(
      Config("topic = \"events.${aggregatetype}.${type}\"\nkey = \"type\"\n"
             "headers = { type = \"type\", traceparent = \"trace\" }"));
  outboxd.Start();
  auto records = Consume("events." + type_ + ".Shipped", 1);
  ASSERT_EQ(1u, records.size());
  EXPECT_EQ(std::optional<std::string>("Shipped"), records[0].key);
  EXPECT_EQ("Shipped", HeaderValue(records[0], "type"));
  EXPECT_EQ("00-abc-01", HeaderValue(records[0], "traceparent"));
}

// 10,000 events from several concurrent writers: all arrive with the right
// topic, key, value and id, and each key's events keep their commit order.
void RunConcurrentWriters(PollRelayTest* t, TestDatabase& db, const std::string& type, const std::string& topic,
                          const std::string& config, bool mark) {
  constexpr int kWriters = 4, kPerWriter = 2500, kKeysPerWriter = 25;
  constexpr std::size_t kEvents = std::size_t{kWriters} * kPerWriter;
  KafkaAdmin(SharedServices().kafka_bootstrap).CreateTopic(topic, 3, {});
  OutboxdProcess outboxd(config);
  outboxd.Start();
  std::vector<std::thread> writers;
  writers.reserve(kWriters);
  std::atomic<int> failures{0};
  std::mutex mu;
  std::map<std::string, std::pair<std::string, std::string>> committed;  // id -> (key, payload)
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      auto conn = PgConn::Connect(db.conninfo(), std::nullopt, "writer");
      if (!conn.ok()) {
        ++failures;
        return;
      }
      for (int i = 0; i < kPerWriter; i += 10) {
        // Ten events per transaction; key k-<writer>-<n> belongs to one writer
        // so its sequence number gives the commit order.
        std::string sql = "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ";
        for (int j = i; j < i + 10; ++j) {
          const std::string key = "k-" + std::to_string(w) + "-" + std::to_string(j % kKeysPerWriter);
          sql += (j == i ? "" : ",");
          sql += "('" + type + "','" + key + "','E','{\"n\": " + std::to_string(j) + "}')";
        }
        auto r = conn->Exec(sql + " RETURNING id::text, aggregateid, payload::text");
        if (!r.ok()) {
          ++failures;
          continue;
        }
        std::lock_guard<std::mutex> lock(mu);
        for (int row = 0; row < PQntuples(r->get()); ++row) {
          committed[PQgetvalue(r->get(), row, 0)] = {PQgetvalue(r->get(), row, 1), PQgetvalue(r->get(), row, 2)};
        }
      }
    });
  }
  for (auto& th : writers) th.join();
  ASSERT_EQ(0, failures.load());
  const std::string unsent = mark ? "sent_at IS NULL" : "true";
  ASSERT_TRUE(WaitUntil([&] { return db.QueryInt64("SELECT count(*) FROM outbox WHERE " + unsent) == 0; }, 120s))
      << outboxd.Log();
  outboxd.Terminate();
  ASSERT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();

  auto records = ConsumeTopic(SharedServices().kafka_bootstrap, topic, kEvents, 120s);
  ASSERT_EQ(kEvents, Ids(records).size());
  ASSERT_EQ(kEvents, committed.size());
  std::map<std::string, int> last_n;  // key -> last payload n seen
  for (const auto& r : records) {
    ASSERT_TRUE(r.key.has_value());
    ASSERT_TRUE(r.value.has_value());
    // Each record is exactly the row that carried its id.
    auto row = committed.find(HeaderValue(r, "id"));
    ASSERT_NE(committed.end(), row) << "unknown id " << HeaderValue(r, "id");
    EXPECT_EQ(topic, r.topic);
    EXPECT_EQ(row->second.first, *r.key);
    EXPECT_EQ(row->second.second, *r.value);
    const int n = std::stoi(r.value->substr(r.value->find(':') + 1));
    auto it = last_n.find(*r.key);
    if (it != last_n.end()) {
      EXPECT_LT(it->second, n) << "key " << *r.key << " out of order";
    }
    last_n[*r.key] = n;
  }
  EXPECT_EQ(static_cast<std::size_t>(kWriters * kKeysPerWriter), last_n.size());
  if (mark) {
    EXPECT_EQ(kWriters * kPerWriter, db.QueryInt64("SELECT count(*) FROM outbox"));
  }
  (void)t;
}

TEST_F(PollRelayTest, TenThousandEventsFromConcurrentWritersDeleteMode) {
  db_->Exec(OutboxDdl("outbox"));
  db_->Exec(NotifyTriggerDdl("outbox", "outbox"));
  RunConcurrentWriters(this, *db_, type_, topic_, Config("notify_channel = \"outbox\""), false);
}

TEST_F(PollRelayTest, TenThousandEventsFromConcurrentWritersMarkMode) {
  db_->Exec(OutboxDdl("outbox", true));
  RunConcurrentWriters(this, *db_, type_, topic_, Config("after_delivery = \"mark\"\nsent_column = \"sent_at\""), true);
}

// The outbox gap: a transaction takes a lower ordering value, commits after
// rows with higher values were published, and is still published.
TEST_F(PollRelayTest, RowCommittedLateWithLowerPositionIsPublished) {
  db_->Exec(OutboxDdl("outbox"));
  auto late = PgConn::Connect(db_->conninfo(), std::nullopt, "late-writer");
  ASSERT_TRUE(late.ok());
  ASSERT_TRUE(late->Exec("BEGIN").ok());
  auto late_seq = late->Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('" + type_ +
                             "', 'late', 'E', '{\"late\": true}') RETURNING seq");
  ASSERT_TRUE(late_seq.ok());
  Insert("early", R"({"late": false})");
  ASSERT_LT(std::stoll(PQgetvalue(late_seq->get(), 0, 0)), db_->QueryInt64("SELECT max(seq) FROM outbox"));
  OutboxdProcess outboxd(Config());
  outboxd.Start();
  auto first = Consume(topic_, 1);
  ASSERT_EQ(1u, first.size());
  EXPECT_EQ(std::optional<std::string>("early"), first[0].key);
  ASSERT_TRUE(WaitUntil([&] { return Rows() == 0; }, 30s));

  ASSERT_TRUE(late->Exec("COMMIT").ok());
  auto both = Consume(topic_, 2);
  ASSERT_EQ(2u, both.size());
  EXPECT_EQ(std::optional<std::string>("late"), both[1].key);
  ASSERT_TRUE(WaitUntil([&] { return Rows() == 0; }, 30s)) << outboxd.Log();
}

// Two instances on one table: one relays, the other stands by and takes over
// when the first dies, so per-key order holds with standbys running.
TEST_F(PollRelayTest, StandbyInstanceTakesOverWhenTheHolderDies) {
  db_->Exec(OutboxDdl("outbox"));
  OutboxdProcess active(Config());
  active.Start();
  ASSERT_TRUE(active.WaitForLog("relaying \"public.outbox\"", 30s)) << active.Log();
  OutboxdProcess standby(Config());
  standby.Start();
  ASSERT_TRUE(standby.WaitForLog("standing by", 30s)) << standby.Log();

  for (int i = 0; i < 100; ++i) Insert("k-" + std::to_string(i % 5), "{\"n\": " + std::to_string(i) + "}");
  ASSERT_TRUE(WaitUntil([&] { return Rows() == 0; }, 30s)) << active.Log();
  EXPECT_EQ(std::string::npos, standby.Log().find("took over")) << standby.Log();

  active.Kill();
  ASSERT_EQ(128 + SIGKILL, active.WaitExit(10s));
  for (int i = 100; i < 200; ++i) Insert("k-" + std::to_string(i % 5), "{\"n\": " + std::to_string(i) + "}");
  ASSERT_TRUE(standby.WaitForLog("took over \"public.outbox\"", 30s)) << standby.Log();
  ASSERT_TRUE(WaitUntil([&] { return Rows() == 0; }, 30s)) << standby.Log();

  auto records = Consume(topic_, 200);
  ASSERT_EQ(200u, Ids(records).size());
  std::map<std::string, int> last_n;
  for (const auto& r : records) {
    const int n = std::stoi(r.value->substr(r.value->find(':') + 1));
    if (last_n.count(*r.key)) {
      EXPECT_LT(last_n[*r.key], n) << "key " << *r.key;
    }
    last_n[*r.key] = n;
  }
  standby.Terminate();
  EXPECT_EQ(0, standby.WaitExit(30s));
}

// The standby keeps losing its own connection while it waits, the last time
// together with the holder's death: its reconnect backoff has grown, and it
// still takes over within docs/operations.md's "Takeover time" (about 5 s at
// worst; the bound of 6 s leaves room for a loaded machine).
TEST_F(PollRelayTest, StandbyThatLostItsOwnConnectionTakesOverPromptly) {
  db_->Exec(OutboxDdl("outbox"));
  OutboxdProcess active(Config());
  active.Start();
  ASSERT_TRUE(active.WaitForLog("relaying \"public.outbox\"", 30s)) << active.Log();
  std::string standby_config = Config();
  const std::string conninfo = "conninfo = \"" + db_->conninfo();
  standby_config.replace(standby_config.find(conninfo), conninfo.size(),
                         conninfo + " application_name=outboxd_standby");
  OutboxdProcess standby(standby_config);
  standby.Start();
  ASSERT_TRUE(standby.WaitForLog("standing by", 30s)) << standby.Log();

  const std::string sessions = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'outboxd_standby'";
  const std::string terminate =
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'outboxd_standby'";
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(WaitUntil([&] { return db_->QueryInt64(sessions) > 0; }, 60s)) << standby.Log();
    db_->Exec(terminate);
  }
  ASSERT_TRUE(WaitUntil([&] { return db_->QueryInt64(sessions) > 0; }, 60s)) << standby.Log();
  EXPECT_EQ(std::string::npos, standby.Log().find("took over")) << standby.Log();

  db_->Exec(terminate);
  active.Kill();
  const auto killed_at = std::chrono::steady_clock::now();
  ASSERT_EQ(128 + SIGKILL, active.WaitExit(10s));
  Insert("k", "{\"n\": 1}");
  ASSERT_TRUE(WaitUntil([&] { return Rows() == 0; }, 60s)) << standby.Log();
  const auto takeover =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - killed_at);
  std::cout << "[ takeover ] the standby published " << takeover.count() << " ms after the holder was killed\n";
  EXPECT_LE(takeover, 6s) << standby.Log();
  EXPECT_EQ(1u, Consume(topic_, 1).size());
  standby.Terminate();
  EXPECT_EQ(0, standby.WaitExit(30s));
}

TEST_F(PollRelayTest, SigtermWaitsForDeliveriesAndExitsZero) {
  db_->Exec(OutboxDdl("outbox"));
  db_->Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, payload) SELECT '" + type_ +
            "', 'k' || g, 'E', '{}' FROM generate_series(1, 2000) g");
  OutboxdProcess outboxd(Config());
  outboxd.Start();
  ASSERT_TRUE(WaitUntil([&] { return Rows() < 2000; }, 30s)) << outboxd.Log();
  outboxd.Terminate();
  ASSERT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
  // Whatever was deleted reached Kafka; the rest is still in the table.
  const int64_t deleted = 2000 - Rows();
  auto records = ConsumeTopic(SharedServices().kafka_bootstrap, topic_, deleted, 30s);
  EXPECT_GE(static_cast<int64_t>(Ids(records).size()), deleted);
}

}  // namespace
}  // namespace outboxd::testing
