#!/usr/bin/env bash
# Prints the path of a Python interpreter that has the official CloudEvents
# Python SDK (PyPI "cloudevents", pinned below), for the interop tests'
# consumer (cloudevents_read.py beside this script). The SDK is installed
# from PyPI into a virtual environment under
# ${OUTBOXD_CACHE_DIR:-$HOME/.cache/outboxd}/cloudevents-sdk-VERSION once;
# later runs reuse it. Needs Debian's python3 and python3-venv
# (scripts/install-deps.sh).
set -euo pipefail
version=2.2.0
cache_dir=${OUTBOXD_CACHE_DIR:-${HOME:-/tmp}/.cache/outboxd}/cloudevents-sdk-$version
python=$cache_dir/bin/python3
if [[ -x $python ]] && "$python" -c 'import cloudevents.core.bindings.kafka' 2>/dev/null; then
  echo "$python"
  exit 0
fi
mkdir -p "$(dirname "$cache_dir")"
rm -rf "$cache_dir"
# Built aside and moved in place, so that tests running at once never see a
# half-installed one (a venv's interpreter finds its packages where it is).
work=$(mktemp -d "$cache_dir.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Debian's interpreter, not whatever python3 comes first on PATH.
/usr/bin/python3 -m venv "$work" >&2
"$work/bin/python3" -m pip install --quiet --disable-pip-version-check "cloudevents==$version" >&2
mv -T "$work" "$cache_dir" 2>/dev/null || true  # another run may have won
"$python" -c 'import cloudevents.core.bindings.kafka'
echo "$python"
