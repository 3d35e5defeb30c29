#include "cdc/cdc_source.h"

#include <poll.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>

#include <algorithm>
#include <cstdlib>

#include "common/advisory_locks.h"
#include "common/logging.h"
#include "pipeline/dead_letter.h"
#include "pipeline/failure.h"

namespace outboxd {

using std::chrono::milliseconds;

namespace {

// Snapshot rows read from the cursor at a time (one batch a turn).
constexpr int kSnapshotBatch = 1000;

constexpr std::size_t kFramesPerTurn = 4096;  // then serve delivery reports and timers
// While reading is paused the server's keepalive requests go unseen, so the
// status goes out at least this often.
constexpr milliseconds kPausedStatusInterval(1000);

std::string QualifiedName(const RelationMsg& rel) {
  return (rel.namespace_name.empty() ? std::string("pg_catalog") : rel.namespace_name) + "." + rel.name;
}

}  // namespace

CdcSource::CdcSource(const Config& config)
    : config_(config), cdc_(*config.cdc), stream_(config.postgres.conninfo, config.postgres.password, "outboxd-cdc") {}

CdcSource::~CdcSource() = default;

Result<std::unique_ptr<CdcSource>> CdcSource::Create(const Config& config, Metrics& metrics) {
  if (!config.cdc) return Status::InvalidConfig("no [cdc] section");
  std::unique_ptr<CdcSource> source(new CdcSource(config));
  source->sources_.push_back({&metrics.Source(SlotSource(config.cdc->slot))});
  for (const OutboxTableConfig& t : config.outboxes) {
    if (t.source != OutboxSource::kCdc) continue;
    auto router = Router::Create(t);
    if (!router.ok()) return router.status().Prefixed(t.config_location);
    source->outbox_routers_.emplace(QualifiedTableName(t.table), std::move(router).value());
    source->outbox_configs_.emplace(QualifiedTableName(t.table), &t);
    if (source->outbox_sources_.emplace(QualifiedTableName(t.table), static_cast<uint32_t>(source->sources_.size()))
            .second) {
      source->sources_.push_back({&metrics.Source(TableSource(QualifiedTableName(t.table)))});
    }
  }
  if (config.cdc->message_prefix) {
    auto router = Router::Create(MessageRouting(*config.cdc));
    if (!router.ok()) return router.status().Prefixed(config.cdc->config_location);
    source->message_router_.emplace(std::move(router).value());
  }
  for (const std::string& t : config.cdc->tables) source->captured_.push_back(QualifiedTableName(t));
  source->slot_metrics_ = &metrics.Slot(config.cdc->slot);
  source->metrics_ = &metrics;
  return source;
}

void CdcSource::Enter(Phase phase) { phase_ = phase; }

// --- Connecting ---------------------------------------------------------------

Status CdcSource::CheckSlot(bool first) {
  auto log = Logger("cdc");
  const bool create = first && cdc_.create;
  if (create) {
    auto r = ctl_.Exec(CreateStateTableSql(cdc_.state_table));
    if (!r.ok()) return r.status().Prefixed("could not create the state table " + cdc_.state_table);
  }
  auto recorded = ReadSlotState(ctl_, cdc_.state_table, cdc_.slot);
  if (!recorded.ok()) {
    // Nothing set up yet: name the slot first, it is what matters most.
    auto slot = ReadSlotStatus(ctl_, cdc_.slot);
    if (recorded.status().code() == StatusCode::kInvalidConfig && slot.ok() && !*slot) {
      return Status::InvalidConfig("replication slot \"" + cdc_.slot + "\" and the state table " + cdc_.state_table +
                                   " do not exist (create them with `outboxd init`, or set [cdc] create = true)");
    }
    return recorded.status();
  }
  if (*recorded && !(*recorded)->snapshot_done && !streamed_once_) {
    OUTBOXD_RETURN_IF_ERROR(RecoverUnfinishedSnapshot(**recorded));
    recorded = ReadSlotState(ctl_, cdc_.state_table, cdc_.slot);
    if (!recorded.ok()) return recorded.status();
  }
  std::optional<Lsn> recorded_lsn;
  if (*recorded) recorded_lsn = (*recorded)->confirmed;
  if (streamed_once_) recorded_lsn = std::max(recorded_lsn.value_or(Lsn()), recorded_lsn_);
  auto status = ReadSlotStatus(ctl_, cdc_.slot);
  if (!status.ok()) return status.status();
  OUTBOXD_RETURN_IF_ERROR(CheckSlotAgainstState(cdc_.slot, *status, recorded_lsn, cdc_.state_table));

  std::vector<std::string> tables;
  for (const auto& [name, config] : outbox_configs_) tables.push_back(name);
  tables.insert(tables.end(), captured_.begin(), captured_.end());
  auto ran = EnsurePublication(ctl_, cdc_.publication, tables, create);
  if (!ran.ok()) return ran.status();
  // Only a slot with no state row can be missing here (checked above): one
  // outboxd has used is never created again.
  const bool create_slot = create && !recorded_lsn;
  if (create_slot && !*status && cdc_.snapshot == SnapshotMode::kInitial) {
    snapshot_ = SnapshotState::kPending;  // created with its snapshot on the replication connection
  } else {
    if (cdc_.snapshot == SnapshotMode::kInitial && *status && !recorded_lsn) {
      log->info(
          "replication slot \"{}\" already exists: snapshot = \"initial\" is taken only when outboxd "
          "creates the slot itself",
          cdc_.slot);
    }
    health_->SetInLongCall(true);  // creating a slot waits for running transactions to end
    auto slot_ran = EnsureSlot(ctl_, cdc_.slot, create_slot);
    health_->SetInLongCall(false);
    if (!slot_ran.ok()) return slot_ran.status();
    ran->insert(ran->end(), slot_ran->begin(), slot_ran->end());
  }
  for (const std::string& sql : *ran) log->info("ran: {}", sql);
  if (snapshot_ == SnapshotState::kPending) return Status::Ok();

  status = ReadSlotStatus(ctl_, cdc_.slot);
  if (!status.ok()) return status.status();
  if (!*status || !(*status)->confirmed_flush_lsn) {
    return Status::Retriable("replication slot \"" + cdc_.slot + "\" has no confirmed_flush_lsn yet");
  }
  const Lsn confirmed = *(*status)->confirmed_flush_lsn;
  if (!recorded_lsn) {
    OUTBOXD_RETURN_IF_ERROR(WriteSlotState(ctl_, cdc_.state_table, cdc_.slot, {confirmed, true}));
    recorded_lsn_ = confirmed;
  } else {
    recorded_lsn_ = *recorded_lsn;
    // After a reconnect the relay knows better than the row, which is
    // written only at the next position report.
    if (*recorded && !streamed_once_ && !(*recorded)->snapshot_done) snapshot_ = SnapshotState::kUnacknowledged;
  }
  // Never report a flush position below what the slot already has.
  acked_lsn_ = std::max(acked_lsn_, confirmed);
  return Status::Ok();
}

Status CdcSource::LockSnapshot() {
  auto locked = ctl_.Exec(kTryLockCdcSnapshotSql, {cdc_.slot});
  if (!locked.ok())
    return locked.status().Prefixed("could not lock the initial snapshot of slot \"" + cdc_.slot + "\"");
  if (std::string_view(PQgetvalue(locked->get(), 0, 0)) != "t") {
    return Status::Retriable("the initial snapshot of replication slot \"" + cdc_.slot +
                             "\" is being taken by another outboxd instance");
  }
  return Status::Ok();
}

Status CdcSource::RecoverUnfinishedSnapshot(const SlotState& recorded) {
  auto log = Logger("cdc");
  // Whoever takes a snapshot holds this lock on its control session until it
  // ends: a standby must not touch a snapshot in progress.
  OUTBOXD_RETURN_IF_ERROR(LockSnapshot());
  auto slot = ReadSlotStatus(ctl_, cdc_.slot);
  if (!slot.ok()) return slot.status();
  const std::string name = "replication slot \"" + cdc_.slot + "\"";
  if (!*slot) {
    // Stopped before the slot was created: nothing was captured yet.
    log->warn("the initial snapshot of {} was never started; taking it now", name);
    return DeleteSlotState(ctl_, cdc_.state_table, cdc_.slot);
  }
  if (cdc_.snapshot == SnapshotMode::kNever) {
    log->warn("the initial snapshot of {} did not finish; snapshot = \"never\" now: streaming the slot without it",
              name);
    return WriteSlotState(ctl_, cdc_.state_table, cdc_.slot, {recorded.confirmed, true});
  }
  if (!outbox_configs_.empty() || cdc_.message_prefix) {
    // A new snapshot needs a new slot, and dropping this one would lose the
    // outbox events and messages it holds since its consistent point.
    return Status::Permanent(
        "the initial snapshot of " + name +
        " did not finish, and the slot holds outbox events and messages "
        "committed since " +
        recorded.confirmed.ToString() + " that a new slot would skip. To publish them, set " +
        "[cdc] snapshot = \"never\" and restart (the rows of `tables` that the snapshot did not deliver must then "
        "be published by other means); or, if nothing was written since, drop the slot and its row in " +
        cdc_.state_table + " and start again");
  }
  // Only row changes of `tables` come from this slot, and a new snapshot
  // gives every row's current state: drop the slot, take it again.
  log->warn(
      "the initial snapshot of {} did not finish; dropping the slot (nothing was confirmed from it) to take "
      "the snapshot again",
      name);
  auto dropped = ctl_.Exec("SELECT pg_drop_replication_slot($1)", {cdc_.slot});
  if (!dropped.ok()) return dropped.status().Prefixed("could not drop " + name);
  OUTBOXD_RETURN_IF_ERROR(DeleteSlotState(ctl_, cdc_.state_table, cdc_.slot));
  checkpoint_.Reset();  // reports of the unfinished snapshot's records are stale now
  ForgetInFlight();
  stalled_.clear();
  return Status::Ok();
}

Status CdcSource::BeginSnapshot() {
  auto log = Logger("cdc");
  OUTBOXD_RETURN_IF_ERROR(LockSnapshot());
  // The intent first: a stop between here and the end of the snapshot is
  // found at the next start (RecoverUnfinishedSnapshot).
  OUTBOXD_RETURN_IF_ERROR(WriteSlotState(ctl_, cdc_.state_table, cdc_.slot, {Lsn(), /*snapshot_done=*/false}));
  health_->SetInLongCall(true);  // creating a slot waits for running transactions to end
  auto exported = stream_.CreateSlotExportingSnapshot(cdc_.slot);
  health_->SetInLongCall(false);
  if (!exported.ok()) return exported.status();
  log->info("ran: CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT (consistent point {})", cdc_.slot,
            exported->consistent_point.ToString());
  OUTBOXD_RETURN_IF_ERROR(
      WriteSlotState(ctl_, cdc_.state_table, cdc_.slot, {exported->consistent_point, /*snapshot_done=*/false}));
  recorded_lsn_ = exported->consistent_point;
  acked_lsn_ = exported->consistent_point;
  // The replication connection stays idle until streaming starts: the
  // snapshot it exported lives until its next command.
  OUTBOXD_RETURN_IF_ERROR(BeginSnapshotTransaction(ctl_, exported->snapshot_name));
  const auto now_us =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  tx_ = TransactionInfo{exported->consistent_point, now_us, 0};
  snapshot_reader_ = SnapshotReader{};
  snapshot_reader_->consistent_point = exported->consistent_point;
  snapshot_ = SnapshotState::kReading;
  Enter(Phase::kSnapshotting);
  return Status::Ok();
}

Status CdcSource::ReadSnapshot() {
  SnapshotReader& r = *snapshot_reader_;
  OUTBOXD_RETURN_IF_ERROR(ProduceStalled());
  // The rest of the batch in hand first, as far as the in-flight bound allows.
  while (r.next_in_batch < r.batch.size()) {
    if (ReadingPaused()) return Status::Ok();
    const TupleData& row = r.batch[r.next_in_batch++];
    const uint64_t id_index = kSnapshotIndexFlag | r.index;
    auto record = mapper_->MapSnapshotRow(*r.relation, row, *tx_, id_index);
    Routed routed{Record{}, &cdc_.dead_letter_topic, "snapshot of table " + captured_[r.table], Status::Ok()};
    if (record.ok()) {
      routed.record = std::move(record).value();
    } else {
      routed.error = record.status();
      routed.record.headers.push_back({"id", DeterministicEventId(tx_->commit_lsn, id_index)});
    }
    OUTBOXD_RETURN_IF_ERROR(Emit(std::move(routed), id_index));
    if (snapshot_ == SnapshotState::kFailed) return snapshot_failure_;
    ++r.index;
    ++r.table_rows;
  }
  // Then one more batch a turn: the runner serves reports and timers between.
  if (!r.cursor) {
    if (r.table == captured_.size()) return EndSnapshot();
    auto rel = DescribeTable(ctl_, captured_[r.table]);
    if (!rel.ok()) return rel.status();
    r.relation = std::move(rel).value();
    auto cursor = SnapshotCursor::Open(ctl_, *r.relation);
    if (!cursor.ok()) return cursor.status();
    r.cursor.emplace(std::move(cursor).value());
    r.table_rows = 0;
  }
  health_->Beat();
  auto rows = r.cursor->Next(kSnapshotBatch);
  if (!rows.ok()) return rows.status();
  r.batch = std::move(rows).value();
  r.next_in_batch = 0;
  if (r.batch.empty()) {
    OUTBOXD_RETURN_IF_ERROR(r.cursor->Close());
    Logger("cdc")->info("snapshot of table \"{}\": {} rows", captured_[r.table], r.table_rows);
    r.cursor.reset();
    r.relation.reset();
    ++r.table;
  }
  return Status::Ok();
}

Status CdcSource::EndSnapshot() {
  const Lsn consistent_point = snapshot_reader_->consistent_point;
  const uint64_t rows = snapshot_reader_->index;
  snapshot_reader_.reset();
  tx_.reset();
  OUTBOXD_RETURN_IF_ERROR(EndSnapshotTransaction(ctl_));
  const auto ticket = checkpoint_.Add({consistent_point, 0, EntryKind::kSnapshotDone});
  checkpoint_.MarkAcked(ticket);
  snapshot_ = SnapshotState::kUnacknowledged;
  Logger("cdc")->info("initial snapshot read: {} rows; streaming from its consistent point {}", rows,
                      consistent_point.ToString());
  return StartStreaming();
}

Status CdcSource::CheckTables() {
  auto columns_of = [&](const std::string& table) -> Result<std::vector<std::string>> {
    auto res = ctl_.Exec(
        "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 "
        "AND NOT a.attisdropped ORDER BY a.attnum",
        {QuoteQualifiedTable(table)});
    if (!res.ok()) return res.status().Prefixed("could not read the columns of table \"" + table + "\"");
    const int rows = PQntuples(res->get());
    std::vector<std::string> cols;
    cols.reserve(static_cast<std::size_t>(rows));
    for (int i = 0; i < rows; ++i) cols.emplace_back(PQgetvalue(res->get(), i, 0));
    if (cols.empty()) return Status::InvalidConfig("table \"" + table + "\" does not exist");
    return cols;
  };
  for (const auto& [name, router] : outbox_routers_) {
    const OutboxTableConfig& c = *outbox_configs_.at(name);
    auto cols = columns_of(name);
    if (!cols.ok()) return cols.status().Prefixed(c.config_location);
    for (const std::string& want : router.RequiredColumns()) {
      if (std::find(cols->begin(), cols->end(), want) == cols->end()) {
        return Status::InvalidConfig(c.config_location + ": outbox table \"" + name + "\" has no column \"" + want +
                                     "\"");
      }
    }
  }
  for (const std::string& t : captured_) {
    auto cols = columns_of(t);
    if (!cols.ok()) return cols.status().Prefixed(cdc_.config_location + ": [cdc] tables");
    auto ident = ctl_.Exec(
        "SELECT c.relreplident::text, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) "
        "FROM pg_class c WHERE c.oid = to_regclass($1)",
        {QuoteQualifiedTable(t)});
    if (ident.ok() && PQntuples(ident->get()) == 1) {
      const std::string_view kind = PQgetvalue(ident->get(), 0, 0);
      const bool has_pk = std::string_view(PQgetvalue(ident->get(), 0, 1)) == "t";
      if (kind == "n" || (kind == "d" && !has_pk)) {
        Logger("cdc")->warn(
            "table \"{}\" has no replica identity (no primary key, REPLICA IDENTITY {}): "
            "PostgreSQL refuses its updates and deletes while it is published, and its "
            "change events have no key",
            t, kind == "n" ? "NOTHING" : "DEFAULT");
      }
    }
  }
  return Status::Ok();
}

Status CdcSource::Connect(bool first) {
  auto conn = PgConn::Connect(config_.postgres.conninfo, config_.postgres.password, "outboxd-cdc-control");
  if (!conn.ok()) return conn.status();
  ctl_ = std::move(conn).value();
  OUTBOXD_RETURN_IF_ERROR(CheckSlot(first));
  if (first) OUTBOXD_RETURN_IF_ERROR(CheckTables());

  OUTBOXD_RETURN_IF_ERROR(stream_.Connect());
  auto identity = stream_.IdentifySystem();
  if (!identity.ok()) return identity.status();
  if (config_.kafka.delivery == Delivery::kExactlyOnce && txn_ == nullptr) {
    // The stream's id needs the server's identity: nothing is produced before.
    txn_ = std::make_unique<KafkaTransactions>(
        config_.kafka, KafkaTransactions::CdcStream(identity->system_id, identity->dbname, cdc_.slot), *metrics_);
  }
  if (!mapper_) {
    database_ = identity->dbname;
    ChangeMapperOptions options;
    options.database = database_;
    options.topic_prefix = cdc_.topic_prefix;
    options.format = cdc_.format;
    options.cloudevents_source = cdc_.cloudevents_source;
    options.types = [this](uint32_t oid) { return decoder_.FindType(oid); };
    mapper_.emplace(std::move(options));
  }
  if (snapshot_ == SnapshotState::kPending) {
    Status st = BeginSnapshot();
    if (!st.ok()) {
      tx_.reset();
      return st.code() == StatusCode::kInvalidConfig ? st : st.Prefixed("initial snapshot");
    }
    return Status::Ok();
  }
  if (gate_.rewinding()) {
    // Streaming starts again once the old generation is reported (Pump()).
    Enter(Phase::kRewinding);
    return Status::Ok();
  }
  return StartStreaming();
}

Status CdcSource::StartStreaming() {
  auto log = Logger("cdc");
  decoder_ = PgoutputDecoder();
  roles_.clear();
  tx_.reset();
  StartOptions start;
  start.slot = cdc_.slot;
  start.start_lsn = acked_lsn_;
  start.publication_names = {cdc_.publication};
  Status st = stream_.Start(start);
  if (!st.ok()) {
    if (stream_.last_failure() == StreamFailure::kSlotHeldByAnotherProcess) {
      if (phase_ != Phase::kStandby) log->warn("{}; waiting for it to be released", st.message());
      stream_.Close();
      standby_retry_at_ = Clock::now() + kStandbyRetry;
      Enter(Phase::kStandby);
      return Status::Ok();
    }
    if (stream_.last_failure() == StreamFailure::kSlotMissing) {
      return CheckSlotAgainstState(cdc_.slot, std::nullopt, std::optional<Lsn>(recorded_lsn_), cdc_.state_table);
    }
    return st;
  }
  if (txn_ != nullptr) {
    if (Status init = InitialiseTransactions(); !init.ok()) {
      stream_.Close();
      return init;
    }
  }
  log->info("streaming replication slot \"{}\" (publication \"{}\") from {}", cdc_.slot, cdc_.publication,
            acked_lsn_.ToString());
  next_status_ = Clock::now();
  reported_lsn_ = Lsn();
  streamed_once_ = true;
  if (lost_connection_) sources_[0].metrics->Reconnected();
  lost_connection_ = false;
  Enter(Phase::kStreaming);
  return Status::Ok();
}

Status CdcSource::RestartStream(bool check_slot) {
  // A standby checks the slot against the state table again: the holder may
  // have moved both on.
  if (check_slot) OUTBOXD_RETURN_IF_ERROR(CheckSlot(false));
  if (!stream_.connected()) {
    OUTBOXD_RETURN_IF_ERROR(stream_.Connect());
    auto identity = stream_.IdentifySystem();
    if (!identity.ok()) return identity.status();
  }
  return StartStreaming();
}

void CdcSource::Disconnect() {
  if (streamed_once_) lost_connection_ = true;
  if (phase_ == Phase::kStreaming && !gate_.rewinding()) {
    restart_cause_ = ResendCause::kReconnect;
    if (checkpoint_.pending() > 0 || !failures_.empty() || (txn_ != nullptr && txn_->open())) {
      // Stream again only once what is in flight is reported (and failures
      // held for a failed producer are handled, and an open Kafka
      // transaction is aborted): what Kafka acknowledged meanwhile is then
      // released, not read and sent again.
      gate_.Start(RewindGate::Pause::kNone, Clock::now());
    } else {
      // The stream restarts at once, at the last released commit: what is
      // acknowledged up to a commit is released first, the rest of the open
      // transaction is read and sent again.
      ReleaseAcknowledged();
      CountResent();
    }
  }
  // The stream resumes at the last committed position: an open Kafka
  // transaction is produced again.
  if (txn_ != nullptr) txn_->StartAbort();
  stream_.Close();
  ctl_.reset();
  tx_.reset();
  // The stream resumes at the last acknowledged commit, so records of the
  // interrupted transaction still waiting for queue space are produced again.
  stalled_.clear();
  // An interrupted snapshot is found unfinished in the state table and
  // recovered at the next Connect() (RecoverUnfinishedSnapshot).
  if (phase_ == Phase::kSnapshotting) snapshot_reader_.reset();
  Enter(Phase::kDisconnected);
}

// --- Deliveries -----------------------------------------------------------------

void CdcSource::OnDelivery(const DeliveryReport& report) {
  gate_.Reported();
  const Position* pos = checkpoint_.PositionOf(report.token);
  if (pos == nullptr) return;  // of a generation forgotten by a rewind
  MetricsSource& source = sources_[pos->source];
  if (source.in_flight > 0) --source.in_flight;
  if (report.outcome == DeliveryOutcome::kPersisted) {
    checkpoint_.MarkAcked(report.token);
    gate_.Delivered();
    if (pos->kind == EntryKind::kPosition) return;
    if (pos->kind == EntryKind::kDeadLetter) {
      ++dead_lettered_;
      source.metrics->DeadLettered();
    } else {
      ++published_;
      if (pos->published != nullptr) pos->published->Increment();
      if (pos->commit_time_us > 0) {
        const int64_t now_us =
            std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
                .count();
        source.metrics->ObserveCommitToAck(static_cast<double>(now_us - pos->commit_time_us) / 1e6);
      }
      source.metrics->Delivered();
    }
    return;
  }
  source.metrics->PublishError(report.error_name);
  failures_.push_back({*pos, report});
  checkpoint_.MarkFailed(report.token);
}

Status CdcSource::HandleFailures() {
  if (failures_.empty()) return Status::Ok();
  std::vector<Failure> failures;
  failures.swap(failures_);
  std::string why;
  for (const Failure& f : failures) {
    const std::string event =
        "event " + std::to_string(f.pos.index) + " of the transaction committed at " + f.pos.lsn.ToString();
    // A position record refused: its transaction is produced again (the
    // topic is outboxd's own; a refusal for good shows in the log each time).
    const FailureAction action =
        f.pos.kind == EntryKind::kPosition
            ? FailureAction::kRewind
            : ActionFor(f.report.outcome, f.pos.kind == EntryKind::kDeadLetter, /*has_dead_letter_topic=*/true);
    switch (action) {
      case FailureAction::kHalt:  // the dead-letter record itself was refused
        return Status::Permanent(event + " could not be written to the dead-letter topic either: " +
                                 f.report.error_name + ": " + f.report.error_message);
      case FailureAction::kDeadLetter:
        // Produced again by the replay below: to the dead-letter topic, or it
        // stops the stream if its source has none (Emit()).
        poisoned_[{f.pos.lsn.value(), f.pos.index}] = {f.report.error_name, f.report.error_message};
        if (why.empty()) why = event + " was refused by Kafka: " + f.report.error_name;
        break;
      case FailureAction::kRewind:
      case FailureAction::kRecreateProducer:
        if (why.empty()) {
          why = event + " was not delivered: " + f.report.error_name + ": " + f.report.error_message;
        }
        break;
      default:
        break;
    }
  }
  // Already rewinding: the replay produces these again anyway (e.g. records
  // an abort purged).
  if (!why.empty() && !gate_.rewinding()) Rewind(why, ResendCause::kRewind);
  return Status::Ok();
}

void CdcSource::Rewind(const std::string& why, ResendCause cause) {
  restart_cause_ = cause;
  if (!snapshot_done() && snapshot_ != SnapshotState::kFailed && snapshot_ != SnapshotState::kPending) {
    // The snapshot's rows cannot be replayed from the slot: stop, and take
    // the snapshot again at the next start (RecoverUnfinishedSnapshot).
    snapshot_ = SnapshotState::kFailed;
    snapshot_failure_ =
        Status::Permanent("the initial snapshot of replication slot \"" + cdc_.slot +
                          "\" could not be delivered: " + why + "; it is taken again when outboxd starts next");
  }
  if (!gate_.rewinding()) {
    Logger("cdc")->warn("{}; streaming again from {} once the deliveries in flight are reported", why,
                        acked_lsn_.ToString());
  }
  gate_.Start(RewindGate::Pause::kBackOff, Clock::now());
  if (txn_ != nullptr) txn_->StartAbort();
  stream_.Close();
  tx_.reset();
  stalled_.clear();
  if (phase_ != Phase::kDisconnected) Enter(Phase::kRewinding);
}

void CdcSource::CountResent() {
  for (uint32_t i = 0; i < sources_.size(); ++i) {
    MetricsSource& source = sources_[i];
    source.metrics->Resent(restart_cause_, source.released_in_open_txn + checkpoint_.CountAcked([i](const Position& p) {
      return p.source == i && (p.kind == EntryKind::kEvent || p.kind == EntryKind::kDeadLetter);
    }));
    source.released_in_open_txn = 0;
  }
}

Status CdcSource::OnProducerLost() {
  gate_.ProducerLost();  // its queue went with it
  failures_.clear();
  Status lost = txn_ != nullptr ? txn_->ProducerLost(Clock::now()) : Status::Ok();  // what was open went with it
  Rewind("the Kafka producer failed and was recreated", ResendCause::kProducer);
  return lost;
}

void CdcSource::ReleaseAcknowledged() {
  for (const Position& p : checkpoint_.TakeReleasable()) {
    if (p.kind == EntryKind::kEvent || p.kind == EntryKind::kDeadLetter) {
      ++released_events_;
      ++sources_[p.source].released_in_open_txn;
    }
    if (p.kind == EntryKind::kCommit) {
      for (MetricsSource& source : sources_) source.released_in_open_txn = 0;
      acked_lsn_ = std::max(acked_lsn_, p.lsn);
      acked_commit_lsn_ = std::max(acked_commit_lsn_, p.lsn);
    }
    if (p.kind == EntryKind::kSnapshotDone) {
      // The snapshot's rows are never read again once it is acknowledged.
      for (MetricsSource& source : sources_) source.released_in_open_txn = 0;
    }
    if (p.kind == EntryKind::kSnapshotDone && snapshot_ == SnapshotState::kUnacknowledged) {
      snapshot_ = SnapshotState::kUnrecorded;
      Logger("cdc")->info("initial snapshot acknowledged by Kafka");
    }
  }
}

Status CdcSource::ReportPosition(Report when) {
  if (!stream_.streaming()) return Status::Ok();
  const Clock::time_point now = Clock::now();
  // Acknowledged transactions are confirmed close behind Kafka's acks (what a
  // crash replays); the idle WAL end that keepalives move on only with the
  // status_interval keepalive — else every report's own state-table write
  // would move it again.
  const bool confirm_due = acked_commit_lsn_ > reported_lsn_ &&
                           (now >= next_confirm_ || released_events_ >= static_cast<uint64_t>(cdc_.confirm_events));
  if (when == Report::kWhenDue && !confirm_due && now < next_status_) return Status::Ok();
  const Lsn flushed = acked_lsn_;
  if (flushed > recorded_lsn_ || snapshot_ == SnapshotState::kUnrecorded) {
    // Recorded first: the slot must never be past the state row (see
    // CheckSlotAgainstState).
    OUTBOXD_RETURN_IF_ERROR(WriteSlotState(ctl_, cdc_.state_table, cdc_.slot, {flushed, snapshot_done()}));
    recorded_lsn_ = flushed;
    if (snapshot_ == SnapshotState::kUnrecorded) snapshot_ = SnapshotState::kDone;
  }
  OUTBOXD_RETURN_IF_ERROR(
      stream_.SendStatus(std::max(stream_.received_lsn(), flushed), flushed, flushed, /*reply_requested=*/false));
  reported_lsn_ = flushed;
  released_events_ = 0;
  next_confirm_ = now + std::min(cdc_.confirm_interval, cdc_.status_interval);
  next_status_ = now + (ReadingPaused() ? std::min(cdc_.status_interval, kPausedStatusInterval) : cdc_.status_interval);
  return Status::Ok();
}

Status CdcSource::Settle(Clock::time_point, FailedDeliveries failed) {
  if (failed == FailedDeliveries::kAct) OUTBOXD_RETURN_IF_ERROR(HandleFailures());
  if (snapshot_ == SnapshotState::kFailed) return snapshot_failure_;
  if (failed == FailedDeliveries::kAct) {
    OUTBOXD_RETURN_IF_ERROR(CommitIfDue(Clock::now()));
    OUTBOXD_RETURN_IF_ERROR(AdvanceTransaction());
  }
  ReleaseAcknowledged();
  if (phase_ != Phase::kStreaming) return Status::Ok();
  OUTBOXD_RETURN_IF_ERROR(ReportPosition(Report::kWhenDue));
  if (stream_.flush_pending()) OUTBOXD_RETURN_IF_ERROR(stream_.FlushPending());
  return Status::Ok();
}

// --- Reading the stream -----------------------------------------------------------

Status CdcSource::Pump(Clock::time_point now) {
  switch (phase_) {
    case Phase::kDisconnected:
      return Status::Ok();
    case Phase::kStandby:
      if (now < standby_retry_at_) return Status::Ok();
      return RestartStream(/*check_slot=*/true);
    case Phase::kSnapshotting:
      return ReadSnapshot();
    case Phase::kRewinding:
      if (TransactionBusy()) return Status::Ok();  // the open Kafka transaction is aborted first
      if (!gate_.TakeFinished(now)) return Status::Ok();
      // Every report of the old generation is in: what was acknowledged is
      // released, the rest is read again from the slot.
      ReleaseAcknowledged();
      CountResent();
      checkpoint_.Reset();
      ForgetInFlight();
      return RestartStream(/*check_slot=*/false);
    case Phase::kStreaming:
      OUTBOXD_RETURN_IF_ERROR(ReadStream());
      if (phase_ != Phase::kStreaming) return Status::Ok();  // it rewound
      OUTBOXD_RETURN_IF_ERROR(CommitIfDue(now));
      OUTBOXD_RETURN_IF_ERROR(AdvanceTransaction());
      OUTBOXD_RETURN_IF_ERROR(ReportPosition(Report::kWhenDue));
      if (stream_.flush_pending()) OUTBOXD_RETURN_IF_ERROR(stream_.FlushPending());
      return Status::Ok();
  }
  return Status::Ok();
}

Status CdcSource::ProduceStalled() {
  while (!stalled_.empty()) {
    auto [record, pos] = std::move(stalled_.front());
    stalled_.pop_front();
    const std::size_t before = stalled_.size();
    OUTBOXD_RETURN_IF_ERROR(Produce(std::move(record), pos));
    if (stalled_.size() > before) {
      // Still no room: it went to the back; put it first again.
      std::rotate(stalled_.begin(), stalled_.end() - 1, stalled_.end());
      return Status::Ok();
    }
  }
  return Status::Ok();
}

bool CdcSource::ReadingPaused() const {
  return !stalled_.empty() || checkpoint_.pending() >= config_.kafka.max_in_flight || TransactionBusy();
}

bool CdcSource::TransactionBusy() const { return txn_ != nullptr && txn_->ending(); }

// --- Kafka transactions (exactly-once) ---------------------------------------------

Status CdcSource::InitialiseTransactions() {
  health_->SetInLongCall(true);
  auto position = txn_->Initialise(*publisher_, KafkaTransactions::kInitialiseTimeout);
  health_->SetInLongCall(false);
  if (!position.ok()) return position.status();
  txn_commits_.clear();
  skipped_ = 0;
  if (!position->has_value()) {
    Logger("cdc")->info("Kafka transactions of \"{}\" initialised; no position stored in \"{}\" yet", txn_->stream(),
                        config_.kafka.position_topic);
    return Status::Ok();
  }
  auto lsn = Lsn::Parse(**position);
  if (!lsn.ok()) {
    return Status::Permanent("the position of \"" + txn_->stream() + "\" in topic \"" + config_.kafka.position_topic +
                             "\" is not an LSN: \"" + **position + "\"");
  }
  skip_through_ = std::max(skip_through_, *lsn);
  Logger("cdc")->info(
      "Kafka transactions of \"{}\" initialised; Kafka has every transaction committed up to {}, the slot is "
      "confirmed to {}",
      txn_->stream(), skip_through_.ToString(), acked_lsn_.ToString());
  return Status::Ok();
}

void CdcSource::AddCommitMarker(Lsn end_lsn, Lsn commit_lsn) {
  const auto ticket = checkpoint_.Add({end_lsn, 0, EntryKind::kCommit});
  if (txn_ != nullptr && txn_->state() == KafkaTransactions::State::kOpen) {
    txn_commits_.push_back(ticket);
    txn_last_commit_ = commit_lsn;
    return;
  }
  checkpoint_.MarkAcked(ticket);
}

Status CdcSource::CommitIfDue(Clock::time_point now) {
  if (txn_ == nullptr || tx_ || !stalled_.empty() || gate_.rewinding() || !txn_->CommitDue(now)) {
    return Status::Ok();
  }
  Position pos{txn_last_commit_, 0, EntryKind::kPosition};
  // The commit starts once librdkafka has the record (Produce()): it may wait
  // in stalled_ for queue space first.
  return Produce(txn_->PositionRecord(txn_last_commit_.ToString()), pos);
}

Status CdcSource::AdvanceTransaction() {
  if (txn_ == nullptr || !stalled_.empty()) return Status::Ok();
  auto step = txn_->Advance(*publisher_);
  if (!step.ok()) return step.status();  // kFatal: the runner recreates the producer
  switch (*step) {
    case KafkaTransactions::Step::kCommitted:
      for (const auto ticket : txn_commits_) checkpoint_.MarkAcked(ticket);
      txn_commits_.clear();
      break;
    case KafkaTransactions::Step::kAborted:
      txn_commits_.clear();
      if (!gate_.rewinding()) Rewind("the Kafka transaction was aborted", ResendCause::kRewind);
      break;
    case KafkaTransactions::Step::kNothing:
    case KafkaTransactions::Step::kPending:
      break;
  }
  return Status::Ok();
}

Status CdcSource::ReadStream() {
  for (std::size_t n = 0; n < kFramesPerTurn && stream_.streaming(); ++n) {
    OUTBOXD_RETURN_IF_ERROR(ProduceStalled());
    if (!stream_.streaming()) break;  // it rewound
    if (ReadingPaused()) break;
    auto msg = stream_.Read();
    if (!msg.ok()) return msg.status();
    if (std::holds_alternative<WouldBlock>(*msg)) break;
    if (const auto* k = std::get_if<Keepalive>(&*msg)) {
      if (checkpoint_.empty() && !tx_ && stalled_.empty()) {
        // Everything the server sent before this keepalive is acknowledged:
        // nothing up to its WAL end needs the slot any more.
        acked_lsn_ = std::max(acked_lsn_, k->wal_end);
      }
      if (k->reply_requested) OUTBOXD_RETURN_IF_ERROR(ReportPosition(Report::kNow));
      continue;
    }
    const auto& frame = std::get<XLogData>(*msg);
    auto decoded = decoder_.Decode(frame.payload);
    if (!decoded.ok()) {
      // Reading it again would fail the same way: stop.
      return Status::Permanent(decoded.status().message())
          .Prefixed("replication slot \"" + cdc_.slot + "\": message at " + frame.wal_start.ToString() +
                    " cannot be decoded; nothing after " + acked_lsn_.ToString() + " is confirmed");
    }
    OUTBOXD_RETURN_IF_ERROR(HandleMessage(*decoded, frame));
  }
  return Status::Ok();
}

const CdcSource::RelationRole& CdcSource::RoleOf(const RelationMsg& rel) {
  auto it = roles_.find(rel.oid);
  if (it != roles_.end()) return it->second;
  RelationRole role;
  role.name = QualifiedName(rel);
  role.captured = std::find(captured_.begin(), captured_.end(), role.name) != captured_.end();
  if (auto o = outbox_configs_.find(role.name); o != outbox_configs_.end()) role.outbox = o->second;
  if (auto o = outbox_sources_.find(role.name); o != outbox_sources_.end()) role.source = o->second;
  return roles_[rel.oid] = std::move(role);
}

Status CdcSource::HandleMessage(const PgoutputMessage& msg, const XLogData& frame) {
  auto not_in_tx = [&](const char* what) {
    return Status::Permanent(std::string("replication slot \"") + cdc_.slot + "\": " + what + " at " +
                             frame.wal_start.ToString() + " outside a transaction");
  };
  auto change = [&](const RelationMsg& rel, auto map) -> Status {
    if (!tx_) return not_in_tx("row change");
    const uint64_t index = tx_index_++;
    if (!RoleOf(rel).captured) return Status::Ok();
    Result<Record> record = map(index);
    Routed routed{Record{}, &cdc_.dead_letter_topic, "table " + QualifiedName(rel), Status::Ok()};
    if (record.ok()) {
      routed.record = std::move(record).value();
    } else {
      routed.error = record.status();
      routed.record.headers.push_back({"id", DeterministicEventId(tx_->commit_lsn, index)});
    }
    return Emit(std::move(routed), index);
  };

  return std::visit(
      [&](const auto& m) -> Status {
        using T = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<T, BeginMsg>) {
          tx_ = TransactionInfo::From(m);
          tx_index_ = 0;
          tx_events_ = 0;
          if (txn_ != nullptr && tx_->commit_lsn <= skip_through_ && ++skipped_ == 1) {
            Logger("cdc")->info("skipping the transactions committed up to {}: Kafka has them",
                                skip_through_.ToString());
          }
          return Status::Ok();
        } else if constexpr (std::is_same_v<T, CommitMsg>) {
          if (!tx_) return not_in_tx("commit");
          if (tx_events_ > 0) sources_[0].metrics->ObserveBatch(tx_events_);
          AddCommitMarker(m.end_lsn, tx_->commit_lsn);
          tx_.reset();
          return CommitIfDue(Clock::now());
        } else if constexpr (std::is_same_v<T, InsertMsg>) {
          if (!tx_) return not_in_tx("insert");
          if (RoleOf(*m.relation).outbox != nullptr) {
            const uint64_t index = tx_index_++;
            return Emit(RouteInsert(m, index), index);
          }
          return change(*m.relation, [&](uint64_t i) { return mapper_->MapInsert(m, *tx_, i); });
        } else if constexpr (std::is_same_v<T, UpdateMsg>) {
          if (RoleOf(*m.relation).outbox != nullptr) {  // the outbox pattern: only inserts are events
            if (!tx_) return not_in_tx("update");
            ++tx_index_;
            return Status::Ok();
          }
          return change(*m.relation, [&](uint64_t i) { return mapper_->MapUpdate(m, *tx_, i); });
        } else if constexpr (std::is_same_v<T, DeleteMsg>) {
          if (RoleOf(*m.relation).outbox != nullptr) {
            if (!tx_) return not_in_tx("delete");
            ++tx_index_;
            return Status::Ok();
          }
          return change(*m.relation, [&](uint64_t i) { return mapper_->MapDelete(m, *tx_, i); });
        } else if constexpr (std::is_same_v<T, TruncateMsg>) {
          for (const RelationRef& rel : m.relations) {
            TruncateMsg one{m.options, {rel}};
            OUTBOXD_RETURN_IF_ERROR(change(*rel, [&](uint64_t i) -> Result<Record> {
              auto records = mapper_->MapTruncate(one, *tx_, i);
              if (!records.ok()) return records.status();
              return std::move(records->front());
            }));
          }
          return Status::Ok();
        } else if constexpr (std::is_same_v<T, LogicalMsg>) {
          if (m.transactional()) {
            if (!tx_) return not_in_tx("transactional message");
            const uint64_t index = tx_index_++;
            if (!message_router_) return Status::Ok();
            auto routed = RouteMessage(m, *tx_, index);
            return routed ? Emit(std::move(*routed), index) : Status::Ok();
          }
          if (!message_router_) return Status::Ok();
          // Not part of a transaction: its own LSN stands for the commit.
          const TransactionInfo alone{m.lsn, frame.server_time_us, 0};
          auto routed = RouteMessage(m, alone, kNonTransactionalIndexFlag);
          if (!routed) return Status::Ok();
          Logger("cdc")->debug("non-transactional message at {} (published even if its transaction rolled back)",
                               m.lsn.ToString());
          const std::optional<TransactionInfo> outer = tx_;
          tx_ = alone;
          Status st = Emit(std::move(*routed), kNonTransactionalIndexFlag);
          tx_ = outer;
          // Refused and rewinding: no marker, or the replay would start past it.
          if (st.ok() && !tx_ && !gate_.rewinding()) {
            AddCommitMarker(m.lsn, m.lsn);
            return CommitIfDue(Clock::now());
          }
          return st;
        } else if constexpr (std::is_same_v<T, RelationMsg>) {
          roles_.erase(m.oid);  // renamed or redefined: looked up again
          return Status::Ok();
        } else {
          // Type messages fill the decoder's cache; Origin needs nothing.
          return Status::Ok();
        }
      },
      msg);
}

