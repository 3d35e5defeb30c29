#pragma once
// CdcRelay: the cdc source and its pipeline. It streams the [cdc] pgoutput
// slot, turns inserts into cdc outbox tables, pg_logical_emit_message()
// messages with the configured prefix and row changes of the captured tables
// into records, hands them to the Publisher, and confirms the slot's flush
// position only over what Kafka has acknowledged:
//
// - Every event of a transaction, then a commit marker carrying the commit's
//   end LSN, enter one Checkpoint in stream order. The confirmed position
//   moves to a marker's LSN once it and everything before it are released, so
//   a transaction is confirmed only when it and every earlier one are fully
//   acknowledged. With nothing in flight and no transaction open, it follows
//   the WAL end of the server's keepalives, so an idle slot holds no WAL.
// - Before reporting a new position to the server, it records it in the
//   state table; a slot found dropped or moved past that record (re-created)
//   stops the relay with kPermanent. A slot it has streamed from is never
//   created again.
// - Reading from the socket stops while kafka.max_in_flight events are
//   unacknowledged or librdkafka's queue is full; status updates go on
//   meanwhile, so wal_sender_timeout does not end a healthy stream.
// - A lost connection is re-established with backoff and streaming resumes
//   from the last acknowledged commit; events already handed to librdkafka
//   stay tracked. A delivery that failed (or a producer that had to be
//   recreated) rewinds: once every report of the old generation is in, the
//   stream restarts from the last acknowledged commit, so the failed events
//   are produced again with the same ids. An event Kafka refuses for good goes
//   to the dead-letter topic on that replay, or stops the relay.
//
// Run() owns the loop; one thread; not thread-safe. It updates its Metrics
// handles from that thread: source "slot:<slot>" for messages and row changes,
// "table:<schema.table>" per cdc outbox table, relay health "cdc", and the
// slot's lag, sampled every kSampleInterval on the control connection.

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "cdc/change_mapper.h"
#include "common/lsn.h"
#include "cdc/pgoutput_decoder.h"
#include "cdc/replication_stream.h"
#include "cdc/slot_status.h"
#include "common/backoff.h"
#include "common/pg.h"
#include "common/status.h"
#include "config/config.h"
#include "pipeline/checkpoint.h"
#include "pipeline/metrics.h"
#include "pipeline/publisher.h"
#include "pipeline/router.h"

namespace outboxd {

class CdcRelay {
 public:
  using Clock = std::chrono::steady_clock;

  // How often the slot's lag is read and, when nothing was acknowledged
  // meanwhile, Kafka is asked for metadata (for /readyz).
  static constexpr std::chrono::seconds kSampleInterval{10};

  // Validates routing without a database; `config` (with a [cdc] section)
  // must outlive the relay, and so must `metrics` unless it is null (then
  // the relay keeps private ones).
  [[nodiscard]] static Result<std::unique_ptr<CdcRelay>> Create(const Config& config,
                                                                Metrics* metrics = nullptr);
  ~CdcRelay();

  // Streams until `stop_fd` becomes readable, then stops reading, waits up
  // to kafka.shutdown_timeout for deliveries in flight, confirms them and
  // returns OK. Returns InvalidConfig when the database does not match the
  // configuration at start-up, Permanent when the slot was lost or an event
  // can never be delivered (and no dead-letter topic takes it).
  [[nodiscard]] Status Run(int stop_fd);

  enum class Lifecycle { kReady, kStopping };
  // Called on the Run() thread: kReady once streaming first started (or a
  // standby started waiting for the slot), kStopping when a stop was
  // requested.
  void OnLifecycle(std::function<void(Lifecycle)> handler) { on_lifecycle_ = std::move(handler); }

 private:
  // What a checkpoint entry stands for.
  enum class EntryKind : uint8_t { kEvent, kDeadLetter, kCommit, kSnapshotDone };
  struct Position {
    Lsn lsn;             // events: their transaction's commit LSN (the consistent point for snapshot
                         // rows); commit markers: its end LSN
    uint64_t index = 0;  // events: index in the transaction
    EntryKind kind = EntryKind::kEvent;
    // Events and dead-letter records, for the metrics: index into sources_,
    // the published counter of the event's topic, its commit time (Unix
    // microseconds; 0 for snapshot rows).
    uint32_t source = 0;
    prometheus::Counter* published = nullptr;
    int64_t commit_time_us = 0;
  };
  // An event Kafka refused for good: on replay it goes to the dead-letter topic.
  struct Poisoned {
    std::string error_name;
    std::string error_message;
  };
  // What a decoded change became, before it is produced. With an error
  // (it cannot be routed), `record` holds what a dead-letter record can
  // still carry: id header, key, value.
  struct Routed {
    Record record;
    const std::optional<std::string>* dead_letter_topic;  // of its source; never null
    std::string source;                                   // "table s.t" / "message prefix p", for logs
    Status error;
    uint32_t metrics_source = 0;                          // index into sources_
  };

  explicit CdcRelay(const Config& config);

