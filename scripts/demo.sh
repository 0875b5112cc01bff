#!/usr/bin/env bash
# Runs the sidecar with the demo data set: starts (installing if needed) a
# project-local Postgres, migrates, seeds demo/seed.sql, prints dev tokens for
# the demo users, then serves ext_authz on 127.0.0.1:9191, health/metrics on
# 127.0.0.1:8181 and the admin service on 127.0.0.1:9192 until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/services.sh env)"
export DATABASE_URL
# The demo runs without the Redis tier: L1 + Postgres.
unset REDIS_URL
# The admin service (127.0.0.1:9192) with a token made for this run, readable
# by this user only: `velro-authz admin --token-file .dev/admin-token …`.
mkdir -p .dev
(umask 077 && head -c 32 /dev/urandom | base64 > .dev/admin-token)
export VELRO_AUTHZ_ADMIN_TOKEN_FILE="$PWD/.dev/admin-token"

cargo build --release --locked --bin velro-authz
bin=target/release/velro-authz
config=demo/config.yaml

"$bin" --config "$config" migrate
"$bin" --config "$config" seed-demo
echo
echo "Serving. Try:  $bin --config $config check --explain --token <token above> /api/v1/generations/40000000-0000-4000-8000-000000000001"
exec "$bin" --config "$config" serve
