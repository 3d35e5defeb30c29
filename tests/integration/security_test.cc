// Secured connections, end to end (issue 12): the built outboxd binary
// against a PostgreSQL of the test's own with ssl = on (pg.sh --tls), whose
// pg_hba.conf lets role outboxd_scram in only over TLS with a SCRAM password
// and role outboxd_cert only with a client certificate, and against a Kafka
// broker of the test's own with TLS listeners (kafka.sh --tls); certificates
// made at test time by tests/harness/certs.sh.
#include <gtest/gtest.h>
#include <librdkafka/rdkafka.h>

#include <sys/stat.h>
#include <cctype>
#include <fstream>
#include <memory>

#include "tests/integration/metrics_support.h"
#include "tests/integration/relay_test_support.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;

constexpr char kScramPassword[] = "pg-scram-S3cret!";
constexpr int kExitConfig = 78;

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// A suite with servers of its own (ServiceControl: its PostgreSQL, its
// Kafka, each started by the suite as it needs) and the test certificates.
class OwnServicesTest : public ::testing::Test {
 protected:
  static void MakeServices() {
    services_ = new ServiceControl();
    certs_ = services_->MakeCertificates();
  }
  static void TearDownTestSuite() {
    delete services_;
    services_ = nullptr;
  }

  static ServiceControl* services_;
  static std::string certs_;
};

ServiceControl* OwnServicesTest::services_ = nullptr;
std::string OwnServicesTest::certs_;

class PgTlsTest : public OwnServicesTest {
 protected:
  static void SetUpTestSuite() {
    MakeServices();
    services_->StartPostgresWithTls(certs_);
    TestDatabase admin(services_->info());
    admin.Exec(std::string("CREATE ROLE outboxd_scram LOGIN REPLICATION PASSWORD '") + kScramPassword + "'");
    admin.Exec("CREATE ROLE outboxd_cert LOGIN REPLICATION");
  }

  void SetUp() override {
    db_ = std::make_unique<TestDatabase>(services_->info());
    type_ = UniqueTopic("tls");
    topic_ = "outbox.event." + type_;
    db_->Exec(OutboxDdl("outbox"));
    for (const char* role : {"outboxd_scram", "outboxd_cert"}) {
      db_->Exec(std::string("GRANT CREATE ON DATABASE \"") + db_->name() + "\" TO " + role);
      db_->Exec(std::string("GRANT ALL ON SCHEMA public TO ") + role);
      db_->Exec(std::string("GRANT SELECT, INSERT, UPDATE, DELETE ON outbox TO ") + role);
    }
    password_file_ = services_->dir() + "/pg-password";
    std::ofstream(password_file_) << kScramPassword << "\n";
    ::chmod(password_file_.c_str(), 0600);
  }

  // A conninfo for `user` over TLS with sslmode=verify-full against the
  // test CA; `extra` is appended (and overrides).
  std::string Conninfo(const std::string& user, const std::string& extra = "") const {
    return "host=localhost hostaddr=127.0.0.1 port=" + std::to_string(services_->pg_port()) + " dbname=" + db_->name() +
           " user=" + user + " sslmode=verify-full sslrootcert=" + certs_ + "/ca.crt" +
           (user == "outboxd_cert" ? " sslcert=" + certs_ + "/client.crt sslkey=" + certs_ + "/client.key" : "") +
           (extra.empty() ? "" : " " + extra);
  }

  std::string PollConfig(const std::string& conninfo, bool with_password_file) const {
    return "[postgres]\nconninfo = \"" + conninfo + "\"\n" +
           (with_password_file ? "password_file = \"" + password_file_ + "\"\n" : "") +
           "[kafka]\nbootstrap_servers = \"" + SharedServices().kafka_bootstrap +
           "\"\n[log]\nlevel = \"info\"\n[[outbox]]\ntable = \"public.outbox\"\npoll_interval = \"100ms\"\n";
  }

  // [cdc] capturing public.items (owned by `user`) into topic items_topic().
  std::string CdcConfig(const std::string& conninfo, bool with_password_file) const {
    const std::string slot = "s_" + Lower(db_->name());
    return "[postgres]\nconninfo = \"" + conninfo + "\"\n" +
           (with_password_file ? "password_file = \"" + password_file_ + "\"\n" : "") +
           "[kafka]\nbootstrap_servers = \"" + SharedServices().kafka_bootstrap +
           "\"\n[log]\nlevel = \"info\"\n[cdc]\nslot = \"" + slot + "\"\npublication = \"p_" + Lower(db_->name()) +
           "\"\ncreate = true\ntables = [\"public.items\"]\ntopic_prefix = \"" + type_ + "\"\n";
  }
  std::string items_topic() const { return type_ + ".public.items"; }

