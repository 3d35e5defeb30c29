#include "pipeline/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <sstream>

namespace outboxd {

namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

const prometheus::Histogram::BucketBoundaries kLatencyBuckets = {.001, .0025, .005, .01, .025, .05, .1, .25,
                                                                 .5,   1,     2.5,  5,   10,   30,  60};
const prometheus::Histogram::BucketBoundaries kBatchBuckets = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 10000};

double UnixNow() { return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

}  // namespace

std::string_view ResendCauseName(ResendCause cause) {
  switch (cause) {
    case ResendCause::kRewind:
      return "rewind";
    case ResendCause::kProducer:
      return "producer";
    case ResendCause::kReconnect:
      return "reconnect";
  }
  return "unknown";
}

std::string TableSource(std::string_view table) { return "table:" + std::string(table); }
std::string SlotSource(std::string_view slot) { return "slot:" + std::string(slot); }

// --- SourceMetrics --------------------------------------------------------------

SourceMetrics::SourceMetrics(Metrics& m, std::string source)
    : metrics_(m),
      source_(std::move(source)),
      dead_lettered_(m.dead_lettered_.Add({{"source", source_}})),
      in_flight_(m.in_flight_.Add({{"source", source_}})),
      commit_to_ack_(m.commit_to_ack_.Add({{"source", source_}}, kLatencyBuckets)),
      batch_size_(m.batch_size_.Add({{"source", source_}}, kBatchBuckets)),
      reconnects_(m.reconnects_.Add({{"source", source_}, {"target", "postgres"}})),
      last_delivery_(m.last_delivery_.Add({{"source", source_}})),
      halted_(m.halted_.Add({{"source", source_}})) {
  for (ResendCause cause : {ResendCause::kRewind, ResendCause::kProducer, ResendCause::kReconnect}) {
    resent_[static_cast<int>(cause)] =
        &m.resent_.Add({{"source", source_}, {"cause", std::string(ResendCauseName(cause))}});
  }
}

prometheus::Counter& SourceMetrics::Published(const std::string& topic) {
  auto it = published_.find(topic);
  if (it != published_.end()) return *it->second;
  prometheus::Counter& c = metrics_.published_.Add({{"source", source_}, {"topic", topic}});
  published_.emplace(topic, &c);
  return c;
}

void SourceMetrics::PublishError(const std::string& reason) {
  auto it = errors_.find(reason);
  if (it == errors_.end()) {
    it = errors_.emplace(reason, &metrics_.publish_errors_.Add({{"source", source_}, {"reason", reason}})).first;
  }
  it->second->Increment();
}

void SourceMetrics::DeadLettered() { dead_lettered_.Increment(); }
void SourceMetrics::SetInFlight(int64_t n) { in_flight_.Set(static_cast<double>(n)); }
void SourceMetrics::ObserveCommitToAck(double seconds) { commit_to_ack_.Observe(std::max(0.0, seconds)); }
void SourceMetrics::ObserveBatch(std::size_t events) { batch_size_.Observe(static_cast<double>(events)); }
void SourceMetrics::Reconnected() { reconnects_.Increment(); }
void SourceMetrics::Resent(ResendCause cause, std::size_t events) {
  if (events > 0) resent_[static_cast<int>(cause)]->Increment(static_cast<double>(events));
}
void SourceMetrics::Delivered() { last_delivery_.Set(UnixNow()); }
void SourceMetrics::SetHalted(bool halted) { halted_.Set(halted ? 1 : 0); }

// --- TableMetrics ---------------------------------------------------------------

TableMetrics::TableMetrics(Metrics& m, const std::string& table)
    : pending_(m.pending_rows_.Add({{"table", table}})),
      age_(m.oldest_pending_age_.Add({{"table", table}})),
      gaps_(m.gaps_.Add({{"table", table}})),
      oldest_gap_age_(m.oldest_gap_age_.Add({{"table", table}})),
      late_rows_(m.late_rows_.Add({{"table", table}})),
      sweep_rows_(m.sweep_rows_.Add({{"table", table}})) {}

void TableMetrics::SetGaps(std::size_t ranges, double oldest_age_seconds) {
  gaps_.Set(static_cast<double>(ranges));
  oldest_gap_age_.Set(oldest_age_seconds);
}
void TableMetrics::LateRows(std::size_t n) { late_rows_.Increment(static_cast<double>(n)); }
void TableMetrics::SweepRows(std::size_t n) { sweep_rows_.Increment(static_cast<double>(n)); }

void TableMetrics::Sample(int64_t count, int64_t min_position, int64_t max_position,
                          std::chrono::steady_clock::time_point now) {
  pending_.Set(static_cast<double>(count));
  if (count <= 0) {
    seen_.clear();
    age_.Set(0);
    return;
  }
  seen_.push_back({now, max_position});
  // The oldest pending row was first seen by the earliest sample whose range
  // reached its position; earlier samples can date nothing pending any more.
  while (seen_.size() > 1 && seen_.front().max_position < min_position) seen_.pop_front();
  age_.Set(std::chrono::duration<double>(now - seen_.front().at).count());
}

