// outboxd: moves events out of PostgreSQL outbox tables into Apache Kafka.
//
//   outboxd run -c FILE              relay until SIGTERM/SIGINT
//   outboxd check-config -c FILE     validate the configuration file and exit
//   outboxd init -c FILE [--dry-run] [--role NAME]  outbox tables, [cdc] slot, GRANTs
//   outboxd status -c FILE [--json] [--max-lag B] [--max-pending N]  is everything healthy?
//   outboxd --version
//
// `run` drives each source on its own thread through a PipelineRunner — the
// poll source for the [[outbox]] blocks with source = "poll", the cdc source
// for [cdc] — and stops all of them when one fails for good or a stop signal
// arrives. The main thread supervises: signals, the workers ending, the
// systemd watchdog.

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <functional>
#include <iostream>
#include <memory>
#include <thread>
#include <vector>

#include "cdc/cdc_source.h"
#include "cdc/slot_status.h"
#include "common/logging.h"
#include "common/unique_fd.h"
#include "config/config.h"
#include "config/secret_files.h"
#include "daemon/exit_codes.h"
#include "daemon/http_server.h"
#include "daemon/init_sql.h"
#include "daemon/status.h"
#include "pipeline/metrics.h"
#include "pipeline/pipeline_runner.h"
#include "pipeline/router.h"
#include "relay/poll_source.h"

#ifndef OUTBOXD_VERSION
#define OUTBOXD_VERSION "unknown"
#endif

namespace outboxd {
namespace {

int ExitCodeFor(const Status& st) {
  switch (st.code()) {
    case StatusCode::kOk:
      return kExitOk;
    case StatusCode::kInvalidConfig:
      return kExitConfig;
    case StatusCode::kRetriable:
    case StatusCode::kPermanent:
    case StatusCode::kFatal:
      return kExitUnavailable;
    case StatusCode::kInternal:
      return kExitSoftware;
  }
  return kExitSoftware;
}

// Prints each line of a (possibly multi-line) error with the program name.
void PrintError(const std::string& message) {
  std::size_t start = 0;
  while (start <= message.size()) {
    std::size_t end = message.find('\n', start);
    if (end == std::string::npos) end = message.size();
    if (end > start) std::cerr << "outboxd: " << message.substr(start, end - start) << "\n";
    start = end + 1;
  }
}

Result<Config> LoadAndReport(const std::string& path) {
  auto config = LoadConfig(path);
  if (!config.ok()) PrintError(config.status().message());
  return config;
}

int CheckConfig(const std::string& path) {
  auto config = LoadAndReport(path);
  if (!config.ok()) return ExitCodeFor(config.status());
  // The loader already had librdkafka judge every property; routing is
  // checked here. Nothing connects to PostgreSQL or Kafka.
  for (const OutboxTableConfig& t : config->outboxes) {
    auto router = Router::Create(t);
    if (!router.ok()) {
      PrintError(t.config_location + ": " + router.status().message());
      return ExitCodeFor(router.status());
    }
  }
  std::cout << path << ": OK (" << config->outboxes.size() << " outbox table"
            << (config->outboxes.size() == 1 ? "" : "s");
  if (config->cdc) std::cout << ", replication slot \"" << config->cdc->slot << "\"";
  std::cout << ")\n";
  for (const std::string& warning : SecretFileWarnings(*config)) std::cerr << "outboxd: warning: " << warning << "\n";
  if (config->kafka.delivery == Delivery::kExactlyOnce) {
    // What the mode needs beyond this file (docs/configuration.md).
    std::vector<std::string> polled;
    for (const OutboxTableConfig& t : config->outboxes) {
      // As resolved with the default search_path.
      if (t.source == OutboxSource::kPoll) polled.push_back(QualifiedTableName(t.table));
    }
    std::string ids;
    if (config->cdc) ids = "outboxd.cdc.<system id>.<database>." + config->cdc->slot;
    if (!polled.empty()) {
      std::sort(polled.begin(), polled.end());
      std::string tables;
      for (const std::string& t : polled) tables += (tables.empty() ? "" : ",") + t;
      ids += (ids.empty() ? "" : " and ") + std::string("outboxd.poll.<system id>.<database>.") + tables +
             " (each table as schema.table)";
    }
    std::cout << "delivery = \"exactly-once\": events go out in Kafka transactions with each source's position in "
                 "topic \""
              << config->kafka.position_topic << "\" (created compacted, 1 partition, unless it exists).\n"
              << "  consumers: set isolation.level=read_committed; read_uncommitted consumers also see the copies in "
                 "aborted transactions.\n"
              << "  broker: the transaction state log (transaction.state.log.replication.factor and .min.isr) and "
                 "transaction.max.timeout.ms >= librdkafka's transaction.timeout.ms (60 s unless set in "
                 "[kafka.properties]), which must cover producing the largest PostgreSQL transaction.\n"
              << "  ACLs: WRITE and DESCRIBE on the transactional id " << ids
              << ", and READ and WRITE on the position topic (CREATE too unless it exists).\n";
  }
  return kExitOk;
}

// One source on its own thread: its PipelineRunner runs until Stop(), or
// until it ends by itself (then it writes `done_fd`). The destructor stops
// and joins it.
class Worker {
 public:
  explicit Worker(std::unique_ptr<PipelineRunner> runner) : runner_(std::move(runner)) {}
  ~Worker() {
    Stop();
    Join();
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  [[nodiscard]] Status Start(int done_fd) {
    stop_ = UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!stop_.valid()) return Status::Internal(std::string("eventfd: ") + std::strerror(errno));
    thread_ = std::thread([this, done_fd] {
      result_ = runner_->Run(stop_.get());
      const uint64_t one = 1;
      while (::write(done_fd, &one, sizeof one) < 0 && errno == EINTR) {
      }
    });
    return Status::Ok();
  }
  void Stop() {
    if (!stop_.valid() || stop_sent_) return;
    stop_sent_ = true;
    const uint64_t one = 1;
    while (::write(stop_.get(), &one, sizeof one) < 0 && errno == EINTR) {
    }
  }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }
  PipelineRunner& runner() { return *runner_; }
  // Valid after Join().
  const Status& result() const { return result_; }

