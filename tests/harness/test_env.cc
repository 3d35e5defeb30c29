#include "tests/harness/test_env.h"

#include "common/unique_fd.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>
#include <tuple>

#ifndef OUTBOXD_BINARY
#error "OUTBOXD_BINARY must be defined by the build (tests/harness/CMakeLists.txt)"
#endif
#ifndef OUTBOXD_HARNESS_SCRIPTS
#error "OUTBOXD_HARNESS_SCRIPTS must be defined by the build (tests/harness/CMakeLists.txt)"
#endif

extern char** environ;

namespace outboxd::testing {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// ---------------------------------------------------------------------------
// Small owners and helpers

[[noreturn]] void Throw(const std::string& what) { throw HarnessError(what); }

std::string ErrnoText(const std::string& what) { return what + ": " + std::strerror(errno); }

std::string ReadFile(const std::string& path, std::size_t from = 0) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(static_cast<std::streamoff>(from));
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) Throw("could not write " + path);
}

// Reads KEY=VALUE lines; returns an empty map when the file is missing.
std::map<std::string, std::string> ReadEnvFile(const std::string& path) {
  std::map<std::string, std::string> vars;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    auto eq = line.find('=');
    if (eq == std::string::npos || line.starts_with('#')) continue;
    vars[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return vars;
}

std::string RandomHex(int digits) {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard lock(mu);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < digits; ++i) out += hex[rng() % 16];
  return out;
}

std::string UniqueName(std::string_view prefix, char sep) {
  static std::atomic<int> counter{0};
  std::string name(prefix);
  name += sep + std::to_string(::getpid()) + sep + std::to_string(++counter) + sep + RandomHex(6);
  return name;
}

std::string MakeTempDir(const std::string& prefix) {
  const char* tmpdir = std::getenv("TMPDIR");
  std::string pattern = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/" + prefix + "XXXXXX";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) Throw(ErrnoText("mkdtemp " + pattern));
  return buf.data();
}

milliseconds Remaining(Clock::time_point end) {
  return std::max(milliseconds(0), std::chrono::duration_cast<milliseconds>(end - Clock::now()));
}

void IgnoreSigpipeOnce() {
  // Writing to a child's stdin after it exited must not kill the test.
  static std::once_flag once;
  std::call_once(once, [] { ::signal(SIGPIPE, SIG_IGN); });
}

// The executable for args[0]: as given when it has a '/', else found in PATH.
std::string ResolveExecutable(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  std::size_t start = 0;
  while (start <= dirs.size()) {
    std::size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    std::string dir = dirs.substr(start, end - start);
    std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  Throw("command not found in PATH: " + name);
}

std::vector<char*> CStrings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// In the child between fork and exec: only async-signal-safe calls.
void PrepareChild(int in_fd, int out_fd, int err_fd) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::signal(SIGPIPE, SIG_DFL);
  if (::dup2(in_fd, 0) < 0 || ::dup2(out_fd, 1) < 0 || ::dup2(err_fd, 2) < 0) ::_exit(126);
  ::syscall(SYS_close_range, 3U, ~0U, 0U);
}

int DecodeWaitStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// Waits for child `pid` to exit for at most `timeout`; returns its decoded
// status, or nullopt on timeout. Uses a pidfd, so nothing is polled.
std::optional<int> WaitChild(pid_t pid, milliseconds timeout) {
  int status = 0;
  pid_t r = ::waitpid(pid, &status, WNOHANG);
  if (r == pid) return DecodeWaitStatus(status);
  if (r < 0) Throw(ErrnoText("waitpid " + std::to_string(pid)));
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  const auto end = Clock::now() + timeout;
  while (true) {
    const milliseconds left = Remaining(end);
    if (pidfd.get() >= 0) {
      pollfd p{pidfd.get(), POLLIN, 0};
      ::poll(&p, 1, static_cast<int>(left.count()));
    } else {
      // No pidfd (old kernel): check every 10 ms.
      std::this_thread::sleep_for(std::min(left, milliseconds(10)));
    }
    r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return DecodeWaitStatus(status);
    if (r < 0) Throw(ErrnoText("waitpid " + std::to_string(pid)));
    if (left.count() == 0) return std::nullopt;
  }
}

struct ProcessOutput {
  int exit_code = -1;
  std::string out;
  std::string err;  // empty when merged into out
};

