#pragma once
// OutboxTable: one [[outbox]] block resolved against the live database — the
// table's qualified name and oid, the types of the columns the router needs,
// what can fill a gap in its ordering column (GapFill), and the SQL the relay
// runs on it (claim, gap read, snapshot, sweep, fetch, delete or mark).
//
// Resolve() checks at start-up that the table and every configured column
// exist with usable types; a mismatch is an InvalidConfig error naming the
// table, the column and the config block, so outboxd exits 78 before doing any
// work. Immutable after Resolve(); not tied to a connection.

#include <optional>
#include <string>
#include <vector>

#include "common/pg.h"
#include "common/status.h"
#include "config/config.h"
#include "pipeline/record.h"
#include "pipeline/router.h"
#include "relay/gap_tracker.h"

namespace outboxd {

// outboxd_outbox_pending_rows counts unsent rows up to this many.
inline constexpr long long kPendingCountCap = 100000;

class OutboxTable {
 public:
  [[nodiscard]] static Result<OutboxTable> Resolve(const PgConn& conn, const OutboxTableConfig& config,
                                                   const Router& router);

  const std::string& name() const { return name_; }  // "schema.table", for logs
  unsigned oid() const { return oid_; }

  // SELECT of up to $2 unsent rows with position > $1, in position order.
  const std::string& claim_after_sql() const { return claim_after_sql_; }
  // SELECT of up to $1 unsent rows in position order, from the start.
  const std::string& claim_first_sql() const { return claim_first_sql_; }
  // SELECT of up to $3 unsent rows whose positions lie in one of the ranges
  // [$1[i], $2[i]] (disjoint), in position order; one index range scan per
  // range.
  const std::string& gap_read_sql() const { return gap_read_sql_; }
  // The snapshot right after a claim, for GapSnapshot: xmin and xmax of
  // pg_current_snapshot() and the youngest running transaction id (32-bit,
  // NULL when none) as text, and with GapFill::kOpenSessions the pids of the
  // other sessions connected to the database (a text array).
  const std::string& snapshot_sql() const { return snapshot_sql_; }
  // What can fill a gap in the ordering column: kOpenTransactions when it
  // takes its values from a sequence with CACHE 1, else kOpenSessions.
  GapFill gap_fill() const { return gap_fill_; }
  // Why gap_fill() is what it is, for the log ("sequence public.outbox_seq_seq
  // caches 20 values per session").
  const std::string& gap_fill_reason() const { return gap_fill_reason_; }
  // SELECT of the positions of up to $2 unsent rows with position <= $1.
  const std::string& sweep_sql() const { return sweep_sql_; }
  // SELECT whether an unsent row with position > $1 was inserted by one of
  // the transactions in the xid array $2 (a scan of the rows past $1).
  const std::string& split_check_sql() const { return split_check_sql_; }
  // SELECT of the unsent rows whose positions are in the array $1.
  const std::string& fetch_sql() const { return fetch_sql_; }
  // DELETE or UPDATE (mark sent) of the rows whose positions are in $1.
  const std::string& checkpoint_sql() const { return checkpoint_sql_; }
  // SELECT count(*), min(position), max(position) of the unsent rows (for
  // the pending-rows metrics).
  const std::string& stats_sql() const { return stats_sql_; }

  // Converts one result row of the claim or fetch queries: column 0 is the
  // position, then the router's columns (bytea decoded to raw bytes), then
  // the inserting transaction (TransactionAt()).
  OutboxPosition PositionAt(const PGresult* res, int row) const;
  Row RowAt(const PGresult* res, int row) const;
  // The id of the transaction that inserted the row (its xmin), as text.
  std::string TransactionAt(const PGresult* res, int row) const;

 private:
  std::string name_;
  unsigned oid_ = 0;
  std::vector<std::string> columns_;  // router columns, in select order
  std::vector<bool> is_bytea_;        // per router column
  GapFill gap_fill_ = GapFill::kOpenSessions;
  std::string gap_fill_reason_;
  std::string claim_after_sql_, claim_first_sql_, gap_read_sql_, snapshot_sql_, sweep_sql_, fetch_sql_, checkpoint_sql_,
      stats_sql_, split_check_sql_;
};

}  // namespace outboxd
