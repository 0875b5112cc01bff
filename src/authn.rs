//! Authentication (SPEC §4 step 2, §9 "Credentials"): request headers →
//! a credential → a verified token or a checked API key / session.
//!
//! [`Authenticator::authenticate`] is the one call the decision makes: it
//! extracts the credential with [`extract_credential`], verifies a bearer
//! token with [`jwt::JwtVerifier`] (cached by a hash of the token until it
//! expires) or hashes an API key with [`apikey::hash`], reads the session or
//! key row through the fact cache, and checks it with [`check_session`] or
//! [`apikey::check_state`]. Those steps are pure; only the row reads do I/O.
//! Every failure is an [`AuthnError`], whose [`AuthnError::reason`] is the
//! stable machine code of the 401 answer.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use moka::Expiry;
use moka::sync::Cache;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::answer::{AuthKind, DenyReason};
use crate::facts::{FactError, FactSource, Facts, Trace};
use crate::model::{Scopes, Session};

pub mod apikey;
pub mod jwt;

use jwt::{JwtVerifier, VerifiedToken};

/// Who is asking, once authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    /// The user (the JWT `sub`, or the API key's owner).
    pub user_id: Uuid,
    /// JWT or API key.
    pub auth: AuthKind,
    /// `None` = no narrowing.
    pub scopes: Option<Scopes>,
    /// The API key's id, when authenticated by one (rate limiting key).
    pub api_key_id: Option<Uuid>,
}

/// Turns request credentials into a [`Principal`].
pub struct Authenticator {
    /// Verifies bearer tokens against the configured keys.
    jwt: Arc<JwtVerifier>,
    /// Verified tokens by SHA-256 of the token (never the token itself); an
    /// entry never outlives `exp`, and is used only while the key that
    /// verified it is still configured ([`JwtVerifier::still_trusted`]).
    tokens: Cache<[u8; 32], Arc<VerifiedToken>>,
    /// Hex SHA-256 of API keys that authenticated in the last few minutes. A
    /// hint only, never a reason to allow: it lets their holders past the
    /// failed-authentication limit of an address they share with an attacker
    /// (see [`Authenticator::recognizes`]); authenticating still reads the
    /// key's row.
    known_keys: Cache<String, ()>,
}

/// How long an API key that authenticated stays [`Authenticator::recognizes`]d.
const KNOWN_KEY_TTL: Duration = Duration::from_secs(300);

/// Expires a verified token's cache entry at its `exp`, at most after 300 s.
struct TokenExpiry;

impl Expiry<[u8; 32], Arc<VerifiedToken>> for TokenExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<VerifiedToken>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let left = value.expires_at - chrono::Utc::now().timestamp();
        Some(Duration::from_secs(left.clamp(0, 300) as u64))
    }
}

impl Authenticator {
    /// Authenticates with `jwt`, caching up to `max_tokens` verified tokens.
    pub fn new(jwt: Arc<JwtVerifier>, max_tokens: u64) -> Authenticator {
        let tokens = Cache::builder()
            .max_capacity(max_tokens)
            .expire_after(TokenExpiry)
            .build();
        let known_keys = Cache::builder()
            .max_capacity(max_tokens)
            .time_to_live(KNOWN_KEY_TTL)
            .build();
        Authenticator {
            jwt,
            tokens,
            known_keys,
        }
    }

    /// The JWT keys this authenticator verifies with.
    pub fn verifier(&self) -> &Arc<JwtVerifier> {
        &self.jwt
    }

    /// Drops verified tokens (admin flush, key rotation).
    pub fn flush(&self) {
        self.tokens.invalidate_all();
        self.known_keys.invalidate_all();
    }

    /// Whether these credentials authenticated recently (a cached verified
    /// token, or an API key that passed in the last minutes), so a client
    /// address over its failed-authentication budget can still use them:
    /// the limit is for guesses, not for the neighbours of a guesser behind
    /// one NAT. Costs a SHA-256 of the credential; called only for an address
    /// that is over its budget.
    pub fn recognizes(&self, authorization: Option<&str>, api_key: Option<&str>) -> bool {
        match extract_credential(authorization, api_key) {
            Ok(Some(Credential::Bearer(token))) => {
                let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                self.tokens.contains_key(&key)
            }
            Ok(Some(Credential::ApiKey(plain))) => {
                self.known_keys.contains_key(&apikey::hash(plain))
            }
            _ => false,
        }
    }

    /// Cached verified tokens.
    pub fn cached_tokens(&self) -> u64 {
        self.tokens.entry_count()
    }

