#include "config/config.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace outboxd {
namespace {

using std::chrono::milliseconds;

// The smallest valid sections, two lines each. Tests that look at line numbers
// put the section under test first, so its lines are numbered from 1.
const std::string kOutbox =
    "[[outbox]]\n"
    "table = \"public.outbox\"\n";
const std::string kPostgres =
    "[postgres]\n"
    "conninfo = \"host=db dbname=app\"\n";
const std::string kKafka =
    "[kafka]\n"
    "bootstrap_servers = \"kafka:9092\"\n";
// A [cdc] section that captures something.
const std::string kCdc =
    "[cdc]\n"
    "message_prefix = \"outbox\"\n";

const std::string kNoOutboxNorCdc =
    ": missing required section [[outbox]] or [cdc]: configure at least one outbox table, "
    "or what to capture through a replication slot";

// Writes TOML text to a file in a fresh directory and loads it.
class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "outboxd-config-XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string PathOf(const std::string& name) const { return dir_ + "/" + name; }
  std::string ConfigPath() const { return PathOf("outboxd.toml"); }

  void WriteFile(const std::string& name, const std::string& text) const {
    std::ofstream(PathOf(name), std::ios::binary) << text;
  }

  Result<Config> Load(const std::string& text) const {
    WriteFile("outboxd.toml", text);
    return LoadConfig(ConfigPath());
  }

  // Loads text that must be valid.
  Config Valid(const std::string& text) const {
    Result<Config> config = Load(text);
    EXPECT_TRUE(config.ok()) << config.status().message();
    return config.ok() ? *config : Config{};
  }

  // Loads text that must be rejected; returns the error message.
  std::string Error(const std::string& text) const {
    Result<Config> config = Load(text);
    EXPECT_FALSE(config.ok()) << "loaded without error";
    EXPECT_EQ(config.status().code(), StatusCode::kInvalidConfig);
    return config.status().message();
  }

  // "FILE:LINE:COLUMN" in the config file, as error messages start.
  std::string At(int line, int column) const {
    return ConfigPath() + ":" + std::to_string(line) + ":" + std::to_string(column);
  }

  std::string dir_;
};

// Sets an environment variable for the length of one test.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) { setenv(name, value, 1); }
  ~ScopedEnv() { unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
};

// --- Valid files ------------------------------------------------------------

TEST_F(ConfigTest, MinimalFileGetsDebeziumDefaults) {
  Config c = Valid(kPostgres + kKafka + kOutbox);  // [[outbox]] is on line 5

  EXPECT_EQ(c.path, ConfigPath());
  EXPECT_EQ(c.postgres.conninfo, "host=db dbname=app");
  EXPECT_EQ(c.postgres.password, std::nullopt);
  EXPECT_EQ(c.kafka.bootstrap_servers, "kafka:9092");
  EXPECT_TRUE(c.kafka.properties.empty());
  EXPECT_EQ(c.kafka.max_in_flight, 50000u);
  EXPECT_EQ(c.kafka.shutdown_timeout, milliseconds(10000));
  EXPECT_EQ(c.http.listen, std::nullopt);
  EXPECT_EQ(c.log.level, "info");
  EXPECT_EQ(c.log.format, LogFormat::kText);

  ASSERT_EQ(c.outboxes.size(), 1u);
  const OutboxTableConfig& o = c.outboxes[0];
  EXPECT_EQ(o.table, "public.outbox");
  EXPECT_EQ(o.order_by, "seq");
  EXPECT_EQ(o.after_delivery, AfterDelivery::kDelete);
  EXPECT_EQ(o.sent_column, std::nullopt);
  EXPECT_EQ(o.id, "id");
  EXPECT_EQ(o.key, "aggregateid");
  EXPECT_EQ(o.payload, "payload");
  EXPECT_EQ(o.topic, "outbox.event.${aggregatetype}");
  EXPECT_TRUE(o.headers.empty());
  EXPECT_EQ(o.timestamp, std::nullopt);
  EXPECT_EQ(o.batch_size, 1000u);
  EXPECT_EQ(o.poll_interval, milliseconds(250));
  EXPECT_EQ(o.notify_channel, std::nullopt);
  EXPECT_EQ(o.dead_letter_topic, std::nullopt);
  EXPECT_EQ(o.config_location, At(5, 1));
}

TEST_F(ConfigTest, EveryKeySet) {
  WriteFile("pg-password", "s3cret\n");
  Config c = Valid(
      "[postgres]\n"
      "conninfo = \"postgresql://outboxd@db/app\"\n"
      "password_file = \"pg-password\"\n"  // relative to the config file
      "[kafka]\n"
      "bootstrap_servers = \"k1:9092,k2:9092\"\n"
      "max_in_flight = 200\n"
      "shutdown_timeout = \"30s\"\n"
      "[kafka.properties]\n"
      "\"compression.type\" = \"lz4\"\n"
      "[http]\n"
      "listen = \"0.0.0.0:9464\"\n"
      "[log]\n"
      "level = \"debug\"\n"
      "format = \"json\"\n"
      "[[outbox]]\n"  // line 15
      "table = \"app.outbox\"\n"
      "source = \"poll\"\n"
      "order_by = \"position\"\n"
      "after_delivery = \"mark\"\n"
      "sent_column = \"sent_at\"\n"
      "id = \"event_id\"\n"
      "key = \"partition_key\"\n"
      "payload = \"body\"\n"
      "topic = \"${aggregate}.events\"\n"
      "headers = { type = \"event_type\", traceparent = \"traceparent\", ce_source = \"source\" }\n"
      "timestamp = \"created_at\"\n"
      "batch_size = 500\n"
      "poll_interval = \"1.5s\"\n"
      "notify_channel = \"outbox_ready\"\n"
      "dead_letter_topic = \"outbox.dlq\"\n"
      "[[outbox]]\n"  // line 31
      "table = \"billing.outbox\"\n"
      "key = \"\"\n");

  EXPECT_EQ(c.postgres.conninfo, "postgresql://outboxd@db/app");
  EXPECT_EQ(c.postgres.password, "s3cret");
  EXPECT_EQ(c.kafka.bootstrap_servers, "k1:9092,k2:9092");
  EXPECT_EQ(c.kafka.max_in_flight, 200u);
  EXPECT_EQ(c.kafka.shutdown_timeout, milliseconds(30000));
  EXPECT_EQ(c.kafka.properties, (std::map<std::string, std::string>{{"compression.type", "lz4"}}));
  EXPECT_EQ(c.http.listen, "0.0.0.0:9464");
  EXPECT_EQ(c.log.level, "debug");
  EXPECT_EQ(c.log.format, LogFormat::kJson);

  ASSERT_EQ(c.outboxes.size(), 2u);
  const OutboxTableConfig& o = c.outboxes[0];
  EXPECT_EQ(o.table, "app.outbox");
  EXPECT_EQ(o.order_by, "position");
  EXPECT_EQ(o.after_delivery, AfterDelivery::kMark);
  EXPECT_EQ(o.sent_column, "sent_at");
  EXPECT_EQ(o.id, "event_id");
  EXPECT_EQ(o.key, "partition_key");
  EXPECT_EQ(o.payload, "body");
  EXPECT_EQ(o.topic, "${aggregate}.events");
  // In the order written, not sorted.
  using Headers = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(o.headers, (Headers{{"type", "event_type"}, {"traceparent", "traceparent"}, {"ce_source", "source"}}));
  EXPECT_EQ(o.timestamp, "created_at");
  EXPECT_EQ(o.batch_size, 500u);
  EXPECT_EQ(o.poll_interval, milliseconds(1500));
  EXPECT_EQ(o.notify_channel, "outbox_ready");
  EXPECT_EQ(o.dead_letter_topic, "outbox.dlq");
  EXPECT_EQ(o.config_location, At(15, 1));

  const OutboxTableConfig& billing = c.outboxes[1];
  EXPECT_EQ(billing.table, "billing.outbox");
  EXPECT_EQ(billing.key, std::nullopt);  // key = "" means records have no key
  EXPECT_EQ(billing.config_location, At(31, 1));
}

TEST_F(ConfigTest, SectionsMayComeInAnyOrder) {
  Config c = Valid(kOutbox + kKafka + kPostgres);
  EXPECT_EQ(c.outboxes.at(0).config_location, At(1, 1));
  EXPECT_EQ(c.postgres.conninfo, "host=db dbname=app");
}

TEST_F(ConfigTest, TableNamesFollowSqlIdentifierSyntax) {
  for (const char* table : {"outbox", "public.outbox", "\\\"My Schema\\\".\\\"Outbox\\\"", "app_1.outbox$2",
                            "\\\"with \\\"\\\"quote\\\"\\\"\\\"", "Ünïcode.outbox"}) {
    SCOPED_TRACE(table);
    Valid("[[outbox]]\ntable = \"" + std::string(table) + "\"\n" + kPostgres + kKafka);
  }
}

TEST_F(ConfigTest, ShippedExamplesLoad) {
  // Every file in the directory, so that a new example cannot be forgotten here.
  // secured.toml reads its secrets from systemd's credentials directory.
  for (const char* credential : {"pg-password", "kafka-password", "metrics-password"}) WriteFile(credential, "pw\n");
  ScopedEnv credentials("CREDENTIALS_DIRECTORY", dir_.c_str());
  int loaded = 0;
  for (const auto& entry : std::filesystem::directory_iterator(OUTBOXD_CONFIG_EXAMPLES_DIR)) {
    if (entry.path().extension() != ".toml") continue;
    SCOPED_TRACE(entry.path().string());
    Result<Config> c = LoadConfig(entry.path().string());
    EXPECT_TRUE(c.ok()) << c.status().message();
    ++loaded;
  }
  EXPECT_GE(loaded, 4);  // minimal.toml, outbox.toml, cdc.toml, secured.toml
}

TEST_F(ConfigTest, ShippedCdcExample) {
  Result<Config> c = LoadConfig(std::string(OUTBOXD_CONFIG_EXAMPLES_DIR) + "/cdc.toml");
  ASSERT_TRUE(c.ok()) << c.status().message();
  ASSERT_TRUE(c->cdc.has_value());
  EXPECT_TRUE(c->cdc->create);
  EXPECT_EQ(c->cdc->message_prefix, "outbox");
  EXPECT_EQ(c->cdc->tables, std::vector<std::string>{"public.orders"});
  ASSERT_EQ(c->outboxes.size(), 1u);
  EXPECT_EQ(c->outboxes[0].table, "public.outbox");
  EXPECT_EQ(c->outboxes[0].source, OutboxSource::kCdc);
}

