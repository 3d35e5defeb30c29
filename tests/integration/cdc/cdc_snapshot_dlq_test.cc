// End to end, cdc mode: the initial snapshot (snapshot = "initial") and
// events that can never be delivered (dead-letter topic, or a stop that says
// why). The built binary against the suite's PostgreSQL and Kafka.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "tests/integration/cdc/cdc_test_support.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

constexpr int kExitUnavailable = 69;  // EX_UNAVAILABLE

class CdcSnapshotTest : public CdcTest {
 protected:
  void CreateOrders(int rows) {
    db_->Exec("CREATE TABLE public.orders (id bigint PRIMARY KEY, note text)");
    db_->Exec("INSERT INTO public.orders SELECT i, 'before ' || i FROM generate_series(1, " + std::to_string(rows) +
              ") i");
  }
  std::optional<std::string> SnapshotDone() const {
    auto rows =
        db_->Query("SELECT snapshot_done::text FROM public.outboxd_slot_state WHERE slot_name = '" + slot_ + "'");
    if (rows.empty()) return std::nullopt;
    return rows[0][0];
  }
  // op of every record by "id" column of its row, counting copies.
  static std::map<int64_t, std::multiset<std::string>> OpsById(const std::vector<KafkaRecord>& records) {
    std::map<int64_t, std::multiset<std::string>> out;
    for (const auto& r : records) {
      json v = ParseJson(r.value);
      const json& row = v["after"].is_object() ? v["after"] : v["before"];
      out[row.at("id").get<int64_t>()].insert(v.at("op").get<std::string>());
    }
    return out;
  }
};

TEST_F(CdcSnapshotTest, InitialSnapshotPublishesExistingRowsThenStreamsWithoutAGap) {
  CreateOrders(3000);
  CdcToml toml = Toml();
  toml.tables = {"public.orders"};
  toml.cdc_extra = "snapshot = \"initial\"";
  OutboxdProcess outboxd(toml.Build());
  ASSERT_TRUE(StartStreaming(outboxd)) << outboxd.Log();
  // Written after the slot exists: streamed, not in the snapshot.
  db_->Exec("INSERT INTO public.orders VALUES (5000, 'after'); UPDATE public.orders SET note = 'changed' WHERE id = 1");

  auto records = Consume(TableTopic("orders"), 3002);
  ASSERT_EQ(3002u, records.size()) << outboxd.Log();
  auto ops = OpsById(records);
  ASSERT_EQ(3001u, ops.size());
  for (int64_t id = 2; id <= 3000; ++id) {
    EXPECT_EQ((std::multiset<std::string>{"r"}), ops[id]) << "row " << id << " exactly once, as a snapshot read";
  }
  EXPECT_EQ((std::multiset<std::string>{"r", "u"}), ops[1]);
  EXPECT_EQ((std::multiset<std::string>{"c"}), ops[5000]);
  // Snapshot reads come first; each has the v8 id of (consistent point, index).
  json first = ParseJson(records.front().value);
  EXPECT_EQ("r", first["op"]);
  EXPECT_EQ(json(nullptr), first["before"]);
  EXPECT_EQ(std::optional<std::string>(R"({"id":)" + std::to_string(first["after"]["id"].get<int64_t>()) + "}"),
            records.front().key);
  std::set<std::string> ids;
  for (const auto& r : records) ids.insert(HeaderValue(r, "id"));
  EXPECT_EQ(records.size(), ids.size()) << "every event has its own id";

  EXPECT_TRUE(WaitUntil([&] { return SnapshotDone() == std::optional<std::string>("true"); }, 30s))
      << "the state table records the snapshot as acknowledged";
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();

  // A restart takes no second snapshot.
  const std::size_t log_from = outboxd.LogSize();
  ASSERT_TRUE(StartStreaming(outboxd)) << outboxd.Log();
  db_->Exec("INSERT INTO public.orders VALUES (5001, 'later')");
  records = Consume(TableTopic("orders"), 3003);
  EXPECT_EQ(3003u, records.size()) << outboxd.Log().substr(log_from);
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s));
}

