#pragma once
// RewindGate: the rewind protocol of one stream of events (a poll table, the
// cdc slot), the same for every source. When a delivery failed but may
// succeed, the producer was recreated or the stream's position was lost, the
// stream forgets what it has in flight and produces again from its last
// acknowledged position — but only once every record of the old generation
// has been reported, so that no record is in librdkafka's queue twice
// (duplicates stay bounded by what was in flight), and, after a failed
// delivery, only after a growing pause (librdkafka had already retried within
// message.timeout.ms). What "forget" and "again" mean is the source's; when
// it may go on is decided here. Not thread-safe: owned by one loop.

#include <chrono>
#include <cstdint>

#include "common/backoff.h"

namespace outboxd {

class RewindGate {
 public:
  using Clock = std::chrono::steady_clock;
  enum class Pause : uint8_t { kNone, kBackOff };

  // One record handed to librdkafka / its report came back (any generation).
  void Produced() { ++outstanding_; }
  void Reported() {
    if (outstanding_ > 0) --outstanding_;
  }
  // The producer was recreated: its queue, and every report still owed, are gone.
  void ProducerLost() { outstanding_ = 0; }
  // A delivery was acknowledged: the next rewind pauses briefly again.
  void Delivered() { backoff_.Reset(); }

  // Starts a rewind (or extends one under way); returns the pause before
  // producing again (zero without kBackOff).
  std::chrono::milliseconds Start(Pause pause, Clock::time_point now) {
    draining_ = true;
    started_ = true;
    if (pause == Pause::kNone) return std::chrono::milliseconds(0);
    const std::chrono::milliseconds delay = backoff_.Next();
    paused_until_ = now + delay;
    return delay;
  }
  // Whether a rewind is under way (not yet taken by TakeFinished()).
  bool rewinding() const { return started_; }
  // Ends the rewind once the old generation is reported and the pause is
  // over; true when the stream may produce (again).
  bool Ready(Clock::time_point now) {
    if (draining_ && outstanding_ == 0) draining_ = false;
    return !draining_ && now >= paused_until_;
  }
  // True exactly once per rewind: when Ready() first allows producing again
  // after Start() (the source restarts from its last acknowledged position
  // then).
  bool TakeFinished(Clock::time_point now) {
    if (!started_ || !Ready(now)) return false;
    started_ = false;
    return true;
  }
  uint64_t outstanding() const { return outstanding_; }
  Clock::time_point paused_until() const { return paused_until_; }

 private:
  uint64_t outstanding_ = 0;
  bool draining_ = false;
  bool started_ = false;
  Clock::time_point paused_until_{};
  Backoff backoff_{std::chrono::milliseconds(200), std::chrono::seconds(30)};
};

}  // namespace outboxd
