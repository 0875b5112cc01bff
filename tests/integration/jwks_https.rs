//! Key sets over HTTPS through a running sidecar: a real TLS server in the
//! test (its own CA, made by rcgen, handed to the sidecar as
//! `auth.jwt.jwks_ca_file`) serves a JWKS and an OpenID discovery document.
//! Keys rotate while Checks run; the server fails and the last good key set
//! is kept; discovery finds the key set; two issuers keep their audiences
//! apart; a sidecar whose issuer has no keys yet is not ready and cannot
//! decide that issuer's tokens.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::support::{Harness, config, demo::*, start_with};
use velro_authz::testkit::http as http_client;

const KEYS: &str = "tests/fixtures/keys";

/// What the test identity provider serves, changed by the test at will.
struct IdpState {
    /// The JWKS document at `/jwks`.
    jwks: Mutex<Vec<u8>>,
    /// `Cache-Control: max-age` sent with it.
    max_age: u64,
    /// When set, `/jwks` answers 500 (an outage).
    down: AtomicBool,
    /// `/jwks` requests served (ok or not).
    jwks_hits: AtomicUsize,
    /// Discovery documents served.
    discovery_hits: AtomicUsize,
    /// `https://127.0.0.1:PORT/realm`: the issuer its discovery document names.
    issuer: Mutex<String>,
}

