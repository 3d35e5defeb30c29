#pragma once
// Backoff: capped exponential backoff with full jitter, for reconnecting to
// PostgreSQL and retrying Kafka. Each failure doubles the ceiling up to `max`;
// the delay is drawn uniformly from [ceiling/2, ceiling] so several instances
// do not retry in lock-step. Not thread-safe.

#include <algorithm>
#include <chrono>
#include <random>

namespace outboxd {

class Backoff {
 public:
  Backoff(std::chrono::milliseconds initial, std::chrono::milliseconds max)
      : initial_(initial), max_(max), rng_(std::random_device{}()) {}

  // The delay before the next attempt; grows on every call.
  std::chrono::milliseconds Next() {
    const std::chrono::milliseconds grown(initial_.count() << std::min(attempts_, 20));
    const std::chrono::milliseconds ceiling = std::min(max_, grown);
    ++attempts_;
    std::uniform_int_distribution<long long> dist(ceiling.count() / 2, ceiling.count());
    return std::chrono::milliseconds(dist(rng_));
  }
  void Reset() { attempts_ = 0; }
  int attempts() const { return attempts_; }

 private:
  std::chrono::milliseconds initial_;
  std::chrono::milliseconds max_;
  int attempts_ = 0;
  std::mt19937_64 rng_;
};

}  // namespace outboxd
