//! HTTP forward-auth through real sockets: Envoy `http_service` (`/v1/check/...`),
//! Traefik `forwardAuth` and nginx `auth_request` (`/v1/auth`, default and nginx
//! answer shapes) and Kong's `opa` plugin (`POST /v1/data/...`). Every scenario
//! asks all four shapes and expects the one answer of the shared decision core.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use velro_authz::app::{App, Running};
use velro_authz::authn::apikey;
use velro_authz::metrics::Metrics;
use velro_authz::store::Store;

use velro_authz::testkit::Token;
use velro_authz::testkit::http::{Reply, send};

use super::support::{Harness, config, demo::*, start, start_with};

/// How the proxy asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `ANY /v1/check/<path>`.
    Envoy,
    /// `/v1/auth` with `X-Forwarded-Method` / `X-Forwarded-Uri`, true statuses.
    Traefik,
    /// `/v1/auth` with `X-Original-*` and `X-Velro-Proxy: nginx`.
    Nginx,
    /// `POST /v1/data/velro/authz` with Kong's input.
    Opa,
}

const SHAPES: [Shape; 4] = [Shape::Envoy, Shape::Traefik, Shape::Nginx, Shape::Opa];

/// One answer, whatever the shape.
#[derive(Debug)]
struct Said {
    /// The decision's status: 200 for allow.
    status: u16,
    /// The deny body's reason, "ok" on allow.
    reason: String,
    /// Identity headers (allow) or the deny's headers, lower-case names.
    headers: HashMap<String, String>,
    /// Client-sent names the proxy is told to remove.
    remove: Vec<String>,
    /// The deny body.
    body: Value,
    /// The HTTP status on the wire.
    raw_status: u16,
    /// The decision id the answer names.
    decision_id: String,
}

/// A request body exactly as Kong's `opa` plugin builds it (Kong/kong
/// `plugins-ee/opa/kong/plugins/opa/handler.lua`, `build_opa_input`):
/// `kong.request.get_headers()` gives lower-case names and an array for a
/// repeated header, `get_query()` a table, and `tls` is `{}` over plain HTTP.
fn kong_input(method: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let mut table: serde_json::Map<String, Value> = serde_json::Map::new();
    table.insert("host".into(), json!("api.example.org"));
    table.insert("user-agent".into(), json!("curl/8.5.0"));
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        match table.get_mut(&name) {
            Some(Value::Array(values)) => values.push(json!(value)),
            Some(first) => *first = json!([first.clone(), value]),
            None => {
                table.insert(name, json!(value));
            }
        }
    }
    let mut querystring = serde_json::Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) => querystring.insert(k.to_owned(), json!(v)),
            None => querystring.insert(pair.to_owned(), json!(true)),
        };
    }
    json!({
        "input": {
            "request": {
                "http": {
                    "host": "api.example.org",
                    "port": 8000,
                    "tls": {},
                    "method": method,
                    "scheme": "http",
                    "path": path,
                    "headers": table,
                    "querystring": querystring,
                }
            },
            "client_ip": "127.0.0.1",
        }
    })
    .to_string()
    .into_bytes()
}

fn lower_headers(reply: &Reply) -> HashMap<String, String> {
    reply
        .headers
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "content-length" | "date"))
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}

fn split_list(value: Option<&str>) -> Vec<String> {
    value
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
        .unwrap_or_default()
}