// --- Unknown keys -----------------------------------------------------------

TEST_F(ConfigTest, UnknownTopLevelKey) {
  EXPECT_EQ(Error("colour = \"blue\"\n" + kPostgres + kKafka + kOutbox), At(1, 1) + ": unknown top-level key 'colour'");
}

TEST_F(ConfigTest, TopLevelKeyThatBelongsInASectionSaysWhere) {
  EXPECT_EQ(Error("listen = \"127.0.0.1:9464\"\n" + kPostgres + kKafka + kOutbox),
            At(1, 1) + ": unknown top-level key 'listen' (it belongs in [http], after the section header)");
}

TEST_F(ConfigTest, UnknownSectionSuggestsTheClosest) {
  EXPECT_EQ(Error(kPostgres + kKafka + kOutbox +
                  "[kafak]\n"  // line 7; the name starts in column 2
                  "linger = 5\n"),
            At(7, 2) + ": unknown section [kafak] (did you mean [kafka]?)");
  EXPECT_EQ(Error(kPostgres + kKafka + kOutbox + "[[outbx]]\n"),
            At(7, 3) + ": unknown section [[outbx]] (did you mean [[outbox]]?)");
}

TEST_F(ConfigTest, UnknownKeyInSection) {
  EXPECT_EQ(Error("[kafka]\n"
                  "bootstrap_servers = \"kafka:9092\"\n"
                  "  colour = \"blue\"\n" +  // line 3, indented by two
                  kPostgres +
                  kOutbox),
            At(3, 3) + ": unknown key 'colour' in [kafka]");
}

TEST_F(ConfigTest, UnknownKeyInSectionSuggestsTheClosest) {
  EXPECT_EQ(Error("[kafka]\n"
                  "bootstrap_servers = \"kafka:9092\"\n"
                  "max_inflight = 10\n" +
                  kPostgres + kOutbox),
            At(3, 1) + ": unknown key 'max_inflight' in [kafka] (did you mean 'max_in_flight'?)");
}

TEST_F(ConfigTest, UnknownKeyInOutboxBlockNamesTheBlock) {
  EXPECT_EQ(Error(kOutbox +
                  "[[outbox]]\n"  // line 3: block #2
                  "table = \"billing.outbox\"\n"
                  "bacth_size = 10\n" +
                  kPostgres + kKafka),
            At(5, 1) + ": unknown key 'bacth_size' in [[outbox]] #2 (did you mean 'batch_size'?)");
}

TEST_F(ConfigTest, UnknownSubTableOfAnOutboxBlock) {
  EXPECT_EQ(Error(kOutbox +
                  "[outbox.extra]\n"  // belongs to block #1
                  "a = 1\n" +
                  kPostgres + kKafka),
            At(3, 9) + ": unknown key 'extra' in [[outbox]] #1");
}

// --- Types and required values ---------------------------------------------

TEST_F(ConfigTest, WrongTypeInOutboxBlock) {
  EXPECT_EQ(Error(kOutbox + "batch_size = \"100\"\n" +  // line 3, value in column 14
                  kPostgres + kKafka),
            At(3, 14) + ": 'batch_size' in [[outbox]] #1 must be an integer, got string");
}

TEST_F(ConfigTest, WrongTypeInSection) {
  EXPECT_EQ(Error("[postgres]\n"
                  "conninfo = 5432\n" +
                  kKafka + kOutbox),
            At(2, 12) + ": 'conninfo' in [postgres] must be a string, got integer");
  EXPECT_EQ(Error("[log]\n"
                  "level = true\n" +
                  kPostgres + kKafka + kOutbox),
            At(2, 9) + ": 'level' in [log] must be a string, got boolean");
  EXPECT_EQ(Error("[kafka]\n"
                  "bootstrap_servers = \"kafka:9092\"\n"
                  "properties = \"acks=all\"\n" +
                  kPostgres + kOutbox),
            At(3, 14) + ": 'properties' in [kafka] must be a table of librdkafka properties, got string");
  EXPECT_EQ(Error(kOutbox + "headers = \"type\"\n" + kPostgres + kKafka),
            At(3, 11) + ": 'headers' in [[outbox]] #1 must be a table of header name = \"column\", got string");
}

TEST_F(ConfigTest, SectionThatIsNotATable) {
  EXPECT_EQ(Error("postgres = \"host=db\"\n" + kKafka + kOutbox),
            At(1, 12) + ": 'postgres' must be a table ([postgres]), got string");
}

TEST_F(ConfigTest, EmptyOutboxArray) {
  EXPECT_EQ(Error("outbox = []\n" + kPostgres + kKafka), At(1, 10) + ": 'outbox' must list at least one outbox table");
}

TEST_F(ConfigTest, OutboxWithSingleBracketsIsNotAnArrayOfTables) {
  EXPECT_EQ(Error("[outbox]\n"
                  "table = \"public.outbox\"\n" +
                  kPostgres + kKafka),
            At(1, 1) + ": 'outbox' must be an array of tables ([[outbox]]), got table");
}

TEST_F(ConfigTest, MissingRequiredKeyPointsAtTheSectionHeader) {
  EXPECT_EQ(Error(kKafka + kOutbox + "[postgres]\n"),  // line 5
            At(5, 1) + ": [postgres] is missing required key 'conninfo'");
  EXPECT_EQ(Error("[kafka]\n"
                  "max_in_flight = 10\n" +
                  kPostgres + kOutbox),
            At(1, 1) + ": [kafka] is missing required key 'bootstrap_servers'");
  EXPECT_EQ(Error(kOutbox +
                  "[[outbox]]\n"  // line 3: block #2
                  "batch_size = 10\n" +
                  kPostgres + kKafka),
            At(3, 1) + ": [[outbox]] #2 is missing required key 'table'");
}

TEST_F(ConfigTest, MissingSectionsPointAtTheFile) {
  EXPECT_EQ(Error(kKafka + kOutbox), At(1, 1) + ": missing required section [postgres]");
  EXPECT_EQ(Error(kPostgres + kOutbox), At(1, 1) + ": missing required section [kafka]");
  EXPECT_EQ(Error(kPostgres + kKafka), At(1, 1) + kNoOutboxNorCdc);
}

TEST_F(ConfigTest, EveryErrorIsReportedInFileOrder) {
  EXPECT_EQ(Error(""), At(1, 1) + ": missing required section [postgres]\n" +  //
                           At(1, 1) + ": missing required section [kafka]\n" + At(1, 1) + kNoOutboxNorCdc);
  EXPECT_EQ(Error(kOutbox +
                  "batch_size = 0\n"  // line 3
                  "colour = 1\n" +    // line 4
                  kPostgres +
                  "[kafka]\n"  // line 7
                  "bootstrap_servers = 9092\n"),
            At(3, 14) + ": 'batch_size' in [[outbox]] #1 must be between 1 and 100000, got 0\n" +  //
                At(4, 1) + ": unknown key 'colour' in [[outbox]] #1\n" + At(8, 21) +
                ": 'bootstrap_servers' in [kafka] must be a string, got integer");
}

// --- Values -----------------------------------------------------------------

TEST_F(ConfigTest, DurationWithoutUnit) {
  EXPECT_EQ(Error(kOutbox + "poll_interval = 250\n" + kPostgres + kKafka),
            At(3, 17) +
                ": 'poll_interval' in [[outbox]] #1 must be a duration string with a unit, "
                "such as \"250ms\" or \"10s\", got integer");
  EXPECT_EQ(Error(kOutbox + "poll_interval = \"250\"\n" + kPostgres + kKafka),
            At(3, 17) +
                ": 'poll_interval' in [[outbox]] #1: invalid duration \"250\": expected a number "
                "followed by a unit (ms, s, m or h), such as \"250ms\" or \"10s\"");
}

TEST_F(ConfigTest, BadDurationInKafka) {
  EXPECT_EQ(Error("[kafka]\n"
                  "bootstrap_servers = \"kafka:9092\"\n"
                  "shutdown_timeout = \"10 s\"\n" +
                  kPostgres + kOutbox),
            At(3, 20) +
                ": 'shutdown_timeout' in [kafka]: invalid duration \"10 s\": expected a number "
                "followed by a unit (ms, s, m or h), such as \"250ms\" or \"10s\"");
}

TEST_F(ConfigTest, PollIntervalMustBePositive) {
  EXPECT_EQ(Error(kOutbox + "poll_interval = \"0ms\"\n" + kPostgres + kKafka),
            At(3, 17) + ": 'poll_interval' in [[outbox]] #1 must be greater than zero");
}

TEST_F(ConfigTest, ShutdownTimeoutMayBeZero) {
  Config c = Valid(kPostgres + kOutbox + kKafka + "shutdown_timeout = \"0s\"\n");
  EXPECT_EQ(c.kafka.shutdown_timeout, milliseconds(0));
}

TEST_F(ConfigTest, BadEnumValues) {
  EXPECT_EQ(Error("[log]\n"
                  "level = \"verbose\"\n" +
                  kPostgres + kKafka + kOutbox),
            At(2, 9) + ": 'level' in [log] must be trace, debug, info, warn or error, got \"verbose\"");
  EXPECT_EQ(Error("[log]\n"
                  "format = \"yaml\"\n" +
                  kPostgres + kKafka + kOutbox),
            At(2, 10) + ": 'format' in [log] must be text or json, got \"yaml\"");
  EXPECT_EQ(Error(kOutbox + "after_delivery = \"remove\"\n" + kPostgres + kKafka),
            At(3, 18) + ": 'after_delivery' in [[outbox]] #1 must be delete or mark, got \"remove\"");
}

TEST_F(ConfigTest, MarkNeedsSentColumn) {
  EXPECT_EQ(Error(kOutbox + "after_delivery = \"mark\"\n" + kPostgres + kKafka),
            At(3, 18) +
                ": 'after_delivery' in [[outbox]] #1: \"mark\" needs 'sent_column', "
                "the column to set when a row is delivered");
}