/// A TLS server on loopback with a CA of its own, written to `ca_file`.
struct Idp {
    addr: SocketAddr,
    state: Arc<IdpState>,
    ca_file: PathBuf,
    _dir: TempDir,
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

impl Idp {
    /// Serves `kids` of the key fixtures with `max-age` seconds.
    async fn start(kids: &[&str], max_age: u64) -> Idp {
        let dir = TempDir::new("idp");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "velro-authz test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA cert");
        let server_key = KeyPair::generate().expect("server key");
        let server_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server params");
        let server_cert = server_params
            .signed_by(&server_key, &ca)
            .expect("server cert");
        let ca_file = dir.0.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write CA");

        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(server_cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .expect("server TLS config");
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(IdpState {
            jwks: Mutex::new(velro_authz::testkit::fixture_jwks(kids)),
            max_age,
            down: AtomicBool::new(false),
            jwks_hits: AtomicUsize::new(0),
            discovery_hits: AtomicUsize::new(0),
            issuer: Mutex::new(format!("https://{addr}/realm")),
        });
        let served = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, state) = (acceptor.clone(), served.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| answer(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Idp {
            addr,
            state,
            ca_file,
            _dir: dir,
        }
    }

    fn jwks_url(&self) -> String {
        format!("https://{}/jwks", self.addr)
    }

    fn issuer(&self) -> String {
        self.state.issuer.lock().expect("lock").clone()
    }

    fn serve(&self, kids: &[&str]) {
        *self.state.jwks.lock().expect("lock") = velro_authz::testkit::fixture_jwks(kids);
    }

    fn jwks_hits(&self) -> usize {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }
}

async fn answer(
    state: Arc<IdpState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match req.uri().path() {
        "/jwks" => {
            state.jwks_hits.fetch_add(1, Ordering::SeqCst);
            if state.down.load(Ordering::SeqCst) {
                Response::builder().status(500).body(Full::from("down"))
            } else {
                let body = state.jwks.lock().expect("lock").clone();
                Response::builder()
                    .header("content-type", "application/json")
                    .header(
                        "cache-control",
                        format!("public, max-age={}", state.max_age),
                    )
                    .body(Full::from(body))
            }
        }
        "/realm/.well-known/openid-configuration" => {
            state.discovery_hits.fetch_add(1, Ordering::SeqCst);
            let issuer = state.issuer.lock().expect("lock").clone();
            let host = issuer.trim_end_matches("/realm").to_owned();
            let doc = json!({ "issuer": issuer, "jwks_uri": format!("{host}/jwks") });
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::from(doc.to_string()))
        }
        _ => Response::builder().status(404).body(Full::from("")),
    };
    Ok(response.expect("response"))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// A token for `user`, signed by the fixture key of `kid`, for `iss`/`aud`.
fn token(kid: &str, iss: &str, aud: &str, user: &str) -> String {
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
    let claims = json!({ "sub": user, "iss": iss, "aud": aud, "iat": now(), "exp": now() + 600 });
    encode(&header, &claims, &key).expect("sign")
}

/// `auth:` with the test environment's HS256 key for `velro` plus `issuers`.
fn auth_yaml(ca_file: &Path, reload_min_secs: u64, issuers: &str) -> String {
    format!(
        "auth:\n  jwt:\n    issuer: velro\n    audience: velro-api\n    keys:\n      - kid: hs\n        alg: HS256\n    jwks_ca_file: {}\n    jwks_reload_min_interval_secs: {reload_min_secs}\n    jwks_refresh_min_secs: 1\n    jwks_refresh_max_secs: 2\n    jwks_fetch_timeout_ms: 2000\n    issuers:\n{issuers}",
        ca_file.display()
    )
}

async fn status_and_reason(h: &Harness, token: &str) -> (u16, String) {
    let a = h
        .check(
            "GET",
            &format!("/api/v1/generations/{GEN_BOB}"),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
    (a.status, a.reason)
}

/// Polls `f` until it holds, failing after `within` (the bound is generous:
/// it only stops a broken build from hanging).
async fn until<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !f().await {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[sqlx::test(migrations = "./migrations")]
async fn jwks_https_rotation_under_load_adds_by_unknown_kid_and_drops_removed_kid(pool: PgPool) {
    let idp = Idp::start(&["rsa-2025"], 1).await;
    let iss = "https://idp.test/";
    let issuers = format!(
        "      - issuer: \"{iss}\"\n        audience: velro-api\n        jwks_url: {}\n",
        idp.jwks_url()
    );
    // Unknown kids refetch at once (no rate limit) so the new key is found
    // by the first token that names it.
    let h = Arc::new(start_with(pool, config(&auth_yaml(&idp.ca_file, 0, &issuers))).await);
    let rsa = token("rsa-2025", iss, "velro-api", BOB);
    let ec = token("ec-2025", iss, "velro-api", BOB);
    assert_eq!(status_and_reason(&h, &rsa).await.0, 200);
    assert_eq!(
        status_and_reason(&h, &ec).await,
        (401, "invalid_token".to_owned()),
        "a kid the IdP does not serve"
    );

    // A loop of Checks with both tokens, all through the rotation. Every
    // answer must be what the key set allows at that moment: `rsa` is
    // allowed until it leaves (then only invalid_token, never back), `ec`
    // allowed once it came (never refused again while it stays).
    let stop = Arc::new(AtomicBool::new(false));
    let rsa_gone = Arc::new(AtomicBool::new(false));
    let ec_served = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (h, stop, rsa_gone, ec_served) =
            (h.clone(), stop.clone(), rsa_gone.clone(), ec_served.clone());
        let (rsa, ec) = (rsa.clone(), ec.clone());
        load.push(tokio::spawn(async move {
            let mut checks = 0u32;
            let mut rsa_refused = false;
            let mut ec_allowed = false;
            while !stop.load(Ordering::SeqCst) {
                let gone_before = rsa_gone.load(Ordering::SeqCst);
                let (status, reason) = status_and_reason(&h, &rsa).await;
                match (status, reason.as_str()) {
                    (200, _) => assert!(!gone_before && !rsa_refused, "removed kid allowed again"),
                    (401, "invalid_token") => rsa_refused = true,
                    other => panic!("rsa token: unexpected answer {other:?}"),
                }
                let served_before = ec_served.load(Ordering::SeqCst);
                let (status, reason) = status_and_reason(&h, &ec).await;
                match (status, reason.as_str()) {
                    (200, _) => ec_allowed = true,
                    (401, "invalid_token") => {
                        assert!(!served_before && !ec_allowed, "a served kid was refused")
                    }
                    other => panic!("ec token: unexpected answer {other:?}"),
                }
                checks += 1;
            }
            checks
        }));
    }

    // 1. Add ec-2025: the next token naming it makes the sidecar refetch.
    let before = idp.jwks_hits();
    idp.serve(&["rsa-2025", "ec-2025"]);
    ec_served.store(true, Ordering::SeqCst);
    assert_eq!(
        status_and_reason(&h, &ec).await.0,
        200,
        "the unknown kid was fetched at once"
    );
    assert!(idp.jwks_hits() > before, "verified after a refetch");

    // 2. Remove rsa-2025: gone after the next refresh (max-age 1 s), cached
    // verifications included.
    idp.serve(&["ec-2025"]);
    until(Duration::from_secs(15), "removed kid refused", || async {
        status_and_reason(&h, &rsa).await == (401, "invalid_token".to_owned())
    })
    .await;
    rsa_gone.store(true, Ordering::SeqCst);
    // The loop keeps running across the refresh after that.
    let hits = idp.jwks_hits();
    until(Duration::from_secs(15), "one more refresh", || async {
        idp.jwks_hits() > hits + 1
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for task in load {
        total += task.await.expect("no wrong answer under load");
    }
    assert!(total > 0, "the load loop ran");
    assert_eq!(status_and_reason(&h, &rsa).await.1, "invalid_token");
    assert_eq!(status_and_reason(&h, &ec).await.0, 200);
}

#[sqlx::test(migrations = "./migrations")]
async fn jwks_https_server_down_keeps_last_good_keys_and_counts_failures(pool: PgPool) {
    let idp = Idp::start(&["rsa-2025"], 1).await;
    let iss = "https://idp.test/";
    let issuers = format!(
        "      - issuer: \"{iss}\"\n        audience: velro-api\n        jwks_url: {}\n",
        idp.jwks_url()
    );
    // Unknown kids rate-limited to one fetch an hour: none during this test.
    let h = start_with(pool, config(&auth_yaml(&idp.ca_file, 3600, &issuers))).await;
    let rsa = token("rsa-2025", iss, "velro-api", BOB);
    assert_eq!(status_and_reason(&h, &rsa).await.0, 200);

    idp.state.down.store(true, Ordering::SeqCst);
    let failures = || async {
        let (_, text) = super::support::http_get(h.running.http_addr, "/metrics").await;
        metric(
            &text,
            "velro_authz_jwks_fetches_total{issuer=\"https://idp.test/\",result=\"status\"}",
        )
    };
    until(
        Duration::from_secs(15),
        "a failed fetch counted",
        || async { failures().await >= 2.0 },
    )
    .await;
    // A fresh token (not cached) still verifies with the last good set, and
    // readiness holds.
    let fresh = token("rsa-2025", iss, "velro-api", ALICE);
    let profile = h
        .check(
            "GET",
            "/api/v1/users/profile",
            &[("authorization", &format!("Bearer {fresh}"))],
        )
        .await;
    assert_eq!(
        profile.status, 200,
        "last good set kept: {}",
        profile.reason
    );
    assert_eq!(status_and_reason(&h, &rsa).await.0, 200);
    assert_eq!(
        super::support::http_get(h.running.http_addr, "/readyz")
            .await
            .0,
        200
    );

    // Unknown kids while the server is down: refused at once, no fetch (the
    // rate limit), whatever their number.
    let hits = idp.jwks_hits();
    for user in [ALICE, BOB, CAROL, DAVE, ERIN] {
        let unknown = token("ed-2025", iss, "velro-api", user);
        assert_eq!(
            status_and_reason(&h, &unknown).await,
            (401, "invalid_token".to_owned())
        );
    }
    assert!(
        idp.jwks_hits() <= hits + 1,
        "unknown kids caused fetches beyond the refresh schedule"
    );

    idp.state.down.store(false, Ordering::SeqCst);
    let (_, text) = super::support::http_get(h.running.http_addr, "/metrics").await;
    assert!(
        metric(
            &text,
            "velro_authz_jwks_fetches_total{issuer=\"https://idp.test/\",result=\"ok\"}"
        ) >= 1.0,
        "{text}"
    );
    assert!(metric(&text, "velro_authz_jwks_keys{issuer=\"https://idp.test/\"}") >= 1.0);
    assert!(
        !text.contains(&idp.jwks_url()),
        "the key set URL is in no metric"
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn jwks_https_oidc_discovery_and_two_issuers_keep_their_audiences_apart(pool: PgPool) {
    let a = Idp::start(&["rsa-2025"], 60).await;
    let b = Idp::start(&["ec-2025"], 60).await;
    // Both CAs in one file.
    let dir = TempDir::new("cas");
    let cas = dir.0.join("cas.pem");
    let mut both = std::fs::read(&a.ca_file).expect("ca a");
    both.extend(std::fs::read(&b.ca_file).expect("ca b"));
    std::fs::write(&cas, both).expect("write cas");
    let issuers = format!(
        "      - oidc_issuer: \"{}\"\n        audience: app-a\n      - issuer: \"https://b.test\"\n        audience: app-b\n        jwks_url: {}\n",
        a.issuer(),
        b.jwks_url()
    );
    let h = start_with(pool, config(&auth_yaml(&cas, 3600, &issuers))).await;
    assert_eq!(
        a.state.discovery_hits.load(Ordering::SeqCst),
        1,
        "discovered once"
    );

    let a_for_a = token("rsa-2025", &a.issuer(), "app-a", BOB);
    let b_for_b = token("ec-2025", "https://b.test", "app-b", BOB);
    assert_eq!(
        status_and_reason(&h, &a_for_a).await.0,
        200,
        "A by discovery"
    );
    assert_eq!(status_and_reason(&h, &b_for_b).await.0, 200, "B by URL");
    // A's audience presented to B, and A's key claiming to be B: refused.
    for wrong in [
        token("ec-2025", "https://b.test", "app-a", BOB),
        token("rsa-2025", "https://b.test", "app-b", BOB),
        token("ec-2025", &a.issuer(), "app-a", BOB),
        token("rsa-2025", "https://unknown.test", "app-a", BOB),
    ] {
        assert_eq!(
            status_and_reason(&h, &wrong).await,
            (401, "invalid_token".to_owned())
        );
    }
    // The top-level issuer (the HS256 dev key) still works beside them.
    assert_eq!(
        h.check_as(BOB, "GET", &format!("/api/v1/generations/{GEN_BOB}"))
            .await
            .status,
        200
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn jwks_https_issuer_without_keys_yet_is_not_ready_and_cannot_decide(pool: PgPool) {
    velro_authz::demo::seed(&pool).await.expect("seed");
    let idp = Idp::start(&["rsa-2025"], 60).await;
    idp.state.down.store(true, Ordering::SeqCst);
    let iss = "https://idp.test/";
    let issuers = format!(
        "      - issuer: \"{iss}\"\n        audience: velro-api\n        jwks_url: {}\n",
        idp.jwks_url()
    );
    let cfg = config(&auth_yaml(&idp.ca_file, 3600, &issuers));
    let jwt = cfg.jwt.clone();
    let running = velro_authz::testkit::spawn_listening(pool.clone(), cfg).await;
    // Fetch attempts fail: never ready, and this issuer's tokens are an
    // error (UNAVAILABLE), not a deny.
    until(Duration::from_secs(15), "two failed fetches", || async {
        idp.jwks_hits() >= 2
    })
    .await;
    assert_eq!(
        http_client::send(running.http_addr, "GET", "/readyz", &[], Vec::new())
            .await
            .status,
        503
    );
    let h = Harness::over(running, jwt, pool).await;
    let rsa = token("rsa-2025", iss, "velro-api", BOB);
    let err = h
        .raw_check(
            "GET",
            &format!("/api/v1/generations/{GEN_BOB}"),
            &[("authorization", &format!("Bearer {rsa}"))],
        )
        .await
        .expect_err("cannot decide");
    assert_eq!(err.code(), tonic::Code::Unavailable);

    // The server comes back: ready, and the token verifies.
    idp.state.down.store(false, Ordering::SeqCst);
    until(
        Duration::from_secs(15),
        "ready once keys are fetched",
        || async {
            http_client::send(h.running.http_addr, "GET", "/readyz", &[], Vec::new())
                .await
                .status
                == 200
        },
    )
    .await;
    assert_eq!(status_and_reason(&h, &rsa).await.0, 200);
}