// --- RelayHealth ----------------------------------------------------------------

RelayHealth::RelayHealth(std::string name)
    : name_(std::move(name)), heartbeat_(Clock::now().time_since_epoch().count()) {}

void RelayHealth::SetRunning(bool running, std::string_view problem) {
  if (running && running_.load(std::memory_order_relaxed)) return;  // the every-turn case: no lock
  std::lock_guard lock(mu_);
  if (running) {
    problem_.clear();
  } else if (problem_ != problem) {
    problem_ = std::string(problem);
  }
  running_.store(running, std::memory_order_relaxed);
}

// --- Metrics --------------------------------------------------------------------

Metrics::Metrics(const std::string& version)
    : registry_(std::make_shared<prometheus::Registry>()),
      published_(BuildCounter()
                     .Name("outboxd_events_published_total")
                     .Help("Events acknowledged by Kafka (dead-letter records not counted)")
                     .Register(*registry_)),
      publish_errors_(BuildCounter()
                          .Name("outboxd_publish_errors_total")
                          .Help("Failed deliveries by librdkafka error name, or UNROUTABLE")
                          .Register(*registry_)),
      dead_lettered_(BuildCounter()
                         .Name("outboxd_dead_lettered_total")
                         .Help("Events written to a dead-letter topic")
                         .Register(*registry_)),
      in_flight_(BuildGauge()
                     .Name("outboxd_events_in_flight")
                     .Help("Events produced and not yet acknowledged by Kafka")
                     .Register(*registry_)),
      pending_rows_(BuildGauge()
                        .Name("outboxd_outbox_pending_rows")
                        .Help("Unsent rows in a poll outbox table (sampled every 10 s)")
                        .Register(*registry_)),
      oldest_pending_age_(BuildGauge()
                              .Name("outboxd_outbox_oldest_pending_age_seconds")
                              .Help("Time since outboxd first saw the oldest unsent row pending (0 when none)")
                              .Register(*registry_)),
      gaps_(BuildGauge()
                .Name("outboxd_poll_gaps")
                .Help("Ranges of positions below the cursor a late row may still fill")
                .Register(*registry_)),
      oldest_gap_age_(BuildGauge()
                          .Name("outboxd_poll_oldest_gap_age_seconds")
                          .Help("Age of the oldest gap still watched (0 when none)")
                          .Register(*registry_)),
      late_rows_(BuildCounter()
                     .Name("outboxd_poll_late_rows_total")
                     .Help("Rows that committed below the cursor, read from a gap and published in order")
                     .Register(*registry_)),
      sweep_rows_(BuildCounter()
                      .Name("outboxd_poll_sweep_rows_total")
                      .Help("Rows only the safety sweep found: published late, key order at risk")
                      .Register(*registry_)),
      slot_lag_(BuildGauge()
                    .Name("outboxd_replication_slot_lag_bytes")
                    .Help("pg_current_wal_lsn() - confirmed_flush_lsn of the slot (sampled every 10 s)")
                    .Register(*registry_)),
      slot_retained_(BuildGauge()
                         .Name("outboxd_replication_slot_wal_retained_bytes")
                         .Help("pg_current_wal_lsn() - restart_lsn of the slot: WAL the slot holds")
                         .Register(*registry_)),
      slot_confirmed_(BuildGauge()
                          .Name("outboxd_replication_slot_confirmed_lsn")
                          .Help("Confirmed flush LSN of the slot as a number")
                          .Register(*registry_)),
      commit_to_ack_(BuildHistogram()
                         .Name("outboxd_commit_to_ack_seconds")
                         .Help("Commit (cdc) or claim (poll) to Kafka acknowledgement")
                         .Register(*registry_)),
      batch_size_(BuildHistogram()
                      .Name("outboxd_batch_size")
                      .Help("Rows per claim (poll) or events per transaction (cdc)")
                      .Register(*registry_)),
      reconnects_(
          BuildCounter().Name("outboxd_reconnects_total").Help("Re-established connections").Register(*registry_)),
      resent_(BuildCounter()
                  .Name("outboxd_events_resent_total")
                  .Help("Events produced again although Kafka had acknowledged them, by cause")
                  .Register(*registry_)),
      last_delivery_(BuildGauge()
                         .Name("outboxd_last_delivery_timestamp_seconds")
                         .Help("Unix time of the last event acknowledged by Kafka")
                         .Register(*registry_)),
      halted_(BuildGauge()
                  .Name("outboxd_halted")
                  .Help("1 while the source is halted by an event that cannot be delivered")
                  .Register(*registry_)),
      transactions_(BuildCounter()
                        .Name("outboxd_kafka_transactions_total")
                        .Help("Kafka transactions ended (exactly-once), by outcome: committed or aborted")
                        .Register(*registry_)),
      transaction_events_(BuildHistogram()
                              .Name("outboxd_kafka_transaction_events")
                              .Help("Records per committed Kafka transaction (exactly-once)")
                              .Register(*registry_)),
      transaction_commit_(BuildHistogram()
                              .Name("outboxd_kafka_transaction_commit_seconds")
                              .Help("Start of a Kafka transaction's commit to its end (exactly-once)")
                              .Register(*registry_)),
      kafka_queue_(BuildGauge()
                       .Name("outboxd_kafka_queue_messages")
                       .Help("Messages in librdkafka's queue (rd_kafka_outq_len)")
                       .Register(*registry_)
                       .Add({})),
      ready_(BuildGauge().Name("outboxd_ready").Help("1 when /readyz would answer 200").Register(*registry_).Add({})) {
  BuildGauge().Name("outboxd_build_info").Help("outboxd build").Register(*registry_).Add({{"version", version}}).Set(1);
}

