#include "daemon/status.h"

#include <libpq-fe.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "cdc/slot_status.h"
#include "common/advisory_locks.h"
#include "common/lsn.h"
#include "common/pg.h"
#include "common/pg_types.h"
#include "daemon/exit_codes.h"
#include "pipeline/kafka_transactions.h"
#include "pipeline/position_store.h"
#include "relay/poll_position.h"

namespace outboxd {

namespace {

// What the report says about one [[outbox]] table or [cdc] tables entry.
struct TableReport {
  std::string table;
  bool poll = true;
  bool exists = false;
  std::optional<int64_t> pending;
  std::optional<int64_t> min_position, max_position;  // of the pending rows
  std::optional<double> oldest_age_seconds;
  std::string age_unknown_reason;  // when pending > 0 and no age
  std::optional<int> holder_pid;   // session holding the relay lock
  std::string holder_application, holder_address;
  std::string resolved;          // "schema.table" as the relay names it; empty when missing
  std::string count_listed_sql;  // counts the unsent rows among the positions $1
  // Exactly-once (poll): the rows Kafka's position lists that the table
  // still holds unsent, or why that is not known.
  bool exactly_once = false;
  std::optional<int64_t> kafka_unsent;
  std::string kafka_note;
  std::vector<std::string> problems;
};

struct SlotReport {
  std::string slot;
  bool exists = false;
  bool active = false;
  std::optional<int> holder_pid;
  std::string holder_application, holder_address;
  std::optional<Lsn> confirmed_flush_lsn, restart_lsn;
  std::optional<int64_t> lag_bytes, retained_bytes;
  std::string wal_status;
  std::string state_table;
  std::string state;  // matches | no row | snapshot pending | dropped | re-created | unknown
  std::optional<Lsn> recorded_lsn;
  // Exactly-once: the position stored in Kafka (the commit LSN of the last
  // transaction Kafka has), or why it is not known.
  bool exactly_once = false;
  std::optional<Lsn> kafka_position;
  std::string kafka_position_note;
  std::vector<std::string> problems;
};

std::optional<int64_t> Int64At(const PGresult* r, int row, int col) {
  if (PQgetisnull(r, row, col)) return std::nullopt;
  return std::strtoll(PQgetvalue(r, row, col), nullptr, 10);
}
std::string TextAt(const PGresult* r, int row, int col) {
  return PQgetisnull(r, row, col) ? std::string() : std::string(PQgetvalue(r, row, col));
}

void CheckPollTable(const PgConn& conn, const OutboxTableConfig& config, const StatusOptions& options,
                    TableReport& report) {
  const std::string name = "\"" + config.table + "\"";
  auto rel = conn.Exec(
      "SELECT c.oid::bigint, n.nspname, c.relname FROM pg_class c "
      "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
      {config.table});
  if (!rel.ok()) {
    report.problems.push_back(rel.status().Prefixed("could not look up " + name).message());
    return;
  }
  if (PQntuples(rel->get()) == 0) {
    report.problems.push_back("table " + name + " does not exist" +
                              (report.poll ? " (`outboxd init --dry-run` prints its DDL)" : ""));
    return;
  }
  report.exists = true;
  const std::string oid = PQgetvalue(rel->get(), 0, 0);
  const std::string qtable =
      conn.QuoteIdentifier(PQgetvalue(rel->get(), 0, 1)) + "." + conn.QuoteIdentifier(PQgetvalue(rel->get(), 0, 2));
  if (!report.poll) return;
  report.resolved = std::string(PQgetvalue(rel->get(), 0, 1)) + "." + PQgetvalue(rel->get(), 0, 2);

  // The age needs a column that says when a row was written; the ordering
  // column does not, so without `timestamp` the age stays unknown.
  std::string age_expr;
  if (config.timestamp) {
    auto type = conn.Exec(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = $1::oid AND attname = $2 AND attnum > 0 AND NOT attisdropped",
        {oid, *config.timestamp});
    if (!type.ok()) {
      report.problems.push_back(type.status().Prefixed("could not read the columns of " + name).message());
      return;
    }
    const std::string qts = conn.QuoteIdentifier(*config.timestamp);
    const std::string t = PQntuples(type->get()) == 1 ? PQgetvalue(type->get(), 0, 0) : "";
    if (IsTimestampType(t)) {
      age_expr = "extract(epoch FROM now() - min(" + qts + "))::float8";
    } else if (IsIntegerType(t)) {  // epoch milliseconds, as the relay accepts
      age_expr = "extract(epoch FROM now())::float8 - min(" + qts + ")::float8 / 1000";
    } else {
      report.age_unknown_reason = t.empty() ? "its timestamp column \"" + *config.timestamp + "\" does not exist"
                                            : "its timestamp column \"" + *config.timestamp + "\" is " + t;
    }
  } else {
    report.age_unknown_reason = "its [[outbox]] block names no `timestamp` column";
  }

  const std::string qorder = conn.QuoteIdentifier(config.order_by);
  std::string sql = "SELECT count(*), min(" + qorder + ")::bigint, max(" + qorder + ")::bigint";
  sql += age_expr.empty() ? ", NULL::float8" : ", " + age_expr;
  sql += " FROM " + qtable;
  if (config.after_delivery == AfterDelivery::kMark) {
    sql += " WHERE " + conn.QuoteIdentifier(*config.sent_column) + " IS NULL";
  }
  report.count_listed_sql =
      "SELECT count(*) FROM " + qtable + " WHERE " + qorder + " = ANY($1::bigint[])" +
      (config.after_delivery == AfterDelivery::kMark ? " AND " + conn.QuoteIdentifier(*config.sent_column) + " IS NULL"
                                                     : "");
  auto pending = conn.Exec(sql);
  if (!pending.ok()) {
    report.problems.push_back(pending.status().Prefixed("could not count the unsent rows of " + name).message());
    return;
  }
  const PGresult* r = pending->get();
  report.pending = Int64At(r, 0, 0);
  report.min_position = Int64At(r, 0, 1);
  report.max_position = Int64At(r, 0, 2);
  if (!PQgetisnull(r, 0, 3)) report.oldest_age_seconds = std::max(0.0, std::strtod(PQgetvalue(r, 0, 3), nullptr));
  if (report.pending == 0) {
    report.oldest_age_seconds = 0.0;
    report.age_unknown_reason.clear();
  }
  if (options.max_pending_rows && report.pending &&
      static_cast<uint64_t>(*report.pending) > *options.max_pending_rows) {
    report.problems.push_back(name + " has " + std::to_string(*report.pending) +
                              " unsent rows, more than --max-pending " + std::to_string(*options.max_pending_rows));
  }

  auto holder = conn.Exec(kPollTableLockHolderSql, {oid});
  if (!holder.ok()) {
    report.problems.push_back(holder.status().Prefixed("could not read the relay lock of " + name).message());
    return;
  }
  if (PQntuples(holder->get()) == 1) {
    report.holder_pid = static_cast<int>(*Int64At(holder->get(), 0, 0));
    report.holder_application = TextAt(holder->get(), 0, 1);
    report.holder_address = TextAt(holder->get(), 0, 2);
  }
}

void CheckSlot(const PgConn& conn, const CdcConfig& cdc, const std::string& database, const StatusOptions& options,
               SlotReport& report) {
  report.slot = cdc.slot;
  report.state_table = cdc.state_table;
  auto status = ReadSlotStatus(conn, cdc.slot);
  if (!status.ok()) {
    report.problems.push_back(status.status().message());
    report.state = "unknown";
    return;
  }
  auto state = ReadSlotState(conn, cdc.state_table, cdc.slot);
  std::optional<Lsn> recorded;
  if (!state.ok()) {
    report.problems.push_back(state.status().message());
    report.state = "unknown";
  } else if (*state) {
    recorded = (*state)->confirmed;
    report.recorded_lsn = recorded;
  }

  if (*status) {
    const SlotStatus& s = **status;
    report.exists = true;
    report.active = s.active;
    report.holder_pid = s.active_pid;
    report.confirmed_flush_lsn = s.confirmed_flush_lsn;
    report.restart_lsn = s.restart_lsn;
    report.wal_status = s.wal_status;
    if (Status usable = CheckSlotUsable(cdc.slot, *status, database); !usable.ok()) {
      report.problems.push_back(usable.message());
    }
    // On a standby the WAL position is the last one received.
    auto lag = conn.Exec(
        "WITH w AS (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() "
        "ELSE pg_current_wal_lsn() END AS lsn) "
        "SELECT pg_wal_lsn_diff(w.lsn, s.confirmed_flush_lsn)::bigint, "
        "pg_wal_lsn_diff(w.lsn, s.restart_lsn)::bigint, a.application_name, host(a.client_addr) "
        "FROM pg_replication_slots s CROSS JOIN w LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid "
        "WHERE s.slot_name = $1",
        {cdc.slot});
    if (!lag.ok()) {
      report.problems.push_back(
          lag.status().Prefixed("could not read the lag of replication slot \"" + cdc.slot + "\"").message());
    } else if (PQntuples(lag->get()) == 1) {
      auto clamp = [](std::optional<int64_t> v) { return v ? std::optional<int64_t>(std::max<int64_t>(0, *v)) : v; };
      report.lag_bytes = clamp(Int64At(lag->get(), 0, 0));
      report.retained_bytes = clamp(Int64At(lag->get(), 0, 1));
      report.holder_application = TextAt(lag->get(), 0, 2);
      report.holder_address = TextAt(lag->get(), 0, 3);
    }
    if (options.max_lag_bytes && report.lag_bytes &&
        static_cast<uint64_t>(*report.lag_bytes) > *options.max_lag_bytes) {
      report.problems.push_back("replication slot \"" + cdc.slot + "\" is " + std::to_string(*report.lag_bytes) +
                                " bytes behind, more than --max-lag " + std::to_string(*options.max_lag_bytes));
    }
  } else if (!recorded) {
    // Never streamed from (or the state is unknown): the plain "does not exist".
    report.problems.push_back(CheckSlotUsable(cdc.slot, *status, database).message());
  }

  if (state.ok()) {
    Status against = CheckSlotAgainstState(cdc.slot, *status, recorded, cdc.state_table);
    if (!against.ok()) {
      report.problems.push_back(against.message());
      report.state = *status ? "re-created" : "dropped";
    } else if (!recorded) {
      report.state = "no row";
    } else if (!(*state)->snapshot_done) {
      report.state = "snapshot pending";
    } else {
      report.state = "matches";
    }
  }
}

std::string FormatBytes(int64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int unit = 0;
  while (v >= 1024 && unit < 4) {
    v /= 1024;
    ++unit;
  }
  char buf[32];
  if (unit == 0)
    std::snprintf(buf, sizeof buf, "%lld B", static_cast<long long>(bytes));
  else
    std::snprintf(buf, sizeof buf, "%.1f %s", v, kUnits[unit]);
  return buf;
}

std::string FormatAge(double seconds) {
  const auto s = static_cast<long long>(seconds);
  char buf[48];
  if (seconds < 10)
    std::snprintf(buf, sizeof buf, "%.1fs", seconds);
  else if (s < 60)
    std::snprintf(buf, sizeof buf, "%llds", s);
  else if (s < 3600)
    std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  else if (s < 86400)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", s / 3600, s % 3600 / 60);
  else
    std::snprintf(buf, sizeof buf, "%lldd%02lldh", s / 86400, s % 86400 / 3600);
  return buf;
}

std::string FormatHolder(const std::optional<int>& pid, const std::string& application, const std::string& address) {
  if (!pid) return "-";
  std::string out = "pid " + std::to_string(*pid);
  if (!application.empty()) out += " " + application;
  if (!address.empty()) out += " " + address;
  return out;
}

// Columns padded to the widest cell, two spaces apart.
void PrintTable(std::ostream& out, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    width.resize(std::max(width.size(), row.size()));
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(width[i] - row[i].size() + 2, ' ');
    }
    out << line << "\n";
  }
}

