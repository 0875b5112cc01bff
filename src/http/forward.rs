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

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use serde_json::{Value, json};

use crate::answer::{self, DenyReason, Header, Outcome};
use crate::authz::{Authorizer, CheckError, Decision, Headers};
use crate::facts::FactSource;

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
    config: Arc<ForwardAuthSettings>,
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
pub fn router<S: FactSource>(
    authorizer: Arc<Authorizer<S>>,
    config: ForwardAuthSettings,
) -> Router {
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

/// Where `/v1/auth` finds the original request (nginx `auth_request`); Traefik's
/// `X-Forwarded-Method` / `X-Forwarded-Uri` are always read as well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardAuthSettings {
    /// Header carrying the original method (lower-case); default `x-original-method`.
    pub original_method_header: String,
    /// Header carrying the original request URI (lower-case); default `x-original-uri`.
    pub original_uri_header: String,
}

impl Default for ForwardAuthSettings {
    fn default() -> Self {
        ForwardAuthSettings {
            original_method_header: "x-original-method".to_owned(),
            original_uri_header: "x-original-uri".to_owned(),
        }
    }
}

/// The request's headers, values that are not UTF-8 kept lossily (the core
/// refuses them as credentials anyway).
pub fn headers_of(map: &HeaderMap) -> Headers {
    let mut out = Headers::default();
    for (name, value) in map {
        out.add(name.as_str(), &String::from_utf8_lossy(value.as_bytes()));
    }
    out
}

/// The client's address as the forward-auth proxy recorded it (`/v1/auth`):
/// the last `x-forwarded-for` hop, the one the proxy itself appended (nginx
/// `$proxy_add_x_forwarded_for` in the shipped config, Traefik).
/// Earlier hops come from the client and are ignored. The TCP peer of these
/// requests is the proxy, not the client, so it is never used: limiting it
/// would put every client in one bucket. No header, or a last hop that is not
/// an IP (optionally with a port) → `None`, and no per-address limit applies.
pub fn forwarded_client(headers: &Headers) -> Option<IpAddr> {
    let last = headers.get("x-forwarded-for")?.rsplit(',').next()?.trim();
    last.parse::<IpAddr>()
        .ok()
        .or_else(|| last.parse::<SocketAddr>().ok().map(|a| a.ip()))
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
    let headers = headers_of(&headers);
    // No client address: Envoy's HTTP ext_authz client puts its own address
    // last in x-forwarded-for (envoyproxy/envoy#21519), so the last hop here
    // is Envoy for every client. The gRPC door has the real source address.
    let req = headers.request(method.as_str(), target, &[]);
    match fwd.authorizer.check(&req, None).await {
        Ok(decision) => match &decision.outcome {
            Outcome::Allow(_) => {
                let ours = decision.identity_headers();
                let remove = answer::headers_to_remove(headers.names(), &ours);
                let mut response = allow_response(&ours);
                if !remove.is_empty() {
                    set(&mut response, ENVOY_HEADERS_TO_REMOVE, &remove.join(","));
                }
                response
            }
            Outcome::Deny(reason) => deny_response(&decision, *reason, Shape::True),
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
        Err(e) => return adapter_deny(e.into(), shape),
    };
    tracing::debug!(
        forwarded_host = original.host.as_deref().unwrap_or("-"),
        forwarded_proto = original.proto.as_deref().unwrap_or("-"),
        "forward-auth request"
    );
    let headers = headers_of(&map);
    let except = original::header_names(&fwd.config);
    let mut req = headers.request(&original.method, &original.uri, &except);
    req.client_addr = forwarded_client(&headers);
    match fwd.authorizer.check(&req, None).await {
        Ok(decision) => match &decision.outcome {
            Outcome::Allow(_) => {
                let ours = decision.identity_headers();
                let mut response = allow_response(&ours);
                if shape == Shape::Nginx {
                    // nginx set x-velro-proxy on the auth subrequest only.
                    let names = headers.names().filter(|n| *n != PROXY_MODE);
                    let remove = answer::headers_to_remove(names, &ours);
                    if !remove.is_empty() {
                        set(&mut response, NGINX_HEADERS_TO_REMOVE, &remove.join(","));
                    }
                }
                response
            }
            Outcome::Deny(reason) => deny_response(&decision, *reason, shape),
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
    // No client address: Kong's `opa` plugin passes the client's own headers,
    // so an x-forwarded-for there is whatever the client wrote.
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
fn allow_response(ours: &[Header]) -> Response {
    let mut response = StatusCode::OK.into_response();
    for (name, value) in ours {
        set(&mut response, name, value);
    }
    response
}

/// The decision's deny, shaped for the proxy.
fn deny_response(decision: &Decision, reason: DenyReason, shape: Shape) -> Response {
    let body = answer::deny_body(reason, &decision.decision_id);
    let status = match shape {
        Shape::True => reason.http_status(),
        Shape::Nginx if reason.http_status() == 401 => 401,
        Shape::Nginx => 403,
    };
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
        body.clone(),
    )
        .into_response();
    for (name, value) in decision.deny_headers(reason) {
        set(&mut response, name, &value);
    }
    if shape == Shape::Nginx {
        set(
            &mut response,
            NGINX_STATUS,
            &reason.http_status().to_string(),
        );
        set(&mut response, NGINX_BODY, &body);
    }
    response
}

/// A deny decided here, before the core (the proxy did not describe the
/// request): it gets a decision id and a decision-log line like any other.
fn adapter_deny(reason: DenyReason, shape: Shape) -> Response {
    let decision = Decision::adapter_deny(reason);
    crate::authz::log::adapter_deny(&decision, "forward_auth");
    deny_response(&decision, reason, shape)
}

/// "Cannot decide": 503 with no internal detail, never an allow. nginx turns
/// any status but 2xx/401/403 into its own 500, so its shape says 403 and
/// carries the 503 for the shipped config to render.
fn unavailable(e: &CheckError, shape: Shape) -> Response {
    let body = answer::unavailable_body(e.reason());
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
