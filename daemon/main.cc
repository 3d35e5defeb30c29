// outboxd: moves events out of PostgreSQL outbox tables into Apache Kafka.
//
//   outboxd run -c FILE              relay until SIGTERM/SIGINT
//   outboxd check-config -c FILE     validate the configuration file and exit
//   outboxd init -c FILE [--dry-run] [--role NAME]  outbox tables, [cdc] slot, GRANTs
//   outboxd status -c FILE [--json] [--max-lag B] [--max-pending N]  is everything healthy?
//   outboxd --version
//
// `run` drives each source on its own thread — the poll relay for the
// [[outbox]] blocks with source = "poll", the cdc relay for [cdc] — and stops
// all of them when one fails for good or a stop signal arrives.

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include <systemd/sd-daemon.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <functional>
#include <iostream>
#include <memory>
#include <thread>
#include <vector>

#include "cdc/cdc_relay.h"
#include "cdc/slot_status.h"
#include "daemon/init_sql.h"
#include "daemon/status.h"
#include "common/logging.h"
#include "common/unique_fd.h"
#include "config/config.h"
#include "daemon/exit_codes.h"
#include "daemon/http_server.h"
#include "pipeline/metrics.h"
#include "pipeline/router.h"
#include "relay/outbox_relay.h"

#ifndef OUTBOXD_VERSION
#define OUTBOXD_VERSION "unknown"
#endif

