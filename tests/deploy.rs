//! Deployment artifacts (envoy/, k8s/, kong/, Dockerfile), validated offline.
//!
//! The checks are Python scripts in `tests/validate/`, run with the
//! project-local virtualenv `.dev/venv` that `scripts/pyenv.sh` creates with
//! pinned tools (Envoy's API protos and an Envoy binary, kubernetes-validate,
//! jsonschema, a PromQL parser). `scripts/test.sh` runs `scripts/pyenv.sh`
//! first; without the venv these tests fail and say so.
//!
//! Each artifact group has a test that it passes and at least one test that
//! its validator rejects a deliberately broken copy, naming the broken field:
//! a validator that accepted everything would fail those.
//!
//! One test (`envoy_e2e`) runs the venv's real Envoy with `envoy/envoy.yaml`
//! in front of the sidecar; like the integration tests it needs Postgres at
//! `DATABASE_URL` (`scripts/test.sh` provides one) and fails without it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    let py = root().join(".dev/venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/pyenv.sh (scripts/test.sh does) to create the validation \
         virtualenv",
        py.display()
    );
    py
}

/// Runs `tests/validate/<script>` with `args`, from the repository root.
fn validate(script: &str, args: &[&Path]) -> Output {
    Command::new(python())
        .arg(root().join("tests/validate").join(script))
        .args(args)
        .current_dir(root())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn assert_passes(out: &Output, expect_ok: &[&str]) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "validator failed\n--- stdout\n{stdout}--- stderr\n{stderr}"
    );
    for ok in expect_ok {
        assert!(
            stdout.contains(&format!("ok: {ok}")),
            "no `ok: {ok}` line\n--- stdout\n{stdout}"
        );
    }
}

#[track_caller]
fn assert_rejects(out: &Output, names: &[&str]) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        !out.status.success(),
        "validator accepted a broken file\n--- stdout\n{stdout}--- stderr\n{stderr}"
    );
    for name in names {
        assert!(
            stderr.contains(name),
            "the error does not name `{name}`\n--- stderr\n{stderr}"
        );
    }
}

/// A fresh directory for this test's broken copies.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("deploy-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Copies `src` (relative to the repository) to `dst`, replacing `from` with
/// `to`, which must occur: a mutation that matched nothing would test nothing.
#[track_caller]
fn broken_copy(src: &str, dst: &Path, from: &str, to: &str) {
    let original = std::fs::read_to_string(root().join(src)).expect("read artifact");
    assert!(
        original.contains(from),
        "{src} no longer contains {from:?}: update this test"
    );
    std::fs::write(dst, original.replacen(from, to, 1)).expect("write broken copy");
}

/// Copies every file of directory `src` (relative to the repository) into `dst`.
fn copy_dir(src: &str, dst: &Path) {
    for entry in std::fs::read_dir(root().join(src)).expect("read dir") {
        let entry = entry.expect("dir entry");
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), dst.join(entry.file_name())).expect("copy file");
        }
    }
}

// ---- Envoy ----------------------------------------------------------------

#[test]
fn envoy_configs_pass_proto_envoy_and_policy_checks() {
    let out = validate(
        "validate_envoy.py",
        &[
            Path::new("envoy/envoy.yaml"),
            Path::new("envoy/envoy-http.yaml"),
        ],
    );
    assert_passes(&out, &["envoy/envoy.yaml", "envoy/envoy-http.yaml"]);
}

#[test]
fn envoy_validator_rejects_an_unknown_field() {
    let dir = scratch("envoy-field");
    let bad = dir.join("envoy.yaml");
    broken_copy(
        "envoy/envoy.yaml",
        &bad,
        "include_peer_certificate: false",
        "include_peer_certificat: false",
    );
    assert_rejects(
        &validate("validate_envoy.py", &[&bad]),
        &["include_peer_certificat"],
    );
}

#[test]
fn envoy_validator_rejects_an_unknown_typed_config_type() {
    let dir = scratch("envoy-type");
    let bad = dir.join("envoy-http.yaml");
    broken_copy(
        "envoy/envoy-http.yaml",
        &bad,
        "ext_authz.v3.ExtAuthz\n",
        "ext_authz.v3.ExtAuthzz\n",
    );
    assert_rejects(&validate("validate_envoy.py", &[&bad]), &["ExtAuthzz"]);
}

