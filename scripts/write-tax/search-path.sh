#!/usr/bin/env bash
# What a trigger function's fixed search_path costs the generation insert
# (migrations/0004). Swaps four variants of the generation cycle check into a
# scratch database and measures the Postgres backend's CPU per
# INSERT + status UPDATE (scripts/write-tax/cpu-insert-complete.sql,
# log_statement_stats: needs a superuser), minimum over interleaved
# repetitions:
#   plain      0001 as it was: no search_path of its own, called on every insert
#   set        SET search_path on the function, called on every insert
#   set-when   SET search_path, and the trigger's WHEN (NEW.parent_id IS NOT
#              NULL): what 0004 ships; a root generation calls no function
#   qualified  no SET, the table name schema-qualified (the other fix)
# Usage: DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
#          scripts/write-tax/search-path.sh [repetitions, default 7]
# Creates and drops velro_authz_searchpath_<pid> on that server.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPS=${1:-7}
N=20000
: "${DATABASE_URL:?set DATABASE_URL to a Postgres superuser URL}"
base=${DATABASE_URL%/*}
DB=velro_authz_searchpath_$$
U=$base/$DB
q() { psql "$U" -Xq -v ON_ERROR_STOP=1 "$@"; }
psql "$base/postgres" -Xq -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB"
trap 'psql "$base/postgres" -Xq -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null' EXIT
for m in migrations/*.sql; do q -1 -f "$m" >/dev/null; done
q -v users=1000 -v teams=100 -v projects=200 -v generations=100000 -f scripts/write-tax/seed.sql >/dev/null

body=$(q -At -c "SELECT prosrc FROM pg_proc WHERE proname = 'velro_authz_reject_generation_cycle'")
qualified=${body//FROM generations g/FROM public.generations g}
create() {  # $1: SET clause or empty, $2: body
    q -c "CREATE OR REPLACE FUNCTION velro_authz_reject_generation_cycle() RETURNS trigger
          LANGUAGE plpgsql $1 AS \$f\$$2\$f\$" >/dev/null
}
variant() {
    q -c "ALTER FUNCTION velro_authz_reject_generation_cycle() RESET search_path" \
      -c "DROP TRIGGER generations_no_cycle ON generations" >/dev/null
    local when="" pinned="SET search_path = pg_catalog, public, pg_temp"
    case $1 in
        plain) create "" "$body" ;;
        set) create "$pinned" "$body" ;;
        set-when) create "$pinned" "$body"; when="WHEN (NEW.parent_id IS NOT NULL)" ;;
        qualified) create "" "$qualified" ;;
    esac
    q -c "CREATE TRIGGER generations_no_cycle BEFORE INSERT OR UPDATE OF id, parent_id ON generations
          FOR EACH ROW $when EXECUTE FUNCTION velro_authz_reject_generation_cycle()" >/dev/null
}
VARIANTS=(plain set set-when qualified)
declare -A best
for ((r = 0; r < REPS; r++)); do
    for v in "${VARIANTS[@]}"; do
        variant "$v"
        us=$(PGOPTIONS="-c bench.n=$N" q -f scripts/write-tax/cpu-insert-complete.sql 2>&1 \
            | awk -v n=$N '/s user, .* s system, / { gsub(/!/, ""); printf "%.1f\n", ($1 + $4) * 1e6 / n; exit }')
        [[ -n $us ]] || { echo "no CPU figure (not a superuser?)" >&2; exit 1; }
        best[$v]=$(awk -v a="$us" -v b="${best[$v]:-$us}" 'BEGIN { print (a < b) ? a : b }')
    done
done
echo "Server CPU per generation INSERT + status UPDATE, µs (min of $REPS × $N; $(date -u +%Y-%m-%d), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)):"
echo
echo "| cycle check | µs | vs plain |"
echo "|---|---|---|"
for v in "${VARIANTS[@]}"; do
    echo "| $v | ${best[$v]} | $(awk -v a="${best[$v]}" -v b="${best[plain]}" 'BEGIN { printf "%+.1f", a - b }') |"
done