 private:
  std::unique_ptr<PipelineRunner> runner_;
  UniqueFd stop_;
  bool stop_sent_ = false;  // main thread only
  std::thread thread_;
  Status result_;  // written by the thread, read after Join()
};

// WatchdogSec=: WATCHDOG=1 at half the interval, only while every relay's
// loop is turning (the /healthz rule), so that a stuck relay gets restarted.
class Watchdog {
 public:
  using Clock = std::chrono::steady_clock;
  explicit Watchdog(const Metrics& metrics) : metrics_(metrics) {
    uint64_t usec = 0;
    enabled_ = sd_watchdog_enabled(0, &usec) > 0 && usec > 0;
    every_ = std::chrono::milliseconds(std::max<uint64_t>(usec / 2000, 1));
  }
  // Feeds the watchdog if due; returns how long until the next feed (-1:
  // disabled).
  int Turn() {
    if (!enabled_) return -1;
    const auto now = Clock::now();
    if (now >= next_) {
      const Metrics::Report live = metrics_.Liveness();
      if (live.ok) {
        sd_notify(0, "WATCHDOG=1");
        withheld_ = false;
      } else if (!withheld_) {
        Logger("daemon")->error("not feeding the systemd watchdog: {}", live.body);
        withheld_ = true;
      }
      next_ = now + every_;
    }
    return static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(next_ - now).count() + 1);
  }

 private:
  const Metrics& metrics_;
  bool enabled_ = false;
  std::chrono::milliseconds every_{0};
  Clock::time_point next_{};
  bool withheld_ = false;
};

