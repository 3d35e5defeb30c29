#include "pipeline/router.h"

#include <algorithm>
#include <charconv>

#include "config/topic_name.h"
#include "pipeline/cloudevents.h"

namespace outboxd {

Result<TopicTemplate> TopicTemplate::Parse(const std::string& text) {
  if (std::string problem = CheckTopicTemplate(text); !problem.empty()) {
    return Status::InvalidConfig("topic template \"" + text + "\": " + problem);
  }
  TopicTemplate t;
  std::size_t i = 0;
  std::string literal;
  while (i < text.size()) {
    if (text.compare(i, 2, "${") == 0) {
      const std::size_t end = text.find('}', i + 2);
      if (end == std::string::npos) {
        return Status::InvalidConfig("topic template \"" + text + "\" has an unclosed ${ at offset " +
                                     std::to_string(i));
      }
      std::string column = text.substr(i + 2, end - i - 2);
      if (column.empty()) {
        return Status::InvalidConfig("topic template \"" + text + "\" has an empty ${}");
      }
      if (!literal.empty()) t.parts_.push_back({false, std::move(literal)});
      literal.clear();
      if (std::find(t.columns_.begin(), t.columns_.end(), column) == t.columns_.end()) {
        t.columns_.push_back(column);
      }
      t.parts_.push_back({true, std::move(column)});
      i = end + 1;
    } else {
      literal += text[i++];
    }
  }
  if (!literal.empty()) t.parts_.push_back({false, std::move(literal)});
  if (t.parts_.empty()) return Status::InvalidConfig("topic template is empty");
  return t;
}

Result<std::string> TopicTemplate::Render(const Row& row) const {
  std::string out;
  for (const Part& p : parts_) {
    if (!p.is_column) {
      out += p.text;
      continue;
    }
    const auto* v = row.Find(p.text);
    if (v == nullptr) return Status::Permanent("row has no column \"" + p.text + "\" for the topic");
    if (!v->has_value()) {
      return Status::Permanent("column \"" + p.text + "\" is NULL but the topic template needs it");
    }
    out += **v;
  }
  OUTBOXD_RETURN_IF_ERROR(ValidateTopicName(out));
  return out;
}

Status ValidateTopicName(const std::string& topic) {
  if (std::string problem = CheckTopicName(topic); !problem.empty()) {
    return Status::Permanent("\"" + topic + "\" is not a legal Kafka topic name: " + problem);
  }
  return Status::Ok();
}

Result<Router> Router::Create(const OutboxTableConfig& config) {
  auto topic = TopicTemplate::Parse(config.topic);
  if (!topic.ok()) return topic.status();
  return Router(config, std::move(topic).value());
}

Router::Router(const OutboxTableConfig& config, TopicTemplate topic) : config_(config), topic_(std::move(topic)) {
  auto add = [this](const std::string& c) {
    if (std::find(required_.begin(), required_.end(), c) == required_.end()) required_.push_back(c);
  };
  add(config_.id);
  if (config_.key) add(*config_.key);
  add(config_.payload);
  for (const auto& c : topic_.columns()) add(c);
  for (const auto& [header, column] : config_.headers) add(column);
  if (config_.timestamp) add(*config_.timestamp);
  if (config_.traceparent) add(*config_.traceparent);
  if (config_.tracestate) add(*config_.tracestate);
  if (config_.format != EventFormat::kDebezium) {
    add(config_.cloudevents.type);
    if (config_.cloudevents.subject) add(*config_.cloudevents.subject);
    for (const auto& [name, column] : config_.cloudevents.extensions) add(column);
  }
}

namespace {

// A column's value when the row has it and it is not NULL.
const std::string* Value(const Row& row, const std::string& column) {
  const auto* v = row.Find(column);
  return v != nullptr && v->has_value() ? &**v : nullptr;
}

}  // namespace

void Router::AddTraceContext(const Row& row, Record& rec, CloudEventAttributes* event) const {
  if (!config_.traceparent) return;
  const std::string* traceparent = Value(row, *config_.traceparent);
  // A malformed traceparent is dropped, and its tracestate with it (W3C
  // trace context: vendors must ignore tracestate without a valid parent).
  if (traceparent == nullptr || !ValidTraceparent(*traceparent)) return;
  const std::string* tracestate = config_.tracestate ? Value(row, *config_.tracestate) : nullptr;
  rec.headers.push_back({"traceparent", *traceparent});
  if (tracestate != nullptr) rec.headers.push_back({"tracestate", *tracestate});
  if (event == nullptr) return;
  event->extensions.emplace_back("traceparent", *traceparent);
  if (tracestate != nullptr) event->extensions.emplace_back("tracestate", *tracestate);
}

Result<CloudEventAttributes> Router::Attributes(const Row& row, const Record& rec) const {
  const CloudEventsConfig& ce = config_.cloudevents;
  CloudEventAttributes a;
  a.id = *rec.headers.front().value;  // the "id" header, never NULL
  a.source = ce.source;
  const std::string* type = Value(row, ce.type);
  if (type == nullptr || type->empty()) {
    return Status::Permanent("CloudEvents type column \"" + ce.type + "\" is NULL or empty");
  }
  a.type = *type;
  if (ce.subject) {
    if (const std::string* subject = Value(row, *ce.subject); subject != nullptr && !subject->empty())
      a.subject = *subject;
  }
  a.time_ms = rec.timestamp_ms;
  a.datacontenttype = ce.datacontenttype;
  for (const auto& [name, column] : ce.extensions) {
    if (const std::string* v = Value(row, column)) a.extensions.emplace_back(name, *v);
  }
  return a;
}

Result<Record> Router::Route(const Row& row, std::optional<int64_t> commit_time_ms) const {
  Record rec;
  auto topic = topic_.Render(row);
  if (!topic.ok()) return topic.status();
  rec.topic = std::move(topic).value();

  const auto* id = row.Find(config_.id);
  if (id == nullptr || !id->has_value()) {
    return Status::Permanent("id column \"" + config_.id + "\" is NULL");
  }
  rec.headers.push_back({"id", *id});

  if (config_.key) {
    const auto* key = row.Find(*config_.key);
    if (key != nullptr) rec.key = *key;
  }
  if (const auto* payload = row.Find(config_.payload)) rec.value = *payload;

  for (const auto& [header, column] : config_.headers) {
    const auto* v = row.Find(column);
    rec.headers.push_back({header, v ? *v : std::nullopt});
  }

  if (config_.timestamp) {
    const auto* ts = row.Find(*config_.timestamp);
    if (ts != nullptr && ts->has_value()) {
      int64_t ms = 0;
      const std::string& s = **ts;
      auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), ms);
      if (ec != std::errc() || ptr != s.data() + s.size()) {
        return Status::Permanent("timestamp column \"" + *config_.timestamp + "\" value \"" + s +
                                 "\" is not epoch milliseconds");
      }
      rec.timestamp_ms = ms;
    }
  }
  if (!rec.timestamp_ms) rec.timestamp_ms = commit_time_ms;
  if (config_.format == EventFormat::kDebezium) {
    AddTraceContext(row, rec, nullptr);
    return rec;
  }
  auto event = Attributes(row, rec);
  if (!event.ok()) return event.status();
  AddTraceContext(row, rec, &*event);
  EncodeCloudEvent(*event, config_.format, rec);
  return rec;
}

}  // namespace outboxd
