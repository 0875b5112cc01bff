//! Wiring: build the decision path from a [`Config`] and serve it on the gRPC
//! and HTTP listeners until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::ServingStatus;

use crate::authn::jwt::{JwksReload, JwtVerifier};
use crate::authz::{Authorizer, RecentDecisions};
use crate::config::{Config, ConfigError};
use crate::facts::freshness::Freshness;
use crate::facts::l2::L2;
use crate::facts::{FactSource, Facts};
use crate::grpc::admin::ADMIN_DESCRIPTOR;
use crate::grpc::socket::OneWrite;
use crate::grpc::{AUTHORIZATION_SERVICE, Admin, ExtAuthz, REFLECTION_DESCRIPTOR};
use crate::http::{HttpState, ops_router, router};
use crate::invalidate;
use crate::metrics::Metrics;
use crate::ratelimit::{FailedAuthLimiter, RateLimiter};
use crate::redis::Redis;
use crate::reload::{self, ConfigSource, ReloadError, Reloaded, Reloader};
use crate::store::{self, Store};
use crate::telemetry::traces::TracePipeline;

/// The decision path over Postgres.
pub type PgAuthorizer = Authorizer<Store>;

/// Everything a running sidecar is made of.
pub struct App {
    /// Decides requests.
    pub authorizer: Arc<PgAuthorizer>,
    /// Postgres access.
    pub store: Store,
    /// The Redis client, when configured.
    pub redis: Option<Arc<Redis>>,
    /// The shared fact tier in Redis, when configured.
    pub l2: Option<Arc<L2>>,
    /// Exported metrics.
    pub metrics: Metrics,
    /// The decision-trace exporter, when tracing is on.
    traces: Option<TracePipeline>,
    config: Config,
    /// Where a reload rereads the configuration.
    source: ConfigSource,
}

/// A sidecar started by [`spawn`].
pub struct Running {
    /// Bound gRPC address (useful with port 0).
    pub grpc_addr: SocketAddr,
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    /// Bound address of the health/metrics-only listener, when configured.
    pub metrics_addr: Option<SocketAddr>,
    /// Bound address of the admin listener, when configured.
    pub admin_addr: Option<SocketAddr>,
    /// The decision path, for in-process assertions.
    pub authorizer: Arc<PgAuthorizer>,
    /// Metrics, for assertions.
    pub metrics: Metrics,
    /// True while LISTEN is up.
    pub listener: watch::Receiver<bool>,
    /// Reloads the configuration (SIGHUP, the file watch, tests).
    pub reloader: Arc<Reloader<Store>>,
    /// Flushed at shutdown, after the last decision.
    traces: Option<TracePipeline>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Rereads the JWKS file now, as SIGHUP does (`serve` calls this on the
    /// signal), logging which kids came, went or changed. Tokens verified
    /// with a key that went stop working at once, cached or not. Errors (no
    /// JWKS file, an unreadable or broken file) keep the previous keys.
    pub fn reload(&self) -> Result<JwksReload, Vec<String>> {
        reload_jwks(self.authorizer.snapshot().authn.verifier(), "signal")
    }

    /// Rereads the whole configuration, as SIGHUP does: routes, JWT keys and
    /// the JWKS file, dry run and log sampling go into force together, or,
    /// if the new configuration is invalid or changes a restart-only
    /// setting, nothing changes. Logged and counted either way.
    pub fn reload_config(&self) -> Result<Reloaded, ReloadError> {
        self.reloader.reload("signal")
    }

    /// Stops serving, waits for the tasks to end, then exports the decision
    /// spans still queued.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(traces) = self.traces {
            traces.shutdown().await;
        }
    }
}

impl App {
    /// Builds the decision path (no I/O yet: the pool, Redis and the trace
    /// collector connect lazily, so start-up never blocks on a dependency).
    /// Needs a Tokio runtime.
    pub fn build(config: Config, metrics: Metrics) -> Result<App, ConfigError> {
        let pool = store::connect(&config.database)
            .map_err(|e| ConfigError(vec![format!("database.url / DATABASE_URL: {e}")]))?;
        App::with_pool(config, pool, metrics)
    }

