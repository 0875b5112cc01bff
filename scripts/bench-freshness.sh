#!/usr/bin/env bash
# Freshness benchmark (release build): three sidecar processes over a
# project-local Postgres and Redis; how long after a revocation commits does
# each deny? Results and how to read them: docs/performance.md.
#   VELRO_FRESHNESS_ITERATIONS=200 scripts/bench-freshness.sh   for a quicker run
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh env)"
export DATABASE_URL REDIS_URL
cargo bench --locked --bench freshness
