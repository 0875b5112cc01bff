//! One test kit for every test and benchmark of the crate: the unit tests get
//! it from `cfg(test)`; the integration tests, the cluster tests and the
//! benches from the `testkit` feature, which the crate's self dev-dependency
//! switches on (so no shipped build contains it).
//!
//! - facts without a database: [`MemorySource`], and [`Held`], which holds a
//!   fill mid-flight over any source (the fill/invalidation races);
//! - the decision path wired like the sidecar's: [`config`],
//!   [`AuthorizerBuilder`], and [`serve`] for a sidecar in this process;
//! - credentials: [`Token`];
//! - Envoy's side of a Check: [`Check`] builds the request, [`Answer`] reads
//!   the response, [`Verdict`] is the part two answers are compared on;
//! - a trace collector: [`otlp`] (an OTLP/gRPC receiver keeping what it gets);
//! - the world outside the process: [`http`] (the one HTTP/1.1 client),
//!   [`procs`] (temp dirs, ports, databases, Redis prefixes) and [`sidecar`]
//!   (the `velro-authz` binary as a process).
//!
//! Helpers panic on failure, like the tests that call them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::app::{self, App, Running};
use crate::authn::jwt::{JwtVerifier, MintClaims};
use crate::authz::Authorizer;
use crate::config::{Config, ENV_DATABASE_URL, ENV_JWT_SECRET};
use crate::facts::l2::L2;
use crate::facts::{Fact, FactKey, FactSource, Facts};
use crate::metrics::Metrics;
use crate::model::{Generation, GenerationStatus, User, UserStatus};
use crate::store::{StoreError, Target};
use crate::telemetry::traces::DecisionTracer;

mod envoy;
pub mod http;
pub mod otlp;
pub mod procs;
pub mod sidecar;

pub use envoy::{Answer, Check, Verdict, send_check, verdict};

/// The HS256 secret of every [`config`]: tokens from [`Token`] verify, and a
/// test may sign a token of its own making with it.
pub const SECRET: &str = "testkit-hs256-U4Llmp1xgTFn3AYIt1106UFNqXrM7n3htYHJz";

/// A database URL nothing listens on: configs need one, in-process tests
/// either pass a pool or read no facts from Postgres.
const UNUSED_DATABASE_URL: &str = "postgres://unused-the-test-pool-is-given@127.0.0.1:1/x";

/// A test configuration: listeners on loopback port 0, text logs, then
/// `yaml`; the environment is only an unused database URL and [`SECRET`].
pub fn config(yaml: &str) -> Config {
    let text = format!("grpc_addr: 127.0.0.1:0\nhttp_addr: 127.0.0.1:0\nlog_format: text\n{yaml}");
    let mut config = Config::from_yaml(&text, |name| match name {
        ENV_DATABASE_URL => Some(UNUSED_DATABASE_URL.to_owned()),
        ENV_JWT_SECRET => Some(SECRET.to_owned()),
        _ => None,
    })
    .unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
    // Several sidecars share one test database's small pool.
    config.database.min_connections = 1;
    config
}

// ------------------------------------------------------------------ facts

/// Facts in a map: what a test sets is what the decision reads, with no
/// database. A key never set reads as absent (no row, no members, no shares),
/// as Postgres would answer.
#[derive(Clone, Default)]
pub struct MemorySource(Arc<Memory>);

/// What every clone of one [`MemorySource`] shares.
#[derive(Default)]
struct Memory {
    /// The facts, by key.
    facts: Mutex<HashMap<FactKey, Fact>>,
    /// Loads so far: how a test sees what the cache answered itself.
    loads: AtomicUsize,
    /// While set, every load fails like a refused connection.
    down: AtomicBool,
}

impl MemorySource {
    /// No facts yet.
    pub fn new() -> MemorySource {
        MemorySource::default()
    }

    /// Sets (or replaces) the fact of `key`; `fact` must be the kind `key` asks for.
    pub fn set(&self, key: FactKey, fact: Fact) -> &MemorySource {
        assert!(fact.matches(&key), "{fact:?} is no answer to {key:?}");
        self.facts().insert(key, fact);
        self
    }

    /// Forgets the fact of `key`: it reads as absent again.
    pub fn remove(&self, key: &FactKey) -> &MemorySource {
        self.facts().remove(key);
        self
    }

    /// Sets the user row `id` with `status`.
    pub fn user(&self, id: Uuid, status: UserStatus) -> &MemorySource {
        self.set(FactKey::User(id), Fact::User(Some(User { id, status })))
    }

    /// Sets a completed generation `id` of `owner`, in no project, no parent.
    pub fn generation(&self, id: Uuid, owner: Uuid) -> &MemorySource {
        self.set(
            FactKey::Generation(id),
            Fact::Generation(Some(Generation {
                id,
                user_id: owner,
                project_id: None,
                parent_id: None,
                status: GenerationStatus::Completed,
            })),
        )
    }