CdcSource::Routed CdcSource::RouteInsert(const InsertMsg& msg, uint64_t index) {
  const RelationRole& role = RoleOf(*msg.relation);
  const OutboxTableConfig& config = *role.outbox;
  const std::string& name = role.name;
  Routed routed{Record{}, &config.dead_letter_topic, "outbox table " + name, Status::Ok(), role.source};
  auto row = OutboxInsertToRow(msg);
  if (!row.ok()) {
    routed.error = row.status();
    routed.record.headers.push_back({"id", DeterministicEventId(tx_->commit_lsn, index)});
    return routed;
  }
  auto record = outbox_routers_.at(name).Route(*row, tx_->commit_time_us / 1000);
  if (!record.ok()) {
    routed.error = record.status().Prefixed("outbox table \"" + name + "\"");
    // What the dead-letter record can still carry.
    if (const auto* id = row->Find(config.id); id && id->has_value()) routed.record.headers.push_back({"id", *id});
    if (config.key) {
      if (const auto* key = row->Find(*config.key)) routed.record.key = *key;
    }
    if (const auto* payload = row->Find(config.payload)) routed.record.value = *payload;
    return routed;
  }
  routed.record = std::move(record).value();
  return routed;
}

std::optional<CdcSource::Routed> CdcSource::RouteMessage(const LogicalMsg& msg, const TransactionInfo& tx,
                                                         uint64_t index) {
  auto parsed = ParseOutboxMessage(msg, *cdc_.message_prefix);
  Routed routed{Record{}, &cdc_.dead_letter_topic, "message prefix " + msg.prefix, Status::Ok()};
  if (parsed.ok() && !parsed->has_value()) return std::nullopt;  // another prefix: not ours
  if (!parsed.ok()) {
    routed.error = parsed.status();
    routed.record.headers.push_back({"id", DeterministicEventId(tx.commit_lsn, index)});
    routed.record.value = msg.content;
    return routed;
  }
  OutboxMessage& message = **parsed;
  EnsureMessageId(message, tx.commit_lsn, index);
  auto record = message_router_->Route(message.row, tx.commit_time_us / 1000);
  if (!record.ok()) {
    routed.error = record.status().Prefixed("logical decoding message at " + msg.lsn.ToString());
    routed.record.headers.push_back({"id", **message.row.Find("id")});
    routed.record.value = msg.content;
    return routed;
  }
  AppendMessageHeaders(message, *record);
  routed.record = std::move(record).value();
  return routed;
}

