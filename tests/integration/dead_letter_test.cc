// Rows that can never be published: to the dead-letter topic with the reason,
// or — without one — the table's stream halts and the row stays unsent.
#include <gtest/gtest.h>

#include <set>

#include "tests/integration/relay_test_support.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;

class DeadLetterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_.Exec(OutboxDdl("outbox"));
    type_ = UniqueTopic("dl");
    topic_ = "outbox.event." + type_;
    dlq_ = type_ + ".dlq";
  }
  // `kafka_extra`: more keys of [kafka].
  std::string Config(bool with_dlq, const std::string& kafka_extra = "") {
    // The producer accepts up to 5 MB so that the broker (1 MB) is the one
    // that refuses the record.
    return "[postgres]\nconninfo = \"" + db_.conninfo() + "\"\n[kafka]\nbootstrap_servers = \"" +
           SharedServices().kafka_bootstrap + "\"\n" + kafka_extra + "[kafka.properties]\n\"message.max.bytes\" = " +
           "\"5000000\"\n[[outbox]]\ntable = \"outbox\"\npoll_interval = \"100ms\"\n" +
           (with_dlq ? "dead_letter_topic = \"" + dlq_ + "\"\n" : "");
  }
  void InsertSized(const std::string& key, int bytes) {
    db_.Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('" + type_ + "', '" + key +
             "', 'E', jsonb_build_object('blob', repeat('x', " + std::to_string(bytes) + ")))");
  }
  int64_t Rows() { return db_.QueryInt64("SELECT count(*) FROM outbox"); }

  TestDatabase db_;
  std::string type_, topic_, dlq_;
};

TEST_F(DeadLetterTest, TooLargeRecordGoesToDeadLetterTopicWithReason) {
  InsertSized("small-1", 10);
  InsertSized("huge", 1500000);
  InsertSized("small-2", 10);
  const std::string huge_id = db_.QueryString("SELECT id::text FROM outbox WHERE aggregateid = 'huge'");
  OutboxdProcess outboxd(Config(true));
  outboxd.Start();
  ASSERT_TRUE(WaitUntil([&] { return Rows() == 0; }, 60s)) << outboxd.Log();

  auto dead = ConsumeTopic(SharedServices().kafka_bootstrap, dlq_, 1, 30s);
  ASSERT_EQ(1u, dead.size()) << outboxd.Log();
  EXPECT_EQ(huge_id, HeaderValue(dead[0], "id"));
  EXPECT_EQ("MSG_SIZE_TOO_LARGE", HeaderValue(dead[0], "outboxd.error"));
  EXPECT_EQ(topic_, HeaderValue(dead[0], "outboxd.original.topic"));
  EXPECT_EQ(std::optional<std::string>("huge"), dead[0].key);

  auto good = ConsumeTopic(SharedServices().kafka_bootstrap, topic_, 2, 30s);
  EXPECT_EQ(2u, good.size());
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s));
}

TEST_F(DeadLetterTest, WithoutDeadLetterTopicTheStreamHaltsAndTheRowStays) {
  InsertSized("small-1", 10);
  InsertSized("huge", 1500000);
  InsertSized("small-2", 10);
  OutboxdProcess outboxd(Config(false));
  outboxd.Start();
  ASSERT_TRUE(outboxd.WaitForLog("halted", 60s)) << outboxd.Log();
  EXPECT_NE(std::string::npos, outboxd.Log().find("MSG_SIZE_TOO_LARGE")) << outboxd.Log();
  // The row before it was published and deleted; the bad row was not.
  ASSERT_TRUE(WaitUntil([&] { return Rows() == 2; }, 30s)) << outboxd.Log();
  EXPECT_EQ(1, db_.QueryInt64("SELECT count(*) FROM outbox WHERE aggregateid = 'huge'"));
  // Nothing after it is marked sent either, even rows that reached Kafka.
  InsertSized("small-3", 10);
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s));
  EXPECT_EQ(3, Rows());
}

TEST_F(DeadLetterTest, NullRoutingColumnHaltsWithTheColumnNamed) {
  db_.Exec("ALTER TABLE outbox ALTER COLUMN aggregatetype DROP NOT NULL");
  db_.Exec(
      "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES "
      "(NULL, 'k', 'E', '{}')");
  OutboxdProcess outboxd(Config(false));
  outboxd.Start();
  ASSERT_TRUE(outboxd.WaitForLog("halted", 30s)) << outboxd.Log();
  EXPECT_NE(std::string::npos, outboxd.Log().find("\"aggregatetype\" is NULL")) << outboxd.Log();
  EXPECT_EQ(1, Rows());
}

TEST_F(DeadLetterTest, NullRoutingColumnGoesToDeadLetterTopic) {
  db_.Exec("ALTER TABLE outbox ALTER COLUMN aggregatetype DROP NOT NULL");
  db_.Exec(
      "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES "
      "(NULL, 'k', 'E', '{\"a\": 1}')");
  OutboxdProcess outboxd(Config(true));
  outboxd.Start();
  ASSERT_TRUE(WaitUntil([&] { return Rows() == 0; }, 30s)) << outboxd.Log();
  auto dead = ConsumeTopic(SharedServices().kafka_bootstrap, dlq_, 1, 30s);
  ASSERT_EQ(1u, dead.size());
  EXPECT_EQ("UNROUTABLE", HeaderValue(dead[0], "outboxd.error"));
  EXPECT_EQ(std::optional<std::string>(R"({"a": 1})"), dead[0].value);
}