#[test]
fn envoy_validator_rejects_failing_open() {
    let dir = scratch("envoy-open");
    let bad = dir.join("envoy.yaml");
    broken_copy(
        "envoy/envoy.yaml",
        &bad,
        "failure_mode_allow: false",
        "failure_mode_allow: true",
    );
    assert_rejects(
        &validate("validate_envoy.py", &[&bad]),
        &["failure_mode_allow"],
    );
}

#[test]
fn envoy_validator_rejects_underscore_headers_allowed() {
    let dir = scratch("envoy-underscores");
    let bad = dir.join("envoy.yaml");
    broken_copy(
        "envoy/envoy.yaml",
        &bad,
        "headers_with_underscores_action: REJECT_REQUEST",
        "headers_with_underscores_action: ALLOW",
    );
    assert_rejects(
        &validate("validate_envoy.py", &[&bad]),
        &["headers_with_underscores_action", "REJECT_REQUEST"],
    );
}

#[test]
fn envoy_validator_rejects_missing_edge_settings() {
    let dir = scratch("envoy-edge");
    let bad = dir.join("envoy-http.yaml");
    broken_copy(
        "envoy/envoy-http.yaml",
        &bad,
        "                use_remote_address: true\n",
        "",
    );
    let text = std::fs::read_to_string(&bad).expect("read copy");
    let text = text
        .replacen("                request_headers_timeout: 10s\n", "", 1)
        .replacen("                  max_concurrent_streams: 100\n", "", 1);
    std::fs::write(&bad, text).expect("write copy");
    assert_rejects(
        &validate("validate_envoy.py", &[&bad]),
        &[
            "use_remote_address",
            "request_headers_timeout",
            "max_concurrent_streams",
        ],
    );
}

#[test]
fn envoy_validator_rejects_a_health_bypass_for_every_method() {
    let dir = scratch("envoy-health-methods");
    let bad = dir.join("envoy.yaml");
    broken_copy(
        "envoy/envoy.yaml",
        &bad,
        "                            headers:\n                              - name: \":method\"\n                                string_match: { safe_regex: { regex: \"GET|HEAD\" } }\n",
        "",
    );
    assert_rejects(
        &validate("validate_envoy.py", &[&bad]),
        &["only GET/HEAD of the exact path /health/status"],
    );
}

#[test]
fn envoy_validator_rejects_method_override_headers_reaching_the_app() {
    let dir = scratch("envoy-method-override");
    let bad = dir.join("envoy.yaml");
    broken_copy(
        "envoy/envoy.yaml",
        &bad,
        "                    - x-http-method-override\n",
        "",
    );
    assert_rejects(
        &validate("validate_envoy.py", &[&bad]),
        &["must remove x-http-method-override"],
    );
}

/// A value the protos accept but Envoy does not: proves `envoy --mode validate` runs.
#[test]
fn envoy_validator_runs_envoy_itself() {
    let dir = scratch("envoy-binary");
    let bad = dir.join("envoy.yaml");
    broken_copy(
        "envoy/envoy.yaml",
        &bad,
        "      connect_timeout: 0.25s",
        "      connect_timeout: -1s",
    );
    assert_rejects(
        &validate("validate_envoy.py", &[&bad]),
        &["envoy --mode validate", "positive duration"],
    );
}

// ---- Istio and Kuma / Kong Mesh ---------------------------------------------

#[test]
fn istio_and_kuma_snippets_validate() {
    assert_passes(
        &validate("validate_mesh.py", &[]),
        &["envoy/istio", "envoy/kuma/meshproxypatch.yaml"],
    );
}

#[test]
fn mesh_validator_rejects_an_unknown_field_in_the_embedded_envoy_filter() {
    let dir = scratch("kuma-field");
    copy_dir("envoy/kuma", &dir);
    broken_copy(
        "envoy/kuma/meshproxypatch.yaml",
        &dir.join("meshproxypatch.yaml"),
        "failureModeAllow: false",
        "failureModeAlow: false",
    );
    let kuma = dir.to_string_lossy().into_owned();
    let out = validate("validate_mesh.py", &[Path::new("--kuma"), Path::new(&kuma)]);
    assert_rejects(&out, &["failureModeAlow", "ExtAuthz"]);
}

