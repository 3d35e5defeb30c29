// The shipped systemd units: `systemd-analyze verify` accepts them without a
// word, and `systemd-analyze security --offline=yes` rates their exposure at
// 2.0 or less. The units run /usr/bin/outboxd, which need not exist here, so
// the test checks copies that point at the built binary instead; nothing is
// installed or started.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>

#include "tests/harness/test_env.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

constexpr double kMaxExposure = 2.0;

class SystemdUnitTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/outboxd-systemd-test.XXXXXX";
    ASSERT_NE(nullptr, ::mkdtemp(tmpl));
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // The unit with /usr/bin/outboxd replaced by the built binary, written to
  // the temporary directory as `name` (an instance name for the template).
  std::string CopyUnit(const std::string& source, const std::string& name) {
    std::ifstream in(std::string(OUTBOXD_SOURCE_DIR) + "/systemd/" + source);
    EXPECT_TRUE(in) << source;
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text = ss.str();
    text_ = text;
    const std::string from = "/usr/bin/outboxd";
    EXPECT_NE(std::string::npos, text.find(from));
    for (auto pos = text.find(from); pos != std::string::npos; pos = text.find(from, pos)) {
      text.replace(pos, from.size(), OutboxdProcess::BinaryPath());
      pos += OutboxdProcess::BinaryPath().size();
    }
    std::string path = dir_ + "/" + name;
    std::ofstream(path) << text;
    return path;
  }

  // The file name systemd-analyze is given: a template is checked through an
  // instance of it.
  static std::string UnitName(const std::string& file) {
    const auto at = file.find("@.");
    return at == std::string::npos ? file : file.substr(0, at + 1) + "orders" + file.substr(at + 1);
  }

  std::string dir_;
  std::string text_;  // the unit as shipped
};

TEST_P(SystemdUnitTest, VerifyIsSilent) {
  const std::string path = CopyUnit(GetParam(), UnitName(GetParam()));
  CommandResult r = RunCommand({"systemd-analyze", "verify", path}, 120s);
  EXPECT_EQ(0, r.exit_code) << r.output;
  EXPECT_EQ("", r.output) << "systemd-analyze verify warned";
}

TEST_P(SystemdUnitTest, SecurityExposureAtMost2) {
  const std::string path = CopyUnit(GetParam(), UnitName(GetParam()));
  // --threshold=20: exit non-zero above an exposure of 2.0 (the scale is 0..100 there).
  CommandResult r = RunCommand({"systemd-analyze", "security", "--offline=yes", "--no-pager",
                                "--threshold=" + std::to_string(static_cast<int>(kMaxExposure * 10)), path},
                               120s);
  EXPECT_EQ(0, r.exit_code) << r.output;
  std::smatch m;
  static const std::regex kOverall(R"(Overall exposure level for \S+: ([0-9.]+))");
  ASSERT_TRUE(std::regex_search(r.output, m, kOverall)) << r.output;
  const double exposure = std::strtod(m[1].str().c_str(), nullptr);
  EXPECT_LE(exposure, kMaxExposure) << r.output;
}

TEST_P(SystemdUnitTest, NotifyWatchdogAndNoRestartOnConfigErrors) {
  CopyUnit(GetParam(), UnitName(GetParam()));
  EXPECT_THAT(text_, ::testing::ContainsRegex("\nType=notify\n"));
  EXPECT_THAT(text_, ::testing::ContainsRegex("\nWatchdogSec=[0-9]+s\n"));
  EXPECT_THAT(text_, ::testing::ContainsRegex("\nRestartPreventExitStatus=78\n"));
  // outboxd has no reload; a unit must not promise one.
  EXPECT_THAT(text_, ::testing::Not(::testing::ContainsRegex("\nExecReload=")));
}

INSTANTIATE_TEST_SUITE_P(Units, SystemdUnitTest, ::testing::Values("outboxd.service", "outboxd@.service"),
                         [](const auto& info) {
                           return std::string(info.param).find('@') == std::string::npos ? std::string("service")
                                                                                         : std::string("template");
                         });

}  // namespace
}  // namespace outboxd::testing
