#!/usr/bin/env bash
# Installs an official CloudEvents SDK for the interop tests' consumers
# (cloudevents_read.py and cloudevents_read.js beside this script) once, and
# prints, as its last line, what a consumer needs to use it:
#
#   cloudevents-sdk.sh [python]   the path of a Python interpreter with PyPI
#                                 "cloudevents" (in a virtual environment)
#   cloudevents-sdk.sh javascript the node_modules directory holding npm
#                                 "cloudevents", for NODE_PATH
#
# Both are pinned below and cached under
# ${OUTBOXD_CACHE_DIR:-$HOME/.cache/outboxd}/cloudevents-{sdk,js}-VERSION;
# later runs reuse them. Needs Debian's python3 and python3-venv, and Node.js
# with npm (scripts/install-deps.sh).
set -euo pipefail
language=${1:-python}
python_version=2.2.0
javascript_version=8.0.3  # the newest that supports Node.js 18 (Debian 12) and 20
cache_root=${OUTBOXD_CACHE_DIR:-${HOME:-/tmp}/.cache/outboxd}

# Builds into a fresh directory beside $1 with the command given after it,
# then moves it into place, so that tests running at once never see a
# half-installed one.
install_aside() {
  local target=$1
  shift
  mkdir -p "$(dirname "$target")"
  rm -rf "$target"
  work=$(mktemp -d "$target.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  "$@" "$work"
  mv -T "$work" "$target" 2>/dev/null || true  # another run may have won
}

case $language in
  python)
    cache_dir=$cache_root/cloudevents-sdk-$python_version
    python=$cache_dir/bin/python3
    ready() { [[ -x $python ]] && "$python" -c 'import cloudevents.core.bindings.kafka' 2>/dev/null; }
    install() {
      # Debian's interpreter, not whatever python3 comes first on PATH. A
      # venv's interpreter finds its packages where the venv is: the moved
      # one works.
      /usr/bin/python3 -m venv "$1" >&2
      "$1/bin/python3" -m pip install --quiet --disable-pip-version-check "cloudevents==$python_version" >&2
    }
    ready || install_aside "$cache_dir" install
    "$python" -c 'import cloudevents.core.bindings.kafka'
    echo "$python"
    ;;
  javascript)
    cache_dir=$cache_root/cloudevents-js-$javascript_version
    modules=$cache_dir/node_modules
    ready() { NODE_PATH=$modules node -e 'require("cloudevents").Kafka.toEvent' 2>/dev/null; }
    install() {
      npm install --prefix "$1" --no-audit --no-fund --no-save --loglevel=error \
        "cloudevents@$javascript_version" >&2
    }
    ready || install_aside "$cache_dir" install
    NODE_PATH=$modules node -e 'require("cloudevents").Kafka.toEvent'
    echo "$modules"
    ;;
  *)
    echo "cloudevents-sdk.sh: unknown language \"$language\" (python or javascript)" >&2
    exit 2
    ;;
esac
