// ChangeMapper: decoded pgoutput changes → Kafka records (JSON change
// envelope, key, topic, deterministic id), PostgreSQL text → JSON type
// mapping, logical-decoding messages and outbox-table inserts → Router rows.
// Messages are built directly as decoded values; no server.
#include "cdc/change_mapper.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "config/config.h"
#include "pipeline/cloudevents.h"
#include "pipeline/router.h"

namespace outboxd {
namespace {

using Kind = TupleColumn::Kind;
using OldUpdate = UpdateMsg::OldKind;
using OldDelete = DeleteMsg::OldKind;

constexpr uint32_t kBool = 16, kBytea = 17, kInt8 = 20, kInt2 = 21, kInt4 = 23, kText = 25, kOid = 26, kJson = 114,
                   kFloat4 = 700, kFloat8 = 701, kBpchar = 1042, kVarchar = 1043, kDate = 1082, kTimestamp = 1114,
                   kTimestamptz = 1184, kNumeric = 1700, kUuid = 2950, kJsonb = 3802, kInt4Array = 1007,
                   kTextArray = 1009, kNumericArray = 1231, kTimestamptzArray = 1185, kJsonbArray = 3807;

// 2024-01-02 03:04:05.678901 UTC.
constexpr int64_t kCommitUs = 1'704'164'645'678'901;
constexpr int64_t kCommitMs = 1'704'164'645'678;
const TransactionInfo kTx{Lsn(0x16'B374D848), kCommitUs, 740};

TupleColumn T(std::string v) { return {Kind::kText, std::move(v)}; }
TupleColumn N() { return {Kind::kNull, {}}; }
TupleColumn U() { return {Kind::kUnchangedToast, {}}; }
TupleData Tuple(std::vector<TupleColumn> cols) { return {std::move(cols)}; }

RelationColumn Key(std::string name, uint32_t oid) { return {RelationColumn::kKeyFlag, std::move(name), oid, -1}; }
RelationColumn Col(std::string name, uint32_t oid) { return {0, std::move(name), oid, -1}; }

RelationRef Relation(std::string schema, std::string name, std::vector<RelationColumn> cols,
                     RelationMsg::ReplicaIdentity identity = RelationMsg::ReplicaIdentity::kDefault) {
  static uint32_t next_oid = 16384;
  return std::make_shared<const RelationMsg>(
      RelationMsg{next_oid++, std::move(schema), std::move(name), identity, std::move(cols)});
}

// public.orders(id int4 primary key, note text, total numeric).
RelationRef Orders() {
  return Relation("public", "orders", {Key("id", kInt4), Col("note", kText), Col("total", kNumeric)});
}

Json Map(uint32_t oid, std::string_view text) { return PgTextToJson(oid, text); }
Json J(std::string_view text) { return Json::parse(text); }

class ChangeMapperTest : public ::testing::Test {
 protected:
  ChangeMapper mapper_{ChangeMapperOptions{
      .database = "app", .topic_prefix = "pg", .key_columns = {}, .types = {}, .format = {}, .cloudevents_source = {}}};

  Record Insert(const RelationRef& rel, TupleData row, uint64_t index = 0) {
    return Ok(mapper_.MapInsert({rel, std::move(row)}, kTx, index));
  }
  Record Update(const RelationRef& rel, OldUpdate kind, std::optional<TupleData> old, TupleData row) {
    return Ok(mapper_.MapUpdate({rel, kind, std::move(old), std::move(row)}, kTx, 1));
  }
  Record Delete(const RelationRef& rel, OldDelete kind, TupleData old) {
    return Ok(mapper_.MapDelete({rel, kind, std::move(old)}, kTx, 2));
  }

  static Record Ok(Result<Record> r) {
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? std::move(r).value() : Record{};
  }
  static Json Value(const Record& r) { return r.value ? Json::parse(*r.value) : Json(); }
  static std::string Error(const Result<Record>& r) {
    EXPECT_FALSE(r.ok());
    if (r.ok()) return {};
    EXPECT_EQ(StatusCode::kPermanent, r.status().code());
    return r.status().message();
  }
};

#define EXPECT_CONTAINS(haystack, needle) EXPECT_NE(std::string::npos, std::string(haystack).find(needle)) << (haystack)

// --- Envelope ---------------------------------------------------------------

// The envelope is written as text for speed; it must be exactly what the JSON
// library writes for the same values, escapes and odd inputs included.
TEST_F(ChangeMapperTest, EnvelopeTextIsWhatTheJsonLibraryWrites) {
  const std::vector<std::pair<RelationColumn, TupleColumn>> cols = {
      {Key("id", kInt8), T("-9223372036854775808")},
      {Col("small", kInt2), T("007")},  // not canonical: the library path
      {Col("zero", kInt4), T("0")},
      {Col("flag", kBool), T("t")},
      {Col("note", kText), T("plain words, digits 123 and {braces}")},
      {Col("quoted", kVarchar), T("say \"hi\" \\ back\tslash\n")},
      {Col("accent", kText), T("caf\xc3\xa9 \xe2\x82\xac")},
      {Col("broken", kText), T("bad \xff byte")},
      {Col("control \"col\"", kBpchar), T(std::string("nul\x01"
                                                      "ctl\x7f"
                                                      "\0end",
                                                      12))},
      {Col("price", kNumeric), T("12345678901234567890.000000000001")},
      {Col("uid", kUuid), T("5f0c3c1e-0000-4000-8000-000000000001")},
      {Col("doc", kJsonb), T(R"({"a": [1, 2.5, "x"]})")},
      {Col("ratio", kFloat8), T("0.1")},
      {Col("missing", kText), N()},
      {Col("toasted", kText), U()},
  };
  std::vector<RelationColumn> rel_cols;
  std::vector<TupleColumn> values;
  Json after = Json::object();
  for (const auto& [c, v] : cols) {
    rel_cols.push_back(c);
    values.push_back(v);
    if (v.kind == Kind::kNull) {
      after[c.name] = nullptr;
    } else if (v.kind == Kind::kUnchangedToast) {
      after[c.name] = kUnchangedToastPlaceholder;
    } else {
      after[c.name] = Map(c.type_oid, v.value);
    }
  }
  auto rel = Relation("public", "every_thing", rel_cols);
  Record r = Insert(rel, Tuple(values), 5);
  Json expected = Json::object();
  expected["before"] = nullptr;
  expected["after"] = after;
  expected["op"] = "c";
  expected["source"] =
      Json{{"db", "app"},     {"schema", "public"}, {"table", "every_thing"}, {"lsn", kTx.commit_lsn.value()},
           {"txId", kTx.xid}, {"ts_ms", kCommitMs}};
  expected["ts_ms"] = kCommitMs;
  EXPECT_EQ(expected.dump(-1, ' ', false, Json::error_handler_t::replace), r.value);
  EXPECT_EQ(R"({"id":-9223372036854775808})", r.key);
}

TEST_F(ChangeMapperTest, InsertIsACreateWithTheWholeEnvelopeInFieldAndColumnOrder) {
  Record r = Insert(Orders(), Tuple({T("42"), T("first"), T("9.90")}));
  EXPECT_EQ(R"({"before":null,"after":{"id":42,"note":"first","total":"9.90"},"op":"c",)"
            R"("source":{"db":"app","schema":"public","table":"orders","lsn":97500059720,"txId":740,)"
            R"("ts_ms":1704164645678},"ts_ms":1704164645678})",
            *r.value);
  EXPECT_EQ("pg.public.orders", r.topic);
  EXPECT_EQ(R"({"id":42})", r.key);
  EXPECT_EQ(kCommitMs, r.timestamp_ms);
}

TEST_F(ChangeMapperTest, SourceLsnIsTheCommitLsnAsANumber) {
  Json v = Value(Insert(Orders(), Tuple({T("1"), N(), N()})));
  EXPECT_EQ(0x16'B374D848u, v["source"]["lsn"].get<uint64_t>());
  EXPECT_EQ(740u, v["source"]["txId"].get<uint32_t>());
  EXPECT_EQ(kCommitMs, v["source"]["ts_ms"].get<int64_t>());
  EXPECT_EQ(kCommitMs, v["ts_ms"].get<int64_t>()) << "top-level ts_ms is the commit time, for identical replays";
}

TEST_F(ChangeMapperTest, SqlNullIsJsonNull) {
  Json v = Value(Insert(Orders(), Tuple({T("1"), N(), N()})));
  EXPECT_EQ(J(R"({"id":1,"note":null,"total":null})"), v["after"]);
}

TEST_F(ChangeMapperTest, TopicPrefixIsConfigurable) {
  ChangeMapper m(ChangeMapperOptions{.database = "app",
                                     .topic_prefix = "cdc.prod",
                                     .key_columns = {},
                                     .types = {},
                                     .format = {},
                                     .cloudevents_source = {}});
  auto r = m.MapInsert({Orders(), Tuple({T("1"), N(), N()})}, kTx, 0);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ("cdc.prod.public.orders", r->topic);
}

// A CloudEvents format wraps the same change envelope: data is the envelope,
// type says the operation, id and time are the change's.
TEST_F(ChangeMapperTest, CloudEventsBinaryWrapsTheEnvelope) {
  const Record debezium = Insert(Orders(), Tuple({T("1"), N(), N()}), 3);
  ChangeMapper m(ChangeMapperOptions{.database = "app",
                                     .topic_prefix = "pg",
                                     .key_columns = {},
                                     .types = {},
                                     .format = EventFormat::kCloudEventsBinary,
                                     .cloudevents_source = {}});
  auto r = m.MapInsert({Orders(), Tuple({T("1"), N(), N()})}, kTx, 3);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(debezium.value, r->value);
  EXPECT_EQ(debezium.key, r->key);
  const std::string id = *debezium.headers.at(0).value;
  const std::vector<Header> expected = {
      {"ce_specversion", "1.0"},
      {"ce_id", id},
      {"ce_source", "/outboxd/public.orders"},
      {"ce_type", "outboxd.change.c"},
      {"ce_time", Rfc3339Utc(*debezium.timestamp_ms)},
      {"content-type", "application/json"},
      {"id", id},
  };
  EXPECT_EQ(expected, r->headers);
}

TEST_F(ChangeMapperTest, CloudEventsStructuredWithAConfiguredSource) {
  ChangeMapper m(ChangeMapperOptions{.database = "app",
                                     .topic_prefix = "pg",
                                     .key_columns = {},
                                     .types = {},
                                     .format = EventFormat::kCloudEventsStructured,
                                     .cloudevents_source = "/inventory"});
  auto r = m.MapInsert({Orders(), Tuple({T("1"), N(), N()})}, kTx, 0);
  ASSERT_TRUE(r.ok()) << r.status().message();
  const Json v = Value(*r);
  EXPECT_EQ("/inventory", v["source"]);
  EXPECT_EQ("outboxd.change.c", v["type"]);
  EXPECT_EQ("c", v["data"]["op"]);
}

TEST_F(ChangeMapperTest, EmptyNamespaceIsPgCatalog) {
  Record r = Insert(Relation("", "t", {Key("id", kInt4)}), Tuple({T("1")}));
  EXPECT_EQ("pg.pg_catalog.t", r.topic);
  EXPECT_EQ("pg_catalog", Value(r)["source"]["schema"]);
}

TEST_F(ChangeMapperTest, ATableNameThatIsNoLegalTopicIsAPermanentError) {
  auto r = mapper_.MapInsert({Relation("public", "order items", {Key("id", kInt4)}), Tuple({T("1")})}, kTx, 0);
  EXPECT_CONTAINS(Error(r), "public.order items");
}

TEST_F(ChangeMapperTest, HeaderIdIsTheDeterministicEventId) {
  Record r = Insert(Orders(), Tuple({T("1"), N(), N()}), 7);
  ASSERT_EQ(1u, r.headers.size());
  EXPECT_EQ("id", r.headers[0].name);
  EXPECT_EQ(DeterministicEventId(kTx.commit_lsn, 7), r.headers[0].value);
}

TEST_F(ChangeMapperTest, ReplayingAChangeGivesAByteIdenticalRecord) {
  Record a = Insert(Orders(), Tuple({T("1"), T("x"), T("1.5")}), 3);
  Record b = Insert(Orders(), Tuple({T("1"), T("x"), T("1.5")}), 3);
  EXPECT_EQ(a.topic, b.topic);
  EXPECT_EQ(a.key, b.key);
  EXPECT_EQ(a.value, b.value);
  EXPECT_EQ(a.headers, b.headers);
  EXPECT_EQ(a.timestamp_ms, b.timestamp_ms);
}

// --- Keys -------------------------------------------------------------------

TEST_F(ChangeMapperTest, CompositeKeyListsTheKeyColumnsInColumnOrder) {
  auto rel = Relation("s", "lines", {Key("order_id", kInt8), Col("qty", kInt4), Key("sku", kText)});
  EXPECT_EQ(R"({"order_id":7,"sku":"A-1"})", Insert(rel, Tuple({T("7"), T("2"), T("A-1")})).key);
}

TEST_F(ChangeMapperTest, NoKeyColumnsMeansANullKafkaKey) {
  auto rel = Relation("public", "log", {Col("line", kText)}, RelationMsg::ReplicaIdentity::kNothing);
  EXPECT_EQ(std::nullopt, Insert(rel, Tuple({T("x")})).key);
}

TEST_F(ChangeMapperTest, ConfiguredKeyColumnsOverrideTheReplicaIdentity) {
  // REPLICA IDENTITY FULL flags every column as key; the primary key is "id".
  auto rel = Relation("public", "orders", {Key("id", kInt4), Key("note", kText)}, RelationMsg::ReplicaIdentity::kFull);
  ChangeMapper m(ChangeMapperOptions{.database = "app",
                                     .topic_prefix = "pg",
                                     .key_columns = {{"public.orders", {"id"}}},
                                     .types = {},
                                     .format = {},
                                     .cloudevents_source = {}});
  auto r = m.MapInsert({rel, Tuple({T("5"), T("n")})}, kTx, 0);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(R"({"id":5})", r->key);
  EXPECT_EQ(R"({"id":5,"note":"n"})", Insert(rel, Tuple({T("5"), T("n")})).key) << "without override";
}

TEST_F(ChangeMapperTest, AConfiguredKeyColumnTheTableLacksIsAnError) {
  ChangeMapper m(ChangeMapperOptions{.database = "app",
                                     .topic_prefix = "pg",
                                     .key_columns = {{"public.orders", {"nope"}}},
                                     .types = {},
                                     .format = {},
                                     .cloudevents_source = {}});
  EXPECT_CONTAINS(Error(m.MapInsert({Orders(), Tuple({T("1"), N(), N()})}, kTx, 0)), "key column \"nope\"");
}

// --- Update -----------------------------------------------------------------

TEST_F(ChangeMapperTest, UpdateWithoutOldTupleHasNullBefore) {
  Record r = Update(Orders(), OldUpdate::kNone, std::nullopt, Tuple({T("42"), T("second"), T("1")}));
  Json v = Value(r);
  EXPECT_EQ("u", v["op"]);
  EXPECT_TRUE(v["before"].is_null());
  EXPECT_EQ(J(R"({"id":42,"note":"second","total":"1"})"), v["after"]);
  EXPECT_EQ(R"({"id":42})", r.key);
  EXPECT_EQ(DeterministicEventId(kTx.commit_lsn, 1), r.headers[0].value);
}

TEST_F(ChangeMapperTest, UpdateThatChangesTheKeyHasTheOldKeyAsBeforeAndTheNewKeyAsKey) {
  Record r = Update(Orders(), OldUpdate::kKey, Tuple({T("41"), N(), N()}), Tuple({T("42"), T("x"), N()}));
  EXPECT_EQ(J(R"({"id":41})"), Value(r)["before"]);
  EXPECT_EQ(R"({"id":42})", r.key);
}

TEST_F(ChangeMapperTest, UpdateWithReplicaIdentityFullHasTheWholeOldRow) {
  Record r =
      Update(Orders(), OldUpdate::kFull, Tuple({T("42"), T("a"), T("1.10")}), Tuple({T("42"), T("b"), T("1.10")}));
  EXPECT_EQ(J(R"({"id":42,"note":"a","total":"1.10"})"), Value(r)["before"]);
  EXPECT_EQ(J(R"({"id":42,"note":"b","total":"1.10"})"), Value(r)["after"]);
}

TEST_F(ChangeMapperTest, UnchangedToastIsAnExplicitPlaceholderNeverNull) {
  Record r = Update(Orders(), OldUpdate::kNone, std::nullopt, Tuple({T("42"), U(), T("3")}));
  EXPECT_EQ("__outboxd_unchanged_toast", Value(r)["after"]["note"]);
  EXPECT_EQ(std::string(kUnchangedToastPlaceholder), Value(r)["after"]["note"]);
}

TEST_F(ChangeMapperTest, AnUnchangedToastKeyIsTakenFromTheOldTuple) {
  auto rel = Relation("public", "docs", {Key("path", kText), Col("body", kText)});
  Record r = Update(rel, OldUpdate::kKey, Tuple({T("/a"), N()}), Tuple({U(), T("new")}));
  EXPECT_EQ(R"({"path":"/a"})", r.key);
}

// --- Delete and truncate ----------------------------------------------------

TEST_F(ChangeMapperTest, DeleteHasTheOldKeyAsBeforeNullAfterAndTheKeyFromTheOldTuple) {
  Record r = Delete(Orders(), OldDelete::kKey, Tuple({T("42"), N(), N()}));
  Json v = Value(r);
  EXPECT_EQ("d", v["op"]);
  EXPECT_EQ(J(R"({"id":42})"), v["before"]);
  EXPECT_TRUE(v["after"].is_null());
  EXPECT_EQ(R"({"id":42})", r.key);
}

TEST_F(ChangeMapperTest, DeleteWithReplicaIdentityFullHasTheWholeOldRow) {
  Record r = Delete(Orders(), OldDelete::kFull, Tuple({T("42"), T("gone"), T("0.01")}));
  EXPECT_EQ(J(R"({"id":42,"note":"gone","total":"0.01"})"), Value(r)["before"]);
  EXPECT_EQ(R"({"id":42})", r.key);
}

TEST_F(ChangeMapperTest, TruncateGivesOneRecordPerRelationWithNullKeyBeforeAndAfter) {
  auto orders = Orders();
  auto lines = Relation("shop", "lines", {Key("id", kInt4)});
  auto r = mapper_.MapTruncate({TruncateMsg::kCascade, {orders, lines}}, kTx, 5);
  ASSERT_TRUE(r.ok()) << r.status().message();
  ASSERT_EQ(2u, r->size());
  EXPECT_EQ("pg.public.orders", (*r)[0].topic);
  EXPECT_EQ("pg.shop.lines", (*r)[1].topic);
  for (std::size_t i = 0; i < 2; ++i) {
    Json v = Value((*r)[i]);
    EXPECT_EQ("t", v["op"]);
    EXPECT_TRUE(v["before"].is_null());
    EXPECT_TRUE(v["after"].is_null());
    EXPECT_EQ(std::nullopt, (*r)[i].key);
    EXPECT_EQ(DeterministicEventId(kTx.commit_lsn, 5 + i), (*r)[i].headers[0].value);
  }
}

// --- Malformed input --------------------------------------------------------

TEST_F(ChangeMapperTest, ATupleWhoseColumnCountDiffersFromItsRelationIsAnError) {
  EXPECT_CONTAINS(Error(mapper_.MapInsert({Orders(), Tuple({T("1")})}, kTx, 0)),
                  "tuple of \"public.orders\" has 1 columns, the relation has 3");
}

TEST_F(ChangeMapperTest, ABinaryColumnIsAnError) {
  auto r = mapper_.MapInsert({Orders(), Tuple({T("1"), {Kind::kBinary, "x"}, N()})}, kTx, 0);
  EXPECT_CONTAINS(Error(r), "column \"note\" of \"public.orders\" is in binary format");
}

// --- Deterministic ids ------------------------------------------------------

TEST(DeterministicEventIdTest, SpellsTheLsnAndIndexAsAVersion8Uuid) {
  EXPECT_EQ("00000016-b374-8d84-8800-000000000003", DeterministicEventId(Lsn(0x16'B374D848), 3));
  EXPECT_EQ("ffffffff-ffff-8fff-8fff-ffffffffffff", DeterministicEventId(Lsn(~0ULL), (1ULL << 56) - 1));
  EXPECT_EQ("00000000-0000-8000-8000-000000000000", DeterministicEventId(Lsn(), 0));
}

TEST(DeterministicEventIdTest, SnapshotRowsAndNonTransactionalMessagesHaveTheirOwnIds) {
  const Lsn lsn(0x16'B374D848);
  EXPECT_EQ("00000016-b374-8d84-8880-000000000000", DeterministicEventId(lsn, kSnapshotIndexFlag));
  EXPECT_EQ("00000016-b374-8d84-8840-000000000000", DeterministicEventId(lsn, kNonTransactionalIndexFlag));
  EXPECT_NE(DeterministicEventId(lsn, 0), DeterministicEventId(lsn, kSnapshotIndexFlag | 0));
  EXPECT_NE(DeterministicEventId(lsn, 7), DeterministicEventId(lsn, kNonTransactionalIndexFlag | 7));
}

TEST(DeterministicEventIdTest, IsIdenticalOnReplay) {
  EXPECT_EQ(DeterministicEventId(Lsn(0x1'00000010), 12), DeterministicEventId(Lsn(0x1'00000010), 12));
}

TEST(DeterministicEventIdTest, DiffersAcrossIndexesAndLsns) {
  const Lsn lsn(0x1'00000010);
  EXPECT_NE(DeterministicEventId(lsn, 0), DeterministicEventId(lsn, 1));
  EXPECT_NE(DeterministicEventId(lsn, 1), DeterministicEventId(Lsn(0x1'00000011), 1));
  EXPECT_NE(DeterministicEventId(lsn, 1), DeterministicEventId(Lsn(0x2'00000010), 1));
  EXPECT_NE(DeterministicEventId(Lsn(0x1), 0), DeterministicEventId(Lsn(0x10), 0)) << "the low nibble counts";
}

// --- Type mapping -----------------------------------------------------------

TEST(PgTextToJsonTest, BoolIsTrueOrFalse) {
  EXPECT_EQ(Json(true), Map(kBool, "t"));
  EXPECT_EQ(Json(false), Map(kBool, "f"));
}

TEST(PgTextToJsonTest, IntegersAndOidsAreNumbers) {
  EXPECT_EQ(J("-32768"), Map(kInt2, "-32768"));
  EXPECT_EQ(J("2147483647"), Map(kInt4, "2147483647"));
  EXPECT_EQ("9223372036854775807", Map(kInt8, "9223372036854775807").dump());
  EXPECT_EQ("-9223372036854775808", Map(kInt8, "-9223372036854775808").dump());
  EXPECT_EQ("4294967295", Map(kOid, "4294967295").dump());
}

TEST(PgTextToJsonTest, FloatsAreNumbersButNanAndInfinityAreStrings) {
  EXPECT_EQ("1.5", Map(kFloat8, "1.5").dump());
  EXPECT_EQ("1.1", Map(kFloat4, "1.1").dump());
  EXPECT_EQ("-1e-300", Map(kFloat8, "-1e-300").dump());
  EXPECT_EQ(Json("NaN"), Map(kFloat8, "NaN"));
  EXPECT_EQ(Json("Infinity"), Map(kFloat8, "Infinity"));
  EXPECT_EQ(Json("-Infinity"), Map(kFloat4, "-Infinity"));
}

TEST(PgTextToJsonTest, NumericIsAStringThatKeepsEveryDigit) {
  EXPECT_EQ(Json("12345678901234567890.123456789"), Map(kNumeric, "12345678901234567890.123456789"));
  EXPECT_EQ(Json("0.10"), Map(kNumeric, "0.10"));
  EXPECT_EQ(Json("NaN"), Map(kNumeric, "NaN"));
}

TEST(PgTextToJsonTest, JsonAndJsonbAreEmbedded) {
  EXPECT_EQ(J(R"({"a": [1, 2, {"b": null}]})"), Map(kJsonb, R"({"a": [1, 2, {"b": null}]})"));
  EXPECT_EQ(R"({"z":1,"a":2})", Map(kJson, R"({"z": 1, "a": 2})").dump()) << "key order kept";
  EXPECT_EQ(Json("just text"), Map(kJsonb, R"("just text")"));
  EXPECT_EQ(Json(nullptr), Map(kJsonb, "null"));
}

TEST(PgTextToJsonTest, JsonThatDoesNotParseIsAString) { EXPECT_EQ(Json("{oops"), Map(kJson, "{oops")); }

TEST(PgTextToJsonTest, TextTypesAreStrings) {
  EXPECT_EQ(Json("héllo \"quoted\"\n"), Map(kText, "héllo \"quoted\"\n"));
  EXPECT_EQ(Json("v"), Map(kVarchar, "v"));
  EXPECT_EQ(Json("ab  "), Map(kBpchar, "ab  "));
  EXPECT_EQ(Json("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), Map(kUuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
  EXPECT_EQ(Json("123"), Map(kText, "123")) << "never a number";
}

TEST(PgTextToJsonTest, UnknownTypesAreTheirTextForm) {
  EXPECT_EQ(Json("(1,2)"), Map(600 /* point */, "(1,2)"));
  EXPECT_EQ(Json("1 day 02:00:00"), Map(1186 /* interval */, "1 day 02:00:00"));
}

TEST(PgTextToJsonTest, ByteaIsBase64OfTheBytes) {
  EXPECT_EQ(Json("AP8Q"), Map(kBytea, "\\x00ff10"));
  EXPECT_EQ(Json(""), Map(kBytea, "\\x"));
  EXPECT_EQ(Json("/w=="), Map(kBytea, "\\xff"));
  EXPECT_EQ(Json("aGk="), Map(kBytea, "\\x6869"));
  EXPECT_EQ(Json("SGVsbG8="), Map(kBytea, "\\x48656C6C6F")) << "upper-case hex";
}

TEST(PgTextToJsonTest, ByteaInEscapeFormatIsDecodedToo) {
  EXPECT_EQ(Json("YVxiAQ=="), Map(kBytea, "a\\\\b\\001"));  // bytes 'a' '\' 'b' 0x01
}

TEST(PgTextToJsonTest, TimestamptzIsIso8601InUtc) {
  EXPECT_EQ(Json("2026-11-23T12:00:00.123456Z"), Map(kTimestamptz, "2026-11-23 13:00:00.123456+01"));
  EXPECT_EQ(Json("2026-11-23T12:00:00Z"), Map(kTimestamptz, "2026-11-23 12:00:00+00"));
  EXPECT_EQ(Json("2026-11-23T18:00:00.5Z"), Map(kTimestamptz, "2026-11-23 23:30:00.5+05:30"));
  EXPECT_EQ(Json("2027-01-01T04:59:59Z"), Map(kTimestamptz, "2026-12-31 23:59:59-05")) << "into the next year";
  EXPECT_EQ(Json("2024-02-29T23:00:00Z"), Map(kTimestamptz, "2024-03-01 00:00:00+01")) << "leap day";
  EXPECT_EQ(Json("1900-01-01T00:00:00Z"), Map(kTimestamptz, "1900-01-01 00:19:32+00:19:32")) << "LMT offsets";
}

TEST(PgTextToJsonTest, TimestamptzThatIsNotIsoIsItsTextForm) {
  EXPECT_EQ(Json("infinity"), Map(kTimestamptz, "infinity"));
  EXPECT_EQ(Json("-infinity"), Map(kTimestamptz, "-infinity"));
  EXPECT_EQ(Json("0044-03-15 12:00:00+00 BC"), Map(kTimestamptz, "0044-03-15 12:00:00+00 BC"));
}

TEST(PgTextToJsonTest, TimestampIsIso8601WithoutZone) {
  EXPECT_EQ(Json("2026-11-23T12:00:00.123456"), Map(kTimestamp, "2026-11-23 12:00:00.123456"));
  EXPECT_EQ(Json("2026-11-23T12:00:00"), Map(kTimestamp, "2026-11-23 12:00:00"));
}

TEST(PgTextToJsonTest, DateIsYearMonthDay) { EXPECT_EQ(Json("2026-11-23"), Map(kDate, "2026-11-23")); }

TEST(PgTextToJsonTest, IntArrayIsAJsonArrayWithNulls) {
  EXPECT_EQ(J("[1,null,-3]"), Map(kInt4Array, "{1,NULL,-3}"));
  EXPECT_EQ(J("[]"), Map(kInt4Array, "{}"));
}

TEST(PgTextToJsonTest, TextArrayUnquotesAndUnescapes) {
  EXPECT_EQ(J(R"(["plain","with space","a\"quote","back\\slash","NULL",null,"",","])"),
            Map(kTextArray, R"({plain,"with space","a\"quote","back\\slash","NULL",NULL,"",","})"));
}

TEST(PgTextToJsonTest, ArrayElementsAreMappedByTheElementType) {
  EXPECT_EQ(J(R"(["12345678901234567890.123456789","1"])"), Map(kNumericArray, "{12345678901234567890.123456789,1}"));
  EXPECT_EQ(J(R"(["2026-11-23T12:00:00Z"])"), Map(kTimestamptzArray, R"({"2026-11-23 13:00:00+01"})"));
  EXPECT_EQ(J(R"([{"a":1},[2]])"), Map(kJsonbArray, R"({"{\"a\": 1}","[2]"})"));
}

TEST(PgTextToJsonTest, NestedArraysAreNestedJsonArrays) {
  EXPECT_EQ(J("[[1,2],[3,4]]"), Map(kInt4Array, "{{1,2},{3,4}}"));
}

TEST(PgTextToJsonTest, ArraysThatDoNotParseOrHaveExplicitBoundsAreTheirTextForm) {
  EXPECT_EQ(Json("[0:1]={1,2}"), Map(kInt4Array, "[0:1]={1,2}"));
  EXPECT_EQ(Json("{1,2"), Map(kInt4Array, "{1,2"));
  EXPECT_EQ(Json("{\"a}"), Map(kTextArray, "{\"a}"));
}

TEST(PgTextToJsonTest, AnUnknownTypeNamedWithAnUnderscoreIsAnArrayOfStrings) {
  const TypeMsg mood_array{70001, "public", "_mood"};
  const TypeMsg mood{70000, "public", "mood"};
  TypeLookup types = [&](uint32_t oid) -> const TypeMsg* {
    if (oid == mood_array.oid) return &mood_array;
    if (oid == mood.oid) return &mood;
    return nullptr;
  };
  EXPECT_EQ(J(R"(["happy",null])"), PgTextToJson(70001, "{happy,NULL}", types));
  EXPECT_EQ(Json("happy"), PgTextToJson(70000, "happy", types));
  EXPECT_EQ(Json("{happy}"), PgTextToJson(70001, "{happy}")) << "without the lookup: text";
}

TEST_F(ChangeMapperTest, EveryCommonTypeInOneRow) {
  auto rel = Relation("public", "all_types",
                      {Key("id", kInt8), Col("ok", kBool), Col("price", kNumeric), Col("doc", kJsonb),
                       Col("raw", kBytea), Col("at", kTimestamptz), Col("tags", kTextArray)});
  Json after =
      Value(Insert(rel, Tuple({T("1"), T("t"), T("12345678901234567890.123456789"), T(R"({"k": [1]})"), T("\\x00ff10"),
                               T("2026-11-23 13:00:00.123456+01"), T(R"({a,"b c",NULL})")})))["after"];
  EXPECT_EQ(J(R"({"id":1,"ok":true,"price":"12345678901234567890.123456789","doc":{"k":[1]},)"
              R"("raw":"AP8Q","at":"2026-11-23T12:00:00.123456Z","tags":["a","b c",null]})"),
            after);
}

// --- Logical decoding messages → outbox rows --------------------------------

LogicalMsg Message(std::string prefix, std::string content) {
  return {LogicalMsg::kTransactionalFlag, Lsn(0x1'0000ABCD), std::move(prefix), std::move(content)};
}

class OutboxMessageTest : public ::testing::Test {
 protected:
  OutboxMessage Parse(const std::string& content) {
    auto r = ParseOutboxMessage(Message("outbox", content), "outbox");
    EXPECT_TRUE(r.ok()) << r.status().message();
    if (!r.ok() || !r->has_value()) {
      ADD_FAILURE() << "no message";
      return {};
    }
    return **r;
  }
  std::string Error(const std::string& content) {
    auto r = ParseOutboxMessage(Message("outbox", content), "outbox");
    EXPECT_FALSE(r.ok()) << content;
    if (r.ok()) return {};
    EXPECT_EQ(StatusCode::kPermanent, r.status().code());
    return r.status().message();
  }
  // Routes as the cdc source does ([cdc] defaults: the Debezium [[outbox]]
  // mapping), in `format`.
  Record Route(const OutboxMessage& m, EventFormat format = EventFormat::kDebezium) {
    CdcConfig cdc;
    cdc.format = format;
    auto router = Router::Create(MessageRouting(cdc));
    EXPECT_TRUE(router.ok());
    auto rec = router->Route(m.row);
    EXPECT_TRUE(rec.ok()) << rec.status().message();
    if (!rec.ok()) return {};
    AppendMessageHeaders(m, *rec);
    return std::move(rec).value();
  }
};

TEST_F(OutboxMessageTest, AMessageWithAnotherPrefixIsIgnored) {
  auto r = ParseOutboxMessage(Message("audit", "not even json"), "outbox");
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->has_value());
}

TEST_F(OutboxMessageTest, RoutesExactlyLikeAnOutboxRow) {
  OutboxMessage m = Parse(R"({"id":"5f0c3c1e-0000-4000-8000-000000000001","aggregatetype":"Order",)"
                          R"("aggregateid":"42","type":"OrderPlaced","payload":{"total":"9.90","items":[1,2]}})");
  Record r = Route(m);
  EXPECT_EQ("outbox.event.Order", r.topic);
  EXPECT_EQ("42", r.key);
  EXPECT_EQ(R"({"total":"9.90","items":[1,2]})", r.value) << "payload as compact JSON, key order kept";
  ASSERT_EQ(1u, r.headers.size());
  EXPECT_EQ((Header{"id", "5f0c3c1e-0000-4000-8000-000000000001"}), r.headers[0]);
}

TEST_F(OutboxMessageTest, EveryTopLevelMemberIsAColumnStringsByTheirContents) {
  OutboxMessage m = Parse(R"({"id":"e1","aggregatetype":"A","aggregateid":7,"type":null,"payload":"x"})");
  EXPECT_EQ((std::vector<std::string>{"id", "aggregatetype", "aggregateid", "type", "payload"}), m.row.columns);
  EXPECT_EQ((std::vector<std::optional<std::string>>{"e1", "A", "7", std::nullopt, "x"}), m.row.values);
}

TEST_F(OutboxMessageTest, AStringPayloadIsItsContentsAsTheValue) {
  Record r = Route(Parse(R"({"id":"e1","aggregatetype":"A","aggregateid":"1","payload":"plain \"text\""})"));
  EXPECT_EQ("plain \"text\"", r.value);
}

TEST_F(OutboxMessageTest, ANullPayloadIsATombstone) {
  Record r = Route(Parse(R"({"id":"e1","aggregatetype":"A","aggregateid":"1","payload":null})"));
  EXPECT_EQ(std::nullopt, r.value);
}

TEST_F(OutboxMessageTest, HeadersAreAppendedAfterTheRoutersInContentOrder) {
  Record r = Route(Parse(R"({"id":"e1","aggregatetype":"A","aggregateid":"1","payload":{},)"
                         R"("headers":{"z":"1","b":"2"}})"));
  EXPECT_EQ((std::vector<Header>{{"id", "e1"}, {"z", "1"}, {"b", "2"}}), r.headers);
}

constexpr char kTraceparent[] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

TEST_F(OutboxMessageTest, TheTraceContextOfTheHeadersIsCarriedOnce) {
  const std::string content =
      std::string(R"({"id":"e1","aggregatetype":"A","aggregateid":"1","type":"T","payload":{},)") +
      R"("headers":{"h":"v","tracestate":"congo=t61rcWkgMzE","traceparent":")" + kTraceparent + R"("}})";
  const OutboxMessage m = Parse(content);
  EXPECT_EQ((std::vector<Header>{{"h", "v"}}), m.headers);
  EXPECT_EQ((std::vector<Header>{
                {"id", "e1"}, {"traceparent", kTraceparent}, {"tracestate", "congo=t61rcWkgMzE"}, {"h", "v"}}),
            Route(m).headers);
  const Record binary = Route(m, EventFormat::kCloudEventsBinary);
  auto has = [&](const std::string& name, const std::string& value) {
    return std::find(binary.headers.begin(), binary.headers.end(), Header{name, value}) != binary.headers.end();
  };
  EXPECT_TRUE(has("ce_traceparent", kTraceparent));
  EXPECT_TRUE(has("ce_tracestate", "congo=t61rcWkgMzE"));
  EXPECT_TRUE(has("traceparent", kTraceparent));
}

TEST_F(OutboxMessageTest, AMalformedTraceparentInTheHeadersIsDroppedWithItsTracestate) {
  for (const char* traceparent : {"00-ab-cd-01", "", "00-00000000000000000000000000000000-b7ad6b7169203331-01"}) {
    const Record r = Route(Parse(std::string(R"({"id":"e1","aggregatetype":"A","aggregateid":"1","payload":{},)") +
                                 R"("headers":{"traceparent":")" + traceparent + R"(","tracestate":"a=1"}})"));
    EXPECT_EQ((std::vector<Header>{{"id", "e1"}}), r.headers) << traceparent;
  }
}

TEST_F(OutboxMessageTest, AMessageWithoutIdGetsTheDeterministicIdOfItsPlace) {
  for (const char* content : {R"({"aggregatetype":"A","aggregateid":"1","payload":{}})",
                              R"({"id":null,"aggregatetype":"A","aggregateid":"1","payload":{}})"}) {
    OutboxMessage m = Parse(content);
    EnsureMessageId(m, Lsn(0x16B374D848), 3);
    Record r = Route(m);
    ASSERT_FALSE(r.headers.empty()) << content;
    EXPECT_EQ((Header{"id", "00000016-b374-8d84-8800-000000000003"}), r.headers[0]) << content;
  }
  OutboxMessage keeps = Parse(R"({"id":"e1","aggregatetype":"A","aggregateid":"1","payload":{}})");
  EnsureMessageId(keeps, Lsn(1), 0);
  EXPECT_EQ((Header{"id", "e1"}), Route(keeps).headers[0]) << "an id of its own is kept";
}

TEST_F(OutboxMessageTest, MalformedContentIsAPermanentErrorNamingTheLsn) {
  EXPECT_CONTAINS(Error("not json"),
                  "logical decoding message at LSN 1/ABCD with prefix \"outbox\": content is not valid JSON");
  EXPECT_CONTAINS(Error("[1,2]"), "not a JSON object");
  EXPECT_CONTAINS(Error(R"({"id":""})"), "\"id\" is empty");
  EXPECT_CONTAINS(Error(R"({"id":"e","headers":[1]})"), "\"headers\" is not an object");
  EXPECT_CONTAINS(Error(R"({"id":"e","headers":{"n":1}})"), "header \"n\" is not a string");
  EXPECT_CONTAINS(Error(R"({"id":"e","headers":{"id":"x"}})"), "may not set \"id\"");
}

// --- Outbox table inserts → rows --------------------------------------------

TEST(OutboxInsertToRowTest, GivesColumnNamesAndTextValues) {
  auto rel = Relation("public", "outbox", {Key("id", kUuid), Col("aggregatetype", kText), Col("payload", kJsonb)});
  auto row = OutboxInsertToRow({rel, Tuple({T("e1"), N(), T(R"({"a": 1})")})});
  ASSERT_TRUE(row.ok()) << row.status().message();
  EXPECT_EQ((std::vector<std::string>{"id", "aggregatetype", "payload"}), row->columns);
  EXPECT_EQ((std::vector<std::optional<std::string>>{"e1", std::nullopt, R"({"a": 1})"}), row->values)
      << "values as stored, not re-serialised";
}

TEST(OutboxInsertToRowTest, UnchangedToastOrBinaryIsAnError) {
  auto rel = Relation("public", "outbox", {Key("id", kUuid), Col("payload", kJsonb)});
  auto toast = OutboxInsertToRow({rel, Tuple({T("e1"), U()})});
  ASSERT_FALSE(toast.ok());
  EXPECT_EQ(StatusCode::kPermanent, toast.status().code());
  EXPECT_CONTAINS(toast.status().message(), "outbox table \"public.outbox\": column \"payload\"");
  auto binary = OutboxInsertToRow({rel, Tuple({T("e1"), {Kind::kBinary, "x"}})});
  EXPECT_FALSE(binary.ok());
  EXPECT_FALSE(OutboxInsertToRow({rel, Tuple({T("e1")})}).ok()) << "column count";
}

}  // namespace
}  // namespace outboxd
