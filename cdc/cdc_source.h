#pragma once
// CdcSource: the cdc source. It streams the [cdc] pgoutput slot, turns
// inserts into cdc outbox tables, pg_logical_emit_message() messages with the
// configured prefix and row changes of the captured tables into records,
// hands them to the Publisher, and confirms the slot's flush position only
// over what Kafka has acknowledged. The PipelineRunner drives it
// (pipeline/source.h).
//
// - Every event of a transaction, then a commit marker carrying the commit's
//   end LSN, enter one Checkpoint in stream order. The confirmed position
//   moves to a marker's LSN once it and everything before it are released, so
//   a transaction is confirmed only when it and every earlier one are fully
//   acknowledged. With nothing in flight and no transaction open, it follows
//   the WAL end of the server's keepalives, so an idle slot holds no WAL.
// - Before reporting a new position to the server, it records it in the
//   state table; a slot found dropped or moved past that record (re-created)
//   stops with kPermanent. A slot it has streamed from is never created
//   again.
// - Reading from the socket stops while kafka.max_in_flight events are
//   unacknowledged or librdkafka's queue is full; status updates go on
//   meanwhile (Settle() runs every turn), so wal_sender_timeout does not end
//   a healthy stream.
// - A lost connection is re-established by the runner; with events in
//   flight, streaming resumes only once they are all reported (the rewind
//   gate, without a pause), from the last acknowledged commit, so nothing
//   Kafka acknowledged meanwhile is read and sent again. A delivery that
//   failed (or a producer that had to be recreated) rewinds
//   (pipeline/rewind_gate.h): once every report of the old generation is
//   in, the stream restarts from the last acknowledged commit, so the failed
//   events are produced again with the same ids. An event Kafka refuses for
//   good goes to the dead-letter topic on that replay, or stops the source.
//
// The stream's phase:
//
//   kDisconnected ──Connect()──► kSnapshotting ──snapshot read──► kStreaming
//                       │                                          ▲   │
//                       ├── slot held by another process ──► kStandby  │ delivery failed,
//                       │     (START_REPLICATION again every           │ producer lost
//                       │      kStandbyRetry, never the backoff)      ▼
//                       └──────────────────────────────────────► kRewinding ──old generation
//                                                                       reported──► kStreaming
//   any phase ── a connection fails (runner: Disconnect()) ──► kDisconnected
//     (from kStreaming with events in flight, Connect() then enters kRewinding)
//
// and, with snapshot = "initial", the snapshot's own state (SnapshotState).
// Enter() is the one place the phase changes. Not thread-safe: the runner's
// thread only. Metrics: source "slot:<slot>" for messages and row changes,
// "table:<schema.table>" per cdc outbox table, relay health "cdc", the
// slot's lag (sampled on the control connection).

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "cdc/change_mapper.h"
#include "cdc/pgoutput_decoder.h"
#include "cdc/replication_stream.h"
#include "cdc/slot_status.h"
#include "cdc/snapshot.h"
#include "common/lsn.h"
#include "common/pg.h"
#include "common/status.h"
#include "config/config.h"
#include "pipeline/checkpoint.h"
#include "pipeline/kafka_transactions.h"
#include "pipeline/metrics.h"
#include "pipeline/publisher.h"
#include "pipeline/rewind_gate.h"
#include "pipeline/router.h"
#include "pipeline/source.h"

namespace outboxd {

class CdcSource final : public Source {
 public:
  // A slot held by another process (a standby waiting its turn) is tried
  // again this often — its own interval, not the reconnect backoff.
  static constexpr std::chrono::milliseconds kStandbyRetry{1000};

  // Validates routing without a database; `config` (with a [cdc] section)
  // and `metrics` must outlive the source.
  [[nodiscard]] static Result<std::unique_ptr<CdcSource>> Create(const Config& config, Metrics& metrics);
  ~CdcSource() override;

  std::string_view name() const override { return "cdc"; }
  void Attach(Publisher& publisher, RelayHealth& health) override {
    publisher_ = &publisher;
    health_ = &health;
  }
  [[nodiscard]] Status Connect(bool first) override;
  void Disconnect() override;
  bool connected() const override { return phase_ != Phase::kDisconnected; }
  void OnDelivery(const DeliveryReport& report) override;
  [[nodiscard]] Status Settle(Clock::time_point now, FailedDeliveries failed) override;
  [[nodiscard]] Status OnProducerLost() override;
  [[nodiscard]] Status Pump(Clock::time_point now) override;
  [[nodiscard]] Status Sample() override;
  void WaitFds(std::vector<pollfd>& fds, bool stopping) const override;
  Clock::time_point NextWakeup(Clock::time_point now) const override;
  Health CheckHealth() override;
  std::size_t in_flight() const override { return checkpoint_.pending(); }
  bool Drained() const override { return checkpoint_.pending() == 0; }
  void Finish() override;

