#include "pipeline/pipeline_runner.h"

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "common/logging.h"

namespace outboxd {

using std::chrono::milliseconds;

namespace {

// A connection that worked this long before it failed starts the reconnect
// backoff afresh; one that fails again right after connecting (a revoked
// privilege, a dropped column) keeps backing off.
constexpr std::chrono::seconds kHealthyConnection(30);
// Every turn of the loop happens at least this often (health beats).
constexpr milliseconds kMaxWait(1000);
// While stopping, the drain is checked at least this often.
constexpr milliseconds kStoppingWait(100);

}  // namespace

PipelineRunner::PipelineRunner(const KafkaConfig& kafka, std::unique_ptr<Source> source, Metrics& metrics)
    : kafka_(kafka), source_(std::move(source)), health_(&metrics.AddRelay(std::string(source_->name()))) {}

PipelineRunner::~PipelineRunner() = default;

Result<std::unique_ptr<PipelineRunner>> PipelineRunner::Create(const KafkaConfig& kafka, std::unique_ptr<Source> source,
                                                               Metrics& metrics) {
  std::unique_ptr<PipelineRunner> runner(new PipelineRunner(kafka, std::move(source), metrics));
  Source* raw = runner->source_.get();
  auto publisher = Publisher::Create(kafka, [raw](const DeliveryReport& r) { raw->OnDelivery(r); });
  if (!publisher.ok()) return publisher.status();
  runner->publisher_ = std::move(publisher).value();
  runner->source_->Attach(*runner->publisher_, *runner->health_);
  return runner;
}

Status PipelineRunner::Fail(const Status& status) {
  const StartState state = phase_ == Phase::kStarting ? StartState::kStarting : StartState::kStarted;
  switch (ActionFor(status, state)) {
    case FailureAction::kNone:
      return Status::Ok();
    case FailureAction::kReconnect:
      Reconnect(status);
      return Status::Ok();
    case FailureAction::kRecreateProducer:
      BeginProducerRecovery();
      return Status::Ok();
    case FailureAction::kStop:
      if (phase_ == Phase::kStarting) return status;  // nothing in flight yet: exit at once
      BeginStop(status);
      return Status::Ok();
    case FailureAction::kWaitForRoom:
    case FailureAction::kRewind:
    case FailureAction::kDeadLetter:
    case FailureAction::kHalt:
      break;  // record-level actions: the source's, never returned to the runner
  }
  return Status::Internal("unexpected failure from source \"" + std::string(source_->name()) +
                          "\": " + status.message());
}

void PipelineRunner::Reconnect(const Status& why) {
  if (connected_at_ && Clock::now() - *connected_at_ > kHealthyConnection) reconnect_backoff_.Reset();
  connected_at_.reset();
  const milliseconds delay = reconnect_backoff_.Next();
  Logger(std::string(source_->name()))->warn("{}; reconnecting in {} ms", why.message(), delay.count());
  source_->Disconnect();
  reconnect_at_ = Clock::now() + delay;
}

void PipelineRunner::BeginProducerRecovery() {
  if (producer_ == ProducerState::kFailed) return;
  producer_ = ProducerState::kFailed;
  recreate_deadline_ = Clock::now() + kafka_.shutdown_timeout;
  Logger("kafka")->warn(
      "the Kafka producer failed fatally; waiting up to {} ms for the reports of the {} records it had sent, then "
      "recreating it",
      kafka_.shutdown_timeout.count(), publisher_->OutstandingCount());
}

Status PipelineRunner::RecreateProducer() {
  const int unreported = publisher_->OutstandingCount();
  Logger("kafka")->warn("recreating the Kafka producer; {} records were not reported and are produced again",
                        unreported);
  const Status lost = source_->OnProducerLost();
  producer_ = ProducerState::kHealthy;
  OUTBOXD_RETURN_IF_ERROR(publisher_->Recreate());
  return Fail(lost);
}

Status PipelineRunner::ServeDeliveries() {
  publisher_->DrainWakeup();
  publisher_->Poll(milliseconds(0));
  if (publisher_->fatal_error_raised()) BeginProducerRecovery();
  return publisher_->CheckRefused();
}

Status PipelineRunner::RecreateProducerWhenReported() {
  // While stopping there is nothing to produce again: the drain ends with
  // what was acknowledged checkpointed, the rest is published on the next start.
  if (producer_ != ProducerState::kFailed || phase_ == Phase::kStopping) return Status::Ok();
  if (publisher_->OutstandingCount() > 0 && Clock::now() < recreate_deadline_) return Status::Ok();
  return RecreateProducer();
}

void PipelineRunner::BeginStop(const Status& why) {
  if (phase_ == Phase::kStopping) return;
  auto log = Logger(std::string(source_->name()));
  if (why.ok()) {
    log->info("stopping: no new events; waiting up to {} ms for {} deliveries in flight",
              kafka_.shutdown_timeout.count(), source_->in_flight());
  } else {
    stop_reason_ = why;
    log->error("{}", why.message());
  }
  phase_ = Phase::kStopping;
  stop_deadline_ = Clock::now() + kafka_.shutdown_timeout;
  if (on_lifecycle_) on_lifecycle_(Lifecycle::kStopping);
}

void PipelineRunner::SampleIfDue(Clock::time_point now) {
  if (phase_ == Phase::kStopping || now < next_sample_) return;
  next_sample_ = now + kSampleInterval;
  if (Clock::now() - publisher_->last_answer() > kSampleInterval) publisher_->ProbeKafka(milliseconds(500));
  if (!source_->connected()) return;
  Status st = source_->Sample();
  if (st.ok()) return;
  if (source_->connected()) {
    Logger(std::string(source_->name()))->warn("{}", st.message());
  } else {
    Fail(st).IgnoreError();  // a reconnect
  }
}

void PipelineRunner::UpdateHealth() {
  health_->Beat();
  health_->SetPostgresConnected(source_->connected());
  health_->SetKafkaAnswered(publisher_->last_answer());
  health_->SetKafkaQueue(publisher_->OutstandingCount());
  const Source::Health h = source_->CheckHealth();
  if (phase_ == Phase::kStopping) {
    health_->SetRunning(false, stop_reason_.ok() ? "stopping" : "stopping: " + stop_reason_.message());
  } else {
    health_->SetRunning(h.running, h.problem);
  }
}

Status PipelineRunner::Wait(int stop_fd) {
  const Clock::time_point now = Clock::now();
  Clock::time_point until = std::min(now + kMaxWait, source_->NextWakeup(now));
  if (phase_ != Phase::kStopping) until = std::min(until, next_sample_);
  if (!source_->connected() && phase_ != Phase::kStopping) until = std::min(until, reconnect_at_);
  if (phase_ == Phase::kStopping) until = std::min(until, now + kStoppingWait);
  if (producer_ == ProducerState::kFailed && phase_ != Phase::kStopping) until = std::min(until, recreate_deadline_);
  const auto timeout = std::max(milliseconds(0), std::chrono::ceil<milliseconds>(until - now));

  std::vector<pollfd> fds = {{stop_fd, POLLIN, 0}, {publisher_->WakeupFd(), POLLIN, 0}};
  source_->WaitFds(fds, phase_ == Phase::kStopping);
  const int rc = ::poll(fds.data(), fds.size(), static_cast<int>(timeout.count()));
  if (rc < 0 && errno != EINTR) return Status::Internal(std::string("poll failed: ") + std::strerror(errno));
  if (rc > 0 && (fds[0].revents & POLLIN) && phase_ != Phase::kStopping) {
    char buf[128];
    while (::read(stop_fd, buf, sizeof buf) < 0 && errno == EINTR) {
    }
    BeginStop(Status::Ok());
  }
  return Status::Ok();
}

Status PipelineRunner::Run(int stop_fd) {
  while (true) {
    Clock::time_point now = Clock::now();
    if (phase_ != Phase::kStopping && !source_->connected() && now >= reconnect_at_) {
      const bool first = phase_ == Phase::kStarting;
      Status st = source_->Connect(first);
      if (st.ok()) {
        connected_at_ = Clock::now();
        next_sample_ = Clock::now();  // sample right away
        if (first) {
          phase_ = Phase::kRunning;
          if (on_lifecycle_) on_lifecycle_(Lifecycle::kReady);
        }
      } else {
        OUTBOXD_RETURN_IF_ERROR(Fail(st));
      }
    }

    OUTBOXD_RETURN_IF_ERROR(ServeDeliveries());
    now = Clock::now();
    const auto failed =
        producer_ == ProducerState::kFailed ? Source::FailedDeliveries::kHold : Source::FailedDeliveries::kAct;
    if (Status st = source_->Settle(now, failed); !st.ok()) OUTBOXD_RETURN_IF_ERROR(Fail(st));
    // After Settle: what the last reports acknowledged is checkpointed first.
    OUTBOXD_RETURN_IF_ERROR(RecreateProducerWhenReported());
    if (phase_ != Phase::kStopping && producer_ == ProducerState::kHealthy && source_->connected()) {
      if (Status st = source_->Pump(Clock::now()); !st.ok()) OUTBOXD_RETURN_IF_ERROR(Fail(st));
    }
    SampleIfDue(Clock::now());
    UpdateHealth();

    // A failed producer that reported everything reports nothing more: what
    // its sources still hold is produced again on the next start.
    const bool failed_producer_drained = producer_ == ProducerState::kFailed && publisher_->OutstandingCount() == 0;
    if (phase_ == Phase::kStopping &&
        (source_->Drained() || failed_producer_drained || Clock::now() >= stop_deadline_)) {
      break;
    }
    OUTBOXD_RETURN_IF_ERROR(Wait(stop_fd));
  }
  source_->Finish();
  UpdateHealth();
  return stop_reason_;
}

}  // namespace outboxd
