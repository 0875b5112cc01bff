//! JWT bearer tokens (SPEC §4 step 2, §9 "Credentials"): configured keys, a
//! JWKS file reloaded on an unknown `kid`, verification, and minting of dev
//! tokens.
//!
//! Signatures are checked by `jsonwebtoken` with its pure-Rust RustCrypto
//! backend (`rust_crypto` feature): chosen deliberately over `aws_lc_rs` so the
//! build needs no C toolchain or CMake and cross-compiles to a static image.
//! Everything the spec makes precise (key selection by `kid`, the claim rules,
//! which error means what) is decided here rather than left to the library's
//! `Validation`, whose defaults differ (e.g. it rejects any `aud` when none is
//! configured and reads the system clock, which tests cannot move).
//!
//! This file verifies and mints; the configured keys are built in `jwt/keys.rs`
//! and the JWKS file is read and reloaded in `jwt/jwks.rs`. A verification
//! records which key made it ([`VerifiedToken::kid`] and, for a JWKS key, the
//! key set's generation), so that a cached result can be dropped once its key
//! leaves the JWKS file ([`JwtVerifier::still_trusted`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use jsonwebtoken::{Algorithm, Header};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::authn::AuthnError;
use crate::ids::parse_canonical_uuid;
use crate::model::Scopes;

mod claims;
mod jwks;
mod keys;

use claims::{
    Claim, RawClaims, audience_matches, decode_with, has_compact_jws_shape, normalize_typ,
    numeric_date,
};
pub use jwks::JwksReload;
use jwks::JwksSource;
pub use keys::{DEMO_SECRET, JwtKeyConfig, estimated_entropy_bits};
use keys::{SigningKey, StaticKeys, VerifyKey};

/// Tokens longer than this are refused before any parsing: no legitimate
/// token comes near it, and it bounds the work an attacker can cause.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The largest accepted `leeway_secs`: leeway covers clock skew, not policy.
const MAX_LEEWAY_SECS: u64 = 300;

/// The `issuer` / `audience` value that switches the check off, by name.
pub const ANY: &str = "any";

/// Default `max_lifetime_secs`: 24 h, the longest access-token lifetime the
/// common issuers use by default (Auth0's; Okta, Google, Entra ID and Keycloak
/// issue 1 h or less), so no stock issuer is refused while a token minted to
/// live for months is.
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 24 * 3600;

/// JWT settings (`auth.jwt` in the config file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Required `iss` value. Must be set: a key shared by several issuers or
    /// services would otherwise let their tokens in; `any` (by name) switches
    /// the check off.
    pub issuer: Option<String>,
    /// Required `aud` value (or member of an `aud` array). Must be set, for
    /// the same reason; `any` switches the check off.
    pub audience: Option<String>,
    /// When set, the header `typ` must equal it, case-insensitively, with or
    /// without an `application/` prefix (e.g. `JWT`, `at+jwt`), so an ID token
    /// or another kind of JWT signed by the same key is not taken for an
    /// access token. `None` = `typ` not checked.
    pub typ: Option<String>,
    /// Longest token lifetime accepted: `exp - iat`, and `exp - now` (beyond
    /// the leeway), must not exceed it, so a token minted (or leaked) to live
    /// for months is refused. 0 = no cap.
    #[serde(default = "default_max_lifetime_secs")]
    pub max_lifetime_secs: u64,
    /// Clock-skew allowance for `exp` and `nbf`, at most 300 s.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// Statically configured keys.
    #[serde(default)]
    pub keys: Vec<JwtKeyConfig>,
    /// A JWKS document with RS256 / ES256 / EdDSA public keys, selected by `kid`.
    pub jwks_file: Option<PathBuf>,
    /// An unknown `kid` rereads `jwks_file`, at most once per this many seconds.
    #[serde(default = "default_jwks_reload_min_interval_secs")]
    pub jwks_reload_min_interval_secs: u64,
    /// `jwks_file` is reread every this many seconds (and on SIGHUP), so a
    /// removed key stops working within one period; 0 = only on SIGHUP and
    /// unknown kids.
    #[serde(default = "default_jwks_refresh_secs")]
    pub jwks_refresh_secs: u64,
    /// Accept the demo's published HS256 secret ([`DEMO_SECRET`]).
    /// Only the shipped demo config sets it; anywhere else that secret (or a
    /// placeholder, or a guessable secret) fails start-up.
    #[serde(default)]
    pub allow_demo_secret: bool,
}

