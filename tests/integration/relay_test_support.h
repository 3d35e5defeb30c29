#pragma once
// Fixture for end-to-end tests of the poll relay: a fresh database with a
// Debezium-shaped outbox table, a fresh topic, and an outboxd process run from
// a TOML file the test writes, as users run it.

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "tests/harness/outbox_schema.h"
#include "tests/harness/test_env.h"

namespace outboxd::testing {

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
