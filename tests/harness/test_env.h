#pragma once
// Test support for outboxd's integration, fault and benchmark tests: access to
// the real PostgreSQL and Kafka that ctest's harness fixtures start
// (tests/harness/pg.sh, kafka.sh), throwaway databases and topics, reading a
// topic back with the real kcat client, and running the built outboxd binary
// as users run it.
//
// Errors in the harness itself (a service that is not there, SQL that fails,
// a process that cannot be started) throw HarnessError. GoogleTest reports an
// exception escaping a test body as a failure of that test with the message,
// so test code calls these functions without checking results. Do not let
// them throw on threads other than the test's own (catch there, or use
// common/pg.h directly).
//
// Unless a class says otherwise, objects are not thread-safe; the free
// functions are.

#include <sys/types.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace outboxd::testing {

// A failure of the test environment, not of the code under test.
class HarnessError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// ---------------------------------------------------------------------------
// Services

// Where the shared services of this ctest run are.
struct ServiceInfo {
  std::string pg_host;          // "127.0.0.1"; empty when no postgres fixture
  int pg_port = 0;              // 0 when no postgres fixture
  std::string kafka_bootstrap;  // "127.0.0.1:PORT"; empty when no kafka fixture
  std::string dir;              // $OUTBOXD_HARNESS_DIR
};

// The services started by the ctest fixtures "postgres" and "kafka", read
// once from $OUTBOXD_HARNESS_DIR/pg/pg.env and kafka/kafka.env. A test must
// name the fixtures it needs (outboxd_test(... FIXTURES "postgres;kafka")).
// Throws HarnessError when OUTBOXD_HARNESS_DIR is unset or neither file
// exists. Shared services are used by tests running in parallel: never stop
// or reconfigure them; use ServiceControl for that.
[[nodiscard]] const ServiceInfo& SharedServices();

// Starts and stops private instances of PostgreSQL and Kafka through pg.sh
// and kafka.sh, for fault tests that restart or stop a service. They live in
// $OUTBOXD_HARNESS_DIR/private/svc.XXXXXX (a temporary directory outside
// ctest), where the harness' cleanup fixtures stop whatever a crashed test
// left running, so a test using ServiceControl declares FIXTURES
// "postgres;kafka". The destructor stops and deletes whatever this object
// started: declare it before the TestDatabase / OutboxdProcess that use its
// services. Each call throws HarnessError with the script's output on failure.
class ServiceControl {
 public:
  ServiceControl();
  ~ServiceControl();
  ServiceControl(const ServiceControl&) = delete;
  ServiceControl& operator=(const ServiceControl&) = delete;

  void StartPostgres();
  // StartPostgres() with TLS (pg.sh --tls): certificates from
  // MakeCertificates(); roles outboxd_scram and outboxd_cert may connect
  // only over TLS, with a SCRAM password and a client certificate.
  void StartPostgresWithTls(const std::string& cert_dir);
  // Makes the test certificates (tests/harness/certs.sh) in dir()/certs
  // and returns that directory.
  std::string MakeCertificates();
  void RestartPostgres();       // same port and data; returns when ready again
  void StopPostgresKeepData();  // server down until StartPostgresAgain()
  void StartPostgresAgain();

  void StartKafka(bool auto_create_topics = true);
  // StartKafka() with TLS listeners besides the plaintext one (kafka.sh
  // --tls, certificates from MakeCertificates()); see kafka_tls().
  void StartKafkaWithTls(const std::string& cert_dir);
  void StopKafkaKeepData();  // broker down (controlled shutdown) until StartKafkaAgain()
  void StartKafkaAgain();    // same ports and data; returns when it serves metadata
  void RestartKafka();
  void KillKafka();   // SIGKILL, data kept; StartKafkaAgain() recovers it
  void PauseKafka();  // SIGSTOP: connections stay open, nothing answers
  void ResumeKafka();

  // Valid after StartPostgres() / StartKafka().
  const std::string& pg_host() const { return info_.pg_host; }
  int pg_port() const { return info_.pg_port; }
  const std::string& kafka_bootstrap() const { return info_.kafka_bootstrap; }
  // The listeners of StartKafkaWithTls().
  struct KafkaTls {
    std::string sasl_ssl_bootstrap;  // SASL over TLS: sasl_user with sasl_password (SCRAM or PLAIN)
    std::string ssl_bootstrap;       // TLS with a client certificate of the test CA
    std::string sasl_user, sasl_password;
  };
  const KafkaTls& kafka_tls() const { return kafka_tls_; }
  const ServiceInfo& info() const { return info_; }
  const std::string& dir() const { return info_.dir; }
  std::string pg_dir() const { return info_.dir + "/pg"; }
  std::string kafka_dir() const { return info_.dir + "/kafka"; }

 private:
  void RunScript(const std::string& script, const std::string& command, const std::string& subdir,
                 std::vector<std::string> extra, std::chrono::milliseconds deadline);
  void ReadPgEnv();
  void ReadKafkaEnv();

