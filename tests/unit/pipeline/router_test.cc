// Router: what a Debezium outbox-router user expects for each row.
#include "pipeline/router.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace outboxd {
namespace {

class RouterTest : public ::testing::Test {
 protected:
  // A row with Debezium's outbox columns; tests override single values.
  Row OutboxRow() {
    Row r;
    r.columns = {"id", "aggregatetype", "aggregateid", "type", "payload"};
    r.values = {std::string("9f1c7a52-4a3e-4d5b-9a43-7d0c2b1e5f10"), std::string("order"), std::string("order-42"),
                std::string("OrderCreated"), std::string(R"({"total": 12.5})")};
    return r;
  }
  void Set(Row& r, const std::string& column, std::optional<std::string> v) {
    for (std::size_t i = 0; i < r.columns.size(); ++i) {
      if (r.columns[i] == column) {
        r.values[i] = std::move(v);
        return;
      }
    }
    r.columns.push_back(column);
    r.values.push_back(std::move(v));
  }
  Record Route(const OutboxTableConfig& c, const Row& r) {
    auto router = Router::Create(c);
    EXPECT_TRUE(router.ok()) << router.status().message();
    auto rec = router->Route(r);
    EXPECT_TRUE(rec.ok()) << rec.status().message();
    return rec.ok() ? *rec : Record{};
  }
  Status RouteError(const OutboxTableConfig& c, const Row& r) {
    auto router = Router::Create(c);
    EXPECT_TRUE(router.ok());
    auto rec = router->Route(r);
    EXPECT_FALSE(rec.ok());
    return rec.status();
  }
  OutboxTableConfig config_;
};

TEST_F(RouterTest, DebeziumDefaults) {
  Record rec = Route(config_, OutboxRow());
  EXPECT_EQ("outbox.event.order", rec.topic);
  EXPECT_EQ(std::optional<std::string>("order-42"), rec.key);
  EXPECT_EQ(std::optional<std::string>(R"({"total": 12.5})"), rec.value);
  ASSERT_EQ(1u, rec.headers.size());
  EXPECT_EQ((Header{"id", "9f1c7a52-4a3e-4d5b-9a43-7d0c2b1e5f10"}), rec.headers[0]);
  EXPECT_FALSE(rec.timestamp_ms.has_value());
}

TEST_F(RouterTest, RequiredColumnsAreWhatTheDefaultsRead) {
  auto router = Router::Create(config_);
  ASSERT_TRUE(router.ok());
  EXPECT_EQ((std::vector<std::string>{"id", "aggregateid", "payload", "aggregatetype"}), router->RequiredColumns());
}

TEST_F(RouterTest, TopicTemplateWithSeveralColumnsAndLiterals) {
  config_.topic = "${aggregatetype}-events.v1.${type}";
  EXPECT_EQ("order-events.v1.OrderCreated", Route(config_, OutboxRow()).topic);
}

TEST_F(RouterTest, LiteralTopicNeedsNoColumn) {
  config_.topic = "all.events";
  auto router = Router::Create(config_);
  ASSERT_TRUE(router.ok());
  EXPECT_EQ("all.events", router->Route(OutboxRow())->topic);
  EXPECT_EQ(3u, router->RequiredColumns().size());
}

TEST_F(RouterTest, BadTemplatesAreConfigErrors) {
  for (const char* t : {"outbox.${aggregatetype", "outbox.${}", ""}) {
    config_.topic = t;
    auto router = Router::Create(config_);
    ASSERT_FALSE(router.ok()) << t;
    EXPECT_EQ(StatusCode::kInvalidConfig, router.status().code()) << t;
  }
}

TEST_F(RouterTest, NullRoutingColumnIsPermanentAndNamesTheColumn) {
  Row r = OutboxRow();
  Set(r, "aggregatetype", std::nullopt);
  Status st = RouteError(config_, r);
  EXPECT_EQ(StatusCode::kPermanent, st.code());
  EXPECT_NE(std::string::npos, st.message().find("\"aggregatetype\" is NULL")) << st.message();
}

TEST_F(RouterTest, IllegalTopicNameIsPermanent) {
  Row r = OutboxRow();
  Set(r, "aggregatetype", std::string("orders/eu"));
  Status st = RouteError(config_, r);
  EXPECT_EQ(StatusCode::kPermanent, st.code());
  EXPECT_NE(std::string::npos, st.message().find("outbox.event.orders/eu")) << st.message();
}

TEST_F(RouterTest, TooLongTopicNameIsPermanent) {
  Row r = OutboxRow();
  Set(r, "aggregatetype", std::string(240, 'x'));
  EXPECT_EQ(StatusCode::kPermanent, RouteError(config_, r).code());
}

TEST_F(RouterTest, NullIdIsPermanent) {
  Row r = OutboxRow();
  Set(r, "id", std::nullopt);
  Status st = RouteError(config_, r);
  EXPECT_EQ(StatusCode::kPermanent, st.code());
  EXPECT_NE(std::string::npos, st.message().find("\"id\"")) << st.message();
}

TEST_F(RouterTest, NullKeyAndNullPayloadPassThroughAsNull) {
  Row r = OutboxRow();
  Set(r, "aggregateid", std::nullopt);
  Set(r, "payload", std::nullopt);
  Record rec = Route(config_, r);
  EXPECT_FALSE(rec.key.has_value());
  EXPECT_FALSE(rec.value.has_value());
}

TEST_F(RouterTest, NoKeyConfigured) {
  config_.key = std::nullopt;
  EXPECT_FALSE(Route(config_, OutboxRow()).key.has_value());
}

TEST_F(RouterTest, CustomColumnsForIdKeyAndPayload) {
  config_.id = "event_id";
  config_.key = "tenant";
  config_.payload = "body";
  Row r = OutboxRow();
  Set(r, "event_id", std::string("e-1"));
  Set(r, "tenant", std::string("acme"));
  const std::string binary = std::string(1, '\0') + '\x01' + "binary";  // 8 bytes, a NUL first
  Set(r, "body", binary);
  Record rec = Route(config_, r);
  EXPECT_EQ((Header{"id", "e-1"}), rec.headers[0]);
  EXPECT_EQ(std::optional<std::string>("acme"), rec.key);
  EXPECT_EQ(std::optional<std::string>(binary), rec.value);
}

TEST_F(RouterTest, HeadersMapColumnsInConfiguredOrderAndKeepNulls) {
  config_.headers = {{"type", "type"}, {"traceparent", "trace"}};
  Row r = OutboxRow();
  Set(r, "trace", std::nullopt);
  Record rec = Route(config_, r);
  ASSERT_EQ(3u, rec.headers.size());
  EXPECT_EQ((Header{"type", "OrderCreated"}), rec.headers[1]);
  EXPECT_EQ((Header{"traceparent", std::nullopt}), rec.headers[2]);
}

TEST_F(RouterTest, TimestampColumnInEpochMilliseconds) {
  config_.timestamp = "created_ms";
  Row r = OutboxRow();
  Set(r, "created_ms", std::string("1700000000123"));
  EXPECT_EQ(std::optional<int64_t>(1700000000123), Route(config_, r).timestamp_ms);
  Set(r, "created_ms", std::string("yesterday"));
  EXPECT_EQ(StatusCode::kPermanent, RouteError(config_, r).code());
}

TEST_F(RouterTest, TheCommitTimeIsTheTimeUnlessTheTimestampColumnHasOne) {
  config_.format = EventFormat::kCloudEventsBinary;
  config_.cloudevents.source = "/s";
  auto router = Router::Create(config_);
  ASSERT_TRUE(router.ok());
  auto rec = router->Route(OutboxRow(), 1796680800123);
  ASSERT_TRUE(rec.ok()) << rec.status().message();
  EXPECT_EQ(std::optional<int64_t>(1796680800123), rec->timestamp_ms);
  EXPECT_NE(rec->headers.end(),
            std::find(rec->headers.begin(), rec->headers.end(), Header{"ce_time", "2026-12-07T22:00:00.123Z"}));

  config_.timestamp = "created_ms";
  router = Router::Create(config_);
  ASSERT_TRUE(router.ok());
  Row row = OutboxRow();
  Set(row, "created_ms", std::string("1700000000123"));
  EXPECT_EQ(std::optional<int64_t>(1700000000123), router->Route(row, 1796680800123)->timestamp_ms);
  Set(row, "created_ms", std::nullopt);
  EXPECT_EQ(std::optional<int64_t>(1796680800123), router->Route(row, 1796680800123)->timestamp_ms);
}

// --- CloudEvents and trace context --------------------------------------------

TEST_F(RouterTest, CloudEventsBinaryTakesItsAttributesFromTheRow) {
  config_.table = "public.outbox";
  config_.format = EventFormat::kCloudEventsBinary;
  config_.timestamp = "ts";
  config_.cloudevents.source = "/outboxd/public.outbox";
  config_.cloudevents.subject = "aggregateid";
  config_.cloudevents.extensions = {{"correlationid", "corr"}};
  Row row = OutboxRow();
  Set(row, "ts", "1796680800123");
  Set(row, "corr", "c-7");
  const Record rec = Route(config_, row);
  EXPECT_EQ(std::optional<std::string>(R"({"total": 12.5})"), rec.value);
  EXPECT_EQ(std::optional<std::string>("order-42"), rec.key);
  const std::vector<Header> expected = {
      {"ce_specversion", "1.0"},
      {"ce_id", "9f1c7a52-4a3e-4d5b-9a43-7d0c2b1e5f10"},
      {"ce_source", "/outboxd/public.outbox"},
      {"ce_type", "OrderCreated"},
      {"ce_time", "2026-12-07T22:00:00.123Z"},
      {"ce_subject", "order-42"},
      {"ce_correlationid", "c-7"},
      {"content-type", "application/json"},
      {"id", "9f1c7a52-4a3e-4d5b-9a43-7d0c2b1e5f10"},
  };
  EXPECT_EQ(expected, rec.headers);
}

TEST_F(RouterTest, CloudEventsNeedATypeAndSkipNullOptionalAttributes) {
  config_.format = EventFormat::kCloudEventsStructured;
  config_.cloudevents.source = "/s";
  config_.cloudevents.subject = "aggregateid";
  config_.cloudevents.extensions = {{"correlationid", "corr"}};
  Row row = OutboxRow();
  Set(row, "aggregateid", std::nullopt);
  Set(row, "corr", std::nullopt);
  const Record rec = Route(config_, row);
  EXPECT_EQ(std::string::npos, rec.value->find("subject")) << *rec.value;
  EXPECT_EQ(std::string::npos, rec.value->find("correlationid")) << *rec.value;
  Set(row, "type", std::nullopt);
  EXPECT_EQ("CloudEvents type column \"type\" is NULL or empty", RouteError(config_, row).message());
}

TEST_F(RouterTest, CloudEventsColumnsAreRequired) {
  config_.format = EventFormat::kCloudEventsBinary;
  config_.cloudevents.subject = "aggregateid";
  config_.cloudevents.extensions = {{"correlationid", "corr"}};
  config_.traceparent = "tp";
  auto router = Router::Create(config_);
  ASSERT_TRUE(router.ok());
  EXPECT_EQ((std::vector<std::string>{"id", "aggregateid", "payload", "aggregatetype", "tp", "type", "corr"}),
            router->RequiredColumns());
}

constexpr char kTraceparent[] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

TEST_F(RouterTest, TraceContextGoesToHeadersInEveryFormat) {
  config_.traceparent = "tp";
  config_.tracestate = "ts";
  config_.cloudevents.source = "/s";
  Row row = OutboxRow();
  Set(row, "tp", kTraceparent);
  Set(row, "ts", "congo=t61rcWkgMzE");
  for (EventFormat format :
       {EventFormat::kDebezium, EventFormat::kCloudEventsBinary, EventFormat::kCloudEventsStructured}) {
    SCOPED_TRACE(static_cast<int>(format));
    config_.format = format;
    const Record rec = Route(config_, row);
    const std::size_t n = rec.headers.size();
    ASSERT_GE(n, 2u);
    EXPECT_EQ((Header{"traceparent", kTraceparent}), rec.headers[n - 2]);
    EXPECT_EQ((Header{"tracestate", "congo=t61rcWkgMzE"}), rec.headers[n - 1]);
    if (format == EventFormat::kCloudEventsBinary) {
      EXPECT_NE(rec.headers.end(),
                std::find(rec.headers.begin(), rec.headers.end(), Header{"ce_traceparent", kTraceparent}));
    }
    if (format == EventFormat::kCloudEventsStructured) {
      EXPECT_NE(std::string::npos, rec.value->find(std::string("\"traceparent\":\"") + kTraceparent)) << *rec.value;
    }
  }
}

// A malformed traceparent is never fatal: it is dropped, with its tracestate.
TEST_F(RouterTest, AMalformedOrNullTraceparentIsDroppedWithItsTracestate) {
  config_.traceparent = "tp";
  config_.tracestate = "ts";
  for (const std::optional<std::string>& bad : {std::optional<std::string>("00-bogus"), std::optional<std::string>()}) {
    Row row = OutboxRow();
    Set(row, "tp", bad);
    Set(row, "ts", "congo=t61rcWkgMzE");
    const Record rec = Route(config_, row);
    ASSERT_EQ(1u, rec.headers.size());
    EXPECT_EQ("id", rec.headers[0].name);
  }
}

}  // namespace
}  // namespace outboxd
