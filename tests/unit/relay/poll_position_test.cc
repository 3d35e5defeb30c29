// The poll position record (relay/poll_position.h): what a restart reads back
// to delete the rows Kafka has. A position lost or misread is a row sent
// twice, or a row deleted that Kafka never had.
#include "relay/poll_position.h"

#include <gtest/gtest.h>

namespace outboxd {
namespace {

TEST(PollPositionTest, RunsBecomeRangesAndReadBackAsEveryPosition) {
  const std::string text = FormatPollPosition({{"public.outbox", {7, 3, 4, 5, 9, 10, 5}}, {"app.events", {42}}});
  EXPECT_EQ("app.events 42\npublic.outbox 3-5,7,9-10\n", text);
  auto rows = ParsePollPosition(text);
  ASSERT_TRUE(rows.ok()) << rows.status().message();
  EXPECT_EQ((PollPositionRows{{"app.events", {42}}, {"public.outbox", {3, 4, 5, 7, 9, 10}}}), *rows);
}

TEST(PollPositionTest, TenThousandConsecutiveRowsAreOneRange) {
  std::vector<long long> positions;
  for (long long p = 1000; p < 11000; ++p) positions.push_back(p);
  const std::string text = FormatPollPosition({{"public.outbox", positions}});
  EXPECT_EQ("public.outbox 1000-10999\n", text);
  auto rows = ParsePollPosition(text);
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(positions, rows->at("public.outbox"));
}

TEST(PollPositionTest, NegativePositionsAndQuotedNamesWithSpaces) {
  const PollPositionRows rows = {{"public.\"my outbox\"", {-5, -4, -1, 0, 2}}};
  const std::string text = FormatPollPosition(rows);
  EXPECT_EQ("public.\"my outbox\" -5--4,-1-0,2\n", text);
  auto back = ParsePollPosition(text);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(rows, *back);
}

TEST(PollPositionTest, TablesWithoutRowsAreLeftOutAndAnEmptyTextHasNone) {
  EXPECT_EQ("", FormatPollPosition({{"public.outbox", {}}}));
  auto rows = ParsePollPosition("");
  ASSERT_TRUE(rows.ok());
  EXPECT_TRUE(rows->empty());
}

TEST(PollPositionTest, ATextItDidNotWriteIsRefusedNamingTheLine) {
  for (const char* text : {"public.outbox\n", "public.outbox 1-x\n", "public.outbox 9-3\n", "t 1,,2\n", " 1\n"}) {
    auto rows = ParsePollPosition(text);
    ASSERT_FALSE(rows.ok()) << text;
    EXPECT_EQ(StatusCode::kPermanent, rows.status().code()) << text;
    EXPECT_NE(std::string::npos, rows.status().message().find("line 1 of the poll position"))
        << rows.status().message();
  }
}

}  // namespace
}  // namespace outboxd