int Run(const std::string& path) {
  // Block the stop signals before librdkafka starts its threads, so that only
  // the main thread sees them, through a signalfd.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  if (sigprocmask(SIG_BLOCK, &stop_signals, nullptr) != 0) {
    std::cerr << "outboxd: sigprocmask: " << std::strerror(errno) << "\n";
    return kExitSoftware;
  }
  UniqueFd signal_fd(signalfd(-1, &stop_signals, SFD_CLOEXEC | SFD_NONBLOCK));
  UniqueFd done_fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!signal_fd.valid() || !done_fd.valid()) {
    std::cerr << "outboxd: signalfd/eventfd: " << std::strerror(errno) << "\n";
    return kExitSoftware;
  }

  auto config = LoadAndReport(path);
  if (!config.ok()) return ExitCodeFor(config.status());
  Status st = InitLogging(config->log.level,
                          config->log.format == LogFormat::kJson ? LogOutputFormat::kJson : LogOutputFormat::kText);
  if (!st.ok()) {
    std::cerr << "outboxd: " << path << ": " << st.message() << "\n";
    return ExitCodeFor(st);
  }
  auto log = Logger("daemon");
  log->info("outboxd {} starting with {}", OUTBOXD_VERSION, path);
  for (const std::string& warning : SecretFileWarnings(*config)) log->warn("{}", warning);

  // One registry for the process; the relays register their health and
  // metric handles in Create(), and the HTTP listener serves it.
  Metrics metrics(OUTBOXD_VERSION);

  // Type=notify: READY=1 once every source is connected and checked.
  auto ready_left = std::make_shared<std::atomic<int>>(0);
  auto stopping_sent = std::make_shared<std::atomic<bool>>(false);
  auto on_lifecycle = [ready_left, stopping_sent](PipelineRunner::Lifecycle l) {
    if (l == PipelineRunner::Lifecycle::kReady) {
      if (ready_left->fetch_sub(1) == 1) sd_notify(0, "READY=1\nSTATUS=relaying");
    } else if (!stopping_sent->exchange(true)) {
      sd_notify(0, "STOPPING=1\nSTATUS=waiting for deliveries in flight");
    }
  };

  // One worker per source; a source that cannot be created (a routing
  // error) is a configuration error.
  std::vector<std::unique_ptr<Worker>> workers;
  auto add = [&](auto source) -> Status {
    if (!source.ok()) return source.status();
    auto runner = PipelineRunner::Create(config->kafka, std::move(source).value(), metrics);
    if (!runner.ok()) return runner.status();
    (*runner)->OnLifecycle(on_lifecycle);
    workers.push_back(std::make_unique<Worker>(std::move(runner).value()));
    return Status::Ok();
  };
  bool any_poll = false;
  for (const auto& t : config->outboxes) any_poll |= t.source == OutboxSource::kPoll;
  Status created;
  if (any_poll) created = add(PollSource::Create(*config, metrics));
  if (created.ok() && config->cdc) created = add(CdcSource::Create(*config, metrics));
  if (!created.ok()) {
    log->error("{}: {}", path, created.message());
    return ExitCodeFor(created);
  }
  ready_left->store(static_cast<int>(workers.size()));

  // Listening before the sources start, so that probes see them come up. An
  // address that cannot be bound exits 69 (EX_UNAVAILABLE: it may be free on
  // the next start); a malformed one was already refused by the loader, and
  // a certificate or key that cannot be loaded is refused here (78).
  std::unique_ptr<HttpServer> http;
  if (config->http.listen) {
    auto server = HttpServer::Start(config->http, metrics);
    if (!server.ok()) {
      log->error("{}: {}", path, server.status().message());
      return ExitCodeFor(server.status());
    }
    http = std::move(server).value();
  }

  for (auto& w : workers) {
    if (Status started = w->Start(done_fd.get()); !started.ok()) {
      log->error("{}", started.message());
      return kExitSoftware;  // the destructors stop and join the workers started so far
    }
  }
  auto stop_all = [&] {
    for (auto& w : workers) w->Stop();
  };
  Watchdog watchdog(metrics);
  std::size_t finished = 0;
  while (finished < workers.size()) {
    const int timeout_ms = watchdog.Turn();
    pollfd fds[2] = {{signal_fd.get(), POLLIN, 0}, {done_fd.get(), POLLIN, 0}};
    if (::poll(fds, 2, timeout_ms) < 0) {
      if (errno == EINTR) continue;
      log->error("poll failed: {}; stopping", std::strerror(errno));
      stop_all();
      break;
    }
    if (fds[0].revents & POLLIN) {
      signalfd_siginfo info;
      while (::read(signal_fd.get(), &info, sizeof info) > 0) {
      }
      log->info("received a stop signal");
      stop_all();
    }
    if (fds[1].revents & POLLIN) {
      uint64_t n = 0;
      if (::read(done_fd.get(), &n, sizeof n) == sizeof n) finished += n;
      // One source ended (failed for good, or stopped): stop the others too.
      stop_all();
    }
  }
  int rc = kExitOk;
  for (auto& w : workers) {
    w->Join();
    if (!w->result().ok()) {
      log->error("{}", w->result().message());
      if (rc == kExitOk) rc = ExitCodeFor(w->result());
    }
  }
  return rc;
}

