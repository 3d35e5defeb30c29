// ReplicationStream and SlotStatus against the real PostgreSQL of the ctest
// "postgres" fixture (wal_level = logical): each test gets a fresh database,
// a publication and a pgoutput slot named after the database (slots are
// cluster-wide, tests run in parallel), and streams real frames.

#include "cdc/replication_stream.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>

#include <chrono>
#include <string>
#include <vector>

#include "cdc/pgoutput_decoder.h"
#include "cdc/slot_status.h"
#include "cdc/snapshot.h"
#include "tests/harness/test_env.h"

namespace outboxd {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using std::chrono::steady_clock;
using ::testing::HasSubstr;
using testing::TestDatabase;
using testing::WaitUntil;

// A publication name that only survives START_REPLICATION if identifiers and
// literals are quoted correctly.
constexpr char kPublication[] = "outboxd pub \"q\" it's";

class ReplicationStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_.Exec("CREATE TABLE public.orders (id bigint PRIMARY KEY, note text)");
    auto conn = PgConn::Connect(db_.conninfo(), std::nullopt, "replication_stream_test");
    ASSERT_TRUE(conn.ok()) << conn.status().message();
    admin_ = std::move(*conn);
    auto ran = EnsureSlotAndPublication(admin_, slot_, kPublication, {"public.orders"}, /*create=*/true);
    ASSERT_TRUE(ran.ok()) << ran.status().message();
    ASSERT_EQ(ran->size(), 2u);
  }

  ReplicationStream NewStream(const std::string& extra_conninfo = "") {
    return ReplicationStream(db_.conninfo() + extra_conninfo, std::nullopt, "replication_stream_test");
  }

  StartOptions Options() const {
    StartOptions o;
    o.slot = slot_;
    o.publication_names = {kPublication};
    return o;
  }

  void ConnectAndStart(ReplicationStream& s) {
    ASSERT_TRUE(s.Connect().ok());
    Status st = s.Start(Options());
    ASSERT_TRUE(st.ok()) << st.message();
  }

  SlotStatus Slot() const {
    auto s = ReadSlotStatus(admin_, slot_);
    if (!s.ok() || !s->has_value()) throw testing::HarnessError("slot " + slot_ + " not readable");
    return **s;
  }

  // Reads frames until `done` says so or `deadline` passes, waiting on the
  // socket in between. Keepalives that ask for a reply are answered at once
  // with what the test has confirmed so far (never more).
  Status Pump(ReplicationStream& s, milliseconds deadline, const std::function<bool(const XLogData&)>& on_data,
              int* keepalives_answered = nullptr, bool answer_keepalives = true) {
    const auto until = steady_clock::now() + deadline;
    while (true) {
      auto r = s.Read();
      if (!r.ok()) return r.status();
      if (const auto* d = std::get_if<XLogData>(&*r)) {
        if (on_data(*d)) return Status::Ok();
        continue;
      }
      if (const auto* k = std::get_if<Keepalive>(&*r)) {
        if (k->reply_requested && answer_keepalives) {
          const Lsn f = s.reported_flush_lsn();
          OUTBOXD_RETURN_IF_ERROR(s.SendStatus(f, f, f));
          if (keepalives_answered) ++*keepalives_answered;
        }
        continue;
      }
      const auto left = std::chrono::duration_cast<milliseconds>(until - steady_clock::now());
      if (left.count() <= 0) return Status::Retriable("deadline");
      pollfd pfd{s.socket(), static_cast<short>(POLLIN | (s.flush_pending() ? POLLOUT : 0)), 0};
      if (::poll(&pfd, 1, static_cast<int>(left.count())) < 0) return Status::Internal("poll failed");
      if (s.flush_pending()) OUTBOXD_RETURN_IF_ERROR(s.FlushPending());
    }
  }

  // Decodes frames until (and including) the next Commit.
  std::vector<PgoutputMessage> ReadTransaction(ReplicationStream& s) {
    std::vector<PgoutputMessage> out;
    Status st = Pump(s, seconds(30), [&](const XLogData& d) {
      auto m = decoder_.Decode(d.payload);
      EXPECT_TRUE(m.ok()) << m.status().message();
      if (!m.ok()) return true;
      out.push_back(std::move(*m));
      return std::holds_alternative<CommitMsg>(out.back());
    });
    EXPECT_TRUE(st.ok()) << st.message();
    return out;
  }

  TestDatabase db_;
  std::string slot_ = db_.name();
  PgConn admin_;
  PgoutputDecoder decoder_;
};

