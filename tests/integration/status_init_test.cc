// `outboxd init`'s generated SQL and `outboxd status` against the real
// PostgreSQL of the "postgres" fixture: the DDL runs (twice), the table it
// creates passes OutboxTable::Resolve() and serves the relay's claim and
// checkpoint queries as the granted role, the trigger notifies; and status
// reports healthy databases, pending rows, missing tables, an unreachable
// server, and replication slots that are fine, behind, active, dropped or
// re-created, with the documented exit codes.

#include <poll.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cdc/slot_status.h"
#include "common/advisory_locks.h"
#include "common/pg.h"
#include "daemon/exit_codes.h"
#include "daemon/init_sql.h"
#include "daemon/status.h"
#include "pipeline/router.h"
#include "relay/outbox_table.h"
#include "tests/harness/test_env.h"

namespace outboxd {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;
using testing::TestDatabase;

std::string PlanText(const PGresult* res) {
  std::string plan;
  for (int i = 0; i < PQntuples(res); ++i) plan += std::string(PQgetvalue(res, i, 0)) + "\n";
  return plan;
}

std::string UniqueName(const std::string& prefix) {
  static std::atomic<int> counter{0};
  return prefix + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
}

// A role that outlives the test database (roles are cluster-wide; the
// database holds grants to it), dropped after the database is gone. Declare
// it before the TestDatabase.
class TestRole {
 public:
  TestRole() : name_(UniqueName("outboxd_it")) {}
  ~TestRole() {
    const auto& svc = testing::SharedServices();
    auto conn = PgConn::Connect(
        "host=" + svc.pg_host + " port=" + std::to_string(svc.pg_port) + " user=postgres dbname=postgres", std::nullopt,
        "status_init_test");
    if (conn.ok()) conn->Exec("DROP ROLE IF EXISTS " + QuoteIdentifierStandard(name_)).status().IgnoreError();
  }
  const std::string& name() const { return name_; }

 private:
  std::string name_;
};

class StatusInitTest : public ::testing::Test {
 protected:
  OutboxTableConfig Table(const std::string& name) {
    OutboxTableConfig t;
    t.table = name;
    t.config_location = "test.toml:1:1";
    return t;
  }
  Config ConfigWith(std::vector<OutboxTableConfig> tables) {
    Config c;
    c.postgres.conninfo = db_.conninfo();
    c.outboxes = std::move(tables);
    return c;
  }
  std::string ConninfoAs(const std::string& user) const {
    return "host=" + db_.host() + " port=" + std::to_string(db_.port()) + " dbname=" + db_.name() + " user=" + user;
  }
  PgConn ConnectAs(const std::string& user) const {
    auto conn = PgConn::Connect(ConninfoAs(user), std::nullopt, "status_init_test");
    if (!conn.ok()) throw testing::HarnessError(conn.status().message());
    return std::move(conn).value();
  }
  void RunAll(const std::vector<std::string>& sql) const {
    for (const auto& s : sql) db_.Exec(s);
  }
  void Insert(const std::string& table, int n, const std::string& created_at = "now()") const {
    db_.Exec("INSERT INTO " + table +
             " (aggregatetype, aggregateid, type, payload, created_at) SELECT 'order', 'k' || g, 'created', "
             "'{}', " +
             created_at + " FROM generate_series(1, " + std::to_string(n) + ") g");
  }
  int Status(const Config& config, const StatusOptions& options = {}) {
    std::ostringstream out;
    const int code = RunStatus(config, options, out);
    output_ = out.str();
    return code;
  }
  nlohmann::json StatusJson(const Config& config, StatusOptions options, int* code) {
    options.json = true;
    *code = Status(config, options);
    return nlohmann::json::parse(output_);
  }