/// Verifies bearer tokens against the configured keys; built once from
/// [`JwtConfig`], shared by every request (`Send + Sync`).
pub struct JwtVerifier {
    /// Keys from `auth.jwt.keys`, fixed for the life of the verifier.
    keys: Vec<VerifyKey>,
    /// Keys from `auth.jwt.jwks_file`, swapped whole on reload.
    jwks: Option<JwksSource>,
    /// Required `iss`; `None` only when configured as `any`.
    issuer: Option<String>,
    /// Required `aud` member; `None` only when configured as `any`.
    audience: Option<String>,
    /// Required header `typ`, normalized by [`normalize_typ`], if configured.
    typ: Option<String>,
    /// `typ` as configured, written into minted tokens.
    typ_configured: Option<String>,
    /// `max_lifetime_secs`; `None` = no cap.
    max_lifetime: Option<i64>,
    /// `leeway_secs` as a signed number for timestamp arithmetic.
    leeway: i64,
    /// Keys able to sign, in config order, for [`JwtVerifier::mint`].
    signers: Vec<SigningKey>,
    /// `jwks_refresh_secs`, when there is a JWKS file and it is not 0.
    jwks_refresh: Option<Duration>,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    /// `sub`: the user id.
    pub subject: Uuid,
    /// `sid`, if present: the session to check with [`crate::authn::check_session`].
    pub session_id: Option<Uuid>,
    /// `scope`, if present; `None` = no narrowing of the five actions.
    pub scopes: Option<Scopes>,
    /// `exp` as unix seconds, e.g. to bound how long a result may be cached.
    pub expires_at: i64,
    /// The `kid` of the key that verified the token (`None`: a lone key
    /// without one).
    pub kid: Option<String>,
    /// For a key from the JWKS file: the generation of the key set it was
    /// verified against; `None` for `auth.jwt.keys`, which never change.
    pub jwks_generation: Option<u64>,
}

/// Which key verified a token (see [`VerifiedToken::kid`]).
struct KeyUse {
    kid: Option<String>,
    jwks_generation: Option<u64>,
}

/// What to put in a minted token; `iss` and `aud` come from the config.
#[derive(Debug, Clone, Default)]
pub struct MintClaims {
    /// `sub`, written as given (normally a user UUID).
    pub subject: String,
    /// `sid`, if any.
    pub session_id: Option<Uuid>,
    /// `scope` (space-separated), if any.
    pub scope: Option<String>,
    /// Lifetime: `exp = now + ttl`.
    pub ttl: Duration,
    /// Sign with the key of this `kid`; `None` = the first key that can sign.
    pub kid: Option<String>,
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// No configured key has an HS256 secret or a `private_key_file`.
    #[error("no configured JWT key can sign (an HS256 secret or a private_key_file is needed)")]
    NoSigningKey,
    /// The requested `kid` names no key that can sign.
    #[error("no JWT key with kid {0:?} can sign (an HS256 secret or a private_key_file is needed)")]
    UnknownKid(String),
    /// `now + ttl` does not fit a timestamp.
    #[error("the token lifetime is too large")]
    TtlOutOfRange,
    /// The lifetime is above `auth.jwt.max_lifetime_secs`: the token would be
    /// refused.
    #[error("the token lifetime is above auth.jwt.max_lifetime_secs ({0} s)")]
    TtlAboveMaxLifetime(i64),
    /// The signing library failed (its message names no key material).
    #[error("signing the token failed: {0}")]
    Signing(String),
}