TEST_F(ReplicationStreamTest, StreamsATransactionAndConfirmsOnlyWhatTheCallerReports) {
  ReplicationStream first = NewStream();
  ASSERT_TRUE(first.Connect().ok());
  auto id = first.IdentifySystem();
  ASSERT_TRUE(id.ok()) << id.status().message();
  EXPECT_EQ(id->dbname, db_.name());
  EXPECT_GE(id->timeline, 1u);
  EXPECT_TRUE(id->xlogpos.valid());
  EXPECT_FALSE(id->system_id.empty());
  ASSERT_TRUE(first.Start(Options()).ok());
  ReplicationStream stream = std::move(first);  // moving keeps the live stream
  // The moved-from stream is what is checked here.
  // NOLINTBEGIN(bugprone-use-after-move)
  EXPECT_FALSE(first.connected());
  EXPECT_FALSE(first.streaming());
  EXPECT_EQ(first.Read().status().code(), StatusCode::kInternal);
  // NOLINTEND(bugprone-use-after-move)
  ASSERT_TRUE(stream.streaming());

  const Lsn created_at = *Slot().confirmed_flush_lsn;
  db_.Exec(
      "BEGIN; INSERT INTO public.orders VALUES (1, 'first'), (2, NULL);"
      " SELECT pg_logical_emit_message(true, 'outbox', '{\"id\":\"e1\"}'); COMMIT;");

  auto txn = ReadTransaction(stream);
  ASSERT_EQ(txn.size(), 6u);
  const auto& begin = std::get<BeginMsg>(txn[0]);
  const auto& rel = std::get<RelationMsg>(txn[1]);
  EXPECT_EQ(rel.namespace_name, "public");
  EXPECT_EQ(rel.name, "orders");
  ASSERT_EQ(rel.columns.size(), 2u);
  EXPECT_EQ(rel.columns[0].name, "id");
  EXPECT_TRUE(rel.columns[0].is_key());
  const auto& ins1 = std::get<InsertMsg>(txn[2]);
  EXPECT_EQ(ins1.relation->name, "orders");
  EXPECT_EQ(ins1.new_tuple.columns[0].value, "1");
  EXPECT_EQ(ins1.new_tuple.columns[1].value, "first");
  const auto& ins2 = std::get<InsertMsg>(txn[3]);
  EXPECT_EQ(ins2.new_tuple.columns[0].value, "2");
  EXPECT_EQ(ins2.new_tuple.columns[1].kind, TupleColumn::Kind::kNull);
  const auto& msg = std::get<LogicalMsg>(txn[4]);
  EXPECT_EQ(msg.prefix, "outbox");
  EXPECT_EQ(msg.content, "{\"id\":\"e1\"}");
  const auto& commit = std::get<CommitMsg>(txn[5]);
  EXPECT_EQ(begin.final_lsn, commit.commit_lsn);
  EXPECT_GT(commit.end_lsn, created_at);

  // Received and reported positions are separate: nothing was reported yet,
  // and the slot has not moved.
  EXPECT_GE(stream.received_lsn(), commit.commit_lsn);
  EXPECT_FALSE(stream.reported_flush_lsn().valid());
  EXPECT_EQ(*Slot().confirmed_flush_lsn, created_at);

  ASSERT_TRUE(stream.SendStatus(commit.end_lsn, commit.end_lsn, commit.end_lsn).ok());
  EXPECT_EQ(stream.reported_flush_lsn(), commit.end_lsn);
  EXPECT_TRUE(WaitUntil([&] { return *Slot().confirmed_flush_lsn == commit.end_lsn; }, seconds(20)))
      << "confirmed_flush_lsn " << Slot().confirmed_flush_lsn->ToString() << ", expected " << commit.end_lsn.ToString();
}