  void Insert(int n) {
    for (int i = 0; i < n; ++i) {
      db_->Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('" + type_ + "', 'k" +
                std::to_string(i) + "', 'E', '{\"i\": " + std::to_string(i) + "}')");
    }
  }

  // Runs outboxd on `config` and expects the events to arrive in Kafka and
  // the table to empty, over a TLS session of `user`.
  void ExpectRelayed(const std::string& config, const std::string& user) {
    Insert(20);
    OutboxdProcess outboxd(config);
    outboxd.Start();
    EXPECT_TRUE(WaitUntil([&] { return db_->QueryInt64("SELECT count(*) FROM outbox") == 0; }, 60s)) << outboxd.Log();
    EXPECT_EQ(20u, Ids(ConsumeTopic(SharedServices().kafka_bootstrap, topic_, 20, 60s)).size());
    // outboxd's own session is encrypted (pg_stat_ssl), as its role must be.
    EXPECT_EQ(1, db_->QueryInt64("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                                 "WHERE a.usename = '" +
                                 user + "' AND a.application_name = 'outboxd' AND s.ssl"))
        << outboxd.Log();
    outboxd.Terminate();
    EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
  }

  // Runs outboxd on `config` and expects it to stop at start-up with exit
  // code 78 and a log that says `cause` and what to check.
  void ExpectRefused(const std::string& config, const std::string& cause, const std::string& check) {
    OutboxdProcess outboxd(config);
    outboxd.Start();
    ASSERT_EQ(kExitConfig, outboxd.WaitExit(60s)) << outboxd.Log();
    EXPECT_NE(std::string::npos, outboxd.Log().find(cause)) << outboxd.Log();
    EXPECT_NE(std::string::npos, outboxd.Log().find("(check " + check)) << outboxd.Log();
    EXPECT_EQ(0, db_->QueryInt64("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'outboxd'"));
  }

  std::unique_ptr<TestDatabase> db_;
  std::string type_, topic_, password_file_;
};

TEST_F(PgTlsTest, PollsOverVerifyFullWithAScramPasswordFromAFile) {
  ExpectRelayed(PollConfig(Conninfo("outboxd_scram"), /*with_password_file=*/true), "outboxd_scram");
}

TEST_F(PgTlsTest, PollsOverVerifyFullWithAClientCertificate) {
  ExpectRelayed(PollConfig(Conninfo("outboxd_cert"), /*with_password_file=*/false), "outboxd_cert");
}

// The replication connection takes the same settings: a client certificate.
TEST_F(PgTlsTest, StreamsChangesOverAReplicationConnectionWithAClientCertificate) {
  db_->Exec("CREATE TABLE items (id int PRIMARY KEY, name text)");
  db_->Exec("ALTER TABLE items OWNER TO outboxd_cert");
  KafkaAdmin().CreateTopic(items_topic(), 1);
  OutboxdProcess outboxd(CdcConfig(Conninfo("outboxd_cert"), /*with_password_file=*/false));
  outboxd.Start();
  ASSERT_TRUE(WaitUntil(
      [&] {
        return db_->QueryInt64(
                   "SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) "
                   "WHERE r.usename = 'outboxd_cert' AND s.ssl") == 1;
      },
      60s))
      << "no walsender of outboxd_cert over TLS\n"
      << outboxd.Log();
  db_->Exec("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 10) g");
  EXPECT_EQ(10u, ConsumeTopic(SharedServices().kafka_bootstrap, items_topic(), 10, 60s).size()) << outboxd.Log();
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
}

TEST_F(PgTlsTest, AWrongPasswordForCdcStopsWith78AndSaysSo) {
  db_->Exec("CREATE TABLE items (id int PRIMARY KEY, name text)");
  std::ofstream(password_file_) << "not-the-password\n";
  ExpectRefused(CdcConfig(Conninfo("outboxd_scram"), true), "password authentication failed", "the password");
}

// The server's certificate expired: swapped in and reloaded (ssl settings
// are reloadable), then put back.
TEST_F(PgTlsTest, AnExpiredServerCertificateStopsWith78) {
  const std::string data = db_->QueryString("SHOW data_directory");
  auto install = [&](const std::string& name) {
    for (const char* ext : {".crt", ".key"}) {
      // Overwritten in place: the files keep the server's owner and mode.
      std::ifstream from(certs_ + "/" + name + ext);
      std::ofstream to(data + "/server" + ext, std::ios::trunc);
      to << from.rdbuf();
      ASSERT_TRUE(to.good()) << data << "/server" << ext;
    }
    db_->Exec("SELECT pg_reload_conf()");
  };
  install("server-expired");
  ExpectRefused(PollConfig(Conninfo("outboxd_scram"), true), "certificate verify failed", "sslrootcert");
  install("server");
  ExpectRelayed(PollConfig(Conninfo("outboxd_scram"), true), "outboxd_scram");
}

