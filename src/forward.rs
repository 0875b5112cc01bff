//! HTTP forward-auth adapters on the HTTP port. They decide with the same core
//! as gRPC ext_authz ([`Authorizer::check`]) and differ only in how the proxy
//! describes the original request and reads the answer:
//!
//! | endpoint | proxy | original request |
//! |---|---|---|
//! | `ANY /v1/check/<path>` | Envoy `http_service` (`path_prefix: /v1/check`) | this request's method, the target after the prefix, its headers |
//! | `ANY /v1/auth` | nginx `auth_request`, Traefik `forwardAuth` | method and URI from headers ([`original`]), its headers |
//! | `POST /v1/data/<policy>` | Kong Gateway `opa` plugin, OPA clients | the `input.request.http` JSON ([`opa`]) |
//!
//! This module is the only place that picks the HTTP statuses of these answers;
//! the parsers live in the submodules and are pure.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::authz::{Authorizer, AuthzRequest, CheckError, Decision, Deny, Outcome};
use crate::config::ForwardAuthConfig;
use crate::facts::FactSource;
use crate::grpc::{deny_body, deny_headers, headers_to_remove, identity_headers};

pub mod opa;
pub mod original;

#[cfg(test)]
mod tests;

/// Prefix Envoy's `http_service` puts before the original path.
pub const CHECK_PREFIX: &str = "/v1/check";

/// Largest OPA request body read (`POST /v1/data/...`); larger → 413.
pub const OPA_MAX_BODY: usize = 64 * 1024;

/// Response header telling Envoy which request headers to remove before the
/// request goes upstream (ext_authz `http_service`).
pub const ENVOY_HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// Request header by which the shipped nginx config selects the nginx answer
/// shape on `/v1/auth` (value `nginx`); without it the answer carries the true
/// status, as Traefik passes it to the client as is.
pub const PROXY_MODE: &str = "x-velro-proxy";

/// nginx mode: the true status of a deny (the answer itself is 401 or 403).
pub const NGINX_STATUS: &str = "x-velro-status";

/// nginx mode: the JSON deny body, which nginx drops from `auth_request` answers.
pub const NGINX_BODY: &str = "x-velro-body";

/// nginx mode, on allow: client-sent `x-velro-*` names nginx cannot strip by
/// pattern (for its access log; see `nginx/README.md`).
pub const NGINX_HEADERS_TO_REMOVE: &str = "x-velro-headers-to-remove";

/// What the handlers share.
pub struct Forward<S> {
    /// The decision core, shared with the gRPC adapter.
    authorizer: Arc<Authorizer<S>>,
    /// Where `/v1/auth` reads nginx's description of the original request.
    config: Arc<ForwardAuthConfig>,
}

impl<S> Clone for Forward<S> {
    fn clone(&self) -> Self {
        Forward {
            authorizer: self.authorizer.clone(),
            config: self.config.clone(),
        }
    }
}

/// The forward-auth routes, ready to merge into the HTTP router.
pub fn router<S: FactSource>(authorizer: Arc<Authorizer<S>>, config: ForwardAuthConfig) -> Router {
    let state = Forward {
        authorizer,
        config: Arc::new(config),
    };
    Router::new()
        .route(CHECK_PREFIX, any(envoy_check::<S>))
        .route("/v1/check/", any(envoy_check::<S>))
        .route("/v1/check/{*original}", any(envoy_check::<S>))
        .route("/v1/auth", any(forward_auth::<S>))
        .route("/v1/data", post(opa_data::<S>))
        .route("/v1/data/{*policy}", post(opa_data::<S>))
        .with_state(state)
}

/// The original request's headers: lower-case names, repeated headers joined
/// with `,` as Envoy joins them (so two `Authorization` headers are
/// `invalid_token` in the core, as over gRPC).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Headers(HashMap<String, String>);

impl Headers {
    /// From an HTTP request's headers; values that are not UTF-8 are kept lossily
    /// (the core refuses them as credentials anyway).
    pub fn from_map(map: &HeaderMap) -> Headers {
        let mut out = Headers::default();
        for (name, value) in map {
            out.add(name.as_str(), &String::from_utf8_lossy(value.as_bytes()));
        }
        out
    }

