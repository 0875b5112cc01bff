//! HTTP listener: `/healthz` (liveness), `/readyz` (readiness), `/metrics`
//! (Prometheus text), the identity token's public key
//! ([`identity::JWKS_PATH`]), and the forward-auth doors of [`forward`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::authz::Authorizer;
use crate::breaker::CircuitState;
use crate::identity;
use crate::metrics::Metrics;
use crate::store::Store;

pub mod forward;

pub use forward::ForwardAuthSettings;

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// Exported metrics.
    pub metrics: Metrics,
    /// True while LISTEN is up (the sidecar hears every change).
    pub listener: watch::Receiver<bool>,
    /// For pool gauges.
    pub pool: PgPool,
    /// Dropped log lines, folded into a counter at scrape time.
    pub log_dropped: Option<Arc<dyn Fn() -> u64 + Send + Sync>>,
    /// Decides the forward-auth requests (the same core as gRPC); its
    /// dependency states feed readiness.
    pub authorizer: Arc<Authorizer<Store>>,
    /// True once LISTEN has connected the first time.
    pub started: Arc<AtomicBool>,
    /// Where `/v1/auth` reads the original request.
    pub forward_auth: ForwardAuthSettings,
}

/// The router of `http_addr`: the forward-auth endpoints plus [`ops_router`]'s;
/// tests call it in-process or through a socket.
pub fn router(state: HttpState) -> Router {
    let forward = forward::router(state.authorizer.clone(), state.forward_auth.clone());
    ops_router(state).merge(forward)
}

/// `/healthz`, `/readyz`, `/metrics` and the identity JWKS alone: also served
/// on `metrics_addr`, where nothing can ask for a decision.
pub fn ops_router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(identity::JWKS_PATH, get(identity_jwks))
        .with_state(state)
}

/// The public key of `x-velro-identity` as a JWKS, for the applications that
/// verify it; 404 when no identity token is configured.
async fn identity_jwks(State(state): State<HttpState>) -> Response {
    match state.authorizer.identity_signer() {
        Some(signer) => (
            [
                (header::CONTENT_TYPE, "application/jwk-set+json"),
                (header::CACHE_CONTROL, "max-age=300"),
            ],
            signer.jwks().to_owned(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":"not found","reason":"identity_token_off"}"#,
        )
            .into_response(),
    }
}

/// Ready once the sidecar has heard LISTEN connect: from then on it decides.
/// "degraded" says what is away: Redis (L1 + Postgres answer), or the feed
/// (cached facts untrusted: decisions read through to Postgres, and fail closed
/// if it cannot answer). 503 only while starting.
async fn readyz(State(state): State<HttpState>) -> Response {
    let listener = *state.listener.borrow();
    let facts = state.authorizer.facts();
    let postgres = listener && facts.breaker().state() == CircuitState::Closed;
    let redis = facts.l2().map(|l2| l2.up());
    let started = state.started.load(Ordering::Acquire);
    // live: proven within freshness.max_silence_ms; silent: connected but
    // unproven for longer (cached facts untrusted); down: the LISTEN
    // connection is lost.
    let feed = if facts.freshness().trusted() {
        "live"
    } else if listener {
        "silent"
    } else {
        "down"
    };
    let label = if !started {
        "starting"
    } else if postgres && redis != Some(false) && feed == "live" {
        "ok"
    } else {
        "degraded"
    };
    let body = serde_json::json!({
        "ready": started,
        "status": label,
        "postgres": postgres,
        "redis": redis,
        "listener_connected": listener,
        "feed": feed,
    });
    let status = if started {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let m = &state.metrics;
    let size = state.pool.size() as i64;
    let idle = state.pool.num_idle() as i64;
    m.db_pool_connections.with_label_values(&["idle"]).set(idle);
    m.db_pool_connections
        .with_label_values(&["in_use"])
        .set(size - idle);
    if let Some(dropped) = &state.log_dropped {
        let total = dropped();
        let seen = m.decision_log_dropped.get();
        if total > seen {
            m.decision_log_dropped.inc_by(total - seen);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.render(),
    )
        .into_response()
}