    /// Builds over an existing pool (tests with `#[sqlx::test]`).
    pub fn with_pool(
        config: Config,
        pool: sqlx::PgPool,
        metrics: Metrics,
    ) -> Result<App, ConfigError> {
        let store = Store::new(pool);
        if let Err(e) = config.jwt.metrics().register(&metrics.registry) {
            tracing::warn!(error = %e, "JWKS metrics not registered");
        }
        let redis = match &config.redis {
            Some(settings) => {
                Some(Redis::new(settings, metrics.clone()).map_err(|e| ConfigError(vec![e]))?)
            }
            None => None,
        };
        let l2 = redis.as_ref().map(|r| {
            // A rejoin waits at most one silence bound for the fleet's coverage.
            L2::new(
                r.clone(),
                config.l2.clone(),
                config.freshness.max_silence,
                metrics.clone(),
            )
        });
        let freshness = Arc::new(Freshness::new(config.freshness, metrics.clone()));
        let facts = Arc::new(
            Facts::with_tiers(
                store.clone(),
                &config.cache,
                l2.clone(),
                config.breaker,
                metrics.clone(),
            )
            .with_freshness(freshness)
            // No caller waits longer than the decision deadline: a query still
            // running then is a failure; one abandoned sooner by its caller is not.
            .with_query_timeout(config.decision.deadline),
        );
        let mut authorizer = authorizer(&config, facts, redis.clone(), &metrics);
        let traces = match &config.tracing {
            Some(settings) => {
                let pipeline =
                    TracePipeline::start(settings, &metrics).map_err(|e| ConfigError(vec![e]))?;
                authorizer = authorizer.with_tracer(pipeline.tracer());
                Some(pipeline)
            }
            None => None,
        };
        Ok(App {
            authorizer: Arc::new(authorizer),
            store,
            redis,
            l2,
            metrics,
            traces,
            config,
            source: ConfigSource::process(None),
        })
    }

    /// Rereads the configuration from `source` on reload (the process
    /// environment and no file unless set).
    pub fn reload_from(mut self, source: ConfigSource) -> App {
        self.source = source;
        self
    }