TEST_F(PgTlsTest, AWrongPasswordStopsWith78AndSaysSo) {
  std::ofstream(password_file_) << "not-the-password\n";
  ExpectRefused(PollConfig(Conninfo("outboxd_scram"), true), "password authentication failed", "the password");
}

TEST_F(PgTlsTest, AnUnknownServerCaStopsWith78AndSaysSo) {
  ExpectRefused(PollConfig(Conninfo("outboxd_scram", "sslrootcert=" + certs_ + "/other-ca.crt"), true),
                "certificate verify failed", "sslrootcert");
}

TEST_F(PgTlsTest, AHostNameTheServerCertificateDoesNotNameStopsWith78) {
  ExpectRefused(PollConfig(Conninfo("outboxd_scram", "host=wrong.example"), true), "does not match host name",
                "the conninfo's host");
}

TEST_F(PgTlsTest, AnExpiredClientCertificateStopsWith78) {
  ExpectRefused(PollConfig(Conninfo("outboxd_cert", "sslcert=" + certs_ + "/client-expired.crt sslkey=" + certs_ +
                                                        "/client-expired.key"),
                           false),
                "certificate expired", "sslcert");
}

TEST_F(PgTlsTest, AClientCertificateOfAnotherCaStopsWith78) {
  ExpectRefused(PollConfig(Conninfo("outboxd_cert", "sslcert=" + certs_ + "/client-other-ca.crt sslkey=" + certs_ +
                                                        "/client-other-ca.key"),
                           false),
                "unknown ca", "sslcert");
}

TEST_F(PgTlsTest, NoClientCertificateWhereOneIsRequiredStopsWith78) {
  ExpectRefused(PollConfig(Conninfo("outboxd_cert", "sslcert=/nonexistent.crt sslkey=/nonexistent.key"), false),
                "requires a valid client certificate", "sslcert and sslkey");
}

TEST_F(PgTlsTest, APlaintextConnectionOfATlsOnlyRoleStopsWith78) {
  ExpectRefused(PollConfig(Conninfo("outboxd_scram", "sslmode=disable"), true), "pg_hba.conf rejects connection",
                "the server's pg_hba.conf");
}

// Least privilege: outboxd runs as a role that has exactly the grants
// `outboxd init --role` gave it (in a database where it had none), over TLS
// with a client certificate, and relays from both sources.
TEST_F(PgTlsTest, BothSourcesRelayAsARoleWithExactlyTheGrantsOfInit) {
  TestDatabase db(services_->info());
  db.Exec("CREATE TABLE items (id int PRIMARY KEY, name text)");
  KafkaAdmin().CreateTopic(items_topic(), 1);
  const std::string conninfo = "host=localhost hostaddr=127.0.0.1 port=" + std::to_string(services_->pg_port()) +
                               " dbname=" + db.name() + " user=outboxd_cert sslmode=verify-full sslrootcert=" + certs_ +
                               "/ca.crt sslcert=" + certs_ + "/client.crt sslkey=" + certs_ + "/client.key";
  auto config = [&](const std::string& postgres) {
    return "[postgres]\nconninfo = \"" + postgres + "\"\n[kafka]\nbootstrap_servers = \"" +
           SharedServices().kafka_bootstrap +
           "\"\n[log]\nlevel = \"info\"\n[[outbox]]\ntable = \"public.outbox\"\npoll_interval = \"100ms\"\n"
           "[cdc]\nslot = \"s_" +
           Lower(db.name()) + "\"\npublication = \"p_" + Lower(db.name()) +
           "\"\ntables = [\"public.items\"]\ntopic_prefix = \"" + type_ + "\"\n";
  };
  // A DBA applies init as a superuser.
  OutboxdProcess outboxd(config(db.conninfo()));
  const CommandResult init =
      OutboxdProcess::RunCommand({"init", "--role", "outboxd_cert", "-c", outboxd.config_path()});
  ASSERT_EQ(0, init.exit_code) << init.output;
  for (int i = 0; i < 20; ++i) {
    db.Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('" + type_ + "', 'k" +
            std::to_string(i) + "', 'E', '{}')");
  }
  db.Exec("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 10) g");

  outboxd.RewriteConfig(config(conninfo));
  outboxd.Start();
  EXPECT_TRUE(WaitUntil([&] { return db.QueryInt64("SELECT count(*) FROM outbox") == 0; }, 60s)) << outboxd.Log();
  EXPECT_EQ(20u, Ids(ConsumeTopic(SharedServices().kafka_bootstrap, topic_, 20, 60s)).size()) << outboxd.Log();
  EXPECT_EQ(10u, ConsumeTopic(SharedServices().kafka_bootstrap, items_topic(), 10, 60s).size()) << outboxd.Log();
  EXPECT_EQ(2, db.QueryInt64("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                             "WHERE a.usename = 'outboxd_cert' AND a.application_name IN ('outboxd', 'outboxd-cdc') "
                             "AND s.ssl"))
      << outboxd.Log();
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
}