// What a crash in the middle of the initial snapshot leaves: the slot
// outboxd created, and its state row saying the snapshot is not done.
void LeaveAnUnfinishedSnapshot(TestDatabase& db, const std::string& slot, const std::string& publication) {
  db.Exec("CREATE PUBLICATION " + publication + " FOR TABLE public.orders");
  db.Exec("SELECT pg_create_logical_replication_slot('" + slot + "', 'pgoutput')");
  db.Exec(
      "CREATE TABLE public.outboxd_slot_state (slot_name name PRIMARY KEY, confirmed_lsn pg_lsn NOT NULL, "
      "snapshot_done boolean NOT NULL DEFAULT true, updated_at timestamptz NOT NULL DEFAULT now())");
  db.Exec(
      "INSERT INTO public.outboxd_slot_state (slot_name, confirmed_lsn, snapshot_done) "
      "SELECT slot_name, confirmed_flush_lsn, false FROM pg_replication_slots WHERE slot_name = '" +
      slot + "'");
}

TEST_F(CdcSnapshotTest, AnUnfinishedSnapshotIsTakenAgainFromANewSlot) {
  CreateOrders(500);
  LeaveAnUnfinishedSnapshot(*db_, slot_, publication_);
  const uint64_t old_position = *ConfirmedFlushLsn();
  db_->Exec("INSERT INTO public.orders VALUES (900, 'after the old slot, before the new one')");

  CdcToml toml = Toml();
  toml.tables = {"public.orders"};
  toml.cdc_extra = "snapshot = \"initial\"";
  OutboxdProcess outboxd(toml.Build());
  ASSERT_TRUE(StartStreaming(outboxd)) << outboxd.Log();
  auto records = Consume(TableTopic("orders"), 501);
  ASSERT_EQ(501u, records.size()) << outboxd.Log();
  auto ops = OpsById(records);
  EXPECT_EQ(501u, ops.size());
  EXPECT_EQ((std::multiset<std::string>{"r"}), ops[900]) << "read by the new snapshot";
  EXPECT_GT(*ConfirmedFlushLsn(), old_position) << "a new slot";
  EXPECT_TRUE(WaitUntil([&] { return SnapshotDone() == std::optional<std::string>("true"); }, 30s));
  EXPECT_NE(std::string::npos, outboxd.Log().find("did not finish")) << outboxd.Log();
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s));
}

// When the slot also carries outbox messages, a new slot would skip the ones
// committed since the old slot's start: outboxd refuses and says what to do,
// and with snapshot = "never" it streams them.
TEST_F(CdcSnapshotTest, AnUnfinishedSnapshotOfASlotWithMessagesIsNotDroppedInSilence) {
  CreateOrders(10);
  LeaveAnUnfinishedSnapshot(*db_, slot_, publication_);
  const std::string type = UniqueTopic("snapmsg");
  db_->Exec("SELECT pg_logical_emit_message(true, 'outbox', '{\"id\":\"kept-1\",\"aggregatetype\":\"" + type +
            "\",\"aggregateid\":\"k\",\"payload\":{}}')");
  CdcToml toml = Toml();
  toml.tables = {"public.orders"};
  toml.message_prefix = "outbox";
  toml.cdc_extra = "snapshot = \"initial\"";
  OutboxdProcess refused(toml.Build());
  refused.Start();
  EXPECT_EQ(kExitUnavailable, refused.WaitExit(60s)) << refused.Log();
  EXPECT_NE(std::string::npos, refused.Log().find("did not finish")) << refused.Log();
  EXPECT_NE(std::string::npos, refused.Log().find("snapshot = \"never\"")) << refused.Log();
  EXPECT_EQ(1, SlotCount()) << "the slot and the message it holds are kept";

  toml.cdc_extra = "snapshot = \"never\"";
  OutboxdProcess streams(toml.Build());
  ASSERT_TRUE(StartStreaming(streams)) << streams.Log();
  auto records = Consume("outbox.event." + type, 1);
  ASSERT_EQ(1u, records.size()) << streams.Log();
  EXPECT_EQ("kept-1", HeaderValue(records[0], "id"));
  EXPECT_TRUE(WaitUntil([&] { return SnapshotDone() == std::optional<std::string>("true"); }, 30s));
  streams.Terminate();
  EXPECT_EQ(0, streams.WaitExit(30s));
}

class CdcDeadLetterTest : public CdcTest {
 protected:
  std::string Emit(const std::string& content) {
    return "SELECT pg_logical_emit_message(true, 'outbox', '" + content + "');";
  }
};

