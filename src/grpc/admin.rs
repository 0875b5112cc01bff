//! The admin service (`proto/velro/authz/admin/v1/admin.proto`): explain a
//! decision (live, or a past one by its id), cache stats, flush.
//!
//! Explain shows the facts behind any answer, a 404 included (the existence
//! oracle the data path refuses to be), and Flush voids every sidecar's Redis
//! tier. So the service is off unless configured, listens on an address of
//! its own (loopback by default), never on the Check port, and every call
//! must carry the operator's token: `authorization: Bearer <token>`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use super::cannot_decide;
use crate::authz::recent::parse_id;
use crate::authz::{Authorizer, Explanation, Headers, Summary};
use crate::facts::FactSource;

/// Generated admin API.
pub mod admin_pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("velro.authz.admin.v1");
}

/// Descriptor set served by reflection on the admin listener (the admin API only).
pub const ADMIN_DESCRIPTOR: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/admin_descriptor.bin"));

/// Fully-qualified name of the admin service.
pub const ADMIN_SERVICE: &str = "velro.authz.admin.v1.Admin";

/// Where and behind what the admin service is served (`admin.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct AdminSettings {
    /// Its own listener (`admin.addr`, default 127.0.0.1:9192).
    pub addr: SocketAddr,
    /// The bearer token every call must present.
    pub token: AdminToken,
    /// Where the token was read from, for the start-up log line.
    pub token_file: PathBuf,
}

/// The admin bearer token, kept only as its SHA-256: compared in constant
/// time (digests of equal length, so not even the length leaks), never
/// printed.
#[derive(Clone, PartialEq)]
pub struct AdminToken([u8; 32]);

impl AdminToken {
    /// The shortest token accepted.
    pub const MIN_LEN: usize = 32;

    /// From the token's bytes (read at start from `admin.token_file`).
    pub fn new(token: &[u8]) -> AdminToken {
        AdminToken(Sha256::digest(token).into())
    }

    /// True when `presented` is the token.
    pub fn verify(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        bool::from(digest.ct_eq(&self.0))
    }

    /// Lets a request through only with `authorization: Bearer <token>`;
    /// anything else is UNAUTHENTICATED, and says nothing about the token.
    pub fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim_start().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim_start())
            });
        match presented {
            Some(token) if self.verify(token.as_bytes()) => Ok(request),
            _ => Err(Status::unauthenticated(
                "admin token required: authorization: Bearer <admin.token_file>",
            )),
        }
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

impl tonic::service::Interceptor for AdminToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(request)
    }
}

/// The admin service behind its token check.
pub type GuardedAdmin<S> =
    InterceptedService<admin_pb::admin_server::AdminServer<Admin<S>>, AdminToken>;

/// The admin service: explain, cache stats, flush.
pub struct Admin<S> {
    authorizer: Arc<Authorizer<S>>,
    listener: tokio::sync::watch::Receiver<bool>,
}

impl<S: FactSource> Admin<S> {
    /// A tonic service over `authorizer`, every call checked against `token`.
    pub fn server(
        authorizer: Arc<Authorizer<S>>,
        listener: tokio::sync::watch::Receiver<bool>,
        token: AdminToken,
    ) -> GuardedAdmin<S> {
        let service = admin_pb::admin_server::AdminServer::new(Admin {
            authorizer,
            listener,
        });
        InterceptedService::new(service, token)
    }
}

/// The admin protobuf form of an explanation.
fn explain_response(explanation: Explanation) -> Result<admin_pb::ExplainResponse, Status> {
    let summary = explanation.summary().map_err(|e| cannot_decide(&e))?;
    Ok(summary_response(&summary))
}

/// The admin protobuf form of a summary, live or past.
fn summary_response(summary: &Summary) -> admin_pb::ExplainResponse {
    admin_pb::ExplainResponse {
        allowed: summary.allowed,
        http_status: u32::from(summary.status),
        reason: summary.reason.to_owned(),
        decision_id: summary.decision_id.clone(),
        route: summary.route.clone().unwrap_or_default(),
        principal: summary
            .principal
            .as_ref()
            .map(|p| p.line())
            .unwrap_or_default(),
        role: summary.role.unwrap_or_default().to_owned(),
        facts: summary
            .facts
            .iter()
            .map(|f| admin_pb::FactUse {
                kind: f.kind().to_owned(),
                key: f.key_text(),
                source: f.source.as_str().to_owned(),
                value: f.value_json().to_string(),
            })
            .collect(),
        headers: summary
            .headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        json: summary.to_json().to_string(),
        time: summary.time.map(|t| t.to_rfc3339()).unwrap_or_default(),
    }
}

/// A past decision by its id, from the recent decisions kept.
fn past_decision<S: FactSource>(
    authorizer: &Authorizer<S>,
    r: &admin_pb::ExplainRequest,
) -> Result<admin_pb::ExplainResponse, Status> {
    if !(r.method.is_empty() && r.path.is_empty() && r.headers.is_empty()) {
        return Err(Status::invalid_argument(
            "decision_id explains a past decision: leave method, path and headers empty",
        ));
    }
    if parse_id(&r.decision_id).is_none() {
        return Err(Status::invalid_argument(
            "decision_id: 32 hex digits, as in x-velro-decision-id",
        ));
    }
    let Some(recent) = authorizer.recent_decisions() else {
        return Err(Status::failed_precondition(
            "past decisions are not kept (explain.recent_decisions: 0)",
        ));
    };
    match recent.get(&r.decision_id) {
        Some(recorded) => Ok(summary_response(&recorded.summary())),
        None => Err(Status::not_found(format!(
            "decision {} is not among the {} most recent recorded (every deny, and the allows the decision log sampled)",
            r.decision_id,
            recent.capacity()
        ))),
    }
}

#[tonic::async_trait]
impl<S: FactSource> admin_pb::admin_server::Admin for Admin<S> {
    async fn explain(
        &self,
        request: Request<admin_pb::ExplainRequest>,
    ) -> Result<Response<admin_pb::ExplainResponse>, Status> {
        let r = request.into_inner();
        if !r.decision_id.is_empty() {
            return past_decision(&self.authorizer, &r).map(Response::new);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "admin-token-0123456789abcdef0123456789";

    fn with_auth(value: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut()
            .insert("authorization", value.parse().expect("ascii"));
        r
    }

    #[test]
    fn admin_token_admits_only_the_bearer_token() {
        let token = AdminToken::new(TOKEN.as_bytes());
        assert!(token.check(with_auth(&format!("Bearer {TOKEN}"))).is_ok());
        assert!(token.check(with_auth(&format!("bearer  {TOKEN}"))).is_ok());
        for bad in [
            String::new(),
            TOKEN.to_owned(),
            format!("Basic {TOKEN}"),
            format!("Bearer {TOKEN}x"),
            format!("Bearer {}", &TOKEN[1..]),
            "Bearer ".to_owned(),
        ] {
            let status = token.check(with_auth(&bad)).expect_err(&bad);
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(!status.message().contains(TOKEN));
        }
        let status = token.check(Request::new(())).expect_err("no header");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(format!("{token:?}"), "AdminToken(***)");
    }
}
