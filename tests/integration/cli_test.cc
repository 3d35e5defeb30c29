// The command line as operators use it: bad configuration gives a clear error
// naming the place and exit code 78; a schema mismatch likewise.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <fstream>
#include <tuple>

#include "tests/integration/relay_test_support.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;

std::string WriteFile(const std::string& name, const std::string& text) {
  std::string path = ::testing::TempDir() + name;
  std::ofstream(path) << text;
  return path;
}

TEST(Cli, VersionPrintsAndExitsZero) {
  auto r = OutboxdProcess::RunCommand({"--version"}, 10s);
  EXPECT_EQ(0, r.exit_code);
  EXPECT_NE(std::string::npos, r.output.find("outboxd ")) << r.output;
}

TEST(Cli, UnknownCommandIsAUsageError) { EXPECT_EQ(64, OutboxdProcess::RunCommand({"frobnicate"}, 10s).exit_code); }

TEST(Cli, CheckConfigAcceptsTheShippedExamples) {
  for (const char* f : {"outbox.toml", "minimal.toml"}) {
    auto r = OutboxdProcess::RunCommand(
        {"check-config", "-c", std::string(OUTBOXD_SOURCE_DIR) + "/config/examples/" + f}, 10s);
    EXPECT_EQ(0, r.exit_code) << f << ": " << r.output;
  }
}

// What exactly-once delivery needs beyond the file is said by check-config,
// with the transactional ids to grant for each source.
TEST(Cli, CheckConfigExplainsExactlyOnceForBothSources) {
  const std::string cdc = WriteFile("eo_cdc.toml",
                                    "[postgres]\nconninfo = \"host=127.0.0.1\"\n[kafka]\nbootstrap_servers = "
                                    "\"b:9092\"\ndelivery = \"exactly-once\"\n[cdc]\nslot = \"orders\"\n"
                                    "message_prefix = \"outbox\"\n");
  auto ok = OutboxdProcess::RunCommand({"check-config", "-c", cdc}, 10s);
  EXPECT_EQ(0, ok.exit_code) << ok.output;
  EXPECT_NE(std::string::npos, ok.output.find("isolation.level=read_committed")) << ok.output;
  EXPECT_NE(std::string::npos, ok.output.find("topic \"outboxd.positions\"")) << ok.output;
  EXPECT_NE(std::string::npos, ok.output.find("outboxd.cdc.<system id>.<database>.orders")) << ok.output;

  const std::string poll = WriteFile("eo_poll.toml",
                                     "[postgres]\nconninfo = \"host=127.0.0.1\"\n[kafka]\nbootstrap_servers = "
                                     "\"b:9092\"\ndelivery = \"exactly-once\"\n[[outbox]]\ntable = \"outbox\"\n"
                                     "[[outbox]]\ntable = \"app.events\"\n");
  auto polled = OutboxdProcess::RunCommand({"check-config", "-c", poll}, 10s);
  EXPECT_EQ(0, polled.exit_code) << polled.output;
  EXPECT_NE(std::string::npos, polled.output.find("isolation.level=read_committed")) << polled.output;
  EXPECT_NE(std::string::npos, polled.output.find("outboxd.poll.<system id>.<database>.app.events,public.outbox"))
      << polled.output;
}

// A password file others may read is warned about, by check-config and at
// the start of a run, without refusing it; one of mode 0600 is not.
TEST(Cli, CheckConfigWarnsOfAPasswordFileOthersMayRead) {
  const std::string password = WriteFile("loose-password", "s3cret\n");
  const std::string config = WriteFile("loose.toml",
                                       "[postgres]\nconninfo = \"host=127.0.0.1\"\n[kafka]\n"
                                       "bootstrap_servers = \"b:9092\"\npassword_file = \"" +
                                           password + "\"\n[[outbox]]\ntable = \"outbox\"\n");
  ASSERT_EQ(0, ::chmod(password.c_str(), 0644));
  auto loose = OutboxdProcess::RunCommand({"check-config", "-c", config}, 10s);
  EXPECT_EQ(0, loose.exit_code) << loose.output;
  EXPECT_NE(std::string::npos, loose.output.find("warning: \"" + password +
                                                 "\" (password_file in [kafka]) holds a secret but has mode 0644"))
      << loose.output;
  ASSERT_EQ(0, ::chmod(password.c_str(), 0600));
  auto tight = OutboxdProcess::RunCommand({"check-config", "-c", config}, 10s);
  EXPECT_EQ(0, tight.exit_code) << tight.output;
  EXPECT_EQ(std::string::npos, tight.output.find("warning")) << tight.output;
}

struct BadConfig {
  const char* name;
  const char* toml;
  const char* expected;  // substring of the error
};

void PrintTo(const BadConfig& c, std::ostream* os) { *os << c.name; }

class CheckConfigRejects : public ::testing::TestWithParam<BadConfig> {};

