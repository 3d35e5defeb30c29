#!/usr/bin/env bash
# outboxd end to end, in one command: installs the dependencies, builds,
# starts a throwaway PostgreSQL and Kafka, creates an outbox table, runs
# outboxd against them, inserts sample events, shows them arriving in Kafka
# and stops everything again.
#
#   scripts/demo.sh          run the demo, then stop and remove everything
#   scripts/demo.sh --cdc    the same through logical replication: row changes
#                            of a table and a pg_logical_emit_message event
#   scripts/demo.sh --keep   leave PostgreSQL, Kafka and outboxd running and
#                            print how to reach them (with or without --cdc)
#
# Both end with the highlights of outboxd's /metrics (events published, lag).
#
# Environment: DEMO_DIR (default: a new temporary directory) holds the
# servers' data, outboxd's configuration and its log. Runs as root or as a
# user who can sudo (only to install packages).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

keep=0
mode=poll
for arg in "$@"; do
  case "$arg" in
    --keep) keep=1 ;;
    --cdc) mode=cdc ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--cdc] [--keep]" >&2; exit 64 ;;
  esac
done

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

# True while PID exists and has not exited (a zombie counts as exited).
alive() {
  local state
  state=$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null) || return 1
  [[ -n "$state" && "$state" != Z ]]
}

step "Installing dependencies (scripts/install-deps.sh all)"
scripts/install-deps.sh all

step "Building outboxd (cmake, Ninja, build/)"
cmake -S . -B build -G Ninja >/dev/null
cmake --build build --target outboxd -j"$(nproc)"
outboxd=$repo/build/daemon/outboxd

own_dir=0
if [[ -z "${DEMO_DIR:-}" ]]; then
  DEMO_DIR=$(mktemp -d "${TMPDIR:-/tmp}/outboxd-demo.XXXXXX")
  own_dir=1
fi
mkdir -p "$DEMO_DIR"
DEMO_DIR=$(cd "$DEMO_DIR" && pwd)
config=$DEMO_DIR/outboxd.toml
log=$DEMO_DIR/outboxd.log
outboxd_pid=''
succeeded=0

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((keep && succeeded)); then
    return "$rc"
  fi
  if ((rc != 0)) && [[ -f "$log" ]]; then
    printf '\ndemo: failed; the last lines of %s:\n' "$log" >&2
    tail -n 20 "$log" >&2 || true
  fi
  if [[ -n "$outboxd_pid" ]] && alive "$outboxd_pid"; then
    kill -TERM "$outboxd_pid" 2>/dev/null || true
    wait "$outboxd_pid" 2>/dev/null || true
  fi
  if ((keep)); then
    printf 'demo: --keep: PostgreSQL and Kafka are left running in %s\n' "$DEMO_DIR" >&2
    return "$rc"
  fi
  tests/harness/kafka.sh stop "$DEMO_DIR/kafka" || true
  tests/harness/pg.sh stop "$DEMO_DIR/pg" || true
  # Remove only what this script made: DEMO_DIR may be a directory of the user's.
  if ((own_dir)); then
    rm -rf "$DEMO_DIR"
  else
    rm -rf "$DEMO_DIR/pg" "$DEMO_DIR/kafka" "$config" "$log"
  fi
  return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "Starting PostgreSQL and Kafka in $DEMO_DIR"
tests/harness/pg.sh start "$DEMO_DIR/pg"
tests/harness/kafka.sh start "$DEMO_DIR/kafka"
set -a
# shellcheck disable=SC1091
. "$DEMO_DIR/pg/pg.env"
# shellcheck disable=SC1091
. "$DEMO_DIR/kafka/kafka.env"
set +a
psql() { command psql -X -q -v ON_ERROR_STOP=1 "$@"; }

setup_poll() {
step "Creating database demo: the outbox table and its NOTIFY trigger"
psql -d postgres -c 'CREATE DATABASE demo'
psql -d demo <<'SQL'
CREATE TABLE public.outbox (
  seq           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  id            uuid        NOT NULL DEFAULT gen_random_uuid(),
  aggregatetype text        NOT NULL,
  aggregateid   text        NOT NULL,
  type          text        NOT NULL,
  payload       jsonb,
  created_at    timestamptz NOT NULL DEFAULT now()
);

-- Wakes outboxd at commit instead of at its next poll.
CREATE FUNCTION public.outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('outbox', '');
  RETURN NULL;
END
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON public.outbox
  FOR EACH STATEMENT EXECUTE FUNCTION public.outbox_notify();
SQL
psql -d demo -c '\d public.outbox'

}

