//! gRPC adapters: Envoy `envoy.service.auth.v3.Authorization/Check` here, our
//! admin service in [`admin`]. The only place that knows protobuf; the codes
//! and headers come from [`crate::answer`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
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

use crate::answer::{self, DECISION_ID, DenyReason, Outcome, rpc_code};
use crate::authz::{Authorizer, CheckError, Decision, Headers};
use crate::facts::FactSource;

pub mod admin;
pub mod socket;

pub use admin::{Admin, admin_pb};

/// Descriptor set served by reflection on the Check port: ext_authz v3, with imports.
pub const REFLECTION_DESCRIPTOR: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/reflection_descriptor.bin"));

/// Fully-qualified name of Envoy's service, for health status.
pub const AUTHORIZATION_SERVICE: &str = "envoy.service.auth.v3.Authorization";

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
        // With tracing on, Envoy's own span of this call is the closer parent:
        // its gRPC client puts that context in the call's metadata.
        let envoy_span = if self.authorizer.traced() {
            trace_metadata(request.metadata())
        } else {
            None
        };
        let check = request.into_inner();
        let client_addr = client_addr(&check);
        let Some((method, path, headers)) = from_check(check) else {
            return Err(Status::invalid_argument(
                "CheckRequest has no attributes.request.http",
            ));
        };
        let mut req = headers.request(&method, &path, &[]);
        req.client_addr = client_addr;
        if let Some(context) = &envoy_span {
            req.trace_headers = Some(context);
        }
        match self.authorizer.check(&req, deadline).await {
            Ok(decision) => Ok(Response::new(check_response(decision, &headers))),
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
        CheckError::Overloaded => Status::unavailable("cannot decide: overloaded"),
        CheckError::IdentityToken(_) => {
            Status::internal("cannot decide: identity token not signed")
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

/// The method, path and headers of a CheckRequest, moved out of it (no copy
/// of the strings). Envoy sends `headers`, or `header_map` when
/// `encode_raw_headers` is on.
fn from_check(req: CheckRequest) -> Option<(String, String, Headers)> {
    let http = req.attributes?.request?.http?;
    let mut headers = Headers::from_envoy(http.headers);
    if let Some(map) = &http.header_map {
        for h in &map.headers {
            let value = if h.raw_value.is_empty() {
                std::borrow::Cow::Borrowed(h.value.as_str())
            } else {
                String::from_utf8_lossy(&h.raw_value)
            };
            headers.add(&h.key, &value);
        }
    }
    Some((http.method, http.path, headers))
}

/// The W3C trace context of the Check call itself (`traceparent`, and
/// `tracestate` if any), which Envoy's gRPC client sends as metadata when
/// it traces; `None` without a `traceparent` there.
fn trace_metadata(metadata: &tonic::metadata::MetadataMap) -> Option<Headers> {
    let traceparent = metadata.get("traceparent")?.to_str().ok()?;
    let mut context = Headers::from_pairs([("traceparent", traceparent)]);
    if let Some(state) = metadata.get("tracestate").and_then(|v| v.to_str().ok()) {
        context.add("tracestate", state);
    }
    Some(context)
}

/// The downstream client's address: `attributes.source.address`, which Envoy
/// fills from the connection (or, with `use_remote_address` and trusted hops,
/// from `x-forwarded-for` as it computed it) — never from a header the client
/// controls. Not an IP (a pipe, an internal listener) → `None`.
pub fn client_addr(req: &CheckRequest) -> Option<IpAddr> {
    let address = req.attributes.as_ref()?.source.as_ref()?.address.as_ref()?;
    match address.address.as_ref()? {
        AddressKind::SocketAddress(socket) => socket.address.parse().ok(),
        _ => None,
    }
}

/// The answer, built from `decision` by moving its strings into the
/// protobuf types (the decision id is needed three times: metadata, the
/// upstream header and the client's header; two copies, one move).
fn check_response(decision: Decision, headers: &Headers) -> CheckResponse {
    let mut metadata = HashMap::with_capacity(4);
    if let Some(route) = &decision.route {
        metadata.insert("route".to_owned(), string_value(route.as_ref()));
    }
    match &decision.outcome {
        Outcome::Allow(_) => {
            let ours = decision.identity_headers();
            let headers_to_remove = answer::headers_to_remove(headers.names(), &ours);
            if let Some(reason) = &decision.dry_run_deny {
                metadata.insert("dry_run_deny".to_owned(), string_value(reason.code()));
            }
            let decision_id = decision.decision_id;
            metadata.insert("decision_id".to_owned(), string_value(decision_id.clone()));
            CheckResponse {
                status: Some(rpc::Status {
                    code: rpc_code::OK,
                    ..Default::default()
                }),
                dynamic_metadata: Some(Struct { fields: metadata }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: ours.into_iter().map(|(k, v)| header(k, v)).collect(),
                    headers_to_remove,
                    response_headers_to_add: vec![header(DECISION_ID, decision_id)],
                    ..Default::default()
                })),
            }
        }
        Outcome::Deny(reason) => {
            let reason: DenyReason = *reason;
            metadata.insert("reason".to_owned(), string_value(reason.code()));
            metadata.insert(
                "decision_id".to_owned(),
                string_value(&decision.decision_id),
            );
            let out_headers = decision
                .deny_headers(reason)
                .into_iter()
                .map(|(k, v)| header(k, v))
                .collect();
            CheckResponse {
                status: Some(rpc::Status {
                    code: reason.rpc_code(),
                    message: reason.code().to_owned(),
                    details: Vec::new(),
                }),
                dynamic_metadata: Some(Struct { fields: metadata }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    // envoy.type.v3.StatusCode values are the HTTP status numbers.
                    status: Some(HttpStatus {
                        code: i32::from(reason.http_status()),
                    }),
                    headers: out_headers,
                    body: answer::deny_body(reason, &decision.decision_id),
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

#[cfg(test)]
mod tests;