TEST_F(ConfigTest, SentColumnWithDeleteIsAnError) {
  const std::string expected =
      ": 'sent_column' in [[outbox]] #1: only used with after_delivery = \"mark\" "
      "(with \"delete\", delivered rows are deleted)";
  EXPECT_EQ(Error(kOutbox +
                  "after_delivery = \"delete\"\n"
                  "sent_column = \"sent_at\"\n" +  // line 4
                  kPostgres +
                  kKafka),
            At(4, 15) + expected);
  // delete is the default
  EXPECT_EQ(Error(kOutbox + "sent_column = \"sent_at\"\n" + kPostgres + kKafka), At(3, 15) + expected);
}

TEST_F(ConfigTest, BatchSizeRange) {
  auto with_batch_size = [&](const std::string& value) {
    return kOutbox + "batch_size = " + value + "\n" + kPostgres + kKafka;
  };
  EXPECT_EQ(Error(with_batch_size("0")),
            At(3, 14) + ": 'batch_size' in [[outbox]] #1 must be between 1 and 100000, got 0");
  EXPECT_EQ(Error(with_batch_size("100001")),
            At(3, 14) + ": 'batch_size' in [[outbox]] #1 must be between 1 and 100000, got 100001");
  EXPECT_EQ(Error(with_batch_size("-5")),
            At(3, 14) + ": 'batch_size' in [[outbox]] #1 must be between 1 and 100000, got -5");
  EXPECT_EQ(Valid(with_batch_size("1")).outboxes.at(0).batch_size, 1u);
  EXPECT_EQ(Valid(with_batch_size("100000")).outboxes.at(0).batch_size, 100000u);
}

TEST_F(ConfigTest, MaxInFlightMustBePositive) {
  EXPECT_EQ(Error("[kafka]\n"
                  "bootstrap_servers = \"kafka:9092\"\n"
                  "max_in_flight = 0\n" +
                  kPostgres + kOutbox),
            At(3, 17) + ": 'max_in_flight' in [kafka] must be a positive integer, got 0");
}

TEST_F(ConfigTest, BadTopicTemplates) {
  auto topic_error = [&](const std::string& topic) {
    return Error(kOutbox + "topic = \"" + topic + "\"\n" + kPostgres + kKafka);
  };
  const std::string prefix = At(3, 9) + ": 'topic' in [[outbox]] #1: not a valid topic template: ";
  EXPECT_EQ(topic_error("outbox.${aggregatetype"), prefix + "unterminated \"${\" at character 8");
  EXPECT_EQ(topic_error("orders}"), prefix + "'}' at character 7 has no matching \"${\"");
  EXPECT_EQ(topic_error("orders.${}"), prefix + "empty placeholder \"${}\" at character 8");
  EXPECT_EQ(topic_error("a.${x${y}}"), prefix + "'$' inside the placeholder at character 3");
  EXPECT_EQ(topic_error("$type"), prefix + "'$' at character 1 must start a ${column} placeholder");
  EXPECT_EQ(topic_error("{type}"), prefix + "'{' at character 1 must follow '$' in a ${column} placeholder");
  EXPECT_EQ(topic_error("events for ${type}"), prefix +
                                                   "' ' at character 7 is not allowed in a Kafka topic name "
                                                   "(letters, digits, '.', '_', '-' and ${column})");
  EXPECT_EQ(topic_error(""), prefix + "it is empty");
}

TEST_F(ConfigTest, GoodTopicTemplates) {
  for (const char* topic : {"orders", "${aggregatetype}", "app.${aggregatetype}.${type}-v1", "x_${a}${b}"}) {
    SCOPED_TRACE(topic);
    EXPECT_EQ(Valid(kOutbox + "topic = \"" + topic + "\"\n" + kPostgres + kKafka).outboxes.at(0).topic, topic);
  }
}

TEST_F(ConfigTest, BadDeadLetterTopic) {
  EXPECT_EQ(Error(kOutbox + "dead_letter_topic = \"dead letters\"\n" + kPostgres + kKafka),
            At(3, 21) +
                ": 'dead_letter_topic' in [[outbox]] #1: not a valid Kafka topic name: ' ' at character 5 "
                "is not allowed in a Kafka topic name (letters, digits, '.', '_' and '-')");
}

TEST_F(ConfigTest, BadTableNames) {
  auto table_error = [&](const std::string& table) {
    return Error("[[outbox]]\ntable = \"" + table + "\"\n" + kPostgres + kKafka);
  };
  const std::string prefix = At(2, 9) + ": 'table' in [[outbox]] #1 must be \"schema.table\" or \"table\": ";
  EXPECT_EQ(table_error("app.public.outbox"), prefix + "it has 3 parts");
  EXPECT_EQ(table_error("public outbox"), prefix + "unexpected ' ' at character 7 (double-quote unusual names)");
  EXPECT_EQ(table_error("1outbox"), prefix + "unexpected '1' at character 1 (double-quote unusual names)");
  EXPECT_EQ(table_error("public."), prefix + "expected an identifier after the last '.'");
  EXPECT_EQ(table_error(""), prefix + "it is empty");
  EXPECT_EQ(table_error("\\\"Outbox"), prefix + "unterminated quoted identifier starting at character 1");
  EXPECT_EQ(table_error(std::string(64, 'x')),
            prefix + "identifier \"" + std::string(64, 'x') + "\" is longer than PostgreSQL's 63-byte limit");
}

TEST_F(ConfigTest, EmptyColumnName) {
  EXPECT_EQ(Error(kOutbox + "payload = \"\"\n" + kPostgres + kKafka),
            At(3, 11) + ": 'payload' in [[outbox]] #1 must be a column name, got \"\"");
}

TEST_F(ConfigTest, DuplicateTables) {
  EXPECT_EQ(
      Error(kOutbox +
            "[[outbox]]\n"
            "table = \"PUBLIC.Outbox\"\n" +  // line 4; unquoted names fold to lower case
            kPostgres +
            kKafka),
      At(4, 9) + ": 'table' in [[outbox]] #2: \"PUBLIC.Outbox\" is already configured by [[outbox]] #1 at " + At(1, 1));
}

TEST_F(ConfigTest, QuotedTableNamesKeepTheirCase) {
  Config c = Valid(kOutbox +
                   "[[outbox]]\n"
                   "table = 'public.\"Outbox\"'\n" +
                   kPostgres + kKafka);
  EXPECT_EQ(c.outboxes.size(), 2u);
}

TEST_F(ConfigTest, HeaderIdIsReserved) {
  EXPECT_EQ(Error(kOutbox + "headers = { id = \"event_id\" }\n" + kPostgres + kKafka),
            At(3, 13) +
                ": header 'id' in [[outbox]] #1: the 'id' header always carries the event id; "
                "choose its column with 'id'");
  EXPECT_EQ(Error(kOutbox + "headers = { type = 1 }\n" + kPostgres + kKafka),
            At(3, 20) + ": header 'type' in [[outbox]] #1 must be a column name string, got integer");
}

TEST_F(ConfigTest, HeadersMayBeASubTable) {
  Config c = Valid(kOutbox +
                   "[outbox.headers]\n"
                   "type = \"type\"\n"
                   "traceparent = \"trace\"\n" +
                   kPostgres + kKafka);
  using Headers = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(c.outboxes.at(0).headers, (Headers{{"type", "type"}, {"traceparent", "trace"}}));
}

TEST_F(ConfigTest, HttpListenAddress) {
  auto listen_error = [&](const std::string& listen) {
    return Error("[http]\nlisten = \"" + listen + "\"\n" + kPostgres + kKafka + kOutbox);
  };
  const std::string prefix = At(2, 10) + ": 'listen' in [http] must be \"host:port\", such as \"127.0.0.1:9464\": ";
  EXPECT_EQ(listen_error("localhost"), prefix + "missing \":port\"");
  EXPECT_EQ(listen_error("localhost:"), prefix + "missing port");
  EXPECT_EQ(listen_error(":9464"), prefix + "missing host (use 0.0.0.0 to listen on all interfaces)");
  EXPECT_EQ(listen_error("localhost:http"), prefix + "port \"http\" is not a number from 1 to 65535");
  EXPECT_EQ(listen_error("localhost:65536"), prefix + "port \"65536\" is not a number from 1 to 65535");
  EXPECT_EQ(listen_error("::1:9464"), prefix + "write an IPv6 address in brackets, such as \"[::1]:9464\"");
  for (const char* ok : {"127.0.0.1:9464", "localhost:1", "[::1]:9464", "[::]:65535"}) {
    SCOPED_TRACE(ok);
    EXPECT_EQ(Valid("[http]\nlisten = \"" + std::string(ok) + "\"\n" + kPostgres + kKafka + kOutbox).http.listen, ok);
  }
}

// A port alone listens on loopback: exposing /metrics is a choice.
TEST_F(ConfigTest, HttpListenPortAloneIsLoopback) {
  EXPECT_EQ(Valid("[http]\nlisten = \"9464\"\n" + kPostgres + kKafka + kOutbox).http.listen, "127.0.0.1:9464");
}

TEST_F(ConfigTest, HttpTlsAndBasicAuth) {
  WriteFile("metrics-password", "scrape me\n");
  Config c = Valid(
      "[http]\n"
      "listen = \"0.0.0.0:9464\"\n"
      "tls_cert_file = \"http.crt\"\n"  // relative to the config file
      "tls_key_file = \"/etc/outboxd/http.key\"\n"
      "basic_auth_user = \"prometheus\"\n"
      "basic_auth_password_file = \"metrics-password\"\n"
      "basic_auth_health = true\n" +
      kPostgres + kKafka + kOutbox);
  EXPECT_EQ(c.http.tls_cert_file, PathOf("http.crt"));
  EXPECT_EQ(c.http.tls_key_file, "/etc/outboxd/http.key");
  EXPECT_EQ(c.http.basic_auth_user, "prometheus");
  EXPECT_EQ(c.http.basic_auth_password, "scrape me");
  EXPECT_TRUE(c.http.basic_auth_health);
}