template <typename T>
nlohmann::ordered_json OrNull(const std::optional<T>& v) {
  return v ? nlohmann::ordered_json(*v) : nlohmann::ordered_json(nullptr);
}
nlohmann::ordered_json LsnOrNull(const std::optional<Lsn>& v) {
  return v ? nlohmann::ordered_json(v->ToString()) : nlohmann::ordered_json(nullptr);
}
nlohmann::ordered_json EmptyToNull(const std::string& s) {
  return s.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(s);
}

nlohmann::ordered_json HolderJson(const std::optional<int>& pid, const std::string& application,
                                  const std::string& address) {
  if (!pid) return nullptr;
  return {{"pid", *pid}, {"application_name", EmptyToNull(application)}, {"client_addr", EmptyToNull(address)}};
}

// Exactly-once: the last position of the stream named `stream(system id)`
// in the position topic (nullopt: none yet); an error says why it is not
// known. Not knowing it is a note, not a problem: status probes the database.
Result<std::optional<std::string>> ReadStoredPosition(const PgConn& conn, const Config& config,
                                                      const std::function<std::string(const std::string&)>& stream) {
  auto id = conn.Exec("SELECT system_identifier::text FROM pg_control_system()");
  if (!id.ok()) return id.status().Prefixed("the system identifier cannot be read");
  auto store = PositionStore::Create(config.kafka, config.kafka.position_topic);
  if (!store.ok()) return store.status();
  auto last = (*store)->ReadLast(stream(PQgetvalue(id->get(), 0, 0)), 0, std::chrono::seconds(10));
  if (!last.ok()) return last.status();
  if (!last->has_value()) return std::optional<std::string>();
  return std::optional<std::string>((*last)->value);
}