  TestRole role_;  // before db_: dropped after it
  TestDatabase db_;
  std::string output_;  // of the last Status()
};

// ---------------------------------------------------------------------------
// init

TEST_F(StatusInitTest, InitTableServesTheClaimAndCheckpointAsTheGrantedRole) {
  auto t = Table("public.outbox");
  t.notify_channel = "outbox_it";
  Config config = ConfigWith({t});
  auto sql = OutboxInitSql(config, role_.name());
  ASSERT_TRUE(sql.ok()) << sql.status().message();
  RunAll(*sql);
  RunAll(*sql);  // idempotent

  PgConn conn = ConnectAs(role_.name());
  auto router = Router::Create(t);
  ASSERT_TRUE(router.ok());
  auto table = OutboxTable::Resolve(conn, t, *router);
  ASSERT_TRUE(table.ok()) << table.status().message();

  // The trigger wakes a listener of the channel at commit.
  ASSERT_TRUE(conn.Exec("LISTEN outbox_it").ok());
  Insert("public.outbox", 3);
  bool notified = false;
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!notified && std::chrono::steady_clock::now() < deadline) {
    pollfd pfd{conn.socket(), POLLIN, 0};
    ASSERT_GE(::poll(&pfd, 1, 1000), 0);
    ASSERT_EQ(1, PQconsumeInput(conn.get()));
    while (PGnotify* n = PQnotifies(conn.get())) {
      notified = notified || std::string(n->relname) == "outbox_it";
      PQfreemem(n);
    }
  }
  EXPECT_TRUE(notified);

  auto claimed = conn.Exec(table->claim_first_sql(), {"10"});
  ASSERT_TRUE(claimed.ok()) << claimed.status().message();
  ASSERT_EQ(3, PQntuples(claimed->get()));
  EXPECT_EQ("1", std::string(PQgetvalue(claimed->get(), 0, 0)));
  auto deleted = conn.Exec(table->checkpoint_sql(), {std::string("{1,2,3}")});
  ASSERT_TRUE(deleted.ok()) << deleted.status().message();
  EXPECT_EQ(0, db_.QueryInt64("SELECT count(*) FROM public.outbox"));

  // The claim after a position scans the index, not the table.
  auto plan = conn.Exec("SET enable_seqscan = off");
  ASSERT_TRUE(plan.ok());
  std::string claim = table->claim_after_sql();
  std::string::size_type pos;
  while ((pos = claim.find("$1::bigint")) != std::string::npos) claim.replace(pos, 10, "0::bigint");
  while ((pos = claim.find("$2::int")) != std::string::npos) claim.replace(pos, 7, "100::int");
  auto explain = conn.Exec("EXPLAIN " + claim);
  ASSERT_TRUE(explain.ok()) << explain.status().message() << "\n" << claim;
  EXPECT_THAT(PlanText(explain->get()), HasSubstr("on outbox_seq_key"));

  // Nothing beyond what the relay needs.
  EXPECT_FALSE(conn.Exec("UPDATE public.outbox SET type = 'x'").ok());
  EXPECT_FALSE(conn.Exec("INSERT INTO public.outbox (aggregatetype, aggregateid, type) VALUES ('a','b','c')").ok());
}

TEST_F(StatusInitTest, InitMarkTableUsesThePartialIndexAndMayOnlyUpdateTheSentColumn) {
  db_.Exec("CREATE SCHEMA app");
  auto t = Table("app.events");
  t.after_delivery = AfterDelivery::kMark;
  t.sent_column = "sent_at";
  Config config = ConfigWith({t});
  auto sql = OutboxInitSql(config, role_.name());
  ASSERT_TRUE(sql.ok()) << sql.status().message();
  RunAll(*sql);

  PgConn conn = ConnectAs(role_.name());
  auto router = Router::Create(t);
  ASSERT_TRUE(router.ok());
  auto table = OutboxTable::Resolve(conn, t, *router);
  ASSERT_TRUE(table.ok()) << table.status().message();
  Insert("app.events", 2);
  auto marked = conn.Exec(table->checkpoint_sql(), {std::string("{1}")});
  ASSERT_TRUE(marked.ok()) << marked.status().message();
  EXPECT_EQ(1, db_.QueryInt64("SELECT count(*) FROM app.events WHERE sent_at IS NULL"));
  EXPECT_EQ(2, db_.QueryInt64("SELECT count(*) FROM app.events"));
  EXPECT_FALSE(conn.Exec("DELETE FROM app.events").ok());
  EXPECT_FALSE(conn.Exec("UPDATE app.events SET type = 'x'").ok());

  ASSERT_TRUE(conn.Exec("SET enable_seqscan = off").ok());
  auto explain =
      conn.Exec("EXPLAIN SELECT seq FROM app.events WHERE sent_at IS NULL AND seq > 0 ORDER BY seq LIMIT 10");
  ASSERT_TRUE(explain.ok());
  EXPECT_THAT(PlanText(explain->get()), HasSubstr("using events_seq_unsent"));
}

