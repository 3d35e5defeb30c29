#pragma once
// Config: the typed form of outboxd's one TOML file, and LoadConfig(), the
// strict loader that produces it.
//
// The loader rejects unknown keys, wrong types, missing required values and
// bad values with an error of the form "FILE:LINE:COLUMN: message" and status
// code kInvalidConfig (the daemon maps it to exit code 78, EX_CONFIG). It does
// not touch the database; table and column existence is checked by the relay
// at start-up. Plain value types; not synchronised.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace outboxd {

struct PostgresConfig {
  std::string conninfo;  // libpq conninfo string or URI (required)
  // Contents of password_file (relative to the config file's directory),
  // without trailing newlines; nullopt when the key is absent.
  std::optional<std::string> password;
  std::string password_file;  // its resolved path; empty when absent
};

// What a consumer of the topics is promised (docs/configuration.md,
// docs/design/exactly-once.md).
enum class Delivery : uint8_t {
  kAtLeastOnce,  // every event, a copy after a failure (same id)
  kExactlyOnce,  // Kafka transactions: read_committed consumers see every event once
};

struct KafkaConfig {
  std::string bootstrap_servers;                  // required
  std::map<std::string, std::string> properties;  // passed to librdkafka as is
  // password_file (relative to the config file's directory), resolved; its
  // contents, without trailing newlines, are properties["sasl.password"].
  std::string password_file;
  // Upper bound on events produced but not yet acknowledged, over all tables.
  std::size_t max_in_flight = 50000;
  // On shutdown, how long to wait for in-flight deliveries.
  std::chrono::milliseconds shutdown_timeout{10000};
  Delivery delivery = Delivery::kAtLeastOnce;
  // Exactly-once: the compacted one-partition topic holding each stream's
  // last committed position (pipeline/position_store.h).
  std::string position_topic = "outboxd.positions";
  // Exactly-once: consecutive PostgreSQL transactions share one Kafka
  // transaction until it has been open this long, holds this many events or
  // this many bytes (keys, values and headers); it is committed at the next
  // PostgreSQL transaction's end. One PostgreSQL transaction is never split.
  std::chrono::milliseconds transaction_max_wait{20};
  std::int64_t transaction_max_events = 10000;
  std::int64_t transaction_max_bytes = 16 * 1024 * 1024;
};

struct HttpConfig {
  // "host:port"; a port alone is on 127.0.0.1. No listener when absent.
  std::optional<std::string> listen;
  // HTTPS with this PEM certificate (chain) and private key; both or neither.
  std::string tls_cert_file;
  std::string tls_key_file;
  // HTTP basic authentication for /metrics, and for /healthz and /readyz
  // too when basic_auth_health: the user and the password (the contents of
  // basic_auth_password_file, resolved as password_file is); both or neither.
  std::string basic_auth_user;
  std::optional<std::string> basic_auth_password;
  std::string basic_auth_password_file;
  bool basic_auth_health = false;
};

enum class LogFormat { kText, kJson };
struct LogConfig {
  std::string level = "info";  // trace | debug | info | warn | error
  LogFormat format = LogFormat::kText;
};

enum class AfterDelivery { kDelete, kMark };

// How an event is written to Kafka (pipeline/cloudevents.h does the writing).
enum class EventFormat : uint8_t {
  kDebezium,               // Debezium's outbox event router's record (the default)
  kCloudEventsBinary,      // CloudEvents 1.0, Kafka binding, binary content mode
  kCloudEventsStructured,  // CloudEvents 1.0, Kafka binding, structured content mode (JSON)
};

// The CloudEvents attributes of an [[outbox]] block's events
// ([outbox.cloudevents]); `id` is the block's id column, `time` its
// timestamp column.
struct CloudEventsConfig {
  std::string source;                  // a URI-reference; default "/outboxd/<schema>.<table>"
  std::string type = "type";           // column
  std::optional<std::string> subject;  // column; default the key column; nullopt: none
  std::string datacontenttype = "application/json";
  std::vector<std::pair<std::string, std::string>> extensions;  // attribute → column, file order
};

// Where an [[outbox]] block's events come from: claimed from the table by
// polling, or captured from its inserts through the [cdc] replication slot.
enum class OutboxSource { kPoll, kCdc };

