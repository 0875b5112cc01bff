//! What the sidecar answers, in protocol-free form (SPEC §4 step 6, §9 "Answers").
//!
//! Every deny reason lives in [`DenyReason`], whose one exhaustive match gives
//! the stable code, the HTTP status, the gRPC code and the 401 challenge. The
//! identity headers, the headers to remove, the deny headers and the deny body
//! are built here once; the gRPC adapter, every HTTP door and the CLI only put
//! them into their own wire shape.
//!
//! This module is a leaf: it knows no other part of the decision path, so the
//! steps (routes, authn, policy, rate limiting) map their own outcomes into it.

use uuid::Uuid;

use crate::model::Role;

/// A response or request header as (name, value); names are lower-case.
pub type Header = (&'static str, String);

/// `x-velro-decision-id`: on every answer, allow and deny.
pub const DECISION_ID: &str = "x-velro-decision-id";
/// `x-velro-user-id`: the authenticated user, on allow.
pub const USER_ID: &str = "x-velro-user-id";
/// `x-velro-auth`: how the user authenticated (`jwt` | `api_key`), on allow.
pub const AUTH: &str = "x-velro-auth";
/// `x-velro-role`: the effective role, on allowed resource routes.
pub const ROLE: &str = "x-velro-role";
/// `x-velro-identity`: the same identity as a signed, short-lived JWS
/// ([`crate::identity`]), on allow when `identity_token` is configured.
pub const IDENTITY: &str = "x-velro-identity";

/// The namespace of our identity headers. A client-sent header in it that we
/// do not set is removed before the request goes upstream.
const IDENTITY_PREFIX: &[u8] = b"x-velro-";

/// gRPC status codes (google.rpc.Code numbers) that a Check answer carries.
pub mod rpc_code {
    /// Allowed.
    pub const OK: i32 = 0;
    /// 400 denies.
    pub const INVALID_ARGUMENT: i32 = 3;
    /// 404 denies.
    pub const NOT_FOUND: i32 = 5;
    /// 403 denies.
    pub const PERMISSION_DENIED: i32 = 7;
    /// 429 denies.
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    /// 401 denies.
    pub const UNAUTHENTICATED: i32 = 16;
}

/// Why a request was denied: every stable reason code the sidecar answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// Path not in normal form, or too long (400).
    BadPath,
    /// A path id that is not a canonical UUID (400).
    InvalidId,
    /// No route for (method, path): default-deny (404).
    NoRoute,
    /// A header value or the request is over its bound (400).
    TooLarge,
    /// No credentials where the route needs them (401).
    MissingCredentials,
    /// A bad, malformed or foreign bearer token (401).
    InvalidToken,
    /// A bearer token past `exp` (401).
    TokenExpired,
    /// Both `Authorization` and `x-api-key` (401).
    AmbiguousCredentials,
    /// The credential names no known user (401).
    UnknownUser,
    /// The token's session is revoked, expired or unknown (401).
    SessionRevoked,
    /// No such API key (401).
    InvalidApiKey,
    /// The API key was revoked (401).
    ApiKeyRevoked,
    /// The API key is past `expires_at` (401).
    ApiKeyExpired,
    /// Over the principal's rate limit (429).
    RateLimited,
    /// The principal is not an active user (403), before any resource.
    UserInactive,
    /// No such resource, or no role on it: one answer, no existence oracle (404).
    NotFound,
    /// A role without the action (403).
    InsufficientRole,
    /// The credential's scopes do not grant the action (403).
    InsufficientScope,
    /// Forward-auth: the proxy did not describe the original request (400).
    MissingOriginalRequest,
    /// Forward-auth: the original request is described twice, differently (400).
    AmbiguousOriginalRequest,
}

/// What one reason answers, fixed per reason.
struct Spec {
    code: &'static str,
    status: u16,
    rpc: i32,
    /// 401s challenge with `www-authenticate`.
    challenge: bool,
}