 private:
  enum class Phase : uint8_t {
    kDisconnected,  // no connections: before the first Connect(), after a failure
    kStandby,       // another process streams the slot; START_REPLICATION again every kStandbyRetry
    kSnapshotting,  // reading the captured tables in the new slot's exported snapshot, a batch a turn
    kStreaming,     // reading the slot
    kRewinding,     // stream closed: waiting for the old generation's reports, then streaming again
  };
  // The initial snapshot (snapshot = "initial").
  enum class SnapshotState : uint8_t {
    kDone,            // none needed, or acknowledged and recorded in the state table
    kPending,         // create the slot with an exported snapshot at the next Connect()
    kReading,         // phase kSnapshotting
    kUnacknowledged,  // read; Kafka has not acknowledged all of it yet
    kUnrecorded,      // acknowledged; the state table does not say so yet
    kFailed,          // a rewind before it was acknowledged: stop (retaken at the next start)
  };
  // What a checkpoint entry stands for. kPosition: the position record that
  // ends a Kafka transaction (exactly-once).
  enum class EntryKind : uint8_t { kEvent, kDeadLetter, kCommit, kSnapshotDone, kPosition };
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
    uint32_t metrics_source = 0;  // index into sources_
  };
  // The initial snapshot being read: which table, its cursor and the batch
  // not yet produced.
  struct SnapshotReader {
    Lsn consistent_point;
    std::size_t table = 0;  // index into captured_
    std::optional<RelationMsg> relation;
    std::optional<SnapshotCursor> cursor;
    std::vector<TupleData> batch;
    std::size_t next_in_batch = 0;
    uint64_t index = 0;  // rows of the whole snapshot so far
    uint64_t table_rows = 0;
  };
  // What outboxd does with a relation's changes, cached by oid.
  struct RelationRole {
    std::string name;                           // "schema.table"
    bool captured = false;                      // [cdc] tables: row-change events
    const OutboxTableConfig* outbox = nullptr;  // a cdc outbox table: inserts are events
    uint32_t source = 0;                        // index into sources_
  };
  struct Failure {
    Position pos;
    DeliveryReport report;
  };
  // The `source` label values of this source: [0] is "slot:<slot>", then one
  // per cdc outbox table, with their events in flight.
  struct MetricsSource {
    SourceMetrics* metrics;
    int64_t in_flight = 0;
    // Acknowledged events of the transaction whose commit is not released
    // yet: released, but a restart reads them again from its beginning.
    uint64_t released_in_open_txn = 0;
  };

  explicit CdcSource(const Config& config);

  // The one place the phase changes.
  void Enter(Phase phase);

  [[nodiscard]] Status CheckSlot(bool first);
  [[nodiscard]] Status CheckTables();
  // The session advisory lock held while a snapshot is taken (Retriable
  // when another instance holds it).
  [[nodiscard]] Status LockSnapshot();
  // A snapshot that did not finish (state row snapshot_done = false): take it
  // again from a new slot when that loses nothing, else stop and say why.
  [[nodiscard]] Status RecoverUnfinishedSnapshot(const SlotState& recorded);
  // Creates the slot on the replication connection with an exported
  // snapshot and starts reading the captured tables in it.
  [[nodiscard]] Status BeginSnapshot();
  // Produces the next rows of the snapshot, as far as the in-flight bound
  // allows; then streams from the consistent point.
  [[nodiscard]] Status ReadSnapshot();
  [[nodiscard]] Status EndSnapshot();
  // START_REPLICATION from the last acknowledged commit; kStandby when
  // another process holds the slot.
  [[nodiscard]] Status StartStreaming();
  // After a rewind or as a standby: the replication connection again, then
  // StartStreaming().
  [[nodiscard]] Status RestartStream(bool check_slot);
  // Exactly-once: a PostgreSQL transaction's commit marker is released only
  // once its Kafka transaction committed; at least once, at once.
  void AddCommitMarker(Lsn end_lsn, Lsn commit_lsn);
  // Exactly-once: at a PostgreSQL transaction boundary, ends the open Kafka
  // transaction with its position record once transaction_max_wait or
  // _max_events is reached.
  [[nodiscard]] Status CommitIfDue(Clock::time_point now);
  // Exactly-once: drives a commit or abort under way; a commit releases its
  // PostgreSQL transactions' commit markers.
  [[nodiscard]] Status AdvanceTransaction();
  // Exactly-once: right after the stream started (the slot is ours), fences
  // earlier holders and reads the position Kafka has.
  [[nodiscard]] Status InitialiseTransactions();
  bool TransactionBusy() const;
  // Produces the record waiting for queue space, if any.
  [[nodiscard]] Status ProduceStalled();
  [[nodiscard]] Status HandleFailures();
  void Rewind(const std::string& why, ResendCause cause);
  // Counts, per source, the acknowledged events the restart from acked_lsn_
  // produces again (outboxd_events_resent_total).
  void CountResent();
  void ReleaseAcknowledged();
  // Records the acknowledged position in the state table, then sends it to
  // the server as flushed: kWhenDue when a confirmation (confirm_interval,
  // confirm_events) or the keepalive (status_interval) is due, kNow at once
  // (the server asked; stopping).
  enum class Report : uint8_t { kWhenDue, kNow };
  [[nodiscard]] Status ReportPosition(Report when);
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
  const RelationRole& RoleOf(const RelationMsg& rel);
  bool ReadingPaused() const;
  bool snapshot_done() const { return snapshot_ == SnapshotState::kDone || snapshot_ == SnapshotState::kUnrecorded; }
  // The checkpoint forgot its events: nothing is in flight for the metrics.
  void ForgetInFlight();