// Kafka over TLS: a broker of the suite's own with a SASL_SSL and an SSL
// (client certificate) listener besides the plaintext one the test reads
// from; PostgreSQL is the shared one.
class KafkaTlsTest : public OwnServicesTest {
 protected:
  static void SetUpTestSuite() {
    MakeServices();
    services_->StartKafkaWithTls(certs_);
  }

  void SetUp() override {
    db_ = std::make_unique<TestDatabase>();
    db_->Exec(OutboxDdl("outbox"));
    type_ = UniqueTopic("ktls");
    topic_ = "outbox.event." + type_;
  }

  // `ca`: the file outboxd trusts the broker's certificate by.
  std::string Config(const std::string& bootstrap, const std::string& properties,
                     const std::string& ca = "ca.crt") const {
    return "[postgres]\nconninfo = \"" + db_->conninfo() + "\"\n[kafka]\nbootstrap_servers = \"" + bootstrap +
           "\"\n[kafka.properties]\n\"ssl.ca.location\" = \"" + certs_ + "/" + ca + "\"\n" + properties +
           "[log]\nlevel = \"info\"\n[[outbox]]\ntable = \"public.outbox\"\npoll_interval = \"100ms\"\n";
  }
  std::string SaslProperties(const std::string& mechanism, const std::string& password) const {
    return "\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanisms\" = \"" + mechanism + "\"\n\"sasl.username\" = \"" +
           services_->kafka_tls().sasl_user + "\"\n\"sasl.password\" = \"" + password + "\"\n";
  }
  // security.protocol SSL with the client certificate `name`.crt/.key, or
  // none for "".
  std::string SslProperties(const std::string& name) const {
    return "\"security.protocol\" = \"ssl\"\n" +
           (name.empty() ? std::string()
                         : "\"ssl.certificate.location\" = \"" + certs_ + "/" + name +
                               ".crt\"\n\"ssl.key.location\" = \"" + certs_ + "/" + name + ".key\"\n");
  }

  // Runs outboxd (`env`: its environment on top of the test's) and expects
  // 20 events in Kafka, read back from the plaintext listener.
  void ExpectRelayed(const std::string& config, const std::vector<std::pair<std::string, std::string>>& env = {}) {
    type_ = UniqueTopic("ktls");  // a topic of this call's own
    topic_ = "outbox.event." + type_;
    for (int i = 0; i < 20; ++i) {
      db_->Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('" + type_ + "', 'k" +
                std::to_string(i) + "', 'E', '{}')");
    }
    OutboxdProcess outboxd(config);
    for (const auto& [k, v] : env) outboxd.SetEnv(k, v);
    outboxd.Start();
    EXPECT_TRUE(WaitUntil([&] { return db_->QueryInt64("SELECT count(*) FROM outbox") == 0; }, 60s)) << outboxd.Log();
    EXPECT_EQ(20u, Ids(ConsumeTopic(services_->kafka_bootstrap(), topic_, 20, 60s)).size());
    outboxd.Terminate();
    EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
  }

  std::unique_ptr<TestDatabase> db_;
  std::string type_, topic_;
};

// The password comes from the environment (${NAME} in [kafka.properties])
// or from [kafka] password_file, never inline.
TEST_F(KafkaTlsTest, PollsOverSaslSslWithPlainAndAPasswordFromTheEnvironmentOrAFile) {
  const auto& tls = services_->kafka_tls();
  ExpectRelayed(Config(tls.sasl_ssl_bootstrap, SaslProperties("PLAIN", "${OUTBOXD_TEST_KAFKA_PASSWORD}")),
                {{"OUTBOXD_TEST_KAFKA_PASSWORD", tls.sasl_password}});

  const std::string password_file = services_->dir() + "/kafka-password";
  std::ofstream(password_file) << tls.sasl_password << "\n";
  ::chmod(password_file.c_str(), 0600);
  std::string config = Config(tls.sasl_ssl_bootstrap,
                              "\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanisms\" = \"PLAIN\"\n"
                              "\"sasl.username\" = \"" +
                                  tls.sasl_user + "\"\n");
  config.replace(config.find("[kafka.properties]"), 0, "password_file = \"" + password_file + "\"\n");
  ExpectRelayed(config);
}