  ServiceInfo info_;
  KafkaTls kafka_tls_;
  bool pg_started_ = false;
  bool kafka_started_ = false;
};

// A TCP port on 127.0.0.1 that nothing listens on right now (for [http]
// listen in a daemon config).
[[nodiscard]] int FreePort();

// ---------------------------------------------------------------------------
// PostgreSQL

// A fresh, uniquely named database on a PostgreSQL server, created in the
// constructor and dropped in the destructor (WITH (FORCE), after terminating
// and dropping any logical replication slot on it). Every Exec/Query call
// runs on its own short-lived connection in autocommit mode, so calls keep
// working across a server restart, and the object may be used from several
// threads; use common/pg.h for a session or a transaction spanning calls.
// Failing statements throw HarnessError naming the SQL and libpq's message.
class TestDatabase {
 public:
  using Row = std::vector<std::optional<std::string>>;  // NULL is nullopt

  TestDatabase();                                      // on SharedServices()' postgres
  explicit TestDatabase(const ServiceInfo& services);  // e.g. ServiceControl::info()
  TestDatabase(std::string host, int port);
  ~TestDatabase();
  TestDatabase(const TestDatabase&) = delete;
  TestDatabase& operator=(const TestDatabase&) = delete;

  const std::string& name() const { return name_; }
  const std::string& host() const { return host_; }
  int port() const { return port_; }
  // "host=127.0.0.1 port=N user=postgres dbname=NAME" (superuser, trust auth).
  std::string conninfo() const;

  void Exec(const std::string& sql) const;  // may hold several statements
  [[nodiscard]] std::vector<Row> Query(const std::string& sql) const;
  // The single value of a one-row, one-column result; throws otherwise or on NULL.
  [[nodiscard]] int64_t QueryInt64(const std::string& sql) const;
  [[nodiscard]] std::string QueryString(const std::string& sql) const;

 private:
  std::string host_;
  int port_;
  std::string name_;
};

// ---------------------------------------------------------------------------
// Kafka

// "<prefix>-<pid>-<counter>-<random>": unique across tests and runs on a
// shared broker; also a valid Kafka topic name when prefix is one.
[[nodiscard]] std::string UniqueTopic(std::string_view prefix);

// Topic administration through librdkafka's admin API. Owns one client.
class KafkaAdmin {
 public:
  KafkaAdmin();  // SharedServices().kafka_bootstrap
  explicit KafkaAdmin(std::string bootstrap);
  ~KafkaAdmin();
  KafkaAdmin(const KafkaAdmin&) = delete;
  KafkaAdmin& operator=(const KafkaAdmin&) = delete;

  // Creates the topic (replication factor 1) with topic-level config such as
  // {"retention.ms", "60000"}, and returns once the broker's metadata shows
  // every partition with a leader. Throws if it exists or cannot be created.
  void CreateTopic(const std::string& name, int partitions, const std::map<std::string, std::string>& config = {},
                   std::chrono::milliseconds deadline = std::chrono::seconds(30));
  void DeleteTopic(const std::string& name, std::chrono::milliseconds deadline = std::chrono::seconds(30));
  // Partition count, or 0 when the topic does not exist.
  [[nodiscard]] int PartitionCount(const std::string& name);

  static std::string UniqueTopic(std::string_view prefix) { return testing::UniqueTopic(prefix); }

 private:
  struct Client;
  std::string bootstrap_;
  std::unique_ptr<Client> client_;
};

struct KafkaRecord {
  std::string topic;
  int partition = -1;
  int64_t offset = -1;
  std::optional<std::string> key;    // nullopt: null key
  std::optional<std::string> value;  // nullopt: null value (tombstone)
  // In record order; repeated names are kept. A null header value reads "".
  std::vector<std::pair<std::string, std::string>> headers;
  int64_t timestamp_ms = 0;
};

// The path of a script of tests/harness (e.g. "cloudevents-sdk.sh").
[[nodiscard]] std::string HarnessScript(const std::string& name);

// The whole contents of the file at `path`; throws HarnessError when it
// cannot be read.
[[nodiscard]] std::string ReadTextFile(const std::string& path);

// Reads `topic` from the beginning with the real kcat client
// (`kcat -C -J -e -o beginning`), again and again until at least
// `expected_at_least` records are there or `deadline` has passed, and returns
// every record read by the last pass (possibly fewer than expected on
// timeout; check the size), ordered by (partition, offset). A topic that does
// not exist yet reads as empty. Keys, values and header values come back
// byte-exact, also when they are not UTF-8 (kcat writes such bytes raw into
// its JSON; they are decoded here as Latin-1 code points and turned back into
// bytes). Reads committed records only (kcat's default isolation), or with
// `Isolation::kReadUncommitted` also those of open and aborted transactions.
enum class Isolation : uint8_t { kReadCommitted, kReadUncommitted };
[[nodiscard]] std::vector<KafkaRecord> ConsumeTopic(const std::string& bootstrap, const std::string& topic,
                                                    std::size_t expected_at_least, std::chrono::milliseconds deadline,
                                                    Isolation isolation = Isolation::kReadCommitted);