TEST_F(ReplicationStreamTest, AnsweredKeepalivesKeepTheStreamAlivePastWalSenderTimeout) {
  // wal_sender_timeout is settable per connection; with 2 s the walsender
  // asks for a reply after 1 s of silence and kills us after 2 s without one.
  ReplicationStream stream = NewStream(" options='-c wal_sender_timeout=2000'");
  ConnectAndStart(stream);
  int answered = 0;
  const auto start = steady_clock::now();
  Status st = Pump(
      stream, seconds(6), [](const XLogData&) { return false; }, &answered);
  EXPECT_EQ(st.message(), "deadline") << "stream failed after "
                                      << std::chrono::duration_cast<milliseconds>(steady_clock::now() - start).count()
                                      << " ms: " << StreamFailureName(stream.last_failure());
  EXPECT_GE(answered, 2);
  EXPECT_TRUE(stream.connected());

  // Still streaming afterwards.
  db_.Exec("INSERT INTO public.orders VALUES (3, 'after keepalives')");
  auto txn = ReadTransaction(stream);
  ASSERT_EQ(txn.size(), 4u);
  EXPECT_EQ(std::get<InsertMsg>(txn[2]).new_tuple.columns[1].value, "after keepalives");
}

TEST_F(ReplicationStreamTest, UnansweredKeepalivesEndTheStreamAsRetriable) {
  // The negative control of the test above: the walsender gives up on a
  // client that does not answer, and that reads as a lost connection.
  ReplicationStream stream = NewStream(" options='-c wal_sender_timeout=1000'");
  ConnectAndStart(stream);
  Status st = Pump(
      stream, seconds(15), [](const XLogData&) { return false; }, nullptr,
      /*answer_keepalives=*/false);
  EXPECT_EQ(st.code(), StatusCode::kRetriable) << st.message();
  EXPECT_NE(st.message(), "deadline");
  EXPECT_EQ(stream.last_failure(), StreamFailure::kConnectionLost) << st.message();
}

TEST_F(ReplicationStreamTest, SecondStreamOnAnActiveSlotIsHeldByAnotherProcess) {
  ReplicationStream holder = NewStream();
  ConnectAndStart(holder);
  ReplicationStream standby = NewStream();
  ASSERT_TRUE(standby.Connect().ok());
  Status st = standby.Start(Options());
  EXPECT_EQ(st.code(), StatusCode::kRetriable) << st.message();
  EXPECT_EQ(standby.last_failure(), StreamFailure::kSlotHeldByAnotherProcess) << st.message();
  EXPECT_THAT(st.message(), HasSubstr("replication slot \"" + slot_ + "\" is held by another process"));
  EXPECT_THAT(st.message(), HasSubstr("is active for PID"));
  EXPECT_FALSE(standby.streaming());

  // Once the holder is gone, the standby takes the slot over.
  holder.Close();
  ASSERT_TRUE(WaitUntil([&] { return !Slot().active; }, seconds(20)));
  ASSERT_TRUE(standby.Connect().ok());
  Status again = standby.Start(Options());
  EXPECT_TRUE(again.ok()) << again.message();
}

TEST_F(ReplicationStreamTest, DroppedSlotIsMissing) {
  db_.Exec("SELECT pg_drop_replication_slot('" + slot_ + "')");
  ReplicationStream stream = NewStream();
  ASSERT_TRUE(stream.Connect().ok());
  Status st = stream.Start(Options());
  EXPECT_EQ(st.code(), StatusCode::kPermanent) << st.message();
  EXPECT_EQ(stream.last_failure(), StreamFailure::kSlotMissing);
  EXPECT_THAT(st.message(), HasSubstr("replication slot \"" + slot_ + "\" is missing"));

  auto status = ReadSlotStatus(admin_, slot_);
  ASSERT_TRUE(status.ok());
  EXPECT_FALSE(status->has_value());
  Status check = CheckSlotUsable(slot_, *status, db_.name());
  EXPECT_EQ(check.code(), StatusCode::kInvalidConfig);
  EXPECT_THAT(check.message(), HasSubstr(slot_));
  // Without `create` nothing is re-created.
  auto ensure = EnsureSlotAndPublication(admin_, slot_, kPublication, {"public.orders"}, /*create=*/false);
  EXPECT_EQ(ensure.status().code(), StatusCode::kInvalidConfig);
  EXPECT_THAT(ensure.status().message(), HasSubstr("does not exist"));
}

