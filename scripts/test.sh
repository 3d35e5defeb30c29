#!/usr/bin/env bash
# Runs outboxd's whole test suite: installs what it needs, builds, and runs
# ctest, which itself starts a real PostgreSQL and a real Kafka broker (KRaft)
# for the tests and stops them afterwards.
#
#   scripts/test.sh              build in build/ and run every test
#   scripts/test.sh --sanitize   the same under ASan + UBSan, in build-asan/
#   scripts/test.sh -- ARGS      extra arguments for ctest (e.g. -R router)
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=build
cmake_args=(-DOUTBOXD_WERROR=ON)
ctest_args=()
while (($#)); do
  case "$1" in
    --sanitize) build_dir=build-asan; cmake_args+=(-DOUTBOXD_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug) ;;
    --) shift; ctest_args=("$@"); break ;;
    *) echo "usage: $0 [--sanitize] [-- ctest args]" >&2; exit 64 ;;
  esac
  shift
done

scripts/install-deps.sh all
cmake -S . -B "$build_dir" -G Ninja "${cmake_args[@]}"
cmake --build "$build_dir" -j"$(nproc)"
cd "$build_dir"
exec ctest --output-on-failure --timeout 900 "${ctest_args[@]}"