TEST_P(CheckConfigRejects, WithPlaceAndExit78) {
  const std::string path = WriteFile(std::string(GetParam().name) + ".toml", GetParam().toml);
  for (const char* cmd : {"check-config", "run"}) {
    auto r = OutboxdProcess::RunCommand({cmd, "-c", path}, 20s);
    EXPECT_EQ(78, r.exit_code) << cmd << ": " << r.output;
    EXPECT_NE(std::string::npos, r.output.find(path + ":" + GetParam().expected)) << cmd << ": " << r.output;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cli, CheckConfigRejects,
    ::testing::Values(BadConfig{"unknown_key",
                                "[postgres]\nconninfo = \"host=127.0.0.1\"\nconnifo = \"x\"\n[kafka]\n"
                                "bootstrap_servers = \"b:9092\"\n[[outbox]]\ntable = \"outbox\"\n",
                                "3:1"},
                      BadConfig{"wrong_type",
                                "[postgres]\nconninfo = \"host=127.0.0.1\"\n[kafka]\nbootstrap_servers = "
                                "\"b:9092\"\n[[outbox]]\ntable = \"outbox\"\nbatch_size = \"many\"\n",
                                "7:"},
                      BadConfig{"syntax", "[postgres\nconninfo = 1\n", "1:"},
                      BadConfig{"bad_duration",
                                "[postgres]\nconninfo = \"x\"\n[kafka]\nbootstrap_servers = \"b:9092\"\n"
                                "[[outbox]]\ntable = \"outbox\"\npoll_interval = \"250\"\n",
                                "7:"},
                      BadConfig{"bad_kafka_property",
                                "[postgres]\nconninfo = \"x\"\n[kafka]\nbootstrap_servers = \"b:9092\"\n"
                                "[kafka.properties]\n\"compression.type\" = \"zip\"\n[[outbox]]\ntable = \"outbox\"\n",
                                "6:1: 'compression.type' in [kafka.properties]: Invalid value \"zip\""}),
    [](const auto& info) { return std::string(info.param.name); });

// Starts `outboxd run` against `db` with one [[outbox]] block (line 5 of the
// file) and returns how it ended; `conninfo_extra` is appended to the
// database's conninfo.
struct StartupResult {
  std::string path;
  CommandResult run;
};
StartupResult RunAgainst(const TestDatabase& db, const std::string& name, const std::string& outbox_block,
                         const std::string& conninfo_extra = "") {
  StartupResult r;
  r.path = WriteFile(name + ".toml", "[postgres]\nconninfo = \"" + db.conninfo() + conninfo_extra +
                                         "\"\n[kafka]\nbootstrap_servers = \"" + SharedServices().kafka_bootstrap +
                                         "\"\n[[outbox]]\n" + outbox_block);
  r.run = OutboxdProcess::RunCommand({"run", "-c", r.path}, 30s);
  return r;
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST(Cli, MissingTableAtStartupExits78NamingIt) {
  TestDatabase db;
  auto r = RunAgainst(db, "missing_table", "table = \"public.no_such_outbox\"\n");
  EXPECT_EQ(78, r.run.exit_code) << r.run.output;
  EXPECT_TRUE(Contains(r.run.output, "\"public.no_such_outbox\" does not exist")) << r.run.output;
  EXPECT_TRUE(Contains(r.run.output, r.path + ":5:1")) << r.run.output;
}

// A CloudEvents attribute or trace context mapped to a column the table
// lacks is refused at start-up like any other mapped column.
TEST(Cli, ACloudEventsColumnTheTableLacksExits78NamingIt) {
  TestDatabase db;
  db.Exec(OutboxDdl("outbox"));
  for (const auto& [name, block, column] :
       {std::tuple{"ce_extension",
                   "table = \"outbox\"\nformat = \"cloudevents-binary\"\n"
                   "[outbox.cloudevents.extensions]\ncorrelationid = \"correlation_id\"\n",
                   "correlation_id"},
        std::tuple{"ce_type",
                   "table = \"outbox\"\nformat = \"cloudevents-structured\"\n"
                   "[outbox.cloudevents]\ntype = \"event_type\"\n",
                   "event_type"},
        std::tuple{"traceparent", "table = \"outbox\"\ntraceparent = \"trace_parent\"\n", "trace_parent"}}) {
    SCOPED_TRACE(name);
    auto r = RunAgainst(db, name, block);
    EXPECT_EQ(78, r.run.exit_code) << r.run.output;
    EXPECT_TRUE(Contains(r.run.output, std::string("\"public.outbox\" has no column \"") + column + "\""))
        << r.run.output;
  }
}

TEST(Cli, MissingColumnAtStartupExits78NamingTableAndColumn) {
  TestDatabase db;
  db.Exec(OutboxDdl("outbox"));
  db.Exec("ALTER TABLE outbox DROP COLUMN aggregateid");
  auto r = RunAgainst(db, "missing_column", "table = \"outbox\"\n");
  EXPECT_EQ(78, r.run.exit_code) << r.run.output;
  EXPECT_TRUE(Contains(r.run.output, "\"public.outbox\" has no column \"aggregateid\"")) << r.run.output;
}

TEST(Cli, OrderByMustBeAnInteger) {
  TestDatabase db;
  db.Exec(OutboxDdl("outbox"));
  auto r = RunAgainst(db, "order_by_text", "table = \"outbox\"\norder_by = \"type\"\n");
  EXPECT_EQ(78, r.run.exit_code) << r.run.output;
  EXPECT_TRUE(Contains(r.run.output, "public.outbox.type")) << r.run.output;
}

TEST(Cli, MissingDeletePrivilegeExits78NamingIt) {
  TestDatabase db;
  db.Exec(OutboxDdl("outbox"));
  const std::string role = db.name() + "_reader";
  db.Exec("CREATE ROLE " + role + " LOGIN; GRANT SELECT ON outbox TO " + role);
  auto r = RunAgainst(db, "no_delete", "table = \"outbox\"\n", " user=" + role);
  db.Exec("REVOKE ALL ON outbox FROM " + role + "; DROP ROLE " + role);
  EXPECT_EQ(78, r.run.exit_code) << r.run.output;
  EXPECT_TRUE(Contains(r.run.output, "may not DELETE from \"public.outbox\"")) << r.run.output;
}

}  // namespace
}  // namespace outboxd::testing