// The slot's position: the commit LSN of the last transaction Kafka has.
void ReadKafkaPosition(const PgConn& conn, const Config& config, const std::string& database, SlotReport& report) {
  report.exactly_once = true;
  auto position = ReadStoredPosition(conn, config, [&](const std::string& system_id) {
    return KafkaTransactions::CdcStream(system_id, database, config.cdc->slot);
  });
  if (!position.ok()) {
    report.kafka_position_note = "unknown (" + position.status().message() + ")";
  } else if (!position->has_value()) {
    report.kafka_position_note = "none yet";
  } else if (auto lsn = Lsn::Parse(**position); lsn.ok()) {
    report.kafka_position = *lsn;
  } else {
    report.kafka_position_note = "not an LSN: \"" + **position + "\"";
  }
}

// The poll stream's position: per table, how many of the rows it lists
// (Kafka has them) are still unsent — deleted without being produced again
// on the next start.
void ReadPollKafkaPosition(const PgConn& conn, const Config& config, const std::string& database,
                           std::vector<TableReport>& tables) {
  std::vector<TableReport*> polled;
  std::vector<std::string> names;
  for (TableReport& t : tables) {
    if (!t.poll) continue;
    t.exactly_once = true;
    polled.push_back(&t);
    names.push_back(t.resolved);
  }
  auto note_all = [&](const std::string& note) {
    for (TableReport* t : polled) t->kafka_note = note;
  };
  if (std::any_of(names.begin(), names.end(), [](const std::string& n) { return n.empty(); })) {
    note_all("unknown (a table does not exist)");
    return;
  }
  auto position = ReadStoredPosition(conn, config, [&](const std::string& system_id) {
    return KafkaTransactions::PollStream(system_id, database, names);
  });
  if (!position.ok()) {
    note_all("unknown (" + position.status().message() + ")");
    return;
  }
  PollPositionRows rows;
  if (position->has_value()) {
    auto parsed = ParsePollPosition(**position);
    if (!parsed.ok()) {
      note_all("unknown (" + parsed.status().message() + ")");
      return;
    }
    rows = std::move(parsed).value();
  }
  for (TableReport* t : polled) {
    const auto it = rows.find(t->resolved);
    if (it == rows.end()) {
      t->kafka_unsent = 0;
      continue;
    }
    auto r = conn.Exec(t->count_listed_sql, {PgInt64Array(it->second)});
    if (!r.ok()) {
      t->kafka_note = "unknown (" + r.status().message() + ")";
      continue;
    }
    t->kafka_unsent = Int64At(r->get(), 0, 0);
  }
}