TEST_F(ConfigTest, HttpKeysThatNeedEachOther) {
  WriteFile("pw", "x");
  EXPECT_EQ(Error("[http]\nlisten = \"9464\"\ntls_cert_file = \"c.crt\"\n" + kPostgres + kKafka + kOutbox),
            At(3, 17) + ": 'tls_cert_file' in [http]: needs 'tls_key_file' too");
  EXPECT_EQ(Error("[http]\nlisten = \"9464\"\nbasic_auth_password_file = \"pw\"\n" + kPostgres + kKafka + kOutbox),
            At(3, 28) + ": 'basic_auth_password_file' in [http]: needs 'basic_auth_user' too");
  EXPECT_EQ(
      Error("[http]\nbasic_auth_user = \"p\"\nbasic_auth_password_file = \"pw\"\n" + kPostgres + kKafka + kOutbox),
      At(2, 19) + ": 'basic_auth_user' in [http]: has no effect without 'listen'\n" + At(3, 28) +
          ": 'basic_auth_password_file' in [http]: has no effect without 'listen'");
}

// --- format, CloudEvents, trace context ---------------------------------------

TEST_F(ConfigTest, CloudEventsDefaults) {
  Config c = Valid(kOutbox + "format = \"cloudevents-binary\"\n" + kPostgres + kKafka);
  const OutboxTableConfig& o = c.outboxes.at(0);
  EXPECT_EQ(EventFormat::kCloudEventsBinary, o.format);
  EXPECT_EQ("/outboxd/public.outbox", o.cloudevents.source);
  EXPECT_EQ("type", o.cloudevents.type);
  EXPECT_EQ(std::optional<std::string>("aggregateid"), o.cloudevents.subject);  // the key column
  EXPECT_EQ("application/json", o.cloudevents.datacontenttype);
  EXPECT_TRUE(o.cloudevents.extensions.empty());
  EXPECT_EQ(EventFormat::kDebezium, Valid(kOutbox + kPostgres + kKafka).outboxes.at(0).format);
}

TEST_F(ConfigTest, CloudEventsEveryKeySet) {
  Config c = Valid(
      "[[outbox]]\n"
      "table = \"app.events\"\n"
      "format = \"cloudevents-structured\"\n"
      "traceparent = \"trace_parent\"\n"
      "tracestate = \"trace_state\"\n"
      "[outbox.cloudevents]\n"
      "source = \"https://orders.example.com/svc\"\n"
      "type = \"event_type\"\n"
      "subject = \"\"\n"
      "datacontenttype = \"application/vnd.orders+json\"\n"
      "[outbox.cloudevents.extensions]\n"
      "correlationid = \"correlation_id\"\n"
      "causationid = \"causation_id\"\n" +
      kPostgres + kKafka);
  const OutboxTableConfig& o = c.outboxes.at(0);
  EXPECT_EQ(EventFormat::kCloudEventsStructured, o.format);
  EXPECT_EQ(std::optional<std::string>("trace_parent"), o.traceparent);
  EXPECT_EQ(std::optional<std::string>("trace_state"), o.tracestate);
  EXPECT_EQ("https://orders.example.com/svc", o.cloudevents.source);
  EXPECT_EQ("event_type", o.cloudevents.type);
  EXPECT_FALSE(o.cloudevents.subject.has_value());
  EXPECT_EQ("application/vnd.orders+json", o.cloudevents.datacontenttype);
  using Pairs = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ((Pairs{{"correlationid", "correlation_id"}, {"causationid", "causation_id"}}), o.cloudevents.extensions);
}

TEST_F(ConfigTest, CloudEventsMistakes) {
  auto error = [&](const std::string& lines) { return Error(kOutbox + lines + kPostgres + kKafka); };
  EXPECT_EQ(error("format = \"cloudevents\"\n"),
            At(3, 10) +
                ": 'format' in [[outbox]] #1 must be debezium, cloudevents-binary or cloudevents-structured, "
                "got \"cloudevents\"");
  EXPECT_EQ(error("[outbox.cloudevents]\nsource = \"/s\"\n"),
            At(3, 1) +
                ": 'cloudevents' in [[outbox]] #1: has no effect with format = \"debezium\" (set format = "
                "\"cloudevents-binary\" or \"cloudevents-structured\")");
  EXPECT_EQ(error("format = \"cloudevents-binary\"\n[outbox.cloudevents]\nsource = \"/orders service\"\n"),
            At(5, 10) +
                ": 'source' in [outbox.cloudevents] of [[outbox]] #1 must be a URI-reference, such as "
                "\"/orders-service\": character 8 is not allowed in a URI (percent-encode it)");
  EXPECT_EQ(error("format = \"cloudevents-binary\"\n[outbox.cloudevents.extensions]\nCorrelationId = \"c\"\n"),
            At(5, 1) +
                ": extension attribute 'CorrelationId' in [outbox.cloudevents] of [[outbox]] #1: not only "
                "lower-case letters a-z and digits");
  EXPECT_EQ(error("format = \"cloudevents-binary\"\n[outbox.cloudevents.extensions]\nsubject = \"c\"\n"),
            At(5, 1) +
                ": extension attribute 'subject' in [outbox.cloudevents] of [[outbox]] #1: the name of a "
                "CloudEvents context attribute");
  EXPECT_EQ(error("format = \"cloudevents-binary\"\n[outbox.cloudevents]\ncolour = \"red\"\n"),
            At(5, 1) + ": unknown key 'colour' in [outbox.cloudevents] of [[outbox]] #1");
  EXPECT_EQ(error("tracestate = \"ts\"\n"),
            At(3, 14) +
                ": 'tracestate' in [[outbox]] #1: needs 'traceparent' too (a tracestate means nothing "
                "without it)");
}

TEST_F(ConfigTest, CloudEventsDefaultSourceIsAUriReferenceForAnyTableName) {
  Config c = Valid("[[outbox]]\ntable = 'app.\"Line Items\"'\nformat = \"cloudevents-binary\"\n" + kPostgres + kKafka);
  EXPECT_EQ("/outboxd/app.%22Line%20Items%22", c.outboxes.at(0).cloudevents.source);
}

TEST_F(ConfigTest, CdcFormatAndSource) {
  Config c = Valid(kCdc + "format = \"cloudevents-structured\"\n[cdc.cloudevents]\nsource = \"/inventory\"\n" +
                   kPostgres + kKafka);
  EXPECT_EQ(EventFormat::kCloudEventsStructured, c.cdc->format);
  EXPECT_EQ(std::optional<std::string>("/inventory"), c.cdc->cloudevents_source);
  EXPECT_EQ(EventFormat::kDebezium, Valid(kCdc + kPostgres + kKafka).cdc->format);
  EXPECT_EQ(Error(kCdc + "[cdc.cloudevents]\nsource = \"/inventory\"\n" + kPostgres + kKafka),
            At(3, 1) +
                ": 'cloudevents' in [cdc]: has no effect with format = \"debezium\" (set format = "
                "\"cloudevents-binary\" or \"cloudevents-structured\")");
  EXPECT_EQ(Error(kCdc + "format = \"cloudevents-binary\"\n[cdc.cloudevents]\ntype = \"t\"\n" + kPostgres + kKafka),
            At(5, 1) + ": unknown key 'type' in [cdc.cloudevents]");
}

// --- cdc mode -----------------------------------------------------------------

TEST_F(ConfigTest, CdcEveryKeySet) {
  Config c = Valid(
      "[cdc]\n"
      "slot = \"orders_slot_1\"\n"
      "publication = \"Orders Pub\"\n"
      "create = true\n"
      "message_prefix = \"outbox\"\n"
      "message_topic = \"events.${aggregatetype}.${type}\"\n"
      "dead_letter_topic = \"cdc.dlq\"\n"
      "tables = [\"public.orders\", \"customers\", 'app.\"LineItems\"']\n"
      "topic_prefix = \"prod.pg\"\n"
      "snapshot = \"initial\"\n"
      "status_interval = \"1.5s\"\n"
      "confirm_interval = \"250ms\"\n"
      "confirm_events = 500\n"
      "state_table = \"outboxd.slot_state\"\n"
      "[[outbox]]\n"  // line 15
      "table = \"app.outbox\"\n"
      "source = \"cdc\"\n"
      "id = \"event_id\"\n"
      "key = \"partition_key\"\n"
      "payload = \"body\"\n"
      "topic = \"${aggregate}.events\"\n"
      "headers = { type = \"event_type\", traceparent = \"traceparent\" }\n"
      "timestamp = \"created_at\"\n"
      "dead_letter_topic = \"outbox.dlq\"\n" +
      kPostgres + kKafka);

  ASSERT_TRUE(c.cdc.has_value());
  const CdcConfig& cdc = *c.cdc;
  EXPECT_EQ(cdc.slot, "orders_slot_1");
  EXPECT_EQ(cdc.publication, "Orders Pub");
  EXPECT_TRUE(cdc.create);
  EXPECT_EQ(cdc.message_prefix, "outbox");
  EXPECT_EQ(cdc.message_topic, "events.${aggregatetype}.${type}");
  EXPECT_EQ(cdc.dead_letter_topic, "cdc.dlq");
  // As written, in file order.
  EXPECT_EQ(cdc.tables, (std::vector<std::string>{"public.orders", "customers", "app.\"LineItems\""}));
  EXPECT_EQ(cdc.topic_prefix, "prod.pg");
  EXPECT_EQ(cdc.snapshot, SnapshotMode::kInitial);
  EXPECT_EQ(cdc.status_interval, milliseconds(1500));
  EXPECT_EQ(cdc.confirm_interval, milliseconds(250));
  EXPECT_EQ(cdc.confirm_events, 500);
  EXPECT_EQ(cdc.state_table, "outboxd.slot_state");
  EXPECT_EQ(cdc.config_location, At(1, 1));

  ASSERT_EQ(c.outboxes.size(), 1u);
  const OutboxTableConfig& o = c.outboxes[0];
  EXPECT_EQ(o.table, "app.outbox");
  EXPECT_EQ(o.source, OutboxSource::kCdc);
  EXPECT_EQ(o.id, "event_id");
  EXPECT_EQ(o.key, "partition_key");
  EXPECT_EQ(o.payload, "body");
  EXPECT_EQ(o.topic, "${aggregate}.events");
  using Headers = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(o.headers, (Headers{{"type", "event_type"}, {"traceparent", "traceparent"}}));
  EXPECT_EQ(o.timestamp, "created_at");
  EXPECT_EQ(o.dead_letter_topic, "outbox.dlq");
  EXPECT_EQ(o.config_location, At(15, 1));
}

