// End to end: the built outboxd binary in cdc mode streams a real PostgreSQL
// logical replication slot into a real Kafka broker; kcat reads what arrived.
// Expectations follow the cdc behaviour spec (row-change envelopes, outbox
// tables and logical-decoding messages, positions, exit codes) and are
// computed from PostgreSQL itself where possible.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <iostream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/config.h"
#include "tests/integration/cdc/cdc_test_support.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

constexpr int kExitUnavailable = 69;  // EX_UNAVAILABLE
constexpr int kExitConfig = 78;       // EX_CONFIG

bool IsV8Uuid(const std::string& id) {
  static const std::regex shape("^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-8[0-9a-f]{3}-[0-9a-f]{12}$");
  return std::regex_match(id, shape);
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string SqlLiteral(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += (c == '\'' ? std::string("''") : std::string(1, c));
  return out + "'";
}

// A row-change record with its value parsed.
struct Change {
  KafkaRecord record;
  json value;
  std::string op() const { return value.value("op", ""); }
  uint64_t lsn() const { return value.at("source").at("lsn").get<uint64_t>(); }
  std::string id() const { return HeaderValue(record, "id"); }
};

std::vector<Change> Changes(const std::vector<KafkaRecord>& records) {
  std::vector<Change> out;
  out.reserve(records.size());
  for (const auto& r : records) out.push_back({r, ParseJson(r.value)});
  return out;
}

class CdcRelayTest : public CdcTest {
 protected:
  // What a user of every row-change record relies on: the envelope's
  // source names the table, the Kafka timestamp is the commit time, the id
  // header has the v8 shape of the spec.
  void ExpectEnvelope(Change& c, const std::string& table) {
    SCOPED_TRACE("record at offset " + std::to_string(c.record.offset) + " of " + c.record.topic + ": " +
                 c.record.value.value_or("<null>"));
    EXPECT_EQ(TableTopic(table), c.record.topic);
    ASSERT_TRUE(c.value.is_object());
    for (const char* member : {"before", "after", "op", "source", "ts_ms"}) {
      EXPECT_TRUE(c.value.contains(member)) << member;
    }
    json source = c.value["source"];
    ASSERT_TRUE(source.is_object());
    EXPECT_EQ(db_->name(), source.value("db", ""));
    EXPECT_EQ("public", source.value("schema", ""));
    EXPECT_EQ(table, source.value("table", ""));
    EXPECT_TRUE(source["lsn"].is_number_unsigned() || source["lsn"].is_number_integer());
    EXPECT_TRUE(source["txId"].is_number());
    ASSERT_TRUE(source["ts_ms"].is_number());
    EXPECT_EQ(source["ts_ms"].get<int64_t>(), c.record.timestamp_ms) << "Kafka timestamp = commit time";
    EXPECT_TRUE(IsV8Uuid(c.id())) << c.id();
  }
};

// --- 1 ----------------------------------------------------------------------

TEST_F(CdcRelayTest, RowChangesArePublishedPerTableInCommitOrderPerKey) {
  db_->Exec(
      "CREATE TABLE orders (id int PRIMARY KEY, note text, qty int);"
      "CREATE TABLE items (id int PRIMARY KEY, name text)");
  CdcToml toml = Toml();
  toml.tables = {"public.orders", "items"};
  KafkaAdmin admin;
  admin.CreateTopic(TableTopic("orders"), 3);  // per-key order, not total order
  admin.CreateTopic(TableTopic("items"), 1);
  OutboxdProcess outboxd(toml.Build());
  ASSERT_TRUE(StartStreaming(outboxd)) << outboxd.Log();

  db_->Exec(
      "BEGIN;"
      "INSERT INTO orders VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3);"
      "INSERT INTO items VALUES (10, 'x');"
      "COMMIT");
  db_->Exec(
      "BEGIN;"
      "UPDATE orders SET qty = qty + 10 WHERE id IN (1, 2);"
      "DELETE FROM items WHERE id = 10;"
      "INSERT INTO items VALUES (11, 'y');"
      "COMMIT");
  db_->Exec("DELETE FROM orders WHERE id = 3");
  db_->Exec("UPDATE orders SET note = 'a2' WHERE id = 1");
  db_->Exec("TRUNCATE orders, items");

  auto orders = Changes(Consume(TableTopic("orders"), 8));
  auto items = Changes(Consume(TableTopic("items"), 4));
  ASSERT_EQ(8u, orders.size()) << outboxd.Log();
  ASSERT_EQ(4u, items.size()) << outboxd.Log();

  // Per key (records of one key share a partition; ConsumeTopic orders by
  // partition and offset): the key's changes in commit order.
  std::map<std::string, std::vector<Change*>> by_key;
  for (auto& c : orders) {
    ExpectEnvelope(c, "orders");
    by_key[c.record.key.value_or("<null>")].push_back(&c);
  }
  for (auto& c : items) {
    ExpectEnvelope(c, "items");
    by_key["items " + c.record.key.value_or("<null>")].push_back(&c);
  }
  auto ops = [&](const std::string& key) {
    std::string s;
    for (const Change* c : by_key[key]) s += c->op();
    return s;
  };
  ASSERT_EQ(7u, by_key.size()) << "keys: orders 1, 2, 3, null; items 10, 11, null";
  ASSERT_EQ("cuu", ops(R"({"id":1})"));
  ASSERT_EQ("cu", ops(R"({"id":2})"));
  ASSERT_EQ("cd", ops(R"({"id":3})"));
  ASSERT_EQ("t", ops("<null>"));
  ASSERT_EQ("cd", ops(R"(items {"id":10})"));
  ASSERT_EQ("c", ops(R"(items {"id":11})"));
  ASSERT_EQ("t", ops("items <null>"));
  for (auto& [key, changes] : by_key) {
    for (std::size_t i = 1; i < changes.size(); ++i) {
      EXPECT_LT(changes[i - 1]->lsn(), changes[i]->lsn()) << "key " << key << ": commit order";
    }
  }

  // before/after, per the spec for a DEFAULT replica identity.
  const auto& k1 = by_key[R"({"id":1})"];
  EXPECT_EQ(json(nullptr), k1[0]->value["before"]);
  EXPECT_EQ(json::parse(R"({"id":1,"note":"a","qty":1})"), k1[0]->value["after"]);
  EXPECT_EQ(json(nullptr), k1[1]->value["before"]);
  EXPECT_EQ(json::parse(R"({"id":1,"note":"a","qty":11})"), k1[1]->value["after"]);
  EXPECT_EQ(json::parse(R"({"id":1,"note":"a2","qty":11})"), k1[2]->value["after"]);
  EXPECT_EQ(json::parse(R"({"id":2,"note":"b","qty":12})"), by_key[R"({"id":2})"][1]->value["after"]);
  const auto& k3 = by_key[R"({"id":3})"];
  EXPECT_EQ(json::parse(R"({"id":3})"), k3[1]->value["before"]) << "delete: key columns only";
  EXPECT_EQ(json(nullptr), k3[1]->value["after"]);
  const auto& i10 = by_key[R"(items {"id":10})"];
  EXPECT_EQ(json::parse(R"({"id":10,"name":"x"})"), i10[0]->value["after"]);
  EXPECT_EQ(json::parse(R"({"id":10})"), i10[1]->value["before"]);
  for (const char* truncated : {"<null>", "items <null>"}) {
    Change& t = *by_key[truncated][0];
    EXPECT_FALSE(t.record.key.has_value());
    EXPECT_EQ(json(nullptr), t.value["before"]);
    EXPECT_EQ(json(nullptr), t.value["after"]);
  }

  // Ids: distinct, and (commit LSN, index over every event of the
  // transaction, both tables) as the spec spells them out.
  std::map<uint64_t, std::set<std::string>> ids_by_tx;
  std::set<std::string> all_ids;
  for (const auto* list : {&orders, &items}) {
    for (const auto& c : *list) {
      ids_by_tx[c.lsn()].insert(c.id());
      all_ids.insert(c.id());
    }
  }
  EXPECT_EQ(12u, all_ids.size()) << "header ids are distinct per event";
  ASSERT_EQ(5u, ids_by_tx.size()) << "five transactions";
  for (const auto& [lsn, ids] : ids_by_tx) {
    std::set<std::string> expected;
    for (uint64_t i = 0; i < ids.size(); ++i) expected.insert(ExpectedEventId(lsn, i));
    EXPECT_EQ(expected, ids) << "transaction committed at " << lsn;
  }
  // The first transaction: orders 1, 2, 3 then items 10, in that order.
  const uint64_t first_tx = ids_by_tx.begin()->first;
  EXPECT_EQ(ExpectedEventId(first_tx, 3), i10[0]->id());
  EXPECT_EQ(ExpectedEventId(first_tx, 0), k1[0]->id());

  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
}

// --- 2 ----------------------------------------------------------------------

TEST_F(CdcRelayTest, ReplicaIdentityFullCarriesTheOldRowDefaultOnlyTheKey) {
  db_->Exec(
      "CREATE TABLE full_t (id int PRIMARY KEY, note text, qty int);"
      "ALTER TABLE full_t REPLICA IDENTITY FULL;"
      "CREATE TABLE def_t (id int PRIMARY KEY, note text, qty int)");
  CdcToml toml = Toml();
  toml.tables = {"public.full_t", "public.def_t"};
  OutboxdProcess outboxd(toml.Build());
  ASSERT_TRUE(StartStreaming(outboxd)) << outboxd.Log();
  for (const std::string t : {"full_t", "def_t"}) {
    db_->Exec("INSERT INTO " + t + " VALUES (1, 'a', 10)");
    db_->Exec("UPDATE " + t + " SET qty = 11 WHERE id = 1");
    db_->Exec("UPDATE " + t + " SET id = 2 WHERE id = 1");
    db_->Exec("DELETE FROM " + t + " WHERE id = 2");
  }
  auto full = Changes(Consume(TableTopic("full_t"), 4));
  auto def = Changes(Consume(TableTopic("def_t"), 4));
  ASSERT_EQ(4u, full.size()) << outboxd.Log();
  ASSERT_EQ(4u, def.size()) << outboxd.Log();
  for (auto& c : full) ExpectEnvelope(c, "full_t");
  for (auto& c : def) ExpectEnvelope(c, "def_t");

  const json row1 = json::parse(R"({"id":1,"note":"a","qty":10})");
  const json row1b = json::parse(R"({"id":1,"note":"a","qty":11})");
  const json row2 = json::parse(R"({"id":2,"note":"a","qty":11})");

  // DEFAULT: no old row on update unless the key changed (then the old key),
  // the key columns on delete.
  EXPECT_EQ("cuud", def[0].op() + def[1].op() + def[2].op() + def[3].op());
  EXPECT_EQ(row1, def[0].value["after"]);
  EXPECT_EQ(json(nullptr), def[1].value["before"]);
  EXPECT_EQ(row1b, def[1].value["after"]);
  EXPECT_EQ(json::parse(R"({"id":1})"), def[2].value["before"]) << "key changed: old key columns";
  EXPECT_EQ(row2, def[2].value["after"]);
  EXPECT_EQ(json::parse(R"({"id":2})"), def[3].value["before"]);
  EXPECT_EQ(json(nullptr), def[3].value["after"]);
  EXPECT_EQ(std::optional<std::string>(R"({"id":1})"), def[1].record.key);
  EXPECT_EQ(std::optional<std::string>(R"({"id":2})"), def[2].record.key) << "key of the new row";
  EXPECT_EQ(std::optional<std::string>(R"({"id":2})"), def[3].record.key);

  // FULL: the whole old row on update and delete.
  EXPECT_EQ("cuud", full[0].op() + full[1].op() + full[2].op() + full[3].op());
  EXPECT_EQ(json(nullptr), full[0].value["before"]);
  EXPECT_EQ(row1, full[1].value["before"]);
  EXPECT_EQ(row1b, full[1].value["after"]);
  EXPECT_EQ(row1b, full[2].value["before"]);
  EXPECT_EQ(row2, full[2].value["after"]);
  EXPECT_EQ(row2, full[3].value["before"]);
  EXPECT_EQ(json(nullptr), full[3].value["after"]);
  // The spec's key is "the primary key (replica identity) columns"; with FULL
  // identity that may be every column, so only the id member is checked.
  for (std::size_t i = 0; i < full.size(); ++i) {
    const json key = ParseJson(full[i].record.key);
    ASSERT_TRUE(key.is_object()) << full[i].record.key.value_or("<null>");
    EXPECT_EQ(i < 2 ? 1 : 2, key.value("id", -1)) << *full[i].record.key;
  }
}

// --- 3 ----------------------------------------------------------------------

TEST_F(CdcRelayTest, UnchangedToastedColumnIsAPlaceholderInAfter) {
  // EXTERNAL storage: stored out of line, uncompressed, whatever pglz thinks.
  db_->Exec(
      "CREATE TABLE docs (id int PRIMARY KEY, body text, n int);"
      "ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL");
  CdcToml toml = Toml();
  toml.tables = {"public.docs"};
  OutboxdProcess outboxd(toml.Build());
  ASSERT_TRUE(StartStreaming(outboxd)) << outboxd.Log();

  db_->Exec("INSERT INTO docs SELECT 1, string_agg(md5(i::text), ''), 1 FROM generate_series(1, 400) i");
  const std::string body = db_->QueryString("SELECT body FROM docs WHERE id = 1");
  ASSERT_EQ(12800u, body.size());
  const std::string toast =
      db_->QueryString("SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = 'docs'::regclass");
  ASSERT_GT(db_->QueryInt64("SELECT count(*) FROM " + toast), 0) << "body is TOASTed out of line";
  db_->Exec("UPDATE docs SET n = 2 WHERE id = 1");
  db_->Exec("UPDATE docs SET body = body || 'z', n = 3 WHERE id = 1");

  auto changes = Changes(Consume(TableTopic("docs"), 3));
  ASSERT_EQ(3u, changes.size()) << outboxd.Log();
  for (auto& c : changes) ExpectEnvelope(c, "docs");
  EXPECT_EQ(json(body), changes[0].value["after"]["body"]);
  EXPECT_EQ(json("__outboxd_unchanged_toast"), changes[1].value["after"]["body"]);
  EXPECT_EQ(json(2), changes[1].value["after"]["n"]);
  EXPECT_EQ(json(body + "z"), changes[2].value["after"]["body"]);
  EXPECT_EQ(json(3), changes[2].value["after"]["n"]);
}

// --- 4 ----------------------------------------------------------------------

TEST_F(CdcRelayTest, ColumnTypesMapToJsonAsSpecified) {
  // A session time zone far from UTC: timestamptz must still come out in UTC.
  db_->Exec("ALTER DATABASE \"" + db_->name() +
            "\" SET timezone TO 'Asia/Kolkata';"
            "ALTER DATABASE \"" +
            db_->name() + "\" SET datestyle TO 'ISO, MDY'");
  db_->Exec(R"(CREATE TABLE types (
      id int PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8,
      f8_nan float8, f8_inf float8, num numeric, t text, vc varchar(20), c3 char(3), u uuid,
      j json, jb jsonb, by bytea, d date, ts timestamp, tstz timestamptz, tstz0 timestamptz,
      tm time, iv interval, ia int[], ta text[]))");
  CdcToml toml = Toml();
  toml.tables = {"public.types"};
  OutboxdProcess outboxd(toml.Build());
  ASSERT_TRUE(StartStreaming(outboxd)) << outboxd.Log();

  db_->Exec(R"(INSERT INTO types VALUES (1, true, -32768, 2147483647, 9223372036854775807,
      1.5, 3.141592653589793, 'NaN', '-Infinity', '123456789012345678901234.567890',
      'héllo "quoted" \ back', 'varchar ✓', 'ab', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
      '{"a": [1, 2.5, "x"], "b": null}', '{"k": {"n": 1}, "arr": [true, false]}',
      '\x00ff10deadbeef', '2026-11-23', '2026-11-23 12:34:56.123456',
      '2026-11-23 12:34:56.5+02', '2026-01-01 00:00:00+00', '12:34:56.789', '1 day 02:03:04',
      '{1,NULL,3}', '{"a b",NULL,"c\"d"}'))");
  db_->Exec("INSERT INTO types (id) VALUES (2)");

  // Expectations from PostgreSQL's own rendering.
  const auto pg = db_->Query(
      "SELECT i2::text, i4::text, i8::text, f4::text, f8::text, num::text, t, vc, c3, u::text, j::text, "
      "jb::text, replace(encode(by, 'base64'), E'\\n', ''), to_char(d, 'YYYY-MM-DD'), "
      "replace(ts::text, ' ', 'T'), replace((tstz AT TIME ZONE 'UTC')::text, ' ', 'T') || 'Z', "
      "replace((tstz0 AT TIME ZONE 'UTC')::text, ' ', 'T') || 'Z', tm::text, iv::text, "
      "array_to_json(ia)::text, array_to_json(ta)::text FROM types WHERE id = 1")[0];
  auto col = [&](int i) -> const std::string& { return pg.at(i).value(); };

  auto changes = Changes(Consume(TableTopic("types"), 2));
  ASSERT_EQ(2u, changes.size()) << outboxd.Log();
  ExpectEnvelope(changes[0], "types");
  json a = changes[0].value["after"];
  SCOPED_TRACE("after = " + a.dump());
  EXPECT_EQ(json(true), a["b"]);
  EXPECT_EQ(json(std::stoll(col(0))), a["i2"]);
  EXPECT_EQ(json(std::stoll(col(1))), a["i4"]);
  EXPECT_EQ(json(std::stoll(col(2))), a["i8"]);
  ASSERT_TRUE(a["f4"].is_number());
  EXPECT_EQ(std::stod(col(3)), a["f4"].get<double>());
  ASSERT_TRUE(a["f8"].is_number());
  EXPECT_EQ(std::stod(col(4)), a["f8"].get<double>());
  EXPECT_EQ(json("NaN"), a["f8_nan"]);
  EXPECT_EQ(json("-Infinity"), a["f8_inf"]);
  EXPECT_EQ(json(col(5)), a["num"]) << "numeric as a string, every digit kept";
  EXPECT_EQ(30u, std::count_if(col(5).begin(), col(5).end(), [](char c) { return std::isdigit(c); }));
  EXPECT_EQ(json(col(6)), a["t"]);
  EXPECT_EQ(json(col(7)), a["vc"]);
  EXPECT_EQ(json(col(8)), a["c3"]);
  EXPECT_EQ(json("ab "), a["c3"]) << "char(3) keeps its padding";
  EXPECT_EQ(json(col(9)), a["u"]);
  EXPECT_EQ(json::parse(col(10)), a["j"]) << "json embedded";
  EXPECT_EQ(json::parse(col(11)), a["jb"]) << "jsonb embedded";
  EXPECT_EQ(json(col(12)), a["by"]) << "bytea as base64";
  EXPECT_EQ(json("AP8Q3q2+7w=="), a["by"]);
  EXPECT_EQ(json(col(13)), a["d"]);
  EXPECT_EQ(json(col(14)), a["ts"]);
  EXPECT_EQ(json("2026-11-23T12:34:56.123456"), a["ts"]);
  EXPECT_EQ(json(col(15)), a["tstz"]);
  EXPECT_EQ(json("2026-11-23T10:34:56.5Z"), a["tstz"]);
  EXPECT_EQ(json(col(16)), a["tstz0"]);
  EXPECT_EQ(json(col(17)), a["tm"]);
  EXPECT_EQ(json(col(18)), a["iv"]);
  EXPECT_EQ(json::parse(col(19)), a["ia"]);
  EXPECT_EQ(json::parse(R"([1,null,3])"), a["ia"]);
  EXPECT_EQ(json::parse(col(20)), a["ta"]);
  EXPECT_EQ(json::parse(R"(["a b",null,"c\"d"])"), a["ta"]);

  json nulls = changes[1].value["after"];
  ASSERT_TRUE(nulls.is_object());
  EXPECT_EQ(25u, nulls.size());
  for (const auto& [name, value] : nulls.items()) {
    if (name != "id") {
      EXPECT_TRUE(value.is_null()) << name << " = " << value.dump();
    }
  }
}

