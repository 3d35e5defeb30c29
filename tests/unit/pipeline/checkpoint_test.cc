// Checkpoint: positions are released only over the contiguous acknowledged
// prefix, in produce order — the at-least-once rule.
#include "pipeline/checkpoint.h"

#include <gtest/gtest.h>

#include "pipeline/record.h"

namespace outboxd {
namespace {

using Positions = std::vector<OutboxPosition>;

class CheckpointTest : public ::testing::Test {
 protected:
  uint64_t Produce(long long pos) { return cp_.Add(OutboxPosition{pos}); }
  Positions Release() { return cp_.TakeReleasable(); }
  Checkpoint<OutboxPosition> cp_;
};

TEST_F(CheckpointTest, NothingIsReleasedBeforeItsAck) {
  Produce(1);
  Produce(2);
  EXPECT_EQ(Positions{}, Release());
  EXPECT_EQ(2u, cp_.pending());
}

TEST_F(CheckpointTest, OutOfOrderAcksWaitForTheGapToClose) {
  auto a = Produce(10), b = Produce(11), c = Produce(12);
  cp_.MarkAcked(c);
  cp_.MarkAcked(b);
  EXPECT_EQ(Positions{}, Release());
  cp_.MarkAcked(a);
  EXPECT_EQ((Positions{{10}, {11}, {12}}), Release());
  EXPECT_TRUE(cp_.empty());
}

TEST_F(CheckpointTest, ReleaseFollowsProduceOrderNotPositionOrder) {
  // A late-committed row (position 5) produced after 7 and 8.
  auto a = Produce(7), b = Produce(8), late = Produce(5);
  cp_.MarkAcked(late);
  cp_.MarkAcked(a);
  EXPECT_EQ((Positions{{7}}), Release());
  cp_.MarkAcked(b);
  EXPECT_EQ((Positions{{8}, {5}}), Release());
}

TEST_F(CheckpointTest, AFailedEventBlocksEverythingAfterIt) {
  auto a = Produce(1), bad = Produce(2), c = Produce(3);
  cp_.MarkAcked(a);
  EXPECT_TRUE(cp_.MarkFailed(bad));
  cp_.MarkAcked(c);
  EXPECT_EQ((Positions{{1}}), Release());
  EXPECT_EQ(Positions{}, Release());
  EXPECT_EQ(0u, cp_.pending());
  EXPECT_EQ(2u, cp_.size());
}

TEST_F(CheckpointTest, ResetMakesEarlierTicketsStale) {
  auto a = Produce(1);
  cp_.Reset();
  EXPECT_FALSE(cp_.IsTracked(a));
  EXPECT_FALSE(cp_.MarkAcked(a));
  EXPECT_EQ(nullptr, cp_.PositionOf(a));
  auto b = Produce(1);
  EXPECT_NE(a, b);
  EXPECT_TRUE(cp_.MarkAcked(b));
  EXPECT_EQ((Positions{{1}}), Release());
}

TEST_F(CheckpointTest, DuplicateAndReleasedAcksAreIgnored) {
  auto a = Produce(1);
  EXPECT_TRUE(cp_.MarkAcked(a));
  EXPECT_FALSE(cp_.MarkAcked(a));
  EXPECT_EQ((Positions{{1}}), Release());
  EXPECT_FALSE(cp_.MarkAcked(a));
  EXPECT_FALSE(cp_.MarkFailed(a));
}

TEST_F(CheckpointTest, NextTicketPredictsAdd) {
  const auto predicted = cp_.next_ticket();
  EXPECT_EQ(predicted, Produce(4));
  ASSERT_NE(nullptr, cp_.PositionOf(predicted));
  EXPECT_EQ(4, cp_.PositionOf(predicted)->value);
}

// What a rewind produces again: acknowledged events stuck behind a failed or
// unreported one, and the pending ones whose report is still owed.
TEST_F(CheckpointTest, CountAckedAndPendingTicketsSayWhatARewindSendsAgain) {
  auto a = Produce(1), b = Produce(2), c = Produce(3), d = Produce(4), e = Produce(5);
  cp_.MarkAcked(a);
  cp_.MarkFailed(b);
  cp_.MarkAcked(c);
  cp_.MarkAcked(e);
  EXPECT_EQ((Positions{{1}}), Release());
  const auto all = [](const OutboxPosition&) { return true; };
  EXPECT_EQ(2u, cp_.CountAcked(all));  // 3 and 5: not the failed 2, not the released 1
  EXPECT_EQ(1u, cp_.CountAcked([](const OutboxPosition& p) { return p.value > 4; }));
  EXPECT_EQ(std::vector<uint64_t>{d}, cp_.PendingTickets());
  cp_.Reset();
  EXPECT_EQ(0u, cp_.CountAcked(all));
  EXPECT_TRUE(cp_.PendingTickets().empty());
}

}  // namespace
}  // namespace outboxd
