#pragma once
// GapTracker: the positions below a poll table's cursor that a row may still
// fill — the "outbox gap" — kept as ranges, and the rule for when a range can
// no longer be filled. Pure bookkeeping: no database, no clock of its own; the
// poll source feeds it what PostgreSQL said (GapSnapshot) and reads the ranges
// back by range after every claim. Not thread-safe: owned by one relay loop.
//
// Why it exists. The poll source claims rows past the highest position it has
// claimed (the cursor). A transaction can take a position and commit after
// rows with higher positions were claimed; its row lands below the cursor. If
// that row were found late, a later row of the same key could already be out:
// per-key order would break. So every position the claims skipped is a gap,
// read again with every claim (and merged with the claimed rows by position),
// until nothing can fill it any more:
//
//  - GapFill::kOpenTransactions (a sequence with CACHE 1: identity and serial
//    columns by default). A position is handed out inside the transaction
//    that inserts the row, so a gap can only be filled by a transaction in
//    progress when the gap appeared. The gap resolves once a snapshot's xmin
//    has passed the xmax of the snapshot taken when it appeared — and it was
//    read once more after that — and it is at least `min_life` old (a
//    transaction can take its position a moment before it gets an xid).
//  - GapFill::kOpenSessions (a sequence with CACHE > 1, or positions from an
//    unknown source). A session takes a block of positions and uses them in
//    later transactions, so in addition every session connected when the gap
//    appeared must have disconnected: the session holding a block below the
//    cursor was connected before the claim that passed it.
//
// Nothing expires by age alone, whatever the width of a gap or the number of
// gaps: a wide jump (sequence cache, bulk delete, rolled-back transactions)
// is one range. Past `max_ranges`, the two closest ranges are merged into one
// covering both — a merged range also covers positions already claimed,
// which costs a few extra rows per read but never skips one — so memory and
// query size stay bounded without publishing past a gap.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <unordered_map>
#include <vector>

namespace outboxd {

// What can still fill a gap in a table's ordering column; see above.
enum class GapFill { kOpenTransactions, kOpenSessions };

// What PostgreSQL said right after a claim, before the gaps are read.
struct GapSnapshot {
  // pg_snapshot_xmin of pg_current_snapshot(): every transaction below it
  // has ended.
  uint64_t xmin = 0;
  // Every transaction that may be in progress has an id below this. Not
  // pg_snapshot_xmax alone: that is the newest completed id + 1, and the
  // newest transactions still running lie at or above it — the poll source
  // takes the larger of it and the youngest running id + 1 (FromServer).
  uint64_t xmax = 0;
  // Other sessions connected to the database (pids); used with kOpenSessions.
  std::vector<int> sessions;
  std::chrono::steady_clock::time_point at{};

  // From what the server reports: pg_current_snapshot()'s xmin and xmax, and
  // the youngest transaction id still running (pg_stat_activity.backend_xid
  // or pg_prepared_xacts, 32-bit) if any.
  static GapSnapshot FromServer(uint64_t snapshot_xmin, uint64_t snapshot_xmax,
                                std::optional<uint32_t> youngest_running, std::vector<int> sessions,
                                std::chrono::steady_clock::time_point at);
  // The 64-bit transaction id of a 32-bit one that lies within 2^31 of
  // `reference` (a 64-bit id of the same moment).
  static uint64_t WidenXid(uint32_t xid, uint64_t reference);
};

class GapTracker {
 public:
  using Clock = std::chrono::steady_clock;
  using Position = long long;

  struct Options {
    std::chrono::milliseconds min_life{2000};
    std::size_t max_ranges = 1024;
  };
  // An inclusive range of positions that may still be filled.
  struct Range {
    Position first;
    Position last;
    bool operator==(const Range&) const = default;
  };
  // One row of a round, in the order it is to be produced.
  struct RoundRow {
    enum class From : uint8_t { kGap, kClaim };
    From from;
    int index;  // in its result: the gap read's or the claim's
    Position position;
    bool operator==(const RoundRow&) const = default;
  };

  explicit GapTracker(GapFill fill) : GapTracker(fill, Options{}) {}
  GapTracker(GapFill fill, Options options);