TEST_F(ReplicationStreamTest, TerminatedWalsenderIsRetriableAndTheSlotResumes) {
  ReplicationStream stream = NewStream();
  ConnectAndStart(stream);
  const int pid = stream.backend_pid();
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(WaitUntil([&] { return Slot().active_pid == pid; }, seconds(20)));
  db_.Exec("SELECT pg_terminate_backend(" + std::to_string(pid) + ")");

  Status st = Pump(stream, seconds(20), [](const XLogData&) { return false; });
  EXPECT_EQ(st.code(), StatusCode::kRetriable) << st.message();
  EXPECT_NE(st.message(), "deadline");
  EXPECT_EQ(stream.last_failure(), StreamFailure::kConnectionLost) << st.message();
  EXPECT_FALSE(stream.streaming());

  // Reconnect and resume from the slot.
  ASSERT_TRUE(WaitUntil([&] { return !Slot().active; }, seconds(20)));
  db_.Exec("INSERT INTO public.orders VALUES (4, 'after reconnect')");
  ConnectAndStart(stream);
  auto txn = ReadTransaction(stream);
  ASSERT_EQ(txn.size(), 4u);
  EXPECT_EQ(std::get<InsertMsg>(txn[2]).new_tuple.columns[0].value, "4");
}

TEST_F(ReplicationStreamTest, SlotChecksNameTheSlotAndTheProblem) {
  const SlotStatus good = Slot();
  EXPECT_EQ(good.plugin, "pgoutput");
  EXPECT_EQ(good.slot_type, "logical");
  EXPECT_EQ(good.database, db_.name());
  EXPECT_FALSE(good.active);
  EXPECT_TRUE(good.restart_lsn.has_value());
  EXPECT_TRUE(CheckSlotUsable(slot_, good, db_.name()).ok());

  SlotStatus lost = good;
  lost.wal_status = "lost";
  Status st = CheckSlotUsable(slot_, lost, db_.name());
  EXPECT_EQ(st.code(), StatusCode::kPermanent);
  EXPECT_THAT(st.message(), HasSubstr("\"" + slot_ + "\" has been invalidated (wal_status = lost)"));

  st = CheckSlotUsable(slot_, good, "other_db");
  EXPECT_EQ(st.code(), StatusCode::kPermanent);
  EXPECT_THAT(st.message(), HasSubstr("belongs to database"));

  // A real slot of another plugin.
  const std::string other = slot_ + "_td";
  db_.Exec("SELECT pg_create_logical_replication_slot('" + other + "', 'test_decoding')");
  auto ensure = EnsureSlotAndPublication(admin_, other, kPublication, {"public.orders"}, /*create=*/true);
  EXPECT_EQ(ensure.status().code(), StatusCode::kPermanent);
  EXPECT_THAT(ensure.status().message(),
              HasSubstr("replication slot \"" + other + "\" uses the output plugin \"test_decoding\""));

  // Ensure is idempotent once everything exists; a new table is added.
  db_.Exec("CREATE TABLE public.items (id int PRIMARY KEY)");
  auto no_create = EnsureSlotAndPublication(admin_, slot_, kPublication, {"public.orders", "items"}, false);
  EXPECT_EQ(no_create.status().code(), StatusCode::kInvalidConfig);
  EXPECT_THAT(no_create.status().message(), HasSubstr("does not include \"public\".\"items\""));
  auto add = EnsureSlotAndPublication(admin_, slot_, kPublication, {"public.orders", "items"}, true);
  ASSERT_TRUE(add.ok()) << add.status().message();
  ASSERT_EQ(add->size(), 1u);
  EXPECT_THAT((*add)[0], HasSubstr("ADD TABLE \"public\".\"items\""));
  auto same = EnsureSlotAndPublication(admin_, slot_, kPublication, {"public.orders", "items"}, false);
  ASSERT_TRUE(same.ok()) << same.status().message();
  EXPECT_TRUE(same->empty());
}

