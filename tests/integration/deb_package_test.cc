// The Debian package as an administrator uses it: scripts/package.sh makes
// it from this build, lintian finds no error in it, and on this machine it
// installs (the outboxd user, /etc/outboxd with an unconfigured
// configuration that starts nothing), removes (the configuration stays)
// and purges (it goes) cleanly. The man page describes every command and
// option `outboxd --help` lists.
//
// dpkg -i needs root (CI runs the suite as root); elsewhere the install part
// is skipped with a message. A sanitized build is not packaged.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/harness/test_env.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;

std::string LastLine(std::string text) {
  while (!text.empty() && text.back() == '\n') text.pop_back();
  return text.substr(text.rfind('\n') + 1);
}

CommandResult Sh(const std::vector<std::string>& args, std::chrono::milliseconds deadline = 120s) {
  return RunCommand(args, deadline);
}

// The commands and options `outboxd [COMMAND] --help` lists.
std::set<std::string> HelpWords() {
  std::set<std::string> words;
  const std::regex option(R"((^|[ ,])(--?[a-z][a-z-]*))");
  std::vector<std::string> commands;
  auto collect = [&](const std::string& help, bool top) {
    std::istringstream lines(help);
    std::string line;
    bool in_subcommands = false;
    while (std::getline(lines, line)) {
      if (line.rfind("Subcommands:", 0) == 0) in_subcommands = true;
      if (top && in_subcommands && line.rfind("  ", 0) == 0) {
        std::string name = line.substr(2, line.find(' ', 2) - 2);
        commands.push_back(name);
        words.insert(name);
      }
      if (line.rfind("  -", 0) != 0) continue;
      const std::string flags = line.substr(0, line.find("  ", 2));
      for (auto it = std::sregex_iterator(flags.begin(), flags.end(), option); it != std::sregex_iterator(); ++it) {
        words.insert((*it)[2]);
      }
    }
  };
  const CommandResult top = Sh({OutboxdProcess::BinaryPath(), "--help"});
  EXPECT_EQ(0, top.exit_code) << top.output;
  collect(top.output, true);
  EXPECT_FALSE(commands.empty()) << top.output;
  for (const std::string& c : commands) {
    const CommandResult r = Sh({OutboxdProcess::BinaryPath(), c, "--help"});
    EXPECT_EQ(0, r.exit_code) << r.output;
    collect(r.output, false);
  }
  return words;
}

TEST(DebPackageTest, TheManPageDescribesEveryCommandAndOptionOfTheHelp) {
  std::string page = ReadTextFile(std::string(OUTBOXD_SOURCE_DIR) + "/docs/outboxd.1");
  page = std::regex_replace(page, std::regex(R"(\\-)"), "-");  // roff's escaped hyphens
  const std::set<std::string> words = HelpWords();
  EXPECT_GE(words.size(), 10u);
  for (const std::string& w : words) {
    const std::regex described("(^|[^a-z-])" + std::regex_replace(w, std::regex("-"), "\\-") + "([^a-z-]|$)");
    EXPECT_TRUE(std::regex_search(page, described)) << "docs/outboxd.1 does not describe " << w;
  }
  // groff renders it without a warning.
  const CommandResult groff =
      Sh({"sh", "-c", "groff -man -Tutf8 -ww -z '" + std::string(OUTBOXD_SOURCE_DIR) + "/docs/outboxd.1' 2>&1"});
  EXPECT_EQ(0, groff.exit_code) << groff.output;
  EXPECT_EQ("", groff.output);
}

class DebPackageInstallTest : public ::testing::Test {
 protected:
  // Packaged once for the suite.
  static void SetUpTestSuite() {
#ifndef OUTBOXD_SANITIZED
    const CommandResult built =
        Sh({"bash", std::string(OUTBOXD_SOURCE_DIR) + "/scripts/package.sh", OUTBOXD_BUILD_DIR}, 600s);
    deb_ = built.exit_code == 0 ? LastLine(built.output) : "";
    package_log_ = built.output;
#endif
  }
  void SetUp() override {
#ifdef OUTBOXD_SANITIZED
    GTEST_SKIP() << "a sanitized build is not packaged";
#endif
    ASSERT_FALSE(deb_.empty()) << "scripts/package.sh failed:\n" << package_log_;
    ASSERT_EQ(0, access(deb_.c_str(), R_OK)) << "no package at \"" << deb_ << "\"\n" << package_log_;
  }
  void TearDown() override {
    if (installed_) (void)Sh({"dpkg", "--purge", "outboxd"});
  }

  static std::string Field(const std::string& name) { return LastLine(Sh({"dpkg-deb", "--field", deb_, name}).output); }

  static inline std::string deb_;
  static inline std::string package_log_;
  bool installed_ = false;
};

