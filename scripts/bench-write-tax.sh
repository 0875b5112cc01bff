#!/usr/bin/env bash
# Write-tax benchmark (issue 11): what the NOTIFY triggers cost the
# application's own writes. One run, one scratch database, three trigger sets
# taking turns on the same data:
#   none   every velro-authz notify trigger disabled (the trigger-less baseline)
#   0003   the triggers of migrations/0003 (this repository's)
#   0002   the triggers of migrations/0002 (every row change announced),
#          installed beside them under the name velro_authz_v0002_notify
# and three write mixes, each `pgbench -T <seconds>` at <clients> writers:
#   complete         (a) UPDATE a generation's status pending <-> completed
#   insert-complete  (b) INSERT a generation, then mark it completed, one transaction
#   grants           (c) grant-or-revoke a team membership / a project share (1:1)
# The pgbench scripts and the seed data are in scripts/write-tax/. Runs of one
# mix rotate the order of the trigger sets each round (noise, caches, table
# growth hit each set alike); the table shows the median tps and the range.
# First, the same writes in one session without commits, for the Postgres
# backend's CPU time per write: what the triggers cost apart from the commit.
# Results and how to read them: docs/performance.md.
#
# Usage:
#   scripts/bench-write-tax.sh
#   VELRO_WRITETAX_SECONDS=10 VELRO_WRITETAX_CLIENTS=16 VELRO_WRITETAX_ROUNDS=3 \
#     VELRO_WRITETAX_MIXES="complete insert-complete grants" scripts/bench-write-tax.sh
# Other settings: VELRO_WRITETAX_THREADS (pgbench -j, 2), VELRO_WRITETAX_CPU_REPS
# (repetitions of the server-CPU measurement, 7; it needs a superuser and is
# skipped otherwise), VELRO_WRITETAX_KEEP=1 (keep the scratch database).
#
# Postgres (VELRO_WRITETAX_SERVER):
#   private (default)  a throwaway cluster of its own (initdb in a temp dir, a
#                      free port on 127.0.0.1, stock settings: fsync and
#                      synchronous_commit on), stopped and deleted at the end.
#                      Commit latency is what NOTIFY's tax is made of, so the
#                      benchmark must not share WAL and checkpoints with other
#                      work (a test suite creating and dropping databases on a
#                      shared server forces checkpoints that swamp the result).
#   url                the server DATABASE_URL names (scripts/services.sh's
#                      when unset).
# Either way the data lives in a scratch database, velro_authz_writetax_<pid>,
# created here and dropped at the end: no other data is touched. Needs psql,
# pgbench and (private) the server binaries: on Debian all but psql ship in
# the server package (`postgresql`, e.g. postgresql-15 in bookworm), psql in
# `postgresql-client`; missing ones are installed with apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${VELRO_WRITETAX_SECONDS:-10}
CLIENTS=${VELRO_WRITETAX_CLIENTS:-16}
THREADS=${VELRO_WRITETAX_THREADS:-2}
ROUNDS=${VELRO_WRITETAX_ROUNDS:-3}
MIXES=${VELRO_WRITETAX_MIXES:-complete insert-complete grants}
SETS=(none 0003 0002)
# Seed sizes (pgbench variables too).
USERS=1000 TEAMS=100 PROJECTS=200 GENERATIONS=100000

log() { echo "bench-write-tax: $*" >&2; }
die() { log "$*"; exit 1; }

# --- tools -----------------------------------------------------------------

apt_install() {
    command -v apt-get >/dev/null || die "$* needed: install it (no apt-get here)"
    local sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    log "installing $* with apt-get"
    "${sudo[@]}" apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@" >&2
}

# pgbench: Debian ships it with the server binaries (/usr/lib/postgresql/N/bin,
# not on PATH; /usr/bin/pgbench is a wrapper that needs them).
find_pgbench() {
    local newest
    newest=$(ls -d /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n $newest ]]; then
        PGBENCH=$newest
    elif command -v pgbench >/dev/null && pgbench --version >/dev/null 2>&1; then
        PGBENCH=$(command -v pgbench)
    else
        return 1
    fi
}
command -v psql >/dev/null || apt_install postgresql-client
find_pgbench || { apt_install postgresql; find_pgbench; } \
    || die "no pgbench even after installing 'postgresql': install pgbench yourself"

# --- database --------------------------------------------------------------

SERVER=${VELRO_WRITETAX_SERVER:-private}
PRIVATE_DIR=
# Runs a server tool; as root, as the postgres user (Postgres refuses root).
as_pg() {
    if [[ $(id -u) == 0 ]]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}