TEST_F(ReplicationStreamTest, StateTableTellsAUsedSlotFromADroppedOrRecreatedOne) {
  const std::string table = "public.state_" + db_.name();
  auto missing = ReadSlotState(admin_, table, slot_);
  EXPECT_EQ(missing.status().code(), StatusCode::kInvalidConfig);
  EXPECT_THAT(missing.status().message(), HasSubstr("does not exist (create it with `outboxd init`"));
  db_.Exec(CreateStateTableSql(table));
  auto none = ReadSlotState(admin_, table, slot_);
  ASSERT_TRUE(none.ok()) << none.status().message();
  EXPECT_FALSE(none->has_value());
  // No row yet: any slot is fine (first use).
  EXPECT_TRUE(CheckSlotAgainstState(slot_, Slot(), std::nullopt, table).ok());

  const Lsn confirmed = *Slot().confirmed_flush_lsn;
  ASSERT_TRUE(WriteSlotState(admin_, table, slot_, {confirmed, false}).ok());
  auto row = ReadSlotState(admin_, table, slot_);
  ASSERT_TRUE(row.ok() && row->has_value());
  EXPECT_EQ((*row)->confirmed, confirmed);
  EXPECT_FALSE((*row)->snapshot_done);
  ASSERT_TRUE(WriteSlotState(admin_, table, slot_, {confirmed, true}).ok());
  EXPECT_TRUE((*ReadSlotState(admin_, table, slot_))->snapshot_done) << "the row is updated in place";

  EXPECT_TRUE(CheckSlotAgainstState(slot_, Slot(), confirmed, table).ok()) << "the slot outboxd used";

  Status dropped = CheckSlotAgainstState(slot_, std::nullopt, confirmed, table);
  EXPECT_EQ(dropped.code(), StatusCode::kPermanent);
  EXPECT_THAT(dropped.message(), HasSubstr("replication slot \"" + slot_ + "\" was dropped"));

  // Dropped and created again: it starts past what outboxd confirmed.
  db_.Exec("INSERT INTO public.orders VALUES (1, 'between')");
  db_.Exec("SELECT pg_drop_replication_slot('" + slot_ + "')");
  db_.Exec("SELECT pg_create_logical_replication_slot('" + slot_ + "', 'pgoutput')");
  Status recreated = CheckSlotAgainstState(slot_, Slot(), confirmed, table);
  EXPECT_EQ(recreated.code(), StatusCode::kPermanent);
  EXPECT_THAT(recreated.message(), HasSubstr("was re-created"));
  EXPECT_THAT(recreated.message(), HasSubstr(confirmed.ToString()));

  ASSERT_TRUE(DeleteSlotState(admin_, table, slot_).ok());
  EXPECT_FALSE(ReadSlotState(admin_, table, slot_)->has_value());
}

