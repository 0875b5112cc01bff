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

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::authn::AuthnError;
use crate::ids::parse_canonical_uuid;
use crate::model::Scopes;

/// Tokens longer than this are refused before any parsing: no legitimate
/// token comes near it, and it bounds the work an attacker can cause.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The largest accepted `leeway_secs`: leeway covers clock skew, not policy.
const MAX_LEEWAY_SECS: u64 = 300;

/// HS256 secrets must carry at least the 256 bits of the hash (RFC 7518 §3.2).
const MIN_HS256_SECRET_LEN: usize = 32;

/// RSA moduli accepted: at least 2048 bits (NIST), at most what `rsa` verifies.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=4096;

/// Key and JWKS files are small; refuse to read anything larger.
const MAX_KEY_FILE_LEN: u64 = 1024 * 1024;

/// JWT settings (`auth.jwt` in the config file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Required `iss` value; `None` = `iss` not checked.
    pub issuer: Option<String>,
    /// Required `aud` value (or member of an `aud` array); `None` = not checked.
    pub audience: Option<String>,
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
}

/// One configured key (`auth.jwt.keys[i]`). `Debug` redacts `secret`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyConfig {
    /// Key id matched against the token header's `kid`; required when more
    /// than one key (or a JWKS file) is configured.
    pub kid: Option<String>,
    /// `HS256`, `RS256`, `ES256` or `EdDSA`; a token's header `alg` must equal it.
    pub alg: String,
    /// HS256 only: the shared secret, at least 32 bytes.
    pub secret: Option<String>,
    /// RS256/ES256/EdDSA: the public key, PEM text (SPKI, or PKCS#1 for RSA).
    pub public_key_pem: Option<String>,
    /// RS256/ES256/EdDSA: a file holding the PEM public key (instead of `public_key_pem`).
    pub public_key_file: Option<PathBuf>,
    /// Optional PKCS#8 PEM private key, only for minting dev tokens (`token` CLI).
    pub private_key_file: Option<PathBuf>,
}

/// Verifies bearer tokens against the configured keys; built once from
/// [`JwtConfig`], shared by every request (`Send + Sync`).
pub struct JwtVerifier {
    /// Keys from `auth.jwt.keys`, fixed for the life of the verifier.
    keys: Vec<VerifyKey>,
    /// Keys from `auth.jwt.jwks_file`, swapped whole on reload.
    jwks: Option<JwksSource>,
    /// Required `iss`, if configured.
    issuer: Option<String>,
    /// Required `aud` member, if configured.
    audience: Option<String>,
    /// `leeway_secs` as a signed number for timestamp arithmetic.
    leeway: i64,
    /// Keys able to sign, in config order, for [`JwtVerifier::mint`].
    signers: Vec<SigningKey>,
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
    /// The signing library failed (its message names no key material).
    #[error("signing the token failed: {0}")]
    Signing(String),
}

/// A verification key with the one algorithm it accepts.
struct VerifyKey {
    /// `None` only for a lone static key (tokens then need no `kid`).
    kid: Option<String>,
    /// The only algorithm accepted with this key (no family-wide acceptance).
    alg: Algorithm,
    /// The public key or HMAC secret.
    key: DecodingKey,
    /// Signature-only validation for `alg`; claims are checked by us.
    validation: Validation,
}

/// A key that can sign, for dev tokens.
struct SigningKey {
    /// Written into the token header so verification finds the key.
    kid: Option<String>,
    /// The key's algorithm.
    alg: Algorithm,
    /// Secret or private key.
    key: EncodingKey,
}

/// The JWKS file and the key set last read from it.
struct JwksSource {
    /// Where to (re)read the key set.
    path: PathBuf,
    /// The current key set; readers never block, a reload swaps it whole.
    keys: ArcSwap<Vec<VerifyKey>>,
    /// Kids of the static keys, which a JWKS key must not shadow.
    static_kids: Vec<String>,
    /// Origin of the millisecond clock below.
    started: Instant,
    /// When the file was last read (ms since `started`): the rate limit.
    last_load_ms: AtomicU64,
    /// `jwks_reload_min_interval_secs` in milliseconds.
    min_interval_ms: u64,
}

