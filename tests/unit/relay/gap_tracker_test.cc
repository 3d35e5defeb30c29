// GapTracker without a database. A small model of an outbox table — sessions,
// transactions with xids, a sequence with a cache, snapshots — stands in for
// PostgreSQL, and each Round() does what the poll source does: claim past the
// cursor, take the snapshot, read the gaps, produce in the tracker's order.
// The tests then read the order in which rows were published.
#include "relay/gap_tracker.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace outboxd {
namespace {

using namespace std::chrono_literals;
using Position = GapTracker::Position;
using Range = GapTracker::Range;
using From = GapTracker::RoundRow::From;

// An outbox table as the poll source sees it through SQL.
class ModelTable {
 public:
  explicit ModelTable(int cache = 1) : cache_(cache) {}

  struct Session {
    int pid;
    std::vector<Position> cached;  // positions this session holds, next first
    uint64_t xid = 0;              // of its open transaction; 0: none
  };
  int Connect() {
    sessions_[next_pid_] = Session{next_pid_, {}, 0};
    return next_pid_++;
  }
  void Disconnect(int pid) {
    if (sessions_[pid].xid != 0) Rollback(pid);
    sessions_.erase(pid);  // its cached positions are never used
  }
  // nextval() and INSERT in the session's transaction (begun if needed).
  Position Insert(int pid, const std::string& key) {
    Session& s = sessions_.at(pid);
    if (s.cached.empty()) {
      for (int i = 0; i < cache_; ++i) s.cached.push_back(next_value_++);
    }
    const Position p = s.cached.front();
    s.cached.erase(s.cached.begin());
    if (s.xid == 0) s.xid = next_xid_++;
    rows_[p] = Row{key, s.xid};
    return p;
  }
  void Commit(int pid) { End(pid, true); }
  void Rollback(int pid) { End(pid, false); }
  // A jump in the sequence (bulk delete, rolled-back work elsewhere).
  void Burn(Position n) { next_value_ += n; }

  std::vector<Position> Claim(std::optional<Position> after, std::size_t limit) const {
    std::vector<Position> out;
    for (auto it = after ? rows_.upper_bound(*after) : rows_.begin(); it != rows_.end() && out.size() < limit; ++it) {
      if (Visible(it->second)) out.push_back(it->first);
    }
    return out;
  }
  std::vector<Position> ReadRanges(const std::vector<Range>& ranges, std::size_t limit) const {
    std::vector<Position> out;
    for (const Range& r : ranges) {
      for (auto it = rows_.lower_bound(r.first); it != rows_.end() && it->first <= r.last && out.size() < limit; ++it) {
        if (Visible(it->second)) out.push_back(it->first);
      }
    }
    return out;
  }
  // What the poll source's snapshot query returns, as PostgreSQL computes
  // it: xmax is the newest completed id + 1, and running transactions newer
  // than that are neither below xmax nor counted in xmin.
  GapSnapshot Snapshot(GapTracker::Clock::time_point at) const {
    const uint64_t xmax = latest_completed_ + 1;
    uint64_t xmin = xmax;
    std::optional<uint32_t> youngest;
    std::vector<int> pids;
    for (const auto& [pid, session] : sessions_) {
      pids.push_back(pid);
      if (session.xid == 0) continue;
      if (session.xid < xmax) xmin = std::min(xmin, session.xid);
      if (!youngest || session.xid > *youngest) youngest = static_cast<uint32_t>(session.xid);
    }
    return GapSnapshot::FromServer(xmin, xmax, youngest, pids, at);
  }
  void Delete(Position p) { rows_.erase(p); }  // after_delivery = "delete"
  std::size_t VisibleUnsent() const {
    return static_cast<std::size_t>(
        std::count_if(rows_.begin(), rows_.end(), [&](const auto& r) { return Visible(r.second); }));
  }

 private:
  struct Row {
    std::string key;
    uint64_t xid;
  };
  bool Visible(const Row& r) const { return committed_.count(r.xid) > 0; }
  void End(int pid, bool commit) {
    Session& s = sessions_.at(pid);
    if (s.xid != 0) latest_completed_ = std::max(latest_completed_, s.xid);
    if (commit) {
      committed_.insert(s.xid);
    } else {
      std::erase_if(rows_, [&](const auto& r) { return r.second.xid == s.xid; });
    }
    s.xid = 0;
  }

