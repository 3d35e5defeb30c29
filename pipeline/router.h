#pragma once
// Router: turns an outbox Row into a Kafka Record — topic, key, value, headers,
// timestamp — by the column mapping of one [[outbox]] block, in its format.
// Pure: it knows nothing of Kafka or PostgreSQL connections. Defaults
// reproduce Debezium's outbox event router byte for byte (topic
// "outbox.event.${aggregatetype}", key from aggregateid, value from payload as
// stored, header "id"); a CloudEvents format then rewrites that record
// (pipeline/cloudevents.h). Trace context columns add "traceparent" and
// "tracestate" headers in every format.
//
// Immutable after construction; safe to share between threads.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "config/config.h"
#include "pipeline/cloudevents.h"
#include "pipeline/record.h"

namespace outboxd {

class TopicTemplate {
 public:
  // Parses literals and ${column} references. Fails on an unclosed or empty
  // reference.
  [[nodiscard]] static Result<TopicTemplate> Parse(const std::string& text);

  // Columns the template refers to, in order of first use.
  const std::vector<std::string>& columns() const { return columns_; }

  // Fills in the template from `row`. A referenced column that is NULL or
  // missing, or a result that is not a legal Kafka topic name, is a permanent
  // error naming the column or the topic.
  [[nodiscard]] Result<std::string> Render(const Row& row) const;

 private:
  struct Part {
    bool is_column;
    std::string text;  // literal text or column name
  };
  std::vector<Part> parts_;
  std::vector<std::string> columns_;
};

// A Permanent error when Kafka would refuse `topic` as a name
// (config/topic_name.h says what it accepts).
[[nodiscard]] Status ValidateTopicName(const std::string& topic);

class Router {
 public:
  [[nodiscard]] static Result<Router> Create(const OutboxTableConfig& config);

  // Every column the router reads, without duplicates: what the source must
  // select.
  const std::vector<std::string>& RequiredColumns() const { return required_; }

  // A permanent error means this row can never be published as it is (NULL id
  // or routing column, illegal topic); the message names the column.
  // `commit_time_ms`, when the source knows it (cdc), is the event's time
  // (record timestamp, CloudEvents "time") unless the timestamp column gives
  // one: the same on every replay.
  [[nodiscard]] Result<Record> Route(const Row& row, std::optional<int64_t> commit_time_ms = std::nullopt) const;

 private:
  Router(const OutboxTableConfig& config, TopicTemplate topic);
  // Headers "traceparent" and "tracestate" when the row has a well-formed
  // traceparent; with `event`, its extension attributes too.
  void AddTraceContext(const Row& row, Record& rec, CloudEventAttributes* event) const;
  // The CloudEvents attributes of a routed record (format is not Debezium).
  [[nodiscard]] Result<CloudEventAttributes> Attributes(const Row& row, const Record& rec) const;
  OutboxTableConfig config_;
  TopicTemplate topic_;
  std::vector<std::string> required_;
};

}  // namespace outboxd
