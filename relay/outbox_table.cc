#include "relay/outbox_table.h"

#include "common/pg_types.h"

#include <cstdlib>
#include <map>

namespace outboxd {

Result<OutboxTable> OutboxTable::Resolve(const PgConn& conn, const OutboxTableConfig& config, const Router& router) {
  const std::string where = " (configured at " + config.config_location + ")";
  auto rel = conn.Exec(
      "SELECT n.nspname, c.relname, c.oid::bigint, c.relkind::text FROM pg_class c "
      "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
      {config.table});
  if (!rel.ok()) return rel.status().Prefixed("could not look up table \"" + config.table + "\"");
  if (PQntuples(rel->get()) != 1) {
    return Status::InvalidConfig("table \"" + config.table + "\" does not exist" + where);
  }
  OutboxTable t;
  const std::string schema = PQgetvalue(rel->get(), 0, 0);
  const std::string table = PQgetvalue(rel->get(), 0, 1);
  t.oid_ = static_cast<unsigned>(std::strtoul(PQgetvalue(rel->get(), 0, 2), nullptr, 10));
  t.name_ = schema + "." + table;
  const std::string relkind = PQgetvalue(rel->get(), 0, 3);
  if (relkind != "r" && relkind != "p") {
    return Status::InvalidConfig("\"" + t.name_ + "\" is not a table" + where);
  }

  auto cols = conn.Exec(
      "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute "
      "WHERE attrelid = $1::oid AND attnum > 0 AND NOT attisdropped",
      {std::to_string(t.oid_)});
  if (!cols.ok()) return cols.status().Prefixed("could not read the columns of \"" + t.name_ + "\"");
  std::map<std::string, std::string> types;
  for (int i = 0; i < PQntuples(cols->get()); ++i) {
    types[PQgetvalue(cols->get(), i, 0)] = PQgetvalue(cols->get(), i, 1);
  }
  auto require = [&](const std::string& column, const std::string& role) -> Result<std::string> {
    auto it = types.find(column);
    if (it == types.end()) {
      return Status::InvalidConfig("table \"" + t.name_ + "\" has no column \"" + column + "\" (the " + role +
                                   " column)" + where);
    }
    return it->second;
  };

  auto order_type = require(config.order_by, "order_by");
  if (!order_type.ok()) return order_type.status();
  if (!IsIntegerType(*order_type)) {
    return Status::InvalidConfig("column \"" + t.name_ + "." + config.order_by + "\" is " + *order_type +
                                 "; order_by needs an integer column (bigint identity)" + where);
  }

  const std::string qtable = conn.QuoteIdentifier(schema) + "." + conn.QuoteIdentifier(table);
  const std::string qorder = conn.QuoteIdentifier(config.order_by);

  // Where the ordering column's values come from: the sequence of an
  // identity or serial column, or one its default calls (nextval), and how
  // many values each session caches from it.
  {
    auto seq = conn.Exec(
        "SELECT s.seqrelid::regclass::text, s.seqcache FROM pg_sequence s WHERE s.seqrelid IN ("
        " SELECT pg_get_serial_sequence($1, $2)::regclass"
        " UNION ALL"
        " SELECT d.refobjid FROM pg_attrdef ad"
        " JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum"
        " JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid"
        "  AND d.refclassid = 'pg_class'::regclass"
        " WHERE ad.adrelid = $3::oid AND a.attname = $2)"
        " ORDER BY s.seqcache DESC LIMIT 1",
        {qtable, config.order_by, std::to_string(t.oid_)});
    if (!seq.ok()) {
      return seq.status().Prefixed("could not find the sequence of \"" + t.name_ + "." + config.order_by + "\"");
    }
    if (PQntuples(seq->get()) == 0) {
      t.gap_fill_ = GapFill::kOpenSessions;
      t.gap_fill_reason_ = "no sequence fills \"" + config.order_by + "\"";
    } else {
      const std::string name = PQgetvalue(seq->get(), 0, 0);
      const std::string cache = PQgetvalue(seq->get(), 0, 1);
      t.gap_fill_ = cache == "1" ? GapFill::kOpenTransactions : GapFill::kOpenSessions;
      t.gap_fill_reason_ =
          "sequence " + name + " caches " + cache + " value" + (cache == "1" ? "" : "s") + " per session";
    }
  }
  std::string unsent;  // extra WHERE condition for mark mode
  if (config.after_delivery == AfterDelivery::kMark) {
    auto sent_type = require(*config.sent_column, "sent_column");
    if (!sent_type.ok()) return sent_type.status();
    if (!IsTimestampType(*sent_type)) {
      return Status::InvalidConfig("column \"" + t.name_ + "." + *config.sent_column + "\" is " + *sent_type +
                                   "; sent_column needs timestamptz or timestamp" + where);
    }
    unsent = " AND " + conn.QuoteIdentifier(*config.sent_column) + " IS NULL";
  }

  // Missing privileges would otherwise surface as a retry loop on the first
  // claim or checkpoint.
  {
    const bool mark = config.after_delivery == AfterDelivery::kMark;
    auto priv = conn.Exec("SELECT has_table_privilege($1::oid, 'SELECT'), " +
                              std::string(mark ? "has_column_privilege($1::oid, $2, 'UPDATE')"
                                               : "has_table_privilege($1::oid, 'DELETE')"),
                          mark ? std::vector<std::optional<std::string>>{std::to_string(t.oid_), *config.sent_column}
                               : std::vector<std::optional<std::string>>{std::to_string(t.oid_)});
    if (!priv.ok()) return priv.status().Prefixed("could not check privileges on \"" + t.name_ + "\"");
    if (std::string_view(PQgetvalue(priv->get(), 0, 0)) != "t") {
      return Status::InvalidConfig("the outboxd role may not SELECT from \"" + t.name_ + "\"" + where);
    }
    if (std::string_view(PQgetvalue(priv->get(), 0, 1)) != "t") {
      return Status::InvalidConfig(mark ? "the outboxd role may not UPDATE column \"" + t.name_ + "." +
                                              *config.sent_column + "\" (after_delivery = \"mark\")" + where
                                        : "the outboxd role may not DELETE from \"" + t.name_ +
                                              "\" (after_delivery = \"delete\")" + where);
    }
  }

  std::string select = qorder;
  for (const std::string& column : router.RequiredColumns()) {
    std::string role = "routing";
    if (column == config.id)
      role = "id";
    else if (config.key && column == *config.key)
      role = "key";
    else if (column == config.payload)
      role = "payload";
    else if (config.timestamp && column == *config.timestamp)
      role = "timestamp";
    auto type = require(column, role);
    if (!type.ok()) return type.status();
    const std::string q = conn.QuoteIdentifier(column);
    select += ", ";
    if (config.timestamp && column == *config.timestamp) {
      if (IsTimestampType(*type)) {
        select += "(extract(epoch from " + q + ") * 1000)::bigint";
      } else if (IsIntegerType(*type)) {
        select += q;
      } else {
        return Status::InvalidConfig("column \"" + t.name_ + "." + column + "\" is " + *type +
                                     "; the timestamp column must be a timestamp or epoch "
                                     "milliseconds" +
                                     where);
      }
    } else {
      select += q;
    }
    t.columns_.push_back(column);
    t.is_bytea_.push_back(*type == "bytea");
  }

  // Last: the inserting transaction (exactly once, a Kafka transaction never
  // ends inside a PostgreSQL transaction's rows).
  select += ", xmin::text";
  const std::string from = " FROM " + qtable + " WHERE true" + unsent;
  t.claim_after_sql_ =
      "SELECT " + select + from + " AND " + qorder + " > $1::bigint ORDER BY " + qorder + " LIMIT $2::int";
  // Counted up to kPendingCountCap rows, so a large backlog is not a full
  // scan every 10 s; min and max come from the ordering column's index.
  t.stats_sql_ = "SELECT (SELECT count(*) FROM (SELECT 1" + from + " LIMIT " + std::to_string(kPendingCountCap) +
                 ") c), (SELECT min(" + qorder + ")" + from + "), (SELECT max(" + qorder + ")" + from + ")";
  t.claim_first_sql_ = "SELECT " + select + from + " ORDER BY " + qorder + " LIMIT $1::int";
  t.gap_read_sql_ =
      "SELECT r.* FROM unnest($1::bigint[], $2::bigint[]) AS g(first, last) "
      "CROSS JOIN LATERAL (SELECT " +
      select + from + " AND " + qorder + " BETWEEN g.first AND g.last ORDER BY " + qorder +
      " LIMIT $3::int) r ORDER BY 1 LIMIT $3::int";
  // Sessions of outboxd itself (application_name "outboxd": standbys,
  // `outboxd status`) never insert outbox rows, and a standby stays connected
  // for as long as the active instance: they do not hold gaps open.
  // The youngest transaction id still running (pg_snapshot_xmax can be it):
  // the one with the smallest age, among backends and prepared transactions.
  t.snapshot_sql_ =
      "SELECT pg_snapshot_xmin(s)::text, pg_snapshot_xmax(s)::text,"
      " (SELECT x::text FROM (SELECT backend_xid AS x FROM pg_stat_activity"
      "  UNION ALL SELECT transaction FROM pg_prepared_xacts) r"
      "  WHERE x IS NOT NULL ORDER BY age(x) LIMIT 1)" +
      std::string(t.gap_fill_ == GapFill::kOpenSessions
                      ? ", (SELECT coalesce(array_agg(pid), '{}')::text FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        " AND application_name IS DISTINCT FROM 'outboxd')"
                      : "") +
      " FROM pg_current_snapshot() s";
  t.sweep_sql_ = "SELECT " + qorder + from + " AND " + qorder + " <= $1::bigint ORDER BY " + qorder + " LIMIT $2::int";
  t.split_check_sql_ = "SELECT EXISTS (SELECT 1" + from + " AND " + qorder + " > $1::bigint AND xmin = ANY($2::xid[]))";
  t.fetch_sql_ = "SELECT " + select + from + " AND " + qorder + " = ANY($1::bigint[]) ORDER BY " + qorder;
  if (config.after_delivery == AfterDelivery::kDelete) {
    t.checkpoint_sql_ = "DELETE FROM " + qtable + " WHERE " + qorder + " = ANY($1::bigint[])";
  } else {
    t.checkpoint_sql_ = "UPDATE " + qtable + " SET " + conn.QuoteIdentifier(*config.sent_column) + " = now() WHERE " +
                        qorder + " = ANY($1::bigint[])" + unsent;
  }
  return t;
}

OutboxPosition OutboxTable::PositionAt(const PGresult* res, int row) const {
  return OutboxPosition{std::strtoll(PQgetvalue(res, row, 0), nullptr, 10)};
}

std::string OutboxTable::TransactionAt(const PGresult* res, int row) const {
  return PQgetvalue(res, row, static_cast<int>(columns_.size()) + 1);
}

Row OutboxTable::RowAt(const PGresult* res, int row) const {
  Row r;
  r.columns = columns_;
  r.values.reserve(columns_.size());
  for (std::size_t i = 0; i < columns_.size(); ++i) {
    const int field = static_cast<int>(i) + 1;
    if (PQgetisnull(res, row, field)) {
      r.values.emplace_back(std::nullopt);
      continue;
    }
    const char* text = PQgetvalue(res, row, field);
    if (is_bytea_[i]) {
      std::size_t len = 0;
      unsigned char* raw = PQunescapeBytea(reinterpret_cast<const unsigned char*>(text), &len);
      r.values.emplace_back(std::string(reinterpret_cast<const char*>(raw), len));
      PQfreemem(raw);
    } else {
      r.values.emplace_back(std::string(text, PQgetlength(res, row, field)));
    }
  }
  return r;
}

}  // namespace outboxd
