#include "daemon/init_sql.h"

#include <algorithm>
#include <set>
#include <utility>

#include "common/pg.h"
#include "pipeline/router.h"

namespace outboxd {

namespace {

struct TableName {
  std::string schema;
  std::string table;
  std::string Quoted() const { return QuoteIdentifierStandard(schema) + "." + QuoteIdentifierStandard(table); }
};

// The same split as QuoteQualifiedTable(): the first '.' separates schema and
// table; no schema means "public".
TableName SplitTable(std::string_view name) {
  const auto dot = name.find('.');
  if (dot == std::string_view::npos) return {"public", std::string(name)};
  return {std::string(name.substr(0, dot)), std::string(name.substr(dot + 1))};
}

// Columns in creation order; the first definition of a name wins, so that the
// roles with stronger types (position, id, payload) are not redefined as text
// by a header naming the same column.
class ColumnList {
 public:
  void Add(const std::string& name, const std::string& definition) {
    if (!seen_.insert(name).second) return;
    columns_.push_back("  " + QuoteIdentifierStandard(name) + " " + definition);
  }
  std::string Joined() const {
    std::string out;
    for (const auto& c : columns_) {
      if (!out.empty()) out += ",\n";
      out += c;
    }
    return out;
  }

 private:
  std::set<std::string> seen_;
  std::vector<std::string> columns_;
};

// A dollar-quote tag that does not occur in `body`.
std::string DollarTag(const std::string& body) {
  std::string tag = "$outboxd$";
  for (int i = 0; body.find(tag) != std::string::npos; ++i) tag = "$outboxd" + std::to_string(i) + "$";
  return tag;
}

std::vector<std::string> CapturedTables(const Config& config) {
  std::vector<std::string> tables;
  for (const auto& o : config.outboxes) {
    if (o.source == OutboxSource::kCdc) tables.push_back(o.table);
  }
  if (config.cdc) tables.insert(tables.end(), config.cdc->tables.begin(), config.cdc->tables.end());
  return tables;
}

}  // namespace

Result<std::vector<std::string>> OutboxTableInitSql(const OutboxTableConfig& config) {
  const std::string where = " (configured at " + config.config_location + ")";
  if (config.source != OutboxSource::kPoll) {
    return Status::InvalidConfig("\"" + config.table + "\" is captured through [cdc], not polled" + where);
  }
  auto topic = TopicTemplate::Parse(config.topic);
  if (!topic.ok()) return topic.status().Prefixed("\"" + config.table + "\": topic" + where);

  const TableName name = SplitTable(config.table);
  const std::string qtable = name.Quoted();
  const bool mark = config.after_delivery == AfterDelivery::kMark;

  ColumnList columns;
  columns.Add(config.order_by, "bigint GENERATED ALWAYS AS IDENTITY");
  columns.Add(config.id, "uuid PRIMARY KEY DEFAULT gen_random_uuid()");
  // Debezium's outbox columns; aggregateid is replaced by a configured key.
  for (const auto& column : topic->columns()) columns.Add(column, "text NOT NULL");
  columns.Add("aggregatetype", "text NOT NULL");
  columns.Add(config.key.value_or("aggregateid"), "text NOT NULL");
  columns.Add("type", "text NOT NULL");
  columns.Add(config.payload, "jsonb");
  for (const auto& [header, column] : config.headers) columns.Add(column, "text");
  // Record timestamp when configured, else only there for operators
  // (`outboxd status` uses it only when `timestamp` names it).
  columns.Add(config.timestamp.value_or("created_at"), "timestamptz NOT NULL DEFAULT now()");
  if (mark) columns.Add(*config.sent_column, "timestamptz");

  std::vector<std::string> sql;
  sql.push_back("-- outbox table \"" + config.table + "\" (after_delivery = \"" + (mark ? "mark" : "delete") +
                "\")\nCREATE TABLE IF NOT EXISTS " + qtable + " (\n" + columns.Joined() + "\n)");

  // The claim reads unsent rows in order_by order after a position, the
  // checkpoint finds them by order_by: a btree on order_by, restricted to
  // unsent rows in mark mode so that it stays as small as the backlog.
  const std::string qorder = QuoteIdentifierStandard(config.order_by);
  if (mark) {
    sql.push_back("CREATE INDEX IF NOT EXISTS " +
                  QuoteIdentifierStandard(name.table + "_" + config.order_by + "_unsent") + " ON " + qtable + " (" +
                  qorder + ") WHERE " + QuoteIdentifierStandard(*config.sent_column) + " IS NULL");
  } else {
    sql.push_back("CREATE UNIQUE INDEX IF NOT EXISTS " +
                  QuoteIdentifierStandard(name.table + "_" + config.order_by + "_key") + " ON " + qtable + " (" +
                  qorder + ")");
  }

  if (config.notify_channel) {
    // Statement level with an empty payload: PostgreSQL folds identical
    // notifications of a transaction into one, and outboxd ignores payloads.
    const std::string function =
        QuoteIdentifierStandard(name.schema) + "." + QuoteIdentifierStandard(name.table + "_outboxd_notify");
    const std::string body = "\nBEGIN\n  PERFORM pg_notify(" + QuoteLiteralStandard(*config.notify_channel) +
                             ", '');\n  RETURN NULL;\nEND\n";
    const std::string tag = DollarTag(body);
    sql.push_back("-- wakes outboxd at commit (notify_channel = \"" + *config.notify_channel +
                  "\")\nCREATE OR REPLACE FUNCTION " + function + "() RETURNS trigger LANGUAGE plpgsql AS " + tag +
                  body + tag);
    // CREATE OR REPLACE TRIGGER needs PostgreSQL 14.
    sql.push_back("DROP TRIGGER IF EXISTS outboxd_notify ON " + qtable);
    sql.push_back("CREATE TRIGGER outboxd_notify AFTER INSERT ON " + qtable + " FOR EACH STATEMENT EXECUTE FUNCTION " +
                  function + "()");
  }
  return sql;
}

Result<std::vector<std::string>> PollOutboxInitSql(const Config& config) {
  std::vector<std::string> sql;
  for (const auto& o : config.outboxes) {
    if (o.source != OutboxSource::kPoll) continue;
    auto table = OutboxTableInitSql(o);
    if (!table.ok()) return table.status();
    sql.insert(sql.end(), table->begin(), table->end());
  }
  return sql;
}

std::vector<std::string> GrantSql(const Config& config, std::string_view role_name) {
  const std::string role = QuoteIdentifierStandard(role_name);
  const std::string role_literal = QuoteLiteralStandard(role_name);
  std::vector<std::string> sql;
  sql.push_back(
      "-- the role outboxd connects as; give it a password (\\password) or another way to log in\n"
      "DO $outboxd$ BEGIN\n  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = " +
      role_literal + ") THEN\n    CREATE ROLE " + role + " LOGIN;\n  END IF;\nEND $outboxd$");
  sql.push_back("DO $outboxd$ BEGIN\n  EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), " +
                role_literal + ");\nEND $outboxd$");

  std::vector<std::string> schemas;
  auto add_schema = [&](std::string_view table) {
    std::string schema = SplitTable(table).schema;
    if (std::find(schemas.begin(), schemas.end(), schema) == schemas.end()) schemas.push_back(std::move(schema));
  };
  for (const auto& o : config.outboxes) add_schema(o.table);
  for (const auto& t : CapturedTables(config)) add_schema(t);
  if (config.cdc) add_schema(config.cdc->state_table);
  for (const auto& s : schemas) sql.push_back("GRANT USAGE ON SCHEMA " + QuoteIdentifierStandard(s) + " TO " + role);

  for (const auto& o : config.outboxes) {
    if (o.source != OutboxSource::kPoll) continue;
    const std::string qtable = SplitTable(o.table).Quoted();
    if (o.after_delivery == AfterDelivery::kMark) {
      sql.push_back("GRANT SELECT, UPDATE (" + QuoteIdentifierStandard(*o.sent_column) + ") ON " + qtable + " TO " +
                    role);
    } else {
      sql.push_back("GRANT SELECT, DELETE ON " + qtable + " TO " + role);
    }
  }

  if (config.cdc) {
    sql.push_back("-- replication connections; only a superuser may run this\nALTER ROLE " + role + " REPLICATION");
    for (const auto& t : CapturedTables(config)) {
      sql.push_back("GRANT SELECT ON " + SplitTable(t).Quoted() + " TO " + role);
    }
    sql.push_back("GRANT SELECT, INSERT, UPDATE ON " + SplitTable(config.cdc->state_table).Quoted() + " TO " + role);
  }
  return sql;
}

Result<std::vector<std::string>> OutboxInitSql(const Config& config, std::string_view role) {
  auto sql = PollOutboxInitSql(config);
  if (!sql.ok()) return sql.status();
  auto grants = GrantSql(config, role);
  sql->insert(sql->end(), grants.begin(), grants.end());
  return sql;
}

}  // namespace outboxd
