// outboxd: moves events out of PostgreSQL outbox tables into Apache Kafka.
//
//   outboxd run -c FILE           relay until SIGTERM/SIGINT
//   outboxd check-config -c FILE  validate the configuration file and exit
//   outboxd --version

#include <signal.h>
#include <sys/signalfd.h>
#include <systemd/sd-daemon.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstring>
#include <iostream>

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
            << (config->outboxes.size() == 1 ? "" : "s") << ")\n";
  return kExitOk;
}

int Run(const std::string& path) {
  // Block the stop signals before librdkafka starts its threads, so that only
  // the main loop sees them, through a signalfd it polls with everything else.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  if (sigprocmask(SIG_BLOCK, &stop_signals, nullptr) != 0) {
    std::cerr << "outboxd: sigprocmask: " << std::strerror(errno) << "\n";
    return kExitSoftware;
  }
  UniqueFd stop_fd(signalfd(-1, &stop_signals, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!stop_fd.valid()) {
    std::cerr << "outboxd: signalfd: " << std::strerror(errno) << "\n";
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
  auto relay = OutboxRelay::Create(*config);
  if (!relay.ok()) {
    log->error("{}: {}", path, relay.status().message());
    return ExitCodeFor(relay.status());
  }
  // Type=notify: READY=1 once PostgreSQL is reached and every table checked.
  (*relay)->OnLifecycle([](OutboxRelay::Lifecycle l) {
    if (l == OutboxRelay::Lifecycle::kReady) {
      sd_notify(0, "READY=1\nSTATUS=relaying");
    } else {
      sd_notify(0, "STOPPING=1\nSTATUS=waiting for deliveries in flight");
    }
  });
  st = (*relay)->Run(stop_fd.get());
  if (!st.ok()) {
    log->error("{}", st.message());
    return ExitCodeFor(st);
  }
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

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? outboxd::kExitOk : outboxd::kExitUsage;
  }
  if (run->parsed()) return outboxd::Run(config_path);
  if (check->parsed()) return outboxd::CheckConfig(config_path);
  return outboxd::kExitUsage;
}
