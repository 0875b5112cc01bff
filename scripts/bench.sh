#!/usr/bin/env bash
# The decision benchmark (release build) against a project-local Postgres:
# in process (L1 hot, L1 flushed), cold start to ready, the sidecar against a
# no-op ext_authz server (the floor) over gRPC at 1×1 and 16×16 (the same
# again, and 10,000 streams, with h2load when it is installed: Debian's
# nghttp2-client), 10,000 streams at once, and instructions per hot Check
# under callgrind when valgrind is installed; then rate limiting with Redis,
# a call per Check against leases (benches/ratelimit.rs), the cold decision
# (benches/cold.rs) and memory per cached fact (benches/memory.rs). ≈ 15 min.
# Writes the figures into docs/performance.md between the `bench:check` and
# `bench:ratelimit` markers (with machine, date and commit); how to read them
# is the text around the markers.
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

# Prints the lines of section $1 of the bench output in $log (markers
# included); nothing when the run printed none.
section() {
    sed -n "/^<!-- bench:$1 -->\$/,/^<!-- \\/bench:$1 -->\$/p" "$log"
}

# Replaces section $1 of $doc (between its markers) with the file $block.
write_section() {
    [[ "$doc" == /dev/null ]] && return
    awk -v f="$block" -v from="<!-- bench:$1 -->" -v to="<!-- /bench:$1 -->" '
        BEGIN { while ((getline line < f) > 0) r = r line "\n" }
        $0 == from { printf "%s", r; skip = 1; next }
        $0 == to { skip = 0; next }
        !skip
    ' "$doc" > "$doc.new"
    mv "$doc.new" "$doc"
    echo "bench.sh: $1 figures written to $doc" >&2
}

cargo bench --locked --bench check | tee "$log"
if [[ -z "$(section check)" ]]; then
    echo "bench.sh: no doc section in this run (VELRO_BENCH_CALLGRIND=only?): $doc left as it was" >&2
else
    {
        echo '<!-- bench:check -->'
        echo "Run of $(date -u '+%Y-%m-%d %H:%M UTC'), commit \`$commit\`, \`scripts/bench.sh\`; $machine;"
        echo "load average $load_before before the run, $(cut -d' ' -f1-3 /proc/loadavg) after it (other work on the same cores counts against both servers alike)."
        echo
        echo '| what | result |'
        echo '|---|---|'
        section check | sed '1d'
    } > "$block"
    write_section check
fi

# Rate limiting with Redis: a Redis call per Check against leases (its own
# section of the doc, between the `bench:ratelimit` markers).
if [[ "${VELRO_BENCH_CALLGRIND:-}" != only ]]; then
    cargo bench --locked --bench ratelimit | tee "$log"
    if [[ -n "$(section ratelimit)" ]]; then
        {
            echo '<!-- bench:ratelimit -->'
            echo "Run of $(date -u '+%Y-%m-%d %H:%M UTC'), commit \`$commit\`, \`scripts/bench.sh\`; load average $(cut -d' ' -f1-3 /proc/loadavg) after it."
            echo
            section ratelimit | sed '1d'
        } > "$block"
        write_section ratelimit
    fi
fi

# The cold decision (Postgres only, both tiers missing, Redis hit) and what a
# cached fact costs in memory: printed here in the same run; their tables in
# docs/performance.md are copied from this output by hand.
if [[ "${VELRO_BENCH_CALLGRIND:-}" != only ]]; then
    cargo bench --locked --bench cold
    cargo bench --locked --bench memory
fi