  int cache_;
  Position next_value_ = 1;
  uint64_t next_xid_ = 100;
  uint64_t latest_completed_ = 99;
  int next_pid_ = 1000;
  std::map<int, Session> sessions_;
  std::map<Position, Row> rows_;
  std::set<uint64_t> committed_;
};

class GapTrackerTest : public ::testing::Test {
 protected:
  explicit GapTrackerTest(GapFill fill = GapFill::kOpenTransactions, int cache = 1) : table_(cache), gaps_(fill) {}

  // One poll round; returns the positions produced, in order. `stop_after`
  // rows are produced at most (librdkafka's queue filling up).
  std::vector<Position> Round(std::size_t stop_after = SIZE_MAX) {
    now_ += 500ms;
    const auto claimed = table_.Claim(gaps_.cursor(), batch_);
    std::vector<Position> late;
    if (gaps_.NeedsSnapshot(claimed)) {
      gaps_.BeginRound(table_.Snapshot(now_));
      late = table_.ReadRanges(gaps_.Ranges(), gap_limit_);
      ++snapshots_;
    } else {
      gaps_.BeginRoundWithoutSnapshot();
    }
    std::vector<Position> produced;
    for (const auto& row : gaps_.Order(claimed, late, late.size() == gap_limit_)) {
      if (produced.size() == stop_after) break;
      gaps_.Took(row);
      table_.Delete(row.position);
      produced.push_back(row.position);
      published_.push_back(row.position);
    }
    gaps_.EndRound();
    return produced;
  }
  void Rounds(int n) {
    for (int i = 0; i < n; ++i) Round();
  }
  // Random traffic, one Round() per step: writers owning their keys,
  // transactions of 1-5 rows held open for up to 20 rounds, one in ten
  // rolled back, sessions replaced now and then (a connection pool).
  void RandomTraffic(unsigned seed, int steps) {
    std::mt19937 rng(seed);
    struct Writer {
      int pid;
      int rows_left = 0;
      int hold = 0;
      bool rollback = false;
    };
    std::vector<Writer> writers;
    writers.reserve(6);
    for (int w = 0; w < 6; ++w) writers.push_back({table_.Connect()});
    for (int step = 0; step < steps; ++step) {
      for (std::size_t w = 0; w < writers.size(); ++w) {
        Writer& wr = writers[w];
        if (wr.rows_left == 0 && wr.hold == 0) {
          if (rng() % 20 == 0) {
            Disconnect(wr.pid);
            wr.pid = table_.Connect();
          }
          wr.rows_left = 1 + static_cast<int>(rng() % 5);
          wr.hold = rng() % 4 == 0 ? static_cast<int>(rng() % 20) : 0;
          wr.rollback = rng() % 10 == 0;
        }
        if (wr.rows_left > 0) {
          Write(wr.pid, "s" + std::to_string(seed) + "w" + std::to_string(w) + "-" + std::to_string(rng() % 3));
          --wr.rows_left;
        } else {
          --wr.hold;
        }
        if (wr.rows_left == 0 && wr.hold == 0) {
          if (wr.rollback)
            Rollback(wr.pid);
          else
            Commit(wr.pid);
        }
      }
      Round();
    }
    for (Writer& wr : writers) Commit(wr.pid);
    Rounds(10);
  }
  // The writes go through the fixture, which records, for every row, how
  // many rows of its key had committed when it was inserted.
  void Write(int pid, const std::string& key) {
    const Position p = table_.Insert(pid, key);
    pending_[pid].push_back(p);
    committed_before_[p] = {key, key_commits_[key].size()};
  }
  void Commit(int pid) {
    table_.Commit(pid);
    for (Position p : pending_[pid]) key_commits_[committed_before_.at(p).first].push_back(p);
    pending_.erase(pid);
  }
  void Rollback(int pid) {
    table_.Rollback(pid);
    for (Position p : pending_[pid]) committed_before_.erase(p);
    pending_.erase(pid);
  }
  void Disconnect(int pid) {
    Rollback(pid);
    table_.Disconnect(pid);
  }
  // Rows published out of order: for two rows of one key where the second
  // was inserted after the first committed, the second came out first (or
  // the first never did).
  std::vector<std::string> OrderViolations() const {
    std::map<Position, std::size_t> at;
    for (std::size_t i = 0; i < published_.size(); ++i) at[published_[i]] = i;
    constexpr std::size_t kNever = SIZE_MAX;
    // Per key, the latest publication among its first n committed rows.
    std::map<std::string, std::vector<std::size_t>> latest;
    for (const auto& [key, commits] : key_commits_) {
      std::vector<std::size_t>& l = latest[key];
      l.push_back(0);
      for (Position q : commits) l.push_back(std::max(l.back(), at.count(q) ? at[q] : kNever));
    }
    std::vector<std::string> out;
    for (const auto& [p, before] : committed_before_) {
      if (!at.count(p) || before.second == 0) continue;
      if (latest.at(before.first)[before.second] > at[p]) {
        out.push_back("row " + std::to_string(p) + " of key " + before.first +
                      " published before a row committed ahead of it");
      }
    }
    return out;
  }