void PrintJson(std::ostream& out, const std::string& database, const std::vector<TableReport>& tables,
               const std::vector<SlotReport>& slots, const std::vector<std::string>& problems) {
  nlohmann::ordered_json j;
  j["healthy"] = problems.empty();
  j["exit_code"] = problems.empty() ? kStatusHealthy : kStatusUnhealthy;
  j["database"] = database;
  j["tables"] = nlohmann::ordered_json::array();
  for (const auto& t : tables) {
    nlohmann::ordered_json o;
    o["table"] = t.table;
    o["source"] = t.poll ? "poll" : "cdc";
    o["exists"] = t.exists;
    if (t.poll) {
      o["pending_rows"] = OrNull(t.pending);
      o["oldest_pending_age_seconds"] = OrNull(t.oldest_age_seconds);
      o["age_unknown_reason"] = EmptyToNull(t.age_unknown_reason);
      o["min_pending_position"] = OrNull(t.min_position);
      o["max_pending_position"] = OrNull(t.max_position);
      o["relay_lock_holder"] = HolderJson(t.holder_pid, t.holder_application, t.holder_address);
      if (t.exactly_once) {
        o["kafka_unsent_rows"] = OrNull(t.kafka_unsent);
        o["kafka_position_note"] = EmptyToNull(t.kafka_note);
      }
    }
    o["problems"] = t.problems;
    j["tables"].push_back(std::move(o));
  }
  j["slots"] = nlohmann::ordered_json::array();
  for (const auto& s : slots) {
    nlohmann::ordered_json o;
    o["slot"] = s.slot;
    o["exists"] = s.exists;
    o["active"] = s.active;
    o["holder"] = HolderJson(s.holder_pid, s.holder_application, s.holder_address);
    o["confirmed_flush_lsn"] = LsnOrNull(s.confirmed_flush_lsn);
    o["restart_lsn"] = LsnOrNull(s.restart_lsn);
    o["lag_bytes"] = OrNull(s.lag_bytes);
    o["wal_retained_bytes"] = OrNull(s.retained_bytes);
    o["wal_status"] = EmptyToNull(s.wal_status);
    o["state_table"] = s.state_table;
    o["recorded_lsn"] = LsnOrNull(s.recorded_lsn);
    o["state"] = s.state;
    if (s.exactly_once) {
      o["kafka_position"] = LsnOrNull(s.kafka_position);
      o["kafka_position_note"] = EmptyToNull(s.kafka_position_note);
    }
    o["problems"] = s.problems;
    j["slots"].push_back(std::move(o));
  }
  j["problems"] = problems;
  out << j.dump(2) << "\n";
}