impl Default for JwtConfig {
    /// No keys, issuer or audience (so not valid as is), no `typ` check, 24 h
    /// lifetime cap, 30 s leeway, 10 s JWKS reload interval.
    fn default() -> Self {
        JwtConfig {
            issuer: None,
            audience: None,
            typ: None,
            max_lifetime_secs: default_max_lifetime_secs(),
            leeway_secs: default_leeway_secs(),
            keys: Vec::new(),
            jwks_file: None,
            jwks_reload_min_interval_secs: default_jwks_reload_min_interval_secs(),
            jwks_refresh_secs: default_jwks_refresh_secs(),
            allow_demo_secret: false,
        }
    }
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self.keys.iter().map(VerifyKey::describe).collect();
        let jwks = self.jwks.as_ref().map(|j| {
            let set = j.set.load();
            (
                j.path.clone(),
                set.generation,
                set.keys
                    .iter()
                    .map(|k| k.key.describe())
                    .collect::<Vec<_>>(),
            )
        });
        f.debug_struct("JwtVerifier")
            .field("keys", &keys)
            .field("jwks", &jwks)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("typ", &self.typ)
            .field("max_lifetime", &self.max_lifetime)
            .field("leeway", &self.leeway)
            .field("signers", &self.signers.len())
            .finish()
    }
}

impl JwtVerifier {
    /// Builds the keys (reading key and JWKS files) and checks the settings.
    ///
    /// Returns every problem at once, each naming its setting, e.g.
    /// `auth.jwt.keys[1].alg: unsupported algorithm "HS512" ...`. At least one
    /// key or a `jwks_file` is required; HS256 secrets must be 32 bytes or
    /// more, no placeholder or (unless allowed) the demo's, and not guessable
    /// ([`estimated_entropy_bits`]); RSA keys 2048 to 4096 bits; a
    /// `private_key_file` must match its public key; kids must be unique, and
    /// present when more than one key or a JWKS file is configured.
    pub fn new(config: &JwtConfig) -> Result<JwtVerifier, Vec<String>> {
        let mut errors = Vec::new();
        if config.keys.is_empty() && config.jwks_file.is_none() {
            errors.push(
                "auth.jwt: at least one key (auth.jwt.keys) or a JWKS file (auth.jwt.jwks_file) is required"
                    .to_owned(),
            );
        }
        if config.leeway_secs > MAX_LEEWAY_SECS {
            errors.push(format!(
                "auth.jwt.leeway_secs: must be at most {MAX_LEEWAY_SECS} (got {})",
                config.leeway_secs
            ));
        }
        for (name, claim, value) in [
            ("issuer", "iss", &config.issuer),
            ("audience", "aud", &config.audience),
        ] {
            match value.as_deref() {
                None => errors.push(format!(
                    "auth.jwt.{name}: required: the `{claim}` your tokens carry \
                     (or `{ANY}` to accept tokens for any {name})"
                )),
                Some("") => errors.push(format!(
                    "auth.jwt.{name}: must not be empty (`{ANY}` switches the check off)"
                )),
                Some(_) => {}
            }
        }
        if config
            .typ
            .as_deref()
            .is_some_and(|t| normalize_typ(t).is_empty())
        {
            errors.push("auth.jwt.typ: must not be empty (omit it to skip the check)".to_owned());
        }

        let kid_required = config.keys.len() > 1 || config.jwks_file.is_some();
        let static_keys = StaticKeys::build(
            &config.keys,
            kid_required,
            config.allow_demo_secret,
            &mut errors,
        );
        let jwks = match &config.jwks_file {
            None => None,
            Some(path) => {
                JwksSource::open(path, static_keys.kids, config.jwks_reload_min_interval_secs)
                    .map_err(|problems| errors.extend(problems))
                    .ok()
            }
        };

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(JwtVerifier {
            keys: static_keys.verify,
            jwks,
            issuer: config.issuer.clone().filter(|i| i != ANY),
            audience: config.audience.clone().filter(|a| a != ANY),
            typ: config.typ.as_deref().map(normalize_typ),
            typ_configured: config.typ.clone(),
            max_lifetime: (config.max_lifetime_secs > 0)
                .then(|| i64::try_from(config.max_lifetime_secs).unwrap_or(i64::MAX)),
            leeway: i64::try_from(config.leeway_secs).unwrap_or(i64::MAX),
            signers: static_keys.signers,
            jwks_refresh: (config.jwks_file.is_some() && config.jwks_refresh_secs > 0)
                .then(|| Duration::from_secs(config.jwks_refresh_secs)),
        })
    }