// Exactly once: the broker's refusal makes the Kafka transaction abort-only;
// it is aborted, and when the rows are produced again the refused row goes to
// the dead-letter topic inside the next transaction, with its neighbours.
// A read_committed reader sees each neighbour once and one dead-letter record.
TEST_F(DeadLetterTest, ExactlyOnceTheRefusedRowIsDeadLetteredInTheNextTransaction) {
  InsertSized("small-1", 10);
  InsertSized("huge", 1500000);
  InsertSized("small-2", 10);
  const std::string huge_id = db_.QueryString("SELECT id::text FROM outbox WHERE aggregateid = 'huge'");
  OutboxdProcess outboxd(Config(true, "delivery = \"exactly-once\"\nposition_topic = \"" + type_ + ".positions\"\n"));
  outboxd.Start();
  ASSERT_TRUE(WaitUntil([&] { return Rows() == 0; }, 60s)) << outboxd.Log();
  EXPECT_NE(std::string::npos, outboxd.Log().find("was refused")) << outboxd.Log();

  auto dead = ConsumeTopic(SharedServices().kafka_bootstrap, dlq_, 1, 30s);
  ASSERT_EQ(1u, dead.size()) << outboxd.Log();
  EXPECT_EQ(huge_id, HeaderValue(dead[0], "id"));
  EXPECT_EQ("MSG_SIZE_TOO_LARGE", HeaderValue(dead[0], "outboxd.error"));
  auto good = ConsumeTopic(SharedServices().kafka_bootstrap, topic_, 2, 30s);
  ASSERT_EQ(2u, good.size()) << outboxd.Log();
  EXPECT_NE(HeaderValue(good[0], "id"), HeaderValue(good[1], "id"));
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
}

// Exactly once, a row the router cannot route goes to the dead-letter topic
// inside the open transaction: nothing was produced for it, nothing aborts.
TEST_F(DeadLetterTest, ExactlyOnceAnUnroutableRowIsDeadLetteredInItsTransaction) {
  db_.Exec("ALTER TABLE outbox ALTER COLUMN aggregatetype DROP NOT NULL");
  InsertSized("small-1", 10);
  db_.Exec(
      "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES "
      "(NULL, 'k', 'E', '{\"a\": 1}')");
  InsertSized("small-2", 10);
  OutboxdProcess outboxd(Config(true, "delivery = \"exactly-once\"\nposition_topic = \"" + type_ + ".positions\"\n"));
  outboxd.Start();
  ASSERT_TRUE(WaitUntil([&] { return Rows() == 0; }, 30s)) << outboxd.Log();
  auto dead = ConsumeTopic(SharedServices().kafka_bootstrap, dlq_, 1, 30s);
  ASSERT_EQ(1u, dead.size());
  EXPECT_EQ("UNROUTABLE", HeaderValue(dead[0], "outboxd.error"));
  EXPECT_EQ(2u, ConsumeTopic(SharedServices().kafka_bootstrap, topic_, 2, 30s).size());
  EXPECT_EQ(std::string::npos, outboxd.Log().find("aborted")) << outboxd.Log();
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
}

// Exactly once with two tables sharing the transaction stream: a row of
// table B that cannot be routed (no dead-letter topic) halts B. The open
// Kafka transaction is aborted, so the row committed with it in the same
// PostgreSQL transaction is not published either (all or nothing) and both
// stay unsent; table A goes on and each of its rows arrives once.
TEST_F(DeadLetterTest, ExactlyOnceAHaltedTableLeavesItsWholeTransactionUnsent) {
  db_.Exec(OutboxDdl("outbox_b"));
  db_.Exec("ALTER TABLE outbox_b ALTER COLUMN aggregatetype DROP NOT NULL");
  const std::string type_b = type_ + "b";
  const std::string config = "[postgres]\nconninfo = \"" + db_.conninfo() + "\"\n[kafka]\nbootstrap_servers = \"" +
                             SharedServices().kafka_bootstrap + "\"\ndelivery = \"exactly-once\"\nposition_topic = \"" +
                             type_ +
                             ".positions\"\n"
                             "[[outbox]]\ntable = \"outbox\"\npoll_interval = \"50ms\"\n"
                             "[[outbox]]\ntable = \"outbox_b\"\npoll_interval = \"50ms\"\n";
  for (int i = 0; i < 20; ++i) InsertSized("a-" + std::to_string(i), 10);
  db_.Exec("BEGIN; INSERT INTO outbox_b (aggregatetype, aggregateid, type, payload) VALUES ('" + type_b +
           "', 'b-good', 'E', '{}'), (NULL, 'b-bad', 'E', '{}'); COMMIT");
  OutboxdProcess outboxd(config);
  outboxd.Start();
  ASSERT_TRUE(outboxd.WaitForLog("halted", 30s)) << outboxd.Log();
  ASSERT_TRUE(WaitUntil([&] { return Rows() == 0; }, 30s)) << outboxd.Log();
  for (int i = 20; i < 40; ++i) InsertSized("a-" + std::to_string(i), 10);
  ASSERT_TRUE(WaitUntil([&] { return Rows() == 0; }, 30s)) << outboxd.Log();
  EXPECT_EQ(2, db_.QueryInt64("SELECT count(*) FROM outbox_b"));
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
  const auto a = ConsumeTopic(SharedServices().kafka_bootstrap, topic_, 40, 30s);
  std::set<std::string> ids;
  for (const auto& r : a) ids.insert(HeaderValue(r, "id"));
  EXPECT_EQ(40u, a.size());
  EXPECT_EQ(40u, ids.size());
  EXPECT_TRUE(ConsumeTopic(SharedServices().kafka_bootstrap, "outbox.event." + type_b, 0, 5s).empty())
      << "b-good was published without the rest of its transaction";
}

}  // namespace
}  // namespace outboxd::testing
