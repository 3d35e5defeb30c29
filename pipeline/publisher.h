#pragma once
// Publisher: owns the one idempotent librdkafka producer (acks=all) and turns
// its delivery reports into DeliveryReports for the caller.
//
// Each produced record carries a caller-chosen 64-bit token in the message
// opaque; the report for it comes back with the same token from Poll(), on
// the caller's thread. A report says persisted, retriable (not persisted or
// possibly persisted: produce it again), permanent (this record can never be
// delivered: too large, topic not authorised) or fatal (the idempotent
// producer is dead: call Recreate(); every record not yet reported is lost
// to it and must be produced again).
//
// Not thread-safe: one thread produces, polls and recreates. librdkafka's own
// threads only write to WakeupFd().

#include <librdkafka/rdkafka.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>

#include "common/status.h"
#include "common/unique_fd.h"
#include "config/config.h"
#include "pipeline/record.h"

namespace outboxd {

enum class DeliveryOutcome { kPersisted, kRetriable, kPermanent, kFatal };

// The one place that decides what a Kafka error means for a record.
DeliveryOutcome ClassifyKafkaError(rd_kafka_resp_err_t err);

// When librdkafka's error callback reports a connection refused for a
// reason configuration causes — credentials the broker rejects, a broker
// certificate outboxd does not trust or a client certificate the broker does
// not, TLS against a plaintext listener or the reverse — what to check, as
// "(check ...)"; nullopt for anything else (a broker down or restarting).
std::optional<std::string> KafkaRefusalHint(rd_kafka_resp_err_t err, std::string_view reason);

struct DeliveryReport {
  uint64_t token = 0;
  DeliveryOutcome outcome = DeliveryOutcome::kPersisted;
  rd_kafka_resp_err_t error = RD_KAFKA_RESP_ERR_NO_ERROR;
  std::string error_name;     // e.g. "MSG_SIZE_TOO_LARGE"
  std::string error_message;  // librdkafka's description
  int32_t partition = -1;
  int64_t offset = -1;
};

// What a call on a Kafka transaction came to (groundwork of the exactly-once
// mode, docs/design/exactly-once.md). ClassifyTxnError() is the one place
// that maps librdkafka's transactional errors to it.
enum class TxnOutcome : uint8_t {
  kDone,        // the call completed
  kInProgress,  // not finished within the timeout: librdkafka goes on; call again to resume
  kAbort,       // this transaction failed: AbortTransaction(), then produce it again
  kFenced,      // a producer with the same transactional.id took over: this one is finished
  kFatal,       // the producer is unusable: recreate it
};
std::string_view TxnOutcomeName(TxnOutcome outcome);

struct TxnResult {
  TxnOutcome outcome = TxnOutcome::kDone;
  std::string error;  // librdkafka's error name and text, unless kDone
};

class Publisher {
 public:
  using DeliveryHandler = std::function<void(const DeliveryReport&)>;

  // Builds the producer from [kafka]; an unknown or invalid librdkafka
  // property is an InvalidConfig error naming it. `on_delivery` is called from
  // Poll() for every produced record. A non-empty `transactional_id` makes it
  // a transactional producer: InitTransactions() before the first record,
  // and every record inside Begin/CommitTransaction().
  [[nodiscard]] static Result<std::unique_ptr<Publisher>> Create(const KafkaConfig& config, DeliveryHandler on_delivery,
                                                                 std::string transactional_id = "");

  // Kafka transactions (transactional producers only). Each call waits up to
  // `timeout`; kInProgress means "call it again", librdkafka keeps working.
  // Commit and abort flush: delivery reports (also of purged records) are
  // served from inside them, not only from Poll().
  // InitTransactions() fences every earlier producer with the same
  // transactional.id and aborts (or completes) what it left open.
  [[nodiscard]] TxnResult InitTransactions(std::chrono::milliseconds timeout);
  [[nodiscard]] TxnResult BeginTransaction();
  // Commits the transaction once all its records are acknowledged; the
  // records of a committed transaction are visible to read_committed
  // consumers at once. While a record is outstanding it returns kInProgress
  // at once, without starting the commit: Poll() and call again.
  [[nodiscard]] TxnResult CommitTransaction(std::chrono::milliseconds timeout);
  // Records of an aborted transaction are never visible to read_committed
  // consumers; those still queued are reported as purged.
  [[nodiscard]] TxnResult AbortTransaction(std::chrono::milliseconds timeout);
  bool transactional() const { return !transactional_id_.empty(); }
  // Makes it the transactional producer `id` (recreating it unless it is
  // already); nothing it had queued is kept. For a source that learns its
  // stream's id once connected, before it produces anything.
  [[nodiscard]] Status UseTransactionalId(const std::string& id);
  // The least time given to a commit or an abort; see CommitTransaction().
  static constexpr std::chrono::milliseconds kMinTxnEndTimeout{100};
  ~Publisher();
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;

