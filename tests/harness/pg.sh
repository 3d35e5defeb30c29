#!/usr/bin/env bash
# Runs a throwaway PostgreSQL server for outboxd's tests (and by hand).
#
#   pg.sh start DIR [--fresh]   initdb + start in DIR, or start again the server
#                               DIR already has (same port, same data); with
#                               --fresh, whatever DIR held is removed first
#   pg.sh stop DIR              stop the server and remove its data (idempotent)
#   pg.sh stop-keep DIR         stop the server, keep data and port
#   pg.sh restart DIR           stop-keep + start (same port, same data)
#   pg.sh status DIR            exit 0 when the server is running
#
# The server listens on 127.0.0.1 on a free port, trusts every local and
# 127.0.0.1 connection (replication too), has wal_level=logical, and its
# superuser is "postgres". DIR/pg.env gets PGHOST, PGPORT, PGUSER, PGDATABASE
# (`set -a; . DIR/pg.env` makes psql use it). Started as root, the server runs
# as the unprivileged user $OUTBOXD_PG_USER (default nobody), since PostgreSQL
# refuses to run as root; otherwise as the current user.
#
# Environment: PG_BINDIR (default: newest /usr/lib/postgresql/*/bin, else the
# PATH), OUTBOXD_PG_START_TIMEOUT (seconds, default 60).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
# shellcheck disable=SC2034 # used by common.sh
HARNESS_NAME=pg.sh
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() { echo "usage: $0 start|stop|stop-keep|restart|status DIR [--fresh] [--tls CERTDIR]" >&2; exit 64; }
(($# >= 2)) || usage
cmd=$1
dir=$2
shift 2
fresh=0
tls_dir=
while (($# > 0)); do
  case "$1" in
    --fresh) fresh=1 ;;
    --tls) (($# >= 2)) || usage; tls_dir=$(cd "$2" && pwd); shift ;;
    *) usage ;;
  esac
  shift
done

unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGDATA PGOPTIONS PGSERVICE PGPASSWORD
start_timeout=${OUTBOXD_PG_START_TIMEOUT:-60}
if [[ ! -d "$dir" ]]; then
  case "$cmd" in
    stop | stop-keep) exit 0 ;;  # nothing was ever started there
    status) echo "not running"; exit 3 ;;
  esac
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
state_file=$dir/pg.state
env_file=$dir/pg.env

find_bindir() {
  if [[ -n "${PG_BINDIR:-}" ]]; then
    echo "$PG_BINDIR"
    return
  fi
  local newest
  newest=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  if [[ -n "$newest" && -x "$newest/initdb" ]]; then
    echo "$newest"
  elif command -v initdb >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
  else
    harness_die "no PostgreSQL server binaries (initdb) found; set PG_BINDIR"
  fi
}

# The user the server runs as, and how to run a command as that user.
if ((EUID == 0)); then
  run_user=${OUTBOXD_PG_USER:-nobody}
  run_uid=$(id -u "$run_user") || harness_die "no user $run_user to run PostgreSQL as"
  run_gid=$(id -g "$run_user")
  as_owner() { setpriv --reuid="$run_uid" --regid="$run_gid" --clear-groups -- "$@"; }
else
  run_uid=$EUID
  run_gid=$(id -g)
  as_owner() { "$@"; }
fi

# State of an instance: PG_RUN_DIR (data/, postgres.log), PG_SOCKET_DIR,
# PG_PORT, PG_BINDIR.
PG_RUN_DIR='' PG_SOCKET_DIR='' PG_PORT='' PG_BINDIR_USED=''
load_state() {
  [[ -f "$state_file" ]] || return 1
  # shellcheck disable=SC1090
  . "$state_file"
  [[ -n "$PG_RUN_DIR" && -n "$PG_PORT" && -n "$PG_BINDIR_USED" ]]
}
save_state() {
  cat >"$state_file.tmp" <<EOF
PG_RUN_DIR='$PG_RUN_DIR'
PG_SOCKET_DIR='$PG_SOCKET_DIR'
PG_PORT='$PG_PORT'
PG_BINDIR_USED='$PG_BINDIR_USED'
EOF
  mv "$state_file.tmp" "$state_file"
}
write_env() {
  cat >"$env_file.tmp" <<EOF
PGHOST=127.0.0.1
PGPORT=$PG_PORT
PGUSER=postgres
PGDATABASE=postgres
EOF
  mv "$env_file.tmp" "$env_file"
}

postmaster_pid() { head -n 1 "$PG_RUN_DIR/data/postmaster.pid" 2>/dev/null || true; }
running() { harness_pid_alive "$(postmaster_pid)"; }

# A directory the server's user can write to: DIR itself when that user can
# reach it, else a private directory under /tmp (e.g. a build tree in /root).
choose_run_dir() {
  if ((EUID == 0)); then
    chown "$run_uid:$run_gid" "$dir"
    if as_owner test -w "$dir" -a -x "$dir"; then
      echo "$dir"
    else
      local tmp
      tmp=$(mktemp -d /tmp/outboxd-pg.XXXXXX)
      chown "$run_uid:$run_gid" "$tmp"
      echo "$tmp"
    fi
  else
    echo "$dir"
  fi
}

# Unix socket paths are limited to 107 bytes.
choose_socket_dir() {
  if ((${#PG_RUN_DIR} <= 80)); then
    echo "$PG_RUN_DIR"
  else
    local tmp
    tmp=$(mktemp -d /tmp/outboxd-pgsock.XXXXXX)
    ((EUID != 0)) || chown "$run_uid:$run_gid" "$tmp"
    echo "$tmp"
  fi
}

write_config() {
  local data=$PG_RUN_DIR/data
  cat >>"$data/postgresql.conf" <<EOF

# --- outboxd test harness ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCKET_DIR'
max_connections = 200
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
wal_sender_timeout = 60s
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 128MB
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
log_min_messages = warning
EOF
  cat >"$data/pg_hba.conf" <<EOF
# outboxd test harness: trust everything local.
local   all          all                  trust
host    all          all   127.0.0.1/32   trust
local   replication  all                  trust
host    replication  all   127.0.0.1/32   trust
EOF
}

# --tls CERTDIR (certs.sh's files): ssl = on with server.crt/.key and
# ca.crt copied into the data directory, and two roles' connections must
# use TLS: outboxd_scram with a SCRAM password, outboxd_cert with a client
# certificate (CN=outboxd_cert). Everyone else is still trusted, with or
# without TLS. The tests create the roles.
write_tls_config() {
  local data=$PG_RUN_DIR/data f
  for f in server.crt server.key ca.crt; do
    install -m 0600 -o "$run_uid" -g "$run_gid" "$tls_dir/$f" "$data/$f"
  done
  cat >>"$data/postgresql.conf" <<EOF
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_ca_file = 'ca.crt'
password_encryption = 'scram-sha-256'
EOF
  local trust
  trust=$(cat "$data/pg_hba.conf")
  cat >"$data/pg_hba.conf" <<EOF
# outboxd test harness (--tls): these roles only over TLS.
hostssl all          outboxd_scram               127.0.0.1/32   scram-sha-256
hostssl replication  outboxd_scram               127.0.0.1/32   scram-sha-256
hostssl all          outboxd_cert                127.0.0.1/32   cert
hostssl replication  outboxd_cert                127.0.0.1/32   cert
host    all          outboxd_scram,outboxd_cert  127.0.0.1/32   reject
host    replication  outboxd_scram,outboxd_cert  127.0.0.1/32   reject
$trust
EOF
}

# Starts the server from PG_RUN_DIR/data and waits until it accepts TCP
# connections. Returns 2 when the port was taken, 1 on any other failure.
start_server() {
  local data=$PG_RUN_DIR/data log=$PG_RUN_DIR/postgres.log
  (cd "$PG_RUN_DIR" && as_owner touch "$log")
  local log_offset
  log_offset=$(stat -c %s "$log")
  if ! (cd "$PG_RUN_DIR" && as_owner "$PG_BINDIR_USED/pg_ctl" -D "$data" -l "$log" -w -t "$start_timeout" start) \
      >"$PG_RUN_DIR/pg_ctl.out" 2>&1; then
    if tail -c +"$((log_offset + 1))" "$log" | grep -q "could not bind\|Address already in use"; then
      return 2
    fi
    harness_log "PostgreSQL did not start; pg_ctl said:"
    cat "$PG_RUN_DIR/pg_ctl.out" >&2 || true
    harness_log "server log ($log):"
    tail -c +"$((log_offset + 1))" "$log" | tail -n 30 >&2 || true
    return 1
  fi
  local end
  end=$(harness_deadline "$start_timeout")
  until "$PG_BINDIR_USED/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres; do
    if ! running || ! harness_before "$end"; then
      harness_log "PostgreSQL is not accepting connections on 127.0.0.1:$PG_PORT"
      tail -n 30 "$log" >&2 || true
      return 1
    fi
    sleep 0.1
  done
}

do_start() {
  local t0
  t0=$(harness_now)
  if load_state && [[ -f "$PG_RUN_DIR/data/PG_VERSION" ]]; then
    if running; then
      write_env
      harness_log "already running on 127.0.0.1:$PG_PORT"
      return 0
    fi
    # Same data and port as before (restart, or a start after stop-keep).
    start_server || { do_stop 1; exit 1; }
    write_env
    harness_log "started again on 127.0.0.1:$PG_PORT in $(harness_elapsed "$t0")s"
    return 0
  fi

  rm -f "$state_file" "$env_file"
  PG_BINDIR_USED=$(find_bindir)
  PG_RUN_DIR=$(choose_run_dir)
  PG_SOCKET_DIR=$(choose_socket_dir)
  PG_PORT=$(harness_free_port)
  save_state
  rm -rf "$PG_RUN_DIR/data"
  if ! (cd "$PG_RUN_DIR" && as_owner "$PG_BINDIR_USED/initdb" -D "$PG_RUN_DIR/data" -U postgres -A trust \
      -E UTF8 --locale=C --no-sync >"$PG_RUN_DIR/initdb.log" 2>&1); then
    harness_log "initdb failed:"
    cat "$PG_RUN_DIR/initdb.log" >&2 || true
    do_stop 0
    exit 1
  fi
  write_config
  [[ -z "$tls_dir" ]] || write_tls_config
  local attempt rc
  for attempt in 1 2 3; do
    rc=0
    start_server || rc=$?
    ((rc == 2)) || break
    # Someone took the port between the check and the bind: take another.
    PG_PORT=$(harness_free_port)
    save_state
    sed -i "s/^port = .*/port = $PG_PORT/" "$PG_RUN_DIR/data/postgresql.conf"
    harness_log "port taken, retrying on $PG_PORT (attempt $attempt)"
  done
  if ((rc != 0)); then
    do_stop 0
    exit 1
  fi
  write_env
  harness_log "PostgreSQL $("$PG_BINDIR_USED/postgres" -V | awk '{print $3}') ready on 127.0.0.1:$PG_PORT in $(harness_elapsed "$t0")s (data in $PG_RUN_DIR/data)"
}

# do_stop KEEP: stops the server (fast, then immediate, then SIGKILL); unless
# KEEP, removes everything the instance had. Never fails.
do_stop() {
  local keep=$1
  load_state || {
    rm -f "$env_file" "$state_file"
    return 0
  }
  local data=$PG_RUN_DIR/data pid
  pid=$(postmaster_pid)
  if harness_pid_alive "$pid"; then
    (cd "$PG_RUN_DIR" && as_owner "$PG_BINDIR_USED/pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null 2>&1) ||
      (cd "$PG_RUN_DIR" && as_owner "$PG_BINDIR_USED/pg_ctl" -D "$data" -m immediate -w -t 10 stop >/dev/null 2>&1) ||
      true
    if harness_pid_alive "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
      harness_wait_gone "$pid" 10 || harness_log "warning: postmaster $pid did not exit"
    fi
  fi
  if ((keep)); then
    rm -f "$env_file"
    return 0
  fi
  rm -rf "$data" "$PG_RUN_DIR/postgres.log" "$PG_RUN_DIR/pg_ctl.out" "$PG_RUN_DIR/initdb.log"
  [[ "$PG_RUN_DIR" == "$dir" ]] || rm -rf "$PG_RUN_DIR"
  [[ -z "$PG_SOCKET_DIR" || "$PG_SOCKET_DIR" == "$PG_RUN_DIR" ]] || rm -rf "$PG_SOCKET_DIR"
  rm -f "$env_file" "$state_file"
}

cd "$dir"
case "$cmd" in
  start)
    ((fresh == 0)) || do_stop 0
    do_start
    ;;
  stop) do_stop 0 ;;
  stop-keep) do_stop 1 ;;
  restart)
    do_stop 1
    do_start
    ;;
  status)
    if load_state && running; then
      echo "running on 127.0.0.1:$PG_PORT"
    else
      echo "not running"
      exit 3
    fi
    ;;
  *) usage ;;
esac
