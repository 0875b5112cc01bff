//! The sidecar's other faces through real sockets: gRPC health and reflection
//! (v1 and v1alpha), the admin service (its own listener, token required),
//! HTTP health/readiness/metrics, "cannot decide" as an RPC error, and dry-run
//! mode.

use std::time::Duration;

use sqlx::PgPool;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use velro_authz::app::App;
use velro_authz::grpc::admin_pb::{self, admin_client::AdminClient};
use velro_authz::metrics::Metrics;
use velro_authz::testkit::{Check, Token};

use super::support::{Harness, config, demo::*, http_get, start, start_with};

async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

macro_rules! list_services {
    ($module:path, $addr:expr) => {{
        use $module as reflection;
        let mut client =
            reflection::server_reflection_client::ServerReflectionClient::new(channel($addr).await);
        let request = reflection::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                reflection::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .expect("reflection")
            .into_inner();
        let response = stream
            .message()
            .await
            .expect("message")
            .expect("one response");
        match response.message_response {
            Some(
                reflection::server_reflection_response::MessageResponse::ListServicesResponse(list),
            ) => {
                let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
                names.sort();
                names
            }
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }};
}

#[sqlx::test(migrations = "./migrations")]
async fn grpc_health_and_reflection_v1_and_v1alpha_list_our_services(pool: PgPool) {
    let h = start(pool).await;
    let mut health = HealthClient::new(channel(h.running.grpc_addr).await);
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let expected = [
        "envoy.service.auth.v3.Authorization",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    let v1 = list_services!(tonic_reflection::pb::v1, h.running.grpc_addr);
    let v1alpha = list_services!(tonic_reflection::pb::v1alpha, h.running.grpc_addr);
    for names in [&v1, &v1alpha] {
        for service in expected {
            assert!(
                names.iter().any(|n| n == service),
                "{service} missing from {names:?}"
            );
        }
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("envoy.service.ratelimit")),
            "only our services: {names:?}"
        );
        assert!(
            !names.iter().any(|n| n.starts_with("velro.authz.admin")),
            "the admin service is not on the Check port: {names:?}"
        );
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn http_healthz_readyz_and_metrics_answer(pool: PgPool) {
    let h = start(pool).await;
    let _ = h
        .check_as(BOB, "GET", &format!("/api/v1/generations/{GEN_BOB}"))
        .await;
    let _ = h.check("GET", "/nope", &[]).await;
    assert_eq!(
        h.running.metrics_addr, None,
        "no metrics_addr, no second listener"
    );
    let addr = h.running.http_addr;
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "velro_authz_decisions_total{outcome=\"allow\",reason=\"ok\",status=\"200\"} 1",
        "velro_authz_decisions_total{outcome=\"deny\",reason=\"no_route\",status=\"404\"} 1",
        "velro_authz_decision_duration_seconds_bucket{le=\"0.000025\"}",
        "velro_authz_cache_lookups_total{kind=\"generation\",result=\"miss\",tier=\"l1\"}",
        "velro_authz_listener_connected 1",
        "velro_authz_build_info{version=",
        "velro_authz_db_pool_connections{state=\"idle\"}",
    ] {
        assert!(body.contains(needle), "{needle} missing from:\n{body}");
    }
    assert!(!body.contains(BOB), "no user id in metrics");
}

/// Ready means the first Checks find connections open: the pool warms while
/// LISTEN connects, and readiness waits for both.
#[sqlx::test(migrations = "./migrations")]
async fn ready_only_once_the_pool_holds_min_connections(pool: PgPool) {
    let mut config = config("");
    config.database.min_connections = 3;
    let h = start_with(pool, config).await;
    let (status, body) = http_get(h.running.http_addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        h.pool.size() >= 3,
        "ready with {} connections open, 3 wanted",
        h.pool.size()
    );
}

/// `metrics_addr` is a listener of its own: health, readiness and metrics
/// answer there, the decision endpoints do not (they stay on `http_addr`).
#[sqlx::test(migrations = "./migrations")]
async fn metrics_addr_serves_health_and_metrics_but_no_decisions(pool: PgPool) {
    let h = start_with(pool, config("metrics_addr: 127.0.0.1:0\n")).await;
    let _ = h.check("GET", "/nope", &[]).await;
    let addr = h.running.metrics_addr.expect("metrics_addr is bound");
    assert_ne!(addr, h.running.http_addr);
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains(
            "velro_authz_decisions_total{outcome=\"deny\",reason=\"no_route\",status=\"404\"} 1"
        ),
        "{body}"
    );
    for decision in ["/v1/auth", "/v1/check/health/status"] {
        assert_eq!(http_get(addr, decision).await.0, 404, "{decision}");
    }
    // Still on http_addr too, next to the decision endpoints.
    assert_eq!(http_get(h.running.http_addr, "/metrics").await.0, 200);
    assert_eq!(
        http_get(h.running.http_addr, "/v1/check/health/status")
            .await
            .0,
        200
    );
}

