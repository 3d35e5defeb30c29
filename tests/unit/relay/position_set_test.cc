#include "relay/position_set.h"

#include <gtest/gtest.h>

#include <random>
#include <set>

namespace outboxd {
namespace {

TEST(PositionSetTest, ConsecutivePositionsShareOneRun) {
  PositionSet s;
  for (long long p = 1; p <= 1'000'000; ++p) s.insert(p);
  EXPECT_EQ(1'000'000u, s.size());
  EXPECT_EQ(1u, s.runs());
  EXPECT_TRUE(s.contains(1));
  EXPECT_TRUE(s.contains(1'000'000));
  EXPECT_FALSE(s.contains(0));
  EXPECT_FALSE(s.contains(1'000'001));
}

TEST(PositionSetTest, InsertJoinsAndEraseSplitsRuns) {
  PositionSet s;
  s.insert(10);
  s.insert(12);
  EXPECT_EQ(2u, s.runs());
  s.insert(11);  // joins both
  EXPECT_EQ(1u, s.runs());
  EXPECT_EQ(3u, s.size());
  s.insert(11);  // held already
  EXPECT_EQ(3u, s.size());
  s.insert(9);  // extends downwards
  EXPECT_EQ(1u, s.runs());
  s.erase(11);  // splits 9..12
  EXPECT_EQ(2u, s.runs());
  EXPECT_FALSE(s.contains(11));
  EXPECT_TRUE(s.contains(10));
  EXPECT_TRUE(s.contains(12));
  s.erase(11);  // not there
  s.erase(100);
  EXPECT_EQ(3u, s.size());
  s.erase(9);
  s.erase(10);
  s.erase(12);
  EXPECT_TRUE(s.empty());
  EXPECT_EQ(0u, s.runs());
}

// Against std::set on random operations, negative positions included.
TEST(PositionSetTest, BehavesAsASet) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<long long> pos(-50, 50);
  std::bernoulli_distribution add(0.6);
  PositionSet s;
  std::set<long long> model;
  for (int i = 0; i < 20'000; ++i) {
    const long long p = pos(rng);
    if (add(rng)) {
      s.insert(p);
      model.insert(p);
    } else {
      s.erase(p);
      model.erase(p);
    }
    ASSERT_EQ(model.size(), s.size()) << "after operation " << i;
  }
  std::size_t runs = 0;
  for (long long p = -51; p <= 51; ++p) {
    EXPECT_EQ(model.count(p) == 1, s.contains(p)) << p;
    runs += model.count(p) == 1 && model.count(p - 1) == 0 ? 1 : 0;
  }
  EXPECT_EQ(runs, s.runs()) << "runs are kept maximal";
}

}  // namespace
}  // namespace outboxd
