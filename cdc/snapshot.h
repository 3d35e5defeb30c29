#pragma once
// The initial snapshot of captured tables ([cdc] snapshot = "initial"): read
// with the snapshot a new slot exported, so that the rows read and the
// changes streamed from the slot's consistent point together give every row
// exactly once.
//
// DescribeTable() reads a table's definition from the catalog in the shape
// of a pgoutput Relation message (same columns — generated ones left out —
// same replica identity key flags), so the ChangeMapper maps snapshot rows
// and streamed changes alike. SnapshotCursor reads a table in batches inside
// the snapshot's transaction. Not thread-safe; the PgConn must outlive them.

#include <string>
#include <string_view>
#include <vector>

#include "cdc/pgoutput_decoder.h"
#include "common/pg.h"
#include "common/status.h"

namespace outboxd {

// `table` is "schema.table" or "table" (public). kInvalidConfig when it does
// not exist.
[[nodiscard]] Result<RelationMsg> DescribeTable(const PgConn& conn, std::string_view table);

// BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT.
[[nodiscard]] Status BeginSnapshotTransaction(const PgConn& conn, const std::string& snapshot_name);
[[nodiscard]] Status EndSnapshotTransaction(const PgConn& conn);

// A cursor over every row of one table, in text format, inside the snapshot
// transaction.
class SnapshotCursor {
 public:
  [[nodiscard]] static Result<SnapshotCursor> Open(const PgConn& conn, const RelationMsg& relation);
  // Up to `max_rows` rows in the relation's column order; empty when done.
  [[nodiscard]] Result<std::vector<TupleData>> Next(int max_rows);
  [[nodiscard]] Status Close();

 private:
  explicit SnapshotCursor(const PgConn& conn) : conn_(&conn) {}
  const PgConn* conn_;
};

}  // namespace outboxd
