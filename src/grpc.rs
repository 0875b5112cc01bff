//! gRPC adapters: Envoy `envoy.service.auth.v3.Authorization/Check`, our admin
//! service, health and reflection. The only place that knows protobuf and picks
//! gRPC codes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

use crate::authz::{Authorizer, AuthzRequest, CheckError, Decision, Deny, Outcome};
use crate::facts::FactSource;

/// Generated admin API (`proto/velro/authz/admin/v1/admin.proto`).
pub mod admin_pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("velro.authz.admin.v1");
}

/// Descriptor set served by reflection: ext_authz v3 and the admin API, with imports.
pub const REFLECTION_DESCRIPTOR: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/reflection_descriptor.bin"));

/// Fully-qualified name of Envoy's service, for health status.
pub const AUTHORIZATION_SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// Prefix of the identity headers we own.
const IDENTITY_PREFIX: &str = "x-velro-";
const DECISION_ID: &str = "x-velro-decision-id";

/// gRPC codes (google.rpc.Code) used in CheckResponse.status.
mod code {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const NOT_FOUND: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// The ext_authz service.
pub struct ExtAuthz<S> {
    authorizer: Arc<Authorizer<S>>,
}

impl<S: FactSource> ExtAuthz<S> {
    /// A tonic service deciding with `authorizer`.
    pub fn server(authorizer: Arc<Authorizer<S>>) -> AuthorizationServer<ExtAuthz<S>> {
        AuthorizationServer::new(ExtAuthz { authorizer })
    }
}

/// Request headers as Envoy sent them, lower-case names.
struct Headers(HashMap<String, String>);

impl Headers {
    /// Envoy sends `headers`, or `header_map` when `encode_raw_headers` is on.
    fn from_check(req: &CheckRequest) -> Option<(String, String, Headers)> {
        let http = req.attributes.as_ref()?.request.as_ref()?.http.as_ref()?;
        let mut headers = http.headers.clone();
        if let Some(map) = &http.header_map {
            for h in &map.headers {
                let value = if h.raw_value.is_empty() {
                    h.value.clone()
                } else {
                    String::from_utf8_lossy(&h.raw_value).into_owned()
                };
                headers
                    .entry(h.key.to_ascii_lowercase())
                    .and_modify(|v| {
                        v.push(',');
                        v.push_str(&value);
                    })
                    .or_insert(value);
            }
        }
        Some((http.method.clone(), http.path.clone(), Headers(headers)))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn largest(&self) -> usize {
        self.0.values().map(String::len).max().unwrap_or(0)
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// Whether `name` is in our `x-velro-` namespace, in any letter case.
pub fn is_velro_header(name: &str) -> bool {
    name.len() >= IDENTITY_PREFIX.len()
        && name.as_bytes()[..IDENTITY_PREFIX.len()].eq_ignore_ascii_case(IDENTITY_PREFIX.as_bytes())
}

/// The client-sent `x-velro-*` header names (from `client`) that the identity
/// headers in `ours` do not overwrite: the proxy must remove them so nothing
/// spoofed reaches the upstream. Each name once, in the order first seen.
/// Shared by the gRPC and HTTP adapters.
pub fn headers_to_remove<'a>(
    client: impl IntoIterator<Item = &'a str>,
    ours: &[(&'static str, String)],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in client {
        if is_velro_header(name)
            && !ours.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
            && !out.iter().any(|seen| seen.eq_ignore_ascii_case(name))
        {
            out.push(name.to_owned());
        }
    }
    out
}

#[tonic::async_trait]
impl<S: FactSource> Authorization for ExtAuthz<S> {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let deadline = grpc_timeout(
            request
                .metadata()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok()),
        );
        let Some((method, path, headers)) = Headers::from_check(request.get_ref()) else {
            return Err(Status::invalid_argument(
                "CheckRequest has no attributes.request.http",
            ));
        };
        let req = AuthzRequest {
            method: &method,
            path: &path,
            authorization: headers.get("authorization"),
            api_key: headers.get("x-api-key"),
            largest_header: headers.largest(),
        };
        match self.authorizer.check(&req, deadline).await {
            Ok(decision) => Ok(Response::new(check_response(&decision, &headers))),
            Err(e) => Err(cannot_decide(&e)),
        }
    }
}

/// "Cannot decide" is an RPC error, so Envoy's `failure_mode_allow` and
/// `status_on_error` apply; the message carries no internal detail.
pub fn cannot_decide(e: &CheckError) -> Status {
    match e {
        CheckError::Unavailable(_) => {
            Status::unavailable("cannot decide: authorization data unavailable")
        }
        CheckError::DeadlineExceeded => {
            Status::deadline_exceeded("cannot decide: deadline exceeded")
        }
    }
}

fn header(key: &str, value: impl Into<String>) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.into(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn string_value(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

/// Identity headers for the upstream, in (name, value) form; shared with HTTP adapters.
pub fn identity_headers(decision: &Decision) -> Vec<(&'static str, String)> {
    let mut out = vec![(DECISION_ID, decision.decision_id.clone())];
    if let Outcome::Allow(Some(identity)) = &decision.outcome {
        out.push(("x-velro-user-id", identity.user_id.to_string()));
        out.push(("x-velro-auth", identity.auth.as_str().to_owned()));
        if let Some(role) = identity.role {
            out.push(("x-velro-role", role.as_str().to_owned()));
        }
    }
    out
}

/// The JSON body of a deny: `{"error","reason","request_id"}`.
pub fn deny_body(deny: &Deny, decision_id: &str) -> String {
    deny_json(deny, decision_id).to_string()
}

/// [`deny_body`] as a JSON value (the OPA adapter nests it in its result).
pub fn deny_json(deny: &Deny, decision_id: &str) -> serde_json::Value {
    let error = match deny.status {
        400 => "bad request",
        401 => "unauthenticated",
        403 => "forbidden",
        404 => "not found",
        429 => "too many requests",
        _ => "denied",
    };
    serde_json::json!({ "error": error, "reason": deny.reason, "request_id": decision_id })
}

/// Headers of a deny answer, in (name, value) form; shared with HTTP adapters:
/// content type, decision id, on 401s the challenge, and on 429s `retry-after`
/// with the `ratelimit-*` headers (IETF draft-ietf-httpapi-ratelimit-headers).
pub fn deny_headers(decision: &Decision, deny: &Deny) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("content-type", "application/json".to_owned()),
        (DECISION_ID, decision.decision_id.clone()),
    ];
    if deny.challenge {
        out.push(("www-authenticate", challenge(deny)));
    }
    if let Some(rl) = decision.rate_limit.filter(|_| deny.status == 429) {
        out.push(("retry-after", rl.retry_after_secs.to_string()));
        out.push(("ratelimit-limit", rl.limit.to_string()));
        out.push(("ratelimit-remaining", rl.remaining.to_string()));
        out.push(("ratelimit-reset", rl.reset_secs.to_string()));
    }
    out
}

/// `www-authenticate` for a 401 (RFC 6750).
pub fn challenge(deny: &Deny) -> String {
    match deny.reason {
        "missing_credentials" => "Bearer realm=\"velro\"".to_owned(),
        reason => format!(
            "Bearer realm=\"velro\", error=\"invalid_token\", error_description=\"{reason}\""
        ),
    }
}

fn check_response(decision: &Decision, headers: &Headers) -> CheckResponse {
    let mut metadata = HashMap::from([(
        "decision_id".to_owned(),
        string_value(&decision.decision_id),
    )]);
    if let Some(route) = &decision.route {
        metadata.insert("route".to_owned(), string_value(route.as_ref()));
    }
    match &decision.outcome {
        Outcome::Allow(_) => {
            let ours = identity_headers(decision);
            let headers_to_remove = headers_to_remove(headers.names(), &ours);
            if let Some(deny) = &decision.dry_run_deny {
                metadata.insert("dry_run_deny".to_owned(), string_value(deny.reason));
            }
            CheckResponse {
                status: Some(rpc::Status {
                    code: code::OK,
                    ..Default::default()
                }),
                dynamic_metadata: Some(Struct { fields: metadata }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: ours.iter().map(|(k, v)| header(k, v.clone())).collect(),
                    headers_to_remove,
                    response_headers_to_add: vec![header(
                        DECISION_ID,
                        decision.decision_id.clone(),
                    )],
                    ..Default::default()
                })),
            }
        }
        Outcome::Deny(deny) => {
            metadata.insert("reason".to_owned(), string_value(deny.reason));
            let out_headers = deny_headers(decision, deny)
                .into_iter()
                .map(|(k, v)| header(k, v))
                .collect();
            let grpc_code = match deny.status {
                400 => code::INVALID_ARGUMENT,
                401 => code::UNAUTHENTICATED,
                404 => code::NOT_FOUND,
                429 => code::RESOURCE_EXHAUSTED,
                _ => code::PERMISSION_DENIED,
            };
            CheckResponse {
                status: Some(rpc::Status {
                    code: grpc_code,
                    message: deny.reason.to_owned(),
                    details: Vec::new(),
                }),
                dynamic_metadata: Some(Struct { fields: metadata }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    // envoy.type.v3.StatusCode values are the HTTP status numbers.
                    status: Some(HttpStatus {
                        code: i32::from(deny.status),
                    }),
                    headers: out_headers,
                    body: deny_body(deny, &decision.decision_id),
                })),
            }
        }
    }
}

