#pragma once
// The position a poll source's Kafka transaction ends with (exactly once,
// docs/design/exactly-once.md "poll"): per table, the rows Kafka has once the
// transaction commits and PostgreSQL may still hold unsent. After a start, a
// takeover or a rewind they are deleted or marked before anything is
// claimed, so none is produced twice.
//
// The text has one line per table, "<schema.table> <ranges>", the ranges
// ascending and comma-separated ("1-100,105,107-200"); positions mostly come
// in runs, so a transaction of 10,000 rows is a few bytes.

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace outboxd {

// Table name ("schema.table") -> positions, ascending, no duplicates.
using PollPositionRows = std::map<std::string, std::vector<long long>>;

// `rows`' positions in any order; duplicates are written once.
std::string FormatPollPosition(const PollPositionRows& rows);
// Permanent, naming the line and what is wrong, for a text
// FormatPollPosition() did not write.
[[nodiscard]] Result<PollPositionRows> ParsePollPosition(std::string_view text);

}  // namespace outboxd
