// CloudEvents interop (issue 13): the built outboxd binary writes an outbox
// table's events in each CloudEvents mode, and the official CloudEvents
// Python SDK's Kafka binding (PyPI "cloudevents", installed by
// tests/harness/cloudevents-sdk.sh) reads every record back; its attributes
// and data must be what the rows held. A record the SDK rejects fails the
// test with the SDK's error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <ctime>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "common/pg.h"
#include "tests/integration/relay_test_support.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;
using Json = nlohmann::json;

constexpr char kTraceparent[] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

enum class Sdk : uint8_t { kPython, kJavaScript };

// The command line of a consumer on the official SDK of `sdk` (the SDK is
// installed once by cloudevents-sdk.sh, then cached).
std::vector<std::string> SdkReader(Sdk sdk) {
  const bool python = sdk == Sdk::kPython;
  const CommandResult r =
      RunCommand({"bash", HarnessScript("cloudevents-sdk.sh"), python ? "python" : "javascript"}, 600s);
  if (r.exit_code != 0) throw HarnessError("cloudevents-sdk.sh failed:\n" + r.output);
  std::string path = r.output;
  while (!path.empty() && path.back() == '\n') path.pop_back();
  path = path.substr(path.rfind('\n') + 1);
  if (python) return {path, HarnessScript("cloudevents_read.py")};
  return {"env", "NODE_PATH=" + path, "node", HarnessScript("cloudevents_read.js")};
}

// What the SDK of `sdk` made of each record, by CloudEvents id.
std::map<std::string, Json> ReadWithSdk(const std::vector<KafkaRecord>& records, Sdk sdk) {
  std::string lines;
  for (const KafkaRecord& r : records) {
    Json headers = Json::array();
    for (const auto& [name, value] : r.headers) {
      headers.push_back(name);
      headers.push_back(value);
    }
    lines += Json{{"offset", r.offset},
                  {"headers", headers},
                  {"key", r.key ? Json(*r.key) : Json()},
                  {"payload", r.value ? Json(*r.value) : Json()}}
                 .dump() +
             "\n";
  }
  const CommandResult r = RunCommand(SdkReader(sdk), 60s, lines);
  EXPECT_EQ(0, r.exit_code) << (sdk == Sdk::kPython ? "Python" : "JavaScript") << " SDK: " << r.output;
  std::map<std::string, Json> events;
  std::size_t start = 0;
  while (start < r.output.size()) {
    const std::size_t end = r.output.find('\n', start);
    const std::string line = r.output.substr(start, end - start);
    start = end == std::string::npos ? r.output.size() : end + 1;
    if (line.empty() || line.front() != '{') continue;
    Json event = Json::parse(line);
    const std::string id = event["attributes"].value("id", "");
    events[id] = std::move(event);
  }
  return events;
}

// Milliseconds since the epoch of an RFC 3339 time in UTC as either SDK
// prints it ("…T22:00:00.123000+00:00", "…T22:00:00.123Z").
int64_t InstantMillis(const std::string& text) {
  std::tm tm{};
  const char* rest = strptime(text.c_str(), "%Y-%m-%dT%H:%M:%S", &tm);
  if (rest == nullptr) return -1;
  int64_t ms = static_cast<int64_t>(timegm(&tm)) * 1000;
  if (*rest == '.') {
    int64_t scale = 100;
    for (++rest; std::isdigit(static_cast<unsigned char>(*rest)) != 0; ++rest, scale /= 10) ms += (*rest - '0') * scale;
  }
  return std::string_view(rest) == "Z" || std::string_view(rest) == "+00:00" ? ms : -1;
}

// Both SDKs read the records and must agree on every event (times compared
// as instants); returns what the Python SDK made of them.
std::map<std::string, Json> ReadWithSdks(const std::vector<KafkaRecord>& records) {
  std::map<std::string, Json> python = ReadWithSdk(records, Sdk::kPython);
  const std::map<std::string, Json> javascript = ReadWithSdk(records, Sdk::kJavaScript);
  EXPECT_EQ(python.size(), javascript.size());
  auto comparable = [](Json event) {
    Json& attributes = event["attributes"];
    if (attributes.contains("time")) attributes["time"] = InstantMillis(attributes["time"].get<std::string>());
    event.erase("offset");
    return event;
  };
  for (const auto& [id, event] : python) {
    const auto js = javascript.find(id);
    if (js == javascript.end()) {
      ADD_FAILURE() << "the JavaScript SDK did not read event " << id;
      continue;
    }
    EXPECT_EQ(comparable(event), comparable(js->second))
        << "Python: " << event.dump() << "\nJavaScript: " << js->second.dump();
  }
  return python;
}

