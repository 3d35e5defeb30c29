#include "pipeline/kafka_transactions.h"

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <utility>

#include <prometheus/counter.h>
#include <prometheus/histogram.h>

#include "common/failpoint.h"
#include "common/logging.h"

namespace outboxd {

namespace {

using std::chrono::milliseconds;

// Each call of a commit or an abort waits at most this long, so the loop
// turns (reports, keepalives) while Kafka takes longer.
constexpr milliseconds kAdvanceTimeout{100};

// librdkafka's default transaction.timeout.ms.
constexpr milliseconds kDefaultTransactionTimeout{60000};

milliseconds TransactionTimeout(const KafkaConfig& kafka) {
  const auto it = kafka.properties.find("transaction.timeout.ms");
  if (it == kafka.properties.end()) return kDefaultTransactionTimeout;
  return milliseconds(std::strtoll(it->second.c_str(), nullptr, 10));  // checked by librdkafka at start-up
}

Status Ended(const std::string& stream, const char* call, const TxnResult& r) {
  return Status::Fatal("Kafka transaction of \"" + stream + "\": " + call + " failed (" +
                       std::string(TxnOutcomeName(r.outcome)) + "): " + r.error);
}

}  // namespace

KafkaTransactions::KafkaTransactions(const KafkaConfig& kafka, std::string stream, Metrics& metrics)
    : kafka_(kafka),
      stream_(std::move(stream)),
      timeout_(TransactionTimeout(kafka)),
      metrics_(metrics.Transactions(stream_)),
      commits_until_kill_(FailpointValue("kill_after_kafka_commits").value_or(-1)),
      commit_calls_until_kill_(FailpointValue("kill_before_kafka_commits").value_or(-1)) {}

KafkaTransactions::~KafkaTransactions() = default;

std::string KafkaTransactions::PollStream(const std::string& system_id, const std::string& database,
                                          std::vector<std::string> tables) {
  std::sort(tables.begin(), tables.end());
  std::string id = "outboxd.poll." + system_id + "." + database + ".";
  for (std::size_t i = 0; i < tables.size(); ++i) id += (i == 0 ? "" : ",") + tables[i];
  return id;
}

Result<std::optional<std::string>> KafkaTransactions::Initialise(Publisher& publisher, milliseconds timeout) {
  const Clock::time_point deadline = Clock::now() + timeout;
  auto remaining = [&] { return std::max(milliseconds(1), std::chrono::ceil<milliseconds>(deadline - Clock::now())); };
  if (state_ == State::kUninitialised) {
    OUTBOXD_RETURN_IF_ERROR(publisher.UseTransactionalId(stream_));
    TxnResult r = publisher.InitTransactions(remaining());
    while (r.outcome == TxnOutcome::kInProgress && Clock::now() < deadline) {
      publisher.Poll(milliseconds(10));
      OUTBOXD_RETURN_IF_ERROR(publisher.CheckRefused());
      r = publisher.InitTransactions(remaining());
    }
    if (r.outcome == TxnOutcome::kInProgress) {
      return Status::Retriable("Kafka transaction of \"" + stream_ + "\": initialising timed out: " + r.error);
    }
    if (r.outcome != TxnOutcome::kDone) return Ended(stream_, "initialising", r);
    state_ = State::kIdle;
  }
  if (state_ != State::kIdle) {
    return Status::Internal("Kafka transaction of \"" + stream_ + "\": position read while a transaction is open");
  }

  if (store_ == nullptr) {
    auto store = PositionStore::Create(kafka_, kafka_.position_topic);
    if (!store.ok()) return store.status();
    OUTBOXD_RETURN_IF_ERROR((*store)->EnsureTopic(remaining()));
    store_ = std::move(store).value();
  }
  auto last = store_->ReadLast(stream_, store_hint_, remaining());
  if (!last.ok()) return last.status().Prefixed("reading the position of \"" + stream_ + "\"");
  events_ = 0;
  if (!last->has_value()) return std::optional<std::string>();
  store_hint_ = (*last)->offset;
  return std::optional<std::string>((*last)->value);
}

Status KafkaTransactions::Begin(Publisher& publisher, Clock::time_point now) {
  if (state_ == State::kOpen) return Status::Ok();
  if (state_ != State::kIdle) {
    return Status::Internal("Kafka transaction of \"" + stream_ + "\": a record produced while it is not open");
  }
  const TxnResult r = publisher.BeginTransaction();
  if (r.outcome != TxnOutcome::kDone) return Ended(stream_, "beginning", r);
  state_ = State::kOpen;
  opened_at_ = now;
  events_ = 0;
  bytes_ = 0;
  return Status::Ok();
}

bool KafkaTransactions::CommitDue(Clock::time_point now) const {
  if (state_ != State::kOpen) return false;
  return SizeReached() || now >= opened_at_ + kafka_.transaction_max_wait;
}

bool KafkaTransactions::SizeReached() const {
  return state_ == State::kOpen && (events_ >= kafka_.transaction_max_events || bytes_ >= kafka_.transaction_max_bytes);
}

std::optional<KafkaTransactions::Clock::time_point> KafkaTransactions::CommitDueAt() const {
  if (state_ != State::kOpen) return std::nullopt;
  return opened_at_ + kafka_.transaction_max_wait;
}

Record KafkaTransactions::PositionRecord(const std::string& position) const {
  return store_->PositionRecord(stream_, position);
}

void KafkaTransactions::StartCommit() {
  state_ = State::kCommitting;
  commit_started_at_ = Clock::now();
  commit_called_ = false;
}

void KafkaTransactions::StartAbort() {
  // A commit still waiting for its records' acknowledgements has not asked
  // Kafka anything: it can still turn into an abort. (It must: a record
  // refused inside the transaction leaves the records after it queued until
  // the abort purges them, so that commit would wait for ever.)
  if (state_ == State::kOpen || (state_ == State::kCommitting && !commit_called_)) state_ = State::kAborting;
}

Result<KafkaTransactions::Step> KafkaTransactions::Advance(Publisher& publisher) {
  switch (state_) {
    case State::kUninitialised:
    case State::kIdle:
    case State::kOpen:
      return Step::kNothing;
    case State::kCommitting: {
      if (publisher.OutstandingCount() > 0) return Step::kPending;  // the commit starts once all are acknowledged
      if (!commit_called_ && commit_calls_until_kill_ > 0 && --commit_calls_until_kill_ == 0) {
        std::raise(SIGKILL);  // the failpoint
      }
      commit_called_ = true;
      const TxnResult r = publisher.CommitTransaction(kAdvanceTimeout);
      switch (r.outcome) {
        case TxnOutcome::kDone:
          state_ = State::kIdle;
          metrics_.committed.Increment();
          metrics_.events.Observe(static_cast<double>(events_));
          metrics_.commit_seconds.Observe(std::chrono::duration<double>(Clock::now() - commit_started_at_).count());
          Logger("kafka")->debug("committed the Kafka transaction of \"{}\": {} records, open {} ms, committing {} ms",
                                 stream_, events_,
                                 std::chrono::duration_cast<milliseconds>(Clock::now() - opened_at_).count(),
                                 std::chrono::duration_cast<milliseconds>(Clock::now() - commit_started_at_).count());
          if (commits_until_kill_ > 0 && --commits_until_kill_ == 0) std::raise(SIGKILL);  // the failpoint
          return Step::kCommitted;
        case TxnOutcome::kInProgress:
          return Step::kPending;
        case TxnOutcome::kAbort:
          Logger("kafka")->warn("Kafka transaction of \"{}\" could not commit and is aborted: {}", stream_, r.error);
          state_ = State::kAborting;
          return Advance(publisher);
        case TxnOutcome::kFenced:
          if (Status overrun = Overrun(Clock::now()); !overrun.ok()) return overrun;
          return Ended(stream_, "committing", r);
        case TxnOutcome::kFatal:
          return Ended(stream_, "committing", r);
      }
      break;
    }
    case State::kAborting: {
      const TxnResult r = publisher.AbortTransaction(kAdvanceTimeout);
      switch (r.outcome) {
        case TxnOutcome::kDone:
          state_ = State::kIdle;
          metrics_.aborted.Increment();
          return Step::kAborted;
        case TxnOutcome::kInProgress:
          return Step::kPending;
        case TxnOutcome::kAbort:
        case TxnOutcome::kFenced:
        case TxnOutcome::kFatal:
          return Ended(stream_, "aborting", r);
      }
      break;
    }
  }
  return Step::kNothing;
}

Status KafkaTransactions::Overrun(Clock::time_point now) const {
  if (state_ != State::kOpen && state_ != State::kCommitting) return Status::Ok();
  // Until the commit was asked for: a commit waiting for acknowledgements
  // (a broker outage) is not the transaction's size.
  const Clock::time_point producing_until = state_ == State::kOpen ? now : commit_started_at_;
  if (producing_until - opened_at_ < timeout_) return Status::Ok();
  return Status::Permanent(
      "Kafka transaction of \"" + stream_ + "\" was open for " +
      std::to_string(std::chrono::duration_cast<milliseconds>(now - opened_at_).count()) + " ms with " +
      std::to_string(events_) + " records, longer than transaction.timeout.ms (" + std::to_string(timeout_.count()) +
      " ms), and the broker aborted it; one PostgreSQL transaction is never split, so raise "
      "transaction.timeout.ms in [kafka.properties] (at most the broker's transaction.max.timeout.ms)");
}

Status KafkaTransactions::ProducerLost(Clock::time_point now) {
  Status overrun = Overrun(now);
  state_ = State::kUninitialised;
  return overrun;
}

Result<KafkaTransactions::Step> KafkaTransactions::EndAtShutdown(Publisher& publisher, milliseconds timeout) {
  StartAbort();
  const Clock::time_point deadline = Clock::now() + timeout;
  Result<Step> step = Step::kPending;
  while (step.ok() && *step == Step::kPending && Clock::now() < deadline) step = Advance(publisher);
  return step;
}

}  // namespace outboxd
