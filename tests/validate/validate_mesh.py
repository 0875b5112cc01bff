#!/usr/bin/env python3
"""Validates the service-mesh snippets: envoy/istio/*.yaml and envoy/kuma/*.yaml.

Istio's and Kuma's resources are not Envoy protos and no offline schema ships
for them, so they are checked against JSON Schemas written from their API
definitions (schemas/istio.json, schemas/kuma.json; sources in their
$comment), rejecting unknown fields. The Envoy resources embedded in the Kuma
MeshProxyPatch (`value:` strings) are parsed as the Envoy protos they are,
with every Any `@type` resolved. Then the properties velro-authz relies on are
checked (fail closed with 503, the sidecar ports, only GET/HEAD of the health
route bypassed, providers and hosts that refer to each other, header names
with underscores refused, method-override headers removed). Istio's
EnvoyFilter patch values are parsed as the Envoy protos they patch.

Usage: validate_mesh.py [--istio DIR] [--kuma DIR]   (defaults: envoy/istio, envoy/kuma)
"""

import argparse
import os
import sys

import yaml

sys.path.insert(0, os.path.dirname(__file__))
from common import ROOT, Report, load_schema, load_yaml_docs, parse_envoy, rel, schema_errors  # noqa: E402

IDENTITY = ["x-velro-user-id", "x-velro-auth", "x-velro-role", "x-velro-decision-id"]
METHOD_OVERRIDE = ["x-http-method-override", "x-http-method", "x-method-override"]
HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
# The only requests that may skip the check: GET/HEAD /health/status. Operations
# in one `to` list are ORed, so this decides every other request.
HEALTH_BYPASS = [{"operation": {"notPaths": ["/health/status"]}},
                 {"operation": {"notMethods": ["GET", "HEAD"]}}]


def by_kind(r, path, schema, allowed):
    """Loads path, checks each document against the $defs entry of its kind."""
    out = {}
    try:
        docs = load_yaml_docs(path)
    except Exception as e:  # noqa: BLE001
        r.error(path, "yaml", str(e))
        return out
    for i, doc in enumerate(docs):
        kind = doc.get("kind") if isinstance(doc, dict) else None
        if kind not in allowed:
            r.error(path, f"document {i}", f"unexpected kind {kind!r} (expected one of {sorted(allowed)})")
            continue
        sub = dict(schema["$defs"][kind])
        for where, msg in schema_errors(sub, doc):
            r.error(path, f"{kind} {where}", msg)
        out.setdefault(kind, []).append(doc)
    return out


def check_istio(r, d):
    schema = load_schema("istio.json")
    mesh_path = os.path.join(d, "mesh-config.yaml")
    pol_path = os.path.join(d, "authorization-policy.yaml")
    ef_path = os.path.join(d, "envoy-filter.yaml")
    before = len(r.errors)
    mesh = by_kind(r, mesh_path, schema, {"IstioOperator"})
    pol = by_kind(r, pol_path, schema, {"ServiceEntry", "AuthorizationPolicy"})
    ef = by_kind(r, ef_path, schema, {"EnvoyFilter"})
    if len(r.errors) != before:
        return
    providers = {p["name"]: p for op in mesh.get("IstioOperator", [])
                 for p in op["spec"].get("meshConfig", {}).get("extensionProviders", [])}
    entries = pol.get("ServiceEntry", [])
    hosts = {h: e for e in entries for h in e["spec"]["hosts"]}
    ports = {}
    for p in providers.values():
        cfg = p.get("envoyExtAuthzGrpc") or p.get("envoyExtAuthzHttp")
        w = f"extensionProviders[{p['name']}]"
        r.check(cfg.get("failOpen") is False, mesh_path, w + ".failOpen", "must be false (fail closed)")
        r.check(cfg.get("statusOnError") == "503", mesh_path, w + ".statusOnError", "must be \"503\"")
        r.check("timeout" in cfg, mesh_path, w + ".timeout", "a timeout is required")
        want = 9191 if "envoyExtAuthzGrpc" in p else 8181
        r.check(cfg.get("port") == want, mesh_path, w + ".port", f"velro-authz listens on {want} for this mode")
        ports[cfg["service"]] = ports.get(cfg["service"], set()) | {cfg.get("port")}
        if "envoyExtAuthzHttp" in p:
            r.check(cfg.get("pathPrefix") == "/v1/check", mesh_path, w + ".pathPrefix", "must be /v1/check")
            inc = cfg.get("includeRequestHeadersInCheck", [])
            for h in ["authorization", "x-api-key", "x-velro-*"]:
                r.check(h in inc, mesh_path, w + ".includeRequestHeadersInCheck", f"must include {h}")
            for h in IDENTITY:
                r.check(h in cfg.get("headersToUpstreamOnAllow", []), mesh_path, w + ".headersToUpstreamOnAllow",
                        f"must include {h}")
    r.check(any("envoyExtAuthzGrpc" in p for p in providers.values()), mesh_path, "extensionProviders",
            "no envoyExtAuthzGrpc provider")
    for service, want in ports.items():
        e = hosts.get(service)
        if r.check(e is not None, pol_path, "ServiceEntry", f"no ServiceEntry for provider service {service!r}"):
            have = {p["number"] for p in e["spec"].get("ports", [])}
            r.check(want <= have, pol_path, f"ServiceEntry[{service}].ports", f"must include {sorted(want)}")
            addrs = [ep.get("address") for ep in e["spec"].get("endpoints", [])]
            r.check(addrs == ["127.0.0.1"], pol_path, f"ServiceEntry[{service}].endpoints",
                    "the sidecar is in the pod: 127.0.0.1")
            r.check(e["spec"].get("resolution") == "STATIC", pol_path, f"ServiceEntry[{service}].resolution",
                    "must be STATIC")
    for ap in pol.get("AuthorizationPolicy", []):
        w = f"AuthorizationPolicy[{ap['metadata']['name']}]"
        spec = ap["spec"]
        r.check(spec.get("action") == "CUSTOM", pol_path, w + ".action", "must be CUSTOM")
        name = spec.get("provider", {}).get("name")
        r.check(name in providers, pol_path, w + ".provider.name", f"{name!r} is not an extension provider in {os.path.basename(mesh_path)}")
        r.check(spec.get("selector", {}).get("matchLabels"), pol_path, w + ".selector",
                "select the workloads that run the sidecar (a mesh-wide CUSTOM policy would 503 everything else)")
        rules = spec.get("rules", [])
        r.check(rules and all(rule.get("to") == HEALTH_BYPASS and set(rule) == {"to"} for rule in rules),
                pol_path, w + ".rules",
                f"every rule must be `to: {HEALTH_BYPASS}` (everything but GET/HEAD /health/status is decided)")
    check_envoy_filters(r, ef_path, ef.get("EnvoyFilter", []), pol.get("AuthorizationPolicy", []))
    if len(r.errors) == before:
        r.ok(f"{rel(d)} (IstioOperator extensionProviders, ServiceEntry, AuthorizationPolicy, EnvoyFilter)")