// --- 5 ----------------------------------------------------------------------

TEST_F(CdcRelayTest, OutboxTableInsertsArePublishedUpdatesAndDeletesAreNot) {
  db_->Exec(OutboxDdl("outbox"));
  const std::string type = UniqueTopic("order");
  const std::string topic = "outbox.event." + type;
  KafkaAdmin().CreateTopic(topic, 1);
  CdcToml toml = Toml();
  toml.outbox_blocks = "[[outbox]]\ntable = \"public.outbox\"\nsource = \"cdc\"\n";
  OutboxdProcess outboxd(toml.Build());
  ASSERT_TRUE(StartStreaming(outboxd)) << outboxd.Log();

  struct Event {
    std::string id, key, payload_literal;
  };
  std::vector<Event> events;
  events.reserve(4);
  for (int i = 0; i < 4; ++i) {
    events.push_back(
        {db_->QueryString("SELECT gen_random_uuid()::text"), "order-" + std::to_string(i),
         i == 0 ? R"({"total": 10, "items": ["a", "b"], "note": "x y"})" : R"({"n": )" + std::to_string(i) + "}"});
  }
  auto insert = [&](const Event& e) {
    return "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) VALUES ('" + e.id + "', '" + type +
           "', '" + e.key + "', 'OrderCreated', " + SqlLiteral(e.payload_literal) + ");";
  };
  // The Debezium pattern: insert and delete in one transaction.
  db_->Exec("BEGIN;" + insert(events[0]) + insert(events[1]) + "DELETE FROM outbox; COMMIT");
  ASSERT_EQ(0, db_->QueryInt64("SELECT count(*) FROM outbox"));
  db_->Exec(insert(events[2]));
  ASSERT_EQ(3u, Consume(topic, 3).size()) << outboxd.Log();
  // An update and a delete of an outbox row publish nothing: the next insert
  // is the next record.
  db_->Exec("UPDATE outbox SET payload = '{\"changed\": true}', aggregateid = 'changed'");
  db_->Exec("DELETE FROM outbox");
  db_->Exec(insert(events[3]));

  auto records = Consume(topic, 4);
  ASSERT_EQ(4u, records.size()) << outboxd.Log();
  for (std::size_t i = 0; i < 4; ++i) {
    SCOPED_TRACE("event " + std::to_string(i));
    // The value is the payload text as stored (jsonb as PostgreSQL prints it).
    const std::string payload = db_->QueryString("SELECT " + SqlLiteral(events[i].payload_literal) + "::jsonb::text");
    EXPECT_EQ(topic, records[i].topic);
    EXPECT_EQ(std::optional<std::string>(events[i].key), records[i].key);
    EXPECT_EQ(std::optional<std::string>(payload), records[i].value);
    EXPECT_EQ(events[i].id, HeaderValue(records[i], "id"));
  }
  EXPECT_EQ(0, KafkaAdmin().PartitionCount(TableTopic("outbox"))) << "no row-change topic for an outbox table";
}