  ModelTable table_;
  GapTracker gaps_;
  GapTracker::Clock::time_point now_{};
  std::size_t batch_ = 1000;
  int snapshots_ = 0;  // rounds that took the snapshot
  std::size_t gap_limit_ = 1000;
  std::vector<Position> published_;
  std::map<int, std::vector<Position>> pending_;              // per session, its open transaction's rows
  std::map<std::string, std::vector<Position>> key_commits_;  // per key, its rows in commit order
  // Per row: its key, and how many rows of that key had committed when it was inserted.
  std::map<Position, std::pair<std::string, std::size_t>> committed_before_;
};

TEST_F(GapTrackerTest, ARowCommittingLateBelowTheCursorGoesOutBeforeLaterRowsOfItsKey) {
  const int slow = table_.Connect(), fast = table_.Connect();
  Write(slow, "k");  // 1, open
  Write(fast, "j");  // 2
  Commit(fast);
  EXPECT_EQ((std::vector<Position>{2}), Round());
  Rounds(20);  // ten seconds, long past min_life: the gap stays
  EXPECT_TRUE(gaps_.Contains(1));
  Commit(slow);
  Write(fast, "k");  // 3, after 1 committed
  Commit(fast);
  EXPECT_EQ((std::vector<Position>{1, 3}), Round());
  EXPECT_TRUE(OrderViolations().empty());
}

TEST_F(GapTrackerTest, GapRowsComeBeforeClaimedRowsInOneRound) {
  const int a = table_.Connect(), b = table_.Connect(), c = table_.Connect();
  Write(a, "k");  // 1
  Write(b, "x");  // 2
  Commit(b);
  Round();
  Write(c, "y");  // 3
  Commit(a);
  Commit(c);
  EXPECT_EQ((std::vector<Position>{1, 3}), Round());
}

TEST_F(GapTrackerTest, AGapResolvesOnlyAfterEveryTransactionOpenWhenItAppearedHasEnded) {
  const int a = table_.Connect(), b = table_.Connect(), c = table_.Connect();
  Write(a, "a");  // 1, xid 100
  Write(b, "b");  // 2, xid 101: rolled back later
  Write(c, "c");  // 3
  Commit(c);
  Round();
  EXPECT_EQ((std::vector<Range>{{LLONG_MIN, 2}}), gaps_.Ranges());
  Commit(a);
  Rounds(10);
  EXPECT_EQ((std::vector<Range>{{LLONG_MIN, 0}, {2, 2}}), gaps_.Ranges()) << "1 was read";
  Rollback(b);
  Round();  // the snapshot shows 101 ended; this read is the last one needed
  EXPECT_TRUE(gaps_.empty());
}

TEST_F(GapTrackerTest, AGapIsKeptAtLeastMinLifeEvenWithNothingInProgress) {
  // A transaction may have taken its position without an xid yet: the
  // snapshot cannot show it.
  const int a = table_.Connect();
  table_.Burn(4);  // 1..4 taken by such transactions
  Write(a, "a");   // 5
  Commit(a);
  Round();  // t = 0.5 s
  Round();
  Round();
  Round();  // t = 2 s
  EXPECT_TRUE(gaps_.Contains(1));
  Round();  // t = 2.5 s: 2 s after the gap appeared
  EXPECT_TRUE(gaps_.empty());
}

TEST_F(GapTrackerTest, AGapWiderThanAnyFormerLimitIsOneRangeAndKeepsOrder) {
  const int slow = table_.Connect(), fast = table_.Connect();
  Write(slow, "k");            // 1, open
  table_.Burn(1'000'000'000);  // a bulk delete, rolled-back work, a sequence jump
  Write(fast, "x");
  Commit(fast);
  Round();
  EXPECT_EQ((std::vector<Range>{{LLONG_MIN, 1'000'000'001}}), gaps_.Ranges());
  Rounds(10);
  Commit(slow);
  Write(fast, "k");
  Commit(fast);
  Round();
  EXPECT_TRUE(OrderViolations().empty());
  EXPECT_EQ(3u, published_.size());
}

TEST_F(GapTrackerTest, TheFirstClaimWatchesEveryPositionBelowItsFirstRow) {
  // Transactions open at start-up hold positions far below the first
  // visible row.
  const int slow = table_.Connect(), fast = table_.Connect();
  Write(slow, "k");  // 1
  table_.Burn(50'000);
  for (int i = 0; i < 3; ++i) Write(fast, "k" + std::to_string(i));
  Commit(fast);
  EXPECT_EQ((std::vector<Position>{50'002, 50'003, 50'004}), Round());
  EXPECT_TRUE(gaps_.Contains(1));
  EXPECT_TRUE(gaps_.Contains(-1'000));
  Rounds(10);
  Commit(slow);
  Write(fast, "k");
  Commit(fast);
  EXPECT_EQ((std::vector<Position>{1, 50'005}), Round());
}

TEST_F(GapTrackerTest, ManyOverlappingOpenTransactionsKeepOrderAndResolveOneByOne) {
  std::vector<int> open;
  const int fast = table_.Connect();
  for (int i = 0; i < 50; ++i) {
    open.push_back(table_.Connect());
    Write(open.back(), "k" + std::to_string(i));
    Write(fast, "f");
    Commit(fast);
    Round();
  }
  Rounds(5);
  ASSERT_FALSE(gaps_.empty());
  for (std::size_t i = 0; i < open.size(); ++i) {
    Commit(open[i]);
    Write(fast, "k" + std::to_string(i));
    Commit(fast);
    Round();
  }
  Rounds(5);
  EXPECT_TRUE(gaps_.empty());
  EXPECT_TRUE(OrderViolations().empty());
  EXPECT_EQ(0u, table_.VisibleUnsent());
}

TEST_F(GapTrackerTest, WhenTheGapReadHitsItsLimitClaimedRowsWait) {
  gap_limit_ = 2;
  const int slow = table_.Connect(), fast = table_.Connect();
  for (int i = 0; i < 3; ++i) Write(slow, "k");  // 1..3
  Write(fast, "x");                              // 4
  Commit(fast);
  Round();
  Commit(slow);
  Write(fast, "k");  // 5
  Commit(fast);
  EXPECT_EQ((std::vector<Position>{1, 2}), Round()) << "5 waits: a gap row may be unread";
  EXPECT_EQ((std::vector<Position>{3, 5}), Round());
  EXPECT_TRUE(OrderViolations().empty());
}

TEST_F(GapTrackerTest, StoppingMidRoundLeavesTheRestForTheNextRound) {
  const int slow = table_.Connect(), fast = table_.Connect();
  Write(slow, "k");  // 1
  Write(slow, "k");  // 2
  Write(fast, "x");  // 3
  Commit(fast);
  Round();
  Commit(slow);
  Write(fast, "k");  // 4
  Write(fast, "k");  // 5
  Commit(fast);
  for (int i = 0; i < 6; ++i) {  // long past min_life, but the gap was not read through
    EXPECT_EQ((std::vector<Position>{}), Round(0));
  }
  EXPECT_EQ((std::vector<Position>{1}), Round(1));
  EXPECT_TRUE(gaps_.Contains(2)) << "not read through: not settled";
  EXPECT_EQ((std::vector<Position>{2, 4}), Round(2));
  EXPECT_EQ(std::optional<Position>(4), gaps_.cursor());
  EXPECT_EQ((std::vector<Position>{5}), Round());
  EXPECT_TRUE(OrderViolations().empty());
}

TEST_F(GapTrackerTest, ClaimsThatFollowTheCursorWithoutAHoleNeedNoSnapshot) {
  const int a = table_.Connect(), b = table_.Connect();
  Write(a, "k");
  Commit(a);
  Round();  // the first claim: every position below it is a gap
  EXPECT_EQ(1, snapshots_);
  Rounds(4);  // until that gap resolves
  ASSERT_TRUE(gaps_.empty());
  const int before = snapshots_;
  for (int i = 0; i < 10; ++i) {
    Write(a, "k");
    Commit(a);
    Round();
  }
  EXPECT_EQ(before, snapshots_) << "one writer, no holes: the claim is the only query";
  Write(b, "x");  // open
  Write(a, "k");
  Commit(a);
  Round();
  EXPECT_EQ(before + 1, snapshots_) << "the claim skipped b's position";
  EXPECT_FALSE(gaps_.empty());
}

TEST_F(GapTrackerTest, ResetStartsAgainFromTheLowestUnsentRow) {
  const int a = table_.Connect();
  for (int i = 0; i < 5; ++i) Write(a, "k");
  Commit(a);
  Round();
  gaps_.Reset();
  EXPECT_FALSE(gaps_.cursor());
  EXPECT_TRUE(gaps_.empty());
}

TEST_F(GapTrackerTest, PastTheLimitTheClosestRangesMergeAndStillCoverEveryGap) {
  GapTracker gaps(GapFill::kOpenTransactions, {2000ms, 8});
  gaps.BeginRound({10, 11, {}, now_});
  // Claimed rows with twelve single-position gaps between them; the gaps at
  // 1000 and 1002 are the closest pair.
  const std::vector<Position> holes = {10, 20, 30, 40, 50, 60, 70, 80, 1000, 1002, 5000, 9000};
  std::vector<Position> claimed;
  for (Position p = 1; p <= 9001; ++p) {
    if (!std::binary_search(holes.begin(), holes.end(), p)) claimed.push_back(p);
  }
  for (const auto& row : gaps.Order(claimed, {}, false)) gaps.Took(row);
  gaps.EndRound();
  EXPECT_LE(gaps.size(), 8u);
  EXPECT_GE(gaps.merges(), 1u);
  for (Position p : holes) EXPECT_TRUE(gaps.Contains(p)) << p;
  EXPECT_TRUE(gaps.Contains(1001)) << "1000 and 1002 merged";
  EXPECT_FALSE(gaps.Contains(3000)) << "far apart gaps stay apart";
}

TEST_F(GapTrackerTest, AMergedRangeWaitsForTheLaterOfBothTransactionSets) {
  GapTracker gaps(GapFill::kOpenTransactions, {0ms, 4});
  auto round = [&](const GapSnapshot& s, const std::vector<Position>& claimed) {
    gaps.BeginRound(s);
    for (const auto& row : gaps.Order(claimed, {}, false)) gaps.Took(row);
    gaps.EndRound();
  };
  round({10, 11, {}, now_}, {2, 3, 5, 7});   // gaps 1, 4, 6 while 10 is open
  round({10, 51, {}, now_ + 1s}, {9, 900});  // gaps 8, 10..899 while 10..50 may be
  ASSERT_LE(gaps.size(), 4u);
  round({11, 60, {}, now_ + 2s}, {});  // 10 ended
  EXPECT_TRUE(gaps.Contains(8));
  EXPECT_TRUE(gaps.Contains(10));
  EXPECT_FALSE(gaps.Contains(1));
  round({51, 60, {}, now_ + 3s}, {});
  EXPECT_TRUE(gaps.empty());
}

TEST_F(GapTrackerTest, OldestSinceIsWhenTheOldestGapAppeared) {
  const int slow = table_.Connect(), fast = table_.Connect();
  EXPECT_FALSE(gaps_.OldestSince());
  Write(fast, "x");
  Commit(fast);
  Round();
  const auto first = now_;
  Write(slow, "y");
  Write(fast, "x");
  Commit(fast);
  Round();
  EXPECT_EQ(first, gaps_.OldestSince());
  Rounds(5);
  EXPECT_EQ(first + 500ms, gaps_.OldestSince()) << "the first claim's gap resolved";
}

TEST_F(GapTrackerTest, RandomTrafficNeverReordersAKeyAndLosesNothing) {
  for (unsigned seed = 1; seed <= 20; ++seed) {
    RandomTraffic(seed, 300);
    ASSERT_TRUE(OrderViolations().empty()) << "seed " << seed << ": " << OrderViolations()[0];
    ASSERT_EQ(0u, table_.VisibleUnsent()) << "seed " << seed;
  }
}

TEST(GapTrackerXid, WidensA32BitIdNearTheReference) {
  constexpr uint64_t kEpoch = uint64_t{1} << 32;
  EXPECT_EQ(745u, GapSnapshot::WidenXid(745, 745));
  EXPECT_EQ(5 * kEpoch + 1000, GapSnapshot::WidenXid(1000, 5 * kEpoch + 990));
  // Just before an epoch boundary, seen from just after it, and the reverse.
  EXPECT_EQ(5 * kEpoch - 10, GapSnapshot::WidenXid(0xfffffff6u, 5 * kEpoch + 3));
  EXPECT_EQ(5 * kEpoch + 3, GapSnapshot::WidenXid(3, 5 * kEpoch - 10));
  EXPECT_EQ(0xfffffff6u, GapSnapshot::WidenXid(0xfffffff6u, 3)) << "no epoch before the first";
}

// Sequence with CACHE > 1: sessions hold blocks of positions and use them in
// later transactions.
class GapTrackerSessionsTest : public GapTrackerTest {
 protected:
  GapTrackerSessionsTest() : GapTrackerTest(GapFill::kOpenSessions, /*cache=*/100) {}
};

TEST_F(GapTrackerSessionsTest, AGapInAnotherSessionsCachedBlockOutlivesItsTransactions) {
  const int a = table_.Connect(), b = table_.Connect();
  Write(a, "k");  // 1; session a holds 2..100
  Commit(a);
  Write(b, "x");  // 101
  Commit(b);
  Round();
  Rounds(20);
  EXPECT_TRUE(gaps_.Contains(2)) << "no transaction is open, but session a holds 2..100";
  for (int i = 0; i < 99; ++i) {  // a uses up its block in later transactions
    Write(a, "k");
    Commit(a);
  }
  Write(a, "k");  // 201: its next block, claimed past the cursor
  Commit(a);
  Round();
  EXPECT_TRUE(OrderViolations().empty());
  EXPECT_EQ(0u, table_.VisibleUnsent());
}

TEST_F(GapTrackerSessionsTest, AGapResolvesWhenEverySessionConnectedWhenItAppearedIsGone) {
  const int a = table_.Connect(), b = table_.Connect();
  Write(a, "k");
  Commit(a);
  Write(b, "x");
  Commit(b);
  Round();
  const int c = table_.Connect();  // connected later: cannot hold 2..100
  Rounds(10);
  EXPECT_TRUE(gaps_.Contains(2));
  Disconnect(a);
  Rounds(1);
  EXPECT_TRUE(gaps_.Contains(2)) << "b was connected too";
  Disconnect(b);
  Rounds(1);
  EXPECT_TRUE(gaps_.empty());
  (void)c;
}

TEST_F(GapTrackerTest, GapsTrackedBeforeTheSequenceStartedCachingWaitForSessionsToo) {
  // ALTER SEQUENCE ... CACHE 100 while outboxd runs: gaps from before the
  // change may now be filled from a session's cached block.
  const int a = table_.Connect(), b = table_.Connect();
  Write(a, "k");
  Write(b, "x");
  Commit(b);
  Round();
  Commit(a);
  gaps_.SetFill(GapFill::kOpenSessions);
  Rounds(10);
  EXPECT_FALSE(gaps_.empty()) << "a and b are still connected";
  Disconnect(a);
  Disconnect(b);
  Rounds(1);
  EXPECT_TRUE(gaps_.empty());
}

TEST_F(GapTrackerSessionsTest, RandomTrafficWithACachedSequenceNeverReordersAKey) {
  for (unsigned seed = 1; seed <= 20; ++seed) {
    RandomTraffic(seed, 300);
    ASSERT_TRUE(OrderViolations().empty()) << "seed " << seed << ": " << OrderViolations()[0];
    ASSERT_EQ(0u, table_.VisibleUnsent()) << "seed " << seed;
  }
}

}  // namespace
}  // namespace outboxd
