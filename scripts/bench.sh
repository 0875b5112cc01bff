#!/usr/bin/env bash
# The decision benchmark (release build) against a project-local Postgres:
# in process (L1 hot, L1 flushed), cold start to ready, the sidecar against a
# no-op ext_authz server (the floor) over gRPC at 1×1 and 16×16, 10,000
# streams at once, and instructions per hot Check under callgrind when
# valgrind is installed; then rate limiting with Redis, a call per Check
# against leases (benches/ratelimit.rs). ≈ 7 min. Writes the figures into docs/performance.md
# between the `bench:check` markers (with machine, date and commit); how to
# read them is the text around the markers.
#   VELRO_BENCH_SECONDS=3 VELRO_BENCH_ROUNDS=1 VELRO_BENCH_SOAK_SECONDS=10 \
#   VELRO_BENCH_CALLGRIND=0 scripts/bench.sh          a quick look
#   VELRO_BENCH_DOC=/dev/null scripts/bench.sh         measure, write nothing
#   VELRO_BENCH_CALLGRIND=only scripts/bench.sh       instructions per Check only (≈ 1 min,
#                                                      writes nothing)
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh env)"
export DATABASE_URL REDIS_URL
doc=${VELRO_BENCH_DOC:-docs/performance.md}
log=$(mktemp)
block=$(mktemp)
trap 'rm -f "$log" "$block"' EXIT

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD 2>/dev/null; then commit="$commit + uncommitted changes"; fi
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
machine="$(nproc) cores ($cpu), $(free -g | awk '/^Mem:/ {print $2}') GiB, Linux $(uname -r)"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

cargo bench --locked --bench check | tee "$log"

{
    echo '<!-- bench:check -->'
    echo "Run of $(date -u '+%Y-%m-%d %H:%M UTC'), commit \`$commit\`, \`scripts/bench.sh\`; $machine;"
    echo "load average $load_before before the run, $(cut -d' ' -f1-3 /proc/loadavg) after it (other work on the same cores counts against both servers alike)."
    echo
    echo '| what | result |'
    echo '|---|---|'
    sed -n '/^<!-- bench:check -->$/,/^<!-- \/bench:check -->$/p' "$log" | sed '1d'
} > "$block"
if ! grep -qx '<!-- bench:check -->' "$log"; then
    echo "bench.sh: no doc section in this run (VELRO_BENCH_CALLGRIND=only?): $doc left as it was" >&2
elif [[ "$doc" != /dev/null ]]; then
    awk -v f="$block" '
        BEGIN { while ((getline line < f) > 0) r = r line "\n" }
        /^<!-- bench:check -->$/ { printf "%s", r; skip = 1; next }
        /^<!-- \/bench:check -->$/ { skip = 0; next }
        !skip
    ' "$doc" > "$doc.new"
    mv "$doc.new" "$doc"
    echo "bench.sh: figures written to $doc" >&2
fi

# Rate limiting with Redis: a Redis call per Check against leases (its own
# section of the doc, between the `bench:ratelimit` markers).
if [[ "${VELRO_BENCH_CALLGRIND:-}" != only ]]; then
    cargo bench --locked --bench ratelimit | tee "$log"
    if grep -qx '<!-- bench:ratelimit -->' "$log"; then
        {
            echo '<!-- bench:ratelimit -->'
            echo "Run of $(date -u '+%Y-%m-%d %H:%M UTC'), commit \`$commit\`, \`scripts/bench.sh\`; load average $(cut -d' ' -f1-3 /proc/loadavg) after it."
            echo
            sed -n '/^<!-- bench:ratelimit -->$/,/^<!-- \/bench:ratelimit -->$/p' "$log" | sed '1d'
        } > "$block"
    else
        : > "$block"
    fi
    if [[ "$doc" != /dev/null && -s "$block" ]]; then
        awk -v f="$block" '
            BEGIN { while ((getline line < f) > 0) r = r line "\n" }
            /^<!-- bench:ratelimit -->$/ { printf "%s", r; skip = 1; next }
            /^<!-- \/bench:ratelimit -->$/ { skip = 0; next }
            !skip
        ' "$doc" > "$doc.new"
        mv "$doc.new" "$doc"
        echo "bench.sh: rate-limit figures written to $doc" >&2
    fi
fi