    /// Binds the listeners (gRPC, HTTP, and the metrics one when configured)
    /// and serves in the background.
    pub async fn spawn(
        self,
        log_dropped: Option<Arc<dyn Fn() -> u64 + Send + Sync>>,
    ) -> std::io::Result<Running> {
        let grpc = TcpListener::bind(self.config.grpc_addr).await?;
        let http = TcpListener::bind(self.config.http_addr).await?;
        let metrics = match self.config.metrics_addr {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let admin = match &self.config.admin {
            Some(settings) => Some((TcpListener::bind(settings.addr).await?, settings)),
            None => None,
        };
        let admin_addr = admin.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
        let (grpc_addr, http_addr) = (grpc.local_addr()?, http.local_addr()?);
        let metrics_addr = metrics.as_ref().map(|l| l.local_addr()).transpose()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (listener_tx, listener_rx) = watch::channel(false);
        let mut tasks = Vec::new();

        tasks.push(tokio::spawn(invalidate::run(
            self.store.pool().clone(),
            self.authorizer.facts().clone(),
            self.metrics.clone(),
            self.config.listener,
            listener_tx,
            shutdown_rx.clone(),
        )));

        // L2 subscribes to Redis' connection events before Redis connects.
        if let Some(l2) = &self.l2 {
            tasks.push(l2.spawn_maintenance(shutdown_rx.clone()));
        }
        if let Some(redis) = &self.redis {
            tasks.push(redis.spawn_connection(shutdown_rx.clone()));
        }
        // The JWKS file on a timer, so a removed key stops working within one
        // period even with no SIGHUP and no unknown kid to trigger a reread.
        // The period is the start-up configuration's; each tick rereads the
        // file of the keys in force (a reload may have replaced them).
        if let Some(period) = self.config.jwt.jwks_refresh() {
            let authorizer = self.authorizer.clone();
            let mut shutdown = shutdown_rx.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                    // A small local file, read off the async workers.
                    let jwt = authorizer.snapshot().authn.verifier().clone();
                    let _ = tokio::task::spawn_blocking(move || reload_jwks(&jwt, "timer")).await;
                }
            }));
        }
        // Key sets over HTTPS: fetched now, then refreshed by their own tasks.
        tasks.extend(self.config.jwt.spawn_key_refresh(&shutdown_rx));
        if self.authorizer.rate_limiter().is_some()
            || self.authorizer.failed_auth_limiter().is_some()
        {
            let authorizer = self.authorizer.clone();
            let mut shutdown = shutdown_rx.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                    if let Some(limiter) = authorizer.rate_limiter() {
                        limiter.forget_idle();
                    }
                    if let Some(limiter) = authorizer.failed_auth_limiter() {
                        limiter.forget_idle();
                    }
                }
            }));
        }

        // Started = LISTEN connected once and every issuer's keys fetched once:
        // from then on the sidecar decides, from cache if it must, through any
        // later outage (SPEC §5; a key set kept after a failed fetch). gRPC
        // health is NOT_SERVING until then; /readyz says what is degraded.
        let started = Arc::new(AtomicBool::new(false));
        let (reporter, health) = tonic_health::server::health_reporter();
        for service in ["", AUTHORIZATION_SERVICE] {
            reporter
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
        {
            let mut listener = listener_rx.clone();
            let mut shutdown = shutdown_rx.clone();
            let started = started.clone();
            let pool = self.store.pool().clone();
            let jwt = self.config.jwt.clone();
            let (warm, within) = (
                self.config.database.min_connections,
                self.config.database.acquire_timeout,
            );
            tasks.push(tokio::spawn(async move {
                // Ready once LISTEN is connected and the first Check would
                // not have to connect: the pool warms while LISTEN connects
                // (each connection is a TCP, TLS and auth handshake; one
                // after the other they doubled the cold start).
                // Postgres down at start: the warm-up gives up at the
                // acquire timeout; once LISTEN is in, warm again.
                let listening = async { listener.wait_for(|c| *c).await.is_ok() };
                let both = async {
                    let (connected, ()) = tokio::join!(listening, store::warm(&pool, warm, within));
                    if connected && pool.size() < warm {
                        store::warm(&pool, warm, within).await;
                    }
                    connected
                };
                tokio::select! {
                    connected = both => if !connected { return },
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                // ...and every issuer has keys: until its key set is fetched,
                // an issuer's tokens cannot be decided.
                let waiting = jwt.issuers_without_keys();
                if !waiting.is_empty() {
                    tracing::info!(issuers = ?waiting, "not ready until these issuers' key sets are fetched");
                    while !jwt.issuers_without_keys().is_empty() {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                            _ = shutdown.wait_for(|s| *s) => return,
                        }
                    }
                }
                started.store(true, Ordering::Release);
                for service in ["", AUTHORIZATION_SERVICE] {
                    reporter
                        .set_service_status(service, ServingStatus::Serving)
                        .await;
                }
            }));
        }

        // Both reflection versions: grpcurl speaks v1, grpc's Python client v1alpha.
        let reflection_v1 = reflection_builder()
            .build_v1()
            .map_err(std::io::Error::other)?;
        let reflection_v1alpha = reflection_builder()
            .build_v1alpha()
            .map_err(std::io::Error::other)?;

        let grpc_server = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(ExtAuthz::server(self.authorizer.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream_incoming(grpc),
                wait_true(shutdown_rx.clone()),
            );
        tasks.push(tokio::spawn(async move {
            if let Err(e) = grpc_server.await {
                tracing::error!(error = %e, "gRPC server failed");
            }
        }));

        // The admin service: its own listener, every call behind the token.
        // Reflection there lists the admin API only (its schema is public), in
        // both versions, like the Check port: grpcurl 1.8.6 (the one the
        // README's commands use) speaks only v1alpha.
        if let Some((listener, settings)) = admin {
            let admin_reflection = || {
                tonic_reflection::server::Builder::configure()
                    .include_reflection_service(false)
                    .register_encoded_file_descriptor_set(ADMIN_DESCRIPTOR)
                    .register_encoded_file_descriptor_set(
                        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                    )
                    .register_encoded_file_descriptor_set(
                        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                    )
            };
            let reflection_v1 = admin_reflection()
                .build_v1()
                .map_err(std::io::Error::other)?;
            let reflection_v1alpha = admin_reflection()
                .build_v1alpha()
                .map_err(std::io::Error::other)?;
            let admin_server = tonic::transport::Server::builder()
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(Admin::server(
                    self.authorizer.clone(),
                    listener_rx.clone(),
                    settings.token.clone(),
                ))
                .serve_with_incoming_shutdown(
                    tokio_stream_incoming(listener),
                    wait_true(shutdown_rx.clone()),
                );
            tracing::info!(admin_addr = ?admin_addr, token_file = %settings.token_file.display(), "admin service on its own listener (bearer token required)");
            tasks.push(tokio::spawn(async move {
                if let Err(e) = admin_server.await {
                    tracing::error!(error = %e, "admin gRPC server failed");
                }
            }));
        }

        let state = HttpState {
            metrics: self.metrics.clone(),
            listener: listener_rx.clone(),
            pool: self.store.pool().clone(),
            log_dropped,
            authorizer: self.authorizer.clone(),
            started,
            forward_auth: self.config.forward_auth.clone(),
        };
        if let Some(listener) = metrics {
            let server = axum::serve(listener, ops_router(state.clone()))
                .with_graceful_shutdown(wait_true(shutdown_rx.clone()));
            tasks.push(tokio::spawn(async move {
                if let Err(e) = server.await {
                    tracing::error!(error = %e, "metrics HTTP server failed");
                }
            }));
        }
        let http_server =
            axum::serve(http, router(state)).with_graceful_shutdown(wait_true(shutdown_rx));
        tasks.push(tokio::spawn(async move {
            if let Err(e) = http_server.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }));

        tracing::info!(%grpc_addr, %http_addr, metrics_addr = ?metrics_addr, routes = %self.config.routes_source, dry_run = self.config.decision.dry_run, "velro-authz serving");
        if let Some(t) = &self.config.tracing {
            tracing::info!(otlp_endpoint = %t.otlp_endpoint, sample_ratio = t.sample_ratio, service_name = %t.service_name, "decision traces on (OTLP/gRPC, parent-based sampling)");
        }
        let reloader = Arc::new(Reloader::new(
            self.authorizer.clone(),
            self.config,
            self.source,
            self.metrics.clone(),
        ));
        Ok(Running {
            grpc_addr,
            http_addr,
            metrics_addr,
            admin_addr,
            authorizer: self.authorizer,
            metrics: self.metrics,
            listener: listener_rx,
            reloader,
            traces: self.traces,
            shutdown: shutdown_tx,
            tasks,
        })
    }
}

