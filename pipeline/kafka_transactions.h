#pragma once
// KafkaTransactions: one stream's Kafka transactions in the exactly-once mode
// ([kafka] delivery = "exactly-once", docs/design/exactly-once.md). A source
// keeps its records flowing as in the at-least-once mode and asks this class
// when to begin, when a commit is due and what the outcome was; the
// transaction's state lives here, in one enum.
//
//   kUninitialised ──Initialise()──► kIdle ──Begin()──► kOpen ──StartCommit()──► kCommitting
//        ▲                            ▲  ▲                 │                          │
//        │                            │  └──── committed ──┼──────────────────────────┘
//        │                            │                    ▼ StartAbort()
//        └── ProducerLost()           └───── aborted ── kAborting
//
// Initialise() makes the producer transactional with the stream's id and runs
// InitTransactions() — which fences every earlier producer with that id and
// aborts what it left open — unless that is done already, and then reads
// the stream's last committed position from the position topic. The source
// calls it every time it starts its stream, once it holds it (the slot): a
// standby never fences the instance that streams, and the position is fresh
// after another instance held the stream (that instance, if it comes back,
// is fenced: by this Initialise() or, when this producer was initialised
// before, by the fatal error its old epoch earns at its first transaction,
// after which the producer is recreated and Initialise()d). Advance() drives a commit or an abort
// without blocking the loop for long; an error that ends the producer
// (fenced, fatal) is a kFatal Status, on which the runner recreates the
// producer and the source calls ProducerLost().
//
// Not thread-safe: the runner's thread only.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "config/config.h"
#include "pipeline/metrics.h"
#include "pipeline/position_store.h"
#include "pipeline/publisher.h"
#include "pipeline/record.h"

namespace outboxd {

class KafkaTransactions {
 public:
  using Clock = std::chrono::steady_clock;

  enum class State : uint8_t {
    kUninitialised,  // a new or recreated producer: Initialise() first
    kIdle,           // no transaction open
    kOpen,           // records are produced into it
    kCommitting,     // its position record is produced: Advance() until committed
    kAborting,       // Advance() until aborted
  };
  // What Advance() came to.
  enum class Step : uint8_t {
    kNothing,    // no commit or abort under way
    kPending,    // still under way: call again next turn
    kCommitted,  // the transaction committed: its records are visible
    kAborted,    // it was aborted (asked for, or its commit failed): produce it again
  };

  // How long a source lets Initialise() take: fencing the previous holder and
  // reading the position (longer when a transaction the previous holder left
  // open in the position topic must be aborted first).
  static constexpr std::chrono::milliseconds kInitialiseTimeout{30000};

  // `stream`: the transactional.id, also the position record's key and the
  // metrics' `stream` label.
  KafkaTransactions(const KafkaConfig& kafka, std::string stream, Metrics& metrics);
  ~KafkaTransactions();

  // The transactional.id of a cdc slot's stream: unique over PostgreSQL
  // clusters (IDENTIFY_SYSTEM's system identifier), databases and slots.
  static std::string CdcStream(const std::string& system_id, const std::string& database, const std::string& slot) {
    return "outboxd.cdc." + system_id + "." + database + "." + slot;
  }

  // The transactional.id of a poll source's stream: its tables ("schema.table",
  // sorted, comma-separated) in one database of one PostgreSQL cluster.
  static std::string PollStream(const std::string& system_id, const std::string& database,
                                std::vector<std::string> tables);

  // InitTransactions() unless done, then the last committed position
  // (nullopt: none yet). Blocks up to `timeout` (the caller marks it a long
  // call); Retriable when Kafka does not answer in time.
  [[nodiscard]] Result<std::optional<std::string>> Initialise(Publisher& publisher, std::chrono::milliseconds timeout);

  // Opens a transaction unless one is open. kFatal when the producer cannot;
  // Internal when a commit or an abort is under way (a caller's bug).
  [[nodiscard]] Status Begin(Publisher& publisher, Clock::time_point now);
  // One more record of `bytes` (Record::payload_bytes()) went into the open
  // transaction.
  void Added(std::size_t bytes) {
    ++events_;
    bytes_ += static_cast<int64_t>(bytes);
  }
  // The open transaction reached transaction_max_wait, _max_events or
  // _max_bytes.
  bool CommitDue(Clock::time_point now) const;
  // The open transaction reached transaction_max_events or _max_bytes (the
  // wait aside).
  bool SizeReached() const;
  // When CommitDue() becomes true for an open transaction.
  std::optional<Clock::time_point> CommitDueAt() const;
  // The record that ends the transaction, stating `position`: produce it
  // last, then StartCommit().
  Record PositionRecord(const std::string& position) const;
  void StartCommit();
  // An open transaction is to be aborted (a delivery failed, the stream
  // rewinds). So is one whose commit still waits for its records'
  // acknowledgements; a commit Kafka was asked for is left to end: it
  // commits, or fails and aborts.
  void StartAbort();
  // Drives a commit or an abort; call every turn while one is under way, once
  // every record of the transaction is produced. A commit fenced after the
  // transaction overran (below) is Permanent.
  [[nodiscard]] Result<Step> Advance(Publisher& publisher);
  // At shutdown: aborts the open transaction rather than leave read_committed
  // consumers of its partitions held back until transaction.timeout.ms (a
  // commit Kafka was asked for is left to end), driving it for up to
  // `timeout`.
  // kCommitted when such a commit ended so.
  [[nodiscard]] Result<Step> EndAtShutdown(Publisher& publisher, std::chrono::milliseconds timeout);
  // The producer is gone (recreated): whatever was open went with it.
  // Permanent when the transaction overran: the broker aborting it is what
  // failed the producer (its next request is fenced).
  [[nodiscard]] Status ProducerLost(Clock::time_point now);

  State state() const { return state_; }
  // A transaction is open, committing or aborting.
  bool open() const { return state_ == State::kOpen || ending(); }
  // A commit or an abort is under way: nothing may be produced until it ends.
  bool ending() const { return state_ == State::kCommitting || state_ == State::kAborting; }
  const std::string& stream() const { return stream_; }
  // Records of the open (or committing) transaction, the position record
  // not counted.
  int64_t events() const { return events_; }

 private:
  // The open transaction overran: it had been open for librdkafka's
  // transaction.timeout.ms before its source could ask to commit it, so its
  // PostgreSQL transactions take longer than that to produce. The broker
  // aborts it, and as one PostgreSQL transaction is never split, producing it
  // again would overrun again: Permanent, naming the timeout to raise.
  Status Overrun(Clock::time_point now) const;

  const KafkaConfig& kafka_;
  const std::string stream_;
  const std::chrono::milliseconds timeout_;  // librdkafka's transaction.timeout.ms
  TransactionMetrics& metrics_;
  std::unique_ptr<PositionStore> store_;  // created by the first Initialise()
  int64_t store_hint_ = 0;                // offset of the last position record read
  int64_t commits_until_kill_;            // the failpoint kill_after_kafka_commits (unarmed: -1)
  int64_t commit_calls_until_kill_;       // the failpoint kill_before_kafka_commits (unarmed: -1)
  State state_ = State::kUninitialised;
  Clock::time_point opened_at_{};
  Clock::time_point commit_started_at_{};
  bool commit_called_ = false;  // kCommitting: Kafka was asked to commit (it can no longer become an abort)
  int64_t events_ = 0;
  int64_t bytes_ = 0;  // of the records in the open transaction
};

}  // namespace outboxd
