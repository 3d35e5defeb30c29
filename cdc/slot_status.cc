#include "cdc/slot_status.h"

#include <algorithm>
#include <cstdlib>
#include <utility>

#include "cdc/replication_stream.h"

namespace outboxd {

namespace {

std::pair<std::string, std::string> SplitTable(std::string_view table) {
  const auto dot = table.find('.');
  if (dot == std::string_view::npos) return {"public", std::string(table)};
  return {std::string(table.substr(0, dot)), std::string(table.substr(dot + 1))};
}

std::string TableList(const std::vector<std::string>& tables) {
  std::string out;
  for (const auto& t : tables) {
    if (!out.empty()) out += ", ";
    out += QuoteQualifiedTable(t);
  }
  return out;
}

std::optional<Lsn> LsnColumn(const PGresult* res, int col) {
  if (PQgetisnull(res, 0, col)) return std::nullopt;
  auto lsn = Lsn::Parse(PQgetvalue(res, 0, col));
  if (!lsn.ok()) return std::nullopt;
  return *lsn;
}

std::string SlotName(std::string_view slot) { return "replication slot \"" + std::string(slot) + "\""; }

}  // namespace

Result<std::optional<SlotStatus>> ReadSlotStatus(const PgConn& conn, std::string_view slot) {
  auto res = conn.Exec(
      "SELECT slot_name, plugin, slot_type, database, active, active_pid, restart_lsn, "
      "confirmed_flush_lsn, wal_status FROM pg_replication_slots WHERE slot_name = $1",
      {std::string(slot)});
  if (!res.ok()) return res.status().Prefixed("could not read " + SlotName(slot));
  const PGresult* r = res->get();
  if (PQntuples(r) == 0) return std::optional<SlotStatus>();
  SlotStatus s;
  s.slot_name = PQgetvalue(r, 0, 0);
  s.plugin = PQgetvalue(r, 0, 1);
  s.slot_type = PQgetvalue(r, 0, 2);
  s.database = PQgetvalue(r, 0, 3);
  s.active = std::string_view(PQgetvalue(r, 0, 4)) == "t";
  if (!PQgetisnull(r, 0, 5)) s.active_pid = std::atoi(PQgetvalue(r, 0, 5));
  s.restart_lsn = LsnColumn(r, 6);
  s.confirmed_flush_lsn = LsnColumn(r, 7);
  s.wal_status = PQgetvalue(r, 0, 8);
  return std::optional<SlotStatus>(std::move(s));
}

Status CheckSlotUsable(std::string_view slot, const std::optional<SlotStatus>& status, std::string_view database) {
  const std::string name = SlotName(slot);
  if (!status) {
    return Status::InvalidConfig(name + " does not exist (create it with `outboxd init`, or set [cdc] create = true)");
  }
  if (status->slot_type != "logical") {
    return Status::Permanent(name + " is a " + status->slot_type + " slot, not a logical one");
  }
  if (status->plugin != "pgoutput") {
    return Status::Permanent(name + " uses the output plugin \"" + status->plugin + "\", not \"pgoutput\"");
  }
  if (status->database != database) {
    return Status::Permanent(name + " belongs to database \"" + status->database + "\", not \"" +
                             std::string(database) + "\"");
  }
  if (status->wal_status == "lost") {
    return Status::Permanent(name +
                             " has been invalidated (wal_status = lost): the WAL it needed was removed; "
                             "events after its confirmed_flush_lsn may be lost. Drop it and re-create it "
                             "deliberately after checking what was missed");
  }
  return Status::Ok();
}

std::string QuoteQualifiedTable(std::string_view table) {
  auto [schema, name] = SplitTable(table);
  return QuoteIdentifierStandard(schema) + "." + QuoteIdentifierStandard(name);
}

std::string CreatePublicationSql(std::string_view publication, const std::vector<std::string>& tables) {
  std::string sql = "CREATE PUBLICATION " + QuoteIdentifierStandard(publication);
  if (!tables.empty()) sql += " FOR TABLE " + TableList(tables);
  return sql;
}

std::string AddTablesToPublicationSql(std::string_view publication, const std::vector<std::string>& tables) {
  return "ALTER PUBLICATION " + QuoteIdentifierStandard(publication) + " ADD TABLE " + TableList(tables);
}

std::string CreateSlotSql(std::string_view slot) {
  return "SELECT pg_create_logical_replication_slot(" + QuoteLiteralStandard(slot) + ", 'pgoutput')";
}

Result<std::vector<std::string>> InitSql(std::string_view slot, std::string_view publication,
                                         const std::vector<std::string>& tables, std::string_view state_table) {
  OUTBOXD_RETURN_IF_ERROR(ValidateSlotName(slot));
  if (publication.empty()) return Status::InvalidConfig("publication name is empty");
  return std::vector<std::string>{CreatePublicationSql(publication, tables), CreateSlotSql(slot),
                                  CreateStateTableSql(state_table)};
}

namespace {

// Runs `sql`, remembering it in `ran`; errors prefixed with `what`.
Status RunAndRecord(const PgConn& conn, const std::string& sql, const std::string& what,
                    std::vector<std::string>& ran) {
  auto r = conn.Exec(sql);
  if (!r.ok()) return r.status().Prefixed(what);
  ran.push_back(sql);
  return Status::Ok();
}

}  // namespace

Result<std::vector<std::string>> EnsureSlotAndPublication(const PgConn& conn, std::string_view slot,
                                                          std::string_view publication,
                                                          const std::vector<std::string>& tables, bool create) {
  OUTBOXD_RETURN_IF_ERROR(ValidateSlotName(slot));
  auto ran = EnsurePublication(conn, publication, tables, create);
  if (!ran.ok()) return ran.status();
  auto slot_ran = EnsureSlot(conn, slot, create);
  if (!slot_ran.ok()) return slot_ran.status();
  ran->insert(ran->end(), slot_ran->begin(), slot_ran->end());
  return ran;
}

Result<std::vector<std::string>> EnsurePublication(const PgConn& conn, std::string_view publication,
                                                   const std::vector<std::string>& tables, bool create) {
  std::vector<std::string> ran;
  auto run = [&](const std::string& sql, const std::string& what) { return RunAndRecord(conn, sql, what, ran); };
  const std::string pub_name = "publication \"" + std::string(publication) + "\"";
  auto pub = conn.Exec("SELECT puballtables FROM pg_publication WHERE pubname = $1", {std::string(publication)});
  if (!pub.ok()) return pub.status().Prefixed("could not read " + pub_name);
  if (PQntuples(pub->get()) == 0) {
    if (!create) {
      return Status::InvalidConfig(pub_name +
                                   " does not exist (create it with `outboxd init`, or set [cdc] create = true)");
    }
    OUTBOXD_RETURN_IF_ERROR(run(CreatePublicationSql(publication, tables), "could not create " + pub_name));
  } else if (std::string_view(PQgetvalue(pub->get(), 0, 0)) != "t" && !tables.empty()) {
    auto have = conn.Exec("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1",
                          {std::string(publication)});
    if (!have.ok()) return have.status().Prefixed("could not list the tables of " + pub_name);
    std::vector<std::pair<std::string, std::string>> present;
    present.reserve(static_cast<std::size_t>(PQntuples(have->get())));
    for (int i = 0; i < PQntuples(have->get()); ++i) {
      present.emplace_back(PQgetvalue(have->get(), i, 0), PQgetvalue(have->get(), i, 1));
    }
    std::vector<std::string> missing;
    for (const auto& t : tables) {
      if (std::find(present.begin(), present.end(), SplitTable(t)) == present.end()) missing.push_back(t);
    }
    if (!missing.empty()) {
      if (!create) {
        return Status::InvalidConfig(pub_name + " does not include " + TableList(missing));
      }
      OUTBOXD_RETURN_IF_ERROR(run(AddTablesToPublicationSql(publication, missing), "could not alter " + pub_name));
    }
  }
  return ran;
}

Result<std::vector<std::string>> EnsureSlot(const PgConn& conn, std::string_view slot, bool create) {
  OUTBOXD_RETURN_IF_ERROR(ValidateSlotName(slot));
  std::vector<std::string> ran;
  auto run = [&](const std::string& sql, const std::string& what) { return RunAndRecord(conn, sql, what, ran); };
  auto db = conn.Exec("SELECT current_database()");
  if (!db.ok()) return db.status().Prefixed("could not read the current database");
  const std::string database = PQgetvalue(db->get(), 0, 0);
  auto status = ReadSlotStatus(conn, slot);
  if (!status.ok()) return status.status();
  if (!*status && create) {
    OUTBOXD_RETURN_IF_ERROR(run(CreateSlotSql(slot), "could not create " + SlotName(slot)));
    status = ReadSlotStatus(conn, slot);
    if (!status.ok()) return status.status();
  }
  OUTBOXD_RETURN_IF_ERROR(CheckSlotUsable(slot, *status, database));
  return ran;
}

std::string CreateStateTableSql(std::string_view state_table) {
  return "CREATE TABLE IF NOT EXISTS " + QuoteQualifiedTable(state_table) +
         " (slot_name name PRIMARY KEY, confirmed_lsn pg_lsn NOT NULL, "
         "snapshot_done boolean NOT NULL DEFAULT true, updated_at timestamptz NOT NULL DEFAULT now())";
}

Result<std::optional<SlotState>> ReadSlotState(const PgConn& conn, std::string_view state_table,
                                               std::string_view slot) {
  const std::string table = QuoteQualifiedTable(state_table);
  auto exists = conn.Exec("SELECT to_regclass($1) IS NOT NULL", {table});
  if (!exists.ok()) return exists.status().Prefixed("could not look up the state table " + table);
  if (std::string_view(PQgetvalue(exists->get(), 0, 0)) != "t") {
    return Status::InvalidConfig("state table " + table +
                                 " does not exist (create it with `outboxd init`, or set [cdc] create = true)");
  }
  auto res = conn.Exec("SELECT confirmed_lsn::text, snapshot_done FROM " + table + " WHERE slot_name = $1",
                       {std::string(slot)});
  if (!res.ok()) return res.status().Prefixed("could not read the state of " + SlotName(slot) + " from " + table);
  if (PQntuples(res->get()) == 0) return std::optional<SlotState>();
  auto lsn = Lsn::Parse(PQgetvalue(res->get(), 0, 0));
  if (!lsn.ok()) return Status::Internal(table + ": " + lsn.status().message());
  return std::optional<SlotState>(SlotState{*lsn, std::string_view(PQgetvalue(res->get(), 0, 1)) == "t"});
}

Status WriteSlotState(const PgConn& conn, std::string_view state_table, std::string_view slot, const SlotState& state) {
  const std::string table = QuoteQualifiedTable(state_table);
  auto res = conn.Exec("INSERT INTO " + table +
                           " AS s (slot_name, confirmed_lsn, snapshot_done) VALUES ($1, $2::pg_lsn, $3) "
                           "ON CONFLICT (slot_name) DO UPDATE SET confirmed_lsn = excluded.confirmed_lsn, "
                           "snapshot_done = excluded.snapshot_done, updated_at = now()",
                       {std::string(slot), state.confirmed.ToString(), state.snapshot_done ? "true" : "false"});
  if (!res.ok()) return res.status().Prefixed("could not record the position of " + SlotName(slot) + " in " + table);
  return Status::Ok();
}

Status DeleteSlotState(const PgConn& conn, std::string_view state_table, std::string_view slot) {
  auto res =
      conn.Exec("DELETE FROM " + QuoteQualifiedTable(state_table) + " WHERE slot_name = $1", {std::string(slot)});
  if (!res.ok()) return res.status().Prefixed("could not forget the state of " + SlotName(slot));
  return Status::Ok();
}

Status CheckSlotAgainstState(std::string_view slot, const std::optional<SlotStatus>& status,
                             const std::optional<Lsn>& recorded, std::string_view state_table) {
  if (!recorded) return Status::Ok();
  const std::string forget =
      "; to start over from the slot deliberately, check what was missed, then run "
      "DELETE FROM " +
      QuoteQualifiedTable(state_table) + " WHERE slot_name = '" + std::string(slot) + "'";
  if (!status) {
    return Status::Permanent(SlotName(slot) + " was dropped: outboxd had streamed from it up to " +
                             recorded->ToString() +
                             ". It is not re-created automatically, since changes made since then would be "
                             "skipped" +
                             forget + " and create the slot (`outboxd init`)");
  }
  if (status->confirmed_flush_lsn && *status->confirmed_flush_lsn > *recorded) {
    return Status::Permanent(SlotName(slot) + " was re-created (or advanced by hand): its confirmed_flush_lsn " +
                             status->confirmed_flush_lsn->ToString() + " is past " + recorded->ToString() +
                             ", the last position outboxd confirmed, so changes in between were never published" +
                             forget);
  }
  return Status::Ok();
}

}  // namespace outboxd