impl DenyReason {
    /// The one table of reasons (SPEC §9).
    fn spec(self) -> Spec {
        use DenyReason::*;
        use rpc_code::*;
        let (code, status, rpc, challenge) = match self {
            BadPath => ("bad_path", 400, INVALID_ARGUMENT, false),
            InvalidId => ("invalid_id", 400, INVALID_ARGUMENT, false),
            NoRoute => ("no_route", 404, NOT_FOUND, false),
            TooLarge => ("too_large", 400, INVALID_ARGUMENT, false),
            MissingCredentials => ("missing_credentials", 401, UNAUTHENTICATED, true),
            InvalidToken => ("invalid_token", 401, UNAUTHENTICATED, true),
            TokenExpired => ("token_expired", 401, UNAUTHENTICATED, true),
            AmbiguousCredentials => ("ambiguous_credentials", 401, UNAUTHENTICATED, true),
            UnknownUser => ("unknown_user", 401, UNAUTHENTICATED, true),
            SessionRevoked => ("session_revoked", 401, UNAUTHENTICATED, true),
            InvalidApiKey => ("invalid_api_key", 401, UNAUTHENTICATED, true),
            ApiKeyRevoked => ("api_key_revoked", 401, UNAUTHENTICATED, true),
            ApiKeyExpired => ("api_key_expired", 401, UNAUTHENTICATED, true),
            RateLimited => ("rate_limited", 429, RESOURCE_EXHAUSTED, false),
            UserInactive => ("user_inactive", 403, PERMISSION_DENIED, false),
            NotFound => ("not_found", 404, NOT_FOUND, false),
            InsufficientRole => ("insufficient_role", 403, PERMISSION_DENIED, false),
            InsufficientScope => ("insufficient_scope", 403, PERMISSION_DENIED, false),
            MissingOriginalRequest => ("missing_original_request", 400, INVALID_ARGUMENT, false),
            AmbiguousOriginalRequest => {
                ("ambiguous_original_request", 400, INVALID_ARGUMENT, false)
            }
        };
        Spec {
            code,
            status,
            rpc,
            challenge,
        }
    }

    /// The stable machine code: deny bodies, metric labels, logs.
    pub fn code(self) -> &'static str {
        self.spec().code
    }

    /// The HTTP status the proxy answers with.
    pub fn http_status(self) -> u16 {
        self.spec().status
    }

    /// The gRPC code of the CheckResponse status.
    pub fn rpc_code(self) -> i32 {
        self.spec().rpc
    }

    /// `www-authenticate` for 401s (RFC 6750); `None` for every other deny.
    pub fn challenge(self) -> Option<String> {
        if !self.spec().challenge {
            return None;
        }
        Some(match self {
            DenyReason::MissingCredentials => "Bearer realm=\"velro\"".to_owned(),
            other => format!(
                "Bearer realm=\"velro\", error=\"invalid_token\", error_description=\"{}\"",
                other.code()
            ),
        })
    }

    /// The status as a metric label (a fixed set of strings).
    pub fn status_label(self) -> &'static str {
        match self.http_status() {
            400 => "400",
            401 => "401",
            403 => "403",
            404 => "404",
            429 => "429",
            _ => "other",
        }
    }

    /// The deny body's `error` word.
    fn error_word(self) -> &'static str {
        match self.http_status() {
            400 => "bad request",
            401 => "unauthenticated",
            403 => "forbidden",
            404 => "not found",
            429 => "too many requests",
            _ => "denied",
        }
    }
}

/// How the principal authenticated (`x-velro-auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// A bearer JWT.
    Jwt,
    /// An `x-api-key`.
    ApiKey,
}

impl AuthKind {
    /// Header spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthKind::Jwt => "jwt",
            AuthKind::ApiKey => "api_key",
        }
    }
}

/// Identity handed to the upstream on allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// `x-velro-user-id`.
    pub user_id: Uuid,
    /// `x-velro-auth`.
    pub auth: AuthKind,
    /// `x-velro-role`, on resource routes only.
    pub role: Option<Role>,
}

