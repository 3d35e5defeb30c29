#!/usr/bin/env bash
# ctest cleanup fixture: stops the shared instance of a service and every
# private instance that ServiceControl (test_env.h) started under the harness
# directory and a crashed test left behind. Never fails.
#
#   cleanup.sh pg|kafka HARNESS_DIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
(($# == 2)) || { echo "usage: $0 pg|kafka HARNESS_DIR" >&2; exit 64; }
service=$1
root=$2
case "$service" in
  pg) script=$here/pg.sh ;;
  kafka) script=$here/kafka.sh ;;
  *) echo "usage: $0 pg|kafka HARNESS_DIR" >&2; exit 64 ;;
esac
"$script" stop "$root/$service" || true
for d in "$root"/private/*/"$service"; do
  [[ -d "$d" ]] || continue
  echo "cleanup.sh: stopping leftover private instance $d" >&2
  "$script" stop "$d" || true
  rmdir "$d" "$(dirname "$d")" 2>/dev/null || true
done
