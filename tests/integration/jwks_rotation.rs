//! JWKS rotation through a running sidecar: a kid added to the file verifies
//! after a reload; a kid removed stops verifying — even for tokens whose
//! verification is cached — after one reload, whether the reload comes from
//! [`Running::reload`] (what SIGHUP calls), the `jwks_refresh_secs` timer, or
//! a real SIGHUP to a `velro-authz serve` process, which must keep running.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use sqlx::PgPool;

use super::support::{Harness, config, demo::*, start_with};
use velro_authz::testkit::http as http_client;

const KEYS: &str = "tests/fixtures/keys";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// A token for `user` signed by the fixture key of `kid`.
fn token(kid: &str, user: &str) -> String {
    let (alg, file) = match kid {
        "rsa-2025" => (Algorithm::RS256, "rsa_private.pem"),
        "ec-2025" => (Algorithm::ES256, "ec_p256_private.pem"),
        _ => (Algorithm::EdDSA, "ed25519_private.pem"),
    };
    let pem = std::fs::read(Path::new(KEYS).join(file)).expect("fixture key");
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_ed_pem(&pem),
    }
    .expect("private key");
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    let claims = json!({ "sub": user, "iss": "velro", "aud": "velro-api", "iat": now(), "exp": now() + 600 });
    encode(&header, &claims, &key).expect("sign")
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("velro-authz-{tag}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `auth:` section: the JWKS file, rereads only when asked (no timer
/// unless `refresh_secs`, unknown kids rate-limited away), plus the HS256 key
/// the test environment's secret goes to.
fn auth_yaml(jwks: &Path, refresh_secs: u64) -> String {
    format!(
        "auth:\n  jwt:\n    issuer: velro\n    audience: velro-api\n    jwks_file: {}\n    jwks_reload_min_interval_secs: 3600\n    jwks_refresh_secs: {refresh_secs}\n    keys:\n      - kid: hs\n        alg: HS256\n",
        jwks.display()
    )
}

async fn status_and_reason(h: &Harness, kid: &str) -> (u16, String) {
    let path = format!("/api/v1/generations/{GEN_BOB}");
    let a = h
        .check(
            "GET",
            &path,
            &[("authorization", &format!("Bearer {}", token(kid, BOB)))],
        )
        .await;
    (a.status, a.reason)
}

#[sqlx::test(migrations = "./migrations")]
async fn jwks_rotation_reload_adds_new_kid_and_voids_cached_tokens_of_removed_kid(pool: PgPool) {
    let dir = TempDir::new("jwks-reload");
    let jwks = dir.0.join("jwks.json");
    std::fs::write(&jwks, velro_authz::testkit::fixture_jwks(&["rsa-2025"])).expect("write jwks");
    let h = start_with(pool, config(&auth_yaml(&jwks, 0))).await;

    // Twice: the second answer comes from the verified-token cache.
    for _ in 0..2 {
        assert_eq!(status_and_reason(&h, "rsa-2025").await.0, 200);
    }
    assert_eq!(
        status_and_reason(&h, "ec-2025").await,
        (401, "invalid_token".to_owned())
    );

    std::fs::write(&jwks, velro_authz::testkit::fixture_jwks(&["ec-2025"])).expect("rewrite jwks");
    let reload = h.running.reload().expect("reload");
    assert_eq!(
        (reload.added, reload.removed),
        (vec!["ec-2025".to_owned()], vec!["rsa-2025".to_owned()])
    );
    assert_eq!(
        status_and_reason(&h, "ec-2025").await.0,
        200,
        "new kid after one reload"
    );
    assert_eq!(
        status_and_reason(&h, "rsa-2025").await,
        (401, "invalid_token".to_owned()),
        "a removed kid's cached token fails after one reload"
    );
    h.running.shutdown().await;
}

#[sqlx::test(migrations = "./migrations")]
async fn jwks_rotation_timer_removes_kid_within_one_period(pool: PgPool) {
    let dir = TempDir::new("jwks-timer");
    let jwks = dir.0.join("jwks.json");
    std::fs::write(
        &jwks,
        velro_authz::testkit::fixture_jwks(&["rsa-2025", "ed-2025"]),
    )
    .expect("write jwks");
    let h = start_with(pool, config(&auth_yaml(&jwks, 1))).await;
    assert_eq!(status_and_reason(&h, "rsa-2025").await.0, 200);

    std::fs::write(&jwks, velro_authz::testkit::fixture_jwks(&["ed-2025"])).expect("rewrite jwks");
    let started = Instant::now();
    loop {
        let (status, reason) = status_and_reason(&h, "rsa-2025").await;
        if (status, reason.as_str()) == (401, "invalid_token") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the 1 s timer never dropped the removed kid"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status_and_reason(&h, "ed-2025").await.0, 200);
    h.running.shutdown().await;
}

// ---- a real SIGHUP to the binary ----

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// The forward-auth answer for a token of `kid` on an authenticated-only
/// route. With no database behind this sidecar, a token that authenticates
/// gets 503 (its user cannot be read); one that does not gets 401.
async fn forward_answer(http: SocketAddr, kid: &str) -> (u16, String) {
    let reply = http_client::send(
        http,
        "GET",
        "/v1/check/api/v1/users/profile",
        &[("authorization", &format!("Bearer {}", token(kid, ALICE)))],
        Vec::new(),
    )
    .await;
    let reason = serde_json::from_slice::<Value>(&reply.body)
        .ok()
        .and_then(|b| b["reason"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (reply.status, reason)
}

#[tokio::test]
async fn serve_sighup_rereads_jwks_and_keeps_running() {
    let dir = TempDir::new("jwks-sighup");
    let jwks = dir.0.join("jwks.json");
    std::fs::write(&jwks, velro_authz::testkit::fixture_jwks(&["rsa-2025"])).expect("write jwks");
    let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let grpc: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let config = dir.0.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "grpc_addr: {grpc}\nhttp_addr: {http}\nlog_format: json\nauth:\n  jwt:\n    issuer: velro\n    audience: velro-api\n    jwks_file: {}\n    jwks_reload_min_interval_secs: 3600\n    jwks_refresh_secs: 0\n",
            jwks.display()
        ),
    )
    .expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_velro-authz"));
    for (k, _) in std::env::vars() {
        if k.starts_with("VELRO_AUTHZ_") || k == "REDIS_URL" {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn velro-authz serve");
    let pid = child.id();

    let started = Instant::now();
    while http_client::try_send(http, "GET", "/healthz", &[], Vec::new())
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serve never listened"
        );
        assert!(child.try_wait().expect("wait").is_none(), "serve exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(forward_answer(http, "rsa-2025").await.0, 503);
    assert_eq!(
        forward_answer(http, "ec-2025").await,
        (401, "invalid_token".to_owned())
    );

    std::fs::write(&jwks, velro_authz::testkit::fixture_jwks(&["ec-2025"])).expect("rewrite jwks");
    signal(pid, "HUP");
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            child.try_wait().expect("wait").is_none(),
            "SIGHUP ended the process"
        );
        if forward_answer(http, "ec-2025").await.0 == 503 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGHUP did not reread the JWKS file"
        );
    }
    assert_eq!(
        forward_answer(http, "rsa-2025").await,
        (401, "invalid_token".to_owned())
    );

    signal(pid, "TERM");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "serve did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}