// SCRAM-SHA-512 with the right password: relayed with a librdkafka that can
// (2.6.1 on); else outboxd stops at start-up with 78, and a log line says
// the password is not the cause (librdkafka#4895).
TEST_F(KafkaTlsTest, ScramEitherRelaysOrSaysWhyThisLibrdkafkaCannot) {
  const auto& tls = services_->kafka_tls();
  const std::string config = Config(tls.sasl_ssl_bootstrap, SaslProperties("SCRAM-SHA-512", tls.sasl_password));
  if (rd_kafka_version() >= 0x020601ff) {
    ExpectRelayed(config);
    return;
  }
  OutboxdProcess outboxd(config);
  outboxd.Start();
  EXPECT_EQ(kExitConfig, outboxd.WaitExit(60s)) << outboxd.Log();
  EXPECT_NE(std::string::npos, outboxd.Log().find("(librdkafka#4895, fixed in 2.6.1)")) << outboxd.Log();
}

// Each common mistake stops outboxd at start-up with 78 and a message that
// names the broker, the cause and what to check; nothing is marked sent.
TEST_F(KafkaTlsTest, EachCommonMistakeStopsWith78NamingTheBrokerAndWhatToCheck) {
  db_->Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('" + type_ + "', 'k', 'E', '{}')");
  const auto& tls = services_->kafka_tls();
  // 127.1 is 127.0.0.1, but not a name the broker's certificate gives
  // (localhost, 127.0.0.1).
  std::string other_name = tls.ssl_bootstrap;
  other_name.replace(0, other_name.find(':'), "127.1");
  struct Mistake {
    const char* what;
    std::string config;
    std::string broker;
    const char* cause;
    const char* check;
  };
  const std::vector<Mistake> mistakes = {
      {"a wrong password", Config(tls.sasl_ssl_bootstrap, SaslProperties("PLAIN", "not-the-password")),
       tls.sasl_ssl_bootstrap, "Invalid username or password",
       "(check sasl.mechanisms, sasl.username and sasl.password"},
      {"a CA that did not sign the broker's certificate",
       Config(tls.ssl_bootstrap, SslProperties("client"), "other-ca.crt"), tls.ssl_bootstrap,
       "certificate verify failed", "(check that ssl.ca.location holds the CA"},
      {"a host name the broker's certificate does not give", Config(other_name, SslProperties("client")), other_name,
       "certificate verify failed", "names the host given in bootstrap_servers"},
      {"TLS against a plaintext listener", Config(services_->kafka_bootstrap(), SslProperties("client")),
       services_->kafka_bootstrap(), "SSL handshake failed", "(check security.protocol"},
      {"plaintext against a TLS listener", Config(tls.ssl_bootstrap, "\"security.protocol\" = \"plaintext\"\n"),
       tls.ssl_bootstrap, "Disconnected while requesting ApiVersion", "(check security.protocol"},
      {"no client certificate", Config(tls.ssl_bootstrap, SslProperties("")), tls.ssl_bootstrap, "bad certificate",
       "(check ssl.certificate.location and ssl.key.location"},
      {"an expired client certificate", Config(tls.ssl_bootstrap, SslProperties("client-expired")), tls.ssl_bootstrap,
       "certificate unknown", "(check ssl.certificate.location and ssl.key.location"},
      {"a client certificate of another CA", Config(tls.ssl_bootstrap, SslProperties("client-other-ca")),
       tls.ssl_bootstrap, "SSL alert number", "(check ssl.certificate.location and ssl.key.location"},
  };
  for (const Mistake& m : mistakes) {
    SCOPED_TRACE(m.what);
    OutboxdProcess outboxd(m.config);
    outboxd.Start();
    ASSERT_EQ(kExitConfig, outboxd.WaitExit(60s)) << outboxd.Log();
    const std::string log = outboxd.Log();
    const std::size_t line = log.find("Kafka refused outboxd: ");
    ASSERT_NE(std::string::npos, line) << log;
    const std::string message = log.substr(line, log.find('\n', line) - line);
    EXPECT_NE(std::string::npos, message.find(m.broker)) << message;
    EXPECT_NE(std::string::npos, message.find(m.cause)) << message;
    EXPECT_NE(std::string::npos, message.find(m.check)) << message;
  }
  EXPECT_EQ(1, db_->QueryInt64("SELECT count(*) FROM outbox"));
}