    /// How many loads reached this source.
    pub fn loads(&self) -> usize {
        self.0.loads.load(Ordering::SeqCst)
    }

    /// Down: every load fails with a transient store error until set up again.
    pub fn set_down(&self, down: bool) {
        self.0.down.store(down, Ordering::SeqCst);
    }

    /// The map; a test that panicked while holding it leaves it usable.
    fn facts(&self) -> MutexGuard<'_, HashMap<FactKey, Fact>> {
        self.0.facts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FactSource for MemorySource {
    async fn load(&self, key: &FactKey) -> Result<Fact, StoreError> {
        self.0.loads.fetch_add(1, Ordering::SeqCst);
        if self.0.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut));
        }
        Ok(self
            .facts()
            .get(key)
            .cloned()
            .unwrap_or_else(|| absent(key)))
    }
}

/// The answer for a key with no row: `None`, or an empty list.
fn absent(key: &FactKey) -> Fact {
    match key {
        FactKey::User(_) => Fact::User(None),
        FactKey::Team(_) => Fact::Team(None),
        FactKey::Memberships(_) => Fact::Memberships(Arc::from([])),
        FactKey::Project(_) => Fact::Project(None),
        FactKey::Generation(_) => Fact::Generation(None),
        FactKey::Shares(..) => Fact::Shares(Arc::from([])),
        FactKey::ApiKey(_) => Fact::ApiKey(None),
        FactKey::Session(_) => Fact::Session(None),
    }
}

/// Any source, able to hold one load after the tier below answered and before
/// the fill completes: how a test lands a fill that read an old row after the
/// invalidation of that row.
#[derive(Clone)]
pub struct Held<S> {
    /// The source that answers.
    inner: S,
    /// The fact kind to hold next, with its signals; taken by that load.
    armed: Arc<Mutex<Option<(&'static str, Hold)>>>,
}

/// The two signals of one held load.
#[derive(Clone, Default)]
pub struct Hold {
    /// The load has its answer and waits.
    reached: Arc<Notify>,
    /// The load may complete.
    released: Arc<Notify>,
}

impl Hold {
    /// Waits until the held load has read its answer.
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Lets the held load complete.
    pub fn release(&self) {
        self.released.notify_one();
    }
}

impl<S> Held<S> {
    /// Over `inner`, holding nothing yet.
    pub fn new(inner: S) -> Held<S> {
        Held {
            inner,
            armed: Arc::default(),
        }
    }

    /// The source below.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Holds the next load of a fact of `kind` ([`FactKey::kind`], e.g.
    /// `"memberships"`) once it has its answer.
    pub fn hold_next(&self, kind: &'static str) -> Hold {
        let hold = Hold::default();
        *self.armed.lock().unwrap_or_else(|p| p.into_inner()) = Some((kind, hold.clone()));
        hold
    }
}

impl<S> Held<S> {
    /// Holds this load if it is armed for `kind`.
    async fn hold_if(&self, kind: &str) {
        let hold = {
            let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
            match armed.as_ref() {
                Some((armed_kind, _)) if *armed_kind == kind => armed.take(),
                _ => None,
            }
        };
        if let Some((_, hold)) = hold {
            hold.reached.notify_one();
            hold.released.notified().await;
        }
    }
}

impl<S: FactSource> FactSource for Held<S> {
    async fn load(&self, key: &FactKey) -> Result<Fact, StoreError> {
        let fact = self.inner.load(key).await?;
        self.hold_if(key.kind()).await;
        Ok(fact)
    }

    const LOADS_DECISIONS: bool = S::LOADS_DECISIONS;

    /// Held as kind `"decision"`.
    async fn load_decision(
        &self,
        user: Uuid,
        target: Target,
    ) -> Result<Option<Vec<(FactKey, Fact)>>, StoreError> {
        let facts = self.inner.load_decision(user, target).await?;
        self.hold_if("decision").await;
        Ok(facts)
    }
}

// ------------------------------------------------------------------ decision path

/// Builds an [`Authorizer`] over any source, wired by [`app::authorizer`] as
/// the sidecar wires its own, so a test decides exactly as the sidecar does.
pub struct AuthorizerBuilder {
    /// Routes, keys, cache bounds, decision settings, rate limit.
    config: Config,
    /// The registry the decision counts into (a test may read it).
    metrics: Metrics,
    /// The shared Redis tier, when the test has one.
    l2: Option<Arc<L2>>,
    /// Decision spans, when the test traces.
    tracer: Option<DecisionTracer>,
}

impl AuthorizerBuilder {
    /// From a parsed config, with a fresh metrics registry and no Redis.
    pub fn new(config: Config) -> AuthorizerBuilder {
        AuthorizerBuilder {
            config,
            metrics: Metrics::new(),
            l2: None,
            tracer: None,
        }
    }