/// The rate limiter's verdict, for the `ratelimit-*` and `retry-after` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// Let it through.
    pub allowed: bool,
    /// `ratelimit-limit`: the burst.
    pub limit: u32,
    /// `ratelimit-remaining`.
    pub remaining: u64,
    /// `ratelimit-reset`: seconds until the bucket is full again (rounded up).
    pub reset_secs: u64,
    /// `retry-after` on a deny: seconds, rounded up, at least 1.
    pub retry_after_secs: u64,
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Let it through; `None` identity on public routes.
    Allow(Option<Identity>),
    /// Stop it.
    Deny(DenyReason),
}

/// Headers that go upstream with an allowed request: the decision id and, unless
/// the route is public, the identity, plus its signed form (`token`) when one
/// was issued. Set with overwrite by every adapter.
pub fn identity_headers(
    decision_id: &str,
    identity: Option<&Identity>,
    token: Option<&str>,
) -> Vec<Header> {
    let mut out = Vec::with_capacity(5);
    out.push((DECISION_ID, decision_id.to_owned()));
    if let Some(identity) = identity {
        out.push((USER_ID, identity.user_id.to_string()));
        out.push((AUTH, identity.auth.as_str().to_owned()));
        if let Some(role) = identity.role {
            out.push((ROLE, role.as_str().to_owned()));
        }
        if let Some(token) = token {
            out.push((IDENTITY, token.to_owned()));
        }
    }
    out
}

/// Whether `name` is in our `x-velro-` namespace, in any letter case, also
/// spelled with underscores (`x_velro_user_id`): CGI, WSGI and Rack fold `_`
/// and `-` together, so an underscore alias would reach such an app as ours.
pub fn is_velro_header(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() >= IDENTITY_PREFIX.len()
        && bytes
            .iter()
            .zip(IDENTITY_PREFIX)
            .all(|(&b, &p)| b.to_ascii_lowercase() == p || (p == b'-' && b == b'_'))
}

/// The client-sent header names in our namespace (`client`) that the headers in
/// `ours` do not overwrite exactly: the proxy must remove them so nothing
/// spoofed reaches the upstream. Each name once, in the order first seen.
pub fn headers_to_remove<'a>(
    client: impl IntoIterator<Item = &'a str>,
    ours: &[Header],
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

/// Headers of a deny: content type, decision id, the challenge on 401s, and on
/// 429s `retry-after` with the `ratelimit-*` headers
/// (draft-ietf-httpapi-ratelimit-headers).
pub fn deny_headers(
    reason: DenyReason,
    decision_id: &str,
    rate_limit: Option<&RateLimitInfo>,
) -> Vec<Header> {
    let mut out = vec![
        ("content-type", "application/json".to_owned()),
        (DECISION_ID, decision_id.to_owned()),
    ];
    if let Some(challenge) = reason.challenge() {
        out.push(("www-authenticate", challenge));
    }
    if let Some(rl) = rate_limit.filter(|_| reason == DenyReason::RateLimited) {
        out.push(("retry-after", rl.retry_after_secs.to_string()));
        out.push(("ratelimit-limit", rl.limit.to_string()));
        out.push(("ratelimit-remaining", rl.remaining.to_string()));
        out.push(("ratelimit-reset", rl.reset_secs.to_string()));
    }
    out
}

/// The deny body as JSON: `{"error","reason","request_id"}`.
pub fn deny_json(reason: DenyReason, decision_id: &str) -> serde_json::Value {
    serde_json::json!({
        "error": reason.error_word(),
        "reason": reason.code(),
        "request_id": decision_id,
    })
}

/// The deny body as text.
pub fn deny_body(reason: DenyReason, decision_id: &str) -> String {
    deny_json(reason, decision_id).to_string()
}

