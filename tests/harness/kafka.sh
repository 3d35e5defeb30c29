#!/usr/bin/env bash
# Runs a single-node Apache Kafka 4.1.1 broker (KRaft, combined broker and
# controller) for outboxd's tests, and by hand.
#
#   kafka.sh start DIR [--no-auto-create] [--fresh] [--tls CERTDIR]
#                           start a broker in DIR; a DIR that already has a
#                           configuration is started again as it was (same
#                           ports, same data); --fresh removes it first;
#                           --no-auto-create and --tls apply to a new
#                           configuration. --tls (certs.sh's files) adds a
#                           SASL_SSL listener (SCRAM-SHA-512, SCRAM-SHA-256
#                           and PLAIN for user outboxd) and an SSL listener
#                           that requires a client certificate of the CA.
#                           (librdkafka before 2.6.1, Debian 12's 2.0.2
#                           among them, fails SCRAM against Kafka 4.x:
#                           librdkafka#4895; Java clients and PLAIN work.)
#   kafka.sh stop DIR       stop the broker and remove its data (idempotent)
#   kafka.sh stop-keep DIR  stop the broker, keep configuration and data
#   kafka.sh restart DIR    stop-keep + start
#   kafka.sh pause DIR      freeze the broker process (SIGSTOP)
#   kafka.sh resume DIR     let it run again (SIGCONT)
#   kafka.sh status DIR     exit 0 when the broker is running
#
# DIR/kafka.env gets KAFKA_BOOTSTRAP=127.0.0.1:PORT (and with --tls
# KAFKA_SASL_SSL_BOOTSTRAP, KAFKA_SSL_BOOTSTRAP, KAFKA_SASL_USER and
# KAFKA_SASL_PASSWORD), DIR/kafka.pid the pid and
# DIR/kafka.log the broker's log. The broker's jars come from Maven Central
# through Maven (kafka/pom.xml beside this script) into
# ${OUTBOXD_CACHE_DIR:-$HOME/.cache/outboxd}/kafka-4.1.1/libs, once; later
# starts reuse them. The JVM also keeps a class-data-sharing archive there,
# written when a broker first exits cleanly, which halves later start times.
#
# Environment: JAVA_HOME, OUTBOXD_CACHE_DIR, OUTBOXD_MAVEN_REPO (Maven's local
# repository; default ~/.m2/repository), OUTBOXD_KAFKA_START_TIMEOUT
# (seconds, default 120), OUTBOXD_KAFKA_HEAP (default "-Xms128m -Xmx512m"),
# OUTBOXD_KAFKA_JVM_OPTS (default "-XX:+UseSerialGC -XX:TieredStopAtLevel=1":
# quick to start, enough for tests), OUTBOXD_KAFKA_CDS=0 to not use the archive.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
# shellcheck disable=SC2034 # used by common.sh
HARNESS_NAME=kafka.sh
harness_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$harness_dir/common.sh"

kafka_version=4.1.1
usage() {
  echo "usage: $0 start|stop|stop-keep|restart|pause|resume|status DIR [--no-auto-create] [--fresh] [--tls CERTDIR]" >&2
  exit 64
}
(($# >= 2)) || usage
cmd=$1
dir=$2
shift 2
auto_create=true
fresh=0
tls_dir=
while (($# > 0)); do
  case "$1" in
    --no-auto-create) auto_create=false ;;
    --fresh) fresh=1 ;;
    --tls) (($# >= 2)) || usage; tls_dir=$(cd "$2" && pwd); shift ;;
    *) usage ;;
  esac
  shift
done
# The SASL user of a --tls broker. Not a secret worth keeping: a test broker.
sasl_user=outboxd
sasl_password=outboxd-kafka-S3cret

start_timeout=${OUTBOXD_KAFKA_START_TIMEOUT:-120}
stop_timeout=${OUTBOXD_KAFKA_STOP_TIMEOUT:-30}
heap_opts=${OUTBOXD_KAFKA_HEAP:--Xms128m -Xmx512m}
jvm_opts=${OUTBOXD_KAFKA_JVM_OPTS:--XX:+UseSerialGC -XX:TieredStopAtLevel=1}
cache_dir=${OUTBOXD_CACHE_DIR:-${HOME:-/tmp}/.cache/outboxd}/kafka-$kafka_version
libs=$cache_dir/libs
pom=$harness_dir/kafka/pom.xml

if [[ ! -d "$dir" ]]; then
  case "$cmd" in
    stop | stop-keep) exit 0 ;;  # nothing was ever started there
    status) echo "not running"; exit 3 ;;
  esac
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
config=$dir/server.properties
state_file=$dir/kafka.state
pid_file=$dir/kafka.pid
env_file=$dir/kafka.env