#[test]
fn mesh_validator_rejects_an_istio_provider_that_fails_open() {
    let dir = scratch("istio-open");
    copy_dir("envoy/istio", &dir);
    broken_copy(
        "envoy/istio/mesh-config.yaml",
        &dir.join("mesh-config.yaml"),
        "failOpen: false",
        "failOpen: true",
    );
    let istio = dir.to_string_lossy().into_owned();
    let out = validate(
        "validate_mesh.py",
        &[Path::new("--istio"), Path::new(&istio)],
    );
    assert_rejects(&out, &["failOpen"]);
}

#[test]
fn mesh_validator_rejects_an_unknown_istio_field() {
    let dir = scratch("istio-field");
    copy_dir("envoy/istio", &dir);
    broken_copy(
        "envoy/istio/authorization-policy.yaml",
        &dir.join("authorization-policy.yaml"),
        "notPaths:",
        "notPath:",
    );
    let istio = dir.to_string_lossy().into_owned();
    let out = validate(
        "validate_mesh.py",
        &[Path::new("--istio"), Path::new(&istio)],
    );
    assert_rejects(&out, &["notPath"]);
}

#[test]
fn mesh_validator_rejects_an_istio_health_bypass_for_every_method() {
    let dir = scratch("istio-health-methods");
    copy_dir("envoy/istio", &dir);
    broken_copy(
        "envoy/istio/authorization-policy.yaml",
        &dir.join("authorization-policy.yaml"),
        "        - operation:\n            notMethods:\n              - GET\n              - HEAD\n",
        "",
    );
    let istio = dir.to_string_lossy().into_owned();
    let out = validate(
        "validate_mesh.py",
        &[Path::new("--istio"), Path::new(&istio)],
    );
    assert_rejects(
        &out,
        &["AuthorizationPolicy[velro-authz].rules", "notMethods"],
    );
}

#[test]
fn mesh_validator_rejects_meshes_that_let_underscore_headers_through() {
    let istio = scratch("istio-underscores");
    copy_dir("envoy/istio", &istio);
    broken_copy(
        "envoy/istio/envoy-filter.yaml",
        &istio.join("envoy-filter.yaml"),
        "headers_with_underscores_action: REJECT_REQUEST",
        "headers_with_underscores_action: ALLOW",
    );
    let kuma = scratch("kuma-underscores");
    copy_dir("envoy/kuma", &kuma);
    broken_copy(
        "envoy/kuma/meshproxypatch.yaml",
        &kuma.join("meshproxypatch.yaml"),
        "headersWithUnderscoresAction: REJECT_REQUEST",
        "headersWithUnderscoresAction: ALLOW",
    );
    let (istio, kuma) = (
        istio.to_string_lossy().into_owned(),
        kuma.to_string_lossy().into_owned(),
    );
    let out = validate(
        "validate_mesh.py",
        &[
            Path::new("--istio"),
            Path::new(&istio),
            Path::new("--kuma"),
            Path::new(&kuma),
        ],
    );
    assert_rejects(
        &out,
        &[
            "envoy-filter.yaml: EnvoyFilter: no NETWORK_FILTER patch",
            "meshproxypatch.yaml: MeshProxyPatch[velro-authz]: no networkFilter patch",
        ],
    );
}

// ---- Kong -----------------------------------------------------------------

#[test]
fn kong_declarative_config_validates() {
    assert_passes(&validate("validate_kong.py", &[]), &["kong/kong.yaml"]);
}

#[test]
fn kong_validator_rejects_an_unknown_opa_field() {
    let dir = scratch("kong-field");
    let bad = dir.join("kong.yaml");
    broken_copy(
        "kong/kong.yaml",
        &bad,
        "include_route_in_opa_input",
        "include_routes_in_opa_input",
    );
    assert_rejects(
        &validate("validate_kong.py", &[&bad]),
        &["include_routes_in_opa_input"],
    );
}

#[test]
fn kong_validator_rejects_a_config_that_lets_spoofed_identity_headers_through() {
    let dir = scratch("kong-spoof");
    let bad = dir.join("kong.yaml");
    broken_copy("kong/kong.yaml", &bad, "\"x-velro-role\", ", "");
    assert_rejects(&validate("validate_kong.py", &[&bad]), &["x-velro-role"]);
}