/// Parses a `grpc-timeout` header (`<1-8 digits><H|M|S|m|u|n>`); anything else is
/// ignored (the configured budget still applies).
pub fn grpc_timeout(value: Option<&str>) -> Option<Duration> {
    let value = value?;
    if !value.is_ascii() || value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
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

/// Renders an explanation for the admin API and the CLI.
pub fn explain_response(
    explanation: crate::authz::Explanation,
) -> Result<admin_pb::ExplainResponse, Status> {
    let decision = explanation.decision.map_err(|e| cannot_decide(&e))?;
    let (allowed, http_status, reason) = match &decision.outcome {
        Outcome::Allow(_) => (true, 200, decision.dry_run_deny.map_or("ok", |d| d.reason)),
        Outcome::Deny(d) => (false, u32::from(d.status), d.reason),
    };
    let headers = if allowed {
        identity_headers(&decision)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    } else {
        HashMap::new()
    };
    Ok(admin_pb::ExplainResponse {
        allowed,
        http_status,
        reason: reason.to_owned(),
        decision_id: decision.decision_id.clone(),
        route: decision.route.as_deref().unwrap_or("").to_owned(),
        principal: decision
            .principal
            .map(|p| format!("user {} via {}", p.user_id, p.auth.as_str()))
            .unwrap_or_default(),
        role: decision
            .role
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default(),
        facts: explanation
            .facts
            .into_iter()
            .map(|f| admin_pb::FactUse {
                kind: f.kind.to_owned(),
                key: f.key,
                source: f.source.as_str().to_owned(),
                value: f.value,
            })
            .collect(),
        headers,
    })
}

#[tonic::async_trait]
impl<S: FactSource> admin_pb::admin_server::Admin for Admin<S> {
    async fn explain(
        &self,
        request: Request<admin_pb::ExplainRequest>,
    ) -> Result<Response<admin_pb::ExplainResponse>, Status> {
        let r = request.into_inner();
        let headers: HashMap<String, String> = r
            .headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let req = AuthzRequest {
            method: &r.method,
            path: &r.path,
            authorization: headers.get("authorization").map(String::as_str),
            api_key: headers.get("x-api-key").map(String::as_str),
            largest_header: headers.values().map(String::len).max().unwrap_or(0),
        };
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

    #[test]
    fn grpc_timeout_parses_units_and_rejects_garbage() {
        assert_eq!(grpc_timeout(Some("100m")), Some(Duration::from_millis(100)));
        assert_eq!(grpc_timeout(Some("2S")), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout(Some("5u")), Some(Duration::from_micros(5)));
        for bad in ["", "m", "10x", "-1m", "123456789m", "1.5S"] {
            assert_eq!(grpc_timeout(Some(bad)), None, "{bad}");
        }
    }

    #[test]
    fn headers_to_remove_lists_foreign_velro_names_once() {
        let ours = vec![
            (DECISION_ID, "d".to_owned()),
            ("x-velro-user-id", "u".to_owned()),
        ];
        let client = [
            "x-velro-user-id",
            "X-Velro-Admin",
            "x-velro-admin",
            "authorization",
            "x-velr",
            "x-velro-",
        ];
        assert_eq!(
            headers_to_remove(client, &ours),
            vec!["X-Velro-Admin".to_owned(), "x-velro-".to_owned()]
        );
        assert!(is_velro_header("X-VELRO-ROLE"));
        assert!(!is_velro_header("x-velroo"));
        assert!(!is_velro_header("é-velro-x"));
    }

    proptest::proptest! {
        #[test]
        fn grpc_timeout_never_panics(s in ".*") {
            let _ = grpc_timeout(Some(&s));
        }
    }
}
