#pragma once
// ChangeMapper and friends: turn decoded pgoutput changes into what the
// pipeline publishes. Pure functions of their inputs — no connections, no
// clocks — so a replayed transaction maps to byte-identical records.
//
// Three kinds of input, three outputs:
//
// - Row changes of captured (non-outbox) tables → a Record carrying a JSON
//   change envelope (ChangeMapper). Value:
//     {"before": {...}|null, "after": {...}|null, "op": "c"|"u"|"d"|"t",
//      "source": {"db", "schema", "table", "lsn", "txId", "ts_ms"},
//      "ts_ms": ...}
//   * source.lsn is the transaction's commit LSN as a JSON number (as
//     Debezium's lsn); source.txId the xid; source.ts_ms the commit time.
//   * The top-level ts_ms is ALSO the commit time in epoch milliseconds (not
//     the processing time Debezium uses): it keeps replays byte-identical.
//     Record::timestamp_ms is the commit time too.
//   * Objects list columns in the relation's column order.
//   * Topic "<topic_prefix>.<schema>.<table>" (schema "pg_catalog" when
//     pgoutput sends an empty namespace).
//   * Key: a JSON object of the key columns, e.g. {"id":42}, in column order —
//     the columns listed for the table in ChangeMapperOptions::key_columns, or
//     else the replica identity columns pgoutput flags (with REPLICA IDENTITY
//     FULL that is every column). Insert and Update take the key from the new
//     tuple, Delete from the old (key or full) tuple. No key columns (REPLICA
//     IDENTITY NOTHING): Kafka key is null. Truncate: key is null.
//   * Update "before": the whole old row with REPLICA IDENTITY FULL; only the
//     old key columns when the key changed under DEFAULT/INDEX identity
//     (pgoutput sends nothing else); null otherwise. Delete "before": the old
//     row with FULL, else only the key columns.
//   * An unchanged TOASTed value (pgoutput kind 'u', not sent by the server)
//     appears as the string kUnchangedToastPlaceholder, never as null.
//   * Header "id" carries DeterministicEventId(commit LSN, index in the
//     transaction); no other headers.
//   Values are mapped from their text form by PgTextToJson(). Text that is
//   not valid UTF-8 (a SQL_ASCII database) is written with U+FFFD in place of
//   the bad bytes rather than failing the event.
//
// - pg_logical_emit_message(true, <prefix>, content) → an OutboxMessage whose
//   Row has the same shape as an outbox table row, so the poll-mode Router
//   routes it identically (ParseOutboxMessage).
//
// - Inserts into outbox tables captured with source = "cdc" → a Row of
//   column name → text value for the Router (OutboxInsertToRow).
//
// Everything here is immutable after construction; safe to share between
// threads.

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "cdc/pgoutput_decoder.h"
#include "common/lsn.h"
#include "common/status.h"
#include "config/config.h"
#include "pipeline/record.h"