start_private() {
    local bin port
    bin=$(dirname "$PGBENCH")
    [[ -x $bin/initdb && -x $bin/pg_ctl ]] || { apt_install postgresql; find_pgbench; bin=$(dirname "$PGBENCH"); }
    [[ -x $bin/initdb ]] || die "no initdb next to $PGBENCH: install 'postgresql' or use VELRO_WRITETAX_SERVER=url"
    if [[ $(id -u) == 0 ]] && ! id -u postgres >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home --shell /usr/sbin/nologin postgres
    fi
    PRIVATE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/velro-writetax.XXXXXX")
    chmod 755 "$PRIVATE_DIR"
    [[ $(id -u) == 0 ]] && chown postgres: "$PRIVATE_DIR"
    for ((port = 55600 + $$ % 300; ; port++)); do
        timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null || break
    done
    log "starting a private Postgres on 127.0.0.1:$port ($PRIVATE_DIR)"
    as_pg "$bin/initdb" -D "$PRIVATE_DIR/data" -U postgres -A trust >/dev/null
    as_pg "$bin/pg_ctl" -D "$PRIVATE_DIR/data" -l "$PRIVATE_DIR/log" -w -o \
        "-p $port -k $PRIVATE_DIR -c listen_addresses=127.0.0.1" start >/dev/null
    DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    STOP_PRIVATE="$bin/pg_ctl"
}
case $SERVER in
    private) start_private ;;
    url) [[ -n ${DATABASE_URL:-} ]] || eval "$(scripts/services.sh env)" ;;
    *) die "VELRO_WRITETAX_SERVER is private or url, not $SERVER" ;;
esac
SCRATCH=velro_authz_writetax_$$

