#pragma once
// What Kafka accepts as a topic name, and what outboxd accepts as a topic
// template or a row-change topic prefix: one rule for the config loader
// (which reports the problem at file:line:column) and for the Router and
// the ChangeMapper (which check every topic they render). Pure functions.

#include <cstddef>
#include <string>
#include <string_view>

namespace outboxd {

inline constexpr std::size_t kMaxTopicBytes = 249;  // Kafka's limit on topic names
// The shortest row-change topic is "<topic_prefix>.s.t".
inline constexpr std::size_t kMaxTopicPrefixBytes = kMaxTopicBytes - 4;

// A character Kafka allows in a topic name: letters, digits, '.', '_', '-'.
bool IsTopicChar(char c);

// Each returns what is wrong ("'/' at character 7 is not allowed in a Kafka
// topic name ..."), or an empty string when the text is fine.
// A topic name as Kafka takes it: 1 to 249 topic characters, not "." or "..".
std::string CheckTopicName(std::string_view topic);
// A topic template: topic characters and ${column} placeholders; without a
// placeholder it must be a topic name.
std::string CheckTopicTemplate(std::string_view text);
// The start of row-change topic names, "<prefix>.<schema>.<table>".
std::string CheckTopicPrefix(std::string_view prefix);

}  // namespace outboxd