#[test]
fn kong_validator_rejects_a_pre_function_blind_to_underscores_and_method_overrides() {
    let dir = scratch("kong-underscore");
    let bad = dir.join("kong.yaml");
    broken_copy(
        "kong/kong.yaml",
        &bad,
        "local folded = string.gsub(string.lower(name), \"_\", \"-\")",
        "local folded = string.lower(name)",
    );
    let text = std::fs::read_to_string(&bad).expect("read copy");
    std::fs::write(&bad, text.replacen("\"x-http-method-override\", ", "", 1)).expect("write");
    assert_rejects(
        &validate("validate_kong.py", &[&bad]),
        &["'_' read as '-'", "must clear x-http-method-override"],
    );
}

// ---- Kubernetes -------------------------------------------------------------

#[test]
fn k8s_manifests_validate() {
    assert_passes(&validate("validate_k8s.py", &[]), &["k8s"]);
}

#[test]
fn k8s_validator_rejects_an_unknown_field() {
    let dir = scratch("k8s-field");
    copy_dir("k8s", &dir);
    broken_copy(
        "k8s/deployment.yaml",
        &dir.join("deployment.yaml"),
        "allowPrivilegeEscalation: false",
        "allowPrivilegeEscalaton: false",
    );
    let k8s = dir.to_string_lossy().into_owned();
    let out = validate("validate_k8s.py", &[Path::new("--dir"), Path::new(&k8s)]);
    assert_rejects(&out, &["allowPrivilegeEscalaton", "Kubernetes 1.30.0"]);
}

#[test]
fn k8s_validator_rejects_an_unknown_servicemonitor_field_and_metric() {
    let dir = scratch("k8s-crd");
    copy_dir("k8s", &dir);
    broken_copy(
        "k8s/servicemonitor.yaml",
        &dir.join("servicemonitor.yaml"),
        "scrapeTimeout:",
        "scrapeTimout:",
    );
    broken_copy(
        "k8s/prometheusrule.yaml",
        &dir.join("prometheusrule.yaml"),
        "velro_authz_listener_connected == 0",
        "velro_authz_listener_conected == 0",
    );
    let k8s = dir.to_string_lossy().into_owned();
    let out = validate("validate_k8s.py", &[Path::new("--dir"), Path::new(&k8s)]);
    assert_rejects(&out, &["scrapeTimout", "velro_authz_listener_conected"]);
}

#[test]
fn k8s_validator_rejects_a_drifted_envoy_copy() {
    let dir = scratch("k8s-drift");
    copy_dir("k8s", &dir);
    broken_copy(
        "k8s/envoy.yaml",
        &dir.join("envoy.yaml"),
        "timeout: 0.25s",
        "timeout: 0.5s",
    );
    let k8s = dir.to_string_lossy().into_owned();
    let out = validate("validate_k8s.py", &[Path::new("--dir"), Path::new(&k8s)]);
    assert_rejects(&out, &["envoy.yaml", "differs from envoy/envoy.yaml"]);
}

/// Without the NetworkPolicy any pod in the cluster could reach every port the
/// pod listens on.
#[test]
fn k8s_validator_rejects_a_missing_network_policy() {
    let dir = scratch("k8s-netpol");
    copy_dir("k8s", &dir);
    broken_copy(
        "k8s/kustomization.yaml",
        &dir.join("kustomization.yaml"),
        "  - networkpolicy.yaml\n",
        "",
    );
    let k8s = dir.to_string_lossy().into_owned();
    let out = validate("validate_k8s.py", &[Path::new("--dir"), Path::new(&k8s)]);
    assert_rejects(&out, &["no NetworkPolicy selects its pods"]);
}

#[test]
fn k8s_validator_rejects_a_network_policy_that_admits_the_decision_port() {
    let dir = scratch("k8s-netpol-port");
    copy_dir("k8s", &dir);
    broken_copy(
        "k8s/networkpolicy.yaml",
        &dir.join("networkpolicy.yaml"),
        "          port: http\n",
        "          port: http\n        - protocol: TCP\n          port: 8181\n",
    );
    let k8s = dir.to_string_lossy().into_owned();
    let out = validate("validate_k8s.py", &[Path::new("--dir"), Path::new(&k8s)]);
    assert_rejects(
        &out,
        &["NetworkPolicy[velro-app].spec.ingress[0].ports", "8181"],
    );
}

