#pragma once
// Fixture for end-to-end tests of the poll relay: a fresh database with a
// Debezium-shaped outbox table, a fresh topic, and an outboxd process run from
// a TOML file the test writes, as users run it.

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "tests/harness/test_env.h"

namespace outboxd::testing {

// CREATE TABLE statement for a Debezium-shaped outbox table named `table`.
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

// The trigger users add so outboxd wakes up at once (docs/configuration.md).
inline std::string NotifyTriggerDdl(const std::string& table, const std::string& channel) {
  return "CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$ "
         "BEGIN PERFORM pg_notify('" + channel + "', ''); RETURN NULL; END $$;"
         "CREATE TRIGGER outbox_notify AFTER INSERT ON " + table +
         " FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify()";
}

inline std::string HeaderValue(const KafkaRecord& r, const std::string& name) {
  for (const auto& [k, v] : r.headers) {
    if (k == name) return v;
  }
  return "<missing header " + name + ">";
}

// Distinct ids present among `records` (their "id" header).
inline std::set<std::string> Ids(const std::vector<KafkaRecord>& records) {
  std::set<std::string> ids;
  for (const auto& r : records) ids.insert(HeaderValue(r, "id"));
  return ids;
}

}  // namespace outboxd::testing
