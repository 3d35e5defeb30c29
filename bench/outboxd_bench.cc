// outboxd_bench: measures the built outboxd binary against a real PostgreSQL
// and a real Kafka broker, the services of tests/harness (bench/run.sh starts
// them and points OUTBOXD_HARNESS_DIR at them). bench/README.md explains
// every number.
//
// Four scenarios, each printed as a table; throughput and latency are poll
// mode, cdc-throughput and cdc-latency cdc mode ([cdc], row changes):
//
//   throughput  N events (default 200000) of ~150-byte JSON payloads. Raw
//               limit: a table of them drained with batched DELETE ...
//               RETURNING on one connection, no Kafka. Then outboxd drains
//               a table of them twice into topics whose timestamps are the
//               broker's LogAppendTime: "cold" (outboxd starts on the full
//               table) and "warm" (outboxd already runs and has published to
//               the topic when the N events are committed in one
//               transaction). Rate = N / (last - first LogAppendTime).
//               Exactly once next to at least once, both cold: N events in
//               100-row transactions, and N events in one transaction.
//   latency     a writer inserts one event per transaction on an absolute
//               schedule (default 1000/s for 20 s), noting the wall clock
//               right after each COMMIT; outboxd (woken by NOTIFY) relays
//               them; every record's LogAppendTime minus its commit time is
//               its commit-to-ack latency, and the time a read_committed
//               consumer received it minus its commit time.
//   cdc-throughput  N row inserts (~200-byte rows) of a table captured by
//               [cdc] tables, written once in one transaction and once in
//               transactions of 100 rows, after two pgoutput slots were
//               created. Raw limit: pg_recvlogical reads one slot to
//               /dev/null up to the end LSN (start -> exit). Then outboxd
//               streams the other slot into Kafka: N / (last LogAppendTime -
//               outboxd start). The run ends when the slot's
//               confirmed_flush_lsn reaches the end LSN.
//   cdc-latency one-row transactions into a captured table on an absolute
//               schedule (default 2000/s for 20 s); LogAppendTime of each
//               row's change record minus its commit time, and the time a
//               read_committed consumer received it minus its commit time.
//
// Both latency scenarios and cdc-throughput run twice in one run, at least
// once and exactly once ([kafka] delivery), so their numbers sit side by
// side.
//
// Numbers only: the program asserts nothing about them. It exits non-zero
// when a run could not be measured (a service missing, outboxd exiting, rows
// not drained in time, records missing). Single-threaded except for the
// latency writer, which uses its own libpq connection and never throws, and
// the thread that waits for pg_recvlogical.

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/pg.h"
#include "tests/harness/outbox_schema.h"
#include "tests/harness/test_env.h"

namespace outboxd::bench {
namespace {

using namespace outboxd::testing;  // NOLINT: the whole harness is the bench's toolbox
using std::chrono::milliseconds;
using std::chrono::seconds;
using SteadyClock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------
// Options

struct Options {
  bool throughput = true;
  bool latency = true;
  bool cdc_throughput = true;
  bool cdc_latency = true;
  int64_t events = 200000;
  int keys = 1000;
  int payload_bytes = 150;
  int batch_size = 1000;
  int partitions = 3;
  double rate = 1000;
  int seconds = 20;
  std::optional<int64_t> max_in_flight;
  std::string log_dir;  // where to keep outboxd's logs; empty: nowhere
  std::string log_level = "info";
  std::vector<std::pair<std::string, std::string>> kafka_properties;
  // cdc scenarios
  int row_bytes = 200;     // approximate size of a captured row as stored
  int tx_rows = 100;       // rows per transaction in the "small transactions" run
  double cdc_rate = 2000;  // cdc latency: events (one-row transactions) per second
  bool cdc_async_commit = false;
  std::string cdc_status_interval;     // cdc latency: [cdc] status_interval; empty: outboxd's default (10s)  // cdc
                                       // latency: keep the server's synchronous_commit = off for the writer
  std::string pg_recvlogical;          // empty: PATH, then the server's version's bindir
  std::string transaction_max_wait;    // exactly-once runs: [kafka] transaction_max_wait; empty: outboxd's
  int64_t transaction_max_events = 0;  // exactly-once runs: [kafka] transaction_max_events; 0: outboxd's
  std::string format;                  // [[outbox]] and [cdc] format; empty: outboxd's ("debezium")
};

void Usage(const char* argv0) {
  std::printf(
      "usage: %s [options]\n"
      "  --scenario LIST     comma-separated: all, poll, cdc, throughput, latency,\n"
      "                      cdc-throughput, cdc-latency (default all; poll = throughput,latency)\n"
      "  --events N          throughput (poll and cdc): events to relay (default 200000)\n"
      "  --keys N            distinct aggregateid values (default 1000)\n"
      "  --payload-bytes N   approximate payload JSON size (default 150)\n"
      "  --batch-size N      outboxd batch_size (default 1000)\n"
      "  --partitions N      partitions of the topics (default 3)\n"
      "  --rate R            latency: events per second (default 1000)\n"
      "  --seconds S         latency: duration of the writer (default 20)\n"
      "  --max-in-flight N   outboxd [kafka] max_in_flight (default: outboxd's)\n"
      "  --kafka-property K=V  extra [kafka.properties] entry for outboxd (repeatable)\n"
      "  --row-bytes N       cdc: approximate size of a captured row as stored (default 200)\n"
      "  --tx-rows N         cdc throughput: rows per transaction of the many-transactions run (default 100)\n"
      "  --cdc-rate R        cdc latency: one-row transactions per second (default 2000)\n"
      "  --cdc-status-interval D  cdc latency: [cdc] status_interval, e.g. 1s (default: outboxd's, 10s)\n"
      "  --transaction-max-wait D  exactly-once runs: [kafka] transaction_max_wait (default: outboxd's, 20ms)\n"
      "  --transaction-max-events N  exactly-once runs: [kafka] transaction_max_events (default: outboxd's, "
      "10000)\n"
      "  --format F          outboxd's [[outbox]] and [cdc] format, e.g. cloudevents-binary (default: debezium)\n"
      "  --cdc-async-commit  cdc latency: the writer keeps the server's synchronous_commit = off\n"
      "                      (default: it sets on; off adds up to wal_writer_delay, see bench/README.md)\n"
      "  --pg-recvlogical P  cdc raw limit: pg_recvlogical binary (default: PATH, then\n"
      "                      /usr/lib/postgresql/<server major>/bin/pg_recvlogical)\n"
      "  --log-dir DIR       keep outboxd's logs there (throughput-cold.log, throughput-warm.log, latency.log,\n"
      "                      cdc-throughput-<kind>-<delivery>.log, cdc-latency-<delivery>.log, and\n"
      "                      cdc-latency-<delivery>.tsv: every cdc latency event's commit and append time)\n"
      "  --log-level LEVEL   outboxd [log] level (default info)\n"
      "Needs OUTBOXD_HARNESS_DIR with pg/pg.env and kafka/kafka.env (bench/run.sh sets it up).\n",
      argv0);
}

Options ParseOptions(int argc, char** argv) {
  Options o;
  auto value = [&](int& i) -> std::string {
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s needs a value\n", argv[i]);
      std::exit(64);
    }
    return argv[++i];
  };
  auto number = [&](int& i) -> double {
    const std::string flag = argv[i];
    const std::string v = value(i);
    char* end = nullptr;
    const double d = std::strtod(v.c_str(), &end);
    if (end == v.c_str() || *end != '\0' || !(d > 0)) {
      std::fprintf(stderr, "%s: expected a positive number, got \"%s\"\n", flag.c_str(), v.c_str());
      std::exit(64);
    }
    return d;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      Usage(argv[0]);
      std::exit(0);
    } else if (a == "--scenario") {
      o.throughput = o.latency = o.cdc_throughput = o.cdc_latency = false;
      std::istringstream list(value(i));
      std::string s;
      while (std::getline(list, s, ',')) {
        const bool all = s == "all";
        if (!all && s != "poll" && s != "cdc" && s != "throughput" && s != "latency" && s != "cdc-throughput" &&
            s != "cdc-latency") {
          std::fprintf(stderr,
                       "--scenario: all, poll, cdc, throughput, latency, cdc-throughput or cdc-latency, "
                       "got \"%s\"\n",
                       s.c_str());
          std::exit(64);
        }
        o.throughput |= all || s == "poll" || s == "throughput";
        o.latency |= all || s == "poll" || s == "latency";
        o.cdc_throughput |= all || s == "cdc" || s == "cdc-throughput";
        o.cdc_latency |= all || s == "cdc" || s == "cdc-latency";
      }
    } else if (a == "--events") {
      o.events = static_cast<int64_t>(number(i));
    } else if (a == "--keys") {
      o.keys = static_cast<int>(number(i));
    } else if (a == "--payload-bytes") {
      o.payload_bytes = static_cast<int>(number(i));
    } else if (a == "--batch-size") {
      o.batch_size = static_cast<int>(number(i));
    } else if (a == "--partitions") {
      o.partitions = static_cast<int>(number(i));
    } else if (a == "--rate") {
      o.rate = number(i);
    } else if (a == "--seconds") {
      o.seconds = static_cast<int>(number(i));
    } else if (a == "--max-in-flight") {
      o.max_in_flight = static_cast<int64_t>(number(i));
    } else if (a == "--row-bytes") {
      o.row_bytes = static_cast<int>(number(i));
    } else if (a == "--tx-rows") {
      o.tx_rows = static_cast<int>(number(i));
    } else if (a == "--cdc-rate") {
      o.cdc_rate = number(i);
    } else if (a == "--cdc-status-interval") {
      o.cdc_status_interval = value(i);
    } else if (a == "--transaction-max-wait") {
      o.transaction_max_wait = value(i);
    } else if (a == "--transaction-max-events") {
      o.transaction_max_events = static_cast<int64_t>(number(i));
    } else if (a == "--format") {
      o.format = value(i);
    } else if (a == "--cdc-async-commit") {
      o.cdc_async_commit = true;
    } else if (a == "--pg-recvlogical") {
      o.pg_recvlogical = value(i);
    } else if (a == "--log-level") {
      o.log_level = value(i);
    } else if (a == "--log-dir") {
      o.log_dir = value(i);
    } else if (a == "--kafka-property") {
      const std::string kv = value(i);
      const auto eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) {
        std::fprintf(stderr, "--kafka-property: expected KEY=VALUE, got \"%s\"\n", kv.c_str());
        std::exit(64);
      }
      o.kafka_properties.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
    } else {
      std::fprintf(stderr, "unknown argument \"%s\" (--help lists the options)\n", a.c_str());
      std::exit(64);
    }
  }
  return o;
}

// ---------------------------------------------------------------------------
// Small helpers

double Seconds(SteadyClock::duration d) { return std::chrono::duration<double>(d).count(); }

// CLOCK_REALTIME in milliseconds with sub-millisecond precision: the clock
// the broker's LogAppendTime is taken from (same machine).
double WallMs() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

std::string Fmt(const char* format, ...) __attribute__((format(printf, 1, 2)));
std::string Fmt(const char* format, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, format);
  std::vsnprintf(buf, sizeof buf, format, ap);
  va_end(ap);
  return buf;
}