/// A claim as found in the payload: absent is not the same as `null`.
#[derive(Debug, Default)]
enum Claim {
    /// Not in the payload.
    #[default]
    Absent,
    /// In the payload with this value (possibly `null`).
    Present(Value),
}

/// The claims this service reads; others are ignored. A duplicated claim makes
/// the payload invalid (serde rejects duplicate fields).
#[derive(Debug, Deserialize)]
struct RawClaims {
    #[serde(default)]
    exp: Claim,
    #[serde(default)]
    nbf: Claim,
    #[serde(default)]
    iss: Claim,
    #[serde(default)]
    aud: Claim,
    #[serde(default)]
    sub: Claim,
    #[serde(default)]
    sid: Claim,
    #[serde(default)]
    scope: Claim,
}

/// One entry of a JWKS document, only the members we use (RFC 7517/7518).
#[derive(Deserialize)]
struct JwkEntry {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    public_key_use: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// A JWKS document.
#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<Value>,
}

impl Default for JwtConfig {
    /// No keys (so not valid as is), 30 s leeway, 10 s JWKS reload interval.
    fn default() -> Self {
        JwtConfig {
            issuer: None,
            audience: None,
            leeway_secs: default_leeway_secs(),
            keys: Vec::new(),
            jwks_file: None,
            jwks_reload_min_interval_secs: default_jwks_reload_min_interval_secs(),
        }
    }
}