TEST_F(DebPackageInstallTest, LintianFindsNoError) {
  const CommandResult r = Sh({"lintian", "--no-tag-display-limit", deb_}, 300s);
  std::istringstream lines(r.output);
  std::string line;
  while (std::getline(lines, line)) EXPECT_NE(0u, line.rfind("E: ", 0)) << line;
  EXPECT_TRUE(r.exit_code == 0 || r.exit_code == 2) << r.output;  // 2: warnings only
}

TEST_F(DebPackageInstallTest, ItsFilesAndDependsAreWhatAnAdministratorExpects) {
  const std::string contents = Sh({"dpkg-deb", "--contents", deb_}).output;
  for (const char* path :
       {"./usr/bin/outboxd", "./lib/systemd/system/outboxd.service", "./lib/systemd/system/outboxd@.service",
        "./usr/lib/sysusers.d/outboxd.conf", "./usr/lib/tmpfiles.d/outboxd.conf", "./etc/outboxd/outboxd.toml",
        "./usr/share/man/man1/outboxd.1.gz", "./usr/share/doc/outboxd/copyright",
        "./usr/share/doc/outboxd/changelog.gz", "./usr/share/doc/outboxd/examples/minimal.toml",
        "./usr/share/doc/outboxd/configuration.md"}) {
    EXPECT_NE(std::string::npos, contents.find(std::string(path) + "\n")) << path << " missing:\n" << contents;
  }
  EXPECT_EQ("/etc/outboxd/outboxd.toml", LastLine(Sh({"dpkg-deb", "--info", deb_, "conffiles"}).output));
  // Depends computed from the binary's libraries (dpkg-shlibdeps).
  const std::string depends = Field("Depends");
  for (const char* package : {"libpq5", "librdkafka1", "libssl3", "libsystemd0", "libtomlplusplus3", "adduser"}) {
    EXPECT_NE(std::string::npos, depends.find(package)) << package << " not in Depends: " << depends;
  }
  EXPECT_EQ("outboxd", Field("Package"));
}

TEST_F(DebPackageInstallTest, InstallsRemovesAndPurgesCleanly) {
  if (geteuid() != 0) GTEST_SKIP() << "dpkg -i needs root (CI runs the suite as root)";
  ASSERT_NE(0, Sh({"dpkg", "--status", "outboxd"}).exit_code) << "outboxd is installed already: not touching it";

  installed_ = true;
  const CommandResult install = Sh({"dpkg", "--install", deb_});
  ASSERT_EQ(0, install.exit_code) << install.output;
  const CommandResult version = Sh({"/usr/bin/outboxd", "--version"});
  EXPECT_EQ("outboxd 0.1.0", LastLine(version.output));
  EXPECT_EQ(0, Sh({"getent", "passwd", "outboxd"}).exit_code) << "no outboxd user";
  struct stat dir {};
  ASSERT_EQ(0, stat("/etc/outboxd", &dir));
  EXPECT_EQ(0750u, dir.st_mode & 07777);
  EXPECT_EQ("outboxd", LastLine(Sh({"stat", "-c", "%G", "/etc/outboxd"}).output));
  struct stat conf {};
  ASSERT_EQ(0, stat("/etc/outboxd/outboxd.toml", &conf));
  EXPECT_EQ(0640u, conf.st_mode & 07777);
  EXPECT_EQ("outboxd", LastLine(Sh({"stat", "-c", "%G", "/etc/outboxd/outboxd.toml"}).output));
  // The packaged configuration starts nothing: the unit's check-config
  // refuses it.
  const CommandResult check = Sh({"/usr/bin/outboxd", "check-config", "-c", "/etc/outboxd/outboxd.toml"});
  EXPECT_EQ(78, check.exit_code) << check.output;
  EXPECT_NE(std::string::npos, check.output.find("missing required section [postgres]")) << check.output;
  EXPECT_EQ(0, Sh({"man", "-w", "outboxd"}).exit_code);

  // Remove: the program goes, the configuration (a conffile) stays.
  std::ofstream("/etc/outboxd/outboxd.toml", std::ios::app) << "# edited by the administrator\n";
  const CommandResult remove = Sh({"dpkg", "--remove", "outboxd"});
  ASSERT_EQ(0, remove.exit_code) << remove.output;
  EXPECT_NE(0, access("/usr/bin/outboxd", F_OK));
  EXPECT_NE(0, access("/lib/systemd/system/outboxd.service", F_OK));
  EXPECT_NE(std::string::npos, ReadTextFile("/etc/outboxd/outboxd.toml").find("# edited by the administrator"));

  // Purge: the configuration and its directory go.
  const CommandResult purge = Sh({"dpkg", "--purge", "outboxd"});
  ASSERT_EQ(0, purge.exit_code) << purge.output;
  installed_ = false;
  EXPECT_NE(0, access("/etc/outboxd", F_OK));
  EXPECT_NE(0, Sh({"dpkg", "--status", "outboxd"}).exit_code);
}

}  // namespace
}  // namespace outboxd::testing