# DATABASE_URL with its database replaced by $1 (query string kept).
db_url() {
    local base=${DATABASE_URL%%\?*} query=""
    [[ $DATABASE_URL == *\?* ]] && query="?${DATABASE_URL#*\?}"
    [[ $base =~ ^[a-z]+://[^/]*$ ]] && base="$base/"
    echo "${base%/*}/$1$query"
}
ADMIN_URL=$(db_url postgres)
URL=$(db_url "$SCRATCH")
q() { psql "$URL" -X -q -v ON_ERROR_STOP=1 "$@"; }

cleanup() {
    if [[ -n $PRIVATE_DIR ]]; then
        as_pg "$STOP_PRIVATE" -D "$PRIVATE_DIR/data" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$PRIVATE_DIR"
    else
        psql "$ADMIN_URL" -X -q -c "DROP DATABASE IF EXISTS $SCRATCH WITH (FORCE)" >/dev/null 2>&1 \
            || log "could not drop database $SCRATCH: drop it by hand"
    fi
    [[ -n ${WORK:-} ]] && rm -rf "$WORK"
    return 0
}
trap cleanup EXIT
[[ -n ${VELRO_WRITETAX_KEEP:-} ]] && trap - EXIT && log "keeping $URL"
WORK=$(mktemp -d)

log "creating $SCRATCH, migrating (migrations/*.sql), seeding"
psql "$ADMIN_URL" -X -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE $SCRATCH" >/dev/null
for m in migrations/*.sql; do
    q -1 -f "$m" >/dev/null
done
# The 0002 triggers beside the current ones, renamed (function and triggers).
sed 's/velro_authz_notify/velro_authz_v0002_notify/g' migrations/0002_notify.sql > "$WORK/0002.sql"
q -1 -f "$WORK/0002.sql" >/dev/null
q -v users=$USERS -v teams=$TEAMS -v projects=$PROJECTS -v generations=$GENERATIONS \
    -f scripts/write-tax/seed.sql >/dev/null

# Enables one trigger set and disables the others.
use_set() {
    local on
    case $1 in
        none) on='' ;;
        0003) on='velro_authz_notify' ;;
        0002) on='velro_authz_v0002_notify' ;;
    esac
    q -v on="$on" >/dev/null <<'SQL'
SELECT set_config('bench.on', :'on', false);
DO $$
DECLARE
    r  record;
    on_prefix text := current_setting('bench.on');
BEGIN
    FOR r IN SELECT tgrelid::regclass AS tbl, tgname, tgenabled
               FROM pg_trigger
              WHERE NOT tgisinternal
                AND (tgname LIKE 'velro\_authz\_notify%' OR tgname LIKE 'velro\_authz\_v0002\_notify%')
    LOOP
        IF on_prefix <> '' AND starts_with(r.tgname, on_prefix) THEN
            IF r.tgenabled = 'D' THEN
                EXECUTE format('ALTER TABLE %s ENABLE TRIGGER %I', r.tbl, r.tgname);
            END IF;
        ELSIF r.tgenabled <> 'D' THEN
            EXECUTE format('ALTER TABLE %s DISABLE TRIGGER %I', r.tbl, r.tgname);
        END IF;
    END LOOP;
END;
$$;
SQL
}

# One pgbench run; prints its tps.
run() {
    local mix=$1 scripts=()
    case $mix in
        complete) scripts=(-f scripts/write-tax/complete.sql) ;;
        insert-complete) scripts=(-f scripts/write-tax/insert-complete.sql) ;;
        grants) scripts=(-f scripts/write-tax/membership.sql@1 -f scripts/write-tax/share.sql@1) ;;
        *) die "unknown mix $mix (complete, insert-complete, grants)" ;;
    esac
    # Same starting point for every run: no dead rows from the last one, no
    # checkpoint debt.
    q -c "VACUUM ANALYZE generations, team_members, shares" -c "CHECKPOINT" >/dev/null
    "$PGBENCH" -n -M prepared -c "$CLIENTS" -j "$THREADS" -T "$SECONDS_PER_RUN" \
        -D users=$USERS -D teams=$TEAMS -D projects=$PROJECTS -D generations=$GENERATIONS \
        "${scripts[@]}" "$URL" > "$WORK/out" 2>&1 \
        || { cat "$WORK/out" >&2; die "pgbench failed ($mix)"; }
    grep -E '^tps = ' "$WORK/out" | head -n 1 | awk '{ printf "%.0f\n", $3 }'
}

# Server CPU per write, min over $CPU_REPS repetitions (needs a superuser:
# log_statement_stats). Throughput on a shared 2-core machine swings by tens
# of percent between runs; the backend's own CPU time does not.
CPU_N=20000 CPU_REPS=${VELRO_WRITETAX_CPU_REPS:-7}
declare -A CPU
# µs of backend CPU per write for one run of $1.
cpu_once() {
    PGOPTIONS="-c bench.n=$CPU_N" q -f "$1" 2>&1 \
        | awk -v n=$CPU_N '/s user, .* s system, / { gsub(/!/, ""); printf "%.1f\n", ($1 + $4) * 1e6 / n; exit }'
}
superuser=$(q -At -c "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
if [[ $superuser == t ]] && ((CPU_REPS > 0)); then
    # Repetitions interleave the trigger sets, so that a change in the
    # machine's load hits them alike; the minimum is kept.
    for ((k = 0; k < CPU_REPS; k++)); do
        for set in "${SETS[@]}"; do
            use_set "$set"
            for mix in complete insert-complete; do
                us=$(cpu_once "scripts/write-tax/cpu-$mix.sql")
                [[ -n $us ]] || die "no CPU figure from cpu-$mix.sql"
                CPU[$mix/$set]=$(awk -v a="$us" -v b="${CPU[$mix/$set]:-$us}" 'BEGIN { print (a < b) ? a : b }')
            done
        done
    done
    for set in "${SETS[@]}"; do
        log "server CPU, triggers $set: ${CPU[complete/$set]} µs per status update, ${CPU[insert-complete/$set]} µs per insert + complete"
    done
else
    log "not a superuser or VELRO_WRITETAX_CPU_REPS=0: skipping the server CPU measurement"
fi

declare -A TPS
for mix in $MIXES; do
    for ((r = 0; r < ROUNDS; r++)); do
        for ((i = 0; i < ${#SETS[@]}; i++)); do
            set=${SETS[(i + r) % ${#SETS[@]}]}
            use_set "$set"
            tps=$(run "$mix")
            log "$mix, round $((r + 1))/$ROUNDS, triggers $set: $tps tps"
            TPS[$mix/$set]="${TPS[$mix/$set]:-} $tps"
        done
    done
done

# --- report ----------------------------------------------------------------

median() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
range() { tr ' ' '\n' | grep . | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%d–%d", lo, hi }'; }

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- 2>/dev/null || commit="$commit (with uncommitted changes)"
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)
pgversion=$(q -At -c "SHOW server_version")
settings=$(q -At -c "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers')")
echo
echo "Write tax, $(date -u +%Y-%m-%d): commit $commit; ${cpu:-unknown CPU}, $(nproc) cores;"
echo "Postgres $pgversion ($SERVER server; $settings); pgbench -T $SECONDS_PER_RUN -c $CLIENTS -j $THREADS -M prepared, $ROUNDS rounds"
echo "Command: VELRO_WRITETAX_SECONDS=$SECONDS_PER_RUN VELRO_WRITETAX_CLIENTS=$CLIENTS VELRO_WRITETAX_ROUNDS=$ROUNDS VELRO_WRITETAX_SERVER=$SERVER scripts/bench-write-tax.sh"
echo
echo "| mix | no triggers, tps | 0003 triggers, tps | 0003 / none | 0002 triggers, tps | 0002 / none |"
echo "|---|---|---|---|---|---|"
for mix in $MIXES; do
    none=$(median <<< "${TPS[$mix/none]}")
    row="| $mix | $none ($(range <<< "${TPS[$mix/none]}"))"
    for set in 0003 0002; do
        m=$(median <<< "${TPS[$mix/$set]}")
        row="$row | $m ($(range <<< "${TPS[$mix/$set]}")) | $(awk -v a="$m" -v b="$none" 'BEGIN { printf "%.2f×", a / b }')"
    done
    echo "$row |"
done
echo
echo "Each cell: median tps (range) over the rounds."
if [[ -n ${CPU[complete/none]:-} ]]; then
    echo
    echo "Server CPU per write (Postgres backend, µs; min of $CPU_REPS × $CPU_N in one session, no commit per write):"
    echo
    echo "| write | no triggers | 0003 triggers | 0002 triggers |"
    echo "|---|---|---|---|"
    for mix in complete insert-complete; do
        row="| $mix | ${CPU[$mix/none]}"
        for set in 0003 0002; do
            row="$row | ${CPU[$mix/$set]} ($(awk -v a="${CPU[$mix/$set]}" -v b="${CPU[$mix/none]}" 'BEGIN { printf "%+.1f", a - b }'))"
        done
        echo "$row |"
    done
fi