Status CdcSource::Emit(Routed routed, uint64_t index) {
  if (gate_.rewinding()) return Status::Ok();                                    // produced again by the replay
  if (txn_ != nullptr && tx_->commit_lsn <= skip_through_) return Status::Ok();  // Kafka has it
  ++tx_events_;
  Position pos{tx_->commit_lsn, index, EntryKind::kEvent};
  pos.source = routed.metrics_source;
  pos.commit_time_us = phase_ == Phase::kSnapshotting ? 0 : tx_->commit_time_us;
  if (!routed.record.timestamp_ms) routed.record.timestamp_ms = tx_->commit_time_us / 1000;
  std::optional<std::pair<std::string, std::string>> refused;  // error name, message
  if (!routed.error.ok()) {
    sources_[pos.source].metrics->PublishError(kUnroutable);
    refused.emplace(kUnroutable, routed.error.message());
  } else if (auto it = poisoned_.find({pos.lsn.value(), pos.index}); it != poisoned_.end()) {
    refused.emplace(it->second.error_name, it->second.error_message);
  }
  if (!refused) return Produce(std::move(routed.record), pos);

  const std::string event = "event " + std::to_string(index) + " (" + routed.source +
                            ") of the transaction committed at " + pos.lsn.ToString();
  if (!*routed.dead_letter_topic) {
    return Status::Permanent(event + " can never be delivered: " + refused->first + ": " + refused->second +
                             "; configure a dead_letter_topic to set such events aside");
  }
  Logger("cdc")->warn("{} goes to dead-letter topic \"{}\": {}: {}", event, **routed.dead_letter_topic, refused->first,
                      refused->second);
  Position dead_letter = pos;
  dead_letter.kind = EntryKind::kDeadLetter;
  return Produce(DeadLetter(routed, pos, refused->first, refused->second), dead_letter);
}

