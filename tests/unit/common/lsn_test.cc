// Lsn: prints and parses like PostgreSQL's pg_lsn, orders by WAL position.
#include "common/lsn.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

namespace outboxd {
namespace {

std::string Print(uint64_t v) { return Lsn(v).ToString(); }

uint64_t ParseOk(std::string_view s) {
  auto r = Lsn::Parse(s);
  EXPECT_TRUE(r.ok()) << s << ": " << r.status().message();
  return r.ok() ? r->value() : 0;
}

bool Rejected(std::string_view s) { return !Lsn::Parse(s).ok(); }

TEST(LsnTest, PrintsLikePostgresUpperCaseHexWithoutPadding) {
  EXPECT_EQ("0/0", Print(0));
  EXPECT_EQ("0/16B3748", Print(0x16B3748));
  EXPECT_EQ("16/B374D848", Print(0x16'B374D848));
  EXPECT_EQ("1/0", Print(uint64_t{1} << 32));
  EXPECT_EQ("FFFFFFFF/FFFFFFFF", Print(UINT64_MAX));
}

TEST(LsnTest, ParsesWhatPgLsnAccepts) {
  EXPECT_EQ(0u, ParseOk("0/0"));
  EXPECT_EQ(0x16'B374D848u, ParseOk("16/B374D848"));
  EXPECT_EQ(0x16'B374D848u, ParseOk("16/b374d848"));
  EXPECT_EQ(0x16'B374D848u, ParseOk("00000016/B374D848"));
  EXPECT_EQ(UINT64_MAX, ParseOk("FFFFFFFF/FFFFFFFF"));
}

TEST(LsnTest, RoundTrips) {
  for (uint64_t v : {uint64_t{0}, uint64_t{1}, uint64_t{0xFFFFFFFF}, uint64_t{0x1'00000000},
                     uint64_t{0xABCDEF01'23456789}, UINT64_MAX}) {
    EXPECT_EQ(v, ParseOk(Lsn(v).ToString())) << v;
  }
}

TEST(LsnTest, RejectsAnythingElse) {
  for (const char* bad : {"", "/", "0", "0/", "/0", "0//0", "0/0/0", " 0/0", "0/0 ", "G/0", "0/G", "123456789/0",
                          "0/123456789", "-1/0", "+1/0", "0x1/0", "1.5/0"}) {
    EXPECT_TRUE(Rejected(bad)) << '"' << bad << '"';
  }
}

TEST(LsnTest, ParseErrorNamesTheInput) {
  auto r = Lsn::Parse("nope");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string::npos, r.status().message().find("\"nope\"")) << r.status().message();
}

TEST(LsnTest, OrdersByWalPosition) {
  EXPECT_LT(Lsn(0xFFFFFFFF), Lsn(uint64_t{1} << 32));  // "0/FFFFFFFF" < "1/0"
  EXPECT_EQ(Lsn(5), Lsn(5));
  EXPECT_NE(Lsn(5), Lsn(6));
  EXPECT_GT(Lsn(UINT64_MAX), Lsn(0));
  std::vector<Lsn> v{Lsn(3), Lsn(1), Lsn(2)};
  std::sort(v.begin(), v.end());
  EXPECT_EQ((std::vector<Lsn>{Lsn(1), Lsn(2), Lsn(3)}), v);
}

TEST(LsnTest, ZeroIsInvalid) {
  EXPECT_FALSE(Lsn().valid());
  EXPECT_TRUE(Lsn(1).valid());
}

}  // namespace
}  // namespace outboxd