struct OutboxTableConfig {
  std::string table;  // "schema.table" or "table" (required)
  OutboxSource source = OutboxSource::kPoll;
  // Poll-only keys (order_by, after_delivery, sent_column, batch_size,
  // poll_interval, notify_channel) are rejected with source = "cdc".
  std::string order_by = "seq";  // monotonic ordering column
  AfterDelivery after_delivery = AfterDelivery::kDelete;
  std::optional<std::string> sent_column;  // required with kMark
  // Column mapping; the defaults are Debezium's outbox event router's.
  std::string id = "id";
  std::optional<std::string> key = std::string("aggregateid");  // nullopt: no key
  std::string payload = "payload";
  std::string topic = "outbox.event.${aggregatetype}";       // template of ${column}
  std::vector<std::pair<std::string, std::string>> headers;  // header -> column, file order
  std::optional<std::string> timestamp;                      // column giving the record timestamp
  EventFormat format = EventFormat::kDebezium;
  CloudEventsConfig cloudevents;  // with a CloudEvents format
  // W3C trace context columns, carried as headers "traceparent" and
  // "tracestate" in every format (and as the CloudEvents distributed-tracing
  // extension); a malformed traceparent is dropped with its tracestate.
  std::optional<std::string> traceparent;
  std::optional<std::string> tracestate;
  std::size_t batch_size = 1000;
  std::chrono::milliseconds poll_interval{250};
  std::optional<std::string> notify_channel;
  std::optional<std::string> dead_letter_topic;
  std::string config_location;  // "FILE:LINE:COLUMN" of the block, for errors
};

enum class SnapshotMode { kNever, kInitial };

// The [cdc] section: one pgoutput replication slot and what it streams.
struct CdcConfig {
  std::string slot = "outboxd";         // logical replication slot (pgoutput)
  std::string publication = "outboxd";  // publication the slot streams
  // Create the publication, slot and state table at start-up when missing.
  // Never re-creates a slot outboxd has streamed from (see state_table).
  bool create = false;
  // pg_logical_emit_message(true, <prefix>, <json>) → an outbox event;
  // nullopt: messages are not turned into events.
  std::optional<std::string> message_prefix;
  // Routing of those messages, as in an [[outbox]] block (Debezium defaults).
  std::string message_topic = "outbox.event.${aggregatetype}";
  // Where messages and row changes that can never be delivered go (with the
  // reason in headers); without it such an event halts the stream.
  std::optional<std::string> dead_letter_topic;
  // Row-change events for these tables ("schema.table" or "table").
  std::vector<std::string> tables;
  std::string topic_prefix = "pg";  // row changes go to <prefix>.<schema>.<table>
  SnapshotMode snapshot = SnapshotMode::kNever;
  // Keepalive: the position is reported to the server at least this often,
  // also while idle.
  std::chrono::milliseconds status_interval{10000};
  // Acknowledged transactions are recorded in the state table and confirmed
  // to the server at most this long after Kafka acknowledged them, or once
  // this many events were acknowledged, whichever comes first: what a crash
  // of outboxd replays.
  std::chrono::milliseconds confirm_interval{100};
  std::int64_t confirm_events = 10000;
  // Table (created by `outboxd init`) in which outboxd records, per slot, the
  // last position it confirmed, to notice a slot dropped and re-created.
  std::string state_table = "public.outboxd_slot_state";
  // How row changes and messages are written; row changes in a CloudEvents
  // format have type "outboxd.change.<op>" (docs/cloudevents.md).
  EventFormat format = EventFormat::kDebezium;
  // [cdc.cloudevents] source; nullopt: "/outboxd/<schema>.<table>" for a row
  // change, "/outboxd/messages" for a message.
  std::optional<std::string> cloudevents_source;
  std::string config_location;  // "FILE:LINE:COLUMN" of the section
};

struct Config {
  std::string path;  // the file it was loaded from
  PostgresConfig postgres;
  KafkaConfig kafka;
  HttpConfig http;
  LogConfig log;
  // At least one [[outbox]] block or a [cdc] section that captures
  // something (a cdc outbox table, tables, or message_prefix).
  std::vector<OutboxTableConfig> outboxes;
  std::optional<CdcConfig> cdc;  // required when an outbox has source = "cdc"
};

// Loads and validates the TOML file at `path`. `${NAME}` in strings of the
// [postgres], [kafka], [http] and [log] sections is replaced by the
// environment variable NAME (an unset variable is an error; `$${` is a
// literal `${`); [[outbox]] blocks and the [cdc] section are taken literally,
// so that routing keys keep `${column}` (`${field}` in message_topic) for the
// router. Every error found is reported, one "FILE:LINE:COLUMN: message" per
// line in file order, with code kInvalidConfig. Never throws.
[[nodiscard]] Result<Config> LoadConfig(const std::string& path);

// The schema an unqualified table name in the configuration means where
// outboxd names a table without asking the server ([cdc] tables, outbox
// tables captured by cdc, check-config): the default search_path's. A polled
// table is resolved by the server, with the session's search_path.
inline constexpr char kDefaultSchema[] = "public";

// A table name as the configuration gives it, "schema.table" or "table",
// with the schema made explicit: "orders" → "public.orders".
std::string QualifiedTableName(const std::string& table);

// Parses "250ms", "10s", "2m", "1h" (optionally with a fraction, "1.5s") into
// milliseconds. A missing or unknown unit, a sign, or a value that is not a
// whole number of milliseconds is a kInvalidConfig error.
[[nodiscard]] Result<std::chrono::milliseconds> ParseDuration(std::string_view text);

}  // namespace outboxd