/// A probe on the app's own port needs the app on the pod IP, where anything
/// that gets past the NetworkPolicy could send it forged x-velro-* headers.
#[test]
fn k8s_validator_rejects_an_app_probe_on_the_app_port() {
    let dir = scratch("k8s-app-probe");
    copy_dir("k8s", &dir);
    broken_copy(
        "k8s/deployment.yaml",
        &dir.join("deployment.yaml"),
        "              path: /health/status\n              port: 10000\n",
        "              path: /health/status\n              port: 8080\n",
    );
    let k8s = dir.to_string_lossy().into_owned();
    let out = validate("validate_k8s.py", &[Path::new("--dir"), Path::new(&k8s)]);
    assert_rejects(
        &out,
        &[
            "containers[app].readinessProbe",
            "not the app port directly",
        ],
    );
}

/// The decision endpoints belong on loopback: only the pod's Envoy asks.
#[test]
fn k8s_validator_rejects_decision_endpoints_on_the_pod_ip() {
    let dir = scratch("k8s-http-addr");
    copy_dir("k8s", &dir);
    broken_copy(
        "k8s/config.yaml",
        &dir.join("config.yaml"),
        "http_addr: 127.0.0.1:8181",
        "http_addr: 0.0.0.0:8181",
    );
    let k8s = dir.to_string_lossy().into_owned();
    let out = validate("validate_k8s.py", &[Path::new("--dir"), Path::new(&k8s)]);
    assert_rejects(&out, &["http_addr", "127.0.0.1:8181"]);
}

/// A real `kustomize build` (kubectl's built-in kustomize), whose output is
/// then validated object by object.
#[test]
fn k8s_kustomize_build_output_validates() {
    let built = Command::new("kubectl")
        .args(["kustomize", "k8s"])
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run kubectl ({e}): install kubectl (it bundles kustomize) to run this test"
            )
        });
    assert!(
        built.status.success(),
        "kubectl kustomize k8s failed:\n{}",
        text(&built.stderr)
    );
    let file = scratch("k8s-build").join("rendered.yaml");
    std::fs::write(&file, &built.stdout).expect("write rendered manifests");
    let out = validate("validate_k8s.py", &[Path::new("--rendered"), &file]);
    // The validator names files relative to the repository when they are in it.
    assert_passes(&out, &[]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("rendered.yaml ("), "{stdout}");
    assert!(
        stdout.contains("Deployment") && stdout.contains("PrometheusRule"),
        "{stdout}"
    );
}

/// The sidecar's own config loader accepts k8s/config.yaml with the
/// environment the Deployment gives it.
#[test]
fn k8s_sidecar_config_loads_with_the_real_config_loader() {
    let out = Command::new(env!("CARGO_BIN_EXE_velro-authz"))
        .args(["validate", "--config", "k8s/config.yaml"])
        .current_dir(root())
        .env("DATABASE_URL", "postgres://velro_authz@127.0.0.1:1/velro")
        .env(
            "VELRO_AUTHZ_JWT_SECRET",
            "deploy-test-secret-MFSd4cCj0NSiNTPcR1MrFGhVhq1bFnOM",
        )
        // The file names the in-pod path of the routes ConfigMap; here, its source.
        .env("VELRO_AUTHZ_ROUTES_FILE", "k8s/routes.yaml")
        .env_remove("REDIS_URL")
        .env_remove("VELRO_AUTHZ_CONFIG")
        .env_remove("VELRO_AUTHZ_GRPC_ADDR")
        .env_remove("VELRO_AUTHZ_HTTP_ADDR")
        .env_remove("VELRO_AUTHZ_METRICS_ADDR")
        .env_remove("VELRO_AUTHZ_LOG_FORMAT")
        .env_remove("VELRO_AUTHZ_DRY_RUN")
        .output()
        .expect("run velro-authz validate");
    assert!(
        out.status.success(),
        "velro-authz validate rejected k8s/config.yaml:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("configuration OK"),
        "{}",
        text(&out.stdout)
    );
}

