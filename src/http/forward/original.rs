//! `/v1/auth`: which request the proxy asks about. nginx's `auth_request` has no
//! convention of its own; the shipped config sends `X-Original-Method` and
//! `X-Original-URI` (names configurable: `forward_auth.original_*_header`).
//! Traefik's `forwardAuth` always sends `X-Forwarded-Method` and
//! `X-Forwarded-Uri` (plus `-Host` and `-Proto`, recorded only).
//!
//! Both families are read, and where both are present they must agree. A proxy
//! sets its own family but passes the client's other headers through (Traefik
//! copies every client header to the auth server), so a client can add the
//! other family itself; were one family simply preferred, a client behind
//! Traefik could send `X-Original-URI: /health/status` and have that public
//! route decided instead of its real request. Disagreement, or one header sent
//! twice, is `ambiguous_original_request`; neither family is
//! `missing_original_request`. Both are 400 denies, never an allow.

use axum::http::{HeaderMap, HeaderValue};

use super::ForwardAuthSettings;
use crate::answer::DenyReason;

/// Traefik's original method.
pub const TRAEFIK_METHOD: &str = "x-forwarded-method";
/// Traefik's original request URI (path and query).
pub const TRAEFIK_URI: &str = "x-forwarded-uri";
/// Traefik's original host; recorded, never decides.
pub const TRAEFIK_HOST: &str = "x-forwarded-host";
/// Traefik's original scheme; recorded, never decides.
pub const TRAEFIK_PROTO: &str = "x-forwarded-proto";

/// The original request as the proxy described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    /// Method, as sent (the core treats methods case-sensitively).
    pub method: String,
    /// Request target: path and query string.
    pub uri: String,
    /// `X-Forwarded-Host`, for the debug log.
    pub host: Option<String>,
    /// `X-Forwarded-Proto`, for the debug log.
    pub proto: Option<String>,
}

/// Why the original request could not be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OriginalError {
    /// No header names the original method or URI.
    #[error("the proxy did not send the original method and URI")]
    Missing,
    /// A header is repeated, or the two families disagree.
    #[error("the original method or URI is given twice, differently")]
    Ambiguous,
}

impl OriginalError {
    /// Stable reason code for the deny body and the decision log.
    pub fn reason(self) -> &'static str {
        DenyReason::from(self).code()
    }
}

impl From<OriginalError> for DenyReason {
    fn from(e: OriginalError) -> DenyReason {
        match e {
            OriginalError::Missing => DenyReason::MissingOriginalRequest,
            OriginalError::Ambiguous => DenyReason::AmbiguousOriginalRequest,
        }
    }
}

/// The original request from the proxy's headers.
pub fn extract(map: &HeaderMap, config: &ForwardAuthSettings) -> Result<Original, OriginalError> {
    let method = field(map, &config.original_method_header, TRAEFIK_METHOD)?;
    let uri = field(map, &config.original_uri_header, TRAEFIK_URI)?;
    let (Some(method), Some(uri)) = (method, uri) else {
        return Err(OriginalError::Missing);
    };
    let recorded = |name: &str| map.get(name).map(lossy);
    Ok(Original {
        method,
        uri,
        host: recorded(TRAEFIK_HOST),
        proto: recorded(TRAEFIK_PROTO),
    })
}

/// The headers that describe the original request rather than being part of
/// it: they do not count for the 8 KiB header rule (over gRPC the path is not a
/// header either).
pub fn header_names(config: &ForwardAuthSettings) -> [&str; 4] {
    [
        &config.original_method_header,
        &config.original_uri_header,
        TRAEFIK_METHOD,
        TRAEFIK_URI,
    ]
}

/// One field from both families: each header at most once, and equal where
/// both are present. Empty values count as absent (nginx sends none for `""`).
fn field(map: &HeaderMap, ours: &str, traefik: &str) -> Result<Option<String>, OriginalError> {
    match (single(map, ours)?, single(map, traefik)?) {
        (Some(a), Some(b)) if a != b => Err(OriginalError::Ambiguous),
        (a, b) => Ok(a.or(b)),
    }
}

fn single(map: &HeaderMap, name: &str) -> Result<Option<String>, OriginalError> {
    let mut values = map.get_all(name).iter().filter(|v| !v.is_empty());
    let first = values.next();
    if values.next().is_some() {
        return Err(OriginalError::Ambiguous);
    }
    Ok(first.map(lossy))
}

fn lossy(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}
