// Log lines as operators' collectors read them: JSON lines must parse.
#include "common/logging.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>

namespace outboxd {
namespace {

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) out.push_back(line);
  }
  return out;
}

TEST(Logging, JsonFormatWritesOneParsableObjectPerLine) {
  ASSERT_TRUE(InitLogging("info", LogOutputFormat::kJson).ok());
  ::testing::internal::CaptureStderr();
  Logger("relay")->info("row \"{}\" failed:\n\tline two \\ {}", "public.outbox", 42);
  Logger("kafka")->debug("not shown at info");
  Logger("kafka")->warn("control \x01 char");
  const auto lines = Lines(::testing::internal::GetCapturedStderr());
  ASSERT_EQ(2u, lines.size());
  const auto first = nlohmann::json::parse(lines[0]);
  EXPECT_EQ("info", first["level"]);
  EXPECT_EQ("relay", first["logger"]);
  EXPECT_EQ("row \"public.outbox\" failed:\n\tline two \\ 42", first["msg"]);
  EXPECT_EQ('Z', first["ts"].get<std::string>().back());
  const auto second = nlohmann::json::parse(lines[1]);
  EXPECT_EQ("warning", second["level"]);
  EXPECT_EQ("control \x01 char", second["msg"]);
}

TEST(Logging, TextFormatNamesLevelAndLogger) {
  ASSERT_TRUE(InitLogging("debug", LogOutputFormat::kText).ok());
  ::testing::internal::CaptureStderr();
  Logger("relay")->debug("hello");
  const auto lines = Lines(::testing::internal::GetCapturedStderr());
  ASSERT_EQ(1u, lines.size());
  EXPECT_NE(std::string::npos, lines[0].find("debug")) << lines[0];
  EXPECT_NE(std::string::npos, lines[0].find("[relay] hello")) << lines[0];
}

TEST(Logging, UnknownLevelIsAConfigError) {
  EXPECT_EQ(StatusCode::kInvalidConfig, InitLogging("loud", LogOutputFormat::kText).code());
}

TEST(LogThrottle, LetsTheFirstThroughThenOncePerInterval) {
  using namespace std::chrono_literals;
  LogThrottle throttle(60s);
  const LogThrottle::Clock::time_point t0{};
  EXPECT_TRUE(throttle.Allow(t0 + 5s));
  EXPECT_FALSE(throttle.Allow(t0 + 6s));
  EXPECT_FALSE(throttle.Allow(t0 + 64s));
  EXPECT_TRUE(throttle.Allow(t0 + 65s));
  EXPECT_FALSE(throttle.Allow(t0 + 66s));
}

}  // namespace
}  // namespace outboxd
