//! HTTP listener: `/healthz` (liveness), `/readyz` (readiness), `/metrics`
//! (Prometheus text), and the forward-auth endpoints of [`crate::forward`].

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::authz::Authorizer;
use crate::config::ForwardAuthConfig;
use crate::metrics::Metrics;
use crate::store::Store;

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
    /// Decides the forward-auth requests (the same core as gRPC).
    pub authorizer: Arc<Authorizer<Store>>,
    /// Where `/v1/auth` reads the original request.
    pub forward_auth: ForwardAuthConfig,
}

/// The router; tests call it in-process or through a socket.
pub fn router(state: HttpState) -> Router {
    let forward = crate::forward::router(state.authorizer.clone(), state.forward_auth.clone());
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(forward)
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let listener = *state.listener.borrow();
    let body = serde_json::json!({ "ready": listener, "listener_connected": listener, "postgres": listener });
    let status = if listener {
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
