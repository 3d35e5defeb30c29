#pragma once
// OutboxRelay: the poll source and its pipeline. It claims unsent rows from
// each [[outbox]] table in ordering-column order, routes them, hands them to
// the Publisher, and only after Kafka acknowledged a row — and every row of
// that table produced before it — deletes it or marks it sent.
//
// Claims are by state (unsent), not by a cursor alone: a fast path reads rows
// past the highest position claimed so far; positions it skipped (rows of
// transactions still open) are remembered as holes and read again before each
// fast-path claim, so a row that commits late is still published, ahead of
// rows with higher positions that commit after it (the outbox gap). A hole is
// kept until every transaction that was open when it appeared has ended
// (pg_current_snapshot()); a periodic sweep catches what holes do not cover. Each table is held by one outboxd instance at a time through a
// session advisory lock, so per-key order holds with standbys running.
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
  // One row of a claim or hole read, with its position.
  struct ClaimedRow {
    const PGresult* res;
    int row;
    long long pos;
    bool from_fast_path;  // only these move the cursor
  };
  std::vector<ClaimedRow> RowsOf(const Stream& s, const PGresult* res, bool from_fast_path);
  // Produces `rows` in the given order; `completed` is false when it stopped
  // early (queue full, stream halted or rewound).
  [[nodiscard]] Status ProduceRows(Stream& s, const std::vector<ClaimedRow>& rows,
                                   bool* completed);
  // Remembers the positions a fast-path claim skipped, tagged with the xmax
  // of the snapshot taken right after it.
  void AddHoles(Stream& s, const PGresult* claim, uint64_t xmax, Clock::time_point now);
  // Reads the rows that filled holes (null when there are no holes).
  [[nodiscard]] Result<PgResult> FetchHoles(Stream& s);
  // Drops holes whose transactions had all ended (ids below `ended_below`)
  // before the last FetchHoles, once they are old enough.
  void DropSettledHoles(Stream& s, uint64_t ended_below);
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
