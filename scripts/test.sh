#!/usr/bin/env bash
# Runs outboxd's whole test suite: installs what it needs, checks the code
# (scripts/lint.sh), runs the ThreadSanitizer pass, builds, and runs ctest,
# which itself starts a real PostgreSQL and a real Kafka broker (KRaft) for
# the tests and stops them afterwards. The run ends with ctest's summary.
#
#   scripts/test.sh              lint, the TSan pass, then every test (what CI runs)
#   scripts/test.sh --sanitize   every test under ASan + UBSan, in build-asan/
#   scripts/test.sh --tsan       the TSan pass only: unit tests and the tests
#                                labelled tsan (sources, HTTP listener and
#                                metrics in one process), in build-tsan/
#   scripts/test.sh -- ARGS      build/ and ctest ARGS only (e.g. -R router)
set -euo pipefail
cd "$(dirname "$0")/.."

mode=all
ctest_args=()
while (($#)); do
  case "$1" in
    --sanitize) mode=asan ;;
    --tsan) mode=tsan ;;
    --) shift; ctest_args=("$@"); mode=args; break ;;
    *) echo "usage: $0 [--sanitize|--tsan] [-- ctest args]" >&2; exit 64 ;;
  esac
  shift
done

jobs=$(nproc)
ctest_cmd=(ctest --output-on-failure --timeout 900)

# The tests of the TSan pass: every unit test, and the end-to-end tests that
# run both sources, the HTTP listener and the metrics together (label tsan).
tsan_pass() {
  local root=$PWD
  cmake -S . -B build-tsan -G Ninja -DOUTBOXD_WERROR=ON -DOUTBOXD_TSAN=ON >/dev/null
  cmake --build build-tsan -j"$jobs" --target tsan_pass_tests
  # halt_on_error: a race ends the process, so its test fails. The
  # suppressions cover librdkafka's own uninstrumented internals only.
  (cd build-tsan &&
    TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$root/tests/tsan.supp ${TSAN_OPTIONS:-}" \
    "${ctest_cmd[@]}" -j"$jobs" -L 'unit|tsan')
}

scripts/install-deps.sh all
case "$mode" in
  asan)
    cmake -S . -B build-asan -G Ninja -DOUTBOXD_WERROR=ON -DOUTBOXD_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
    cmake --build build-asan -j"$jobs"
    cd build-asan
    exec "${ctest_cmd[@]}"
    ;;
  tsan)
    tsan_pass
    exit
    ;;
esac

cmake -S . -B build -G Ninja -DOUTBOXD_WERROR=ON
if [[ $mode == all ]]; then
  OUTBOXD_LINT_BUILD_DIR=build scripts/lint.sh
  tsan_pass
fi
cmake --build build -j"$jobs"
cd build
if [[ $mode == all ]]; then
  # The tests use their own databases, topics and slots: two at a time.
  exec "${ctest_cmd[@]}" -j"$jobs"
fi
exec "${ctest_cmd[@]}" "${ctest_args[@]}"