Record CdcSource::DeadLetter(const Routed& routed, const Position& pos, const std::string& error_name,
                             const std::string& error_message) const {
  DeadLetterOrigin origin;
  origin.key = routed.record.key;
  origin.value = routed.record.value;
  origin.timestamp_ms = routed.record.timestamp_ms;
  for (const Header& h : routed.record.headers) {
    if (h.name == "id") origin.id = h.value;
  }
  if (!routed.record.topic.empty()) origin.original_topic = routed.record.topic;
  origin.where = {{"outboxd.source", routed.source},
                  {"outboxd.lsn", pos.lsn.ToString()},
                  {"outboxd.index", std::to_string(pos.index)}};
  return DeadLetterRecord(**routed.dead_letter_topic, origin, error_name, error_message);
}

Status CdcSource::Produce(Record record, Position pos) {
  if (gate_.rewinding()) return Status::Ok();
  // Records waiting for queue space go first, in order.
  if (!stalled_.empty()) {
    stalled_.emplace_back(std::move(record), pos);
    return Status::Ok();
  }
  if (txn_ != nullptr) OUTBOXD_RETURN_IF_ERROR(txn_->Begin(*publisher_, Clock::now()));
  Status st = publisher_->Produce(record, checkpoint_.next_ticket());
  MetricsSource& source = sources_[pos.source];
  if (!st.ok() && publisher_->last_produce_needs_abort()) {
    Rewind("the Kafka transaction cannot take records: " + st.message(), ResendCause::kRewind);
    return Status::Ok();
  }
  FailureAction action = ActionForProduce(st, pos.kind == EntryKind::kDeadLetter, /*has_dead_letter_topic=*/true);
  if (pos.kind == EntryKind::kPosition && (action == FailureAction::kDeadLetter || action == FailureAction::kHalt)) {
    return Status::Permanent(st.message())
        .Prefixed("the position record was refused by topic \"" + record.topic + "\"");
  }
  switch (action) {
    case FailureAction::kNone:
      if (pos.kind == EntryKind::kPosition) {
        txn_->StartCommit();
      } else if (txn_ != nullptr) {
        txn_->Added(record.payload_bytes());
      }
      if (pos.kind == EntryKind::kEvent) pos.published = &source.metrics->Published(record.topic);
      ++source.in_flight;
      gate_.Produced();
      checkpoint_.Add(pos);
      return st;
    case FailureAction::kWaitForRoom:  // librdkafka's queue is full: again after some reports
      stalled_.emplace_back(std::move(record), pos);
      return Status::Ok();
    case FailureAction::kDeadLetter:
      // Refused before it left: the replay of the rewind sets it aside.
      source.metrics->PublishError(publisher_->last_produce_error());
      poisoned_[{pos.lsn.value(), pos.index}] = {publisher_->last_produce_error(), st.message()};
      Rewind("event " + std::to_string(pos.index) + " of the transaction committed at " + pos.lsn.ToString() +
                 " was refused: " + st.message(),
             ResendCause::kRewind);
      return Status::Ok();
    case FailureAction::kHalt:
      source.metrics->PublishError(publisher_->last_produce_error());
      return Status::Permanent(st.message()).Prefixed("could not write to the dead-letter topic");
    default:
      return st;  // kFatal: the runner recreates the producer
  }
}