std::string Quote(const std::string& s) {  // a TOML basic string
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string Today() {
  std::time_t t = std::time(nullptr);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M %Z", std::localtime(&t));
  return buf;
}

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("model name")) return line.substr(line.find(':') + 2);
  }
  return "unknown CPU";
}

// User + system CPU seconds from a /proc/.../stat file; nullopt when it is gone.
std::optional<double> CpuSecondsFrom(const std::string& stat_path) {
  std::ifstream in(stat_path);
  std::string stat;
  if (!std::getline(in, stat)) return std::nullopt;
  const auto paren = stat.rfind(')');
  if (paren == std::string::npos) return std::nullopt;
  std::istringstream fields(stat.substr(paren + 2));
  std::string f;
  // Fields after the command: state(3) ... utime(14) stime(15).
  std::vector<std::string> v;
  while (fields >> f && v.size() < 13) v.push_back(f);
  if (v.size() < 13) return std::nullopt;
  const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  return (std::strtod(v[11].c_str(), nullptr) + std::strtod(v[12].c_str(), nullptr)) / ticks;
}

// User + system CPU seconds a process (all its threads) has used so far;
// nullopt when it is gone.
std::optional<double> CpuSeconds(pid_t pid) {
  if (pid <= 0) return std::nullopt;
  return CpuSecondsFrom("/proc/" + std::to_string(pid) + "/stat");
}

// The Kafka broker's pid, from the harness' kafka.pid.
pid_t BrokerPid() {
  std::ifstream in(SharedServices().dir + "/kafka/kafka.pid");
  long pid = 0;
  in >> pid;
  return static_cast<pid_t>(pid);
}

// Busy and total jiffies of the whole machine, from /proc/stat.
std::pair<double, double> MachineJiffies() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  in >> cpu;
  double v[10] = {};
  double total = 0;
  for (double& x : v) {
    in >> x;
    total += x;
  }
  const double idle = v[3] + v[4];  // idle + iowait
  return {total - idle, total};
}

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  double a = 0, b = 0, c = 0;
  in >> a >> b >> c;
  return Fmt("%.2f %.2f %.2f", a, b, c);
}

// Samples the CPU time of a few processes, and how busy the whole machine
// was, between Start() and Stop().
class CpuMeter {
 public:
  void Add(std::string name, pid_t pid) { procs_.push_back({std::move(name), pid, 0, 0, false}); }
  void Start() {
    for (auto& p : procs_) {
      auto c = CpuSeconds(p.pid);
      p.ok = c.has_value();
      p.start = c.value_or(0);
    }
    machine_start_ = MachineJiffies();
  }
  void Stop() {
    for (auto& p : procs_) {
      auto c = CpuSeconds(p.pid);
      p.ok = p.ok && c.has_value();
      p.used = c.value_or(0) - p.start;
    }
    const auto end = MachineJiffies();
    const double total = end.second - machine_start_.second;
    machine_busy_ = total > 0 ? (end.first - machine_start_.first) / total : -1;
  }
  // "CPU outboxd": "3.10 s (45% of one core)", one row per process.
  std::vector<std::pair<std::string, std::string>> Rows(double wall) const {
    std::vector<std::pair<std::string, std::string>> rows;
    for (const auto& p : procs_) {
      rows.emplace_back("CPU " + p.name,
                        p.ok ? Fmt("%.2f s (%.0f%% of one core)", p.used, 100 * p.used / wall) : "n/a");
    }
    return rows;
  }
  std::pair<std::string, std::string> MachineRow() const {
    return {"CPU machine (all processes)", machine_busy_ < 0
                                               ? "n/a"
                                               : Fmt("%.0f%% busy of %ld cores, load average %s", 100 * machine_busy_,
                                                     ::sysconf(_SC_NPROCESSORS_ONLN), LoadAverage().c_str())};
  }

 private:
  struct Proc {
    std::string name;
    pid_t pid;
    double start;
    double used;
    bool ok;
  };
  std::vector<Proc> procs_;
  std::pair<double, double> machine_start_{};
  double machine_busy_ = -1;
};

// One connection the bench keeps open to watch the database while outboxd
// runs: TestDatabase opens a connection per call, and a new backend every
// 20 ms would take a good share of a 2-core machine.
class DbWatch {
 public:
  explicit DbWatch(const TestDatabase& db) {
    auto conn = PgConn::Connect(db.conninfo(), std::nullopt, "outboxd-bench-watch");
    if (!conn.ok()) throw HarnessError(conn.status().message());
    conn_ = std::move(conn).value();
  }

  // True once `table` has no rows. Rows go in seq order, so the index finds
  // the highest one at once until the very end (a plain LIMIT 1 would
  // seq-scan the dead rows at the front of the heap).
  bool Empty(const std::string& table) const {
    return Rows("SELECT 1 FROM " + table + " ORDER BY seq DESC LIMIT 1") == 0;
  }

  // pid of the PostgreSQL backend serving outboxd's connection, or -1.
  pid_t OutboxdBackendPid() const {
    auto res =
        Run("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'outboxd' AND backend_type = 'client backend'");
    if (PQntuples(res.get()) != 1) return -1;
    return static_cast<pid_t>(std::atol(PQgetvalue(res.get(), 0, 0)));
  }

  // pid of the walsender streaming replication slot `slot` (the bench's slot
  // names are [a-z0-9_]), or -1 while nobody streams it.
  pid_t SlotActivePid(const std::string& slot) const {
    auto res =
        Run("SELECT active_pid FROM pg_replication_slots WHERE slot_name = '" + slot + "' AND active_pid IS NOT NULL");
    if (PQntuples(res.get()) != 1) return -1;
    return static_cast<pid_t>(std::atol(PQgetvalue(res.get(), 0, 0)));
  }

  // True once the slot's confirmed_flush_lsn is at or past `lsn` ("0/1EB1028").
  bool SlotConfirmedPast(const std::string& slot, const std::string& lsn) const {
    return Rows("SELECT 1 FROM pg_replication_slots WHERE slot_name = '" + slot + "' AND confirmed_flush_lsn >= '" +
                lsn + "'::pg_lsn") == 1;
  }

 private:
  PgResult Run(const std::string& sql) const {
    auto res = conn_.Exec(sql);
    if (!res.ok()) throw HarnessError(res.status().message() + "\n  SQL: " + sql);
    return std::move(res).value();
  }
  int Rows(const std::string& sql) const { return PQntuples(Run(sql).get()); }

  PgConn conn_;
};

// A two-column table: metric, value.
class Table {
 public:
  explicit Table(std::string title) : title_(std::move(title)) {}
  void Row(std::string metric, std::string value) { rows_.emplace_back(std::move(metric), std::move(value)); }
  void Rows(const std::vector<std::pair<std::string, std::string>>& rows) {
    for (const auto& r : rows) rows_.push_back(r);
  }
  void Print() const {
    std::size_t w = 6;
    for (const auto& [m, v] : rows_) w = std::max(w, m.size());
    std::printf("\n%s\n", title_.c_str());
    std::printf("  %-*s  %s\n", static_cast<int>(w), "metric", "value");
    std::printf("  %s  %s\n", std::string(w, '-').c_str(), std::string(40, '-').c_str());
    for (const auto& [m, v] : rows_) std::printf("  %-*s  %s\n", static_cast<int>(w), m.c_str(), v.c_str());
    std::fflush(stdout);
  }

 private:
  std::string title_;
  std::vector<std::pair<std::string, std::string>> rows_;
};

void Progress(const std::string& what) { std::fprintf(stderr, "[bench] %s\n", what.c_str()); }

// ---------------------------------------------------------------------------
// Schema and outboxd

// A payload of about `bytes` bytes of JSON text for event `n_sql` (an SQL
// expression), shaped like an order event.
std::string PayloadSql(const std::string& n_sql, int keys, int bytes, bool with_n) {
  // The fixed part of the JSON text below is about 131 bytes; "n" adds about 11.
  const int pad = std::max(0, bytes - 131 - (with_n ? 11 : 0));
  return std::string("jsonb_build_object(") + (with_n ? "'n', " + n_sql + ", " : "") + "'orderId', " + n_sql +
         ", 'customerId', 'customer-' || (" + n_sql + " % " + std::to_string(keys) +
         "), 'status', 'CREATED', 'currency', 'EUR', 'amount', round((" + n_sql +
         " % 100000) / 100.0, 2), 'lines', 3, 'note', repeat('x', " + std::to_string(pad) + "))";
}

// [postgres], [kafka] and [log]: the part of the config both modes share.
// `kafka_keys`: more keys of [kafka].
std::string CommonToml(const Options& o, const TestDatabase& db, const std::string& kafka_keys = "") {
  std::string t;
  t += "[postgres]\nconninfo = " + Quote(db.conninfo()) + "\n\n";
  t += "[kafka]\nbootstrap_servers = " + Quote(SharedServices().kafka_bootstrap) + "\n" + kafka_keys;
  if (o.max_in_flight) t += "max_in_flight = " + std::to_string(*o.max_in_flight) + "\n";
  if (!o.kafka_properties.empty()) {
    t += "[kafka.properties]\n";
    for (const auto& [k, v] : o.kafka_properties) t += Quote(k) + " = " + Quote(v) + "\n";
  }
  t += "\n[log]\nlevel = " + Quote(o.log_level) + "\n\n";
  return t;
}

std::string OutboxdToml(const Options& o, const TestDatabase& db, const std::string& table,
                        const std::string& extra_outbox_keys, const std::string& kafka_keys = "") {
  std::string t = CommonToml(o, db, kafka_keys);
  t += "[[outbox]]\ntable = " + Quote(table) + "\n";
  t += "batch_size = " + std::to_string(o.batch_size) + "\n";
  t += "headers = { type = \"type\" }\n";
  if (!o.format.empty()) t += "format = " + Quote(o.format) + "\n";
  t += extra_outbox_keys;
  return t;
}

[[noreturn]] void Fail(OutboxdProcess& p, const std::string& why) {
  std::string log = p.Log();
  if (log.size() > 4000) log = "...\n" + log.substr(log.size() - 4000);
  throw HarnessError(why + "\noutboxd log (" + p.log_path() + "):\n" + log);
}

void SaveLog(const Options& o, const OutboxdProcess& p, const std::string& name) {
  if (o.log_dir.empty()) return;
  const std::string path = o.log_dir + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << p.Log();
  if (!out) Progress("warning: could not write " + path);
}

// Stops outboxd with SIGTERM and waits for it; complains (without failing)
// when it does not exit cleanly.
void StopOutboxd(OutboxdProcess& p) {
  if (!p.Running()) return;
  p.Terminate();
  const int code = p.WaitExit(seconds(30));
  if (code != 0) Progress("warning: outboxd exited with code " + std::to_string(code));
}

// ---------------------------------------------------------------------------
// Kafka record timestamps

struct KcatRecord {
  int64_t ts = 0;  // LogAppendTime, ms
  int64_t offset = 0;
  std::string key;
};