TEST_F(ConfigTest, CdcDefaults) {
  Config c = Valid(kCdc + kPostgres + kKafka);  // a [cdc] section is enough without [[outbox]]
  EXPECT_TRUE(c.outboxes.empty());
  ASSERT_TRUE(c.cdc.has_value());
  const CdcConfig& cdc = *c.cdc;
  EXPECT_EQ(cdc.slot, "outboxd");
  EXPECT_EQ(cdc.publication, "outboxd");
  EXPECT_FALSE(cdc.create);
  EXPECT_EQ(cdc.message_prefix, "outbox");
  EXPECT_EQ(cdc.message_topic, "outbox.event.${aggregatetype}");
  EXPECT_EQ(cdc.dead_letter_topic, std::nullopt);
  EXPECT_TRUE(cdc.tables.empty());
  EXPECT_EQ(cdc.topic_prefix, "pg");
  EXPECT_EQ(cdc.snapshot, SnapshotMode::kNever);
  EXPECT_EQ(cdc.status_interval, milliseconds(10000));
  EXPECT_EQ(cdc.confirm_interval, milliseconds(100));
  EXPECT_EQ(cdc.confirm_events, 10000);
  EXPECT_EQ(cdc.state_table, "public.outboxd_slot_state");
  EXPECT_EQ(cdc.config_location, At(1, 1));
}

TEST_F(ConfigTest, PollIsTheDefaultSourceAndCdcIsOptional) {
  Config c = Valid(kOutbox + kPostgres + kKafka);
  EXPECT_EQ(c.outboxes.at(0).source, OutboxSource::kPoll);
  EXPECT_FALSE(c.cdc.has_value());
}

TEST_F(ConfigTest, CdcOutboxGetsDebeziumDefaults) {
  Config c = Valid(kCdc +
                   "[[outbox]]\n"
                   "table = \"public.outbox\"\n"
                   "source = \"cdc\"\n" +
                   kPostgres + kKafka);
  const OutboxTableConfig& o = c.outboxes.at(0);
  EXPECT_EQ(o.source, OutboxSource::kCdc);
  EXPECT_EQ(o.id, "id");
  EXPECT_EQ(o.key, "aggregateid");
  EXPECT_EQ(o.payload, "payload");
  EXPECT_EQ(o.topic, "outbox.event.${aggregatetype}");
  EXPECT_EQ(o.config_location, At(3, 1));
}

TEST_F(ConfigTest, MixedPollAndCdc) {
  Config c = Valid(
      "[[outbox]]\n"
      "table = \"billing.outbox\"\n"
      "after_delivery = \"mark\"\n"
      "sent_column = \"sent_at\"\n"
      "[[outbox]]\n"
      "table = \"public.outbox\"\n"
      "source = \"cdc\"\n"
      "[[outbox]]\n"
      "table = \"shipping.outbox\"\n"
      "source = \"poll\"\n"
      "[cdc]\n"
      "tables = [\"public.orders\"]\n" +
      kPostgres + kKafka);
  ASSERT_EQ(c.outboxes.size(), 3u);
  EXPECT_EQ(c.outboxes[0].source, OutboxSource::kPoll);
  EXPECT_EQ(c.outboxes[0].after_delivery, AfterDelivery::kMark);
  EXPECT_EQ(c.outboxes[1].source, OutboxSource::kCdc);
  EXPECT_EQ(c.outboxes[2].source, OutboxSource::kPoll);
  ASSERT_TRUE(c.cdc.has_value());
  EXPECT_EQ(c.cdc->tables, std::vector<std::string>{"public.orders"});
  EXPECT_EQ(c.cdc->message_prefix, std::nullopt);
}

TEST_F(ConfigTest, SourceMustBePollOrCdc) {
  EXPECT_EQ(Error(kOutbox + "source = \"push\"\n" + kPostgres + kKafka),
            At(3, 10) + ": 'source' in [[outbox]] #1 must be poll or cdc, got \"push\"");
  EXPECT_EQ(Error(kOutbox + "source = 1\n" + kPostgres + kKafka),
            At(3, 10) + ": 'source' in [[outbox]] #1 must be a string, got integer");
}

TEST_F(ConfigTest, CdcOutboxRejectsEveryPollOnlyKey) {
  auto poll_only = [&](int line, int column, const std::string& key) {
    return At(line, column) + ": '" + key + "' in [[outbox]] #1 is a poll-mode key; not allowed with source = \"cdc\"";
  };
  EXPECT_EQ(Error(kCdc +
                  "[[outbox]]\n"  // line 3
                  "table = \"public.outbox\"\n"
                  "order_by = \"seq\"\n"  // line 5: before 'source', still judged by it
                  "source = \"cdc\"\n"
                  "after_delivery = \"mark\"\n"
                  "sent_column = \"sent_at\"\n"
                  "batch_size = \"not even an integer\"\n"  // not read, so no type error
                  "poll_interval = \"1s\"\n"
                  "  notify_channel = \"outbox\"\n" +  // line 11, indented
                  kPostgres +
                  kKafka),
            poll_only(5, 1, "order_by") + "\n" + poll_only(7, 1, "after_delivery") + "\n" +
                poll_only(8, 1, "sent_column") + "\n" + poll_only(9, 1, "batch_size") + "\n" +
                poll_only(10, 1, "poll_interval") + "\n" + poll_only(11, 3, "notify_channel"));
}

TEST_F(ConfigTest, CdcSourceNeedsACdcSection) {
  EXPECT_EQ(Error(kOutbox + "source = \"cdc\"\n" + kPostgres + kKafka),
            At(3, 10) +
                ": 'source' in [[outbox]] #1: source = \"cdc\" needs a [cdc] section "
                "(the replication slot to capture through)");
  // A 'cdc' of the wrong type is reported once, as such.
  EXPECT_EQ(Error("cdc = \"outboxd\"\n" + kOutbox + "source = \"cdc\"\n" + kPostgres + kKafka),
            At(1, 7) + ": 'cdc' must be a table ([cdc]), got string");
}

TEST_F(ConfigTest, CdcSectionThatCapturesNothing) {
  const std::string nothing =
      ": [cdc] captures nothing: set 'message_prefix', list 'tables', or give an [[outbox]] "
      "block source = \"cdc\"";
  EXPECT_EQ(Error(kOutbox + kPostgres + kKafka +
                  "[cdc]\n"  // line 7
                  "slot = \"outboxd\"\n"),
            At(7, 1) + nothing);
  EXPECT_EQ(Error("[cdc]\n"
                  "tables = []\n" +
                  kOutbox + kPostgres + kKafka),
            At(1, 1) + nothing);
  // Each of the three is enough.
  Valid("[cdc]\ntables = [\"orders\"]\n" + kPostgres + kKafka);
  Valid("[cdc]\nmessage_prefix = \"x\"\n" + kPostgres + kKafka);
  Valid("[cdc]\n" + kOutbox + "source = \"cdc\"\n" + kPostgres + kKafka);
}

TEST_F(ConfigTest, NeitherOutboxNorCdc) {
  EXPECT_EQ(Error(kPostgres + kKafka), At(1, 1) + kNoOutboxNorCdc);
  // With [cdc], an empty list of outbox tables is no error.
  EXPECT_TRUE(Valid("outbox = []\n" + kCdc + kPostgres + kKafka).outboxes.empty());
}

TEST_F(ConfigTest, CdcTableThatIsAlsoAnOutboxTable) {
  const std::string both = "; an outbox table is relayed as outbox events, not also as row changes";
  // The poll outbox table "outbox" is public.outbox to [cdc].
  EXPECT_EQ(
      Error("[cdc]\n"
            "tables = [\"public.orders\", \"public.outbox\"]\n" +  // line 2, the second at column 28
            kOutbox +
            kPostgres + kKafka),
      At(2, 28) + ": 'tables' in [cdc]: \"public.outbox\" is the outbox table of [[outbox]] #1 at " + At(3, 1) + both);
  EXPECT_EQ(Error("[cdc]\n"
                  "tables = [\"Outbox\"]\n"
                  "[[outbox]]\n"
                  "table = \"public.outbox\"\n"
                  "source = \"cdc\"\n" +
                  kPostgres + kKafka),
            At(2, 11) + ": 'tables' in [cdc]: \"Outbox\" is the outbox table of [[outbox]] #1 at " + At(3, 1) + both);
}

TEST_F(ConfigTest, CdcTablesListedTwice) {
  EXPECT_EQ(
      Error("[cdc]\n"
            "tables = [\"orders\", \"Public.Orders\"]\n" +  // line 2; "orders" is public.orders
            kPostgres +
            kKafka),
      At(2, 21) + ": 'tables' in [cdc]: \"Public.Orders\" is listed twice (first as \"orders\" at " + At(2, 11) + ")");
  // A quoted name keeps its case, so it is another table.
  Config c = Valid(
      "[cdc]\n"
      "tables = ['orders', 'public.\"Orders\"']\n" +
      kPostgres + kKafka);
  EXPECT_EQ(c.cdc->tables.size(), 2u);
}

TEST_F(ConfigTest, CdcTablesMustBeTableNames) {
  EXPECT_EQ(Error("[cdc]\n"
                  "tables = [\"orders\", 5, \"\", \"a.b.c\"]\n" +  // line 2
                  kPostgres +
                  kKafka),
            At(2, 21) + ": 'tables' in [cdc]: element 2 must be a table name string, got integer\n" + At(2, 24) +
                ": 'tables' in [cdc]: element 3 must be \"schema.table\" or \"table\": it is empty\n" + At(2, 28) +
                ": 'tables' in [cdc]: element 4 must be \"schema.table\" or \"table\": it has 3 parts");
  EXPECT_EQ(Error("[cdc]\n"
                  "tables = \"orders\"\n" +
                  kPostgres + kKafka),
            At(2, 10) + ": 'tables' in [cdc] must be an array of table names, such as [\"public.orders\"], got string");
}