// An instant as Python's datetime.isoformat() prints what the SDK parsed.
std::string PythonIsoFormat(int64_t epoch_ms) {
  const std::time_t seconds = static_cast<std::time_t>(epoch_ms / 1000);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  std::string out = buf;
  if (epoch_ms % 1000 != 0) {
    std::snprintf(buf, sizeof buf, ".%03d000", static_cast<int>(epoch_ms % 1000));
    out += buf;
  }
  return out + "+00:00";
}

// The CloudEvents id of a record: its ce_id header in binary mode, the
// envelope's "id" in structured mode; "" when it has neither.
std::string CloudEventId(const KafkaRecord& r) {
  for (const auto& [name, value] : r.headers) {
    if (name == "ce_id") return value;
  }
  if (!r.value) return "";
  const Json envelope = Json::parse(*r.value, nullptr, /*allow_exceptions=*/false);
  return envelope.is_object() ? envelope.value("id", "") : "";
}

// Every copy of an event (records with the same CloudEvents id) must be the
// same record: key, value and headers byte for byte, so a consumer that
// drops the CloudEvents it has seen by id loses nothing. Returns the ids and
// prints how many records were copies.
std::set<std::string> ExpectCopiesIdentical(const std::vector<KafkaRecord>& records) {
  std::map<std::string, const KafkaRecord*> first;
  for (const KafkaRecord& r : records) {
    const std::string id = CloudEventId(r);
    EXPECT_FALSE(id.empty()) << "record without a CloudEvents id at offset " << r.offset;
    const auto [it, inserted] = first.emplace(id, &r);
    if (inserted) continue;
    const KafkaRecord& original = *it->second;
    EXPECT_EQ(original.key, r.key) << "id " << id;
    EXPECT_EQ(original.value, r.value) << "id " << id;
    EXPECT_EQ(original.headers, r.headers) << "id " << id;
  }
  std::cout << "[ stats    ] " << first.size() << " events, " << records.size() << " records, "
            << records.size() - first.size() << " copies\n";
  std::set<std::string> ids;
  for (const auto& [id, record] : first) ids.insert(id);
  return ids;
}

class CloudEventsInteropTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    db_.Exec(OutboxDdl("outbox"));
    db_.Exec(
        "ALTER TABLE outbox ADD COLUMN created_ms bigint, ADD COLUMN trace text, ADD COLUMN state text, "
        "ADD COLUMN corr text");
    type_ = UniqueTopic("ce");
  }

  std::string Config() const {
    return "[postgres]\nconninfo = \"" + db_.conninfo() + "\"\n[kafka]\nbootstrap_servers = \"" +
           SharedServices().kafka_bootstrap +
           "\"\n[[outbox]]\ntable = \"public.outbox\"\npoll_interval = \"100ms\"\nformat = \"cloudevents-" +
           GetParam() +
           "\"\ntimestamp = \"created_ms\"\ntraceparent = \"trace\"\ntracestate = \"state\"\n"
           "[outbox.cloudevents]\nsource = \"/orders-service\"\n"
           "[outbox.cloudevents.extensions]\ncorrelationid = \"corr\"\n";
  }

  // Inserts a row; returns its id.
  std::string Insert(const std::string& key, const std::string& type, const std::string& payload_sql,
                     const std::string& created_ms, const std::string& trace_sql, const std::string& corr_sql) {
    return db_.QueryString(
        "INSERT INTO outbox (aggregatetype, aggregateid, type, payload, created_ms, trace, state, "
        "corr) VALUES ('" +
        type_ + "', '" + key + "', '" + type + "', " + payload_sql + ", " + created_ms + ", " + trace_sql +
        ", 'congo=t61rcWkgMzE', " + corr_sql + ") RETURNING id");
  }

  TestDatabase db_;
  std::string type_;
};