namespace outboxd {

// Insertion-ordered JSON, so objects keep the relation's column order and the
// envelope's field order.
using Json = nlohmann::ordered_json;

// What an unchanged TOASTed column (kind 'u') maps to in "before"/"after" and
// in keys. pgoutput does not send the value; consumers must keep the one they
// last saw.
inline constexpr std::string_view kUnchangedToastPlaceholder = "__outboxd_unchanged_toast";

// The deterministic id of the event at `index` (0-based, counted over every
// event the transaction produced) of the transaction committed at
// `commit_lsn`. Identical on replay; distinct for distinct (lsn, index) pairs
// of one database.
//
// Scheme: a UUID version 8 (RFC 9562, "custom") that spells both values out
// in hexadecimal, so an id can be read back by eye:
//   LLLLLLLL-LLLL-8LLL-8Lii-iiiiiiiiiiii
// L: the 64 bits of the commit LSN, most significant first (the version
// nibble '8' is inserted after the first 60 bits, the variant nibble '8'
// before the last 4); i: the low 56 bits of `index`. Commit LSN 16/B374D848,
// index 3 → "00000016-b374-8d84-8800-000000000003".
std::string DeterministicEventId(Lsn commit_lsn, uint64_t index);

// Flags in `index` that keep ids of events that are not "change n of the
// transaction committed at LSN" apart from those: rows of the initial
// snapshot (LSN = the slot's consistent point, which may also be the commit
// LSN of the first streamed transaction) and non-transactional messages
// (LSN = the message's end, which may be the next commit's LSN).
inline constexpr uint64_t kSnapshotIndexFlag = uint64_t{1} << 55;
inline constexpr uint64_t kNonTransactionalIndexFlag = uint64_t{1} << 54;

// Resolves a type oid to the TypeMsg pgoutput sent for it (non-built-in
// types), or nullptr. Used to recognise arrays of unknown element types: a
// type whose name starts with '_' is mapped as an array of strings.
using TypeLookup = std::function<const TypeMsg*(uint32_t oid)>;

// Maps one column value in its PostgreSQL text output form (DateStyle ISO)
// to JSON, by type oid:
//   bool → true/false; int2/int4/int8/oid → number;
//   float4/float8 → number, but "NaN", "Infinity", "-Infinity" → string;
//   numeric → string, precision kept (Debezium decimal.handling.mode=string);
//   json/jsonb → the parsed value embedded (string when it does not parse;
//     numbers with more precision than a double are rounded by the parser);
//   bytea → base64 (RFC 4648, padded) of the bytes (hex or escape input);
//   timestamptz → ISO-8601 in UTC, "2026-11-23T12:00:00.123456Z" (fraction
//     digits as PostgreSQL printed them; infinity/BC/years > 9999 → string of
//     the text form);
//   timestamp → "2026-11-23T12:00:00.123456"; date → "YYYY-MM-DD";
//   1-dimensional (and nested) arrays of the types above → JSON arrays, NULL
//     elements → null; arrays with explicit bounds ("[0:1]={...}") or that do
//     not parse → string of the text form;
//   text, varchar, bpchar, name, uuid and everything else → the text as string.
// Never fails: the text form is always the fallback.
Json PgTextToJson(uint32_t type_oid, std::string_view text, const TypeLookup& types = nullptr);

// The transaction a change belongs to, from its BeginMsg.
struct TransactionInfo {
  Lsn commit_lsn;          // BeginMsg::final_lsn
  int64_t commit_time_us;  // Unix epoch microseconds
  uint32_t xid;

  static TransactionInfo From(const BeginMsg& begin) { return {begin.final_lsn, begin.commit_time_us, begin.xid}; }
};

struct ChangeMapperOptions {
  std::string database;             // source.db
  std::string topic_prefix = "pg";  // topic "<prefix>.<schema>.<table>"
  // "schema.table" → key columns, overriding the replica identity flags
  // (e.g. the primary key of a REPLICA IDENTITY FULL table).
  std::map<std::string, std::vector<std::string>> key_columns;
  TypeLookup types;  // optional; see PgTextToJson
  // A CloudEvents format writes each change envelope as the data of an event
  // of type "outboxd.change.<op>", id the "id" header's, time the commit
  // time, source `cloudevents_source` or DefaultSource("<schema>.<table>").
  EventFormat format = EventFormat::kDebezium;
  std::optional<std::string> cloudevents_source;
};

class ChangeMapper {
 public:
  explicit ChangeMapper(ChangeMapperOptions options);

  // `index` is the change's position among the transaction's events; it
  // feeds DeterministicEventId. Errors (kPermanent): a tuple in binary
  // format, a tuple whose column count differs from its relation's, a topic
  // that is not a legal Kafka topic name, a key column that is absent.
  [[nodiscard]] Result<Record> MapInsert(const InsertMsg& msg, const TransactionInfo& tx, uint64_t index) const;
  [[nodiscard]] Result<Record> MapUpdate(const UpdateMsg& msg, const TransactionInfo& tx, uint64_t index) const;
  [[nodiscard]] Result<Record> MapDelete(const DeleteMsg& msg, const TransactionInfo& tx, uint64_t index) const;
  // A row read by the initial snapshot: like an insert, with op "r". `tx`
  // stands for the snapshot (commit_lsn: the slot's consistent point).
  [[nodiscard]] Result<Record> MapSnapshotRow(const RelationMsg& relation, const TupleData& row,
                                              const TransactionInfo& tx, uint64_t index) const;
  // One record per truncated relation, in message order, with indexes
  // first_index, first_index + 1, ...
  [[nodiscard]] Result<std::vector<Record>> MapTruncate(const TruncateMsg& msg, const TransactionInfo& tx,
                                                        uint64_t first_index) const;

