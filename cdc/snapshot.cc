#include "cdc/snapshot.h"

#include <cstdlib>

#include "cdc/slot_status.h"

namespace outboxd {

namespace {

constexpr const char* kCursor = "outboxd_snapshot";

// Key flags as pgoutput sets them: every column with REPLICA IDENTITY FULL,
// the replica identity index's or the primary key's columns otherwise.
constexpr const char* kColumnsSql = R"sql(
SELECT a.attname, a.atttypid, a.atttypmod,
       COALESCE(CASE c.relreplident
         WHEN 'f' THEN true
         WHEN 'i' THEN a.attnum = ANY ((SELECT i.indkey FROM pg_index i
                                        WHERE i.indrelid = c.oid AND i.indisreplident)::int2[])
         WHEN 'd' THEN a.attnum = ANY ((SELECT i.indkey FROM pg_index i
                                        WHERE i.indrelid = c.oid AND i.indisprimary)::int2[])
         ELSE false END, false),
       c.oid, n.nspname, c.relname, c.relreplident
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid
WHERE c.oid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attnum)sql";

}  // namespace

Result<RelationMsg> DescribeTable(const PgConn& conn, std::string_view table) {
  auto res = conn.Exec(kColumnsSql, {QuoteQualifiedTable(table)});
  if (!res.ok()) return res.status().Prefixed("could not describe table \"" + std::string(table) + "\"");
  const PGresult* r = res->get();
  if (PQntuples(r) == 0) return Status::InvalidConfig("table \"" + std::string(table) + "\" does not exist");
  RelationMsg rel;
  rel.oid = static_cast<uint32_t>(std::strtoul(PQgetvalue(r, 0, 4), nullptr, 10));
  rel.namespace_name = PQgetvalue(r, 0, 5);
  rel.name = PQgetvalue(r, 0, 6);
  rel.replica_identity = static_cast<RelationMsg::ReplicaIdentity>(PQgetvalue(r, 0, 7)[0]);
  for (int i = 0; i < PQntuples(r); ++i) {
    RelationColumn col;
    col.name = PQgetvalue(r, i, 0);
    col.type_oid = static_cast<uint32_t>(std::strtoul(PQgetvalue(r, i, 1), nullptr, 10));
    col.typmod = std::atoi(PQgetvalue(r, i, 2));
    col.flags = std::string_view(PQgetvalue(r, i, 3)) == "t" ? RelationColumn::kKeyFlag : 0;
    rel.columns.push_back(std::move(col));
  }
  return rel;
}

Status BeginSnapshotTransaction(const PgConn& conn, const std::string& snapshot_name) {
  auto begin = conn.Exec("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
  if (!begin.ok()) return begin.status().Prefixed("could not begin the snapshot transaction");
  auto set = conn.Exec("SET TRANSACTION SNAPSHOT " + QuoteLiteralStandard(snapshot_name));
  if (!set.ok()) return set.status().Prefixed("could not use the slot's exported snapshot " + snapshot_name);
  return Status::Ok();
}

Status EndSnapshotTransaction(const PgConn& conn) {
  auto end = conn.Exec("COMMIT");
  if (!end.ok()) return end.status().Prefixed("could not end the snapshot transaction");
  return Status::Ok();
}

Result<SnapshotCursor> SnapshotCursor::Open(const PgConn& conn, const RelationMsg& rel) {
  std::string columns;
  for (const RelationColumn& c : rel.columns) {
    if (!columns.empty()) columns += ", ";
    columns += QuoteIdentifierStandard(c.name);
  }
  const std::string table = QuoteIdentifierStandard(rel.namespace_name) + "." + QuoteIdentifierStandard(rel.name);
  auto res =
      conn.Exec(std::string("DECLARE ") + kCursor + " NO SCROLL CURSOR FOR SELECT " + columns + " FROM " + table);
  if (!res.ok()) return res.status().Prefixed("could not read table " + table + " for the snapshot");
  return SnapshotCursor(conn);
}

Result<std::vector<TupleData>> SnapshotCursor::Next(int max_rows) {
  auto res = conn_->Exec("FETCH " + std::to_string(max_rows) + " FROM " + kCursor);
  if (!res.ok()) return res.status().Prefixed("snapshot read failed");
  const PGresult* r = res->get();
  std::vector<TupleData> rows(static_cast<std::size_t>(PQntuples(r)));
  for (int i = 0; i < PQntuples(r); ++i) {
    auto& cols = rows[static_cast<std::size_t>(i)].columns;
    cols.resize(static_cast<std::size_t>(PQnfields(r)));
    for (int j = 0; j < PQnfields(r); ++j) {
      if (PQgetisnull(r, i, j)) continue;  // kNull
      cols[static_cast<std::size_t>(j)].kind = TupleColumn::Kind::kText;
      cols[static_cast<std::size_t>(j)].value.assign(PQgetvalue(r, i, j),
                                                     static_cast<std::size_t>(PQgetlength(r, i, j)));
    }
  }
  return rows;
}

Status SnapshotCursor::Close() {
  auto res = conn_->Exec(std::string("CLOSE ") + kCursor);
  if (!res.ok()) return res.status().Prefixed("could not close the snapshot cursor");
  return Status::Ok();
}

}  // namespace outboxd
