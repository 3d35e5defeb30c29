#pragma once
// The SQL `outboxd init` adds to the [cdc] set-up (cdc/slot_status.h
// InitSql): for every poll [[outbox]] table, the table itself with the
// columns its block routes from, the index outboxd's claim queries scan and
// the NOTIFY trigger of its notify_channel; and for a role outboxd connects
// as, the least privileges that configuration needs.
//
// Pure functions of a Config: no connection, nothing run. Every statement is
// one SQL statement (a leading "-- comment" line at most), safe to run again
// (IF NOT EXISTS / OR REPLACE / DROP ... IF EXISTS), and valid on
// PostgreSQL 13 and later. Identifiers and literals are quoted, so any table,
// column, channel or role name is safe. Not synchronised; no state.

#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "config/config.h"

namespace outboxd {

// The role `outboxd init --role` grants to when not given.
inline constexpr std::string_view kDefaultInitRole = "outboxd";

// The statements that create one poll outbox table, in order: CREATE TABLE
// IF NOT EXISTS, its claim index, and (with notify_channel) the trigger
// function and the statement-level AFTER INSERT trigger. Columns: the
// order_by column as bigint GENERATED ALWAYS AS IDENTITY, the id column as
// uuid PRIMARY KEY DEFAULT gen_random_uuid(), aggregatetype, aggregateid (or
// the key column), type as text NOT NULL, the payload column as jsonb, the
// other columns the topic template and headers name as text (NOT NULL for
// the topic), the timestamp column (default "created_at") as timestamptz NOT
// NULL DEFAULT now(), and with after_delivery = "mark" the sent_column as
// timestamptz. An existing table is left as it is. kInvalidConfig for a cdc
// block or a topic template that does not parse.
[[nodiscard]] Result<std::vector<std::string>> OutboxTableInitSql(const OutboxTableConfig& config);

// OutboxTableInitSql() for every poll [[outbox]] block, in config order.
[[nodiscard]] Result<std::vector<std::string>> PollOutboxInitSql(const Config& config);

// The least privileges for `role` to run `config`: the role itself (CREATE
// ROLE ... LOGIN if missing, no password), CONNECT on the current database,
// USAGE on every schema involved; per poll table SELECT plus DELETE, or
// UPDATE (sent_column) for after_delivery = "mark"; with [cdc]: ALTER ROLE
// ... REPLICATION (needs a superuser), SELECT on the captured tables (cdc
// outbox tables and [cdc] tables) and SELECT, INSERT, UPDATE on the state
// table. Run after the tables and the state table exist.
[[nodiscard]] std::vector<std::string> GrantSql(const Config& config, std::string_view role);

// PollOutboxInitSql() followed by GrantSql(): what `outboxd init --dry-run`
// prints after the [cdc] statements.
[[nodiscard]] Result<std::vector<std::string>> OutboxInitSql(const Config& config, std::string_view role);

}  // namespace outboxd