// One record to produce with kcat.
struct KcatMessage {
  std::optional<std::string> key;
  std::optional<std::string> value;  // nullopt produces a null value
  std::vector<std::pair<std::string, std::string>> headers;
  int partition = -1;  // -1: kcat's partitioner
};

// Produces each message with one `kcat -P` run. Values are sent byte-exact
// (as whole-file messages). Limits of kcat: header names cannot contain '=';
// with an empty or null value the key cannot contain tab or newline, an empty
// value needs a key, and a null value cannot have an empty key. Throws on
// failure.
void ProduceWithKcat(const std::string& bootstrap, const std::string& topic, const std::vector<KcatMessage>& messages);

// ---------------------------------------------------------------------------
// Processes

struct CommandResult {
  int exit_code = -1;  // exit status; 128+signal if signalled; -1 on timeout (then killed)
  std::string output;  // stdout and stderr interleaved
};

// Runs args[0] (searched in PATH unless it contains '/') with args, feeds it
// `stdin_data`, and waits for it at most `deadline`, killing it (SIGKILL) on
// timeout. Throws only when it cannot be started.
[[nodiscard]] CommandResult RunCommand(const std::vector<std::string>& args, std::chrono::milliseconds deadline,
                                       const std::string& stdin_data = "");

// The built outboxd binary run as users run it: `outboxd run -c FILE` with
// the TOML given to the constructor written to FILE in a private temporary
// directory, stdout and stderr appended to a log file there. Start() may be
// called again after the process has exited (same config, same log), e.g.
// after Kill() to simulate a crash and restart. The destructor SIGKILLs a
// still-running process and removes the directory unless the test has
// failed (then its path is printed). The child gets SIGKILL if the thread
// that started it exits, so a crashed test leaves no daemon behind: start it
// from the test's own thread.
class OutboxdProcess {
 public:
  explicit OutboxdProcess(const std::string& toml);
  ~OutboxdProcess();
  OutboxdProcess(const OutboxdProcess&) = delete;
  OutboxdProcess& operator=(const OutboxdProcess&) = delete;

  // Environment variable for the next Start() (on top of the test's own).
  void SetEnv(const std::string& name, const std::string& value);
  // Arguments after "run -c FILE" for the next Start().
  void SetExtraArgs(std::vector<std::string> args) { extra_args_ = std::move(args); }
  // Replaces the config file's text (takes effect on the next Start(), or on
  // a reload the test triggers).
  void RewriteConfig(const std::string& toml);

  void Start();  // throws if already running or if fork/exec fails
  bool Running();
  pid_t pid() const { return pid_; }  // of the last Start(); -1 before

  void Signal(int sig);
  void Kill() { Signal(SIGKILL); }
  void Terminate() { Signal(SIGTERM); }
  // Exit code once the process has exited; 128+N if killed by signal N; -1
  // if it is still running after `deadline`. Repeated calls return the same.
  [[nodiscard]] int WaitExit(std::chrono::milliseconds deadline);

  std::string Log() const;  // everything written so far, all runs
  std::size_t LogSize() const;
  // True once `needle` appears in the log at or after byte `from` (e.g. a
  // LogSize() taken before the event).
  [[nodiscard]] bool WaitForLog(std::string_view needle, std::chrono::milliseconds deadline,
                                std::size_t from = 0) const;

  const std::string& config_path() const { return config_path_; }
  const std::string& log_path() const { return log_path_; }
  const std::string& dir() const { return dir_; }

  static std::string BinaryPath();  // OUTBOXD_BINARY, or $OUTBOXD_BINARY if set
  // Runs `outboxd ARGS...` (e.g. {"check-config", "-c", path}).
  [[nodiscard]] static CommandResult RunCommand(const std::vector<std::string>& args,
                                                std::chrono::milliseconds deadline = std::chrono::seconds(60));

 private:
  std::string dir_;
  std::string config_path_;
  std::string log_path_;
  std::vector<std::string> extra_args_;
  std::vector<std::pair<std::string, std::string>> extra_env_;
  pid_t pid_ = -1;
  bool running_ = false;
  int exit_code_ = -1;
};

// ---------------------------------------------------------------------------
// Waiting and measuring

// Calls `cond` every `every` until it returns true (then true) or `deadline`
// has passed (then false; cond is evaluated one last time).
[[nodiscard]] bool WaitUntil(const std::function<bool()>& cond, std::chrono::milliseconds deadline,
                             std::chrono::milliseconds every = std::chrono::milliseconds(50));

struct ProcessMemory {
  int64_t rss_kb = -1;       // VmRSS
  int64_t peak_rss_kb = -1;  // VmHWM
};
// From /proc/PID/status; -1 fields when the process is gone.
[[nodiscard]] ProcessMemory ReadProcessMemory(pid_t pid);
// {VmRSS, VmHWM} in kB, the same as ReadProcessMemory.
[[nodiscard]] std::pair<int64_t, int64_t> ProcessRssKb(pid_t pid);

}  // namespace outboxd::testing