// A broker that is down is not a mistake: outboxd waits for it, with
// librdkafka's backoff, and relays once it is up.
TEST_F(KafkaTlsTest, StartedWhileKafkaIsDownItRelaysOnceKafkaIsUp) {
  const auto& tls = services_->kafka_tls();
  const std::string config = Config(tls.sasl_ssl_bootstrap, SaslProperties("PLAIN", tls.sasl_password));
  services_->StopKafkaKeepData();
  db_->Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('" + type_ + "', 'k', 'E', '{}')");
  OutboxdProcess outboxd(config);
  outboxd.Start();
  ASSERT_TRUE(outboxd.WaitForLog("Connection refused", 30s)) << outboxd.Log();
  EXPECT_FALSE(WaitUntil([&] { return !outboxd.Running(); }, 5s)) << outboxd.Log();
  services_->StartKafkaAgain();
  EXPECT_TRUE(WaitUntil([&] { return db_->QueryInt64("SELECT count(*) FROM outbox") == 0; }, 90s)) << outboxd.Log();
  EXPECT_EQ(1u, Ids(ConsumeTopic(services_->kafka_bootstrap(), topic_, 1, 60s)).size());
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
}

TEST_F(KafkaTlsTest, PollsOverMutualTls) {
  ExpectRelayed(Config(services_->kafka_tls().ssl_bootstrap, SslProperties("client")));
}

// Exactly once adds a transactional producer and the position topic's own
// consumer and producer: each gets the same TLS settings.
TEST_F(KafkaTlsTest, PollsExactlyOnceOverMutualTls) {
  std::string config = Config(services_->kafka_tls().ssl_bootstrap, SslProperties("client"));
  config.replace(config.find("[kafka.properties]"), 0, "delivery = \"exactly-once\"\n");
  ExpectRelayed(config);
}

// The cdc source over SASL_SSL, its table captured through a replication
// slot of the shared PostgreSQL.
TEST_F(KafkaTlsTest, StreamsChangesOverSaslSsl) {
  db_->Exec("CREATE TABLE items (id int PRIMARY KEY, name text)");
  const std::string topic = type_ + ".public.items";
  KafkaAdmin(services_->kafka_bootstrap()).CreateTopic(topic, 1);
  const auto& tls = services_->kafka_tls();
  std::string config = Config(tls.sasl_ssl_bootstrap, SaslProperties("PLAIN", tls.sasl_password));
  config.replace(config.find("[[outbox]]"), std::string::npos,
                 "[cdc]\nslot = \"s_" + Lower(db_->name()) + "\"\npublication = \"p_" + Lower(db_->name()) +
                     "\"\ncreate = true\ntables = [\"public.items\"]\ntopic_prefix = \"" + type_ + "\"\n");
  OutboxdProcess outboxd(config);
  outboxd.Start();
  ASSERT_TRUE(outboxd.WaitForLog("streaming replication slot", 60s)) << outboxd.Log();
  db_->Exec("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 10) g");
  EXPECT_EQ(10u, ConsumeTopic(services_->kafka_bootstrap(), topic, 10, 60s).size()) << outboxd.Log();
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
}

// The HTTP listener over HTTPS with basic authentication, scraped with curl
// as Prometheus would; PostgreSQL and Kafka are the shared ones.
class HttpTlsTest : public OwnServicesTest {
 protected:
  static void SetUpTestSuite() { MakeServices(); }

  void SetUp() override {
    db_ = std::make_unique<TestDatabase>();
    db_->Exec(OutboxDdl("outbox"));
    port_ = FreePort();
    password_file_ = services_->dir() + "/metrics-password";
    std::ofstream(password_file_) << kMetricsPassword << "\n";
    ::chmod(password_file_.c_str(), 0600);
  }

  // `http`: the [http] keys besides listen.
  std::string Config(const std::string& http) const {
    return "[postgres]\nconninfo = \"" + db_->conninfo() + "\"\n[kafka]\nbootstrap_servers = \"" +
           SharedServices().kafka_bootstrap + "\"\n" + HttpSection(port_) + http +
           "[[outbox]]\ntable = \"public.outbox\"\n";
  }
  std::string TlsKeys(const std::string& key = "server.key") const {
    return "tls_cert_file = \"" + certs_ + "/server.crt\"\ntls_key_file = \"" + certs_ + "/" + key + "\"\n";
  }
  std::string AuthKeys() const {
    return "basic_auth_user = \"prometheus\"\nbasic_auth_password_file = \"" + password_file_ + "\"\n";
  }
  // curl over HTTPS, trusting the test CA; `args` before the URL.
  HttpResponse Https(const std::string& path, std::vector<std::string> args = {}) const {
    args.insert(args.begin(), {"--cacert", certs_ + "/ca.crt"});
    args.push_back("https://localhost:" + std::to_string(port_) + path);
    return Curl(args);
  }
  static constexpr char kMetricsPassword[] = "scrape-S3cret";
  static constexpr char kCredentials[] = "prometheus:scrape-S3cret";