// --- Waiting, health, sampling, stopping ----------------------------------------------

void CdcSource::ForgetInFlight() {
  for (MetricsSource& s : sources_) s.in_flight = 0;
}

Status CdcSource::Sample() {
  if (!ctl_.healthy()) return Status::Ok();
  auto r = ctl_.Exec(
      "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, (pg_current_wal_lsn() - restart_lsn)::bigint, "
      "(confirmed_flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
      {cdc_.slot});
  if (!r.ok()) return r.status().Prefixed("could not read the lag of replication slot \"" + cdc_.slot + "\"");
  if (PQntuples(r->get()) != 1) return Status::Ok();  // no slot (yet): nothing to show
  auto set = [&](prometheus::Gauge& g, int column) {
    if (!PQgetisnull(r->get(), 0, column)) g.Set(std::strtod(PQgetvalue(r->get(), 0, column), nullptr));
  };
  set(slot_metrics_->lag_bytes, 0);
  set(slot_metrics_->wal_retained_bytes, 1);
  set(slot_metrics_->confirmed_lsn, 2);
  return Status::Ok();
}

void CdcSource::WaitFds(std::vector<pollfd>& fds, bool stopping) const {
  if (phase_ != Phase::kStreaming) return;
  short events = 0;
  if (!ReadingPaused() && !stopping) events |= POLLIN;
  if (stream_.flush_pending()) events |= POLLOUT;
  fds.push_back({stream_.socket(), events, 0});
}

