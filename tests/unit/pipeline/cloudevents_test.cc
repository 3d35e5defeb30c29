// CloudEvents on Kafka and W3C trace context: what the Kafka protocol
// binding of CloudEvents 1.0 and the trace context recommendation say.
#include "pipeline/cloudevents.h"

#include <gtest/gtest.h>

namespace outboxd {
namespace {

Record DataRecord(std::optional<std::string> value) {
  Record r;
  r.topic = "t";
  r.key = "order-42";
  r.value = std::move(value);
  r.headers = {{"id", "e-1"}, {"app", "x"}};
  return r;
}

CloudEventAttributes Attributes() {
  CloudEventAttributes a;
  a.id = "e-1";
  a.source = "/orders";
  a.type = "OrderCreated";
  a.subject = "order-42";
  a.time_ms = 1796680800123;  // 2026-12-07T22:00:00.123Z
  a.datacontenttype = "application/json";
  a.extensions = {{"correlationid", "c-7"}};
  return a;
}

TEST(CloudEventsTest, BinaryModeMapsAttributesToHeadersAndKeepsDataKeyAndHeaders) {
  Record r = DataRecord(R"({"total": 12.5})");
  EncodeCloudEvent(Attributes(), EventFormat::kCloudEventsBinary, r);
  EXPECT_EQ(std::optional<std::string>(R"({"total": 12.5})"), r.value);
  EXPECT_EQ(std::optional<std::string>("order-42"), r.key);
  const std::vector<Header> expected = {
      {"ce_specversion", "1.0"},
      {"ce_id", "e-1"},
      {"ce_source", "/orders"},
      {"ce_type", "OrderCreated"},
      {"ce_time", "2026-12-07T22:00:00.123Z"},
      {"ce_subject", "order-42"},
      {"ce_correlationid", "c-7"},
      {"content-type", "application/json"},
      {"id", "e-1"},
      {"app", "x"},
  };
  EXPECT_EQ(expected, r.headers);
}

TEST(CloudEventsTest, StructuredModeEmbedsJsonDataAsItIs) {
  Record r = DataRecord(R"({"total": 12.5, "items": [1, 2]})");
  EncodeCloudEvent(Attributes(), EventFormat::kCloudEventsStructured, r);
  EXPECT_EQ(std::optional<std::string>(
                R"({"specversion":"1.0","id":"e-1","source":"/orders","type":"OrderCreated",)"
                R"("time":"2026-12-07T22:00:00.123Z","subject":"order-42","datacontenttype":"application/json",)"
                R"("correlationid":"c-7","data":{"total": 12.5, "items": [1, 2]}})"),
            r.value);
  ASSERT_EQ(3u, r.headers.size());
  EXPECT_EQ((Header{"content-type", "application/cloudevents+json; charset=UTF-8"}), r.headers[0]);
  EXPECT_EQ(std::optional<std::string>("order-42"), r.key);
}

TEST(CloudEventsTest, StructuredModeWritesDataThatIsNotJsonAsBase64) {
  Record r = DataRecord("not json \xff");
  CloudEventAttributes a = Attributes();
  a.extensions.clear();
  a.subject.reset();
  a.time_ms.reset();
  EncodeCloudEvent(a, EventFormat::kCloudEventsStructured, r);
  EXPECT_EQ(std::optional<std::string>(R"({"specversion":"1.0","id":"e-1","source":"/orders","type":"OrderCreated",)"
                                       R"("datacontenttype":"application/json","data_base64":"bm90IGpzb24g/w=="})"),
            r.value);
  // A JSON text is base64 too when the content type is not JSON.
  Record text = DataRecord("42");
  a.datacontenttype = "text/plain";
  EncodeCloudEvent(a, EventFormat::kCloudEventsStructured, text);
  EXPECT_NE(std::string::npos, text.value->find(R"("data_base64":"NDI=")")) << *text.value;
}

TEST(CloudEventsTest, StructuredModeWithoutDataHasNoDataMember) {
  Record r = DataRecord(std::nullopt);
  EncodeCloudEvent(Attributes(), EventFormat::kCloudEventsStructured, r);
  EXPECT_EQ(std::string::npos, r.value->find("\"data\":")) << *r.value;
  EXPECT_EQ(std::string::npos, r.value->find("\"data_base64\":")) << *r.value;
}

// datacontenttype describes the data: an event without data has none (the
// JavaScript SDK refuses to parse a JSON content type with no value).
TEST(CloudEventsTest, AnEventWithoutDataHasNoDataContentType) {
  Record binary = DataRecord(std::nullopt);
  EncodeCloudEvent(Attributes(), EventFormat::kCloudEventsBinary, binary);
  for (const Header& h : binary.headers) EXPECT_NE("content-type", h.name);
  Record structured = DataRecord(std::nullopt);
  EncodeCloudEvent(Attributes(), EventFormat::kCloudEventsStructured, structured);
  EXPECT_EQ(std::string::npos, structured.value->find("datacontenttype")) << *structured.value;
}

TEST(CloudEventsTest, AttributesAreEscapedAsJsonStrings) {
  Record r = DataRecord("{}");
  CloudEventAttributes a = Attributes();
  a.subject = "say \"hi\"\n";
  EncodeCloudEvent(a, EventFormat::kCloudEventsStructured, r);
  EXPECT_NE(std::string::npos, r.value->find(R"("subject":"say \"hi\"\n")")) << *r.value;
}

TEST(CloudEventsTest, Rfc3339) {
  EXPECT_EQ("1970-01-01T00:00:00.000Z", Rfc3339Utc(0));
  EXPECT_EQ("1969-12-31T23:59:59.999Z", Rfc3339Utc(-1));
  EXPECT_EQ("2026-12-07T22:00:00.123Z", Rfc3339Utc(1796680800123));
}

TEST(CloudEventsTest, TraceparentAsTheW3cRecommendationDefinesIt) {
  EXPECT_TRUE(ValidTraceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
  EXPECT_TRUE(ValidTraceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"));
  // A later version may append fields.
  EXPECT_TRUE(ValidTraceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra"));
  for (const char* bad : {
           "", "bogus",
           "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",  // version 00 is exactly 55
           "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",        // version ff is invalid
           "00-00000000000000000000000000000000-b7ad6b7169203331-01",        // zero trace-id
           "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",        // zero parent-id
           "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",        // upper case
           "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",
           "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",  // short trace-id
       }) {
    EXPECT_FALSE(ValidTraceparent(bad)) << bad;
  }
}

}  // namespace
}  // namespace outboxd