  std::unique_ptr<TestDatabase> db_;
  int port_ = 0;
  std::string password_file_;
};

TEST_F(HttpTlsTest, MetricsOverHttpsAskForTheBasicAuthPasswordHealthDoesNot) {
  OutboxdProcess outboxd(Config(TlsKeys() + AuthKeys()));
  outboxd.Start();
  ASSERT_TRUE(outboxd.WaitForLog("listening on", 30s)) << outboxd.Log();
  ASSERT_TRUE(WaitUntil([&] { return Https("/readyz").status == 200; }, 30s)) << outboxd.Log();

  const HttpResponse scrape = Https("/metrics", {"-u", kCredentials});
  ASSERT_EQ(200, scrape.status) << scrape.body;
  EXPECT_NE(std::string::npos, scrape.body.find("outboxd_build_info")) << scrape.body;
  ExpectPromtoolAccepts(scrape.body);

  const HttpResponse anonymous = Https("/metrics", {"-i"});
  EXPECT_EQ(401, anonymous.status);
  EXPECT_NE(std::string::npos, anonymous.body.find("WWW-Authenticate: Basic realm=\"outboxd\"")) << anonymous.body;
  EXPECT_EQ(401, Https("/metrics", {"-u", "prometheus:not-the-password"}).status);
  EXPECT_EQ(401, Https("/metrics", {"-u", "grafana:scrape-S3cret"}).status);
  EXPECT_EQ(200, Https("/healthz").status);

  // Only HTTPS, and only TLS 1.2 or newer.
  EXPECT_EQ(0, Curl({"http://127.0.0.1:" + std::to_string(port_) + "/healthz"}).status);
  EXPECT_EQ(0, Https("/healthz", {"--tls-max", "1.1"}).status);
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
}

TEST_F(HttpTlsTest, BasicAuthHealthProtectsTheHealthEndpointsToo) {
  OutboxdProcess outboxd(Config(AuthKeys() + "basic_auth_health = true\n"));
  outboxd.Start();
  ASSERT_TRUE(outboxd.WaitForLog("listening on", 30s)) << outboxd.Log();
  for (const char* path : {"/healthz", "/readyz", "/metrics"}) {
    SCOPED_TRACE(path);
    EXPECT_EQ(401, Get(port_, path).status);
    const std::string url = "http://127.0.0.1:" + std::to_string(port_) + path;
    EXPECT_TRUE(WaitUntil([&] { return Curl({"-u", kCredentials, url}).status == 200; }, 30s)) << outboxd.Log();
  }
  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
}

TEST_F(HttpTlsTest, AKeyThatIsNotTheCertificatesStopsWith78NamingIt) {
  OutboxdProcess outboxd(Config(TlsKeys("client.key")));
  outboxd.Start();
  EXPECT_EQ(kExitConfig, outboxd.WaitExit(30s)) << outboxd.Log();
  EXPECT_NE(std::string::npos,
            outboxd.Log().find("[http] tls_key_file \"" + certs_ + "/client.key\" is not the key of tls_cert_file"))
      << outboxd.Log();
}

// No secret in anything outboxd writes or serves: every command's output,
// the log of a run at debug level with librdkafka's debug contexts on, of a
// run refused by PostgreSQL and of one refused by Kafka, and what the HTTP
// listener serves. PostgreSQL and Kafka of the suite's own, both over TLS.
class SecretLeakTest : public OwnServicesTest {
 protected:
  static void SetUpTestSuite() {
    MakeServices();
    services_->StartPostgresWithTls(certs_);
    services_->StartKafkaWithTls(certs_);
    TestDatabase admin(services_->info());
    admin.Exec(std::string("CREATE ROLE outboxd_scram LOGIN REPLICATION PASSWORD '") + kScramPassword + "'");
  }

  // A file in the suite's directory holding `secret`, mode 0600.
  static std::string SecretFile(const std::string& name, const std::string& secret) {
    std::string path = services_->dir() + "/" + name;
    std::ofstream(path) << secret << "\n";
    ::chmod(path.c_str(), 0600);
    return path;
  }

  // Expects none of `secrets` anywhere in `text` (what `what` wrote).
  static void ExpectNoSecret(const std::string& what, const std::string& text,
                             const std::vector<std::string>& secrets) {
    for (const std::string& secret : secrets) {
      EXPECT_EQ(std::string::npos, text.find(secret)) << what << " shows the secret \"" << secret << "\":\n" << text;
    }
  }
};