// --- 6 ----------------------------------------------------------------------

TEST_F(CdcRelayTest, LogicalDecodingMessagesWithThePrefixBecomeOutboxEvents) {
  const std::string type = UniqueTopic("msg");
  const std::string topic = "outbox.event." + type;
  KafkaAdmin().CreateTopic(topic, 1);
  CdcToml toml = Toml();
  toml.message_prefix = "outbox";
  OutboxdProcess outboxd(toml.Build());
  ASSERT_TRUE(StartStreaming(outboxd)) << outboxd.Log();

  auto emit = [&](const std::string& prefix, const std::string& content) {
    return "SELECT pg_logical_emit_message(true, " + SqlLiteral(prefix) + ", " + SqlLiteral(content) + ");";
  };
  db_->Exec(
      emit("outbox", R"({"id": "m-1", "aggregatetype": ")" + type +
                         R"(", "aggregateid": "k1", "type": "Created",)"
                         R"( "payload": {"a": 1, "b": [1, 2], "s": "x y"}, "headers": {"h": "v", "trace": "t1"}})"));
  // Insert positions (not pg_current_wal_lsn(): with synchronous_commit =
  // off a commit record may not be written yet).
  const uint64_t before_m2 = CurrentWalInsertLsn();
  db_->Exec(emit("outbox",
                 R"({"aggregatetype": ")" + type + R"(", "aggregateid": "k2", "type": "Noted", "payload": "hello"})"));
  const uint64_t after_m2 = CurrentWalInsertLsn();
  db_->Exec(emit("other", R"({"id": "m-3", "aggregatetype": ")" + type +
                              R"(", "aggregateid": "k3", "type": "T", "payload": {}})"));
  db_->Exec("BEGIN;" +
            emit("outbox", R"({"id": "m-4", "aggregatetype": ")" + type +
                               R"(", "aggregateid": "k4", "type": "T", "payload": {}})") +
            "ROLLBACK");
  db_->Exec(emit("outbox", R"({"id": "m-5", "aggregatetype": ")" + type +
                               R"(", "aggregateid": "k5", "type": "T", "payload": {"n": 5}})"));

  auto records = Consume(topic, 3);
  ASSERT_EQ(3u, records.size()) << "other prefix and rolled-back message are not published\n" << outboxd.Log();

  EXPECT_EQ(std::optional<std::string>("k1"), records[0].key);
  EXPECT_EQ(std::optional<std::string>(R"({"a":1,"b":[1,2],"s":"x y"})"), records[0].value);
  using Headers = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ((Headers{{"id", "m-1"}, {"h", "v"}, {"trace", "t1"}}), records[0].headers);

  EXPECT_EQ(std::optional<std::string>("k2"), records[1].key);
  EXPECT_EQ(std::optional<std::string>("hello"), records[1].value) << "a JSON string payload → its contents";
  const std::string id2 = HeaderValue(records[1], "id");
  EXPECT_TRUE(IsV8Uuid(id2)) << id2;
  const uint64_t lsn2 = LsnOfEventId(id2);
  EXPECT_LE(before_m2, lsn2) << id2 << ": commit LSN of the message's transaction";
  EXPECT_GE(after_m2, lsn2) << id2;
  EXPECT_EQ(ExpectedEventId(lsn2, 0), id2) << "only event of its transaction: index 0";

  EXPECT_EQ(std::optional<std::string>("k5"), records[2].key);
  EXPECT_EQ(std::optional<std::string>(R"({"n":5})"), records[2].value);
  EXPECT_EQ("m-5", HeaderValue(records[2], "id"));
}

