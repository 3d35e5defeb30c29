#pragma once
// Source: where events come from, as the PipelineRunner drives it — the poll
// tables (relay/poll_source.h) or the cdc replication slot (cdc/cdc_source.h).
// A third kind of input would be a third Source and nothing else.
//
// The runner owns the loop, the Publisher, reconnect backoff, the stop and
// its bounded drain, the sample cadence, health and lifecycle; it calls the
// source from its one thread, in this order every turn:
//
//   Connect()       when not connected (after the backoff)
//   OnDelivery()    for each delivery report of the source's records
//   Settle()        act on failed deliveries, checkpoint what Kafka acknowledged
//   Pump()          produce what is ready (unless stopping)
//   Sample()        every kSampleInterval
//   CheckHealth()   every turn
//
// then waits on WaitFds() and the runner's own until NextWakeup(). A source
// returns PostgreSQL-side errors; the runner decides what they mean
// (pipeline/failure.h) and calls Disconnect() when it reconnects. Sources
// are not thread-safe: one runner thread each.

#include <poll.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "pipeline/metrics.h"
#include "pipeline/publisher.h"

namespace outboxd {

class Source {
 public:
  using Clock = std::chrono::steady_clock;

  // What /healthz, /readyz and the log hear about a source each turn.
  struct Health {
    bool running = false;  // its tables or stream are running (or standing by)
    std::string problem;   // why not, when not running
  };

  virtual ~Source() = default;

  // "poll" or "cdc": the relay's name in health reports and logs.
  virtual std::string_view name() const = 0;

  // The producer every record of this source goes through, and the relay's
  // health (for SetInLongCall() around a blocking call); called once, before
  // anything else. Both outlive the source's use of them.
  virtual void Attach(Publisher& publisher, RelayHealth& health) = 0;

  // Connects (or reconnects) to PostgreSQL and checks what the source needs.
  // `first`: no Connect() has succeeded before. OK also when another
  // instance holds the tables or slot: the source then stands by.
  [[nodiscard]] virtual Status Connect(bool first) = 0;
  // Drops the connections after an error; what is in flight stays tracked.
  virtual void Disconnect() = 0;
  virtual bool connected() const = 0;

  // A delivery report of one of its records (its own tokens).
  virtual void OnDelivery(const DeliveryReport& report) = 0;
  // What Settle() does with the turn's failed deliveries.
  enum class FailedDeliveries : uint8_t {
    kAct,   // rewind, dead-letter or halt
    kHold,  // the producer failed fatally: keep them for OnProducerLost()
  };
  // After the turn's reports: handles failed deliveries (rewind, dead
  // letter, halt) and checkpoints what Kafka acknowledged — deletes or marks
  // rows, records and confirms the slot position.
  [[nodiscard]] virtual Status Settle(Clock::time_point now, FailedDeliveries failed) = 0;
  // The producer failed fatally, the reports of what it had sent are in (or
  // it gave up waiting), and it is being recreated: every record not yet
  // acknowledged, and every failure held, is produced again. Permanent when
  // the source cannot go on: its Kafka transaction overran
  // (KafkaTransactions::ProducerLost()).
  [[nodiscard]] virtual Status OnProducerLost() = 0;
  // Produces what is ready, within the in-flight bound: claims rows, reads
  // the stream.
  [[nodiscard]] virtual Status Pump(Clock::time_point now) = 0;
  // The periodic sample: pending rows, slot lag.
  [[nodiscard]] virtual Status Sample() = 0;

  // Descriptors to wait on (its sockets), and when it next has work.
  virtual void WaitFds(std::vector<pollfd>& fds, bool stopping) const = 0;
  virtual Clock::time_point NextWakeup(Clock::time_point now) const = 0;

  // Also refreshes the source's per-turn gauges (events in flight).
  virtual Health CheckHealth() = 0;
  // Events handed to Kafka and not yet acknowledged.
  virtual std::size_t in_flight() const = 0;
  // While stopping: nothing left that could still be acknowledged and
  // checkpointed.
  virtual bool Drained() const = 0;
  // The last call: checkpoint what was acknowledged, report the final
  // position, log what is left to be published again on the next start.
  virtual void Finish() = 0;
};

}  // namespace outboxd
