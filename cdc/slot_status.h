#pragma once
// SlotStatus: what pg_replication_slots says about outboxd's logical
// replication slot, read on an ordinary (non-replication) connection, and the
// checks and set-up built on it: is the slot usable for streaming, and
// creating the publication and slot (`outboxd init`, `[cdc] create = true`)
// — also as SQL text for `outboxd init --dry-run`, so a DBA can apply it by
// hand.
//
// Every error names the slot or publication. A missing slot is
// kInvalidConfig here (nothing has streamed yet; the operator must create it
// or enable `create`); an invalidated slot (wal_status = lost), a slot of
// another plugin, type or database is kPermanent: outboxd must stop and say
// why, never replace it.
//
// Free functions and value types; the PgConn passed in must stay open for the
// call only. Not synchronised.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/lsn.h"
#include "common/pg.h"
#include "common/status.h"

namespace outboxd {

struct SlotStatus {
  std::string slot_name;
  std::string plugin;     // "pgoutput" for outboxd's slots
  std::string slot_type;  // "logical" or "physical"
  std::string database;   // empty for physical slots
  bool active = false;
  std::optional<int> active_pid;
  std::optional<Lsn> restart_lsn;
  std::optional<Lsn> confirmed_flush_lsn;
  std::string wal_status;  // reserved | extended | unreserved | lost (empty if NULL)
};

// The slot's row, or nullopt when there is no slot of that name.
[[nodiscard]] Result<std::optional<SlotStatus>> ReadSlotStatus(const PgConn& conn, std::string_view slot);

// OK if `status` describes a logical pgoutput slot on `database` whose WAL is
// still there; otherwise an error naming the slot and what is wrong.
[[nodiscard]] Status CheckSlotUsable(std::string_view slot, const std::optional<SlotStatus>& status,
                                     std::string_view database);

// "schema.table" (or "table": public) as a quoted qualified name,
// "\"public\".\"orders\"". The first '.' separates schema and table.
std::string QuoteQualifiedTable(std::string_view table);

// CREATE PUBLICATION "pub" [FOR TABLE "s"."t", ...]. With no tables the
// publication carries only logical decoding messages.
std::string CreatePublicationSql(std::string_view publication, const std::vector<std::string>& tables);
// ALTER PUBLICATION "pub" ADD TABLE ... for tables missing from it.
std::string AddTablesToPublicationSql(std::string_view publication, const std::vector<std::string>& tables);
// SELECT pg_create_logical_replication_slot('slot', 'pgoutput'). The slot
// name must pass ValidateSlotName().
std::string CreateSlotSql(std::string_view slot);
// What `outboxd init --dry-run` prints for a fresh database, in order:
// publication, slot, state table.
[[nodiscard]] Result<std::vector<std::string>> InitSql(std::string_view slot, std::string_view publication,
                                                       const std::vector<std::string>& tables,
                                                       std::string_view state_table);

// Makes sure the publication exists and contains `tables`, and that the slot
// exists and is usable on the connection's database. With `create`, missing
// pieces are created (tables missing from an existing publication are
// added); without it they are kInvalidConfig errors. Returns the statements
// it ran. The caller must pass create = false for a slot it has streamed from
// before: a slot that vanished must stop outboxd, not be re-created.
// The two halves of EnsureSlotAndPublication. The publication must exist
// before the slot: pgoutput looks it up as of each change it decodes.
[[nodiscard]] Result<std::vector<std::string>> EnsurePublication(const PgConn& conn, std::string_view publication,
                                                                 const std::vector<std::string>& tables, bool create);
[[nodiscard]] Result<std::vector<std::string>> EnsureSlot(const PgConn& conn, std::string_view slot, bool create);
[[nodiscard]] Result<std::vector<std::string>> EnsureSlotAndPublication(const PgConn& conn, std::string_view slot,
                                                                        std::string_view publication,
                                                                        const std::vector<std::string>& tables,
                                                                        bool create);

// ---------------------------------------------------------------------------
// The slot state table ([cdc] state_table): one row per slot with the last
// position outboxd confirmed from it. A slot's confirmed_flush_lsn moves only
// when outboxd reports a flush, and outboxd writes the row before it reports,
// so for the slot outboxd has been streaming from, confirmed_flush_lsn <= the
// recorded position. A row without its slot means the slot was dropped; a slot
// past its row means it was re-created (or advanced by hand) — in both cases
// changes may have been skipped, and outboxd refuses to go on.

// CREATE TABLE IF NOT EXISTS <state_table> (slot_name, confirmed_lsn,
// snapshot_done, updated_at).
std::string CreateStateTableSql(std::string_view state_table);

struct SlotState {
  Lsn confirmed;  // the last position outboxd reported (or was about to)
  // False while the initial snapshot taken when outboxd created the slot is
  // not yet fully acknowledged: nothing has been confirmed from the slot.
  bool snapshot_done = true;
};

// The row recorded for `slot`; nullopt when there is none. A missing table is
// kInvalidConfig naming it (`outboxd init` creates it).
[[nodiscard]] Result<std::optional<SlotState>> ReadSlotState(const PgConn& conn, std::string_view state_table,
                                                             std::string_view slot);
// Inserts or updates the row of `slot`.
[[nodiscard]] Status WriteSlotState(const PgConn& conn, std::string_view state_table, std::string_view slot,
                                    const SlotState& state);
[[nodiscard]] Status DeleteSlotState(const PgConn& conn, std::string_view state_table, std::string_view slot);

// OK when the slot is the one the state row describes (or there is no row
// yet); kPermanent naming the slot when it was dropped (`status` empty) or
// re-created (its confirmed_flush_lsn past `recorded`).
[[nodiscard]] Status CheckSlotAgainstState(std::string_view slot, const std::optional<SlotStatus>& status,
                                           const std::optional<Lsn>& recorded, std::string_view state_table);

}  // namespace outboxd
