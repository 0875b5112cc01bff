#!/usr/bin/env python3
"""Validates kong/kong.yaml (Kong Gateway declarative config, decK format 3.0).

No Kong runs here, so this is a structural check:
- the file parses, `_format_version` is "3.0", services/routes/plugins use only
  known entity fields;
- the `opa` plugin's config keys are among the opa plugin's documented schema
  fields (OPA_FIELDS below) and point at velro-authz's OPA-shaped endpoint;
- a `pre-function` plugin that runs before `opa` clears client-sent x-velro-*
  headers (underscore spellings too) and method-override headers on every
  route the opa plugin guards;
- every route but the exact health path goes through `opa`.

Usage: validate_kong.py [FILE]   (default kong/kong.yaml)
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(__file__))
from common import ROOT, Report, load_yaml_docs, rel  # noqa: E402

# The opa plugin's configuration fields (Kong Gateway Enterprise 3.x), as
# listed by the plugin's configuration reference
# (developer.konghq.com/plugins/opa/reference) and Kong's Konnect API schema
# OpaPluginConfig (also visible in the konnect Terraform/Pulumi provider's
# GatewayPluginOpa config): checked 2026-11.
OPA_FIELDS = {
    "include_body_in_opa_input",
    "include_consumer_in_opa_input",
    "include_parsed_json_body_in_opa_input",
    "include_route_in_opa_input",
    "include_service_in_opa_input",
    "include_uri_captures_in_opa_input",
    "opa_host",
    "opa_path",
    "opa_port",
    "opa_protocol",
    "ssl_verify",
}
# pre-function (serverless functions plugin) phases, Kong 3.x.
PRE_FUNCTION_FIELDS = {"certificate", "rewrite", "access", "header_filter", "body_filter", "log", "ws_handshake",
                       "ws_client_frame", "ws_upstream_frame", "ws_close"}
# Entity fields of the decK 3.0 format used or commonly set (Kong Admin API entities).
SERVICE_FIELDS = {"name", "url", "host", "port", "protocol", "path", "retries", "connect_timeout", "write_timeout",
                  "read_timeout", "tags", "enabled", "tls_verify", "tls_verify_depth", "ca_certificates",
                  "client_certificate", "routes", "plugins"}
ROUTE_FIELDS = {"name", "paths", "methods", "hosts", "headers", "protocols", "strip_path", "preserve_host",
                "regex_priority", "path_handling", "https_redirect_status_code", "request_buffering",
                "response_buffering", "snis", "sources", "destinations", "tags", "expression", "priority", "plugins"}
PLUGIN_FIELDS = {"name", "config", "enabled", "protocols", "tags", "ordering", "instance_name", "consumer",
                 "route", "service"}
IDENTITY = ["x-velro-user-id", "x-velro-auth", "x-velro-role", "x-velro-decision-id"]
METHOD_OVERRIDE = ["x-http-method-override", "x-http-method", "x-method-override"]


def check_fields(r, path, where, obj, allowed):
    if not isinstance(obj, dict):
        r.error(path, where, "expected a mapping")
        return False
    for k in obj:
        r.check(k in allowed, path, f"{where}.{k}", "unknown field")
    return True


def main(path):
    r = Report()
    try:
        docs = load_yaml_docs(path)
    except Exception as e:  # noqa: BLE001
        r.error(path, "yaml", str(e))
        return r.finish()
    if not r.check(len(docs) == 1 and isinstance(docs[0], dict), path, "yaml", "expected one mapping"):
        return r.finish()
    doc = docs[0]
    r.check(doc.get("_format_version") == "3.0", path, "_format_version", 'must be "3.0"')
    for k in doc:
        r.check(k in {"_format_version", "_transform", "_info", "services", "plugins", "consumers", "upstreams",
                      "certificates", "ca_certificates", "vaults"}, path, k, "unknown top-level key")

    def plugins_ok(where, plugins):
        out = {}
        for i, p in enumerate(plugins or []):
            w = f"{where}.plugins[{i}]"
            if not check_fields(r, path, w, p, PLUGIN_FIELDS):
                continue
            name = p.get("name")
            out[name] = p
            cfg = p.get("config", {})
            if name == "opa":
                check_fields(r, path, w + ".config", cfg, OPA_FIELDS)
                r.check(cfg.get("opa_protocol") == "http", path, w + ".config.opa_protocol", "must be http")
                r.check(cfg.get("opa_host") in ("127.0.0.1", "localhost"), path, w + ".config.opa_host",
                        "velro-authz runs beside Kong on loopback")
                r.check(cfg.get("opa_port") == 8181, path, w + ".config.opa_port", "velro-authz's HTTP port is 8181")
                r.check(str(cfg.get("opa_path", "")).startswith("/v1/data/"), path, w + ".config.opa_path",
                        "must be /v1/data/<path> (velro-authz's OPA data API)")
                r.check(not cfg.get("include_body_in_opa_input") and not cfg.get("include_parsed_json_body_in_opa_input"),
                        path, w + ".config", "decisions need no body: keep include_*body* off")
            elif name == "pre-function":
                check_fields(r, path, w + ".config", cfg, PRE_FUNCTION_FIELDS)
                code = "\n".join(cfg.get("access", []))
                for h in IDENTITY:
                    r.check(h in code, path, w + ".config.access", f"must clear {h} by name")
                r.check("x-velro-" in code and "clear_header" in code and "get_headers" in code, path,
                        w + ".config.access", "must clear every client-sent x-velro-* header")
                r.check('gsub(string.lower(name), "_", "-")' in code, path, w + ".config.access",
                        "must compare names with '_' read as '-' (x_velro_user_id is X-Velro-User-Id to CGI apps)")
                for h in METHOD_OVERRIDE:
                    r.check(h in code, path, w + ".config.access", f"must clear {h} (the app serves the decided method)")
                before = p.get("ordering", {}).get("before", {}).get("access", [])
                r.check("opa" in before, path, w + ".ordering", "must run before opa (ordering.before.access: [opa])")
                # A Lua function body must at least balance its blocks.
                opens = len(re.findall(r"\b(do|then|function)\b", code)) - len(re.findall(r"\belseif\b", code))
                r.check(opens == len(re.findall(r"\bend\b", code)), path, w + ".config.access",
                        "unbalanced Lua blocks (do/then/function vs end)")
            else:
                r.error(path, w, f"unexpected plugin {name!r}")
        return out

    global_plugins = plugins_ok("plugins", doc.get("plugins"))
    services = doc.get("services", [])
    r.check(services, path, "services", "no service")
    for si, s in enumerate(services):
        sw = f"services[{si}]"
        if not check_fields(r, path, sw, s, SERVICE_FIELDS):
            continue
        r.check(s.get("url") == "http://127.0.0.1:8080", path, sw + ".url", "the app is http://127.0.0.1:8080")
        svc_plugins = {**global_plugins, **plugins_ok(sw, s.get("plugins"))}
        for ri, route in enumerate(s.get("routes", [])):
            rw = f"{sw}.routes[{ri}]"
            if not check_fields(r, path, rw, route, ROUTE_FIELDS):
                continue
            plugins = {**svc_plugins, **plugins_ok(rw, route.get("plugins"))}
            health = route.get("paths") == ["~/health/status$"]
            if "opa" in plugins:
                r.check("pre-function" in plugins, path, rw,
                        "a route guarded by opa needs the pre-function that strips client x-velro-* headers")
                r.check(not health, path, rw, "the health route should bypass opa")
            else:
                r.check(health, path, rw + ".paths",
                        "only the exact health path (~/health/status$) may bypass opa")
    if not r.errors:
        r.ok(f"{rel(path)} (decK 3.0 entities, opa + pre-function config)")
    return r.finish()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "kong", "kong.yaml")))