namespace outboxd {
namespace {

int ExitCodeFor(const Status& st) {
  switch (st.code()) {
    case StatusCode::kOk: return kExitOk;
    case StatusCode::kInvalidConfig: return kExitConfig;
    case StatusCode::kRetriable:
    case StatusCode::kPermanent:
    case StatusCode::kFatal: return kExitUnavailable;
    case StatusCode::kInternal: return kExitSoftware;
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
  return kExitOk;
}

// One source running on its own thread until its stop eventfd is written.
struct Worker {
  std::string name;
  std::function<Status(int stop_fd)> run;
  UniqueFd stop;
  Status result;
  std::thread thread;
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
  Status st = InitLogging(config->log.level, config->log.format == LogFormat::kJson
                                                 ? LogOutputFormat::kJson
                                                 : LogOutputFormat::kText);
  if (!st.ok()) {
    std::cerr << "outboxd: " << path << ": " << st.message() << "\n";
    return ExitCodeFor(st);
  }
  auto log = Logger("daemon");
  log->info("outboxd {} starting with {}", OUTBOXD_VERSION, path);

  // One registry for the process; the relays register their health and
  // metric handles in Create(), and the HTTP listener serves it.
  Metrics metrics(OUTBOXD_VERSION);

  // Type=notify: READY=1 once every source is connected and checked.
  std::vector<std::unique_ptr<Worker>> workers;
  auto ready_left = std::make_shared<std::atomic<int>>(0);
  auto stopping_sent = std::make_shared<std::atomic<bool>>(false);
  auto on_ready = [ready_left] {
    if (ready_left->fetch_sub(1) == 1) sd_notify(0, "READY=1\nSTATUS=relaying");
  };
  auto on_stopping = [stopping_sent] {
    if (!stopping_sent->exchange(true)) sd_notify(0, "STOPPING=1\nSTATUS=waiting for deliveries in flight");
  };

  std::unique_ptr<OutboxRelay> poll_relay;
  std::unique_ptr<CdcRelay> cdc_relay;
  // Creates a relay, hooks it to systemd's notifications and gives it a
  // worker thread; false (after logging) when it cannot be created.
  Status created;
  auto add = [&](auto& relay, const char* name, auto result) {
    if (!result.ok()) {
      created = result.status();
      log->error("{}: {}", path, created.message());
      return false;
    }
    relay = std::move(result).value();
    using Lifecycle = typename std::decay_t<decltype(*relay)>::Lifecycle;
    relay->OnLifecycle([on_ready, on_stopping](Lifecycle l) { l == Lifecycle::kReady ? on_ready() : on_stopping(); });
    auto w = std::make_unique<Worker>();
    w->name = name;
    w->run = [r = relay.get()](int fd) { return r->Run(fd); };
    workers.push_back(std::move(w));
    return true;
  };
  bool any_poll = false;
  for (const auto& t : config->outboxes) any_poll |= t.source == OutboxSource::kPoll;
  if (any_poll && !add(poll_relay, "poll", OutboxRelay::Create(*config, &metrics))) return ExitCodeFor(created);
  if (config->cdc && !add(cdc_relay, "cdc", CdcRelay::Create(*config, &metrics))) return ExitCodeFor(created);
  ready_left->store(static_cast<int>(workers.size()));

  // Listening before the relays start, so that probes see them come up. An
  // address that cannot be bound exits 69 (EX_UNAVAILABLE: it may be free on
  // the next start); a malformed one was already refused by the loader (78).
  std::unique_ptr<HttpServer> http;
  if (config->http.listen) {
    auto server = HttpServer::Start(*config->http.listen, metrics);
    if (!server.ok()) {
      log->error("{}: {}", path, server.status().message());
      return kExitUnavailable;
    }
    http = std::move(server).value();
  }

  for (auto& w : workers) {
    w->stop = UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!w->stop.valid()) {
      std::cerr << "outboxd: eventfd: " << std::strerror(errno) << "\n";
      return kExitSoftware;
    }
  }
  for (auto& w : workers) {
    Worker* raw = w.get();
    const int done = done_fd.get();
    w->thread = std::thread([raw, done] {
      raw->result = raw->run(raw->stop.get());
      const uint64_t one = 1;
      while (::write(done, &one, sizeof one) < 0 && errno == EINTR) {
      }
    });
  }

  auto stop_all = [&] {
    const uint64_t one = 1;
    for (auto& w : workers) {
      while (::write(w->stop.get(), &one, sizeof one) < 0 && errno == EINTR) {
      }
    }
  };
  // WatchdogSec=: WATCHDOG=1 at half the interval, only while every relay's
  // loop is turning (the /healthz rule), so a stuck relay gets restarted.
  uint64_t watchdog_usec = 0;
  const bool watchdog = sd_watchdog_enabled(0, &watchdog_usec) > 0 && watchdog_usec > 0;
  const auto watchdog_every = std::chrono::milliseconds(std::max<uint64_t>(watchdog_usec / 2000, 1));
  auto next_watchdog = std::chrono::steady_clock::now();
  bool watchdog_withheld = false;
  std::size_t finished = 0;
  bool stop_sent = false;
  while (finished < workers.size()) {
    int timeout_ms = -1;
    if (watchdog) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= next_watchdog) {
        const Metrics::Report live = metrics.Liveness();
        if (live.ok) {
          sd_notify(0, "WATCHDOG=1");
          watchdog_withheld = false;
        } else if (!watchdog_withheld) {
          log->error("not feeding the systemd watchdog: {}", live.body);
          watchdog_withheld = true;
        }
        next_watchdog = now + watchdog_every;
      }
      timeout_ms = static_cast<int>(
          std::chrono::duration_cast<std::chrono::milliseconds>(next_watchdog - now).count() + 1);
    }
    pollfd fds[2] = {{signal_fd.get(), POLLIN, 0}, {done_fd.get(), POLLIN, 0}};
    if (::poll(fds, 2, timeout_ms) < 0) {
      if (errno == EINTR) continue;
      log->error("poll failed: {}; stopping", std::strerror(errno));
      if (!stop_sent) stop_all();
      stop_sent = true;
      for (auto& w : workers) {
        if (w->thread.joinable()) w->thread.join();
      }
      break;
    }
    if (fds[0].revents & POLLIN) {
      signalfd_siginfo info;
      while (::read(signal_fd.get(), &info, sizeof info) > 0) {
      }
      if (!stop_sent) {
        log->info("received a stop signal");
        stop_all();
        stop_sent = true;
      }
    }
    if (fds[1].revents & POLLIN) {
      uint64_t n = 0;
      if (::read(done_fd.get(), &n, sizeof n) == sizeof n) finished += n;
      // One source ended (failed for good, or stopped): stop the others too.
      if (!stop_sent && finished < workers.size()) {
        stop_all();
        stop_sent = true;
      }
    }
  }
  int rc = kExitOk;
  for (auto& w : workers) {
    if (w->thread.joinable()) w->thread.join();
    if (!w->result.ok()) {
      log->error("{}", w->result.message());
      if (rc == kExitOk) rc = ExitCodeFor(w->result);
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
  const char* slot_note = "-- replication slot left to `outboxd run`: with snapshot = \"initial\" it creates the "
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