// Loads a file whose [cdc] section has `line` as line 2 (and captures a table).
class CdcKeyTest : public ConfigTest {
 protected:
  std::string CdcError(const std::string& line) const {
    return Error("[cdc]\n" + line + "\ntables = [\"orders\"]\n" + kPostgres + kKafka);
  }
  CdcConfig CdcValid(const std::string& line) const {
    Config c = Valid("[cdc]\n" + line + "\ntables = [\"orders\"]\n" + kPostgres + kKafka);
    return c.cdc.value_or(CdcConfig{});
  }
};

TEST_F(CdcKeyTest, SlotName) {
  const std::string prefix = At(2, 8) + ": 'slot' in [cdc]: not a valid replication slot name: ";
  EXPECT_EQ(CdcError("slot = \"Outboxd\""),
            prefix + "'O' at character 1 is not allowed (lower-case letters, digits and '_')");
  EXPECT_EQ(CdcError("slot = \"outbox-d\""),
            prefix + "'-' at character 7 is not allowed (lower-case letters, digits and '_')");
  EXPECT_EQ(CdcError("slot = \"\""), prefix + "it is empty");
  EXPECT_EQ(CdcError("slot = \"" + std::string(64, 'x') + "\""),
            prefix + "it is longer than PostgreSQL's 63-byte limit");
  EXPECT_EQ(CdcError("slot = 1"), At(2, 8) + ": 'slot' in [cdc] must be a string, got integer");
  for (const std::string& slot : {std::string("outboxd_2"), std::string("_"), std::string("0"), std::string(63, 'x')}) {
    EXPECT_EQ(CdcValid("slot = \"" + slot + "\"").slot, slot);
  }
}

TEST_F(CdcKeyTest, Publication) {
  const std::string expected = At(2, 15) + ": 'publication' in [cdc] must be a publication name of 1 to 63 bytes";
  EXPECT_EQ(CdcError("publication = \"\""), expected);
  EXPECT_EQ(CdcError("publication = \"" + std::string(64, 'p') + "\""), expected);
  EXPECT_EQ(CdcValid("publication = \"" + std::string(63, 'p') + "\"").publication, std::string(63, 'p'));
}

TEST_F(CdcKeyTest, CreateIsABoolean) {
  EXPECT_EQ(CdcError("create = \"yes\""), At(2, 10) + ": 'create' in [cdc] must be true or false, got string");
  EXPECT_FALSE(CdcValid("create = false").create);
}

TEST_F(CdcKeyTest, MessagePrefixMustNotBeEmpty) {
  EXPECT_EQ(CdcError("message_prefix = \"\""),
            At(2, 18) + ": 'message_prefix' in [cdc] must be the prefix given to pg_logical_emit_message, got \"\"");
}

TEST_F(CdcKeyTest, MessageTopicIsATopicTemplate) {
  EXPECT_EQ(CdcError("message_topic = \"outbox.${aggregatetype\""),
            At(2, 17) + ": 'message_topic' in [cdc]: not a valid topic template: unterminated \"${\" at character 8");
  EXPECT_EQ(CdcError("message_topic = \"\""),
            At(2, 17) + ": 'message_topic' in [cdc]: not a valid topic template: it is empty");
  EXPECT_EQ(CdcValid("message_topic = \"orders\"").message_topic, "orders");
}

TEST_F(CdcKeyTest, DeadLetterTopicIsATopicName) {
  EXPECT_EQ(CdcError("dead_letter_topic = \"dlq.${type}\""),
            At(2, 21) +
                ": 'dead_letter_topic' in [cdc]: not a valid Kafka topic name: '$' at character 5 "
                "is not allowed in a Kafka topic name (letters, digits, '.', '_' and '-')");
}

TEST_F(CdcKeyTest, TopicPrefix) {
  const std::string prefix = At(2, 16) + ": 'topic_prefix' in [cdc]: not a valid topic prefix: ";
  EXPECT_EQ(CdcError("topic_prefix = \"\""), prefix + "it is empty");
  EXPECT_EQ(CdcError("topic_prefix = \"pg/prod\""),
            prefix + "'/' at character 3 is not allowed in a Kafka topic name (letters, digits, '.', '_' and '-')");
  EXPECT_EQ(CdcError("topic_prefix = \"" + std::string(246, 'p') + "\""),
            prefix +
                "it is longer than 245 characters, which leaves no room for \".<schema>.<table>\" within "
                "Kafka's 249-character limit");
  EXPECT_EQ(CdcValid("topic_prefix = \"" + std::string(245, 'p') + "\"").topic_prefix, std::string(245, 'p'));
  EXPECT_EQ(CdcValid("topic_prefix = \"cdc.prod-1_x\"").topic_prefix, "cdc.prod-1_x");
}

TEST_F(CdcKeyTest, Snapshot) {
  EXPECT_EQ(CdcError("snapshot = \"always\""),
            At(2, 12) + ": 'snapshot' in [cdc] must be never or initial, got \"always\"");
  EXPECT_EQ(CdcValid("snapshot = \"never\"").snapshot, SnapshotMode::kNever);
}

TEST_F(CdcKeyTest, StatusInterval) {
  const std::string range = At(2, 19) + ": 'status_interval' in [cdc] must be greater than zero and at most \"1h\"";
  EXPECT_EQ(CdcError("status_interval = \"0s\""), range);
  EXPECT_EQ(CdcError("status_interval = \"61m\""), range);
  EXPECT_EQ(CdcError("status_interval = \"1.5h\""), range);
  EXPECT_EQ(CdcError("status_interval = 10"),
            At(2, 19) +
                ": 'status_interval' in [cdc] must be a duration string with a unit, such as \"250ms\" or "
                "\"10s\", got integer");
  EXPECT_EQ(CdcError("status_interval = \"10\""),
            At(2, 19) +
                ": 'status_interval' in [cdc]: invalid duration \"10\": expected a number followed by a "
                "unit (ms, s, m or h), such as \"250ms\" or \"10s\"");
  EXPECT_EQ(CdcValid("status_interval = \"1h\"").status_interval, milliseconds(3600000));
  EXPECT_EQ(CdcValid("status_interval = \"1ms\"").status_interval, milliseconds(1));
}

TEST_F(CdcKeyTest, ConfirmIntervalIsPositiveAndAtMostTheStatusInterval) {
  const std::string range = ": 'confirm_interval' in [cdc] must be greater than zero and at most status_interval";
  EXPECT_EQ(CdcError("confirm_interval = \"0s\""), At(2, 20) + range);
  EXPECT_EQ(CdcError("confirm_interval = \"11s\""), At(2, 20) + range);  // the default status_interval is 10 s
  EXPECT_EQ(CdcError("status_interval = \"50ms\"\nconfirm_interval = \"100ms\""), At(3, 20) + range);
  // Whichever line comes first.
  EXPECT_EQ(CdcError("confirm_interval = \"100ms\"\nstatus_interval = \"50ms\""), At(2, 20) + range);
  EXPECT_EQ(CdcValid("confirm_interval = \"10s\"").confirm_interval, milliseconds(10000));
  EXPECT_EQ(CdcValid("status_interval = \"1s\"\nconfirm_interval = \"1s\"").confirm_interval, milliseconds(1000));
}

TEST_F(CdcKeyTest, ConfirmEventsIsPositive) {
  EXPECT_EQ(CdcError("confirm_events = 0"),
            At(2, 18) + ": 'confirm_events' in [cdc] must be a positive integer, got 0");
  EXPECT_EQ(CdcError("confirm_events = -5"),
            At(2, 18) + ": 'confirm_events' in [cdc] must be a positive integer, got -5");
  EXPECT_EQ(CdcValid("confirm_events = 1").confirm_events, 1);
}

TEST_F(CdcKeyTest, StateTable) {
  EXPECT_EQ(CdcError("state_table = \"a.b.c\""),
            At(2, 15) + ": 'state_table' in [cdc] must be \"schema.table\" or \"table\": it has 3 parts");
  EXPECT_EQ(CdcError("state_table = \"\""),
            At(2, 15) + ": 'state_table' in [cdc] must be \"schema.table\" or \"table\": it is empty");
  EXPECT_EQ(CdcValid("state_table = \"slot_state\"").state_table, "slot_state");
}

TEST_F(ConfigTest, StateTableIsNeitherCapturedNorAnOutbox) {
  EXPECT_EQ(Error("[cdc]\n"
                  "state_table = \"outboxd_slot_state\"\n"  // line 2: public.outboxd_slot_state
                  "tables = [\"public.outboxd_slot_state\"]\n" +
                  kPostgres + kKafka),
            At(2, 15) +
                ": 'state_table' in [cdc]: outboxd's own table \"outboxd_slot_state\" cannot also be "
                "captured (it is in 'tables' at " +
                At(3, 11) + ")");
  EXPECT_EQ(Error("[cdc]\n"
                  "message_prefix = \"outbox\"\n"  // state_table defaults to public.outboxd_slot_state
                  "[[outbox]]\n"
                  "table = \"outboxd_slot_state\"\n" +
                  kPostgres + kKafka),
            At(1, 1) +
                ": 'state_table' in [cdc]: outboxd's own table \"public.outboxd_slot_state\" cannot also "
                "be an outbox table ([[outbox]] #1 at " +
                At(3, 1) + ")");
}

TEST_F(ConfigTest, UnknownKeyInCdcSuggestsTheClosest) {
  EXPECT_EQ(Error(kCdc + "slott = \"outboxd\"\n" +  // line 3
                  kPostgres + kKafka),
            At(3, 1) + ": unknown key 'slott' in [cdc] (did you mean 'slot'?)");
  EXPECT_EQ(Error("slot = \"outboxd\"\n" + kCdc + kPostgres + kKafka),
            At(1, 1) + ": unknown top-level key 'slot' (it belongs in [cdc], after the section header)");
  EXPECT_EQ(Error(kCdc + kPostgres + kKafka + "[cdx]\n"),  // line 7
            At(7, 2) + ": unknown section [cdx] (did you mean [cdc]?)");
}

TEST_F(ConfigTest, CdcSectionMustBeATable) {
  EXPECT_EQ(Error(kOutbox + kPostgres + kKafka + "[[cdc]]\n"),  // line 7
            At(7, 1) + ": 'cdc' must be a table ([cdc]), got array of tables");
}