config_poll() {
cat <<'EOF'
[[outbox]]
table = "public.outbox"          # Debezium defaults for every column
headers = { type = "type" }
timestamp = "created_at"
notify_channel = "outbox"
EOF
}

setup_cdc() {
step "Creating database demo: a table to capture"
psql -d postgres -c 'CREATE DATABASE demo'
psql -d demo <<'SQL'
CREATE TABLE public.orders (
  id       int PRIMARY KEY,
  customer text NOT NULL,
  total    numeric(10, 2) NOT NULL,
  status   text NOT NULL DEFAULT 'new'
);
SQL
psql -d demo -c '\d public.orders'

}

config_cdc() {
cat <<'EOF'
[cdc]
slot = "outboxd_demo"            # made at start with the publication (create = true)
publication = "outboxd_demo"
create = true
tables = ["public.orders"]       # row changes -> demo.public.orders
topic_prefix = "demo"
message_prefix = "outbox"        # pg_logical_emit_message(true, 'outbox', ...) -> outbox.event.<aggregatetype>
EOF
}

events_poll() {
step "Inserting 5 events: 3 for aggregate type order, 2 for customer"
psql -d demo <<'SQL'
BEGIN;
INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload) VALUES
  ('order', 'o-1001', 'OrderCreated', '{"orderId": "o-1001", "customerId": "c-7", "total": 42.50}'),
  ('customer', 'c-7', 'CustomerRegistered', '{"customerId": "c-7", "name": "Ada"}');
COMMIT;
BEGIN;
INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload) VALUES
  ('order', 'o-1001', 'OrderPaid', '{"orderId": "o-1001", "amount": 42.50}'),
  ('order', 'o-1002', 'OrderCreated', '{"orderId": "o-1002", "customerId": "c-8", "total": 9.99}'),
  ('customer', 'c-8', 'CustomerRegistered', '{"customerId": "c-8", "name": "Grace"}');
COMMIT;
SQL
inserted_at=$(date +%s.%N)

step "Waiting until outboxd has delivered and deleted every row"
deadline=$(awk -v now="$(date +%s)" 'BEGIN { print now + 60 }')
while :; do
  left=$(psql -d demo -At -c 'SELECT count(*) FROM public.outbox')
  ((left == 0)) && break
  alive "$outboxd_pid" || die "outboxd exited early"
  (($(date +%s) < deadline)) || die "$left rows still in public.outbox after 60 s"
  sleep 0.1
done
elapsed=$(awk -v t0="$inserted_at" -v now="$(date +%s.%N)" 'BEGIN { printf "%.2f", now - t0 }')
echo "public.outbox is empty ${elapsed}s after the inserts"

for topic in outbox.event.order outbox.event.customer; do
  step "Records on $topic (kcat)"
  kcat -C -b "$KAFKA_BOOTSTRAP" -t "$topic" -o beginning -e -q \
    -f 'key=%k headers=%h value=%s\n'
done
count() { kcat -C -b "$KAFKA_BOOTSTRAP" -t "$1" -o beginning -e -q -f '%o\n' | wc -l; }
orders=$(count outbox.event.order)
customers=$(count outbox.event.customer)
((orders == 3 && customers == 2)) || die "expected 3 + 2 records, found $orders + $customers"
summary="5 events inserted into public.outbox: $orders records on outbox.event.order, $customers on outbox.event.customer"
}