// --- 7 ----------------------------------------------------------------------

TEST_F(CdcRelayTest, RestartResumesFromTheSlotWithoutRepublishing) {
  db_->Exec("CREATE TABLE orders (id int PRIMARY KEY, note text)");
  const std::string topic = TableTopic("orders");
  KafkaAdmin().CreateTopic(topic, 1);
  CdcToml toml = Toml();
  toml.tables = {"public.orders"};
  OutboxdProcess outboxd(toml.Build());
  ASSERT_TRUE(StartStreaming(outboxd)) << outboxd.Log();
  for (int i = 1; i <= 3; ++i) db_->Exec("INSERT INTO orders VALUES (" + std::to_string(i) + ", 'first run')");
  const uint64_t wal_after_last_commit = CurrentWalLsn();
  auto first = Changes(Consume(topic, 3));
  ASSERT_EQ(3u, first.size()) << outboxd.Log();
  const uint64_t last_commit = first.back().lsn();

  ASSERT_TRUE(WaitConfirmed(wal_after_last_commit))
      << "confirmed_flush_lsn " << ConfirmedFlushLsn().value_or(0) << " < " << wal_after_last_commit << "\n"
      << outboxd.Log();
  outboxd.Terminate();
  ASSERT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
  EXPECT_GT(ConfirmedFlushLsn().value_or(0), last_commit) << "the last commit is confirmed";
  EXPECT_EQ(1, db_->QueryInt64("SELECT count(*) FROM public.outboxd_slot_state WHERE slot_name = '" + slot_ + "'"));

  ASSERT_TRUE(StartStreaming(outboxd)) << outboxd.Log();
  for (int i = 4; i <= 5; ++i) db_->Exec("INSERT INTO orders VALUES (" + std::to_string(i) + ", 'second run')");
  auto all = Changes(Consume(topic, 5));
  ASSERT_EQ(5u, all.size()) << "nothing of the first run published again\n" << outboxd.Log();
  std::set<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(std::optional<std::string>(R"({"id":)" + std::to_string(i + 1) + "}"), all[i].record.key);
    ids.insert(all[i].id());
  }
  EXPECT_EQ(5u, ids.size());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(first[i].id(), all[i].id());
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
}