// Runs a command to completion (or `deadline`, then SIGKILL), feeding it
// `stdin_data` and collecting its output, stderr into `out` when `merge`.
ProcessOutput RunProcess(const std::vector<std::string>& args, milliseconds deadline, const std::string& stdin_data,
                         bool merge) {
  if (args.empty()) Throw("RunCommand: no command");
  IgnoreSigpipeOnce();
  std::vector<std::string> argv_strings = args;
  argv_strings[0] = ResolveExecutable(args[0]);
  std::vector<char*> argv = CStrings(argv_strings);

  int in_pipe[2], out_pipe[2], err_pipe[2];
  if (::pipe2(in_pipe, O_CLOEXEC) != 0) Throw(ErrnoText("pipe2"));
  UniqueFd in_r(in_pipe[0]), in_w(in_pipe[1]);
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) Throw(ErrnoText("pipe2"));
  UniqueFd out_r(out_pipe[0]), out_w(out_pipe[1]);
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) Throw(ErrnoText("pipe2"));
  UniqueFd err_r(err_pipe[0]), err_w(err_pipe[1]);

  const pid_t pid = ::fork();
  if (pid < 0) Throw(ErrnoText("fork"));
  if (pid == 0) {
    PrepareChild(in_r.get(), out_w.get(), merge ? out_w.get() : err_w.get());
    ::execve(argv[0], argv.data(), environ);
    ::_exit(127);
  }
  in_r.Close();
  out_w.Close();
  err_w.Close();
  if (stdin_data.empty()) in_w.Close();
  if (in_w.get() >= 0) ::fcntl(in_w.get(), F_SETFL, O_NONBLOCK);

  ProcessOutput result;
  std::size_t written = 0;
  const auto end = Clock::now() + deadline;
  bool timed_out = false;
  char buf[65536];
  while (out_r.get() >= 0 || err_r.get() >= 0) {
    std::vector<pollfd> fds;
    if (out_r.get() >= 0) fds.push_back({out_r.get(), POLLIN, 0});
    if (err_r.get() >= 0) fds.push_back({err_r.get(), POLLIN, 0});
    if (in_w.get() >= 0) fds.push_back({in_w.get(), POLLOUT, 0});
    const int timeout = timed_out ? 1000 : static_cast<int>(Remaining(end).count());
    const int n = ::poll(fds.data(), fds.size(), timeout);
    if (n < 0 && errno != EINTR) Throw(ErrnoText("poll"));
    if (n == 0) {
      if (timed_out) break;  // killed, yet the pipes stay open (a grandchild holds them)
      ::kill(pid, SIGKILL);
      timed_out = true;
      continue;
    }
    for (const pollfd& p : fds) {
      if (p.revents == 0) continue;
      if (p.fd == in_w.get()) {
        ssize_t w = ::write(in_w.get(), stdin_data.data() + written, stdin_data.size() - written);
        if (w > 0) written += static_cast<std::size_t>(w);
        if (w < 0 && errno != EAGAIN && errno != EINTR) in_w.Close();  // EPIPE: it stopped reading
        if (written == stdin_data.size()) in_w.Close();
        continue;
      }
      ssize_t r = ::read(p.fd, buf, sizeof buf);
      if (r > 0) {
        (p.fd == out_r.get() ? result.out : result.err).append(buf, static_cast<std::size_t>(r));
      } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        (p.fd == out_r.get() ? out_r : err_r).Close();
      }
    }
  }
  auto status = WaitChild(pid, timed_out ? milliseconds(10000) : Remaining(end) + milliseconds(1000));
  if (!status) {
    ::kill(pid, SIGKILL);
    status = WaitChild(pid, milliseconds(10000));
    timed_out = true;
  }
  result.exit_code = timed_out ? -1 : status.value_or(-1);
  return result;
}

std::string Join(const std::vector<std::string>& args) {
  std::string out;
  for (const auto& a : args) out += (out.empty() ? "" : " ") + a;
  return out;
}

// ---------------------------------------------------------------------------
// libpq

struct PgConnCloser {
  void operator()(PGconn* c) const { PQfinish(c); }
};
struct PgResultClearer {
  void operator()(PGresult* r) const { PQclear(r); }
};
using PgConnPtr = std::unique_ptr<PGconn, PgConnCloser>;
using PgResultPtr = std::unique_ptr<PGresult, PgResultClearer>;

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

PgConnPtr PgConnect(const std::string& conninfo) {
  PgConnPtr conn(PQconnectdb(conninfo.c_str()));
  if (!conn) Throw("out of memory connecting to PostgreSQL");
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    Throw("could not connect to PostgreSQL (" + conninfo + "): " + Trim(PQerrorMessage(conn.get())));
  }
  return conn;
}

PgResultPtr PgRun(const std::string& conninfo, const std::string& sql) {
  PgConnPtr conn = PgConnect(conninfo);
  PgResultPtr res(PQexec(conn.get(), sql.c_str()));
  const ExecStatusType st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    Throw("SQL failed on \"" + conninfo +
          "\": " + Trim(res ? PQresultErrorMessage(res.get()) : PQerrorMessage(conn.get())) + "\n  SQL: " + sql);
  }
  return res;
}

std::string QuoteLiteral(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += (c == '\'' ? std::string("''") : std::string(1, c));
  return out + "'";
}

std::string AdminConninfo(const std::string& host, int port) {
  return "host=" + host + " port=" + std::to_string(port) +
         " user=postgres dbname=postgres connect_timeout=10 application_name=outboxd-test-harness";
}

// ---------------------------------------------------------------------------
// kcat JSON

// Raw bytes >= 0x80 in kcat's JSON (values that are not UTF-8 are written
// unescaped) become \u00XX escapes, so the parser sees valid UTF-8 and every
// byte survives as one Latin-1 code point.
std::string EscapeHighBytes(std::string_view line) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  out.reserve(line.size());
  for (unsigned char c : line) {
    if (c < 0x80) {
      out += static_cast<char>(c);
    } else {
      out += "\\u00";
      out += hex[c >> 4];
      out += hex[c & 0xF];
    }
  }
  return out;
}