// The first line of `sql` that is not a "-- comment", to name a statement.
std::string FirstStatementLine(const std::string& sql) {
  std::size_t begin = 0;
  while (sql.compare(begin, 2, "--") == 0) {
    const std::size_t nl = sql.find('\n', begin);
    if (nl == std::string::npos) break;
    begin = nl + 1;
  }
  return sql.substr(begin, sql.find('\n', begin) - begin);
}

// `outboxd init`: the poll outbox tables (with their index and NOTIFY
// trigger), the [cdc] publication, slot and state table, and the GRANTs for
// the role outboxd runs as — created, or (--dry-run) printed as SQL.
int Init(const std::string& path, bool dry_run, const std::string& role) {
  auto config = LoadAndReport(path);
  if (!config.ok()) return ExitCodeFor(config.status());
  auto fail = [&](const Status& st) {
    PrintError(st.message());
    return ExitCodeFor(st);
  };
  auto poll_sql = PollOutboxInitSql(*config);
  if (!poll_sql.ok()) return fail(poll_sql.status().Prefixed(path));
  const std::vector<std::string> grants = GrantSql(*config, role);

  std::vector<std::string> tables;
  for (const auto& t : config->outboxes) {
    if (t.source == OutboxSource::kCdc) tables.push_back(t.table);
  }
  if (config->cdc) tables.insert(tables.end(), config->cdc->tables.begin(), config->cdc->tables.end());
  // With snapshot = "initial" the slot must be created by `run`, which reads
  // the tables with the snapshot the new slot exports.
  const bool slot_by_run = config->cdc && config->cdc->snapshot == SnapshotMode::kInitial;
  const char* slot_note =
      "-- replication slot left to `outboxd run`: with snapshot = \"initial\" it creates the "
      "slot itself, to read the tables as of the slot's start";

  if (dry_run) {
    for (const std::string& s : *poll_sql) std::cout << s << ";\n";
    if (config->cdc) {
      const CdcConfig& cdc = *config->cdc;
      auto sql = InitSql(cdc.slot, cdc.publication, tables, cdc.state_table);
      if (!sql.ok()) return fail(sql.status().Prefixed(path));
      for (const std::string& s : *sql) {
        if (slot_by_run && s == CreateSlotSql(cdc.slot)) {
          std::cout << slot_note << "\n";
        } else {
          std::cout << s << ";\n";
        }
      }
    }
    for (const std::string& s : grants) std::cout << s << ";\n";
    return kExitOk;
  }

  auto conn = PgConn::Connect(config->postgres.conninfo, config->postgres.password, "outboxd-init");
  if (!conn.ok()) return fail(conn.status());
  auto run_all = [&](const std::vector<std::string>& statements) -> Status {
    for (const std::string& s : statements) {
      auto r = conn->Exec(s);
      if (!r.ok()) return r.status().Prefixed("init: " + FirstStatementLine(s));
      std::cout << s << ";\n";
    }
    return Status::Ok();
  };
  Status st = run_all(*poll_sql);
  if (!st.ok()) return fail(st);

  if (config->cdc) {
    const CdcConfig& cdc = *config->cdc;
    auto created = conn->Exec(CreateStateTableSql(cdc.state_table));
    if (!created.ok()) return fail(created.status().Prefixed("could not create the state table"));
    auto recorded = ReadSlotState(*conn, cdc.state_table, cdc.slot);
    if (!recorded.ok()) return fail(recorded.status());
    auto slot = ReadSlotStatus(*conn, cdc.slot);
    if (!slot.ok()) return fail(slot.status());
    // A slot outboxd has streamed from is never created again behind its back.
    std::optional<Lsn> recorded_lsn;
    if (*recorded) recorded_lsn = (*recorded)->confirmed;
    st = CheckSlotAgainstState(cdc.slot, *slot, recorded_lsn, cdc.state_table);
    if (!st.ok()) return fail(st);
    auto ran = EnsurePublication(*conn, cdc.publication, tables, /*create=*/true);
    if (!ran.ok()) return fail(ran.status());
    for (const std::string& s : *ran) std::cout << s << ";\n";
    if (slot_by_run && !*slot) {
      std::cout << slot_note << "\n";
    } else {
      auto slot_ran = EnsureSlot(*conn, cdc.slot, /*create=*/true);
      if (!slot_ran.ok()) return fail(slot_ran.status());
      for (const std::string& s : *slot_ran) std::cout << s << ";\n";
      if (!*recorded) {
        slot = ReadSlotStatus(*conn, cdc.slot);
        if (!slot.ok()) return fail(slot.status());
        if (*slot && (*slot)->confirmed_flush_lsn) {
          st = WriteSlotState(*conn, cdc.state_table, cdc.slot, {*(*slot)->confirmed_flush_lsn, true});
          if (!st.ok()) return fail(st);
        }
      }
    }
  }
  st = run_all(grants);
  if (!st.ok()) return fail(st);
  std::cout << path << ": initialised\n";
  return kExitOk;
}

