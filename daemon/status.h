#pragma once
// `outboxd status`: one look at the database for why events are late. Per
// poll [[outbox]] table the unsent rows (count, position range, age of the
// oldest when the block names a `timestamp` column) and which session holds
// the table's relay lock; per [cdc] slot whether it is active and who holds
// it, its confirmed flush LSN, how far it is behind the server's WAL, how
// much WAL it retains, its wal_status, and whether it is still the slot the
// state table describes (not dropped, re-created or invalidated).
//
// Read-only: the session is set to read-only transactions before the first
// query, and only catalog views and counts are read. It needs SELECT on the
// outbox tables and on the state table (the grants `outboxd init` prints);
// other sessions' application_name and client address show only to roles
// with pg_read_all_stats.
//
// RunStatus() writes a report to `out` and returns the process exit code
// (kStatusHealthy, kStatusUnhealthy, or kExitUnavailable when PostgreSQL
// cannot be reached). Not synchronised; each call uses its own connection.

#include <cstdint>
#include <iosfwd>
#include <optional>

#include "config/config.h"

namespace outboxd {

// Exit codes of `outboxd status` (kExitUsage and kExitConfig from
// daemon/exit_codes.h keep their meaning; the caller maps those).
constexpr int kStatusHealthy = 0;    // everything checked is as it should be
constexpr int kStatusUnhealthy = 1;  // a problem listed in the report
// kExitUnavailable (69): could not connect to PostgreSQL; nothing was checked.

struct StatusOptions {
  bool json = false;                         // one JSON object instead of tables
  std::optional<uint64_t> max_lag_bytes;     // a slot further behind is a problem
  std::optional<uint64_t> max_pending_rows;  // a poll table with more unsent rows is a problem
};

// Problems that make the result kStatusUnhealthy: a configured table that
// does not exist or cannot be read (missing column, no privilege), a slot
// that is missing, invalidated (wal_status = lost), of the wrong kind, or no
// longer the slot the state table recorded (dropped / re-created), a missing
// state table, and a threshold of `options` exceeded. An inactive slot or a
// table no outboxd instance holds is reported but is not a problem by itself
// (outboxd may be stopped on purpose); the thresholds catch what that costs.
int RunStatus(const Config& config, const StatusOptions& options, std::ostream& out);

// RunStatus() with default options: tables, no thresholds.
int RunStatus(const Config& config, std::ostream& out);

}  // namespace outboxd