impl fmt::Debug for JwtKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeyConfig")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field(
                "public_key_pem",
                &self
                    .public_key_pem
                    .as_ref()
                    .map(|pem| format!("<{} bytes>", pem.len())),
            )
            .field("public_key_file", &self.public_key_file)
            .field("private_key_file", &self.private_key_file)
            .finish()
    }
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self.keys.iter().map(VerifyKey::describe).collect();
        let jwks = self.jwks.as_ref().map(|j| {
            let set = j.keys.load();
            (
                j.path.clone(),
                set.iter().map(VerifyKey::describe).collect::<Vec<_>>(),
            )
        });
        f.debug_struct("JwtVerifier")
            .field("keys", &keys)
            .field("jwks", &jwks)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
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
    /// more; RSA keys 2048 to 4096 bits; a `private_key_file` must match its
    /// public key; kids must be unique, and present when more than one key or a
    /// JWKS file is configured.
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
        for (name, value) in [("issuer", &config.issuer), ("audience", &config.audience)] {
            if value.as_deref().is_some_and(str::is_empty) {
                errors.push(format!(
                    "auth.jwt.{name}: must not be empty (omit it to skip the check)"
                ));
            }
        }

        let kid_required = config.keys.len() > 1 || config.jwks_file.is_some();
        let mut static_kids: Vec<String> = Vec::new();
        let mut keys = Vec::new();
        let mut signers = Vec::new();
        for (i, key_config) in config.keys.iter().enumerate() {
            let at = format!("auth.jwt.keys[{i}]");
            match &key_config.kid {
                Some(kid) if kid.is_empty() => errors.push(format!("{at}.kid: must not be empty")),
                Some(kid) => match static_kids.iter().position(|k| k == kid) {
                    Some(j) => errors.push(format!(
                        "{at}.kid: duplicate kid {kid:?} (also auth.jwt.keys[{j}])"
                    )),
                    None => static_kids.push(kid.clone()),
                },
                None if kid_required => errors.push(format!(
                    "{at}.kid: required when more than one key or a jwks_file is configured \
                     (a token names its key by kid)"
                )),
                None => {}
            }
            if let Some((verify_key, signer)) = build_key(key_config, &at, &mut errors) {
                keys.push(verify_key);
                signers.extend(signer);
            }
        }

        let jwks = match &config.jwks_file {
            None => None,
            Some(path) => match load_jwks_file(path, &static_kids) {
                Ok(set) if set.is_empty() => {
                    errors.push(format!(
                        "auth.jwt.jwks_file: {}: no usable signing key (RS256, ES256 or EdDSA, with a kid)",
                        path.display()
                    ));
                    None
                }
                Ok(set) => Some(JwksSource {
                    path: path.clone(),
                    keys: ArcSwap::from_pointee(set),
                    static_kids,
                    started: Instant::now(),
                    last_load_ms: AtomicU64::new(0),
                    min_interval_ms: config.jwks_reload_min_interval_secs.saturating_mul(1000),
                }),
                Err(problems) => {
                    errors.extend(
                        problems
                            .into_iter()
                            .map(|p| format!("auth.jwt.jwks_file: {p}")),
                    );
                    None
                }
            },
        };

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(JwtVerifier {
            keys,
            jwks,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: i64::try_from(config.leeway_secs).unwrap_or(i64::MAX),
            signers,
        })
    }

    /// Verifies a bearer token now; see [`JwtVerifier::verify_at`].
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, AuthnError> {
        self.verify_at(token, Utc::now().timestamp())
    }

    /// Verifies a bearer token as of `now` (unix seconds), in this order:
    ///
    /// 1. over 8 KiB, not three base64url segments, an unreadable header, or a
    ///    `crit` header → `InvalidToken` (`alg: none` cannot even be parsed);
    /// 2. key: the one whose `kid` the header names — if none, the JWKS file is
    ///    reread (rate-limited) and looked up once more; no try-every-key
    ///    fallback. Without `kid` only when exactly one key is configured. Not
    ///    found → `InvalidToken`;
    /// 3. header `alg` must equal the key's algorithm, signature must verify →
    ///    else `InvalidToken`;
    /// 4. `exp` present and numeric, `nbf` numeric if present, `iss` / `aud`
    ///    present and matching when configured (`aud` may be an array holding
    ///    ours), `scope` a string if present → else `InvalidToken`;
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
        let claims = match header.kid.as_deref() {
            Some(kid) => self.decode_with_kid(token, header.alg, kid)?,
            None => self.decode_without_kid(token, header.alg)?,
        };
        self.check_claims(&claims, now)
    }

    /// Rereads the JWKS file now (e.g. on SIGHUP), whatever the rate limit.
    /// On error the previous key set stays in use. Returns the number of keys.
    pub fn reload_jwks(&self) -> Result<usize, Vec<String>> {
        match &self.jwks {
            Some(jwks) => jwks.reload(),
            None => Err(vec!["auth.jwt.jwks_file: not configured".to_owned()]),
        }
    }

    /// Mints a token with the first key that can sign (an HS256 secret or a
    /// `private_key_file`), or the key of `claims.kid`: `sub`, `iat`, `exp`,
    /// `iss` / `aud` from the config, and `sid` / `scope` when given. For the
    /// `token` CLI and tests.
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
    ) -> Result<RawClaims, AuthnError> {
        let attempt = |key: &VerifyKey| decode_with(key, token, alg);
        if let Some(key) = self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
            return attempt(key);
        }
        let Some(jwks) = &self.jwks else {
            return Err(AuthnError::InvalidToken);
        };
        if let Some(result) = jwks.with_key(kid, attempt) {
            return result;
        }
        if jwks.reload_if_due()
            && let Some(result) = jwks.with_key(kid, attempt)
        {
            return result;
        }
        Err(AuthnError::InvalidToken)
    }

    /// Step 2 without a `kid`: only when exactly one key exists in all.
    fn decode_without_kid(&self, token: &str, alg: Algorithm) -> Result<RawClaims, AuthnError> {
        let jwks_keys = self.jwks.as_ref().map(|j| j.keys.load_full());
        let jwks_keys: &[VerifyKey] = jwks_keys.as_deref().map_or(&[], Vec::as_slice);
        match (self.keys.as_slice(), jwks_keys) {
            ([only], []) | ([], [only]) => decode_with(only, token, alg),
            _ => Err(AuthnError::InvalidToken),
        }
    }

    /// Steps 4 to 6.
    fn check_claims(&self, claims: &RawClaims, now: i64) -> Result<VerifiedToken, AuthnError> {
        let exp = numeric_date(&claims.exp)?.ok_or(AuthnError::InvalidToken)?;
        let nbf = numeric_date(&claims.nbf)?;
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
        })
    }
}

impl VerifyKey {
    /// A key usable with exactly `alg`.
    fn new(kid: Option<String>, alg: Algorithm, key: DecodingKey) -> VerifyKey {
        // Signature (and header alg) only: every claim is checked by
        // `check_claims`, with the spec's error mapping and an injectable clock.
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        VerifyKey {
            kid,
            alg,
            key,
            validation,
        }
    }