void PrintText(std::ostream& out, const std::string& header, const std::vector<TableReport>& tables,
               const std::vector<SlotReport>& slots, const std::vector<std::string>& problems) {
  out << header << "\n";
  std::vector<std::string> notes;
  if (!tables.empty()) {
    std::vector<std::vector<std::string>> rows = {
        {"OUTBOX TABLE", "SOURCE", "PENDING", "OLDEST PENDING", "POSITIONS", "RELAYED BY"}};
    for (const auto& t : tables) {
      if (!t.poll) {
        rows.push_back({t.table, "cdc", "-", "-", "-", t.exists ? "replication slot" : "MISSING"});
        continue;
      }
      if (!t.exists) {
        rows.push_back({t.table, "poll", "MISSING", "-", "-", "-"});
        continue;
      }
      std::string age = "-";
      if (t.oldest_age_seconds) {
        age = FormatAge(*t.oldest_age_seconds);
      } else if (t.pending) {
        age = "unknown";
        notes.push_back("age of the oldest unsent row of \"" + t.table + "\" unknown: " + t.age_unknown_reason +
                        " (POSITIONS shows the range of order_by values unsent)");
      }
      if (t.exactly_once && !t.kafka_unsent) {
        notes.push_back("exactly-once: the rows of \"" + t.table +
                        "\" that Kafka has but are still unsent: " + t.kafka_note);
      } else if (t.exactly_once && *t.kafka_unsent > 0) {
        notes.push_back("exactly-once: Kafka has " + std::to_string(*t.kafka_unsent) + " rows of \"" + t.table +
                        "\" that are still unsent (committed before a stop or a takeover); the next start deletes "
                        "or marks them without producing them again");
      }
      std::string positions = "-";
      if (t.min_position) positions = std::to_string(*t.min_position) + ".." + std::to_string(*t.max_position);
      rows.push_back({t.table, "poll", t.pending ? std::to_string(*t.pending) : "?", age, positions,
                      t.holder_pid ? FormatHolder(t.holder_pid, t.holder_application, t.holder_address) : "nobody"});
    }
    out << "\n";
    PrintTable(out, rows);
  }
  if (!slots.empty()) {
    std::vector<std::vector<std::string>> rows = {
        {"SLOT", "ACTIVE", "HOLDER", "CONFIRMED FLUSH", "LAG", "RETAINED WAL", "WAL STATUS", "STATE TABLE"}};
    for (const auto& s : slots) {
      if (!s.exists) {
        rows.push_back({s.slot, "MISSING", "-", "-", "-", "-", "-", s.state});
        continue;
      }
      rows.push_back(
          {s.slot, s.active ? "yes" : "no", FormatHolder(s.holder_pid, s.holder_application, s.holder_address),
           s.confirmed_flush_lsn ? s.confirmed_flush_lsn->ToString() : "-",
           s.lag_bytes ? FormatBytes(*s.lag_bytes) : "-", s.retained_bytes ? FormatBytes(*s.retained_bytes) : "-",
           s.wal_status.empty() ? "-" : s.wal_status,
           s.state + (s.recorded_lsn ? " (" + s.recorded_lsn->ToString() + ")" : "")});
      if (s.exactly_once) {
        notes.push_back("exactly-once: Kafka has every transaction of slot \"" + s.slot + "\" committed up to " +
                        (s.kafka_position ? s.kafka_position->ToString() : s.kafka_position_note) +
                        (s.kafka_position ? " (commit LSN; a restart skips what the slot replays up to it)" : ""));
      }
    }
    out << "\n";
    PrintTable(out, rows);
  }
  if (!notes.empty()) {
    out << "\n";
    for (const auto& n : notes) out << "note: " << n << "\n";
  }
  out << "\n";
  if (problems.empty()) {
    out << "healthy\n";
  } else {
    for (const auto& p : problems) out << "problem: " << p << "\n";
    out << "UNHEALTHY: " << problems.size() << (problems.size() == 1 ? " problem" : " problems") << "\n";
  }
}

}  // namespace

