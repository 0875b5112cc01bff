#!/usr/bin/env bash
# Postgres, Redis and nginx for velro-authz's tests and demo, on any Debian machine.
#
#   eval "$(scripts/services.sh env)"   start what is missing, export DATABASE_URL, REDIS_URL
#                                       and VELRO_NGINX
#   source scripts/services.sh          the same, from an interactive bash
#   scripts/services.sh up              = env (prints the export lines on stdout, progress on stderr)
#   scripts/services.sh down            stop the project-local Postgres and Redis
#   scripts/services.sh status          what is running, what the URLs are
#
# DATABASE_URL / REDIS_URL, when set and reachable, are used as they are and
# nothing is started for them. Otherwise this starts throwaway, project-local
# servers whose state lives in .dev/ (git-ignored; delete it to start afresh):
#   Postgres: cluster in .dev/pg, 127.0.0.1:55432 only, unix socket in .dev,
#             trust auth, fsync off (test data only), database "velro";
#             DATABASE_URL=postgres://postgres@127.0.0.1:55432/velro
#   Redis:    127.0.0.1:56379, no persistence; REDIS_URL=redis://127.0.0.1:56379
# Missing packages (postgresql, redis-server) are installed with apt-get, via
# sudo when not root. Postgres refuses to run as root: as root, the cluster
# belongs to and runs as the `postgres` system user (created if missing).
# nginx (for the nginx auth_request end-to-end test, which starts its own nginx
# on a free port) is installed the same way but never started as a service:
# VELRO_NGINX=/usr/sbin/nginx. The test fails if VELRO_NGINX names no nginx.
#
# Settings: VELRO_DEV_PG_PORT (55432), VELRO_DEV_REDIS_PORT (56379),
#           VELRO_DEV_READY_TIMEOUT (seconds to wait for a server, 60).

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    # Sourced: do the work in a child (so its `set -e` and `exit` stay there),
    # then export the result into this shell.
    if __velro_services_env=$(bash "${BASH_SOURCE[0]}" env); then
        eval "$__velro_services_env"
        unset __velro_services_env
        return 0
    fi
    unset __velro_services_env
    return 1
fi

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
DEV="$ROOT/.dev"
PG_PORT=${VELRO_DEV_PG_PORT:-55432}
REDIS_PORT=${VELRO_DEV_REDIS_PORT:-56379}
READY_TIMEOUT=${VELRO_DEV_READY_TIMEOUT:-60}
PG_DB=velro
LOCAL_DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/$PG_DB"
LOCAL_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
REDIS_PIDFILE="$DEV/redis.pid"
REDIS_LOG="$DEV/redis.log"

