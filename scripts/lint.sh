#!/usr/bin/env bash
# Checks outboxd's C++ sources against .clang-format (clang-format-14, every
# tracked .cc/.h) and .clang-tidy (clang-tidy-14, every translation unit of a
# configured build tree), in check mode: prints the findings and exits 1.
#
#   scripts/lint.sh            format and tidy: every source, tests and bench included
#   scripts/lint.sh --daemon   tidy only the daemon's sources (common config
#                              pipeline relay cdc daemon): a few minutes quicker
#   scripts/lint.sh --fix      reformat in place instead of checking the format
#
# Environment: OUTBOXD_LINT_BUILD_DIR, the build tree whose
# compile_commands.json clang-tidy reads (default: build; configured if it is
# not). The tools come from scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

tidy_dirs="common|config|pipeline|relay|cdc|daemon|tests|bench"
fix=0
while (($#)); do
  case "$1" in
    --daemon) tidy_dirs="common|config|pipeline|relay|cdc|daemon" ;;
    --fix) fix=1 ;;
    *) echo "usage: $0 [--daemon] [--fix]" >&2; exit 64 ;;
  esac
  shift
done

for tool in clang-format-14 clang-tidy-14 run-clang-tidy-14; do
  command -v "$tool" >/dev/null || { echo "lint.sh: $tool is missing (scripts/install-deps.sh all)" >&2; exit 69; }
done

mapfile -t sources < <(git ls-files '*.cc' '*.h')
status=0
if ((fix)); then
  clang-format-14 -i "${sources[@]}"
else
  echo "lint.sh: clang-format on ${#sources[@]} files"
  clang-format-14 --dry-run --Werror "${sources[@]}" || status=1
fi

build=${OUTBOXD_LINT_BUILD_DIR:-build}
if [[ ! -f "$build/compile_commands.json" ]]; then
  cmake -S . -B "$build" -G Ninja >/dev/null
fi
echo "lint.sh: clang-tidy on the translation units under ${tidy_dirs//|/, }"
out=$(mktemp)
run-clang-tidy-14 -p "$build" -quiet -j "$(nproc)" "^$root/($tidy_dirs)/" >"$out" 2>&1 || status=1
# Only the findings: run-clang-tidy also prints each command and a count of
# the (suppressed) warnings of system headers.
grep -E "(error|warning):" "$out" | sed 's/\x1b\[[0-9;]*m//g' || true
rm -f "$out"
if ((status)); then
  echo "lint.sh: findings above" >&2
else
  echo "lint.sh: clean"
fi
exit "$status"
