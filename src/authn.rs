//! Authentication (SPEC §4 step 2, §9 "Credentials"): request headers →
//! a credential → a verified token or a checked API key / session.
//!
//! Everything here is pure: no database and no async. The caller extracts the
//! credential with [`extract_credential`], verifies a bearer token with
//! [`jwt::JwtVerifier`] or hashes an API key with [`apikey::hash`], looks the
//! session or key row up itself, and hands it back to [`check_session`] or
//! [`apikey::check_state`]. Every failure is an [`AuthnError`], whose
//! [`AuthnError::reason`] is the stable machine code of the 401 answer.

use std::fmt;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::Session;

pub mod apikey;
pub mod jwt;

/// A credential as presented by the client, borrowed from the request headers.
///
/// `Debug` never prints the token or key itself.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// The token of `Authorization: Bearer <token>` (not yet verified).
    Bearer(&'a str),
    /// The value of `x-api-key` (not yet looked up).
    ApiKey(&'a str),
}

/// Why a request could not be authenticated; every variant is a 401.
///
/// The `Display` messages are fixed sentences: they never include token or key
/// material, so they are safe in logs and deny bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// No credential where the route needs one.
    #[error("no credentials were presented")]
    MissingCredentials,
    /// A bearer token that is malformed, badly signed, of an unexpected
    /// algorithm or key, for another issuer or audience, or not yet valid.
    #[error("the bearer token is invalid")]
    InvalidToken,
    /// A bearer token past its `exp` (plus leeway).
    #[error("the bearer token has expired")]
    TokenExpired,
    /// Both `Authorization` and `x-api-key` were presented.
    #[error("both an Authorization header and an x-api-key header were presented")]
    AmbiguousCredentials,
    /// The token's `sub` is not a UUID, or names no user.
    #[error("the credential does not name a known user")]
    UnknownUser,
    /// The token's `sid` is malformed or names no live session of its user.
    #[error("the session is revoked, expired or unknown")]
    SessionRevoked,
    /// No API key with this hash exists (or the value cannot be a key).
    #[error("the API key is invalid")]
    InvalidApiKey,
    /// The API key was revoked.
    #[error("the API key has been revoked")]
    ApiKeyRevoked,
    /// The API key is past its `expires_at`.
    #[error("the API key has expired")]
    ApiKeyExpired,
}

/// Longest `x-api-key` value worth looking up; real keys are 49 characters.
const MAX_API_KEY_LEN: usize = 512;

impl AuthnError {
    /// The stable machine code used in deny bodies, metric labels and logs.
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            AuthnError::MissingCredentials => "missing_credentials",
            AuthnError::InvalidToken => "invalid_token",
            AuthnError::TokenExpired => "token_expired",
            AuthnError::AmbiguousCredentials => "ambiguous_credentials",
            AuthnError::UnknownUser => "unknown_user",
            AuthnError::SessionRevoked => "session_revoked",
            AuthnError::InvalidApiKey => "invalid_api_key",
            AuthnError::ApiKeyRevoked => "api_key_revoked",
            AuthnError::ApiKeyExpired => "api_key_expired",
        }
    }
}

impl fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Credential::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
        }
    }
}

/// Picks the credential out of the `Authorization` and `x-api-key` header
/// values (SPEC §9).
///
/// - both headers present (even empty) → `AmbiguousCredentials`;
/// - neither → `Ok(None)`: the caller decides whether the route needs one;
/// - `Authorization`: scheme `Bearer`, case-insensitive, then one or more
///   spaces, then a non-empty token without spaces. A value containing `,`
///   (Envoy joins repeated headers with `,`), another scheme, or an empty token
///   → `InvalidToken`. Whitespace around the whole value is ignored, as HTTP
///   field values carry none;
/// - `x-api-key`: empty, longer than any key, or with characters outside
///   visible ASCII (or a `,`: two keys joined) → `InvalidApiKey`, without a
///   lookup.
pub fn extract_credential<'a>(
    authorization: Option<&'a str>,
    api_key: Option<&'a str>,
) -> Result<Option<Credential<'a>>, AuthnError> {
    match (authorization, api_key) {
        (Some(_), Some(_)) => Err(AuthnError::AmbiguousCredentials),
        (None, None) => Ok(None),
        (Some(value), None) => bearer_token(value).map(|t| Some(Credential::Bearer(t))),
        (None, Some(value)) => {
            let well_formed = !value.is_empty()
                && value.len() <= MAX_API_KEY_LEN
                && value.bytes().all(|b| b.is_ascii_graphic() && b != b',');
            if well_formed {
                Ok(Some(Credential::ApiKey(value)))
            } else {
                Err(AuthnError::InvalidApiKey)
            }
        }
    }
}

/// `Bearer <token>` → `<token>`; see [`extract_credential`].
fn bearer_token(value: &str) -> Result<&str, AuthnError> {
    if value.contains(',') {
        return Err(AuthnError::InvalidToken);
    }
    let value = value.trim_matches([' ', '\t']);
    let (scheme, rest) = value.split_once(' ').ok_or(AuthnError::InvalidToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthnError::InvalidToken);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() || token.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(AuthnError::InvalidToken);
    }
    Ok(token)
}

/// Checks the session named by a token's `sid` (SPEC §9): it must exist
/// (`session` is the looked-up row, `None` when there is none), belong to the
/// token's user, be unrevoked (`revoked_at` unset) and unexpired
/// (`expires_at > now`); anything else is `SessionRevoked`.
pub fn check_session(
    session: Option<&Session>,
    user_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), AuthnError> {
    match session {
        Some(s) if s.user_id == user_id && s.revoked_at.is_none() && s.expires_at > now => Ok(()),
        _ => Err(AuthnError::SessionRevoked),
    }
}

/// Parses a UUID only in the canonical hyphenated 8-4-4-4-12 form, either
/// letter case (SPEC §9). `Uuid::parse_str` alone would also take the braced,
/// `urn:uuid:` and unhyphenated forms, which the spec says are not UUIDs.
pub(crate) fn parse_canonical_uuid(text: &str) -> Option<Uuid> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    let shape_ok = bytes.iter().enumerate().all(|(i, &b)| match i {
        8 | 13 | 18 | 23 => b == b'-',
        _ => b.is_ascii_hexdigit(),
    });
    if !shape_ok {
        return None;
    }
    Uuid::parse_str(text).ok()
}

#[cfg(test)]
mod tests;