int RunStatus(const Config& config, const StatusOptions& options, std::ostream& out) {
  auto conn = PgConn::Connect(config.postgres.conninfo, config.postgres.password, "outboxd-status");
  if (!conn.ok()) {
    if (options.json) {
      nlohmann::ordered_json j;
      j["healthy"] = false;
      j["exit_code"] = kExitUnavailable;
      j["error"] = conn.status().message();
      out << j.dump(2) << "\n";
    } else {
      out << "outboxd status: " << conn.status().message() << "\nUNAVAILABLE: nothing was checked\n";
    }
    return kExitUnavailable;
  }
  // Read-only whatever the queries below become; bounded, for use as a probe.
  std::vector<std::string> problems;
  auto session = conn->Exec(
      "SELECT set_config('default_transaction_read_only', 'on', false), "
      "set_config('statement_timeout', '30s', false), set_config('lock_timeout', '5s', false), "
      "current_database(), split_part(current_setting('server_version'), ' ', 1)");
  std::string database;
  std::string header = "outboxd status";
  if (!session.ok()) {
    problems.push_back(session.status().Prefixed("could not set up the session").message());
  } else {
    database = PQgetvalue(session->get(), 0, 3);
    const char* host = PQhost(conn->get());
    header += ": database \"" + database + "\" on " + (host ? host : "?") + ":" + PQport(conn->get()) +
              " (PostgreSQL " + PQgetvalue(session->get(), 0, 4) + ")";
  }

  std::vector<TableReport> tables;
  if (problems.empty()) {
    for (const auto& o : config.outboxes) {
      TableReport t;
      t.table = o.table;
      t.poll = o.source == OutboxSource::kPoll;
      CheckPollTable(*conn, o, options, t);
      tables.push_back(std::move(t));
    }
    if (config.cdc) {
      for (const auto& name : config.cdc->tables) {
        OutboxTableConfig c;
        c.table = name;
        c.source = OutboxSource::kCdc;
        TableReport t;
        t.table = name;
        t.poll = false;
        CheckPollTable(*conn, c, options, t);
        tables.push_back(std::move(t));
      }
    }
  }
  if (problems.empty() && config.kafka.delivery == Delivery::kExactlyOnce) {
    ReadPollKafkaPosition(*conn, config, database, tables);
  }
  std::vector<SlotReport> slots;
  if (problems.empty() && config.cdc) {
    SlotReport s;
    CheckSlot(*conn, *config.cdc, database, options, s);
    if (config.kafka.delivery == Delivery::kExactlyOnce) ReadKafkaPosition(*conn, config, database, s);
    slots.push_back(std::move(s));
  }
  for (const auto& t : tables) problems.insert(problems.end(), t.problems.begin(), t.problems.end());
  for (const auto& s : slots) problems.insert(problems.end(), s.problems.begin(), s.problems.end());

  if (options.json)
    PrintJson(out, database, tables, slots, problems);
  else
    PrintText(out, header, tables, slots, problems);
  return problems.empty() ? kStatusHealthy : kStatusUnhealthy;
}

int RunStatus(const Config& config, std::ostream& out) { return RunStatus(config, StatusOptions{}, out); }

}  // namespace outboxd
