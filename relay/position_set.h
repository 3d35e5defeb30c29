#pragma once
// PositionSet: a set of row positions (an outbox table's ordering column)
// held as maximal runs of consecutive values. The rows a poll stream has in
// flight come mostly in runs, so the million rows of one PostgreSQL
// transaction waiting for their Kafka commit (exactly once) cost a few
// entries rather than a million. Not thread-safe.

#include <cstddef>
#include <iterator>
#include <map>

namespace outboxd {

class PositionSet {
 public:
  bool contains(long long p) const {
    auto it = runs_.upper_bound(p);  // the first run starting after p
    return it != runs_.begin() && std::prev(it)->second >= p;
  }

  // Adds `p`; nothing when it is there already.
  void insert(long long p) {
    auto next = runs_.upper_bound(p);
    if (next != runs_.begin()) {
      auto run = std::prev(next);
      if (run->second >= p) return;  // held already
      if (run->second == p - 1) {    // extends the run before it
        run->second = p;
        if (next != runs_.end() && next->first == p + 1) {  // and joins the one after it
          run->second = next->second;
          runs_.erase(next);
        }
        ++size_;
        return;
      }
    }
    if (next != runs_.end() && next->first == p + 1) {  // extends the run after it downwards
      const long long last = next->second;
      runs_.erase(next);
      runs_.emplace(p, last);
    } else {
      runs_.emplace(p, p);
    }
    ++size_;
  }

  // Removes `p`; nothing when it is not there.
  void erase(long long p) {
    auto next = runs_.upper_bound(p);
    if (next == runs_.begin()) return;
    auto run = std::prev(next);
    const long long first = run->first;
    const long long last = run->second;
    if (last < p) return;
    runs_.erase(run);
    if (first < p) runs_.emplace(first, p - 1);
    if (p < last) runs_.emplace(p + 1, last);
    --size_;
  }

  void clear() {
    runs_.clear();
    size_ = 0;
  }
  // Positions held (not runs).
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::size_t runs() const { return runs_.size(); }

 private:
  std::map<long long, long long> runs_;  // first -> last, disjoint, never adjacent
  std::size_t size_ = 0;
};

}  // namespace outboxd
