//! Shared harness: a sidecar in this process over a test database, with an
//! ext_authz client; the building blocks are the crate's test kit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use sqlx::PgPool;
use tonic::transport::Channel;
use velro_authz::answer::Outcome;
use velro_authz::app::Running;
use velro_authz::authn::jwt::JwtVerifier;
use velro_authz::authz::Authorizer;
use velro_authz::config::Config;
use velro_authz::facts::FactSource;
use velro_authz::testkit::{self, Answer, Check, Token, send_check};

/// Demo ids (demo/seed.sql).
pub mod demo {
    pub const ALICE: &str = "10000000-0000-4000-8000-000000000001";
    pub const BOB: &str = "10000000-0000-4000-8000-000000000002";
    pub const CAROL: &str = "10000000-0000-4000-8000-000000000003";
    pub const DAVE: &str = "10000000-0000-4000-8000-000000000004";
    pub const ERIN: &str = "10000000-0000-4000-8000-000000000005";
    pub const TEAM_ACME: &str = "20000000-0000-4000-8000-000000000001";
    pub const TEAM_RESEARCH: &str = "20000000-0000-4000-8000-000000000002";
    pub const PROJECT_NOTEBOOK: &str = "30000000-0000-4000-8000-000000000001";
    pub const PROJECT_GALLERY: &str = "30000000-0000-4000-8000-000000000002";
    pub const PROJECT_SKETCHES: &str = "30000000-0000-4000-8000-000000000003";
    pub const GEN_BOB: &str = "40000000-0000-4000-8000-000000000001";
    pub const GEN_PUBLIC: &str = "40000000-0000-4000-8000-000000000002";
    pub const GEN_SHARED_ERIN: &str = "40000000-0000-4000-8000-000000000003";
    pub const GEN_CHILD: &str = "40000000-0000-4000-8000-000000000004";
    pub const GEN_DELETED: &str = "40000000-0000-4000-8000-000000000005";
    pub const GEN_BOB_ALONE: &str = "40000000-0000-4000-8000-000000000006";
    pub const GEN_GRANDCHILD: &str = "40000000-0000-4000-8000-000000000007";
    pub const GEN_MISSING: &str = "40000000-0000-4000-8000-0000000000ff";
    pub const SESSION_ALICE: &str = "60000000-0000-4000-8000-000000000001";
    pub const SESSION_BOB_REVOKED: &str = "60000000-0000-4000-8000-000000000002";
}

/// The test configuration (the kit's, LISTEN retried quickly), with
/// `extra_yaml` appended (e.g. an `auth:` section).
pub fn config(extra_yaml: &str) -> Config {
    testkit::config(&format!(
        "listener:\n  reconnect_min_ms: 20\n  reconnect_max_ms: 200\n{extra_yaml}"
    ))
}

/// `REDIS_URL`, which the tests that use Redis require: without it they fail
/// (scripts/test.sh starts a project-local Redis and sets it).
pub fn redis_url() -> String {
    std::env::var("REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .expect("REDIS_URL must point at a running Redis (scripts/test.sh sets it)")
}

/// A connected client of the Redis at [`redis_url`], for reading or writing
/// the sidecars' keys directly.
pub async fn redis_client() -> fred::clients::Client {
    use fred::interfaces::ClientLike;
    let client = fred::clients::Client::new(
        fred::types::config::Config::from_url(&redis_url()).expect("REDIS_URL"),
        None,
        None,
        None,
    );
    client.init().await.expect("redis reachable at REDIS_URL");
    client
}

/// The key that authenticates the test sidecars' values in Redis.
pub const L2_HMAC_KEY: &str = "integration-test-l2-hmac-key-0123456789abcdef";

/// A `redis:` config section with a key prefix of its own, so tests sharing one
/// Redis never see each other's keys.
pub fn redis_yaml(prefix: &str) -> String {
    format!(
        "redis:\n  url: {}\n  key_prefix: \"{prefix}\"\n  hmac_key: \"{L2_HMAC_KEY}\"\n",
        redis_url()
    )
}

/// A fresh, unique key prefix.
pub fn unique_prefix(test: &str) -> String {
    format!("t:{test}:{}:", uuid::Uuid::new_v4().simple())
}

/// A running sidecar plus a connected ext_authz client.
pub struct Harness {
    pub running: Running,
    pub client: AuthorizationClient<Channel>,
    pub jwt: Arc<JwtVerifier>,
    pub pool: PgPool,
}

/// Seeds the demo data and starts a sidecar over `pool`, waiting until it
/// hears notifications.
pub async fn start(pool: PgPool) -> Harness {
    start_with(pool, config("")).await
}

/// Like [`start`] with a given config.
pub async fn start_with(pool: PgPool, config: Config) -> Harness {
    velro_authz::demo::seed(&pool)
        .await
        .expect("seed demo data");
    attach(pool, config).await
}

/// Starts one more sidecar over an already seeded `pool` (several sidecars,
/// one database).
pub async fn attach(pool: PgPool, config: Config) -> Harness {
    let jwt = config.jwt.clone();
    let running = testkit::serve(pool.clone(), config).await;
    Harness::over(running, jwt, pool).await
}

impl Harness {
    /// A harness around a sidecar already running, its client connected.
    pub async fn over(running: Running, jwt: Arc<JwtVerifier>, pool: PgPool) -> Harness {
        let client = AuthorizationClient::connect(format!("http://{}", running.grpc_addr))
            .await
            .expect("grpc connect");
        Harness {
            running,
            client,
            jwt,
            pool,
        }
    }

    /// A dev token for `user` (an id), with optional `sid` and `scope`.
    pub fn token(&self, user: &str) -> String {
        self.token_with(user, None, None)
    }

    /// A token with a session and/or scope.
    pub fn token_with(&self, user: &str, sid: Option<&str>, scope: Option<&str>) -> String {
        Token::new(user)
            .sid(sid.map(|s| s.parse().expect("sid uuid")))
            .scope(scope)
            .mint(&self.jwt)
    }

    /// Sends one Check through the gRPC socket.
    pub async fn raw_check(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<CheckResponse, tonic::Status> {
        let check = Check::new(method, path).headers(headers);
        send_check(&self.client, &check, None).await
    }

    /// Sends one Check and summarises the answer; panics on an RPC error.
    pub async fn check(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        let response = self
            .raw_check(method, path, headers)
            .await
            .expect("Check RPC succeeds");
        Answer::read(response)
    }

    /// Check with a bearer token for `user`.
    pub async fn check_as(&self, user: &str, method: &str, path: &str) -> Answer {
        let auth = format!("Bearer {}", self.token(user));
        self.check(method, path, &[("authorization", &auth)]).await
    }

    /// Polls until `f` holds (deadline `within`), returning how long it took.
    pub async fn eventually<F, Fut>(&self, within: Duration, mut f: F) -> Duration
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let started = Instant::now();
        loop {
            if f().await {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "condition not reached within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A plain HTTP/1.1 GET; returns status and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let reply = testkit::http::send(addr, "GET", path, &[], Vec::new()).await;
    (reply.status, reply.text())
}

/// `GET path` with `authorization` (a bearer), decided in-process; panics on
/// "cannot decide". Owned arguments: the held-fill race tests spawn it.
pub async fn decide_get<S: FactSource>(
    authorizer: Arc<Authorizer<S>>,
    authorization: String,
    path: String,
) -> Outcome {
    Check::new("GET", &path)
        .header("authorization", &authorization)
        .decide(&authorizer, Some(Duration::from_secs(30)))
        .await
        .expect("decides")
        .outcome
}