TEST_F(StatusInitTest, InitGrantsForCdc) {
  db_.Exec("CREATE TABLE public.orders (id int PRIMARY KEY)");
  db_.Exec("CREATE TABLE public.cdc_outbox (id uuid PRIMARY KEY)");
  Config config = ConfigWith({Table("public.cdc_outbox")});
  config.outboxes[0].source = OutboxSource::kCdc;
  config.cdc = CdcConfig{};
  config.cdc->tables = {"public.orders"};
  db_.Exec(CreateStateTableSql(config.cdc->state_table));
  auto sql = OutboxInitSql(config, role_.name());
  ASSERT_TRUE(sql.ok()) << sql.status().message();
  RunAll(*sql);

  const std::string r = QuoteLiteralStandard(role_.name());
  EXPECT_EQ("t", db_.QueryString("SELECT rolreplication::text FROM pg_roles WHERE rolname = " + r).substr(0, 1));
  auto priv = [&](const std::string& table, const std::string& what) {
    return db_.QueryString("SELECT has_table_privilege(" + r + ", '" + table + "', '" + what + "')::text");
  };
  EXPECT_EQ("true", priv("public.orders", "SELECT"));
  EXPECT_EQ("false", priv("public.orders", "DELETE"));
  EXPECT_EQ("true", priv("public.cdc_outbox", "SELECT"));
  EXPECT_EQ("false", priv("public.cdc_outbox", "DELETE"));
  EXPECT_EQ("true", priv("public.outboxd_slot_state", "INSERT"));
  EXPECT_EQ("true", priv("public.outboxd_slot_state", "UPDATE"));
  EXPECT_EQ("false", priv("public.outboxd_slot_state", "DELETE"));

  // The role can read and write its slot state as outboxd does.
  PgConn conn = ConnectAs(role_.name());
  ASSERT_TRUE(WriteSlotState(conn, config.cdc->state_table, "s", SlotState{Lsn(42), true}).ok());
  auto state = ReadSlotState(conn, config.cdc->state_table, "s");
  ASSERT_TRUE(state.ok()) << state.status().message();
  ASSERT_TRUE(state->has_value());
  EXPECT_EQ(Lsn(42), (*state)->confirmed);
}

// ---------------------------------------------------------------------------
// status: poll tables

class StatusPollTest : public StatusInitTest {
 protected:
  void SetUp() override {
    auto sql = PollOutboxInitSql(ConfigWith({Table("public.outbox")}));
    ASSERT_TRUE(sql.ok());
    RunAll(*sql);
  }
};

TEST_F(StatusPollTest, EmptyTableIsHealthy) {
  EXPECT_EQ(kStatusHealthy, Status(ConfigWith({Table("public.outbox")}))) << output_;
  EXPECT_THAT(output_, HasSubstr("OUTBOX TABLE"));
  EXPECT_THAT(output_, HasSubstr("public.outbox"));
  EXPECT_THAT(output_, HasSubstr("nobody"));  // no outboxd holds the relay lock
  EXPECT_THAT(output_, HasSubstr("\nhealthy\n"));
}

TEST_F(StatusPollTest, PendingRowsWithTheirAgeAndThreshold) {
  Insert("public.outbox", 3, "now() - interval '2 hours'");
  auto t = Table("public.outbox");
  t.timestamp = "created_at";
  Config config = ConfigWith({t});

  EXPECT_EQ(kStatusHealthy, Status(config)) << output_;
  EXPECT_THAT(output_, HasSubstr("2h00m"));
  EXPECT_THAT(output_, HasSubstr("1..3"));

  int code = -1;
  auto j = StatusJson(config, {}, &code);
  EXPECT_EQ(kStatusHealthy, code);
  EXPECT_EQ(true, j["healthy"]);
  ASSERT_EQ(1u, j["tables"].size());
  EXPECT_EQ(3, j["tables"][0]["pending_rows"]);
  EXPECT_GE(j["tables"][0]["oldest_pending_age_seconds"].get<double>(), 7200.0);
  EXPECT_LT(j["tables"][0]["oldest_pending_age_seconds"].get<double>(), 7300.0);
  EXPECT_EQ(1, j["tables"][0]["min_pending_position"]);
  EXPECT_EQ(3, j["tables"][0]["max_pending_position"]);

  StatusOptions limit;
  limit.max_pending_rows = 2;
  EXPECT_EQ(kStatusUnhealthy, Status(config, limit)) << output_;
  EXPECT_THAT(output_, HasSubstr("problem: \"public.outbox\" has 3 unsent rows, more than --max-pending 2"));
  limit.max_pending_rows = 3;
  EXPECT_EQ(kStatusHealthy, Status(config, limit)) << output_;
}