TEST_P(CloudEventsInteropTest, TheSdkReadsEveryRecordWithTheAttributesTheRowsHeld) {
  const std::string created = Insert("order-1", "OrderCreated", "'{\"total\": 12.5}'", "1796680800123",
                                     std::string("'") + kTraceparent + "'", "'c-1'");
  const std::string paid = Insert("order-2", "OrderPaid", "NULL", "1796680800456", "'bogus'", "NULL");
  const std::string shipped =
      Insert("order-3", "OrderShipped", "'\"just a string\"'", "1796680801000", "NULL", "'c-3'");

  OutboxdProcess outboxd(Config());
  outboxd.Start();
  const auto records = ConsumeTopic(SharedServices().kafka_bootstrap, "outbox.event." + type_, 3, 60s);
  ASSERT_EQ(3u, records.size()) << outboxd.Log();
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();

  const std::map<std::string, Json> events = ReadWithSdks(records);
  ASSERT_EQ(3u, events.size());
  for (const auto& [id, key, type, time] :
       {std::tuple{created, "order-1", "OrderCreated", "2026-12-07T22:00:00.123000+00:00"},
        std::tuple{paid, "order-2", "OrderPaid", "2026-12-07T22:00:00.456000+00:00"},
        std::tuple{shipped, "order-3", "OrderShipped", "2026-12-07T22:00:01+00:00"}}) {
    SCOPED_TRACE(type);
    ASSERT_TRUE(events.contains(id));
    const Json& a = events.at(id)["attributes"];
    EXPECT_EQ("1.0", a.value("specversion", ""));
    EXPECT_EQ("/orders-service", a.value("source", ""));
    EXPECT_EQ(type, a.value("type", ""));
    EXPECT_EQ(key, a.value("subject", ""));
    EXPECT_EQ(key, a.value("partitionkey", ""));  // the record key, as the binding maps it
    EXPECT_EQ(time, a.value("time", ""));
    // An event without data (the NULL payload) has no data content type.
    EXPECT_EQ(id == paid ? "" : "application/json", a.value("datacontenttype", ""));
  }
  const Json& first = events.at(created);
  EXPECT_EQ(Json::parse(R"({"total": 12.5})"), first["data"]);
  EXPECT_EQ("c-1", first["attributes"].value("correlationid", ""));
  EXPECT_EQ(kTraceparent, first["attributes"].value("traceparent", ""));
  EXPECT_EQ("congo=t61rcWkgMzE", first["attributes"].value("tracestate", ""));

  // A NULL payload has no data; a NULL extension value and a malformed
  // traceparent (with its tracestate) are left out.
  const Json& second = events.at(paid);
  EXPECT_TRUE(second["data"].is_null()) << second.dump();
  EXPECT_FALSE(second["attributes"].contains("correlationid")) << second.dump();
  EXPECT_FALSE(second["attributes"].contains("traceparent")) << second.dump();
  EXPECT_FALSE(second["attributes"].contains("tracestate")) << second.dump();

  const Json& third = events.at(shipped);
  EXPECT_EQ(Json("just a string"), third["data"]);
  EXPECT_FALSE(third["attributes"].contains("traceparent")) << third.dump();

  // The W3C headers OpenTelemetry reads are there in both modes.
  for (const KafkaRecord& r : records) {
    const bool has_trace =
        std::find(r.headers.begin(), r.headers.end(),
                  std::pair<std::string, std::string>{"traceparent", kTraceparent}) != r.headers.end();
    EXPECT_EQ(r.key == "order-1", has_trace) << *r.key;
  }
}

