#include "config/topic_name.h"

namespace outboxd {

namespace {

constexpr std::size_t kMaxColumnNameBytes = 63;  // PostgreSQL's NAMEDATALEN - 1

}  // namespace

bool IsTopicChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

std::string CheckTopicName(std::string_view topic) {
  if (topic.empty()) return "it is empty";
  if (topic == "." || topic == "..") return "\".\" and \"..\" are not allowed as topic names";
  if (topic.size() > kMaxTopicBytes) return "it is longer than Kafka's 249-character limit";
  for (std::size_t i = 0; i < topic.size(); ++i) {
    if (!IsTopicChar(topic[i])) {
      return "'" + std::string(1, topic[i]) + "' at character " + std::to_string(i + 1) +
             " is not allowed in a Kafka topic name (letters, digits, '.', '_' and '-')";
    }
  }
  return {};
}

std::string CheckTopicTemplate(std::string_view text) {
  if (text.empty()) return "it is empty";
  bool has_placeholder = false;
  std::size_t i = 0;
  while (i < text.size()) {
    std::string at = " at character " + std::to_string(i + 1);
    char c = text[i];
    if (c == '$') {
      if (i + 1 >= text.size() || text[i + 1] != '{') return "'$'" + at + " must start a ${column} placeholder";
      std::size_t close = text.find('}', i + 2);
      std::size_t nested = text.find_first_of("${", i + 2);
      if (close == std::string_view::npos) return "unterminated \"${\"" + at;
      if (nested < close) return "'" + std::string(1, text[nested]) + "' inside the placeholder" + at;
      if (close == i + 2) return "empty placeholder \"${}\"" + at;
      if (close - i - 2 > kMaxColumnNameBytes) return "column name in the placeholder" + at + " is too long";
      has_placeholder = true;
      i = close + 1;
    } else if (c == '}') {
      return "'}'" + at + " has no matching \"${\"";
    } else if (c == '{') {
      return "'{'" + at + " must follow '$' in a ${column} placeholder";
    } else if (!IsTopicChar(c)) {
      return "'" + std::string(1, c) + "'" + at +
             " is not allowed in a Kafka topic name (letters, digits, '.', '_', '-' and ${column})";
    } else {
      ++i;
    }
  }
  if (!has_placeholder) return CheckTopicName(text);
  return {};
}

std::string CheckTopicPrefix(std::string_view prefix) {
  if (prefix.empty()) return "it is empty";
  if (prefix.size() > kMaxTopicPrefixBytes) {
    return "it is longer than " + std::to_string(kMaxTopicPrefixBytes) +
           " characters, which leaves no room for \".<schema>.<table>\" within Kafka's 249-character limit";
  }
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    if (!IsTopicChar(prefix[i])) {
      return "'" + std::string(1, prefix[i]) + "' at character " + std::to_string(i + 1) +
             " is not allowed in a Kafka topic name (letters, digits, '.', '_' and '-')";
    }
  }
  return {};
}

}  // namespace outboxd