    /// Adds one header line; the name is matched without regard to case.
    pub fn add(&mut self, name: &str, value: &str) {
        self.0
            .entry(name.to_ascii_lowercase())
            .and_modify(|v| {
                v.push(',');
                v.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }

    /// The (joined) value of `name`, a lower-case name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Length of the largest value, not counting headers named in `except`
    /// (the proxy's own description of the original request).
    pub fn largest(&self, except: &[&str]) -> usize {
        self.0
            .iter()
            .filter(|(k, _)| !except.contains(&k.as_str()))
            .map(|(_, v)| v.len())
            .max()
            .unwrap_or(0)
    }

    /// Every header name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The request to decide.
    pub fn request<'a>(
        &'a self,
        method: &'a str,
        target: &'a str,
        except: &[&str],
    ) -> AuthzRequest<'a> {
        AuthzRequest {
            method,
            path: target,
            authorization: self.get("authorization"),
            api_key: self.get("x-api-key"),
            largest_header: self.largest(except),
        }
    }
}

/// How a `/v1/auth` answer is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The true status, headers and body (Envoy, Traefik).
    True,
    /// nginx `auth_request`: only 2xx, 401 and 403 are understood, so a deny is
    /// 401 or 403 with the true status and body in headers for the shipped
    /// config to render.
    Nginx,
}

/// `ANY /v1/check/<original target>`: Envoy `http_service`.
async fn envoy_check<S: FactSource>(
    State(fwd): State<Forward<S>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let target = check_target(&uri);
    let headers = Headers::from_map(&headers);
    let req = headers.request(method.as_str(), target, &[]);
    match fwd.authorizer.check(&req, None).await {
        Ok(decision) => match &decision.outcome {
            Outcome::Allow(_) => {
                let ours = identity_headers(&decision);
                let remove = headers_to_remove(headers.names(), &ours);
                let mut response = allow_response(&ours);
                if !remove.is_empty() {
                    set(&mut response, ENVOY_HEADERS_TO_REMOVE, &remove.join(","));
                }
                response
            }
            Outcome::Deny(deny) => deny_response(&decision, deny, Shape::True),
        },
        Err(e) => unavailable(&e, Shape::True),
    }
}

/// The original request target from `/v1/check<target>`: everything after the
/// prefix, query string included, exactly as received.
pub fn check_target(uri: &Uri) -> &str {
    let raw = uri.path_and_query().map_or("", |pq| pq.as_str());
    raw.strip_prefix(CHECK_PREFIX).unwrap_or("")
}

/// `ANY /v1/auth`: nginx `auth_request` and Traefik `forwardAuth`.
async fn forward_auth<S: FactSource>(State(fwd): State<Forward<S>>, map: HeaderMap) -> Response {
    let shape = match map.get(PROXY_MODE).map(HeaderValue::as_bytes) {
        Some(b"nginx") => Shape::Nginx,
        _ => Shape::True,
    };
    let original = match original::extract(&map, &fwd.config) {
        Ok(o) => o,
        Err(e) => return adapter_deny(400, e.reason(), shape),
    };
    tracing::debug!(
        forwarded_host = original.host.as_deref().unwrap_or("-"),
        forwarded_proto = original.proto.as_deref().unwrap_or("-"),
        "forward-auth request"
    );
    let headers = Headers::from_map(&map);
    let except = original::header_names(&fwd.config);
    let req = headers.request(&original.method, &original.uri, &except);
    match fwd.authorizer.check(&req, None).await {
        Ok(decision) => match &decision.outcome {
            Outcome::Allow(_) => {
                let ours = identity_headers(&decision);
                let mut response = allow_response(&ours);
                if shape == Shape::Nginx {
                    // nginx set x-velro-proxy on the auth subrequest only.
                    let names = headers.names().filter(|n| *n != PROXY_MODE);
                    let remove = headers_to_remove(names, &ours);
                    if !remove.is_empty() {
                        set(&mut response, NGINX_HEADERS_TO_REMOVE, &remove.join(","));
                    }
                }
                response
            }
            Outcome::Deny(deny) => deny_response(&decision, deny, shape),
        },
        Err(e) => unavailable(&e, shape),
    }
}