  [[nodiscard]] Status Connect(bool first);
  [[nodiscard]] Status CheckSlot(bool first);
  [[nodiscard]] Status CheckTables();
  // Creates the slot on the replication connection and publishes every row
  // of the captured tables as of its consistent point (op "r").
  [[nodiscard]] Status TakeSnapshot();
  // The session advisory lock held while a snapshot is taken (Retriable
  // when another instance holds it).
  [[nodiscard]] Status LockSnapshot();
  // A snapshot that did not finish (state row snapshot_done = false): take it
  // again from a new slot when that loses nothing, else stop and say why.
  [[nodiscard]] Status RecoverUnfinishedSnapshot(const SlotState& recorded);
  // Serves delivery reports until reading may go on; Retriable when a stop
  // was requested or a delivery failed meanwhile.
  [[nodiscard]] Status WaitForRoom();
  // Produces the record waiting for queue space, if any.
  [[nodiscard]] Status ProduceStalled();
  void Disconnect(const Status& why);
  void OnDelivery(const DeliveryReport& report);
  [[nodiscard]] Status HandleFailures();
  void Rewind(const std::string& why);
  void ReleaseAcknowledged();
  [[nodiscard]] Status ReportPosition(bool reply_requested, bool force);
  // Reads and handles frames until the socket has none, the in-flight bound
  // is reached or a record waits for queue space.
  [[nodiscard]] Status ReadStream();
  [[nodiscard]] Status HandleMessage(const PgoutputMessage& msg, const XLogData& frame);
  // Produces the event at `index` of tx_, or its dead-letter record.
  [[nodiscard]] Status Emit(Routed routed, uint64_t index);
  [[nodiscard]] Status Produce(Record record, Position pos);
  Routed RouteInsert(const InsertMsg& msg, uint64_t index);
  // nullopt: a message with another prefix.
  std::optional<Routed> RouteMessage(const LogicalMsg& msg, const TransactionInfo& tx, uint64_t index);
  Record DeadLetter(const Routed& routed, const Position& pos, const std::string& error_name,
                    const std::string& error_message) const;
  // What outboxd does with a relation's changes, cached by oid.
  struct RelationRole {
    std::string name;  // "schema.table"
    bool captured = false;                         // [cdc] tables: row-change events
    const OutboxTableConfig* outbox = nullptr;     // a cdc outbox table: inserts are events
    uint32_t source = 0;                           // index into sources_
  };
  const RelationRole& RoleOf(const RelationMsg& rel);
  bool ReadingPaused() const;
  // Reads the slot's lag; asks Kafka for metadata when it has not answered
  // for a while.
  [[nodiscard]] Status SampleMetrics(Clock::time_point now);
  // Publishes the per-turn gauges and the relay's health.
  void UpdateHealth(const Status& halt);
  // The checkpoint forgot its events: nothing is in flight for the metrics.
  void ForgetInFlight();
  std::chrono::milliseconds NextWait(Clock::time_point now) const;

  const Config& config_;
  const CdcConfig& cdc_;
  std::unique_ptr<Metrics> own_metrics_;  // when Create() was given none
  Metrics* metrics_ = nullptr;            // never null
  RelayHealth* health_ = nullptr;         // owned by *metrics_
  SlotMetrics* slot_metrics_ = nullptr;   // owned by *metrics_
  // The `source` label values of this relay: [0] is "slot:<slot>", then one
  // per cdc outbox table, with their events in flight.
  struct MetricsSource {
    SourceMetrics* metrics;
    int64_t in_flight = 0;
  };
  std::vector<MetricsSource> sources_;
  std::map<std::string, uint32_t> outbox_sources_;  // "schema.table" → index into sources_
  Clock::time_point next_sample_{};
  bool lost_connection_ = false;  // count the next stream start as a reconnect
  bool standby_ = false;          // waiting for another process to release the slot
  bool snapshotting_ = false;     // inside TakeSnapshot()
  uint64_t tx_events_ = 0;        // events of tx_ produced so far (batch size)
  std::unique_ptr<Publisher> publisher_;
  std::map<std::string, Router> outbox_routers_;  // "schema.table" of cdc outbox tables
  std::map<std::string, const OutboxTableConfig*> outbox_configs_;
  std::optional<Router> message_router_;
  std::vector<std::string> captured_;  // [cdc] tables as "schema.table"
  std::optional<ChangeMapper> mapper_;  // needs the database name

  PgConn ctl_;  // ordinary connection: slot checks and the state table
  ReplicationStream stream_;
  PgoutputDecoder decoder_;
  std::unordered_map<uint32_t, RelationRole> roles_;
  std::string database_;
  bool streamed_once_ = false;  // the slot is ours: never create it again
  bool snapshot_pending_ = false;  // create the slot with an exported snapshot and read it
  bool snapshot_done_ = true;      // the initial snapshot is acknowledged
  bool snapshot_recorded_ = true;  // snapshot_done_ is what the state table says
  Status snapshot_failed_;         // a rewind before the snapshot was acknowledged: stop
  int stop_fd_ = -1;
  Backoff reconnect_backoff_{std::chrono::milliseconds(100), std::chrono::seconds(30)};
  Clock::time_point reconnect_at_{};

  Checkpoint<Position> checkpoint_;
  std::optional<TransactionInfo> tx_;  // between Begin and Commit
  uint64_t tx_index_ = 0;              // events of tx_ so far
  // A record librdkafka's queue had no room for: produced before anything else.
  std::optional<std::pair<Record, Position>> stalled_;
  Lsn acked_lsn_;       // every commit up to here is acknowledged
  Lsn recorded_lsn_;    // in the state table
  Lsn reported_lsn_;    // sent to the server as flushed
  Lsn keepalive_end_;   // WAL end of the last keepalive seen with nothing in flight
  Clock::time_point next_status_{};
  std::map<std::pair<uint64_t, uint64_t>, Poisoned> poisoned_;  // (commit LSN, index)

  bool rewinding_ = false;  // waiting for the old generation's reports before restarting
  struct Failure {
    Position pos;
    DeliveryReport report;
  };
  std::vector<Failure> failures_;  // filled by OnDelivery, handled after Poll

  bool stopping_ = false;
  bool ready_signalled_ = false;
  std::function<void(Lifecycle)> on_lifecycle_;
  uint64_t published_ = 0;
  uint64_t dead_lettered_ = 0;
};

}  // namespace outboxd
