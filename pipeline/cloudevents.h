#pragma once
// CloudEvents 1.0 on Kafka (the Kafka protocol binding) and W3C trace
// context: the one place that turns a routed Record into a CloudEvent
// record, in either content mode, and that decides whether a traceparent is
// well formed. Pure functions; docs/cloudevents.md shows the records.
//
// Binary mode: the record's value stays the event data and its key stays;
// the attributes become headers "ce_specversion", "ce_id", "ce_source",
// "ce_type", then "ce_time", "ce_subject", and "ce_<name>" per extension,
// with datacontenttype as "content-type". Structured mode: the value is one
// JSON object, "content-type: application/cloudevents+json; charset=UTF-8",
// with the data embedded as JSON when datacontenttype is JSON and the data
// parses as JSON, else as "data_base64"; the key stays. In both modes the
// record's other headers stay, after the CloudEvents ones. An event without
// data (a NULL payload) has no datacontenttype in either mode.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/config.h"
#include "pipeline/record.h"

namespace outboxd {

struct CloudEventAttributes {
  std::string id;
  std::string source;  // a URI-reference
  std::string type;
  std::optional<std::string> subject;
  std::optional<int64_t> time_ms;  // written as RFC 3339 in UTC
  std::optional<std::string> datacontenttype;
  std::vector<std::pair<std::string, std::string>> extensions;  // name → value, in order
};

// Rewrites `record` (value = the event data) as a CloudEvent in `format`
// (not kDebezium).
void EncodeCloudEvent(const CloudEventAttributes& attributes, EventFormat format, Record& record);

// "2026-12-07T21:00:00.123Z".
std::string Rfc3339Utc(int64_t epoch_ms);

// Whether `value` is a W3C traceparent outboxd passes on: version 00 exactly
// as specified (55 characters), or a later version (not ff) that starts
// with the same four fields; lower-case hex; trace-id and parent-id not all
// zeros.
bool ValidTraceparent(std::string_view value);

}  // namespace outboxd