/// `POST /v1/data/<policy>`: the OPA data API as Kong's `opa` plugin calls it.
/// Any policy path answers the same decision object.
async fn opa_data<S: FactSource>(State(fwd): State<Forward<S>>, request: Request) -> Response {
    let too_large = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > OPA_MAX_BODY as u64);
    let too_large_error = || {
        let message = format!("request body exceeds {OPA_MAX_BODY} bytes");
        opa_error(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", &message)
    };
    if too_large {
        return too_large_error();
    }
    // The only other failure is a client gone mid-body, which reads no answer.
    let Ok(body) = axum::body::to_bytes(request.into_body(), OPA_MAX_BODY).await else {
        return too_large_error();
    };
    let input = match opa::parse(&body) {
        Ok(i) => i,
        Err(e) => {
            return opa_error(StatusCode::BAD_REQUEST, "invalid_parameter", &e.to_string());
        }
    };
    let req = input.headers.request(&input.method, &input.target, &[]);
    match fwd.authorizer.check(&req, None).await {
        Ok(decision) => json_response(StatusCode::OK, &opa::result(&decision, &input.headers)),
        Err(e) => {
            let body = json!({
                "code": "unavailable",
                "message": "cannot decide: authorization data unavailable or deadline exceeded",
                "reason": e.reason(),
            });
            json_response(StatusCode::SERVICE_UNAVAILABLE, &body)
        }
    }
}

/// An OPA-style error (`{"code","message"}`); never an allow.
fn opa_error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(status, &json!({ "code": code, "message": message }))
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// 200 with the identity headers.
fn allow_response(ours: &[(&'static str, String)]) -> Response {
    let mut response = StatusCode::OK.into_response();
    for (name, value) in ours {
        set(&mut response, name, value);
    }
    response
}

/// The decision's deny, shaped for the proxy.
fn deny_response(decision: &Decision, deny: &Deny, shape: Shape) -> Response {
    let body = deny_body(deny, &decision.decision_id);
    let status = match shape {
        Shape::True => deny.status,
        Shape::Nginx if deny.status == 401 => 401,
        Shape::Nginx => 403,
    };
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
        body.clone(),
    )
        .into_response();
    for (name, value) in deny_headers(decision, deny) {
        set(&mut response, name, &value);
    }
    if shape == Shape::Nginx {
        set(&mut response, NGINX_STATUS, &deny.status.to_string());
        set(&mut response, NGINX_BODY, &body);
    }
    response
}

/// A deny decided here, before the core (the proxy did not describe the
/// request): it gets a decision id and a decision-log line like any other.
fn adapter_deny(status: u16, reason: &'static str, shape: Shape) -> Response {
    let deny = Deny {
        status,
        reason,
        challenge: false,
    };
    let decision = Decision {
        decision_id: Uuid::new_v4().simple().to_string(),
        outcome: Outcome::Deny(deny),
        dry_run_deny: None,
        route: None,
        principal: None,
        role: None,
        rate_limit: None,
    };
    tracing::info!(
        target: "velro_authz::decision",
        decision_id = %decision.decision_id,
        outcome = "deny",
        status,
        reason,
        interface = "forward_auth",
        "decision"
    );
    deny_response(&decision, &deny, shape)
}

/// "Cannot decide": 503 with no internal detail, never an allow. nginx turns
/// any status but 2xx/401/403 into its own 500, so its shape says 403 and
/// carries the 503 for the shipped config to render.
fn unavailable(e: &CheckError, shape: Shape) -> Response {
    let body = json!({ "error": "unavailable", "reason": e.reason() }).to_string();
    let status = match shape {
        Shape::True => StatusCode::SERVICE_UNAVAILABLE,
        Shape::Nginx => StatusCode::FORBIDDEN,
    };
    let mut response = (status, body.clone()).into_response();
    set(
        &mut response,
        header::CONTENT_TYPE.as_str(),
        "application/json",
    );
    if shape == Shape::Nginx {
        set(&mut response, NGINX_STATUS, "503");
        set(&mut response, NGINX_BODY, &body);
    }
    response
}

/// Sets one response header; a value that cannot be a header (never the case
/// for what we send: ids, codes, JSON without control bytes) is left out.
fn set(response: &mut Response, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        response.headers_mut().insert(name, value);
    }
}