    /// `kid/alg`, for `Debug`.
    fn describe(&self) -> String {
        format!(
            "{}/{:?}",
            self.kid.as_deref().unwrap_or("<no kid>"),
            self.alg
        )
    }
}

impl JwksSource {
    /// Runs `f` on the key named `kid` in the current set, if there is one.
    fn with_key<R>(&self, kid: &str, f: impl FnOnce(&VerifyKey) -> R) -> Option<R> {
        let set = self.keys.load();
        set.iter().find(|k| k.kid.as_deref() == Some(kid)).map(f)
    }

    /// Rereads the file if the last read is at least `min_interval_ms` old and
    /// no other thread just claimed the reload; true if the set was replaced.
    ///
    /// This blocks the calling request on a small local file read, at most
    /// once per interval across all requests, which is cheaper than a
    /// background task for a rare event.
    fn reload_if_due(&self) -> bool {
        let now_ms = self.elapsed_ms();
        let last = self.last_load_ms.load(Ordering::Acquire);
        if now_ms.saturating_sub(last) < self.min_interval_ms {
            return false;
        }
        if self
            .last_load_ms
            .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        match self.load() {
            Ok(_) => true,
            Err(problems) => {
                tracing::warn!(
                    path = %self.path.display(),
                    problems = ?problems,
                    "JWKS reload failed; keeping the previous key set"
                );
                false
            }
        }
    }

    /// Forced reload.
    fn reload(&self) -> Result<usize, Vec<String>> {
        self.last_load_ms
            .store(self.elapsed_ms(), Ordering::Release);
        self.load()
    }

    /// Reads the file and swaps the set in; on error the old set stays.
    fn load(&self) -> Result<usize, Vec<String>> {
        let set = load_jwks_file(&self.path, &self.static_kids)?;
        let count = set.len();
        self.keys.store(Arc::new(set));
        Ok(count)
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl<'de> Deserialize<'de> for Claim {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Claim::Present)
    }
}

fn default_leeway_secs() -> u64 {
    30
}

fn default_jwks_reload_min_interval_secs() -> u64 {
    10
}