// Up to `count` records of partition `p` from `offset` ("beginning", "-1"),
// read with kcat.
// `count` <= 0: every record from `offset` to the end. kcat reads with
// read_committed (librdkafka's default): records of aborted transactions and
// transaction markers are not read.
std::vector<KcatRecord> ReadRecords(const std::string& topic, int p, const std::string& offset, int count) {
  std::vector<std::string> args = {"kcat", "-C",         "-b", SharedServices().kafka_bootstrap,
                                   "-t",   topic,        "-p", std::to_string(p),
                                   "-o",   offset,       "-e", "-q",
                                   "-f",   "%T %o %k\\n"};
  if (count > 0) args.insert(args.end(), {"-c", std::to_string(count)});
  CommandResult r = RunCommand(args, seconds(120));
  if (r.exit_code != 0) throw HarnessError("kcat failed reading " + topic + ":" + std::to_string(p) + ": " + r.output);
  std::vector<KcatRecord> out;
  std::istringstream in(r.output);
  KcatRecord rec;
  while (in >> rec.ts >> rec.offset >> rec.key) out.push_back(rec);
  return out;
}

// When the broker appended the first and the last record of a topic, over
// all partitions, not counting records keyed `skip_key` (warm-up), and how
// many records the partitions hold, read one by one (with Kafka
// transactions, offsets also count the transaction markers).
struct TopicSpan {
  int64_t first_ts = INT64_MAX;
  int64_t last_ts = INT64_MIN;
  int64_t records = 0;
  std::string per_partition;  // "69800 / 66600 / 63600"
};

TopicSpan ReadTopicSpan(const std::string& topic, int partitions, const std::string& skip_key) {
  TopicSpan span;
  for (int p = 0; p < partitions; ++p) {
    for (const KcatRecord& r : ReadRecords(topic, p, "beginning", 2)) {
      if (r.key == skip_key) continue;
      span.first_ts = std::min(span.first_ts, r.ts);
      break;
    }
    int64_t n = 0;
    for (const KcatRecord& r : ReadRecords(topic, p, "beginning", 0)) {
      span.last_ts = std::max(span.last_ts, r.ts);
      ++n;
    }
    span.records += n;
    span.per_partition += (p ? " / " : "") + std::to_string(n);
  }
  if (span.first_ts == INT64_MAX || span.last_ts == INT64_MIN) throw HarnessError("no records in " + topic);
  return span;
}

// ---------------------------------------------------------------------------
// Throughput

struct RawDrain {
  int64_t rows = 0;
  int64_t bytes = 0;
  double seconds = 0;
};

// Drains `table` with batched DELETE ... RETURNING on one connection, reading
// every column of every row client-side (text format, as outboxd reads them).
// `keyset`: each batch starts after the highest seq of the previous one
// (seq > $1), as outboxd's claims do; otherwise every batch is the first
// `batch` rows by seq, whose index scan walks the entries of all rows
// deleted before (until VACUUM) and so slows down as the drain goes on.
RawDrain DrainWithDelete(const TestDatabase& db, const std::string& table, int batch, bool keyset) {
  auto conn = PgConn::Connect(db.conninfo(), std::nullopt, "outboxd-bench-raw");
  if (!conn.ok()) throw HarnessError(conn.status().message());
  const std::string sql = "DELETE FROM " + table + " WHERE seq IN (SELECT seq FROM " + table +
                          (keyset ? " WHERE seq > $1::bigint" : "") + " ORDER BY seq LIMIT " + std::to_string(batch) +
                          ") RETURNING *";
  RawDrain d;
  long long last = 0;
  std::vector<std::string> values;  // copied out, as a relay would
  const auto t0 = SteadyClock::now();
  while (true) {
    auto res = keyset ? conn->Exec(sql, {std::to_string(last)}) : conn->Exec(sql);
    if (!res.ok()) throw HarnessError("raw drain of " + table + ": " + res.status().message());
    const PGresult* r = res->get();
    const int n = PQntuples(r), cols = PQnfields(r);
    if (n == 0) break;
    for (int i = 0; i < n; ++i) {
      values.clear();
      for (int c = 0; c < cols; ++c) {
        values.emplace_back(PQgetvalue(r, i, c), static_cast<std::size_t>(PQgetlength(r, i, c)));
        d.bytes += PQgetlength(r, i, c);
      }
      last = std::max(last, std::strtoll(values[0].c_str(), nullptr, 10));  // seq is column 0
    }
    d.rows += n;
  }
  d.seconds = Seconds(SteadyClock::now() - t0);
  return d;
}

// INSERT ... SELECT of `count` events numbered from `from`, one statement
// (one transaction: all of them become visible at once).
std::string FillSql(const std::string& table, const Options& o, const std::string& aggregatetype, int64_t from,
                    int64_t count) {
  return "INSERT INTO " + table + " (aggregatetype, aggregateid, type, payload) SELECT '" + aggregatetype +
         "', 'order-' || (i % " + std::to_string(o.keys) + "), 'OrderCreated', " +
         PayloadSql("i", o.keys, o.payload_bytes, false) + " FROM generate_series(" + std::to_string(from) + ", " +
         std::to_string(from + count - 1) + ") i";
}

// One outboxd drain of a table of o.events events, measured.
struct DrainRun {
  TopicSpan span;
  double t0_wall = 0;     // outboxd start (cold) or COMMIT of the events (warm), CLOCK_REALTIME ms
  double empty_wall = 0;  // the table was seen empty
  ProcessMemory mem;
  std::vector<std::pair<std::string, std::string>> cpu_rows;

  double wall_seconds() const { return (empty_wall - t0_wall) / 1e3; }
  double append_seconds() const {
    return static_cast<double>(std::max<int64_t>(1, span.last_ts - span.first_ts)) / 1e3;
  }
};

enum class Delivery : uint8_t { kAtLeastOnce, kExactlyOnce };
const char* DeliveryName(Delivery d) { return d == Delivery::kExactlyOnce ? "exactly-once" : "at-least-once"; }

// The [kafka] keys of an exactly-once run, with its own position topic.
std::string ExactlyOnceKeys(const Options& o, const std::string& topic) {
  std::string keys = "delivery = \"exactly-once\"\nposition_topic = " + Quote(topic + ".positions") + "\n";
  if (!o.transaction_max_wait.empty()) keys += "transaction_max_wait = " + Quote(o.transaction_max_wait) + "\n";
  if (o.transaction_max_events > 0) {
    keys += "transaction_max_events = " + std::to_string(o.transaction_max_events) + "\n";
  }
  return keys;
}

// Cold: outboxd starts on a table already holding the events (its producer
// has to learn the topic first); with `tx_rows` > 0 they were committed
// `tx_rows` per transaction, else in one. Warm: outboxd is running and has relayed a
// warm-up event to the topic when the events are committed in one
// transaction; a NOTIFY trigger wakes it.
DrainRun DrainWithOutboxd(const Options& o, const TestDatabase& db, bool warm,
                          Delivery delivery = Delivery::kAtLeastOnce, int64_t tx_rows = 0) {
  const std::string kind = std::string(warm ? "warm" : "cold") + (tx_rows > 0 ? "_tx" : "") +
                           (delivery == Delivery::kExactlyOnce ? "_eo" : "");
  const std::string suffix = UniqueTopic("bench" + kind);
  const std::string topic = "outbox.event." + suffix;
  const std::string table = "public.outbox_" + kind;
  const std::string channel = "outbox_" + kind;
  db.Exec(OutboxDdl(table));
  if (warm) {
    db.Exec(NotifyTriggerDdl(table, channel));
  } else {
    Progress(Fmt("throughput (%s): filling %s with %" PRId64 " events", kind.c_str(), table.c_str(), o.events));
    if (tx_rows > 0) {
      for (int64_t from = 1; from <= o.events; from += tx_rows) {
        db.Exec(FillSql(table, o, suffix, from, std::min(tx_rows, o.events - from + 1)));
      }
    } else {
      db.Exec(FillSql(table, o, suffix, 1, o.events));
    }
    db.Exec("VACUUM ANALYZE " + table);
    db.Exec("CHECKPOINT");
  }
  KafkaAdmin admin(SharedServices().kafka_bootstrap);
  admin.CreateTopic(topic, o.partitions, {{"message.timestamp.type", "LogAppendTime"}});

  OutboxdProcess outboxd(OutboxdToml(o, db, table, warm ? "notify_channel = " + Quote(channel) + "\n" : "",
                                     delivery == Delivery::kExactlyOnce ? ExactlyOnceKeys(o, topic) : ""));
  const auto running = [&] {
    if (!outboxd.Running()) Fail(outboxd, "outboxd exited during the " + kind + " throughput run");
  };
  const DbWatch watch(db);
  DrainRun run;
  CpuMeter cpu;
  if (warm) {
    outboxd.Start();
    if (!outboxd.WaitForLog("relaying", seconds(60))) Fail(outboxd, "outboxd did not start relaying");
    db.Exec("INSERT INTO " + table + " (aggregatetype, aggregateid, type, payload) VALUES ('" + suffix +
            "', 'warmup', 'Warmup', '{}')");
    if (!WaitUntil(
            [&] {
              running();
              return watch.Empty(table);
            },
            seconds(60))) {
      Fail(outboxd, "the warm-up event was not relayed within 60 s");
    }
    Progress(
        Fmt("throughput (warm): committing %" PRId64 " events in one transaction into %s", o.events, table.c_str()));
    // The INSERT itself is not measured: the clock starts at its COMMIT.
    db.Exec(FillSql(table, o, suffix, 1, o.events));
    run.t0_wall = WallMs();
  } else {
    Progress("throughput (" + kind + "): outboxd starts and drains " + table);
    run.t0_wall = WallMs();
    outboxd.Start();
  }
  const auto t0 = SteadyClock::now();
  cpu.Add("outboxd", outboxd.pid());
  cpu.Add("Kafka broker", BrokerPid());
  cpu.Start();
  bool backend_added = false;
  CpuMeter backend_cpu;
  const bool drained = WaitUntil(
      [&] {
        running();
        if (!backend_added) {
          if (pid_t b = watch.OutboxdBackendPid(); b > 0) {
            backend_cpu.Add("PostgreSQL backend of outboxd", b);
            backend_cpu.Start();
            backend_added = true;
          }
        }
        return watch.Empty(table);
      },
      std::chrono::minutes(30), milliseconds(20));
  run.empty_wall = WallMs();
  const double wall = Seconds(SteadyClock::now() - t0);
  cpu.Stop();
  backend_cpu.Stop();
  if (!drained) Fail(outboxd, "outboxd did not empty " + table + " within 30 minutes");
  run.mem = ReadProcessMemory(outboxd.pid());
  StopOutboxd(outboxd);
  SaveLog(o, outboxd, "throughput-" + kind + ".log");
  run.cpu_rows = cpu.Rows(wall);
  for (const auto& r : backend_cpu.Rows(wall)) run.cpu_rows.push_back(r);
  run.cpu_rows.push_back(cpu.MachineRow());
  run.span = ReadTopicSpan(topic, o.partitions, "warmup");
  if (warm) --run.span.records;  // the warm-up event
  return run;
}

std::string Rate(int64_t events, double seconds) { return Fmt("%.0f events/s", static_cast<double>(events) / seconds); }

std::string Mib(int64_t kb) { return kb >= 0 ? Fmt("%.1f MiB", static_cast<double>(kb) / 1024) : "n/a"; }