    /// Verifies a bearer token now; see [`JwtVerifier::verify_at`].
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, AuthnError> {
        self.verify_at(token, Utc::now().timestamp())
    }

    /// Verifies a bearer token as of `now` (unix seconds), in this order:
    ///
    /// 1. over 8 KiB, not three base64url segments, an unreadable header, a
    ///    `crit` header, or a `typ` other than the configured one (when one is)
    ///    → `InvalidToken` (`alg: none` cannot even be parsed);
    /// 2. key: the one whose `kid` the header names — if none, the JWKS file is
    ///    reread (rate-limited) and looked up once more; no try-every-key
    ///    fallback. Without `kid` only when exactly one key is configured. Not
    ///    found → `InvalidToken`;
    /// 3. header `alg` must equal the key's algorithm, signature must verify →
    ///    else `InvalidToken`;
    /// 4. `exp` present and numeric, `nbf` / `iat` numeric if present, `iss` /
    ///    `aud` present and matching unless configured as `any` (`aud` may be
    ///    an array holding ours), `scope` a string if present, and with a
    ///    lifetime cap neither `exp - iat` above it nor `exp - now` above it
    ///    plus the leeway (so a future `iat` does not stretch the cap) → else
    ///    `InvalidToken`;
    /// 5. `nbf` later than `now + leeway` → `InvalidToken`; `now >= exp +
    ///    leeway` → `TokenExpired`;
    /// 6. `sub` a canonical UUID → else `UnknownUser`; `sid`, if present, a
    ///    canonical UUID → else `SessionRevoked`.
    ///
    /// Header `jku`, `jwk`, `x5u` and `x5c` are ignored: keys never come from
    /// the token itself.
    pub fn verify_at(&self, token: &str, now: i64) -> Result<VerifiedToken, AuthnError> {
        if token.len() > MAX_TOKEN_LEN || !has_compact_jws_shape(token) {
            return Err(AuthnError::InvalidToken);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthnError::InvalidToken)?;
        if header.crit.is_some() {
            // RFC 7515 §4.1.11: extensions we do not understand must be refused.
            return Err(AuthnError::InvalidToken);
        }
        if let Some(want) = &self.typ
            && header.typ.as_deref().map(normalize_typ).as_ref() != Some(want)
        {
            return Err(AuthnError::InvalidToken);
        }
        let (claims, key) = match header.kid.as_deref() {
            Some(kid) => self.decode_with_kid(token, header.alg, kid)?,
            None => self.decode_without_kid(token, header.alg)?,
        };
        self.check_claims(&claims, key, now)
    }

    /// Whether a verification made earlier may still be used: true unless it
    /// was made with a JWKS key that has since left the file or been replaced.
    /// Cheap (one atomic load when the key set has not changed), so the token
    /// cache calls it on every hit.
    pub fn still_trusted(&self, verified: &VerifiedToken) -> bool {
        match (&self.jwks, verified.jwks_generation, &verified.kid) {
            (Some(jwks), Some(generation), Some(kid)) => jwks.still_holds(kid, generation),
            (_, None, _) => true,
            _ => false,
        }
    }

    /// Rereads the JWKS file now (timer, SIGHUP), whatever the rate limit.
    /// On error the previous key set stays in use. Says which kids came,
    /// went or changed; verifications made with a key that went or changed
    /// stop being trusted at once ([`JwtVerifier::still_trusted`]).
    pub fn reload_jwks(&self) -> Result<JwksReload, Vec<String>> {
        match &self.jwks {
            Some(jwks) => jwks.reload().map_err(|problems| {
                problems
                    .into_iter()
                    .map(|p| format!("auth.jwt.jwks_file: {p}"))
                    .collect()
            }),
            None => Err(vec!["auth.jwt.jwks_file: not configured".to_owned()]),
        }
    }