/// The admin token of these tests, in a file of its own per test.
const ADMIN_TOKEN: &str = "integration-admin-token-0123456789abcdef";

/// A config with the admin service on a free loopback port, its token in a
/// fresh file (kept alive by the returned guard).
fn admin_config() -> (velro_authz::config::Config, TokenFile) {
    let path = std::env::temp_dir().join(format!(
        "velro-authz-admin-token-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&path, format!("{ADMIN_TOKEN}\n")).expect("write token file");
    let cfg = config(&format!(
        "admin:\n  addr: 127.0.0.1:0\n  token_file: {}\n",
        path.display()
    ));
    (cfg, TokenFile(path))
}

/// Removes the token file when the test ends.
struct TokenFile(std::path::PathBuf);

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Puts an `authorization` value (or none) on every admin call.
#[derive(Clone)]
struct Authorization(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Authorization {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

type Guarded = AdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Authorization>,
>;

/// An admin client sending `authorization` = `value` (none when `None`).
async fn admin_client(addr: std::net::SocketAddr, value: Option<&str>) -> Guarded {
    let value = value.map(|v| v.parse().expect("ascii"));
    AdminClient::with_interceptor(channel(addr).await, Authorization(value))
}

#[sqlx::test(migrations = "./migrations")]
async fn admin_listener_reflection_v1_and_v1alpha_list_the_admin_api_only(pool: PgPool) {
    let (cfg, _token_file) = admin_config();
    let h = start_with(pool, cfg).await;
    let addr = h.running.admin_addr.expect("admin listener");
    // grpcurl 1.8.6 asks v1alpha only: without it, `grpcurl … Admin/Explain`
    // fails with "server does not support the reflection API".
    let v1 = list_services!(tonic_reflection::pb::v1, addr);
    let v1alpha = list_services!(tonic_reflection::pb::v1alpha, addr);
    for names in [&v1, &v1alpha] {
        assert!(
            names.iter().any(|n| n == "velro.authz.admin.v1.Admin"),
            "the admin API is listed: {names:?}"
        );
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("envoy.") || n.starts_with("grpc.health")),
            "only the admin API (and reflection) on the admin listener: {names:?}"
        );
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn admin_explain_reports_route_principal_facts_and_sources(pool: PgPool) {
    let (cfg, _token_file) = admin_config();
    let h = start_with(pool, cfg).await;
    let addr = h.running.admin_addr.expect("admin listener");
    assert_ne!(addr, h.running.grpc_addr);
    assert!(addr.ip().is_loopback());
    let mut admin = admin_client(addr, Some(&format!("Bearer {ADMIN_TOKEN}"))).await;
    let token = format!("Bearer {}", h.token(BOB));
    let explain = |admin: &mut Guarded| {
        let request = admin_pb::ExplainRequest {
            method: "GET".into(),
            path: format!("/api/v1/generations/{GEN_GRANDCHILD}"),
            headers: [("authorization".to_owned(), token.clone())].into(),
            ..Default::default()
        };
        let mut admin = admin.clone();
        async move { admin.explain(request).await.expect("explain").into_inner() }
    };
    let first = explain(&mut admin).await;
    assert!(first.allowed);
    assert_eq!(first.role, "member");
    assert_eq!(first.route, "GET /api/v1/generations/{id}");
    assert!(first.principal.contains(BOB));
    let kinds: Vec<&str> = first.facts.iter().map(|f| f.kind.as_str()).collect();
    for kind in [
        "user",
        "memberships",
        "generation",
        "project",
        "team",
        "shares",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    assert!(
        first.facts.iter().all(|f| f.source == "postgres"),
        "cold cache"
    );
    let second = explain(&mut admin).await;
    assert!(
        second.facts.iter().all(|f| f.source == "l1"),
        "warm cache: {:?}",
        second.facts
    );

    let stats = admin
        .cache_stats(admin_pb::CacheStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert!(stats.listener_connected);
    assert_eq!(
        (stats.redis_circuit.as_str(), stats.redis_trusted),
        ("off", false),
        "no REDIS_URL: no Redis tier"
    );
    assert_eq!(stats.postgres_circuit, "closed");
    assert_eq!(stats.rate_limited_principals, 0);
    let epoch = stats.epoch;
    let flushed = admin
        .flush(admin_pb::FlushRequest {})
        .await
        .expect("flush")
        .into_inner();
    assert!(flushed.epoch > epoch);
    let third = explain(&mut admin).await;
    assert!(
        third.facts.iter().all(|f| f.source == "postgres"),
        "flushed"
    );
}

/// No token, a wrong one, or another scheme: UNAUTHENTICATED for every
/// method, before anything runs (the flush below does not happen), and the
/// answer never echoes the token.
#[sqlx::test(migrations = "./migrations")]
async fn admin_without_the_token_is_unauthenticated(pool: PgPool) {
    let (cfg, _token_file) = admin_config();
    let h = start_with(pool, cfg).await;
    let addr = h.running.admin_addr.expect("admin listener");
    let epoch = h.running.authorizer.facts().epoch();
    for value in [
        None,
        Some("Bearer wrong-token-0123456789abcdef0123456789".to_owned()),
        Some(format!("Bearer {ADMIN_TOKEN}x")),
        Some(format!("Basic {ADMIN_TOKEN}")),
        Some(ADMIN_TOKEN.to_owned()),
    ] {
        let mut admin = admin_client(addr, value.as_deref()).await;
        let explain = admin
            .explain(admin_pb::ExplainRequest {
                method: "GET".into(),
                path: format!("/api/v1/generations/{GEN_BOB}"),
                ..Default::default()
            })
            .await
            .expect_err("explain without the token");
        let stats = admin
            .cache_stats(admin_pb::CacheStatsRequest {})
            .await
            .expect_err("stats without the token");
        let flush = admin
            .flush(admin_pb::FlushRequest {})
            .await
            .expect_err("flush without the token");
        for status in [explain, stats, flush] {
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{value:?}");
            assert!(!status.message().contains(ADMIN_TOKEN));
        }
    }
    assert_eq!(
        h.running.authorizer.facts().epoch(),
        epoch,
        "no flush went through"
    );
}

/// The Check port serves no admin service (only Envoy reaches it, and Envoy
/// must not be able to explain or flush); and without an `admin` section
/// there is no admin listener at all.
#[sqlx::test(migrations = "./migrations")]
async fn admin_is_off_by_default_and_never_on_the_check_port(pool: PgPool) {
    let h = start(pool.clone()).await;
    assert_eq!(h.running.admin_addr, None, "off unless configured");
    let mut on_check_port =
        admin_client(h.running.grpc_addr, Some(&format!("Bearer {ADMIN_TOKEN}"))).await;
    let status = on_check_port
        .cache_stats(admin_pb::CacheStatsRequest {})
        .await
        .expect_err("no admin service on the Check port");
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    let Harness { running, .. } = h;
    running.shutdown().await;

    // Enabled: still not on the Check port.
    let (cfg, _token_file) = admin_config();
    let h = super::support::attach(pool, cfg).await;
    let mut on_check_port =
        admin_client(h.running.grpc_addr, Some(&format!("Bearer {ADMIN_TOKEN}"))).await;
    let status = on_check_port
        .flush(admin_pb::FlushRequest {})
        .await
        .expect_err("no admin service on the Check port");
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    let names = list_services!(
        tonic_reflection::pb::v1,
        h.running.admin_addr.expect("admin listener")
    );
    assert!(
        names.iter().any(|n| n == "velro.authz.admin.v1.Admin"),
        "the admin listener lists its service: {names:?}"
    );
}

#[tokio::test]
async fn check_without_reachable_postgres_is_unavailable_never_a_deny() {
    let mut cfg = config("database:\n  acquire_timeout_ms: 200\n");
    cfg.database.url = "postgres://postgres@127.0.0.1:1/unreachable".to_owned();
    let running = App::build(cfg, Metrics::new())
        .expect("app")
        .spawn(None)
        .await
        .expect("spawn");
    let mut health = HealthClient::new(channel(running.grpc_addr).await);
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::NotServing as i32);
    assert_eq!(http_get(running.http_addr, "/readyz").await.0, 503);

    let h = Harness::over(
        running,
        config("").jwt.clone(),
        sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://x@127.0.0.1:1/x")
            .expect("lazy"),
    )
    .await;
    // Public routes need no facts: still answered.
    assert_eq!(h.check("GET", "/health/status", &[]).await.status, 200);
    // Anything that needs a fact: UNAVAILABLE, so Envoy's failure mode applies.
    let auth = format!("Bearer {}", h.token(ALICE));
    let err = h
        .raw_check(
            "GET",
            &format!("/api/v1/generations/{GEN_BOB}"),
            &[("authorization", &auth)],
        )
        .await
        .expect_err("cannot decide");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(
        !err.message().contains("127.0.0.1"),
        "no internal detail: {}",
        err.message()
    );
}

#[tokio::test]
async fn check_past_deadline_is_deadline_exceeded() {
    let mut cfg = config("database:\n  acquire_timeout_ms: 5000\ndecision:\n  deadline_ms: 100\n");
    cfg.database.url = "postgres://postgres@127.0.0.1:1/unreachable".to_owned();
    let app = App::build(cfg, Metrics::new()).expect("app");
    let token = Token::new(ALICE)
        .ttl(Duration::from_secs(60))
        .mint(&config("").jwt);
    let check = Check::new("GET", &format!("/api/v1/generations/{GEN_BOB}")).bearer(&token);
    let started = std::time::Instant::now();
    let err = check
        .decide(&app.authorizer, None)
        .await
        .expect_err("cannot decide");
    assert!(
        matches!(err, velro_authz::authz::CheckError::DeadlineExceeded),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        velro_authz::grpc::cannot_decide(&err).code(),
        tonic::Code::DeadlineExceeded
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn check_dry_run_allows_but_counts_would_be_denies(pool: PgPool) {
    let h = start_with(pool, config("decision:\n  dry_run: true\n")).await;
    let a = h
        .check(
            "GET",
            &format!("/api/v1/generations/{GEN_BOB}"),
            &[("x-velro-user-id", ALICE)],
        )
        .await;
    assert_eq!(a.status, 200, "dry run allows");
    assert!(
        !a.headers.contains_key("x-velro-user-id"),
        "but grants no identity"
    );
    assert_eq!(a.headers_to_remove, vec!["x-velro-user-id".to_owned()]);
    let counted = h
        .running
        .metrics
        .decisions
        .with_label_values(&["dry_run_allow", "401", "missing_credentials"])
        .get();
    assert_eq!(counted, 1);
}

/// `velro-authz admin` reaches the admin listener with the token file and
/// needs nothing else of the configuration; without the right token it fails
/// and never prints the token.
#[sqlx::test(migrations = "./migrations")]
async fn admin_cli_calls_the_admin_listener_with_its_token_file(pool: PgPool) {
    let (cfg, token_file) = admin_config();
    let h = start_with(pool, cfg).await;
    let addr = h.running.admin_addr.expect("admin listener").to_string();
    let cli = |token_file: &std::path::Path, args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_velro-authz"));
        cmd.arg("admin")
            .arg("--addr")
            .arg(&addr)
            .arg("--token-file")
            .arg(token_file)
            .args(args)
            // No database, JWT keys or Redis: a client needs none of them.
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("VELRO_AUTHZ_CONFIG")
            .env_remove("VELRO_AUTHZ_JWT_SECRET");
        async move {
            tokio::task::spawn_blocking(move || cmd.output().expect("run velro-authz admin"))
                .await
                .expect("join")
        }
    };
    let out = cli(&token_file.0, &["cache-stats"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(stats["listener_connected"], true);

    let bearer = h.token(ERIN);
    let path = format!("/api/v1/generations/{GEN_BOB}");
    let out = cli(&token_file.0, &["explain", "--token", &bearer, &path]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let explained: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(explained["reason"], "not_found");
    assert!(explained["facts"].as_array().is_some_and(|f| !f.is_empty()));

    let wrong = TokenFile(std::env::temp_dir().join(format!(
        "velro-authz-wrong-token-{}",
        uuid::Uuid::new_v4().simple()
    )));
    std::fs::write(&wrong.0, "wrong-token-0123456789abcdef0123456789\n").expect("write");
    let out = cli(&wrong.0, &["flush"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
    assert!(
        !stderr.contains("wrong-token") && !stderr.contains(ADMIN_TOKEN),
        "{stderr}"
    );
}

/// A deny answered over the Check port can be explained later by its
/// decision id alone, through the admin service and the CLI: what was
/// decided then, with typed facts, even after the facts changed.
#[sqlx::test(migrations = "./migrations")]
async fn admin_explains_a_past_deny_by_its_decision_id(pool: PgPool) {
    let (cfg, token_file) = admin_config();
    let h = start_with(pool, cfg).await;
    let addr = h.running.admin_addr.expect("admin listener");
    let answer = h
        .check_as(ERIN, "GET", &format!("/api/v1/generations/{GEN_BOB}"))
        .await;
    assert_eq!((answer.status, answer.reason.as_str()), (404, "not_found"));
    let id = answer.metadata_decision_id.clone();

    let mut admin = admin_client(addr, Some(&format!("Bearer {ADMIN_TOKEN}"))).await;
    let past = admin
        .explain(admin_pb::ExplainRequest {
            decision_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("explain by id")
        .into_inner();
    assert_eq!(
        (past.decision_id.as_str(), past.http_status),
        (id.as_str(), 404)
    );
    assert!(!past.time.is_empty());
    let json: serde_json::Value = serde_json::from_str(&past.json).expect("JSON");
    assert_eq!(json["reason"], "not_found");
    assert_eq!(json["principal"]["user_id"], ERIN);
    assert_eq!(json["resource_id"], GEN_BOB);
    let generation = json["facts"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["kind"] == "generation"))
        .expect("generation fact");
    assert_eq!(generation["value"]["user_id"], BOB, "{generation}");
    let value: serde_json::Value = serde_json::from_str(
        &past
            .facts
            .iter()
            .find(|f| f.kind == "generation")
            .expect("fact")
            .value,
    )
    .expect("a fact's value is JSON");
    assert_eq!(value, generation["value"]);

    for (bad, code) in [
        ("0123", tonic::Code::InvalidArgument),
        ("ffffffffffffffffffffffffffffffff", tonic::Code::NotFound),
    ] {
        let status = admin
            .explain(admin_pb::ExplainRequest {
                decision_id: bad.to_owned(),
                ..Default::default()
            })
            .await
            .expect_err(bad);
        assert_eq!(status.code(), code, "{bad}");
    }

    // The same from the command line, needing only the admin address and token.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_velro-authz"));
    cmd.args(["explain", "--addr", &addr.to_string(), "--token-file"])
        .arg(&token_file.0)
        .args(["--decision", &id])
        .env_remove("DATABASE_URL")
        .env_remove("VELRO_AUTHZ_CONFIG")
        .env_remove("VELRO_AUTHZ_JWT_SECRET");
    // Off the runtime: the sidecar answering it runs on this test's runtime.
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run velro-authz explain"))
        .await
        .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(printed, json);
}