TEST_F(ConfigTest, CdcIsNotSubstituted) {
  ScopedEnv type("aggregatetype", "from-the-environment");
  ScopedEnv slot("OUTBOXD_TEST_SLOT", "outboxd");
  Config c = Valid(
      "[cdc]\n"
      "message_topic = \"outbox.event.${aggregatetype}\"\n"
      "message_prefix = \"${OUTBOXD_TEST_SLOT}\"\n" +
      kPostgres + kKafka);
  EXPECT_EQ(c.cdc->message_topic, "outbox.event.${aggregatetype}");
  EXPECT_EQ(c.cdc->message_prefix, "${OUTBOXD_TEST_SLOT}");
  EXPECT_EQ(Error("[cdc]\n"
                  "slot = \"${OUTBOXD_TEST_SLOT}\"\n" +
                  kCdc.substr(6) + kPostgres + kKafka),
            At(2, 8) +
                ": 'slot' in [cdc]: not a valid replication slot name: '$' at character 1 is not allowed "
                "(lower-case letters, digits and '_')");
}

TEST_F(ConfigTest, SameOutboxTableWithEitherSource) {
  EXPECT_EQ(
      Error(kOutbox +
            "[[outbox]]\n"
            "table = \"public.outbox\"\n"  // line 4
            "source = \"cdc\"\n" +
            kCdc + kPostgres + kKafka),
      At(4, 9) + ": 'table' in [[outbox]] #2: \"public.outbox\" is already configured by [[outbox]] #1 at " + At(1, 1));
}

// --- Environment substitution ----------------------------------------------

TEST_F(ConfigTest, EnvironmentVariablesAreSubstituted) {
  ScopedEnv host("OUTBOXD_TEST_HOST", "db.internal");
  ScopedEnv secret("OUTBOXD_TEST_SECRET", "hunter2");
  ScopedEnv level("OUTBOXD_TEST_LEVEL", "warn");
  Config c = Valid(
      "[postgres]\n"
      "conninfo = \"host=${OUTBOXD_TEST_HOST} dbname=app\"\n"
      "[kafka]\n"
      "bootstrap_servers = \"${OUTBOXD_TEST_HOST}:9092\"\n"
      "[kafka.properties]\n"
      "\"sasl.password\" = \"${OUTBOXD_TEST_SECRET}\"\n"
      "[http]\n"
      "listen = \"${OUTBOXD_TEST_HOST}:9464\"\n"
      "[log]\n"
      "level = \"${OUTBOXD_TEST_LEVEL}\"\n" +
      kOutbox);
  EXPECT_EQ(c.postgres.conninfo, "host=db.internal dbname=app");
  EXPECT_EQ(c.kafka.bootstrap_servers, "db.internal:9092");
  EXPECT_EQ(c.kafka.properties.at("sasl.password"), "hunter2");
  EXPECT_EQ(c.http.listen, "db.internal:9464");
  EXPECT_EQ(c.log.level, "warn");
}

TEST_F(ConfigTest, UnsetEnvironmentVariableIsAnError) {
  unsetenv("OUTBOXD_TEST_UNSET");
  EXPECT_EQ(Error("[postgres]\n"
                  "conninfo = \"host=${OUTBOXD_TEST_UNSET}\"\n" +
                  kKafka + kOutbox),
            At(2, 12) + ": 'conninfo' in [postgres]: environment variable OUTBOXD_TEST_UNSET is not set");
  EXPECT_EQ(Error(kPostgres + kKafka + kOutbox +
                  "[kafka.properties]\n"  // line 7
                  "\"sasl.password\" = \"${OUTBOXD_TEST_UNSET}\"\n"),
            At(8, 19) +
                ": 'sasl.password' in [kafka.properties]: environment variable OUTBOXD_TEST_UNSET "
                "is not set");
}

TEST_F(ConfigTest, MalformedEnvironmentReference) {
  EXPECT_EQ(Error("[postgres]\n"
                  "conninfo = \"host=${OUTBOXD_TEST_HOST\"\n" +
                  kKafka + kOutbox),
            At(2, 12) + ": 'conninfo' in [postgres]: unterminated \"${\" (write \"$${\" for a literal \"${\")");
  EXPECT_EQ(Error("[postgres]\n"
                  "conninfo = \"host=${}\"\n" +
                  kKafka + kOutbox),
            At(2, 12) +
                ": 'conninfo' in [postgres]: \"${}\" does not name an environment variable "
                "(letters, digits and _; write \"$${\" for a literal \"${\")");
}

TEST_F(ConfigTest, DoubleDollarEscapesALiteralReference) {
  Config c = Valid(
      "[postgres]\n"
      "conninfo = \"password='pa$${ss} $$ $x'\"\n" +
      kKafka + kOutbox);
  EXPECT_EQ(c.postgres.conninfo, "password='pa${ss} $$ $x'");
}

TEST_F(ConfigTest, OutboxRoutingKeysAreNotSubstituted) {
  ScopedEnv type("aggregatetype", "from-the-environment");
  Config c = Valid(kOutbox + "topic = \"outbox.event.${aggregatetype}\"\n" + kPostgres + kKafka);
  EXPECT_EQ(c.outboxes.at(0).topic, "outbox.event.${aggregatetype}");
}

// A conninfo libpq cannot parse is refused at its line, without the pieces
// libpq's message quotes: they may be a password's.
TEST_F(ConfigTest, MalformedConninfoIsRefusedWithoutQuotingIt) {
  EXPECT_EQ(Error("[postgres]\n"
                  "conninfo = \"host=db password=open sesame\"\n" +
                  kKafka + kOutbox),
            At(2, 12) +
                ": 'conninfo' in [postgres]: libpq cannot parse it: missing \"…\" after \"…\" in connection "
                "info string (quoted parts not shown)");
  const std::string uri = Error("[postgres]\nconninfo = \"postgresql://u:s3cret%zz@db/app\"\n" + kKafka + kOutbox);
  EXPECT_NE(std::string::npos, uri.find("'conninfo' in [postgres]: libpq cannot parse it: ")) << uri;
  EXPECT_EQ(std::string::npos, uri.find("s3cret")) << uri;
}

// --- password_file ------------------------------------------------------------

TEST_F(ConfigTest, PasswordFileIsReadWithoutTrailingNewline) {
  WriteFile("secret", "correct horse\r\n");
  Config c = Valid(
      "[postgres]\n"
      "conninfo = \"host=db\"\n"
      "password_file = \"" +
      PathOf("secret") + "\"\n" + kKafka + kOutbox);
  EXPECT_EQ(c.postgres.password, "correct horse");
}

TEST_F(ConfigTest, PasswordFilePathMayComeFromTheEnvironment) {
  WriteFile("secret", "pw");
  ScopedEnv dir("OUTBOXD_TEST_CREDENTIALS", dir_.c_str());
  Config c = Valid(
      "[postgres]\n"
      "conninfo = \"host=db\"\n"
      "password_file = \"${OUTBOXD_TEST_CREDENTIALS}/secret\"\n" +
      kKafka + kOutbox);
  EXPECT_EQ(c.postgres.password, "pw");
}

TEST_F(ConfigTest, MissingPasswordFile) {
  EXPECT_EQ(Error("[postgres]\n"
                  "conninfo = \"host=db\"\n"
                  "password_file = \"" +
                  PathOf("absent") + "\"\n" + kKafka + kOutbox),
            At(3, 17) + ": 'password_file' in [postgres]: cannot read \"" + PathOf("absent") +
                "\": No such file or directory");
}

TEST_F(ConfigTest, EmptyPasswordFile) {
  WriteFile("secret", "\n");
  EXPECT_EQ(Error("[postgres]\n"
                  "conninfo = \"host=db\"\n"
                  "password_file = \"secret\"\n" +
                  kKafka + kOutbox),
            At(3, 17) + ": 'password_file' in [postgres]: \"" + PathOf("secret") + "\" is empty");
}

// [kafka] password_file is the SASL password librdkafka gets, and may not
// be given twice.
TEST_F(ConfigTest, KafkaPasswordFileIsTheSaslPassword) {
  WriteFile("kafka-password", "kafka s3cret\n");
  Config c = Valid(
      "[kafka]\n"
      "bootstrap_servers = \"kafka:9093\"\n"
      "password_file = \"kafka-password\"\n"  // relative to the config file
      "[kafka.properties]\n"
      "\"sasl.username\" = \"outboxd\"\n" +
      kPostgres + kOutbox);
  EXPECT_EQ(c.kafka.properties.at("sasl.password"), "kafka s3cret");
  EXPECT_EQ(c.kafka.password_file, PathOf("kafka-password"));
}

TEST_F(ConfigTest, KafkaPasswordFileAndSaslPasswordPropertyConflict) {
  WriteFile("kafka-password", "a");
  EXPECT_EQ(Error("[kafka]\n"
                  "bootstrap_servers = \"kafka:9093\"\n"
                  "password_file = \"kafka-password\"\n"
                  "[kafka.properties]\n"
                  "\"sasl.password\" = \"b\"\n" +
                  kPostgres + kOutbox),
            At(3, 17) +
                ": 'password_file' in [kafka]: gives the SASL password, and so does [kafka.properties] "
                "\"sasl.password\": keep one");
}

TEST_F(ConfigTest, MissingKafkaPasswordFile) {
  EXPECT_EQ(
      Error("[kafka]\n"
            "bootstrap_servers = \"kafka:9093\"\n"
            "password_file = \"absent\"\n" +
            kPostgres + kOutbox),
      At(3, 17) + ": 'password_file' in [kafka]: cannot read \"" + PathOf("absent") + "\": No such file or directory");
}

// --- [kafka.properties] -------------------------------------------------------

TEST_F(ConfigTest, PropertiesAcceptIntegersAndBooleans) {
  Config c = Valid(kPostgres + kOutbox + kKafka +
                   "[kafka.properties]\n"
                   "\"linger.ms\" = 5\n"
                   "\"enable.idempotence\" = true\n"
                   "\"socket.nagle.disable\" = false\n"
                   "acks = \"all\"\n");
  EXPECT_EQ(
      c.kafka.properties,
      (std::map<std::string, std::string>{
          {"acks", "all"}, {"enable.idempotence", "true"}, {"linger.ms", "5"}, {"socket.nagle.disable", "false"}}));
}