    /// The JWKS file, when configured.
    pub fn jwks_file(&self) -> Option<&std::path::Path> {
        self.jwks.as_ref().map(|j| j.path.as_path())
    }

    /// How often the JWKS file is reread on a timer (`None`: no file, or
    /// `jwks_refresh_secs: 0`).
    pub fn jwks_refresh(&self) -> Option<Duration> {
        self.jwks_refresh
    }

    /// Mints a token with the first key that can sign (an HS256 secret or a
    /// `private_key_file`), or the key of `claims.kid`: `sub`, `iat`, `exp`,
    /// `iss` / `aud` / header `typ` from the config, and `sid` / `scope` when
    /// given. A lifetime above the configured cap is refused (such a token
    /// would not verify). For the `token` CLI and tests.
    pub fn mint(&self, claims: &MintClaims) -> Result<String, MintError> {
        let signer = match &claims.kid {
            Some(kid) => self
                .signers
                .iter()
                .find(|s| s.kid.as_deref() == Some(kid))
                .ok_or_else(|| MintError::UnknownKid(kid.clone()))?,
            None => self.signers.first().ok_or(MintError::NoSigningKey)?,
        };
        let now = Utc::now().timestamp();
        let ttl = i64::try_from(claims.ttl.as_secs()).map_err(|_| MintError::TtlOutOfRange)?;
        let exp = now.checked_add(ttl).ok_or(MintError::TtlOutOfRange)?;
        if let Some(cap) = self.max_lifetime
            && ttl > cap
        {
            return Err(MintError::TtlAboveMaxLifetime(cap));
        }

        let mut body = serde_json::Map::new();
        body.insert("sub".to_owned(), Value::from(claims.subject.clone()));
        body.insert("iat".to_owned(), Value::from(now));
        body.insert("exp".to_owned(), Value::from(exp));
        if let Some(iss) = &self.issuer {
            body.insert("iss".to_owned(), Value::from(iss.clone()));
        }
        if let Some(aud) = &self.audience {
            body.insert("aud".to_owned(), Value::from(aud.clone()));
        }
        if let Some(sid) = claims.session_id {
            body.insert("sid".to_owned(), Value::from(sid.hyphenated().to_string()));
        }
        if let Some(scope) = &claims.scope {
            body.insert("scope".to_owned(), Value::from(scope.clone()));
        }
        let mut header = Header::new(signer.alg);
        header.kid = signer.kid.clone();
        if let Some(typ) = &self.typ_configured {
            header.typ = Some(typ.clone());
        }
        jsonwebtoken::encode(&header, &Value::Object(body), &signer.key)
            .map_err(|e| MintError::Signing(e.to_string()))
    }