// --- 8 ----------------------------------------------------------------------

TEST_F(CdcRelayTest, InitCreatesPublicationSlotAndStateTableDryRunOnlyPrints) {
  db_->Exec("CREATE TABLE orders (id int PRIMARY KEY, note text)");
  CdcToml toml = Toml();
  toml.create = false;
  toml.tables = {"public.orders"};
  OutboxdProcess outboxd(toml.Build());
  auto publications = [&] {
    return db_->QueryInt64("SELECT count(*) FROM pg_publication WHERE pubname = '" + publication_ + "'");
  };
  auto state_table = [&] {
    return db_->QueryInt64("SELECT count(*) FROM pg_class WHERE relname = 'outboxd_slot_state'");
  };

  auto dry = OutboxdProcess::RunCommand({"init", "-c", outboxd.config_path(), "--dry-run"});
  ASSERT_EQ(0, dry.exit_code) << dry.output;
  EXPECT_NE(std::string::npos, dry.output.find("CREATE PUBLICATION")) << dry.output;
  EXPECT_NE(std::string::npos, dry.output.find("pg_create_logical_replication_slot")) << dry.output;
  EXPECT_NE(std::string::npos, dry.output.find(slot_)) << dry.output;
  EXPECT_NE(std::string::npos, dry.output.find(';')) << dry.output;
  EXPECT_EQ(0, publications());
  EXPECT_EQ(0, SlotCount());
  EXPECT_EQ(0, state_table());

  auto init = OutboxdProcess::RunCommand({"init", "-c", outboxd.config_path()});
  ASSERT_EQ(0, init.exit_code) << init.output;
  EXPECT_EQ(1, publications());
  EXPECT_EQ(1, db_->QueryInt64("SELECT count(*) FROM pg_publication_tables WHERE pubname = '" + publication_ +
                               "' AND schemaname = 'public' AND tablename = 'orders'"));
  EXPECT_EQ(1, SlotCount("plugin = 'pgoutput' AND slot_type = 'logical'"));
  EXPECT_EQ(1, state_table());

  // The slot captures from its creation by init: a row written before the
  // first run is published too.
  db_->Exec("INSERT INTO orders VALUES (1, 'before run')");
  ASSERT_TRUE(StartStreaming(outboxd)) << outboxd.Log();
  db_->Exec("INSERT INTO orders VALUES (2, 'during run')");
  auto records = Consume(TableTopic("orders"), 2);
  ASSERT_EQ(2u, records.size()) << outboxd.Log();
  EXPECT_EQ(std::optional<std::string>(R"({"id":1})"), records[0].key);
  EXPECT_EQ(std::optional<std::string>(R"({"id":2})"), records[1].key);
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
}

