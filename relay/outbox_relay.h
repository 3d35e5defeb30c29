#pragma once
// OutboxRelay: the poll source and its pipeline. It claims unsent rows from
// each [[outbox]] table in ordering-column order, routes them, hands them to
// the Publisher, and only after Kafka acknowledged a row — and every row of
// that table produced before it — deletes it or marks it sent.
//
// Claims are by state (unsent), not by a cursor alone: a claim reads rows past
// the highest position claimed so far; the positions it skipped (rows of
// transactions still open, or of sessions holding cached sequence values) are
// gaps, read again by range after every claim and produced before the
// claimed rows, so a row that commits late is still published ahead of every
// later row of its key (the outbox gap). relay/gap_tracker.h holds that rule.
// A periodic sweep is the last safety net; what it finds is counted
// (outboxd_poll_sweep_rows_total) as a possible ordering fault. Each table is
// held by one outboxd instance at a time through a session advisory lock, so
// per-key order holds with standbys running.
//
// Run() owns the loop and returns when asked to stop (the stop fd becomes
// readable) or on an error it cannot recover from. One thread; not
// thread-safe. It updates its Metrics handles (source "table:<schema.table>"
// per table, relay health "poll") from that thread; pending rows and the
// Kafka probe are sampled every kSampleInterval on the relay's connection.

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "common/backoff.h"
#include "common/pg.h"
#include "common/status.h"
#include "config/config.h"
#include "pipeline/checkpoint.h"
#include "pipeline/metrics.h"
#include "pipeline/publisher.h"
#include "pipeline/router.h"
#include "relay/outbox_table.h"

namespace outboxd {

class OutboxRelay {
 public:
  using Clock = std::chrono::steady_clock;

  // How often pending rows are counted and, when nothing was acknowledged
  // meanwhile, Kafka is asked for metadata (for /readyz).
  static constexpr std::chrono::seconds kSampleInterval{10};

  // Validates what can be validated without a database (topic templates,
  // librdkafka properties); `config` must outlive the relay, and so must
  // `metrics` unless it is null (then the relay keeps private ones).
  [[nodiscard]] static Result<std::unique_ptr<OutboxRelay>> Create(const Config& config,
                                                                   Metrics* metrics = nullptr);
  ~OutboxRelay();

  // Runs until `stop_fd` becomes readable (the caller drains it), then stops
  // claiming, waits up to kafka.shutdown_timeout for deliveries in flight,
  // checkpoints them and returns OK. Returns InvalidConfig when the database
  // does not match the configuration at start-up.
  [[nodiscard]] Status Run(int stop_fd);

  // Lifecycle notifications for the service manager, called on the Run()
  // thread: kReady once after the first successful start-up, kStopping when a
  // stop was requested.
  enum class Lifecycle { kReady, kStopping };
  void OnLifecycle(std::function<void(Lifecycle)> handler) { on_lifecycle_ = std::move(handler); }

 private:
  struct Stream;
  explicit OutboxRelay(const Config& config);

  [[nodiscard]] Status Connect(bool first);
  void Disconnect(const Status& why);
  void OnDelivery(const DeliveryReport& report);
  void HandleFailures();
  void HandleFatalProducer();
  [[nodiscard]] Status ReleaseAcknowledged(Stream& s);
  [[nodiscard]] Status ClaimAndProduce(Stream& s, Clock::time_point now);
  [[nodiscard]] Status Sweep(Stream& s);
  // One row of a claim, gap read or sweep, with its position.
  struct RowRef {
    const PGresult* res;
    int row;
    long long pos;
  };
  // Produces `rows` in the given order, calling `took(i)` for each row that
  // is from then on tracked (in flight, dead-lettered, failed, or already in
  // flight before). Returns early (completed false) when librdkafka's queue
  // is full or the stream halted or rewound.
  [[nodiscard]] Status ProduceRows(Stream& s, const std::vector<RowRef>& rows,
                                   const std::function<void(std::size_t)>& took, bool* completed);
  // Takes the snapshot that follows a claim (GapTracker::BeginRound) and
  // reads the rows of every gap; `rows` is null when there are no gaps.
  struct GapRows {
    PgResult rows;
    bool hit_limit = false;  // more rows may be left in the gaps
  };
  [[nodiscard]] Result<GapRows> ReadGaps(Stream& s);
  void UpdateGapMetrics(Stream& s, Clock::time_point now);
  [[nodiscard]] Status ToDeadLetter(Stream& s, uint64_t ticket, const Row& row,
                                    const std::string& reason_name, const std::string& reason,
                                    const std::optional<std::string>& original_topic);
  // Forgets what the stream has in flight and claims again from its lowest
  // unsent row; with `back_off`, only after a growing pause.
  void Rewind(Stream& s, const std::string& why, bool back_off = false);
  void Halt(Stream& s, const std::string& why);
  void ReadNotifications();
  std::size_t TotalPending() const;
  // Counts pending rows of every table; asks Kafka for metadata when it has
  // not answered for a while.
  [[nodiscard]] Status SampleMetrics(Clock::time_point now);
  // Publishes the per-turn gauges and the relay's health.
  void UpdateHealth();
  std::chrono::milliseconds NextWait(Clock::time_point now) const;

  const Config& config_;
  std::unique_ptr<Metrics> own_metrics_;  // when Create() was given none
  Metrics* metrics_ = nullptr;            // never null
  RelayHealth* health_ = nullptr;         // owned by *metrics_
  Clock::time_point next_sample_{};
  std::unique_ptr<Publisher> publisher_;
  std::vector<std::unique_ptr<Stream>> streams_;
  PgConn conn_;
  Backoff reconnect_backoff_{std::chrono::milliseconds(100), std::chrono::seconds(30)};
  Clock::time_point reconnect_at_{};
  std::optional<Clock::time_point> connected_at_;  // of the current connection
  bool resolved_once_ = false;
  bool stopping_ = false;
  std::function<void(Lifecycle)> on_lifecycle_;

  struct Failure {
    std::size_t stream;
    uint64_t ticket;
    bool dead_letter;
    DeliveryReport report;
  };
  std::vector<Failure> failures_;  // filled by OnDelivery, handled after Poll
};

}  // namespace outboxd
