// The SQL `outboxd init` generates for poll outbox tables and the outboxd
// role. That it runs and gives a table outboxd can claim from is checked
// against a real PostgreSQL in tests/integration/status_init_test.cc.

#include "daemon/init_sql.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace outboxd {
namespace {

using ::testing::AllOf;
using ::testing::AnyOf;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

OutboxTableConfig Table(const std::string& name) {
  OutboxTableConfig t;
  t.table = name;
  t.config_location = "test.toml:1:1";
  return t;
}

std::string Joined(const std::vector<std::string>& sql) {
  std::string out;
  for (const auto& s : sql) out += s + ";\n";
  return out;
}

std::vector<std::string> TableSql(const OutboxTableConfig& t) {
  auto sql = OutboxTableInitSql(t);
  EXPECT_TRUE(sql.ok()) << sql.status().message();
  return sql.ok() ? *sql : std::vector<std::string>{};
}

TEST(OutboxTableInitSql, DefaultsGiveTheDebeziumTableWithADeleteIndex) {
  auto sql = TableSql(Table("public.outbox"));
  ASSERT_EQ(2u, sql.size());
  EXPECT_THAT(sql[0], HasSubstr("CREATE TABLE IF NOT EXISTS \"public\".\"outbox\" (\n"));
  EXPECT_THAT(sql[0], HasSubstr("\"seq\" bigint GENERATED ALWAYS AS IDENTITY"));
  EXPECT_THAT(sql[0], HasSubstr("\"id\" uuid PRIMARY KEY DEFAULT gen_random_uuid()"));
  EXPECT_THAT(sql[0], HasSubstr("\"aggregatetype\" text NOT NULL"));
  EXPECT_THAT(sql[0], HasSubstr("\"aggregateid\" text NOT NULL"));
  EXPECT_THAT(sql[0], HasSubstr("\"type\" text NOT NULL"));
  EXPECT_THAT(sql[0], HasSubstr("\"payload\" jsonb"));
  EXPECT_THAT(sql[0], HasSubstr("\"created_at\" timestamptz NOT NULL DEFAULT now()"));
  EXPECT_THAT(sql[0], Not(HasSubstr("sent")));
  EXPECT_EQ("CREATE UNIQUE INDEX IF NOT EXISTS \"outbox_seq_key\" ON \"public\".\"outbox\" (\"seq\")", sql[1]);
}

TEST(OutboxTableInitSql, EachColumnAppearsOnce) {
  auto t = Table("outbox");
  t.headers = {{"type", "type"}, {"id", "id"}, {"traceparent", "traceparent"}};
  t.topic = "events.${aggregatetype}.${type}";
  auto sql = TableSql(t);
  ASSERT_FALSE(sql.empty());
  for (const std::string column : {"\"type\"", "\"id\"", "\"aggregatetype\""}) {
    const auto first = sql[0].find(column);
    ASSERT_NE(std::string::npos, first) << column;
    EXPECT_EQ(std::string::npos, sql[0].find(column, first + 1)) << column << " twice in\n" << sql[0];
  }
  EXPECT_THAT(sql[0], HasSubstr("\"id\" uuid PRIMARY KEY"));  // not redefined by the header
  EXPECT_THAT(sql[0], HasSubstr("\"traceparent\" text,"));    // headers may be NULL
  EXPECT_THAT(sql[0], HasSubstr("\"public\".\"outbox\""));    // no schema: public
}

TEST(OutboxTableInitSql, MarkModeAddsTheSentColumnAndAPartialIndex) {
  auto t = Table("app.events");
  t.order_by = "position";
  t.after_delivery = AfterDelivery::kMark;
  t.sent_column = "sent_at";
  auto sql = TableSql(t);
  ASSERT_EQ(2u, sql.size());
  EXPECT_THAT(sql[0], HasSubstr("\"position\" bigint GENERATED ALWAYS AS IDENTITY"));
  EXPECT_THAT(sql[0], HasSubstr("\"sent_at\" timestamptz"));
  EXPECT_THAT(sql[0], Not(HasSubstr("\"sent_at\" timestamptz NOT NULL")));
  EXPECT_EQ(
      "CREATE INDEX IF NOT EXISTS \"events_position_unsent\" ON \"app\".\"events\" (\"position\") "
      "WHERE \"sent_at\" IS NULL",
      sql[1]);
}

TEST(OutboxTableInitSql, ConfiguredColumnsReplaceTheDebeziumNames) {
  auto t = Table("public.outbox");
  t.id = "event_id";
  t.key = "order_id";
  t.payload = "body";
  t.timestamp = "occurred_at";
  auto sql = TableSql(t);
  ASSERT_FALSE(sql.empty());
  EXPECT_THAT(sql[0],
              AllOf(HasSubstr("\"event_id\" uuid PRIMARY KEY"), HasSubstr("\"order_id\" text NOT NULL"),
                    HasSubstr("\"body\" jsonb"), HasSubstr("\"occurred_at\" timestamptz NOT NULL DEFAULT now()")));
  EXPECT_THAT(sql[0], Not(AnyOf(HasSubstr("\"id\""), HasSubstr("\"aggregateid\""), HasSubstr("\"payload\""),
                                HasSubstr("created_at"))));
}

TEST(OutboxTableInitSql, NotifyChannelAddsAStatementTrigger) {
  auto t = Table("public.outbox");
  t.notify_channel = "it's";
  auto sql = TableSql(t);
  ASSERT_EQ(5u, sql.size());
  EXPECT_THAT(sql[2], HasSubstr("CREATE OR REPLACE FUNCTION \"public\".\"outbox_outboxd_notify\"() RETURNS trigger"));
  EXPECT_THAT(sql[2], HasSubstr("PERFORM pg_notify('it''s', '');"));
  EXPECT_THAT(sql[2], HasSubstr("RETURN NULL;"));
  EXPECT_EQ("DROP TRIGGER IF EXISTS outboxd_notify ON \"public\".\"outbox\"", sql[3]);
  EXPECT_EQ(
      "CREATE TRIGGER outboxd_notify AFTER INSERT ON \"public\".\"outbox\" FOR EACH STATEMENT "
      "EXECUTE FUNCTION \"public\".\"outbox_outboxd_notify\"()",
      sql[4]);
}

TEST(OutboxTableInitSql, DollarQuoteNeverCollidesWithTheBody) {
  auto t = Table("public.outbox");
  t.notify_channel = "a$outboxd$b";
  auto sql = TableSql(t);
  ASSERT_EQ(5u, sql.size());
  EXPECT_THAT(sql[2], HasSubstr("AS $outboxd0$"));
  EXPECT_THAT(sql[2], HasSubstr("'a$outboxd$b'"));
}

TEST(OutboxTableInitSql, IdentifiersAreQuoted) {
  auto t = Table("my schema.Out\"box");
  t.order_by = "Seq";
  auto sql = TableSql(t);
  ASSERT_EQ(2u, sql.size());
  EXPECT_THAT(sql[0], HasSubstr("\"my schema\".\"Out\"\"box\""));
  EXPECT_THAT(sql[1], HasSubstr("\"Out\"\"box_Seq_key\""));
}

TEST(OutboxTableInitSql, RejectsCdcBlocksAndBadTemplates) {
  auto cdc = Table("public.outbox");
  cdc.source = OutboxSource::kCdc;
  auto r = OutboxTableInitSql(cdc);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(StatusCode::kInvalidConfig, r.status().code());
  EXPECT_THAT(r.status().message(), HasSubstr("test.toml:1:1"));

  auto bad = Table("public.outbox");
  bad.topic = "x.${";
  EXPECT_FALSE(OutboxTableInitSql(bad).ok());
}

TEST(PollOutboxInitSql, CoversPollTablesOnly) {
  Config config;
  config.outboxes = {Table("public.a"), Table("public.b"), Table("public.c")};
  config.outboxes[1].source = OutboxSource::kCdc;
  auto sql = PollOutboxInitSql(config);
  ASSERT_TRUE(sql.ok()) << sql.status().message();
  const std::string all = Joined(*sql);
  EXPECT_THAT(all, HasSubstr("\"public\".\"a\""));
  EXPECT_THAT(all, Not(HasSubstr("\"public\".\"b\"")));
  EXPECT_THAT(all, HasSubstr("\"public\".\"c\""));
}

TEST(GrantSql, PollDeleteAndMark) {
  Config config;
  config.outboxes = {Table("public.outbox"), Table("app.events")};
  config.outboxes[1].after_delivery = AfterDelivery::kMark;
  config.outboxes[1].sent_column = "sent_at";
  auto sql = GrantSql(config, kDefaultInitRole);
  EXPECT_THAT(sql[0], HasSubstr("CREATE ROLE \"outboxd\" LOGIN"));
  EXPECT_THAT(sql[0], HasSubstr("rolname = 'outboxd'"));
  EXPECT_THAT(sql[1], HasSubstr("GRANT CONNECT ON DATABASE %I TO %I', current_database(), 'outboxd'"));
  EXPECT_THAT(sql, Contains("GRANT USAGE ON SCHEMA \"public\" TO \"outboxd\""));
  EXPECT_THAT(sql, Contains("GRANT USAGE ON SCHEMA \"app\" TO \"outboxd\""));
  EXPECT_THAT(sql, Contains("GRANT SELECT, DELETE ON \"public\".\"outbox\" TO \"outboxd\""));
  EXPECT_THAT(sql, Contains("GRANT SELECT, UPDATE (\"sent_at\") ON \"app\".\"events\" TO \"outboxd\""));
  // Poll mode needs no replication.
  EXPECT_THAT(Joined(sql), Not(HasSubstr("REPLICATION")));
  EXPECT_THAT(Joined(sql), Not(HasSubstr("INSERT")));
}

TEST(GrantSql, CdcNeedsReplicationAndTheStateTable) {
  Config config;
  config.outboxes = {Table("public.outbox")};
  config.outboxes[0].source = OutboxSource::kCdc;
  config.cdc = CdcConfig{};
  config.cdc->tables = {"public.orders", "shop.items"};
  auto sql = GrantSql(config, "relay \"x\"");
  const std::string role = "\"relay \"\"x\"\"\"";
  EXPECT_THAT(
      sql, Contains("-- replication connections; only a superuser may run this\nALTER ROLE " + role + " REPLICATION"));
  EXPECT_THAT(sql, Contains("GRANT SELECT ON \"public\".\"outbox\" TO " + role));
  EXPECT_THAT(sql, Contains("GRANT SELECT ON \"public\".\"orders\" TO " + role));
  EXPECT_THAT(sql, Contains("GRANT SELECT ON \"shop\".\"items\" TO " + role));
  EXPECT_THAT(sql, Contains("GRANT SELECT, INSERT, UPDATE ON \"public\".\"outboxd_slot_state\" TO " + role));
  EXPECT_THAT(sql, Contains("GRANT USAGE ON SCHEMA \"shop\" TO " + role));
  // A cdc outbox table is only read; outboxd never deletes from it.
  EXPECT_THAT(Joined(sql), Not(HasSubstr("DELETE")));
  EXPECT_THAT(sql[0], HasSubstr("rolname = 'relay \"x\"'"));
}

TEST(OutboxInitSql, TablesThenGrants) {
  Config config;
  config.outboxes = {Table("public.outbox")};
  auto sql = OutboxInitSql(config, "r");
  ASSERT_TRUE(sql.ok());
  ASSERT_GE(sql->size(), 3u);
  EXPECT_THAT(sql->front(), HasSubstr("CREATE TABLE"));
  EXPECT_THAT(sql->back(), HasSubstr("GRANT SELECT, DELETE"));
}

}  // namespace
}  // namespace outboxd