TEST_F(StatusPollTest, WithoutATimestampColumnTheAgeIsUnknown) {
  Insert("public.outbox", 2);
  EXPECT_EQ(kStatusHealthy, Status(ConfigWith({Table("public.outbox")}))) << output_;
  EXPECT_THAT(output_, HasSubstr("unknown"));
  EXPECT_THAT(output_, HasSubstr("names no `timestamp` column"));
  int code = -1;
  auto j = StatusJson(ConfigWith({Table("public.outbox")}), {}, &code);
  EXPECT_TRUE(j["tables"][0]["oldest_pending_age_seconds"].is_null());
  EXPECT_EQ(2, j["tables"][0]["pending_rows"]);
}

TEST_F(StatusPollTest, MarkModeCountsOnlyUnsentRows) {
  db_.Exec("ALTER TABLE public.outbox ADD COLUMN sent_at timestamptz");
  Insert("public.outbox", 4);
  db_.Exec("UPDATE public.outbox SET sent_at = now() WHERE seq <= 3");
  auto t = Table("public.outbox");
  t.after_delivery = AfterDelivery::kMark;
  t.sent_column = "sent_at";
  int code = -1;
  auto j = StatusJson(ConfigWith({t}), {}, &code);
  EXPECT_EQ(kStatusHealthy, code) << output_;
  EXPECT_EQ(1, j["tables"][0]["pending_rows"]);
  EXPECT_EQ(4, j["tables"][0]["min_pending_position"]);
}

TEST_F(StatusPollTest, ShowsTheSessionHoldingTheRelayLock) {
  PgConn holder = ConnectAs("postgres");
  auto oid = db_.QueryString("SELECT 'public.outbox'::regclass::oid::text");
  auto locked = holder.Exec(kTryLockPollTableSql, {oid});  // as another outboxd instance
  ASSERT_TRUE(locked.ok());
  ASSERT_STREQ("t", PQgetvalue(locked->get(), 0, 0));
  const auto pid = PQbackendPID(holder.get());
  EXPECT_EQ(kStatusHealthy, Status(ConfigWith({Table("public.outbox")}))) << output_;
  EXPECT_THAT(output_, HasSubstr("pid " + std::to_string(pid) + " status_init_test"));
}

TEST_F(StatusPollTest, MissingTableIsUnhealthy) {
  EXPECT_EQ(kStatusUnhealthy, Status(ConfigWith({Table("public.outbox"), Table("public.nope")}))) << output_;
  EXPECT_THAT(output_, HasSubstr("MISSING"));
  EXPECT_THAT(output_, HasSubstr("problem: table \"public.nope\" does not exist"));
  EXPECT_THAT(output_, HasSubstr("UNHEALTHY: 1 problem\n"));
}

TEST_F(StatusPollTest, MissingColumnIsUnhealthy) {
  auto t = Table("public.outbox");
  t.order_by = "position";
  EXPECT_EQ(kStatusUnhealthy, Status(ConfigWith({t}))) << output_;
  EXPECT_THAT(output_, HasSubstr("could not count the unsent rows of \"public.outbox\""));
}

TEST_F(StatusPollTest, UnreachablePostgresIsUnavailable) {
  Config config = ConfigWith({Table("public.outbox")});
  config.postgres.conninfo = "host=127.0.0.1 port=" + std::to_string(testing::FreePort()) + " dbname=x";
  EXPECT_EQ(kExitUnavailable, Status(config)) << output_;
  EXPECT_THAT(output_, HasSubstr("could not connect to PostgreSQL"));
  int code = -1;
  StatusOptions json;
  auto j = StatusJson(config, json, &code);
  EXPECT_EQ(kExitUnavailable, code);
  EXPECT_EQ(false, j["healthy"]);
}