  // Constant after Create() (Attach() sets the two pointers).
  const Config& config_;
  const CdcConfig& cdc_;
  Publisher* publisher_ = nullptr;  // owned by the runner
  RelayHealth* health_ = nullptr;   // owned by the Metrics
  SlotMetrics* slot_metrics_ = nullptr;
  Metrics* metrics_ = nullptr;
  std::map<std::string, Router> outbox_routers_;  // "schema.table" of cdc outbox tables
  std::map<std::string, const OutboxTableConfig*> outbox_configs_;
  std::map<std::string, uint32_t> outbox_sources_;  // "schema.table" → index into sources_
  std::optional<Router> message_router_;
  std::vector<std::string> captured_;  // [cdc] tables as "schema.table"

  // Owned by the runner's thread.
  Phase phase_ = Phase::kDisconnected;  // changed by Enter() only
  SnapshotState snapshot_ = SnapshotState::kDone;
  Status snapshot_failure_;  // with SnapshotState::kFailed
  std::optional<SnapshotReader> snapshot_reader_;
  std::vector<MetricsSource> sources_;
  std::optional<ChangeMapper> mapper_;  // needs the database name
  PgConn ctl_;                          // ordinary connection: slot checks and the state table
  ReplicationStream stream_;
  PgoutputDecoder decoder_;
  std::unordered_map<uint32_t, RelationRole> roles_;
  std::string database_;
  bool streamed_once_ = false;    // the slot is ours: never create it again
  bool lost_connection_ = false;  // count the next stream start as a reconnect
  Clock::time_point standby_retry_at_{};
  RewindGate gate_;

  Checkpoint<Position> checkpoint_;
  std::optional<TransactionInfo> tx_;  // between Begin and Commit
  uint64_t tx_index_ = 0;              // events of tx_ so far
  uint64_t tx_events_ = 0;             // events of tx_ produced so far (batch size)
  // Records librdkafka's queue had no room for (one change can become
  // several: a TRUNCATE of many tables): produced before anything else.
  std::deque<std::pair<Record, Position>> stalled_;
  Lsn acked_lsn_;                 // every commit up to here is acknowledged
  Lsn recorded_lsn_;              // in the state table
  Lsn acked_commit_lsn_;          // the last acknowledged commit (acked_lsn_ also follows idle keepalives)
  Lsn reported_lsn_;              // sent to the server as flushed
  uint64_t released_events_ = 0;  // events acknowledged since the last report
  Clock::time_point next_status_{};
  Clock::time_point next_confirm_{};
  ResendCause restart_cause_ = ResendCause::kRewind;            // why the stream restarts at the gate
  std::map<std::pair<uint64_t, uint64_t>, Poisoned> poisoned_;  // (commit LSN, index)
  std::vector<Failure> failures_;                               // filled by OnDelivery, handled by Settle
  uint64_t published_ = 0;
  uint64_t dead_lettered_ = 0;

  // Exactly-once ([kafka] delivery): the slot's Kafka transactions, from the
  // first Connect() (its id needs the server's identity); null at least
  // once.
  std::unique_ptr<KafkaTransactions> txn_;
  // Commit markers of the PostgreSQL transactions in the open Kafka
  // transaction: acknowledged when it commits.
  std::vector<Checkpoint<Position>::Ticket> txn_commits_;
  Lsn txn_last_commit_;   // commit LSN of its last PostgreSQL transaction: its position
  Lsn skip_through_;      // Kafka has every transaction committed up to here (its position)
  uint64_t skipped_ = 0;  // transactions skipped for it since the last Initialise
};

}  // namespace outboxd