TEST_F(CdcRelayTest, RunWithoutCreateAndWithoutTheSlotExits78NamingTheSlot) {
  db_->Exec("CREATE TABLE orders (id int PRIMARY KEY, note text)");
  CdcToml toml = Toml();
  toml.create = false;
  toml.tables = {"public.orders"};
  OutboxdProcess outboxd(toml.Build());

  // A database nobody ran `outboxd init` on.
  outboxd.Start();
  ASSERT_EQ(kExitConfig, outboxd.WaitExit(60s)) << outboxd.Log();
  std::string log = outboxd.Log();
  EXPECT_NE(std::string::npos, log.find(slot_)) << "names the slot\n" << log;
  EXPECT_NE(std::string::npos, log.find("outboxd init")) << log;
  EXPECT_EQ(0, SlotCount());

  // Publication and state table in place, only the slot missing (never
  // streamed from, so not "dropped").
  auto init = OutboxdProcess::RunCommand({"init", "-c", outboxd.config_path()});
  ASSERT_EQ(0, init.exit_code) << init.output;
  db_->Exec("SELECT pg_drop_replication_slot('" + slot_ + "')");
  db_->Exec("DELETE FROM public.outboxd_slot_state WHERE slot_name = '" + slot_ + "'");
  const std::size_t from = outboxd.LogSize();
  outboxd.Start();
  ASSERT_EQ(kExitConfig, outboxd.WaitExit(60s)) << outboxd.Log();
  log = outboxd.Log().substr(from);
  EXPECT_NE(std::string::npos, log.find(slot_)) << "names the slot\n" << log;
  EXPECT_NE(std::string::npos, log.find("outboxd init")) << log;
  EXPECT_EQ(0, SlotCount());
}

// --- 9 ----------------------------------------------------------------------