TEST_F(StatusPollTest, StatusIsReadOnly) {
  Insert("public.outbox", 2);
  const std::string before = db_.QueryString("SELECT string_agg(seq::text, ',' ORDER BY seq) FROM public.outbox");
  EXPECT_EQ(kStatusHealthy, Status(ConfigWith({Table("public.outbox")}))) << output_;
  EXPECT_EQ(before, db_.QueryString("SELECT string_agg(seq::text, ',' ORDER BY seq) FROM public.outbox"));
}

// ---------------------------------------------------------------------------
// status: replication slots

class StatusSlotTest : public StatusInitTest {
 protected:
  void SetUp() override {
    slot_ = UniqueName("status_it");
    config_ = ConfigWith({});
    config_.cdc = CdcConfig{};
    config_.cdc->slot = slot_;
    config_.cdc->publication = slot_;
    config_.cdc->tables = {"public.orders"};
    db_.Exec("CREATE TABLE public.orders (id int PRIMARY KEY)");
    db_.Exec(CreateStateTableSql(config_.cdc->state_table));
    PgConn conn = ConnectAs("postgres");
    auto made = EnsureSlotAndPublication(conn, slot_, slot_, config_.cdc->tables, /*create=*/true);
    ASSERT_TRUE(made.ok()) << made.status().message();
    Record();
  }
  // What outboxd does after Kafka acknowledged: record the position, then
  // confirm it. Here the slot's own confirmed_flush_lsn is recorded.
  void Record() {
    PgConn conn = ConnectAs("postgres");
    auto status = ReadSlotStatus(conn, slot_);
    ASSERT_TRUE(status.ok() && status->has_value());
    ASSERT_TRUE(
        WriteSlotState(conn, config_.cdc->state_table, slot_, SlotState{*(*status)->confirmed_flush_lsn, true}).ok());
  }

  std::string slot_;
  Config config_;
};

TEST_F(StatusSlotTest, RecordedInactiveSlotIsHealthy) {
  EXPECT_EQ(kStatusHealthy, Status(config_)) << output_;
  EXPECT_THAT(output_, HasSubstr("SLOT"));
  EXPECT_THAT(output_, HasSubstr(slot_ + "  no "));
  EXPECT_THAT(output_, HasSubstr("matches ("));
  EXPECT_THAT(output_, HasSubstr("reserved"));

  int code = -1;
  auto j = StatusJson(config_, {}, &code);
  EXPECT_EQ(kStatusHealthy, code);
  ASSERT_EQ(1u, j["slots"].size());
  const auto& s = j["slots"][0];
  EXPECT_EQ(slot_, s["slot"]);
  EXPECT_EQ(false, s["active"]);
  EXPECT_TRUE(s["holder"].is_null());
  EXPECT_EQ("matches", s["state"]);
  EXPECT_EQ(s["recorded_lsn"], s["confirmed_flush_lsn"]);
  EXPECT_EQ("reserved", s["wal_status"]);
  EXPECT_GE(s["wal_retained_bytes"].get<int64_t>(), s["lag_bytes"].get<int64_t>());
  // The captured table is checked too.
  ASSERT_EQ(1u, j["tables"].size());
  EXPECT_EQ("cdc", j["tables"][0]["source"]);
  EXPECT_EQ(true, j["tables"][0]["exists"]);
}

TEST_F(StatusSlotTest, LagGrowsWithWalAndTheThresholdFails) {
  int code = -1;
  const int64_t before = StatusJson(config_, {}, &code)["slots"][0]["lag_bytes"].get<int64_t>();
  db_.Exec(
      "SELECT pg_logical_emit_message(true, 'status_it', string_agg(md5(g::text), '')) "
      "FROM generate_series(1, 1000) g");
  auto j = StatusJson(config_, {}, &code);
  const int64_t after = j["slots"][0]["lag_bytes"].get<int64_t>();
  EXPECT_GT(after, before);
  EXPECT_EQ(kStatusHealthy, code);

  StatusOptions limit;
  limit.max_lag_bytes = static_cast<uint64_t>(after) - 1;
  EXPECT_EQ(kStatusUnhealthy, Status(config_, limit)) << output_;
  EXPECT_THAT(output_, HasSubstr("bytes behind, more than --max-lag"));
  limit.max_lag_bytes = 1ull << 40;
  EXPECT_EQ(kStatusHealthy, Status(config_, limit)) << output_;
}

