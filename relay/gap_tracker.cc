#include "relay/gap_tracker.h"

#include <algorithm>
#include <cassert>
#include <limits>

namespace outboxd {

namespace {

constexpr uint64_t kNoSession = std::numeric_limits<uint64_t>::max();
constexpr long long kFirstPosition = std::numeric_limits<long long>::min();
constexpr long long kLastPosition = std::numeric_limits<long long>::max();

// b - a for a <= b, exact for any two positions.
uint64_t Distance(long long a, long long b) { return static_cast<uint64_t>(b) - static_cast<uint64_t>(a); }

}  // namespace

GapTracker::GapTracker(GapFill fill, Options options)
    : fill_(fill),
      options_{options.min_life, std::max<std::size_t>(options.max_ranges, 4)},
      oldest_session_generation_(kNoSession) {}

uint64_t GapSnapshot::WidenXid(uint32_t xid, uint64_t reference) {
  const uint64_t epoch = reference & ~uint64_t{0xffffffff};
  uint64_t full = epoch | xid;
  // Take the candidate of this epoch, the one before or the one after that
  // is closest to the reference.
  const uint64_t half = uint64_t{1} << 31;
  if (full > reference && full - reference > half && full >= (uint64_t{1} << 32)) {
    full -= uint64_t{1} << 32;
  } else if (full < reference && reference - full > half) {
    full += uint64_t{1} << 32;
  }
  return full;
}

GapSnapshot GapSnapshot::FromServer(uint64_t snapshot_xmin, uint64_t snapshot_xmax,
                                    std::optional<uint32_t> youngest_running, std::vector<int> sessions,
                                    std::chrono::steady_clock::time_point at) {
  GapSnapshot s{snapshot_xmin, snapshot_xmax, std::move(sessions), at};
  if (youngest_running) s.xmax = std::max(s.xmax, WidenXid(*youngest_running, snapshot_xmax) + 1);
  return s;
}

void GapTracker::SetFill(GapFill fill) {
  if (fill == fill_) return;
  fill_ = fill;
  if (fill_ != GapFill::kOpenSessions) return;
  // Sessions were not watched: the ones seen at the next round may hold
  // any gap.
  for (auto& [first, gap] : gaps_) gap.tag.session_generation = round_ + 1;
}

bool GapTracker::NeedsSnapshot(const std::vector<Position>& claimed) const {
  if (!gaps_.empty() || !cursor_) return true;
  Position expected = *cursor_;
  for (Position p : claimed) {
    if (expected == kLastPosition || p != expected + 1) return true;
    expected = p;
  }
  return false;
}

void GapTracker::BeginRoundWithoutSnapshot() {
  with_snapshot_ = false;
  order_.clear();
  taken_ = 0;
  skipped_.clear();
  gaps_read_up_to_ = kLastPosition;
}

void GapTracker::BeginRound(const GapSnapshot& after_claim) {
  with_snapshot_ = true;
  snapshot_ = after_claim;
  ++round_;
  order_.clear();
  taken_ = 0;
  skipped_.clear();
  gaps_read_up_to_ = kLastPosition;
  if (fill_ != GapFill::kOpenSessions) return;
  std::unordered_map<int, uint64_t> seen;
  seen.reserve(after_claim.sessions.size());
  uint64_t oldest = kNoSession;
  for (int pid : after_claim.sessions) {
    // A pid seen before keeps its round — also when the session behind it
    // ended and another one reused the pid meanwhile, which only makes gaps
    // live longer.
    auto it = session_seen_.find(pid);
    const uint64_t generation = it == session_seen_.end() ? round_ : it->second;
    seen.emplace(pid, generation);
    oldest = std::min(oldest, generation);
  }
  session_seen_ = std::move(seen);
  oldest_session_generation_ = oldest;
}

std::vector<GapTracker::RoundRow> GapTracker::Order(const std::vector<Position>& claimed,
                                                    const std::vector<Position>& from_gaps, bool gap_read_hit_limit) {
  order_.clear();
  taken_ = 0;
  order_.reserve(from_gaps.size() + claimed.size());
  for (std::size_t i = 0; i < from_gaps.size(); ++i) {
    order_.push_back({RoundRow::From::kGap, static_cast<int>(i), from_gaps[i]});
  }
  if (gap_read_hit_limit && !from_gaps.empty()) {
    gaps_read_up_to_ = from_gaps.back();
  } else {
    gaps_read_up_to_ = kLastPosition;
    for (std::size_t i = 0; i < claimed.size(); ++i) {
      order_.push_back({RoundRow::From::kClaim, static_cast<int>(i), claimed[i]});
    }
  }
  return order_;
}

void GapTracker::Took(const RoundRow& row) {
  ++taken_;
  if (row.from == RoundRow::From::kGap) {
    Fill(row.position);
    return;
  }
  // Everything between the cursor and this row was skipped: positions of
  // transactions still open, rolled back, or never used. Before the first
  // claim every lower position counts, for transactions open at start-up.
  const Position from = cursor_ ? *cursor_ + 1 : kFirstPosition;
  if (row.position > from) skipped_.push_back({from, row.position - 1});
  if (!cursor_ || row.position > *cursor_) cursor_ = row.position;
}

void GapTracker::EndRound() {
  if (!with_snapshot_) {
    // Nothing to settle and nothing skipped (NeedsSnapshot() said so): there
    // is no snapshot to tag new gaps with.
    assert(gaps_.empty() && skipped_.empty());
    order_.clear();
    taken_ = 0;
    return;
  }
  Position read_up_to = gaps_read_up_to_;
  bool settle = true;
  if (taken_ < order_.size() && order_[taken_].from == RoundRow::From::kGap) {
    // Stopped inside the gap rows: the gaps from there up were not read
    // through.
    const Position next = order_[taken_].position;
    if (next == kFirstPosition)
      settle = false;
    else
      read_up_to = std::min(read_up_to, next - 1);
  }
  if (settle) Settle(read_up_to);
  for (const Range& r : skipped_) AddSkipped(r.first, r.last);
  skipped_.clear();
  order_.clear();
  taken_ = 0;
}

void GapTracker::Reset() {
  gaps_.clear();
  cursor_.reset();
  order_.clear();
  taken_ = 0;
  skipped_.clear();
}

bool GapTracker::Resolved(const Tag& tag) const {
  if (snapshot_.xmin < tag.xmax) return false;
  if (snapshot_.at - tag.since < options_.min_life) return false;
  if (fill_ == GapFill::kOpenSessions && oldest_session_generation_ <= tag.session_generation) {
    return false;
  }
  return true;
}

void GapTracker::Settle(Position read_up_to) {
  std::erase_if(gaps_,
                [&](const auto& entry) { return entry.second.last <= read_up_to && Resolved(entry.second.tag); });
}

void GapTracker::AddSkipped(Position first, Position last) {
  if (last < first) return;
  const Tag tag{snapshot_.xmax, round_, snapshot_.at};
  // Only the parts not already tracked are added.
  Position from = first;
  auto it = gaps_.upper_bound(first);
  if (it != gaps_.begin()) {
    auto prev = std::prev(it);
    if (prev->second.last >= from) {
      if (prev->second.last >= last) return;
      from = prev->second.last + 1;
    }
  }
  std::vector<Range> pieces;
  for (; it != gaps_.end() && it->first <= last; ++it) {
    if (it->first > from) pieces.push_back({from, it->first - 1});
    if (it->second.last >= last) break;
    from = it->second.last + 1;
  }
  if (it == gaps_.end() || it->first > last) pieces.push_back({from, last});
  for (const Range& r : pieces) gaps_.emplace(r.first, Gap{r.last, tag});
  if (gaps_.size() > options_.max_ranges) MergeClosest();
}

void GapTracker::Fill(Position position) {
  auto it = gaps_.upper_bound(position);
  if (it == gaps_.begin()) return;
  --it;
  const Position first = it->first;
  const Gap gap = it->second;
  if (gap.last < position) return;
  gaps_.erase(it);
  if (first < position) gaps_.emplace(first, Gap{position - 1, gap.tag});
  if (position < gap.last) gaps_.emplace(position + 1, Gap{gap.last, gap.tag});
  if (gaps_.size() > options_.max_ranges) MergeClosest();
}

void GapTracker::MergeClosest() {
  // Merge down to three quarters of the limit in one pass, so that a claim
  // adding many gaps does not merge once per gap: the (size - target)
  // smallest distances between neighbours are closed.
  const std::size_t target = std::max<std::size_t>(1, options_.max_ranges * 3 / 4);
  if (gaps_.size() <= target) return;
  std::vector<uint64_t> distances;
  distances.reserve(gaps_.size() - 1);
  for (auto it = gaps_.begin(), next = std::next(it); next != gaps_.end(); ++it, ++next) {
    distances.push_back(Distance(it->second.last, next->first));
  }
  std::size_t to_close = gaps_.size() - target;
  std::vector<uint64_t> sorted = distances;
  std::nth_element(sorted.begin(), sorted.begin() + static_cast<long>(to_close - 1), sorted.end());
  const uint64_t threshold = sorted[to_close - 1];
  // Distances below the threshold are all closed; ties only as many as needed.
  std::size_t below = static_cast<std::size_t>(
      std::count_if(distances.begin(), distances.end(), [&](uint64_t d) { return d < threshold; }));
  std::size_t ties = to_close - below;

  std::map<Position, Gap> merged;
  auto it = gaps_.begin();
  Position first = it->first;
  Gap current = it->second;
  std::size_t i = 0;
  for (++it; it != gaps_.end(); ++it, ++i) {
    const uint64_t d = distances[i];
    const bool close = d < threshold || (d == threshold && ties > 0);
    if (close) {
      if (d == threshold) --ties;
      current.last = it->second.last;
      current.tag.xmax = std::max(current.tag.xmax, it->second.tag.xmax);
      current.tag.session_generation = std::max(current.tag.session_generation, it->second.tag.session_generation);
      current.tag.since = std::max(current.tag.since, it->second.tag.since);
    } else {
      merged.emplace(first, current);
      first = it->first;
      current = it->second;
    }
  }
  merged.emplace(first, current);
  gaps_ = std::move(merged);
  ++merges_;
}

bool GapTracker::Contains(Position position) const {
  auto it = gaps_.upper_bound(position);
  if (it == gaps_.begin()) return false;
  return std::prev(it)->second.last >= position;
}

std::vector<GapTracker::Range> GapTracker::Ranges() const {
  std::vector<Range> out;
  out.reserve(gaps_.size());
  for (const auto& [first, gap] : gaps_) out.push_back({first, gap.last});
  return out;
}

std::optional<GapTracker::Clock::time_point> GapTracker::OldestSince() const {
  std::optional<Clock::time_point> oldest;
  for (const auto& [first, gap] : gaps_) {
    if (!oldest || gap.tag.since < *oldest) oldest = gap.tag.since;
  }
  return oldest;
}

}  // namespace outboxd