// Fills a fresh table with the events and drains it without Kafka.
RawDrain RawLimit(const Options& o, const TestDatabase& db, bool keyset) {
  const std::string table = keyset ? "public.outbox_raw_keyset" : "public.outbox_raw_first";
  Progress(Fmt("throughput (raw): filling %s with %" PRId64 " events", table.c_str(), o.events));
  db.Exec(OutboxDdl(table));
  db.Exec(FillSql(table, o, "raw", 1, o.events));
  db.Exec("VACUUM ANALYZE " + table);
  db.Exec("CHECKPOINT");
  Progress(Fmt("throughput (raw): DELETE ... RETURNING in batches of %d%s", o.batch_size,
               keyset ? ", seq > previous batch" : ""));
  const RawDrain raw = DrainWithDelete(db, table, o.batch_size, keyset);
  if (raw.rows != o.events) {
    throw HarnessError(Fmt("raw drain removed %" PRId64 " rows, expected %" PRId64, raw.rows, o.events));
  }
  return raw;
}

int RunThroughput(const Options& o, const TestDatabase& db) {
  // The event size, from a sample of the same rows.
  db.Exec(OutboxDdl("public.outbox_sample"));
  db.Exec(FillSql("public.outbox_sample", o, "sample", 1, std::min<int64_t>(o.events, 10000)));
  const std::string avg_payload = db.QueryString("SELECT round(avg(length(payload::text))) FROM public.outbox_sample");
  const std::string avg_row = db.QueryString("SELECT round(avg(pg_column_size(t.*))) FROM public.outbox_sample t");
  db.Exec("DROP TABLE public.outbox_sample");

  const RawDrain raw_first = RawLimit(o, db, /*keyset=*/false);
  const RawDrain raw = RawLimit(o, db, /*keyset=*/true);
  const double raw_rate = static_cast<double>(raw.rows) / raw.seconds;
  const double raw_first_rate = static_cast<double>(raw_first.rows) / raw_first.seconds;

  const DrainRun cold = DrainWithOutboxd(o, db, /*warm=*/false);
  const DrainRun warm = DrainWithOutboxd(o, db, /*warm=*/true);
  const double cold_rate = static_cast<double>(o.events) / cold.append_seconds();
  const double warm_rate = static_cast<double>(o.events) / warm.append_seconds();

  Table t(Fmt("THROUGHPUT  %" PRId64 " events, %d keys, topic %d partitions (LogAppendTime), batch_size %d", o.events,
              o.keys, o.partitions, o.batch_size));
  t.Row("event size", "payload " + avg_payload + " B JSON, row " + avg_row + " B");
  t.Row("raw limit: DELETE ... RETURNING, no Kafka",
        Fmt("%.0f events/s  (%.2f s, %.1f MB read; keyset: seq > previous batch)", raw_rate, raw.seconds,
            static_cast<double>(raw.bytes) / 1e6));
  t.Row("  same, each batch ORDER BY seq LIMIT",
        Fmt("%.0f events/s  (%.2f s; no keyset, rescans deleted index entries)", raw_first_rate, raw_first.seconds));
  for (const DrainRun* r : {&cold, &warm}) {
    const bool is_warm = r == &warm;
    const std::string k = is_warm ? "warm: " : "cold: ";
    const std::string from = is_warm ? "commit" : "start";
    t.Row(k + "first produce -> last ack",
          Rate(o.events, r->append_seconds()) + Fmt("  (%.2f s by LogAppendTime)", r->append_seconds()));
    t.Row(k + from + " -> outbox empty", Rate(o.events, r->wall_seconds()) + Fmt("  (%.2f s wall)", r->wall_seconds()));
    t.Row(k + "ratio outboxd / raw", Fmt("%.2f  (wall: %.2f)", (is_warm ? warm_rate : cold_rate) / raw_rate,
                                         static_cast<double>(o.events) / r->wall_seconds() / raw_rate));
    t.Row(k + "timeline from " + from,
          Fmt("first append +%.0f ms, last append +%.0f ms, outbox empty +%.0f ms",
              static_cast<double>(r->span.first_ts) - r->t0_wall, static_cast<double>(r->span.last_ts) - r->t0_wall,
              r->empty_wall - r->t0_wall));
    t.Row(k + "records in topic",
          Fmt("%" PRId64 " (%s per partition)%s", r->span.records, r->span.per_partition.c_str(),
              r->span.records == o.events ? "" : "  DIFFERS from the events written"));
    t.Row(k + "outboxd peak RSS (VmHWM)", Mib(r->mem.peak_rss_kb));
    for (const auto& [m, v] : r->cpu_rows) t.Row(k + m, v);
  }
  t.Row("goal >= 30000 events/s (warm)", warm_rate >= 30000 ? "met" : "NOT met");
  t.Print();

  // Exactly once against at least once, on the same fill: o.tx_rows events
  // per PostgreSQL transaction (a Kafka transaction never splits one).
  const DrainRun alo = DrainWithOutboxd(o, db, /*warm=*/false, Delivery::kAtLeastOnce, o.tx_rows);
  const DrainRun eo = DrainWithOutboxd(o, db, /*warm=*/false, Delivery::kExactlyOnce, o.tx_rows);
  Table x(Fmt("THROUGHPUT, EXACTLY ONCE  cold, %" PRId64 " events in %d-row transactions, batch_size %d%s", o.events,
              o.tx_rows, o.batch_size,
              ((o.transaction_max_wait.empty() ? std::string() : ", transaction_max_wait " + o.transaction_max_wait) +
               (o.transaction_max_events > 0 ? ", transaction_max_events " + std::to_string(o.transaction_max_events)
                                             : std::string()))
                  .c_str()));
  for (const DrainRun* r : {&alo, &eo}) {
    const std::string k = r == &eo ? "exactly-once: " : "at-least-once: ";
    x.Row(k + "first produce -> last ack",
          Rate(o.events, r->append_seconds()) + Fmt("  (%.2f s by LogAppendTime)", r->append_seconds()));
    x.Row(k + "start -> outbox empty", Rate(o.events, r->wall_seconds()) + Fmt("  (%.2f s wall)", r->wall_seconds()));
    x.Row(
        k + "records in topic (read_committed)",
        Fmt("%" PRId64 "%s", r->span.records, r->span.records == o.events ? "" : "  DIFFERS from the events written"));
    x.Row(k + "outboxd peak RSS (VmHWM)", Mib(r->mem.peak_rss_kb));
  }
  x.Row("ratio exactly-once / at-least-once",
        Fmt("%.2f  (wall: %.2f)", alo.append_seconds() / eo.append_seconds(), alo.wall_seconds() / eo.wall_seconds()));
  x.Row("ratio exactly-once / raw", Fmt("%.2f", static_cast<double>(o.events) / eo.append_seconds() / raw_rate));
  x.Print();

  // One PostgreSQL transaction of o.events rows: one Kafka transaction,
  // against the cold at-least-once run above (the same fill).
  const DrainRun eo_one = DrainWithOutboxd(o, db, /*warm=*/false, Delivery::kExactlyOnce);
  Table y(Fmt("THROUGHPUT, EXACTLY ONCE  cold, %" PRId64 " events in one transaction, batch_size %d", o.events,
              o.batch_size));
  for (const DrainRun* r : {&cold, &eo_one}) {
    const std::string k = r == &eo_one ? "exactly-once: " : "at-least-once: ";
    y.Row(k + "first produce -> last ack",
          Rate(o.events, r->append_seconds()) + Fmt("  (%.2f s by LogAppendTime)", r->append_seconds()));
    y.Row(k + "start -> outbox empty", Rate(o.events, r->wall_seconds()) + Fmt("  (%.2f s wall)", r->wall_seconds()));
    y.Row(k + "records in topic", Fmt("%" PRId64 "%s", r->span.records,
                                      r->span.records == o.events ? "" : "  DIFFERS from the events written"));
    y.Row(k + "outboxd peak RSS (VmHWM)", Mib(r->mem.peak_rss_kb));
  }
  y.Row("ratio exactly-once / at-least-once", Fmt("%.2f  (wall: %.2f)", cold.append_seconds() / eo_one.append_seconds(),
                                                  cold.wall_seconds() / eo_one.wall_seconds()));
  y.Print();
  const bool complete = cold.span.records == o.events && warm.span.records == o.events &&
                        alo.span.records == o.events && eo.span.records == o.events && eo_one.span.records == o.events;
  return complete ? 0 : 1;
}

// ---------------------------------------------------------------------------
// Latency

// Inserts events 0..count-1, one per transaction, at `rate` per second on an
// absolute schedule from `start`, and notes CLOCK_REALTIME after each commit.
// Runs on its own thread with its own connection; never throws.
struct Writer {
  std::string conninfo, table, aggregatetype;
  int keys = 1000;
  int payload_bytes = 150;
  double rate = 1000;
  int64_t count = 0;
  // The INSERT to run, $1 = the event number; empty: an outbox event into
  // `table` (the poll latency scenario).
  std::string sql;
  // Run once after connecting, e.g. "SET synchronous_commit = on"; empty: nothing.
  std::string session_sql;

  std::vector<double> commit_ms;  // by event number
  double max_behind_ms = 0;       // how far the writer fell behind its schedule
  int64_t behind_10ms = 0;        // inserts started more than 10 ms late
  std::string error;

  void Run(SteadyClock::time_point start) {
    commit_ms.assign(static_cast<std::size_t>(count), -1);
    auto conn = PgConn::Connect(conninfo, std::nullopt, "outboxd-bench-writer");
    if (!conn.ok()) {
      error = conn.status().message();
      return;
    }
    if (!session_sql.empty()) {
      PgResult set(PQexec(conn->get(), session_sql.c_str()));
      if (!set || PQresultStatus(set.get()) != PGRES_COMMAND_OK) {
        error = session_sql + ": " + PQerrorMessage(conn->get());
        return;
      }
    }
    if (sql.empty()) {
      sql = "INSERT INTO " + table + " (aggregatetype, aggregateid, type, payload) VALUES ('" + aggregatetype +
            "', 'order-' || ($1::bigint % " + std::to_string(keys) + "), 'OrderCreated', " +
            PayloadSql("$1::bigint", keys, payload_bytes, true) + ")";
    }
    // Prepared once, like an application's statement cache.
    PgResult prep(PQprepare(conn->get(), "ins", sql.c_str(), 1, nullptr));
    if (!prep || PQresultStatus(prep.get()) != PGRES_COMMAND_OK) {
      error = std::string("prepare: ") + PQerrorMessage(conn->get());
      return;
    }
    const auto period = std::chrono::duration<double>(1.0 / rate);
    for (int64_t i = 0; i < count; ++i) {
      const auto due = start + std::chrono::duration_cast<SteadyClock::duration>(period * static_cast<double>(i));
      std::this_thread::sleep_until(due);
      const double behind = std::chrono::duration<double, std::milli>(SteadyClock::now() - due).count();
      max_behind_ms = std::max(max_behind_ms, behind);
      if (behind > 10) ++behind_10ms;
      const std::string n = std::to_string(i);
      const char* params[] = {n.c_str()};
      // Autocommit: the INSERT is its own transaction; PQexecPrepared returns
      // after the COMMIT.
      PgResult res(PQexecPrepared(conn->get(), "ins", 1, params, nullptr, nullptr, 0));
      commit_ms[static_cast<std::size_t>(i)] = WallMs();
      if (!res || PQresultStatus(res.get()) != PGRES_COMMAND_OK) {
        error = "insert " + n + ": " + PQerrorMessage(conn->get());
        return;
      }
    }
  }
};

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return NAN;
  const double rank = q * static_cast<double>(sorted.size() - 1);
  const auto lo = static_cast<std::size_t>(std::floor(rank));
  const auto hi = std::min(sorted.size() - 1, lo + 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - static_cast<double>(lo));
}