TEST_F(CdcDeadLetterTest, UnroutableMessageGoesToTheDeadLetterTopicAndTheStreamGoesOn) {
  const std::string type = UniqueTopic("dlmsg");
  const std::string dlq = UniqueTopic("dlq");
  KafkaAdmin admin;
  admin.CreateTopic("outbox.event." + type, 1);
  admin.CreateTopic(dlq, 1);
  CdcToml toml = Toml();
  toml.message_prefix = "outbox";
  toml.dead_letter_topic = dlq;
  OutboxdProcess outboxd(toml.Build());
  ASSERT_TRUE(StartStreaming(outboxd)) << outboxd.Log();

  db_->Exec(Emit(R"({"id":"bad-1","aggregateid":"k","payload":{"no":"aggregatetype"}})"));
  db_->Exec(Emit(R"({"id":"good-2","aggregatetype":")" + type + R"(","aggregateid":"k","payload":{"ok":true}})"));

  auto dead = Consume(dlq, 1);
  ASSERT_EQ(1u, dead.size()) << outboxd.Log();
  EXPECT_EQ("bad-1", HeaderValue(dead[0], "id"));
  EXPECT_EQ("UNROUTABLE", HeaderValue(dead[0], "outboxd.error"));
  EXPECT_NE(std::string::npos, HeaderValue(dead[0], "outboxd.error.message").find("aggregatetype"));
  EXPECT_EQ(std::optional<std::string>(R"({"id":"bad-1","aggregateid":"k","payload":{"no":"aggregatetype"}})"),
            dead[0].value)
      << "the message content, as written";
  auto good = Consume("outbox.event." + type, 1);
  ASSERT_EQ(1u, good.size());
  EXPECT_EQ("good-2", HeaderValue(good[0], "id"));
  const uint64_t end = CurrentWalInsertLsn();
  EXPECT_TRUE(WaitConfirmed(end)) << "both are settled: the slot moves past them";
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s));
}

TEST_F(CdcDeadLetterTest, ChangeKafkaRefusesIsDeadLetteredOnReplayWithItsValueOmitted) {
  db_->Exec("CREATE TABLE public.docs (id int PRIMARY KEY, body text)");
  const std::string dlq = UniqueTopic("dlq");
  KafkaAdmin().CreateTopic(dlq, 1);
  CdcToml toml = Toml();
  toml.tables = {"public.docs"};
  toml.dead_letter_topic = dlq;
  // librdkafka refuses records larger than this before they leave.
  std::string config = toml.Build();
  config.replace(config.find("[log]"), 5, "[kafka.properties]\n\"message.max.bytes\" = \"20000\"\n[log]");
  OutboxdProcess outboxd(config);
  ASSERT_TRUE(StartStreaming(outboxd)) << outboxd.Log();

  db_->Exec("INSERT INTO public.docs VALUES (1, 'small')");
  db_->Exec("INSERT INTO public.docs SELECT 2, string_agg(md5(i::text), '') FROM generate_series(1, 1000) i");
  db_->Exec("INSERT INTO public.docs VALUES (3, 'small again')");

  auto dead = Consume(dlq, 1);
  ASSERT_EQ(1u, dead.size()) << outboxd.Log();
  EXPECT_EQ("true", HeaderValue(dead[0], "outboxd.value.omitted"));
  EXPECT_FALSE(dead[0].value.has_value());
  EXPECT_EQ(std::optional<std::string>(R"({"id":2})"), dead[0].key);
  EXPECT_EQ(TableTopic("docs"), HeaderValue(dead[0], "outboxd.original.topic"));
  auto changes = Consume(TableTopic("docs"), 2);
  std::set<int64_t> ids;
  for (const auto& r : changes) ids.insert(ParseJson(r.value)["after"]["id"].get<int64_t>());
  EXPECT_EQ((std::set<int64_t>{1, 3}), ids);
  EXPECT_TRUE(WaitConfirmed(CurrentWalInsertLsn()));
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s));
}

TEST_F(CdcDeadLetterTest, WithoutADeadLetterTopicAnUnroutableEventStopsWithExit69AndIsNotConfirmed) {
  CdcToml toml = Toml();
  toml.message_prefix = "outbox";
  OutboxdProcess outboxd(toml.Build());
  ASSERT_TRUE(StartStreaming(outboxd)) << outboxd.Log();
  const uint64_t before = CurrentWalInsertLsn();
  db_->Exec(Emit(R"({"id":"bad-1","aggregateid":"k","payload":{}})"));
  EXPECT_EQ(kExitUnavailable, outboxd.WaitExit(60s)) << outboxd.Log();
  EXPECT_NE(std::string::npos, outboxd.Log().find("can never be delivered")) << outboxd.Log();
  EXPECT_NE(std::string::npos, outboxd.Log().find("aggregatetype")) << outboxd.Log();
  EXPECT_LE(*ConfirmedFlushLsn(), before) << "the event that stopped the stream is not confirmed";
}

}  // namespace
}  // namespace outboxd::testing
