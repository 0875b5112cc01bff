#!/usr/bin/env python3
"""Static checks of the Dockerfile and .dockerignore (no Docker engine here, so
the image is never built by the test suite):
- multi-stage: a Rust builder stage and a separate runtime stage that copies
  only the binary from it;
- `cargo build --locked --release` with cache mounts for the registry and target;
- runtime: a small base (distroless or debian slim), a numeric non-root USER,
  EXPOSE 9191 8181, exec-form ENTRYPOINT ["/velro-authz"] and CMD ["serve"];
- .dockerignore keeps target/ and .git out but not a file the build reads
  (the include_str!/include_bytes!/sqlx::migrate! paths in src/, build.rs's
  proto/, Cargo.toml's declared targets).

Usage: validate_dockerfile.py [DOCKERFILE [DOCKERIGNORE]]
"""

import fnmatch
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(__file__))
from common import ROOT, Report, read, rel  # noqa: E402


def instructions(text):
    """(INSTRUCTION, args) pairs, continuation lines joined, comments dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        s = line.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue
        cur += " " + s[:-1] if s.endswith("\\") else " " + s
        if not s.endswith("\\"):
            word, _, rest = cur.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            cur = ""
    return out


def ignored(path, patterns):
    """Docker's .dockerignore semantics, simplified: last matching pattern
    wins, `!` re-includes, a pattern matching a parent directory excludes it."""
    parts = path.split("/")
    result = False
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.strip("/")
        if any(fnmatch.fnmatch("/".join(parts[:i]), p) for i in range(1, len(parts) + 1)):
            result = not neg
    return result


def build_inputs():
    """Files the release build reads, besides src/ itself."""
    need = {"Cargo.toml", "Cargo.lock", "build.rs", "src/main.rs", "src/lib.rs"}
    for dirpath, _, files in os.walk(os.path.join(ROOT, "src")):
        for f in files:
            if not f.endswith(".rs"):
                continue
            src = os.path.join(dirpath, f)
            text = read(src)
            for m in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"', text):
                need.add(os.path.relpath(os.path.normpath(os.path.join(dirpath, m.group(1))), ROOT))
            for m in re.finditer(r'sqlx::migrate!\(\s*"([^"]+)"', text):
                need.add(os.path.normpath(m.group(1)))
    for m in re.finditer(r'"(proto[^"]*)"', read(os.path.join(ROOT, "build.rs"))):
        need.add(m.group(1).split("/")[0])
    for m in re.finditer(r'^name = "([^"]+)"', read(os.path.join(ROOT, "Cargo.toml")), re.M):
        if os.path.exists(os.path.join(ROOT, "benches", m.group(1) + ".rs")):
            need.add(f"benches/{m.group(1)}.rs")
    return sorted(need)


def main(dockerfile, dockerignore):
    r = Report()
    ins = instructions(read(dockerfile))
    froms = [(i, a) for i, (w, a) in enumerate(ins) if w == "FROM"]
    r.check(len(froms) >= 2, dockerfile, "FROM", "must be multi-stage (a builder and a runtime stage)")
    stages = {}
    for n, (i, a) in enumerate(froms):
        m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", a, re.I)
        end = froms[n + 1][0] if n + 1 < len(froms) else len(ins)
        stages[n] = {"image": m.group(1) if m else a, "name": m.group(2) if m else None, "ins": ins[i + 1:end]}
    if len(froms) >= 2:
        builder, runtime = stages[0], stages[len(froms) - 1]
        r.check(builder["image"].startswith("rust:") and builder["name"], dockerfile, "FROM (builder)",
                "the first stage must be a named rust: builder")
        runs = " ".join(a for w, a in builder["ins"] if w == "RUN")
        r.check(re.search(r"cargo build\b[^&]*--locked", runs) and re.search(r"cargo build\b[^&]*--release", runs),
                dockerfile, "RUN (builder)", "cargo build must use --locked --release")
        r.check("--mount=type=cache" in runs, dockerfile, "RUN (builder)", "use cache mounts for cargo")
        img = runtime["image"]
        r.check(img.startswith("gcr.io/distroless/") or re.match(r"debian:\S*-slim$", img), dockerfile,
                "FROM (runtime)", f"runtime base must be distroless or debian slim, got {img}")
        copies = [a for w, a in runtime["ins"] if w == "COPY"]
        r.check(copies and all(c.startswith(f"--from={builder['name']} ") for c in copies), dockerfile,
                "COPY (runtime)", "the runtime stage copies only from the builder")
        users = [a for w, a in runtime["ins"] if w == "USER"]
        uid = users[-1].split(":")[0] if users else ""
        r.check(uid.isdigit() and int(uid) > 0, dockerfile, "USER", f"runtime USER must be a numeric non-root uid, got {uid!r}")
        exposed = {p for w, a in runtime["ins"] if w == "EXPOSE" for p in a.split()}
        r.check({"9191", "8181"} <= exposed, dockerfile, "EXPOSE", "must expose 9191 and 8181")
        last = {w: a for w, a in runtime["ins"]}
        try:
            entry = json.loads(last.get("ENTRYPOINT", "null"))
            cmd = json.loads(last.get("CMD", "null"))
        except json.JSONDecodeError:
            entry = cmd = None
        r.check(entry == ["/velro-authz"], dockerfile, "ENTRYPOINT", 'must be ["/velro-authz"] (exec form)')
        r.check(cmd == ["serve"], dockerfile, "CMD", 'must be ["serve"]')
    patterns = [l.strip() for l in read(dockerignore).splitlines() if l.strip() and not l.startswith("#")]
    for must in ("target", ".git"):
        r.check(ignored(must, patterns), dockerignore, must, "must be excluded from the build context")
    for path in build_inputs():
        r.check(not ignored(path, patterns), dockerignore, path, "the build reads it: do not exclude it")
    if not r.errors:
        r.ok(f"{rel(dockerfile)} and {rel(dockerignore)} ({len(froms)} stages; build inputs: {', '.join(build_inputs())})")
    return r.finish()


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(args[0] if args else os.path.join(ROOT, "Dockerfile"),
                  args[1] if len(args) > 1 else os.path.join(ROOT, ".dockerignore")))
