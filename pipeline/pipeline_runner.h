#pragma once
// PipelineRunner: drives one Source on one thread — the loop both sources
// share. It owns the source's Publisher (and recreates it after a fatal
// error), dispatches delivery reports, acts on PostgreSQL-side failures
// (pipeline/failure.h: reconnect with backoff, recreate the producer, stop),
// stops on request with a bounded drain (kafka.shutdown_timeout), samples
// every kSampleInterval, beats the relay's health every turn and tells the
// service manager when it is ready and when it stops.
//
//   Source ──► Router ──► Publisher ──► Checkpoint
//   (the Source routes and checkpoints; the runner owns the Publisher and the loop)
//
// Create() and OnLifecycle() before Run(); Run() on one thread, which then
// owns the runner and its source. Not thread-safe otherwise.

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "common/backoff.h"
#include "common/status.h"
#include "config/config.h"
#include "pipeline/failure.h"
#include "pipeline/metrics.h"
#include "pipeline/publisher.h"
#include "pipeline/source.h"

namespace outboxd {

class PipelineRunner {
 public:
  using Clock = std::chrono::steady_clock;

  // How often the source samples (pending rows, slot lag) and, when nothing
  // was acknowledged meanwhile, Kafka is asked for metadata (for /readyz).
  static constexpr std::chrono::seconds kSampleInterval{10};
  // Reconnecting to PostgreSQL waits 100 ms at first, doubling per failure up
  // to this: a standby whose own connection dropped (maybe repeatedly) is
  // back to its takeover retry within it (docs/operations.md, "Takeover").
  static constexpr std::chrono::milliseconds kMaxReconnectDelay{3000};

  enum class Lifecycle : uint8_t { kReady, kStopping };
  enum class Phase : uint8_t {
    kStarting,  // no Connect() has succeeded yet
    kRunning,   // connected, or reconnecting after a failure
    kStopping,  // a stop was requested or the source cannot go on: draining
  };
  // The producer's state. After a fatal error librdkafka drops what it had
  // queued but still reports what it had sent; the runner waits for those
  // reports (up to kafka.shutdown_timeout) so what Kafka acknowledged is
  // checkpointed, not produced again by the new producer.
  enum class ProducerState : uint8_t {
    kHealthy,
    kFailed,  // a fatal error: no new records; draining the reports, then recreated
  };

  // Builds the Publisher from `kafka` and attaches it to `source`. `kafka`
  // and `metrics` must outlive the runner.
  [[nodiscard]] static Result<std::unique_ptr<PipelineRunner>> Create(const KafkaConfig& kafka,
                                                                      std::unique_ptr<Source> source, Metrics& metrics);
  ~PipelineRunner();

  // Called on the Run() thread: kReady once after the first successful
  // Connect(), kStopping when a stop begins.
  void OnLifecycle(std::function<void(Lifecycle)> handler) { on_lifecycle_ = std::move(handler); }

  // Runs until `stop_fd` becomes readable (the runner drains it), then stops
  // producing, waits up to kafka.shutdown_timeout for deliveries in flight,
  // lets the source checkpoint them and returns OK. Returns the error when
  // the source cannot go on (kStop): InvalidConfig at start-up, Permanent
  // later.
  [[nodiscard]] Status Run(int stop_fd);

  Source& source() { return *source_; }
  Phase phase() const { return phase_; }

 private:
  PipelineRunner(const KafkaConfig& kafka, std::unique_ptr<Source> source, Metrics& metrics);

  // Acts on a failure of the PostgreSQL side or of the producer.
  [[nodiscard]] Status Fail(const Status& status);
  void Reconnect(const Status& why);
  // Serves delivery reports and librdkafka's errors; returns InvalidConfig
  // when Kafka refused outboxd before ever answering (Publisher::CheckRefused).
  [[nodiscard]] Status ServeDeliveries();
  // A fatal producer error: stop producing, let the reports of what was sent
  // come in, then RecreateProducer().
  void BeginProducerRecovery();
  // Once every report of the failed producer is in (or the wait is over).
  [[nodiscard]] Status RecreateProducerWhenReported();
  [[nodiscard]] Status RecreateProducer();
  void BeginStop(const Status& why);
  void SampleIfDue(Clock::time_point now);
  void UpdateHealth();
  // Waits for the stop fd, a delivery report, the source's sockets or the
  // next timer; handles a stop request.
  [[nodiscard]] Status Wait(int stop_fd);

  // Constant after Create().
  const KafkaConfig& kafka_;
  std::unique_ptr<Source> source_;
  std::unique_ptr<Publisher> publisher_;
  RelayHealth* health_;  // owned by the Metrics
  std::function<void(Lifecycle)> on_lifecycle_;

  // Owned by the Run() thread.
  Phase phase_ = Phase::kStarting;
  Status stop_reason_;  // why the source stopped, when it could not go on
  Clock::time_point stop_deadline_{};
  ProducerState producer_ = ProducerState::kHealthy;
  Clock::time_point recreate_deadline_{};  // while kFailed
  Backoff reconnect_backoff_{std::chrono::milliseconds(100), kMaxReconnectDelay};
  Clock::time_point reconnect_at_{};
  std::optional<Clock::time_point> connected_at_;  // of the current connection
  Clock::time_point next_sample_{};
};

}  // namespace outboxd