// A read_committed consumer of `topic` (all `partitions`, from the
// beginning) on its own thread, noting the wall clock when each record of
// event N, 0 <= N < count, first reaches it: when a consumer sees it. N is
// in the key {"id":N} (cdc row changes) or the value {"n": N, ...} (outbox
// events).
class VisibleClock {
 public:
  enum class Numbered : uint8_t { kByKey, kByValue };

  VisibleClock(const std::string& topic, int partitions, int64_t count, Numbered numbered)
      : numbered_(numbered), seen_(static_cast<std::size_t>(count), -1) {
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    char err[512];
    auto set = [&](const char* k, const std::string& v) {
      if (rd_kafka_conf_set(conf, k, v.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK) throw HarnessError(err);
    };
    set("bootstrap.servers", SharedServices().kafka_bootstrap);
    set("group.id", "outboxd-bench-visible");
    set("enable.auto.commit", "false");
    set("isolation.level", "read_committed");
    set("fetch.wait.max.ms", "5");  // a consumer tuned for latency
    rk_ = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (rk_ == nullptr) throw HarnessError(std::string("consumer: ") + err);
    rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(partitions);
    for (int p = 0; p < partitions; ++p) {
      rd_kafka_topic_partition_list_add(list, topic.c_str(), p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    }
    rd_kafka_assign(rk_, list);
    rd_kafka_topic_partition_list_destroy(list);
    thread_ = std::thread([this] { Run(); });
  }
  ~VisibleClock() {
    Stop();
    rd_kafka_consumer_close(rk_);
    rd_kafka_destroy(rk_);
  }
  VisibleClock(const VisibleClock&) = delete;
  VisibleClock& operator=(const VisibleClock&) = delete;

  // Stops the thread; then seen() may be read.
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  const std::vector<double>& seen() const { return seen_; }
  // Records received so far, any key (warm-up rows too).
  int64_t received() const { return received_.load(); }

 private:
  void Run() {
    while (!stop_) {
      rd_kafka_message_t* m = rd_kafka_consumer_poll(rk_, 50);
      if (m == nullptr) continue;
      const double now = WallMs();
      if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) ++received_;
      if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        const long long n = Number(*m);
        if (n >= 0 && n < static_cast<long long>(seen_.size()) && seen_[static_cast<std::size_t>(n)] < 0) {
          seen_[static_cast<std::size_t>(n)] = now;
        }
      }
      rd_kafka_message_destroy(m);
    }
  }

  // The event number a record carries; -1 when none.
  long long Number(const rd_kafka_message_t& m) const {
    const bool by_key = numbered_ == Numbered::kByKey;
    const void* bytes = by_key ? m.key : m.payload;
    if (bytes == nullptr) return -1;
    const std::string text(static_cast<const char*>(bytes), by_key ? m.key_len : m.len);
    const std::string field = by_key ? "\"id\":" : "{\"n\": ";
    const auto at = text.find(field);
    return at == std::string::npos ? -1 : std::strtoll(text.c_str() + at + field.size(), nullptr, 10);
  }

  const Numbered numbered_;
  rd_kafka_t* rk_ = nullptr;
  std::vector<double> seen_;  // by id; the thread's until Stop()
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> received_{0};
  std::thread thread_;
};

int RunLatency(const Options& o, const TestDatabase& db, Delivery delivery) {
  const bool exactly_once = delivery == Delivery::kExactlyOnce;
  const std::string suffix = UniqueTopic(exactly_once ? "benchlateo" : "benchlat");
  const std::string topic = "outbox.event." + suffix;
  const std::string table = exactly_once ? "public.outbox_lat_eo" : "public.outbox_lat";
  const std::string channel = exactly_once ? "outbox_bench_eo" : "outbox_bench";
  db.Exec(OutboxDdl(table));
  db.Exec(NotifyTriggerDdl(table, channel));
  KafkaAdmin admin(SharedServices().kafka_bootstrap);
  admin.CreateTopic(topic, o.partitions, {{"message.timestamp.type", "LogAppendTime"}});

  OutboxdProcess outboxd(OutboxdToml(o, db, table,
                                     "notify_channel = " + Quote(channel) + "\npoll_interval = \"250ms\"\n",
                                     exactly_once ? ExactlyOnceKeys(o, topic) : ""));
  const DbWatch watch(db);
  const int64_t count = static_cast<int64_t>(std::llround(o.rate * o.seconds));
  VisibleClock visible(topic, o.partitions, count, VisibleClock::Numbered::kByValue);
  outboxd.Start();
  if (!outboxd.WaitForLog("relaying", seconds(60))) Fail(outboxd, "outboxd did not start relaying");

  // Warm-up: the producer learns the topic's metadata and connects; these
  // events (n < 0) are not in the percentiles. The first one's latency is
  // reported on its own: what the first event after a start waits.
  Progress("latency: warm-up");
  double first_commit_ms = 0;
  for (int i = 1; i <= 50; ++i) {
    db.Exec("INSERT INTO " + table + " (aggregatetype, aggregateid, type, payload) VALUES ('" + suffix + "', 'order-" +
            std::to_string(i) + "', 'Warmup', " + PayloadSql(std::to_string(-i), o.keys, o.payload_bytes, true) + ")");
    if (i == 1) first_commit_ms = WallMs();
  }
  const auto empty = [&] {
    if (!outboxd.Running()) Fail(outboxd, "outboxd exited during the latency run");
    return watch.Empty(table);
  };
  if (!WaitUntil(empty, seconds(60))) Fail(outboxd, "warm-up events were not relayed within 60 s");
  if (!WaitUntil([&] { return visible.received() >= 50; }, seconds(60), milliseconds(50))) {
    Fail(outboxd, "the read_committed consumer did not receive the warm-up events within 60 s");
  }
  std::this_thread::sleep_for(seconds(1));

  Writer w;
  w.conninfo = db.conninfo();
  w.table = table;
  w.aggregatetype = suffix;
  w.keys = o.keys;
  w.payload_bytes = o.payload_bytes;
  w.rate = o.rate;
  w.count = count;
  Progress(
      Fmt("latency (%s): %" PRId64 " events at %.0f/s for %d s", DeliveryName(delivery), w.count, o.rate, o.seconds));
  CpuMeter cpu;
  cpu.Add("outboxd", outboxd.pid());
  cpu.Add("Kafka broker", BrokerPid());
  if (pid_t b = watch.OutboxdBackendPid(); b > 0) cpu.Add("PostgreSQL backend of outboxd", b);
  cpu.Start();
  const auto start = SteadyClock::now() + milliseconds(100);
  std::thread writer([&] { w.Run(start); });
  writer.join();
  const double writer_seconds = Seconds(SteadyClock::now() - start);
  cpu.Stop();
  if (!w.error.empty()) Fail(outboxd, "latency writer failed: " + w.error);
  if (!WaitUntil(empty, seconds(120))) Fail(outboxd, "outboxd did not relay every event within 120 s");
  if (!WaitUntil([&] { return visible.received() >= 50 + w.count; }, seconds(60), milliseconds(50))) {
    Progress("latency: the read_committed consumer did not receive every event within 60 s");
  }
  visible.Stop();
  const ProcessMemory mem = ReadProcessMemory(outboxd.pid());
  StopOutboxd(outboxd);
  SaveLog(o, outboxd, std::string("latency-") + DeliveryName(delivery) + ".log");

  // Every record: "LogAppendTime<TAB>value".
  CommandResult r = RunCommand({"kcat", "-C", "-b", SharedServices().kafka_bootstrap, "-t", topic, "-o", "beginning",
                                "-e", "-q", "-f", "%T\\t%s\\n"},
                               seconds(300));
  if (r.exit_code != 0) throw HarnessError("kcat could not read " + topic + ": " + r.output);
  std::vector<double> ack_ms(static_cast<std::size_t>(w.count), -1);
  int64_t records = 0, duplicates = 0, warmup = 0, unparsed = 0;
  double first_ack_ms = -1;
  std::istringstream lines(r.output);
  std::string line;
  while (std::getline(lines, line)) {
    const auto tab = line.find('\t');
    const auto np = line.find("{\"n\": ");
    if (tab == std::string::npos || np == std::string::npos) {
      if (!line.empty()) ++unparsed;
      continue;
    }
    ++records;
    const double ts = std::strtod(line.c_str(), nullptr);
    const long long n = std::strtoll(line.c_str() + np + 6, nullptr, 10);
    if (n < 0) {
      ++warmup;
      if (n == -1) first_ack_ms = ts;
      continue;
    }
    if (n >= w.count) {
      ++unparsed;
      continue;
    }
    double& a = ack_ms[static_cast<std::size_t>(n)];
    if (a >= 0) {
      ++duplicates;
      a = std::min(a, ts);
    } else {
      a = ts;
    }
  }
  std::vector<double> latency;
  latency.reserve(ack_ms.size());
  int64_t missing = 0;
  for (std::size_t i = 0; i < ack_ms.size(); ++i) {
    if (ack_ms[i] < 0) {
      ++missing;
      continue;
    }
    latency.push_back(ack_ms[i] - w.commit_ms[i]);
  }
  std::sort(latency.begin(), latency.end());
  const double p99 = Percentile(latency, 0.99);
  int64_t over_50 = 0;
  for (double l : latency) over_50 += l >= 50 ? 1 : 0;
  std::vector<double> to_visible;  // commit -> a read_committed consumer has it
  for (std::size_t i = 0; i < visible.seen().size(); ++i) {
    if (visible.seen()[i] >= 0) to_visible.push_back(visible.seen()[i] - w.commit_ms[i]);
  }
  std::sort(to_visible.begin(), to_visible.end());
  const double visible_p99 = Percentile(to_visible, 0.99);

  Table t(Fmt("LATENCY (%s)  %.0f events/s for %d s, one event per transaction, NOTIFY trigger, poll_interval 250ms",
              DeliveryName(delivery), o.rate, o.seconds));
  t.Row("events written (achieved rate)",
        Fmt("%" PRId64 " (%.0f/s)", w.count, static_cast<double>(w.count) / writer_seconds));
  t.Row("writer behind schedule", Fmt("max %.1f ms, %" PRId64 " inserts > 10 ms late", w.max_behind_ms, w.behind_10ms));
  t.Row("latencies measured (commit -> LogAppendTime)",
        Fmt("%zu (missing %" PRId64 ", duplicates %" PRId64 ")", latency.size(), missing, duplicates));
  t.Row("p50", Fmt("%.1f ms", Percentile(latency, 0.50)));
  t.Row("p90", Fmt("%.1f ms", Percentile(latency, 0.90)));
  t.Row("p99", Fmt("%.1f ms", p99));
  t.Row("p99.9", Fmt("%.1f ms", Percentile(latency, 0.999)));
  t.Row("max", Fmt("%.1f ms", latency.empty() ? NAN : latency.back()));
  t.Row("min", Fmt("%.1f ms", latency.empty() ? NAN : latency.front()));
  t.Row("events >= 50 ms",
        Fmt("%" PRId64 " (%.2f%%)", over_50,
            latency.empty() ? 0.0 : 100.0 * static_cast<double>(over_50) / static_cast<double>(latency.size())));
  t.Row(
      "commit -> seen by a read_committed consumer",
      Fmt("p50 %.1f ms, p99 %.1f ms, max %.1f ms (%zu seen, %zu not seen)", Percentile(to_visible, 0.50), visible_p99,
          to_visible.empty() ? NAN : to_visible.back(), to_visible.size(), visible.seen().size() - to_visible.size()));
  t.Row("first event after outboxd start (not above)",
        first_ack_ms < 0 ? "n/a" : Fmt("%.1f ms", first_ack_ms - first_commit_ms));
  t.Row("outboxd peak RSS (VmHWM)", Mib(mem.peak_rss_kb));
  t.Rows(cpu.Rows(writer_seconds));
  t.Row(cpu.MachineRow().first, cpu.MachineRow().second);
  if (exactly_once) {
    t.Row("goal p99 commit -> seen < 100 ms", visible_p99 < 100 ? "met" : "NOT met");
  } else {
    t.Row("goal p99 < 50 ms", p99 < 50 ? "met" : "NOT met");
  }
  if (unparsed > 0) t.Row("unparseable records", std::to_string(unparsed));
  t.Print();
  return (missing == 0 && unparsed == 0) ? 0 : 1;
}