int ShowStatus(const std::string& path, const StatusOptions& options) {
  auto config = LoadAndReport(path);
  if (!config.ok()) return ExitCodeFor(config.status());
  return RunStatus(*config, options, std::cout);
}

}  // namespace
}  // namespace outboxd

int main(int argc, char** argv) {
  CLI::App app{"outboxd: relays transactional outbox events from PostgreSQL to Apache Kafka"};
  app.set_version_flag("--version", std::string("outboxd ") + OUTBOXD_VERSION);
  app.require_subcommand(1);
  std::string config_path;

  auto* run = app.add_subcommand("run", "Relay events until SIGTERM or SIGINT");
  run->add_option("-c,--config", config_path, "Configuration file (TOML)")->required();
  auto* check = app.add_subcommand("check-config", "Validate a configuration file and exit");
  check->add_option("-c,--config", config_path, "Configuration file (TOML)")->required();
  bool dry_run = false;
  std::string role(outboxd::kDefaultInitRole);
  auto* init = app.add_subcommand(
      "init",
      "Create the poll outbox tables, the [cdc] publication, replication slot and state table, and the GRANTs "
      "for outboxd's role (or print the SQL)");
  init->add_option("-c,--config", config_path, "Configuration file (TOML)")->required();
  init->add_flag("--dry-run", dry_run, "Print the SQL instead of running it, for a DBA to apply");
  init->add_option("--role", role, "Role outboxd runs as, for the GRANTs")->capture_default_str();
  outboxd::StatusOptions status_options;
  auto* status = app.add_subcommand(
      "status", "Report pending rows per outbox table and the state of the replication slot; exit 1 if unhealthy");
  status->add_option("-c,--config", config_path, "Configuration file (TOML)")->required();
  status->add_flag("--json", status_options.json, "One JSON object instead of tables");
  status->add_option("--max-lag", status_options.max_lag_bytes, "Unhealthy when a slot is further behind (bytes)");
  status->add_option("--max-pending", status_options.max_pending_rows,
                     "Unhealthy when a poll table has more unsent rows");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? outboxd::kExitOk : outboxd::kExitUsage;
  }
  if (run->parsed()) return outboxd::Run(config_path);
  if (check->parsed()) return outboxd::CheckConfig(config_path);
  if (init->parsed()) return outboxd::Init(config_path, dry_run, role);
  if (status->parsed()) return outboxd::ShowStatus(config_path, status_options);
  return outboxd::kExitUsage;
}