// A crash between Kafka's ack and the row's deletion sends the event again;
// the copy must be the same CloudEvent. A lock holds outboxd's DELETE until
// it is killed, so every record published before the SIGKILL is sent again.
TEST_P(CloudEventsInteropTest, AnEventSentAgainAfterSigkillIsTheSameCloudEvent) {
  constexpr int kRows = 3000;
  db_.Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, payload, created_ms, trace, state, corr) SELECT '" +
           type_ + "', 'order-' || g % 7, 'OrderCreated', jsonb_build_object('n', g), 1796680800000 + g, '" +
           kTraceparent + "', 'congo=t61rcWkgMzE', 'c-' || g FROM generate_series(1, " + std::to_string(kRows) + ") g");
  std::set<std::string> rows;
  for (const auto& row : db_.Query("SELECT id::text FROM outbox")) rows.insert(*row[0]);
  const std::string topic = "outbox.event." + type_;
  KafkaAdmin().CreateTopic(topic, 3);

  auto lock = PgConn::Connect(db_.conninfo(), std::nullopt, "test-lock");
  ASSERT_TRUE(lock.ok()) << lock.status().message();
  ASSERT_TRUE(lock->Exec("BEGIN").ok());
  ASSERT_TRUE(lock->Exec("LOCK TABLE outbox IN SHARE MODE").ok());
  OutboxdProcess outboxd(Config());
  outboxd.Start();
  auto deletes_waiting = [&] {
    return db_.QueryInt64(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
        "AND query LIKE 'DELETE%'");
  };
  ASSERT_TRUE(WaitUntil([&] { return deletes_waiting() > 0; }, 60s)) << outboxd.Log();
  outboxd.Kill();
  (void)outboxd.WaitExit(30s);
  // Its session, still waiting in the DELETE, goes with it: the rows stay.
  (void)db_.Query(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND "
      "wait_event_type = 'Lock' AND query LIKE 'DELETE%'");
  ASSERT_TRUE(WaitUntil([&] { return deletes_waiting() == 0; }, 30s));
  ASSERT_TRUE(lock->Exec("COMMIT").ok());
  const std::size_t before_restart = ConsumeTopic(SharedServices().kafka_bootstrap, topic, 1, 30s).size();
  ASSERT_GT(before_restart, 0u);
  ASSERT_EQ(kRows, db_.QueryInt64("SELECT count(*) FROM outbox"));

  outboxd.Start();
  ASSERT_TRUE(WaitUntil([&] { return db_.QueryInt64("SELECT count(*) FROM outbox") == 0; }, 120s)) << outboxd.Log();
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();

  const auto records = ConsumeTopic(SharedServices().kafka_bootstrap, topic, kRows + before_restart, 60s);
  EXPECT_EQ(rows, ExpectCopiesIdentical(records));
  EXPECT_EQ(kRows + before_restart, records.size()) << "each record published before the SIGKILL, once more";
  // The SDK reads them all; dropped by id, the copies leave each row once.
  EXPECT_EQ(rows.size(), ReadWithSdks(records).size());
}

// The cdc source: row changes of a captured table and a
// pg_logical_emit_message event, read back by the SDK.
TEST_P(CloudEventsInteropTest, TheSdkReadsRowChangesAndMessagesOfTheCdcSource) {
  db_.Exec("CREATE TABLE items (id int PRIMARY KEY, name text)");
  std::string db = db_.name();
  std::transform(db.begin(), db.end(), db.begin(), [](unsigned char c) { return std::tolower(c); });
  const std::string items_topic = type_ + ".public.items";
  KafkaAdmin().CreateTopic(items_topic, 1);
  OutboxdProcess outboxd("[postgres]\nconninfo = \"" + db_.conninfo() + "\"\n[kafka]\nbootstrap_servers = \"" +
                         SharedServices().kafka_bootstrap + "\"\n[cdc]\nslot = \"s_" + db + "\"\npublication = \"p_" +
                         db + "\"\ncreate = true\ntables = [\"public.items\"]\ntopic_prefix = \"" + type_ +
                         "\"\nmessage_prefix = \"outbox\"\nformat = \"cloudevents-" + GetParam() + "\"\n");
  outboxd.Start();
  ASSERT_TRUE(outboxd.WaitForLog("streaming replication slot", 60s)) << outboxd.Log();
  db_.Exec("INSERT INTO items VALUES (1, 'one')");
  db_.Exec("UPDATE items SET name = 'uno' WHERE id = 1");
  db_.Exec("DELETE FROM items WHERE id = 1");
  db_.Exec(
      "SELECT pg_logical_emit_message(true, 'outbox', '{\"id\": \"m-1\", \"aggregatetype\": \"" + type_ +
      "\", \"aggregateid\": \"a-1\", \"type\": \"Ping\", \"payload\": {\"x\": 1}, \"headers\": {\"traceparent\": \"" +
      kTraceparent + "\", \"tracestate\": \"congo=t61rcWkgMzE\"}}')");
  const auto changes = ConsumeTopic(SharedServices().kafka_bootstrap, items_topic, 3, 60s);
  const auto messages = ConsumeTopic(SharedServices().kafka_bootstrap, "outbox.event." + type_, 1, 60s);
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
  ASSERT_EQ(3u, changes.size()) << outboxd.Log();
  ASSERT_EQ(1u, messages.size()) << outboxd.Log();

  const std::map<std::string, Json> events = ReadWithSdks(changes);
  ASSERT_EQ(3u, events.size());
  std::vector<std::string> ops;
  for (const KafkaRecord& r : changes) {
    const std::string id =
        std::find_if(r.headers.begin(), r.headers.end(), [](const auto& h) { return h.first == "id"; })->second;
    ASSERT_TRUE(events.contains(id)) << id;
    const Json& event = events.at(id);
    const std::string op = event["data"].value("op", "");
    ops.push_back(op);
    EXPECT_EQ("outboxd.change." + op, event["attributes"].value("type", ""));
    EXPECT_EQ("/outboxd/public.items", event["attributes"].value("source", ""));
    EXPECT_EQ("items", event["data"]["source"].value("table", ""));
    // time is the commit time, the envelope's ts_ms.
    EXPECT_EQ(PythonIsoFormat(event["data"].value("ts_ms", int64_t{0})), event["attributes"].value("time", ""));
  }
  EXPECT_EQ((std::vector<std::string>{"c", "u", "d"}), ops);

  const std::map<std::string, Json> message = ReadWithSdks(messages);
  ASSERT_TRUE(message.contains("m-1"));
  const Json& ping = message.at("m-1");
  EXPECT_EQ("Ping", ping["attributes"].value("type", ""));
  EXPECT_EQ("/outboxd/messages", ping["attributes"].value("source", ""));
  EXPECT_EQ("a-1", ping["attributes"].value("subject", ""));
  EXPECT_EQ(Json::parse(R"({"x": 1})"), ping["data"]);
  // Its time is its transaction's commit time, as for a row change.
  EXPECT_EQ(PythonIsoFormat(messages[0].timestamp_ms), ping["attributes"].value("time", ""));
  // The trace context of the message's headers.
  EXPECT_EQ(kTraceparent, ping["attributes"].value("traceparent", ""));
  EXPECT_EQ("congo=t61rcWkgMzE", ping["attributes"].value("tracestate", ""));
}

