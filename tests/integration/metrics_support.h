#pragma once
// Test support for what outboxd serves on [http] listen: GET with the real
// curl client, and a parsed /metrics scrape.

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "tests/harness/test_env.h"

namespace outboxd::testing {

inline constexpr const char* kCurl = "/usr/bin/curl";          // Debian package "curl"
inline constexpr const char* kPromtool = "/usr/bin/promtool";  // Debian package "prometheus"

inline void RequireTool(const char* path, const char* package) {
  if (::access(path, X_OK) != 0) {
    throw HarnessError(std::string(path) + " is missing: install the Debian package \"" + package +
                       "\" (scripts/install-deps.sh all)");
  }
}

struct HttpResponse {
  int status = 0;  // 0: no answer
  std::string body;
};

// curl with `args` (options, then the URL); -i adds the response headers
// to the body.
inline HttpResponse Curl(const std::vector<std::string>& args) {
  RequireTool(kCurl, "curl");
  // The status code goes last, on a line of its own.
  std::vector<std::string> command = {kCurl, "-s", "--max-time", "5", "-w", "\n%{http_code}"};
  command.insert(command.end(), args.begin(), args.end());
  auto r = RunCommand(command, std::chrono::seconds(10));
  HttpResponse out;
  if (r.exit_code != 0) return out;
  const std::size_t nl = r.output.rfind('\n');
  if (nl == std::string::npos) return out;
  out.status = std::atoi(r.output.c_str() + nl + 1);
  out.body = r.output.substr(0, nl);
  return out;
}

inline HttpResponse Get(int port, const std::string& path) {
  return Curl({"http://127.0.0.1:" + std::to_string(port) + path});
}

// `promtool check metrics` on an exposition: lints names, types, HELP and
// units.
inline void ExpectPromtoolAccepts(const std::string& exposition) {
  RequireTool(kPromtool, "prometheus");
  auto r = RunCommand({kPromtool, "check", "metrics"}, std::chrono::seconds(30), exposition);
  EXPECT_EQ(0, r.exit_code) << r.output << "\n--- exposition:\n" << exposition;
  EXPECT_EQ("", r.output) << "promtool has remarks";
}

// One scrape of /metrics: sample lines as (name, labels) → value.
class Scrape {
 public:
  using Labels = std::map<std::string, std::string>;

  explicit Scrape(std::string text) : text_(std::move(text)) {
    std::size_t start = 0;
    while (start < text_.size()) {
      std::size_t end = text_.find('\n', start);
      if (end == std::string::npos) end = text_.size();
      Parse(text_.substr(start, end - start));
      start = end + 1;
    }
  }

  const std::string& text() const { return text_; }

  // The sum of every sample of `name` whose labels include `match`; nullopt
  // when there is none.
  std::optional<double> Value(const std::string& name, const Labels& match = {}) const {
    std::optional<double> sum;
    for (const Sample& s : samples_) {
      if (s.name != name) continue;
      bool ok = true;
      for (const auto& [k, v] : match) {
        auto it = s.labels.find(k);
        ok = ok && it != s.labels.end() && it->second == v;
      }
      if (ok) sum = sum.value_or(0) + s.value;
    }
    return sum;
  }
  double Or0(const std::string& name, const Labels& match = {}) const { return Value(name, match).value_or(0); }

 private:
  struct Sample {
    std::string name;
    Labels labels;
    double value;
  };
  void Parse(const std::string& line) {
    if (line.empty() || line[0] == '#') return;
    Sample s;
    std::size_t i = line.find_first_of("{ ");
    if (i == std::string::npos) return;
    s.name = line.substr(0, i);
    if (line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const std::size_t eq = line.find('=', i);
        if (eq == std::string::npos || eq + 1 >= line.size() || line[eq + 1] != '"') return;
        const std::string key = line.substr(i, eq - i);
        std::string value;
        std::size_t j = eq + 2;
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\' && j + 1 < line.size()) ++j;
          value += line[j];
        }
        s.labels[key] = value;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      ++i;  // '}'
    }
    s.value = std::strtod(line.c_str() + i, nullptr);
    samples_.push_back(std::move(s));
  }

  std::string text_;
  std::vector<Sample> samples_;
};

inline Scrape ScrapeMetrics(int port) {
  HttpResponse r = Get(port, "/metrics");
  if (r.status != 200) throw HarnessError("GET /metrics answered " + std::to_string(r.status));
  return Scrape(r.body);
}

inline std::string HttpSection(int port) { return "[http]\nlisten = \"127.0.0.1:" + std::to_string(port) + "\"\n"; }

}  // namespace outboxd::testing