// Inverse of EscapeHighBytes on a parsed (UTF-8) string: code points up to
// U+00FF become single bytes; others (only escapes kcat wrote) stay UTF-8.
std::string LatinCodePointsToBytes(const std::string& utf8) {
  std::string out;
  out.reserve(utf8.size());
  for (std::size_t i = 0; i < utf8.size();) {
    const unsigned char c = static_cast<unsigned char>(utf8[i]);
    std::size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : 4;
    len = std::min(len, utf8.size() - i);
    if (len == 2) {
      const unsigned cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(utf8[i + 1]) & 0x3Fu);
      if (cp <= 0xFF) {
        out += static_cast<char>(cp);
        i += 2;
        continue;
      }
    }
    out.append(utf8, i, len);
    i += len;
  }
  return out;
}

std::optional<std::string> OptionalBytes(const nlohmann::json& j, const char* field) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return std::nullopt;
  return LatinCodePointsToBytes(it->get<std::string>());
}

KafkaRecord ParseKcatRecord(const std::string& line) {
  const nlohmann::json j = nlohmann::json::parse(EscapeHighBytes(line));
  KafkaRecord r;
  r.topic = j.at("topic").get<std::string>();
  r.partition = j.at("partition").get<int>();
  r.offset = j.at("offset").get<int64_t>();
  r.timestamp_ms = j.value("ts", int64_t{0});
  r.key = OptionalBytes(j, "key");
  r.value = OptionalBytes(j, "payload");
  if (auto h = j.find("headers"); h != j.end() && h->is_array()) {
    for (std::size_t i = 0; i + 1 < h->size(); i += 2) {
      const auto& name = (*h)[i];
      const auto& value = (*h)[i + 1];
      r.headers.emplace_back(LatinCodePointsToBytes(name.get<std::string>()),
                             value.is_null() ? std::string() : LatinCodePointsToBytes(value.get<std::string>()));
    }
  }
  return r;
}

// ---------------------------------------------------------------------------
// librdkafka

struct KafkaEventDestroyer {
  void operator()(rd_kafka_event_t* e) const { rd_kafka_event_destroy(e); }
};
using KafkaEventPtr = std::unique_ptr<rd_kafka_event_t, KafkaEventDestroyer>;
struct KafkaQueueDestroyer {
  void operator()(rd_kafka_queue_t* q) const { rd_kafka_queue_destroy(q); }
};
using KafkaQueuePtr = std::unique_ptr<rd_kafka_queue_t, KafkaQueueDestroyer>;
struct KafkaOptionsDestroyer {
  void operator()(rd_kafka_AdminOptions_t* o) const { rd_kafka_AdminOptions_destroy(o); }
};
using KafkaOptionsPtr = std::unique_ptr<rd_kafka_AdminOptions_t, KafkaOptionsDestroyer>;
struct KafkaMetadataDestroyer {
  void operator()(const rd_kafka_metadata_t* m) const { rd_kafka_metadata_destroy(m); }
};
using KafkaMetadataPtr = std::unique_ptr<const rd_kafka_metadata_t, KafkaMetadataDestroyer>;

}  // namespace

// ===========================================================================
// Services

const ServiceInfo& SharedServices() {
  static std::mutex mu;
  static std::optional<ServiceInfo> info;
  std::lock_guard lock(mu);
  if (info) return *info;
  const char* dir = std::getenv("OUTBOXD_HARNESS_DIR");
  if (dir == nullptr || *dir == '\0') {
    Throw(
        "OUTBOXD_HARNESS_DIR is not set: run this test through ctest, which starts the services "
        "(or start tests/harness/pg.sh and kafka.sh by hand and point OUTBOXD_HARNESS_DIR at them)");
  }
  ServiceInfo s;
  s.dir = dir;
  auto pg = ReadEnvFile(s.dir + "/pg/pg.env");
  auto kafka = ReadEnvFile(s.dir + "/kafka/kafka.env");
  if (pg.empty() && kafka.empty()) {
    Throw("no services in " + s.dir +
          " (pg/pg.env, kafka/kafka.env): does the test declare "
          "FIXTURES \"postgres;kafka\" in its CMakeLists?");
  }
  if (!pg.empty()) {
    s.pg_host = pg["PGHOST"];
    s.pg_port = std::atoi(pg["PGPORT"].c_str());
  }
  s.kafka_bootstrap = kafka["KAFKA_BOOTSTRAP"];
  info = s;
  return *info;
}

int FreePort() {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) Throw(ErrnoText("socket"));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) Throw(ErrnoText("bind"));
  socklen_t len = sizeof addr;
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) Throw(ErrnoText("getsockname"));
  return ntohs(addr.sin_port);
}

ServiceControl::ServiceControl() {
  // Under the harness directory, the cleanup fixtures stop what a crashed
  // test left running.
  const char* harness = std::getenv("OUTBOXD_HARNESS_DIR");
  if (harness != nullptr && *harness != '\0') {
    const std::string parent = std::string(harness) + "/private";
    std::error_code ec;
    fs::create_directories(parent, ec);
    std::string pattern = parent + "/svc.XXXXXX";
    if (!ec && ::mkdtemp(pattern.data()) != nullptr) info_.dir = pattern;
  }
  if (info_.dir.empty()) info_.dir = MakeTempDir("outboxd-svc.");
  // pg.sh, run as root, runs the server as an unprivileged user who must be
  // able to reach this directory.
  ::chmod(info_.dir.c_str(), 0755);
}

ServiceControl::~ServiceControl() {
  for (auto [started, script, subdir] :
       {std::tuple{kafka_started_, "kafka.sh", "kafka"}, std::tuple{pg_started_, "pg.sh", "pg"}}) {
    if (!started) continue;
    try {
      RunScript(script, "stop", subdir, {}, std::chrono::seconds(120));
    } catch (const std::exception& e) {
      std::cerr << "warning: ServiceControl could not stop " << subdir << ": " << e.what() << "\n";
    }
  }
  std::error_code ec;
  fs::remove_all(info_.dir, ec);
}

