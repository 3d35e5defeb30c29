// What can be checked of the container image without building it: the
// Dockerfile's runtime stage runs as the fixed non-root user, with a
// HEALTHCHECK (and the curl it runs) and the configuration path of the
// image's command. tests/integration/image_test.cc builds and runs the image;
// the libraries come with the Debian package's Depends (dpkg-shlibdeps,
// checked in deb_package_test.cc).

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/harness/test_env.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::vector<std::string> Words(const std::string& text) {
  std::vector<std::string> words;
  std::istringstream in(text);
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

// The instructions of the last stage (after the last FROM), with continuation
// lines joined and comment lines dropped, as Docker reads them.
std::vector<std::string> RuntimeStageInstructions(const std::string& dockerfile) {
  std::vector<std::string> instructions;
  std::string current;
  for (std::string line : Lines(dockerfile)) {
    const auto first = line.find_first_not_of(" \t");
    if (first == std::string::npos || line[first] == '#') continue;
    const bool continued = !line.empty() && line.back() == '\\';
    if (continued) line.pop_back();
    current += line + " ";
    if (!continued) {
      instructions.push_back(current);
      current.clear();
    }
  }
  if (!current.empty()) instructions.push_back(current);
  std::vector<std::string> stage;
  for (const auto& i : instructions) {
    if (Words(i).front() == "FROM") stage.clear();
    stage.push_back(i);
  }
  return stage;
}

// Package names of every `apt-get install` in RUN instructions of the stage.
std::set<std::string> InstalledPackages(const std::vector<std::string>& stage) {
  std::set<std::string> packages;
  for (const auto& instruction : stage) {
    const auto words = Words(instruction);
    if (words.empty() || words[0] != "RUN") continue;
    for (size_t i = 1; i + 1 < words.size(); ++i) {
      if (words[i] != "apt-get" || words[i + 1] != "install") continue;
      for (size_t j = i + 2; j < words.size(); ++j) {
        const std::string& w = words[j];
        if (w == "&&" || w == ";" || w == "||" || w == "|") break;
        if (w[0] == '-') continue;
        packages.insert(w);
      }
    }
  }
  return packages;
}

TEST(PackageTest, DockerfileParsing) {
  const std::string dockerfile =
      "FROM debian:bookworm AS build\nRUN apt-get install -y gcc\n"
      "FROM debian:bookworm-slim\n# comment\nRUN apt-get update \\\n && apt-get install -y --no-install-recommends \\\n"
      "      libpq5 \\\n# inside\n      librdkafka1 \\\n && rm -rf /var/lib/apt/lists/*\nUSER 1\n";
  EXPECT_EQ((std::set<std::string>{"libpq5", "librdkafka1"}), InstalledPackages(RuntimeStageInstructions(dockerfile)));
}

TEST(PackageTest, RuntimeStageRunsAsNonRootWithAHealthCheck) {
  const auto stage = RuntimeStageInstructions(ReadTextFile(std::string(OUTBOXD_SOURCE_DIR) + "/Dockerfile"));
  std::map<std::string, std::string> last;
  for (const auto& i : stage) last[Words(i).front()] = i;
  ASSERT_TRUE(last.count("USER"));
  EXPECT_EQ("10001:10001", Words(last["USER"])[1]);
  ASSERT_TRUE(last.count("HEALTHCHECK"));
  EXPECT_THAT(last["HEALTHCHECK"], ::testing::HasSubstr("OUTBOXD_HEALTHZ_URL"));
  ASSERT_TRUE(last.count("ENV"));
  EXPECT_THAT(last["ENV"], ::testing::HasSubstr("/healthz"));
  EXPECT_TRUE(InstalledPackages(stage).count("curl")) << "the HEALTHCHECK runs curl";
  EXPECT_THAT(last["CMD"], ::testing::HasSubstr("/etc/outboxd/outboxd.toml"));
}

}  // namespace
}  // namespace outboxd::testing
