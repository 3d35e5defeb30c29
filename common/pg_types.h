#pragma once
// What outboxd accepts of a column's type, by the name format_type() gives
// it ("bigint", "timestamp with time zone", ...): one rule for the poll
// source's start-up checks and `outboxd status`.

#include <string_view>

namespace outboxd {

// An integer type: the ordering column, or a timestamp column that holds
// epoch milliseconds.
inline bool IsIntegerType(std::string_view type) { return type == "bigint" || type == "integer" || type == "smallint"; }

// timestamp or timestamptz, with or without a precision.
inline bool IsTimestampType(std::string_view type) { return type.starts_with("timestamp"); }

}  // namespace outboxd
