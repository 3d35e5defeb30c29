#include "pipeline/dead_letter.h"

namespace outboxd {

bool IsRecordSizeError(std::string_view name) {
  return name == "MSG_SIZE_TOO_LARGE" || name == "RECORD_LIST_TOO_LARGE" || name == "INVALID_MSG_SIZE";
}

Record DeadLetterRecord(const std::string& topic, const DeadLetterOrigin& origin, const std::string& error_name,
                        const std::string& error_message) {
  Record dl;
  dl.topic = topic;
  dl.key = origin.key;
  dl.timestamp_ms = origin.timestamp_ms;
  if (origin.id) dl.headers.push_back({"id", origin.id});
  dl.headers.push_back({"outboxd.error", error_name});
  dl.headers.push_back({"outboxd.error.message", error_message});
  dl.headers.insert(dl.headers.end(), origin.where.begin(), origin.where.end());
  if (origin.original_topic) dl.headers.push_back({"outboxd.original.topic", origin.original_topic});
  if (IsRecordSizeError(error_name)) {
    // The value is what made it fail; the headers say where to find it.
    dl.headers.push_back({"outboxd.value.omitted", "true"});
    if (origin.value) dl.headers.push_back({"outboxd.value.size", std::to_string(origin.value->size())});
  } else {
    dl.value = origin.value;
  }
  return dl;
}

}  // namespace outboxd