/// Exactly three non-empty base64url segments (header, payload, signature).
/// Checked before the library sees the token: it splits from the right and
/// would read `a.b.c.d` as header `a.b`.
fn has_compact_jws_shape(token: &str) -> bool {
    let mut segments = 0;
    for segment in token.split('.') {
        segments += 1;
        if segment.is_empty()
            || !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    segments == 3
}

/// Checks the signature with `key`, whose algorithm the header must name.
fn decode_with(
    key: &VerifyKey,
    token: &str,
    header_alg: Algorithm,
) -> Result<RawClaims, AuthnError> {
    if header_alg != key.alg {
        // Algorithm confusion (e.g. HS256 with an RSA public key as secret).
        return Err(AuthnError::InvalidToken);
    }
    jsonwebtoken::decode::<RawClaims>(token, &key.key, &key.validation)
        .map(|data| data.claims)
        .map_err(|_| AuthnError::InvalidToken)
}

/// A NumericDate claim (RFC 7519 §2): an integer or a finite number of
/// seconds, floored. Absent → `None`; anything else → `InvalidToken`.
fn numeric_date(claim: &Claim) -> Result<Option<i64>, AuthnError> {
    let Claim::Present(value) = claim else {
        return Ok(None);
    };
    let Value::Number(number) = value else {
        return Err(AuthnError::InvalidToken);
    };
    if let Some(seconds) = number.as_i64() {
        return Ok(Some(seconds));
    }
    match number.as_f64() {
        // `i64::MAX as f64` rounds up to 2^63, so `<` keeps the cast in range.
        Some(f) if f.is_finite() && f >= i64::MIN as f64 && f < i64::MAX as f64 => {
            Ok(Some(f.floor() as i64))
        }
        _ => Err(AuthnError::InvalidToken),
    }
}

/// `aud` is our audience, or an array of strings containing it.
fn audience_matches(claim: &Claim, ours: &str) -> bool {
    match claim {
        Claim::Present(Value::String(aud)) => aud == ours,
        Claim::Present(Value::Array(items)) => {
            items.iter().all(Value::is_string) && items.iter().any(|v| v.as_str() == Some(ours))
        }
        _ => false,
    }
}

/// The algorithms this service accepts, by their config / JOSE names.
fn parse_alg(name: &str) -> Option<Algorithm> {
    match name {
        "HS256" => Some(Algorithm::HS256),
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

/// Builds one static key; problems go to `errors`, prefixed with `at`.
fn build_key(
    config: &JwtKeyConfig,
    at: &str,
    errors: &mut Vec<String>,
) -> Option<(VerifyKey, Option<SigningKey>)> {
    let Some(alg) = parse_alg(&config.alg) else {
        errors.push(format!(
            "{at}.alg: unsupported algorithm {:?} (expected HS256, RS256, ES256 or EdDSA)",
            config.alg
        ));
        return None;
    };
    let kid = config.kid.clone();

    if alg == Algorithm::HS256 {
        for (field, set) in [
            ("public_key_pem", config.public_key_pem.is_some()),
            ("public_key_file", config.public_key_file.is_some()),
            ("private_key_file", config.private_key_file.is_some()),
        ] {
            if set {
                errors.push(format!("{at}.{field}: not used by HS256 keys (set secret)"));
            }
        }
        let Some(secret) = &config.secret else {
            errors.push(format!("{at}.secret: required for HS256"));
            return None;
        };
        if secret.len() < MIN_HS256_SECRET_LEN {
            errors.push(format!(
                "{at}.secret: must be at least {MIN_HS256_SECRET_LEN} bytes (got {})",
                secret.len()
            ));
            return None;
        }
        let verify = VerifyKey::new(
            kid.clone(),
            alg,
            DecodingKey::from_secret(secret.as_bytes()),
        );
        let sign = SigningKey {
            kid,
            alg,
            key: EncodingKey::from_secret(secret.as_bytes()),
        };
        return Some((verify, Some(sign)));
    }

    if config.secret.is_some() {
        errors.push(format!("{at}.secret: only HS256 keys have a secret"));
    }
    let (field, pem) = match (&config.public_key_pem, &config.public_key_file) {
        (Some(_), Some(_)) => {
            errors.push(format!(
                "{at}: set public_key_pem or public_key_file, not both"
            ));
            return None;
        }
        (None, None) => {
            errors.push(format!(
                "{at}.public_key_pem / public_key_file: one is required for {}",
                config.alg
            ));
            return None;
        }
        (Some(pem), None) => ("public_key_pem", pem.as_bytes().to_vec()),
        (None, Some(path)) => match read_small_file(path) {
            Ok(bytes) => ("public_key_file", bytes),
            Err(e) => {
                errors.push(format!(
                    "{at}.public_key_file: cannot read {}: {e}",
                    path.display()
                ));
                return None;
            }
        },
    };
    let public = match public_key_from_pem(alg, &pem) {
        Ok(key) => key,
        Err(why) => {
            errors.push(format!("{at}.{field}: {why}"));
            return None;
        }
    };
    let signer = match &config.private_key_file {
        None => None,
        Some(path) => match private_key_from_file(alg, path, &public) {
            Ok(key) => Some(SigningKey {
                kid: kid.clone(),
                alg,
                key,
            }),
            Err(why) => {
                errors.push(format!("{at}.private_key_file: {why}"));
                None
            }
        },
    };
    Some((VerifyKey::new(kid, alg, public), signer))
}

/// Parses and checks a PEM public key for `alg`.
fn public_key_from_pem(alg: Algorithm, pem: &[u8]) -> Result<DecodingKey, String> {
    let parsed = match alg {
        Algorithm::RS256 => DecodingKey::from_rsa_pem(pem),
        Algorithm::ES256 => DecodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        _ => return Err(format!("{alg:?} keys are not public keys")),
    };
    let key = parsed.map_err(|e| format!("not a PEM public key for {alg:?} ({e})"))?;
    check_public_key(alg, &key)?;
    Ok(key)
}

/// Makes sure a public key will work for `alg`, so a bad key fails at start-up
/// and not on the first request: RSA size and exponent, EC point on P-256,
/// Ed25519 point of 32 bytes (shorter would panic inside the library).
fn check_public_key(alg: Algorithm, key: &DecodingKey) -> Result<(), String> {
    match alg {
        Algorithm::RS256 => {
            let jwk = jsonwebtoken::jwk::Jwk::from_decoding_key(key, Some(alg))
                .map_err(|e| format!("not an RSA public key ({e})"))?;
            let jsonwebtoken::jwk::AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
                return Err("not an RSA public key".to_owned());
            };
            let n = b64url_decode(&rsa.n).ok_or("RSA modulus is not base64url")?;
            let e = b64url_decode(&rsa.e).ok_or("RSA exponent is not base64url")?;
            check_rsa_components(&n, &e)
        }
        Algorithm::ES256 | Algorithm::EdDSA => {
            if alg == Algorithm::EdDSA && !key.try_get_as_bytes().is_ok_and(|b| b.len() == 32) {
                return Err("not an Ed25519 public key (32 bytes)".to_owned());
            }
            // Building a verifier parses the point; an empty signature then
            // simply fails to verify.
            let curve = if alg == Algorithm::ES256 {
                "P-256"
            } else {
                "Ed25519"
            };
            jsonwebtoken::crypto::verify("", b"", key, alg)
                .map(|_| ())
                .map_err(|_| format!("not a valid {curve} public key (needed for {alg:?})"))
        }
        _ => Err(format!("{alg:?} keys are not public keys")),
    }
}

/// RSA modulus within [`RSA_BITS`], odd; exponent odd, 3 ..= 2^33-1 (what `rsa` accepts).
fn check_rsa_components(n: &[u8], e: &[u8]) -> Result<(), String> {
    let n = strip_leading_zeros(n);
    let bits = match n.first() {
        Some(&top) => (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
        None => 0,
    };
    if !RSA_BITS.contains(&bits) || n.last().is_some_and(|b| b % 2 == 0) {
        return Err(format!(
            "RSA modulus must be {} to {} bits (got {bits})",
            RSA_BITS.start(),
            RSA_BITS.end()
        ));
    }
    let e = strip_leading_zeros(e);
    let exponent = if e.len() <= 8 {
        e.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    } else {
        u64::MAX
    };
    if !(3..=(1u64 << 33) - 1).contains(&exponent) || exponent % 2 == 0 {
        return Err("RSA public exponent is not valid".to_owned());
    }
    Ok(())
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Loads a PKCS#8 PEM private key for `alg` and checks that it matches `public`.
fn private_key_from_file(
    alg: Algorithm,
    path: &Path,
    public: &DecodingKey,
) -> Result<EncodingKey, String> {
    let pem = read_small_file(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let parsed = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => return Err(format!("{alg:?} keys have no private key file")),
    };
    let key = parsed.map_err(|e| {
        format!(
            "{}: not a PEM private key for {alg:?} ({e})",
            path.display()
        )
    })?;
    let probe = b"velro-authz key pair check";
    let matches = jsonwebtoken::crypto::sign(probe, &key, alg)
        .and_then(|signature| jsonwebtoken::crypto::verify(&signature, probe, public, alg))
        .unwrap_or(false);
    if !matches {
        return Err(format!(
            "{}: does not match the key's public key",
            path.display()
        ));
    }
    Ok(key)
}

/// Reads a key or JWKS file, refusing anything over [`MAX_KEY_FILE_LEN`].
fn read_small_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_KEY_FILE_LEN} bytes"
        )));
    }
    Ok(bytes)
}