find_java() {
  local java
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    java=$JAVA_HOME/bin/java
  else
    java=$(command -v java) || harness_die "java not found (Kafka $kafka_version needs Java 17 or newer)"
  fi
  local major
  major=$("$java" -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java.specification.version/ { print $2 }')
  [[ "${major%%.*}" -ge 17 ]] 2>/dev/null || harness_die "$java is Java $major; Kafka $kafka_version needs 17 or newer"
  echo "$java"
}

# Copies Kafka's jars into the cache with Maven unless an earlier run did. A
# marker holding the pom's checksum is written after a complete copy, so an
# interrupted download or an edited pom resolves again. Concurrent starts
# serialise on a lock.
ensure_libs() {
  mkdir -p "$cache_dir"
  local want marker=$cache_dir/libs.complete
  want=$(sha256sum "$pom" | cut -d' ' -f1)
  [[ -f "$marker" && "$(cat "$marker")" == "$want" && -d "$libs" ]] && return 0
  exec 9>"$cache_dir/.lock"
  flock -w 900 9 || harness_die "timed out waiting for the lock on $cache_dir"
  if [[ -f "$marker" && "$(cat "$marker")" == "$want" && -d "$libs" ]]; then
    exec 9>&-
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || harness_die "mvn not found: install Maven (scripts/install-deps.sh) to fetch Kafka's jars"
  harness_log "fetching Kafka $kafka_version jars with Maven into $libs"
  local t0 tmp=$cache_dir/libs.tmp.$$
  t0=$(harness_now)
  rm -rf "$tmp" "$marker"
  # Maven finds its local repository through the passwd entry's home, not
  # $HOME; follow $HOME when they differ (a build user without a real home).
  local maven_args=()
  if [[ -n "${OUTBOXD_MAVEN_REPO:-}" ]]; then
    maven_args+=(-Dmaven.repo.local="$OUTBOXD_MAVEN_REPO")
  elif [[ -n "${HOME:-}" && "$HOME" != "$(getent passwd "$(id -u)" | cut -d: -f6)" ]]; then
    maven_args+=(-Dmaven.repo.local="$HOME/.m2/repository")
  fi
  if ! mvn -B -q -Dstyle.color=never "${maven_args[@]}" -f "$pom" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$cache_dir/maven.log" 2>&1; then
    harness_log "Maven could not resolve Kafka's jars; its output:"
    tail -n 40 "$cache_dir/maven.log" >&2 || true
    rm -rf "$tmp"
    exit 1
  fi
  ls "$tmp"/kafka_2.13-"$kafka_version".jar >/dev/null 2>&1 || harness_die "Maven finished but $tmp has no kafka_2.13 jar"
  rm -rf "$libs" "$cache_dir"/cds
  mv "$tmp" "$libs"
  echo "$want" >"$marker"
  exec 9>&-
  harness_log "jars ready in $(harness_elapsed "$t0")s"
}

# Class-data-sharing archive for this java, these options and these jars.
cds_archive() {
  local key
  key=$( { "$java" -version 2>&1; echo "$heap_opts $jvm_opts"; cat "$cache_dir/libs.complete"; } | sha256sum | cut -c1-16)
  echo "$cache_dir/cds/kafka-$key.jsa"
}

load_state() {
  [[ -f "$state_file" && -f "$config" ]] || return 1
  # shellcheck disable=SC1090
  . "$state_file"
  [[ -n "${KAFKA_PORT:-}" && -n "${CONTROLLER_PORT:-}" ]]
}

write_config() {
  KAFKA_PORT=$(harness_free_port)
  CONTROLLER_PORT=$(harness_free_port)
  while [[ "$CONTROLLER_PORT" == "$KAFKA_PORT" ]]; do CONTROLLER_PORT=$(harness_free_port); done
  local listeners="PLAINTEXT://127.0.0.1:$KAFKA_PORT" protocols="PLAINTEXT:PLAINTEXT"
  SASL_SSL_PORT= SSL_PORT=
  if [[ -n "$tls_dir" ]]; then
    SASL_SSL_PORT=$(harness_free_port)
    SSL_PORT=$(harness_free_port)
    listeners+=",SASL_SSL://127.0.0.1:$SASL_SSL_PORT,SSL://127.0.0.1:$SSL_PORT"
    protocols+=",SASL_SSL:SASL_SSL,SSL:SSL"
  fi
  cat >"$config" <<EOF
# outboxd test harness: single-node KRaft broker + controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=$listeners,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=$listeners
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=$auto_create
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
# Abort a transaction open longer than its timeout within 1 s (default 10 s),
# so a test of that abort does not wait.
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
# After a SIGKILL the restarted broker can only register once its previous
# session has expired (default 9 s).
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000
EOF
  cat >"$dir/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $dir/kafka.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
  [[ -z "$tls_dir" ]] || write_tls_config
  cat >"$state_file" <<EOF
KAFKA_PORT=$KAFKA_PORT
CONTROLLER_PORT=$CONTROLLER_PORT
SASL_SSL_PORT=$SASL_SSL_PORT
SSL_PORT=$SSL_PORT
EOF
}

# --tls: the broker's key and certificate in one PEM file (Kafka's PEM
# keystore), the CA as its trust store, and the two listeners' settings.
write_tls_config() {
  mkdir -p "$dir/tls"
  cat "$tls_dir/server.key" "$tls_dir/server.crt" >"$dir/tls/server.pem"
  cp "$tls_dir/ca.crt" "$dir/tls/ca.crt"
  chmod 0600 "$dir/tls/server.pem"
  cat >>"$config" <<EOF
ssl.keystore.type=PEM
ssl.keystore.location=$dir/tls/server.pem
ssl.truststore.type=PEM
ssl.truststore.location=$dir/tls/ca.crt
listener.name.ssl.ssl.client.auth=required
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256,PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$sasl_user="$sasl_password";
EOF
}

# Writes DIR/kafka.env.
write_env() {
  {
    echo "KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT"
    if [[ -n "${SASL_SSL_PORT:-}" ]]; then
      echo "KAFKA_SASL_SSL_BOOTSTRAP=127.0.0.1:$SASL_SSL_PORT"
      echo "KAFKA_SSL_BOOTSTRAP=127.0.0.1:$SSL_PORT"
      echo "KAFKA_SASL_USER=$sasl_user"
      echo "KAFKA_SASL_PASSWORD=$sasl_password"
    fi
  } >"$env_file.tmp"
  mv "$env_file.tmp" "$env_file"
}

format_storage() {
  [[ -f "$dir/data/meta.properties" ]] && return 0
  local cluster_id
  # A random 16-byte id in URL-safe base64; one starting with '-' would be
  # read by the storage tool as an option, so draw again.
  cluster_id=-
  while [[ $cluster_id == -* ]]; do
    cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
  done
  rm -rf "$dir/data"
  # SCRAM credentials live in the cluster metadata: written at format time.
  local scram=()
  if grep -q '^sasl.enabled.mechanisms=' "$config"; then
    scram=(--add-scram "SCRAM-SHA-512=[name=\"$sasl_user\",password=\"$sasl_password\"]"
      --add-scram "SCRAM-SHA-256=[name=\"$sasl_user\",password=\"$sasl_password\"]")
  fi
  if ! "$java" -Xshare:auto -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
      -Dlog4j2.configurationFile="file:$dir/log4j2.properties" -cp "$libs/*" \
      kafka.tools.StorageTool format -t "$cluster_id" -c "$config" "${scram[@]}" >"$dir/format.log" 2>&1; then
    harness_log "formatting the storage failed:"
    cat "$dir/format.log" >&2
    return 1
  fi
}

# The pid of this DIR's broker, or nothing.
broker_pid() {
  local pid
  pid=$(cat "$pid_file" 2>/dev/null || true)
  if [[ -n "$pid" ]] && harness_pid_alive "$pid" && is_our_broker "$pid"; then
    echo "$pid"
    return
  fi
  # The pid file may be missing after an interrupted start: look for a broker
  # started with this DIR's configuration.
  local p
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    if is_our_broker "$p" && harness_pid_alive "$p"; then
      echo "$p"
      return
    fi
  done
}
is_our_broker() {
  local cmdline
  cmdline=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  [[ "$cmdline" == *kafka.Kafka\ "$config"* ]]
}

ready() {
  # kcat keeps retrying a refused connection for its whole -m timeout, so
  # first check cheaply that the listener is up.
  (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null || return 1
  kcat -b "127.0.0.1:$KAFKA_PORT" -L -m 2 2>/dev/null | grep -q "broker 1 at 127.0.0.1:$KAFKA_PORT"
}

# Starts the broker from DIR's configuration and waits until it serves
# metadata. Returns 2 when a port was taken, 1 on any other failure (the
# process is then stopped).
launch() {
  local cds_opts=() archive
  if [[ -f "$dir/cds.pending" ]]; then
    # Left by a broker that was killed: its archive is incomplete.
    rm -f "$(cat "$dir/cds.pending")" "$dir/cds.pending"
  fi
  if [[ "${OUTBOXD_KAFKA_CDS:-1}" != 0 ]]; then
    archive=$(cds_archive)
    if [[ -s "$archive" ]]; then
      cds_opts=(-XX:SharedArchiveFile="$archive")
    else
      mkdir -p "$(dirname "$archive")"
      cds_opts=(-XX:ArchiveClassesAtExit="$archive.tmp.$$")
      echo "$archive.tmp.$$" >"$dir/cds.pending"
    fi
  fi
  : >"$dir/kafka.stdout"
  local log_offset=0
  [[ -f "$dir/kafka.log" ]] && log_offset=$(stat -c %s "$dir/kafka.log")
  # setsid: the broker outlives this script and the terminal or test runner
  # that started it; its output goes to files, never to the caller's pipes.
  # shellcheck disable=SC2086
  setsid "$java" $heap_opts $jvm_opts "${cds_opts[@]}" -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true -Dkafka.logs.dir="$dir" \
    -Dlog4j2.configurationFile="file:$dir/log4j2.properties" \
    -cp "$libs/*" kafka.Kafka "$config" </dev/null >"$dir/kafka.stdout" 2>&1 &
  local pid=$!
  echo "$pid" >"$pid_file"
  local end
  end=$(harness_deadline "$start_timeout")
  until ready; do
    if ! harness_pid_alive "$pid"; then
      if cat "$dir/kafka.stdout" <(tail -c +"$((log_offset + 1))" "$dir/kafka.log" 2>/dev/null) |
          grep -q "Address already in use"; then
        rm -f "$pid_file"
        return 2
      fi
      harness_log "the broker exited during start-up; its output:"
      tail -n 20 "$dir/kafka.stdout" >&2 || true
      harness_log "its log ($dir/kafka.log):"
      tail -c +"$((log_offset + 1))" "$dir/kafka.log" 2>/dev/null | grep -E "ERROR|FATAL|Exception" | tail -n 20 >&2 || true
      rm -f "$pid_file"
      return 1
    fi
    if ! harness_before "$end"; then
      harness_log "the broker did not serve metadata on 127.0.0.1:$KAFKA_PORT within ${start_timeout}s; log tail:"
      tail -n 30 "$dir/kafka.log" >&2 || true
      stop_process
      return 1
    fi
    sleep 0.2
  done
}

do_start() {
  local t0
  t0=$(harness_now)
  java=$(find_java)
  ensure_libs
  if load_state; then
    if [[ -n "$(broker_pid)" ]]; then
      write_env
      harness_log "already running on 127.0.0.1:$KAFKA_PORT"
      return 0
    fi
    # Same configuration, ports and data as before (restart, or after stop-keep).
    format_storage || exit 1
    launch || { rm -f "$env_file"; exit 1; }
  else
    local attempt rc
    for attempt in 1 2 3; do
      rm -rf "$dir/data" "$env_file" "$pid_file"
      write_config
      format_storage || { do_stop 0; exit 1; }
      rc=0
      launch || rc=$?
      ((rc == 2)) || break
      harness_log "a port was taken, retrying with other ports (attempt $attempt)"
    done
    if ((rc != 0)); then
      do_stop 0
      exit 1
    fi
  fi
  write_env
  harness_log "Kafka $kafka_version ready on 127.0.0.1:$KAFKA_PORT (controller $CONTROLLER_PORT) in $(harness_elapsed "$t0")s"
}

# Stops the broker process: SIGTERM (controlled shutdown), SIGKILL after
# $stop_timeout seconds. Keeps the class-data archive the JVM wrote on a clean
# exit.
stop_process() {
  local pid clean=1
  pid=$(broker_pid)
  if [[ -n "$pid" ]]; then
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true  # a paused broker cannot act on SIGTERM
    if ! harness_wait_gone "$pid" "$stop_timeout"; then
      harness_log "broker $pid ignored SIGTERM for ${stop_timeout}s; killing it"
      clean=0
      kill -KILL "$pid" 2>/dev/null || true
      harness_wait_gone "$pid" 10 || harness_log "warning: broker $pid did not exit"
    fi
  fi
  rm -f "$pid_file"
  if [[ -f "$dir/cds.pending" ]]; then
    local tmp
    tmp=$(cat "$dir/cds.pending")
    if ((clean)) && [[ -n "$pid" && -s "$tmp" ]]; then
      mv -f "$tmp" "${tmp%.tmp.*}"
    else
      rm -f "$tmp"
    fi
    rm -f "$dir/cds.pending"
  fi
}

do_stop() {
  local keep=$1
  stop_process
  rm -f "$env_file"
  if ((keep == 0)); then
    rm -rf "$dir/data" "$config" "$state_file" "$dir/log4j2.properties" "$dir/kafka.log" \
      "$dir/kafka.stdout" "$dir/format.log"
  fi
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
  pause | resume)
    pid=$(broker_pid)
    [[ -n "$pid" ]] || harness_die "no broker running in $dir"
    if [[ "$cmd" == pause ]]; then kill -STOP "$pid"; else kill -CONT "$pid"; fi
    ;;
  status)
    if load_state && [[ -n "$(broker_pid)" ]]; then
      echo "running on 127.0.0.1:$KAFKA_PORT (pid $(broker_pid))"
    else
      echo "not running"
      exit 3
    fi
    ;;
  *) usage ;;
esac
