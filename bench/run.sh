#!/usr/bin/env bash
# Runs outboxd's benchmark in one command:
#
#   bench/run.sh [BENCH OPTIONS]       e.g. bench/run.sh --events 500000 --scenario throughput
#
# Without --scenario it runs all four scenarios: poll mode (throughput,
# latency) and cdc mode (cdc-throughput, cdc-latency); --scenario poll or
# --scenario cdc picks one mode (bench/README.md).
#
# builds outboxd and outboxd_bench (cmake -S . -B build -G Ninja), starts a
# throwaway PostgreSQL and a single-node Kafka broker with tests/harness/pg.sh
# and kafka.sh in a temporary directory, runs build/bench/outboxd_bench with
# OUTBOXD_HARNESS_DIR pointing there (BENCH OPTIONS are passed through; see
# `build/bench/outboxd_bench --help`), and stops and removes both services on
# exit, also after a failure or Ctrl-C. Exits with the bench's exit code.
#
# Environment: OUTBOXD_BENCH_BUILD_DIR (default: build), and whatever pg.sh
# and kafka.sh read (PG_BINDIR, JAVA_HOME, OUTBOXD_CACHE_DIR, ...). The first
# Kafka start on a machine fetches the broker's jars with Maven.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${OUTBOXD_BENCH_BUILD_DIR:-$root/build}
harness=$root/tests/harness
log() { printf 'run.sh: %s\n' "$*" >&2; }

cd "$root"
log "building outboxd and outboxd_bench in $build"
cmake -S . -B "$build" -G Ninja -DOUTBOXD_BUILD_TESTS=ON >/dev/null
cmake --build "$build" --target outboxd outboxd_bench

dir=$(mktemp -d "${TMPDIR:-/tmp}/outboxd-bench.XXXXXX")
# Run as root, pg.sh runs the server as an unprivileged user, who must be
# able to reach the directory.
chmod 755 "$dir"
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  log "stopping the services"
  bash "$harness/kafka.sh" stop "$dir/kafka" || true
  bash "$harness/pg.sh" stop "$dir/pg" || true
  rm -rf "$dir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bash "$harness/pg.sh" start "$dir/pg"
bash "$harness/kafka.sh" start "$dir/kafka"

OUTBOXD_HARNESS_DIR=$dir "$build/bench/outboxd_bench" "$@"
