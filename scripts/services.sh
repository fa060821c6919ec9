#!/usr/bin/env bash
# Start, stop and inspect the Postgres and RabbitMQ servers payhook needs, without Docker.
#
#   scripts/services.sh start [--record FILE]   reuse what answers, start private servers otherwise
#   scripts/services.sh stop [postgres|rabbitmq ...]   stop the servers recorded in .local/started
#   scripts/services.sh status                  what answers at the configured URLs, and whose it is
#   scripts/services.sh env                     `export PAYHOOK_...=` lines for the current shell
#   scripts/services.sh restart-rabbitmq        restart only our private broker, keeping its data
#   scripts/services.sh restart-postgres        restart only our private Postgres (fast shutdown)
#   scripts/services.sh is-ours postgres|rabbitmq   exit 0 when we started the server at that URL
#   scripts/services.sh ctl ARGS...             rabbitmqctl against our private node
#   scripts/services.sh cluster start [--record FILE]|stop [c1|c2|c3|epmd ...]|status|env
#                               |kill NODE|restart NODE|ctl NODE ARGS...|queues NODE ARGS...
#                                               a local 3-node cluster (section "cluster" below)
#
# Configuration (environment):
#   PAYHOOK_DATABASE_URL  default postgresql://postgres@127.0.0.1:25432/payhook
#   PAYHOOK_AMQP_URL      default amqp://guest:guest@127.0.0.1:25672/
#   PAYHOOK_EPMD_PORT     default AMQP port - 3 (25669): the private node's own epmd
#   PAYHOOK_RABBITMQ_DIST_PORT  default AMQP port + 1 (25673); CLI nodes use +2 .. +12
#   PAYHOOK_RABBITMQ_PROMETHEUS=1  also run the shipped plugins (rabbitmq_prometheus on
#                         127.0.0.1, PAYHOOK_RABBITMQ_PROMETHEUS_PORT, default AMQP port + 20)
#   PAYHOOK_RABBITMQ_EXTRA_CONF  more rabbitmq.conf lines for the private node(s)
#   PAYHOOK_RABBITMQ_ERL_ARGS    more Erlang VM flags for them (e.g. "+sbwt none" to measure
#                         scheduler busy-waiting; docs/operations.md says what it changed)
#   PAYHOOK_CLUSTER_AMQP_PORT    default 25772: the cluster's first node (see below)
#   PAYHOOK_CLUSTER_PROMETHEUS=1 rabbitmq_prometheus on the cluster nodes too
#
# Private brokers run with the configuration payhook ships in deploy/rabbitmq/ (see
# rmq_write_config): rabbitmq.conf plus local overrides, advanced.config, and the operator
# policy from definitions.json imported once they run.
#
# If something already answers at a URL's host:port it is reused and never stopped. Otherwise
# the Debian package is installed if missing and a private server is started on 127.0.0.1 with
# its data under .local/ (git-ignored). .local/started records what this script started (one
# line per process: kind pid port extra) so `stop` signals exactly those pids. `start --record
# FILE` also appends the kinds started by this invocation to FILE, so a caller (scripts/test)
# can stop only what it started itself.
#
# Postgres data lives in .local/pg, owned by the postgres user (initdb refuses root). When the
# postgres user cannot reach that folder (a repo under a private home, say) or the socket path
# would be too long, the data goes to /tmp/payhook-pg-<hash of the repo path> and .local/pg is
# a symlink to it.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
LOCAL="$REPO/.local"
STATE="$LOCAL/started"
RMQ_BIN=/usr/lib/rabbitmq/bin
SHIPPED_RMQ="$REPO/deploy/rabbitmq" # the broker configuration payhook ships
DATABASE_URL=${PAYHOOK_DATABASE_URL:-postgresql://postgres@127.0.0.1:25432/payhook}
AMQP_URL=${PAYHOOK_AMQP_URL:-amqp://guest:guest@127.0.0.1:25672/}

log() { printf 'services: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { printf '%s' "${EPOCHREALTIME/[.,]/}"; } # microseconds
since() { # start -> "1.2s"
    local ds=$((($(now) - $1) / 100000))
    printf '%d.%ds' $((ds / 10)) $((ds % 10))
}

# URL -> "host<US>port<US>user<US>password<US>path" (path unquoted, without the leading "/").
parse_url() {
    python3 - "$1" "$2" <<'PY'
import sys
from urllib.parse import unquote, urlsplit

u = urlsplit(sys.argv[1])
fields = [u.hostname or "127.0.0.1", str(u.port or sys.argv[2]), unquote(u.username or ""),
          unquote(u.password or ""), unquote(u.path[1:])]
print("\x1f".join(fields))
PY
}
IFS=$'\x1f' read -r PG_HOST PG_PORT PG_USER PG_PASSWORD PG_DB < <(parse_url "$DATABASE_URL" 5432)
IFS=$'\x1f' read -r MQ_HOST MQ_PORT MQ_USER MQ_PASSWORD MQ_VHOST < <(parse_url "$AMQP_URL" 5672)
PG_USER=${PG_USER:-postgres}
PG_DB=${PG_DB:-$PG_USER}
MQ_USER=${MQ_USER:-guest}
MQ_PASSWORD=${MQ_PASSWORD:-guest}
MQ_VHOST=${MQ_VHOST:-/}
EPMD_PORT=${PAYHOOK_EPMD_PORT:-$((MQ_PORT - 3))}
DIST_PORT=${PAYHOOK_RABBITMQ_DIST_PORT:-$((MQ_PORT + 1))}
PROM_PORT=${PAYHOOK_RABBITMQ_PROMETHEUS_PORT:-$((MQ_PORT + 20))}
# 1: the private node also runs the shipped plugins (rabbitmq_prometheus on 127.0.0.1:PROM_PORT).
RMQ_PROMETHEUS=${PAYHOOK_RABBITMQ_PROMETHEUS:-0}
NODE=payhook@localhost
MQ_DIR="$LOCAL/rabbitmq"
EPMD_LOG="$MQ_DIR/log/epmd.log"
# What our processes' command lines contain (checked before signalling a recorded pid).
PG_CMD="bin/postgres -D "
RMQ_CMD="$MQ_DIR/home" # the node's -home
EPMD_CMD="epmd -address 127.0.0.1 -port"

is_loopback() { [[ $1 == 127.* || $1 == localhost ]]; }

# ---------------------------------------------------------------------------- state file

# Lines: "postgres PID PORT DATADIR" | "rabbitmq PID PORT WRAPPER_PID" | "epmd PID PORT".
record_get() { # kind -> the record's fields, if any
    [[ -f $STATE ]] || return 1
    awk -v k="$1" '$1 == k { print; found = 1; exit } END { exit !found }' "$STATE"
}
record_put() { record_del "$1"; printf '%s\n' "$*" >>"$STATE"; }
record_del() {
    [[ -f $STATE ]] || return 0
    awk -v k="$1" '$1 != k' "$STATE" >"$STATE.tmp" && mv "$STATE.tmp" "$STATE"
}

# Is pid alive and running the expected program? Guards against signalling a recycled pid.
pid_is() { # pid fixed-string
    [[ -n $1 && -r /proc/$1/cmdline ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$2"
}

port_of() { # kind -> the port configured for it now
    case $1 in
        postgres) echo "$PG_PORT" ;;
        rabbitmq) echo "$MQ_PORT" ;;
        epmd) echo "$EPMD_PORT" ;;
        c[1-9]) cl_amqp "${1#c}" ;; # cluster nodes (STATE is then .local/cluster/started)
    esac
}

# The pid recorded for kind, if that process is still the one we started and serves the port
# configured now (a server of ours on another port is not the one the URLs point at).
live_pid() { # kind pattern
    local kind pid port _
    read -r kind pid port _ < <(record_get "$1") || return 1
    [[ $port == "$(port_of "$1")" ]] && pid_is "$pid" "$2" && printf '%s' "$pid"
}

# One private instance per checkout (one data folder): refuse to start a second one elsewhere.
refuse_other_port() { # kind pattern
    local kind pid port _
    read -r kind pid port _ < <(record_get "$1") || return 0
    if [[ $port != "$(port_of "$1")" ]] && pid_is "$pid" "$2"; then
        die "our $1 already runs on port $port (pid $pid); run scripts/services.sh stop first"
    fi
}

# Alive and not a zombie: our servers are re-parented to PID 1, which may reap them late.
alive() {
    [[ -r /proc/$1/status ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# Send a signal and wait for the process to go away; escalate after the timeout.
stop_pid() { # pid signal timeout_s name
    local pid=$1 sig=$2 timeout=$3 name=$4 t0 i
    t0=$(now)
    kill "-$sig" "$pid" 2>/dev/null || return 0
    for ((i = 0; i < timeout * 10; i++)); do
        alive "$pid" || { log "$name (pid $pid) stopped in $(since "$t0")"; return 0; }
        sleep 0.1
    done
    log "$name (pid $pid) still running after ${timeout}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

lock() {
    mkdir -p "$LOCAL"
    exec 9>"$LOCAL/services.lock"
    flock 9
}

# --------------------------------------------------------------------------------- apt

APT_UPDATED=
apt_install() { # package
    local sudo=()
    [[ $EUID -eq 0 ]] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    local t0
    t0=$(now)
    if [[ -z $APT_UPDATED ]]; then
        "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q >&2
        APT_UPDATED=1
    fi
    log "installing $1 (apt-get)"
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -q "$1" >&2
    log "installed $1 in $(since "$t0")"
}

# ----------------------------------------------------------------------------- Postgres

pg_bin() {
    local d
    d=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n1)
    [[ -d $d ]] && printf '%s' "$d"
}

as_postgres() {
    if [[ $EUID -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@" 9>&-)
    else
        (cd / && "$@" 9>&-)
    fi
}

pg_answers() { # exit 0 when a server accepts connections at host:port
    local bin
    bin=$(pg_bin) || return 2
    "$bin/pg_isready" -q -h "$PG_HOST" -p "$PG_PORT" -t 3
}

# Picks the data folder and makes sure the postgres user owns it (see the header).
pg_datadir() {
    local dir="$LOCAL/pg" owner=postgres fallback
    [[ $EUID -eq 0 ]] || owner=$(id -un)
    fallback="/tmp/payhook-pg-$(printf '%s' "$REPO" | sha1sum | cut -c1-12)"
    if [[ -L $dir ]]; then
        printf '%s' "$(readlink "$dir")"
        return
    fi
    mkdir -p "$dir"
    chown "$owner" "$dir"
    chmod 700 "$dir"
    if [[ ${#dir} -le 80 ]] && as_postgres test -w "$dir" -a -x "$dir"; then
        printf '%s' "$dir"
        return
    fi
    log "postgres cannot use $dir (permissions or socket path length); using $fallback"
    rmdir "$dir"
    mkdir -p "$fallback"
    chown "$owner" "$fallback"
    chmod 700 "$fallback"
    ln -s "$fallback" "$dir"
    printf '%s' "$fallback"
}

psql_admin() { # sql -> runs as the postgres superuser of our private server
    as_postgres "$(pg_bin)/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" \
        -U postgres -d postgres -tA -c "$1"
}

pg_ensure_database() { # ours|reused
    local bin
    bin=$(pg_bin)
    if [[ $1 == ours ]]; then
        if [[ $PG_USER != postgres ]] && [[ -z $(psql_admin "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'") ]]; then
            psql_admin "CREATE ROLE \"$PG_USER\" LOGIN SUPERUSER"
            log "postgres: created role $PG_USER"
        fi
        if [[ -z $(psql_admin "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'") ]]; then
            psql_admin "CREATE DATABASE \"$PG_DB\" OWNER \"$PG_USER\""
            log "postgres: created database $PG_DB"
        fi
        return
    fi
    # A reused server: connect with the URL's credentials; failing here is only a warning.
    local exists
    if ! exists=$(PGPASSWORD=$PG_PASSWORD "$bin/psql" -X -q -h "$PG_HOST" -p "$PG_PORT" \
        -U "$PG_USER" -d postgres -tA -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" 2>&1); then
        log "postgres: warning: could not check database $PG_DB on the reused server: $exists"
        return
    fi
    [[ -z $exists ]] || return 0
    if PGPASSWORD=$PG_PASSWORD "$bin/createdb" -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$PG_DB"; then
        log "postgres: created database $PG_DB"
    else
        log "postgres: warning: could not create database $PG_DB"
    fi
}

start_postgres() { # record_file
    local t0 pid dir bin
    t0=$(now)
    if pid=$(live_pid postgres "$PG_CMD") && pg_answers; then
        log "postgres: already running (ours, pid $pid) at $PG_HOST:$PG_PORT"
        pg_ensure_database ours
        return
    fi
    if pg_answers; then
        log "postgres: reusing the server at $PG_HOST:$PG_PORT (not ours; never stopped here)"
        pg_ensure_database reused
        return
    fi
    refuse_other_port postgres "$PG_CMD"
    record_del postgres # stale: that process is gone
    is_loopback "$PG_HOST" || die "nothing answers at $PG_HOST:$PG_PORT and it is not local"
    [[ -x $(pg_bin)/initdb ]] || apt_install postgresql
    bin=$(pg_bin)
    dir=$(pg_datadir)
    if [[ ! -f $dir/PG_VERSION ]]; then
        as_postgres "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
        log "postgres: initialised $dir"
    fi
    if ! as_postgres "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 -s \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $dir" start; then
        tail -n 20 "$dir/server.log" >&2 || true
        die "postgres did not start (log: $dir/server.log)"
    fi
    pid=$(head -n1 "$dir/postmaster.pid")
    record_put postgres "$pid" "$PG_PORT" "$dir"
    [[ -z $1 ]] || echo postgres >>"$1"
    pg_ensure_database ours
    log "postgres: started (pid $pid, data $dir) at 127.0.0.1:$PG_PORT in $(since "$t0")"
}

stop_postgres() {
    local kind pid _
    read -r kind pid _ < <(record_get postgres) || return 0
    # SIGINT is Postgres' "fast" shutdown; SIGTERM ("smart") would wait for every client.
    if pid_is "$pid" "$PG_CMD"; then
        stop_pid "$pid" INT 60 postgres
    fi
    record_del postgres
}

# ----------------------------------------------------------------------------- RabbitMQ

# AMQP check: 0 = a broker answered the protocol header, 2 = nothing listens, 1 = something else.
amqp_answers() { # [host port], default the URL's
    python3 - "${1:-$MQ_HOST}" "${2:-$MQ_PORT}" <<'PY'
import socket, sys

try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
except OSError:
    sys.exit(2)
try:
    s.settimeout(3)
    s.sendall(b"AMQP\x00\x00\x09\x01")
    reply = s.recv(8)
except OSError:
    sys.exit(1)
finally:
    s.close()
sys.exit(0 if reply[:1] == b"\x01" else 1)
PY
}

# Everything a private node and its CLI need, per /work/shared/LOCAL-SERVERS.md.
rmq_env() {
    export HOME="$MQ_DIR/home"
    export ERL_EPMD_PORT="$EPMD_PORT" ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_CONF_ENV_FILE="$MQ_DIR/rabbitmq-env.conf"
    export RABBITMQ_CONFIG_FILE="$MQ_DIR/rabbitmq.conf"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$MQ_DIR/advanced.config"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$MQ_DIR/enabled_plugins"
    export RABBITMQ_MNESIA_BASE="$MQ_DIR/mnesia"
    export RABBITMQ_LOG_BASE="$MQ_DIR/log"
    export RABBITMQ_PID_FILE="$MQ_DIR/rabbitmq.pid"
    export RABBITMQ_NODENAME="$NODE"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT="$MQ_PORT"
    export RABBITMQ_DIST_PORT="$DIST_PORT"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} ${PAYHOOK_RABBITMQ_ERL_ARGS:-}"
    export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export RABBITMQ_CTL_DIST_PORT_MIN=$((MQ_PORT + 2)) RABBITMQ_CTL_DIST_PORT_MAX=$((MQ_PORT + 12))
}

ctl() { (rmq_env && "$RMQ_BIN/rabbitmqctl" -n "$NODE" "$@"); }

# The node's configuration: the shipped deploy/rabbitmq/ files (what production runs with)
# plus local-only overrides. rabbitmq.conf has no include, so the node's file is the shipped one
# with every key the overrides set commented out, then the overrides.
rmq_write_config() { # dir prometheus_port|"" <<local overrides (rabbitmq.conf lines)
    local dir=$1 prom_port=$2
    {
        cat
        if [[ -n $prom_port ]]; then
            printf 'prometheus.tcp.ip = 127.0.0.1\nprometheus.tcp.port = %s\n' "$prom_port"
        fi
    } >"$dir/local.conf"
    {
        printf '# Generated by scripts/services.sh: %s, then local overrides.\n' "$SHIPPED_RMQ/rabbitmq.conf"
        awk 'function key(l) { sub(/[[:space:]]*=.*/, "", l); gsub(/^[[:space:]]+/, "", l); return l }
             NR == FNR { if ($0 !~ /^[[:space:]]*(#|$)/) over[key($0)] = 1; next }
             $0 !~ /^[[:space:]]*(#|$)/ && key($0) in over { print "# (overridden below) " $0; next }
             { print }' "$dir/local.conf" "$SHIPPED_RMQ/rabbitmq.conf"
        printf '\n## Local overrides (scripts/services.sh)\n'
        cat "$dir/local.conf"
    } >"$dir/rabbitmq.conf"
    cp "$SHIPPED_RMQ/advanced.config" "$dir/advanced.config"
    if [[ -n $prom_port ]]; then
        cp "$SHIPPED_RMQ/enabled_plugins" "$dir/enabled_plugins"
    else
        printf '[].\n' >"$dir/enabled_plugins"
    fi
}

rmq_prepare() {
    mkdir -p "$MQ_DIR/home" "$MQ_DIR/mnesia" "$MQ_DIR/log"
    local cookie="$MQ_DIR/home/.erlang.cookie"
    if [[ ! -f $cookie ]]; then
        (umask 077 && head -c 30 /dev/urandom | sha256sum | cut -c1-32 >"$cookie")
    fi
    chmod 400 "$cookie"
    : >"$MQ_DIR/rabbitmq-env.conf"
    local prom=
    [[ $RMQ_PROMETHEUS != 1 ]] || prom=$PROM_PORT
    rmq_write_config "$MQ_DIR" "$prom" <<CONF
# Private test/dev node: listens on 127.0.0.1 only. guest may connect over loopback only (the
# default), which is all this node listens on.
listeners.tcp.default = 127.0.0.1:$MQ_PORT
loopback_users.guest = true
log.file.level = info
${PAYHOOK_RABBITMQ_EXTRA_CONF:-}
CONF
}

start_epmd() {
    local pid
    if pid=$(live_pid epmd "$EPMD_CMD"); then
        return
    fi
    stop_epmd # one of ours left on another port, or a stale record
    if (exec 3<>"/dev/tcp/127.0.0.1/$EPMD_PORT") 2>/dev/null; then
        log "rabbitmq: an epmd already listens on 127.0.0.1:$EPMD_PORT; using it"
        return
    fi
    # 9>&-: a server must not inherit (and keep holding) the services.lock descriptor.
    mkdir -p "$(dirname "$EPMD_LOG")"
    setsid epmd -address 127.0.0.1 -port "$EPMD_PORT" </dev/null >>"$EPMD_LOG" 2>&1 8>&- 9>&- &
    pid=$!
    record_put epmd "$pid" "$EPMD_PORT"
    local i
    for ((i = 0; i < 50; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$EPMD_PORT") 2>/dev/null && return
        sleep 0.1
    done
    die "epmd did not start on 127.0.0.1:$EPMD_PORT"
}

# Starts the node (epmd first), waits for it, records its pid and sets RMQ_PID.
RMQ_PID=
rmq_launch() {
    local wrapper waiter i
    start_epmd
    rm -f "$MQ_DIR/rabbitmq.pid"
    (
        rmq_env
        cd "$MQ_DIR"
        exec setsid "$RMQ_BIN/rabbitmq-server" </dev/null >>"$MQ_DIR/log/server.out" 2>&1 9>&-
    ) &
    wrapper=$!
    # await_startup gives up at once while the node is not registered yet, so wait for
    # that first (epmd -names is cheap; a CLI call costs about a second of VM start-up).
    for ((i = 0; i < 600; i++)); do
        epmd -port "$EPMD_PORT" -names 2>/dev/null | grep -q "^name ${NODE%@*} " && break
        alive "$wrapper" || break
        sleep 0.1
    done
    ctl await_startup --timeout 120 >/dev/null 2>&1 9>&- &
    waiter=$!
    while kill -0 "$waiter" 2>/dev/null; do
        if ! alive "$wrapper"; then
            kill "$waiter" 2>/dev/null || true
            tail -n 30 "$MQ_DIR/log/server.out" >&2 || true
            die "rabbitmq exited while starting (logs: $MQ_DIR/log)"
        fi
        sleep 0.2
    done
    if ! wait "$waiter"; then
        tail -n 30 "$MQ_DIR/log/server.out" >&2 || true
        kill -TERM "$wrapper" 2>/dev/null || true
        die "rabbitmq did not finish starting (logs: $MQ_DIR/log)"
    fi
    for ((i = 0; i < 100; i++)); do
        amqp_answers && break
        sleep 0.1
    done
    amqp_answers || die "rabbitmq started but AMQP does not answer at 127.0.0.1:$MQ_PORT"
    RMQ_PID=$(cat "$MQ_DIR/rabbitmq.pid")
    record_put rabbitmq "$RMQ_PID" "$MQ_PORT" "$wrapper"
}

rmq_ensure_access() {
    [[ $MQ_VHOST != / ]] && ctl add_vhost "$MQ_VHOST" >/dev/null 2>&1 || true
    if [[ $MQ_USER != guest ]]; then
        ctl add_user "$MQ_USER" "$MQ_PASSWORD" >/dev/null 2>&1 || true
    fi
    if [[ $MQ_USER != guest || $MQ_VHOST != / ]]; then
        ctl set_permissions -p "$MQ_VHOST" "$MQ_USER" '.*' '.*' '.*' >/dev/null
    fi
}

# The shipped definitions (deploy/rabbitmq/definitions.json: the operator policy) are imported
# through the CLI once the node runs, not loaded at boot: a node configured to load definitions
# at boot skips creating its default user and vhost. Once per data folder and whenever the file
# changes (stamp in the data folder), since every CLI call costs about a second.
rmq_import_definitions() { # stamp_file ctl-command...
    local stamp=$1 want
    shift
    want=$(sha256sum "$SHIPPED_RMQ/definitions.json" | cut -d' ' -f1)
    [[ -f $stamp && $(cat "$stamp") == "$want" ]] && return 0
    "$@" import_definitions "$SHIPPED_RMQ/definitions.json" >/dev/null 9>&- ||
        die "rabbitmq: could not import $SHIPPED_RMQ/definitions.json"
    printf '%s\n' "$want" >"$stamp"
}

start_rabbitmq() { # record_file
    local t0 pid rc=0
    t0=$(now)
    if pid=$(live_pid rabbitmq "$RMQ_CMD") && amqp_answers; then
        log "rabbitmq: already running (ours, pid $pid) at $MQ_HOST:$MQ_PORT"
        return
    fi
    amqp_answers || rc=$?
    if [[ $rc -eq 0 ]]; then
        log "rabbitmq: reusing the broker at $MQ_HOST:$MQ_PORT (not ours; never stopped here)"
        return
    fi
    refuse_other_port rabbitmq "$RMQ_CMD"
    record_del rabbitmq # stale: that process is gone
    [[ $rc -eq 2 ]] || die "something at $MQ_HOST:$MQ_PORT answers, but not as an AMQP broker"
    is_loopback "$MQ_HOST" || die "nothing answers at $MQ_HOST:$MQ_PORT and it is not local"
    [[ -x $RMQ_BIN/rabbitmq-server ]] || apt_install rabbitmq-server
    rmq_prepare
    local had_epmd=
    live_pid epmd "$EPMD_CMD" >/dev/null && had_epmd=1
    rmq_launch
    [[ -z $1 ]] || { echo rabbitmq >>"$1"; [[ -n $had_epmd ]] || echo epmd >>"$1"; }
    rmq_ensure_access
    rmq_import_definitions "$MQ_DIR/mnesia/payhook-definitions.sha256" ctl
    log "rabbitmq: started (pid $RMQ_PID, node $NODE, data $MQ_DIR) at 127.0.0.1:$MQ_PORT in $(since "$t0")"
}

stop_rabbitmq_node() {
    local kind pid _ wrapper
    read -r kind pid _ wrapper < <(record_get rabbitmq) || return 0
    if pid_is "$pid" "$RMQ_CMD"; then
        stop_pid "$pid" TERM 60 rabbitmq
    fi
    # The rabbitmq-server shell wrapper exits right after the VM; don't leave it behind.
    local i
    for ((i = 0; i < 50; i++)); do
        pid_is "$wrapper" rabbitmq-server || break
        sleep 0.1
    done
    if pid_is "$wrapper" rabbitmq-server; then
        stop_pid "$wrapper" TERM 10 "rabbitmq wrapper"
    fi
    record_del rabbitmq
}

stop_epmd() {
    local kind pid _
    read -r kind pid _ < <(record_get epmd) || return 0
    pid_is "$pid" "$EPMD_CMD" && stop_pid "$pid" TERM 10 epmd
    record_del epmd
}

# ----------------------------------------------------------------------------- cluster
#
# A local 3-node RabbitMQ cluster for failover tests and benchmarks, separate from the single
# node above (which it never touches). Node i (1..3) is payhook-c<i>@localhost with AMQP on
# 127.0.0.1:CLUSTER_PORT + 10(i-1), its distribution port on +1 and rabbitmq_prometheus on +2;
# one epmd on CLUSTER_PORT - 3 serves the three; CLI tools use CLUSTER_PORT + 30 .. +39.
# Data in .local/cluster/c<i>/ (one shared cookie: .local/cluster/cookie); what `cluster start`
# launched is recorded in .local/cluster/started ("c<i> PID PORT WRAPPER_PID", "epmd PID PORT").

# Below the kernel's ephemeral port range (32768-60999 here), so that no outgoing connection
# on a busy machine happens to hold one of the cluster's ports.
CL_PORT=${PAYHOOK_CLUSTER_AMQP_PORT:-25772}
CL_DIR="$LOCAL/cluster"
CL_EPMD_PORT=$((CL_PORT - 3))
CL_PROMETHEUS=${PAYHOOK_CLUSTER_PROMETHEUS:-0}
CL_NODES=(1 2 3)

cl_name() { printf 'payhook-c%d@localhost' "$1"; }
cl_amqp() { printf '%d' $((CL_PORT + 10 * ($1 - 1))); }
cl_dir() { printf '%s/c%d' "$CL_DIR" "$1"; }
cl_cmd() { printf '%s/home' "$(cl_dir "$1")"; } # in the node's command line (its -home)
cl_url() { printf 'amqp://guest:guest@127.0.0.1:%d/' "$(cl_amqp "$1")"; }

cl_index() { # c2 | 2 | payhook-c2@localhost -> 2
    local n=${1#payhook-}
    n=${n%@localhost}
    n=${n#c}
    [[ $n =~ ^[1-3]$ ]] || die "unknown cluster node: $1 (c1, c2 or c3)"
    printf '%d' "$n"
}

cl_env() { # i: the environment of node i and of CLI calls to it
    local d amqp
    d=$(cl_dir "$1")
    amqp=$(cl_amqp "$1")
    export HOME="$d/home"
    export ERL_EPMD_PORT="$CL_EPMD_PORT" ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf"
    export RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
    export RABBITMQ_MNESIA_BASE="$d/mnesia"
    export RABBITMQ_LOG_BASE="$d/log"
    export RABBITMQ_PID_FILE="$d/rabbitmq.pid"
    export RABBITMQ_NODENAME
    RABBITMQ_NODENAME=$(cl_name "$1")
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT="$amqp"
    export RABBITMQ_DIST_PORT=$((amqp + 1))
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} ${PAYHOOK_RABBITMQ_ERL_ARGS:-}"
    export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export RABBITMQ_CTL_DIST_PORT_MIN=$((CL_PORT + 30)) RABBITMQ_CTL_DIST_PORT_MAX=$((CL_PORT + 39))
}

cl_ctl() { # i rabbitmqctl-args...
    local i=$1
    shift
    (cl_env "$i" && "$RMQ_BIN/rabbitmqctl" -n "$(cl_name "$i")" "$@")
}
cl_queues() { # i rabbitmq-queues-args...
    local i=$1
    shift
    (cl_env "$i" && "$RMQ_BIN/rabbitmq-queues" -n "$(cl_name "$i")" "$@")
}

cl_answers() { amqp_answers 127.0.0.1 "$(cl_amqp "$1")"; }

port_free() { # port: exit 0 when a listener could bind 127.0.0.1:port (as the broker's would)
    python3 - "$1" <<'PY'
import socket, sys

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen(1)
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}
cl_live() { live_pid "c$1" "$(cl_cmd "$1")"; } # our node i's pid, if it runs

cl_prepare() { # i
    local d prom=
    d=$(cl_dir "$1")
    mkdir -p "$d/home" "$d/mnesia" "$d/log"
    if [[ ! -f $CL_DIR/cookie ]]; then
        (umask 077 && head -c 30 /dev/urandom | sha256sum | cut -c1-32 >"$CL_DIR/cookie")
    fi
    if ! cmp -s "$CL_DIR/cookie" "$d/home/.erlang.cookie"; then
        rm -f "$d/home/.erlang.cookie"
        cp "$CL_DIR/cookie" "$d/home/.erlang.cookie"
    fi
    chmod 400 "$d/home/.erlang.cookie"
    : >"$d/rabbitmq-env.conf"
    [[ $CL_PROMETHEUS != 1 ]] || prom=$(($(cl_amqp "$1") + 2))
    rmq_write_config "$d" "$prom" <<CONF
# Local test cluster node $(cl_name "$1"): 127.0.0.1 only; guest over loopback only.
listeners.tcp.default = 127.0.0.1:$(cl_amqp "$1")
loopback_users.guest = true
log.file.level = info
${PAYHOOK_RABBITMQ_EXTRA_CONF:-}
CONF
}

CL_WRAPPER=()
cl_launch() { # i: start node i in the background (cl_await waits for it)
    local d
    d=$(cl_dir "$1")
    cl_prepare "$1"
    rm -f "$d/rabbitmq.pid"
    (
        cl_env "$1"
        cd "$d"
        exec setsid "$RMQ_BIN/rabbitmq-server" </dev/null >>"$d/log/server.out" 2>&1 8>&- 9>&-
    ) &
    CL_WRAPPER[$1]=$!
}

cl_await() { # i wrapper_pid: exit 0 once node i has booted and answers AMQP
    local i=$1 wrapper=$2 d name j
    d=$(cl_dir "$i")
    name=$(cl_name "$i")
    for ((j = 0; j < 1200; j++)); do
        epmd -port "$CL_EPMD_PORT" -names 2>/dev/null | grep -q "^name ${name%@*} " && break
        alive "$wrapper" || break
        sleep 0.1
    done
    # Waits for the node's tables too, so a restarted member waits for the other members.
    if ! alive "$wrapper" || ! cl_ctl "$i" await_startup --timeout 300 >/dev/null 2>&1 9>&-; then
        tail -n 20 "$d/log/server.out" >&2 || true
        log "cluster: $name did not start (logs: $d/log)"
        return 1
    fi
    for ((j = 0; j < 100; j++)); do
        cl_answers "$i" && return 0
        sleep 0.1
    done
    log "cluster: $name started but AMQP does not answer at 127.0.0.1:$(cl_amqp "$i")"
    return 1
}

# Launch the given nodes together and wait for all of them; record each one that runs.
cl_boot() { # record_file i...
    local record=$1 i pid rc=0 t0
    shift
    t0=$(now)
    declare -A waiter=()
    for i in "$@"; do cl_launch "$i"; done
    for i in "$@"; do
        cl_await "$i" "${CL_WRAPPER[$i]}" &
        waiter[$i]=$!
    done
    for i in "$@"; do
        wait "${waiter[$i]}" || rc=1
        pid=$(cat "$(cl_dir "$i")/rabbitmq.pid" 2>/dev/null || true)
        if [[ -n $pid ]] && pid_is "$pid" "$(cl_cmd "$i")"; then
            record_put "c$i" "$pid" "$(cl_amqp "$i")" "${CL_WRAPPER[$i]}"
            [[ -z $record ]] || echo "c$i" >>"$record"
        fi
    done
    [[ $rc -eq 0 ]] || die "cluster: a node did not start; 'scripts/services.sh cluster stop' stops the others"
    log "cluster: booted $(printf 'c%s ' "$@")in $(since "$t0")"
}

cl_members() { # i -> the disc nodes node i knows, one a line
    cl_ctl "$1" cluster_status --formatter json 9>&- | python3 -c '
import json, sys
print("\n".join(json.load(sys.stdin)["disk_nodes"]))'
}
cl_running() { # i -> the running nodes node i sees, one a line
    cl_ctl "$1" cluster_status --formatter json 9>&- | python3 -c '
import json, sys
print("\n".join(json.load(sys.stdin)["running_nodes"]))'
}

# Nodes c1 does not list as members join it (in parallel); members rejoin on their own.
cl_join() {
    local members i rc=0 t0 joined=()
    t0=$(now)
    members=$(cl_members 1) || die "cluster: cannot read c1's cluster status"
    declare -A joiner=()
    for i in 2 3; do
        grep -qx "$(cl_name "$i")" <<<"$members" && continue
        (
            cl_ctl "$i" stop_app && cl_ctl "$i" join_cluster "$(cl_name 1)" &&
                cl_ctl "$i" start_app
        ) >>"$(cl_dir "$i")/log/join.out" 2>&1 9>&- &
        joiner[$i]=$!
        joined+=("c$i")
    done
    for i in "${!joiner[@]}"; do
        wait "${joiner[$i]}" || { rc=1; log "cluster: c$i could not join (log: $(cl_dir "$i")/log/join.out)"; }
    done
    [[ $rc -eq 0 ]] || die "cluster: join failed"
    [[ ${#joined[@]} -eq 0 ]] || log "cluster: ${joined[*]} joined c1 in $(since "$t0")"
}

cmd_cluster_start() {
    local record_file='' i t0 answering=0 missing=()
    if [[ ${1:-} == --record ]]; then
        record_file=${2:?--record needs a file}
    fi
    t0=$(now)
    for i in "${CL_NODES[@]}"; do
        if cl_live "$i" >/dev/null; then
            cl_answers "$i" || die "cluster: our c$i (pid $(cl_live "$i")) runs but does not answer at 127.0.0.1:$(cl_amqp "$i"); try 'scripts/services.sh cluster restart c$i'"
        else
            local rc=0
            cl_answers "$i" || rc=$?
            case $rc in
                0) answering=$((answering + 1)) ;;
                2) missing+=("$i") ;;
                *) die "cluster: something that is not AMQP holds 127.0.0.1:$(cl_amqp "$i"); pick other ports with PAYHOOK_CLUSTER_AMQP_PORT" ;;
            esac
        fi
    done
    if [[ $answering -eq ${#CL_NODES[@]} ]]; then
        log "cluster: reusing the brokers at 127.0.0.1:$(cl_amqp 1),$(cl_amqp 2),$(cl_amqp 3) (not ours; never stopped here)"
        return
    fi
    [[ $answering -eq 0 ]] || die "cluster: some of the ports $(cl_amqp 1),$(cl_amqp 2),$(cl_amqp 3) answer, but not as our nodes"
    if [[ ${#missing[@]} -gt 0 ]]; then
        local port
        for i in "${missing[@]}"; do
            # A port some other socket holds (another program's listener, or a connection it
            # accepted there) makes the node fail to boot: say so before trying.
            local ports=("$(cl_amqp "$i")" $(($(cl_amqp "$i") + 1)))
            [[ $CL_PROMETHEUS != 1 ]] || ports+=($(($(cl_amqp "$i") + 2)))
            for port in "${ports[@]}"; do
                port_free "$port" ||
                    die "cluster: 127.0.0.1:$port (c$i's) is in use by another program; pick other ports with PAYHOOK_CLUSTER_AMQP_PORT"
            done
        done
        [[ -x $RMQ_BIN/rabbitmq-server ]] || apt_install rabbitmq-server
        local had_epmd=
        live_pid epmd "$EPMD_CMD" >/dev/null && had_epmd=1
        start_epmd
        [[ -z $record_file || -n $had_epmd ]] || echo epmd >>"$record_file"
        for i in "${missing[@]}"; do record_del "c$i"; done # stale records
        cl_boot "$record_file" "${missing[@]}"
    fi
    cl_join
    rmq_import_definitions "$(cl_dir 1)/mnesia/payhook-definitions.sha256" cl_ctl 1
    log "cluster: ready in $(since "$t0"): PAYHOOK_CLUSTER_AMQP_URLS=$(cl_urls)"
}

cl_urls() { printf '%s,%s,%s' "$(cl_url 1)" "$(cl_url 2)" "$(cl_url 3)"; }

# Stop the given nodes of ours together (SIGTERM: a clean shutdown), then their wrappers.
cl_stop_nodes() { # i...
    local i kind pid port wrapper t0 j
    declare -A pids=() wrappers=()
    for i in "$@"; do
        read -r kind pid port wrapper < <(record_get "c$i") || continue
        if pid_is "$pid" "$(cl_cmd "$i")"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids[$i]=$pid
        fi
        wrappers[$i]=$wrapper
    done
    t0=$(now)
    for i in "${!pids[@]}"; do
        for ((j = 0; j < 600; j++)); do
            alive "${pids[$i]}" || break
            sleep 0.1
        done
        if alive "${pids[$i]}"; then
            log "cluster: c$i (pid ${pids[$i]}) still running after 60s; sending SIGKILL"
            kill -KILL "${pids[$i]}" 2>/dev/null || true
        else
            log "cluster: c$i (pid ${pids[$i]}) stopped in $(since "$t0")"
        fi
    done
    for i in "${!wrappers[@]}"; do
        for ((j = 0; j < 50; j++)); do
            pid_is "${wrappers[$i]}" rabbitmq-server || break
            sleep 0.1
        done
        pid_is "${wrappers[$i]}" rabbitmq-server && stop_pid "${wrappers[$i]}" TERM 10 "c$i wrapper"
        record_del "c$i"
    done
}

cmd_cluster_stop() { # [c1 c2 c3 epmd ...], default all
    local wanted=" ${*:-c1 c2 c3 epmd} " kind nodes=() t0
    for kind in $wanted; do
        case $kind in epmd) ;; *) cl_index "$kind" >/dev/null ;; esac
    done
    t0=$(now)
    for kind in $wanted; do
        [[ $kind == epmd ]] || nodes+=("$(cl_index "$kind")")
    done
    [[ ${#nodes[@]} -eq 0 ]] || cl_stop_nodes "${nodes[@]}"
    # The cluster's epmd goes only once no node of ours needs it any more.
    if [[ $wanted == *" epmd "* ]] && ! grep -q '^c' "$STATE" 2>/dev/null; then
        stop_epmd
    fi
    [[ -s $STATE ]] || rm -f "$STATE"
    log "cluster: stop done in $(since "$t0")"
}

cmd_cluster_kill() { # node: SIGKILL, as a crash would
    local i pid t0 kind port wrapper j
    i=$(cl_index "${1:?node (c1, c2 or c3)}")
    pid=$(cl_live "$i") || die "cluster: c$i is not a running node of ours"
    read -r kind pid port wrapper < <(record_get "c$i")
    t0=$(now)
    kill -KILL "$pid"
    for ((j = 0; j < 100; j++)); do
        alive "$pid" || pid_is "$wrapper" rabbitmq-server || break
        sleep 0.1
    done
    record_del "c$i"
    log "cluster: killed c$i (pid $pid, SIGKILL); gone after $(since "$t0")"
}

cmd_cluster_restart() { # node: stop it if it runs (cleanly), start it again with its data
    local i t0
    i=$(cl_index "${1:?node (c1, c2 or c3)}")
    t0=$(now)
    if cl_answers "$i" && ! cl_live "$i" >/dev/null; then
        die "cluster: c$i at 127.0.0.1:$(cl_amqp "$i") is not ours to restart"
    fi
    cl_stop_nodes "$i"
    live_pid epmd "$EPMD_CMD" >/dev/null || start_epmd
    cl_boot "" "$i"
    log "cluster: restarted c$i (pid $(cl_live "$i")) in $(since "$t0")"
}

cmd_cluster_status() {
    local i pid rc=0 up=
    for i in "${CL_NODES[@]}"; do
        if cl_answers "$i"; then
            if pid=$(cl_live "$i"); then
                echo "c$i: running (ours, pid $pid, node $(cl_name "$i"), data $(cl_dir "$i")) at 127.0.0.1:$(cl_amqp "$i")"
                up=${up:-$i}
            else
                echo "c$i: answering at 127.0.0.1:$(cl_amqp "$i") (not ours)"
                rc=3
            fi
        else
            echo "c$i: nothing answers at 127.0.0.1:$(cl_amqp "$i")"
            rc=3
        fi
    done
    if [[ -n $up ]]; then
        echo "cluster: running nodes seen by c$up: $(cl_running "$up" | tr '\n' ' ')"
    fi
    return $rc
}

cmd_cluster() {
    local sub=${1:-}
    shift || true
    # From here on the state file, epmd and its log are the cluster's.
    STATE="$CL_DIR/started"
    EPMD_PORT=$CL_EPMD_PORT
    EPMD_LOG="$CL_DIR/epmd.log"
    mkdir -p "$CL_DIR"
    case $sub in
        start | stop | kill | restart)
            exec 8>"$CL_DIR/cluster.lock"
            flock 8
            ;;
    esac
    case $sub in
        start) cmd_cluster_start "$@" ;;
        stop) cmd_cluster_stop "$@" ;;
        kill) cmd_cluster_kill "$@" ;;
        restart) cmd_cluster_restart "$@" ;;
        status) cmd_cluster_status ;;
        env) printf 'export PAYHOOK_CLUSTER_AMQP_URLS=%s\n' "$(cl_urls)" ;; # no shell metacharacters
        ctl | queues)
            local i
            i=$(cl_index "${1:?node (c1, c2 or c3)}")
            shift
            cl_live "$i" >/dev/null || die "cluster: c$i is not a running node of ours"
            if [[ $sub == ctl ]]; then cl_ctl "$i" "$@"; else cl_queues "$i" "$@"; fi
            ;;
        *)
            echo "usage: $0 cluster {start [--record FILE]|stop [c1|c2|c3|epmd ...]|status|env|kill NODE|restart NODE|ctl NODE ARGS...|queues NODE ARGS...}" >&2
            exit 2
            ;;
    esac
}

# ------------------------------------------------------------------------------ commands

cmd_start() {
    local record_file=
    if [[ ${1:-} == --record ]]; then
        record_file=${2:?--record needs a file}
    fi
    lock
    local t0
    t0=$(now)
    start_postgres "$record_file"
    start_rabbitmq "$record_file"
    log "ready in $(since "$t0"): PAYHOOK_DATABASE_URL=$DATABASE_URL PAYHOOK_AMQP_URL=$AMQP_URL"
}

cmd_stop() {
    local wanted=" ${*:-rabbitmq epmd postgres} " kind
    lock
    for kind in $wanted; do
        case $kind in rabbitmq | epmd | postgres) ;; *) die "unknown server: $kind" ;; esac
    done
    # Broker first, its epmd after it, then Postgres, whatever order the caller gave.
    for kind in rabbitmq epmd postgres; do
        [[ $wanted == *" $kind "* ]] || continue
        case $kind in
            rabbitmq) stop_rabbitmq_node ;;
            epmd)
                # Only once no node of ours needs it any more.
                record_get rabbitmq >/dev/null || stop_epmd ;;
            postgres) stop_postgres ;;
        esac
    done
    [[ -s $STATE ]] || rm -f "$STATE"
}

cmd_restart_rabbitmq() {
    lock
    live_pid rabbitmq "$RMQ_CMD" >/dev/null || die "the broker at $MQ_HOST:$MQ_PORT is not ours to restart"
    local t0
    t0=$(now)
    stop_rabbitmq_node
    rmq_launch
    log "rabbitmq: restarted (pid $RMQ_PID) in $(since "$t0")"
}

cmd_restart_postgres() {
    lock
    live_pid postgres "$PG_CMD" >/dev/null || die "the Postgres at $PG_HOST:$PG_PORT is not ours to restart"
    local t0
    t0=$(now)
    stop_postgres
    start_postgres ""
    log "postgres: restarted in $(since "$t0")"
}

cmd_is_ours() {
    case ${1:?postgres or rabbitmq} in
        postgres) live_pid postgres "$PG_CMD" >/dev/null && pg_answers ;;
        rabbitmq) live_pid rabbitmq "$RMQ_CMD" >/dev/null && amqp_answers ;;
        *) die "unknown server: $1" ;;
    esac
}

cmd_status() {
    local pid rc=0
    if pg_answers; then
        if pid=$(live_pid postgres "$PG_CMD"); then
            echo "postgres: running (ours, pid $pid, data $(record_get postgres | cut -d' ' -f4)) at $PG_HOST:$PG_PORT"
        else
            echo "postgres: answering at $PG_HOST:$PG_PORT (not ours)"
        fi
    else
        echo "postgres: nothing answers at $PG_HOST:$PG_PORT"
        rc=3
    fi
    if amqp_answers; then
        if pid=$(live_pid rabbitmq "$RMQ_CMD"); then
            echo "rabbitmq: running (ours, pid $pid, node $NODE, epmd pid $(live_pid epmd "$EPMD_CMD" || echo '?'), data $MQ_DIR) at $MQ_HOST:$MQ_PORT"
        else
            echo "rabbitmq: answering at $MQ_HOST:$MQ_PORT (not ours)"
        fi
    else
        echo "rabbitmq: nothing answers at $MQ_HOST:$MQ_PORT"
        rc=3
    fi
    return $rc
}

cmd_env() {
    printf 'export PAYHOOK_DATABASE_URL=%q\n' "$DATABASE_URL"
    printf 'export PAYHOOK_AMQP_URL=%q\n' "$AMQP_URL"
    if cmd_is_ours rabbitmq 2>/dev/null; then
        printf 'export PAYHOOK_TEST_BROKER_CONTROL=1\n'
    fi
}

case ${1:-} in
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    status) cmd_status ;;
    env) cmd_env ;;
    restart-rabbitmq) cmd_restart_rabbitmq ;;
    restart-postgres) cmd_restart_postgres ;;
    is-ours) shift; cmd_is_ours "$@" ;;
    cluster) shift; cmd_cluster "$@" ;;
    ctl)
        shift
        # Without our node a CLI call would only start a stray epmd of its own.
        live_pid rabbitmq "$RMQ_CMD" >/dev/null || die "no private RabbitMQ node of ours at port $MQ_PORT"
        ctl "$@"
        ;;
    *)
        echo "usage: $0 {start [--record FILE]|stop [postgres|rabbitmq|epmd ...]|status|env|restart-rabbitmq|restart-postgres|is-ours KIND|ctl ARGS...|cluster ...}" >&2
        exit 2
        ;;
esac