events_cdc() {
step "Waiting for outboxd to stream the replication slot"
deadline=$(awk -v now="$(date +%s)" 'BEGIN { print now + 60 }')
until grep -q 'streaming replication slot' "$log"; do
  alive "$outboxd_pid" || die "outboxd exited early"
  (($(date +%s) < deadline)) || die "outboxd did not start streaming within 60 s"
  sleep 0.1
done

step "Changing public.orders (2 inserts, an update, a delete) and emitting an outbox message"
psql -d demo <<'SQL'
BEGIN;
INSERT INTO public.orders (id, customer, total) VALUES (1001, 'c-7', 42.50), (1002, 'c-8', 9.99);
COMMIT;
BEGIN;
UPDATE public.orders SET status = 'paid' WHERE id = 1001;
DELETE FROM public.orders WHERE id = 1002;
-- An event without an outbox table: published when, and only if, this commits.
SELECT pg_logical_emit_message(true, 'outbox',
  '{"aggregatetype": "order", "aggregateid": "1001", "type": "OrderPaid", "payload": {"orderId": 1001, "amount": 42.50}}');
COMMIT;
SQL
inserted_at=$(date +%s.%N)

# A topic not there yet counts 0.
count() { { kcat -C -b "$KAFKA_BOOTSTRAP" -t "$1" -o beginning -e -q -f '%o\n' 2>/dev/null || true; } | wc -l; }
step "Waiting until Kafka has the 4 row changes and the message"
deadline=$(awk -v now="$(date +%s)" 'BEGIN { print now + 60 }')
while :; do
  changes=$(count demo.public.orders)
  messages=$(count outbox.event.order)
  ((changes >= 4 && messages >= 1)) && break
  alive "$outboxd_pid" || die "outboxd exited early"
  (($(date +%s) < deadline)) || die "after 60 s: $changes of 4 row changes, $messages of 1 message"
  sleep 0.2
done
elapsed=$(awk -v t0="$inserted_at" -v now="$(date +%s.%N)" 'BEGIN { printf "%.2f", now - t0 }')
echo "in Kafka ${elapsed}s after the commits"
for topic in demo.public.orders outbox.event.order; do
  step "Records on $topic (kcat)"
  kcat -C -b "$KAFKA_BOOTSTRAP" -t "$topic" -o beginning -e -q \
    -f 'key=%k headers=%h value=%s\n'
done
((changes == 4 && messages == 1)) || die "expected 4 + 1 records, found $changes + $messages"
summary="4 row changes of public.orders on demo.public.orders and 1 message on outbox.event.order"
}

# A free loopback port for outboxd's /metrics.
http_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
setup_$mode
{
  cat <<EOF
# outboxd demo configuration, $mode source (written by scripts/demo.sh).
[postgres]
conninfo = "host=$PGHOST port=$PGPORT dbname=demo user=$PGUSER"

[kafka]
bootstrap_servers = "$KAFKA_BOOTSTRAP"

[http]
listen = "127.0.0.1:$http_port"

[log]
level = "info"

EOF
  config_$mode
} >"$config"
step "outboxd configuration ($config)"
cat "$config"
"$outboxd" check-config -c "$config"

step "Starting outboxd (log: $log)"
# setsid: with --keep, outboxd outlives this script and its terminal.
setsid "$outboxd" run -c "$config" </dev/null >"$log" 2>&1 &
outboxd_pid=$!
echo "outboxd pid $outboxd_pid"

events_$mode

step "outboxd's /metrics, highlights (curl http://127.0.0.1:$http_port/metrics)"
curl -fsS "http://127.0.0.1:$http_port/metrics" |
  grep -E '^outboxd_(events_published_total|events_in_flight|outbox_pending_rows|replication_slot_lag_bytes|last_delivery_timestamp_seconds|ready)[{ ]' ||
  die "no metrics at 127.0.0.1:$http_port"

if ((keep)); then
  succeeded=1
  cat <<EOF

==> Done. Everything is still running (--keep):
  PostgreSQL  psql "host=$PGHOST port=$PGPORT user=$PGUSER dbname=demo"
  Kafka       kcat -b $KAFKA_BOOTSTRAP -L
              kcat -C -b $KAFKA_BOOTSTRAP -t outbox.event.order -f 'key=%k headers=%h value=%s\\n'
  outboxd     pid $outboxd_pid, config $config, log $log
              curl -s http://127.0.0.1:$http_port/metrics
Insert more rows (poll: public.outbox; --cdc: public.orders) and watch them arrive. To stop:
  kill -TERM $outboxd_pid
  $repo/tests/harness/kafka.sh stop $DEMO_DIR/kafka
  $repo/tests/harness/pg.sh stop $DEMO_DIR/pg
EOF
  ((own_dir == 0)) || echo "  rm -rf $DEMO_DIR"
  exit 0
fi

step "Stopping outboxd with SIGTERM"
kill -TERM "$outboxd_pid"
deadline=$(awk -v now="$(date +%s)" 'BEGIN { print now + 30 }')
while alive "$outboxd_pid"; do
  (($(date +%s) < deadline)) || die "outboxd did not exit within 30 s of SIGTERM"
  sleep 0.1
done
rc=0
wait "$outboxd_pid" || rc=$?
outboxd_pid=''
((rc == 0)) || die "outboxd exited with status $rc"
echo "outboxd exited with status 0; its log:"
sed 's/^/  /' "$log"

cat <<EOF

==> Summary ($mode)
  $summary
  in Kafka ${elapsed}s after the commits; outboxd stopped cleanly (exit 0)
Stopping Kafka and PostgreSQL and removing their data.
EOF
succeeded=1