void ServiceControl::RunScript(const std::string& script, const std::string& command, const std::string& subdir,
                               std::vector<std::string> extra, milliseconds deadline) {
  std::vector<std::string> args = {"bash", std::string(OUTBOXD_HARNESS_SCRIPTS) + "/" + script, command,
                                   info_.dir + "/" + subdir};
  args.insert(args.end(), extra.begin(), extra.end());
  ProcessOutput r = RunProcess(args, deadline, "", /*merge=*/true);
  if (r.exit_code != 0) {
    Throw(Join(args) + (r.exit_code < 0 ? " timed out" : " failed with exit code " + std::to_string(r.exit_code)) +
          ":\n" + r.out);
  }
}

void ServiceControl::ReadPgEnv() {
  auto env = ReadEnvFile(pg_dir() + "/pg.env");
  info_.pg_host = env["PGHOST"];
  info_.pg_port = std::atoi(env["PGPORT"].c_str());
  if (info_.pg_port == 0) Throw("pg.sh wrote no port to " + pg_dir() + "/pg.env");
}

void ServiceControl::ReadKafkaEnv() {
  info_.kafka_bootstrap = ReadEnvFile(kafka_dir() + "/kafka.env")["KAFKA_BOOTSTRAP"];
  if (info_.kafka_bootstrap.empty()) Throw("kafka.sh wrote no bootstrap address to " + kafka_dir() + "/kafka.env");
}

void ServiceControl::StartPostgres() {
  pg_started_ = true;
  RunScript("pg.sh", "start", "pg", {}, std::chrono::seconds(180));
  ReadPgEnv();
}
void ServiceControl::StartPostgresWithTls(const std::string& cert_dir) {
  pg_started_ = true;
  RunScript("pg.sh", "start", "pg", {"--tls", cert_dir}, std::chrono::seconds(180));
  ReadPgEnv();
}
std::string HarnessScript(const std::string& name) { return std::string(OUTBOXD_HARNESS_SCRIPTS) + "/" + name; }

std::string ReadTextFile(const std::string& path) {
  if (::access(path.c_str(), R_OK) != 0) Throw(ErrnoText("cannot read " + path));
  return ReadFile(path);
}

std::string ServiceControl::MakeCertificates() {
  std::string certs = info_.dir + "/certs";
  const std::vector<std::string> args = {"bash", std::string(OUTBOXD_HARNESS_SCRIPTS) + "/certs.sh", certs};
  ProcessOutput r = RunProcess(args, std::chrono::seconds(60), "", /*merge=*/true);
  if (r.exit_code != 0) Throw(Join(args) + " failed:\n" + r.out);
  return certs;
}
void ServiceControl::RestartPostgres() {
  RunScript("pg.sh", "restart", "pg", {}, std::chrono::seconds(180));
  ReadPgEnv();
}
void ServiceControl::StopPostgresKeepData() { RunScript("pg.sh", "stop-keep", "pg", {}, std::chrono::seconds(120)); }
void ServiceControl::StartPostgresAgain() {
  RunScript("pg.sh", "start", "pg", {}, std::chrono::seconds(180));
  ReadPgEnv();
}

void ServiceControl::StartKafka(bool auto_create_topics) {
  kafka_started_ = true;
  std::vector<std::string> extra;
  if (!auto_create_topics) extra.emplace_back("--no-auto-create");
  // The first start on a machine downloads Kafka's jars.
  RunScript("kafka.sh", "start", "kafka", extra, std::chrono::seconds(900));
  ReadKafkaEnv();
}
void ServiceControl::StartKafkaWithTls(const std::string& cert_dir) {
  kafka_started_ = true;
  RunScript("kafka.sh", "start", "kafka", {"--tls", cert_dir}, std::chrono::seconds(900));
  ReadKafkaEnv();
  auto env = ReadEnvFile(kafka_dir() + "/kafka.env");
  kafka_tls_ = {env["KAFKA_SASL_SSL_BOOTSTRAP"], env["KAFKA_SSL_BOOTSTRAP"], env["KAFKA_SASL_USER"],
                env["KAFKA_SASL_PASSWORD"]};
  if (kafka_tls_.ssl_bootstrap.empty()) Throw("kafka.sh --tls wrote no TLS listeners to " + kafka_dir() + "/kafka.env");
}
void ServiceControl::StopKafkaKeepData() { RunScript("kafka.sh", "stop-keep", "kafka", {}, std::chrono::seconds(120)); }
void ServiceControl::StartKafkaAgain() {
  RunScript("kafka.sh", "start", "kafka", {}, std::chrono::seconds(300));
  ReadKafkaEnv();
}
void ServiceControl::RestartKafka() {
  RunScript("kafka.sh", "restart", "kafka", {}, std::chrono::seconds(300));
  ReadKafkaEnv();
}
void ServiceControl::KillKafka() {
  const std::string pid_text = ReadFile(kafka_dir() + "/kafka.pid");
  const pid_t pid = static_cast<pid_t>(std::atoi(pid_text.c_str()));
  if (pid <= 0) Throw("no broker pid in " + kafka_dir() + "/kafka.pid");
  ::kill(pid, SIGKILL);
  // Not our child: wait for /proc to forget it (or show a zombie).
  if (!WaitUntil([&] { return ReadProcessMemory(pid).rss_kb < 0; }, std::chrono::seconds(30))) {
    Throw("broker " + std::to_string(pid) + " survived SIGKILL");
  }
}
void ServiceControl::PauseKafka() { RunScript("kafka.sh", "pause", "kafka", {}, std::chrono::seconds(30)); }
void ServiceControl::ResumeKafka() { RunScript("kafka.sh", "resume", "kafka", {}, std::chrono::seconds(30)); }

