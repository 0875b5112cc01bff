#!/usr/bin/env bash
# Runs the sidecar with the demo data set: starts (installing if needed) a
# project-local Postgres, migrates, seeds demo/seed.sql, prints dev tokens for
# the demo users, then serves ext_authz on 127.0.0.1:9191 and health/metrics on
# 127.0.0.1:8181 until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/services.sh env)"
export DATABASE_URL
# The demo runs without the Redis tier: L1 + Postgres.
unset REDIS_URL

cargo build --release --locked --bin velro-authz
bin=target/release/velro-authz
config=demo/config.yaml

"$bin" --config "$config" migrate
"$bin" --config "$config" seed-demo
echo
echo "Serving. Try:  $bin --config $config check --explain --token <token above> /api/v1/generations/40000000-0000-4000-8000-000000000001"
exec "$bin" --config "$config" serve
