#pragma once
// Metrics: the Prometheus registry of one outboxd process, with the metric
// families of docs/metrics.md, and the health state /healthz and /readyz are
// computed from. The daemon owns one Metrics and passes it to every relay;
// the HTTP listener serializes it.
//
// Relays take cheap handles once and update them from their loops:
// SourceMetrics (one per `source` label: "table:<schema.table>" or
// "slot:<slot>"), TableMetrics (per poll table), SlotMetrics (per slot) and
// RelayHealth (per relay). The handles live as long as the Metrics and their
// addresses never change. Updating a counter, gauge or histogram is lock-free
// (prometheus-cpp atomics) and safe from any thread; the topic and reason
// caches of a SourceMetrics are not synchronised: one relay thread uses one
// SourceMetrics. Creating handles (Source(), Table(), Slot(), AddRelay()),
// Serialize(), Liveness() and Readiness() are thread-safe.

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace prometheus {
class Counter;
class Gauge;
class Histogram;
class Registry;
template <typename T>
class Family;
}  // namespace prometheus

namespace outboxd {

class Metrics;

// "table:<schema.table>" and "slot:<slot>", the values of the `source` label.
std::string TableSource(std::string_view table);
std::string SlotSource(std::string_view slot);

// Why outboxd produced an event a second time although Kafka had
// acknowledged its first copy (the `cause` of outboxd_events_resent_total).
enum class ResendCause : uint8_t {
  kRewind,     // a delivery failed: the stream was produced again from its last released position
  kProducer,   // the producer failed fatally and was recreated
  kReconnect,  // the PostgreSQL connection was lost and the stream read again
};
std::string_view ResendCauseName(ResendCause cause);

class SourceMetrics {
 public:
  // The published counter of one topic, created on first use and cached:
  // look it up when an event is produced, increment it when it is acked.
  prometheus::Counter& Published(const std::string& topic);
  // One failed delivery; `reason` is a librdkafka error name or UNROUTABLE.
  void PublishError(const std::string& reason);
  void DeadLettered();
  void SetInFlight(int64_t n);
  void ObserveCommitToAck(double seconds);
  void ObserveBatch(std::size_t events);
  void Reconnected();  // target="postgres"
  // Events produced again whose first copy Kafka had acknowledged.
  void Resent(ResendCause cause, std::size_t events);
  // Stamps outboxd_last_delivery_timestamp_seconds with the current time.
  void Delivered();
  void SetHalted(bool halted);

 private:
  friend class Metrics;
  SourceMetrics(Metrics& metrics, std::string source);

  Metrics& metrics_;
  std::string source_;
  std::unordered_map<std::string, prometheus::Counter*> published_;  // by topic
  std::unordered_map<std::string, prometheus::Counter*> errors_;     // by reason
  prometheus::Counter& dead_lettered_;
  prometheus::Gauge& in_flight_;
  prometheus::Histogram& commit_to_ack_;
  prometheus::Histogram& batch_size_;
  prometheus::Counter& reconnects_;
  std::array<prometheus::Counter*, 3> resent_{};  // by ResendCause
  prometheus::Gauge& last_delivery_;
  prometheus::Gauge& halted_;
};

// Pending rows and the age of the oldest one of a poll outbox table, and its
// gaps (relay/gap_tracker.h). The relay samples the table and feeds
// Sample(); the age is measured from the first sample that saw the oldest
// pending row (outboxd cannot know when a row was inserted without a
// timestamp column).
class TableMetrics {
 public:
  // count: unsent rows; min/max: their lowest and highest position (ignored
  // when count is 0).
  void Sample(int64_t count, int64_t min_position, int64_t max_position, std::chrono::steady_clock::time_point now);
  // Gap ranges tracked below the cursor and the age of the oldest.
  void SetGaps(std::size_t ranges, double oldest_age_seconds);
  // Rows read from gaps: committed late below the cursor, published in order.
  void LateRows(std::size_t n);
  // Rows only the sweep found: published late, possibly after a later row
  // of their key.
  void SweepRows(std::size_t n);

 private:
  friend class Metrics;
  TableMetrics(Metrics& metrics, const std::string& table);

  prometheus::Gauge& pending_;
  prometheus::Gauge& age_;
  prometheus::Gauge& gaps_;
  prometheus::Gauge& oldest_gap_age_;
  prometheus::Counter& late_rows_;
  prometheus::Counter& sweep_rows_;
  struct Seen {
    std::chrono::steady_clock::time_point at;
    int64_t max_position;
  };
  std::deque<Seen> seen_;  // earlier samples still needed to date the oldest row
};

struct SlotMetrics {
  prometheus::Gauge& lag_bytes;
  prometheus::Gauge& wal_retained_bytes;
  prometheus::Gauge& confirmed_lsn;
};

// A stream's Kafka transactions in the exactly-once mode
// (pipeline/kafka_transactions.h), labelled by the stream (its
// transactional.id).
struct TransactionMetrics {
  prometheus::Counter& committed;
  prometheus::Counter& aborted;
  prometheus::Histogram& events;          // records per committed transaction, its position record not counted
  prometheus::Histogram& commit_seconds;  // from the commit's start (all records produced) to committed
};

// What one relay (poll or cdc) tells the health endpoints. All members are
// thread-safe.
class RelayHealth {
 public:
  using Clock = std::chrono::steady_clock;

