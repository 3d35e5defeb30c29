#!/usr/bin/env bash
# Installs every Debian package outboxd needs to build, test and run the demo.
# The README, .ci/run and the Dockerfile's build stage all call this script, so
# this is the one list. Usage: scripts/install-deps.sh [build|runtime|all]
set -euo pipefail

what="${1:-all}"

build_pkgs=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  libpq-dev librdkafka-dev libtomlplusplus-dev prometheus-cpp-dev
  libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev libsystemd-dev
  libssl-dev   # the [http] listener's TLS and basic authentication
  libgtest-dev libgmock-dev
  dpkg-dev file   # scripts/package.sh: CPack's Depends (dpkg-shlibdeps, which needs file)
)
# Real services and clients the tests and the demo talk to.
test_pkgs=(
  postgresql postgresql-client kcat maven openjdk-17-jre-headless
  procps util-linux iproute2 python3
  python3-venv   # the CloudEvents SDK (PyPI) for the interop tests, in a venv
  nodejs   # the CloudEvents JavaScript SDK (npm) for the interop tests; npm below
  curl prometheus   # the metrics test scrapes /metrics and runs promtool (the service is not started)
  openssl   # tests/harness/certs.sh makes the TLS tests' certificates
  clang-14 libclang-rt-14-dev   # libFuzzer targets (tests/fuzz), ThreadSanitizer builds (--tsan)
  clang-format-14 clang-tidy-14  # scripts/lint.sh
  lintian groff-base man-db   # the Debian package's checks (tests/integration/deb_package_test.cc)
  podman debootstrap   # the container image: built and run by tests/integration/image_test.cc
  python3-yaml   # tests/integration/deploy_test.cc parses deploy/'s YAML
)

case "$what" in
  build) pkgs=("${build_pkgs[@]}") ;;
  all) pkgs=("${build_pkgs[@]}" "${test_pkgs[@]}") ;;
  *) echo "usage: $0 [build|all]" >&2; exit 64 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm: Debian's package, unless a Node.js that brings its own (as
# NodeSource's nodejs does, which Debian's npm would conflict with) has it.
if [[ $what == all ]] && ! command -v npm >/dev/null 2>&1; then missing+=(npm); fi
if ((${#missing[@]})); then
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -q
  # Only promtool is wanted from the prometheus package: keep its service
  # from starting (a policy-rc.d that refuses it, unless the system already
  # has one, as containers do) and from starting at boot.
  policy=/usr/sbin/policy-rc.d
  own_policy=false
  if [[ " ${missing[*]} " == *" prometheus "* && ! -e $policy ]]; then
    printf '#!/bin/sh\nfor a; do [ "$a" = prometheus ] && exit 101; done\nexit 0\n' |
      "${sudo_cmd[@]}" tee "$policy" >/dev/null
    "${sudo_cmd[@]}" chmod 755 "$policy"
    own_policy=true
  fi
  status=0
  "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" || status=$?
  if $own_policy; then
    "${sudo_cmd[@]}" rm -f "$policy"
    if [[ -d /run/systemd/system ]]; then
      "${sudo_cmd[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    fi
  fi
  exit "$status"
fi