Metrics::~Metrics() = default;

SourceMetrics& Metrics::Source(const std::string& source) {
  std::lock_guard lock(mu_);
  auto& slot = sources_[source];
  if (!slot) slot.reset(new SourceMetrics(*this, source));
  return *slot;
}

TableMetrics& Metrics::Table(const std::string& table) {
  std::lock_guard lock(mu_);
  auto& slot = tables_[table];
  if (!slot) {
    slot.reset(new TableMetrics(*this, table));
  }
  return *slot;
}

SlotMetrics& Metrics::Slot(const std::string& slot) {
  std::lock_guard lock(mu_);
  auto& entry = slots_[slot];
  if (!entry) {
    entry = std::make_unique<SlotMetrics>(SlotMetrics{
        slot_lag_.Add({{"slot", slot}}), slot_retained_.Add({{"slot", slot}}), slot_confirmed_.Add({{"slot", slot}})});
  }
  return *entry;
}

TransactionMetrics& Metrics::Transactions(const std::string& stream) {
  std::lock_guard lock(mu_);
  auto& entry = transaction_streams_[stream];
  if (!entry) {
    entry = std::make_unique<TransactionMetrics>(
        TransactionMetrics{transactions_.Add({{"stream", stream}, {"outcome", "committed"}}),
                           transactions_.Add({{"stream", stream}, {"outcome", "aborted"}}),
                           transaction_events_.Add({{"stream", stream}}, kBatchBuckets),
                           transaction_commit_.Add({{"stream", stream}}, kLatencyBuckets)});
  }
  return *entry;
}

RelayHealth& Metrics::AddRelay(const std::string& name) {
  std::lock_guard lock(mu_);
  relays_.push_back(std::unique_ptr<RelayHealth>(new RelayHealth(name)));
  return *relays_.back();
}

Metrics::Report Metrics::Liveness() const {
  const auto now = RelayHealth::Clock::now();
  Report r;
  std::lock_guard lock(mu_);
  for (const auto& relay : relays_) {
    const RelayHealth::Clock::time_point beat{RelayHealth::Clock::duration(relay->heartbeat_.load())};
    const auto age = std::chrono::duration_cast<std::chrono::seconds>(now - beat);
    if (age >= kStaleAfter && !relay->in_long_call_.load(std::memory_order_relaxed)) {
      r.body += relay->name() + ": the relay loop has not turned for " + std::to_string(age.count()) + " s\n";
    }
  }
  r.ok = r.body.empty();
  if (r.ok) r.body = "ok\n";
  return r;
}

Metrics::Report Metrics::Readiness() const {
  const auto now = RelayHealth::Clock::now();
  Report r;
  std::lock_guard lock(mu_);
  if (relays_.empty()) r.body = "no relay is running\n";
  for (const auto& relay : relays_) {
    if (!relay->postgres_.load()) r.body += relay->name() + ": not connected to PostgreSQL\n";
    if (!relay->running_.load()) {
      std::lock_guard relay_lock(relay->mu_);
      r.body += relay->name() + ": " + (relay->problem_.empty() ? "not running" : relay->problem_) + "\n";
    }
    const RelayHealth::Clock::rep kafka = relay->kafka_.load();
    if (kafka == 0) {
      r.body += relay->name() + ": Kafka has not answered yet\n";
    } else {
      const auto age = std::chrono::duration_cast<std::chrono::seconds>(
          now - RelayHealth::Clock::time_point(RelayHealth::Clock::duration(kafka)));
      if (age >= kStaleAfter && !relay->in_long_call_.load(std::memory_order_relaxed)) {
        r.body += relay->name() + ": Kafka has not answered for " + std::to_string(age.count()) + " s\n";
      }
    }
  }
  r.ok = r.body.empty();
  if (r.ok) r.body = "ready\n";
  return r;
}

std::string Metrics::Serialize() {
  ready_.Set(Readiness().ok ? 1 : 0);
  int64_t queued = 0;
  {
    std::lock_guard lock(mu_);
    for (const auto& relay : relays_) queued += relay->kafka_queue_.load(std::memory_order_relaxed);
  }
  kafka_queue_.Set(static_cast<double>(queued));
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, registry_->Collect());
  return out.str();
}

}  // namespace outboxd