  const std::string& name() const { return name_; }
  // The loop turned; relays call this every turn (at least once a second).
  void Beat() { heartbeat_.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed); }
  // While set, the loop is inside one long call it cannot beat from (creating
  // a replication slot waits for every running transaction to end): it
  // counts as turning.
  void SetInLongCall(bool in_call) {
    Beat();
    in_long_call_.store(in_call, std::memory_order_relaxed);
  }
  void SetPostgresConnected(bool connected) { postgres_.store(connected, std::memory_order_relaxed); }
  // Whether the relay's stream/tables are running; `problem` says why not.
  // Cheap (no lock) while running, so callers may call it every turn.
  void SetRunning(bool running, std::string_view problem = {});
  // The last time Kafka answered (a delivery acknowledged, metadata).
  void SetKafkaAnswered(Clock::time_point at) {
    kafka_.store(at.time_since_epoch().count(), std::memory_order_relaxed);
  }
  // Messages in this relay's librdkafka queue.
  void SetKafkaQueue(int64_t n) { kafka_queue_.store(n, std::memory_order_relaxed); }

 private:
  friend class Metrics;
  explicit RelayHealth(std::string name);

  std::string name_;
  std::atomic<Clock::rep> heartbeat_;
  std::atomic<bool> in_long_call_{false};
  std::atomic<bool> postgres_{false};
  std::atomic<bool> running_{false};
  std::atomic<Clock::rep> kafka_{0};
  std::atomic<int64_t> kafka_queue_{0};
  mutable std::mutex mu_;
  std::string problem_;  // guarded by mu_
};

class Metrics {
 public:
  // A heartbeat older than this fails /healthz; a Kafka answer older than
  // this fails /readyz.
  static constexpr std::chrono::seconds kStaleAfter{30};

  explicit Metrics(const std::string& version = "unknown");
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // The handles of a label value, created on first use.
  SourceMetrics& Source(const std::string& source);
  TableMetrics& Table(const std::string& table);
  SlotMetrics& Slot(const std::string& slot);
  TransactionMetrics& Transactions(const std::string& stream);
  // A relay that /healthz and /readyz wait for from now on.
  RelayHealth& AddRelay(const std::string& name);

  struct Report {
    bool ok = false;
    std::string body;  // "ok" / "ready", or the reasons, one per line
  };
  Report Liveness() const;
  Report Readiness() const;

  // The Prometheus text exposition (format 0.0.4) of every family, with the
  // derived gauges (outboxd_ready, outboxd_kafka_queue_messages) refreshed.
  std::string Serialize();

  prometheus::Registry& registry() { return *registry_; }

 private:
  friend class SourceMetrics;
  friend class TableMetrics;

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& published_;
  prometheus::Family<prometheus::Counter>& publish_errors_;
  prometheus::Family<prometheus::Counter>& dead_lettered_;
  prometheus::Family<prometheus::Gauge>& in_flight_;
  prometheus::Family<prometheus::Gauge>& pending_rows_;
  prometheus::Family<prometheus::Gauge>& oldest_pending_age_;
  prometheus::Family<prometheus::Gauge>& gaps_;
  prometheus::Family<prometheus::Gauge>& oldest_gap_age_;
  prometheus::Family<prometheus::Counter>& late_rows_;
  prometheus::Family<prometheus::Counter>& sweep_rows_;
  prometheus::Family<prometheus::Gauge>& slot_lag_;
  prometheus::Family<prometheus::Gauge>& slot_retained_;
  prometheus::Family<prometheus::Gauge>& slot_confirmed_;
  prometheus::Family<prometheus::Histogram>& commit_to_ack_;
  prometheus::Family<prometheus::Histogram>& batch_size_;
  prometheus::Family<prometheus::Counter>& reconnects_;
  prometheus::Family<prometheus::Counter>& resent_;
  prometheus::Family<prometheus::Gauge>& last_delivery_;
  prometheus::Family<prometheus::Gauge>& halted_;
  prometheus::Family<prometheus::Counter>& transactions_;
  prometheus::Family<prometheus::Histogram>& transaction_events_;
  prometheus::Family<prometheus::Histogram>& transaction_commit_;
  prometheus::Gauge& kafka_queue_;
  prometheus::Gauge& ready_;

  mutable std::mutex mu_;  // guards the maps and relays_ (not the handles they hold)
  std::unordered_map<std::string, std::unique_ptr<SourceMetrics>> sources_;
  std::unordered_map<std::string, std::unique_ptr<TableMetrics>> tables_;
  std::unordered_map<std::string, std::unique_ptr<SlotMetrics>> slots_;
  std::unordered_map<std::string, std::unique_ptr<TransactionMetrics>> transaction_streams_;
  std::vector<std::unique_ptr<RelayHealth>> relays_;
};

}  // namespace outboxd