  // "<topic_prefix>.<schema>.<table>" for `relation`, validated.
  [[nodiscard]] Result<std::string> TopicFor(const RelationMsg& relation) const;

 private:
  enum class Op : char { kCreate = 'c', kUpdate = 'u', kDelete = 'd', kTruncate = 't', kRead = 'r' };
  // `before` and `after` are JSON texts ("null" or an object).
  [[nodiscard]] Result<Record> Envelope(const RelationMsg& rel, Op op, std::string_view before, std::string_view after,
                                        std::optional<std::string> key, const TransactionInfo& tx,
                                        uint64_t index) const;
  // The row (or its key columns) as a JSON object text, columns in order.
  [[nodiscard]] Result<std::string> RowJson(const RelationMsg& rel, const TupleData& tuple, bool key_only) const;
  // Appends one column value as JSON (as PgTextToJson maps it).
  void AppendValue(std::string& out, const RelationColumn& col, const TupleColumn& v) const;
  [[nodiscard]] Result<std::optional<std::string>> Key(const RelationMsg& rel, const TupleData& tuple,
                                                       const TupleData* fallback) const;
  std::vector<bool> KeyMask(const RelationMsg& rel) const;

  ChangeMapperOptions options_;
};

// A logical-decoding message turned into an outbox row.
struct OutboxMessage {
  // Every top-level member of the content except "headers", as a column:
  // strings by their contents, null as NULL, other values as compact JSON
  // text (key order kept). So "payload": {"a":1} gives payload = {"a":1},
  // "payload": "hello" gives payload = hello — the bytes a text or jsonb
  // payload column would have held — and the default Router routes it the
  // Debezium way (topic outbox.event.<aggregatetype>, key aggregateid,
  // value payload, header id).
  Row row;
  // The content's optional "headers" object (name → string), in content
  // order, to be appended to the routed Record after the Router's headers.
  // Its "traceparent" and "tracestate" are not here: they are the message's
  // trace context, in `row` as kMessageTraceparent and kMessageTracestate,
  // for the Router to check and carry (a malformed traceparent is dropped
  // with its tracestate, as from an outbox column).
  std::vector<Header> headers;
};

// The columns of OutboxMessage::row holding the trace context of the
// content's "headers"; the message Router's traceparent and tracestate.
inline constexpr char kMessageTraceparent[] = "headers.traceparent";
inline constexpr char kMessageTracestate[] = "headers.tracestate";

// Parses pg_logical_emit_message content when `msg.prefix` equals `prefix`;
// nullopt for any other prefix (not ours: ignored). A non-transactional
// message (pg_logical_emit_message(false, ...)) is parsed the same way; it
// was decoded even if its transaction rolled back, so the caller may want to
// warn about it. Errors (kPermanent, naming the message LSN): content that
// is not a JSON object, an empty "id", "headers" that is not an object of
// strings (or null), a header named "id". A missing or null "id" is left for
// EnsureMessageId() to fill in.
[[nodiscard]] Result<std::optional<OutboxMessage>> ParseOutboxMessage(const LogicalMsg& msg, std::string_view prefix);

// Gives a message without an "id" (absent or null) the deterministic id of
// its place in the stream, DeterministicEventId(commit_lsn, index).
void EnsureMessageId(OutboxMessage& message, Lsn commit_lsn, uint64_t index);

// How message rows are routed: an [[outbox]] block with Debezium's column
// names and [cdc]'s topic, dead-letter topic, format and CloudEvents source
// (default "/outboxd/messages"), the key as subject, and the trace context
// of the content's "headers".
[[nodiscard]] OutboxTableConfig MessageRouting(const CdcConfig& cdc);

// Appends `message.headers` to a record the Router made of `message.row`.
void AppendMessageHeaders(const OutboxMessage& message, Record& record);

// An insert into an outbox table as a Row of column name → text value (NULL
// as nullopt). An unchanged-TOAST or binary column, or a column count that
// differs from the relation's, is a kPermanent error naming the table and
// column (pgoutput never sends 'u' for an insert).
[[nodiscard]] Result<Row> OutboxInsertToRow(const InsertMsg& msg);

}  // namespace outboxd