// ---------------------------------------------------------------------------
// CDC (issue 3): row changes of a captured table, streamed from a pgoutput
// slot. Raw limit: pg_recvlogical reading the same changes from an identical
// slot to /dev/null.

// Names of one cdc run. Slots are cluster-wide and named [a-z0-9_], so slot
// and publication names carry the bench's pid; the topic prefix is unique.
struct CdcNames {
  std::string table;  // "public.cdc_1tx"
  std::string publication;
  std::string slot;      // outboxd's
  std::string raw_slot;  // pg_recvlogical's
  std::string topic_prefix;
  std::string topic;  // <topic_prefix>.public.cdc_<kind>
};

CdcNames MakeCdcNames(const std::string& kind) {
  const std::string tag = kind + "_" + std::to_string(::getpid());
  CdcNames n;
  n.table = "public.cdc_" + kind;
  n.publication = "bench_" + tag;
  n.slot = "bench_outboxd_" + tag;
  n.raw_slot = "bench_raw_" + tag;
  n.topic_prefix = UniqueTopic("benchcdc");
  n.topic = n.topic_prefix + ".public.cdc_" + kind;
  return n;
}

// An order-like table; a row is about --row-bytes as stored.
std::string CdcTableDdl(const std::string& table) {
  return "CREATE TABLE " + table +
         " (id bigint PRIMARY KEY, customer_id bigint NOT NULL, status text NOT NULL,"
         "  amount numeric(12,2) NOT NULL, currency text NOT NULL,"
         "  created_at timestamptz NOT NULL DEFAULT now(), note text NOT NULL)";
}

const char* const kCdcColumns = "(id, customer_id, status, amount, currency, note)";

// The values of row `n_sql` (an SQL expression) for kCdcColumns.
std::string CdcRowValuesSql(const std::string& n_sql, const Options& o) {
  // Tuple header, id, customer_id, status, amount, currency and created_at
  // take about 70 bytes as stored; `note` pads the row to --row-bytes.
  const int pad = std::max(0, o.row_bytes - 70);
  return n_sql + ", " + n_sql + " % " + std::to_string(o.keys) + ", 'CREATED', round((" + n_sql +
         " % 100000) / 100.0, 2), 'EUR', repeat('x', " + std::to_string(pad) + ")";
}

std::string CdcFillSql(const std::string& table, const Options& o, const std::string& from_sql,
                       const std::string& to_sql) {
  return "INSERT INTO " + table + " " + kCdcColumns + " SELECT " + CdcRowValuesSql("i", o) + " FROM generate_series(" +
         from_sql + ", " + to_sql + ") i";
}

// Rows 1..o.events: one INSERT (one transaction) when tx_rows >= o.events,
// else a DO block committing every tx_rows rows (one statement, so the
// server does the loop and the writes take no client round trips).
std::string CdcWritesSql(const std::string& table, const Options& o, int64_t tx_rows) {
  const std::string last = std::to_string(o.events);
  if (tx_rows >= o.events) return CdcFillSql(table, o, "1", last);
  const std::string per = std::to_string(tx_rows);
  const int64_t txs = (o.events + tx_rows - 1) / tx_rows;
  return "DO $$ BEGIN FOR b IN 0.." + std::to_string(txs - 1) + " LOOP " +
         CdcFillSql(table, o, "b::bigint * " + per + " + 1", "least((b::bigint + 1) * " + per + ", " + last + ")") +
         "; COMMIT; END LOOP; END $$";
}

// status_interval of the throughput runs: the bench sees the end by the
// slot's confirmed_flush_lsn, which moves once per status_interval.
constexpr const char* kCdcThroughputStatusInterval = "100ms";

std::string CdcToml(const Options& o, const TestDatabase& db, const CdcNames& n, bool create,
                    const std::string& status_interval, Delivery delivery) {
  std::string t = CommonToml(o, db, delivery == Delivery::kExactlyOnce ? ExactlyOnceKeys(o, n.topic) : "");
  t += "[cdc]\nslot = " + Quote(n.slot) + "\npublication = " + Quote(n.publication) + "\n";
  t += std::string("create = ") + (create ? "true" : "false") + "\n";
  t += "tables = [" + Quote(n.table) + "]\ntopic_prefix = " + Quote(n.topic_prefix) + "\n";
  if (!status_interval.empty()) t += "status_interval = " + Quote(status_interval) + "\n";
  if (!o.format.empty()) t += "format = " + Quote(o.format) + "\n";
  return t;
}