TEST_F(ReplicationStreamTest, ExportedSnapshotSeesExactlyTheRowsBeforeTheSlot) {
  db_.Exec(
      "CREATE TABLE public.snap (a int, id bigint PRIMARY KEY, note text, "
      "twice int GENERATED ALWAYS AS (a * 2) STORED)");
  db_.Exec("ALTER PUBLICATION \"outboxd pub \"\"q\"\" it's\" ADD TABLE public.snap");
  db_.Exec(
      "INSERT INTO public.snap (a, id, note) SELECT i, i, CASE WHEN i = 2 THEN NULL ELSE 'n' || i END "
      "FROM generate_series(1, 2500) i");

  auto rel = DescribeTable(admin_, "snap");
  ASSERT_TRUE(rel.ok()) << rel.status().message();
  EXPECT_EQ(rel->namespace_name, "public");
  EXPECT_EQ(rel->name, "snap");
  ASSERT_EQ(rel->columns.size(), 3u) << "generated columns are left out, as pgoutput does";
  EXPECT_EQ(rel->columns[0].name, "a");
  EXPECT_FALSE(rel->columns[0].is_key());
  EXPECT_TRUE(rel->columns[1].is_key()) << "primary key column";
  EXPECT_FALSE(rel->columns[2].is_key());
  EXPECT_EQ(DescribeTable(admin_, "public.nope").status().code(), StatusCode::kInvalidConfig);
  db_.Exec("ALTER TABLE public.snap REPLICA IDENTITY FULL");
  auto full = DescribeTable(admin_, "public.snap");
  ASSERT_TRUE(full.ok());
  for (const auto& c : full->columns) EXPECT_TRUE(c.is_key()) << c.name << ": FULL makes every column a key";

  const std::string slot = slot_ + "_snap";
  ReplicationStream s = NewStream();
  ASSERT_TRUE(s.Connect().ok());
  auto exported = s.CreateSlotExportingSnapshot(slot);
  ASSERT_TRUE(exported.ok()) << exported.status().message();
  EXPECT_EQ(*Slot().confirmed_flush_lsn <= exported->consistent_point, true);
  db_.Exec("INSERT INTO public.snap (a, id, note) VALUES (0, 9999, 'after the slot')");

  auto reader = PgConn::Connect(db_.conninfo(), std::nullopt, "snapshot_reader");
  ASSERT_TRUE(reader.ok());
  ASSERT_TRUE(BeginSnapshotTransaction(*reader, exported->snapshot_name).ok());
  auto cursor = SnapshotCursor::Open(*reader, *rel);
  ASSERT_TRUE(cursor.ok()) << cursor.status().message();
  std::size_t rows = 0;
  bool saw_null = false;
  while (true) {
    auto batch = cursor->Next(1000);
    ASSERT_TRUE(batch.ok()) << batch.status().message();
    if (batch->empty()) break;
    for (const TupleData& t : *batch) {
      ASSERT_EQ(t.columns.size(), 3u);
      EXPECT_NE(t.columns[1].value, "9999") << "a row inserted after the slot is not in its snapshot";
      if (t.columns[1].value == "2") saw_null = t.columns[2].kind == TupleColumn::Kind::kNull;
      ++rows;
    }
  }
  EXPECT_EQ(rows, 2500u);
  EXPECT_TRUE(saw_null) << "NULL comes back as kNull";
  ASSERT_TRUE(cursor->Close().ok());
  ASSERT_TRUE(EndSnapshotTransaction(*reader).ok());

  // The slot streams what came after its consistent point: the late row.
  StartOptions o = Options();
  o.slot = slot;
  ASSERT_TRUE(s.Start(o).ok());
  std::vector<PgoutputMessage> tx = ReadTransaction(s);
  bool late_insert = false;
  for (const auto& m : tx) {
    if (const auto* ins = std::get_if<InsertMsg>(&m)) late_insert = ins->new_tuple.columns[1].value == "9999";
  }
  EXPECT_TRUE(late_insert);
  s.Close();
  db_.Exec("SELECT pg_drop_replication_slot('" + slot + "')");
}

// ---------------------------------------------------------------------------
// Wire format (no server needed).

TEST(ReplicationStreamWireFormat, StartCommandQuotesSlotAndPublications) {
  StartOptions o;
  o.slot = "outboxd_1";
  o.start_lsn = Lsn(0x16B374D848ULL);
  o.publication_names = {"a\"b", "it's"};
  auto cmd = StartReplicationCommand(o);
  ASSERT_TRUE(cmd.ok());
  EXPECT_EQ(*cmd,
            "START_REPLICATION SLOT \"outboxd_1\" LOGICAL 16/B374D848 (\"proto_version\" '1', "
            "\"publication_names\" '\"a\"\"b\",\"it''s\"', \"messages\" 'true')");

  o.slot = "Bad-Name";
  EXPECT_EQ(StartReplicationCommand(o).status().code(), StatusCode::kInvalidConfig);
  o.slot = std::string(64, 'a');
  EXPECT_EQ(StartReplicationCommand(o).status().code(), StatusCode::kInvalidConfig);
  o.slot = "ok";
  o.publication_names.clear();
  EXPECT_EQ(StartReplicationCommand(o).status().code(), StatusCode::kInvalidConfig);
}

