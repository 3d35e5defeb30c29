// monitoring/: the Prometheus alert rules pass `promtool check rules` and
// their unit tests (`promtool test rules alerts_test.yml`), and the Grafana
// dashboard is valid JSON whose queries use only metric names outboxd
// exports (docs/metrics.md) and cover the ones an operator needs.
// promtool comes with Debian's `prometheus` package (scripts/install-deps.sh).

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/harness/test_env.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;

const std::string kMonitoring = std::string(OUTBOXD_SOURCE_DIR) + "/monitoring";

std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool OnPath(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path ? path : "");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    if (!dir.empty() && ::access((dir + "/" + program).c_str(), X_OK) == 0) return true;
  }
  return false;
}

// Metric names documented for outboxd: every `outboxd_...` in backticks of
// docs/metrics.md, plus _bucket/_sum/_count for those on a histogram line.
std::set<std::string> DocumentedMetrics(std::vector<std::string>* sources) {
  const std::vector<std::string> files = {std::string(OUTBOXD_SOURCE_DIR) + "/docs/metrics.md"};
  std::set<std::string> names;
  static const std::regex kName("`(outboxd_[a-z0-9_]+)`");
  for (const auto& file : files) {
    auto text = ReadFile(file);
    if (!text) continue;
    sources->push_back(file);
    std::istringstream in(*text);
    for (std::string line; std::getline(in, line);) {
      for (std::sregex_iterator it(line.begin(), line.end(), kName), end; it != end; ++it) {
        const std::string name = (*it)[1];
        names.insert(name);
        if (line.find("histogram") != std::string::npos) {
          for (const char* suffix : {"_bucket", "_sum", "_count"}) names.insert(name + suffix);
        }
      }
    }
  }
  return names;
}

std::set<std::string> MetricNamesIn(const std::string& text) {
  static const std::regex kMetric("\\boutboxd_[a-zA-Z0-9_:]+");
  std::set<std::string> names;
  for (std::sregex_iterator it(text.begin(), text.end(), kMetric), end; it != end; ++it) names.insert(it->str());
  return names;
}

// Every PromQL string of the dashboard: panel targets' expr and the
// template variables' queries.
std::vector<std::string> DashboardQueries(const nlohmann::json& dashboard) {
  std::vector<std::string> queries;
  std::function<void(const nlohmann::json&, const std::string&)> walk = [&](const nlohmann::json& j,
                                                                            const std::string& key) {
    if (j.is_string() && (key == "expr" || key == "query" || key == "definition")) {
      queries.push_back(j.get<std::string>());
    } else if (j.is_object()) {
      for (const auto& [k, v] : j.items()) walk(v, k);
    } else if (j.is_array()) {
      for (const auto& v : j) walk(v, key);
    }
  };
  walk(dashboard, "");
  return queries;
}

class PromtoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(OnPath("promtool"))
        << "promtool is not installed: it comes with the Debian package `prometheus` "
           "(apt-get install --no-install-recommends prometheus, or scripts/install-deps.sh)";
  }
};

TEST_F(PromtoolTest, AlertRulesPassCheckRules) {
  CommandResult r = RunCommand({"promtool", "check", "rules", kMonitoring + "/alerts.yml"}, 60s);
  EXPECT_EQ(0, r.exit_code) << r.output;
  EXPECT_THAT(r.output, ::testing::HasSubstr("SUCCESS"));
}

TEST_F(PromtoolTest, AlertRulesPassTheirUnitTests) {
  CommandResult r = RunCommand({"promtool", "test", "rules", kMonitoring + "/alerts_test.yml"}, 120s);
  EXPECT_EQ(0, r.exit_code) << r.output;
  EXPECT_THAT(r.output, ::testing::HasSubstr("SUCCESS"));
}

