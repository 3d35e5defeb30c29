#pragma once
// Fixture for end-to-end tests of outboxd's cdc mode: a fresh database, a
// replication slot, publication and topic prefix no other test uses (slots
// are cluster-wide and tests run in parallel), a builder for the TOML file
// of a cdc config, and small readers of the slot's position and of JSON
// record values. Used from the test's own thread only.

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/integration/relay_test_support.h"

namespace outboxd::testing {

// The TOML of a cdc config. Fields left empty/nullopt are not written, so
// outboxd's defaults apply.
struct CdcToml {
  std::string conninfo;
  std::string slot;
  std::string publication;
  bool create = true;
  std::vector<std::string> tables;  // [cdc] tables
  std::string topic_prefix;         // empty: default "pg"
  std::optional<std::string> message_prefix;
  std::optional<std::string> message_topic;
  std::optional<std::string> dead_letter_topic;
  std::string status_interval = "500ms";
  std::string log_level = "debug";
  std::string outbox_blocks;  // raw [[outbox]] TOML, written after [cdc]
  std::string cdc_extra;      // raw lines appended to [cdc]
  std::string kafka_extra;    // raw lines appended to [kafka]

  std::string Build() const {
    auto quoted = [](const std::string& s) { return "\"" + s + "\""; };
    std::string t = "[postgres]\nconninfo = " + quoted(conninfo) + "\n" +
                    "[kafka]\nbootstrap_servers = " + quoted(SharedServices().kafka_bootstrap) + "\n" + kafka_extra +
                    "[log]\nlevel = " + quoted(log_level) + "\n" + "[cdc]\nslot = " + quoted(slot) +
                    "\npublication = " + quoted(publication) + "\ncreate = " + (create ? "true" : "false") +
                    "\nstatus_interval = " + quoted(status_interval) + "\n";
    if (!tables.empty()) {
      t += "tables = [";
      for (std::size_t i = 0; i < tables.size(); ++i) t += (i ? ", " : "") + quoted(tables[i]);
      t += "]\n";
    }
    if (!topic_prefix.empty()) t += "topic_prefix = " + quoted(topic_prefix) + "\n";
    if (message_prefix) t += "message_prefix = " + quoted(*message_prefix) + "\n";
    if (message_topic) t += "message_topic = " + quoted(*message_topic) + "\n";
    if (dead_letter_topic) t += "dead_letter_topic = " + quoted(*dead_letter_topic) + "\n";
    t += cdc_extra + "\n" + outbox_blocks + "\n";
    return t;
  }
};

// Parses a record's key or value as JSON; a null or unparseable input is a
// test failure and returns a discarded value.
inline nlohmann::json ParseJson(const std::optional<std::string>& text) {
  if (!text) {
    ADD_FAILURE() << "expected JSON, got a null key/value";
    return nlohmann::json(nlohmann::json::value_t::discarded);
  }
  auto j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) ADD_FAILURE() << "not JSON: " << *text;
  return j;
}