/// Base64url with or without padding (JWKS publishers differ).
fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    ENGINE.decode(text).ok()
}

/// Reads and parses a JWKS file; problems are prefixed with the path.
fn load_jwks_file(path: &Path, static_kids: &[String]) -> Result<Vec<VerifyKey>, Vec<String>> {
    let bytes =
        read_small_file(path).map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
    parse_jwks(&bytes, static_kids).map_err(|problems| {
        problems
            .into_iter()
            .map(|p| format!("{}: {p}", path.display()))
            .collect()
    })
}

/// Parses a JWKS document into verification keys.
///
/// Entries that are not for us are skipped: `use` other than `sig`, an `alg`
/// other than RS256/ES256/EdDSA (e.g. RSA-OAEP, PS256), an unknown `kty`, or a
/// curve we do not verify. Entries that claim to be ours but are broken are
/// errors, as are symmetric (`oct`) keys — a secret has no place in a key set
/// file — missing or duplicate kids, and kids that shadow a static key.
fn parse_jwks(bytes: &[u8], static_kids: &[String]) -> Result<Vec<VerifyKey>, Vec<String>> {
    let document: JwksDocument =
        serde_json::from_slice(bytes).map_err(|e| vec![format!("not a JWKS document ({e})")])?;
    let mut problems = Vec::new();
    let mut keys: Vec<VerifyKey> = Vec::new();
    for (i, value) in document.keys.into_iter().enumerate() {
        let at = format!("keys[{i}]");
        let entry: JwkEntry = match serde_json::from_value(value) {
            Ok(entry) => entry,
            Err(e) => {
                problems.push(format!("{at}: not a JWK ({e})"));
                continue;
            }
        };
        match jwk_to_key(&entry) {
            Ok(None) => {}
            Ok(Some(key)) => {
                let kid = key.kid.as_deref().unwrap_or_default();
                if static_kids.iter().any(|k| k == kid) {
                    problems.push(format!("{at}: kid {kid:?} is also a key in auth.jwt.keys"));
                } else if keys.iter().any(|k| k.kid.as_deref() == Some(kid)) {
                    problems.push(format!("{at}: duplicate kid {kid:?}"));
                } else {
                    keys.push(key);
                }
            }
            Err(why) => problems.push(format!("{at}: {why}")),
        }
    }
    if problems.is_empty() {
        Ok(keys)
    } else {
        Err(problems)
    }
}

