#pragma once
// PollSource: the poll source. It claims unsent rows from each [[outbox]]
// table with source = "poll" in ordering-column order, routes them, hands
// them to the Publisher, and only after Kafka acknowledged a row — and every
// row of that table produced before it — deletes it or marks it sent. The
// PipelineRunner drives it (pipeline/source.h); it owns one PostgreSQL
// connection shared by its tables.
//
// Claims are by state (unsent), not by a cursor alone: a claim reads rows past
// the highest position claimed so far; the positions it skipped (rows of
// transactions still open, or of sessions holding cached sequence values) are
// gaps, read again by range after every claim and produced before the
// claimed rows, so a row that commits late is still published ahead of every
// later row of its key (the outbox gap). relay/gap_tracker.h holds that rule.
// A periodic sweep is the last safety net; what it finds is counted
// (outboxd_poll_sweep_rows_total) as a possible ordering fault.
//
// Each table is held by one outboxd instance at a time through a session
// advisory lock (common/advisory_locks.h), so per-key order holds with
// standbys running. Each table is in one phase:
//
//   kStarting ──first connect──► kClaiming (lock taken) or kStandingBy (held elsewhere)
//
//                lock taken                  rewind done
//   kStandingBy ───────────► kClaiming ◄───────────────── kRewinding
//        ▲                     │  │  delivery failed, producer lost  ▲
//        │                     │  └───────────────────────────────────┘
//        └─ lock held elsewhere on reconnect (what was in flight stays tracked:
//           what Kafka acknowledged is still deleted or marked)
//
//   any phase ── a row can never be delivered and no dead-letter topic ──► kHalted (final)
//
// Taken over from another instance, a table's first claim waits kTakeoverGrace (1 s)
// (at least once; exactly once, Kafka's position says what the old holder committed).
//
// Exactly once ([kafka] delivery = "exactly-once", docs/design/exactly-once.md
// "poll"): the tables share one transactional stream, so they are taken all
// or none. Rows go into Kafka transactions (pipeline/kafka_transactions.h);
// a transaction ends only where the rows read hold every row of each
// PostgreSQL transaction in it, with a position record that lists every row
// Kafka then has and PostgreSQL still holds unsent. Rows are deleted or
// marked only after the commit. Once the locks are taken, after a rewind and
// after the producer is recreated, the stream's last position is read from
// Kafka and the rows it lists are deleted or marked before anything is
// claimed: they are never produced twice.
//
// Enter() is the one place a phase changes. Not thread-safe: the runner's
// thread only. Metrics: source "table:<schema.table>" per table, relay
// health "poll".

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/logging.h"
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
#include "relay/gap_tracker.h"
#include "relay/outbox_table.h"

namespace outboxd {

class PollSource final : public Source {
 public:
  // Validates what can be validated without a database (topic templates);
  // `config` and `metrics` must outlive the source.
  [[nodiscard]] static Result<std::unique_ptr<PollSource>> Create(const Config& config, Metrics& metrics);
  ~PollSource() override;

  std::string_view name() const override { return "poll"; }
  void Attach(Publisher& publisher, RelayHealth& health) override {
    publisher_ = &publisher;
    health_ = &health;
  }
  [[nodiscard]] Status Connect(bool first) override;
  void Disconnect() override;
  bool connected() const override { return conn_.healthy(); }
  void OnDelivery(const DeliveryReport& report) override;
  [[nodiscard]] Status Settle(Clock::time_point now, FailedDeliveries failed) override;
  [[nodiscard]] Status OnProducerLost() override;
  [[nodiscard]] Status Pump(Clock::time_point now) override;
  [[nodiscard]] Status Sample() override;
  void WaitFds(std::vector<pollfd>& fds, bool stopping) const override;
  Clock::time_point NextWakeup(Clock::time_point now) const override;
  Health CheckHealth() override;
  std::size_t in_flight() const override { return TotalPending(); }
  bool Drained() const override;
  void Finish() override;

 private:
  enum class Phase : uint8_t {
    kStarting,    // not connected yet
    kStandingBy,  // another instance holds the table's lock; tried again every poll_interval
    kClaiming,    // holds the lock: claims, produces, checkpoints
    kRewinding,   // forgot what was in flight; claims again once the old generation is reported
    kHalted,      // a row can never be delivered and no dead-letter topic takes it
  };
  struct Stream;
  // One row of a claim, gap read or sweep, with its position.
  struct RowRef {
    const PGresult* res;
    int row;
    long long pos;
  };
  // The gap rows of a round; `rows` is null when there are no gaps.
  struct GapRows {
    PgResult rows;
    bool hit_limit = false;  // more rows may be left in the gaps
  };
  struct Failure {
    std::size_t stream;
    uint64_t ticket;
    bool dead_letter;
    DeliveryReport report;
  };