    /// From YAML, read by [`config`].
    pub fn yaml(yaml: &str) -> AuthorizerBuilder {
        AuthorizerBuilder::new(config(yaml))
    }

    /// Counts into `metrics`.
    pub fn metrics(mut self, metrics: &Metrics) -> AuthorizerBuilder {
        self.metrics = metrics.clone();
        self
    }

    /// Reads through the Redis tier `l2` before the source.
    pub fn l2(mut self, l2: Arc<L2>) -> AuthorizerBuilder {
        self.l2 = Some(l2);
        self
    }

    /// Traces decisions with `tracer` (a [`TracePipeline`]'s).
    ///
    /// [`TracePipeline`]: crate::telemetry::traces::TracePipeline
    pub fn tracer(mut self, tracer: DecisionTracer) -> AuthorizerBuilder {
        self.tracer = Some(tracer);
        self
    }

    /// The authorizer over `source`; its fact cache is `authorizer.facts()`.
    pub fn build<S: FactSource>(self, source: S) -> Arc<Authorizer<S>> {
        let facts = Arc::new(Facts::with_tiers(
            source,
            &self.config.cache,
            self.l2,
            self.config.breaker,
            self.metrics.clone(),
        ));
        let authorizer = app::authorizer(&self.config, facts, None, &self.metrics);
        Arc::new(match self.tracer {
            Some(tracer) => authorizer.with_tracer(tracer),
            None => authorizer,
        })
    }
}

/// A whole sidecar in this process over `pool`, returned once its LISTEN is
/// connected, without waiting for readiness (for tests of a sidecar that is
/// not ready yet).
pub async fn spawn_listening(pool: PgPool, config: Config) -> Running {
    let running = App::with_pool(config, pool, Metrics::new())
        .expect("app")
        .spawn(None)
        .await
        .expect("spawn");
    let mut listener = running.listener.clone();
    tokio::time::timeout(Duration::from_secs(10), listener.wait_for(|up| *up))
        .await
        .expect("listener connects within 10 s")
        .expect("listener channel");
    running
}

/// A whole sidecar in this process over `pool` (migrated; seed it first if
/// the test needs data), serving on the config's addresses, returned once its
/// LISTEN is connected so no change is missed from then on.
pub async fn serve(pool: PgPool, config: Config) -> Running {
    let running = spawn_listening(pool, config).await;
    // Ready: the pool is warm too.
    let ready = tokio::time::timeout(Duration::from_secs(10), async {
        while http::send(running.http_addr, "GET", "/readyz", &[], Vec::new())
            .await
            .status
            != 200
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    ready.await.expect("ready within 10 s");
    running
}

/// The key fixtures' JWKS (`tests/fixtures/keys/jwks.json`) restricted to
/// `kids`: what a JWKS file holds before and after a key rotation.
pub fn fixture_jwks(kids: &[&str]) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/jwks.json");
    let all: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("jwks fixture")).expect("json");
    let keys: Vec<serde_json::Value> = all["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap_or_default()))
        .cloned()
        .collect();
    serde_json::json!({ "keys": keys }).to_string().into_bytes()
}

// ------------------------------------------------------------------ credentials

/// A token to mint: for `user`, ten minutes, no session, no scope unless set.
#[derive(Debug, Clone)]
pub struct Token {
    /// `sub`: normally a user id; any text, to test what the sidecar makes of it.
    user: String,
    /// `exp - iat`.
    ttl: Duration,
    /// `sid`, naming a session row.
    sid: Option<Uuid>,
    /// `scope`, space-separated.
    scope: Option<String>,
}

impl Token {
    /// For `user` (a UUID, or any text for `sub`).
    pub fn new(user: impl ToString) -> Token {
        Token {
            user: user.to_string(),
            ttl: Duration::from_secs(600),
            sid: None,
            scope: None,
        }
    }

    /// Lives `ttl`.
    pub fn ttl(mut self, ttl: Duration) -> Token {
        self.ttl = ttl;
        self
    }

    /// Names the session `sid`, if any.
    pub fn sid(mut self, sid: Option<Uuid>) -> Token {
        self.sid = sid;
        self
    }

    /// Narrows to `scope`, if any.
    pub fn scope(mut self, scope: Option<&str>) -> Token {
        self.scope = scope.map(str::to_owned);
        self
    }

    /// Signed by `jwt`'s first signing key.
    pub fn mint(&self, jwt: &JwtVerifier) -> String {
        jwt.mint(&MintClaims {
            subject: self.user.clone(),
            session_id: self.sid,
            scope: self.scope.clone(),
            ttl: self.ttl,
            kid: None,
        })
        .expect("mint")
    }

    /// `Bearer <token>`, an `Authorization` value.
    pub fn bearer(&self, jwt: &JwtVerifier) -> String {
        format!("Bearer {}", self.mint(jwt))
    }
}