  // Hands a record to librdkafka. Retriable: the local queue is full (poll and
  // try again). Permanent: librdkafka refused this record (e.g. larger than
  // message.max.bytes). Fatal: the producer must be recreated.
  [[nodiscard]] Status Produce(const Record& record, uint64_t token);
  // The librdkafka error name ("MSG_SIZE_TOO_LARGE") of the last Produce()
  // that failed.
  const std::string& last_produce_error() const { return last_produce_error_; }
  // The last Produce() failed because the open Kafka transaction cannot take
  // records (an abortable error, e.g. a partition it could not add;
  // librdkafka says _STATE): abort it and produce it again.
  bool last_produce_needs_abort() const { return transactional() && last_produce_error_ == "_STATE"; }

  // Serves delivery reports and errors; waits up to `timeout` for one.
  void Poll(std::chrono::milliseconds timeout);

  // Replaces a producer that raised a fatal error with a new one. Records not
  // reported yet are dropped without reports.
  [[nodiscard]] Status Recreate();

  // Readable whenever reports are waiting for Poll(); drain with
  // DrainWakeup().
  int WakeupFd() const { return wake_read_.get(); }
  void DrainWakeup();

  bool fatal_error_raised() const { return fatal_raised_; }
  // The librdkafka handle, for tests that inject errors; owned by the
  // Publisher and replaced by Recreate().
  rd_kafka_t* native_handle() const { return rk_; }
  // Messages handed to librdkafka and not yet reported (rd_kafka_outq_len:
  // also what outboxd_kafka_queue_messages shows).
  int OutstandingCount() const;

  // Asks the cluster for broker metadata (no topics), waiting up to
  // `timeout`; true when a broker answered.
  bool ProbeKafka(std::chrono::milliseconds timeout);
  // The last time Kafka answered: a delivery was acknowledged or ProbeKafka()
  // succeeded. The clock's epoch when it never has.
  std::chrono::steady_clock::time_point last_answer() const { return last_answer_; }

  // A configuration mistake on the Kafka side: InvalidConfig (exit 78)
  // naming the broker, the cause and what to check when a broker refused
  // the connection (KafkaRefusalHint) before any broker had ever answered
  // this process, and none answers within kRefusalProbe. Otherwise OK: a
  // refusal once Kafka has answered (a rotated password, one broker's stale
  // certificate) is logged and retried, as is a broker that is down. Call
  // after Poll().
  [[nodiscard]] Status CheckRefused();
  static constexpr std::chrono::milliseconds kRefusalProbe{2000};

 private:
  Publisher(KafkaConfig config, DeliveryHandler on_delivery, std::string transactional_id);
  [[nodiscard]] Status Build();
  void Destroy();
  void LookUpTopicOnce(const std::string& topic);
  static void OnDelivery(rd_kafka_t*, const rd_kafka_message_t* msg, void* opaque);
  static void OnError(rd_kafka_t*, int err, const char* reason, void* opaque);
  static void OnLog(const rd_kafka_t*, int level, const char* fac, const char* buf);

  KafkaConfig config_;
  DeliveryHandler on_delivery_;
  std::string transactional_id_;            // empty: idempotent, not transactional
  rd_kafka_t* rk_ = nullptr;                // owned; destroyed in Destroy()
  rd_kafka_queue_t* main_queue_ = nullptr;  // owned reference to rk_'s main queue
  UniqueFd wake_read_;
  UniqueFd wake_write_;
  bool fatal_raised_ = false;
  bool scram_hint_logged_ = false;      // OnError(): the librdkafka#4895 hint, once
  std::optional<std::string> refusal_;  // OnError(): a refusal before Kafka ever answered
  int64_t acks_until_fatal_;            // the kafka_fatal_after_acks failpoint; -1 when not armed
  int64_t acks_until_timeout_;          // the kafka_timeout_report_after_acks failpoint
  std::string last_produce_error_;
  std::chrono::steady_clock::time_point last_answer_{};
  std::unordered_set<std::string> known_topics_;  // topics looked up by this producer
};

}  // namespace outboxd