std::string PgRecvlogicalPath(const Options& o, const TestDatabase& db) {
  if (!o.pg_recvlogical.empty()) return o.pg_recvlogical;
  if (const char* path = std::getenv("PATH")) {
    std::istringstream dirs(path);
    std::string dir;
    while (std::getline(dirs, dir, ':')) {
      std::string candidate = (dir.empty() ? "." : dir) + "/pg_recvlogical";
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
  }
  const long version = std::atol(db.QueryString("SHOW server_version_num").c_str());
  return "/usr/lib/postgresql/" + std::to_string(version / 10000) + "/bin/pg_recvlogical";
}

// CPU seconds per thread name of a process ("rdk:broker1" ...), busiest
// first: "outboxd 1.20 s, rdk:broker1 0.40 s". Cumulative since the start.
std::string ThreadCpu(pid_t pid) {
  std::map<std::string, double> by_name;
  std::error_code ec;
  const std::string task_dir = "/proc/" + std::to_string(pid) + "/task";
  for (const auto& entry : std::filesystem::directory_iterator(task_dir, ec)) {
    std::ifstream comm_in(entry.path() / "comm");
    std::string comm;
    std::getline(comm_in, comm);
    // The thread's own times: /proc/PID/task/TID/stat (/proc/TID/stat has the whole process').
    const auto cpu = CpuSecondsFrom(entry.path() / "stat");
    if (!comm.empty() && cpu) by_name[comm] += *cpu;
  }
  std::vector<std::pair<double, std::string>> sorted;
  sorted.reserve(by_name.size());
  for (const auto& [name, cpu] : by_name) sorted.emplace_back(cpu, name);
  std::sort(sorted.rbegin(), sorted.rend());
  std::string out;
  for (const auto& [cpu, name] : sorted) {
    if (cpu < 0.005) continue;
    out += (out.empty() ? "" : ", ") + name + Fmt(" %.2f s", cpu);
  }
  return out.empty() ? "n/a" : out;
}

// Records in a topic (fresh, no transactions): sum of last offset + 1.
int64_t TopicRecordCount(const std::string& topic, int partitions) {
  int64_t n = 0;
  for (int p = 0; p < partitions; ++p) n += static_cast<int64_t>(ReadRecords(topic, p, "beginning", 0).size());
  return n;
}

// "value 594 B, key 10 B": the size of the topic's first record.
std::string RecordSize(const std::string& topic) {
  CommandResult r = RunCommand({"kcat", "-C", "-b", SharedServices().kafka_bootstrap, "-t", topic, "-p", "0", "-o",
                                "beginning", "-c", "1", "-e", "-q", "-f", "%S %K\\n"},
                               seconds(60));
  long value = -1, key = -1;
  std::istringstream in(r.output);
  if (r.exit_code != 0 || !(in >> value >> key)) return "n/a";
  return Fmt("value %ld B, key %ld B", value, key);
}

// pg_recvlogical reading a slot up to an LSN, into /dev/null.
struct RawStream {
  double seconds = 0;         // start -> exit
  double cpu_self = -1;       // pg_recvlogical's user + system CPU seconds
  double cpu_walsender = -1;  // its walsender's, last sample before it exited
};

RawStream StreamWithPgRecvlogical(const Options& o, const TestDatabase& db, const DbWatch& watch, const CdcNames& n,
                                  const std::string& end_lsn) {
  const std::vector<std::string> args = {PgRecvlogicalPath(o, db),
                                         "-d",
                                         db.conninfo(),
                                         "--slot",
                                         n.raw_slot,
                                         "--start",
                                         "--no-loop",
                                         "-o",
                                         "proto_version=1",
                                         "-o",
                                         "publication_names=" + n.publication,
                                         "-o",
                                         "messages=true",
                                         "--endpos",
                                         end_lsn,
                                         "-f",
                                         "/dev/null"};
  RawStream raw;
  CommandResult result;
  std::exception_ptr error;
  std::atomic<bool> done{false};
  rusage before{};
  ::getrusage(RUSAGE_CHILDREN, &before);
  const auto t0 = SteadyClock::now();
  std::thread reader([&] {
    try {
      result = RunCommand(args, std::chrono::minutes(10));
    } catch (...) {
      error = std::current_exception();
    }
    raw.seconds = Seconds(SteadyClock::now() - t0);
    done = true;
  });
  // The walsender lives as long as pg_recvlogical's connection: find it once,
  // then read its CPU time from /proc (no more queries) until the end.
  pid_t walsender = -1;
  while (!done) {
    if (walsender <= 0) {
      walsender = watch.SlotActivePid(n.raw_slot);
    } else if (auto c = CpuSeconds(walsender)) {
      raw.cpu_walsender = *c;
    }
    std::this_thread::sleep_for(milliseconds(walsender <= 0 ? 2 : 5));
  }
  reader.join();
  if (error) std::rethrow_exception(error);
  rusage after{};
  ::getrusage(RUSAGE_CHILDREN, &after);
  const auto secs = [](const timeval& tv) {
    return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
  };
  raw.cpu_self = secs(after.ru_utime) - secs(before.ru_utime) + secs(after.ru_stime) - secs(before.ru_stime);
  if (result.exit_code != 0) {
    throw HarnessError(Fmt("pg_recvlogical exited with %d: ", result.exit_code) + result.output);
  }
  return raw;
}

// One cdc throughput run: both slots are created, then o.events rows are
// written in transactions of tx_rows rows; then pg_recvlogical reads its slot
// to the end, then outboxd streams its slot into Kafka.
struct CdcDrain {
  int64_t transactions = 0;
  double write_seconds = 0;
  std::string end_lsn;
  RawStream raw;
  double t0_wall = 0;         // outboxd started, CLOCK_REALTIME ms
  double confirmed_wall = 0;  // its slot's confirmed_flush_lsn was seen at the end
  TopicSpan span;
  std::string record_size;
  ProcessMemory mem;
  std::string threads;
  std::vector<std::pair<std::string, std::string>> cpu_rows;

  double start_to_last_ack() const { return (static_cast<double>(span.last_ts) - t0_wall) / 1e3; }
  double first_to_last_append() const {
    return static_cast<double>(std::max<int64_t>(1, span.last_ts - span.first_ts)) / 1e3;
  }
  double start_to_confirmed() const { return (confirmed_wall - t0_wall) / 1e3; }
};

CdcDrain RunCdcDrain(const Options& o, const TestDatabase& db, const std::string& kind, int64_t tx_rows,
                     Delivery delivery) {
  const CdcNames n = MakeCdcNames(kind);
  db.Exec(CdcTableDdl(n.table));
  KafkaAdmin admin(SharedServices().kafka_bootstrap);
  admin.CreateTopic(n.topic, o.partitions, {{"message.timestamp.type", "LogAppendTime"}});
  OutboxdProcess outboxd(CdcToml(o, db, n, /*create=*/false, kCdcThroughputStatusInterval, delivery));
  // Both slots exist before the first write, so both hold the same changes.
  const CommandResult init = OutboxdProcess::RunCommand({"init", "-c", outboxd.config_path()});
  if (init.exit_code != 0) throw HarnessError("outboxd init failed:\n" + init.output);
  db.Exec("SELECT pg_create_logical_replication_slot('" + n.raw_slot + "', 'pgoutput')");

  CdcDrain d;
  d.transactions = (o.events + tx_rows - 1) / tx_rows;
  Progress(Fmt("cdc throughput (%s): writing %" PRId64 " rows in %" PRId64 " transaction(s) into %s", kind.c_str(),
               o.events, d.transactions, n.table.c_str()));
  const auto w0 = SteadyClock::now();
  db.Exec(CdcWritesSql(n.table, o, tx_rows));
  d.write_seconds = Seconds(SteadyClock::now() - w0);
  // At or past the end of the last commit record. pg_recvlogical --endpos
  // stops at the first change past it; the fence below makes sure there is
  // one (without it, an end LSN between two records, e.g. after a page
  // header, would keep it waiting for the next WAL record). outboxd ignores
  // the fence (no message_prefix).
  d.end_lsn = db.QueryString("SELECT pg_current_wal_insert_lsn()");
  db.Exec("SELECT pg_logical_emit_message(true, 'outboxd-bench-fence', '')");
  db.Exec("CHECKPOINT");  // neither reader should meet the checkpointer
  const DbWatch watch(db);

  Progress(Fmt("cdc throughput (%s): pg_recvlogical reads slot %s up to %s", kind.c_str(), n.raw_slot.c_str(),
               d.end_lsn.c_str()));
  d.raw = StreamWithPgRecvlogical(o, db, watch, n, d.end_lsn);

  Progress(Fmt("cdc throughput (%s): outboxd streams slot %s into %s", kind.c_str(), n.slot.c_str(), n.topic.c_str()));
  const auto running = [&] {
    if (!outboxd.Running()) Fail(outboxd, "outboxd exited during the cdc throughput run (" + kind + ")");
  };
  CpuMeter cpu;
  CpuMeter walsender_cpu;
  bool walsender_added = false;
  d.t0_wall = WallMs();
  outboxd.Start();
  const auto t0 = SteadyClock::now();
  cpu.Add("outboxd", outboxd.pid());
  cpu.Add("Kafka broker", BrokerPid());
  cpu.Start();
  const bool confirmed = WaitUntil(
      [&] {
        running();
        if (!walsender_added) {
          if (pid_t w = watch.SlotActivePid(n.slot); w > 0) {
            walsender_cpu.Add("walsender of outboxd", w);
            walsender_cpu.Start();
            walsender_added = true;
          }
        }
        return watch.SlotConfirmedPast(n.slot, d.end_lsn);
      },
      std::chrono::minutes(10), milliseconds(20));
  d.confirmed_wall = WallMs();
  const double wall = Seconds(SteadyClock::now() - t0);
  cpu.Stop();
  walsender_cpu.Stop();
  if (!confirmed) Fail(outboxd, "outboxd did not confirm " + d.end_lsn + " on slot " + n.slot + " within 10 minutes");
  d.mem = ReadProcessMemory(outboxd.pid());
  d.threads = ThreadCpu(outboxd.pid());
  StopOutboxd(outboxd);
  SaveLog(o, outboxd, "cdc-throughput-" + kind + "-" + DeliveryName(delivery) + ".log");
  d.cpu_rows = cpu.Rows(wall);
  for (const auto& r : walsender_cpu.Rows(wall)) d.cpu_rows.push_back(r);
  d.cpu_rows.push_back(cpu.MachineRow());
  d.span = ReadTopicSpan(n.topic, o.partitions, "");
  d.record_size = RecordSize(n.topic);
  return d;
}

int RunCdcThroughput(const Options& o, const TestDatabase& db, Delivery delivery) {
  // The row size, from a sample of the same rows.
  db.Exec(CdcTableDdl("public.cdc_sample"));
  db.Exec(CdcFillSql("public.cdc_sample", o, "1", std::to_string(std::min<int64_t>(o.events, 10000))));
  const std::string avg_row = db.QueryString("SELECT round(avg(pg_column_size(t.*))) FROM public.cdc_sample t");
  db.Exec("DROP TABLE public.cdc_sample");

  const std::string small_kind = std::to_string(o.tx_rows) + "rows";
  const std::string suffix = delivery == Delivery::kExactlyOnce ? "eo" : "";
  const CdcDrain big = RunCdcDrain(o, db, "1tx" + suffix, o.events, delivery);
  const CdcDrain small = RunCdcDrain(o, db, small_kind + suffix, o.tx_rows, delivery);

  Table t(Fmt("CDC THROUGHPUT (%s)  %" PRId64 " row inserts of a captured table, topic %d partitions (LogAppendTime), "
              "status_interval %s",
              DeliveryName(delivery), o.events, o.partitions, kCdcThroughputStatusInterval));
  t.Row("event size", Fmt("row %s B as stored; Kafka record %s", avg_row.c_str(), big.record_size.c_str()));
  bool all_there = true;
  double worst_ratio = INFINITY;
  for (const CdcDrain* r : {&big, &small}) {
    const std::string k = r == &big ? "1 tx: " : Fmt("%d rows/tx: ", o.tx_rows);
    const double raw_rate = static_cast<double>(o.events) / r->raw.seconds;
    const double rate = static_cast<double>(o.events) / r->start_to_last_ack();
    worst_ratio = std::min(worst_ratio, rate / raw_rate);
    t.Row(k + "written (not measured)", Fmt("%" PRId64 " transaction(s) in %.2f s, end LSN %s", r->transactions,
                                            r->write_seconds, r->end_lsn.c_str()));
    t.Row(k + "raw limit: pg_recvlogical -> /dev/null",
          Rate(o.events, r->raw.seconds) + Fmt("  (%.2f s, start -> exit at --endpos)", r->raw.seconds));
    t.Row(k + "raw: CPU pg_recvlogical / its walsender",
          Fmt("%.2f s / %.2f s (%.0f%% / %.0f%% of one core)", r->raw.cpu_self, r->raw.cpu_walsender,
              100 * r->raw.cpu_self / r->raw.seconds, 100 * r->raw.cpu_walsender / r->raw.seconds));
    t.Row(k + "outboxd: start -> last ack",
          Rate(o.events, r->start_to_last_ack()) + Fmt("  (%.2f s to the last LogAppendTime)", r->start_to_last_ack()));
    t.Row(k + "ratio outboxd / pg_recvlogical",
          Fmt("%.2f  (goal >= 0.6: %s)", rate / raw_rate, rate / raw_rate >= 0.6 ? "met" : "NOT met"));
    t.Row(k + "outboxd: first -> last append",
          Rate(o.events, r->first_to_last_append()) + Fmt("  (%.2f s)", r->first_to_last_append()));
    t.Row(k + "outboxd: start -> slot confirmed",
          Rate(o.events, r->start_to_confirmed()) + Fmt("  (%.2f s wall)", r->start_to_confirmed()));
    t.Row(k + "timeline from outboxd start",
          Fmt("first append +%.0f ms, last append +%.0f ms, confirmed_flush_lsn seen +%.0f ms",
              static_cast<double>(r->span.first_ts) - r->t0_wall, static_cast<double>(r->span.last_ts) - r->t0_wall,
              r->confirmed_wall - r->t0_wall));
    t.Row(k + "records in topic",
          Fmt("%" PRId64 " (%s per partition)%s", r->span.records, r->span.per_partition.c_str(),
              r->span.records == o.events ? "" : "  DIFFERS from the rows written"));
    t.Row(k + "outboxd peak RSS (VmHWM)", Mib(r->mem.peak_rss_kb));
    for (const auto& [m, v] : r->cpu_rows) t.Row(k + m, v);
    t.Row(k + "outboxd CPU by thread", r->threads);
    all_there = all_there && r->span.records == o.events;
  }
  t.Row("goal ratio >= 0.6 of pg_recvlogical (both runs)", worst_ratio >= 0.6 ? "met" : "NOT met");
  t.Print();
  return all_there ? 0 : 1;
}

int RunCdcLatency(const Options& o, const TestDatabase& db, Delivery delivery) {
  const CdcNames n = MakeCdcNames(delivery == Delivery::kExactlyOnce ? "lateo" : "lat");
  db.Exec(CdcTableDdl(n.table));
  KafkaAdmin admin(SharedServices().kafka_bootstrap);
  admin.CreateTopic(n.topic, o.partitions, {{"message.timestamp.type", "LogAppendTime"}});
  // outboxd's defaults otherwise (status_interval 10s unless --cdc-status-interval).
  OutboxdProcess outboxd(CdcToml(o, db, n, /*create=*/true, o.cdc_status_interval, delivery));
  const DbWatch watch(db);
  const auto running = [&] {
    if (!outboxd.Running()) Fail(outboxd, "outboxd exited during the cdc latency run");
  };
  outboxd.Start();
  if (!WaitUntil(
          [&] {
            running();
            return watch.SlotActivePid(n.slot) > 0;
          },
          seconds(60))) {
    Fail(outboxd, "outboxd did not start streaming slot " + n.slot);
  }

  // The consumer starts now: its own start-up (metadata, offsets, first
  // fetch: a few hundred ms) must not count, so it has seen the warm-up rows
  // before the measured ones are written.
  const int64_t measured = static_cast<int64_t>(std::llround(o.cdc_rate * o.seconds));
  VisibleClock visible(n.topic, o.partitions, measured, VisibleClock::Numbered::kByKey);
  // Warm-up rows (negative ids, not counted): the producer learns the topic
  // and connects. The first one's latency is reported on its own.
  Progress("cdc latency: warm-up");
  constexpr int kWarmup = 50;
  double first_commit_ms = 0;
  for (int i = 1; i <= kWarmup; ++i) {
    db.Exec("INSERT INTO " + n.table + " " + kCdcColumns + " VALUES (" + CdcRowValuesSql(std::to_string(-i), o) + ")");
    if (i == 1) first_commit_ms = WallMs();
  }
  const auto relayed = [&](int64_t count) {
    return [&, count] {
      running();
      return TopicRecordCount(n.topic, o.partitions) >= count;
    };
  };
  if (!WaitUntil(relayed(kWarmup), seconds(60), milliseconds(200))) {
    Fail(outboxd, "warm-up rows were not relayed within 60 s");
  }
  if (!WaitUntil([&] { return visible.received() >= kWarmup; }, seconds(60), milliseconds(50))) {
    Fail(outboxd, "the read_committed consumer did not receive the warm-up rows within 60 s");
  }
  std::this_thread::sleep_for(seconds(1));

  Writer w;
  w.conninfo = db.conninfo();
  w.table = n.table;
  w.rate = o.cdc_rate;
  w.count = measured;
  w.sql = "INSERT INTO " + n.table + " " + kCdcColumns + " VALUES (" + CdcRowValuesSql("$1::bigint", o) + ")";
  // The walsender sends only WAL that is flushed. With the harness server's
  // synchronous_commit = off a commit is flushed by the WAL writer, up to
  // wal_writer_delay (200 ms) later, and that delay would be most of what is
  // measured; PostgreSQL's default (on) flushes at COMMIT (cheap here: fsync
  // is off).
  w.session_sql = o.cdc_async_commit ? "" : "SET synchronous_commit = on";
  Progress(Fmt("cdc latency (%s): %" PRId64 " one-row transactions at %.0f/s for %d s", DeliveryName(delivery), w.count,
               o.cdc_rate, o.seconds));
  CpuMeter cpu;
  cpu.Add("outboxd", outboxd.pid());
  cpu.Add("Kafka broker", BrokerPid());
  if (pid_t ws = watch.SlotActivePid(n.slot); ws > 0) cpu.Add("walsender of outboxd", ws);
  cpu.Start();
  const auto start = SteadyClock::now() + milliseconds(100);
  std::thread writer([&] { w.Run(start); });
  writer.join();
  const double writer_seconds = Seconds(SteadyClock::now() - start);
  cpu.Stop();
  if (!w.error.empty()) Fail(outboxd, "latency writer failed: " + w.error);
  if (!WaitUntil(relayed(kWarmup + w.count), seconds(120), milliseconds(500))) {
    Fail(outboxd, "outboxd did not relay every row within 120 s");
  }
  const ProcessMemory mem = ReadProcessMemory(outboxd.pid());
  const std::string threads = ThreadCpu(outboxd.pid());
  visible.Stop();
  StopOutboxd(outboxd);
  SaveLog(o, outboxd, std::string("cdc-latency-") + DeliveryName(delivery) + ".log");

  // Every record: "LogAppendTime<TAB>key", the key being {"id":N}.
  CommandResult r = RunCommand({"kcat", "-C", "-b", SharedServices().kafka_bootstrap, "-t", n.topic, "-o", "beginning",
                                "-e", "-q", "-f", "%T\\t%k\\n"},
                               seconds(300));
  if (r.exit_code != 0) throw HarnessError("kcat could not read " + n.topic + ": " + r.output);
  std::vector<double> ack_ms(static_cast<std::size_t>(w.count), -1);
  int64_t duplicates = 0, unparsed = 0;
  double first_ack_ms = -1;
  std::istringstream lines(r.output);
  std::string line;
  while (std::getline(lines, line)) {
    const auto tab = line.find('\t');
    const auto id = line.find("\"id\":");
    if (tab == std::string::npos || id == std::string::npos) {
      if (!line.empty()) ++unparsed;
      continue;
    }
    const double ts = std::strtod(line.c_str(), nullptr);
    const long long k = std::strtoll(line.c_str() + id + 5, nullptr, 10);
    if (k < 0) {
      if (k == -1) first_ack_ms = ts;
      continue;
    }
    if (k >= w.count) {
      ++unparsed;
      continue;
    }
    double& a = ack_ms[static_cast<std::size_t>(k)];
    if (a >= 0) {
      ++duplicates;
      a = std::min(a, ts);
    } else {
      a = ts;
    }
  }
  std::vector<double> latency;
  latency.reserve(ack_ms.size());
  int64_t missing = 0;
  std::ofstream tsv;  // every event, to look at the tail over time
  if (!o.log_dir.empty()) {
    tsv.open(o.log_dir + "/cdc-latency-" + DeliveryName(delivery) + ".tsv", std::ios::trunc);
    tsv << "n\tcommit_ms\tappend_ms\tlatency_ms\n";
  }
  for (std::size_t i = 0; i < ack_ms.size(); ++i) {
    if (tsv.is_open()) {
      tsv << i << '\t' << Fmt("%.3f", w.commit_ms[i]) << '\t' << Fmt("%.0f", ack_ms[i]) << '\t'
          << Fmt("%.3f", ack_ms[i] - w.commit_ms[i]) << '\n';
    }
    if (ack_ms[i] < 0) {
      ++missing;
      continue;
    }
    latency.push_back(ack_ms[i] - w.commit_ms[i]);
  }
  std::sort(latency.begin(), latency.end());
  const double p99 = Percentile(latency, 0.99);
  std::vector<double> to_visible;  // commit -> a read_committed consumer has it
  int64_t never_seen = 0;
  for (std::size_t i = 0; i < visible.seen().size(); ++i) {
    if (visible.seen()[i] < 0) {
      ++never_seen;
    } else {
      to_visible.push_back(visible.seen()[i] - w.commit_ms[i]);
    }
  }
  std::sort(to_visible.begin(), to_visible.end());
  int64_t over_25 = 0;
  for (double l : latency) over_25 += l >= 25 ? 1 : 0;

  Table t(
      Fmt("CDC LATENCY (%s)  %.0f one-row transactions/s for %d s, row changes of a captured table, "
          "status_interval %s, writer synchronous_commit = %s",
          DeliveryName(delivery), o.cdc_rate, o.seconds,
          o.cdc_status_interval.empty() ? "10s (default)" : o.cdc_status_interval.c_str(),
          o.cdc_async_commit ? "off" : "on"));
  t.Row("rows written (achieved rate)",
        Fmt("%" PRId64 " (%.0f/s)", w.count, static_cast<double>(w.count) / writer_seconds));
  t.Row("writer behind schedule", Fmt("max %.1f ms, %" PRId64 " inserts > 10 ms late", w.max_behind_ms, w.behind_10ms));
  t.Row("latencies measured (commit -> LogAppendTime)",
        Fmt("%zu (missing %" PRId64 ", duplicates %" PRId64 ")", latency.size(), missing, duplicates));
  t.Row("p50", Fmt("%.1f ms", Percentile(latency, 0.50)));
  t.Row("p90", Fmt("%.1f ms", Percentile(latency, 0.90)));
  t.Row("p99", Fmt("%.1f ms  (goal < 25 ms: %s)", p99, p99 < 25 ? "met" : "NOT met"));
  t.Row("p99.9", Fmt("%.1f ms", Percentile(latency, 0.999)));
  t.Row("max", Fmt("%.1f ms", latency.empty() ? NAN : latency.back()));
  t.Row("min", Fmt("%.1f ms", latency.empty() ? NAN : latency.front()));
  t.Row("commit -> seen by a read_committed consumer",
        Fmt("p50 %.1f ms, p99 %.1f ms, max %.1f ms (%zu seen, %" PRId64 " not seen)", Percentile(to_visible, 0.50),
            Percentile(to_visible, 0.99), to_visible.empty() ? NAN : to_visible.back(), to_visible.size(), never_seen));
  t.Row("events >= 25 ms",
        Fmt("%" PRId64 " (%.2f%%)", over_25,
            latency.empty() ? 0.0 : 100.0 * static_cast<double>(over_25) / static_cast<double>(latency.size())));
  t.Row("first row after outboxd start (not above)",
        first_ack_ms < 0 ? "n/a" : Fmt("%.1f ms", first_ack_ms - first_commit_ms));
  t.Row("outboxd peak RSS (VmHWM)", Mib(mem.peak_rss_kb));
  t.Rows(cpu.Rows(writer_seconds));
  t.Row(cpu.MachineRow().first, cpu.MachineRow().second);
  t.Row("outboxd CPU by thread (whole run)", threads);
  t.Row("goal p99 < 25 ms at 2000 events/s",
        o.cdc_rate < 2000 ? Fmt("not checked (rate %.0f/s)", o.cdc_rate) : (p99 < 25 ? "met" : "NOT met"));
  if (unparsed > 0) t.Row("unparseable records", std::to_string(unparsed));
  t.Print();
  return (missing == 0 && unparsed == 0) ? 0 : 1;
}

int Main(int argc, char** argv) {
  const Options o = ParseOptions(argc, argv);
  const ServiceInfo& services = SharedServices();
  if (services.pg_port == 0 || services.kafka_bootstrap.empty()) {
    throw HarnessError("need both PostgreSQL and Kafka in " + services.dir);
  }
  TestDatabase db(services.pg_host, services.pg_port);
  utsname u{};
  ::uname(&u);
  std::printf("outboxd benchmark  %s\n", Today().c_str());
  std::printf("  machine     %ld CPUs (%s), %s %s\n", ::sysconf(_SC_NPROCESSORS_ONLN), CpuModel().c_str(), u.sysname,
              u.release);
  std::printf("  postgres    %s on %s:%d (harness: fsync=off, synchronous_commit=off)\n",
              db.QueryString("SHOW server_version").c_str(), services.pg_host.c_str(), services.pg_port);
  std::printf("  kafka       %s (harness single-node broker)\n", services.kafka_bootstrap.c_str());
  std::printf("  outboxd     %s\n", OutboxdProcess::BinaryPath().c_str());
  std::printf("  load avg    %s (other work on the machine skews the numbers)\n", LoadAverage().c_str());
  std::fflush(stdout);
  int rc = 0;
  if (o.throughput) rc |= RunThroughput(o, db);
  for (const Delivery d : {Delivery::kAtLeastOnce, Delivery::kExactlyOnce}) {
    if (o.latency) rc |= RunLatency(o, db, d);
  }
  for (const Delivery d : {Delivery::kAtLeastOnce, Delivery::kExactlyOnce}) {
    if (o.cdc_throughput) rc |= RunCdcThroughput(o, db, d);
  }
  for (const Delivery d : {Delivery::kAtLeastOnce, Delivery::kExactlyOnce}) {
    if (o.cdc_latency) rc |= RunCdcLatency(o, db, d);
  }
  return rc;
}

}  // namespace
}  // namespace outboxd::bench

int main(int argc, char** argv) {
  try {
    return outboxd::bench::Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "outboxd_bench: %s\n", e.what());
    return 1;
  }
}
