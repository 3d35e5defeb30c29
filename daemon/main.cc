// outboxd: moves events out of PostgreSQL outbox tables into Apache Kafka.
//
//   outboxd run -c FILE              relay until SIGTERM/SIGINT
//   outboxd check-config -c FILE     validate the configuration file and exit
//   outboxd init -c FILE [--dry-run] create the [cdc] publication, slot and state table
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
#include <atomic>
#include <cerrno>
#include <cstring>
#include <functional>
#include <iostream>
#include <memory>
#include <thread>
#include <vector>

#include "cdc/cdc_relay.h"
#include "cdc/slot_status.h"
#include "common/logging.h"
#include "common/unique_fd.h"
#include "config/config.h"
#include "daemon/exit_codes.h"
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
  bool any_poll = false;
  for (const auto& t : config->outboxes) any_poll |= t.source == OutboxSource::kPoll;
  if (any_poll) {
    auto relay = OutboxRelay::Create(*config);
    if (!relay.ok()) {
      log->error("{}: {}", path, relay.status().message());
      return ExitCodeFor(relay.status());
    }
    poll_relay = std::move(relay).value();
    poll_relay->OnLifecycle([on_ready, on_stopping](OutboxRelay::Lifecycle l) {
      l == OutboxRelay::Lifecycle::kReady ? on_ready() : on_stopping();
    });
    auto w = std::make_unique<Worker>();
    w->name = "poll";
    w->run = [r = poll_relay.get()](int fd) { return r->Run(fd); };
    workers.push_back(std::move(w));
  }
  if (config->cdc) {
    auto relay = CdcRelay::Create(*config);
    if (!relay.ok()) {
      log->error("{}: {}", path, relay.status().message());
      return ExitCodeFor(relay.status());
    }
    cdc_relay = std::move(relay).value();
    cdc_relay->OnLifecycle([on_ready, on_stopping](CdcRelay::Lifecycle l) {
      l == CdcRelay::Lifecycle::kReady ? on_ready() : on_stopping();
    });
    auto w = std::make_unique<Worker>();
    w->name = "cdc";
    w->run = [r = cdc_relay.get()](int fd) { return r->Run(fd); };
    workers.push_back(std::move(w));
  }
  ready_left->store(static_cast<int>(workers.size()));

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
  std::size_t finished = 0;
  bool stop_sent = false;
  while (finished < workers.size()) {
    pollfd fds[2] = {{signal_fd.get(), POLLIN, 0}, {done_fd.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      log->error("poll failed: {}", std::strerror(errno));
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

// `outboxd init`: the [cdc] publication, slot and state table, created or
// (--dry-run) printed as SQL.
int Init(const std::string& path, bool dry_run) {
  auto config = LoadAndReport(path);
  if (!config.ok()) return ExitCodeFor(config.status());
  if (!config->cdc) {
    PrintError(path + ": has no [cdc] section; init creates the [cdc] publication, replication slot and state table");
    return kExitConfig;
  }
  const CdcConfig& cdc = *config->cdc;
  std::vector<std::string> tables;
  for (const auto& t : config->outboxes) {
    if (t.source == OutboxSource::kCdc) tables.push_back(t.table);
  }
  tables.insert(tables.end(), cdc.tables.begin(), cdc.tables.end());
  // With snapshot = "initial" the slot must be created by `run`, which reads
  // the tables with the snapshot the new slot exports.
  const bool slot_by_run = cdc.snapshot == SnapshotMode::kInitial;
  const char* slot_note = "-- replication slot left to `outboxd run`: with snapshot = \"initial\" it creates the "
                          "slot itself, to read the tables as of the slot's start";
  if (dry_run) {
    auto sql = InitSql(cdc.slot, cdc.publication, tables, cdc.state_table);
    if (!sql.ok()) {
      PrintError(path + ": " + sql.status().message());
      return ExitCodeFor(sql.status());
    }
    for (const std::string& s : *sql) {
      if (slot_by_run && s == CreateSlotSql(cdc.slot)) {
        std::cout << slot_note << "\n";
      } else {
        std::cout << s << ";\n";
      }
    }
    return kExitOk;
  }
  auto conn = PgConn::Connect(config->postgres.conninfo, config->postgres.password, "outboxd-init");
  if (!conn.ok()) {
    PrintError(conn.status().message());
    return ExitCodeFor(conn.status());
  }
  auto fail = [&](const Status& st) {
    PrintError(st.message());
    return ExitCodeFor(st);
  };
  auto created = conn->Exec(CreateStateTableSql(cdc.state_table));
  if (!created.ok()) return fail(created.status().Prefixed("could not create the state table"));
  auto recorded = ReadSlotState(*conn, cdc.state_table, cdc.slot);
  if (!recorded.ok()) return fail(recorded.status());
  auto slot = ReadSlotStatus(*conn, cdc.slot);
  if (!slot.ok()) return fail(slot.status());
  // A slot outboxd has streamed from is never created again behind its back.
  std::optional<Lsn> recorded_lsn;
  if (*recorded) recorded_lsn = (*recorded)->confirmed;
  Status st = CheckSlotAgainstState(cdc.slot, *slot, recorded_lsn, cdc.state_table);
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
  std::cout << path << ": publication \"" << cdc.publication << "\", replication slot \"" << cdc.slot
            << "\" and state table " << cdc.state_table << " are in place\n";
  return kExitOk;
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
  auto* init = app.add_subcommand(
      "init", "Create the [cdc] publication, replication slot and state table (or print their SQL)");
  init->add_option("-c,--config", config_path, "Configuration file (TOML)")->required();
  init->add_flag("--dry-run", dry_run, "Print the SQL instead of running it, for a DBA to apply");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? outboxd::kExitOk : outboxd::kExitUsage;
  }
  if (run->parsed()) return outboxd::Run(config_path);
  if (check->parsed()) return outboxd::CheckConfig(config_path);
  if (init->parsed()) return outboxd::Init(config_path, dry_run);
  return outboxd::kExitUsage;
}