def reject_request():
    from envoy.config.core.v3 import protocol_pb2

    return protocol_pb2.HttpProtocolOptions.REJECT_REQUEST


def check_envoy_filters(r, path, filters, policies):
    """The EnvoyFilter refuses header names with '_' and removes method-override
    headers on the inbound side of the workloads the AuthorizationPolicy selects."""
    underscores = removes = False
    selected = [ap["spec"].get("selector", {}).get("matchLabels") for ap in policies]
    for ef in filters:
        w = f"EnvoyFilter[{ef['metadata']['name']}]"
        r.check(ef["spec"].get("workloadSelector", {}).get("labels") in selected, path, w + ".workloadSelector",
                "must select the same workloads as the AuthorizationPolicy")
        for i, cp in enumerate(ef["spec"]["configPatches"]):
            pw = f"{w}.configPatches[{i}]"
            ctx = cp.get("match", {}).get("context")
            r.check(ctx == "SIDECAR_INBOUND", path, pw + ".match.context", "must be SIDECAR_INBOUND")
            value = cp["patch"].get("value", {})
            try:
                if cp["applyTo"] == "NETWORK_FILTER":
                    msg = parse_envoy("envoy.config.listener.v3.Filter",
                                      {"name": "envoy.filters.network.http_connection_manager", **value})
                    from envoy.extensions.filters.network.http_connection_manager.v3 import (
                        http_connection_manager_pb2 as hcm_pb2)
                    hcm = hcm_pb2.HttpConnectionManager()
                    if r.check(msg.typed_config.Unpack(hcm), path, pw + ".patch.value", f"typed_config is not {HCM}"):
                        underscores |= hcm.common_http_protocol_options.headers_with_underscores_action == reject_request()
                elif cp["applyTo"] == "ROUTE_CONFIGURATION":
                    msg = parse_envoy("envoy.config.route.v3.RouteConfiguration", value)
                    removes |= all(h in msg.request_headers_to_remove for h in METHOD_OVERRIDE)
                else:
                    r.error(path, pw + ".applyTo", f"unexpected {cp['applyTo']}")
            except Exception as e:  # noqa: BLE001
                r.error(path, pw + ".patch.value", f"as the Envoy proto it patches: {str(e).splitlines()[0]}")
    r.check(underscores, path, "EnvoyFilter", "no NETWORK_FILTER patch sets the http_connection_manager's "
                                              "common_http_protocol_options.headers_with_underscores_action: REJECT_REQUEST")
    r.check(removes, path, "EnvoyFilter", f"no ROUTE_CONFIGURATION patch removes {METHOD_OVERRIDE}")


