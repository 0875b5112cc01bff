#!/usr/bin/env bash
# Creates (or confirms) the project-local Python environment .dev/venv with the
# exact tools in tests/validate/requirements.txt, which the deployment tests
# (cargo test --test deploy) run. Idempotent: when the venv already holds this
# requirements file (same hash, same python3) it returns at once.
#
# On a fresh Debian, `python3 -m venv` needs the python3-venv package, and the
# k8s tests need kubectl: both are installed with apt-get (as root, or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.dev/venv
req=tests/validate/requirements.txt
stamp=$venv/.requirements.sha256

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "pyenv.sh: need root (or sudo) to run: $*" >&2
        return 1
    fi
}

# `kubectl kustomize` renders k8s/ in the tests. Debian's kubernetes-client
# (kubectl 1.20, kustomize v2) is enough: k8s/ avoids newer kustomize fields.
if ! command -v kubectl >/dev/null; then
    echo "pyenv.sh: kubectl not found; installing Debian's kubernetes-client with apt-get" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null
fi

want=$( { cat "$req"; python3 --version; } | sha256sum | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

rm -rf "$venv"
mkdir -p .dev
if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    echo "pyenv.sh: python3 -m venv failed; installing python3-venv with apt-get" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
fi

start=$(date +%s)
"$venv/bin/pip" install --disable-pip-version-check --no-input -q -r "$req"
echo "pyenv.sh: installed $req into $venv in $(( $(date +%s) - start ))s" >&2
echo "$want" > "$stamp"