CdcSource::Clock::time_point CdcSource::NextWakeup(Clock::time_point now) const {
  if (!failures_.empty()) return now;
  Clock::time_point next = now + std::chrono::seconds(1);
  switch (phase_) {
    case Phase::kDisconnected:
      break;
    case Phase::kStandby:
      next = std::min(next, standby_retry_at_);
      break;
    case Phase::kSnapshotting:
      if (!ReadingPaused()) return now;
      break;
    case Phase::kRewinding:
      if (gate_.outstanding() == 0) next = std::min(next, gate_.paused_until());
      break;
    case Phase::kStreaming:
      next = std::min(next, next_status_);
      if (acked_commit_lsn_ > reported_lsn_) next = std::min(next, next_confirm_);
      if (txn_ != nullptr) {
        if (auto due = txn_->CommitDueAt()) next = std::min(next, *due);
      }
      break;
  }
  if (TransactionBusy()) next = std::min(next, now + milliseconds(5));
  if (!stalled_.empty()) next = std::min(next, now + milliseconds(10));
  return next;
}

Source::Health CdcSource::CheckHealth() {
  for (const MetricsSource& s : sources_) s.metrics->SetInFlight(s.in_flight);
  switch (phase_) {
    case Phase::kStandby:
    case Phase::kSnapshotting:
    case Phase::kStreaming:
    case Phase::kRewinding:
      return {true, {}};
    case Phase::kDisconnected:
      break;
  }
  return {false, streamed_once_ ? "not streaming replication slot \"" + cdc_.slot + "\" (reconnecting)"
                                : "starting: replication slot \"" + cdc_.slot + "\" not streamed yet"};
}

