#!/usr/bin/env bash
# Copies the transitive closure of Envoy's ext_authz v3 protos out of the
# envoy-types crate (the same API version our Rust types are generated from)
# into proto/vendor/, so build.rs can build a reflection descriptor set that
# lists only the services we serve. Re-run after bumping envoy-types.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(grep -A1 'name = "envoy-types"' Cargo.lock | sed -n 's/version = "\(.*\)"/\1/p')
src=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 1 -mindepth 1 -type d | head -n1)/envoy-types-$version/proto
[ -d "$src" ] || { cargo fetch; }
rm -rf proto/vendor && mkdir -p proto/vendor
python3 - "$src" proto/vendor <<'PY'
import os, re, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
roots = sorted(os.listdir(src))
def find(p):
    for r in roots:
        f = os.path.join(src, r, p)
        if os.path.exists(f):
            return f
seen, stack = set(), ["envoy/service/auth/v3/external_auth.proto"]
while stack:
    p = stack.pop()
    if p in seen:
        continue
    seen.add(p)
    f = find(p)
    if f is None:  # google/protobuf/* well-known types are built into protox
        continue
    os.makedirs(os.path.dirname(os.path.join(dst, p)), exist_ok=True)
    shutil.copyfile(f, os.path.join(dst, p))
    stack += re.findall(r'^import\s+(?:public\s+)?"([^"]+)"', open(f).read(), re.M)
PY
echo "vendored $(find proto/vendor -name '*.proto' | wc -l) files from envoy-types $version"