// A crash before the slot is confirmed streams the changes again: each copy
// must be the same CloudEvent (the id is derived from the commit's LSN).
// With confirmation held off, every change is sent again.
TEST_P(CloudEventsInteropTest, AChangeStreamedAgainAfterSigkillIsTheSameCloudEvent) {
  constexpr std::size_t kTransactions = 20;
  constexpr std::size_t kRowsEach = 50;
  db_.Exec("CREATE TABLE items (id int PRIMARY KEY, name text)");
  std::string db = db_.name();
  std::transform(db.begin(), db.end(), db.begin(), [](unsigned char c) { return std::tolower(c); });
  const std::string items_topic = type_ + ".public.items";
  const std::string messages_topic = "outbox.event." + type_;
  KafkaAdmin().CreateTopic(items_topic, 3);
  OutboxdProcess outboxd("[postgres]\nconninfo = \"" + db_.conninfo() + "\"\n[kafka]\nbootstrap_servers = \"" +
                         SharedServices().kafka_bootstrap + "\"\n[cdc]\nslot = \"s_" + db + "\"\npublication = \"p_" +
                         db + "\"\ncreate = true\ntables = [\"public.items\"]\ntopic_prefix = \"" + type_ +
                         "\"\nmessage_prefix = \"outbox\"\nformat = \"cloudevents-" + GetParam() +
                         "\"\nstatus_interval = \"1h\"\nconfirm_interval = \"1h\"\nconfirm_events = 1000000\n");
  outboxd.Start();
  ASSERT_TRUE(outboxd.WaitForLog("streaming replication slot", 60s)) << outboxd.Log();
  for (std::size_t t = 0; t < kTransactions; ++t) {
    db_.Exec("BEGIN; INSERT INTO items SELECT g, 'item ' || g FROM generate_series(" +
             std::to_string(t * kRowsEach + 1) + ", " + std::to_string((t + 1) * kRowsEach) +
             ") g; SELECT pg_logical_emit_message(true, 'outbox', '{\"aggregatetype\": \"" + type_ +
             "\", \"aggregateid\": \"a-" + std::to_string(t) + "\", \"type\": \"Batch\", \"payload\": {}}'); COMMIT");
  }
  constexpr std::size_t kChanges = kTransactions * kRowsEach;
  ASSERT_EQ(kChanges, ConsumeTopic(SharedServices().kafka_bootstrap, items_topic, kChanges, 60s).size())
      << outboxd.Log();
  ASSERT_EQ(kTransactions, ConsumeTopic(SharedServices().kafka_bootstrap, messages_topic, kTransactions, 60s).size())
      << outboxd.Log();
  outboxd.Kill();
  (void)outboxd.WaitExit(30s);

  outboxd.Start();  // waits for the slot the killed session held, then streams again
  const auto changes = ConsumeTopic(SharedServices().kafka_bootstrap, items_topic, 2 * kChanges, 90s);
  const auto messages = ConsumeTopic(SharedServices().kafka_bootstrap, messages_topic, 2 * kTransactions, 60s);
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
  EXPECT_EQ(2 * kChanges, changes.size()) << "every change, once more\n" << outboxd.Log();
  EXPECT_EQ(2 * kTransactions, messages.size()) << "every message, once more\n" << outboxd.Log();
  EXPECT_EQ(kChanges, ExpectCopiesIdentical(changes).size());
  EXPECT_EQ(kTransactions, ExpectCopiesIdentical(messages).size());
  EXPECT_EQ(kChanges, ReadWithSdks(changes).size());
}