log() { printf 'services: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
is_root() { [[ $(id -u) -eq 0 ]]; }
have() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------- helpers

APT_UPDATED=
apt_install() {
    have apt-get || die "$* is needed but this machine has no apt-get: install it yourself, or set DATABASE_URL/REDIS_URL to running servers"
    local sudo=()
    if ! is_root; then
        have sudo || die "$* is needed: run as root, install sudo, or run 'apt-get install -y $*' yourself"
        sudo=(sudo)
    fi
    mkdir -p "$DEV"
    log "installing $* with apt-get (first run only; output in $DEV/apt.log)"
    if [[ -z $APT_UPDATED ]]; then
        "${sudo[@]}" apt-get update -q >>"$DEV/apt.log" 2>&1 \
            || { tail -n 20 "$DEV/apt.log" >&2; die "apt-get update failed (see $DEV/apt.log)"; }
        APT_UPDATED=1
    fi
    # A package's postinst may fail to start its system service in a container;
    # the caller checks for the binaries it needs instead of trusting the status.
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "$@" >>"$DEV/apt.log" 2>&1 \
        || log "warning: apt-get install $* reported an error (see $DEV/apt.log); checking what got installed"
}

# Bounded TCP connect (a plain /dev/tcp open can hang for minutes).
tcp_open() {
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# "host port" of a postgres:// or redis:// URL (first host; default port $2).
url_host_port() {
    local rest=${1#*://} host port
    rest=${rest%%/*}; rest=${rest%%\?*}; rest=${rest##*@}; rest=${rest%%,*}
    if [[ $rest == \[*\]* ]]; then
        host=${rest%%]*}; host=${host#[}; port=${rest##*]}; port=${port#:}
    else
        host=${rest%%:*}; port=${rest#"$host"}; port=${port#:}
    fi
    echo "${host:-127.0.0.1} ${port:-$2}"
}

shell_quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
emit() { printf 'export %s=%s\n' "$1" "$(shell_quote "$2")"; }

wait_until() { # seconds description command...
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# ---------------------------------------------------------------- Postgres

PGBIN=
find_pg_bin() {
    local d
    PGBIN=
    while IFS= read -r d; do
        [[ -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]] && PGBIN=$d
    done < <(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V)
    if [[ -z $PGBIN ]] && have pg_ctl && have initdb; then
        PGBIN=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
    fi
    [[ -n $PGBIN ]]
}

ensure_pg_bin() {
    find_pg_bin && return 0
    apt_install postgresql
    find_pg_bin || die "no Postgres server binaries (initdb, pg_ctl) even after installing (see $DEV/apt.log): install the 'postgresql' package"
}

# psql / pg_isready: next to the server binaries, else on PATH, else install
# postgresql-client (when $1 = install).
pg_client() {
    if [[ -n $PGBIN && -x $PGBIN/$1 ]]; then echo "$PGBIN/$1"; return 0; fi
    if have "$1"; then command -v "$1"; return 0; fi
    return 1
}

ensure_pg_user() {
    id -u postgres >/dev/null 2>&1 && return 0
    log "creating the 'postgres' system user (Postgres will not run as root)"
    local group=(--user-group)
    getent group postgres >/dev/null 2>&1 && group=(--gid postgres)
    useradd --system "${group[@]}" --no-create-home --home-dir /var/lib/postgresql \
        --shell /usr/sbin/nologin --comment 'PostgreSQL administrator' postgres \
        || die "could not create the 'postgres' user"
}

# Runs a Postgres server tool: as root, as the postgres user, from / (the
# caller's directory may not be readable by postgres).
as_pg() {
    if is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# Where the cluster lives: .dev/pg, unless (as root) the postgres user cannot
# reach .dev (say the checkout is under /root, mode 700), or the socket path
# would be too long for a unix socket; then under /tmp, with .dev/pg a symlink.
PGBASE= PGDATA_DIR= PGSOCK= PGLOG=
pg_paths() {
    mkdir -p "$DEV"
    PGBASE=$DEV
    local reachable=1
    if is_root && id -u postgres >/dev/null 2>&1; then
        (cd / && runuser -u postgres -- test -x "$DEV") 2>/dev/null || reachable=0
    fi
    if ((! reachable)) || ((${#DEV} + 24 > 100)); then
        PGBASE="${TMPDIR:-/tmp}/velro-authz-dev-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)"
        mkdir -p "$PGBASE"
        chmod 755 "$PGBASE"
        [[ -e $DEV/pg || -L $DEV/pg ]] || ln -s "$PGBASE/pg" "$DEV/pg"
    fi
    PGDATA_DIR=$PGBASE/pg
    [[ -L $PGDATA_DIR ]] && PGDATA_DIR=$(readlink -f "$PGDATA_DIR")
    PGSOCK=$PGBASE/pg-sock
    PGLOG=$PGBASE/pg.log
}

pg_running() {
    [[ -n $PGBIN && -f $PGDATA_DIR/PG_VERSION ]] || return 1
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1
}

# psql against the local cluster, ignoring the caller's PG* environment.
local_psql() {
    env -u PGHOST -u PGHOSTADDR -u PGPORT -u PGUSER -u PGDATABASE -u PGSSLMODE \
        -u PGSERVICE -u PGOPTIONS -u PGPASSWORD \
        "$PSQL" -X -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"
}

pg_init() {
    local major
    major=$("$PGBIN/postgres" --version | sed -n 's/.* \([0-9][0-9]*\)[.].*/\1/p')
    if [[ -f $PGDATA_DIR/PG_VERSION && $(cat "$PGDATA_DIR/PG_VERSION") != "$major" ]]; then
        log "the cluster in $PGDATA_DIR is from Postgres $(cat "$PGDATA_DIR/PG_VERSION"), the server here is $major: re-creating it (throwaway data)"
        rm -rf -- "${PGDATA_DIR:?}"
    fi
    if [[ ! -f $PGDATA_DIR/PG_VERSION ]]; then
        # A half-made cluster (interrupted initdb) is discarded too.
        [[ -d $PGDATA_DIR ]] && rm -rf -- "${PGDATA_DIR:?}"
        mkdir -p "$PGDATA_DIR"
        chmod 700 "$PGDATA_DIR"
        is_root && chown postgres:postgres "$PGDATA_DIR"
        log "creating a Postgres $major cluster in $PGDATA_DIR"
        as_pg "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust -E UTF8 --no-locale \
            >"$DEV/pg-initdb.log" 2>&1 \
            || { tail -n 20 "$DEV/pg-initdb.log" >&2; die "initdb failed (full output in $DEV/pg-initdb.log)"; }
        echo "include_if_exists = 'velro-dev.conf'" >>"$PGDATA_DIR/postgresql.conf"
    fi
    # Rewritten on every start, so a moved checkout or a new port just works.
    mkdir -p "$PGSOCK"
    touch "$PGLOG"
    cat >"$PGDATA_DIR/velro-dev.conf" <<EOF
# Written by scripts/services.sh on every start; edits here are lost.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PGSOCK'
max_connections = 200
# Throwaway test data: trade crash safety for speed.
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    if is_root; then
        chown postgres:postgres "$PGSOCK" "$PGLOG" "$PGDATA_DIR/velro-dev.conf" "$PGDATA_DIR/postgresql.conf"
    fi
}

pg_up() {
    ensure_pg_bin
    is_root && ensure_pg_user
    pg_paths
    PSQL=$(pg_client psql) && PG_ISREADY=$(pg_client pg_isready) || {
        apt_install postgresql-client
        PSQL=$(pg_client psql) && PG_ISREADY=$(pg_client pg_isready) || die "no psql/pg_isready: install postgresql-client"
    }
    if pg_running; then
        log "postgres: already running on 127.0.0.1:$PG_PORT ($PGDATA_DIR)"
    else
        tcp_open 127.0.0.1 "$PG_PORT" \
            && die "port $PG_PORT is taken by another process (another checkout's cluster?): stop it, or set VELRO_DEV_PG_PORT"
        pg_init
        log "postgres: starting on 127.0.0.1:$PG_PORT (log: $PGLOG)"
        as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGLOG" -w -t "$READY_TIMEOUT" start >&2 9>&- \
            || { tail -n 20 "$PGLOG" >&2; die "postgres did not start (log: $PGLOG)"; }
    fi
    wait_until "$READY_TIMEOUT" postgres "$PG_ISREADY" -q -h 127.0.0.1 -p "$PG_PORT" \
        || die "postgres on 127.0.0.1:$PG_PORT not ready after ${READY_TIMEOUT}s (log: $PGLOG)"
    if [[ $(local_psql -d postgres -Atqc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'") != 1 ]]; then
        log "postgres: creating database $PG_DB"
        local_psql -d postgres -qc "CREATE DATABASE $PG_DB" >&2
    fi
}

pg_down() {
    find_pg_bin || true
    pg_paths
    if [[ ! -f $PGDATA_DIR/postmaster.pid ]]; then
        log "postgres: not running"
        return 0
    fi
    if [[ -n $PGBIN ]]; then
        log "postgres: stopping"
        as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t "$READY_TIMEOUT" stop >&2 && return 0
    fi
    # No pg_ctl (uninstalled since?): ask the postmaster named in its pid file.
    local pid
    pid=$(head -n 1 "$PGDATA_DIR/postmaster.pid")
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        kill -INT "$pid"
        wait_until "$READY_TIMEOUT" postgres bash -c '! kill -0 "$0" 2>/dev/null' "$pid" \
            || die "postgres (pid $pid) did not stop"
    fi
}

# Succeeds when the URL's server answers; the reason for a failure goes to stderr.
pg_url_ok() {
    local psql out hp
    find_pg_bin || true
    if psql=$(pg_client psql); then
        out=$(PGCONNECT_TIMEOUT=3 "$psql" "$1" -XAtqc 'SELECT 1' 2>&1) && return 0
        log "DATABASE_URL not usable: ${out%%$'\n'*}"
        return 1
    fi
    hp=$(url_host_port "$1" 5432)
    tcp_open ${hp% *} ${hp#* } && return 0
    log "DATABASE_URL not reachable (${hp/ /:})"
    return 1
}

# ---------------------------------------------------------------- Redis

REDIS_SERVER=
find_redis() {
    REDIS_SERVER=$(command -v redis-server 2>/dev/null || true)
    [[ -z $REDIS_SERVER && -x /usr/sbin/redis-server ]] && REDIS_SERVER=/usr/sbin/redis-server
    [[ -n $REDIS_SERVER ]]
}

redis_ping() { # host port
    if have redis-cli; then
        [[ $(timeout 3 redis-cli -h "$1" -p "$2" ping 2>/dev/null) == PONG ]]
    else
        timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1" || exit 1
            printf "PING\r\n" >&3; IFS= read -r -t 2 line <&3; [[ $line == +PONG* ]]' "$1" "$2" 2>/dev/null
    fi
}

# The pid of our redis-server, if it runs.
redis_pid() {
    local pid
    [[ -f $REDIS_PIDFILE ]] || return 1
    pid=$(<"$REDIS_PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    grep -q redis "/proc/$pid/comm" 2>/dev/null || return 1
    echo "$pid"
}

redis_up() {
    mkdir -p "$DEV"
    if redis_pid >/dev/null; then
        log "redis: already running on 127.0.0.1:$REDIS_PORT"
    else
        find_redis || { apt_install redis-server; find_redis || die "no redis-server even after installing (see $DEV/apt.log): install the 'redis-server' package"; }
        tcp_open 127.0.0.1 "$REDIS_PORT" \
            && die "port $REDIS_PORT is taken by another process (another checkout's redis?): stop it, or set VELRO_DEV_REDIS_PORT"
        log "redis: starting on 127.0.0.1:$REDIS_PORT (log: $REDIS_LOG)"
        rm -f "$REDIS_PIDFILE"
        "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
            --daemonize yes --pidfile "$REDIS_PIDFILE" --logfile "$REDIS_LOG" --dir "$DEV" \
            >&2 9>&- || die "redis-server did not start (log: $REDIS_LOG)"
    fi
    wait_until "$READY_TIMEOUT" redis redis_ping 127.0.0.1 "$REDIS_PORT" \
        || { tail -n 20 "$REDIS_LOG" >&2 || true; die "redis on 127.0.0.1:$REDIS_PORT not ready after ${READY_TIMEOUT}s (log: $REDIS_LOG)"; }
}

redis_down() {
    local pid
    if ! pid=$(redis_pid); then
        log "redis: not running"
        rm -f "$REDIS_PIDFILE"
        return 0
    fi
    log "redis: stopping (pid $pid)"
    kill -TERM "$pid"
    wait_until "$READY_TIMEOUT" redis bash -c '! kill -0 "$0" 2>/dev/null' "$pid" \
        || die "redis (pid $pid) did not stop"
    rm -f "$REDIS_PIDFILE"
}

redis_url_ok() {
    local out hp
    if have redis-cli && [[ $1 == redis://* ]]; then
        out=$(timeout 5 redis-cli -u "$1" ping 2>/dev/null) || true
        [[ $out == PONG ]] && return 0
        log "REDIS_URL not usable: ${out:-no answer}"
        return 1
    fi
    hp=$(url_host_port "$1" 6379)
    tcp_open ${hp% *} ${hp#* } && return 0
    log "REDIS_URL not reachable (${hp/ /:})"
    return 1
}

# ---------------------------------------------------------------- nginx

NGINX_BIN=
find_nginx() {
    NGINX_BIN=
    local candidate
    for candidate in "${VELRO_NGINX:-}" /usr/sbin/nginx "$(command -v nginx 2>/dev/null || true)"; do
        if [[ -n $candidate && -x $candidate ]]; then
            NGINX_BIN=$candidate
            return 0
        fi
    done
    return 1
}

# Runs a command as root (directly, or with sudo).
as_root() {
    if is_root; then
        "$@"
    else
        have sudo || die "$1 needs root: run as root or install sudo"
        sudo "$@"
    fi
}

POLICY_RC=/usr/sbin/policy-rc.d
POLICY_RC_OURS=
drop_policy_rc() {
    [[ -n $POLICY_RC_OURS ]] && as_root rm -f "$POLICY_RC"
    POLICY_RC_OURS=
}

# Installs the Debian package without letting it start a system nginx on :80:
# while it installs, a policy-rc.d (honoured by invoke-rc.d and
# deb-systemd-invoke) forbids starting services, unless one is already there
# (containers usually have one). Under systemd the unit is also disabled.
nginx_up() {
    if find_nginx; then
        log "nginx: $NGINX_BIN"
        return 0
    fi
    if [[ ! -e $POLICY_RC ]] && have apt-get; then
        printf '#!/bin/sh\n# Written by velro-authz scripts/services.sh while it installs nginx.\nexit 101\n' \
            | as_root tee "$POLICY_RC" >/dev/null && as_root chmod 755 "$POLICY_RC" && POLICY_RC_OURS=1
        trap drop_policy_rc EXIT
    fi
    apt_install nginx
    drop_policy_rc
    trap - EXIT
    if [[ -d /run/systemd/system ]] && have systemctl; then
        as_root systemctl disable --now nginx.service >>"$DEV/apt.log" 2>&1 || true
    fi
    if find_nginx; then
        log "nginx: installed $NGINX_BIN (not started as a service; tests run their own)"
        return 0
    fi
    log "warning: no nginx even after installing (see $DEV/apt.log): the nginx end-to-end test will fail; install the 'nginx' package"
    return 1
}

# ---------------------------------------------------------------- commands

lock() {
    mkdir -p "$DEV"
    have flock || return 0
    exec 9>"$DEV/.services.lock"
    flock -w 600 9 || die "another scripts/services.sh is still running"
}

cmd_up() {
    lock
    local db_url redis_url
    if [[ -n ${DATABASE_URL:-} && $DATABASE_URL != "$LOCAL_DATABASE_URL" ]] && pg_url_ok "$DATABASE_URL"; then
        log "postgres: using DATABASE_URL as given"
        db_url=$DATABASE_URL
    else
        [[ -n ${DATABASE_URL:-} && $DATABASE_URL != "$LOCAL_DATABASE_URL" ]] \
            && log "postgres: DATABASE_URL unreachable, starting the project-local one instead"
        pg_up
        db_url=$LOCAL_DATABASE_URL
    fi
    if [[ -n ${REDIS_URL:-} && $REDIS_URL != "$LOCAL_REDIS_URL" ]] && redis_url_ok "$REDIS_URL"; then
        log "redis: using REDIS_URL as given"
        redis_url=$REDIS_URL
    else
        [[ -n ${REDIS_URL:-} && $REDIS_URL != "$LOCAL_REDIS_URL" ]] \
            && log "redis: REDIS_URL unreachable, starting the project-local one instead"
        redis_up
        redis_url=$LOCAL_REDIS_URL
    fi
    emit DATABASE_URL "$db_url"
    emit REDIS_URL "$redis_url"
    if nginx_up; then
        emit VELRO_NGINX "$NGINX_BIN"
    fi
}

cmd_down() {
    lock
    pg_down
    redis_down
}

cmd_status() {
    local ok=0 pid
    find_pg_bin || true
    pg_paths
    if pg_running; then
        echo "postgres: running on 127.0.0.1:$PG_PORT, data $PGDATA_DIR, log $PGLOG"
        echo "          DATABASE_URL=$LOCAL_DATABASE_URL"
    else
        echo "postgres: not running (project-local, port $PG_PORT)"
        ok=1
    fi
    if pid=$(redis_pid); then
        echo "redis:    running on 127.0.0.1:$REDIS_PORT, pid $pid, log $REDIS_LOG"
        echo "          REDIS_URL=$LOCAL_REDIS_URL"
    else
        echo "redis:    not running (project-local, port $REDIS_PORT)"
        ok=1
    fi
    if [[ -n ${DATABASE_URL:-} && $DATABASE_URL != "$LOCAL_DATABASE_URL" ]]; then
        if pg_url_ok "$DATABASE_URL" 2>/dev/null; then
            echo "DATABASE_URL (from the environment) is reachable: up would use it"
        else
            echo "DATABASE_URL (from the environment) is not reachable"
        fi
    fi
    if [[ -n ${REDIS_URL:-} && $REDIS_URL != "$LOCAL_REDIS_URL" ]]; then
        if redis_url_ok "$REDIS_URL" 2>/dev/null; then
            echo "REDIS_URL (from the environment) is reachable: up would use it"
        else
            echo "REDIS_URL (from the environment) is not reachable"
        fi
    fi
    if find_nginx; then
        echo "nginx:    $NGINX_BIN (not a service: the nginx test starts its own)"
    else
        echo "nginx:    not installed (up installs it)"
    fi
    return "$ok"
}

usage() {
    sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 64
}

case ${1:-} in
    up | env) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    *) usage ;;
esac