// ===========================================================================
// PostgreSQL

TestDatabase::TestDatabase() : TestDatabase(SharedServices().pg_host, SharedServices().pg_port) {}

TestDatabase::TestDatabase(const ServiceInfo& services) : TestDatabase(services.pg_host, services.pg_port) {}

TestDatabase::TestDatabase(std::string host, int port)
    : host_(std::move(host)), port_(port), name_(UniqueName("outboxd_test", '_')) {
  if (port_ == 0) Throw("no PostgreSQL: does the test declare the \"postgres\" fixture?");
  PgRun(AdminConninfo(host_, port_), "CREATE DATABASE \"" + name_ + "\"");
}

TestDatabase::~TestDatabase() {
  try {
    const std::string admin = AdminConninfo(host_, port_);
    const std::string in_db = " FROM pg_replication_slots WHERE database = " + QuoteLiteral(name_);
    // Logical slots keep DROP DATABASE from succeeding, even WITH (FORCE);
    // the walsender of an active one must go first.
    const bool slots_gone = WaitUntil(
        [&] {
          PgRun(admin, "SELECT pg_terminate_backend(active_pid)" + in_db + " AND active_pid IS NOT NULL");
          PgRun(admin, "SELECT pg_drop_replication_slot(slot_name)" + in_db + " AND NOT active");
          return PQgetvalue(PgRun(admin, "SELECT count(*)" + in_db).get(), 0, 0) == std::string("0");
        },
        std::chrono::seconds(20), std::chrono::milliseconds(100));
    if (!slots_gone) std::cerr << "warning: replication slots of database " << name_ << " would not go away\n";
    PgRun(admin, "DROP DATABASE IF EXISTS \"" + name_ + "\" WITH (FORCE)");
  } catch (const std::exception& e) {
    std::cerr << "warning: could not drop test database " << name_ << ": " << e.what() << "\n";
  }
}

std::string TestDatabase::conninfo() const {
  return "host=" + host_ + " port=" + std::to_string(port_) + " user=postgres dbname=" + name_;
}

void TestDatabase::Exec(const std::string& sql) const { PgRun(conninfo(), sql); }