    /// SPEC §4 step 2: the principal, or why there is none (`Ok(Err(..))`, a
    /// 401). `Err` only when a session or key row could not be read.
    pub async fn authenticate<S: FactSource>(
        &self,
        authorization: Option<&str>,
        api_key: Option<&str>,
        facts: &Facts<S>,
        trace: &Trace,
    ) -> Result<Result<Principal, AuthnError>, FactError> {
        let credential = match extract_credential(authorization, api_key) {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(Err(AuthnError::MissingCredentials)),
            Err(e) => return Ok(Err(e)),
        };
        match credential {
            Credential::Bearer(token) => {
                let verified = match self.verify_token(token).await? {
                    Ok(v) => v,
                    Err(e) => return Ok(Err(e)),
                };
                if let Some(sid) = verified.session_id {
                    let session = facts.session(sid, trace).await?;
                    if let Err(e) = check_session(session.as_ref(), verified.subject, Utc::now()) {
                        return Ok(Err(e));
                    }
                }
                Ok(Ok(Principal {
                    user_id: verified.subject,
                    auth: AuthKind::Jwt,
                    scopes: verified.scopes,
                    api_key_id: None,
                }))
            }
            Credential::ApiKey(plain) => {
                let hash = apikey::hash(plain);
                let Some(key) = facts.api_key(hash.as_str().into(), trace).await? else {
                    return Ok(Err(AuthnError::InvalidApiKey));
                };
                if !apikey::hashes_match(&key.key_hash, &hash) {
                    return Ok(Err(AuthnError::InvalidApiKey));
                }
                if let Err(e) = apikey::check_state(&key, Utc::now()) {
                    return Ok(Err(e));
                }
                self.known_keys.insert(hash, ());
                Ok(Ok(Principal {
                    user_id: key.user_id,
                    auth: AuthKind::ApiKey,
                    scopes: key
                        .scopes
                        .as_ref()
                        .map(|s| Scopes::from_tokens(s.iter().map(String::as_str))),
                    api_key_id: Some(key.id),
                }))
            }
        }
    }

    /// Signature and claims checks are pure and costly; their result is cached
    /// by a hash of the token until it expires, or until its key leaves its
    /// key set: such an entry is verified again (and fails) on its next use.
    /// `Err` (cannot decide) only while the token's issuer has no key set
    /// yet ([`JwtVerifier::verify_fetching`]).
    async fn verify_token(
        &self,
        token: &str,
    ) -> Result<Result<Arc<VerifiedToken>, AuthnError>, FactError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(v) = self.tokens.get(&key) {
            if v.expires_at > Utc::now().timestamp() && self.jwt.still_trusted(&v) {
                return Ok(Ok(v));
            }
            self.tokens.invalidate(&key);
        }
        let verified = match self.jwt.verify_fetching(token).await {
            Ok(Ok(v)) => Arc::new(v),
            Ok(Err(e)) => return Ok(Err(e)),
            Err(e) => {
                return Err(FactError {
                    kind: "jwks",
                    message: e.to_string(),
                });
            }
        };
        self.tokens.insert(key, verified.clone());
        Ok(Ok(verified))
    }
}

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

impl AuthnError {
    /// The stable machine code used in deny bodies, metric labels and logs.
    #[must_use]
    pub fn reason(self) -> &'static str {
        DenyReason::from(self).code()
    }

    /// Whether this failure spends the client address's budget of failed
    /// authentications: every failure but the two honest clients meet in
    /// normal life and that cost us nothing — no credential at all (a login
    /// page), and a token past its `exp` (every token, once).
    #[must_use]
    pub fn spends_failure_budget(self) -> bool {
        !matches!(
            self,
            AuthnError::MissingCredentials | AuthnError::TokenExpired
        )
    }
}

impl From<AuthnError> for DenyReason {
    fn from(e: AuthnError) -> DenyReason {
        match e {
            AuthnError::MissingCredentials => DenyReason::MissingCredentials,
            AuthnError::InvalidToken => DenyReason::InvalidToken,
            AuthnError::TokenExpired => DenyReason::TokenExpired,
            AuthnError::AmbiguousCredentials => DenyReason::AmbiguousCredentials,
            AuthnError::UnknownUser => DenyReason::UnknownUser,
            AuthnError::SessionRevoked => DenyReason::SessionRevoked,
            AuthnError::InvalidApiKey => DenyReason::InvalidApiKey,
            AuthnError::ApiKeyRevoked => DenyReason::ApiKeyRevoked,
            AuthnError::ApiKeyExpired => DenyReason::ApiKeyExpired,
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
/// - `x-api-key`: anything that cannot be a key we issued (prefix, length,
///   alphabet: [`apikey::is_well_formed`]; two keys joined by `,` are not one)
///   → `InvalidApiKey`, without a lookup.
pub fn extract_credential<'a>(
    authorization: Option<&'a str>,
    api_key: Option<&'a str>,
) -> Result<Option<Credential<'a>>, AuthnError> {
    match (authorization, api_key) {
        (Some(_), Some(_)) => Err(AuthnError::AmbiguousCredentials),
        (None, None) => Ok(None),
        (Some(value), None) => bearer_token(value).map(|t| Some(Credential::Bearer(t))),
        (None, Some(value)) => {
            if apikey::is_well_formed(value) {
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

#[cfg(test)]
mod tests;