def check_kuma(r, d):
    schema = load_schema("kuma.json")
    path = os.path.join(d, "meshproxypatch.yaml")
    before = len(r.errors)
    docs = by_kind(r, path, schema, {"MeshProxyPatch"})
    if len(r.errors) != before:
        return
    for mpp in docs.get("MeshProxyPatch", []):
        w = f"MeshProxyPatch[{mpp['metadata']['name']}]"
        r.check(mpp["spec"]["targetRef"].get("kind") != "Mesh", path, w + ".targetRef",
                "select the proxies whose pods run the sidecar, not the whole mesh (fail closed => 503 elsewhere)")
        clusters, filters, underscores = {}, [], False
        for i, m in enumerate(mpp["spec"]["default"].get("appendModifications", [])):
            (what, mod), = m.items()
            mw = f"{w}.appendModifications[{i}].{what}"
            if "value" not in mod:
                continue
            try:
                value = yaml.safe_load(mod["value"])
            except Exception as e:  # noqa: BLE001
                r.error(path, mw + ".value", f"not YAML: {e}")
                continue
            proto = {"cluster": "envoy.config.cluster.v3.Cluster",
                     "httpFilter": "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
                     "listener": "envoy.config.listener.v3.Listener",
                     "networkFilter": "envoy.config.listener.v3.Filter",
                     "virtualHost": "envoy.config.route.v3.VirtualHost"}[what]
            try:
                msg = parse_envoy(proto, value)
            except Exception as e:  # noqa: BLE001
                r.error(path, mw + ".value", f"as {proto}: {str(e).splitlines()[0]}")
                continue
            if what == "cluster":
                clusters[msg.name] = msg
            elif what == "networkFilter" and msg.name == "envoy.filters.network.http_connection_manager":
                from envoy.extensions.filters.network.http_connection_manager.v3 import (
                    http_connection_manager_pb2 as hcm_pb2)
                hcm = hcm_pb2.HttpConnectionManager()
                r.check(mod["operation"] == "Patch" and mod.get("match", {}).get("origin") == "inbound",
                        path, mw, "patch the inbound http_connection_manager (operation Patch, match.origin inbound)")
                if r.check(msg.typed_config.Unpack(hcm), path, mw + ".value", f"typedConfig is not {HCM}"):
                    underscores |= hcm.common_http_protocol_options.headers_with_underscores_action == reject_request()
            elif what == "httpFilter":
                filters.append((mw, mod, msg))
        r.check(underscores, path, w, "no networkFilter patch sets the inbound http_connection_manager's "
                                      "commonHttpProtocolOptions.headersWithUnderscoresAction: REJECT_REQUEST")
        authz = [f for f in filters if f[2].name == "envoy.filters.http.ext_authz"]
        if not r.check(authz, path, w, "no envoy.filters.http.ext_authz httpFilter"):
            continue
        from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2

        for mw, mod, msg in authz:
            cfg = ext_authz_pb2.ExtAuthz()
            if not r.check(msg.typed_config.Unpack(cfg), path, mw, "typedConfig is not an ExtAuthz"):
                continue
            r.check(mod.get("match", {}).get("origin") == "inbound", path, mw + ".match.origin",
                    "the filter belongs on inbound listeners")
            r.check(mod["operation"] == "AddBefore" and mod.get("match", {}).get("name") == "envoy.filters.http.router",
                    path, mw + ".operation", "insert before envoy.filters.http.router")
            r.check(not cfg.failure_mode_allow, path, mw + ".failureModeAllow", "must be false (fail closed)")
            r.check(cfg.status_on_error.code == 503, path, mw + ".statusOnError", "must be ServiceUnavailable (503)")
            r.check(cfg.grpc_service.HasField("timeout"), path, mw + ".grpcService.timeout", "a timeout is required")
            name = cfg.grpc_service.envoy_grpc.cluster_name
            c = clusters.get(name)
            if r.check(c is not None, path, mw + ".grpcService", f"cluster {name!r} is not added by this patch"):
                sa = c.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
                r.check((sa.address, sa.port_value) == ("127.0.0.1", 9191), path, f"cluster {name}",
                        "the sidecar is 127.0.0.1:9191")
                r.check("envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in c.typed_extension_protocol_options,
                        path, f"cluster {name}", "gRPC needs HTTP/2 protocol options")
            allowed = {(p.WhichOneof("match_pattern"), getattr(p, p.WhichOneof("match_pattern")))
                       for p in cfg.allowed_headers.patterns}
            for need in [("exact", "authorization"), ("exact", "x-api-key"), ("prefix", "x-velro-")]:
                r.check(need in allowed, path, mw + ".allowedHeaders", f"must include {need[0]}: {need[1]}")
    if len(r.errors) == before:
        r.ok(f"{rel(path)} (MeshProxyPatch schema, embedded Envoy Cluster, HttpFilter and HCM patch protos)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--istio", default=os.path.join(ROOT, "envoy", "istio"))
    ap.add_argument("--kuma", default=os.path.join(ROOT, "envoy", "kuma"))
    a = ap.parse_args()
    r = Report()
    check_istio(r, a.istio)
    check_kuma(r, a.kuma)
    return r.finish()


if __name__ == "__main__":
    sys.exit(main())