/// Asks `shape` about `method path` carrying the client's `headers`.
async fn ask(
    addr: SocketAddr,
    shape: Shape,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Said {
    match shape {
        Shape::Envoy => {
            let reply = send(
                addr,
                method,
                &format!("/v1/check{path}"),
                headers,
                Vec::new(),
            )
            .await;
            said_from_http(reply, headers_to_remove_of(shape))
        }
        Shape::Traefik | Shape::Nginx => {
            let mut all: Vec<(&str, &str)> = Vec::new();
            if shape == Shape::Traefik {
                all.extend([
                    ("x-forwarded-method", method),
                    ("x-forwarded-uri", path),
                    ("x-forwarded-host", "api.example.org"),
                    ("x-forwarded-proto", "https"),
                ]);
            } else {
                all.extend([
                    ("x-original-method", method),
                    ("x-original-uri", path),
                    ("x-velro-proxy", "nginx"),
                ]);
            }
            all.extend_from_slice(headers);
            // Traefik asks with GET; nginx's auth subrequest too.
            let reply = send(addr, "GET", "/v1/auth", &all, Vec::new()).await;
            said_from_http(reply, headers_to_remove_of(shape))
        }
        Shape::Opa => {
            let reply = send(
                addr,
                "POST",
                "/v1/data/velro/authz",
                &[("content-type", "application/json")],
                kong_input(method, path, headers),
            )
            .await;
            assert_eq!(reply.status, 200, "OPA answers 200: {}", reply.text());
            let answer = reply.json();
            let result = &answer["result"];
            let allow = result["allow"].as_bool().expect("result.allow is a bool");
            let mut out = HashMap::new();
            let mut remove = Vec::new();
            for (k, v) in result["headers"].as_object().expect("result.headers") {
                match v {
                    Value::String(s) => {
                        out.insert(k.clone(), s.clone());
                    }
                    Value::Array(a) if a.is_empty() => remove.push(k.clone()),
                    other => panic!("header {k}: unexpected {other}"),
                }
            }
            let decision_id = answer["decision_id"]
                .as_str()
                .expect("decision_id")
                .to_owned();
            assert_eq!(out.get("x-velro-decision-id"), Some(&decision_id));
            Said {
                status: result["status"].as_u64().expect("status") as u16,
                reason: if allow {
                    "ok".to_owned()
                } else {
                    result["message"]["reason"]
                        .as_str()
                        .expect("reason")
                        .to_owned()
                },
                headers: out,
                remove,
                body: result.get("message").cloned().unwrap_or(Value::Null),
                raw_status: reply.status,
                decision_id,
            }
        }
    }
}

fn headers_to_remove_of(shape: Shape) -> Option<&'static str> {
    match shape {
        Shape::Envoy => Some("x-envoy-auth-headers-to-remove"),
        Shape::Nginx => Some("x-velro-headers-to-remove"),
        Shape::Traefik | Shape::Opa => None,
    }
}

fn said_from_http(reply: Reply, remove_header: Option<&str>) -> Said {
    let raw_status = reply.status;
    let decision_id = reply
        .header("x-velro-decision-id")
        .unwrap_or_default()
        .to_owned();
    if raw_status == 200 {
        let headers = lower_headers(&reply)
            .into_iter()
            .filter(|(k, _)| k.starts_with("x-velro-") && k != "x-velro-headers-to-remove")
            .collect();
        return Said {
            status: 200,
            reason: "ok".to_owned(),
            headers,
            remove: split_list(remove_header.and_then(|h| reply.header(h))),
            body: Value::Null,
            raw_status,
            decision_id,
        };
    }
    // nginx shape: the true status and body travel in headers.
    let status = reply.header("x-velro-status").map_or(raw_status, |s| {
        s.parse().expect("x-velro-status is a number")
    });
    let body_text = reply
        .header("x-velro-body")
        .map_or_else(|| reply.text(), str::to_owned);
    let body: Value = if body_text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body_text).expect("deny body is JSON")
    };
    Said {
        status,
        reason: body["reason"].as_str().unwrap_or_default().to_owned(),
        headers: lower_headers(&reply),
        remove: Vec::new(),
        body,
        raw_status,
        decision_id,
    }
}

fn bearer(h: &Harness, user: &str) -> String {
    format!("Bearer {}", h.token(user))
}

fn generation(id: &str) -> String {
    format!("/api/v1/generations/{id}")
}

