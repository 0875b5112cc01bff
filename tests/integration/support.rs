//! Shared harness: start a sidecar over a test database, mint tokens, send Checks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use sqlx::PgPool;
use tokio::sync::{Mutex, Notify};
use tonic::transport::Channel;
use velro_authz::app::{App, Running};
use velro_authz::authn::jwt::{JwtVerifier, MintClaims};
use velro_authz::config::Config;
use velro_authz::facts::{Fact, FactKey, FactSource};
use velro_authz::metrics::Metrics;
use velro_authz::store::{Store, StoreError};

/// HS256 secret of the test config.
pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

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

/// The test configuration, with `extra_yaml` appended (e.g. an `auth:` section).
pub fn config(extra_yaml: &str) -> Config {
    let yaml = format!(
        "grpc_addr: 127.0.0.1:0\nhttp_addr: 127.0.0.1:0\nlog_format: text\nlistener:\n  reconnect_min_ms: 20\n  reconnect_max_ms: 200\n{extra_yaml}"
    );
    let env: HashMap<&str, &str> = HashMap::from([
        (
            "DATABASE_URL",
            "postgres://unused-the-test-pool-is-given@localhost/x",
        ),
        ("VELRO_AUTHZ_JWT_SECRET", SECRET),
    ]);
    Config::from_yaml(&yaml, |k| env.get(k).map(|v| v.to_string())).expect("test config")
}

/// `REDIS_URL`, which the tests that use Redis require: without it they fail
/// (scripts/test.sh starts a project-local Redis and sets it).
pub fn redis_url() -> String {
    std::env::var("REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .expect("REDIS_URL must point at a running Redis (scripts/test.sh sets it)")
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
    let app = App::with_pool(config, pool.clone(), Metrics::new()).expect("app");
    let running = app.spawn(None).await.expect("spawn");
    let mut listener = running.listener.clone();
    tokio::time::timeout(Duration::from_secs(10), listener.wait_for(|up| *up))
        .await
        .expect("listener connects within 10 s")
        .expect("listener channel");
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

/// The parts of a CheckResponse tests look at.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status Envoy would answer (200 for allow).
    pub status: u16,
    /// gRPC code in CheckResponse.status.
    pub code: i32,
    /// Deny reason code from the JSON body, or "ok".
    pub reason: String,
    /// Headers for the upstream (allow) or the client (deny).
    pub headers: HashMap<String, String>,
    /// Headers Envoy removes from the upstream request.
    pub headers_to_remove: Vec<String>,
    /// Deny body.
    pub body: serde_json::Value,
    /// dynamic_metadata.decision_id.
    pub metadata_decision_id: String,
}

impl Harness {
    /// A dev token for `user` (an id), with optional `sid` and `scope`.
    pub fn token(&self, user: &str) -> String {
        self.token_with(user, None, None)
    }

    /// A token with a session and/or scope.
    pub fn token_with(&self, user: &str, sid: Option<&str>, scope: Option<&str>) -> String {
        if sid.is_none() && scope.is_none() {
            return mint(&self.jwt, user);
        }
        self.jwt
            .mint(&MintClaims {
                subject: user.to_owned(),
                session_id: sid.map(|s| s.parse().expect("sid uuid")),
                scope: scope.map(str::to_owned),
                ttl: Duration::from_secs(600),
                kid: None,
            })
            .expect("mint")
    }

    /// Sends one Check through the gRPC socket.
    pub async fn raw_check(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<CheckResponse, tonic::Status> {
        let http = HttpRequest {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(http),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        self.client
            .clone()
            .check(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Sends one Check and summarises the answer; panics on an RPC error.
    pub async fn check(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        let response = self
            .raw_check(method, path, headers)
            .await
            .expect("Check RPC succeeds");
        answer(response)
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

/// A ten-minute dev token for `user` from `jwt`.
pub fn mint(jwt: &JwtVerifier, user: &str) -> String {
    jwt.mint(&MintClaims {
        subject: user.to_owned(),
        ttl: Duration::from_secs(600),
        ..Default::default()
    })
    .expect("mint")
}

/// Summarises a CheckResponse.
pub fn answer(response: CheckResponse) -> Answer {
    let code = response.status.as_ref().map_or(0, |s| s.code);
    let metadata_decision_id = response
        .dynamic_metadata
        .as_ref()
        .and_then(|m| m.fields.get("decision_id"))
        .and_then(|v| match &v.kind {
            Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let collect = |hs: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]| {
        hs.iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect::<HashMap<_, _>>()
    };
    match response.http_response {
        Some(HttpResponse::OkResponse(ok)) => Answer {
            status: 200,
            code,
            reason: "ok".to_owned(),
            headers: collect(&ok.headers),
            headers_to_remove: ok.headers_to_remove,
            body: serde_json::Value::Null,
            metadata_decision_id,
        },
        Some(HttpResponse::DeniedResponse(denied)) => {
            let body: serde_json::Value =
                serde_json::from_str(&denied.body).expect("deny body is JSON");
            Answer {
                status: denied.status.map_or(0, |s| s.code as u16),
                code,
                reason: body["reason"].as_str().unwrap_or_default().to_owned(),
                headers: collect(&denied.headers),
                headers_to_remove: Vec::new(),
                body,
                metadata_decision_id,
            }
        }
        other => panic!("unexpected http_response {other:?}"),
    }
}

/// A plain HTTP/1.1 GET; returns status and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let reply = super::http_client::send(addr, "GET", path, &[], Vec::new()).await;
    (reply.status, reply.text())
}

/// `GET path` with `token` as a bearer, decided in-process; panics on
/// "cannot decide". For tests that hold a fill mid-decision.
pub async fn decide_get<S: velro_authz::facts::FactSource>(
    authorizer: Arc<velro_authz::authz::Authorizer<S>>,
    token: String,
    path: String,
) -> velro_authz::answer::Outcome {
    let req = velro_authz::authz::AuthzRequest {
        method: "GET",
        path: &path,
        authorization: Some(&token),
        api_key: None,
        largest_header: 0,
    };
    authorizer
        .check(&req, Some(Duration::from_secs(30)))
        .await
        .expect("decides")
        .outcome
}

/// The real store, with a switch that holds one memberships read after it
/// returned from Postgres and before the fill completes.
#[derive(Clone)]
pub struct HeldStore(pub Arc<Held>);

pub struct Held {
    pub store: Store,
    pub hold: Mutex<Option<(Arc<Notify>, Arc<Notify>)>>,
}

impl FactSource for HeldStore {
    async fn load(&self, key: &FactKey) -> Result<Fact, StoreError> {
        let fact = self.0.store.load(key).await?;
        if matches!(key, FactKey::Memberships(_)) {
            let hold = self.0.hold.lock().await.take();
            if let Some((read, release)) = hold {
                read.notify_one();
                release.notified().await;
            }
        }
        Ok(fact)
    }
}

impl HeldStore {
    /// Over `store`, holding nothing yet.
    pub fn new(store: Store) -> HeldStore {
        HeldStore(Arc::new(Held {
            store,
            hold: Mutex::new(None),
        }))
    }
}
