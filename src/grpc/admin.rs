//! The admin service (`proto/velro/authz/admin/v1/admin.proto`): explain a
//! decision, cache stats, flush.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::cannot_decide;
use crate::authz::{Authorizer, Explanation, Headers};
use crate::facts::FactSource;

/// Generated admin API.
pub mod admin_pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("velro.authz.admin.v1");
}

/// The admin service: explain, cache stats, flush.
pub struct Admin<S> {
    authorizer: Arc<Authorizer<S>>,
    listener: tokio::sync::watch::Receiver<bool>,
}

impl<S: FactSource> Admin<S> {
    /// A tonic service over `authorizer`.
    pub fn server(
        authorizer: Arc<Authorizer<S>>,
        listener: tokio::sync::watch::Receiver<bool>,
    ) -> admin_pb::admin_server::AdminServer<Admin<S>> {
        admin_pb::admin_server::AdminServer::new(Admin {
            authorizer,
            listener,
        })
    }
}

/// The admin protobuf form of an explanation.
fn explain_response(explanation: Explanation) -> Result<admin_pb::ExplainResponse, Status> {
    let summary = explanation.summary().map_err(|e| cannot_decide(&e))?;
    Ok(admin_pb::ExplainResponse {
        allowed: summary.allowed,
        http_status: u32::from(summary.status),
        reason: summary.reason.to_owned(),
        decision_id: summary.decision_id,
        route: summary.route.unwrap_or_default(),
        principal: summary.principal.unwrap_or_default(),
        role: summary.role.unwrap_or_default().to_owned(),
        facts: summary
            .facts
            .into_iter()
            .map(|f| admin_pb::FactUse {
                kind: f.kind.to_owned(),
                key: f.key,
                source: f.source.as_str().to_owned(),
                value: f.value,
            })
            .collect(),
        headers: summary
            .headers
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    })
}

#[tonic::async_trait]
impl<S: FactSource> admin_pb::admin_server::Admin for Admin<S> {
    async fn explain(
        &self,
        request: Request<admin_pb::ExplainRequest>,
    ) -> Result<Response<admin_pb::ExplainResponse>, Status> {
        let r = request.into_inner();
        let headers = Headers::from_pairs(r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let req = headers.request(&r.method, &r.path, &[]);
        explain_response(self.authorizer.explain(&req).await).map(Response::new)
    }

    async fn cache_stats(
        &self,
        _request: Request<admin_pb::CacheStatsRequest>,
    ) -> Result<Response<admin_pb::CacheStatsResponse>, Status> {
        let facts = self.authorizer.facts();
        Ok(Response::new(admin_pb::CacheStatsResponse {
            fact_entries: facts.entry_count(),
            credential_entries: self.authorizer.credential_entries(),
            epoch: facts.epoch(),
            listener_connected: *self.listener.borrow(),
            redis_circuit: facts
                .l2()
                .map_or("off", |l2| l2.circuit().as_str())
                .to_owned(),
            redis_trusted: facts.l2().is_some_and(|l2| l2.usable()),
            postgres_circuit: facts.breaker().state().as_str().to_owned(),
            rate_limited_principals: self
                .authorizer
                .rate_limiter()
                .map_or(0, |r| r.tracked() as u64),
        }))
    }

    async fn flush(
        &self,
        _request: Request<admin_pb::FlushRequest>,
    ) -> Result<Response<admin_pb::FlushResponse>, Status> {
        let epoch = self.authorizer.facts().flush();
        self.authorizer.flush_credentials();
        tracing::info!(epoch, "caches flushed by admin request");
        Ok(Response::new(admin_pb::FlushResponse { epoch }))
    }
}