#[sqlx::test(migrations = "./migrations")]
async fn forward_allow_sets_identity_headers_for_every_shape(pool: PgPool) {
    let h = start(pool).await;
    let addr = h.running.http_addr;
    let auth = bearer(&h, BOB);
    for shape in SHAPES {
        let a = ask(
            addr,
            shape,
            "GET",
            &generation(GEN_BOB),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(
            (a.status, a.raw_status, a.reason.as_str()),
            (200, 200, "ok"),
            "{shape:?}"
        );
        assert_eq!(
            a.headers.get("x-velro-user-id").map(String::as_str),
            Some(BOB),
            "{shape:?}"
        );
        assert_eq!(
            a.headers.get("x-velro-auth").map(String::as_str),
            Some("jwt"),
            "{shape:?}"
        );
        assert_eq!(
            a.headers.get("x-velro-role").map(String::as_str),
            Some("owner"),
            "{shape:?}"
        );
        assert_eq!(a.decision_id.len(), 32, "{shape:?}");
        assert!(a.remove.is_empty(), "{shape:?}: {:?}", a.remove);

        // Authenticated-only route: no role; query strings are kept and ignored.
        let a = ask(
            addr,
            shape,
            "GET",
            "/api/v1/users/profile?tab=a&x",
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(a.status, 200, "{shape:?}");
        assert_eq!(
            a.headers.get("x-velro-user-id").map(String::as_str),
            Some(BOB)
        );
        assert!(!a.headers.contains_key("x-velro-role"), "{shape:?}");

        // Public route: no identity at all, only the decision id.
        let a = ask(addr, shape, "GET", "/health/status", &[]).await;
        assert_eq!(a.status, 200, "{shape:?}");
        let names: Vec<&String> = a.headers.keys().collect();
        assert_eq!(names, vec!["x-velro-decision-id"], "{shape:?}");
    }
    let allowed = h
        .running
        .metrics
        .decisions
        .with_label_values(&["allow", "200", "ok"])
        .get();
    assert_eq!(allowed, 12, "every shape is counted by the core");
}

#[sqlx::test(migrations = "./migrations")]
async fn forward_spoofed_velro_headers_are_overwritten_or_listed_for_removal(pool: PgPool) {
    let h = start(pool).await;
    let addr = h.running.http_addr;
    let auth = bearer(&h, BOB);
    let spoofed = [
        ("authorization", auth.as_str()),
        ("x-velro-user-id", ALICE),
        ("X-Velro-Auth", "api_key"),
        ("x-velro-role", "owner"),
        ("x-velro-decision-id", "forged"),
        ("x-velro-admin", "1"),
    ];
    for shape in SHAPES {
        let a = ask(addr, shape, "GET", &generation(GEN_CHILD), &spoofed).await;
        assert_eq!(a.status, 200, "{shape:?}");
        // Ours overwrite theirs.
        assert_eq!(
            a.headers.get("x-velro-user-id").map(String::as_str),
            Some(BOB)
        );
        assert_eq!(
            a.headers.get("x-velro-auth").map(String::as_str),
            Some("jwt")
        );
        assert_eq!(
            a.headers.get("x-velro-role").map(String::as_str),
            Some("member")
        );
        assert_ne!(a.decision_id, "forged");
        // Names we do not set are listed for removal; Traefik strips every
        // x-velro-* by its authResponseHeadersRegex (traefik/velro-authz.yml).
        let want: Vec<String> = match shape {
            Shape::Traefik => Vec::new(),
            _ => vec!["x-velro-admin".to_owned()],
        };
        assert_eq!(a.remove, want, "{shape:?}");
    }
    // On a public route nothing is ours: every client x-velro-* name goes.
    let a = ask(addr, Shape::Envoy, "GET", "/health/status", &spoofed).await;
    let mut remove = a.remove.clone();
    remove.sort();
    assert_eq!(
        remove,
        [
            "x-velro-admin",
            "x-velro-auth",
            "x-velro-role",
            "x-velro-user-id"
        ]
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn forward_401_missing_invalid_and_doubled_tokens_challenge(pool: PgPool) {
    let h = start(pool).await;
    let addr = h.running.http_addr;
    let path = generation(GEN_BOB);
    let good = bearer(&h, BOB);
    let cases: [(&[(&str, &str)], &str, &str); 4] = [
        (&[], "missing_credentials", "Bearer realm=\"velro\""),
        (
            &[("authorization", "Bearer not.a.jwt")],
            "invalid_token",
            "error=\"invalid_token\"",
        ),
        (
            &[("authorization", &good), ("authorization", &good)],
            "invalid_token",
            "error=\"invalid_token\"",
        ),
        (
            &[("authorization", &good), ("x-api-key", "vk_whatever")],
            "ambiguous_credentials",
            "error=\"invalid_token\"",
        ),
    ];
    for shape in SHAPES {
        for (headers, reason, challenge) in cases {
            let a = ask(addr, shape, "GET", &path, headers).await;
            assert_eq!(
                (a.status, a.reason.as_str()),
                (401, reason),
                "{shape:?} {headers:?}"
            );
            let www = a
                .headers
                .get("www-authenticate")
                .unwrap_or_else(|| panic!("{shape:?}: no challenge"));
            assert!(www.contains(challenge), "{shape:?}: {www}");
            assert_eq!(a.body["error"], "unauthenticated");
            assert_eq!(a.body["request_id"], a.decision_id.as_str(), "{shape:?}");
            let raw = match shape {
                Shape::Opa => 200,
                _ => 401,
            };
            assert_eq!(a.raw_status, raw, "{shape:?}");
        }
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn forward_403_404_and_400_denies_carry_status_reason_and_decision_id(pool: PgPool) {
    let h = start(pool).await;
    let addr = h.running.http_addr;
    let bob = bearer(&h, BOB);
    let erin = bearer(&h, ERIN);
    let big = "a".repeat(9 * 1024);
    let cases: [(&str, String, Vec<(&str, &str)>, u16, &str); 7] = [
        (
            "PUT",
            generation(GEN_PUBLIC),
            vec![("authorization", &bob)],
            403,
            "insufficient_role",
        ),
        (
            "GET",
            generation(GEN_BOB),
            vec![("authorization", &erin)],
            404,
            "not_found",
        ),
        (
            "GET",
            generation(GEN_MISSING),
            vec![("authorization", &bob)],
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
            "/api/v1/generations/../users/profile".to_owned(),
            vec![("authorization", &bob)],
            400,
            "bad_path",
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
            generation(GEN_BOB),
            vec![("authorization", &bob), ("x-big", &big)],
            400,
            "too_large",
        ),
    ];
    for shape in SHAPES {
        for (method, path, headers, status, reason) in &cases {
            let a = ask(addr, shape, method, path, headers).await;
            assert_eq!(
                (a.status, a.reason.as_str()),
                (*status, *reason),
                "{shape:?} {method} {path}"
            );
            assert_eq!(a.body["request_id"], a.decision_id.as_str(), "{shape:?}");
            assert!(!a.headers.contains_key("www-authenticate"), "{shape:?}");
            assert!(
                !a.headers.contains_key("x-velro-user-id"),
                "{shape:?}: no identity on a deny"
            );
            let raw = match shape {
                Shape::Envoy | Shape::Traefik => *status,
                Shape::Nginx => 403,
                Shape::Opa => 200,
            };
            assert_eq!(a.raw_status, raw, "{shape:?} {reason}");
            if shape != Shape::Opa {
                assert_eq!(
                    a.headers.get("content-type").map(String::as_str),
                    Some("application/json")
                );
            }
        }
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn forward_head_is_authorized_as_get(pool: PgPool) {
    let h = start(pool).await;
    let addr = h.running.http_addr;
    for shape in SHAPES {
        let a = ask(
            addr,
            shape,
            "HEAD",
            &generation(GEN_PUBLIC),
            &[("authorization", &bearer(&h, ERIN))],
        )
        .await;
        assert_eq!(
            (a.status, a.headers.get("x-velro-role").map(String::as_str)),
            (200, Some("viewer")),
            "{shape:?}"
        );
        let a = ask(
            addr,
            shape,
            "HEAD",
            &generation(GEN_BOB),
            &[("authorization", &bearer(&h, ERIN))],
        )
        .await;
        assert_eq!(a.status, 404, "{shape:?}");
        // A HEAD answer has no body on the wire; the headers still say why.
        if shape == Shape::Envoy {
            assert!(a.body.is_null());
        } else {
            assert_eq!(a.reason, "not_found", "{shape:?}");
        }
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn forward_api_keys_authenticate_every_shape(pool: PgPool) {
    let h = start(pool).await;
    let addr = h.running.http_addr;
    let key = apikey::generate();
    let alice = ALICE.parse().expect("uuid");
    Store::new(h.pool.clone())
        .insert_api_key(alice, &key.hash, &key.display_prefix, None, None)
        .await
        .expect("insert key");
    for shape in SHAPES {
        let a = ask(
            addr,
            shape,
            "GET",
            &generation(GEN_PUBLIC),
            &[("x-api-key", &key.plain)],
        )
        .await;
        assert_eq!(a.status, 200, "{shape:?}");
        assert_eq!(
            a.headers.get("x-velro-auth").map(String::as_str),
            Some("api_key"),
            "{shape:?}"
        );
        assert_eq!(
            a.headers.get("x-velro-user-id").map(String::as_str),
            Some(ALICE)
        );
        let a = ask(
            addr,
            shape,
            "GET",
            &generation(GEN_PUBLIC),
            &[("X-API-KEY", "vk_unknown")],
        )
        .await;
        assert_eq!(
            (a.status, a.reason.as_str()),
            (401, "invalid_api_key"),
            "{shape:?}"
        );
    }
}

/// A sidecar whose Postgres does not exist: nothing can be decided that needs a fact.
async fn dead_store_sidecar(extra_yaml: &str) -> Running {
    let mut cfg = config(extra_yaml);
    cfg.database.url = "postgres://postgres@127.0.0.1:1/unreachable".to_owned();
    App::build(cfg, Metrics::new())
        .expect("app")
        .spawn(None)
        .await
        .expect("spawn")
}

#[tokio::test]
async fn forward_cannot_decide_is_503_for_every_shape_never_an_allow() {
    let running = dead_store_sidecar("database:\n  acquire_timeout_ms: 200\n").await;
    let addr = running.http_addr;
    let auth = Token::new(ALICE).bearer(&config("").jwt);
    let path = generation(GEN_BOB);
    let headers = [("authorization", auth.as_str())];

    let reply = send(
        addr,
        "GET",
        &format!("/v1/check{path}"),
        &headers,
        Vec::new(),
    )
    .await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.json(),
        json!({"error": "unavailable", "reason": "store_unavailable"})
    );
    assert!(!reply.text().contains("127.0.0.1"), "no internal detail");

    let traefik = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", path.as_str()),
        ("authorization", auth.as_str()),
    ];
    let reply = send(addr, "GET", "/v1/auth", &traefik, Vec::new()).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["reason"], "store_unavailable");

    let nginx = [
        ("x-original-method", "GET"),
        ("x-original-uri", path.as_str()),
        ("x-velro-proxy", "nginx"),
        ("authorization", auth.as_str()),
    ];
    let reply = send(addr, "GET", "/v1/auth", &nginx, Vec::new()).await;
    assert_eq!(
        (reply.status, reply.header("x-velro-status")),
        (403, Some("503"))
    );
    assert!(
        reply
            .header("x-velro-body")
            .expect("body")
            .contains("store_unavailable")
    );

    let reply = send(
        addr,
        "POST",
        "/v1/data/velro/authz",
        &[],
        kong_input("GET", &path, &headers),
    )
    .await;
    assert_eq!(
        reply.status, 503,
        "Kong's opa plugin then answers 500: fails closed"
    );
    let body = reply.json();
    assert_eq!(
        (body["code"].as_str(), body["reason"].as_str()),
        (Some("unavailable"), Some("store_unavailable"))
    );
    assert!(body.get("result").is_none(), "never a decision");

    // Public routes need no fact: still answered.
    let reply = send(addr, "GET", "/v1/check/health/status", &[], Vec::new()).await;
    assert_eq!(reply.status, 200);
    running.shutdown().await;
}

#[tokio::test]
async fn forward_deadline_exceeded_is_503_with_its_reason() {
    let running = dead_store_sidecar(
        "database:\n  acquire_timeout_ms: 5000\ndecision:\n  deadline_ms: 100\n",
    )
    .await;
    let auth = Token::new(ALICE).bearer(&config("").jwt);
    let started = std::time::Instant::now();
    let reply = send(
        running.http_addr,
        "GET",
        &format!("/v1/check{}", generation(GEN_BOB)),
        &[("authorization", &auth)],
        Vec::new(),
    )
    .await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["reason"], "deadline_exceeded");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the configured budget applies"
    );
    running.shutdown().await;
}

#[sqlx::test(migrations = "./migrations")]
async fn forward_auth_needs_one_unambiguous_original_request(pool: PgPool) {
    let h = start(pool).await;
    let addr = h.running.http_addr;
    let bob = bearer(&h, BOB);

    let reply = send(
        addr,
        "GET",
        "/v1/auth",
        &[("authorization", &bob)],
        Vec::new(),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["reason"], "missing_original_request");
    assert_eq!(
        reply.json()["request_id"],
        reply.header("x-velro-decision-id").expect("id")
    );

    // A client behind Traefik adding nginx's header to get a public route
    // decided in place of its real request.
    let smuggled = [
        ("x-forwarded-method", "DELETE"),
        (
            "x-forwarded-uri",
            "/api/v1/generations/40000000-0000-4000-8000-000000000001",
        ),
        ("x-original-method", "GET"),
        ("x-original-uri", "/health/status"),
    ];
    let reply = send(addr, "GET", "/v1/auth", &smuggled, Vec::new()).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["reason"], "ambiguous_original_request");

    let twice = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/api/v1/users/profile"),
        ("x-forwarded-uri", "/health/status"),
    ];
    let reply = send(addr, "GET", "/v1/auth", &twice, Vec::new()).await;
    assert_eq!(
        (reply.status, reply.json()["reason"].as_str()),
        (400, Some("ambiguous_original_request"))
    );

    // nginx shape of the same: 403 carrying the 400.
    let reply = send(
        addr,
        "GET",
        "/v1/auth",
        &[("x-velro-proxy", "nginx")],
        Vec::new(),
    )
    .await;
    assert_eq!(
        (reply.status, reply.header("x-velro-status")),
        (403, Some("400"))
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn forward_auth_reads_configured_original_headers(pool: PgPool) {
    let yaml = "forward_auth:\n  original_method_header: X-Request-Method\n  original_uri_header: X-Request-Uri\n";
    let h = start_with(pool, config(yaml)).await;
    let bob = bearer(&h, BOB);
    let path = generation(GEN_BOB);
    let headers = [
        ("x-request-method", "GET"),
        ("x-request-uri", path.as_str()),
        ("authorization", bob.as_str()),
    ];
    let reply = send(h.running.http_addr, "GET", "/v1/auth", &headers, Vec::new()).await;
    assert_eq!(
        (reply.status, reply.header("x-velro-role")),
        (200, Some("owner"))
    );
    // The default names no longer count; Traefik's still do.
    let nginx = [
        ("x-original-method", "GET"),
        ("x-original-uri", path.as_str()),
    ];
    let reply = send(h.running.http_addr, "GET", "/v1/auth", &nginx, Vec::new()).await;
    assert_eq!(reply.status, 400);
}

#[sqlx::test(migrations = "./migrations")]
async fn forward_check_target_is_the_path_after_the_prefix(pool: PgPool) {
    let h = start(pool).await;
    let addr = h.running.http_addr;
    for target in [
        "/v1/check",
        "/v1/check?x=1",
        "/v1/check//api/v1/users/profile",
    ] {
        let reply = send(addr, "GET", target, &[], Vec::new()).await;
        assert_eq!(
            (reply.status, reply.json()["reason"].as_str()),
            (400, Some("bad_path")),
            "{target}"
        );
    }
    let reply = send(addr, "GET", "/v1/check/", &[], Vec::new()).await;
    assert_eq!(
        (reply.status, reply.json()["reason"].as_str()),
        (404, Some("no_route"))
    );
    // Any method is the original method, including ones not in the table.
    let reply = send(addr, "PATCH", "/v1/check/health/status", &[], Vec::new()).await;
    assert_eq!(
        (reply.status, reply.json()["reason"].as_str()),
        (404, Some("no_route"))
    );
    let reply = send(addr, "POST", "/v1/check/api/v1/auth/login", &[], Vec::new()).await;
    assert_eq!(reply.status, 200);
}

#[sqlx::test(migrations = "./migrations")]
async fn forward_opa_rejects_bad_input_and_big_bodies_never_allowing(pool: PgPool) {
    let h = start(pool).await;
    let addr = h.running.http_addr;
    for body in [
        &b"{not json"[..],
        b"{}",
        br#"{"input":{"request":{"http":{"method":"GET"}}}}"#,
        br#"{"input":{"request":{"http":{"method":"GET","path":"/health/status","headers":{"authorization":7}}}}}"#,
        br#"[{"input":{"request":{"http":{"method":"GET","path":"/health/status"}}}}]"#,
    ] {
        let reply = send(addr, "POST", "/v1/data/velro/authz", &[], body.to_vec()).await;
        assert_eq!(reply.status, 400, "{}", String::from_utf8_lossy(body));
        let v = reply.json();
        assert_eq!(v["code"], "invalid_parameter");
        assert!(v.get("result").is_none());
    }
    let big = kong_input(
        "GET",
        "/health/status",
        &[("x-pad", &"p".repeat(70 * 1024))],
    );
    let reply = send(addr, "POST", "/v1/data/velro/authz", &[], big).await;
    assert_eq!(
        (reply.status, reply.json()["code"].as_str()),
        (413, Some("request_too_large"))
    );
    // Only POST is the data API.
    let reply = send(addr, "GET", "/v1/data/velro/authz", &[], Vec::new()).await;
    assert_eq!(reply.status, 405);
    // Any policy path (Kong's opa_path) asks the same question.
    for policy in ["/v1/data", "/v1/data/velro", "/v1/data/httpapi/authz/allow"] {
        let reply = send(
            addr,
            "POST",
            policy,
            &[],
            kong_input("GET", "/health/status", &[]),
        )
        .await;
        assert_eq!(
            (reply.status, reply.json()["result"]["allow"].as_bool()),
            (200, Some(true)),
            "{policy}"
        );
    }
}
