#include "common/backoff.h"

#include <gtest/gtest.h>

namespace outboxd {
namespace {

using std::chrono::milliseconds;

TEST(Backoff, GrowsWithJitterUpToTheCap) {
  Backoff b(milliseconds(100), milliseconds(1000));
  const milliseconds ceilings[] = {milliseconds(100), milliseconds(200),  milliseconds(400),
                                   milliseconds(800), milliseconds(1000), milliseconds(1000)};
  for (milliseconds ceiling : ceilings) {
    const milliseconds d = b.Next();
    EXPECT_GE(d, ceiling / 2);
    EXPECT_LE(d, ceiling);
  }
}

TEST(Backoff, ResetStartsOver) {
  Backoff b(milliseconds(100), milliseconds(10000));
  for (int i = 0; i < 10; ++i) (void)b.Next();
  b.Reset();
  EXPECT_LE(b.Next(), milliseconds(100));
}

TEST(Backoff, ManyFailuresDoNotOverflow) {
  Backoff b(milliseconds(100), milliseconds(30000));
  for (int i = 0; i < 200; ++i) {
    const milliseconds d = b.Next();
    ASSERT_GT(d.count(), 0);
    ASSERT_LE(d, milliseconds(30000));
  }
}

}  // namespace
}  // namespace outboxd