std::vector<TestDatabase::Row> TestDatabase::Query(const std::string& sql) const {
  PgResultPtr res = PgRun(conninfo(), sql);
  std::vector<Row> rows;
  const int n = PQntuples(res.get()), cols = PQnfields(res.get());
  rows.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    Row row;
    for (int c = 0; c < cols; ++c) {
      if (PQgetisnull(res.get(), i, c)) {
        row.emplace_back(std::nullopt);
      } else {
        row.emplace_back(
            std::string(PQgetvalue(res.get(), i, c), static_cast<std::size_t>(PQgetlength(res.get(), i, c))));
      }
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

std::string TestDatabase::QueryString(const std::string& sql) const {
  auto rows = Query(sql);
  if (rows.size() != 1 || rows[0].size() != 1) {
    Throw("expected one row with one column, got " + std::to_string(rows.size()) + " rows\n  SQL: " + sql);
  }
  if (!rows[0][0]) Throw("expected a value, got NULL\n  SQL: " + sql);
  return *rows[0][0];
}

int64_t TestDatabase::QueryInt64(const std::string& sql) const {
  const std::string text = QueryString(sql);
  try {
    std::size_t used = 0;
    const int64_t v = std::stoll(text, &used);
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  Throw("expected an integer, got \"" + text + "\"\n  SQL: " + sql);
}

// ===========================================================================
// Kafka

std::string UniqueTopic(std::string_view prefix) { return UniqueName(prefix, '-'); }

struct KafkaAdmin::Client {
  explicit Client(const std::string& bootstrap) {
    char errstr[512];
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    for (auto [k, v] : {std::pair{"bootstrap.servers", bootstrap.c_str()},
                        std::pair{"allow.auto.create.topics", "false"}, std::pair{"client.id", "outboxd-test-admin"}}) {
      if (rd_kafka_conf_set(conf, k, v, errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        Throw(std::string("librdkafka config ") + k + ": " + errstr);
      }
    }
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);  // takes conf on success
    if (rk == nullptr) {
      rd_kafka_conf_destroy(conf);
      Throw(std::string("could not create a Kafka admin client: ") + errstr);
    }
  }
  ~Client() { rd_kafka_destroy(rk); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Metadata for every topic (asking for one topic by handle could create it).
  KafkaMetadataPtr Metadata(milliseconds timeout) {
    const rd_kafka_metadata_t* md = nullptr;
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 1, nullptr, &md, static_cast<int>(timeout.count()));
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) return nullptr;
    return KafkaMetadataPtr(md);
  }

  rd_kafka_t* rk = nullptr;
};

namespace {

std::string TopicResultError(rd_kafka_event_t* ev, bool create) {
  if (rd_kafka_event_error(ev) != RD_KAFKA_RESP_ERR_NO_ERROR) return rd_kafka_event_error_string(ev);
  size_t n = 0;
  const rd_kafka_topic_result_t** results =
      create ? rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n)
             : rd_kafka_DeleteTopics_result_topics(rd_kafka_event_DeleteTopics_result(ev), &n);
  for (size_t i = 0; i < n; ++i) {
    if (rd_kafka_topic_result_error(results[i]) != RD_KAFKA_RESP_ERR_NO_ERROR) {
      const char* msg = rd_kafka_topic_result_error_string(results[i]);
      return std::string(rd_kafka_err2name(rd_kafka_topic_result_error(results[i]))) + ": " + (msg ? msg : "");
    }
  }
  return "";
}

KafkaOptionsPtr AdminOptions(rd_kafka_t* rk, rd_kafka_admin_op_t op, milliseconds timeout) {
  KafkaOptionsPtr options(rd_kafka_AdminOptions_new(rk, op));
  char errstr[256];
  const int ms = static_cast<int>(std::max(timeout.count(), milliseconds::rep{1000}));
  (void)rd_kafka_AdminOptions_set_request_timeout(options.get(), ms, errstr, sizeof errstr);
  (void)rd_kafka_AdminOptions_set_operation_timeout(options.get(), ms, errstr, sizeof errstr);
  return options;
}

}  // namespace

KafkaAdmin::KafkaAdmin() : KafkaAdmin(SharedServices().kafka_bootstrap) {}

KafkaAdmin::KafkaAdmin(std::string bootstrap) : bootstrap_(std::move(bootstrap)) {
  if (bootstrap_.empty()) Throw("no Kafka: does the test declare the \"kafka\" fixture?");
  client_ = std::make_unique<Client>(bootstrap_);
}

KafkaAdmin::~KafkaAdmin() = default;

void KafkaAdmin::CreateTopic(const std::string& name, int partitions, const std::map<std::string, std::string>& config,
                             milliseconds deadline) {
  const auto end = Clock::now() + deadline;
  char errstr[512];
  rd_kafka_NewTopic_t* topic = rd_kafka_NewTopic_new(name.c_str(), partitions, 1, errstr, sizeof errstr);
  if (topic == nullptr) Throw("could not create topic \"" + name + "\": " + errstr);
  std::unique_ptr<rd_kafka_NewTopic_t, decltype(&rd_kafka_NewTopic_destroy)> owner(topic, rd_kafka_NewTopic_destroy);
  for (const auto& [k, v] : config) {
    if (rd_kafka_NewTopic_set_config(topic, k.c_str(), v.c_str()) != RD_KAFKA_RESP_ERR_NO_ERROR) {
      Throw("could not set config " + k + " on topic \"" + name + "\"");
    }
  }
  KafkaQueuePtr queue(rd_kafka_queue_new(client_->rk));
  KafkaOptionsPtr options = AdminOptions(client_->rk, RD_KAFKA_ADMIN_OP_CREATETOPICS, Remaining(end));
  rd_kafka_CreateTopics(client_->rk, &topic, 1, options.get(), queue.get());
  KafkaEventPtr ev(rd_kafka_queue_poll(queue.get(), static_cast<int>(Remaining(end).count()) + 1000));
  if (!ev) Throw("timed out creating topic \"" + name + "\" on " + bootstrap_);
  if (std::string err = TopicResultError(ev.get(), true); !err.empty()) {
    Throw("could not create topic \"" + name + "\" on " + bootstrap_ + ": " + err);
  }
  // The controller has it; wait until the broker serves every partition.
  const bool served = WaitUntil(
      [&] {
        KafkaMetadataPtr md = client_->Metadata(milliseconds(5000));
        if (!md) return false;
        for (int i = 0; i < md->topic_cnt; ++i) {
          const rd_kafka_metadata_topic_t& t = md->topics[i];
          if (name != t.topic) continue;
          if (t.err != RD_KAFKA_RESP_ERR_NO_ERROR || t.partition_cnt != partitions) return false;
          for (int p = 0; p < t.partition_cnt; ++p) {
            if (t.partitions[p].leader < 0 || t.partitions[p].err != RD_KAFKA_RESP_ERR_NO_ERROR) return false;
          }
          return true;
        }
        return false;
      },
      Remaining(end), milliseconds(50));
  if (!served) Throw("topic \"" + name + "\" was created but its partitions have no leader yet");
}

void KafkaAdmin::DeleteTopic(const std::string& name, milliseconds deadline) {
  const auto end = Clock::now() + deadline;
  rd_kafka_DeleteTopic_t* topic = rd_kafka_DeleteTopic_new(name.c_str());
  std::unique_ptr<rd_kafka_DeleteTopic_t, decltype(&rd_kafka_DeleteTopic_destroy)> owner(topic,
                                                                                         rd_kafka_DeleteTopic_destroy);
  KafkaQueuePtr queue(rd_kafka_queue_new(client_->rk));
  KafkaOptionsPtr options = AdminOptions(client_->rk, RD_KAFKA_ADMIN_OP_DELETETOPICS, Remaining(end));
  rd_kafka_DeleteTopics(client_->rk, &topic, 1, options.get(), queue.get());
  KafkaEventPtr ev(rd_kafka_queue_poll(queue.get(), static_cast<int>(Remaining(end).count()) + 1000));
  if (!ev) Throw("timed out deleting topic \"" + name + "\"");
  if (std::string err = TopicResultError(ev.get(), false); !err.empty()) {
    Throw("could not delete topic \"" + name + "\": " + err);
  }
  if (!WaitUntil([&] { return PartitionCount(name) == 0; }, Remaining(end))) {
    Throw("topic \"" + name + "\" still listed after deletion");
  }
}

int KafkaAdmin::PartitionCount(const std::string& name) {
  KafkaMetadataPtr md = client_->Metadata(milliseconds(10000));
  if (!md) Throw("could not read metadata from " + bootstrap_);
  for (int i = 0; i < md->topic_cnt; ++i) {
    if (name == md->topics[i].topic && md->topics[i].err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      return md->topics[i].partition_cnt;
    }
  }
  return 0;
}

std::vector<KafkaRecord> ConsumeTopic(const std::string& bootstrap, const std::string& topic,
                                      std::size_t expected_at_least, milliseconds deadline, Isolation isolation) {
  const auto end = Clock::now() + deadline;
  std::vector<KafkaRecord> records;
  std::string last_problem;
  while (true) {
    const milliseconds pass_deadline = std::max(milliseconds(1000), std::min(Remaining(end), milliseconds(60000)));
    std::vector<std::string> args = {"kcat",
                                     "-C",
                                     "-b",
                                     bootstrap,
                                     "-t",
                                     topic,
                                     "-J",
                                     "-e",
                                     "-o",
                                     "beginning",
                                     "-q",
                                     "-X",
                                     "allow.auto.create.topics=false"};
    if (isolation == Isolation::kReadUncommitted) {
      args.insert(args.end(), {"-X", "isolation.level=read_uncommitted"});
    }
    ProcessOutput r = RunProcess(args, pass_deadline, "", /*merge=*/false);
    if (r.exit_code == 0) {
      std::vector<KafkaRecord> pass;
      std::istringstream lines(r.out);
      std::string line;
      bool parsed = true;
      while (std::getline(lines, line)) {
        if (line.empty() || line[0] != '{') continue;
        try {
          pass.push_back(ParseKcatRecord(line));
        } catch (const std::exception& e) {
          last_problem = std::string("unparseable kcat output: ") + e.what() + ": " + line.substr(0, 200);
          parsed = false;
          break;
        }
      }
      if (parsed) {
        std::sort(pass.begin(), pass.end(), [](const KafkaRecord& a, const KafkaRecord& b) {
          return std::tie(a.partition, a.offset) < std::tie(b.partition, b.offset);
        });
        records = std::move(pass);
      }
    } else {
      // "Unknown topic or partition" until the topic exists.
      last_problem = r.exit_code < 0 ? "kcat timed out" : Trim(r.err);
    }
    if (records.size() >= expected_at_least) return records;
    if (Remaining(end).count() == 0) break;
    std::this_thread::sleep_for(std::min(Remaining(end), milliseconds(200)));
  }
  std::cerr << "ConsumeTopic(" << topic << "): " << records.size() << " of " << expected_at_least << " records within "
            << deadline.count() << " ms" << (last_problem.empty() ? "" : "; last kcat problem: " + last_problem)
            << "\n";
  return records;
}

void ProduceWithKcat(const std::string& bootstrap, const std::string& topic, const std::vector<KcatMessage>& messages) {
  const std::string dir = MakeTempDir("outboxd-kcat.");
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{dir};
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const KcatMessage& m = messages[i];
    std::vector<std::string> args = {"kcat", "-P", "-b", bootstrap, "-t", topic};
    if (m.partition >= 0) args.insert(args.end(), {"-p", std::to_string(m.partition)});
    for (const auto& [name, value] : m.headers) args.insert(args.end(), {"-H", name + "=" + value});
    std::string input;
    if (m.value && !m.value->empty()) {
      // A file argument is sent whole as one message: any bytes work.
      const std::string file = dir + "/message-" + std::to_string(i);
      WriteFile(file, *m.value);
      if (m.key) args.insert(args.end(), {"-k", *m.key});
      args.push_back(file);
    } else {
      // kcat sends no message for an empty file, so empty and null values go
      // through stdin as "KEY<tab>" lines; -Z turns empty key and value into nulls.
      const std::string key = m.key.value_or("");
      if (key.find_first_of("\t\n") != std::string::npos || (m.value && !m.key) || (!m.value && m.key && key.empty())) {
        Throw("ProduceWithKcat cannot produce this combination of key and empty/null value");
      }
      args.insert(args.end(), {"-K", "\\t"});
      if (!m.value) args.emplace_back("-Z");
      input = key + "\t\n";
    }
    ProcessOutput r = RunProcess(args, milliseconds(30000), input, /*merge=*/true);
    if (r.exit_code != 0 || r.out.find("ERROR") != std::string::npos) {
      Throw(Join(args) + " failed (exit code " + std::to_string(r.exit_code) + "):\n" + r.out);
    }
  }
}