void CdcSource::Finish() {
  auto log = Logger("cdc");
  if (txn_ != nullptr && txn_->open()) {
    // Aborted, it is produced again on the next start.
    const Result<KafkaTransactions::Step> step = txn_->EndAtShutdown(*publisher_, std::chrono::seconds(2));
    if (!step.ok()) {
      log->warn("could not end the open Kafka transaction: {}", step.status().message());
    } else if (*step == KafkaTransactions::Step::kCommitted) {
      // Its commit had begun (its position record was out): confirmed below.
      for (const auto ticket : txn_commits_) checkpoint_.MarkAcked(ticket);
      txn_commits_.clear();
    }
  }
  ReleaseAcknowledged();
  if (phase_ == Phase::kStreaming) {
    Status st = ReportPosition(Report::kNow);
    // Give the final status a moment to leave; it is sent again on the next start anyway.
    for (int i = 0; i < 100 && st.ok() && stream_.flush_pending(); ++i) {
      pollfd out{stream_.socket(), POLLOUT, 0};
      ::poll(&out, 1, 10);
      st = stream_.FlushPending();
    }
    if (!st.ok()) log->warn("could not report the final position: {}", st.message());
  }
  if (checkpoint_.pending() > 0) {
    log->warn(
        "{} events were not acknowledged before shutdown; the slot was confirmed up to {} and they are "
        "published again on the next start",
        checkpoint_.pending(), acked_lsn_.ToString());
  }
  log->info("slot \"{}\": {} events published, {} dead-lettered; confirmed up to {}", cdc_.slot, published_,
            dead_lettered_, acked_lsn_.ToString());
  stream_.Close();
}

}  // namespace outboxd