TEST_F(StatusSlotTest, ActiveSlotShowsItsHolder) {
  const std::string conninfo = ConninfoAs("postgres") + " replication=database application_name=status_it_holder";
  PGconn* raw = PQconnectdb(conninfo.c_str());
  PgConn repl(raw);
  ASSERT_EQ(CONNECTION_OK, PQstatus(repl.get())) << PQerrorMessage(repl.get());
  PgResult started(PQexec(repl.get(), ("START_REPLICATION SLOT " + QuoteIdentifierStandard(slot_) +
                                       " LOGICAL 0/0 (proto_version '1', publication_names " +
                                       QuoteLiteralStandard(QuoteIdentifierStandard(slot_)) + ")")
                                          .c_str()));
  ASSERT_EQ(PGRES_COPY_BOTH, PQresultStatus(started.get())) << PQerrorMessage(repl.get());
  ASSERT_TRUE(testing::WaitUntil(
      [&] {
        return db_.QueryString("SELECT active::text FROM pg_replication_slots WHERE slot_name = " +
                               QuoteLiteralStandard(slot_)) == "true";
      },
      10s));

  int code = -1;
  auto j = StatusJson(config_, {}, &code);
  EXPECT_EQ(kStatusHealthy, code) << output_;
  const auto& s = j["slots"][0];
  EXPECT_EQ(true, s["active"]);
  ASSERT_FALSE(s["holder"].is_null());
  EXPECT_EQ(PQbackendPID(repl.get()), s["holder"]["pid"].get<int>());
  EXPECT_EQ("status_it_holder", s["holder"]["application_name"]);
  EXPECT_EQ("127.0.0.1", s["holder"]["client_addr"]);
  EXPECT_EQ(kStatusHealthy, Status(config_)) << output_;
  EXPECT_THAT(output_, HasSubstr("yes     pid " + std::to_string(PQbackendPID(repl.get())) + " status_it_holder"));
}

TEST_F(StatusSlotTest, DroppedSlotIsUnhealthy) {
  db_.Exec("SELECT pg_drop_replication_slot(" + QuoteLiteralStandard(slot_) + ")");
  EXPECT_EQ(kStatusUnhealthy, Status(config_)) << output_;
  EXPECT_THAT(output_, HasSubstr("MISSING"));
  EXPECT_THAT(output_, HasSubstr("problem: replication slot \"" + slot_ + "\" was dropped"));
  EXPECT_THAT(output_, Not(HasSubstr("does not exist (create it")));  // one message, the precise one
  int code = -1;
  auto j = StatusJson(config_, {}, &code);
  EXPECT_EQ(kStatusUnhealthy, code);
  EXPECT_EQ("dropped", j["slots"][0]["state"]);
  EXPECT_EQ(false, j["slots"][0]["exists"]);
}

TEST_F(StatusSlotTest, RecreatedSlotIsUnhealthy) {
  db_.Exec("SELECT pg_drop_replication_slot(" + QuoteLiteralStandard(slot_) + ")");
  db_.Exec("SELECT pg_logical_emit_message(true, 'status_it', 'move the WAL on')");
  db_.Exec("SELECT pg_create_logical_replication_slot(" + QuoteLiteralStandard(slot_) + ", 'pgoutput')");
  EXPECT_EQ(kStatusUnhealthy, Status(config_)) << output_;
  EXPECT_THAT(output_, HasSubstr("was re-created"));
  int code = -1;
  EXPECT_EQ("re-created", StatusJson(config_, {}, &code)["slots"][0]["state"]);
}

TEST_F(StatusSlotTest, NeverCreatedSlotAndStateTableAreUnhealthy) {
  db_.Exec("SELECT pg_drop_replication_slot(" + QuoteLiteralStandard(slot_) + ")");
  db_.Exec("DROP TABLE " + config_.cdc->state_table);
  EXPECT_EQ(kStatusUnhealthy, Status(config_)) << output_;
  EXPECT_THAT(output_, HasSubstr("does not exist (create it with `outboxd init`"));
  EXPECT_THAT(output_, HasSubstr("state table \"public\".\"outboxd_slot_state\" does not exist"));
}

TEST_F(StatusSlotTest, MissingCapturedTableIsUnhealthy) {
  db_.Exec("DROP TABLE public.orders");
  EXPECT_EQ(kStatusUnhealthy, Status(config_)) << output_;
  EXPECT_THAT(output_, HasSubstr("problem: table \"public.orders\" does not exist"));
}

}  // namespace
}  // namespace outboxd