TEST_F(CdcRelayTest, SlotDroppedWhileRunningStopsWithExit69) {
  db_->Exec("CREATE TABLE orders (id int PRIMARY KEY)");
  CdcToml toml = Toml();
  toml.tables = {"public.orders"};  // create = true: must still not make a new slot
  OutboxdProcess outboxd(toml.Build());
  ASSERT_TRUE(StartStreaming(outboxd)) << outboxd.Log();
  db_->Exec("INSERT INTO orders VALUES (1)");
  ASSERT_EQ(1u, Consume(TableTopic("orders"), 1).size()) << outboxd.Log();

  // outboxd reconnects after the walsender is gone; drop in that window.
  const std::string terminate =
      "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
      "WHERE slot_name = '" +
      slot_ + "' AND active_pid IS NOT NULL";
  ASSERT_TRUE(WaitUntil(
      [&] {
        if (SlotCount() == 0) return true;
        db_->Exec(terminate);
        try {
          db_->Exec("SELECT pg_drop_replication_slot('" + slot_ + "')");
          return true;
        } catch (const HarnessError&) {
          return false;  // active again
        }
      },
      60s, 10ms));
  ASSERT_EQ(kExitUnavailable, outboxd.WaitExit(60s)) << outboxd.Log();
  const std::string log = outboxd.Log();
  EXPECT_NE(std::string::npos, log.find(slot_)) << log;
  EXPECT_TRUE(Lower(log).find("dropped") != std::string::npos || Lower(log).find("does not exist") != std::string::npos)
      << log;
  EXPECT_EQ(0, SlotCount()) << "outboxd never re-creates a slot it streamed from";
}

TEST_F(CdcRelayTest, SlotRecreatedWhileStoppedIsRefusedWithExit69) {
  db_->Exec("CREATE TABLE orders (id int PRIMARY KEY)");
  CdcToml toml = Toml();
  toml.tables = {"public.orders"};
  OutboxdProcess outboxd(toml.Build());
  ASSERT_TRUE(StartStreaming(outboxd)) << outboxd.Log();
  db_->Exec("INSERT INTO orders VALUES (1)");
  const uint64_t wal = CurrentWalLsn();
  ASSERT_EQ(1u, Consume(TableTopic("orders"), 1).size()) << outboxd.Log();
  ASSERT_TRUE(WaitConfirmed(wal)) << outboxd.Log();
  outboxd.Terminate();
  ASSERT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();

  ASSERT_TRUE(WaitUntil([&] { return SlotCount("active") == 0; }, 30s));
  db_->Exec("SELECT pg_drop_replication_slot('" + slot_ + "')");
  db_->Exec("SELECT pg_create_logical_replication_slot('" + slot_ + "', 'pgoutput')");
  const std::size_t from = outboxd.LogSize();
  outboxd.Start();
  ASSERT_EQ(kExitUnavailable, outboxd.WaitExit(60s)) << outboxd.Log();
  const std::string log = Lower(outboxd.Log().substr(from));
  EXPECT_TRUE(log.find("re-created") != std::string::npos || log.find("recreated") != std::string::npos) << log;
  EXPECT_NE(std::string::npos, log.find(slot_)) << log;
}

// --- 10 ---------------------------------------------------------------------

// Sum of the partitions' end offsets of `topic` (kcat query mode, timestamp
// -1 = end), or -1 when kcat fails.
int64_t EndOffsets(const std::string& topic, int partitions) {
  std::vector<std::string> args = {"kcat", "-Q", "-b", SharedServices().kafka_bootstrap};
  for (int p = 0; p < partitions; ++p) {
    args.emplace_back("-t");
    args.push_back(topic + ":" + std::to_string(p) + ":-1");
  }
  auto r = RunCommand(args, 30s);
  if (r.exit_code != 0) return -1;
  int64_t sum = 0;
  int found = 0;
  std::istringstream lines(r.output);
  std::string line;
  while (std::getline(lines, line)) {
    const auto at = line.find(" offset ");
    if (at == std::string::npos) continue;
    sum += std::stoll(line.substr(at + 8));
    ++found;
  }
  return found == partitions ? sum : -1;
}

// At least once and exactly once (then as one Kafka transaction: one
// position record).
class CdcRelayMillionRowTest : public CdcRelayTest, public ::testing::WithParamInterface<Delivery> {};

