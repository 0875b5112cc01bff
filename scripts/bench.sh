#!/usr/bin/env bash
# Decision latency/throughput benchmark (release build) against a project-local
# Postgres; results and how to read them: docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh env)"
export DATABASE_URL REDIS_URL
cargo bench --locked --bench check
