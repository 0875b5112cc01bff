#!/usr/bin/env bash
# Freshness benchmark (release build): three sidecar processes over a
# project-local Postgres and Redis; how long after a revocation commits does
# each deny? Once without faults, then under a LISTEN-kill drill and a
# Redis-fault drill. Results and how to read them: docs/performance.md.
#   VELRO_FRESHNESS_ITERATIONS=200 scripts/bench-freshness.sh   for a quicker run
#   VELRO_FRESHNESS_DRILLS="none"  scripts/bench-freshness.sh   one drill only
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh env)"
export DATABASE_URL REDIS_URL
for drill in ${VELRO_FRESHNESS_DRILLS:-none listener-kill redis-kill}; do
    VELRO_FRESHNESS_DRILL=$drill cargo bench --locked --bench freshness
done