// ---- Dockerfile -------------------------------------------------------------

#[test]
fn dockerfile_static_checks() {
    assert_passes(
        &validate("validate_dockerfile.py", &[]),
        &["Dockerfile and .dockerignore"],
    );
}

#[test]
fn dockerfile_validator_rejects_a_root_runtime_user() {
    let dir = scratch("docker-root");
    let bad = dir.join("Dockerfile");
    broken_copy("Dockerfile", &bad, "USER 65532:65532", "USER root");
    let ignore = root().join(".dockerignore");
    assert_rejects(
        &validate("validate_dockerfile.py", &[&bad, &ignore]),
        &["USER", "'root'"],
    );
}

// ---- the validation environment itself --------------------------------------

#[test]
fn validation_requirements_are_exact_pins() {
    let req = std::fs::read_to_string(root().join("tests/validate/requirements.txt"))
        .expect("read requirements");
    let pins: Vec<&str> = req
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(pins.len() >= 5, "too few requirements: {pins:?}");
    for line in pins {
        assert!(
            line.contains("==") && !line.contains(['<', '>', '~', '*', ' ']),
            "not an exact pin: {line:?}"
        );
    }
}

// ---- end to end: a real Envoy with envoy/envoy.yaml in front of the sidecar ----

mod envoy_e2e {
    use std::net::SocketAddr;
    use std::process::{Child, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use sqlx::PgPool;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use velro_authz::testkit::http::send_as_given;
    use velro_authz::testkit::procs::free_port;
    use velro_authz::testkit::{Token, config, serve};

    use super::{Command, root};

    const ALICE: &str = "10000000-0000-4000-8000-000000000001";
    const NOTEBOOK: &str = "30000000-0000-4000-8000-000000000001";

    /// Kills Envoy when the test ends, however it ends.
    struct Envoy(Child);

    impl Drop for Envoy {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A stand-in app: answers 200 with the request line and headers it saw
    /// (lower-cased), and counts the requests that reached it.
    async fn fake_app() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let addr = listener.local_addr().expect("app addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                    let seen: String = head
                        .lines()
                        .take_while(|l| !l.is_empty())
                        .map(|l| format!("{l}\n"))
                        .collect();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{seen}",
                        seen.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                });
            }
        });
        (addr, hits)
    }

    struct Reply {
        status: u16,
        headers: String,
        body: String,
    }

    /// One HTTP/1.1 GET through Envoy.
    async fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Reply {
        request(port, "GET", path, headers).await
    }

    /// One HTTP/1.1 request through Envoy, the target sent exactly as given.
    async fn request(port: u16, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
        let mut lines = vec![("host", "app"), ("connection", "close")];
        lines.extend_from_slice(headers);
        let reply = send_as_given(([127, 0, 0, 1], port).into(), method, target, &lines, &[])
            .await
            .unwrap_or_else(|e| panic!("{method} {target} through envoy: {e}"));
        Reply {
            status: reply.status,
            headers: reply.head.to_ascii_lowercase(),
            body: reply.text(),
        }
    }

    /// A shipped Envoy config with its ports moved to this test's. `authz` is the
    /// port the shipped file gives the sidecar (9191 gRPC, 8181 HTTP).
    fn envoy_config(file: &str, ports: [(u16, u16); 4]) -> String {
        let mut text = std::fs::read_to_string(root().join(file)).expect("read envoy config");
        for (from, to) in ports {
            let from = if from == 10000 {
                "address: 0.0.0.0, port_value: 10000".to_owned()
            } else {
                format!("port_value: {from}")
            };
            let to = if from.starts_with("address") {
                format!("address: 127.0.0.1, port_value: {to}")
            } else {
                format!("port_value: {to}")
            };
            assert_eq!(
                text.matches(&from).count(),
                1,
                "{file}: expected one {from:?}"
            );
            text = text.replace(&from, &to);
        }
        // A debug build deciding cold while other tests load both cores can pass
        // 250 ms; this test is about behaviour, not latency.
        let timeouts = text
            .lines()
            .filter(|l| l.trim() == "timeout: 0.25s")
            .count();
        assert_eq!(timeouts, 1, "{file}: expected one ext_authz timeout: 0.25s");
        text.lines()
            .map(|l| {
                if l.trim() == "timeout: 0.25s" {
                    l.replace("0.25s", "5s")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Through a real Envoy running the shipped envoy/envoy.yaml: no token is
    /// 401 from velro-authz, a valid token reaches the app with velro-authz's
    /// identity headers and none of the client's spoofed ones, GET/HEAD of the
    /// health path bypass the check (POST does not), the edge hardening of
    /// [`edge_hardening`] holds, and with the sidecar gone Envoy fails closed
    /// (503) while GET/HEAD of the health path still work.
    #[sqlx::test(migrations = "./migrations")]
    async fn envoy_yaml_enforces_decisions_and_fails_closed(pool: PgPool) {
        through_envoy(pool, "envoy/envoy.yaml", 9191, |r| r.grpc_addr.port()).await;
    }

    /// The same through envoy/envoy-http.yaml: ext_authz `http_service` to the
    /// sidecar's `/v1/check` on the HTTP port.
    #[sqlx::test(migrations = "./migrations")]
    async fn envoy_http_service_yaml_enforces_decisions_and_fails_closed(pool: PgPool) {
        through_envoy(pool, "envoy/envoy-http.yaml", 8181, |r| r.http_addr.port()).await;
    }

    async fn through_envoy(
        pool: PgPool,
        file: &str,
        shipped_authz_port: u16,
        authz_port: fn(&velro_authz::app::Running) -> u16,
    ) {
        let envoy_bin = root().join(".dev/venv/bin/envoy");
        assert!(
            envoy_bin.exists(),
            "{} is missing: run scripts/pyenv.sh",
            envoy_bin.display()
        );
        velro_authz::demo::seed(&pool)
            .await
            .expect("seed demo data");
        let config = config("");
        let jwt = config.jwt.clone();
        let running = serve(pool, config).await;

        let (app, app_hits) = fake_app().await;
        let (listen, admin) = (free_port(), free_port());
        let dir = super::scratch(&format!("envoy-e2e-{shipped_authz_port}"));
        let cfg = dir.join("envoy.yaml");
        std::fs::write(
            &cfg,
            envoy_config(
                file,
                [
                    (10000, listen),
                    (9901, admin),
                    (shipped_authz_port, authz_port(&running)),
                    (8080, app.port()),
                ],
            ),
        )
        .expect("write envoy config");
        let _envoy = Envoy(
            Command::new(&envoy_bin)
                .arg("-c")
                .arg(&cfg)
                .args(["--disable-hot-restart", "-l", "warning"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start envoy"),
        );
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", listen)).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "envoy did not listen within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let project = format!("/api/v1/projects/{NOTEBOOK}");
        let denied = get(listen, &project, &[]).await;
        assert_eq!(denied.status, 401, "no credentials: {}", denied.headers);
        assert!(
            denied.headers.contains("www-authenticate: bearer"),
            "{}",
            denied.headers
        );
        assert!(
            !denied.body.contains("x-velro-user-id"),
            "the app was called: {}",
            denied.body
        );

        let bearer = Token::new(ALICE).bearer(&jwt);
        let allowed = get(
            listen,
            &project,
            &[
                ("authorization", &bearer),
                ("x-velro-user-id", "spoofed-user"),
                ("x-velro-admin", "1"),
            ],
        )
        .await;
        assert_eq!(allowed.status, 200, "{}{}", allowed.headers, allowed.body);
        assert!(
            allowed.body.contains(&format!("x-velro-user-id: {ALICE}")),
            "the app saw: {}",
            allowed.body
        );
        assert!(
            allowed.body.contains("x-velro-decision-id: "),
            "{}",
            allowed.body
        );
        assert!(
            !allowed.body.contains("spoofed-user") && !allowed.body.contains("x-velro-admin"),
            "a client-sent x-velro-* header reached the app: {}",
            allowed.body
        );

        let health = get(listen, "/health/status", &[]).await;
        assert_eq!(health.status, 200, "{}", health.headers);

        edge_hardening(listen, &bearer, &project, &app_hits).await;

        running.shutdown().await;
        let closed = get(listen, &project, &[("authorization", &bearer)]).await;
        assert_eq!(
            closed.status, 503,
            "sidecar down must fail closed: {}",
            closed.headers
        );
        assert!(
            closed.body.is_empty() || !closed.body.contains("x-velro-user-id"),
            "{}",
            closed.body
        );
        for method in ["GET", "HEAD"] {
            let health = request(listen, method, "/health/status", &[]).await;
            assert_eq!(
                health.status, 200,
                "{method} health bypass with the sidecar down: {}",
                health.headers
            );
        }
        let post = request(listen, "POST", "/health/status", &[]).await;
        assert_eq!(
            post.status, 503,
            "POST /health/status is decided, so fails closed: {}",
            post.headers
        );
    }

    /// Issue 12 items 5, 14, 15 and 17, through the shipped file with the
    /// sidecar up: what the client sends vs what the app sees.
    async fn edge_hardening(listen: u16, bearer: &str, project: &str, app_hits: &AtomicUsize) {
        // 5: an underscore alias of an identity header (CGI/WSGI/Rack apps read
        // x_velro_user_id as X-Velro-User-Id) is refused before anything else.
        let before = app_hits.load(Ordering::SeqCst);
        let aliased = get(
            listen,
            project,
            &[("authorization", bearer), ("x_velro_user_id", "victim")],
        )
        .await;
        assert_eq!(aliased.status, 400, "{}{}", aliased.headers, aliased.body);
        assert_eq!(
            app_hits.load(Ordering::SeqCst),
            before,
            "a request with x_velro_user_id reached the app"
        );

        // 14: method-override headers never reach the app, so it cannot be told
        // a method other than the one decided on (GET).
        let overridden = get(
            listen,
            project,
            &[
                ("authorization", bearer),
                ("x-http-method-override", "DELETE"),
                ("x-http-method", "DELETE"),
                ("x-method-override", "DELETE"),
            ],
        )
        .await;
        assert_eq!(overridden.status, 200, "{}", overridden.headers);
        assert!(
            overridden.body.starts_with(&format!("get {project} ")),
            "the app saw: {}",
            overridden.body
        );
        for name in [
            "x-http-method-override",
            "x-http-method:",
            "x-method-override",
        ] {
            assert!(
                !overridden.body.contains(name),
                "{name} reached the app: {}",
                overridden.body
            );
        }
        // 14: a fragment is not part of a request target; one sent anyway is
        // refused, never decided on or passed to the app.
        let before = app_hits.load(Ordering::SeqCst);
        let fragment = get(
            listen,
            &format!("{project}#/../../users/profile"),
            &[("authorization", bearer)],
        )
        .await;
        assert_eq!(
            fragment.status, 400,
            "{}{}",
            fragment.headers, fragment.body
        );
        assert_eq!(app_hits.load(Ordering::SeqCst), before);

        // 15: only GET and HEAD bypass the check on /health/status; POST is
        // decided (no such route: 404 no_route) and never reaches the app.
        let head = request(listen, "HEAD", "/health/status", &[]).await;
        assert_eq!(head.status, 200, "{}", head.headers);
        let before = app_hits.load(Ordering::SeqCst);
        let post = request(listen, "POST", "/health/status", &[]).await;
        assert_eq!(post.status, 404, "{}{}", post.headers, post.body);
        assert!(post.body.contains("no_route"), "{}", post.body);
        assert!(
            post.headers.contains("x-velro-decision-id: "),
            "{}",
            post.headers
        );
        assert_eq!(app_hits.load(Ordering::SeqCst), before);

        // 17: use_remote_address: the client is the TCP peer, which Envoy
        // appends to whatever x-forwarded-for the client sent (for a loopback
        // peer, as here, Envoy appends the host's own address instead).
        let forwarded = get(
            listen,
            project,
            &[
                ("authorization", bearer),
                ("x-forwarded-for", "203.0.113.9"),
            ],
        )
        .await;
        assert_eq!(forwarded.status, 200, "{}", forwarded.headers);
        let xff = forwarded
            .body
            .lines()
            .find_map(|l| l.strip_prefix("x-forwarded-for: "))
            .unwrap_or_default();
        assert!(
            xff.starts_with("203.0.113.9,") && xff.split(',').count() == 2,
            "x-forwarded-for the app saw: {xff:?}"
        );
    }
}