/// One JWK → a key, `None` if it is not for verifying our algorithms.
fn jwk_to_key(entry: &JwkEntry) -> Result<Option<VerifyKey>, String> {
    if entry.public_key_use.as_deref().is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    if entry.kty == "oct" {
        return Err("symmetric (oct) keys are not accepted from a JWKS file".to_owned());
    }
    let alg = match entry.alg.as_deref() {
        Some(name) => match parse_alg(name) {
            Some(Algorithm::HS256) | None => return Ok(None),
            Some(alg) => alg,
        },
        None => match (entry.kty.as_str(), entry.crv.as_deref()) {
            ("RSA", _) => Algorithm::RS256,
            ("EC", Some("P-256")) => Algorithm::ES256,
            ("OKP", Some("Ed25519")) => Algorithm::EdDSA,
            _ => return Ok(None),
        },
    };
    let expected_kty = match alg {
        Algorithm::RS256 => "RSA",
        Algorithm::ES256 => "EC",
        _ => "OKP",
    };
    if entry.kty != expected_kty {
        return Err(format!(
            "alg {alg:?} needs kty {expected_kty:?}, not {:?}",
            entry.kty
        ));
    }
    let kid = match entry.kid.as_deref() {
        Some(kid) if !kid.is_empty() => kid.to_owned(),
        _ => return Err("a kid is required (tokens name their key by kid)".to_owned()),
    };
    let member = |name: &str, value: &Option<String>| -> Result<Vec<u8>, String> {
        let text = value
            .as_deref()
            .ok_or_else(|| format!("member {name:?} is required"))?;
        b64url_decode(text).ok_or_else(|| format!("member {name:?} is not base64url"))
    };
    let key = match alg {
        Algorithm::RS256 => {
            let (n, e) = (member("n", &entry.n)?, member("e", &entry.e)?);
            check_rsa_components(&n, &e)?;
            DecodingKey::from_rsa_raw_components(&n, &e)
        }
        Algorithm::ES256 => {
            if entry.crv.as_deref() != Some("P-256") {
                return Err("ES256 needs crv \"P-256\"".to_owned());
            }
            let (x, y) = (member("x", &entry.x)?, member("y", &entry.y)?);
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes each".to_owned());
            }
            // Uncompressed SEC1 point, the form the EC verifier parses.
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let key = DecodingKey::from_ec_der(&point);
            check_public_key(alg, &key)?;
            key
        }
        _ => {
            if entry.crv.as_deref() != Some("Ed25519") {
                return Err("EdDSA needs crv \"Ed25519\"".to_owned());
            }
            let key = DecodingKey::from_ed_der(&member("x", &entry.x)?);
            check_public_key(alg, &key)?;
            key
        }
    };
    Ok(Some(VerifyKey::new(Some(kid), alg, key)))
}

#[cfg(test)]
mod tests;