TEST_F(SecretLeakTest, NoSecretInAnyOutputLogOrScrape) {
  TestDatabase db(services_->info());
  db.Exec(OutboxDdl("outbox"));
  db.Exec(std::string("GRANT CREATE ON DATABASE \"") + db.name() + "\" TO outboxd_scram");
  db.Exec("GRANT ALL ON SCHEMA public TO outboxd_scram");
  db.Exec("GRANT SELECT, INSERT, UPDATE, DELETE ON outbox TO outboxd_scram");
  const std::string type = UniqueTopic("leak");
  for (int i = 0; i < 20; ++i) {
    db.Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('" + type + "', 'k" +
            std::to_string(i) + "', 'E', '{}')");
  }
  const auto& tls = services_->kafka_tls();
  const std::string wrong_pg = "wrong-pg-Pa55word";
  const std::string wrong_kafka = "wrong-kafka-Pa55word";
  const std::string metrics_password = "metrics-Pa55word";
  const std::vector<std::string> secrets = {kScramPassword, tls.sasl_password, wrong_pg, wrong_kafka, metrics_password};
  const int port = FreePort();
  auto config = [&](const std::string& pg_password, const std::string& kafka_password) {
    return "[postgres]\nconninfo = \"host=localhost hostaddr=127.0.0.1 port=" + std::to_string(services_->pg_port()) +
           " dbname=" + db.name() + " user=outboxd_scram sslmode=verify-full sslrootcert=" + certs_ +
           "/ca.crt\"\npassword_file = \"" + SecretFile("pg-password", pg_password) +
           "\"\n[kafka]\nbootstrap_servers = \"" + tls.sasl_ssl_bootstrap + "\"\npassword_file = \"" +
           SecretFile("kafka-password", kafka_password) +
           "\"\n[kafka.properties]\n\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanisms\" = \"PLAIN\"\n"
           "\"sasl.username\" = \"" +
           tls.sasl_user + "\"\n\"ssl.ca.location\" = \"" + certs_ + "/ca.crt\"\n\"debug\" = \"all\"\n" +
           HttpSection(port) + "basic_auth_user = \"prometheus\"\nbasic_auth_password_file = \"" +
           SecretFile("metrics-password", metrics_password) +
           "\"\nbasic_auth_health = true\n[log]\nlevel = \"debug\"\n[[outbox]]\ntable = \"public.outbox\"\n";
  };

  OutboxdProcess outboxd(config(kScramPassword, tls.sasl_password));
  for (const std::vector<std::string>& command :
       {std::vector<std::string>{"check-config", "-c", outboxd.config_path()},
        std::vector<std::string>{"init", "--dry-run", "--role", "outboxd_scram", "-c", outboxd.config_path()}}) {
    const CommandResult r = OutboxdProcess::RunCommand(command);
    EXPECT_EQ(0, r.exit_code) << r.output;
    ExpectNoSecret(command[0], r.output, secrets);
  }

  outboxd.Start();
  ASSERT_TRUE(WaitUntil([&] { return db.QueryInt64("SELECT count(*) FROM outbox") == 0; }, 60s)) << outboxd.Log();
  for (const char* path : {"/metrics", "/healthz", "/readyz"}) {
    const std::string url = "http://127.0.0.1:" + std::to_string(port) + path;
    const HttpResponse r = Curl({"-i", "-u", "prometheus:" + metrics_password, url});
    EXPECT_EQ(200, r.status) << path;
    ExpectNoSecret(path, r.body, secrets);
    const HttpResponse refused = Curl({"-i", "-u", "prometheus:" + wrong_pg, url});
    EXPECT_EQ(401, refused.status) << path;
    ExpectNoSecret(path, refused.body, secrets);
  }
  for (const std::vector<std::string>& command :
       {std::vector<std::string>{"status", "-c", outboxd.config_path()},
        std::vector<std::string>{"status", "--json", "-c", outboxd.config_path()}}) {
    const CommandResult r = OutboxdProcess::RunCommand(command);
    EXPECT_EQ(0, r.exit_code) << r.output;
    ExpectNoSecret("status", r.output, secrets);
  }
  outboxd.Terminate();
  ASSERT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
  // The log would show a leak: librdkafka wrote out its configuration.
  EXPECT_NE(std::string::npos, outboxd.Log().find("sasl.password = [redacted]")) << outboxd.Log();
  ExpectNoSecret("the log of a run", outboxd.Log(), secrets);

  // Failing logins, each with the other password right.
  for (const auto& [pg_password, kafka_password] :
       {std::pair{wrong_pg, tls.sasl_password}, std::pair{std::string(kScramPassword), wrong_kafka}}) {
    OutboxdProcess refused(config(pg_password, kafka_password));
    refused.Start();
    EXPECT_EQ(kExitConfig, refused.WaitExit(60s)) << refused.Log();
    ExpectNoSecret("the log of a refused run", refused.Log(), secrets);
  }
}

}  // namespace
}  // namespace outboxd::testing