  GapFill fill() const { return fill_; }
  // The table's sequence changed (ALTER SEQUENCE … CACHE). Gaps tracked
  // under kOpenTransactions then also wait for every session connected at
  // the next round.
  void SetFill(GapFill fill);

  // The highest position claimed; the next claim reads past it. nullopt
  // before the first claim and after Reset(): the claim reads from the start.
  std::optional<Position> cursor() const { return cursor_; }

  // A round, as the poll source runs it:
  //   1. claim the rows past cursor();
  //   2. BeginRound() with the snapshot taken right after the claim — or,
  //      when NeedsSnapshot() says no (no gaps, and the claimed rows follow
  //      the cursor without a hole: the busy steady state), without one;
  //   3. read the rows in Ranges() — after the snapshot, so that whatever
  //      committed before the claim is seen;
  //   4. Order() the claimed and the gap rows;
  //   5. Took() each row as it is produced, in that order, until done or it
  //      cannot go on (librdkafka's queue is full);
  //   6. EndRound().
  void BeginRound(const GapSnapshot& after_claim);
  void BeginRoundWithoutSnapshot();
  // Whether a round with these claimed positions (ascending) needs the
  // snapshot: when there are gaps to settle or the claim skips a position.
  bool NeedsSnapshot(const std::vector<Position>& claimed) const;
  // The rows to produce, by position: every gap row (all below the cursor)
  // before every claimed row. When the gap read stopped at its row limit,
  // rows of a gap above its last row may be unread: then the claimed rows
  // wait for the next round. Positions in ascending order, as read.
  std::vector<RoundRow> Order(const std::vector<Position>& claimed, const std::vector<Position>& from_gaps,
                              bool gap_read_hit_limit);
  // The row was produced (or was already in flight): a gap row fills its
  // gap; a claimed row moves the cursor, and the positions it skipped
  // become gaps at EndRound().
  void Took(const RoundRow& row);
  // Settles the gaps nothing can fill any more, if every row of them the gap
  // read returned was taken, then adds the positions this round's claimed
  // rows skipped.
  void EndRound();

  // Forgets the cursor and every gap (a rewind: claims start again from the
  // lowest unsent row). Sessions seen stay known.
  void Reset();

  bool Contains(Position position) const;
  bool empty() const { return gaps_.empty(); }
  std::size_t size() const { return gaps_.size(); }
  // The gap ranges in position order.
  std::vector<Range> Ranges() const;
  // When the oldest gap still tracked appeared (nullopt when there are none).
  std::optional<Clock::time_point> OldestSince() const;
  // How many times ranges had to be merged to stay within max_ranges.
  uint64_t merges() const { return merges_; }

 private:
  // What a gap waits for; merging two gaps keeps the later of each.
  struct Tag {
    uint64_t xmax = 0;                // transactions below this must have ended
    uint64_t session_generation = 0;  // sessions seen at or before this must be gone
    Clock::time_point since{};
  };
  struct Gap {
    Position last;
    Tag tag;
  };
  bool Resolved(const Tag& tag) const;
  // Drops resolved gaps lying wholly at or below `read_up_to`.
  void Settle(Position read_up_to);
  // Adds every position of [first, last] not already a gap, tagged with the
  // current round.
  void AddSkipped(Position first, Position last);
  void Fill(Position position);
  void MergeClosest();

  GapFill fill_;
  const Options options_;
  std::map<Position, Gap> gaps_;  // by first position; disjoint; all below cursor_
  std::optional<Position> cursor_;

  // The current round.
  bool with_snapshot_ = false;
  GapSnapshot snapshot_{};
  uint64_t round_ = 0;
  std::vector<RoundRow> order_;   // as returned by Order()
  std::size_t taken_ = 0;         // rows of order_ taken so far
  Position gaps_read_up_to_ = 0;  // every gap row at or below it was in order_
  std::vector<Range> skipped_;    // added at EndRound()

  // kOpenSessions: the round in which each session connected to the
  // database was first seen, and the oldest of them.
  std::unordered_map<int, uint64_t> session_seen_;
  uint64_t oldest_session_generation_;  // max: none connected
  uint64_t merges_ = 0;
};

}  // namespace outboxd
