#pragma once
// What outboxd does about a failure: the one place that maps an error — a
// PostgreSQL or replication error a source returns, a produce librdkafka
// refused, a delivery report — to an action. The PipelineRunner acts on the
// PostgreSQL side; the sources act on their records (they know the record,
// the runner does not). Pure functions.

#include <cstdint>
#include <string_view>

#include "common/status.h"
#include "pipeline/publisher.h"

namespace outboxd {

enum class FailureAction : uint8_t {
  kNone,              // delivered, or nothing went wrong
  kWaitForRoom,       // librdkafka's queue is full: serve reports, then produce it again
  kReconnect,         // PostgreSQL unreachable, a query failed, the connection was lost or the
                      // schema does not match (yet): reconnect with backoff; what is in flight
                      // stays tracked
  kRecreateProducer,  // librdkafka's idempotent producer raised a fatal error: a new producer,
                      // and every source rewinds
  kRewind,            // a delivery failed but may succeed: after a growing pause, produce again
                      // from the last acknowledged position
  kDeadLetter,        // Kafka refuses this record for good: to the dead-letter topic
  kHalt,              // refused for good and no dead-letter topic takes it (or the dead-letter
                      // record itself was refused): the stream stops there, nothing after it is
                      // checkpointed
  kStop,              // outboxd cannot go on: the configuration does not match the database at
                      // start-up (exit 78), a replication slot was lost, an event cannot be
                      // decoded (exit 69)
};

std::string_view FailureActionName(FailureAction action);

// Whether a source has connected successfully before: a mismatch found at
// start-up stops outboxd (exit 78), one found later (a column dropped, a
// privilege revoked while running) is retried until it is fixed.
enum class StartState : uint8_t { kStarting, kStarted };

// A Status from the PostgreSQL side (connect, claim, checkpoint, replication
// stream) or from the Publisher.
FailureAction ActionFor(const Status& status, StartState state);

// A delivery report. `dead_letter_record`: the report is for a record
// written to the dead-letter topic; `has_dead_letter_topic`: the event's
// source configures one.
FailureAction ActionFor(DeliveryOutcome outcome, bool dead_letter_record, bool has_dead_letter_topic);

// A record librdkafka refused at produce time (Publisher::Produce), for the
// same two facts.
FailureAction ActionForProduce(const Status& status, bool dead_letter_record, bool has_dead_letter_topic);

}  // namespace outboxd
