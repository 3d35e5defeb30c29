#pragma once
// PositionStore: where the exactly-once mode keeps each stream's position in
// Kafka (docs/design/exactly-once.md). A stream — the cdc slot, a poll table
// — ends every Kafka transaction with a position record (PositionRecord()),
// so the position is visible exactly when the events before it are. After a
// start or a takeover, and after its producer's InitTransactions() has
// aborted or completed what an earlier holder left open, the stream reads
// its last committed position back (ReadLast()).
//
// The position topic has one partition and is compacted (EnsureTopic()). A
// position record joins its transaction only right before the commit, so a
// running transaction holds the partition's last stable offset back for
// milliseconds; one whose producer died there holds it until the broker
// aborts it (transaction.timeout.ms). ReadLast() reads to the end of the log
// as it was when called, so it waits for such a transaction rather than
// return a position older than one committed after it.
//
// Not thread-safe: one thread uses a store.

#include <librdkafka/rdkafka.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "common/status.h"
#include "config/config.h"
#include "pipeline/record.h"

namespace outboxd {

struct StoredPosition {
  std::string value;    // the stream's own text: a commit LSN, a batch id
  int64_t offset = -1;  // of the position record: where the next ReadLast() may start
};

class PositionStore {
 public:
  // A reader of `topic` with read_committed isolation, connected like the
  // producer ([kafka] bootstrap_servers and properties).
  [[nodiscard]] static Result<std::unique_ptr<PositionStore>> Create(const KafkaConfig& kafka, std::string topic);
  ~PositionStore();
  PositionStore(const PositionStore&) = delete;
  PositionStore& operator=(const PositionStore&) = delete;

  // Creates the topic (one partition, cleanup.policy=compact, the broker's
  // replication factor) unless it exists; an existing topic with more than
  // one partition is an InvalidConfig error naming it.
  [[nodiscard]] Status EnsureTopic(std::chrono::milliseconds timeout);

  // The record stating `position` for `stream`, to produce last in the
  // stream's transaction.
  Record PositionRecord(const std::string& stream, const std::string& position) const;

  // The last committed position of `stream`, reading from `from_offset` (a
  // StoredPosition::offset remembered earlier, or 0) to the last stable
  // offset, at least to the log's end at the call; nullopt when the stream
  // has none there. Retriable when that is not done within `timeout` (Kafka
  // does not answer, or a transaction open there did not end).
  [[nodiscard]] Result<std::optional<StoredPosition>> ReadLast(const std::string& stream, int64_t from_offset,
                                                               std::chrono::milliseconds timeout);

  const std::string& topic() const { return topic_; }

 private:
  PositionStore(std::string topic, rd_kafka_t* rk) : topic_(std::move(topic)), rk_(rk) {}

  std::string topic_;
  rd_kafka_t* rk_;  // owned: the consumer
};

}  // namespace outboxd