TEST_F(ConfigTest, UnquotedDottedPropertyNamesAreJoined) {
  // TOML reads compression.type as a nested table; librdkafka wants the name back.
  Config c = Valid(kPostgres + kOutbox + kKafka +
                   "[kafka.properties]\n"
                   "compression.type = \"lz4\"\n"
                   "queue.buffering.max.ms = 10\n");
  EXPECT_EQ(c.kafka.properties,
            (std::map<std::string, std::string>{{"compression.type", "lz4"}, {"queue.buffering.max.ms", "10"}}));
}

TEST_F(ConfigTest, PropertySetTwice) {
  EXPECT_EQ(Error(kPostgres + kOutbox + kKafka +
                  "[kafka.properties]\n"  // line 7
                  "\"compression.type\" = \"lz4\"\n"
                  "compression.type = \"zstd\"\n"),
            At(9, 1) + ": 'compression.type' in [kafka.properties] is set twice (first at " + At(8, 1) + ")");
}

TEST_F(ConfigTest, PropertyOfAnotherType) {
  EXPECT_EQ(Error(kPostgres + kOutbox + kKafka +
                  "[kafka.properties]\n"  // line 7
                  "\"linger.ms\" = 1.5\n"),
            At(8, 15) + ": 'linger.ms' in [kafka.properties] must be a string, integer or boolean, got float");
}

TEST_F(ConfigTest, UnknownLibrdkafkaPropertyIsReportedWhereItIs) {
  const std::string err = Error(kPostgres + kOutbox + kKafka +
                                "[kafka.properties]\n"  // line 7
                                "\"linger.ms\" = 5\n"
                                "\"compresion.type\" = \"lz4\"\n");
  EXPECT_EQ(0u, err.find(At(9, 1) + ": 'compresion.type' in [kafka.properties]: ")) << err;
  EXPECT_NE(std::string::npos, err.find("No such configuration property")) << err;
}

TEST_F(ConfigTest, InvalidLibrdkafkaValueIsReportedWhereItIs) {
  const std::string err = Error(kPostgres + kOutbox + kKafka +
                                "[kafka.properties]\n"  // line 7
                                "\"acks\" = \"some\"\n");
  EXPECT_EQ(0u, err.find(At(8, 1) + ": 'acks' in [kafka.properties]: ")) << err;
}

TEST_F(ConfigTest, BrokersAreNotAProperty) {
  EXPECT_EQ(Error(kPostgres + kOutbox + kKafka +
                  "[kafka.properties]\n"  // line 7
                  "\"bootstrap.servers\" = \"other:9092\"\n"),
            At(8, 1) +
                ": 'bootstrap.servers' in [kafka.properties]: set the brokers with 'bootstrap_servers' in "
                "[kafka]");
}

TEST_F(ConfigTest, ATransactionalIdIsRefused) {
  EXPECT_EQ(Error(kPostgres + kOutbox + kKafka +
                  "[kafka.properties]\n"  // line 7
                  "\"transactional.id\" = \"mine\"\n"),
            At(8, 1) +
                ": 'transactional.id' in [kafka.properties]: outboxd derives it from each source with [kafka] "
                "delivery = \"exactly-once\"; remove it");
}

// --- [kafka] delivery ------------------------------------------------------------

TEST_F(ConfigTest, DeliveryDefaultsToAtLeastOnce) {
  const Config c = Valid(kPostgres + kKafka + kOutbox);
  EXPECT_EQ(Delivery::kAtLeastOnce, c.kafka.delivery);
  EXPECT_EQ("outboxd.positions", c.kafka.position_topic);
  EXPECT_EQ(milliseconds(20), c.kafka.transaction_max_wait);
  EXPECT_EQ(10000, c.kafka.transaction_max_events);
  EXPECT_EQ(16 * 1024 * 1024, c.kafka.transaction_max_bytes);
}

TEST_F(ConfigTest, ExactlyOnceWithItsBoundsForTheCdcSource) {
  const Config c = Valid(kPostgres + kKafka +
                         "delivery = \"exactly-once\"\n"
                         "position_topic = \"app.outboxd.positions\"\n"
                         "transaction_max_wait = \"50ms\"\n"
                         "transaction_max_events = 500\n"
                         "transaction_max_bytes = 1048576\n" +
                         kCdc);
  EXPECT_EQ(Delivery::kExactlyOnce, c.kafka.delivery);
  EXPECT_EQ("app.outboxd.positions", c.kafka.position_topic);
  EXPECT_EQ(milliseconds(50), c.kafka.transaction_max_wait);
  EXPECT_EQ(500, c.kafka.transaction_max_events);
  EXPECT_EQ(1048576, c.kafka.transaction_max_bytes);
}

TEST_F(ConfigTest, DeliveryMustBeOneOfTheTwo) {
  const std::string message = Error(kKafka + "delivery = \"exactly_once\"\n" + kPostgres + kOutbox);
  EXPECT_EQ(At(3, 12) + ": 'delivery' in [kafka] must be at-least-once or exactly-once, got \"exactly_once\"", message);
}

TEST_F(ConfigTest, ExactlyOnceCoversPolledTables) {
  const Config c = Valid(kKafka + "delivery = \"exactly-once\"\n" + kPostgres + kOutbox);
  EXPECT_EQ(Delivery::kExactlyOnce, c.kafka.delivery);
  ASSERT_EQ(1u, c.outboxes.size());
  EXPECT_EQ(OutboxSource::kPoll, c.outboxes[0].source);
}

TEST_F(ConfigTest, ExactlyOnceRefusesAnInitialSnapshot) {
  const std::string message =
      Error(kKafka + "delivery = \"exactly-once\"\n" + kPostgres + kCdc + "snapshot = \"initial\"\n");
  EXPECT_NE(std::string::npos, message.find(At(3, 12) + ": 'delivery' in [kafka]: \"exactly-once\" does not cover "
                                                        "[cdc] snapshot = \"initial\""))
      << message;
}

TEST_F(ConfigTest, PositionTopicAndTransactionBoundsAreChecked) {
  EXPECT_NE(std::string::npos, Error(kKafka + "position_topic = \"bad topic\"\n" + kPostgres + kOutbox)
                                   .find(At(3, 18) + ": 'position_topic' in [kafka]: "))
      << "invalid topic name";
  EXPECT_EQ(At(3, 26) + ": 'transaction_max_events' in [kafka] must be a positive integer, got 0",
            Error(kKafka + "transaction_max_events = 0\n" + kPostgres + kOutbox));
  EXPECT_EQ(At(3, 25) + ": 'transaction_max_bytes' in [kafka] must be a positive integer, got -1",
            Error(kKafka + "transaction_max_bytes = -1\n" + kPostgres + kOutbox));
}

// --- The file itself ----------------------------------------------------------

TEST_F(ConfigTest, SyntaxErrorHasFileLineAndColumn) {
  std::string message = Error(
      "[postgres]\n"
      "conninfo = \n" +  // line 2: the value is missing where the newline is, column 12
      kKafka +
      kOutbox);
  EXPECT_EQ(message.substr(0, At(2, 12).size() + 2), At(2, 12) + ": ") << message;
}

TEST_F(ConfigTest, MissingFile) {
  Result<Config> c = LoadConfig(PathOf("absent.toml"));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidConfig);
  EXPECT_EQ(c.status().message(), "cannot read config file " + PathOf("absent.toml") + ": No such file or directory");
}

TEST_F(ConfigTest, DirectoryInsteadOfFile) {
  Result<Config> c = LoadConfig(dir_);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().message(), "cannot read config file " + dir_ + ": Is a directory");
}

// --- QualifiedTableName -------------------------------------------------------

TEST(QualifiedTableNameTest, AnUnqualifiedNameMeansSchemaPublic) {
  EXPECT_EQ("public.orders", QualifiedTableName("orders"));
  EXPECT_EQ("sales.orders", QualifiedTableName("sales.orders"));
  EXPECT_EQ("public.public", QualifiedTableName("public"));
}

// --- ParseDuration ------------------------------------------------------------

TEST(ParseDurationTest, UnitsAndFractions) {
  struct Case {
    const char* text;
    std::int64_t ms;
  };
  for (const Case& c : {Case{"250ms", 250}, Case{"0ms", 0}, Case{"10s", 10000}, Case{"1.5s", 1500}, Case{"0.25s", 250},
                        Case{"2m", 120000}, Case{"1.5m", 90000}, Case{"1h", 3600000}, Case{"007s", 7000},
                        Case{"1.000000000h", 3600000}}) {
    SCOPED_TRACE(c.text);
    Result<milliseconds> d = ParseDuration(c.text);
    ASSERT_TRUE(d.ok()) << d.status().message();
    EXPECT_EQ(d->count(), c.ms);
  }
}

TEST(ParseDurationTest, MissingOrUnknownUnit) {
  for (const char* text : {"", "10", "1.5", "s", "ms", "10 s", " 10s", "10s ", "-1s", "+1s", "10sec", "1d", "10S",
                           ".5s", "1.s", "1e3ms", "1,5s"}) {
    SCOPED_TRACE(text);
    Result<milliseconds> d = ParseDuration(text);
    ASSERT_FALSE(d.ok());
    EXPECT_EQ(d.status().code(), StatusCode::kInvalidConfig);
    EXPECT_EQ(d.status().message(), "invalid duration \"" + std::string(text) +
                                        "\": expected a number followed by a unit (ms, s, m or h), "
                                        "such as \"250ms\" or \"10s\"");
  }
}

TEST(ParseDurationTest, FractionsOfAMillisecond) {
  EXPECT_EQ(ParseDuration("1.5ms").status().message(),
            "invalid duration \"1.5ms\": not a whole number of milliseconds");
  EXPECT_EQ(ParseDuration("0.0001s").status().message(),
            "invalid duration \"0.0001s\": not a whole number of milliseconds");
  EXPECT_EQ(ParseDuration("1.0000000001h").status().message(),
            "invalid duration \"1.0000000001h\": too many decimal places");
}

TEST(ParseDurationTest, Overflow) {
  EXPECT_EQ(ParseDuration("99999999999999999999ms").status().message(),
            "invalid duration \"99999999999999999999ms\": too large");
  EXPECT_EQ(ParseDuration("9999999999999999h").status().message(), "invalid duration \"9999999999999999h\": too large");
}

}  // namespace
}  // namespace outboxd
