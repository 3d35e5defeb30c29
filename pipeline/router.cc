#include "pipeline/router.h"

#include <algorithm>
#include <charconv>

#include "config/topic_name.h"

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
}

Result<Record> Router::Route(const Row& row) const {
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
  return rec;
}

}  // namespace outboxd