TEST(MonitoringTest, EveryAlertHasAUnitTest) {
  auto rules = ReadFile(kMonitoring + "/alerts.yml");
  auto tests = ReadFile(kMonitoring + "/alerts_test.yml");
  ASSERT_TRUE(rules && tests);
  static const std::regex kAlert(R"(- alert: (\w+))");
  std::set<std::string> alerts;
  for (std::sregex_iterator it(rules->begin(), rules->end(), kAlert), end; it != end; ++it) alerts.insert((*it)[1]);
  for (const char* required : {"OutboxdDown", "OutboxdNotReady", "OutboxdHalted", "OutboxdDeadLetters",
                               "OutboxdNoDeliveries", "OutboxdSlotLagGrowing", "OutboxdSlotWalRetainedHigh"}) {
    EXPECT_TRUE(alerts.count(required)) << required;
  }
  for (const auto& a : alerts) EXPECT_THAT(*tests, ::testing::HasSubstr("alertname: " + a + "\n")) << a;
}

TEST(MonitoringTest, AlertsAndDashboardUseOnlyDocumentedMetrics) {
  std::vector<std::string> sources;
  const std::set<std::string> documented = DocumentedMetrics(&sources);
  ASSERT_FALSE(sources.empty()) << "docs/metrics.md is missing";
  ASSERT_FALSE(documented.empty());
  std::string where;
  for (const auto& s : sources) where += " " + s;

  auto rules = ReadFile(kMonitoring + "/alerts.yml");
  ASSERT_TRUE(rules);
  for (const auto& name : MetricNamesIn(*rules)) {
    EXPECT_TRUE(documented.count(name)) << "alerts.yml uses " << name << ", not documented in" << where;
  }

  auto text = ReadFile(kMonitoring + "/grafana-dashboard.json");
  ASSERT_TRUE(text);
  nlohmann::json dashboard;
  ASSERT_NO_THROW(dashboard = nlohmann::json::parse(*text));
  const auto queries = DashboardQueries(dashboard);
  ASSERT_FALSE(queries.empty());
  std::set<std::string> used;
  for (const auto& q : queries) {
    for (const auto& name : MetricNamesIn(q)) {
      used.insert(name);
      EXPECT_TRUE(documented.count(name))
          << "the dashboard uses " << name << ", not documented in" << where << "\nin: " << q;
    }
  }
  for (const char* needed :
       {"outboxd_events_published_total", "outboxd_publish_errors_total", "outboxd_dead_lettered_total",
        "outboxd_events_in_flight", "outboxd_outbox_pending_rows", "outboxd_outbox_oldest_pending_age_seconds",
        "outboxd_replication_slot_lag_bytes", "outboxd_replication_slot_wal_retained_bytes",
        "outboxd_commit_to_ack_seconds_bucket", "outboxd_kafka_queue_messages", "outboxd_ready"}) {
    EXPECT_TRUE(used.count(needed)) << "the dashboard does not show " << needed;
  }
}

TEST(MonitoringTest, DashboardPanelsAreWellFormed) {
  auto text = ReadFile(kMonitoring + "/grafana-dashboard.json");
  ASSERT_TRUE(text);
  const auto dashboard = nlohmann::json::parse(*text);
  EXPECT_EQ("outboxd", dashboard.value("uid", ""));
  std::set<int> ids;
  for (const auto& panel : dashboard.at("panels")) {
    const std::string title = panel.value("title", "");
    EXPECT_TRUE(ids.insert(panel.at("id").get<int>()).second) << "duplicate panel id in " << title;
    ASSERT_TRUE(panel.contains("gridPos")) << title;
    if (panel.value("type", "") == "row") continue;
    ASSERT_TRUE(panel.contains("targets")) << title;
    for (const auto& t : panel.at("targets")) {
      EXPECT_FALSE(t.value("expr", "").empty()) << title;
      EXPECT_EQ("${datasource}", t.at("datasource").value("uid", "")) << title;
    }
  }
}

}  // namespace
}  // namespace outboxd::testing
