# shellcheck shell=bash
# Shell helpers shared by pg.sh and kafka.sh. Sourced, never executed.

harness_log() { printf '%s: %s\n' "${HARNESS_NAME:-harness}" "$*" >&2; }
harness_die() { harness_log "error: $*"; exit 1; }

# Seconds since the epoch with sub-second precision, for deadlines.
harness_now() { date +%s.%N; }
# harness_before DEADLINE: true while the current time is before DEADLINE.
harness_before() { awk -v now="$(harness_now)" -v end="$1" 'BEGIN { exit !(now < end) }'; }
# harness_deadline SECONDS: the time SECONDS from now.
harness_deadline() { awk -v now="$(harness_now)" -v s="$1" 'BEGIN { printf "%.3f", now + s }'; }
harness_elapsed() { awk -v now="$(harness_now)" -v t0="$1" 'BEGIN { printf "%.1f", now - t0 }'; }

# Prints a TCP port on 127.0.0.1 that nothing is bound to. Ports are drawn at
# random below the kernel's ephemeral range, so that a port stays free while a
# service is down for a fault test: outgoing connections never take it.
harness_free_port() {
  local low=15000 high=32000 eph_low p
  if read -r eph_low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null && ((eph_low > low + 1000)); then
    high=$eph_low
  fi
  for _ in $(seq 1 200); do
    p=$((low + (RANDOM * 32768 + RANDOM) % (high - low)))
    if harness_port_free "$p"; then
      echo "$p"
      return 0
    fi
  done
  harness_die "no free TCP port found in [$low, $high)"
}

# harness_port_free PORT: true when PORT can be bound on 127.0.0.1.
harness_port_free() {
  if command -v python3 >/dev/null 2>&1; then
    python3 - "$1" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
    return
  fi
  # Without python: a port nobody accepts connections on is taken as free.
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# harness_pid_alive PID: true when PID exists and is not a zombie.
harness_pid_alive() {
  [[ -n "${1:-}" ]] || return 1
  local state
  state=$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null) || return 1
  [[ -n "$state" && "$state" != Z ]]
}

# harness_wait_gone PID SECONDS: waits until PID has exited; false on timeout.
harness_wait_gone() {
  local end
  end=$(harness_deadline "$2")
  while harness_pid_alive "$1"; do
    harness_before "$end" || return 1
    sleep 0.1
  done
}