TEST(ReplicationStreamWireFormat, StandbyStatusUpdateIsBigEndianWithPostgresEpoch) {
  const int64_t now = kPostgresEpochUnixMicros + 0x0102030405060708LL;
  const std::string m = EncodeStandbyStatusUpdate(Lsn(0x1122334455667788ULL), Lsn(0x10), Lsn(0x20), now, true);
  ASSERT_EQ(m.size(), 34u);
  EXPECT_EQ(m[0], 'r');
  EXPECT_EQ(m.substr(1, 8), std::string("\x11\x22\x33\x44\x55\x66\x77\x88", 8));
  EXPECT_EQ(m.substr(9, 8), std::string("\0\0\0\0\0\0\0\x10", 8));
  EXPECT_EQ(m.substr(17, 8), std::string("\0\0\0\0\0\0\0\x20", 8));
  EXPECT_EQ(m.substr(25, 8), std::string("\x01\x02\x03\x04\x05\x06\x07\x08", 8));
  EXPECT_EQ(m[33], 1);
}

TEST(ReplicationStreamWireFormat, ParsesFramesAndRejectsBadOnes) {
  std::string k("k\0\0\0\x01\0\0\0\x10\0\0\0\0\0\0\0\x05\x01", 18);
  auto km = ParseReplicationFrame(k);
  ASSERT_TRUE(km.ok());
  const auto& ka = std::get<Keepalive>(*km);
  EXPECT_EQ(ka.wal_end, Lsn(0x100000010ULL));
  EXPECT_EQ(ka.server_time_us, kPostgresEpochUnixMicros + 5);
  EXPECT_TRUE(ka.reply_requested);

  std::string w("w\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0\0BODY", 29);
  auto wm = ParseReplicationFrame(w);
  ASSERT_TRUE(wm.ok());
  const auto& xd = std::get<XLogData>(*wm);
  EXPECT_EQ(xd.wal_start, Lsn(1));
  EXPECT_EQ(xd.wal_end, Lsn(2));
  EXPECT_EQ(xd.payload, "BODY");

  EXPECT_EQ(ParseReplicationFrame(w.substr(0, 24)).status().code(), StatusCode::kPermanent);
  EXPECT_EQ(ParseReplicationFrame(k.substr(0, 17)).status().code(), StatusCode::kPermanent);
  EXPECT_EQ(ParseReplicationFrame("x").status().code(), StatusCode::kPermanent);
  EXPECT_EQ(ParseReplicationFrame("").status().code(), StatusCode::kPermanent);
}

TEST(ReplicationStreamSlotSql, InitSqlIsWhatADbaCanRun) {
  auto sql = InitSql("outboxd", "outboxd", {"public.orders", "Sales.\"Q\""}, "public.outboxd_slot_state");
  ASSERT_TRUE(sql.ok());
  ASSERT_EQ(sql->size(), 3u);
  EXPECT_EQ((*sql)[0], "CREATE PUBLICATION \"outboxd\" FOR TABLE \"public\".\"orders\", \"Sales\".\"\"\"Q\"\"\"");
  EXPECT_EQ((*sql)[1], "SELECT pg_create_logical_replication_slot('outboxd', 'pgoutput')");
  EXPECT_EQ(CreatePublicationSql("p", {}), "CREATE PUBLICATION \"p\"");
  EXPECT_EQ((*sql)[2].rfind("CREATE TABLE IF NOT EXISTS \"public\".\"outboxd_slot_state\" (", 0), 0u) << (*sql)[2];
  EXPECT_EQ(InitSql("Bad Slot", "p", {}, "s").status().code(), StatusCode::kInvalidConfig);
}

}  // namespace
}  // namespace outboxd