// "16/B374D848" → 0x16B374D848.
inline uint64_t ParseLsn(const std::string& text) {
  unsigned int hi = 0, lo = 0;
  if (std::sscanf(text.c_str(), "%X/%X", &hi, &lo) != 2) throw HarnessError("not an LSN: " + text);
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

// The id the spec prescribes for the event at `index` of the transaction
// committed at `commit_lsn`: LLLLLLLL-LLLL-8LLL-8Lii-iiiiiiiiiiii.
inline std::string ExpectedEventId(uint64_t commit_lsn, uint64_t index) {
  char l[17], i[15];
  std::snprintf(l, sizeof l, "%016llx", static_cast<unsigned long long>(commit_lsn));
  std::snprintf(i, sizeof i, "%014llx", static_cast<unsigned long long>(index & 0x00ffffffffffffffULL));
  const std::string L(l), I(i);
  return L.substr(0, 8) + "-" + L.substr(8, 4) + "-8" + L.substr(12, 3) + "-8" + L.substr(15, 1) + I.substr(0, 2) +
         "-" + I.substr(2);
}

// The 64-bit LSN spelled by a version-8 event id (inverse of ExpectedEventId).
inline uint64_t LsnOfEventId(const std::string& id) {
  if (id.size() != 36) return 0;
  const std::string hex = id.substr(0, 8) + id.substr(9, 4) + id.substr(15, 3) + id.substr(20, 1);
  return std::stoull(hex, nullptr, 16);
}

class CdcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = std::make_unique<TestDatabase>();
    // The database name is unique and already [a-z0-9_].
    std::string suffix = db_->name();
    if (suffix.starts_with("outboxd_test_")) suffix = suffix.substr(13);
    slot_ = "s_" + suffix;
    publication_ = "p_" + suffix;
    topic_prefix_ = UniqueTopic("pg");
  }

  // A config on this test's database, slot, publication and topic prefix.
  CdcToml Toml() const {
    CdcToml t;
    t.conninfo = db_->conninfo();
    t.slot = slot_;
    t.publication = publication_;
    t.topic_prefix = topic_prefix_;
    return t;
  }

  // Row-change topic of a captured table.
  std::string TableTopic(const std::string& table, const std::string& schema = "public") const {
    return topic_prefix_ + "." + schema + "." + table;
  }

  int64_t SlotCount(const std::string& where = "true") const {
    return db_->QueryInt64("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '" + slot_ + "' AND " + where);
  }

  // Starts outboxd and waits until it streams from the slot, so that changes
  // written afterwards are captured. False when outboxd exited or the
  // deadline passed. A slot is also active while it is being created, before
  // its consistent point (confirmed_flush_lsn still NULL); what commits before
  // that point is not the slot's to stream, hence both conditions.
  [[nodiscard]] bool StartStreaming(OutboxdProcess& outboxd,
                                    std::chrono::milliseconds deadline = std::chrono::seconds(60)) const {
    outboxd.Start();
    return WaitUntil([&] { return SlotCount("active AND confirmed_flush_lsn IS NOT NULL") == 1 || !outboxd.Running(); },
                     deadline) &&
           outboxd.Running();
  }

  // The slot's confirmed_flush_lsn; nullopt without slot (or position).
  std::optional<uint64_t> ConfirmedFlushLsn() const {
    auto rows =
        db_->Query("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '" + slot_ + "'");
    if (rows.empty() || !rows[0][0]) return std::nullopt;
    return ParseLsn(*rows[0][0]);
  }

  // pg_current_wal_lsn(): what the spec compares confirmed_flush_lsn with.
  uint64_t CurrentWalLsn() const { return ParseLsn(db_->QueryString("SELECT pg_current_wal_lsn()::text")); }
  // The WAL insert position: past every record written so far, also commit
  // records not yet written out (the suite runs with synchronous_commit = off).
  uint64_t CurrentWalInsertLsn() const {
    return ParseLsn(db_->QueryString("SELECT pg_current_wal_insert_lsn()::text"));
  }

  // Waits until the slot's confirmed_flush_lsn has reached `lsn`.
  [[nodiscard]] bool WaitConfirmed(uint64_t lsn, std::chrono::milliseconds deadline = std::chrono::seconds(30)) const {
    return WaitUntil([&] { return ConfirmedFlushLsn().value_or(0) >= lsn; }, deadline, std::chrono::milliseconds(100));
  }

  std::vector<KafkaRecord> Consume(const std::string& topic, std::size_t n,
                                   std::chrono::milliseconds deadline = std::chrono::seconds(60)) const {
    auto records = ConsumeTopic(SharedServices().kafka_bootstrap, topic, n, deadline);
    EXPECT_GE(records.size(), n) << "topic " << topic;
    return records;
  }

  std::unique_ptr<TestDatabase> db_;
  std::string slot_;
  std::string publication_;
  std::string topic_prefix_;
};

}  // namespace outboxd::testing