// ===========================================================================
// Processes

CommandResult RunCommand(const std::vector<std::string>& args, milliseconds deadline, const std::string& stdin_data) {
  ProcessOutput r = RunProcess(args, deadline, stdin_data, /*merge=*/true);
  return CommandResult{r.exit_code, std::move(r.out)};
}

OutboxdProcess::OutboxdProcess(const std::string& toml) : dir_(MakeTempDir("outboxd-proc.")) {
  config_path_ = dir_ + "/outboxd.toml";
  log_path_ = dir_ + "/outboxd.log";
  WriteFile(config_path_, toml);
}

OutboxdProcess::~OutboxdProcess() {
  if (Running()) {
    ::kill(pid_, SIGKILL);
    try {
      (void)WaitExit(std::chrono::seconds(30));
    } catch (const std::exception&) {
    }
  }
  if (::testing::Test::HasFailure()) {
    std::cerr << "outboxd config and log kept in " << dir_ << "\n";
    return;
  }
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

std::string OutboxdProcess::BinaryPath() {
  const char* env = std::getenv("OUTBOXD_BINARY");
  return env && *env ? env : OUTBOXD_BINARY;
}

CommandResult OutboxdProcess::RunCommand(const std::vector<std::string>& args, milliseconds deadline) {
  std::vector<std::string> full = {BinaryPath()};
  full.insert(full.end(), args.begin(), args.end());
  return testing::RunCommand(full, deadline);
}

void OutboxdProcess::SetEnv(const std::string& name, const std::string& value) {
  for (auto& [n, v] : extra_env_) {
    if (n == name) {
      v = value;
      return;
    }
  }
  extra_env_.emplace_back(name, value);
}

void OutboxdProcess::RewriteConfig(const std::string& toml) {
  // Write beside and rename, so a reading daemon never sees half a file.
  WriteFile(config_path_ + ".new", toml);
  fs::rename(config_path_ + ".new", config_path_);
}

void OutboxdProcess::Start() {
  if (Running()) Throw("outboxd (pid " + std::to_string(pid_) + ") is already running");
  IgnoreSigpipeOnce();
  const std::string binary = BinaryPath();
  if (::access(binary.c_str(), X_OK) != 0) Throw(ErrnoText("outboxd binary " + binary));
  std::vector<std::string> args = {binary, "run", "-c", config_path_};
  args.insert(args.end(), extra_args_.begin(), extra_args_.end());
  std::vector<char*> argv = CStrings(args);

  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view entry(*e);
    const std::string_view name = entry.substr(0, entry.find('='));
    const bool overridden =
        std::any_of(extra_env_.begin(), extra_env_.end(), [&](const auto& kv) { return kv.first == name; });
    if (!overridden) env_strings.emplace_back(entry);
  }
  for (const auto& [n, v] : extra_env_) env_strings.push_back(n + "=" + v);
  std::vector<char*> envp = CStrings(env_strings);

  UniqueFd log(::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (log.get() < 0) Throw(ErrnoText("open " + log_path_));
  UniqueFd null_in(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (null_in.get() < 0) Throw(ErrnoText("open /dev/null"));

  const pid_t pid = ::fork();
  if (pid < 0) Throw(ErrnoText("fork"));
  if (pid == 0) {
    PrepareChild(null_in.get(), log.get(), log.get());
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  pid_ = pid;
  running_ = true;
  exit_code_ = -1;
}

bool OutboxdProcess::Running() {
  if (!running_) return false;
  if (auto status = WaitChild(pid_, milliseconds(0))) {
    running_ = false;
    exit_code_ = *status;
  }
  return running_;
}

void OutboxdProcess::Signal(int sig) {
  if (!Running()) Throw("outboxd is not running (exit code " + std::to_string(exit_code_) + "); cannot signal it");
  if (::kill(pid_, sig) != 0) Throw(ErrnoText("kill " + std::to_string(pid_)));
}

int OutboxdProcess::WaitExit(milliseconds deadline) {
  if (!running_) return exit_code_;
  if (auto status = WaitChild(pid_, deadline)) {
    running_ = false;
    exit_code_ = *status;
    return exit_code_;
  }
  return -1;
}

std::string OutboxdProcess::Log() const { return ReadFile(log_path_); }

std::size_t OutboxdProcess::LogSize() const {
  struct stat st {};
  return ::stat(log_path_.c_str(), &st) == 0 ? static_cast<std::size_t>(st.st_size) : 0;
}

bool OutboxdProcess::WaitForLog(std::string_view needle, milliseconds deadline, std::size_t from) const {
  return WaitUntil([&] { return ReadFile(log_path_, from).find(needle) != std::string::npos; }, deadline);
}

// ===========================================================================
// Waiting and measuring

bool WaitUntil(const std::function<bool()>& cond, milliseconds deadline, milliseconds every) {
  const auto end = Clock::now() + deadline;
  while (true) {
    if (cond()) return true;
    const milliseconds left = Remaining(end);
    if (left.count() == 0) return false;
    std::this_thread::sleep_for(std::min(left, every));
    if (Remaining(end).count() == 0) return cond();
  }
}

ProcessMemory ReadProcessMemory(pid_t pid) {
  ProcessMemory mem;
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  bool zombie = false;
  while (std::getline(in, line)) {
    auto value = [&] { return std::atoll(line.c_str() + line.find(':') + 1); };
    if (line.starts_with("VmRSS:")) mem.rss_kb = value();
    if (line.starts_with("VmHWM:")) mem.peak_rss_kb = value();
    if (line.starts_with("State:") && line.find('Z') != std::string::npos) zombie = true;
  }
  if (zombie) return ProcessMemory{};
  return mem;
}

std::pair<int64_t, int64_t> ProcessRssKb(pid_t pid) {
  const ProcessMemory mem = ReadProcessMemory(pid);
  return {mem.rss_kb, mem.peak_rss_kb};
}

}  // namespace outboxd::testing
