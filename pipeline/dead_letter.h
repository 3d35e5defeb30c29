#pragma once
// The dead-letter record of an event that can never be delivered as it is,
// the same for every source: the event's key and id header, the reason in
// `outboxd.error` (a librdkafka error name or UNROUTABLE) and
// `outboxd.error.message`, where it came from (source-specific headers,
// e.g. outboxd.table/outboxd.position or outboxd.source/outboxd.lsn), the
// topic it was meant for, and its value — left out, with its size in
// headers, when the size is what Kafka refused. Pure; no Kafka, no database.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pipeline/record.h"

namespace outboxd {

// The reason (`outboxd.error` header, `reason` label of
// outboxd_publish_errors_total) of an event whose topic, key or id could not
// be computed from its row or message — the same in every source.
inline constexpr const char* kUnroutable = "UNROUTABLE";

// True for the librdkafka error names that mean "this record is too large".
bool IsRecordSizeError(std::string_view error_name);

struct DeadLetterOrigin {
  std::optional<std::string> key;
  std::optional<std::string> id;  // the event's id header
  std::optional<std::string> value;
  std::optional<std::string> original_topic;  // nullopt: it could not be routed
  std::vector<Header> where;                  // source-specific headers
  std::optional<int64_t> timestamp_ms;
};

Record DeadLetterRecord(const std::string& topic, const DeadLetterOrigin& origin, const std::string& error_name,
                        const std::string& error_message);

}  // namespace outboxd