/// Rereads the JWKS file and logs the outcome: kids only, never key material.
/// A timer reload that changed nothing logs at debug, so a quiet file stays
/// quiet.
fn reload_jwks(jwt: &JwtVerifier, trigger: &'static str) -> Result<JwksReload, Vec<String>> {
    let Some(path) = jwt.jwks_file().map(|p| p.display().to_string()) else {
        tracing::info!(
            trigger,
            "JWKS reload asked for, but no auth.jwt.jwks_file is configured"
        );
        return jwt.reload_jwks();
    };
    let result = jwt.reload_jwks();
    match &result {
        Ok(r) if r.changed() || trigger != "timer" => tracing::info!(
            trigger,
            %path,
            keys = r.keys,
            generation = r.generation,
            added = ?r.added,
            removed = ?r.removed,
            replaced = ?r.replaced,
            "JWKS reloaded"
        ),
        Ok(_) => tracing::debug!(trigger, %path, "JWKS reloaded, unchanged"),
        Err(problems) => tracing::warn!(
            trigger,
            %path,
            problems = ?problems,
            "JWKS reload failed; keeping the previous key set"
        ),
    }
    result
}

/// The decision steps as `config` sets them, over `facts`; the rate limiter
/// (when configured) shares limits through `redis` when given. One function for
/// the sidecar and for tests, so a test's authorizer is wired like the real one.
pub fn authorizer<S: FactSource>(
    config: &Config,
    facts: Arc<Facts<S>>,
    redis: Option<Arc<Redis>>,
    metrics: &Metrics,
) -> Authorizer<S> {
    let reload::Snapshot {
        routes,
        authn,
        settings,
    } = reload::snapshot(config);
    let authorizer = Authorizer::new(routes, authn, facts, settings, metrics.clone());
    let authorizer = match config.recent_decisions {
        0 => authorizer,
        n => authorizer.with_recent_decisions(RecentDecisions::new(n)),
    };
    let authorizer = match config.rate_limit {
        Some(limit) => {
            authorizer.with_rate_limiter(RateLimiter::new(limit, redis, metrics.clone()))
        }
        None => authorizer,
    };
    let authorizer = match &config.identity_token {
        Some(signer) => authorizer.with_identity_signer(signer.clone()),
        None => authorizer,
    };
    if config.failed_auth_per_minute > 0 {
        authorizer.with_failed_auth_limiter(FailedAuthLimiter::new(
            config.failed_auth_per_minute,
            metrics.clone(),
        ))
    } else {
        authorizer
    }
}

fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    // Both reflection protocols are listed explicitly so each version's
    // ListServices names both (the builder would otherwise add only its own).
    tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(REFLECTION_DESCRIPTOR)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

/// A gRPC listener's connections: `TCP_NODELAY`, each answer in one write
/// ([`OneWrite`]).
fn tokio_stream_incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<OneWrite>> {
    use tokio_stream::StreamExt as _;
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(|accepted| accepted.map(OneWrite))
}

async fn wait_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
