#pragma once
// The outbox schema the tests and the benchmark create: a Debezium-shaped
// outbox table and the NOTIFY trigger users add (README.md). Header-only
// SQL builders; no connections.

#include <string>

namespace outboxd::testing {

// CREATE TABLE for a Debezium-shaped outbox table named `table`, with a
// `sent_at` column for after_delivery = "mark" when asked.
inline std::string OutboxDdl(const std::string& table, bool with_sent_at = false) {
  return "CREATE TABLE " + table +
         " (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
         "  id uuid NOT NULL DEFAULT gen_random_uuid(),"
         "  aggregatetype text NOT NULL,"
         "  aggregateid text NOT NULL,"
         "  type text NOT NULL,"
         "  payload jsonb,"
         "  created_at timestamptz NOT NULL DEFAULT now()" +
         std::string(with_sent_at ? ", sent_at timestamptz" : "") + ")";
}

// A statement-level trigger on `table` that sends NOTIFY on `channel` after
// every insert; its function is named after the table.
inline std::string NotifyTriggerDdl(const std::string& table, const std::string& channel) {
  std::string function;
  for (char c : table) function += (c == '.' ? '_' : c);
  function += "_notify";
  return "CREATE FUNCTION " + function +
         "() RETURNS trigger LANGUAGE plpgsql AS $$ "
         "BEGIN PERFORM pg_notify('" +
         channel +
         "', ''); RETURN NULL; END $$;"
         "CREATE TRIGGER outbox_notify AFTER INSERT ON " +
         table + " FOR EACH STATEMENT EXECUTE FUNCTION " + function + "()";
}

}  // namespace outboxd::testing