  PollSource(const Config& config, Metrics& metrics);

  // The one place a table's phase changes.
  void Enter(Stream& s, Phase phase, std::string_view why = {});
  // Forgets what the stream has in flight and claims again from its lowest
  // unsent row once the old generation is reported (pipeline/rewind_gate.h);
  // `cause`: why rows Kafka already acknowledged are then produced again.
  void Rewind(Stream& s, const std::string& why, RewindGate::Pause pause, ResendCause cause);
  void Halt(Stream& s, const std::string& why);
  // Takes the table's advisory lock if free; moves between kStandingBy and
  // kClaiming (or kRewinding). Exactly once, every table's or none.
  enum class LockAttempt : uint8_t { kOnConnect, kStandbyRetry };
  [[nodiscard]] Status TryLock(Stream& s, LockAttempt attempt);
  [[nodiscard]] Status TryLockAll(LockAttempt attempt);
  void Locked(Stream& s, LockAttempt attempt);
  // Forgets what `s` has in flight (the body of Rewind()).
  void RewindStream(Stream& s, const std::string& why, RewindGate::Pause pause, ResendCause cause);

  // Exactly once: the Kafka transaction's steps.
  // InitTransactions() (fencing earlier holders), the last position read
  // from Kafka, and its rows deleted or marked.
  [[nodiscard]] Status ReadKafkaPosition();
  // Every table's lock is held and the position is still to be read.
  bool PositionToRead() const;
  // Ends the open transaction with its position record when it is due and
  // no PostgreSQL transaction of its rows has rows left to read.
  [[nodiscard]] Status CommitIfDue(Clock::time_point now);
  // Whether `s` holds every row of the transactions `xids` (every table's in
  // the Kafka transaction) that it will ever read.
  [[nodiscard]] Result<bool> TransactionsComplete(Stream& s, const std::set<std::string>& xids);
  [[nodiscard]] Status AdvanceTransaction();
  // Produces a record of a table (a row or its dead-letter record); exactly
  // once, inside the open Kafka transaction, begun if needed.
  [[nodiscard]] Status ProduceRecord(const Record& record, uint64_t token);
  // The position record's text: per table, the rows Kafka has once the
  // transaction commits and PostgreSQL still holds unsent.
  std::string PositionText() const;

  void HandleFailures();
  void HandleFailure(const Failure& f);
  [[nodiscard]] Status ReleaseAcknowledged(Stream& s);
  [[nodiscard]] Status ClaimAndProduce(Stream& s, Clock::time_point now);
  // Produces `rows` in the given order, calling `took(i)` for each row that
  // is from then on tracked (in flight, dead-lettered, failed, or already in
  // flight before). Returns early (completed false) when librdkafka's queue
  // is full or the stream halted or rewound.
  [[nodiscard]] Status ProduceRows(Stream& s, const std::vector<RowRef>& rows,
                                   const std::function<void(std::size_t)>& took, bool* completed);
  // Takes the snapshot that follows a claim (GapTracker::BeginRound) and
  // reads the rows of every gap.
  [[nodiscard]] Result<GapRows> ReadGaps(Stream& s);
  [[nodiscard]] Status Sweep(Stream& s);
  void UpdateGapMetrics(Stream& s, Clock::time_point now);
  [[nodiscard]] Status ToDeadLetter(Stream& s, uint64_t ticket, const Row& row, const std::string& reason_name,
                                    const std::string& reason, const std::optional<std::string>& original_topic);
  [[nodiscard]] Status ReadNotifications();
  std::size_t TotalPending() const;

  // Constant after Create().
  const Config& config_;
  Metrics& metrics_;
  Publisher* publisher_ = nullptr;                // set by Attach(); owned by the runner
  RelayHealth* health_ = nullptr;                 // set by Attach()
  std::vector<std::unique_ptr<Stream>> streams_;  // one per poll table; index = token's stream

  // Owned by the runner's thread.
  PgConn conn_;
  bool resolved_once_ = false;     // every table was checked once
  bool lost_connection_ = false;   // count the next connect as a reconnect
  std::vector<Failure> failures_;  // filled by OnDelivery, handled by Settle
  // Exactly once: the tables' one transactional stream (created on the first
  // connect: its id needs the cluster's identity), and whether its position
  // was read since the locks, the producer or the stream were last lost.
  std::unique_ptr<KafkaTransactions> txn_;
  bool position_read_ = false;
};

}  // namespace outboxd