/// The body of a "cannot decide" answer over HTTP (503): a stable code, no
/// internal detail.
pub fn unavailable_body(reason_code: &str) -> String {
    serde_json::json!({ "error": "unavailable", "reason": reason_code }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [DenyReason; 20] = [
        DenyReason::BadPath,
        DenyReason::InvalidId,
        DenyReason::NoRoute,
        DenyReason::TooLarge,
        DenyReason::MissingCredentials,
        DenyReason::InvalidToken,
        DenyReason::TokenExpired,
        DenyReason::AmbiguousCredentials,
        DenyReason::UnknownUser,
        DenyReason::SessionRevoked,
        DenyReason::InvalidApiKey,
        DenyReason::ApiKeyRevoked,
        DenyReason::ApiKeyExpired,
        DenyReason::RateLimited,
        DenyReason::UserInactive,
        DenyReason::NotFound,
        DenyReason::InsufficientRole,
        DenyReason::InsufficientScope,
        DenyReason::MissingOriginalRequest,
        DenyReason::AmbiguousOriginalRequest,
    ];

    #[test]
    fn deny_reason_codes_are_unique_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for reason in ALL {
            let code = reason.code();
            assert!(seen.insert(code), "{code} twice");
            assert!(code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
    }

    #[test]
    fn deny_reason_status_and_rpc_code_agree() {
        for reason in ALL {
            let expected = match reason.http_status() {
                400 => rpc_code::INVALID_ARGUMENT,
                401 => rpc_code::UNAUTHENTICATED,
                403 => rpc_code::PERMISSION_DENIED,
                404 => rpc_code::NOT_FOUND,
                429 => rpc_code::RESOURCE_EXHAUSTED,
                other => panic!("{reason:?} has status {other}"),
            };
            assert_eq!(reason.rpc_code(), expected, "{reason:?}");
            assert_eq!(
                reason.challenge().is_some(),
                reason.http_status() == 401,
                "{reason:?}: challenge exactly on 401s"
            );
        }
    }

    #[test]
    fn challenge_names_the_reason_except_for_missing_credentials() {
        assert_eq!(
            DenyReason::MissingCredentials.challenge().as_deref(),
            Some("Bearer realm=\"velro\"")
        );
        let expired = DenyReason::TokenExpired.challenge().expect("401");
        assert!(expired.contains("error_description=\"token_expired\""));
    }

    #[test]
    fn velro_header_matches_prefix_any_case_and_underscore_aliases() {
        for name in [
            "x-velro-user-id",
            "X-Velro-Role",
            "x_velro_user_id",
            "X_VELRO-auth",
            "x-velro-",
        ] {
            assert!(is_velro_header(name), "{name}");
        }
        for name in ["x-velro", "x-velrox-a", "authorization", "xvelro-user"] {
            assert!(!is_velro_header(name), "{name}");
        }
    }

    #[test]
    fn headers_to_remove_keeps_ours_and_lists_spoofed_names_once() {
        let ours = identity_headers("d1", None, None);
        let remove = headers_to_remove(
            [
                "x-velro-decision-id",
                "x-velro-user-id",
                "X-Velro-User-Id",
                "x_velro_user_id",
                "accept",
            ],
            &ours,
        );
        assert_eq!(remove, vec!["x-velro-user-id", "x_velro_user_id"]);
    }

    #[test]
    fn deny_headers_carry_rate_limit_only_on_rate_limited() {
        let rl = RateLimitInfo {
            allowed: false,
            limit: 10,
            remaining: 0,
            reset_secs: 3,
            retry_after_secs: 1,
        };
        let limited = deny_headers(DenyReason::RateLimited, "d", Some(&rl));
        assert!(limited.iter().any(|(k, v)| *k == "retry-after" && v == "1"));
        let other = deny_headers(DenyReason::NotFound, "d", Some(&rl));
        assert!(!other.iter().any(|(k, _)| *k == "retry-after"));
        let body: serde_json::Value =
            serde_json::from_str(&deny_body(DenyReason::NotFound, "d")).expect("json");
        assert_eq!(body["reason"], "not_found");
        assert_eq!(body["error"], "not found");
        assert_eq!(body["request_id"], "d");
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
}