    /// Step 2 with a `kid`: static keys, then the JWKS set, then the JWKS set
    /// reread once if the rate limit allows.
    fn decode_with_kid(
        &self,
        token: &str,
        alg: Algorithm,
        kid: &str,
    ) -> Result<(RawClaims, KeyUse), AuthnError> {
        let attempt = |key: &VerifyKey| decode_with(key, token, alg);
        let from_jwks = |(result, generation): (Result<RawClaims, AuthnError>, u64)| {
            result.map(|claims| {
                let key = KeyUse {
                    kid: Some(kid.to_owned()),
                    jwks_generation: Some(generation),
                };
                (claims, key)
            })
        };
        if let Some(key) = self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
            let used = KeyUse {
                kid: key.kid.clone(),
                jwks_generation: None,
            };
            return attempt(key).map(|claims| (claims, used));
        }
        let Some(jwks) = &self.jwks else {
            return Err(AuthnError::InvalidToken);
        };
        if let Some(found) = jwks.with_key(kid, attempt) {
            return from_jwks(found);
        }
        if jwks.reload_if_due()
            && let Some(found) = jwks.with_key(kid, attempt)
        {
            return from_jwks(found);
        }
        Err(AuthnError::InvalidToken)
    }

    /// Step 2 without a `kid`: only when exactly one key exists in all.
    fn decode_without_kid(
        &self,
        token: &str,
        alg: Algorithm,
    ) -> Result<(RawClaims, KeyUse), AuthnError> {
        let set = self.jwks.as_ref().map(|j| j.set.load_full());
        let jwks_keys = set.as_ref().map_or(&[][..], |s| s.keys.as_slice());
        match (self.keys.as_slice(), jwks_keys) {
            ([only], []) => decode_with(only, token, alg).map(|claims| {
                let used = KeyUse {
                    kid: only.kid.clone(),
                    jwks_generation: None,
                };
                (claims, used)
            }),
            ([], [only]) => decode_with(&only.key, token, alg).map(|claims| {
                let used = KeyUse {
                    kid: only.key.kid.clone(),
                    jwks_generation: set.as_ref().map(|s| s.generation),
                };
                (claims, used)
            }),
            _ => Err(AuthnError::InvalidToken),
        }
    }

    /// Steps 4 to 6.
    fn check_claims(
        &self,
        claims: &RawClaims,
        key: KeyUse,
        now: i64,
    ) -> Result<VerifiedToken, AuthnError> {
        let exp = numeric_date(&claims.exp)?.ok_or(AuthnError::InvalidToken)?;
        let nbf = numeric_date(&claims.nbf)?;
        let iat = numeric_date(&claims.iat)?;
        if let Some(cap) = self.max_lifetime {
            let stated = iat.map(|iat| exp.saturating_sub(iat));
            let left = exp.saturating_sub(now);
            if stated.is_some_and(|l| l > cap) || left > cap.saturating_add(self.leeway) {
                return Err(AuthnError::InvalidToken);
            }
        }
        if let Some(issuer) = &self.issuer {
            match &claims.iss {
                Claim::Present(Value::String(iss)) if iss == issuer => {}
                _ => return Err(AuthnError::InvalidToken),
            }
        }
        if let Some(audience) = &self.audience
            && !audience_matches(&claims.aud, audience)
        {
            return Err(AuthnError::InvalidToken);
        }
        let scopes = match &claims.scope {
            Claim::Absent => None,
            Claim::Present(Value::String(scope)) => Some(Scopes::from_claim(scope)),
            Claim::Present(_) => return Err(AuthnError::InvalidToken),
        };

        if nbf.is_some_and(|nbf| nbf > now.saturating_add(self.leeway)) {
            return Err(AuthnError::InvalidToken);
        }
        if now >= exp.saturating_add(self.leeway) {
            return Err(AuthnError::TokenExpired);
        }

        let subject = match &claims.sub {
            Claim::Present(Value::String(sub)) => parse_canonical_uuid(sub.as_bytes()),
            _ => None,
        }
        .ok_or(AuthnError::UnknownUser)?;
        let session_id = match &claims.sid {
            Claim::Absent => None,
            Claim::Present(Value::String(sid)) => {
                Some(parse_canonical_uuid(sid.as_bytes()).ok_or(AuthnError::SessionRevoked)?)
            }
            Claim::Present(_) => return Err(AuthnError::SessionRevoked),
        };
        Ok(VerifiedToken {
            subject,
            session_id,
            scopes,
            expires_at: exp,
            kid: key.kid,
            jwks_generation: key.jwks_generation,
        })
    }
}

fn default_leeway_secs() -> u64 {
    30
}

fn default_max_lifetime_secs() -> u64 {
    DEFAULT_MAX_LIFETIME_SECS
}

fn default_jwks_reload_min_interval_secs() -> u64 {
    10
}

fn default_jwks_refresh_secs() -> u64 {
    60
}

#[cfg(test)]
pub(crate) mod tests;
