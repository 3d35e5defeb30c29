#pragma once
// Checkpoint: tracks one stream's events from produce to acknowledgement and
// releases positions for checkpointing only over the contiguous acknowledged
// prefix, in the order the events were produced. This is the rule that makes
// outboxd at-least-once: a position is never released before Kafka
// acknowledged it and every event produced before it.
//
// Each tracked event gets a ticket (increasing). Reset() forgets everything not
// yet released, e.g. after a rewind; reports for tickets issued before it are
// ignored as stale. Not thread-safe: owned by the stream's loop.

#include <cstdint>
#include <deque>
#include <vector>

namespace outboxd {

template <typename Position>
class Checkpoint {
 public:
  using Ticket = uint64_t;

  Ticket Add(Position pos) {
    entries_.push_back({pos, State::kPending});
    ++pending_;
    return next_ticket_++;
  }

  // Records Kafka's acknowledgement. Returns false for a stale or unknown
  // ticket (nothing changes).
  bool MarkAcked(Ticket t) {
    Entry* e = Find(t);
    if (e == nullptr || e->state != State::kPending) return false;
    e->state = State::kAcked;
    --pending_;
    return true;
  }

  // Records that the event can never be delivered. It stays in place and
  // blocks release of everything after it. Returns false for a stale ticket.
  bool MarkFailed(Ticket t) {
    Entry* e = Find(t);
    if (e == nullptr || e->state != State::kPending) return false;
    e->state = State::kFailed;
    --pending_;
    return true;
  }

  // The position of a tracked event; nullptr for a stale ticket.
  const Position* PositionOf(Ticket t) const {
    if (!IsTracked(t)) return nullptr;
    return &entries_[t - front_ticket_].pos;
  }

  // The ticket the next Add() will return.
  Ticket next_ticket() const { return next_ticket_; }

  // Removes and returns the positions of the contiguous acknowledged prefix.
  std::vector<Position> TakeReleasable() { return TakeReleasable(next_ticket_); }

  // The same, stopping at `before`: a ticket at or after it is not released
  // even when acknowledged (exactly once: not yet in a committed Kafka
  // transaction).
  std::vector<Position> TakeReleasable(Ticket before) {
    std::vector<Position> out;
    while (!entries_.empty() && entries_.front().state == State::kAcked && front_ticket_ < before) {
      out.push_back(entries_.front().pos);
      entries_.pop_front();
      ++front_ticket_;
    }
    return out;
  }

  // Calls `fn(position)` for every tracked event that is pending or
  // acknowledged (not failed), in ticket order.
  template <typename Fn>
  void ForEachLive(Fn fn) const {
    for (const Entry& e : entries_) {
      if (e.state != State::kFailed) fn(e.pos);
    }
  }

  // Forgets every tracked event; their later reports are stale.
  void Reset() {
    entries_.clear();
    pending_ = 0;
    front_ticket_ = next_ticket_;
  }

  // Acknowledged events still tracked (behind one not yet acknowledged or
  // failed) for which `pred(position)` holds: producing the stream again
  // from its released position sends them a second time.
  template <typename Pred>
  std::size_t CountAcked(Pred pred) const {
    std::size_t n = 0;
    for (const Entry& e : entries_) n += e.state == State::kAcked && pred(e.pos) ? 1 : 0;
    return n;
  }
  // The tickets still waiting for their report.
  std::vector<Ticket> PendingTickets() const {
    std::vector<Ticket> out;
    out.reserve(pending_);
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      if (entries_[i].state == State::kPending) out.push_back(front_ticket_ + i);
    }
    return out;
  }

  bool IsTracked(Ticket t) const { return t >= front_ticket_ && t < next_ticket_; }
  // Events produced but not yet acknowledged.
  std::size_t pending() const { return pending_; }
  // Events tracked: pending plus acknowledged but not yet released.
  std::size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }

 private:
  enum class State : uint8_t { kPending, kAcked, kFailed };
  struct Entry {
    Position pos;
    State state;
  };
  Entry* Find(Ticket t) {
    if (!IsTracked(t)) return nullptr;
    return &entries_[t - front_ticket_];
  }

  std::deque<Entry> entries_;
  Ticket front_ticket_ = 0;  // ticket of entries_.front()
  Ticket next_ticket_ = 0;
  std::size_t pending_ = 0;
};

}  // namespace outboxd