// An outbox table captured by the cdc source (source = "cdc"): its rows are
// the same CloudEvents as polled ones, and without a timestamp column their
// time is the commit time.
TEST_P(CloudEventsInteropTest, TheSdksReadAnOutboxTableCapturedByCdc) {
  std::string db = db_.name();
  std::transform(db.begin(), db.end(), db.begin(), [](unsigned char c) { return std::tolower(c); });
  OutboxdProcess outboxd("[postgres]\nconninfo = \"" + db_.conninfo() + "\"\n[kafka]\nbootstrap_servers = \"" +
                         SharedServices().kafka_bootstrap + "\"\n[cdc]\nslot = \"s_" + db + "\"\npublication = \"p_" +
                         db + "\"\ncreate = true\n[[outbox]]\ntable = \"public.outbox\"\nsource = \"cdc\"\n" +
                         "format = \"cloudevents-" + GetParam() +
                         "\"\ntraceparent = \"trace\"\ntracestate = \"state\"\n[outbox.cloudevents]\nsource = "
                         "\"/orders-service\"\n[outbox.cloudevents.extensions]\ncorrelationid = \"corr\"\n");
  outboxd.Start();
  ASSERT_TRUE(outboxd.WaitForLog("streaming replication slot", 60s)) << outboxd.Log();
  db_.Exec("BEGIN");
  const std::string created =
      Insert("order-1", "OrderCreated", "'{\"total\": 12.5}'", "NULL", std::string("'") + kTraceparent + "'", "'c-1'");
  const std::string paid = Insert("order-2", "OrderPaid", "NULL", "NULL", "'00-bogus'", "NULL");
  const auto records = ConsumeTopic(SharedServices().kafka_bootstrap, "outbox.event." + type_, 2, 60s);
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
  ASSERT_EQ(2u, records.size()) << outboxd.Log();

  const std::map<std::string, Json> events = ReadWithSdks(records);
  ASSERT_TRUE(events.contains(created) && events.contains(paid)) << outboxd.Log();
  for (const KafkaRecord& r : records) {
    const Json& a = events.at(CloudEventId(r))["attributes"];
    EXPECT_EQ("/orders-service", a.value("source", ""));
    EXPECT_EQ(*r.key, a.value("subject", ""));
    EXPECT_EQ(*r.key, a.value("partitionkey", ""));
    // The commit time, as the record's timestamp is.
    EXPECT_EQ(PythonIsoFormat(r.timestamp_ms), a.value("time", ""));
  }
  const Json& first = events.at(created);
  EXPECT_EQ("OrderCreated", first["attributes"].value("type", ""));
  EXPECT_EQ(Json::parse(R"({"total": 12.5})"), first["data"]);
  EXPECT_EQ("c-1", first["attributes"].value("correlationid", ""));
  EXPECT_EQ(kTraceparent, first["attributes"].value("traceparent", ""));
  EXPECT_EQ("congo=t61rcWkgMzE", first["attributes"].value("tracestate", ""));
  const Json& second = events.at(paid);
  EXPECT_EQ("OrderPaid", second["attributes"].value("type", ""));
  EXPECT_TRUE(second["data"].is_null()) << second.dump();
  EXPECT_FALSE(second["attributes"].contains("traceparent")) << second.dump();
  EXPECT_FALSE(second["attributes"].contains("correlationid")) << second.dump();
}

INSTANTIATE_TEST_SUITE_P(Modes, CloudEventsInteropTest, ::testing::Values("binary", "structured"));

}  // namespace
}  // namespace outboxd::testing
