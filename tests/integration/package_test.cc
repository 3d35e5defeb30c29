// What can be checked of the container image without a Docker engine: every
// shared library the built outboxd loads (ldd) comes from a package the
// Dockerfile's runtime stage installs or from one of their dependencies, and
// every library it links directly (DT_NEEDED) from a package that stage names
// itself, so that the image does not depend on another package's choices.
// glibc (libc6) is in every Debian image and needs no mention.
//
// Package names are looked up on this machine (dpkg -S, apt-cache depends),
// which must be Debian bookworm like the image; run where the build ran.

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

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw HarnessError("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

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

CommandResult MustRun(const std::vector<std::string>& args) {
  CommandResult r = RunCommand(args, 120s);
  if (r.exit_code != 0) {
    std::string cmd;
    for (const auto& a : args) cmd += a + " ";
    throw HarnessError(cmd + "exited " + std::to_string(r.exit_code) + ":\n" + r.output);
  }
  return r;
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

// Name without architecture: "libc6:amd64" -> "libc6".
std::string PackageName(std::string p) {
  const auto colon = p.find(':');
  if (colon != std::string::npos) p.resize(colon);
  return p;
}

// The package that ships `path`. Debian 12 has merged /usr while dpkg still
// records some files under /lib, so both spellings are tried.
std::string OwningPackage(const std::string& path) {
  std::vector<std::string> candidates = {path};
  if (path.rfind("/usr/", 0) == 0)
    candidates.push_back(path.substr(4));
  else
    candidates.push_back("/usr" + path);
  for (const auto& c : candidates) {
    CommandResult r = RunCommand({"dpkg", "-S", c}, 60s);
    if (r.exit_code != 0) continue;
    for (const auto& line : Lines(r.output)) {
      if (line.rfind("diversion by", 0) == 0) continue;
      const auto sep = line.find(": ");
      if (sep != std::string::npos) return PackageName(line.substr(0, line.find(',') < sep ? line.find(',') : sep));
    }
  }
  return "";
}

// `packages` and everything they depend on (Depends and PreDepends).
std::set<std::string> DependencyClosure(const std::set<std::string>& packages) {
  std::vector<std::string> args = {"apt-cache",      "depends",     "--recurse",     "--no-recommends", "--no-suggests",
                                   "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"};
  args.insert(args.end(), packages.begin(), packages.end());
  CommandResult r = MustRun(args);
  std::set<std::string> closure;
  for (const auto& line : Lines(r.output)) {
    if (line.empty()) continue;
    if (line[0] != ' ') {
      closure.insert(PackageName(line));
      continue;
    }
    const auto words = Words(line);
    if (words.size() == 2 && (words[0] == "Depends:" || words[0] == "|Depends:" || words[0] == "PreDepends:")) {
      if (words[1][0] != '<') closure.insert(PackageName(words[1]));  // <virtual> names are not packages
    }
  }
  return closure;
}

struct Library {
  std::string soname;
  std::string path;
};

std::vector<Library> LddLibraries(const std::string& binary) {
  CommandResult r = MustRun({"ldd", binary});
  std::vector<Library> libs;
  static const std::regex kResolved(R"(^\s*(\S+)\s+=>\s+(\S+)\s+\(0x[0-9a-f]+\)\s*$)");
  static const std::regex kDirect(R"(^\s*(/\S+)\s+\(0x[0-9a-f]+\)\s*$)");
  for (const auto& line : Lines(r.output)) {
    std::smatch m;
    if (std::regex_match(line, m, kResolved)) {
      libs.push_back({m[1], m[2]});
    } else if (std::regex_match(line, m, kDirect)) {
      libs.push_back({m[1], m[1]});
    } else if (line.find("linux-vdso") == std::string::npos && line.find("statically linked") == std::string::npos) {
      ADD_FAILURE() << "ldd line not understood (library not found?): " << line;
    }
  }
  return libs;
}

std::set<std::string> NeededSonames(const std::string& binary) {
  CommandResult r = MustRun({"readelf", "-d", binary});
  std::set<std::string> needed;
  static const std::regex kNeeded(R"(\(NEEDED\)\s+Shared library: \[(\S+)\])");
  for (const auto& line : Lines(r.output)) {
    std::smatch m;
    if (std::regex_search(line, m, kNeeded)) needed.insert(m[1]);
  }
  return needed;
}

TEST(PackageTest, DockerfileParsing) {
  const std::string dockerfile =
      "FROM debian:bookworm AS build\nRUN apt-get install -y gcc\n"
      "FROM debian:bookworm-slim\n# comment\nRUN apt-get update \\\n && apt-get install -y --no-install-recommends \\\n"
      "      libpq5 \\\n# inside\n      librdkafka1 \\\n && rm -rf /var/lib/apt/lists/*\nUSER 1\n";
  EXPECT_EQ((std::set<std::string>{"libpq5", "librdkafka1"}), InstalledPackages(RuntimeStageInstructions(dockerfile)));
}

TEST(PackageTest, RuntimeStageProvidesEveryLibraryOfTheBinary) {
  const std::string binary = OutboxdProcess::BinaryPath();
  const auto stage = RuntimeStageInstructions(ReadFile(std::string(OUTBOXD_SOURCE_DIR) + "/Dockerfile"));
  const std::set<std::string> installed = InstalledPackages(stage);
  ASSERT_FALSE(installed.empty()) << "no apt-get install in the Dockerfile's runtime stage";
  const std::set<std::string> closure = DependencyClosure(installed);

  const std::set<std::string> needed = NeededSonames(binary);
  ASSERT_FALSE(needed.empty());
  const auto libs = LddLibraries(binary);
  ASSERT_FALSE(libs.empty());
  std::set<std::string> seen_needed;
  for (const auto& lib : libs) {
    SCOPED_TRACE(lib.path);
#ifdef OUTBOXD_SANITIZED
    // The sanitizer runtimes of a test build; the image is built without them.
    if (lib.soname.rfind("libasan", 0) == 0 || lib.soname.rfind("libubsan", 0) == 0 ||
        lib.soname.rfind("libtsan", 0) == 0) {
      seen_needed.insert(lib.soname);
      continue;
    }
#endif
    const std::string package = OwningPackage(lib.path);
    ASSERT_FALSE(package.empty()) << "no Debian package ships " << lib.path << " (built by hand?)";
    EXPECT_TRUE(closure.count(package))
        << lib.soname << " comes from " << package
        << ", which the Dockerfile's runtime stage does not install (add it to its apt-get install list)";
    if (needed.count(lib.soname)) {
      seen_needed.insert(lib.soname);
      EXPECT_TRUE(installed.count(package) || package == "libc6")
          << "outboxd links " << lib.soname << " directly; name its package " << package
          << " in the runtime stage's apt-get install list instead of relying on another package's dependencies";
    }
  }
  EXPECT_EQ(needed, seen_needed) << "ldd did not resolve every DT_NEEDED library";
}

TEST(PackageTest, RuntimeStageRunsAsNonRootWithAHealthCheck) {
  const auto stage = RuntimeStageInstructions(ReadFile(std::string(OUTBOXD_SOURCE_DIR) + "/Dockerfile"));
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