TEST_P(CdcRelayMillionRowTest, MillionRowTransactionIsPublishedInBoundedMemory) {
  const bool exactly_once = GetParam() == Delivery::kExactlyOnce;
  constexpr int64_t kRows = 1'000'000;
  constexpr int kPartitions = 3;
#ifdef OUTBOXD_SANITIZED
  // ASan keeps freed memory in quarantine (256 MiB) and adds shadow memory.
  constexpr int64_t kRssLimitKb = int64_t{1024} * 1024;
#else
  constexpr int64_t kRssLimitKb = int64_t{400} * 1024;
#endif
  db_->Exec("CREATE TABLE bulk (id int PRIMARY KEY, v int)");
  const std::string topic = TableTopic("bulk");
  KafkaAdmin().CreateTopic(topic, kPartitions);
  CdcToml toml = Toml();
  toml.tables = {"public.bulk"};
  toml.log_level = "info";
  const std::string positions = topic + ".positions";
  if (exactly_once) toml.kafka_extra = "delivery = \"exactly-once\"\nposition_topic = \"" + positions + "\"\n";
  OutboxdProcess outboxd(toml.Build());
  ASSERT_TRUE(StartStreaming(outboxd)) << outboxd.Log();

  const auto start = std::chrono::steady_clock::now();
  db_->Exec("INSERT INTO bulk SELECT g, g % 1000 FROM generate_series(1, " + std::to_string(kRows) + ") g");
  const uint64_t wal_after_commit = CurrentWalLsn();
  const auto committed = std::chrono::steady_clock::now();

  int64_t peak_kb = 0;
  int64_t end_offsets = 0;
  auto sample = [&] { peak_kb = std::max(peak_kb, ReadProcessMemory(outboxd.pid()).peak_rss_kb); };
  const bool all_there = WaitUntil(
      [&] {
        sample();
        end_offsets = EndOffsets(topic, kPartitions);
        return end_offsets >= kRows || !outboxd.Running();
      },
      480s, 1000ms);
  const auto published = std::chrono::steady_clock::now();
  ASSERT_TRUE(all_there && outboxd.Running()) << end_offsets << " of " << kRows << " records\n" << outboxd.Log();
  EXPECT_TRUE(WaitUntil(
      [&] {
        sample();
        return ConfirmedFlushLsn().value_or(0) >= wal_after_commit;
      },
      60s, 200ms))
      << outboxd.Log();
  sample();
  outboxd.Terminate();
  ASSERT_EQ(0, outboxd.WaitExit(60s)) << outboxd.Log();

  auto secs = [](auto d) { return std::chrono::duration<double>(d).count(); };
  std::cout << "1M-row transaction: insert+commit " << secs(committed - start) << " s, in Kafka after "
            << secs(published - committed) << " s, outboxd peak RSS " << peak_kb / 1024.0 << " MiB (" << peak_kb
            << " kB), end offsets " << end_offsets << std::endl;
  RecordProperty("outboxd_peak_rss_kb", std::to_string(peak_kb));
  RecordProperty("publish_seconds", std::to_string(secs(published - committed)));
  RecordProperty("end_offsets", std::to_string(end_offsets));
  EXPECT_GT(peak_kb, 0);
  EXPECT_LT(peak_kb, kRssLimitKb) << "outboxd peak RSS " << peak_kb << " kB";

  // Every row is there: count distinct keys read back with kcat.
  auto read = RunCommand(
      {"kcat", "-C", "-b", SharedServices().kafka_bootstrap, "-t", topic, "-e", "-o", "beginning", "-q", "-f", "%k\n"},
      300s);
  ASSERT_EQ(0, read.exit_code) << read.output.substr(0, 2000);
  std::unordered_set<std::string> keys;
  keys.reserve(kRows);
  int64_t lines = 0;
  std::istringstream in(read.output);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    ++lines;
    keys.insert(line);
  }
  std::cout << "read back " << lines << " records, " << keys.size() << " distinct keys" << std::endl;
  RecordProperty("records_read", std::to_string(lines));
  EXPECT_EQ(static_cast<std::size_t>(kRows), keys.size());
  EXPECT_TRUE(keys.count(R"({"id":1})") && keys.count(R"({"id":1000000})"));
  if (exactly_once) {
    EXPECT_EQ(kRows, lines) << "a read_committed reader sees each row once";
    // One PostgreSQL transaction, one Kafka transaction: one position record.
    const auto stored = ConsumeTopic(SharedServices().kafka_bootstrap, positions, 1, 30s);
    EXPECT_EQ(1u, stored.size());
  }
}

INSTANTIATE_TEST_SUITE_P(Delivery, CdcRelayMillionRowTest,
                         ::testing::Values(Delivery::kAtLeastOnce, Delivery::kExactlyOnce),
                         [](const ::testing::TestParamInfo<Delivery>& info) {
                           return std::string(info.param == Delivery::kExactlyOnce ? "ExactlyOnce" : "AtLeastOnce");
                         });

// A PostgreSQL transaction that takes longer than transaction.timeout.ms to
// produce is aborted by the broker. outboxd must not split it (commit what
// got through and go on): it stops with exit 69 and says which timeout to
// raise, nothing of the transaction is visible, and the slot is not
// confirmed past it.
TEST_F(CdcRelayTest, ATransactionLongerThanTheTransactionTimeoutStopsUnsplit) {
  constexpr int64_t kRows = 2'000'000;  // several seconds to produce; the timeout is 1 s
  db_->Exec("CREATE TABLE slow (id int PRIMARY KEY, v int)");
  const std::string topic = TableTopic("slow");
  KafkaAdmin().CreateTopic(topic, 1);
  CdcToml toml = Toml();
  toml.tables = {"public.slow"};
  toml.log_level = "info";
  toml.kafka_extra = "delivery = \"exactly-once\"\nposition_topic = \"" + topic +
                     ".positions\"\n[kafka.properties]\n\"transaction.timeout.ms\" = \"1000\"\n";
  OutboxdProcess outboxd(toml.Build());
  ASSERT_TRUE(StartStreaming(outboxd)) << outboxd.Log();
  const uint64_t before = ConfirmedFlushLsn().value_or(0);

  db_->Exec("INSERT INTO slow SELECT g, g FROM generate_series(1, " + std::to_string(kRows) + ") g");
  ASSERT_EQ(kExitUnavailable, outboxd.WaitExit(120s)) << outboxd.Log();
  const std::string log = outboxd.Log();
  EXPECT_NE(std::string::npos, log.find("longer than transaction.timeout.ms (1000 ms)")) << log;
  EXPECT_NE(std::string::npos, log.find("raise transaction.timeout.ms")) << log;
  EXPECT_GE(ConfirmedFlushLsn().value_or(0), before);
  // The slot may be confirmed up to the commit record, not past it: every
  // row is still there for the next start. (Not compared with an LSN taken
  // after the INSERT: with synchronous_commit = off pg_current_wal_lsn() may
  // still be short of the commit record.)
  EXPECT_EQ(kRows, db_->QueryInt64("SELECT count(*) FROM pg_logical_slot_peek_binary_changes(" + SqlLiteral(slot_) +
                                   ", NULL, NULL, 'proto_version', '1', 'publication_names', " +
                                   SqlLiteral(publication_) + ") WHERE get_byte(data, 0) = ascii('I')"))
      << "the slot was confirmed past the transaction\n"
      << log;
  const auto visible = ConsumeTopic(SharedServices().kafka_bootstrap, topic, 1, 5s);
  EXPECT_TRUE(visible.empty()) << visible.size() << " records of the aborted transaction are visible";
}

}  // namespace
}  // namespace outboxd::testing
