//! nginx `auth_request` end to end: a real nginx (Debian's; `VELRO_NGINX`, set by
//! `scripts/services.sh env`) runs the shipped `nginx/velro-authz.conf` on a free
//! port, in front of an in-process echo upstream that answers with the headers
//! it received, and asks a real sidecar. The test fails if nginx is missing.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::IntoResponse;
use serde_json::json;
use sqlx::PgPool;
use velro_authz::testkit::http::{Reply, send, send_as_given, try_send};

use super::support::{Harness, config, demo::*, start, start_with};

/// The shipped template; the test substitutes its placeholders.
const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/nginx/velro-authz.conf");

/// nginx from `VELRO_NGINX`, else Debian's path, else PATH. Missing nginx fails
/// the test: it is a dependency the project's scripts install.
fn nginx_binary() -> PathBuf {
    let candidates = [
        std::env::var_os("VELRO_NGINX").map(PathBuf::from),
        Some(PathBuf::from("/usr/sbin/nginx")),
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("nginx"))
                .find(|p| p.is_file())
        }),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx not found: run `eval \"$(scripts/services.sh env)\"` (it installs nginx and sets VELRO_NGINX) or set VELRO_NGINX"
            )
        })
}

/// A foreground nginx in its own directory, stopped and removed on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // master_process off: one process, so killing it stops nginx entirely.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Nginx {
    /// Starts nginx with the shipped config between `authz` and `upstream`.
    fn start(authz: SocketAddr, upstream: SocketAddr) -> Nginx {
        let binary = nginx_binary();
        let version = Command::new(&binary)
            .arg("-V")
            .output()
            .unwrap_or_else(|e| panic!("{} -V: {e}", binary.display()));
        let build = String::from_utf8_lossy(&version.stderr).into_owned();
        assert!(
            build.contains("http_auth_request_module"),
            "{} has no auth_request module:\n{build}",
            binary.display()
        );
        let mut last_error = String::new();
        for _ in 0..5 {
            match Nginx::try_start(&binary, &build, authz, upstream) {
                Ok(nginx) => return nginx,
                Err(e) => last_error = e,
            }
        }
        panic!("nginx did not start: {last_error}");
    }

    fn try_start(
        binary: &Path,
        build: &str,
        authz: SocketAddr,
        upstream: SocketAddr,
    ) -> Result<Nginx, String> {
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let dir =
            std::env::temp_dir().join(format!("velro-nginx-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("tmp")).map_err(|e| e.to_string())?;

        let template = std::fs::read_to_string(TEMPLATE).map_err(|e| format!("{TEMPLATE}: {e}"))?;
        let site = template
            .replace("${VELRO_LISTEN}", &addr.to_string())
            .replace("${VELRO_AUTHZ_ADDR}", &authz.to_string())
            .replace("${VELRO_UPSTREAM}", &upstream.to_string());
        assert!(
            !site.contains("${VELRO_"),
            "unsubstituted placeholder:\n{site}"
        );
        std::fs::write(dir.join("velro-authz.conf"), site).map_err(|e| e.to_string())?;

        // Temp paths inside `dir`: the compiled-in ones (/var/lib/nginx) need
        // root. Only for modules this nginx has, or the directive is unknown.
        let d = dir.display();
        let mut temp =
            format!("client_body_temp_path {d}/tmp/body;\n    proxy_temp_path {d}/tmp/proxy;\n");
        for module in ["fastcgi", "uwsgi", "scgi"] {
            if !build.contains(&format!("--without-http_{module}_module")) {
                temp.push_str(&format!("    {module}_temp_path {d}/tmp/{module};\n"));
            }
        }
        let main = format!(
            "events {{ worker_connections 256; }}\n\
             http {{\n    {temp}\
                 log_format velro '$status $request_method $request_uri unremoved=\"$velro_unremoved\"';\n    \
                 access_log {d}/access.log velro;\n    \
                 include {d}/velro-authz.conf;\n\
             }}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).map_err(|e| e.to_string())?;

        let stderr = std::fs::File::create(dir.join("stderr.log")).map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .arg("-e")
            .arg("stderr")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-g")
            .arg(format!(
                "daemon off; master_process off; pid {d}/nginx.pid; error_log stderr;"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", binary.display()))?;
        let mut nginx = Nginx { child, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                return Err(format!("exited {status}: {}", nginx.stderr()));
            }
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not listening on {addr} after 10 s: {}",
                    nginx.stderr()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// The access log once it holds `line`, or as it is after 5 s: nginx
    /// writes a request's line when it finalizes the request, which may be
    /// just after the client has the whole reply.
    async fn access_log_with(&self, line: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.access_log();
            if log.contains(line) || Instant::now() >= deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn get(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
        send(self.addr, method, target, headers, Vec::new()).await
    }
}

/// The application behind nginx: answers 200 with what it received.
struct Echo {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

async fn echo(State(hits): State<Arc<AtomicUsize>>, request: Request) -> impl IntoResponse {
    hits.fetch_add(1, Ordering::SeqCst);
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in request.headers() {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let method = request.method().to_string();
    let uri = request.uri().to_string();
    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    axum::Json(json!({
        "method": method,
        "uri": uri,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
}

async fn start_echo() -> Echo {
    let hits = Arc::new(AtomicUsize::new(0));
    let app = Router::new().fallback(echo).with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Echo { addr, hits }
}

/// A sidecar, the echo upstream and nginx between them.
async fn stack(h: &Harness) -> (Nginx, Echo) {
    let echo = start_echo().await;
    let nginx = Nginx::start(h.running.http_addr, echo.addr);
    (nginx, echo)
}

/// The headers the upstream received, from the echo's answer.
fn received(reply: &Reply) -> BTreeMap<String, Vec<String>> {
    assert_eq!(reply.status, 200, "{}", reply.text());
    serde_json::from_value(reply.json()["headers"].clone()).expect("echo headers")
}

fn one<'a>(headers: &'a BTreeMap<String, Vec<String>>, name: &str) -> Option<&'a str> {
    match headers.get(name).map(Vec::as_slice) {
        None => None,
        Some([value]) => Some(value),
        Some(values) => panic!(
            "{name} reached the upstream {} times: {values:?}",
            values.len()
        ),
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn nginx_allowed_requests_reach_upstream_with_our_identity_only(pool: PgPool) {
    let h = start(pool).await;
    let (nginx, echo) = stack(&h).await;
    let bob = format!("Bearer {}", h.token(BOB));
    let spoofed = [
        ("authorization", bob.as_str()),
        ("X-Velro-User-Id", ALICE),
        ("x-velro-auth", "api_key"),
        ("x-velro-role", "owner"),
        ("x-velro-decision-id", "forged"),
        ("x-velro-admin", "1"),
    ];

    // Resource route: all three identity headers, ours.
    let target = format!("/api/v1/generations/{GEN_CHILD}?view=full");
    let reply = nginx.get("GET", &target, &spoofed).await;
    let got = received(&reply);
    assert_eq!(one(&got, "x-velro-user-id"), Some(BOB));
    assert_eq!(one(&got, "x-velro-auth"), Some("jwt"));
    assert_eq!(one(&got, "x-velro-role"), Some("member"));
    let decision_id = one(&got, "x-velro-decision-id").expect("decision id");
    assert_ne!(decision_id, "forged");
    assert_eq!(
        reply.header("x-velro-decision-id"),
        Some(decision_id),
        "client sees it too"
    );
    assert_eq!(
        reply.json()["uri"],
        target.as_str(),
        "the original request goes on"
    );
    // The documented limit: nginx cannot remove header names it does not know,
    // so an x-velro-* name velro-authz never sets reaches the upstream; the
    // sidecar names it (logged here) and upstreams must read only our four.
    assert_eq!(one(&got, "x-velro-admin"), Some("1"));
    let line = format!("200 GET {target} unremoved=\"x-velro-admin\"");
    let log = nginx.access_log_with(&line).await;
    assert!(log.contains(&line), "{log}");

    // Authenticated-only route: no role, so the client's x-velro-role is dropped.
    let reply = nginx.get("GET", "/api/v1/users/profile", &spoofed).await;
    let got = received(&reply);
    assert_eq!(one(&got, "x-velro-user-id"), Some(BOB));
    assert_eq!(one(&got, "x-velro-role"), None);

    // Public route: no identity, and none of the client's reaches the upstream.
    let reply = nginx.get("GET", "/health/status", &spoofed).await;
    let got = received(&reply);
    for name in ["x-velro-user-id", "x-velro-auth", "x-velro-role"] {
        assert_eq!(one(&got, name), None, "{name}");
    }
    assert_ne!(one(&got, "x-velro-decision-id"), Some("forged"));

    // Bodies and methods pass; HEAD is authorized as GET.
    let reply = send(
        nginx.addr,
        "PUT",
        &format!("/api/v1/generations/{GEN_BOB}"),
        &[("authorization", &bob), ("content-type", "text/plain")],
        b"new prompt".to_vec(),
    )
    .await;
    assert_eq!(
        (
            reply.json()["method"].as_str(),
            reply.json()["body"].as_str()
        ),
        (Some("PUT"), Some("new prompt"))
    );
    let erin = format!("Bearer {}", h.token(ERIN));
    let reply = nginx
        .get(
            "HEAD",
            &format!("/api/v1/generations/{GEN_PUBLIC}"),
            &[("authorization", &erin)],
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(echo.hits.load(Ordering::SeqCst), 5);
}

/// What the client sends vs what the upstream sees: underscore aliases of our
/// headers (`x_velro_user_id`, read as `X-Velro-User-Id` by CGI/WSGI/Rack apps)
/// are dropped, method-override headers stripped (the app serves the method
/// that was decided on), and a request target with a `#fragment` refused.
#[sqlx::test(migrations = "./migrations")]
async fn nginx_drops_underscore_aliases_method_overrides_and_fragments(pool: PgPool) {
    let h = start(pool).await;
    let (nginx, echo) = stack(&h).await;
    let bob = format!("Bearer {}", h.token(BOB));
    let target = format!("/api/v1/generations/{GEN_BOB}");
    let reply = nginx
        .get(
            "GET",
            &target,
            &[
                ("authorization", &bob),
                ("x_velro_user_id", ALICE),
                ("X_Velro_Role", "owner"),
                ("x-http-method-override", "DELETE"),
                ("x-http-method", "DELETE"),
                ("x-method-override", "DELETE"),
            ],
        )
        .await;
    let got = received(&reply);
    assert_eq!(reply.json()["method"], "GET");
    assert_eq!(one(&got, "x-velro-user-id"), Some(BOB));
    assert_eq!(one(&got, "x-velro-role"), Some("owner"));
    for name in got.keys() {
        assert!(!name.contains('_'), "{name} reached the upstream: {got:?}");
    }
    for name in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        assert_eq!(one(&got, name), None, "{name}");
    }
    assert!(
        !reply.text().contains(ALICE),
        "the alias's value reached the upstream: {}",
        reply.text()
    );

    // A client library refuses a fragment in a target: the request line as given.
    let hits = echo.hits.load(Ordering::SeqCst);
    let answer = send_as_given(
        nginx.addr,
        "GET",
        &format!("{target}#/../../../users/profile"),
        &[
            ("host", "app"),
            ("authorization", &bob),
            ("connection", "close"),
        ],
        &[],
    )
    .await
    .expect("nginx answers");
    assert!(answer.head.starts_with("HTTP/1.1 400 "), "{}", answer.head);
    assert_eq!(
        echo.hits.load(Ordering::SeqCst),
        hits,
        "the upstream was called"
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn nginx_denies_reach_the_client_with_our_status_body_and_headers(pool: PgPool) {
    let h = start(pool).await;
    let (nginx, echo) = stack(&h).await;
    let bob = format!("Bearer {}", h.token(BOB));
    let erin = format!("Bearer {}", h.token(ERIN));
    let cases: [(&str, String, Vec<(&str, &str)>, u16, &str); 8] = [
        (
            "GET",
            format!("/api/v1/generations/{GEN_BOB}"),
            vec![],
            401,
            "missing_credentials",
        ),
        (
            "GET",
            format!("/api/v1/generations/{GEN_BOB}"),
            vec![("authorization", "Bearer nope")],
            401,
            "invalid_token",
        ),
        (
            "PUT",
            format!("/api/v1/generations/{GEN_PUBLIC}"),
            vec![("authorization", &bob)],
            403,
            "insufficient_role",
        ),
        (
            "GET",
            format!("/api/v1/generations/{GEN_BOB}"),
            vec![("authorization", &erin)],
            404,
            "not_found",
        ),
        (
            "DELETE",
            format!("/api/v1/projects/{PROJECT_NOTEBOOK}"),
            vec![],
            404,
            "no_route",
        ),
        (
            "GET",
            "/api/v1/generations/not-a-uuid".to_owned(),
            vec![],
            400,
            "invalid_id",
        ),
        (
            "GET",
            "/api//v1/users/profile".to_owned(),
            vec![],
            400,
            "bad_path",
        ),
        // A client trying Traefik's headers on nginx: nginx clears them.
        (
            "GET",
            format!("/api/v1/generations/{GEN_BOB}"),
            vec![
                ("x-forwarded-uri", "/health/status"),
                ("x-forwarded-method", "GET"),
            ],
            401,
            "missing_credentials",
        ),
    ];
    for (method, target, headers, status, reason) in &cases {
        let reply = nginx.get(method, target, headers).await;
        assert_eq!(reply.status, *status, "{method} {target}: {}", reply.text());
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "{reason}"
        );
        let body = reply.json();
        assert_eq!(body["reason"], *reason);
        let id = reply.header("x-velro-decision-id").expect("decision id");
        assert_eq!(body["request_id"], id);
        assert!(
            reply.header("x-velro-status").is_none(),
            "internal headers stay inside"
        );
        assert!(reply.header("x-velro-body").is_none());
        let challenges = reply.all("www-authenticate");
        if *status == 401 {
            assert_eq!(challenges.len(), 1, "exactly one challenge: {challenges:?}");
            assert!(
                challenges[0].starts_with("Bearer realm=\"velro\""),
                "{challenges:?}"
            );
        } else {
            assert!(challenges.is_empty(), "{reason}: {challenges:?}");
        }
    }
    assert_eq!(
        echo.hits.load(Ordering::SeqCst),
        0,
        "no deny reaches the upstream"
    );
}

/// Depends on rate limiting (`rate_limit:` config, 429 `rate_limited` with
/// `retry-after` and `ratelimit-*` headers), built on main concurrently: until
/// it is merged this config is refused and the test fails.
#[sqlx::test(migrations = "./migrations")]
async fn nginx_rate_limited_429_reaches_the_client_with_retry_after(pool: PgPool) {
    let h = start_with(
        pool,
        config("rate_limit:\n  per_second: 0.01\n  burst: 1\n"),
    )
    .await;
    let (nginx, echo) = stack(&h).await;
    let bob = format!("Bearer {}", h.token(BOB));
    let target = format!("/api/v1/generations/{GEN_BOB}");
    let first = nginx.get("GET", &target, &[("authorization", &bob)]).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let limited = nginx.get("GET", &target, &[("authorization", &bob)]).await;
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert_eq!(limited.json()["reason"], "rate_limited");
    let retry: u64 = limited
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!(retry >= 1, "{retry}");
    for name in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
        assert!(
            limited.header(name).is_some(),
            "{name} missing: {:?}",
            limited.headers
        );
    }
    assert_eq!(echo.hits.load(Ordering::SeqCst), 1);
}

#[sqlx::test(migrations = "./migrations")]
async fn nginx_fails_closed_when_the_sidecar_is_down(pool: PgPool) {
    let h = start(pool).await;
    let (nginx, echo) = stack(&h).await;
    let bob = format!("Bearer {}", h.token(BOB));
    let target = format!("/api/v1/generations/{GEN_BOB}");
    assert_eq!(
        nginx
            .get("GET", &target, &[("authorization", &bob)])
            .await
            .status,
        200
    );

    h.running.shutdown().await;
    for path in [target.as_str(), "/health/status"] {
        let reply = try_send(
            nginx.addr,
            "GET",
            path,
            &[("authorization", &bob)],
            Vec::new(),
        )
        .await
        .expect("nginx answers");
        assert_eq!(reply.status, 503, "{path}: {}", reply.text());
        assert_eq!(reply.json()["reason"], "authz_unreachable");
    }
    assert_eq!(
        echo.hits.load(Ordering::SeqCst),
        1,
        "nothing reached the upstream once the sidecar was gone"
    );
}

/// A stand-in sidecar answering `/v1/auth` in the nginx shape with whatever
/// the original URI asks for, to exercise the config's renderer on its own.
async fn start_fake_sidecar() -> SocketAddr {
    async fn answer(request: Request) -> axum::response::Response {
        let uri = request
            .headers()
            .get("x-original-uri")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let status = uri.trim_start_matches('/');
        let body =
            json!({"error": "too many requests", "reason": "rate_limited", "request_id": "fake"});
        (
            axum::http::StatusCode::FORBIDDEN,
            [
                ("x-velro-status", status.to_owned()),
                ("x-velro-body", body.to_string()),
                ("x-velro-decision-id", "fake".to_owned()),
                ("retry-after", "7".to_owned()),
                ("ratelimit-limit", "1".to_owned()),
                ("ratelimit-remaining", "0".to_owned()),
                ("ratelimit-reset", "7".to_owned()),
                ("x-velro-user-id", ALICE.to_owned()),
            ],
            body.to_string(),
        )
            .into_response()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake");
    let addr = listener.local_addr().expect("fake addr");
    let app = Router::new().route("/v1/auth", axum::routing::any(answer));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// The renderer passes 429 with its headers, and turns any status it does not
/// know (even "200") into a plain 403: it can never allow.
#[tokio::test]
async fn nginx_renders_known_deny_statuses_only_and_never_allows() {
    let echo = start_echo().await;
    let nginx = Nginx::start(start_fake_sidecar().await, echo.addr);

    let reply = nginx.get("GET", "/429", &[]).await;
    assert_eq!(reply.status, 429, "{}", reply.text());
    assert_eq!(reply.json()["reason"], "rate_limited");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    for (name, value) in [
        ("retry-after", "7"),
        ("ratelimit-limit", "1"),
        ("ratelimit-remaining", "0"),
        ("ratelimit-reset", "7"),
        ("x-velro-decision-id", "fake"),
    ] {
        assert_eq!(reply.header(name), Some(value), "{name}");
    }
    assert!(reply.header("x-velro-user-id").is_none());

    for status in ["200", "204", "302", "500", "404%20x", "x"] {
        let reply = nginx.get("GET", &format!("/{status}"), &[]).await;
        assert_eq!(reply.status, 403, "{status}: {}", reply.text());
        assert_eq!(
            reply.json(),
            json!({"error": "forbidden", "reason": "denied"})
        );
    }
    assert_eq!(echo.hits.load(Ordering::SeqCst), 0);
}

/// The per-address limit of failed authentications counts the address nginx
/// saw, not one the client wrote into X-Forwarded-For: varying it neither
/// escapes the limit nor lands the failures on someone else.
#[sqlx::test(migrations = "./migrations")]
async fn nginx_failed_auth_limit_counts_the_address_nginx_appends(pool: PgPool) {
    let h = start_with(pool, config("rate_limit:\n  failed_auth_per_minute: 2\n")).await;
    let (nginx, _echo) = stack(&h).await;
    let path = format!("/api/v1/generations/{GEN_BOB}");
    let mut answers = Vec::new();
    for spoofed in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
        let key = velro_authz::authn::apikey::generate().plain;
        let reply = nginx
            .get(
                "GET",
                &path,
                &[("x-api-key", &key), ("x-forwarded-for", spoofed)],
            )
            .await;
        answers.push(reply.status);
    }
    assert_eq!(answers, vec![401, 401, 429], "{}", nginx.access_log());
}
